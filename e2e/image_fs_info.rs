//! ImageFsInfo reports the filesystem of berth's root with non-zero used bytes and inodes.

use std::path::Path;

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn image_fs_info_reports_root_usage() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    cri.pull(&busybox.reference(&reg.host())).await.expect("PullImage");

    let info = cri.fs_info().await.expect("ImageFsInfo");
    assert_eq!(info.image_filesystems.len(), 1, "{info:?}");
    let fs = &info.image_filesystems[0];
    assert!(fs.timestamp > 0, "{fs:?}");
    let used = fs.used_bytes.as_ref().expect("used_bytes").value;
    let inodes = fs.inodes_used.as_ref().expect("inodes_used").value;
    assert!(used >= busybox.layer_bytes(), "used bytes {used} below the pulled layer's size");
    assert!(inodes > 0, "{fs:?}");
    let mountpoint = &fs.fs_id.as_ref().expect("fs_id").mountpoint;
    assert!(
        Path::new(mountpoint).starts_with(berthd.root()),
        "mountpoint {mountpoint:?} is not berth's root {} (or a directory in it)",
        berthd.root().display()
    );
}
