//! ImageFsInfo reports the filesystem of berth's root with non-zero used bytes and inodes.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn image_fs_info_reports_root_usage() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    cri.pull(&busybox.reference(&reg.host())).await.expect("PullImage");

    // Usage may be sampled in the background (containerd does every 10 s): wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fs = loop {
        let info = cri.fs_info().await.expect("ImageFsInfo");
        assert_eq!(info.image_filesystems.len(), 1, "{info:?}");
        let fs = info.image_filesystems.into_iter().next().expect("one image filesystem");
        let used = fs.used_bytes.as_ref().map_or(0, |u| u.value);
        let inodes = fs.inodes_used.as_ref().map_or(0, |u| u.value);
        if used >= busybox.layer_bytes() && inodes > 0 {
            break fs;
        }
        assert!(Instant::now() < deadline, "30 s after a pull ImageFsInfo still reports {fs:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(fs.timestamp > 0, "{fs:?}");
    let mountpoint = &fs.fs_id.as_ref().expect("fs_id").mountpoint;
    assert!(
        Path::new(mountpoint).starts_with(berthd.root()),
        "mountpoint {mountpoint:?} is not berth's root {} (or a directory in it)",
        berthd.root().display()
    );
}
