//! Removing the large image gives its space back: disk usage under root (as `du` counts it) and
//! ImageFsInfo's used bytes drop back near their values before the pull.

use std::time::{Duration, Instant};

use crate::harness::fs::disk_usage;
use crate::harness::{Berthd, Cri, Registry, images};

async fn image_fs_used(cri: &mut Cri) -> u64 {
    let info = cri.fs_info().await.expect("ImageFsInfo");
    let fs = info.image_filesystems.first().expect("an image filesystem");
    fs.used_bytes.as_ref().expect("used_bytes").value
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_large_image_frees_its_space() {
    let reg = Registry::shared();
    let large = &images().large;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let reference = large.reference(&reg.host());
    let size = large.layer_bytes();
    // What may remain: metadata, database pages, directories.
    let slack = (32 << 20).max(size / 20);

    let du_before = disk_usage(berthd.root()).0;
    let fs_before = image_fs_used(&mut cri).await;
    let id = cri.pull(&reference).await.expect("PullImage");
    let du_pulled = disk_usage(berthd.root()).0;
    assert!(
        du_pulled >= du_before + size / 2,
        "root grew by only {} bytes for a {size} byte image",
        du_pulled.saturating_sub(du_before)
    );
    // ImageFsInfo may be sampled in the background: wait for it to see the pull, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fs_pulled = loop {
        let fs = image_fs_used(&mut cri).await;
        if fs >= fs_before + size / 2 {
            break fs;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after the pull ImageFsInfo grew only from {fs_before} to {fs}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    cri.remove(&id).await.expect("RemoveImage");
    // Garbage collection may run after RemoveImage returns.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let du = disk_usage(berthd.root()).0;
        let fs = image_fs_used(&mut cri).await;
        if du <= du_before + slack && fs <= fs_before + slack {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "60 s after RemoveImage: root uses {du} bytes (before the pull {du_before}, pulled {du_pulled}), \
             ImageFsInfo {fs} (before {fs_before}, pulled {fs_pulled})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
