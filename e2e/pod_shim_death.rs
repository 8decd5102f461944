//! A pod's shim dies (SIGKILL: the OOM killer, an operator, a bug) under a running pod of two
//! containers. What it ran keeps running, reparented to init, so berth ends it (`berth-shim cleanup`,
//! the OCI runtime's forced delete, as containerd's shim `delete` does): the containers are reported
//! exited with 137 and why, the pod NotReady, and no process is left in any of their cgroups; Stop
//! and Remove then leave nothing behind. The same when the shim dies while berthd is down: the
//! restarted berthd finds it and does the same.

use std::time::{Duration, Instant};

use berth::cri::api::{ContainerState, PodSandboxState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::cri::Cri;
use crate::harness::leaks::{assert_back_to, in_container, processes, shims_of};
use crate::harness::pod::PodConfig;
use crate::harness::{Berthd, Leaks, Registry, images};

/// A running pod with two sleeping containers: (pod, pod id, container ids).
async fn two_container_pod(berthd: &Berthd, cri: &mut Cri, name: &str) -> (PodConfig, String, Vec<String>) {
    let image = cri.pull(&images().busybox.reference(&Registry::shared().host())).await.expect("PullImage");
    let pod = berthd.pod(name);
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let mut ids = Vec::new();
    for c in ["first", "second"] {
        let config = pod.container(c, &image).command(&["sleep", "100000"]).build();
        ids.push(cri.create_start(&pod_id, &pod, config).await.expect("container"));
    }
    (pod, pod_id, ids)
}

/// SIGKILLs the one shim of `berthd` and waits until it is gone. With berthd down (`berthd_down`), the
/// pod's processes are checked to outlive it (a live berthd may already be ending them).
fn kill_the_shim(berthd: &Berthd, pod_id: &str, ids: &[String], berthd_down: bool) {
    let shims = shims_of(berthd, &processes());
    assert_eq!(shims.len(), 1, "{shims:?}");
    let shim = shims[0].pid;
    kill(Pid::from_raw(shim), Signal::SIGKILL).expect("killing the shim");
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes().iter().any(|p| p.pid == shim) {
        assert!(Instant::now() < deadline, "the shim did not die");
        std::thread::sleep(Duration::from_millis(50));
    }
    if berthd_down {
        for id in ids.iter().chain(std::iter::once(&pod_id.to_string())) {
            assert_eq!(in_container(id).len(), 1, "the process of {id} died with its shim");
        }
    }
}

/// Waits (with a hang guard) until berth reports every container exited, then checks what it says
/// and that nothing of the pod runs any more.
async fn assert_ended(cri: &mut Cri, pod_id: &str, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in ids {
        let status = loop {
            let s = cri.container_status(id).await.expect("ContainerStatus");
            if s.state == ContainerState::ContainerExited as i32 {
                break s;
            }
            assert!(Instant::now() < deadline, "{id} is still reported {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!((status.exit_code, status.reason.as_str()), (137, "Error"), "{status:?}");
        assert!(status.message.contains("shim died"), "{status:?}");
        assert!(status.finished_at >= status.started_at, "{status:?}");
    }
    let pod = cri.pod_status(pod_id).await.expect("PodSandboxStatus");
    assert_eq!(pod.state, PodSandboxState::SandboxNotready as i32, "{pod:?}");
    for id in ids.iter().chain(std::iter::once(&pod_id.to_string())) {
        let left = in_container(id);
        assert!(left.is_empty(), "processes of {id} outlived their dead shim: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_shims_containers_are_killed_and_reported() {
    let berthd = Berthd::started_with_network(&[Registry::shared()]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let (_, pod_id, ids) = two_container_pod(&berthd, &mut cri, "shim-dies").await;

    kill_the_shim(&berthd, &pod_id, &ids, false);
    assert_ended(&mut cri, &pod_id, &ids).await;

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shim_that_died_while_berthd_was_down_is_found_at_restart() {
    let mut berthd = Berthd::started_with_network(&[Registry::shared()]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let (_, pod_id, ids) = two_container_pod(&berthd, &mut cri, "shim-dies-alone").await;
    drop(cri);

    berthd.kill9();
    kill_the_shim(&berthd, &pod_id, &ids, true);
    berthd.start();
    let mut cri = berthd.cri().await;
    assert_ended(&mut cri, &pod_id, &ids).await;

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
