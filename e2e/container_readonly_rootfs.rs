//! readOnlyRootFilesystem: writing anywhere in the image's filesystem fails with EROFS, while a
//! mounted volume (a host directory, as an emptyDir is) and the termination-message file stay
//! writable, and what the container writes to the volume is on the host.

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn root_is_read_only_and_the_volume_is_writable() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let volume_dir = tempfile::Builder::new().prefix("berth-e2e-volume-").tempdir().expect("volume dir");
    let volume = volume_dir.path();

    let pod = berthd.pod("readonly");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let c = pod
        .container("main", &image)
        .command(&["sleep", "100000"])
        .readonly_rootfs()
        .mount(volume, "/data", false)
        .build();
    let id = cri.create_start(&pod_id, &pod, c).await.expect("container");

    for path in ["/x", "/etc/x", "/tmp/x", "/bin/x"] {
        let r = cri.exec(&id, &["touch", path], 10).await.expect("ExecSync touch");
        assert_ne!(r.exit_code, 0, "writing {path} on a read-only rootfs succeeded");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("Read-only file system"), "{path}: {err}");
    }
    cri.sh(&id, "echo from-the-pod > /data/f && echo msg > /dev/termination-log").await;
    assert_eq!(
        std::fs::read_to_string(volume.join("f")).expect("the volume file on the host"),
        "from-the-pod\n"
    );

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
    assert!(volume.join("f").exists(), "removing the pod removed the volume's content");
}
