//! The mounts of a container's OCI spec, built the way containerd's CRI plugin does
//! (`pkg/oci` default mounts, `customopts.WithMounts`): the default system mounts (proc, a tmpfs
//! /dev, devpts, /dev/shm, mqueue, read-only sysfs and cgroup), minus whatever the CRI mounts
//! replace, followed by the CRI bind mounts sorted by depth so that no mount hides a deeper one.
//! A missing host directory of a bind mount is created (containerd does); propagation modes are
//! checked against the host mount the source lives on, from `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Mount};

use crate::cri::api::{self, MountPropagation};
use crate::error::{Context, Error, Result};
use crate::mountinfo::{MountInfo, lookup as lookup_mount, parse as parse_mountinfo};

pub const DEV_SHM: &str = "/dev/shm";

/// An OCI mount.
pub fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into())
        .set_typ(Some(typ.into()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// containerd's default mounts without /run (the CRI plugin removes it with `WithoutRunMount`).
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount(DEV_SHM, "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ]
}

/// Go's `filepath.Clean` for absolute and relative slash paths.
pub fn clean(p: &str) -> String {
    let abs = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !abs {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (abs, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Whether the CRI mounts already provide `path` in the container (then berth does not add its own
/// file there, e.g. the kubelet's /etc/hosts).
pub fn in_cri_mounts(path: &str, mounts: &[api::Mount]) -> bool {
    mounts.iter().any(|m| clean(&m.container_path) == clean(path))
}

/// What the host side of bind mounts needs from the machine.
pub struct HostMounts {
    pub mountinfo: Vec<MountInfo>,
}

impl HostMounts {
    /// Reads this process's mount table.
    pub fn read() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .context(|| "reading /proc/self/mountinfo".into())?;
        Ok(HostMounts { mountinfo: parse_mountinfo(&text) })
    }

    fn check_propagation(&self, field: &str, src: &Path, allow_slave: bool) -> Result<()> {
        let m = lookup_mount(&self.mountinfo, src)
            .ok_or_else(|| Error::internal(format!("{field}: no mount found for {}", src.display())))?;
        let ok =
            m.optional.iter().any(|o| o.starts_with("shared:") || (allow_slave && o.starts_with("master:")));
        if !ok {
            let want = if allow_slave { "a shared or slave mount" } else { "a shared mount" };
            return Err(Error::invalid(format!(
                "{field}: path {:?} is mounted on {:?} but it is not {want}",
                src.display().to_string(),
                m.mount_point
            )));
        }
        Ok(())
    }
}

/// The OCI form of a CRI id mapping.
pub fn id_mapping(m: &api::IdMapping) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .host_id(m.host_id)
        .container_id(m.container_id)
        .size(m.length)
        .build()
        .expect("every field of an id mapping is set")
}

fn id_mappings(m: &[api::IdMapping]) -> Option<Vec<LinuxIdMapping>> {
    (!m.is_empty()).then(|| m.iter().map(id_mapping).collect())
}

/// Everything the mount list depends on besides the mounts themselves.
pub struct MountOptions<'a> {
    pub privileged: bool,
    /// The container has its own cgroup namespace.
    pub cgroupns: bool,
    /// Options the host's cgroup2 mount carries that a container sharing its cgroup namespace
    /// must repeat (nsdelegate, memory_recursiveprot).
    pub cgroup_host_options: &'a [String],
    /// Whether the OCI runtime and kernel can do recursive read-only mounts.
    pub recursive_read_only: bool,
    pub host: &'a HostMounts,
}

/// The result: the mount list and the root propagation the bind mounts need.
#[derive(Debug)]
pub struct Mounts {
    pub mounts: Vec<Mount>,
    pub rootfs_propagation: Option<String>,
}

/// `cri` are the request's mounts, `extra` berth's own (hostname, hosts, resolv.conf, shm), which
/// the CRI mounts override by destination.
pub fn container_mounts(cri: &[api::Mount], extra: Vec<api::Mount>, opts: &MountOptions) -> Result<Mounts> {
    // (index in the request, mount): the index names the field in errors.
    let mut binds: Vec<(Option<usize>, api::Mount)> =
        cri.iter().cloned().enumerate().map(|(i, m)| (Some(i), m)).collect();
    binds.extend(extra.into_iter().filter(|e| !in_cri_mounts(&e.container_path, cri)).map(|m| (None, m)));
    // Stable sort by depth: a mount at /a/b must come after one at /a.
    binds.sort_by_key(|(_, m)| clean(&m.container_path).matches('/').count());

    let mut defaults = default_mounts();
    let mut cgroup_options =
        vec!["nosuid", "noexec", "nodev", "relatime", if opts.privileged { "rw" } else { "ro" }];
    if !opts.cgroupns {
        // Without its own cgroup namespace the container mounts the host's cgroup2 superblock:
        // options it leaves out would be stripped from the host's mount.
        cgroup_options.extend(
            opts.cgroup_host_options
                .iter()
                .filter(|o| *o == "nsdelegate" || *o == "memory_recursiveprot")
                .map(String::as_str),
        );
    }
    defaults.push(mount("/sys/fs/cgroup", "cgroup", "cgroup", &cgroup_options));

    let dests: Vec<String> = binds.iter().map(|(_, m)| clean(&m.container_path)).collect();
    let dev_given = dests.iter().any(|d| d == "/dev");
    let mut out: Vec<Mount> = defaults
        .into_iter()
        .filter(|m| {
            let dest = clean(&m.destination().to_string_lossy());
            !(dests.contains(&dest) || dev_given && dest.starts_with("/dev/"))
        })
        .collect();
    if opts.privileged {
        for m in &mut out {
            if matches!(m.typ().as_deref(), Some("sysfs") | Some("cgroup"))
                && let Some(o) = m.options_mut()
            {
                for opt in o.iter_mut().filter(|o| *o == "ro") {
                    *opt = "rw".into();
                }
            }
        }
    }

    let mut propagation: Option<String> = None;
    for (index, m) in binds {
        let field = match index {
            Some(i) => format!("mounts[{i}]"),
            None => format!("mount of {}", m.container_path),
        };
        out.push(bind_mount(&field, &m, opts, &mut propagation)?);
    }
    Ok(Mounts { mounts: out, rootfs_propagation: propagation })
}

fn bind_mount(
    field: &str,
    m: &api::Mount,
    opts: &MountOptions,
    propagation: &mut Option<String>,
) -> Result<Mount> {
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        // CreateContainer mounts image volumes first (cri/image_volume.rs) and passes binds here.
        return Err(Error::internal(format!(
            "{field}: image volume at {:?} was not mounted before building the spec",
            m.container_path
        )));
    }
    if m.host_path.is_empty() {
        return Err(Error::invalid(format!("{field}: host_path is empty")));
    }
    let host = Path::new(&m.host_path);
    match std::fs::metadata(host) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The kubelet relies on this for some volume types; containerd does the same (0755).
            crate::fsutil::create_dir_all_with_mode(host, 0o755)
                .map_err(|e| e.context(format!("{field}: creating missing host path")))?;
        }
        Err(e) => return Err(e).context(|| format!("{field}: stat of host path {}", host.display())),
    }
    let src: PathBuf =
        std::fs::canonicalize(host).context(|| format!("{field}: resolving {}", host.display()))?;

    let mut options = vec!["rbind".to_string()];
    let prop = MountPropagation::try_from(m.propagation).unwrap_or(MountPropagation::PropagationPrivate);
    match prop {
        MountPropagation::PropagationPrivate => options.push("rprivate".into()),
        MountPropagation::PropagationBidirectional => {
            opts.host.check_propagation(field, &src, false)?;
            options.push("rshared".into());
            *propagation = Some("rshared".into());
        }
        MountPropagation::PropagationHostToContainer => {
            opts.host.check_propagation(field, &src, true)?;
            options.push("rslave".into());
            if !matches!(propagation.as_deref(), Some("rshared") | Some("rslave")) {
                *propagation = Some("rslave".into());
            }
        }
    }
    // Containerd does not make bind mounts read-only because the root is (unlike docker).
    match (m.readonly, m.recursive_read_only) {
        (true, true) => {
            if !opts.recursive_read_only {
                return Err(Error::invalid(format!(
                    "{field}: recursive read-only mounts are not supported by this runtime (host_path {:?})",
                    m.host_path
                )));
            }
            if prop != MountPropagation::PropagationPrivate {
                return Err(Error::invalid(format!(
                    "{field}: recursive read-only mount needs private propagation, got {} (host_path {:?})",
                    prop.as_str_name(),
                    m.host_path
                )));
            }
            options.push("rro".into());
        }
        (true, false) => options.push("ro".into()),
        (false, true) => {
            return Err(Error::invalid(format!(
                "{field}: recursive read-only mount conflicts with a read-write mount (host_path {:?})",
                m.host_path
            )));
        }
        (false, false) => options.push("rw".into()),
    }
    let mut out = Mount::default();
    out.set_destination(m.container_path.clone().into())
        .set_typ(Some("bind".into()))
        .set_source(Some(src))
        .set_options(Some(options))
        .set_uid_mappings(id_mappings(&m.uid_mappings))
        .set_gid_mappings(id_mappings(&m.gid_mappings));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri_mount(container: &str, host: &str) -> api::Mount {
        api::Mount { container_path: container.into(), host_path: host.into(), ..Default::default() }
    }

    fn host() -> HostMounts {
        HostMounts {
            mountinfo: parse_mountinfo(
                "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                 40 27 0:40 / /shared rw shared:5 - tmpfs tmpfs rw\n\
                 41 27 0:41 / /slave rw master:5 - tmpfs tmpfs rw\n\
                 42 27 0:42 / /private rw - tmpfs tmpfs rw\n",
            ),
        }
    }

    fn opts(h: &HostMounts) -> MountOptions<'_> {
        MountOptions {
            privileged: false,
            cgroupns: false,
            cgroup_host_options: &[],
            recursive_read_only: true,
            host: h,
        }
    }

    fn dests(m: &Mounts) -> Vec<String> {
        m.mounts.iter().map(|m| m.destination().to_string_lossy().into_owned()).collect()
    }

    fn options(m: &Mounts, dest: &str) -> Vec<String> {
        m.mounts.iter().find(|m| m.destination() == Path::new(dest)).unwrap().options().clone().unwrap()
    }

    #[test]
    fn clean_matches_go() {
        for (i, o) in [
            ("/a/b/../c/", "/a/c"),
            ("//a//./b", "/a/b"),
            ("/../a", "/a"),
            ("a/../../b", "../b"),
            ("", "."),
            ("/", "/"),
            ("/dev/shm/", "/dev/shm"),
        ] {
            assert_eq!(clean(i), o, "{i}");
        }
    }

    #[test]
    fn mountinfo_parsing_and_lookup() {
        let m = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\nbad\n",
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, "/mnt x");
        assert_eq!(m[0].optional, vec!["master:1", "shared:2"]);
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].super_options, vec!["rw", "errors=continue"]);
        let h = host();
        assert_eq!(lookup_mount(&h.mountinfo, Path::new("/shared/x/y")).unwrap().mount_point, "/shared");
        assert_eq!(lookup_mount(&h.mountinfo, Path::new("/sharedx")).unwrap().mount_point, "/");
    }

    #[test]
    fn defaults_then_binds_sorted_by_depth_with_berths_files_overridable() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| {
            let path = dir.path().join(s);
            std::fs::create_dir_all(&path).unwrap();
            path.to_string_lossy().into_owned()
        };
        let cri = vec![
            cri_mount("/a/b/c", &p("abc")),
            cri_mount("/a", &p("a")),
            cri_mount("/etc/hosts", &p("hosts")),
        ];
        let extra = vec![
            cri_mount("/etc/hosts", &p("berth-hosts")),
            cri_mount("/etc/hostname", &p("berth-hostname")),
        ];
        let h = host();
        let m = container_mounts(&cri, extra, &opts(&h)).unwrap();
        assert_eq!(
            dests(&m),
            vec![
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/a",
                "/etc/hosts",
                "/etc/hostname",
                "/a/b/c"
            ]
        );
        let hosts = m.mounts.iter().find(|m| m.destination() == Path::new("/etc/hosts")).unwrap();
        assert!(hosts.source().as_ref().unwrap().ends_with("hosts"), "the kubelet's /etc/hosts wins");
        assert_eq!(options(&m, "/a"), vec!["rbind", "rprivate", "rw"]);
        assert_eq!(options(&m, "/sys"), vec!["nosuid", "noexec", "nodev", "ro"]);
        assert_eq!(options(&m, "/sys/fs/cgroup"), vec!["nosuid", "noexec", "nodev", "relatime", "ro"]);
        assert!(m.rootfs_propagation.is_none());
    }

    #[test]
    fn a_dev_mount_replaces_everything_under_dev_and_shm_bind_replaces_the_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_string_lossy().into_owned();
        let h = host();
        let m = container_mounts(&[cri_mount("/dev", &d)], vec![], &opts(&h)).unwrap();
        assert_eq!(dests(&m), vec!["/proc", "/sys", "/sys/fs/cgroup", "/dev"]);
        let m = container_mounts(&[], vec![cri_mount("/dev/shm", &d)], &opts(&h)).unwrap();
        let shm: Vec<_> = m.mounts.iter().filter(|m| m.destination() == Path::new("/dev/shm")).collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0].typ().as_deref(), Some("bind"));
    }

    #[test]
    fn privileged_makes_sysfs_and_cgroup_writable() {
        let h = host();
        let mut o = opts(&h);
        o.privileged = true;
        let m = container_mounts(&[], vec![], &o).unwrap();
        assert_eq!(options(&m, "/sys"), vec!["nosuid", "noexec", "nodev", "rw"]);
        assert_eq!(options(&m, "/sys/fs/cgroup"), vec!["nosuid", "noexec", "nodev", "relatime", "rw"]);
    }

    #[test]
    fn cgroup_mount_repeats_host_cgroup2_options_without_a_cgroup_namespace() {
        let h = host();
        let host_opts = vec!["rw".to_string(), "nsdelegate".to_string(), "memory_recursiveprot".to_string()];
        let mut o = opts(&h);
        o.cgroup_host_options = &host_opts;
        let m = container_mounts(&[], vec![], &o).unwrap();
        assert_eq!(
            options(&m, "/sys/fs/cgroup"),
            vec!["nosuid", "noexec", "nodev", "relatime", "ro", "nsdelegate", "memory_recursiveprot"]
        );
        o.cgroupns = true;
        let m = container_mounts(&[], vec![], &o).unwrap();
        assert_eq!(options(&m, "/sys/fs/cgroup").len(), 5);
    }

    #[test]
    fn missing_host_path_is_created_and_symlinks_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("x/y");
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let h = host();
        let cri = vec![
            cri_mount("/x", &missing.to_string_lossy()),
            cri_mount("/l", &dir.path().join("link").to_string_lossy()),
        ];
        let m = container_mounts(&cri, vec![], &opts(&h)).unwrap();
        assert!(missing.is_dir());
        let l = m.mounts.iter().find(|m| m.destination() == Path::new("/l")).unwrap();
        assert_eq!(l.source().as_ref().unwrap(), &std::fs::canonicalize(dir.path().join("real")).unwrap());
    }

    #[test]
    fn propagation_modes_need_matching_host_mounts_and_set_root_propagation() {
        let h = host();
        let with = |path: &str, p: MountPropagation| {
            let m = api::Mount { propagation: p as i32, ..cri_mount("/m", path) };
            container_mounts(&[m], vec![], &opts(&h))
        };
        // The paths exist on this machine; the fake mount table decides what they are mounted on.
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().to_string_lossy().into_owned();
        let r = with(&tmp, MountPropagation::PropagationBidirectional).unwrap();
        assert_eq!(r.rootfs_propagation.as_deref(), Some("rshared"));
        assert_eq!(options(&r, "/m"), vec!["rbind", "rshared", "rw"]);
        let r = with(&tmp, MountPropagation::PropagationHostToContainer).unwrap();
        assert_eq!(r.rootfs_propagation.as_deref(), Some("rslave"));
        assert_eq!(options(&r, "/m"), vec!["rbind", "rslave", "rw"]);

        let private = HostMounts { mountinfo: parse_mountinfo("1 0 0:1 / / rw - ext4 x rw\n") };
        let m = api::Mount {
            propagation: MountPropagation::PropagationBidirectional as i32,
            ..cri_mount("/m", &tmp)
        };
        let e =
            container_mounts(std::slice::from_ref(&m), vec![], &MountOptions { host: &private, ..opts(&h) });
        assert!(e.unwrap_err().to_string().contains("not a shared mount"));
        let m = api::Mount { propagation: MountPropagation::PropagationHostToContainer as i32, ..m };
        assert!(container_mounts(&[m], vec![], &MountOptions { host: &private, ..opts(&h) }).is_err());
    }

    #[test]
    fn read_only_and_recursive_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_string_lossy().into_owned();
        let h = host();
        let ro = api::Mount { readonly: true, ..cri_mount("/m", &d) };
        assert_eq!(
            options(&container_mounts(std::slice::from_ref(&ro), vec![], &opts(&h)).unwrap(), "/m"),
            vec!["rbind", "rprivate", "ro"]
        );
        let rro = api::Mount { recursive_read_only: true, ..ro };
        assert_eq!(
            options(&container_mounts(std::slice::from_ref(&rro), vec![], &opts(&h)).unwrap(), "/m"),
            vec!["rbind", "rprivate", "rro"]
        );
        let mut o = opts(&h);
        o.recursive_read_only = false;
        assert!(container_mounts(std::slice::from_ref(&rro), vec![], &o).is_err());
        let rw_rro = api::Mount { readonly: false, ..rro.clone() };
        assert!(container_mounts(&[rw_rro], vec![], &opts(&h)).is_err());
        let slave_rro =
            api::Mount { propagation: MountPropagation::PropagationHostToContainer as i32, ..rro };
        assert!(
            container_mounts(&[slave_rro], vec![], &opts(&h)).unwrap_err().to_string().contains("private")
        );
    }

    #[test]
    fn image_volumes_and_empty_host_paths_are_rejected() {
        let h = host();
        let img = api::Mount {
            image: Some(api::ImageSpec { image: "sha256:abc".into(), ..Default::default() }),
            ..cri_mount("/m", "")
        };
        assert_eq!(
            container_mounts(&[img], vec![], &opts(&h)).unwrap_err().kind(),
            crate::ErrorKind::Internal
        );
        let e = container_mounts(&[cri_mount("/m", "")], vec![], &opts(&h)).unwrap_err();
        assert!(e.to_string().starts_with("mounts[0]"), "{e}");
    }

    #[test]
    fn id_mappings_are_passed_to_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let map = vec![api::IdMapping { host_id: 100000, container_id: 0, length: 65536 }];
        let m = api::Mount {
            uid_mappings: map.clone(),
            gid_mappings: map,
            ..cri_mount("/m", &dir.path().to_string_lossy())
        };
        let h = host();
        let r = container_mounts(&[m], vec![], &opts(&h)).unwrap();
        let m = r.mounts.last().unwrap();
        assert_eq!(m.uid_mappings().as_ref().unwrap()[0].host_id(), 100000);
        assert_eq!(m.gid_mappings().as_ref().unwrap()[0].size(), 65536);
    }
}
