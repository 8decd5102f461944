//! What the kubelet reads and does on a full disk (issue 14 item 4). A container fills berth's root by
//! writing into its writable layer: ImageFsInfo reports berth's usage of that filesystem as it is
//! (nearly all of it, on the filesystem's mount point), ContainerStats reports the writable layer as
//! large as what the container wrote, and RemoveContainer on the full disk frees that space before it
//! returns. With the disk filled again, RemoveImage works and frees the image's space before it
//! returns — what the kubelet's eviction and image GC count on.

use std::path::Path;
use std::time::{Duration, Instant};

use berth::cri::api::ContainerStatsRequest;

use crate::harness::disk::{On, SmallFs, berthd_on};
use crate::harness::leaks::assert_back_to;
use crate::harness::{Cri, Registry, images};

/// Stats may be sampled (ContainerStats reuses a writable-layer size for 10 s): a hang guard.
const STATS_HANG_GUARD: Duration = Duration::from_secs(60);

/// Directories and database pages berth keeps besides the layer itself.
const SLACK: u64 = 4 << 20;

async fn writable_layer_bytes(cri: &mut Cri, id: &str) -> u64 {
    let stats = cri
        .runtime
        .container_stats(ContainerStatsRequest { container_id: id.into() })
        .await
        .unwrap_or_else(|e| panic!("ContainerStats {id}: {e:?}"))
        .into_inner()
        .stats
        .unwrap_or_else(|| panic!("ContainerStats {id}: no stats"));
    let layer = stats.writable_layer.unwrap_or_else(|| panic!("ContainerStats {id}: no writable layer"));
    layer.used_bytes.map_or(0, |u| u.value)
}

#[tokio::test(flavor = "multi_thread")]
async fn full_disk_usage_is_reported_and_removals_free_it_at_once() {
    let reg = Registry::shared();
    let root = SmallFs::mount("root", 96);
    let (berthd, before, mut cri, image) = berthd_on(&root, On::Root, reg).await;
    let pod = berthd.pod("full-usage");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let used_before = root.used();

    // cat writes until the filesystem refuses a single byte more, then the container stays up.
    let c = pod.container("hog", &image).sh("cat /dev/zero > /hog; sleep 100000").build();
    let hog = cri.create_start(&pod_id, &pod, c).await.expect("the container filling the disk");
    let guard = Instant::now() + STATS_HANG_GUARD;
    while root.available() > 0 {
        assert!(
            Instant::now() < guard,
            "the container did not fill the disk: {} bytes free",
            root.available()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written = root.used() - used_before;
    assert!(written > 64 << 20, "the container wrote only {written} bytes");

    // ImageFsInfo: berth's data is (nearly) all of this filesystem, on its mount point.
    let guard = Instant::now() + STATS_HANG_GUARD;
    loop {
        let info = cri.fs_info().await.expect("ImageFsInfo on a full disk");
        let fs = info.image_filesystems.first().expect("an image filesystem").clone();
        let used = fs.used_bytes.as_ref().map_or(0, |u| u.value);
        let mountpoint = fs.fs_id.as_ref().map(|f| f.mountpoint.clone()).unwrap_or_default();
        assert_eq!(Path::new(&mountpoint), root.path(), "{fs:?}");
        assert!(
            used <= root.used() + SLACK,
            "ImageFsInfo reports {used} bytes on a {} byte filesystem",
            root.size()
        );
        if used + SLACK >= root.used() {
            assert!(fs.inodes_used.as_ref().is_some_and(|i| i.value > 0), "{fs:?}");
            break;
        }
        assert!(
            Instant::now() < guard,
            "ImageFsInfo reports {used} bytes, the filesystem holds {}",
            root.used()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // ContainerStats: the writable layer is what the container wrote.
    let guard = Instant::now() + STATS_HANG_GUARD;
    loop {
        let layer = writable_layer_bytes(&mut cri, &hog).await;
        assert!(layer <= written + SLACK, "a {layer} byte writable layer after writing {written} bytes");
        if layer + SLACK >= written {
            break;
        }
        assert!(Instant::now() < guard, "the writable layer is reported at {layer} bytes, {written} written");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // RemoveContainer on the full disk gives the layer back before it returns.
    cri.stop(&hog, 0).await.expect("StopContainer on a full disk");
    cri.remove_container(&hog).await.expect("RemoveContainer on a full disk");
    assert!(
        root.available() + SLACK >= written,
        "{} bytes free right after RemoveContainer",
        root.available()
    );

    // RemoveImage on a full disk gives the image back before it returns.
    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    root.fill();
    cri.remove(&image).await.expect("RemoveImage on a full disk");
    let freed = root.available();
    assert!(freed >= images().busybox.layer_bytes(), "only {freed} bytes free right after RemoveImage");
    assert!(cri.status(&image).await.expect("ImageStatus").is_none());
    root.unfill();
    assert_back_to(&berthd, &before);
}
