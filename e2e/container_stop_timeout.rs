//! StopContainer's grace period: a container that ignores SIGTERM is SIGKILLed once the timeout has
//! passed (exit 137, and the call takes at least the timeout); a container that exits on SIGTERM
//! stops without waiting for the timeout (exit 143, no SIGKILL needed).

use std::time::{Duration, Instant};

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn ignored_sigterm_escalates_to_sigkill_after_the_timeout() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("stopper");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");

    // `sleep & wait` keeps the shell (pid 1) responsive to signals it handles.
    let stubborn =
        pod.container("stubborn", &image).sh("trap '' TERM; sleep 100000 & wait; sleep 100000").build();
    let stubborn = cri.create_start(&pod_id, &pod, stubborn).await.expect("stubborn container");
    let polite = pod.container("polite", &image).sh("trap 'exit 143' TERM; sleep 100000 & wait").build();
    let polite = cri.create_start(&pod_id, &pod, polite).await.expect("polite container");
    // Both shells must have installed their traps before the signal comes.
    for id in [&stubborn, &polite] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cri.sh(id, "ps -o args").await.contains("sleep 100000") {
            assert!(Instant::now() < deadline, "{id} never started its sleep");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let started = Instant::now();
    cri.stop(&stubborn, 2).await.expect("StopContainer stubborn");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "stopped after {took:?}, before the 2 s timeout");
    let s = cri.container_status(&stubborn).await.expect("ContainerStatus");
    assert_eq!(s.exit_code, 137, "not ended by SIGKILL: {s:?}");
    assert_eq!(s.reason, "Error");

    let started = Instant::now();
    cri.stop(&polite, 30).await.expect("StopContainer polite");
    let took = started.elapsed();
    let s = cri.container_status(&polite).await.expect("ContainerStatus");
    assert_eq!(s.exit_code, 143, "not ended by its SIGTERM handler: {s:?}");
    assert!(
        took < Duration::from_secs(30),
        "waited the whole timeout ({took:?}) for a container that exited"
    );

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
