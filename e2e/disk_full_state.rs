//! berth's state directory full (issue 14 item 6): the state on a small tmpfs of its own, a pod
//! running, the tmpfs filled to the last byte. RunPodSandbox of a second pod fails and leaves nothing
//! behind; the running pod is unaffected (its sandbox and container report as they were, the container
//! keeps running; a new exec, which needs room for its process file, fails as cleanly); with room again
//! the second pod runs, and on the full state dir again both pods are stopped and removed without a
//! leak.

use berth::cri::api::{ContainerState, PodSandboxState};
use tonic::Code;

use crate::harness::disk::{On, SmallFs, berthd_on};
use crate::harness::leaks::{assert_back_to, in_container};
use crate::harness::{Leaks, Registry};

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_dir_fails_new_pods_cleanly_and_spares_running_ones() {
    let reg = Registry::shared();
    let state = SmallFs::mount("state", 16);
    let (berthd, before, mut cri, image) = berthd_on(&state, On::State, reg).await;
    let running = berthd.pod("running");
    let running_id = cri.run_pod(&running).await.expect("RunPodSandbox");
    let c = running.container("sleeper", &image).command(&["sleep", "100000"]).build();
    let sleeper = cri.create_start(&running_id, &running, c).await.expect("the running container");
    let with_one = Leaks::of(&berthd);

    state.fill();
    let second = berthd.pod("second");
    let err = cri.run_pod(&second).await.expect_err("RunPodSandbox on a full state dir succeeded");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("No space left on device"), "{err:?}");
    let pods = cri.pods().await.expect("ListPodSandbox");
    assert_eq!(pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [running_id.as_str()], "{pods:?}");
    assert_back_to(&berthd, &with_one);

    // The running pod is as it was.
    let status = cri.pod_status(&running_id).await.expect("PodSandboxStatus");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32, "{status:?}");
    let s = cri.container_status(&sleeper).await.expect("ContainerStatus");
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    assert!(!in_container(&sleeper).is_empty(), "the container's processes are gone");
    // A new exec needs room for its process file: it fails as cleanly, and changes nothing.
    match cri.exec(&sleeper, &["echo", "x"], 10).await {
        Ok(r) => assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "x", "{r:?}"),
        Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
    }
    let s = cri.container_status(&sleeper).await.expect("ContainerStatus");
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    assert_back_to(&berthd, &with_one);

    // Room again: the kubelet's retry of the second pod goes through.
    state.unfill();
    let second_id = cri.run_pod(&second).await.expect("RunPodSandbox with room");

    // Full again: pods can still be stopped and removed (the kubelet evicts under disk pressure).
    state.fill();
    cri.stop_remove_pod(&second_id).await.expect("removing the second pod on a full state dir");
    cri.stop_remove_pod(&running_id).await.expect("removing the running pod on a full state dir");
    assert_back_to(&berthd, &before);
    state.unfill();
}
