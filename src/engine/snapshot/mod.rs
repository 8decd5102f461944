//! Snapshots: the filesystem trees that container root filesystems are built from, in containerd's
//! model. A committed snapshot is one unpacked layer on top of its parent (named by chain ID); an
//! active snapshot is a writable tree on top of a committed parent; a view is a read-only one.
//!
//! [`Snapshots`] keeps the records (in [`crate::engine::metadata::SNAPSHOTS`]) and enforces the rules; a
//! [`Backend`] (overlayfs or native copies) does the filesystem side and knows nothing of records.
//! Intent is recorded before acting: a record is written before its directory is created and
//! deleted before its directory is removed, so a crash leaves at worst an orphan directory or an
//! unfinished `extract-` snapshot, both removed by [`Snapshots::open`].
//!
//! This module must never follow symbolic links found inside snapshot trees, and mounts nothing
//! except in [`mount_all`] (called by whoever needs a snapshot mounted) and the overlay support check.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::config::SnapshotterKind;
use crate::engine::Usage;
use crate::engine::metadata::{Db, Labels, SNAPSHOTS, SnapshotRecord, now_nanos};
use crate::error::{Context, Error, ErrorKind, Result};

pub mod native;
pub mod overlay;

pub use crate::engine::metadata::SnapshotKind;
pub use native::NativeBackend;
pub use overlay::OverlayBackend;

/// Prefix of the keys of snapshots being unpacked; an active one found at start is a leftover.
pub const EXTRACT_PREFIX: &str = "extract-";

/// The file in the snapshotter directory naming the backend that made its snapshots.
const BACKEND_MARKER: &str = "snapshotter";

/// A mount to perform, like containerd's `mount.Mount`: `kind` is `"overlay"` or `"bind"`, options
/// are mount(8)-style (`rbind`, `ro`, `lowerdir=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The filesystem type: `"overlay"` or `"bind"`.
    pub kind: String,
    /// What to mount: a directory for `bind`, `"overlay"` for overlay.
    pub source: String,
    /// Flags (`rbind`, `ro`, `rw`, …) and filesystem data (`lowerdir=…`, …).
    pub options: Vec<String>,
}

/// How a layer's whiteouts are written into an apply target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// As overlayfs reads them: a 0/0 character device per removed name, and the xattr
    /// `trusted.overlay.opaque=y` on opaque directories.
    Overlay,
    /// Removed from the target, which holds a full copy of the parent tree.
    Delete,
}

/// The filesystem side of a snapshotter. Side effects only: it keeps no records, and ids are
/// chosen by [`Snapshots`].
pub trait Backend: Send + Sync {
    /// `"overlayfs"` or `"native"`.
    fn name(&self) -> &'static str;
    /// Creates the directory of snapshot `id` on top of `parent_ids` (nearest parent first).
    fn create(&self, id: &str, parent_ids: &[String]) -> Result<()>;
    /// The mounts that present snapshot `id` of `kind` on top of `parent_ids`.
    fn mounts(&self, id: &str, parent_ids: &[String], kind: SnapshotKind) -> Vec<Mount>;
    /// The directory a layer diff is written into directly, and how to write its whiteouts.
    fn apply_target(&self, id: &str) -> (PathBuf, WhiteoutMode);
    /// Removes the directory of snapshot `id`; an absent one is not an error.
    fn remove(&self, id: &str) -> Result<()>;
    /// Disk used by snapshot `id` itself (not its parents).
    fn usage(&self, id: &str) -> Result<Usage>;
    /// The ids of every snapshot directory present.
    fn ids_on_disk(&self) -> Result<Vec<String>>;
}

/// What a caller sees of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    /// The key (for committed layers, the chain ID).
    pub key: String,
    pub kind: SnapshotKind,
    /// The key of the committed snapshot this one is based on.
    pub parent: Option<String>,
    pub labels: Labels,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Unix nanoseconds.
    pub updated_at: i64,
}

impl SnapshotInfo {
    fn new(key: String, r: SnapshotRecord) -> Self {
        SnapshotInfo {
            key,
            kind: r.kind,
            parent: r.parent,
            labels: r.labels,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The snapshotter: records in the metadata database plus a [`Backend`].
pub struct Snapshots {
    db: Arc<Db>,
    backend: Box<dyn Backend>,
    next_id: AtomicU64,
    /// The snapshotter directory, to name its filesystem when it is full.
    dir: PathBuf,
}

impl Snapshots {
    /// Opens the snapshotter in `dir`. The backend that made the snapshots there, recorded in the
    /// marker file at first start, is used again without probing, whatever the probe would say today
    /// (a full disk must not change it). Without a marker (first start), or with a recorded native
    /// fallback and no snapshots yet, the configured backend is probed: overlayfs needs d_type and a
    /// working overlay mount there, else the reason is logged and native is used, as containerd
    /// does; a probe that cannot write its test files (a full disk) decides nothing, and the
    /// configured backend is used. Removes crash leftovers.
    pub fn open(dir: &Path, kind: SnapshotterKind, db: Arc<Db>) -> Result<Snapshots> {
        fs::create_dir_all(dir.join("snapshots"))
            .context(|| format!("creating snapshotter directory {}", dir.display()))?;
        let marker = read_marker(dir)?;
        let have_records = !db.read(|tx| tx.list(&SNAPSHOTS, ""))?.is_empty();
        let backend: Box<dyn Backend> = match (kind, marker.as_deref()) {
            (SnapshotterKind::Native, _) => Box::new(NativeBackend::new(dir)),
            (SnapshotterKind::Overlayfs, Some("overlayfs")) => Box::new(OverlayBackend::new(dir)),
            (SnapshotterKind::Overlayfs, Some("native")) if have_records => {
                tracing::info!(
                    dir = %dir.display(),
                    "using the native snapshotter that the snapshots here were made with \
                     (overlayfs was unavailable when they were)"
                );
                Box::new(NativeBackend::new(dir))
            }
            (SnapshotterKind::Overlayfs, marker) => match overlay::check_support(dir) {
                overlay::Support::Yes => Box::new(OverlayBackend::new(dir)),
                overlay::Support::No(why) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        "overlayfs snapshotter unavailable, falling back to native: {why}"
                    );
                    Box::new(NativeBackend::new(dir))
                }
                overlay::Support::Unknown(why) => {
                    let keep_native = marker == Some("native");
                    tracing::warn!(
                        dir = %dir.display(),
                        "could not check overlayfs support, keeping {}: {why}",
                        if keep_native { "native" } else { "overlayfs as configured" }
                    );
                    if keep_native {
                        Box::new(NativeBackend::new(dir))
                    } else {
                        Box::new(OverlayBackend::new(dir))
                    }
                }
            },
        };
        Self::with_backend(dir, backend, db)
    }

    /// Opens the snapshotter in `dir` with an explicit backend (tests inject fakes here).
    pub fn with_backend(dir: &Path, backend: Box<dyn Backend>, db: Arc<Db>) -> Result<Snapshots> {
        let records = db.read(|tx| tx.list(&SNAPSHOTS, ""))?;
        check_marker(dir, backend.name(), !records.is_empty())?;

        let mut live = HashSet::new();
        for (key, r) in &records {
            if r.kind == SnapshotKind::Active && key.starts_with(EXTRACT_PREFIX) {
                tracing::info!(key, id = r.id, "removing unfinished unpack snapshot");
                db.write(|tx| tx.delete(&SNAPSHOTS, key))?;
                if let Err(e) = backend.remove(&r.id) {
                    tracing::warn!(key, id = r.id, "removing unfinished unpack snapshot: {e}");
                }
            } else {
                live.insert(r.id.clone());
            }
        }
        let mut max_id = 0u64;
        for id in backend.ids_on_disk()? {
            if live.contains(&id) {
                max_id = max_id.max(id.parse().unwrap_or(0));
            } else {
                tracing::info!(id, "removing snapshot directory that no record names");
                backend.remove(&id)?;
            }
        }
        for (_, r) in &records {
            max_id = max_id.max(r.id.parse().unwrap_or(0));
        }
        Ok(Snapshots { db, backend, next_id: AtomicU64::new(max_id + 1), dir: dir.to_path_buf() })
    }

    /// The backend in use: `"overlayfs"` or `"native"` (after any fallback).
    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// Creates a writable snapshot `key` on top of the committed snapshot `parent`.
    pub fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, labels, SnapshotKind::Active)
    }

    /// Creates a read-only snapshot `key` of the committed snapshot `parent`.
    pub fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, labels, SnapshotKind::View)
    }

    fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
        kind: SnapshotKind,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::invalid("creating snapshot: empty key"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let now = now_nanos();
        let parent_ids = self.db.write(|tx| {
            if tx.get(&SNAPSHOTS, key)?.is_some() {
                return Err(Error::already_exists(format!("snapshot {key:?} already exists")));
            }
            let parent_ids = match parent {
                None => Vec::new(),
                Some(p) => {
                    let rec = tx
                        .get(&SNAPSHOTS, p)?
                        .ok_or_else(|| Error::not_found(format!("parent snapshot {p:?} not found")))?;
                    if rec.kind != SnapshotKind::Committed {
                        return Err(Error::precondition(format!("parent snapshot {p:?} is not committed")));
                    }
                    chain_ids(p, rec, |k| tx.get(&SNAPSHOTS, k))?
                }
            };
            let record = SnapshotRecord {
                kind,
                id: id.clone(),
                parent: parent.map(str::to_string),
                labels,
                created_at: now,
                updated_at: now,
            };
            tx.put(&SNAPSHOTS, key, &record)?;
            Ok(parent_ids)
        })?;
        if let Err(e) = self.backend.create(&id, &parent_ids) {
            if let Err(e2) = self.db.write(|tx| tx.delete(&SNAPSHOTS, key)) {
                tracing::warn!(key, "rolling back snapshot record: {e2}");
            }
            if let Err(e2) = self.backend.remove(&id) {
                tracing::warn!(key, id, "rolling back snapshot directory: {e2}");
            }
            let e = e.context(format!("creating snapshot {key:?}"));
            return Err(crate::engine::space::name_full_filesystem(e, &self.dir));
        }
        Ok(self.backend.mounts(&id, &parent_ids, kind))
    }

    /// The mounts of the active or view snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (rec, parent_ids) = self.db.read(|tx| {
            let rec = tx.get(&SNAPSHOTS, key)?.ok_or_else(|| not_found(key))?;
            let ids = match &rec.parent {
                None => Vec::new(),
                Some(p) => {
                    let prec = tx.get(&SNAPSHOTS, p)?.ok_or_else(|| {
                        Error::internal(format!("snapshot {key:?}: parent {p:?} has no record"))
                    })?;
                    chain_ids(p, prec, |k| tx.get(&SNAPSHOTS, k))?
                }
            };
            Ok((rec, ids))
        })?;
        if rec.kind == SnapshotKind::Committed {
            return Err(Error::precondition(format!(
                "snapshot {key:?} is committed: mount a view or an active snapshot on top of it"
            )));
        }
        Ok(self.backend.mounts(&rec.id, &parent_ids, rec.kind))
    }

    /// Turns the active snapshot `key` into the committed snapshot `name`; its directory is kept.
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid(format!("committing snapshot {key:?}: empty name")));
        }
        let now = now_nanos();
        self.db.write(|tx| {
            let rec = tx.get(&SNAPSHOTS, key)?.ok_or_else(|| not_found(key))?;
            if rec.kind != SnapshotKind::Active {
                return Err(Error::precondition(format!("committing snapshot {key:?}: it is not active")));
            }
            if tx.get(&SNAPSHOTS, name)?.is_some() {
                return Err(Error::already_exists(format!(
                    "committing snapshot {key:?}: snapshot {name:?} already exists"
                )));
            }
            let committed = SnapshotRecord {
                kind: SnapshotKind::Committed,
                id: rec.id,
                parent: rec.parent,
                labels,
                created_at: now,
                updated_at: now,
            };
            tx.put(&SNAPSHOTS, name, &committed)?;
            tx.delete(&SNAPSHOTS, key)?;
            Ok(())
        })
    }

    /// Removes snapshot `key`, which must have no children. The record goes first; a crash
    /// before the directory is removed leaves an orphan that [`Snapshots::open`] removes.
    pub fn remove(&self, key: &str) -> Result<()> {
        let rec = self.db.write(|tx| {
            let rec = tx.get(&SNAPSHOTS, key)?.ok_or_else(|| not_found(key))?;
            let children = tx.list(&SNAPSHOTS, "")?;
            if let Some((child, _)) = children.iter().find(|(_, r)| r.parent.as_deref() == Some(key)) {
                return Err(Error::precondition(format!(
                    "removing snapshot {key:?}: snapshot {child:?} is based on it"
                )));
            }
            tx.delete(&SNAPSHOTS, key)?;
            Ok(rec)
        })?;
        if let Err(e) = self.backend.remove(&rec.id) {
            // The snapshot is gone as far as anyone can tell; the next start removes the directory.
            tracing::warn!(key, id = rec.id, "removing snapshot directory: {e}");
        }
        Ok(())
    }

    /// The snapshot `key`.
    pub fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        let rec = self.db.read(|tx| tx.get(&SNAPSHOTS, key))?.ok_or_else(|| not_found(key))?;
        Ok(SnapshotInfo::new(key.to_string(), rec))
    }

    /// Every snapshot, in key order.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>> {
        let all = self.db.read(|tx| tx.list(&SNAPSHOTS, ""))?;
        Ok(all.into_iter().map(|(k, r)| SnapshotInfo::new(k, r)).collect())
    }

    /// Disk used by snapshot `key` itself (its own layer or writable layer, not its parents).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.db.read(|tx| tx.get(&SNAPSHOTS, key))?.ok_or_else(|| not_found(key))?;
        self.backend.usage(&rec.id)
    }

    /// Disk used by all snapshots together.
    pub fn total_usage(&self) -> Result<Usage> {
        let all = self.db.read(|tx| tx.list(&SNAPSHOTS, ""))?;
        let mut total = Usage::default();
        for (_, r) in all {
            match self.backend.usage(&r.id) {
                Ok(u) => total = total + u,
                // Removed since the listing.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Where a layer is written into the active snapshot `key`, and how to write its whiteouts.
    pub fn apply_target(&self, key: &str) -> Result<(PathBuf, WhiteoutMode)> {
        let rec = self.db.read(|tx| tx.get(&SNAPSHOTS, key))?.ok_or_else(|| not_found(key))?;
        if rec.kind != SnapshotKind::Active {
            return Err(Error::precondition(format!(
                "applying a layer to snapshot {key:?}: it is not active"
            )));
        }
        Ok(self.backend.apply_target(&rec.id))
    }
}

fn not_found(key: &str) -> Error {
    Error::not_found(format!("snapshot {key:?} not found"))
}

/// The backend ids of `key` (whose record is `rec`) and all its ancestors, nearest first.
fn chain_ids(
    key: &str,
    rec: SnapshotRecord,
    get: impl Fn(&str) -> Result<Option<SnapshotRecord>>,
) -> Result<Vec<String>> {
    // Deeper than any image could be (overlay's lowerdir limit is far lower): a cycle in a corrupt
    // database must not loop forever.
    const MAX_DEPTH: usize = 4096;
    let mut ids = vec![rec.id];
    let mut next = rec.parent;
    while let Some(p) = next {
        if ids.len() >= MAX_DEPTH {
            return Err(Error::internal(format!("snapshot {key:?}: parent chain too long or cyclic")));
        }
        let r = get(&p)?
            .ok_or_else(|| Error::internal(format!("snapshot {key:?}: ancestor {p:?} has no record")))?;
        ids.push(r.id);
        next = r.parent;
    }
    Ok(ids)
}

/// The backend named by the marker file in `dir`, if there is one.
fn read_marker(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(BACKEND_MARKER);
    match fs::read_to_string(&path) {
        Ok(found) => Ok(Some(found.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context(|| format!("reading {}", path.display())),
    }
}

/// Makes sure the snapshots in `dir` were made by `backend`: the layouts differ, so switching
/// (by configuration or by an overlay fallback) with snapshots present would hand out broken trees.
/// Records `backend` in the marker when it is missing or names another backend and no snapshot
/// exists; a marker that cannot be written then (a full disk) is written at a later start.
fn check_marker(dir: &Path, backend: &str, have_records: bool) -> Result<()> {
    let path = dir.join(BACKEND_MARKER);
    match read_marker(dir)? {
        Some(found) if found == backend => return Ok(()),
        Some(found) if have_records => {
            return Err(Error::precondition(format!(
                "snapshots in {} were made by the {found} snapshotter but {backend} is in use: \
                 switch back, or remove all images and containers first",
                dir.display(),
            )));
        }
        _ => {}
    }
    let tmp = dir.join(format!(".{BACKEND_MARKER}.tmp"));
    let write = || -> io::Result<()> {
        fs::write(&tmp, format!("{backend}\n"))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &path)
    };
    match write().context(|| format!("writing {}", path.display())) {
        Err(e) if e.is_no_space() => {
            let _ = fs::remove_file(&tmp);
            tracing::warn!("recording the snapshotter in use: {e}; recording it at a later start");
            Ok(())
        }
        r => r,
    }
}

/// The snapshot ids under `<dir>/snapshots`.
fn list_ids(snapshots_dir: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let rd = fs::read_dir(snapshots_dir).context(|| format!("listing {}", snapshots_dir.display()))?;
    for entry in rd {
        let entry = entry.context(|| format!("listing {}", snapshots_dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            ids.push(name.to_string());
        }
    }
    Ok(ids)
}

/// Removes `path` recursively without following symlinks; an absent path is fine.
fn remove_tree(path: &Path) -> Result<()> {
    let what = || format!("removing {}", path.display());
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::internal(format!("removing {}: not a removable path", path.display())));
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dirfd = match rustix::fs::open(parent, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e).context(what),
    };
    let name = CString::new(name.as_bytes()).map_err(|_| Error::internal(what()))?;
    remove_all_at(dirfd.as_fd(), &name).context(what)
}

/// Removes `name` in `dirfd`, everything under it if it is a directory, never following
/// symlinks; absent is fine. Iterative, holding two descriptors at most: a hostile layer can
/// build a tree (through symlinked parents) deeper than any thread's stack.
pub(crate) fn remove_all_at(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dirfd, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur = rustix::fs::openat(dirfd, name, flags, Mode::empty())?;
    // Subdirectories still to remove, per level from the top; `path` names the levels entered.
    let mut pending = vec![unlink_files_in(cur.as_fd())?];
    let mut path: Vec<CString> = Vec::new();
    loop {
        if let Some(next) = pending.last_mut().and_then(Vec::pop) {
            match rustix::fs::openat(&cur, &next, flags, Mode::empty()) {
                Ok(child) => {
                    cur = child;
                    pending.push(unlink_files_in(cur.as_fd())?);
                    path.push(next);
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        pending.pop();
        let Some(done) = path.pop() else { break };
        // Nothing else changes this private tree, so ".." is the directory we came from.
        let parent = rustix::fs::openat(&cur, c"..", flags, Mode::empty())?;
        rustix::fs::unlinkat(&parent, &done, AtFlags::REMOVEDIR)?;
        cur = parent;
    }
    drop(cur);
    match rustix::fs::unlinkat(dirfd, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Unlinks everything but directories in `fd`; returns the names of the directories.
fn unlink_files_in(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut dirs = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(fd)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let n = entry.file_name();
        if n == c"." || n == c".." {
            continue;
        }
        if entry.file_type() == rustix::fs::FileType::Directory {
            dirs.push(n.to_owned());
            continue;
        }
        match rustix::fs::unlinkat(fd, n, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR) => dirs.push(n.to_owned()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(dirs)
}

/// Disk used under `path`: allocated blocks and inodes, counting hard-linked inodes once and
/// never following symlinks. NotFound if `path` does not exist.
fn disk_usage(path: &Path) -> Result<Usage> {
    let what = || format!("measuring disk usage of {}", path.display());
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::not_found(format!("{} does not exist", path.display())));
        }
        Err(e) => return Err(e).context(what),
    };
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut count = |m: &fs::Metadata| {
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return;
        }
        usage.bytes += m.blocks() * 512;
        usage.inodes += 1;
    };
    count(&meta);
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).context(what)? {
            let entry = entry.context(what)?;
            let m = entry.metadata().context(what)?;
            count(&m);
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Mounts `mounts` on `target`, in order (later mounts stack on earlier ones).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    for m in mounts {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for o in &m.options {
            match o.as_str() {
                "bind" => flags |= MsFlags::MS_BIND,
                "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" => {}
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                other => data.push(other),
            }
        }
        let what = || format!("mounting {} {} on {}", m.kind, m.source, target.display());
        let data = data.join(",");
        let data = (!data.is_empty()).then_some(data.as_str());
        if flags.contains(MsFlags::MS_BIND) {
            // A bind mount ignores MS_RDONLY on creation: read-only takes a remount.
            mount(Some(m.source.as_str()), target, None::<&str>, flags - MsFlags::MS_RDONLY, data)
                .context(what)?;
            if flags.contains(MsFlags::MS_RDONLY) {
                let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
                mount(None::<&str>, target, None::<&str>, remount, None::<&str>).context(what)?;
            }
        } else {
            mount(Some(m.source.as_str()), target, Some(m.kind.as_str()), flags, data).context(what)?;
        }
    }
    Ok(())
}

/// Unmounts `target` (the topmost mount there).
pub fn unmount(target: &Path) -> Result<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::empty())
        .context(|| format!("unmounting {}", target.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;

    use super::*;

    struct Fixture {
        tmp: tempfile::TempDir,
        dir: PathBuf,
        db: Arc<Db>,
        snaps: Snapshots,
    }

    fn open(kind: SnapshotterKind) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&tmp.path().join("meta.redb")).unwrap());
        let dir = tmp.path().join("snapshotter");
        let snaps = Snapshots::open(&dir, kind, db.clone()).unwrap();
        // The suite must really exercise the backend it is named after.
        assert_eq!(snaps.name(), kind.as_str());
        Fixture { tmp, dir, db, snaps }
    }

    impl Fixture {
        fn reopen(&mut self, kind: SnapshotterKind) {
            self.snaps = Snapshots::open(&self.dir, kind, self.db.clone()).unwrap();
        }
        fn id(&self, key: &str) -> String {
            self.db.read(|tx| tx.get(&SNAPSHOTS, key)).unwrap().unwrap().id
        }
        fn ids_on_disk(&self) -> Vec<String> {
            let mut ids = list_ids(&self.dir.join("snapshots")).unwrap();
            ids.sort();
            ids
        }
        /// Writes files and whiteouts into the active snapshot `key` as a layer would.
        fn write(&self, key: &str, files: &[(&str, &str)], whiteouts: &[&str]) {
            let (root, mode) = self.snaps.apply_target(key).unwrap();
            for (path, content) in files {
                let p = root.join(path);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, content).unwrap();
            }
            for path in whiteouts {
                let p = root.join(path);
                match mode {
                    WhiteoutMode::Overlay => {
                        fs::create_dir_all(p.parent().unwrap()).unwrap();
                        let (ft, m) = (rustix::fs::FileType::CharacterDevice, rustix::fs::Mode::empty());
                        rustix::fs::mknodat(rustix::fs::CWD, &p, ft, m, 0).unwrap();
                    }
                    WhiteoutMode::Delete => fs::remove_file(p).unwrap(),
                }
            }
        }
        fn layer(&self, name: &str, parent: Option<&str>, files: &[(&str, &str)], whiteouts: &[&str]) {
            let key = format!("building-{name}");
            self.snaps.prepare(&key, parent, Labels::new()).unwrap();
            self.write(&key, files, whiteouts);
            self.snaps.commit(name, &key, Labels::new()).unwrap();
        }
        fn mount(&self, mounts: &[Mount], name: &str) -> Mounted {
            let target = self.tmp.path().join(name);
            fs::create_dir_all(&target).unwrap();
            mount_all(mounts, &target).unwrap();
            Mounted(target)
        }
    }

    /// Unmounts on drop, so that a failed assertion leaves no mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            if let Err(e) = unmount(&self.0) {
                eprintln!("{e}");
            }
        }
    }

    fn kind_of(r: Result<impl std::fmt::Debug>) -> ErrorKind {
        r.expect_err("should fail").kind()
    }

    fn rules(kind: SnapshotterKind) {
        let f = open(kind);
        let s = &f.snaps;
        assert!(!s.prepare("a", None, Labels::new()).unwrap().is_empty());
        assert_eq!(kind_of(s.prepare("a", None, Labels::new())), ErrorKind::AlreadyExists);
        assert_eq!(kind_of(s.prepare("b", Some("nope"), Labels::new())), ErrorKind::NotFound);
        assert_eq!(kind_of(s.prepare("b", Some("a"), Labels::new())), ErrorKind::FailedPrecondition);
        assert_eq!(kind_of(s.view("v0", Some("a"), Labels::new())), ErrorKind::FailedPrecondition);
        assert_eq!(kind_of(s.stat("b")), ErrorKind::NotFound);

        s.commit("l1", "a", Labels::new()).unwrap();
        assert_eq!(kind_of(s.stat("a")), ErrorKind::NotFound);
        let l1 = s.stat("l1").unwrap();
        assert_eq!((l1.kind, l1.parent.as_deref()), (SnapshotKind::Committed, None));
        assert!(l1.created_at > 0);
        assert_eq!(kind_of(s.commit("x", "l1", Labels::new())), ErrorKind::FailedPrecondition);
        assert_eq!(kind_of(s.commit("x", "missing", Labels::new())), ErrorKind::NotFound);

        let mounts = s.prepare("c", Some("l1"), Labels::new()).unwrap();
        assert_eq!(kind_of(s.commit("l1", "c", Labels::new())), ErrorKind::AlreadyExists);
        assert_eq!(s.stat("c").unwrap().kind, SnapshotKind::Active);
        assert_eq!(s.mounts("c").unwrap(), mounts);
        assert!(s.apply_target("c").is_ok());

        let labels: Labels = [("k".to_string(), "v".to_string())].into();
        s.view("v", Some("l1"), labels.clone()).unwrap();
        let v = s.stat("v").unwrap();
        assert_eq!((v.kind, v.parent.as_deref(), &v.labels), (SnapshotKind::View, Some("l1"), &labels));
        assert_eq!(kind_of(s.apply_target("v")), ErrorKind::FailedPrecondition);
        assert_eq!(kind_of(s.apply_target("l1")), ErrorKind::FailedPrecondition);
        assert_eq!(kind_of(s.mounts("l1")), ErrorKind::FailedPrecondition);
        let keys: Vec<_> = s.list().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(keys, ["c", "l1", "v"]);

        assert_eq!(kind_of(s.remove("l1")), ErrorKind::FailedPrecondition);
        s.remove("c").unwrap();
        assert_eq!(kind_of(s.remove("l1")), ErrorKind::FailedPrecondition);
        s.remove("v").unwrap();
        s.remove("l1").unwrap();
        assert_eq!(kind_of(s.remove("l1")), ErrorKind::NotFound);
        assert!(s.list().unwrap().is_empty());
        assert!(f.ids_on_disk().is_empty());
    }

    fn chains_mount_merged(kind: SnapshotterKind) {
        let f = open(kind);
        let s = &f.snaps;
        f.layer("l1", None, &[("a", "1"), ("d/x", "x"), ("d/keep", "k")], &[]);
        f.layer("l2", Some("l1"), &[("b", "2"), ("d/x2", "x2")], &["a"]);
        f.layer("l3", Some("l2"), &[("c", "3")], &["d/x"]);
        let mounts = s.prepare("ctr", Some("l3"), Labels::new()).unwrap();
        {
            let m = f.mount(&mounts, "mnt");
            let read = |p: &str| fs::read_to_string(m.0.join(p)).ok();
            assert_eq!(read("a"), None, "whiteout of a is effective");
            assert_eq!(read("d/x"), None, "whiteout of d/x is effective");
            assert_eq!(read("b").as_deref(), Some("2"));
            assert_eq!(read("c").as_deref(), Some("3"));
            assert_eq!(read("d/keep").as_deref(), Some("k"));
            assert_eq!(read("d/x2").as_deref(), Some("x2"));
            fs::write(m.0.join("new"), "new").unwrap();
            fs::remove_file(m.0.join("b")).unwrap();
        }
        let (root, _) = s.apply_target("ctr").unwrap();
        assert!(root.join("new").exists(), "writes land in the active snapshot");
        // The committed layers are untouched by the container's writes.
        s.view("v1", Some("l1"), Labels::new()).unwrap();
        let m = f.mount(&s.mounts("v1").unwrap(), "v1");
        assert_eq!(fs::read_to_string(m.0.join("a")).unwrap(), "1");
        assert!(m.0.join("d/x").exists() && !m.0.join("new").exists());
        drop(m);
        s.view("v2", Some("l2"), Labels::new()).unwrap();
        let m = f.mount(&s.mounts("v2").unwrap(), "v2");
        assert_eq!(fs::read_to_string(m.0.join("b")).unwrap(), "2");
    }

    fn views_are_read_only(kind: SnapshotterKind) {
        let f = open(kind);
        let s = &f.snaps;
        f.layer("l1", None, &[("a", "1")], &[]);
        f.layer("l2", Some("l1"), &[("b", "2")], &[]);
        for (view, parent) in [("one", "l1"), ("two", "l2")] {
            let m = f.mount(&s.view(view, Some(parent), Labels::new()).unwrap(), view);
            assert_eq!(fs::read_to_string(m.0.join("a")).unwrap(), "1");
            let err = fs::write(m.0.join("w"), "w").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{view}: {err}");
        }
    }

    fn crash_leftovers_are_removed(kind: SnapshotterKind) {
        let mut f = open(kind);
        f.layer("l1", None, &[("a", "1")], &[]);
        f.snaps.prepare("ctr", Some("l1"), Labels::new()).unwrap();
        f.write("ctr", &[("mine", "m")], &[]);
        f.snaps.prepare("extract-1234-abcd", Some("l1"), Labels::new()).unwrap();
        let extract_id = f.id("extract-1234-abcd");
        fs::create_dir_all(f.dir.join("snapshots/999/fs")).unwrap();
        f.reopen(kind);
        assert_eq!(kind_of(f.snaps.stat("extract-1234-abcd")), ErrorKind::NotFound);
        let mut live = vec![f.id("l1"), f.id("ctr")];
        live.sort();
        assert_eq!(f.ids_on_disk(), live, "extract {extract_id} and orphan 999 removed");
        // Ids keep growing past what exists, so a new snapshot never lands in a used directory.
        f.snaps.prepare("next", Some("l1"), Labels::new()).unwrap();
        assert!(!live.contains(&f.id("next")));
        let (root, _) = f.snaps.apply_target("ctr").unwrap();
        assert_eq!(fs::read_to_string(root.join("mine")).unwrap(), "m");
    }

    fn usage_is_counted(kind: SnapshotterKind) {
        let f = open(kind);
        let data = "x".repeat(64 * 1024);
        f.layer("l1", None, &[("a", &data), ("b", &data)], &[]);
        let one = f.snaps.usage("l1").unwrap();
        assert!(one.bytes >= 2 * 64 * 1024 && one.inodes >= 3, "{one:?}");
        f.snaps.prepare("ctr", Some("l1"), Labels::new()).unwrap();
        let (root, _) = f.snaps.apply_target("ctr").unwrap();
        fs::write(root.join("c"), &data).unwrap();
        fs::hard_link(root.join("c"), root.join("c2")).unwrap();
        let ctr = f.snaps.usage("ctr").unwrap();
        assert_eq!(f.snaps.total_usage().unwrap(), one + ctr);
        fs::remove_file(root.join("c2")).unwrap();
        assert_eq!(f.snaps.usage("ctr").unwrap().inodes, ctr.inodes, "a hard link is one inode");
        assert_eq!(kind_of(f.snaps.usage("nope")), ErrorKind::NotFound);
    }

    macro_rules! both_backends {
        ($($name:ident),*) => {
            mod overlayfs {
                $( #[test] fn $name() { super::$name(crate::config::SnapshotterKind::Overlayfs) } )*
            }
            mod native {
                $( #[test] fn $name() { super::$name(crate::config::SnapshotterKind::Native) } )*
            }
        };
    }

    both_backends!(
        rules,
        chains_mount_merged,
        views_are_read_only,
        crash_leftovers_are_removed,
        usage_is_counted
    );

    #[test]
    fn overlay_mounts_have_containerd_shapes() {
        let f = open(SnapshotterKind::Overlayfs);
        let s = &f.snaps;
        let fs_of = |key: &str| f.dir.join("snapshots").join(f.id(key)).join("fs").display().to_string();
        let solo = s.prepare("solo", None, Labels::new()).unwrap();
        assert_eq!(
            solo,
            [Mount {
                kind: "bind".into(),
                source: fs_of("solo"),
                options: vec!["rbind".into(), "rw".into()]
            }]
        );
        f.snaps.remove("solo").unwrap();
        f.layer("l1", None, &[("a", "1")], &[]);
        f.layer("l2", Some("l1"), &[("b", "2")], &[]);
        let view = s.view("v1", Some("l1"), Labels::new()).unwrap();
        assert_eq!(
            view,
            [Mount { kind: "bind".into(), source: fs_of("l1"), options: vec!["rbind".into(), "ro".into()] }]
        );
        let view = s.view("v2", Some("l2"), Labels::new()).unwrap();
        assert_eq!(view[0].kind, "overlay");
        let lower = format!("lowerdir={}:{}", fs_of("l2"), fs_of("l1"));
        assert!(view[0].options.contains(&lower), "nearest parent first: {view:?}");
        assert!(!view[0].options.iter().any(|o| o.starts_with("upperdir=")));
        let active = s.prepare("ctr", Some("l2"), Labels::new()).unwrap();
        assert!(active[0].options.contains(&lower));
        assert!(active[0].options.contains(&format!("upperdir={}", fs_of("ctr"))));
    }

    #[test]
    fn native_snapshots_copy_their_parent_faithfully() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let f = open(SnapshotterKind::Native);
        f.snaps.prepare("a", None, Labels::new()).unwrap();
        let (root, _) = f.snaps.apply_target("a").unwrap();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/f"), "f").unwrap();
        std::os::unix::fs::lchown(root.join("d/f"), Some(1000), Some(1001)).unwrap();
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o4750)).unwrap();
        fs::hard_link(root.join("d/f"), root.join("hl")).unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("sym")).unwrap();
        let fifo = rustix::fs::FileType::Fifo;
        rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), fifo, rustix::fs::Mode::empty(), 0).unwrap();
        rustix::fs::lsetxattr(root.join("d/f"), "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
        let t = rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 5 };
        let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
        rustix::fs::utimensat(rustix::fs::CWD, root.join("d"), &times, rustix::fs::AtFlags::empty()).unwrap();
        f.snaps.commit("l1", "a", Labels::new()).unwrap();

        f.snaps.prepare("b", Some("l1"), Labels::new()).unwrap();
        let (copy, _) = f.snaps.apply_target("b").unwrap();
        let m = fs::symlink_metadata(copy.join("d/f")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.nlink()), (0o4750, 1000, 1001, 2));
        assert_eq!(fs::symlink_metadata(copy.join("hl")).unwrap().ino(), m.ino());
        assert_eq!(fs::read_link(copy.join("sym")).unwrap(), Path::new("/nowhere"));
        assert!(fs::symlink_metadata(copy.join("fifo")).unwrap().file_type().is_fifo());
        let mut buf = [0u8; 4];
        let n = rustix::fs::lgetxattr(copy.join("d/f"), "user.k", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"v");
        let d = fs::symlink_metadata(copy.join("d")).unwrap();
        assert_eq!((d.mtime(), d.mtime_nsec()), (1_000_000_000, 5));
        // A copy, not shared: writes to the child leave the parent alone.
        fs::write(copy.join("d/f"), "changed").unwrap();
        assert_eq!(fs::read_to_string(root.join("d/f")).unwrap(), "f");
    }

    #[test]
    fn switching_backend_with_snapshots_present_is_refused() {
        let mut f = open(SnapshotterKind::Overlayfs);
        f.layer("l1", None, &[("a", "1")], &[]);
        let err = Snapshots::open(&f.dir, SnapshotterKind::Native, f.db.clone()).err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
        f.snaps.remove("l1").unwrap();
        f.reopen(SnapshotterKind::Native);
        assert_eq!(f.snaps.name(), "native");
    }

    // A killed berthd on a full disk could not start again: the overlay probe failed to write its
    // test file, berth fell back to native and refused the overlay snapshots it had made.
    #[test]
    fn the_recorded_backend_is_used_without_probing() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&tmp.path().join("meta.redb")).unwrap());
        // Overlay options cannot express this path: a probe here always says no.
        let dir = tmp.path().join("snap:shots");
        let probed = Snapshots::open(&dir, SnapshotterKind::Overlayfs, db.clone()).unwrap();
        assert_eq!(probed.name(), "native", "the probe runs at first start");
        fs::write(dir.join(BACKEND_MARKER), "overlayfs\n").unwrap();
        let snaps = Snapshots::open(&dir, SnapshotterKind::Overlayfs, db.clone()).unwrap();
        assert_eq!(snaps.name(), "overlayfs", "the marker decides, no probe");
        snaps.prepare("a", None, Labels::new()).unwrap();
        let again = Snapshots::open(&dir, SnapshotterKind::Overlayfs, db).unwrap();
        assert_eq!(again.name(), "overlayfs");
        assert_eq!(fs::read_to_string(dir.join(BACKEND_MARKER)).unwrap(), "overlayfs\n");
    }

    #[test]
    fn a_native_fallback_is_kept_while_its_snapshots_exist() {
        let mut f = open(SnapshotterKind::Native);
        f.layer("l1", None, &[("a", "1")], &[]);
        // overlayfs works here, but the snapshots were made by native (a fallback at first start).
        f.reopen(SnapshotterKind::Overlayfs);
        assert_eq!(f.snaps.name(), "native");
        assert_eq!(f.snaps.stat("l1").unwrap().kind, SnapshotKind::Committed);
        f.snaps.remove("l1").unwrap();
        // Nothing made by native is left: the configured overlayfs is probed and used again.
        f.reopen(SnapshotterKind::Overlayfs);
        assert_eq!(f.snaps.name(), "overlayfs");
        assert_eq!(fs::read_to_string(f.dir.join(BACKEND_MARKER)).unwrap(), "overlayfs\n");
    }

    #[test]
    fn trees_deeper_than_the_stack_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        fs::create_dir(&top).unwrap();
        // Built through descriptors: deeper than any path the kernel would accept.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut cur = rustix::fs::open(&top, flags, Mode::empty()).unwrap();
        for i in 0..1500 {
            rustix::fs::mkdirat(&cur, c"d", Mode::from_raw_mode(0o755)).unwrap();
            if i % 500 == 0 {
                let f =
                    rustix::fs::openat(&cur, c"f", OFlags::CREATE | OFlags::WRONLY, Mode::empty()).unwrap();
                drop(f);
                rustix::fs::symlinkat(c"/etc", &cur, c"link").unwrap();
            }
            cur = rustix::fs::openat(&cur, c"d", flags, Mode::empty()).unwrap();
        }
        drop(cur);
        let removed = std::thread::Builder::new()
            .stack_size(32 * 1024)
            .spawn(move || remove_tree(&top).map(|()| top.exists()))
            .unwrap()
            .join()
            .unwrap();
        assert!(!removed.unwrap());
        assert!(Path::new("/etc").is_dir());
        remove_tree(&tmp.path().join("absent")).unwrap();
    }

    /// A backend whose `create` fails after leaving a directory behind.
    struct FailingBackend {
        inner: NativeBackend,
        removed: Mutex<Vec<String>>,
    }

    impl Backend for FailingBackend {
        fn name(&self) -> &'static str {
            "native"
        }
        fn create(&self, id: &str, parent_ids: &[String]) -> Result<()> {
            self.inner.create(id, parent_ids)?;
            Err(Error::internal("disk full"))
        }
        fn mounts(&self, id: &str, parent_ids: &[String], kind: SnapshotKind) -> Vec<Mount> {
            self.inner.mounts(id, parent_ids, kind)
        }
        fn apply_target(&self, id: &str) -> (PathBuf, WhiteoutMode) {
            self.inner.apply_target(id)
        }
        fn remove(&self, id: &str) -> Result<()> {
            self.removed.lock().unwrap().push(id.to_string());
            self.inner.remove(id)
        }
        fn usage(&self, id: &str) -> Result<Usage> {
            self.inner.usage(id)
        }
        fn ids_on_disk(&self) -> Result<Vec<String>> {
            self.inner.ids_on_disk()
        }
    }

    #[test]
    fn a_failed_create_leaves_neither_record_nor_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&tmp.path().join("meta.redb")).unwrap());
        let dir = tmp.path().join("snapshotter");
        fs::create_dir_all(dir.join("snapshots")).unwrap();
        let backend = FailingBackend { inner: NativeBackend::new(&dir), removed: Mutex::new(Vec::new()) };
        let s = Snapshots::with_backend(&dir, Box::new(backend), db).unwrap();
        let err = s.prepare("a", None, Labels::new()).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(kind_of(s.stat("a")), ErrorKind::NotFound);
        assert!(list_ids(&dir.join("snapshots")).unwrap().is_empty());
    }
}
