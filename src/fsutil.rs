//! File-system helpers shared by berthd and the shim: the process umask, replacing a file atomically
//! with an exact mode, creating directories with an exact mode, and taking group/other access off
//! what an older berth left under its root and state directories.
//!
//! Everything berth keeps under its root and state directories is private to root (CVE-2021-41103 in
//! containerd is the class of bug this prevents: a setuid binary or a secret inside a container's
//! rootfs reachable by another host user). Files a container must read through a bind mount (its
//! hosts, hostname, resolv.conf) are created with the mode the container needs, inside private
//! directories. Nothing here decides which mode a file gets: callers do.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use crate::error::{Context as _, Result};

/// berthd's umask: files and directories created without an explicit mode are 0600 and 0700.
pub const DAEMON_UMASK: u32 = 0o077;

/// The shim's umask, which the OCI runtime it runs inherits: runc creates missing mount points
/// inside the container's rootfs with it, and a 0700 `/var/run/secrets` would lock non-root
/// containers out of their service-account token. 0022 is what containerd's shim runs with.
pub const SHIM_UMASK: u32 = 0o022;

/// Sets the process umask. Call it first thing in `main`, before any thread exists: the umask is
/// per process, so changing it later races every other thread's file creation.
pub fn set_umask(mask: u32) {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask as nix::libc::mode_t));
}

/// Replaces `path` with `bytes`, mode `mode` (not subject to the umask), so that a reader (or a
/// crash) sees the old or the new content, never a mix: write a temp file, fsync it, rename it over,
/// fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let result = (|| {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).mode(mode & 0o777).open(tmp)?;
        // The temp file may have existed with another mode, and the umask may have masked ours.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok::<_, std::io::Error>(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result.context(|| format!("writing {}", path.display()))
}

/// Writes `bytes` to a new or truncated file at `path` that only root can read (mode 0600 whatever
/// the umask): for files that are rewritten or removed right after, where atomic replacement buys
/// nothing.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .context(|| format!("writing {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(bytes))
        .context(|| format!("writing {}", path.display()))
}

/// Creates `path` and any missing parents, each new directory with exactly `mode` (the umask does
/// not apply); directories that exist are left as they are.
pub fn create_dir_all_with_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dir_all_with_mode(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .context(|| format!("setting the mode of {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e).context(|| format!("creating {}", path.display())),
    }
}

/// Makes `dir` (berth's root or state directory) mode `top_mode` and takes group and other access
/// off every entry directly inside it, except sockets (the CRI socket's own mode is set where it is
/// bound). A berth that ran before this rule left 0755 directories and 0644 files there; with their
/// parents private, nothing deeper is reachable.
pub fn restrict_dir(dir: &Path, top_mode: u32) -> Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(top_mode))
        .context(|| format!("setting the mode of {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).context(|| format!("reading {}", dir.display()))? {
        let entry = entry.context(|| format!("reading {}", dir.display()))?;
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context(|| format!("stat of {}", entry.path().display())),
        };
        let ft = meta.file_type();
        if ft.is_symlink() || ft.is_socket() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode & !0o077))
                .context(|| format!("setting the mode of {}", entry.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn write_atomic_sets_the_exact_mode_whatever_was_there() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        assert_eq!((std::fs::read(&p).unwrap(), mode(&p)), (b"one".to_vec(), 0o600));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::write(d.path().join("config.json.tmp"), b"stale").unwrap();
        std::fs::set_permissions(d.path().join("config.json.tmp"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!((std::fs::read(&p).unwrap(), mode(&p)), (b"two".to_vec(), 0o600));
        write_atomic(&d.path().join("hosts"), b"127.0.0.1 localhost\n", 0o644).unwrap();
        assert_eq!(mode(&d.path().join("hosts")), 0o644);
        assert!(!d.path().join("config.json.tmp").exists());
    }

    #[test]
    fn create_dir_all_with_mode_sets_every_new_component_and_keeps_existing_ones() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::set_permissions(d.path().join("a"), std::fs::Permissions::from_mode(0o700)).unwrap();
        create_dir_all_with_mode(&d.path().join("a/b/c"), 0o755).unwrap();
        assert_eq!(mode(&d.path().join("a")), 0o700);
        assert_eq!(mode(&d.path().join("a/b")), 0o755);
        assert_eq!(mode(&d.path().join("a/b/c")), 0o755);
        create_dir_all_with_mode(&d.path().join("a/b/c"), 0o700).unwrap();
        assert_eq!(mode(&d.path().join("a/b/c")), 0o755);
    }

    #[test]
    fn restrict_dir_takes_group_and_other_access_off_direct_entries_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("bundles/abc")).unwrap();
        std::fs::write(root.join("meta.redb"), b"").unwrap();
        for (p, m) in [("", 0o755), ("bundles", 0o755), ("bundles/abc", 0o755), ("meta.redb", 0o644)] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        let sock = std::os::unix::net::UnixListener::bind(root.join("berth.sock")).unwrap();
        std::fs::set_permissions(root.join("berth.sock"), std::fs::Permissions::from_mode(0o660)).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        restrict_dir(&root, 0o711).unwrap();
        assert_eq!(mode(&root), 0o711);
        assert_eq!(mode(&root.join("bundles")), 0o700);
        assert_eq!(mode(&root.join("meta.redb")), 0o600);
        // Deeper entries are unreachable through their private parent and are left alone.
        assert_eq!(mode(&root.join("bundles/abc")), 0o755);
        assert_eq!(mode(&root.join("berth.sock")), 0o660);
        assert_eq!(mode(Path::new("/etc")) & 0o005, 0o005);
        drop(sock);
    }
}
