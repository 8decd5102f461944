//! The native snapshot backend: each snapshot is a full directory tree `<dir>/snapshots/<id>`,
//! created as a copy of its parent (hard links, ownership, modes, xattrs, devices, symlinks and
//! mtimes preserved) and presented with a bind mount. Slow and space-hungry, but it works on any
//! filesystem, which is why it is the fallback when overlayfs is unavailable.
//!
//! It must never follow a symlink found in a snapshot tree while copying.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

use super::{Backend, Mount, SnapshotKind, WhiteoutMode, disk_usage, list_ids, remove_tree};
use crate::engine::Usage;
use crate::error::{Context, Result};

/// Snapshots as plain directory copies.
pub struct NativeBackend {
    snapshots: PathBuf,
}

impl NativeBackend {
    /// The backend rooted at `dir` (snapshots live in `<dir>/snapshots`).
    pub fn new(dir: &Path) -> Self {
        NativeBackend { snapshots: dir.join("snapshots") }
    }
}

impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    fn create(&self, id: &str, parent_ids: &[String]) -> Result<()> {
        let dir = self.snapshots.join(id);
        match parent_ids.first() {
            None => {
                fs::create_dir(&dir).context(|| format!("creating snapshot directory {}", dir.display()))?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .context(|| format!("creating snapshot directory {}", dir.display()))
            }
            Some(parent) => {
                let src = self.snapshots.join(parent);
                copy_tree(&src, &dir)
                    .context(|| format!("copying snapshot {} to {}", src.display(), dir.display()))
            }
        }
    }

    fn mounts(&self, id: &str, _parent_ids: &[String], kind: SnapshotKind) -> Vec<Mount> {
        let mode = if kind == SnapshotKind::Active { "rw" } else { "ro" };
        vec![Mount {
            kind: "bind".into(),
            source: self.snapshots.join(id).to_string_lossy().into_owned(),
            options: vec!["rbind".into(), mode.into()],
        }]
    }

    fn apply_target(&self, id: &str) -> (PathBuf, WhiteoutMode) {
        (self.snapshots.join(id), WhiteoutMode::Delete)
    }

    fn remove(&self, id: &str) -> Result<()> {
        remove_tree(&self.snapshots.join(id))
    }

    fn usage(&self, id: &str) -> Result<Usage> {
        disk_usage(&self.snapshots.join(id))
    }

    fn ids_on_disk(&self) -> Result<Vec<String>> {
        list_ids(&self.snapshots)
    }
}

/// Copies the tree `src` to the new directory `dst`, preserving hard links (within the tree),
/// ownership, modes, xattrs, device numbers, symlinks and times. Symlinks are copied, never followed.
/// Iterative: a hostile layer can build a tree deeper than a thread's stack.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    struct Level {
        src: PathBuf,
        dst: PathBuf,
        meta: fs::Metadata,
        entries: fs::ReadDir,
    }
    let meta = fs::symlink_metadata(src)?;
    fs::create_dir(dst)?;
    let mut links = HashMap::new();
    let mut stack = vec![Level { src: src.into(), dst: dst.into(), meta, entries: fs::read_dir(src)? }];
    while let Some(level) = stack.last_mut() {
        match level.entries.next() {
            None => {
                // Directory metadata last: creating its entries changed its mtime.
                if let Some(done) = stack.pop() {
                    copy_metadata(&done.src, &done.dst, &done.meta)?;
                }
            }
            Some(entry) => {
                let entry = entry?;
                let (s, d) = (entry.path(), level.dst.join(entry.file_name()));
                let meta = entry.metadata()?; // lstat: does not follow symlinks
                if meta.is_dir() {
                    fs::create_dir(&d)?;
                    let entries = fs::read_dir(&s)?;
                    stack.push(Level { src: s, dst: d, meta, entries });
                } else {
                    copy_node(&s, &d, &meta, &mut links)?;
                }
            }
        }
    }
    Ok(())
}

/// Copies one non-directory; a second name of an inode already copied becomes a hard link.
fn copy_node(
    s: &Path,
    d: &Path,
    meta: &fs::Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    if meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            return fs::hard_link(first, d); // linkat without AT_SYMLINK_FOLLOW
        }
        links.insert((meta.dev(), meta.ino()), d.to_path_buf());
    }
    let ft = meta.file_type();
    if ft.is_file() {
        // copy_file_range underneath: reflinks where the filesystem can.
        fs::copy(s, d)?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(s)?, d)?;
    } else {
        let kind = if ft.is_char_device() {
            FileType::CharacterDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else if ft.is_fifo() {
            FileType::Fifo
        } else {
            FileType::Socket
        };
        rustix::fs::mknodat(CWD, d, kind, Mode::from_raw_mode(0o600), meta.rdev())?;
    }
    copy_metadata(s, d, meta)
}

/// Ownership, then mode (chown clears setuid), then xattrs (chown clears security.capability),
/// then times. `dst` is never followed if it is a symlink.
fn copy_metadata(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    let is_link = meta.file_type().is_symlink();
    if !is_link {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    copy_xattrs(src, dst)?;
    let times = Timestamps {
        last_access: Timespec { tv_sec: meta.atime(), tv_nsec: meta.atime_nsec() },
        last_modification: Timespec { tv_sec: meta.mtime(), tv_nsec: meta.mtime_nsec() },
    };
    rustix::fs::utimensat(CWD, dst, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let size = match rustix::fs::llistxattr_query(src) {
        Ok(0) => return Ok(()),
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(src, &mut names[..])?;
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let len = rustix::fs::lgetxattr_query(src, name)?;
        let mut value = vec![0u8; len];
        let len = rustix::fs::lgetxattr(src, name, &mut value[..])?;
        if let Err(e) = rustix::fs::lsetxattr(dst, name, &value[..len], XattrFlags::empty()) {
            if name.starts_with(b"security.")
                || !matches!(e, rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM)
            {
                return Err(e.into());
            }
            tracing::debug!(path = %dst.display(), name = %String::from_utf8_lossy(name), "xattr not copied: {e}");
        }
    }
    Ok(())
}
