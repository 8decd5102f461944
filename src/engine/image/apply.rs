//! The layer applier: writes an uncompressed docker/OCI layer tar stream into a snapshot directory,
//! like containerd's `archive.Apply`, turning OCI whiteouts into overlay whiteouts or deletions.
//!
//! Layer tarballs are hostile input. Every path is resolved beneath the target with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`), so neither `..` nor a symlink planted by this or an
//! earlier layer can lead a write outside; entries that try are refused with InvalidArgument and
//! the caller discards the snapshot. Metadata is changed through file descriptors or `*at` calls
//! that do not follow the final symlink.
//!
//! Sparse entries (GNU `S`) are written with holes, and every regular file's logical size counts
//! against the caller's limit before a byte of it is written: a tiny layer can describe a file of
//! any size, which no decompression guard on the tar stream would notice.
//!
//! This module must never write, chmod, chown or set times on anything outside the target, never
//! follow a symlink except as a parent directory confined by `openat2`, and never write more file
//! content than the limit it was given.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{
    AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

use crate::engine::snapshot::{WhiteoutMode, remove_all_at};
use crate::error::{Context, Error, ErrorKind, Result};

/// What [`apply_tar`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries applied (including whiteouts).
    pub entries: u64,
    /// Bytes of regular file content written, holes of sparse files included (their logical size).
    pub bytes: u64,
}

const COPY_BUFFER: usize = 1 << 20;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Writes the uncompressed layer tar stream `reader` into the directory `target`, whiteouts
/// written as `mode` says. The reader should be buffered; reading stops at the tar end marker,
/// so whatever follows it is left in the reader. Fails with ResourceExhausted, before writing the
/// entry, when the regular files' logical sizes (sparse files at their full size) add up to more
/// than `max_file_bytes`. On error the target is left half-written and must be discarded.
///
/// This is also the entry point for fuzzing the applier: any byte string, any empty directory.
pub fn apply_tar(
    reader: impl Read,
    target: &Path,
    mode: WhiteoutMode,
    max_file_bytes: u64,
) -> Result<ApplyStats> {
    let root = rustix::fs::open(target, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .context(|| format!("opening apply target {}", target.display()))?;
    let mut applier = Applier {
        root,
        mode,
        buf: vec![0; COPY_BUFFER],
        written: HashSet::new(),
        dir_times: Vec::new(),
        parent: None,
        stats: ApplyStats::default(),
        max_file_bytes,
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        applier.entry(&mut entry)?;
    }
    applier.finish();
    Ok(applier.stats)
}

fn read_error(e: io::Error) -> Error {
    Error::with_source(ErrorKind::InvalidArgument, "reading layer tar stream", e)
}

/// The metadata of one entry.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    times: Timestamps,
    xattrs: Vec<(CString, Vec<u8>)>,
}

enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Device(FileType, u64),
    Fifo,
}

struct Applier {
    root: OwnedFd,
    mode: WhiteoutMode,
    buf: Vec<u8>,
    /// Delete mode only: every path this layer created, with its ancestors, so that an opaque
    /// marker removes the lower layers' content and keeps this layer's.
    written: HashSet<Vec<u8>>,
    /// Directory mtimes, set at the end: writing into a directory changes its mtime.
    dir_times: Vec<(Vec<u8>, Timestamps)>,
    /// The last parent directory opened; entries of one directory usually come together.
    parent: Option<(Vec<u8>, Rc<OwnedFd>)>,
    stats: ApplyStats,
    /// The most file content (logical bytes) the layer may write.
    max_file_bytes: u64,
}

impl Applier {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let header = entry.header();
        let etype = header.entry_type();
        if etype == EntryType::XGlobalHeader {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let bad = |why: &str| invalid(&raw, why);
        let path = clean(&raw).ok_or_else(|| bad("path contains \"..\""))?;
        let (parent, base) = split(&path);
        if base.is_empty() {
            tracing::debug!("layer entry {:?} ignored: it is the root", String::from_utf8_lossy(&raw));
            return Ok(());
        }
        self.stats.entries += 1;

        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&raw, parent, base, header);
        }

        let kind = match etype {
            // Old tars mark directories only with a trailing slash on a regular entry.
            EntryType::Regular if header.as_bytes()[156] == 0 && raw.ends_with(b"/") => Kind::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| bad("symlink without a target"))?;
                Kind::Symlink(target.into_owned())
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| bad("hard link without a target"))?;
                let target = clean(&target).ok_or_else(|| bad("hard link target contains \"..\""))?;
                if target.is_empty() {
                    return Err(bad("hard link to the root"));
                }
                Kind::Hardlink(target)
            }
            EntryType::Char | EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let ft =
                    if etype == EntryType::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
                Kind::Device(ft, rustix::fs::makedev(major, minor))
            }
            EntryType::Fifo => Kind::Fifo,
            other => return Err(bad(&format!("unsupported entry type {:?}", other.as_byte() as char))),
        };
        let meta = metadata(entry, &raw)?;

        let dirfd = self.parent_dir_created(&raw, parent)?;
        let dirfd = dirfd.as_fd();
        let name = cstr(&raw, base)?;
        match kind {
            Kind::File => {
                // The logical size: for a GNU sparse entry the tar crate gives the full size, holes
                // included, which may be any number a few header bytes can hold.
                let size = entry.size();
                let total = self.stats.bytes.saturating_add(size);
                if total > self.max_file_bytes {
                    return Err(Error::new(
                        ErrorKind::ResourceExhausted,
                        entry_what(
                            &raw,
                            &format!(
                                "refusing to unpack more than {} bytes of files (cri.unpack_max_expansion \
                                 times the compressed size): this {}entry of {size} bytes would bring \
                                 the layer to {total}, a decompression bomb",
                                self.max_file_bytes,
                                if etype == EntryType::GNUSparse { "sparse " } else { "" },
                            ),
                        ),
                    ));
                }
                let fd = self.create(&raw, dirfd, &name, false, |d, n| {
                    let flags =
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    rustix::fs::openat(d, n, flags, Mode::from_raw_mode(0o600))
                })?;
                let fd =
                    fd.ok_or_else(|| Error::internal(entry_what(&raw, "creating file: nothing created")))?;
                let mut file = File::from(fd);
                let sparse = etype == EntryType::GNUSparse;
                loop {
                    let n = entry.read(&mut self.buf).map_err(read_error)?;
                    if n == 0 {
                        break;
                    }
                    let chunk = &self.buf[..n];
                    // The tar crate reads a hole as a run of zeros, in reads of their own: skipped
                    // over, they stay holes and take no disk.
                    if sparse && chunk.iter().all(|b| *b == 0) {
                        file.seek(SeekFrom::Current(n as i64))
                            .context(|| entry_what(&raw, "writing file"))?;
                    } else {
                        file.write_all(chunk).context(|| entry_what(&raw, "writing file"))?;
                    }
                    self.stats.bytes += n as u64;
                }
                if sparse {
                    // A trailing hole was only seeked over.
                    file.set_len(size).context(|| entry_what(&raw, "writing file"))?;
                }
                set_fd_meta(&raw, file.as_fd(), &meta)?;
                rustix::fs::futimens(&file, &meta.times).context(|| entry_what(&raw, "setting times"))?;
            }
            Kind::Dir => {
                self.create(&raw, dirfd, &name, true, |d, n| {
                    rustix::fs::mkdirat(d, n, Mode::from_raw_mode(0o700))
                })?;
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dirfd, &name, flags, Mode::empty())
                    .context(|| entry_what(&raw, "opening directory"))?;
                set_fd_meta(&raw, fd.as_fd(), &meta)?;
                self.dir_times.push((path.clone(), meta.times));
            }
            Kind::Symlink(target) => {
                let target = cstr(&raw, &target)?;
                self.create(&raw, dirfd, &name, false, |d, n| rustix::fs::symlinkat(&target, d, n))?;
                set_at_meta(&raw, dirfd, &name, &meta, false)?;
            }
            Kind::Hardlink(target) => {
                if target == path {
                    return Ok(());
                }
                let (tparent, tbase) = split(&target);
                let tdir = self
                    .parent_dir(&raw, tparent, false)?
                    .ok_or_else(|| bad("hard link target does not exist"))?;
                let tname = cstr(&raw, tbase)?;
                let st = match rustix::fs::statat(&*tdir, &tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::NOENT) => return Err(bad("hard link target does not exist")),
                    Err(e) => return Err(e).context(|| entry_what(&raw, "looking up hard link target")),
                };
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => return Err(bad("hard link to a directory")),
                    FileType::Symlink => self.check_symlink_stays_inside(&raw, &target)?,
                    _ => {}
                }
                // Without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                self.create(&raw, dirfd, &name, false, |d, n| {
                    rustix::fs::linkat(&*tdir, &tname, d, n, AtFlags::empty())
                })?;
            }
            Kind::Device(ft, dev) => {
                self.create(&raw, dirfd, &name, false, |d, n| {
                    rustix::fs::mknodat(d, n, ft, Mode::empty(), dev)
                })?;
                set_at_meta(&raw, dirfd, &name, &meta, true)?;
            }
            Kind::Fifo => {
                self.create(&raw, dirfd, &name, false, |d, n| {
                    rustix::fs::mknodat(d, n, FileType::Fifo, Mode::empty(), 0)
                })?;
                set_at_meta(&raw, dirfd, &name, &meta, true)?;
            }
        }
        if self.mode == WhiteoutMode::Delete {
            self.mark_written(path);
        }
        Ok(())
    }

    /// Creates `name` in `dirfd` with `make`; whatever is in the way is removed first, except an
    /// existing directory when `keep_dir` (a directory entry merges into it).
    fn create<T>(
        &mut self,
        raw: &[u8],
        dirfd: BorrowedFd<'_>,
        name: &CString,
        keep_dir: bool,
        make: impl Fn(BorrowedFd<'_>, &CString) -> rustix::io::Result<T>,
    ) -> Result<Option<T>> {
        match make(dirfd, name) {
            Ok(v) => return Ok(Some(v)),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(create_error(raw, e)),
        }
        let st = rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
            .context(|| entry_what(raw, "looking up existing path"))?;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && keep_dir {
            return Ok(None);
        }
        self.remove_at(raw, dirfd, name)?;
        make(dirfd, name).map(Some).map_err(|e| create_error(raw, e))
    }

    /// Removes `name` in `dirfd` (recursively if a directory); absent is fine.
    fn remove_at(&mut self, raw: &[u8], dirfd: BorrowedFd<'_>, name: &CString) -> Result<()> {
        // Whatever the cached parent was may just have been removed.
        self.parent = None;
        remove_all_at(dirfd, name).context(|| entry_what(raw, "removing existing path"))
    }

    /// Opens the directory `rel` beneath the root, creating missing directories when `create`
    /// (None when missing and not `create`). Refuses paths that escape the root.
    fn parent_dir(&mut self, raw: &[u8], rel: &[u8], create: bool) -> Result<Option<Rc<OwnedFd>>> {
        if let Some((p, fd)) = &self.parent
            && p == rel
        {
            return Ok(Some(fd.clone()));
        }
        let fd = match open_beneath(&self.root, rel, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => self.make_parents(raw, rel)?,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(resolve_error(raw, e)),
        };
        let fd = Rc::new(fd);
        self.parent = Some((rel.to_vec(), fd.clone()));
        Ok(Some(fd))
    }

    /// [`Self::parent_dir`], creating what is missing.
    fn parent_dir_created(&mut self, raw: &[u8], rel: &[u8]) -> Result<Rc<OwnedFd>> {
        self.parent_dir(raw, rel, true)?
            .ok_or_else(|| Error::internal(entry_what(raw, "parent directory missing after creation")))
    }

    /// Creates the missing directories of `rel` (mode 0755, like containerd), one component at a
    /// time, each resolved beneath the root.
    fn make_parents(&mut self, raw: &[u8], rel: &[u8]) -> Result<OwnedFd> {
        let mut cur = open_beneath(&self.root, b"", OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| resolve_error(raw, e))?;
        let mut end = 0;
        for comp in rel.split(|b| *b == b'/') {
            end += comp.len();
            let prefix = &rel[..end];
            end += 1;
            match open_beneath(&self.root, prefix, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) => {
                    let name = cstr(raw, comp)?;
                    match rustix::fs::mkdirat(&cur, &name, Mode::from_raw_mode(0o755)) {
                        // mkdir's mode passed through the umask; `name` is the directory just made.
                        Ok(()) => {
                            rustix::fs::chmodat(&cur, &name, Mode::from_raw_mode(0o755), AtFlags::empty())
                                .context(|| entry_what(raw, "creating parent directory"))?
                        }
                        // A dangling symlink: the open below refuses it.
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(create_error(raw, e)),
                    }
                    cur = open_beneath(&self.root, prefix, OFlags::PATH | OFlags::DIRECTORY)
                        .map_err(|e| resolve_error(raw, e))?;
                }
                Err(e) => return Err(resolve_error(raw, e)),
            }
        }
        Ok(cur)
    }

    /// A hard link may name a symlink (it links the symlink itself), but not one that points
    /// outside the root: refused so that no link ever appears to reach outside.
    fn check_symlink_stays_inside(&self, raw: &[u8], target: &[u8]) -> Result<()> {
        match open_beneath(&self.root, target, OFlags::PATH) {
            Ok(_) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(resolve_error(raw, e)),
        }
    }

    fn whiteout(&mut self, raw: &[u8], parent: &[u8], base: &[u8], header: &tar::Header) -> Result<()> {
        if base == WHITEOUT_OPAQUE {
            return match self.mode {
                WhiteoutMode::Overlay => {
                    self.parent_dir(raw, parent, true)?;
                    let fd = open_beneath(&self.root, parent, OFlags::RDONLY | OFlags::DIRECTORY)
                        .map_err(|e| resolve_error(raw, e))?;
                    rustix::fs::fsetxattr(&fd, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                        .context(|| entry_what(raw, "marking directory opaque"))
                }
                WhiteoutMode::Delete => {
                    let fd = match open_beneath(&self.root, parent, OFlags::RDONLY | OFlags::DIRECTORY) {
                        Ok(fd) => fd,
                        Err(Errno::NOENT) => return Ok(()),
                        Err(e) => return Err(resolve_error(raw, e)),
                    };
                    self.parent = None;
                    let mut dir_path = parent.to_vec();
                    empty_opaque_dir(fd, &mut dir_path, &self.written)
                        .context(|| entry_what(raw, "emptying opaque directory"))
                }
            };
        }
        if base.starts_with(WHITEOUT_META_PREFIX) {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not part of the image.
            tracing::debug!("layer entry {:?} ignored: aufs metadata", String::from_utf8_lossy(raw));
            return Ok(());
        }
        let name = &base[WHITEOUT_PREFIX.len()..];
        if name.is_empty() || name == b"." || name == b".." {
            return Err(invalid(raw, "whiteout of an invalid name"));
        }
        let name = cstr(raw, name)?;
        match self.mode {
            WhiteoutMode::Overlay => {
                let dirfd = self.parent_dir_created(raw, parent)?;
                let dev = rustix::fs::makedev(0, 0);
                self.create(raw, dirfd.as_fd(), &name, false, |d, n| {
                    rustix::fs::mknodat(d, n, FileType::CharacterDevice, Mode::empty(), dev)
                })?;
                let (uid, gid) = owner(raw, header)?;
                rustix::fs::chownat(&*dirfd, &name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                    .context(|| entry_what(raw, "setting whiteout owner"))
            }
            WhiteoutMode::Delete => match self.parent_dir(raw, parent, false)? {
                Some(dirfd) => self.remove_at(raw, dirfd.as_fd(), &name),
                None => Ok(()),
            },
        }
    }

    /// Records that this layer wrote `path` (and so its ancestors).
    fn mark_written(&mut self, mut path: Vec<u8>) {
        loop {
            let parent_len = path.iter().rposition(|b| *b == b'/');
            if !self.written.insert(path.clone()) {
                return;
            }
            match parent_len {
                Some(n) => path.truncate(n),
                None => return,
            }
        }
    }

    /// Sets directory times last: entries written into a directory changed its mtime.
    fn finish(&mut self) {
        for (path, times) in self.dir_times.drain(..) {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
            // A later entry may have replaced the directory: then there is nothing to set.
            if let Ok(fd) = open_beneath(&self.root, &path, flags)
                && let Err(e) = rustix::fs::futimens(&fd, &times)
            {
                tracing::debug!("setting times of {:?}: {e}", String::from_utf8_lossy(&path));
            }
        }
    }
}

/// Opens `rel` beneath `root` (the root itself when empty), refusing any escape by `..` or by a
/// symlink, and magic links. Retries the EAGAIN that a concurrent rename can cause.
pub(crate) fn open_beneath(root: &OwnedFd, rel: &[u8], flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, path, flags | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            other => return other,
        }
    }
}

/// What the entry itself makes impossible (an empty symlink target, a name too long, too many
/// links to one file…) is the layer's fault.
fn create_error(raw: &[u8], e: Errno) -> Error {
    match e {
        Errno::NOENT | Errno::NAMETOOLONG | Errno::INVAL | Errno::XDEV | Errno::PERM | Errno::MLINK => {
            Error::with_source(ErrorKind::InvalidArgument, entry_what(raw, "creating"), e)
        }
        e => Error::with_source(ErrorKind::Internal, entry_what(raw, "creating"), e),
    }
}

fn resolve_error(raw: &[u8], e: Errno) -> Error {
    match e {
        Errno::XDEV | Errno::LOOP => invalid(raw, "path escapes the target through a symlink"),
        Errno::NOTDIR => invalid(raw, "a parent of the path is not a directory"),
        Errno::NOENT => invalid(raw, "a parent of the path is a dangling symlink"),
        Errno::NAMETOOLONG => invalid(raw, "path too long"),
        Errno::INVAL => invalid(raw, "invalid path"),
        e => Error::with_source(ErrorKind::Internal, entry_what(raw, "resolving path"), e),
    }
}

/// Empties the opaque directory `dirfd` (at `dir_path`) of everything this layer did not write,
/// descending into directories it did write.
fn empty_opaque_dir(dirfd: OwnedFd, dir_path: &mut Vec<u8>, written: &HashSet<Vec<u8>>) -> io::Result<()> {
    let mut names = Vec::new();
    let mut dir = Dir::read_from(&dirfd)?;
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push((name.to_owned(), entry.file_type()));
        }
    }
    for (name, ft) in names {
        let len = dir_path.len();
        if !dir_path.is_empty() {
            dir_path.push(b'/');
        }
        dir_path.extend_from_slice(name.to_bytes());
        if !written.contains(dir_path.as_slice()) {
            remove_all_at(dirfd.as_fd(), &name)?;
        } else if is_dir_at(dirfd.as_fd(), &name, ft)? {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let child = rustix::fs::openat(&dirfd, &name, flags, Mode::empty())?;
            empty_opaque_dir(child, dir_path, written)?;
        }
        dir_path.truncate(len);
    }
    Ok(())
}

fn is_dir_at(dirfd: BorrowedFd<'_>, name: &CString, ft: FileType) -> io::Result<bool> {
    if ft != FileType::Unknown {
        return Ok(ft == FileType::Directory);
    }
    let st = rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(FileType::from_raw_mode(st.st_mode) == FileType::Directory)
}

/// Owner, mode, xattrs through an open file descriptor (never follows anything).
fn set_fd_meta(raw: &[u8], fd: BorrowedFd<'_>, meta: &Meta) -> Result<()> {
    rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid)).context(|| entry_what(raw, "setting owner"))?;
    // After chown, which clears setuid and setgid.
    rustix::fs::fchmod(fd, meta.mode).context(|| entry_what(raw, "setting mode"))?;
    for (name, value) in &meta.xattrs {
        let r = rustix::fs::fsetxattr(fd, name.as_c_str(), value, XattrFlags::empty());
        xattr_result(raw, name, r)?;
    }
    Ok(())
}

/// Owner, mode (unless a symlink), xattrs and times of `name` in `dirfd`, without following it.
fn set_at_meta(raw: &[u8], dirfd: BorrowedFd<'_>, name: &CString, meta: &Meta, chmod: bool) -> Result<()> {
    rustix::fs::chownat(dirfd, name, Some(meta.uid), Some(meta.gid), AtFlags::SYMLINK_NOFOLLOW)
        .context(|| entry_what(raw, "setting owner"))?;
    if chmod {
        // Only for nodes this applier just created (devices, fifos): never a symlink.
        rustix::fs::chmodat(dirfd, name, meta.mode, AtFlags::empty())
            .context(|| entry_what(raw, "setting mode"))?;
    }
    if !meta.xattrs.is_empty() {
        // No setxattrat before Linux 6.13: name the node through the parent's fd, final
        // component not followed (lsetxattr).
        let mut path = format!("/proc/self/fd/{}/", dirfd.as_raw_fd()).into_bytes();
        path.extend_from_slice(name.to_bytes());
        for (xname, value) in &meta.xattrs {
            let r = rustix::fs::lsetxattr(path.as_slice(), xname.as_c_str(), value, XattrFlags::empty());
            xattr_result(raw, xname, r)?;
        }
    }
    rustix::fs::utimensat(dirfd, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
        .context(|| entry_what(raw, "setting times"))
}

/// Xattrs the filesystem cannot hold are skipped, except `security.*` ones (capabilities, labels),
/// whose loss would change what the image's programs may do.
fn xattr_result(raw: &[u8], name: &CString, r: rustix::io::Result<()>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e @ (Errno::NOTSUP | Errno::PERM)) if !name.to_bytes().starts_with(b"security.") => {
            tracing::debug!("layer entry {:?}: xattr {:?} not set: {e}", String::from_utf8_lossy(raw), name);
            Ok(())
        }
        Err(e) => Err(e).context(|| entry_what(raw, &format!("setting xattr {name:?}"))),
    }
}

/// Owner, mode, times and xattrs of an entry, with PAX records overriding the header.
fn metadata<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta> {
    let header = entry.header();
    let (uid, gid) = owner(raw, header)?;
    let mode = header
        .mode()
        .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, entry_what(raw, "mode"), e))?;
    let mut mtime = Timespec { tv_sec: header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64, tv_nsec: 0 };
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(read_error)? {
        for ext in pax {
            let ext = ext.map_err(read_error)?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                if let Some(t) = parse_pax_time(ext.value_bytes()) {
                    mtime = t;
                }
            } else if key.starts_with(b"GNU.sparse.") {
                // GNU tar's PAX sparse formats keep the map in records or in the data, which the tar
                // crate does not read: the file would come out as map and data under a made-up name.
                return Err(invalid(raw, "sparse file in the PAX format is not supported"));
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                // Overlayfs's own xattrs would let a layer steer the kernel (redirects, metacopy,
                // opacity other than by the whiteout forms): never taken from a layer.
                if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
                    tracing::debug!("layer entry {:?}: overlay xattr ignored", String::from_utf8_lossy(raw));
                    continue;
                }
                let name = CString::new(name).map_err(|_| invalid(raw, "xattr name contains NUL"))?;
                xattrs.push((name, ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode: Mode::from_raw_mode(mode & 0o7777),
        times: Timestamps { last_access: mtime, last_modification: mtime },
        xattrs,
    })
}

fn owner(raw: &[u8], header: &tar::Header) -> Result<(Uid, Gid)> {
    let id = |v: io::Result<u64>| -> Result<u32> {
        let v = v.map_err(|e| Error::with_source(ErrorKind::InvalidArgument, entry_what(raw, "owner"), e))?;
        // u32::MAX is -1, "leave unchanged", to chown.
        u32::try_from(v).ok().filter(|v| *v != u32::MAX).ok_or_else(|| invalid(raw, "owner id out of range"))
    };
    Ok((Uid::from_raw(id(header.uid())?), Gid::from_raw(id(header.gid())?)))
}

/// Parses a PAX time, `<seconds>[.<fraction>]`.
fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let tv_nsec = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    if tv_sec < 0 && tv_nsec > 0 {
        // "-1.5" is 1.5 s before the epoch; a fraction before the earliest second is no time.
        return Some(Timespec { tv_sec: tv_sec.checked_sub(1)?, tv_nsec: 1_000_000_000 - tv_nsec });
    }
    Some(Timespec { tv_sec, tv_nsec })
}

/// The path relative to the root: leading `/` and `.` components dropped (like tar does with
/// absolute names), `..` refused (None). Empty means the root itself.
fn clean(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return None,
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Some(out)
}

/// Splits a clean path into its parent and its last component.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn cstr(raw: &[u8], s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| invalid(raw, "name contains NUL"))
}

fn invalid(raw: &[u8], why: &str) -> Error {
    Error::invalid(format!("layer entry {:?} refused: {why}", String::from_utf8_lossy(raw)))
}

fn entry_what(raw: &[u8], what: &str) -> String {
    format!("layer entry {:?}: {what}", String::from_utf8_lossy(raw))
}

/// Tar streams for tests, with arbitrary (hostile) names that `tar::Builder` alone would refuse.
#[cfg(test)]
pub(crate) mod test_tar {
    use tar::{EntryType, Header};

    /// Builds tar streams with arbitrary (hostile) names, which `tar::Builder` would refuse.
    pub(crate) struct Layer(tar::Builder<Vec<u8>>);

    pub(crate) fn header(kind: EntryType, name: &[u8], size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        assert!(name.len() <= 100, "use a pax path for long names");
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h
    }

    impl Layer {
        pub(crate) fn new() -> Self {
            Layer(tar::Builder::new(Vec::new()))
        }
        pub(crate) fn add(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }
        pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.add(header(EntryType::Regular, name.as_bytes(), data.len() as u64), data)
        }
        pub(crate) fn dir(&mut self, name: &str) -> &mut Self {
            self.add(header(EntryType::Directory, name.as_bytes(), 0), b"")
        }
        pub(crate) fn link(&mut self, kind: EntryType, name: &str, target: &str) -> &mut Self {
            let mut h = header(kind, name.as_bytes(), 0);
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            self.add(h, b"")
        }
        pub(crate) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.link(EntryType::Symlink, name, target)
        }
        pub(crate) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.link(EntryType::Link, name, target)
        }
        pub(crate) fn device(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) -> &mut Self {
            let mut h = header(kind, name.as_bytes(), 0);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            self.add(h, b"")
        }
        /// A GNU sparse entry (type `S`) of `real_size` bytes holding `chunks` (offset, data), at
        /// most four, in order; every chunk but the last a multiple of 512 bytes long.
        pub(crate) fn sparse(&mut self, name: &str, real_size: u64, chunks: &[(u64, &[u8])]) -> &mut Self {
            assert!(chunks.len() <= 4, "only the header's own sparse slots");
            let data: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.iter().copied()).collect();
            let mut h = header(EntryType::GNUSparse, name.as_bytes(), data.len() as u64);
            let gnu = h.as_gnu_mut().expect("a gnu header");
            for (slot, (offset, d)) in gnu.sparse.iter_mut().zip(chunks) {
                slot.set_offset(*offset);
                slot.set_length(d.len() as u64);
            }
            gnu.set_real_size(real_size);
            self.add(h, &data)
        }
        /// A PAX extended header describing the next entry.
        pub(crate) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            let mut data = Vec::new();
            for (k, v) in records {
                let body = [b" ", k.as_bytes(), b"=", v, b"\n"].concat();
                // The length prefix counts itself.
                let mut len = body.len() + 1;
                while len.to_string().len() + body.len() != len {
                    len += 1;
                }
                data.extend_from_slice(len.to_string().as_bytes());
                data.extend_from_slice(&body);
            }
            self.add(header(EntryType::XHeader, b"PaxHeader", data.len() as u64), &data)
        }
        pub(crate) fn bytes(&mut self) -> Vec<u8> {
            let mut b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
            b.finish().unwrap();
            b.into_inner().unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use tar::EntryType;

    use super::test_tar::{Layer, header};
    use super::*;

    /// A target directory `<tmp>/l1/l2/root` and an `<tmp>/outside` directory holding `secret`.
    /// The root is deep so that even a broken applier following `../../..` stays in the temp dir.
    struct Env {
        tmp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn setup() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("l1/l2/root");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"secret").unwrap();
        Env { tmp, root, outside }
    }

    impl Env {
        fn apply(&self, layer: &mut Layer, mode: WhiteoutMode) -> Result<ApplyStats> {
            apply_tar(&layer.bytes()[..], &self.root, mode, u64::MAX)
        }
        fn outside_path(&self) -> String {
            self.outside.to_str().unwrap().to_string()
        }
        fn assert_no_x_escaped(&self) {
            let t = self.tmp.path();
            for p in [t.join("x"), t.join("l1/x"), t.join("l1/l2/x"), t.join("outside/x")] {
                assert!(!p.exists(), "{} escaped", p.display());
            }
        }
        /// Nothing was added to, changed in or linked from `outside`.
        fn assert_outside_untouched(&self) {
            let names: Vec<_> =
                fs::read_dir(&self.outside).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["secret"], "outside gained entries");
            let m = fs::symlink_metadata(self.outside.join("secret")).unwrap();
            assert_eq!(m.nlink(), 1, "secret was hard linked");
            assert_eq!(fs::read(self.outside.join("secret")).unwrap(), b"secret");
        }
    }

    fn assert_refused(r: Result<ApplyStats>, entry: &str) {
        let e = r.expect_err("entry should be refused");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains(entry), "error should name {entry:?}: {e}");
    }

    const MODES: [WhiteoutMode; 2] = [WhiteoutMode::Delete, WhiteoutMode::Overlay];

    /// Bytes the file takes on disk.
    fn allocated(path: &Path) -> u64 {
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn sparse_entries_are_written_with_holes() {
        let env = setup();
        let size = 64 << 20;
        let (head, tail) = ([b'h'; 512], [b't'; 100]);
        let stats = env
            .apply(
                Layer::new().sparse("sparse", size, &[(0, &head), (size - 100, &tail)]).file("after", b"a"),
                WhiteoutMode::Delete,
            )
            .unwrap();
        assert_eq!(stats.bytes, size + 1);
        let path = env.root.join("sparse");
        let content = fs::read(&path).unwrap();
        assert_eq!(content.len() as u64, size);
        assert_eq!(content[..512], head);
        assert_eq!(content[content.len() - 100..], tail);
        assert!(content[512..content.len() - 100].iter().all(|b| *b == 0));
        assert!(allocated(&path) < 1 << 20, "{} bytes allocated: the hole was written", allocated(&path));
        assert_eq!(fs::read(env.root.join("after")).unwrap(), b"a");

        // A hole at the end is kept too.
        let env = setup();
        env.apply(Layer::new().sparse("trailing", size, &[(0, &head), (size, b"")]), WhiteoutMode::Delete)
            .unwrap();
        let path = env.root.join("trailing");
        assert_eq!(fs::metadata(&path).unwrap().len(), size);
        assert!(allocated(&path) < 1 << 20, "{} bytes allocated", allocated(&path));
    }

    // Issue 8 item 13: a few hundred bytes of tar describing a file of any size.
    #[test]
    fn sparse_bombs_are_refused_before_writing() {
        let env = setup();
        let size = 20u64 << 30;
        let mut layer = Layer::new();
        layer.file("small", &[1; 1000]).sparse("bomb", size, &[(size - 4, b"end\n")]);
        let err = apply_tar(&layer.bytes()[..], &env.root, WhiteoutMode::Delete, 16 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("\"bomb\"") && msg.contains("sparse") && msg.contains("16777216"), "{msg}");
        assert!(!env.root.join("bomb").exists(), "the bomb's file was created");

        // Plain files count too: the limit is on everything the layer writes.
        let env = setup();
        let mut layer = Layer::new();
        layer.file("a", &[1; 600]).file("b", &[2; 600]);
        let err = apply_tar(&layer.bytes()[..], &env.root, WhiteoutMode::Delete, 1000).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
        assert!(err.to_string().contains("\"b\""), "{err}");
        let env = setup();
        apply_tar(&layer.bytes()[..], &env.root, WhiteoutMode::Delete, 1200).unwrap();
    }

    #[test]
    fn pax_sparse_entries_are_refused() {
        // GNU tar's `--sparse --format=posix` (format 1.0): the map is in the data, the real name in a
        // record.
        let env = setup();
        let data = b"1\n0\n4\n";
        let mut padded = data.to_vec();
        padded.resize(512, 0);
        padded.extend_from_slice(b"data");
        let mut layer = Layer::new();
        layer
            .pax(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"sparse"),
                ("GNU.sparse.realsize", b"21474836480"),
            ])
            .file("GNUSparseFile.0/sparse", &padded);
        assert_refused(env.apply(&mut layer, WhiteoutMode::Delete), "GNUSparseFile.0/sparse");
        assert!(!env.root.join("GNUSparseFile.0/sparse").exists());
    }

    #[test]
    fn dotdot_components_are_refused() {
        for name in ["../x", "a/../../x", "./../x", "a/b/../../../x", "/../x"] {
            let env = setup();
            assert_refused(env.apply(Layer::new().file(name, b"evil"), WhiteoutMode::Delete), name);
            env.assert_no_x_escaped();
            env.assert_outside_untouched();
        }
    }

    #[test]
    fn absolute_paths_land_inside() {
        let env = setup();
        env.apply(Layer::new().file("/abs/file", b"in").file("//./twice", b"2"), WhiteoutMode::Delete)
            .unwrap();
        assert_eq!(fs::read(env.root.join("abs/file")).unwrap(), b"in");
        assert_eq!(fs::read(env.root.join("twice")).unwrap(), b"2");
    }

    #[test]
    fn writing_through_a_symlink_to_outside_is_refused() {
        for mode in MODES {
            let env = setup();
            let out = env.outside_path();
            assert_refused(
                env.apply(Layer::new().symlink("evil", &out).file("evil/x", b"x"), mode),
                "evil/x",
            );
            env.assert_outside_untouched();

            let env = setup();
            let probe = format!("{}/probe", env.outside_path());
            let r = env.apply(Layer::new().symlink("slash", "/").file(&format!("slash{probe}"), b"x"), mode);
            assert_refused(r, "slash/");
            env.assert_outside_untouched();
        }
    }

    #[test]
    fn relative_symlink_escapes_are_refused() {
        let env = setup();
        let r = env.apply(Layer::new().symlink("up", "../../..").file("up/x", b"x"), WhiteoutMode::Delete);
        assert_refused(r, "up/x");
        let r = env.apply(
            Layer::new().dir("sub").symlink("sub/up", "../../../../outside").file("sub/up/x", b"x"),
            WhiteoutMode::Delete,
        );
        assert_refused(r, "sub/up/x");
        env.assert_no_x_escaped();
        env.assert_outside_untouched();
    }

    #[test]
    fn symlink_chains_that_escape_are_refused() {
        let env = setup();
        let r = env.apply(
            Layer::new()
                .symlink("a", "b")
                .symlink("b", "c")
                .symlink("c", "../../../outside")
                .file("a/x", b"x"),
            WhiteoutMode::Delete,
        );
        assert_refused(r, "a/x");
        env.assert_outside_untouched();
    }

    #[test]
    fn dangling_symlinks_are_not_parents() {
        for target in ["missing/dir", "x/../../../../outside"] {
            let env = setup();
            let r =
                env.apply(Layer::new().symlink("dang", target).file("dang/f", b"f"), WhiteoutMode::Delete);
            assert_refused(r, "dang/f");
            assert!(fs::symlink_metadata(env.root.join("dang")).unwrap().file_type().is_symlink());
            assert!(!env.root.join("missing").exists());
            env.assert_outside_untouched();
        }
    }

    #[test]
    fn symlinks_inside_are_followed_as_parents() {
        let env = setup();
        env.apply(
            Layer::new().dir("usr").dir("usr/lib").symlink("lib", "usr/lib").file("lib/x", b"x"),
            WhiteoutMode::Delete,
        )
        .unwrap();
        assert_eq!(fs::read(env.root.join("usr/lib/x")).unwrap(), b"x");
        assert!(fs::symlink_metadata(env.root.join("lib")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn hard_links_out_of_the_target_are_refused() {
        let env = setup();
        let secret = format!("{}/secret", env.outside_path());
        assert_refused(env.apply(Layer::new().hardlink("h", "../outside/secret"), WhiteoutMode::Delete), "h");
        // An absolute target is taken relative to the root, where it does not exist.
        assert_refused(env.apply(Layer::new().hardlink("h", &secret), WhiteoutMode::Delete), "h");
        assert_refused(env.apply(Layer::new().hardlink("h", "/etc/passwd"), WhiteoutMode::Delete), "h");
        // Through a symlinked parent.
        let out = env.outside_path();
        let r = env.apply(Layer::new().symlink("d", &out).hardlink("h", "d/secret"), WhiteoutMode::Delete);
        assert_refused(r, "h");
        assert!(!env.root.join("h").exists());
        env.assert_outside_untouched();
    }

    #[test]
    fn hard_links_to_symlinks_pointing_out_are_refused() {
        let env = setup();
        let secret = format!("{}/secret", env.outside_path());
        assert_refused(
            env.apply(Layer::new().symlink("s", &secret).hardlink("h", "s"), WhiteoutMode::Delete),
            "h",
        );
        let r = env.apply(
            Layer::new().symlink("r", "../../../outside/secret").hardlink("h2", "r"),
            WhiteoutMode::Delete,
        );
        assert_refused(r, "h2");
        env.assert_outside_untouched();

        // A hard link to a symlink that stays inside links the symlink itself.
        env.apply(Layer::new().file("f", b"f").symlink("ok", "f").hardlink("h3", "ok"), WhiteoutMode::Delete)
            .unwrap();
        let m = fs::symlink_metadata(env.root.join("h3")).unwrap();
        assert!(m.file_type().is_symlink());
        assert_eq!(m.ino(), fs::symlink_metadata(env.root.join("ok")).unwrap().ino());
    }

    #[test]
    fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
        for mode in MODES {
            let env = setup();
            let secret = format!("{}/secret", env.outside_path());
            env.apply(Layer::new().symlink("f", &secret).file("f", b"new"), mode).unwrap();
            let m = fs::symlink_metadata(env.root.join("f")).unwrap();
            assert!(m.file_type().is_file());
            assert_eq!(fs::read(env.root.join("f")).unwrap(), b"new");
            env.assert_outside_untouched();
        }
    }

    #[test]
    fn device_nodes_are_created_inside_only() {
        let env = setup();
        env.apply(Layer::new().device(EntryType::Char, "dev/null", 1, 3), WhiteoutMode::Delete).unwrap();
        let m = fs::symlink_metadata(env.root.join("dev/null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!((rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev())), (1, 3));

        assert_refused(
            env.apply(Layer::new().device(EntryType::Block, "../sda", 8, 0), WhiteoutMode::Delete),
            "../sda",
        );
        let out = env.outside_path();
        let r = env.apply(
            Layer::new().symlink("evil", &out).device(EntryType::Char, "evil/null", 1, 3),
            WhiteoutMode::Delete,
        );
        assert_refused(r, "evil/null");
        env.assert_outside_untouched();
    }

    #[test]
    fn whiteouts_cannot_name_dot_dot_or_escape() {
        for mode in MODES {
            let env = setup();
            fs::create_dir(env.root.join("x")).unwrap();
            assert_refused(env.apply(Layer::new().file("x/.wh...", b""), mode), "x/.wh...");
            assert_refused(env.apply(Layer::new().file("x/.wh..", b""), mode), "x/.wh..");
            assert_refused(env.apply(Layer::new().file(".wh.", b""), mode), ".wh.");
            let out = env.outside_path();
            let r = env.apply(Layer::new().symlink("evil", &out).file("evil/.wh.secret", b""), mode);
            assert_refused(r, "evil/.wh.secret");
            let r = env.apply(Layer::new().symlink("evil2", &out).file("evil2/.wh..wh..opq", b""), mode);
            assert_refused(r, "evil2/.wh..wh..opq");
            assert!(env.root.join("x").is_dir());
            env.assert_outside_untouched();
        }
    }

    #[test]
    fn unknown_entry_types_are_refused() {
        let env = setup();
        let mut layer = Layer::new();
        layer.add(header(EntryType::new(b'V'), b"volume", 0), b"");
        assert_refused(env.apply(&mut layer, WhiteoutMode::Delete), "volume");
    }

    #[test]
    fn impossible_entries_are_invalid() {
        let env = setup();
        assert_refused(env.apply(Layer::new().symlink("empty", ""), WhiteoutMode::Delete), "empty");
        let long = "n".repeat(300);
        let mut layer = Layer::new();
        layer.pax(&[("path", long.as_bytes())]).file("x", b"");
        assert_refused(env.apply(&mut layer, WhiteoutMode::Delete), "nnnn");
    }

    #[test]
    fn files_dirs_links_devices_and_metadata_are_applied() {
        let env = setup();
        let long = format!("deep/{}/file", "d".repeat(120));
        let mut layer = Layer::new();
        let mut h = header(EntryType::Directory, b"deep", 0);
        h.set_mode(0o750);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_500_000_000);
        layer.add(h, b"");
        let mut h = header(EntryType::Regular, b"deep/suid", 3);
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_400_000_000);
        layer.add(h, b"bin");
        layer.pax(&[("SCHILY.xattr.user.test", b"hello"), ("mtime", b"1300000000.25")]);
        layer.file("deep/xattr", b"x");
        layer.pax(&[("path", long.as_bytes())]);
        layer.file("ignored-name", b"long");
        layer.hardlink("deep/suid-link", "deep/suid");
        layer.symlink("deep/sym", "suid");
        layer.add(header(EntryType::Fifo, b"deep/fifo", 0), b"");
        layer.device(EntryType::Char, "deep/zero", 1, 5);
        let mut h = header(EntryType::Directory, b"sticky", 0);
        h.set_mode(0o1777);
        layer.add(h, b"");
        let stats = env.apply(&mut layer, WhiteoutMode::Delete).unwrap();
        assert_eq!(stats, ApplyStats { entries: 9, bytes: 3 + 1 + 4 });

        let r = &env.root;
        let deep = fs::symlink_metadata(r.join("deep")).unwrap();
        assert_eq!((deep.mode() & 0o7777, deep.uid(), deep.gid()), (0o750, 1000, 1001));
        assert_eq!(deep.mtime(), 1_500_000_000, "directory mtime is set after its content");
        let suid = fs::symlink_metadata(r.join("deep/suid")).unwrap();
        assert_eq!((suid.mode() & 0o7777, suid.uid(), suid.gid()), (0o4755, 1000, 1001));
        assert_eq!(suid.mtime(), 1_400_000_000);
        assert_eq!(suid.nlink(), 2);
        assert_eq!(fs::symlink_metadata(r.join("deep/suid-link")).unwrap().ino(), suid.ino());
        let x = fs::symlink_metadata(r.join("deep/xattr")).unwrap();
        assert_eq!((x.mtime(), x.mtime_nsec()), (1_300_000_000, 250_000_000));
        let mut buf = [0u8; 16];
        let n = rustix::fs::lgetxattr(r.join("deep/xattr"), "user.test", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fs::read(r.join(&long)).unwrap(), b"long");
        assert_eq!(fs::read_link(r.join("deep/sym")).unwrap(), PathBuf::from("suid"));
        assert!(fs::symlink_metadata(r.join("deep/fifo")).unwrap().file_type().is_fifo());
        let zero = fs::symlink_metadata(r.join("deep/zero")).unwrap();
        assert!(zero.file_type().is_char_device());
        assert_eq!(rustix::fs::minor(zero.rdev()), 5);
        assert_eq!(fs::symlink_metadata(r.join("sticky")).unwrap().mode() & 0o7777, 0o1777);
    }

    #[test]
    fn overlay_xattrs_from_a_layer_are_ignored() {
        let env = setup();
        let mut layer = Layer::new();
        layer.pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/x"),
        ]);
        layer.dir("d");
        env.apply(&mut layer, WhiteoutMode::Overlay).unwrap();
        let mut buf = [0u8; 16];
        for name in ["trusted.overlay.opaque", "trusted.overlay.redirect"] {
            assert!(rustix::fs::lgetxattr(env.root.join("d"), name, &mut buf).is_err(), "{name} was set");
        }
    }

    #[test]
    fn delete_mode_removes_whited_out_and_opaque_content() {
        let env = setup();
        let r = &env.root;
        for d in ["d/sub", "keep"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in ["a", "d/x", "d/sub/y", "keep/z"] {
            fs::write(r.join(f), f).unwrap();
        }
        let mut layer = Layer::new();
        // This layer's entries in the opaque dir come both before and after the marker.
        layer.file("d/new", b"new").file("d/.wh..wh..opq", b"").file("d/sub/n", b"n");
        layer.file(".wh.a", b"").file(".wh.missing", b"").file("keep/.wh.nothing", b"");
        env.apply(&mut layer, WhiteoutMode::Delete).unwrap();
        for gone in ["a", "d/x", "d/sub/y"] {
            assert!(!r.join(gone).exists(), "{gone} should be gone");
        }
        for kept in ["d/new", "d/sub/n", "keep/z"] {
            assert!(r.join(kept).exists(), "{kept} should be there");
        }
        assert!(!r.join(".wh.a").exists());
    }

    #[test]
    fn overlay_mode_writes_whiteout_devices_and_opaque_xattrs() {
        let env = setup();
        let mut layer = Layer::new();
        layer.file(".wh.a", b"").dir("d").file("d/.wh..wh..opq", b"").file("d/new", b"new");
        layer.file("missing/parent/.wh.b", b"");
        env.apply(&mut layer, WhiteoutMode::Overlay).unwrap();
        let r = &env.root;
        for w in ["a", "missing/parent/b"] {
            let m = fs::symlink_metadata(r.join(w)).unwrap();
            assert!(m.file_type().is_char_device(), "{w}");
            assert_eq!(m.rdev(), 0);
        }
        let mut buf = [0u8; 4];
        let n = rustix::fs::lgetxattr(r.join("d"), "trusted.overlay.opaque", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y");
        assert_eq!(fs::read(r.join("d/new")).unwrap(), b"new");
        assert_eq!(fs::symlink_metadata(r.join("missing/parent")).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn existing_paths_are_replaced_or_merged() {
        let env = setup();
        let r = &env.root;
        fs::create_dir_all(r.join("p/inner")).unwrap();
        fs::write(r.join("p/inner/f"), b"f").unwrap();
        fs::write(r.join("q"), b"q").unwrap();
        fs::create_dir(r.join("m")).unwrap();
        fs::write(r.join("m/kept"), b"k").unwrap();
        fs::set_permissions(r.join("m"), fs::Permissions::from_mode(0o755)).unwrap();
        let mut layer = Layer::new();
        layer.file("p", b"now a file").dir("q");
        let mut h = header(EntryType::Directory, b"m", 0);
        h.set_mode(0o700);
        layer.add(h, b"");
        env.apply(&mut layer, WhiteoutMode::Delete).unwrap();
        assert_eq!(fs::read(r.join("p")).unwrap(), b"now a file");
        assert!(r.join("q").is_dir());
        assert_eq!(fs::read(r.join("m/kept")).unwrap(), b"k");
        assert_eq!(fs::metadata(r.join("m")).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean(b"/a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(clean(b"./").unwrap(), b"");
        assert!(clean(b"a/../b").is_none());
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
    }

    /// Seen while writing the layer_tar fuzz target (fuzz/seeds/layer_tar/pax_mtime_min): a
    /// fraction before the earliest second a timespec holds overflowed.
    #[test]
    fn pax_times_before_the_earliest_timespec_are_ignored() {
        assert!(parse_pax_time(b"-9223372036854775808.5").is_none());
        let t = parse_pax_time(b"-9223372036854775808").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (i64::MIN, 0));
        let env = setup();
        let mut layer = Layer::new();
        layer.pax(&[("mtime", b"-9223372036854775808.5")]).file("f", b"x");
        env.apply(&mut layer, WhiteoutMode::Delete).unwrap();
        assert_eq!(fs::read(env.root.join("f")).unwrap(), b"x");
    }

    #[test]
    fn pax_times_parse() {
        let t = parse_pax_time(b"1300000000.123456789123").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_300_000_000, 123_456_789));
        let t = parse_pax_time(b"-1.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 500_000_000));
        assert!(parse_pax_time(b"x").is_none());
    }
}
