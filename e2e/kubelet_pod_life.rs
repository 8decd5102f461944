//! One pod the way the kubelet drives it, from SyncPod to garbage collection: the sandbox status it
//! checks right after RunPodSandbox (IP and network namespace mode, or it recreates the sandbox), an
//! init container that must exit 0 before the app starts, an app container that fails and is
//! recreated with the next attempt while its dead instance is still listed, the PLEG's label-filtered
//! lists, container GC of the dead instances (NotFound afterwards), image GC removing the image of a
//! running container (which keeps running and answering), KillPod (StopContainer, StopPodSandbox,
//! both again as the kubelet retries), sandbox GC, and the image pulled again afterwards.

use std::collections::HashMap;
use std::time::Duration;

use berth::cri::api::{
    ContainerFilter, ContainerState, ContainerStateValue, ListContainersRequest, ListPodSandboxRequest,
    NamespaceMode, PodSandboxFilter, PodSandboxState,
};
use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Cri, Leaks, Registry, images};

const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

/// The label selector the kubelet lists one pod's sandboxes and containers with.
fn of_pod(uid: &str) -> HashMap<String, String> {
    HashMap::from([(POD_UID_LABEL.to_string(), uid.to_string())])
}

/// The PLEG's ListContainers for one pod: (name, attempt, state) of each, oldest first.
async fn pod_containers(cri: &mut Cri, uid: &str) -> Vec<(String, u32, i32)> {
    let filter = ContainerFilter { label_selector: of_pod(uid), ..Default::default() };
    let mut listed = cri
        .runtime
        .list_containers(ListContainersRequest { filter: Some(filter) })
        .await
        .expect("ListContainers by pod uid")
        .into_inner()
        .containers;
    listed.sort_by_key(|c| c.created_at);
    listed
        .into_iter()
        .map(|c| {
            let m = c.metadata.unwrap_or_default();
            (m.name, m.attempt, c.state)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_from_sync_to_garbage_collection() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let reference = images().busybox.reference(&reg.host());
    // The kubelet creates containers from the image ID the pull answered, not from the reference.
    let image = cri.pull(&reference).await.expect("PullImage busybox");
    assert!(image.starts_with("sha256:"), "PullImage answered {image:?}, not an image ID");

    let pod = berthd.pod("web");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let status = cri.pod_status(&pod_id).await.expect("PodSandboxStatus");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    let ip = status.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    assert!(ip.parse::<std::net::IpAddr>().is_ok(), "no pod IP: {status:?}");
    let mode = status.linux.and_then(|l| l.namespaces).and_then(|n| n.options).map(|o| o.network);
    assert_eq!(mode, Some(NamespaceMode::Pod as i32), "the kubelet would recreate the sandbox");

    // Init container first; the app only after it exited 0.
    let init = pod.container("init", &image).sh("test -d /proc/self && exit 0").build();
    let init = cri.create_start(&pod_id, &pod, init).await.expect("init container");
    let s = cri.wait_exited(&init, Duration::from_secs(30)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));

    // The app fails; the kubelet creates attempt 1 next to the dead attempt 0.
    let app0 = pod.container("app", &image).sh("exit 3").build();
    let app0 = cri.create_start(&pod_id, &pod, app0).await.expect("app attempt 0");
    let s = cri.wait_exited(&app0, Duration::from_secs(30)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    let app1 = pod.container("app", &image).restart_count(1).command(&["sleep", "100000"]).build();
    let app1 = cri.create_start(&pod_id, &pod, app1).await.expect("app attempt 1");
    let (running, exited) = (ContainerState::ContainerRunning as i32, ContainerState::ContainerExited as i32);
    assert_eq!(
        pod_containers(&mut cri, pod.uid()).await,
        [("init".into(), 0, exited), ("app".into(), 0, exited), ("app".into(), 1, running)]
    );
    // A filter on state, as `crictl ps` sends it.
    let filter = ContainerFilter {
        state: Some(ContainerStateValue { state: running }),
        label_selector: of_pod(pod.uid()),
        ..Default::default()
    };
    let listed = cri.runtime.list_containers(ListContainersRequest { filter: Some(filter) }).await;
    let ids: Vec<String> =
        listed.expect("ListContainers running").into_inner().containers.into_iter().map(|c| c.id).collect();
    assert_eq!(ids.as_slice(), std::slice::from_ref(&app1));

    // Container GC: ContainerStatus (for the log path), then RemoveContainer; gone means NotFound.
    for dead in [&init, &app0] {
        let s = cri.container_status(dead).await.expect("ContainerStatus before removal");
        assert!(s.log_path.ends_with(".log"), "{s:?}");
        cri.remove_container(dead).await.expect("RemoveContainer");
        let e = cri.container_status(dead).await.expect_err("status of a removed container");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        cri.remove_container(dead).await.expect("RemoveContainer again");
    }

    // Image GC takes the image away under the running container: it runs on, and answers.
    cri.remove(&image).await.expect("RemoveImage of an image in use");
    assert!(cri.status(&image).await.expect("ImageStatus").is_none(), "the image is still listed");
    assert_eq!(cri.sh(&app1, "echo alive").await.trim(), "alive");
    let s = cri.container_status(&app1).await.expect("ContainerStatus after the image went");
    assert_eq!(s.state, running);
    assert_eq!(s.image_ref, image, "{s:?}");

    // KillPod: StopContainer with the grace period, then StopPodSandbox; retried, both succeed.
    for _ in 0..2 {
        cri.stop(&app1, 2).await.expect("StopContainer");
        cri.runtime
            .stop_pod_sandbox(berth::cri::api::StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() })
            .await
            .expect("StopPodSandbox");
    }
    let filter = PodSandboxFilter { label_selector: of_pod(pod.uid()), ..Default::default() };
    let listed = cri
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest { filter: Some(filter) })
        .await
        .expect("ListPodSandbox by pod uid")
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, PodSandboxState::SandboxNotready as i32);
    let s = cri.pod_status(&pod_id).await.expect("PodSandboxStatus of a stopped pod");
    assert_eq!(s.state, PodSandboxState::SandboxNotready as i32);

    // Sandbox GC removes the pod with its last container.
    cri.stop_remove_pod(&pod_id).await.expect("RemovePodSandbox");
    assert!(cri.containers().await.expect("ListContainers").is_empty());
    assert_back_to(&berthd, &before);

    // The image comes back with the same ID, and a pod runs from it again.
    assert_eq!(cri.pull(&reference).await.expect("PullImage again"), image);
    let pod = berthd.pod("web-again");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox again");
    let c = pod.container("app", &image).command(&["sleep", "100000"]).build();
    let c = cri.create_start(&pod_id, &pod, c).await.expect("a container from the pulled-again image");
    assert_eq!(cri.sh(&c, "echo again").await.trim(), "again");
    cri.stop_remove_pod(&pod_id).await.expect("stop and remove");
    assert_back_to(&berthd, &before);
}
