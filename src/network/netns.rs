//! Pod network namespaces, pinned by a bind mount of the namespace onto a file `<dir>/<id>` so
//! they outlive any process (the pause container joins the namespace through that path, CNI
//! plugins get it as `CNI_NETNS`).
//!
//! Namespace changes (`unshare`, `setns`) happen only in short-lived dedicated OS threads that
//! exit afterwards: berthd's own threads (tokio's workers) must never change namespace. All
//! functions here block (mounts, netlink); async callers run them with `spawn_blocking`.
//!
//! Mount propagation: like containerd's netns package and CRI-O's pinns, the pin is a plain
//! `MS_BIND` mount that inherits the propagation of the mount holding `<dir>`; `<dir>` is not made
//! a mount point of its own. Making it private would be wrong: copies of the pin made into other
//! mount namespaces (a pod mounting the host's /run) would then never see our unmount and would
//! keep the namespace alive. Making it shared, as `ip netns` does, adds a mount on the state dir
//! that nobody else expects.
//!
//! This module never runs CNI plugins and never deletes anything but the pin files it is given.

use std::fs::OpenOptions;
use std::io::ErrorKind as IoKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

use crate::error::{Context, Error, ErrorKind, Result};

/// Creates a new network namespace pinned at `<dir>/<id>` and returns that path. `dir` is created
/// if missing. Fails with AlreadyExists if the pin file exists. On failure nothing is left behind.
pub fn create(dir: &Path, id: &str) -> Result<PathBuf> {
    check_id(id)?;
    std::fs::create_dir_all(dir).context(|| format!("creating netns dir {}", dir.display()))?;
    let path = dir.join(id);
    // The mount point: an empty file, created exclusively so two pods can never share a pin.
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == IoKind::AlreadyExists => {
            return Err(Error::already_exists(format!("netns {} already exists", path.display())));
        }
        Err(e) => {
            return Err(Error::with_source(
                ErrorKind::Internal,
                format!("creating netns file {}", path.display()),
                e,
            ));
        }
    }
    let target = path.clone();
    let pinned = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<()> {
            // This thread alone moves to the new namespace, and it exits right after pinning it.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .context(|| "unsharing the network namespace".to_string())?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .context(|| format!("bind-mounting the new netns on {}", target.display()))
        })
        .context(|| "starting the netns thread".to_string())
        .and_then(|t| t.join().unwrap_or_else(|_| Err(Error::internal("the netns thread panicked"))));
    if let Err(e) = pinned {
        // The mount is the thread's last step, so on failure there is only the file to remove.
        let _ = std::fs::remove_file(&path);
        return Err(e.context(format!("creating netns {id}")));
    }
    Ok(path)
}

/// Unpins a network namespace and deletes its file. Idempotent: a missing file, or a file that is
/// not (or no longer) a mount point, is fine. The namespace itself is freed by the kernel once the
/// last process in it is gone.
pub fn remove(path: &Path) -> Result<()> {
    // Loop in case the pin got stacked (it cannot through `create`, but an operator might have).
    for _ in 0..8 {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(e) => {
                return Err(Error::with_source(
                    ErrorKind::Internal,
                    format!("unmounting netns {}", path.display()),
                    e,
                ));
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == IoKind::NotFound => Ok(()),
        Err(e) => {
            Err(Error::with_source(ErrorKind::Internal, format!("removing netns file {}", path.display()), e))
        }
    }
}

/// The ids of the pins in `dir` (every file, pinned or not, so recovery can remove leftovers), in
/// lexical order. A missing directory has none.
pub fn list(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::with_source(
                ErrorKind::Internal,
                format!("listing netns dir {}", dir.display()),
                e,
            ));
        }
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.context(|| format!("listing netns dir {}", dir.display()))?;
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
            ids.push(name.to_string());
        }
    }
    ids.sort();
    Ok(ids)
}

/// Brings the loopback interface up inside the namespace pinned at `path`. CNI's loopback plugin
/// does this when the network config lists it; containerd and CRI-O always do it, so berth does
/// it itself when the list lacks loopback.
pub fn set_loopback_up(path: &Path) -> Result<()> {
    in_netns(path, || link_set_up("lo"))
        .map_err(|e| e.context(format!("bringing lo up in netns {}", path.display())))
}

/// Runs `f` in a dedicated thread that has joined the namespace pinned at `path`; the thread exits
/// afterwards, so no thread of the caller ever changes namespace.
fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns = std::fs::File::open(path).map_err(|e| {
        let kind = if e.kind() == IoKind::NotFound { ErrorKind::NotFound } else { ErrorKind::Internal };
        Error::with_source(kind, format!("opening netns {}", path.display()), e)
    })?;
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("netns-enter".into())
            .spawn_scoped(s, move || {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                    .context(|| "joining the netns".to_string())?;
                f()
            })
            .context(|| "starting the netns thread".to_string())?;
        thread.join().unwrap_or_else(|_| Err(Error::internal("the netns thread panicked")))
    })
}

const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const IFF_UP: u32 = 1;
const IFLA_IFNAME: u16 = 3;

/// Sets IFF_UP on the interface `name` of the current thread's network namespace with one
/// rtnetlink RTM_NEWLINK request (looked up by name), and waits for the kernel's ack.
fn link_set_up(name: &str) -> Result<()> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .context(|| "opening a netlink socket".to_string())?;
    let kernel = NetlinkAddr::new(0, 0);
    socket::bind(fd.as_raw_fd(), &kernel).context(|| "binding the netlink socket".to_string())?;

    let mut attr_name = name.as_bytes().to_vec();
    attr_name.push(0);
    let attr_len = 4 + attr_name.len();
    let padded_attr = attr_len.div_ceil(4) * 4;
    let total = 16 + 16 + padded_attr;
    let mut msg = Vec::with_capacity(total);
    // struct nlmsghdr
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    // struct ifinfomsg: AF_UNSPEC, index 0 (look up by IFLA_IFNAME), flags and change mask
    msg.extend_from_slice(&[0u8, 0u8]);
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&0i32.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes());
    // struct rtattr IFLA_IFNAME
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
    msg.extend_from_slice(&attr_name);
    msg.resize(total, 0);

    socket::sendto(fd.as_raw_fd(), &msg, &kernel, MsgFlags::empty())
        .context(|| format!("sending the netlink request for {name}"))?;
    let mut buf = [0u8; 4096];
    let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
        .context(|| format!("reading the netlink answer for {name}"))?;
    let answer = &buf[..n];
    if n < 20 || u16::from_ne_bytes([answer[4], answer[5]]) != NLMSG_ERROR {
        return Err(Error::internal(format!("unexpected netlink answer setting {name} up")));
    }
    let code = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
    if code != 0 {
        let errno = Errno::from_raw(-code);
        let kind = if errno == Errno::ENODEV { ErrorKind::NotFound } else { ErrorKind::Internal };
        return Err(Error::with_source(kind, format!("setting link {name} up"), errno));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') || id.contains('\0') {
        return Err(Error::invalid(format!("invalid netns id {id:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    use super::*;

    fn ns_inode(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    fn is_mount_point(path: &Path) -> bool {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = path.to_str().unwrap();
        mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(p))
    }

    fn lo_flags(path: &Path) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "-o", "link", "show", "lo"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn create_pins_a_new_namespace_and_remove_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("netns");
        let path = create(&dir, "pod-a").unwrap();
        assert_eq!(path, dir.join("pod-a"));
        assert!(is_mount_point(&path));
        assert_ne!(ns_inode(&path), ns_inode(Path::new("/proc/thread-self/ns/net")), "a new namespace");
        assert_ne!(ns_inode(&path), ns_inode(Path::new("/proc/self/ns/net")), "the caller stayed in its own");
        // A fresh namespace has lo down; the loopback helper brings it up in there only.
        assert!(!lo_flags(&path).contains(",UP"), "{}", lo_flags(&path));
        set_loopback_up(&path).unwrap();
        assert!(lo_flags(&path).contains(",UP"), "{}", lo_flags(&path));

        let again = create(&dir, "pod-a").unwrap_err();
        assert_eq!(again.kind(), ErrorKind::AlreadyExists);
        assert!(is_mount_point(&path), "a failed create leaves the existing pin alone");
        let other = create(&dir, "pod-b").unwrap();
        assert_ne!(ns_inode(&path), ns_inode(&other));
        assert_eq!(list(&dir).unwrap(), vec!["pod-a", "pod-b"]);

        remove(&path).unwrap();
        assert!(!path.exists() && !is_mount_point(&path));
        remove(&path).unwrap();
        remove(&other).unwrap();
        assert!(list(&dir).unwrap().is_empty());
        assert!(list(&d.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn bad_ids_and_failures_leave_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        for id in ["", "..", "a/b"] {
            assert_eq!(create(d.path(), id).unwrap_err().kind(), ErrorKind::InvalidArgument);
        }
        // A plain file that is not a pin is removed too (leftover from a crash before the mount).
        let stale = d.path().join("stale");
        std::fs::write(&stale, b"").unwrap();
        remove(&stale).unwrap();
        assert!(!stale.exists());
        // The netns dir cannot be created under a file: nothing is created.
        let blocked = d.path().join("file");
        std::fs::write(&blocked, b"x").unwrap();
        assert!(create(&blocked, "x").is_err());
        assert_eq!(std::fs::read(&blocked).unwrap(), b"x");
        assert_eq!(set_loopback_up(&d.path().join("nope")).unwrap_err().kind(), ErrorKind::NotFound);
    }
}
