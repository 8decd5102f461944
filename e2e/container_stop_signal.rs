//! The stop signal of cri-api v0.36 (`ContainerConfig.stop_signal`): StopContainer sends it instead
//! of SIGTERM (or the image's STOPSIGNAL), ContainerStatus reports it, and a value CRI does not define
//! is refused at CreateContainer.

use std::time::{Duration, Instant};

use berth::cri::api::Signal;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn stop_container_sends_the_configured_signal() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("stopsignal");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");

    // Ignores SIGTERM: only SIGUSR1 ends it with 42; anything else waits for the SIGKILL (137).
    let script = "trap '' TERM; trap 'exit 42' USR1; sleep 100000 & wait; sleep 100000 & wait";
    let mut usr1 = pod.container("usr1", &image).sh(script).build();
    usr1.stop_signal = Signal::Sigusr1 as i32;
    let usr1 = cri.create_start(&pod_id, &pod, usr1).await.expect("container with stop_signal SIGUSR1");
    let plain = cri
        .create_start(&pod_id, &pod, pod.container("plain", &image).sh("sleep 100000").build())
        .await
        .expect("container without a stop signal");
    assert_eq!(cri.container_status(&usr1).await.unwrap().stop_signal, Signal::Sigusr1 as i32);
    assert_eq!(cri.container_status(&plain).await.unwrap().stop_signal, Signal::Sigterm as i32);

    let deadline = Instant::now() + Duration::from_secs(10);
    while !cri.sh(&usr1, "ps -o args").await.contains("sleep 100000") {
        assert!(Instant::now() < deadline, "the shell never started its sleep");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cri.stop(&usr1, 30).await.expect("StopContainer");
    let s = cri.container_status(&usr1).await.expect("ContainerStatus");
    assert_eq!(s.exit_code, 42, "not ended by its SIGUSR1 trap: {s:?}");

    let mut bad = pod.container("bad", &image).sh("true").build();
    bad.stop_signal = 66;
    let err = cri.create(&pod_id, &pod, bad).await.expect_err("an undefined stop signal");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
