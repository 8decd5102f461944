//! The leak inventory: everything a pod of one berthd can leave on the machine, listed so a test can
//! take it before and after and compare. It covers the pinned network namespaces under
//! `<state>/netns`, mounts under root and state, `berth-shim` processes serving a pod directory under
//! this berthd's state, the processes of its containers (children of those shims and processes in
//! cgroups under the berthd's cgroup root, which [`Berthd::pod`] configs use), container cgroups
//! under that root, host-local allocations, veth ports on the test bridge, the portmap rules that
//! mention the test network, and berthd's per-pod directories and CNI result cache. Entries are
//! strings that say what and where, so a failed comparison reads as a list of leaks. This module
//! only reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::berthd::Berthd;
use super::fs::mounts_under;

/// What one berthd's pods hold on the machine right now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leaks {
    pub netns: BTreeSet<String>,
    pub mounts: BTreeSet<String>,
    pub shims: BTreeSet<String>,
    pub processes: BTreeSet<String>,
    pub cgroups: BTreeSet<String>,
    pub ips: BTreeSet<String>,
    pub veths: BTreeSet<String>,
    pub iptables: BTreeSet<String>,
    /// Per-pod entries berthd keeps on disk: `<state>/{pods,sandboxes,bundles}/*` and the CNI
    /// result cache `<root>/cni/results/*`.
    pub files: BTreeSet<String>,
}

impl Leaks {
    /// What changed from `self` to `now`, one line per entry: `+ kind: entry` for what `now` holds
    /// in addition, `- kind: entry` for what it no longer holds.
    pub fn diff(&self, now: &Leaks) -> String {
        let kinds = [
            ("netns", &self.netns, &now.netns),
            ("mount", &self.mounts, &now.mounts),
            ("shim", &self.shims, &now.shims),
            ("process", &self.processes, &now.processes),
            ("cgroup", &self.cgroups, &now.cgroups),
            ("ip", &self.ips, &now.ips),
            ("veth", &self.veths, &now.veths),
            ("iptables", &self.iptables, &now.iptables),
            ("file", &self.files, &now.files),
        ];
        let mut out = String::new();
        for (kind, before, after) in kinds {
            for e in after.difference(before) {
                out.push_str(&format!("+ {kind}: {e}\n"));
            }
            for e in before.difference(after) {
                out.push_str(&format!("- {kind}: {e}\n"));
            }
        }
        out
    }
}

/// A process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub cmdline: Vec<String>,
    /// The cgroup paths of every hierarchy (`/proc/<pid>/cgroup`, third field).
    pub cgroups: Vec<String>,
}

impl Proc {
    /// The command line joined with spaces.
    pub fn command(&self) -> String {
        self.cmdline.join(" ")
    }
}

/// The processes in the cgroup of container `id` (any hierarchy).
pub fn in_container(id: &str) -> Vec<Proc> {
    let suffix = format!("/{id}");
    processes().into_iter().filter(|p| p.cgroups.iter().any(|c| c.ends_with(&suffix))).collect()
}

/// Every process now running (those that vanish while being read are skipped).
pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let dir = e.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else { continue };
        // The command name is in parentheses and may hold spaces: the fields follow the last ')'.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        // Zombies and kernel threads have an empty command line.
        let cmdline: Vec<String> = std::fs::read(dir.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let cgroups = std::fs::read_to_string(dir.join("cgroup"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_string))
            .collect();
        out.push(Proc { pid, ppid, cmdline, cgroups });
    }
    out
}

/// The pod directory a `berth-shim` process serves (`--dir`), if `p` is one.
pub fn shim_dir(p: &Proc) -> Option<PathBuf> {
    let exe = p.cmdline.first()?;
    if !exe.ends_with("berth-shim") {
        return None;
    }
    let i = p.cmdline.iter().position(|a| a == "--dir")?;
    p.cmdline.get(i + 1).map(PathBuf::from)
}

/// The berth-shim processes serving pods of `berthd`.
pub fn shims_of(berthd: &Berthd, procs: &[Proc]) -> Vec<Proc> {
    procs.iter().filter(|p| shim_dir(p).is_some_and(|d| d.starts_with(berthd.state()))).cloned().collect()
}

/// Container processes of `berthd`: children of its shims and processes in its cgroup root (shims
/// themselves excluded). (A container's `/proc/<pid>/root` reads `/` from the host, so it cannot
/// tell whose container a process is in.)
pub fn container_processes(berthd: &Berthd, procs: &[Proc]) -> Vec<Proc> {
    let shims: BTreeSet<i32> = shims_of(berthd, procs).iter().map(|p| p.pid).collect();
    let cgroup = format!("/{}/", berthd.cgroup_root());
    procs
        .iter()
        .filter(|p| !shims.contains(&p.pid))
        .filter(|p| shims.contains(&p.ppid) || p.cgroups.iter().any(|c| c.starts_with(&cgroup)))
        .cloned()
        .collect()
}

/// Container cgroups (directories two levels under the berthd's cgroup root: `<root>/<pod>/<id>`)
/// in every mounted hierarchy.
fn cgroups(berthd: &Berthd) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else { return out };
    for h in rd.filter_map(|e| e.ok()) {
        let root = h.path().join(berthd.cgroup_root());
        for pod in subdirs(&root) {
            for c in subdirs(&pod) {
                out.insert(c.display().to_string());
            }
        }
    }
    out
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

impl Leaks {
    /// Takes the inventory of `berthd` (and of its pod network, if it has one).
    pub fn of(berthd: &Berthd) -> Leaks {
        let procs = processes();
        let mut leaks = Leaks::default();
        if let Ok(rd) = std::fs::read_dir(berthd.state().join("netns")) {
            leaks.netns = rd.filter_map(|e| e.ok()).map(|e| e.path().display().to_string()).collect();
        }
        for dir in [berthd.root(), berthd.state()] {
            leaks.mounts.extend(mounts_under(dir).iter().map(|p| p.display().to_string()));
        }
        leaks.shims = shims_of(berthd, &procs)
            .iter()
            .map(|p| format!("{} {}", p.pid, shim_dir(p).unwrap_or_default().display()))
            .collect();
        leaks.processes = container_processes(berthd, &procs)
            .iter()
            .map(|p| format!("{} {}", p.pid, p.command()))
            .collect();
        leaks.cgroups = cgroups(berthd);
        let state = berthd.state();
        for dir in [
            state.join("pods"),
            state.join("sandboxes"),
            state.join("bundles"),
            berthd.root().join("cni/results"),
        ] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                leaks.files.extend(rd.filter_map(|e| e.ok()).map(|e| e.path().display().to_string()));
            }
        }
        if let Some(net) = berthd.net() {
            leaks.ips = net.allocated_ips().into_iter().collect();
            leaks.veths = net.bridge_ports().into_iter().collect();
            leaks.iptables = net.iptables_rules().into_iter().collect();
        }
        leaks
    }
}

/// Asserts that `berthd` holds what it held at `before`, waiting up to 10 s for processes that are
/// still being reaped to go.
pub fn assert_back_to(berthd: &Berthd, before: &Leaks) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = Leaks::of(berthd);
        if now == *before {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("leaked (+ now held, - gone since):\n{}", before.diff(&now));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::net::free_port;
    use crate::harness::{Registry, images};

    /// The inventory sees every kind of thing a running pod holds (so an equal inventory after a test
    /// means something), and Drop of the berthd removes a pod the test left running.
    #[tokio::test(flavor = "multi_thread")]
    async fn inventory_sees_a_running_pod_and_drop_removes_it() {
        let reg = Registry::shared();
        let berthd = Berthd::started_with_network(&[reg]);
        let before = Leaks::of(&berthd);
        assert_eq!(before, Leaks::default());
        let mut cri = berthd.cri().await;
        let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
        let pod = berthd.pod("inventory").port(8080, free_port());
        let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
        let c = pod.container("main", &image).command(&["sleep", "100000"]).build();
        let id = cri.create_start(&pod_id, &pod, c).await.expect("container");

        let during = Leaks::of(&berthd);
        let empty: Vec<&str> = [
            ("netns", during.netns.is_empty()),
            ("mounts", during.mounts.is_empty()),
            ("shims", during.shims.len() != 1),
            ("processes", during.processes.len() < 2),
            ("cgroups", during.cgroups.is_empty()),
            ("ips", during.ips.len() != 1),
            ("veths", during.veths.len() != 1),
            ("iptables", during.iptables.is_empty()),
            ("files", during.files.len() < 5),
        ]
        .into_iter()
        .filter_map(|(what, bad)| bad.then_some(what))
        .collect();
        assert!(empty.is_empty(), "the inventory misses {empty:?} of a running pod: {during:#?}");
        assert!(during.processes.iter().any(|p| p.ends_with("sleep 100000")), "{during:#?}");
        assert!(during.cgroups.iter().any(|c| c.ends_with(&id)), "{during:#?}");

        // The test "forgets" its pod: Drop must stop and remove it.
        let shim_pids: Vec<i32> = shims_of(&berthd, &processes()).iter().map(|p| p.pid).collect();
        let bridge = berthd.net().expect("pod network").bridge.clone();
        let cgroup_root = berthd.cgroup_root().to_string();
        drop(cri);
        drop(berthd);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left: Vec<Proc> = processes().into_iter().filter(|p| shim_pids.contains(&p.pid)).collect();
            if left.is_empty() {
                break;
            }
            let states: Vec<String> = left
                .iter()
                .map(|p| std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap_or_default())
                .collect();
            assert!(std::time::Instant::now() < deadline, "a shim survived the drop: {states:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(in_container(&id).is_empty(), "the container survived the drop");
        assert!(!Path::new("/sys/class/net").join(&bridge).exists(), "bridge {bridge} survived the drop");
        assert!(
            !Path::new("/sys/fs/cgroup/memory").join(&cgroup_root).exists(),
            "cgroup root survived the drop"
        );
    }
}
