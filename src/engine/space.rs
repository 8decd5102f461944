//! Disk space of the filesystems berth keeps its data on: which filesystem holds a path and how full
//! it is, so that a "no space left" failure names the filesystem the operator must free, and so that
//! garbage collection can size what it keeps by the room there is.
//!
//! This module only reads (statvfs, `/proc/self/mountinfo`): it must never write, reserve or free
//! anything itself.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The filesystem holding a path, with its size and free space at the time it was looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// Where it is mounted (`/` if mountinfo could not be read).
    pub mount_point: PathBuf,
    /// Its type (`ext4`, `tmpfs` …), empty if unknown.
    pub fs_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes an unprivileged writer could still use (statvfs `f_bavail`).
    pub available: u64,
}

impl Filesystem {
    /// The filesystem `path` lives on; None if `path` cannot be looked at.
    pub fn of(path: &Path) -> Option<Filesystem> {
        let st = rustix::fs::statvfs(path).ok()?;
        let (mount_point, fs_type) = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| {
                let mounts = crate::mountinfo::parse(&text);
                let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                crate::mountinfo::lookup(&mounts, &real)
                    .map(|m| (PathBuf::from(&m.mount_point), m.fs_type.clone()))
            })
            .unwrap_or_else(|| (PathBuf::from("/"), String::new()));
        Some(Filesystem {
            mount_point,
            fs_type,
            size: st.f_blocks.saturating_mul(st.f_frsize),
            available: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }
}

/// Prefixes a full-filesystem error with the filesystem holding `path`, as the operator needs it
/// ("no space left on the filesystem of /var/lib/berth (ext4 at /var, 0 B of 20.0 GiB free): …");
/// any other error is returned as it is.
pub fn name_full_filesystem(err: Error, path: &Path) -> Error {
    if !err.is_no_space() {
        return err;
    }
    let described = Described { path, fs: Filesystem::of(path) };
    err.on_filesystem(described)
}

struct Described<'a> {
    path: &'a Path,
    fs: Option<Filesystem>,
}

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(fs) = &self.fs {
            let kind = if fs.fs_type.is_empty() { "filesystem" } else { fs.fs_type.as_str() };
            write!(
                f,
                " ({kind} at {}, {} of {} free)",
                fs.mount_point.display(),
                human(fs.available),
                human(fs.size)
            )?;
        }
        Ok(())
    }
}

/// Bytes as a person reads them: `0 B`, `512 B`, `1.5 MiB`, `20.0 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Context, ErrorKind};

    #[test]
    fn the_filesystem_of_a_directory_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Filesystem::of(dir.path()).expect("statvfs of a temp dir");
        assert!(dir.path().canonicalize().unwrap().starts_with(&fs.mount_point), "{fs:?}");
        assert!(fs.size > 0 && fs.available <= fs.size, "{fs:?}");
        assert!(Filesystem::of(&dir.path().join("absent")).is_none());
    }

    #[test]
    fn full_filesystem_errors_name_it_and_others_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let full: std::result::Result<(), _> = Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let err = name_full_filesystem(full.context(|| "writing x".into()).unwrap_err(), dir.path());
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        let msg = err.to_string();
        let prefix = format!("no space left on the filesystem of {} (", dir.path().display());
        assert!(msg.starts_with(&prefix), "{msg}");
        assert!(msg.contains(" free): writing x: "), "{msg}");
        let other = name_full_filesystem(Error::internal("boom"), dir.path());
        assert_eq!(other.to_string(), "boom");
    }

    #[test]
    fn sizes_read_like_df_h() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(200 << 20), "200.0 MiB");
        assert_eq!(human(20 << 30), "20.0 GiB");
    }
}
