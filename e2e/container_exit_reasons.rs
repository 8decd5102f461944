//! How containers end, as the kubelet reads it from ContainerStatus: exit 0 is `Completed`, exit 3 is
//! `Error`, a container killed by the kernel for exceeding its memory limit is `OOMKilled` (137);
//! started_at ≤ finished_at even for a container that exits at once. The termination message the
//! container wrote to the file mounted at its terminationMessagePath (the default
//! `/dev/termination-log` or one of its own) is the kubelet's to read, through the host path of that
//! mount in the status's `mounts`; `message` stays empty, as containerd leaves it (the kubelet appends
//! the file's text to `message`, so a runtime copying it there shows it twice: "DONE: DONE", e2e spec
//! "Container Runtime blackbox test on terminated container should report termination message if
//! TerminationMessagePath is set"). Exited containers stay listed until RemoveContainer.

use std::time::Duration;

use berth::cri::api::ContainerStatus;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

/// Times are set (their order is [`instant_exits_finish_after_they_start`]'s business).
fn check_times(s: &ContainerStatus) {
    assert!(s.created_at > 0 && s.started_at >= s.created_at, "{s:?}");
    assert!(s.finished_at > s.created_at, "{s:?}");
}

/// What the kubelet reads as the termination message: the host side of the status's mount at `path`.
fn termination_message(s: &ContainerStatus, path: &str) -> String {
    let m = s
        .mounts
        .iter()
        .find(|m| m.container_path == path)
        .unwrap_or_else(|| panic!("no mount at {path}: {s:?}"));
    std::fs::read_to_string(&m.host_path).expect("the termination message file")
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_reasons_and_termination_message() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("exits");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");

    let ok = pod.container("ok", &image).sh("printf 'all done' > /dev/termination-log; exit 0").build();
    let ok = cri.create_start(&pod_id, &pod, ok).await.expect("container ok");
    // A terminationMessagePath of the pod's choosing.
    let fail = pod
        .container("fail", &image)
        .sh("echo 'it broke' > /tmp/why; exit 3")
        .termination_message_path(Some("/tmp/why"))
        .build();
    let fail = cri.create_start(&pod_id, &pod, fail).await.expect("container fail");
    // `tail` keeps the whole (newline-free) input in memory: far beyond the 16 MiB limit.
    let oom = pod.container("oom", &image).sh("head -c 200m /dev/zero | tail").memory_limit(16 << 20).build();
    let oom = cri.create_start(&pod_id, &pod, oom).await.expect("container oom");

    let s = cri.wait_exited(&ok, Duration::from_secs(30)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"), "{s:?}");
    assert_eq!(termination_message(&s, "/dev/termination-log"), "all done");
    assert_eq!(s.message, "", "{s:?}");
    check_times(&s);

    let s = cri.wait_exited(&fail, Duration::from_secs(30)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"), "{s:?}");
    assert_eq!(termination_message(&s, "/tmp/why"), "it broke\n");
    assert_eq!(s.message, "", "{s:?}");
    check_times(&s);

    let s = cri.wait_exited(&oom, Duration::from_secs(60)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"), "{s:?}");
    check_times(&s);

    // Exited containers stay listed until removed: the kubelet counts restarts from them.
    let listed = cri.containers().await.expect("ListContainers");
    assert_eq!(listed.len(), 3, "{listed:?}");
    cri.remove_container(&ok).await.expect("RemoveContainer");
    let listed = cri.containers().await.expect("ListContainers");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|c| c.id != ok), "{listed:?}");

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}

/// A container that exits at once: its exit can reach berth before StartContainer has returned, and
/// its times must still be in order (the kubelet shows them and orders events by them).
#[tokio::test(flavor = "multi_thread")]
async fn instant_exits_finish_after_they_start() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("instant");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let mut bad = Vec::new();
    for i in 0..10 {
        let c = pod.container(&format!("instant-{i}"), &image).command(&["true"]).build();
        let id = cri.create_start(&pod_id, &pod, c).await.expect("container");
        let s = cri.wait_exited(&id, Duration::from_secs(30)).await;
        assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"), "{s:?}");
        if s.finished_at < s.started_at {
            bad.push(format!("{}: started_at {} > finished_at {}", id, s.started_at, s.finished_at));
        }
    }
    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
    assert!(bad.is_empty(), "containers that finished before they started:\n{}", bad.join("\n"));
}
