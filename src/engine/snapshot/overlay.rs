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

/// What [`check_support`] found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// Overlay snapshots cannot live there; why, for the operator.
    No(String),
    /// The check could not run (its test files could not be written: a full disk, a quota): it says
    /// nothing about overlay support.
    Unknown(String),
}

/// Whether overlay snapshots can live in `dir`: the backing filesystem must report file types in
/// directory entries (d_type; overlayfs misbehaves without it) and an overlay mount with two lower
/// layers must work there. The reasons say why not, for the operator.
pub fn check_support(dir: &Path) -> Support {
    let text = dir.to_string_lossy();
    if text.contains(',') || text.contains(':') {
        return Support::No(format!(
            "{text} contains ',' or ':', which overlay mount options cannot express"
        ));
    }
    let check = dir.join("overlay-check");
    let merged = check.join("merged");
    // A crash during an earlier check may have left the test mount behind.
    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    if let Err(e) = remove_tree(&check) {
        return Support::Unknown(e.to_string());
    }
    let result = try_overlay(&check);
    if let Err(e) = remove_tree(&check) {
        tracing::warn!("removing overlay check directory: {e}");
    }
    result
}

fn try_overlay(check: &Path) -> Support {
    // Failing to create the test files says nothing about overlayfs; everything after does.
    let io = |what: &str, e: std::io::Error| {
        let why = format!("{what} in {}: {e}", check.display());
        if crate::error::is_no_space(&e) || e.raw_os_error() == Some(libc::EROFS) {
            Support::Unknown(why)
        } else {
            Support::No(why)
        }
    };
    for d in ["lower1", "lower2", "upper", "work", "merged"] {
        if let Err(e) = fs::create_dir_all(check.join(d)) {
            return io("creating test directories", e);
        }
    }
    if let Err(e) = fs::write(check.join("lower1/file"), b"x") {
        return io("writing a test file", e);
    }
    match has_d_type(check) {
        Ok(true) => {}
        Ok(false) => {
            return Support::No(format!(
                "the filesystem of {} does not support d_type (for xfs, format it with ftype=1)",
                check.display()
            ));
        }
        Err(e) => return io("listing", e),
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
    if let Err(e) = super::mount_all(&[m], &merged) {
        return Support::No(format!("overlay mount does not work: {e}"));
    }
    let visible = merged.join("file").exists();
    if let Err(e) = super::unmount(&merged) {
        return Support::No(e.to_string());
    }
    if !visible {
        return Support::No("overlay mount does not show its lower layer".into());
    }
    Support::Yes
}

/// Whether the directory entries of `check` carry their file type (`lower1` is a directory there).
fn has_d_type(check: &Path) -> std::io::Result<bool> {
    let fd = rustix::fs::open(
        check,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut entries = rustix::fs::Dir::new(fd)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        if entry.file_name().to_bytes() == b"lower1" && entry.file_type() == rustix::fs::FileType::Unknown {
            return Ok(false);
        }
    }
    Ok(true)
}
