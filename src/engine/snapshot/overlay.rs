//! The overlayfs snapshot backend: each snapshot is `<dir>/snapshots/<id>/{fs,work}`; a layer is
//! written straight into `fs` with overlay-style whiteouts, and a container's root is an overlay
//! mount with the parents' `fs` directories as lower layers. Ids are short numbers because the
//! whole `lowerdir=` list must fit in the one page of mount data the kernel accepts.
//!
//! This backend must never be used where [`check_support`] failed, and never mounts anything
//! except in that check.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Backend, Mount, SnapshotKind, WhiteoutMode, disk_usage, list_ids, remove_tree};
use crate::engine::Usage;
use crate::error::{Context, Result};

/// Snapshots as overlayfs layers.
pub struct OverlayBackend {
    snapshots: PathBuf,
    index_off: bool,
}

impl OverlayBackend {
    /// The backend rooted at `dir` (snapshots live in `<dir>/snapshots`).
    pub fn new(dir: &Path) -> Self {
        // With the overlay index feature on by default, one lower directory shared by several
        // mounts is refused; containerd turns it off per mount for the same reason.
        let index_off = fs::read_to_string("/sys/module/overlay/parameters/index")
            .map(|v| v.trim() == "Y")
            .unwrap_or(false);
        OverlayBackend { snapshots: dir.join("snapshots"), index_off }
    }

    fn fs_dir(&self, id: &str) -> PathBuf {
        self.snapshots.join(id).join("fs")
    }

    fn fs_str(&self, id: &str) -> String {
        self.fs_dir(id).to_string_lossy().into_owned()
    }
}

impl Backend for OverlayBackend {
    fn name(&self) -> &'static str {
        "overlayfs"
    }

    fn create(&self, id: &str, parent_ids: &[String]) -> Result<()> {
        let dir = self.snapshots.join(id);
        let fs_dir = dir.join("fs");
        let what = || format!("creating overlay snapshot directory {}", dir.display());
        fs::create_dir(&dir).context(what)?;
        fs::create_dir(&fs_dir).context(what)?;
        fs::create_dir(dir.join("work")).context(what)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).context(what)?;
        // The upper directory's root is the merged root: it must look like the parent's root.
        let (mode, uid, gid) = match parent_ids.first() {
            Some(p) => {
                let m = fs::symlink_metadata(self.fs_dir(p)).context(what)?;
                (m.mode() & 0o7777, m.uid(), m.gid())
            }
            None => (0o755, 0, 0),
        };
        std::os::unix::fs::lchown(&fs_dir, Some(uid), Some(gid)).context(what)?;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(mode)).context(what)?;
        Ok(())
    }

    fn mounts(&self, id: &str, parent_ids: &[String], kind: SnapshotKind) -> Vec<Mount> {
        let bind = |source: String, mode: &str| Mount {
            kind: "bind".into(),
            source,
            options: vec!["rbind".into(), mode.into()],
        };
        let lowerdir = || {
            let dirs: Vec<String> = parent_ids.iter().map(|p| self.fs_str(p)).collect();
            format!("lowerdir={}", dirs.join(":"))
        };
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        match (kind, parent_ids) {
            (SnapshotKind::Active, []) => vec![bind(self.fs_str(id), "rw")],
            (SnapshotKind::Active, _) => {
                let dir = self.snapshots.join(id);
                options.push(format!("workdir={}", dir.join("work").display()));
                options.push(format!("upperdir={}", dir.join("fs").display()));
                options.push(lowerdir());
                vec![Mount { kind: "overlay".into(), source: "overlay".into(), options }]
            }
            (_, []) => vec![bind(self.fs_str(id), "ro")],
            (_, [only]) => vec![bind(self.fs_str(only), "ro")],
            (_, _) => {
                // Without an upper directory the overlay is read-only.
                options.push(lowerdir());
                vec![Mount { kind: "overlay".into(), source: "overlay".into(), options }]
            }
        }
    }

    fn apply_target(&self, id: &str) -> (PathBuf, WhiteoutMode) {
        (self.fs_dir(id), WhiteoutMode::Overlay)
    }

    fn remove(&self, id: &str) -> Result<()> {
        remove_tree(&self.snapshots.join(id))
    }

    fn usage(&self, id: &str) -> Result<Usage> {
        disk_usage(&self.fs_dir(id))
    }

    fn ids_on_disk(&self) -> Result<Vec<String>> {
        list_ids(&self.snapshots)
    }
}

/// Whether overlay snapshots can live in `dir`: the backing filesystem must report file types in
/// directory entries (d_type; overlayfs misbehaves without it) and an overlay mount with two lower
/// layers must work there. The error says why not, for the operator.
pub fn check_support(dir: &Path) -> std::result::Result<(), String> {
    let text = dir.to_string_lossy();
    if text.contains(',') || text.contains(':') {
        return Err(format!("{text} contains ',' or ':', which overlay mount options cannot express"));
    }
    let check = dir.join("overlay-check");
    let merged = check.join("merged");
    // A crash during an earlier check may have left the test mount behind.
    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    remove_tree(&check).map_err(|e| e.to_string())?;
    let result = try_overlay(&check);
    if let Err(e) = remove_tree(&check) {
        tracing::warn!("removing overlay check directory: {e}");
    }
    result
}

fn try_overlay(check: &Path) -> std::result::Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what} in {}: {e}", check.display());
    for d in ["lower1", "lower2", "upper", "work", "merged"] {
        fs::create_dir_all(check.join(d)).map_err(|e| io("creating test directories", e))?;
    }
    fs::write(check.join("lower1/file"), b"x").map_err(|e| io("writing a test file", e))?;

    let fd = rustix::fs::open(
        check,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io("opening", e.into()))?;
    let mut entries = rustix::fs::Dir::new(fd).map_err(|e| io("listing", e.into()))?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(|e| io("listing", e.into()))?;
        if entry.file_name().to_bytes() == b"lower1" && entry.file_type() == rustix::fs::FileType::Unknown {
            return Err(format!(
                "the filesystem of {} does not support d_type (for xfs, format it with ftype=1)",
                check.display()
            ));
        }
    }

    let p = |d: &str| check.join(d).display().to_string();
    let mut options = vec![
        format!("lowerdir={}:{}", p("lower2"), p("lower1")),
        format!("upperdir={}", p("upper")),
        format!("workdir={}", p("work")),
    ];
    if OverlayBackend::new(check).index_off {
        options.insert(0, "index=off".into());
    }
    let m = Mount { kind: "overlay".into(), source: "overlay".into(), options };
    let merged = check.join("merged");
    super::mount_all(&[m], &merged).map_err(|e| format!("overlay mount does not work: {e}"))?;
    let visible = merged.join("file").exists();
    super::unmount(&merged).map_err(|e| e.to_string())?;
    if !visible {
        return Err("overlay mount does not show its lower layer".into());
    }
    Ok(())
}
