//! Issue 8 item 12: a StopContainer waiting out a long grace period does not hold up what comes
//! after it. With StopContainer(timeout=600) in flight on a container that survives SIGTERM, the
//! kubelet's forced delete, StopContainer(0), kills it at once and both calls return once it is
//! dead; StopPodSandbox likewise does not wait for another container's grace period. The time
//! limits below are hang guards only, far below the 600 s grace period.

use std::time::Duration;

use berth::cri::api::ContainerState;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Cri, Leaks, Registry, images};

const GUARD: Duration = Duration::from_secs(240);

/// Starts a container whose init survives SIGTERM, leaving /got-term behind when it gets one.
async fn stubborn(
    cri: &mut Cri,
    pod_id: &str,
    pod: &crate::harness::pod::PodConfig,
    image: &str,
    name: &str,
) -> String {
    let config = pod
        .container(name, image)
        .sh("trap 'touch /got-term' TERM; while true; do sleep 100000 & wait; done")
        .build();
    let id = cri.create_start(pod_id, pod, config).await.expect("stubborn container");
    tokio::time::timeout(GUARD, async {
        while !cri.sh(&id, "ps -o args").await.contains("sleep 100000") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("hang guard: the trap was never installed");
    id
}

/// StopContainer(600) in the background, returned once the container has had its SIGTERM.
async fn patient_stop(cri: &mut Cri, id: &str) -> tokio::task::JoinHandle<Result<(), tonic::Status>> {
    let mut background = cri.clone();
    let id2 = id.to_string();
    let stop = tokio::spawn(async move { background.stop(&id2, 600).await });
    tokio::time::timeout(GUARD, async {
        while cri.exec(id, &["test", "-e", "/got-term"], 30).await.expect("ExecSync").exit_code != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("hang guard: the first StopContainer sent no SIGTERM");
    stop
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_stop_does_not_wait_for_a_pending_grace_period() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("forced");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");

    let id = stubborn(&mut cri, &pod_id, &pod, &image, "stubborn").await;
    let first = patient_stop(&mut cri, &id).await;
    tokio::time::timeout(GUARD, cri.stop(&id, 0))
        .await
        .expect("hang guard: StopContainer(0) waited for the pending grace period")
        .expect("StopContainer(0)");
    let s = cri.container_status(&id).await.expect("ContainerStatus");
    assert_eq!((s.state, s.exit_code), (ContainerState::ContainerExited as i32, 137), "{s:?}");
    tokio::time::timeout(GUARD, first)
        .await
        .expect("hang guard: the first StopContainer did not return with the exit")
        .expect("the first StopContainer's task")
        .expect("the first StopContainer");

    // StopPodSandbox kills a container whose own Stop is still in its grace period.
    let id = stubborn(&mut cri, &pod_id, &pod, &image, "stubborn-again").await;
    let first = patient_stop(&mut cri, &id).await;
    tokio::time::timeout(GUARD, cri.stop_remove_pod(&pod_id))
        .await
        .expect("hang guard: StopPodSandbox waited for the pending grace period")
        .expect("stop and remove the pod");
    tokio::time::timeout(GUARD, first)
        .await
        .expect("hang guard: the first StopContainer did not return")
        .expect("the first StopContainer's task")
        .expect("the first StopContainer");
    assert_back_to(&berthd, &before);
}
