//! Device nodes and device cgroup rules of a container, as containerd's CRI plugin sets them: the
//! default rules (deny everything, then the usual allow list), one node plus one allow rule per
//! CRI device (a directory brings every device under it), and for privileged containers every
//! device of the host's /dev with everything allowed. Reads the host's device nodes (stat only).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use crate::cri::api;
use crate::error::{Context, Error, Result};

/// A device cgroup rule.
pub fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow).set_typ(typ).set_major(major).set_minor(minor).set_access(Some(access.into()));
    r
}

/// Deny everything, then allow /dev/null, zero, full, tty, random, urandom, the pty devices and
/// /dev/console's tty (containerd's `WithDefaultUnixDevices`; runc adds the same nodes itself).
pub fn default_rules() -> Vec<LinuxDeviceCgroup> {
    let c = Some(LinuxDeviceType::C);
    let mut rules = vec![rule(false, None, None, None, "rwm")];
    for (major, minor) in [
        (1, Some(3)),
        (1, Some(8)),
        (1, Some(7)),
        (5, Some(0)),
        (1, Some(5)),
        (1, Some(9)),
        (5, Some(1)),
        (136, None),
        (5, Some(2)),
    ] {
        rules.push(rule(true, c, Some(major), minor, "rwm"));
    }
    rules
}

/// Everything allowed (privileged containers).
pub fn allow_all() -> Vec<LinuxDeviceCgroup> {
    vec![rule(true, None, None, None, "rwm")]
}

/// The device at `path` itself (not following a symlink); `None` when it is no device node.
fn device_from_path(path: &Path) -> std::io::Result<Option<LinuxDevice>> {
    let md = std::fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let typ = if ft.is_block_device() {
        LinuxDeviceType::B
    } else if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_fifo() {
        LinuxDeviceType::P
    } else {
        return Ok(None);
    };
    let rdev = md.rdev();
    let mut d = LinuxDevice::default();
    d.set_path(path.to_path_buf())
        .set_typ(typ)
        .set_major(nix::sys::stat::major(rdev) as i64)
        .set_minor(nix::sys::stat::minor(rdev) as i64)
        .set_file_mode(Some(md.permissions().mode() & 0o7777))
        .set_uid(Some(md.uid()))
        .set_gid(Some(md.gid()));
    Ok(Some(d))
}

/// containerd's `getDevices`: a device node, or every device below a directory (skipping the
/// directories runtimes mount themselves, consoles and FIFOs), placed under `container_path`.
fn devices_under(path: &Path, container_path: Option<&Path>) -> Result<Vec<LinuxDevice>> {
    let what = || format!("reading devices under {}", path.display());
    let mut out = Vec::new();
    let mut entries: Vec<_> =
        std::fs::read_dir(path).context(what)?.collect::<std::io::Result<_>>().context(what)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name_str = name.to_string_lossy();
        let child = path.join(&name);
        let child_container = container_path.map(|c| c.join(&name));
        let ft = e.file_type().context(what)?;
        if ft.is_dir() {
            if matches!(name_str.as_ref(), "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            {
                continue;
            }
            out.extend(devices_under(&child, child_container.as_deref())?);
            continue;
        }
        if name_str == "console" {
            continue;
        }
        match device_from_path(&child) {
            Ok(Some(mut d)) if d.typ() != LinuxDeviceType::P => {
                if let Some(c) = child_container {
                    d.set_path(c);
                }
                out.push(d);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(|| format!("reading device {}", child.display())),
        }
    }
    Ok(out)
}

/// Every device node of the host's /dev (privileged containers).
pub fn host_devices() -> Result<Vec<LinuxDevice>> {
    devices_under(Path::new("/dev"), None)
}

/// The nodes and allow rules for the CRI devices.
pub fn cri_devices(devices: &[api::Device]) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for (i, dev) in devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        if dev.permissions.chars().any(|c| !"rwm".contains(c)) {
            return Err(Error::invalid(format!(
                "{field}: invalid permissions {:?} (want r, w and m)",
                dev.permissions
            )));
        }
        let host = std::fs::canonicalize(&dev.host_path)
            .map_err(|e| Error::invalid(format!("{field}: host_path {:?}: {e}", dev.host_path)))?;
        let container = (!dev.container_path.is_empty()).then(|| Path::new(&dev.container_path));
        let md = std::fs::metadata(&host)
            .map_err(|e| Error::invalid(format!("{field}: host_path {:?}: {e}", dev.host_path)))?;
        let found = if md.is_dir() {
            devices_under(&host, container)?
        } else {
            let mut d = device_from_path(&host)
                .context(|| format!("{field}: reading device {}", host.display()))?
                .ok_or_else(|| {
                    Error::invalid(format!("{field}: host_path {:?} is not a device node", dev.host_path))
                })?;
            if let Some(c) = container {
                d.set_path(c.to_path_buf());
            }
            vec![d]
        };
        for d in found {
            rules.push(rule(true, Some(d.typ()), Some(d.major()), Some(d.minor()), &dev.permissions));
            nodes.push(d);
        }
    }
    Ok((nodes, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(host: &str, container: &str, perms: &str) -> api::Device {
        api::Device { host_path: host.into(), container_path: container.into(), permissions: perms.into() }
    }

    #[test]
    fn default_rules_deny_all_then_allow_the_usual_devices() {
        let r = default_rules();
        assert_eq!(r.len(), 10);
        assert!(!r[0].allow() && r[0].typ().is_none() && r[0].access().as_deref() == Some("rwm"));
        assert!(r[1..].iter().all(|r| r.allow() && r.typ() == Some(LinuxDeviceType::C)));
        assert!(r.iter().any(|r| r.major() == Some(136) && r.minor().is_none()));
        assert!(allow_all()[0].allow());
    }

    #[test]
    fn cri_device_gets_a_node_and_an_allow_rule() {
        let (nodes, rules) = cri_devices(&[dev("/dev/null", "/dev/mynull", "rw")]).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].path(), Path::new("/dev/mynull"));
        assert_eq!((nodes[0].typ(), nodes[0].major(), nodes[0].minor()), (LinuxDeviceType::C, 1, 3));
        assert_eq!(nodes[0].file_mode(), Some(0o666));
        assert_eq!(rules[0].access().as_deref(), Some("rw"));
        assert_eq!((rules[0].major(), rules[0].minor()), (Some(1), Some(3)));
        // No container path: the host path.
        let (nodes, _) = cri_devices(&[dev("/dev/zero", "", "rwm")]).unwrap();
        assert_eq!(nodes[0].path(), Path::new("/dev/zero"));
    }

    #[test]
    fn symlinked_devices_are_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("null");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let (nodes, _) = cri_devices(&[dev(&link.to_string_lossy(), "/dev/x", "r")]).unwrap();
        assert_eq!((nodes[0].major(), nodes[0].minor()), (1, 3));
    }

    #[test]
    fn a_directory_brings_its_devices() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("link-is-skipped")).unwrap();
        std::fs::write(dir.path().join("file-is-skipped"), "").unwrap();
        // A directory of real devices: /dev/pts would be skipped by name, so use the host's /dev
        // through a CRI device that names a directory.
        let (nodes, rules) = cri_devices(&[dev("/dev", "/hostdev", "r")]).unwrap();
        assert!(nodes.iter().any(|n| n.path() == Path::new("/hostdev/null")));
        assert!(nodes.iter().all(|n| n.path().starts_with("/hostdev")));
        assert_eq!(nodes.len(), rules.len());
        let (nodes, _) = cri_devices(&[dev(&dir.path().to_string_lossy(), "/x", "r")]).unwrap();
        assert!(nodes.is_empty());
    }

    #[test]
    fn bad_devices_are_invalid_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        for d in [
            dev(&file.to_string_lossy(), "/x", "rw"),
            dev("/nonexistent-device", "/x", "rw"),
            dev("/dev/null", "/x", "rwx"),
        ] {
            assert_eq!(
                cri_devices(std::slice::from_ref(&d)).unwrap_err().kind(),
                crate::ErrorKind::InvalidArgument,
                "{d:?}"
            );
        }
    }

    #[test]
    fn host_devices_skip_pts_shm_and_console() {
        let devs = host_devices().unwrap();
        assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")));
        assert!(
            !devs.iter().any(|d| d.path().starts_with("/dev/pts") || d.path() == Path::new("/dev/console"))
        );
        assert!(!devs.iter().any(|d| d.typ() == LinuxDeviceType::P));
    }
}
