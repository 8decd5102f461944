//! Evidence of OOM kills in a container's cgroup: the `oom_kill` counter of cgroup v2
//! `memory.events` or cgroup v1 `memory.oom_control`, read when the container is created (the
//! baseline) and again the moment its init is reaped, before `runtime delete` (or systemd) removes
//! the cgroup. The cgroup path comes from the bundle's `linux.cgroupsPath`, in either the cgroupfs
//! form (`/kubepods/burstable/pod<uid>/<id>`) or the systemd form (`slice:prefix:name`).
//!
//! This module only reads; it must never create, change or remove a cgroup.

use std::path::{Path, PathBuf};

/// The default cgroup mount point.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where a container's OOM-kill counter lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomCounter {
    file: PathBuf,
}

impl OomCounter {
    /// Locates the counter for a container with the given `linux.cgroupsPath` (`None` or empty:
    /// the runtime's default of `/<id>`). `root` is the cgroup mount point: with a
    /// `cgroup.controllers` file it is a unified (v2) hierarchy, otherwise v1 with the memory
    /// controller in `root/memory` (this includes the hybrid layout, where memory stays on v1).
    pub fn locate(root: &Path, cgroups_path: Option<&str>, id: &str) -> OomCounter {
        let relative = match cgroups_path.filter(|p| !p.is_empty()) {
            Some(p) => relative_path(p),
            None => PathBuf::from(id),
        };
        let file = if root.join("cgroup.controllers").exists() {
            root.join(relative).join("memory.events")
        } else {
            root.join("memory").join(relative).join("memory.oom_control")
        };
        OomCounter { file }
    }

    /// The file the counter is read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The number of OOM kills so far; `None` when the cgroup or the counter is not there.
    pub fn read(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.file).ok()?;
        text.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok())
    }
}

/// The cgroup directory, relative to a hierarchy's root, for a `linux.cgroupsPath`.
fn relative_path(cgroups_path: &str) -> PathBuf {
    // The systemd form is exactly three colon-separated parts; a cgroupfs path has no colon.
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if let [slice, prefix, name] = parts[..] {
        let mut path = expand_slice(if slice.is_empty() { "system.slice" } else { slice });
        let unit = if name.ends_with(".slice") { name.to_string() } else { format!("{prefix}-{name}.scope") };
        path.push(unit);
        return path;
    }
    PathBuf::from(cgroups_path.trim_start_matches('/'))
}

/// systemd nests slices by their dash-separated prefixes: `a-b-c.slice` lives in
/// `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> PathBuf {
    let mut path = PathBuf::new();
    let Some(stem) = slice.strip_suffix(".slice") else { return PathBuf::from(slice) };
    if stem == "-" || stem.is_empty() {
        return path;
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_are_relative_to_each_hierarchy() {
        let v1 = tempfile::tempdir().unwrap();
        let c = OomCounter::locate(v1.path(), Some("/kubepods/burstable/pod1/abc"), "abc");
        assert_eq!(c.file(), v1.path().join("memory/kubepods/burstable/pod1/abc/memory.oom_control"));

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let c = OomCounter::locate(v2.path(), Some("/kubepods/pod1/abc"), "abc");
        assert_eq!(c.file(), v2.path().join("kubepods/pod1/abc/memory.events"));
    }

    #[test]
    fn missing_path_means_slash_id() {
        let root = tempfile::tempdir().unwrap();
        let c = OomCounter::locate(root.path(), None, "c1");
        assert_eq!(c.file(), root.path().join("memory/c1/memory.oom_control"));
        assert_eq!(OomCounter::locate(root.path(), Some(""), "c1"), c);
    }

    #[test]
    fn systemd_form_expands_slices_and_scope() {
        assert_eq!(
            relative_path("kubepods-burstable-pod1_2.slice:cri-berth:abc"),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/cri-berth-abc.scope"
            )
        );
        assert_eq!(relative_path(":runc:x"), PathBuf::from("system.slice/runc-x.scope"));
        assert_eq!(relative_path("-.slice:p:x"), PathBuf::from("p-x.scope"));
        assert_eq!(relative_path("a.slice:p:b.slice"), PathBuf::from("a.slice/b.slice"));
    }

    #[test]
    fn counter_is_read_from_v1_and_v2_files() {
        let root = tempfile::tempdir().unwrap();
        let v1 = OomCounter::locate(root.path(), Some("/pod/c"), "c");
        assert_eq!(v1.read(), None, "no cgroup yet");
        std::fs::create_dir_all(v1.file().parent().unwrap()).unwrap();
        std::fs::write(v1.file(), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(v1.read(), Some(2));

        std::fs::write(root.path().join("cgroup.controllers"), "memory\n").unwrap();
        let v2 = OomCounter::locate(root.path(), Some("/pod/c"), "c");
        std::fs::create_dir_all(v2.file().parent().unwrap()).unwrap();
        std::fs::write(v2.file(), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n").unwrap();
        assert_eq!(v2.read(), Some(1));
    }
}
