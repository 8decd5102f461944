//! Resolves the user a container's first process runs as (uid, gid, additional gids) from the CRI
//! security context, the image's `User` and the image's own `/etc/passwd` and `/etc/group`, with
//! containerd's rules (`oci.WithUser`, `WithAdditionalGIDs`, `WithSupplementalGroups`).
//!
//! The image is hostile: its files are opened with `openat2(RESOLVE_IN_ROOT)` so that no symlink
//! or `..` can lead out of the container's root filesystem, only regular files are read, and at
//! most 10 MiB of each. This module must never open image paths any other way.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{SFlag, fstat};

use crate::cri::api;
use crate::error::{Context, Error, ErrorKind, Result};

/// The most bytes read from an image's `/etc/passwd` or `/etc/group` (containerd's limit).
const MAX_USER_FILE_BYTES: u64 = 10 << 20;

/// The identity of a process: what goes into the OCI `process.user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Sorted, without duplicates; includes the primary gid whenever a user was resolved.
    pub additional_gids: Vec<u32>,
}

/// Reads `rel` (relative, e.g. "etc/passwd") inside `root` as if `root` were `/`: symlinks and
/// `..` are resolved within it. `Ok(None)` when the file does not exist.
pub fn read_in_root(root: &Path, rel: &str) -> Result<Option<String>> {
    let what = || format!("reading /{rel} in the image rootfs {}", root.display());
    let dir = File::open(root).context(what)?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // O_PATH first: opening a FIFO or a device node the image planted there could block or have
    // side effects; an O_PATH descriptor does neither and pins the inode we then check.
    let fd = match openat2(&dir, rel, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
        // A symlink loop is the image's doing, not a node problem.
        Err(e @ Errno::ELOOP) => return Err(e).context_kind(ErrorKind::InvalidArgument, what),
        Err(e) => return Err(e).context(what),
    };
    let st = fstat(&fd).context(what)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Error::invalid(format!("{}: /{rel} is not a regular file", what())));
    }
    // Reopening our own O_PATH descriptor through /proc gives a readable one for the same inode.
    let file = File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())).context(what)?;
    let mut buf = Vec::new();
    file.take(MAX_USER_FILE_BYTES + 1).read_to_end(&mut buf).context(what)?;
    if buf.len() as u64 > MAX_USER_FILE_BYTES {
        return Err(Error::invalid(format!("{}: /{rel} exceeds {MAX_USER_FILE_BYTES} bytes", what())));
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// One `/etc/passwd` entry (only what berth uses).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: i64,
    gid: i64,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: i64,
    members: Vec<String>,
}

/// Numeric fields parse like Go's `strconv.Atoi` in moby/sys/user: garbage becomes 0.
fn atoi(s: &str) -> i64 {
    s.parse().unwrap_or(0)
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let field = |i: usize| f.get(i).copied().unwrap_or("");
            PasswdEntry { name: field(0).to_string(), uid: atoi(field(2)), gid: atoi(field(3)) }
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let field = |i: usize| f.get(i).copied().unwrap_or("");
            let members = field(3).split(',').filter(|m| !m.is_empty()).map(str::to_string).collect();
            GroupEntry { name: field(0).to_string(), gid: atoi(field(2)), members }
        })
        .collect()
}

/// The image's user database, read on first use.
struct ImageUsers<'a> {
    root: &'a Path,
    passwd: Option<Option<Vec<PasswdEntry>>>,
    group: Option<Option<Vec<GroupEntry>>>,
}

impl<'a> ImageUsers<'a> {
    fn new(root: &'a Path) -> Self {
        ImageUsers { root, passwd: None, group: None }
    }

    /// `None` when the image has no /etc/passwd.
    fn passwd(&mut self) -> Result<Option<&[PasswdEntry]>> {
        if self.passwd.is_none() {
            self.passwd = Some(read_in_root(self.root, "etc/passwd")?.map(|t| parse_passwd(&t)));
        }
        Ok(self.passwd.as_ref().and_then(|p| p.as_deref()))
    }

    fn group(&mut self) -> Result<Option<&[GroupEntry]>> {
        if self.group.is_none() {
            self.group = Some(read_in_root(self.root, "etc/group")?.map(|t| parse_group(&t)));
        }
        Ok(self.group.as_ref().and_then(|g| g.as_deref()))
    }
}

/// What a user string is made of: a number or a name.
enum Part<'s> {
    Id(u32),
    Name(&'s str),
}

/// containerd (following runc) accepts ids up to `MaxInt32`; names are anything that is not a
/// number.
fn parse_part<'s>(s: &'s str, what: &str, field: &str, userstr: &str) -> Result<Part<'s>> {
    match s.parse::<i64>() {
        Ok(v) if (0..=i32::MAX as i64).contains(&v) => Ok(Part::Id(v as u32)),
        Ok(_) => Err(Error::invalid(format!("{field} {userstr:?}: {what} out of range"))),
        Err(e)
            if matches!(
                e.kind(),
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
            ) =>
        {
            Err(Error::invalid(format!("{field} {userstr:?}: {what} out of range")))
        }
        Err(_) => Ok(Part::Name(s)),
    }
}

fn to_u32(v: i64) -> u32 {
    // Go's uint32(int) conversion, which containerd applies to ids read from the image.
    v as u32
}

/// `oci.WithUser`: "uid", "name", "uid:gid", "name:gid", "uid:group", "name:group". A numeric uid
/// not in the image's passwd gets gid 0; a name that is not there is an error naming `field`.
fn resolve_user_string(users: &mut ImageUsers, userstr: &str, field: &str) -> Result<(u32, u32)> {
    let parts: Vec<&str> = userstr.split(':').collect();
    match parts.as_slice() {
        [user] => match parse_part(user, "uid", field, userstr)? {
            Part::Id(uid) => {
                let found = users.passwd()?.and_then(|p| p.iter().find(|u| u.uid == uid as i64).cloned());
                Ok(found.map(|u| (to_u32(u.uid), to_u32(u.gid))).unwrap_or((uid, 0)))
            }
            Part::Name(name) => {
                let u = find_user(users, name, field, userstr)?;
                Ok((to_u32(u.uid), to_u32(u.gid)))
            }
        },
        [user, group] => {
            let user = parse_part(user, "uid", field, userstr)?;
            let group = parse_part(group, "gid", field, userstr)?;
            let uid = match user {
                Part::Id(uid) => uid,
                Part::Name(name) => to_u32(find_user(users, name, field, userstr)?.uid),
            };
            let gid = match group {
                Part::Id(gid) => gid,
                Part::Name(name) => {
                    let g = users.group()?.and_then(|g| g.iter().find(|g| g.name == name).cloned());
                    let g = g.ok_or_else(|| {
                        Error::invalid(format!(
                            "{field} {userstr:?}: group {name:?} not found in the image's /etc/group"
                        ))
                    })?;
                    to_u32(g.gid)
                }
            };
            Ok((uid, gid))
        }
        _ => Err(Error::invalid(format!("{field} {userstr:?}: invalid user string"))),
    }
}

fn find_user(users: &mut ImageUsers, name: &str, field: &str, userstr: &str) -> Result<PasswdEntry> {
    let found = users.passwd()?.and_then(|p| p.iter().find(|u| u.name == name).cloned());
    found.ok_or_else(|| {
        if userstr == name {
            Error::invalid(format!("{field} {name:?} not found in the image's /etc/passwd"))
        } else {
            Error::invalid(format!("{field} {userstr:?}: user {name:?} not found in the image's /etc/passwd"))
        }
    })
}

/// `oci.WithAdditionalGIDs`: the gids of the groups listing the user as a member (not the group
/// named after the user). `user` is a name or a uid; an unknown uid has no groups.
fn member_gids(users: &mut ImageUsers, user: &str) -> Result<Vec<u32>> {
    let name = match user.parse::<i64>() {
        Ok(uid) => match users.passwd()?.and_then(|p| p.iter().find(|u| u.uid == uid)) {
            Some(u) => u.name.clone(),
            None => return Ok(vec![]),
        },
        Err(_) => user.to_string(),
    };
    let Some(groups) = users.group()? else { return Ok(vec![]) };
    Ok(groups.iter().filter(|g| g.name != name && g.members.contains(&name)).map(|g| to_u32(g.gid)).collect())
}

/// containerd's `GenerateUserString`: the CRI user (name wins over uid) with the CRI group; a
/// group without a user is an error.
fn cri_user_string(username: &str, uid: Option<i64>, gid: Option<i64>) -> Result<(String, &'static str)> {
    let (user, field) = if !username.is_empty() {
        (username.to_string(), "security_context.run_as_username")
    } else if let Some(uid) = uid {
        (uid.to_string(), "security_context.run_as_user")
    } else {
        (String::new(), "")
    };
    match gid {
        Some(_) if user.is_empty() => {
            Err(Error::invalid("security_context.run_as_group is set without run_as_user or run_as_username"))
        }
        Some(gid) => Ok((format!("{user}:{gid}"), field)),
        None => Ok((user, field)),
    }
}

fn supplemental(groups: &[i64]) -> Result<Vec<u32>> {
    groups
        .iter()
        .map(|&g| {
            u32::try_from(g).map_err(|_| {
                Error::invalid(format!("security_context.supplemental_groups: {g} is not a valid gid"))
            })
        })
        .collect()
}

/// The user of a container: the CRI user, else the image's `User`, else root; additional gids
/// merged from the primary gid, the user's groups in the image (policy Merge) and the CRI
/// supplemental groups.
pub fn container_user(
    rootfs: &Path,
    sc: Option<&api::LinuxContainerSecurityContext>,
    image_user: &str,
) -> Result<ResolvedUser> {
    let default_sc = api::LinuxContainerSecurityContext::default();
    let sc = sc.unwrap_or(&default_sc);
    let uid = sc.run_as_user.map(|v| v.value);
    let (mut userstr, mut field) =
        cri_user_string(&sc.run_as_username, uid, sc.run_as_group.map(|v| v.value))?;
    if userstr.is_empty() {
        userstr = image_user.to_string();
        field = "image config User";
    }
    let mut users = ImageUsers::new(rootfs);
    let (uid, gid) =
        if userstr.is_empty() { (0, 0) } else { resolve_user_string(&mut users, &userstr, field)? };

    // The user whose image groups are merged: containerd takes it from the CRI fields, else the
    // user part of the image's User, else root.
    let group_user = if !sc.run_as_username.is_empty() {
        sc.run_as_username.clone()
    } else if let Some(v) = sc.run_as_user {
        v.value.to_string()
    } else if !image_user.is_empty() {
        image_user.split(':').next().unwrap_or_default().to_string()
    } else {
        "0".to_string()
    };

    let mut gids: BTreeSet<u32> = supplemental(&sc.supplemental_groups)?.into_iter().collect();
    if !userstr.is_empty() {
        gids.insert(gid);
    }
    match api::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
        Ok(api::SupplementalGroupsPolicy::Merge) => {
            gids.insert(gid);
            gids.extend(member_gids(&mut users, &group_user)?);
        }
        Ok(api::SupplementalGroupsPolicy::Strict) => {}
        Err(_) => {
            return Err(Error::invalid(format!(
                "security_context.supplemental_groups_policy: unknown policy {}",
                sc.supplemental_groups_policy
            )));
        }
    }
    Ok(ResolvedUser { uid, gid, additional_gids: gids.into_iter().collect() })
}

/// The user of the pod's pause process: the sandbox's run_as_user/run_as_group, else the pause
/// image's `User`, plus the supplemental groups.
pub fn sandbox_user(
    rootfs: &Path,
    sc: Option<&api::LinuxSandboxSecurityContext>,
    image_user: &str,
) -> Result<ResolvedUser> {
    let default_sc = api::LinuxSandboxSecurityContext::default();
    let sc = sc.unwrap_or(&default_sc);
    let (mut userstr, mut field) =
        cri_user_string("", sc.run_as_user.map(|v| v.value), sc.run_as_group.map(|v| v.value))?;
    if userstr.is_empty() {
        userstr = image_user.to_string();
        field = "pause image config User";
    }
    let mut users = ImageUsers::new(rootfs);
    let (uid, gid) =
        if userstr.is_empty() { (0, 0) } else { resolve_user_string(&mut users, &userstr, field)? };
    let mut gids: BTreeSet<u32> = supplemental(&sc.supplemental_groups)?.into_iter().collect();
    if !userstr.is_empty() {
        gids.insert(gid);
    }
    Ok(ResolvedUser { uid, gid, additional_gids: gids.into_iter().collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1::/:/bin/false\n\
        \n\
        alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
        bob:x:1001:100::/home/bob:/bin/sh\n\
        weird:x:notanumber:2000::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        users:x:100:alice\n\
        alice:x:1000:alice\n\
        wheel:x:10:alice,bob\n\
        audio:x:29:bob\n\
        staff:x:50:root\n";

    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        if let Some(p) = passwd {
            std::fs::write(dir.path().join("etc/passwd"), p).unwrap();
        }
        if let Some(g) = group {
            std::fs::write(dir.path().join("etc/group"), g).unwrap();
        }
        dir
    }

    fn sc(f: impl FnOnce(&mut api::LinuxContainerSecurityContext)) -> api::LinuxContainerSecurityContext {
        let mut sc = api::LinuxContainerSecurityContext::default();
        f(&mut sc);
        sc
    }

    fn user(uid: u32, gid: u32, gids: &[u32]) -> ResolvedUser {
        ResolvedUser { uid, gid, additional_gids: gids.to_vec() }
    }

    #[test]
    fn parses_passwd_and_group_like_moby_sys_user() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 5);
        assert_eq!(p[4], PasswdEntry { name: "weird".into(), uid: 0, gid: 2000 });
        let g = parse_group(GROUP);
        assert_eq!(g[3].members, vec!["alice".to_string(), "bob".to_string()]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn no_user_anywhere_is_root_with_roots_image_groups() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        // Merge: gid 0 plus the groups listing root (staff).
        assert_eq!(container_user(r.path(), None, "").unwrap(), user(0, 0, &[0, 50]));
    }

    #[test]
    fn image_user_by_name_gets_passwd_gid_and_member_groups() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        // alice's own group (named alice) is excluded by name but is her primary gid anyway.
        assert_eq!(container_user(r.path(), None, "alice").unwrap(), user(1000, 1000, &[10, 100, 1000]));
    }

    #[test]
    fn image_user_forms() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let u = |s: &str| container_user(r.path(), None, s).map(|u| (u.uid, u.gid));
        assert_eq!(u("1001").unwrap(), (1001, 100));
        assert_eq!(u("1001:7").unwrap(), (1001, 7));
        assert_eq!(u("bob:wheel").unwrap(), (1001, 10));
        assert_eq!(u("4242:audio").unwrap(), (4242, 29));
        assert_eq!(u("alice:3").unwrap(), (1000, 3));
        // A numeric uid the image does not know runs with gid 0.
        assert_eq!(u("4242").unwrap(), (4242, 0));
        assert_eq!(u("nobody").unwrap_err().kind(), crate::ErrorKind::InvalidArgument);
        assert!(u("bob:nogroup").unwrap_err().to_string().contains("nogroup"));
        assert!(u("a:b:c").is_err());
        assert!(u("-1").unwrap_err().to_string().contains("out of range"));
        assert!(u("99999999999").unwrap_err().to_string().contains("out of range"));
    }

    #[test]
    fn cri_run_as_user_wins_over_image_user_and_merges_supplemental_groups() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let s = sc(|s| {
            s.run_as_user = Some(api::Int64Value { value: 1001 });
            s.supplemental_groups = vec![5000, 10];
        });
        // bob: primary 100, member of wheel(10) and audio(29), plus 5000.
        assert_eq!(
            container_user(r.path(), Some(&s), "alice").unwrap(),
            user(1001, 100, &[10, 29, 100, 5000])
        );
    }

    #[test]
    fn cri_run_as_group_overrides_the_gid() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let s = sc(|s| {
            s.run_as_user = Some(api::Int64Value { value: 1000 });
            s.run_as_group = Some(api::Int64Value { value: 3000 });
        });
        assert_eq!(container_user(r.path(), Some(&s), "").unwrap(), user(1000, 3000, &[10, 100, 3000]));
    }

    #[test]
    fn run_as_group_without_user_is_an_error() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let s = sc(|s| s.run_as_group = Some(api::Int64Value { value: 3 }));
        assert_eq!(
            container_user(r.path(), Some(&s), "alice").unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn unknown_run_as_username_names_the_field() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let s = sc(|s| s.run_as_username = "x".into());
        let e = container_user(r.path(), Some(&s), "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "security_context.run_as_username \"x\" not found in the image's /etc/passwd"
        );
    }

    #[test]
    fn strict_policy_ignores_image_groups() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let s = sc(|s| {
            s.run_as_username = "alice".into();
            s.supplemental_groups = vec![7];
            s.supplemental_groups_policy = api::SupplementalGroupsPolicy::Strict as i32;
        });
        assert_eq!(container_user(r.path(), Some(&s), "").unwrap(), user(1000, 1000, &[7, 1000]));
        // Strict without any user: only the supplemental groups (as containerd).
        let s = sc(|s| {
            s.supplemental_groups = vec![7];
            s.supplemental_groups_policy = api::SupplementalGroupsPolicy::Strict as i32;
        });
        assert_eq!(container_user(r.path(), Some(&s), "").unwrap(), user(0, 0, &[7]));
    }

    #[test]
    fn image_without_user_files() {
        let r = rootfs(None, None);
        assert_eq!(container_user(r.path(), None, "").unwrap(), user(0, 0, &[0]));
        assert_eq!(container_user(r.path(), None, "123").unwrap(), user(123, 0, &[0]));
        assert!(container_user(r.path(), None, "alice").is_err());
        assert!(container_user(r.path(), None, "alice:1").is_err());
        assert_eq!(container_user(r.path(), None, "5:6").unwrap(), user(5, 6, &[6]));
    }

    #[test]
    fn sandbox_user_uses_run_as_user_then_image_user() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        let mut s = api::LinuxSandboxSecurityContext {
            run_as_user: Some(api::Int64Value { value: 1000 }),
            supplemental_groups: vec![42],
            ..Default::default()
        };
        assert_eq!(sandbox_user(r.path(), Some(&s), "").unwrap(), user(1000, 1000, &[42, 1000]));
        s.run_as_user = None;
        assert_eq!(
            sandbox_user(r.path(), Some(&s), "65535:65535").unwrap(),
            user(65535, 65535, &[42, 65535])
        );
        assert_eq!(sandbox_user(r.path(), None, "").unwrap(), user(0, 0, &[]));
    }

    #[test]
    fn hostile_symlinks_stay_inside_the_rootfs() {
        let outer = tempfile::tempdir().unwrap();
        // A file next to the rootfs that a naive reader following "../../" would reach.
        std::fs::write(outer.path().join("secret"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = outer.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("../../secret", root.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd").unwrap(), None);
        let e = container_user(&root, None, "evil").unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");

        // An absolute symlink to the host's /etc/shadow resolves to the rootfs' own etc/shadow.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        symlink("/etc/shadow", root.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd").unwrap(), None);
        std::fs::write(root.join("etc/shadow"), "inside:x:7:7::/:/bin/sh\n").unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd").unwrap().unwrap(), "inside:x:7:7::/:/bin/sh\n");

        // A loop is refused, not followed forever.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        symlink("/etc/passwd", root.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd").unwrap_err().kind(), crate::ErrorKind::InvalidArgument);

        // A symlinked /etc directory is resolved inside the root too.
        std::fs::remove_dir_all(root.join("etc")).unwrap();
        symlink("/../../..", root.join("etc")).unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd").unwrap(), None);
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let r = rootfs(None, None);
        nix::unistd::mkfifo(&r.path().join("etc/passwd"), Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_in_root(r.path(), "etc/passwd").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::create_dir(r.path().join("etc/group")).unwrap();
        assert!(read_in_root(r.path(), "etc/group").is_err());

        let big = rootfs(None, None);
        let f = File::create(big.path().join("etc/passwd")).unwrap();
        f.set_len(MAX_USER_FILE_BYTES + 1).unwrap();
        assert!(read_in_root(big.path(), "etc/passwd").unwrap_err().to_string().contains("exceeds"));
    }
}
