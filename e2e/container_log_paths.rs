//! Issue 8 item 10: container logs stay where the pod's log directory says. An absolute `log_path`
//! or one with `..` is INVALID_ARGUMENT at CreateContainer; a symlink in the pod's log directory,
//! as the log's directory or as the log file itself, makes StartContainer fail (StartError) without
//! writing through it; and ReopenContainerLog refuses a symlink put where the rotated file was,
//! the output going on to the old file.

use std::path::Path;
use std::time::{Duration, Instant};

use berth::cri::api::{ContainerState, ReopenContainerLogRequest};
use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn container_logs_never_leave_the_pod_log_directory() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("logpaths");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let logs = pod.log_directory();
    // Removed even when the test fails.
    let outside_dir = tempfile::Builder::new().prefix("berth-e2e-outside-").tempdir().expect("a temp dir");
    let outside = outside_dir.path().to_path_buf();
    let victim = outside.join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();

    for (name, bad) in [("abs", outside.join("abs.log").display().to_string()), ("up", "../up.log".into())] {
        let mut config = pod.container(name, &image).command(&["echo", "escaped"]).build();
        config.log_path = bad.clone();
        let e = cri.create(&pod_id, &pod, config).await.expect_err(&format!("log_path {bad:?}"));
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
    }
    assert!(!outside.join("abs.log").exists() && !logs.parent().unwrap().join("up.log").exists());

    // A symlinked directory and a symlinked file in the pod's log directory.
    std::os::unix::fs::symlink(&outside, logs.join("evil")).unwrap();
    let mut config = pod.container("dirlink", &image).command(&["echo", "escaped"]).build();
    config.log_path = "evil/0.log".into();
    let id = cri.create(&pod_id, &pod, config).await.expect("CreateContainer");
    cri.start(&id).await.expect_err("started with its log directory a symlink");
    let s = cri.container_status(&id).await.expect("ContainerStatus");
    assert_eq!((s.state, s.reason.as_str()), (ContainerState::ContainerExited as i32, "StartError"), "{s:?}");
    assert!(!outside.join("0.log").exists());

    let config = pod.container("filelink", &image).command(&["echo", "escaped"]).build();
    std::os::unix::fs::symlink(&victim, logs.join("filelink/0.log")).unwrap();
    let id = cri.create(&pod_id, &pod, config).await.expect("CreateContainer");
    cri.start(&id).await.expect_err("started with its log file a symlink");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");

    // Rotation: the kubelet renames the file away; a symlink appears in its place.
    let config = pod
        .container("ticker", &image)
        .sh("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done")
        .build();
    let id = cri.create_start(&pod_id, &pod, config).await.expect("ticker");
    let log = logs.join("ticker/0.log");
    let rotated = logs.join("ticker/0.log.1");
    let guard = Instant::now() + Duration::from_secs(120);
    while lines(&log) == 0 {
        assert!(Instant::now() < guard, "hang guard: the ticker never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::rename(&log, &rotated).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let e = cri
        .runtime
        .reopen_container_log(ReopenContainerLogRequest { container_id: id.clone() })
        .await
        .expect_err("reopened onto a symlink");
    assert!(e.message().contains("0.log"), "{e:?}");
    // The output goes on into the rotated file, never through the symlink.
    let seen = lines(&rotated);
    while lines(&rotated) <= seen + 2 {
        assert!(Instant::now() < guard, "hang guard: the rotated file stopped growing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
