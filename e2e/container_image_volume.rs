//! Image volumes (CRI `Mount.image`, the kubelet's `volumes[].image`): an image the kubelet pulled is
//! mounted read-only into containers, whole or from `image_sub_path`, once per pod and shared by its
//! containers. Sub paths that leave the image (symlinks, `..`) are refused, and so are writable
//! image mounts and absent images; a failed CreateContainer rolls its volume back; GC keeps a
//! volume whose image was removed; nothing is left after RemovePodSandbox, also across a berthd crash.

use std::path::{Path, PathBuf};

use tonic::Code;

use crate::harness::berthd::berthctl_json;
use crate::harness::images::{VOLUME_DATA_JSON, VOLUME_FILE, VOLUME_OS_RELEASE};
use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Cri, Leaks, Registry, images};

/// The snapshots berthd holds as (key, parent).
fn snapshots(berthd: &Berthd) -> Vec<(String, String)> {
    let listed = berthctl_json(berthd.socket(), &["snapshots", "ls"]);
    let key = |s: &serde_json::Value, k: &str| s[k].as_str().unwrap_or_default().to_string();
    listed["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| (key(s, "key"), key(s, "parent")))
        .collect()
}

/// Snapshot keys of image volumes berthd holds.
fn volume_snapshots(berthd: &Berthd) -> Vec<String> {
    snapshots(berthd).into_iter().map(|(k, _)| k).filter(|k| k.starts_with("image-volume-")).collect()
}

/// Every mount at or under `dir`, stacked ones counted each (mounts_under lists mount points once).
fn mounts_at(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    berth::mountinfo::parse(&info)
        .into_iter()
        .map(|m| PathBuf::from(m.mount_point))
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn volumes_dir(berthd: &Berthd, pod_id: &str) -> PathBuf {
    berthd.state().join("sandboxes").join(pod_id).join("image-volumes")
}

async fn cat(cri: &mut Cri, id: &str, path: &str) -> String {
    let r = cri.exec(id, &["cat", path], 10).await.expect("ExecSync cat");
    assert_eq!(r.exit_code, 0, "cat {path}: {}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8(r.stdout).expect("utf-8")
}

async fn assert_read_only(cri: &mut Cri, id: &str, path: &str) {
    let r = cri.exec(id, &["touch", path], 10).await.expect("ExecSync touch");
    assert_ne!(r.exit_code, 0, "writing {path} in an image volume succeeded");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("Read-only file system"), "{path}: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_are_shared_read_only_confined_and_removed_with_the_pod() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let busybox = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    // What the kubelet does: pull the volume's image, then pass the returned ref in Mount.image.
    let volume = cri.pull(&images().volume.reference(&reg.host())).await.expect("PullImage volume");

    let pod = berthd.pod("image-volume");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let c = pod
        .container("whole", &busybox)
        .command(&["sleep", "100000"])
        .image_volume(&volume, "", "/volume")
        .image_volume(&volume, "data", "/sub")
        .build();
    let whole = cri.create_start(&pod_id, &pod, c).await.expect("container with image volumes");
    assert_eq!(cat(&mut cri, &whole, "/volume/data.json").await, VOLUME_DATA_JSON);
    assert_eq!(cat(&mut cri, &whole, "/volume/etc/os-release").await, VOLUME_OS_RELEASE);
    assert_eq!(cat(&mut cri, &whole, "/sub/file.txt").await, VOLUME_FILE);
    let r = cri.exec(&whole, &["ls", "/sub"], 10).await.expect("ls");
    assert!(!String::from_utf8_lossy(&r.stdout).contains("data.json"), "the sub path shows the whole image");
    assert_read_only(&mut cri, &whole, "/volume/new").await;
    assert_read_only(&mut cri, &whole, "/sub/new").await;

    // A symlink inside the image that stays inside is followed, and the second container shares the
    // pod's one mount of the image.
    let c = pod
        .container("link", &busybox)
        .command(&["sleep", "100000"])
        .image_volume(&volume, "data/etc", "/through-link")
        .build();
    let link = cri.create_start(&pod_id, &pod, c).await.expect("container through an inner symlink");
    assert_eq!(cat(&mut cri, &link, "/through-link/os-release").await, VOLUME_OS_RELEASE);
    let dir = volumes_dir(&berthd, &pod_id);
    assert_eq!(mounts_at(&dir).len(), 1, "one mount per pod and image: {:?}", mounts_at(&dir));
    assert_eq!(volume_snapshots(&berthd).len(), 1, "{:?}", volume_snapshots(&berthd));

    // Refused: what leaves the image, what is not a directory, an absent image, a writable mount.
    let zeros = format!("sha256:{}", "0".repeat(64));
    for (i, (image, sub, readonly, code, what)) in [
        (volume.as_str(), "escape-absolute", true, Code::InvalidArgument, "escapes"),
        (volume.as_str(), "escape-relative", true, Code::InvalidArgument, "escapes"),
        (volume.as_str(), "data/../..", true, Code::InvalidArgument, "escapes"),
        (volume.as_str(), "/etc", true, Code::InvalidArgument, "relative"),
        (volume.as_str(), "missing", true, Code::NotFound, "does not exist"),
        (volume.as_str(), "data.json", true, Code::InvalidArgument, "not a directory"),
        (zeros.as_str(), "", true, Code::NotFound, "not found"),
        (volume.as_str(), "", false, Code::InvalidArgument, "read-only"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = pod
            .container(&format!("refused-{i}"), &busybox)
            .command(&["true"])
            .image_volume(image, sub, "/volume")
            .build();
        c.mounts[0].readonly = readonly;
        let e = cri.create(&pod_id, &pod, c).await.expect_err(&format!("{image} {sub:?} ro={readonly}"));
        assert_eq!(e.code(), code, "{sub:?}: {e:?}");
        assert!(e.message().starts_with("ImageVolumeMountFailed: mounts[0]: "), "{e:?}");
        assert!(e.message().contains(what), "{sub:?}: {e:?}");
    }
    // The volume the running containers use stays.
    assert_eq!(mounts_at(&dir).len(), 1);
    assert_eq!(cat(&mut cri, &link, "/through-link/os-release").await, VOLUME_OS_RELEASE);

    // In a pod of its own, the failed container's volume is rolled back: nothing else uses it.
    let lone = berthd.pod("image-volume-rollback");
    let lone_id = cri.run_pod(&lone).await.expect("RunPodSandbox");
    let c = lone
        .container("escaping", &busybox)
        .command(&["true"])
        .image_volume(&volume, "", "/fine")
        .image_volume(&volume, "escape-absolute", "/escaping")
        .build();
    let e = cri.create(&lone_id, &lone, c).await.expect_err("an escaping sub path");
    assert!(e.message().contains("mounts[1]") && e.message().contains("escapes"), "{e:?}");
    assert!(mounts_at(&volumes_dir(&berthd, &lone_id)).is_empty());
    assert!(!volumes_dir(&berthd, &lone_id).join(volume.trim_start_matches("sha256:")).exists());
    assert_eq!(volume_snapshots(&berthd).len(), 1, "{:?}", volume_snapshots(&berthd));

    // The image goes (the kubelet's image GC may do this) and GC runs: the mounted volume stays,
    // with the image's layers below it.
    let top_layer = snapshots(&berthd)
        .into_iter()
        .find(|(k, _)| k.starts_with("image-volume-"))
        .map(|(_, parent)| parent)
        .expect("the volume's snapshot");
    let has = |key: &str| snapshots(&berthd).iter().any(|(k, _)| k == key);
    cri.remove(&volume).await.expect("RemoveImage");
    berthctl_json(berthd.socket(), &["gc"]);
    assert_eq!(volume_snapshots(&berthd).len(), 1);
    assert!(has(&top_layer), "GC removed the layer {top_layer} under a mounted image volume");
    assert_eq!(cat(&mut cri, &whole, "/volume/data.json").await, VOLUME_DATA_JSON);

    cri.stop_remove_pod(&lone_id).await.expect("remove the second pod");
    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
    assert!(!dir.exists(), "{} is left", dir.display());
    assert_eq!(volume_snapshots(&berthd), Vec::<String>::new());
    // With the pod gone, GC takes the layers the volume held.
    berthctl_json(berthd.socket(), &["gc"]);
    assert!(!has(&top_layer), "the layer {top_layer} stayed after the pod and its image went");
}

/// berthd is killed while a pod has an image volume: the next berthd shares the mount with a new
/// container instead of mounting again, and removing the pod leaves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_outlive_a_berthd_crash_and_go_with_the_pod() {
    let reg = Registry::shared();
    let mut berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let busybox = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let volume = cri.pull(&images().volume.reference(&reg.host())).await.expect("PullImage volume");
    let pod = berthd.pod("image-volume-crash");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let c =
        pod.container("a", &busybox).command(&["sleep", "100000"]).image_volume(&volume, "", "/v").build();
    let a = cri.create_start(&pod_id, &pod, c).await.expect("container a");
    let dir = volumes_dir(&berthd, &pod_id);
    let mounted = mounts_at(&dir);
    assert_eq!(mounted.len(), 1, "{mounted:?}");

    drop(cri);
    berthd.kill9();
    berthd.start();
    let mut cri = berthd.cri().await;
    assert_eq!(cat(&mut cri, &a, "/v/data.json").await, VOLUME_DATA_JSON);
    let c =
        pod.container("b", &busybox).command(&["sleep", "100000"]).image_volume(&volume, "", "/v").build();
    let b = cri.create_start(&pod_id, &pod, c).await.expect("container b after the crash");
    assert_eq!(cat(&mut cri, &b, "/v/etc/os-release").await, VOLUME_OS_RELEASE);
    assert_eq!(mounts_at(&dir), mounted, "mounted again instead of shared");

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
    assert!(!Path::new(&dir).exists());
    assert_eq!(volume_snapshots(&berthd), Vec::<String>::new());
}
