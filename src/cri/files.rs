//! The files a pod's containers share from their sandbox: hostname, hosts, resolv.conf (written from
//! the pod's DNSConfig, or the host's when it has none, as containerd does) and the pod's /dev/shm
//! tmpfs. Files are written as temp + rename; the shm mount is private to berth's state dir.

use std::path::Path;

use super::api;
use crate::error::{Context, Result};
use crate::fsutil::write_atomic;

/// Size of a pod's /dev/shm (containerd's and docker's default).
pub const SHM_SIZE: &str = "65536k";

/// containerd's resolv.conf from a DNSConfig; empty when the config says nothing.
pub fn resolv_conf(dns: Option<&api::DnsConfig>) -> String {
    let Some(d) = dns else { return String::new() };
    let mut out = String::new();
    if !d.searches.is_empty() {
        out.push_str(&format!("search {}\n", d.searches.join(" ")));
    }
    for s in &d.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !d.options.is_empty() {
        out.push_str(&format!("options {}\n", d.options.join(" ")));
    }
    out
}

/// The hosts file of a pod with its own network: localhost entries and the pod's own name.
pub fn hosts(hostname: &str, ip: Option<&str>) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if let (Some(ip), false) = (ip, hostname.is_empty()) {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

/// The mode of the files containers read through bind mounts (/etc/hosts, /etc/hostname,
/// /etc/resolv.conf): any user in the container reads them; the sandbox directory holding them
/// is private, so no host user reaches them.
const CONTAINER_READABLE: u32 = 0o644;

/// Writes hostname and resolv.conf for a sandbox into `dir`: what the pause container needs, known
/// before the pod has an address.
pub fn write_sandbox_files(dir: &Path, hostname: &str, dns: Option<&api::DnsConfig>) -> Result<()> {
    write_atomic(&dir.join("hostname"), format!("{hostname}\n").as_bytes(), CONTAINER_READABLE)?;
    let resolv = match resolv_conf(dns) {
        r if r.is_empty() => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        r => r.into_bytes(),
    };
    write_atomic(&dir.join("resolv.conf"), &resolv, CONTAINER_READABLE)
}

/// Writes a sandbox's hosts file into `dir`: the host's own for a host-network pod, else one
/// naming the pod at `ip`. Only containers mount it, so it may come after the pause is up.
pub fn write_hosts(dir: &Path, hostname: &str, host_network: bool, ip: Option<&str>) -> Result<()> {
    let hosts = if host_network {
        std::fs::read("/etc/hosts").unwrap_or_default()
    } else {
        self::hosts(hostname, ip).into_bytes()
    };
    write_atomic(&dir.join("hosts"), &hosts, CONTAINER_READABLE)
}

/// Mounts the pod's /dev/shm tmpfs at `path` (created if needed).
pub fn mount_shm(path: &Path) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(path).context(|| format!("creating {}", path.display()))?;
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={SHM_SIZE}").as_str()),
    )
    .context(|| format!("mounting the pod's shm at {}", path.display()))
}

/// Checks a path a request names relative to a directory (a container's `log_path` under the pod's
/// `log_directory`): relative and without `..`, so that it stays inside.
pub fn check_relative(field: &str, path: &str) -> Result<()> {
    use std::path::Component;
    let p = Path::new(path);
    if p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(crate::Error::invalid(format!(
            "{field} {path:?} must be a relative path without \"..\""
        )));
    }
    Ok(())
}

/// Creates `dir` (what the sandbox config named) and then the directories of `rel` inside it, one
/// component at a time, never following a symlink: whatever was planted in `dir`, nothing is created
/// outside it. `rel` must have passed [`check_relative`].
pub fn create_dirs_beneath(dir: &Path, rel: &Path) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    use std::path::Component;
    // 0755 as containerd makes them (log collectors read them), whatever berthd's umask.
    crate::fsutil::create_dir_all_with_mode(dir, 0o755)?;
    let what = || format!("creating {} in {}", rel.display(), dir.display());
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // `dir` itself is trusted as RunPodSandbox named it (it may be reached through a symlink).
    let mut cur = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .context(what)?;
    for c in rel.components() {
        let name = match c {
            Component::Normal(name) => name,
            Component::CurDir => continue,
            _ => return Err(crate::Error::invalid(format!("{}: not a relative path inside", what()))),
        };
        let made = match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => true,
            // A symlink already there is refused by the open below.
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(e).context(what),
        };
        cur = rustix::fs::openat(&cur, name, flags, Mode::empty()).context(what)?;
        if made {
            rustix::fs::fchmod(&cur, Mode::from_raw_mode(0o755)).context(what)?;
        }
    }
    Ok(())
}

/// Unmounts whatever is mounted at `path` (lazily; nothing mounted is fine).
pub fn unmount(path: &Path) -> Result<()> {
    use nix::mount::{MntFlags, umount2};
    loop {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue, // stacked mounts: peel them all
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e).context(|| format!("unmounting {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_like_containerd() {
        assert_eq!(resolv_conf(None), "");
        let d = api::DnsConfig {
            servers: vec!["10.96.0.10".into(), "8.8.8.8".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d)),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver 8.8.8.8\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_name_the_pod() {
        let h = hosts("web-0", Some("10.87.0.5"));
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.87.0.5\tweb-0\n"));
        assert!(!hosts("", Some("10.87.0.5")).contains("10.87.0.5"));
    }

    #[test]
    fn relative_paths_stay_inside() {
        for ok in ["app/0.log", "0.log", "./app/1.log"] {
            check_relative("log_path", ok).unwrap();
        }
        for bad in ["/etc/cron.d/x", "../escape.log", "app/../../x"] {
            let e = check_relative("log_path", bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    /// Issue 8 item 10: the directories of a container's log are made inside the pod's log
    /// directory only, whatever symlink sits there.
    #[test]
    fn log_directories_are_created_beneath_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let (logs, outside) = (d.path().join("logs"), d.path().join("outside"));
        create_dirs_beneath(&logs, Path::new("app")).unwrap();
        assert!(logs.join("app").is_dir());
        create_dirs_beneath(&logs, Path::new("app")).unwrap();
        create_dirs_beneath(&logs, Path::new("./a/b")).unwrap();
        assert!(logs.join("a/b").is_dir());
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, logs.join("evil")).unwrap();
        assert!(create_dirs_beneath(&logs, Path::new("evil/sub")).is_err());
        assert!(!outside.join("sub").exists());
        std::os::unix::fs::symlink(d.path().join("nowhere"), logs.join("dangling")).unwrap();
        assert!(create_dirs_beneath(&logs, Path::new("dangling")).is_err());
        assert!(!d.path().join("nowhere").exists());
    }

    #[test]
    fn sandbox_files_fall_back_to_the_host_resolv_conf() {
        let d = tempfile::tempdir().unwrap();
        write_sandbox_files(d.path(), "pod", None).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("hostname")).unwrap(), "pod\n");
        let host = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        assert_eq!(std::fs::read(d.path().join("resolv.conf")).unwrap(), host);
        write_hosts(d.path(), "pod", false, Some("10.0.0.2")).unwrap();
        assert!(std::fs::read_to_string(d.path().join("hosts")).unwrap().ends_with("10.0.0.2\tpod\n"));
    }
}
