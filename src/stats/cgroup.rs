//! Reading a cgroup's CPU, memory and process counters, on either cgroup layout: v1 with one mount
//! per controller (cpu and cpuacct possibly apart) or the unified v2 hierarchy. Also turns an OCI
//! `linux.cgroupsPath` (cgroupfs `/parent/id` or systemd `slice:prefix:name`) into the cgroup's path
//! inside the hierarchy, the way runc does. Only reads; never creates, moves or writes cgroups.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Values at or above this are "no limit": the kernel rounds an unlimited v1 limit down to a
/// page multiple of i64::MAX, so no exact sentinel exists (cAdvisor uses the same cut-off).
const UNLIMITED: u64 = 1 << 62;

/// The key of a hybrid host's cgroup2 mount in [`Layout::V1`].
const UNIFIED: &str = "unified";

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1: the mount point of each controller ("cpu", "cpuacct", "memory", "pids" …), and of
    /// the unified hierarchy beside them on a hybrid host ("unified").
    V1(HashMap<String, PathBuf>),
    /// The unified hierarchy, mounted at this path.
    V2(PathBuf),
}

impl Layout {
    /// The layout of this machine, from /proc/self/mountinfo (None if no cgroup is mounted).
    pub fn detect() -> Option<Layout> {
        std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|m| Layout::from_mountinfo(&m))
    }

    /// The layout a mountinfo text describes. v1 controller mounts win over a cgroup2 mount (a
    /// hybrid host keeps its controllers in v1 and an empty unified hierarchy on the side).
    pub fn from_mountinfo(mountinfo: &str) -> Option<Layout> {
        let mut v1 = HashMap::new();
        let mut v2: Option<PathBuf> = None;
        for m in crate::mountinfo::parse(mountinfo) {
            let (fstype, super_opts) = (m.fs_type.as_str(), &m.super_options);
            let mount_point = PathBuf::from(&m.mount_point);
            match fstype {
                "cgroup" => {
                    for opt in super_opts {
                        if matches!(opt.as_str(), "cpu" | "cpuacct" | "memory" | "pids" | "cpuset" | "blkio")
                        {
                            v1.entry(opt.to_string()).or_insert_with(|| mount_point.clone());
                        }
                    }
                }
                // Prefer the conventional mount point when there are several.
                "cgroup2" if v2.is_none() || mount_point == Path::new("/sys/fs/cgroup") => {
                    v2 = Some(mount_point)
                }
                _ => {}
            }
        }
        if v1.contains_key("memory") || v1.contains_key("cpuacct") {
            // A hybrid host's unified hierarchy holds no controllers, but the kernel keeps pressure
            // (PSI) files there for every cgroup runc also creates in it.
            if let Some(unified) = v2 {
                v1.insert(UNIFIED.to_string(), unified);
            }
            Some(Layout::V1(v1))
        } else {
            v2.map(Layout::V2)
        }
    }

    /// The directory of cgroup `path` (as from [`cgroup_path`]) for `controller` (ignored on v2).
    fn dir(&self, controller: &str, path: &str) -> Option<PathBuf> {
        let base = match self {
            Layout::V1(m) => m.get(controller)?,
            Layout::V2(root) => root,
        };
        Some(base.join(path.trim_start_matches('/')))
    }

    /// Whether cgroup `path` exists (in the memory hierarchy on v1).
    pub fn exists(&self, path: &str) -> bool {
        let controller = match self {
            Layout::V1(m) if m.contains_key("memory") => "memory",
            _ => "cpuacct",
        };
        self.dir(controller, path).is_some_and(|d| d.is_dir())
    }

    /// Reads the counters of cgroup `path`; None if the cgroup does not exist (not started yet,
    /// or already removed). Counters whose files are missing stay None.
    pub fn read(&self, path: &str) -> Option<CgroupStats> {
        if !self.exists(path) {
            return None;
        }
        let mut stats = match self {
            Layout::V1(_) => self.read_v1(path),
            Layout::V2(_) => self.read_v2(path),
        };
        stats.pressure = self.read_pressure(path);
        Some(stats)
    }

    /// The cgroup's pressure stall information (cgroup v2 `cpu.pressure`, `memory.pressure`,
    /// `io.pressure`), from the unified hierarchy (beside v1 on a hybrid host). Files the kernel does
    /// not have (no CONFIG_PSI, `psi=0`, no such cgroup in the unified hierarchy) stay None.
    fn read_pressure(&self, path: &str) -> Pressure {
        let Some(dir) = self.dir(UNIFIED, path) else { return Pressure::default() };
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok().and_then(|t| parse_pressure(&t));
        Pressure { cpu: read("cpu.pressure"), memory: read("memory.pressure"), io: read("io.pressure") }
    }

    fn read_v1(&self, path: &str) -> CgroupStats {
        let file = |ctrl: &str, name: &str| self.dir(ctrl, path).map(|d| d.join(name));
        let num = |ctrl: &str, name: &str| file(ctrl, name).and_then(|f| read_u64(&f));
        let cpu_stat = file("cpu", "cpu.stat").map(|f| read_flat(&f)).unwrap_or_default();
        let cpu = num("cpuacct", "cpuacct.usage").map(|usage| CpuStats {
            usage_ns: usage,
            user_ns: num("cpuacct", "cpuacct.usage_user"),
            system_ns: num("cpuacct", "cpuacct.usage_sys"),
            periods: cpu_stat.get("nr_periods").copied(),
            throttled_periods: cpu_stat.get("nr_throttled").copied(),
            throttled_ns: cpu_stat.get("throttled_time").copied(),
        });
        let memory = num("memory", "memory.usage_in_bytes").map(|usage| {
            let stat = file("memory", "memory.stat").map(|f| read_flat(&f)).unwrap_or_default();
            let get = |k: &str| stat.get(k).copied().unwrap_or(0);
            let limit = num("memory", "memory.limit_in_bytes").filter(|l| *l < UNLIMITED);
            let memsw = num("memory", "memory.memsw.usage_in_bytes");
            let memsw_limit = num("memory", "memory.memsw.limit_in_bytes");
            MemoryStats {
                usage,
                working_set: usage.saturating_sub(get("total_inactive_file")),
                rss: get("total_rss"),
                cache: get("total_cache"),
                mapped_file: get("total_mapped_file"),
                active_file: get("total_active_file"),
                inactive_file: get("total_inactive_file"),
                pgfault: get("total_pgfault"),
                pgmajfault: get("total_pgmajfault"),
                limit,
                max_usage: num("memory", "memory.max_usage_in_bytes"),
                failcnt: num("memory", "memory.failcnt"),
                // memsw counts memory and swap together.
                swap: memsw.map(|m| m.saturating_sub(usage)),
                swap_limit: memsw_limit
                    .filter(|l| *l < UNLIMITED)
                    .map(|l| l.saturating_sub(limit.unwrap_or(0))),
            }
        });
        CgroupStats {
            cpu,
            memory,
            pids: num("pids", "pids.current"),
            pids_limit: file("pids", "pids.max").and_then(|f| read_u64(&f)),
            pressure: Pressure::default(),
        }
    }

    fn read_v2(&self, path: &str) -> CgroupStats {
        let Some(dir) = self.dir("", path) else { return CgroupStats::default() };
        let num = |name: &str| read_u64(&dir.join(name));
        let cpu_stat = read_flat(&dir.join("cpu.stat"));
        let cpu = cpu_stat.get("usage_usec").map(|usage| CpuStats {
            usage_ns: usage * 1000,
            user_ns: cpu_stat.get("user_usec").map(|v| v * 1000),
            system_ns: cpu_stat.get("system_usec").map(|v| v * 1000),
            periods: cpu_stat.get("nr_periods").copied(),
            throttled_periods: cpu_stat.get("nr_throttled").copied(),
            throttled_ns: cpu_stat.get("throttled_usec").map(|v| v * 1000),
        });
        let memory = num("memory.current").map(|usage| {
            let stat = read_flat(&dir.join("memory.stat"));
            let get = |k: &str| stat.get(k).copied().unwrap_or(0);
            MemoryStats {
                usage,
                working_set: usage.saturating_sub(get("inactive_file")),
                // cAdvisor's RSS on v2 is anonymous memory.
                rss: get("anon"),
                cache: get("file"),
                mapped_file: get("file_mapped"),
                active_file: get("active_file"),
                inactive_file: get("inactive_file"),
                pgfault: get("pgfault"),
                pgmajfault: get("pgmajfault"),
                limit: num("memory.max").filter(|l| *l < UNLIMITED),
                max_usage: num("memory.peak"),
                failcnt: None,
                swap: num("memory.swap.current"),
                swap_limit: num("memory.swap.max").filter(|l| *l < UNLIMITED),
            }
        });
        CgroupStats {
            cpu,
            memory,
            pids: num("pids.current"),
            pids_limit: num("pids.max"),
            pressure: Pressure::default(),
        }
    }
}

/// The counters of one cgroup (or the sum of several, see [`CgroupStats::sum`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    /// Tasks in the cgroup (pids.current).
    pub pids: Option<u64>,
    /// pids.max (None when "max" or unknown).
    pub pids_limit: Option<u64>,
    /// Pressure stall information (none for a sum: averages of different cgroups do not add up).
    pub pressure: Pressure,
}

/// A cgroup's pressure stall information per resource (kernel Documentation/accounting/psi.rst).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pressure {
    pub cpu: Option<Psi>,
    pub memory: Option<Psi>,
    pub io: Option<Psi>,
}

/// One `*.pressure` file: the `some` and `full` lines (`full` is absent for cpu on older kernels).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Psi {
    pub some: Option<PsiLine>,
    pub full: Option<PsiLine>,
}

/// Share of time stalled (percent) over 10, 60 and 300 s, and total stall time in microseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// Parses a `*.pressure` file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line.
fn parse_pressure(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let slot = match words.next() {
            Some("some") => &mut psi.some,
            Some("full") => &mut psi.full,
            _ => continue,
        };
        let fields: HashMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let avg = |k: &str| fields.get(k).and_then(|v| v.parse::<f64>().ok());
        *slot = Some(PsiLine {
            avg10: avg("avg10")?,
            avg60: avg("avg60")?,
            avg300: avg("avg300")?,
            total_us: fields.get("total")?.parse().ok()?,
        });
    }
    (psi.some.is_some() || psi.full.is_some()).then_some(psi)
}

/// CPU time consumed, in nanoseconds, and CFS throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub usage_ns: u64,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    pub periods: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_ns: Option<u64>,
}

/// Memory in bytes; page faults as counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub usage: u64,
    /// usage − inactive file cache: what the kubelet evicts on.
    pub working_set: u64,
    pub rss: u64,
    pub cache: u64,
    pub mapped_file: u64,
    pub active_file: u64,
    pub inactive_file: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
    /// The memory limit, None when unlimited.
    pub limit: Option<u64>,
    pub max_usage: Option<u64>,
    /// Times the limit was hit (v1 only).
    pub failcnt: Option<u64>,
    /// Swap in use, where the kernel accounts it.
    pub swap: Option<u64>,
    /// Swap allowed on top of memory, None when unlimited or unknown.
    pub swap_limit: Option<u64>,
}

impl MemoryStats {
    /// Bytes left before the limit (limit − working set), None without a limit.
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.working_set))
    }
}

fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

impl CgroupStats {
    /// The sum of several cgroups' counters, for a pod without a cgroup of its own. Limits do
    /// not add up, so the sum has none.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a CgroupStats>) -> CgroupStats {
        let mut out = CgroupStats::default();
        for s in all {
            if let Some(c) = &s.cpu {
                let o = out.cpu.get_or_insert_with(CpuStats::default);
                o.usage_ns += c.usage_ns;
                o.user_ns = add(o.user_ns, c.user_ns);
                o.system_ns = add(o.system_ns, c.system_ns);
                o.periods = add(o.periods, c.periods);
                o.throttled_periods = add(o.throttled_periods, c.throttled_periods);
                o.throttled_ns = add(o.throttled_ns, c.throttled_ns);
            }
            if let Some(m) = &s.memory {
                let o = out.memory.get_or_insert_with(MemoryStats::default);
                o.usage += m.usage;
                o.working_set += m.working_set;
                o.rss += m.rss;
                o.cache += m.cache;
                o.mapped_file += m.mapped_file;
                o.active_file += m.active_file;
                o.inactive_file += m.inactive_file;
                o.pgfault += m.pgfault;
                o.pgmajfault += m.pgmajfault;
                o.failcnt = add(o.failcnt, m.failcnt);
                o.swap = add(o.swap, m.swap);
            }
            out.pids = add(out.pids, s.pids);
        }
        out
    }
}

/// The cgroup path (inside the hierarchy, starting with '/') of an OCI `linux.cgroupsPath`:
/// cgroupfs paths as they are; the systemd form `slice:prefix:name` becomes
/// `<expanded slice>/<prefix>-<name>.scope` as runc's systemd driver names it (an empty slice is
/// runc's default, system.slice).
pub fn cgroup_path(cgroups_path: &str) -> String {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if let [slice, prefix, name] = parts[..]
        && !cgroups_path.starts_with('/')
    {
        let slice = if slice.is_empty() { "system.slice" } else { slice };
        let base = expand_slice(slice);
        let unit = if name.ends_with(".slice") {
            return format!("{}/{name}", base.trim_end_matches('/'));
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        return format!("{}/{unit}", base.trim_end_matches('/'));
    }
    if cgroups_path.starts_with('/') { cgroups_path.to_string() } else { format!("/{cgroups_path}") }
}

/// systemd's slice nesting: `a-b-c.slice` lives at `/a.slice/a-b.slice/a-b-c.slice`;
/// `-.slice` is the root.
fn expand_slice(slice: &str) -> String {
    let Some(stem) = slice.strip_suffix(".slice") else { return format!("/{slice}") };
    if stem == "-" || stem.is_empty() {
        return "/".into();
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    path
}

/// The parent of a cgroup path ("/" for a top-level one).
pub fn parent(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".into(),
        Some((p, _)) => p.into(),
    }
}

/// A file holding one number; "max" and unreadable files give None.
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A flat-keyed file of "key value" lines (memory.stat, cpu.stat).
fn read_flat(path: &Path) -> HashMap<String, u64> {
    let Ok(text) = std::fs::read_to_string(path) else { return HashMap::new() };
    parse_flat(&text)
}

fn parse_flat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes `files` (path relative to `root` → content) into a fake cgroup tree.
    pub(crate) fn write_tree(root: &Path, files: &[(&str, &str)]) {
        for (p, content) in files {
            let f = root.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, content).unwrap();
        }
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn layout_from_mountinfo() {
        let Some(Layout::V1(m)) = Layout::from_mountinfo(HYBRID) else { panic!("v1 expected") };
        assert_eq!(m["cpu"], Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(m["cpuacct"], Path::new("/sys/fs/cgroup/cpuacct"));
        assert_eq!(m["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert!(!m.contains_key("name=systemd"));
        assert_eq!(m[UNIFIED], Path::new("/sys/fs/cgroup/unified"), "where a hybrid host keeps PSI");

        let joined = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let Some(Layout::V1(m)) = Layout::from_mountinfo(joined) else { panic!("v1 expected") };
        assert_eq!(m["cpu"], m["cpuacct"]);

        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(Layout::from_mountinfo(v2), Some(Layout::V2("/sys/fs/cgroup".into())));
        assert_eq!(Layout::from_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
    }

    #[test]
    fn systemd_and_cgroupfs_paths() {
        assert_eq!(cgroup_path("/kubepods/burstable/pod1/c1"), "/kubepods/burstable/pod1/c1");
        assert_eq!(cgroup_path("k8s.io/c1"), "/k8s.io/c1");
        assert_eq!(
            cgroup_path("kubepods-burstable-pod1.slice:berth:c1"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/berth-c1.scope"
        );
        assert_eq!(cgroup_path(":berth:c1"), "/system.slice/berth-c1.scope");
        assert_eq!(cgroup_path("-.slice:berth:c1"), "/berth-c1.scope");
        assert_eq!(cgroup_path("a.slice::c1"), "/a.slice/c1.scope");
        assert_eq!(parent("/kubepods/pod1/c1"), "/kubepods/pod1");
        assert_eq!(parent("/c1"), "/");
    }

    #[test]
    fn reads_v1_tree_with_split_cpu_and_cpuacct() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write_tree(
            r,
            &[
                ("cpuacct/pod/c/cpuacct.usage", "5000000000\n"),
                ("cpuacct/pod/c/cpuacct.usage_user", "3000000000\n"),
                ("cpuacct/pod/c/cpuacct.usage_sys", "2000000000\n"),
                ("cpu/pod/c/cpu.stat", "nr_periods 10\nnr_throttled 2\nthrottled_time 7000\n"),
                ("memory/pod/c/memory.usage_in_bytes", "1000000\n"),
                ("memory/pod/c/memory.limit_in_bytes", "9223372036854771712\n"),
                (
                    "memory/pod/c/memory.stat",
                    "cache 1\nrss 2\ntotal_cache 300000\ntotal_rss 600000\ntotal_inactive_file 250000\n\
                     total_active_file 50000\ntotal_mapped_file 10\ntotal_pgfault 42\ntotal_pgmajfault 3\n",
                ),
                ("memory/pod/c/memory.memsw.usage_in_bytes", "1000100\n"),
                ("pids/pod/c/pids.current", "4\n"),
                ("pids/pod/c/pids.max", "max\n"),
            ],
        );
        let layout = Layout::V1(
            ["cpu", "cpuacct", "memory", "pids"].iter().map(|c| (c.to_string(), r.join(c))).collect(),
        );
        let s = layout.read("/pod/c").unwrap();
        let cpu = s.cpu.unwrap();
        assert_eq!(cpu.usage_ns, 5_000_000_000);
        assert_eq!((cpu.user_ns, cpu.system_ns), (Some(3_000_000_000), Some(2_000_000_000)));
        assert_eq!((cpu.periods, cpu.throttled_periods, cpu.throttled_ns), (Some(10), Some(2), Some(7000)));
        let m = s.memory.unwrap();
        assert_eq!(m.usage, 1_000_000);
        assert_eq!(m.working_set, 750_000);
        assert_eq!((m.rss, m.cache, m.pgfault, m.pgmajfault), (600_000, 300_000, 42, 3));
        assert_eq!(m.limit, None, "the kernel's unlimited value means no limit");
        assert_eq!(m.available(), None);
        assert_eq!(m.swap, Some(100));
        assert_eq!((s.pids, s.pids_limit), (Some(4), None));
        assert_eq!(s.pressure, Pressure::default(), "no unified hierarchy: no PSI");
        assert_eq!(layout.read("/pod/gone"), None);
    }

    #[test]
    fn pressure_comes_from_the_unified_hierarchy_where_the_kernel_has_it() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write_tree(
            r,
            &[
                ("memory/pod/c/memory.usage_in_bytes", "1000\n"),
                (
                    "unified/pod/c/cpu.pressure",
                    "some avg10=1.50 avg60=0.25 avg300=0.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
                ),
                ("unified/pod/c/io.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n"),
                ("unified/pod/c/memory.pressure", "garbage\n"),
            ],
        );
        let layout = Layout::V1(
            [("memory", r.join("memory")), (UNIFIED, r.join("unified"))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        );
        let p = layout.read("/pod/c").unwrap().pressure;
        let cpu = p.cpu.unwrap();
        assert_eq!(cpu.some, Some(PsiLine { avg10: 1.5, avg60: 0.25, avg300: 0.0, total_us: 123 }));
        assert_eq!(cpu.full.unwrap().total_us, 7);
        let io = p.io.unwrap();
        assert_eq!((io.some.unwrap().total_us, io.full), (9, None));
        assert_eq!(p.memory, None, "an unreadable file is no PSI");
        assert_eq!(parse_pressure("some avg10=x avg60=0 avg300=0 total=1\n"), None);
    }

    #[test]
    fn reads_v2_tree_and_tolerates_missing_files() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write_tree(
            r,
            &[
                (
                    "kubepods.slice/x.scope/cpu.stat",
                    "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\nthrottled_usec 20\n",
                ),
                ("kubepods.slice/x.scope/memory.current", "8192\n"),
                ("kubepods.slice/x.scope/memory.max", "10000\n"),
                (
                    "kubepods.slice/x.scope/memory.stat",
                    "anon 4096\nfile 4096\ninactive_file 1024\nactive_file 3072\nfile_mapped 5\npgfault 9\npgmajfault 1\n",
                ),
                ("kubepods.slice/x.scope/pids.current", "2\n"),
                ("kubepods.slice/x.scope/pids.max", "100\n"),
                ("kubepods.slice/bare.scope/cgroup.procs", ""),
            ],
        );
        let layout = Layout::V2(r.to_path_buf());
        let s = layout.read("/kubepods.slice/x.scope").unwrap();
        let cpu = s.cpu.unwrap();
        assert_eq!(cpu.usage_ns, 1_500_000);
        assert_eq!(cpu.throttled_ns, Some(20_000));
        let m = s.memory.unwrap();
        assert_eq!((m.usage, m.working_set, m.rss, m.cache), (8192, 7168, 4096, 4096));
        assert_eq!(m.limit, Some(10000));
        assert_eq!(m.available(), Some(10000 - 7168));
        assert_eq!(m.swap, None, "no swap accounting files");
        assert_eq!((s.pids, s.pids_limit), (Some(2), Some(100)));
        // A cgroup whose controllers are not enabled has no counters, but it exists.
        let bare = layout.read("/kubepods.slice/bare.scope").unwrap();
        assert_eq!(bare, CgroupStats::default());
    }

    #[test]
    fn sums_without_limits() {
        let a = CgroupStats {
            cpu: Some(CpuStats { usage_ns: 10, user_ns: Some(4), ..Default::default() }),
            memory: Some(MemoryStats { usage: 100, working_set: 80, limit: Some(500), ..Default::default() }),
            pids: Some(1),
            pids_limit: Some(10),
            pressure: Pressure::default(),
        };
        let b =
            CgroupStats { cpu: Some(CpuStats { usage_ns: 5, ..Default::default() }), ..Default::default() };
        let s = CgroupStats::sum([&a, &b]);
        assert_eq!(s.cpu.as_ref().unwrap().usage_ns, 15);
        assert_eq!(s.cpu.as_ref().unwrap().user_ns, Some(4));
        assert_eq!(s.memory.as_ref().unwrap().working_set, 80);
        assert_eq!(s.memory.as_ref().unwrap().limit, None);
        assert_eq!((s.pids, s.pids_limit), (Some(1), None));
        assert_eq!(CgroupStats::sum([]), CgroupStats::default());
    }
}
