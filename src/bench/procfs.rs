//! Reading what the benchmark needs from procfs: a process's memory (VmRSS, VmHWM, PSS from
//! smaps_rollup), its parent, CPU time and start time, the process that listens on a unix socket
//! (/proc/net/unix inode → /proc/<pid>/fd), processes by name, and resetting a peak RSS. Every
//! path is taken relative to a root (normally /proc) so the parsing is tested on fixtures. It only
//! reads, except `reset_peak`, and must never signal or otherwise touch the processes it inspects.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Context, Error, ErrorKind, Result};

/// `__SO_ACCEPTCON` in the Flags column of /proc/net/unix: the socket is listening.
const SO_ACCEPTCON: u32 = 1 << 16;

/// A process's memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size since start or the last `reset_peak` (VmHWM).
    pub hwm_kib: u64,
    /// Proportional set size (Pss of smaps_rollup): shared pages divided among their users.
    pub pss_kib: Option<u64>,
}

/// The fields of /proc/<pid>/stat the benchmark uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Parent process id.
    pub ppid: u32,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
}

/// A procfs tree: `/proc`, or a fixture laid out like it.
#[derive(Debug, Clone)]
pub struct Procfs {
    root: PathBuf,
}

impl Procfs {
    /// The procfs at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Procfs {
        Procfs { root: root.into() }
    }

    /// The machine's /proc.
    pub fn host() -> Procfs {
        Procfs::new("/proc")
    }

    fn read(&self, pid: u32, file: &str) -> Result<String> {
        let path = self.root.join(pid.to_string()).join(file);
        std::fs::read_to_string(&path)
            .context_kind(ErrorKind::NotFound, || format!("reading {}", path.display()))
    }

    /// VmRSS and VmHWM of `pid`, and its PSS when smaps_rollup is readable.
    pub fn memory(&self, pid: u32) -> Result<Memory> {
        let status = self.read(pid, "status")?;
        let field = |name| {
            status_kib(&status, name)
                .ok_or_else(|| Error::internal(format!("no {name} in the status of process {pid}")))
        };
        let pss_kib = self.read(pid, "smaps_rollup").ok().and_then(|t| rollup_pss_kib(&t));
        Ok(Memory { rss_kib: field("VmRSS")?, hwm_kib: field("VmHWM")?, pss_kib })
    }

    /// Parent, CPU time and start time of `pid`.
    pub fn stat(&self, pid: u32) -> Result<Stat> {
        let text = self.read(pid, "stat")?;
        parse_stat(&text)
            .ok_or_else(|| Error::internal(format!("unreadable stat of process {pid}: {text:?}")))
    }

    /// The argument vector of `pid` (empty for kernel threads).
    pub fn argv(&self, pid: u32) -> Result<Vec<String>> {
        let path = self.root.join(pid.to_string()).join("cmdline");
        let bytes = std::fs::read(&path)
            .context_kind(ErrorKind::NotFound, || format!("reading {}", path.display()))?;
        Ok(bytes
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into())
            .collect())
    }

    /// The ids of all processes (thread-group leaders), ascending.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let entries = std::fs::read_dir(&self.root).context(|| format!("listing {}", self.root.display()))?;
        let mut pids: Vec<u32> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// The process listening on the unix socket bound at `socket` (the daemon behind a CRI
    /// endpoint): the inode of the listening entry in net/unix, then the process holding a
    /// descriptor on that inode. If several do (inherited descriptors), the one started first.
    pub fn socket_listener(&self, socket: &Path) -> Result<u32> {
        let table_path = self.root.join("net/unix");
        let table =
            std::fs::read_to_string(&table_path).context(|| format!("reading {}", table_path.display()))?;
        let mut names = vec![socket.to_path_buf()];
        if let Ok(canonical) = socket.canonicalize() {
            names.push(canonical);
        }
        let inodes: Vec<u64> = names.iter().flat_map(|n| listening_inodes(&table, n)).collect();
        if inodes.is_empty() {
            return Err(Error::not_found(format!("no process listens on {}", socket.display())));
        }
        let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
        let mut holders = Vec::new();
        for pid in self.pids()? {
            let Ok(fds) = std::fs::read_dir(self.root.join(pid.to_string()).join("fd")) else { continue };
            let holds = fds.filter_map(|e| e.ok()).any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| targets.iter().any(|t| l.as_os_str() == t.as_str()))
            });
            if holds {
                let start = self.stat(pid).map(|s| s.start_ticks).unwrap_or(u64::MAX);
                holders.push((start, pid));
            }
        }
        holders.sort_unstable();
        holders.first().map(|(_, pid)| *pid).ok_or_else(|| {
            Error::not_found(format!("no process holds the listening socket {}", socket.display()))
        })
    }

    /// Processes whose comm or argv[0] base name is `name`, ascending.
    pub fn named(&self, name: &str) -> Result<Vec<u32>> {
        Ok(self
            .pids()?
            .into_iter()
            .filter(|pid| {
                let comm = self.read(*pid, "comm").unwrap_or_default();
                comm.trim_end_matches('\n') == name
                    || self
                        .argv(*pid)
                        .ok()
                        .and_then(|a| a.into_iter().next())
                        .is_some_and(|argv0| Path::new(&argv0).file_name().is_some_and(|base| base == name))
            })
            .collect())
    }

    /// Resets the peak RSS (VmHWM) of `pid` to its current RSS (`5` to clear_refs).
    pub fn reset_peak(&self, pid: u32) -> Result<()> {
        let path = self.root.join(pid.to_string()).join("clear_refs");
        std::fs::write(&path, "5").context(|| format!("resetting the peak RSS of process {pid}"))
    }
}

/// A `Name:   123 kB` field of /proc/<pid>/status, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The `Pss:` line of /proc/<pid>/smaps_rollup, in KiB (not Pss_Anon, Pss_File, ...).
pub fn rollup_pss_kib(rollup: &str) -> Option<u64> {
    status_kib(rollup, "Pss")
}

/// Inodes of the listening stream sockets bound at `path` in a /proc/net/unix table.
pub fn listening_inodes(table: &str, path: &Path) -> Vec<u64> {
    let wanted = path.as_os_str().to_string_lossy();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode [Path]; a path may contain spaces.
            let mut fields = line.split_whitespace();
            let flags = u32::from_str_radix(fields.nth(3)?, 16).ok()?;
            let inode: u64 = fields.nth(2)?.parse().ok()?;
            let name = fields.collect::<Vec<_>>().join(" ");
            (flags & SO_ACCEPTCON != 0 && name == wanted).then_some(inode)
        })
        .collect()
}

/// Parses /proc/<pid>/stat. The command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is after[0]; ppid is field 4, utime 14, stime 15, starttime 22.
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(Stat { ppid: u32::try_from(num(4)?).ok()?, cpu_ticks: num(14)? + num(15)?, start_ticks: num(22)? })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    pub(crate) const STATUS: &str = "Name:\tcontainerd\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t4242\nPPid:\t1\n\
        VmPeak:\t 1530132 kB\nVmSize:\t 1464596 kB\nVmLck:\t       0 kB\nVmHWM:\t   61328 kB\n\
        VmRSS:\t   48312 kB\nRssAnon:\t   20560 kB\nRssFile:\t   27752 kB\nThreads:\t14\n";

    pub(crate) const ROLLUP: &str = "55d0f6a4c000-7ffc3b1f8000 ---p 00000000 00:00 0                          [rollup]\n\
        Rss:               48312 kB\nPss:               31544 kB\nPss_Dirty:         20012 kB\n\
        Pss_Anon:          20480 kB\nPss_File:          11064 kB\nPss_Shmem:             0 kB\n\
        Shared_Clean:      17220 kB\nPrivate_Dirty:     20560 kB\n";

    const NET_UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 31337 /run/berth/berth.sock\n\
        0000000000000000: 00000003 00000000 00000000 0001 03 31400 /run/berth/berth.sock\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 28001 /run/containerd/containerd.sock.ttrpc\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 28002 /run/containerd/containerd.sock\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 28100 /tmp/odd dir/x.sock\n\
        0000000000000000: 00000002 00000000 00010000 0005 01 12000 @/containerd-shim/abc.sock\n\
        0000000000000000: 00000003 00000000 00000000 0001 03 12001\n";

    fn stat_line(pid: u32, comm: &str, ppid: u32, utime: u64, stime: u64, start: u64) -> String {
        format!(
            "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 3055 0 0 0 {utime} {stime} 0 0 20 0 11 0 \
             {start} 1499750400 12078 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        )
    }

    #[test]
    fn status_fields_in_kib() {
        assert_eq!(status_kib(STATUS, "VmRSS"), Some(48312));
        assert_eq!(status_kib(STATUS, "VmHWM"), Some(61328));
        assert_eq!(status_kib(STATUS, "VmSwap"), None);
        // A prefix of another field is not that field.
        assert_eq!(status_kib(STATUS, "Vm"), None);
    }

    #[test]
    fn pss_of_smaps_rollup() {
        assert_eq!(rollup_pss_kib(ROLLUP), Some(31544));
        assert_eq!(rollup_pss_kib("Rss: 12 kB\n"), None);
    }

    #[test]
    fn listening_inode_by_path() {
        assert_eq!(listening_inodes(NET_UNIX, Path::new("/run/berth/berth.sock")), vec![31337]);
        assert_eq!(listening_inodes(NET_UNIX, Path::new("/run/containerd/containerd.sock")), vec![28002]);
        assert_eq!(listening_inodes(NET_UNIX, Path::new("/tmp/odd dir/x.sock")), vec![28100]);
        assert!(listening_inodes(NET_UNIX, Path::new("/run/nothing.sock")).is_empty());
    }

    #[test]
    fn stat_fields_even_with_parentheses_in_the_name() {
        let s = parse_stat(&stat_line(77, "we(ird) name)", 1, 120, 30, 987654)).unwrap();
        assert_eq!(s, Stat { ppid: 1, cpu_ticks: 150, start_ticks: 987654 });
        assert!(parse_stat("12 (x) S 1 2").is_none());
    }

    /// One process of a fixture procfs under `root`: comm, NUL-separated cmdline, stat with
    /// `ppid` and start time `start`, a status, and descriptors as symlinks to `fds` targets.
    pub(crate) fn process(root: &Path, pid: u32, cmdline: &str, ppid: u32, start: u64, fds: &[(u32, &str)]) {
        let p = root.join(pid.to_string());
        std::fs::create_dir_all(p.join("fd")).unwrap();
        let argv0 = cmdline.split('\0').next().unwrap();
        let comm: String = Path::new(argv0).file_name().unwrap().to_string_lossy().chars().take(15).collect();
        std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(p.join("cmdline"), format!("{cmdline}\0")).unwrap();
        std::fs::write(p.join("stat"), stat_line(pid, &comm, ppid, 1, 1, start)).unwrap();
        std::fs::write(p.join("status"), STATUS).unwrap();
        for (fd, target) in fds {
            symlink(target, p.join("fd").join(fd.to_string())).unwrap();
        }
    }

    /// A fixture procfs: berthd (pid 100) listens on berth.sock and a child it forked (pid 150)
    /// inherited the descriptor; pid 200 holds only a connection to it; two shims, one started by path.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("net")).unwrap();
        std::fs::write(root.join("net/unix"), NET_UNIX).unwrap();
        std::fs::create_dir_all(root.join("self")).unwrap();
        process(
            root,
            100,
            "/usr/bin/berthd\0--config\0/etc/berth.toml",
            1,
            5000,
            &[(3, "socket:[31337]"), (4, "/dev/null")],
        );
        process(root, 150, "/usr/bin/berthd", 100, 6000, &[(7, "socket:[31337]")]);
        process(root, 200, "crictl\0ps", 1, 7000, &[(3, "socket:[31400]")]);
        process(root, 300, "/usr/bin/berth-shim\0serve\0--id\0abc", 1, 8000, &[]);
        process(root, 310, "/usr/bin/containerd-shim-runc-v2\0-id\0def", 1, 9000, &[]);
        std::fs::write(root.join("100/smaps_rollup"), ROLLUP).unwrap();
        dir
    }

    #[test]
    fn socket_listener_is_the_first_holder_of_the_listening_inode() {
        let dir = fixture();
        let proc = Procfs::new(dir.path());
        assert_eq!(proc.socket_listener(Path::new("/run/berth/berth.sock")).unwrap(), 100);
        // Listening but held by nobody here; not listening at all.
        let e = proc.socket_listener(Path::new("/run/containerd/containerd.sock")).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(proc.socket_listener(Path::new("/run/none.sock")).unwrap_err().is_not_found());
    }

    #[test]
    fn processes_by_comm_or_argv0() {
        let dir = fixture();
        let proc = Procfs::new(dir.path());
        assert_eq!(proc.pids().unwrap(), vec![100, 150, 200, 300, 310]);
        assert_eq!(proc.named("berth-shim").unwrap(), vec![300]);
        // comm is cut at 15 bytes; argv[0] carries the whole name.
        assert_eq!(proc.named("containerd-shim-runc-v2").unwrap(), vec![310]);
        assert_eq!(proc.named("berthd").unwrap(), vec![100, 150]);
        assert_eq!(proc.argv(300).unwrap(), vec!["/usr/bin/berth-shim", "serve", "--id", "abc"]);
    }

    #[test]
    fn memory_with_and_without_pss() {
        let dir = fixture();
        let proc = Procfs::new(dir.path());
        assert_eq!(
            proc.memory(100).unwrap(),
            Memory { rss_kib: 48312, hwm_kib: 61328, pss_kib: Some(31544) }
        );
        assert_eq!(proc.memory(200).unwrap().pss_kib, None);
        assert!(proc.memory(999).unwrap_err().is_not_found());
        assert_eq!(proc.stat(150).unwrap().ppid, 100);
    }

    #[test]
    fn reads_this_process_from_the_real_proc() {
        let proc = Procfs::host();
        let me = std::process::id();
        let m = proc.memory(me).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib, "{m:?}");
        assert!(m.pss_kib.is_some());
        assert_eq!(proc.stat(me).unwrap().ppid, std::os::unix::process::parent_id());
        // A listening socket bound here is found, and this process holds it.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("l.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(proc.socket_listener(&sock).unwrap(), me);
    }
}
