//! berthd starts, recovers its pods and serves on a root with 0 bytes free (issue 14 item 1). A pod
//! runs on a small root, the root fills to the last byte, berthd is SIGKILLed and started again: it
//! comes back with the snapshotter it chose at first start (no probe that needs to write decides it
//! again), the pod and its container are there and running, exec works, and the pod can be stopped and
//! removed on the full disk, leaving nothing behind.

use berth::cri::api::{ContainerState, PodSandboxState};

use crate::harness::berthd::berthctl_json;
use crate::harness::disk::{On, SmallFs, berthd_on};
use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Registry};

fn snapshotter(berthd: &Berthd) -> String {
    let listed = berthctl_json(berthd.socket(), &["snapshots", "ls"]);
    listed.get("snapshotter").and_then(|s| s.as_str()).expect("snapshotter in berthctl's answer").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn berthd_restarts_and_serves_on_a_full_root() {
    let reg = Registry::shared();
    let root = SmallFs::mount("root", 64);
    let (mut berthd, before, mut cri, image) = berthd_on(&root, On::Root, reg).await;
    let pod = berthd.pod("full-root");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let c = pod.container("sleeper", &image).command(&["sleep", "100000"]).build();
    let ctr = cri.create_start(&pod_id, &pod, c).await.expect("CreateContainer and StartContainer");
    let chosen = snapshotter(&berthd);
    assert_eq!(chosen, "overlayfs", "a tmpfs root supports overlayfs");

    root.fill();
    drop(cri);
    berthd.kill9();
    assert_eq!(root.available(), 0, "the root must still be full for the restart");
    berthd.start();
    let mut cri = berthd.cri().await;

    assert_eq!(snapshotter(&berthd), chosen, "the snapshotter changed on a full disk");
    let log = berthd.log();
    assert!(!log.contains("falling back"), "a probe decided the snapshotter again:\n{log}");
    let pods = cri.pods().await.expect("ListPodSandbox");
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].state, PodSandboxState::SandboxReady as i32, "{pods:?}");
    let status = cri.container_status(&ctr).await.expect("ContainerStatus");
    assert_eq!(status.state, ContainerState::ContainerRunning as i32, "{status:?}");
    assert_eq!(cri.sh(&ctr, "echo alive").await.trim(), "alive");
    assert!(cri.status(&image).await.expect("ImageStatus").is_some(), "the image is gone");

    // The operator makes room the way the kubelet does: the pod goes, on the full disk.
    cri.stop_remove_pod(&pod_id).await.expect("stopping and removing the pod on a full root");
    assert!(cri.containers().await.expect("ListContainers").is_empty());
    assert_back_to(&berthd, &before);
    root.unfill();
}
