//! Image volumes (CRI `Mount.image`, Kubernetes `volumes[].image`): an image the kubelet pulled,
//! mounted read-only into containers. As containerd 2.x does (`internal/cri/server/
//! container_image_mount.go`), each image is mounted once per pod under the pod's own state
//! directory (`<state>/sandboxes/<sandbox id>/image-volumes/<image id>`) and shared by all its
//! containers; a container gets a read-only bind mount of it, or of its `image_sub_path`.
//!
//! The mount is a read-only view snapshot of the image's unpacked layers, labelled a GC root owned
//! by the sandbox (as a container's rootfs is), so GC and RemoveImage keep it and the layers below it
//! while the pod has it. Everything is unmounted and removed when the pod sandbox stops (containerd
//! does it at StopPodSandbox), again at RemovePodSandbox, on a failed CreateContainer when no other
//! container of the pod names the image, and by recovery for sandboxes that are gone.
//!
//! The image is hostile input: `image_sub_path` is resolved beneath the mounted image with
//! `openat2(RESOLVE_BENEATH)`, refusing `..` above it and symlinks that leave it (absolute ones
//! included, as containerd's `os.OpenInRoot` does), and the bind source is the fully resolved path,
//! so the OCI runtime opens what was checked. Nothing here may write into the image.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::api;
use super::pods::{LABEL_OWNER, Pods, blocking, cleanup};
use crate::engine::gc::LABEL_ROOT;
use crate::engine::snapshot::{self, Snapshots};
use crate::error::{Context, Error, ErrorKind, Result};

/// How every image volume failure of CreateContainer begins: the kubelet counts an error whose
/// message starts with it as a failed image volume mount (cri-api `ErrImageVolumeMountFailed`).
pub const MOUNT_FAILED: &str = "ImageVolumeMountFailed";

/// The directory in a pod's state directory that holds its image volumes, one per image.
pub const DIR: &str = "image-volumes";

/// The snapshot of a pod's image volume: `image-volume-<sandbox id>-<image id hex>`.
pub fn snapshot_key(sandbox: &str, volume: &str) -> String {
    format!("image-volume-{sandbox}-{volume}")
}

/// The image a mount asks for, checked as containerd checks it (`mutateImageMount`): no host
/// path, read-only. None for a plain bind mount (an empty image spec counts as none).
pub fn requested(m: &api::Mount) -> Result<Option<&str>> {
    let Some(image) = m.image.as_ref().map(|i| i.image.as_str()).filter(|i| !i.is_empty()) else {
        return Ok(None);
    };
    if !m.host_path.is_empty() {
        return Err(Error::invalid(format!(
            "host_path must be empty for an image volume, got {:?} (image {image:?})",
            m.host_path
        )));
    }
    if !m.readonly {
        return Err(Error::invalid(format!("an image volume must be read-only (image {image:?})")));
    }
    Ok(Some(image))
}

/// Whether `path` is the root of a mount (false if it does not exist).
fn is_mount_point(path: &Path) -> Result<bool> {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags};
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    match rustix::fs::statx(CWD, path, flags, StatxFlags::empty()) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
        }
        Ok(_) => Err(Error::internal(format!(
            "the kernel does not say whether {} is a mount point (statx STATX_ATTR_MOUNT_ROOT, linux 5.8)",
            path.display()
        ))),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e).context(|| format!("statx of {}", path.display())),
    }
}

/// Mounts the image volume `volume` of `sandbox` (a read-only view of the committed snapshot
/// `parent`, the image's top layer) at `dir/volume`, unless it is mounted there already (another
/// container of the pod has it). Returns the mount point.
pub fn ensure_mounted(
    snapshots: &Snapshots,
    dir: &Path,
    sandbox: &str,
    volume: &str,
    parent: Option<&str>,
) -> Result<PathBuf> {
    let target = dir.join(volume);
    if is_mount_point(&target)? {
        return Ok(target);
    }
    crate::fsutil::create_dir_all_with_mode(&target, 0o755)?;
    let key = snapshot_key(sandbox, volume);
    let labels = [
        (LABEL_ROOT.to_string(), crate::engine::metadata::now_nanos().to_string()),
        (LABEL_OWNER.to_string(), sandbox.to_string()),
    ]
    .into_iter()
    .collect();
    let mounts = match snapshots.view(&key, parent, labels) {
        // Made before a crash or a failed mount, and never mounted (or unmounted since).
        Err(e) if e.kind() == ErrorKind::AlreadyExists => snapshots.mounts(&key)?,
        r => r?,
    };
    if let Err(e) = snapshot::mount_all(&mounts, &target) {
        let _ = super::files::unmount(&target);
        let _ = snapshots.remove(&key);
        return Err(e);
    }
    Ok(target)
}

/// The directory `sub` names inside the mounted image at `root` ("" is the root itself), with every
/// symlink resolved. Refused: an absolute path, `..` above the root, a symlink leading out of it,
/// anything but a directory (containerd mounts directories only). The image is read-only, so the
/// resolved path stays what was checked.
pub fn resolve_sub_path(root: &Path, sub: &str) -> Result<PathBuf> {
    use rustix::fs::{FileType, Mode, OFlags};
    if sub.is_empty() {
        return Ok(root.to_path_buf());
    }
    if sub.starts_with('/') {
        return Err(Error::invalid(format!("image_sub_path {sub:?} must be relative to the image")));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir =
        rustix::fs::open(root, flags, Mode::empty()).context(|| format!("opening {}", root.display()))?;
    let fd =
        crate::engine::image::apply::open_beneath(&dir, sub.as_bytes(), OFlags::PATH).map_err(
            |e| match e {
                rustix::io::Errno::XDEV | rustix::io::Errno::LOOP => {
                    Error::invalid(format!("image_sub_path {sub:?} escapes the image"))
                }
                rustix::io::Errno::NOENT => {
                    Error::not_found(format!("image_sub_path {sub:?} does not exist in the image"))
                }
                rustix::io::Errno::NOTDIR => {
                    Error::invalid(format!("image_sub_path {sub:?}: a parent of it is not a directory"))
                }
                e => Error::with_source(ErrorKind::Internal, format!("resolving image_sub_path {sub:?}"), e),
            },
        )?;
    let st = rustix::fs::fstat(&fd).context(|| format!("stat of image_sub_path {sub:?}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(Error::invalid(format!(
            "image_sub_path {sub:?} is not a directory: only directories can be mounted"
        )));
    }
    let real = |fd: &dyn AsRawFd| {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .context(|| format!("resolving image_sub_path {sub:?}"))
    };
    let (resolved, root_real) = (real(&fd)?, real(&dir)?);
    if !resolved.starts_with(&root_real) {
        return Err(Error::internal(format!(
            "image_sub_path {sub:?} resolved to {} outside {}",
            resolved.display(),
            root_real.display()
        )));
    }
    Ok(resolved)
}

/// Removes a snapshot; one already gone is fine.
fn remove_snapshot(snapshots: &Snapshots, key: &str) -> Result<()> {
    match snapshots.remove(key) {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// Removes an empty directory; one already gone is fine.
fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Unmounts and removes the image volume `volume` of `sandbox` at `dir/volume` (idempotent).
pub fn release(snapshots: &Snapshots, dir: &Path, sandbox: &str, volume: &str) -> Result<()> {
    let target = dir.join(volume);
    super::files::unmount(&target)?;
    remove_snapshot(snapshots, &snapshot_key(sandbox, volume))?;
    remove_dir(&target)
}

/// Releases every image volume of `sandbox`: those in `dir`, then any snapshot of one that a crash
/// left unmounted; finally `dir` itself (idempotent).
pub fn release_all(snapshots: &Snapshots, dir: &Path, sandbox: &str) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.context(|| format!("reading {}", dir.display()))?;
                release(snapshots, dir, sandbox, &entry.file_name().to_string_lossy())?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(|| format!("reading {}", dir.display())),
    }
    let prefix = snapshot_key(sandbox, "");
    for s in snapshots.list()? {
        if s.key.starts_with(&prefix) && s.labels.get(LABEL_OWNER).is_some_and(|o| o == sandbox) {
            remove_snapshot(snapshots, &s.key)?;
        }
    }
    remove_dir(dir)
}

impl Pods {
    /// The directory of a pod's image volumes.
    pub fn image_volumes_dir(&self, sandbox: &str) -> PathBuf {
        self.paths.sandbox_dir(sandbox).join(DIR)
    }

    /// The present image a reference names, with its volume name (the image ID's hex).
    fn image_volume_of(&self, image: &str) -> Result<(String, Option<String>)> {
        let found = self.images.lookup(image)?.ok_or_else(|| {
            Error::not_found(format!(
                "image {image:?} not found: the kubelet pulls it before CreateContainer"
            ))
        })?;
        let top_layer = found.info.chain_id.as_ref().map(|c| c.to_string());
        Ok((found.info.config_digest.hex().to_string(), top_layer))
    }

    /// `mounts` of container `id` with every image volume mounted (once per pod and image) and
    /// turned into a read-only bind mount of it or of its `image_sub_path`; also the volumes used.
    /// A failure rolls back the volumes no other container of the pod names, and its message starts
    /// with [`MOUNT_FAILED`].
    pub async fn mount_image_volumes(
        self: &Arc<Self>,
        id: &str,
        sandbox: &str,
        mounts: &[api::Mount],
    ) -> Result<(Vec<api::Mount>, Vec<String>)> {
        let failed = |i: usize, e: Error| e.context(format!("{MOUNT_FAILED}: mounts[{i}]"));
        let mut wanted = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            if let Some(image) = requested(m).map_err(|e| failed(i, e))? {
                wanted.push((i, image.to_string()));
            }
        }
        let mut out = mounts.to_vec();
        if wanted.is_empty() {
            return Ok((out, Vec::new()));
        }
        // Serialised with the pod's Stop and Remove (which release the volumes) and with the image
        // volumes of its other containers.
        let lock = self.store.lock(sandbox);
        let _guard = lock.lock().await;
        let mut volumes: Vec<String> = Vec::new();
        let r = async {
            self.ready_sandbox(sandbox).map_err(|e| failed(wanted[0].0, e))?;
            for (i, image) in &wanted {
                let (volume, parent) = self.image_volume_of(image).map_err(|e| failed(*i, e))?;
                if !volumes.contains(&volume) {
                    volumes.push(volume.clone());
                }
                let (snapshots, dir, sb, sub) = (
                    self.engine.snapshots.clone(),
                    self.image_volumes_dir(sandbox),
                    sandbox.to_string(),
                    mounts[*i].image_sub_path.clone(),
                );
                let source = blocking(move || {
                    let root = ensure_mounted(&snapshots, &dir, &sb, &volume, parent.as_deref())?;
                    resolve_sub_path(&root, &sub)
                })
                .await
                .map_err(|e| failed(*i, e))?;
                let m = &mut out[*i];
                m.host_path = source.to_string_lossy().into_owned();
                m.image = None;
                m.image_sub_path.clear();
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = r {
            self.release_unused_locked(sandbox, id, &volumes).await;
            return Err(e);
        }
        Ok((out, volumes))
    }

    /// Releases those of `volumes` that no container of `sandbox` but `except` names (rolling back
    /// a failed CreateContainer).
    pub async fn release_unused_image_volumes(&self, sandbox: &str, except: &str, volumes: &[String]) {
        if volumes.is_empty() {
            return;
        }
        let lock = self.store.lock(sandbox);
        let _guard = lock.lock().await;
        self.release_unused_locked(sandbox, except, volumes).await;
    }

    async fn release_unused_locked(&self, sandbox: &str, except: &str, volumes: &[String]) {
        let mut used = Vec::new();
        for c in self.store.containers_of(sandbox).into_iter().filter(|c| c.id != except) {
            for image in c.config.mounts.iter().filter_map(|m| requested(m).ok().flatten()) {
                match self.image_volume_of(image) {
                    Ok((v, _)) => used.push(v),
                    // An image no longer present cannot tell which volume it is: keep them all.
                    Err(_) => return,
                }
            }
        }
        for volume in volumes.iter().filter(|v| !used.contains(v)) {
            let (snapshots, dir, sb, v) = (
                self.engine.snapshots.clone(),
                self.image_volumes_dir(sandbox),
                sandbox.to_string(),
                volume.clone(),
            );
            let work = blocking(move || release(&snapshots, &dir, &sb, &v));
            cleanup("releasing an image volume", sandbox, work).await;
        }
    }

    /// Unmounts and removes every image volume of `sandbox` (idempotent).
    pub async fn release_image_volumes(&self, sandbox: &str) -> Result<()> {
        let (snapshots, dir, sb) =
            (self.engine.snapshots.clone(), self.image_volumes_dir(sandbox), sandbox.to_string());
        blocking(move || release_all(&snapshots, &dir, &sb)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SnapshotterKind;
    use crate::engine::metadata::{Db, Labels};

    fn image_mount(image: &str) -> api::Mount {
        api::Mount {
            container_path: "/v".into(),
            readonly: true,
            image: Some(api::ImageSpec { image: image.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn image_mounts_must_be_read_only_without_a_host_path() {
        assert_eq!(requested(&image_mount("sha256:ab")).unwrap(), Some("sha256:ab"));
        let plain = api::Mount { host_path: "/h".into(), ..Default::default() };
        assert_eq!(requested(&plain).unwrap(), None);
        assert_eq!(requested(&api::Mount { image: Some(Default::default()), ..plain }).unwrap(), None);
        let e = requested(&api::Mount { host_path: "/h".into(), ..image_mount("i") }).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("host_path"), "{e}");
        let e = requested(&api::Mount { readonly: false, ..image_mount("i") }).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("read-only"), "{e}");
    }

    /// A hostile image: symlinks pointing out of it, absolute and relative, and one that stays in.
    fn hostile_image() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("image");
        std::fs::create_dir_all(root.join("etc/conf")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data.json"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("data/up")).unwrap();
        std::os::unix::fs::symlink("../etc/conf", root.join("data/inside")).unwrap();
        std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
        (d, root)
    }

    #[test]
    fn sub_paths_resolve_inside_the_image_only() {
        let (_d, root) = hostile_image();
        let real = std::fs::canonicalize(&root).unwrap();
        assert_eq!(resolve_sub_path(&root, "").unwrap(), root);
        assert_eq!(resolve_sub_path(&root, "etc").unwrap(), real.join("etc"));
        assert_eq!(resolve_sub_path(&root, "./etc/conf/").unwrap(), real.join("etc/conf"));
        // The bind source is the resolved path, not the symlink.
        assert_eq!(resolve_sub_path(&root, "data/inside").unwrap(), real.join("etc/conf"));
        for (sub, kind, what) in [
            ("abs", ErrorKind::InvalidArgument, "escapes"),
            ("data/up", ErrorKind::InvalidArgument, "escapes"),
            ("etc/../..", ErrorKind::InvalidArgument, "escapes"),
            ("/etc", ErrorKind::InvalidArgument, "relative"),
            ("missing", ErrorKind::NotFound, "does not exist"),
            ("dangling", ErrorKind::NotFound, "does not exist"),
            ("data.json", ErrorKind::InvalidArgument, "not a directory"),
            ("data.json/x", ErrorKind::InvalidArgument, "parent"),
        ] {
            let e = resolve_sub_path(&root, sub).unwrap_err();
            assert_eq!(e.kind(), kind, "{sub}: {e}");
            assert!(e.to_string().contains(what), "{sub}: {e}");
        }
    }

    /// Mounting needs root: one read-only mount per pod and image, shared, and all of it released.
    #[test]
    fn a_volume_is_mounted_once_read_only_and_released_without_leftovers() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&tmp.path().join("meta.redb")).unwrap());
        let snaps = Snapshots::open(&tmp.path().join("snapshots"), SnapshotterKind::Overlayfs, db).unwrap();
        for (layer, parent, file) in [("l1", None, "etc/os-release"), ("l2", Some("l1"), "data.json")] {
            snaps.prepare("building", parent, Labels::new()).unwrap();
            let (dir, _) = snaps.apply_target("building").unwrap();
            std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
            std::fs::write(dir.join(file), layer).unwrap();
            snaps.commit(layer, "building", Labels::new()).unwrap();
        }
        let dir = tmp.path().join("sandbox").join(DIR);
        let root = ensure_mounted(&snaps, &dir, "sb", "img", Some("l2")).unwrap();
        let guard = Unmount(root.clone());
        assert!(is_mount_point(&root).unwrap());
        assert_eq!(std::fs::read_to_string(root.join("etc/os-release")).unwrap(), "l1");
        assert_eq!(std::fs::read_to_string(root.join("data.json")).unwrap(), "l2");
        let e = std::fs::write(root.join("data.json"), "changed").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        // A second container of the pod shares the mount: still one mount there.
        assert_eq!(ensure_mounted(&snaps, &dir, "sb", "img", Some("l2")).unwrap(), root);
        let mounted = |p: &Path| {
            let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let p = std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
            crate::mountinfo::parse(&text).iter().filter(|m| Path::new(&m.mount_point) == p).count()
        };
        assert_eq!(mounted(&root), 1);
        let snap = snaps.stat(&snapshot_key("sb", "img")).unwrap();
        assert!(snap.labels.contains_key(LABEL_ROOT), "GC must keep it: {:?}", snap.labels);
        assert_eq!(snap.labels.get(LABEL_OWNER).map(String::as_str), Some("sb"));
        // Crash leftover: a snapshot without its mount.
        snaps
            .view(
                &snapshot_key("sb", "other"),
                Some("l1"),
                [(LABEL_OWNER.to_string(), "sb".to_string())].into(),
            )
            .unwrap();
        // Another pod's volume stays.
        snaps
            .view(
                &snapshot_key("sb2", "img"),
                Some("l1"),
                [(LABEL_OWNER.to_string(), "sb2".to_string())].into(),
            )
            .unwrap();

        release_all(&snaps, &dir, "sb").unwrap();
        drop(guard);
        assert_eq!(mounted(&root), 0);
        assert!(!dir.exists());
        let keys: Vec<String> = snaps.list().unwrap().into_iter().map(|s| s.key).collect();
        assert_eq!(keys, ["image-volume-sb2-img", "l1", "l2"]);
        release_all(&snaps, &dir, "sb").unwrap();
    }

    /// Unmounts on drop, so that a failed assertion leaves no mount behind.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = crate::cri::files::unmount(&self.0);
        }
    }
}
