//! `berth-bench rss`: the memory a runtime costs a node. The daemon's RSS and PSS idle, then with
//! pods running, and the RSS and PSS of each pod's shim. Shims are found by name (comm or argv[0]
//! base name) and attributed to this run by the sandbox id on their command line (both berth-shim
//! and containerd-shim-runc-v2 carry `--id`/`-id <sandbox>`), so other pods on the machine are not
//! counted; a shim without the id there falls back to "a child of init or of the daemon, started
//! after this bench". Reads /proc only; the pods are the bench's own.

use std::time::Duration;

use serde::Serialize;

use super::procfs::{Memory, Procfs};
use super::stats::Summary;
use super::{Bench, RuntimeInfo, mib, table};
use crate::error::{Error, Result};

/// What to run.
#[derive(Debug, Clone)]
pub struct RssOptions {
    /// Container image of the pods.
    pub image: String,
    /// Pods to start.
    pub pods: usize,
    /// The daemon; found from the socket when `None`.
    pub daemon_pid: Option<u32>,
    /// The shim's process name (`berth-shim`, `containerd-shim-runc-v2`).
    pub shim_name: String,
    /// How long to let the pods and the daemon settle before measuring.
    pub settle: Duration,
}

/// Memory of the shims of this run's pods, in KiB.
#[derive(Debug, Clone, Serialize)]
pub struct ShimMemory {
    /// Shim processes found.
    pub count: usize,
    /// How they were attributed to this run.
    pub matched_by: &'static str,
    /// Their process ids.
    pub pids: Vec<u32>,
    /// VmRSS per shim.
    pub rss_kib: Option<Summary>,
    /// PSS per shim.
    pub pss_kib: Option<Summary>,
    /// Sum of VmRSS.
    pub rss_total_kib: u64,
    /// Sum of PSS.
    pub pss_total_kib: u64,
}

/// The report of `rss`.
#[derive(Debug, Clone, Serialize)]
pub struct RssReport {
    /// The runtime measured.
    pub runtime: RuntimeInfo,
    /// The daemon's process id.
    pub daemon_pid: u32,
    /// Pods running at the second measurement.
    pub pods: usize,
    /// The daemon before the pods started.
    pub daemon_idle: Memory,
    /// The daemon with the pods running.
    pub daemon_loaded: Memory,
    /// The shims with the pods running.
    pub shims: ShimMemory,
}

/// Measures the idle daemon, starts the pods, lets them settle, measures, tears them down.
pub async fn run(bench: &Bench, opts: &RssOptions) -> Result<RssReport> {
    let proc = Procfs::host();
    let daemon = bench.daemon_pid(opts.daemon_pid)?;
    let since = proc.stat(std::process::id())?.start_ticks;
    let daemon_idle = proc.memory(daemon)?;
    bench.ensure_image(&opts.image).await?;
    let mut sandboxes = Vec::new();
    for i in 0..opts.pods {
        sandboxes.push(bench.start_pod(&format!("rss-{i}"), &opts.image).await?.0);
    }
    tokio::time::sleep(opts.settle).await;
    bench.check()?;
    let daemon_loaded = proc.memory(daemon)?;
    let shims = shim_memory(&proc, &opts.shim_name, &sandboxes, daemon, since)?;
    for id in &sandboxes {
        bench.teardown_pod(id).await?;
    }
    Ok(RssReport {
        runtime: bench.info().clone(),
        daemon_pid: daemon,
        pods: sandboxes.len(),
        daemon_idle,
        daemon_loaded,
        shims,
    })
}

/// Finds the shims of `sandboxes` and reads their memory.
pub fn shim_memory(
    proc: &Procfs,
    name: &str,
    sandboxes: &[String],
    daemon: u32,
    since_ticks: u64,
) -> Result<ShimMemory> {
    let (pids, matched_by) = find_shims(proc, name, sandboxes, daemon, since_ticks)?;
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    let mut found = Vec::new();
    for pid in pids {
        // A shim may exit between listing and reading; it is then not one of the pods' shims.
        let Ok(m) = proc.memory(pid) else { continue };
        found.push(pid);
        rss.push(m.rss_kib);
        pss.extend(m.pss_kib);
    }
    if found.is_empty() && !sandboxes.is_empty() {
        return Err(Error::not_found(format!(
            "no {name} process found for the {} pods (is --shim-name right?)",
            sandboxes.len()
        )));
    }
    let floats = |v: &[u64]| v.iter().map(|k| *k as f64).collect::<Vec<_>>();
    Ok(ShimMemory {
        count: found.len(),
        matched_by,
        pids: found,
        rss_kib: Summary::of(&floats(&rss)),
        pss_kib: Summary::of(&floats(&pss)),
        rss_total_kib: rss.iter().sum(),
        pss_total_kib: pss.iter().sum(),
    })
}

/// The shim processes of `sandboxes`: named `name` with a sandbox id as one of their arguments;
/// if none is, those named `name` that are children of init or of `daemon` and started at or after
/// `since_ticks`.
pub fn find_shims(
    proc: &Procfs,
    name: &str,
    sandboxes: &[String],
    daemon: u32,
    since_ticks: u64,
) -> Result<(Vec<u32>, &'static str)> {
    let named = proc.named(name)?;
    let by_id: Vec<u32> = named
        .iter()
        .copied()
        .filter(|pid| proc.argv(*pid).is_ok_and(|argv| argv.iter().any(|a| sandboxes.contains(a))))
        .collect();
    if !by_id.is_empty() {
        return Ok((by_id, "sandbox id in argv"));
    }
    let recent = named
        .into_iter()
        .filter(|pid| {
            proc.stat(*pid).is_ok_and(|s| (s.ppid == 1 || s.ppid == daemon) && s.start_ticks >= since_ticks)
        })
        .collect();
    Ok((recent, "child of init or the daemon started during the run"))
}

impl RssReport {
    /// The report as a text table (MiB).
    pub fn render(&self) -> String {
        let mut out = format!(
            "rss: {} {} at {}, daemon pid {}, {} pods\n",
            self.runtime.name, self.runtime.version, self.runtime.endpoint, self.daemon_pid, self.pods
        );
        let pss = |m: &Memory| m.pss_kib.map(|k| mib(k as f64)).unwrap_or_else(|| "-".into());
        let s = &self.shims;
        let stat =
            |v: Option<&Summary>, f: fn(&Summary) -> f64| v.map(|s| mib(f(s))).unwrap_or_else(|| "-".into());
        let rows = vec![
            vec!["daemon idle".into(), mib(self.daemon_idle.rss_kib as f64), pss(&self.daemon_idle)],
            vec![
                format!("daemon, {} pods", self.pods),
                mib(self.daemon_loaded.rss_kib as f64),
                pss(&self.daemon_loaded),
            ],
            vec![
                format!("shims ({}) total", s.count),
                mib(s.rss_total_kib as f64),
                mib(s.pss_total_kib as f64),
            ],
            vec![
                "shim average".into(),
                stat(s.rss_kib.as_ref(), |x| x.mean),
                stat(s.pss_kib.as_ref(), |x| x.mean),
            ],
            vec!["shim max".into(), stat(s.rss_kib.as_ref(), |x| x.max), stat(s.pss_kib.as_ref(), |x| x.max)],
            vec![
                format!("daemon + shims, {} pods", self.pods),
                mib((self.daemon_loaded.rss_kib + s.rss_total_kib) as f64),
                match self.daemon_loaded.pss_kib {
                    Some(d) => mib((d + s.pss_total_kib) as f64),
                    None => "-".into(),
                },
            ],
        ];
        out += &table(&["MiB", "RSS", "PSS"], &rows);
        out += &format!("shims matched by {}\n", s.matched_by);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::procfs::tests::{ROLLUP, process};

    /// berthd is pid 100. Shims: 300 of this run's pod sb1, 301 of another pod started before the
    /// run, 302 started during the run by something else than init or the daemon, 303 of another
    /// pod started during the run by the daemon, 400 a berthd that merely mentions sb1.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        process(root, 100, "/usr/bin/berthd", 1, 1000, &[]);
        process(root, 300, "/usr/bin/berth-shim\0serve\0--id\0sb1\0--dir\0/run/b/sb1", 1, 8000, &[]);
        process(root, 301, "/usr/bin/berth-shim\0serve\0--id\0old", 1, 3000, &[]);
        process(root, 302, "/usr/bin/berth-shim\0serve\0--id\0x", 555, 9000, &[]);
        process(root, 303, "/usr/bin/berth-shim\0serve\0--id\0y", 100, 9000, &[]);
        process(root, 400, "/usr/bin/berthd\0sb1", 1, 9000, &[]);
        std::fs::write(root.join("300/smaps_rollup"), ROLLUP).unwrap();
        dir
    }

    #[test]
    fn shims_of_the_run_by_sandbox_id() {
        let dir = fixture();
        let proc = Procfs::new(dir.path());
        let (pids, how) = find_shims(&proc, "berth-shim", &["sb1".into()], 100, 5000).unwrap();
        assert_eq!((pids, how), (vec![300], "sandbox id in argv"));
    }

    #[test]
    fn shims_without_ids_are_those_started_during_the_run_by_init_or_the_daemon() {
        let dir = fixture();
        let proc = Procfs::new(dir.path());
        let (pids, how) = find_shims(&proc, "berth-shim", &["none".into()], 100, 5000).unwrap();
        assert_eq!(pids, vec![300, 303]);
        assert!(how.starts_with("child of init"), "{how}");
    }

    #[test]
    fn shim_memory_sums_and_averages() {
        let dir = fixture();
        let proc = Procfs::new(dir.path());
        let m = shim_memory(&proc, "berth-shim", &["sb1".into(), "y".into()], 100, 5000).unwrap();
        assert_eq!(m.pids, vec![300, 303]);
        assert_eq!(m.rss_total_kib, 2 * 48312);
        assert_eq!(m.rss_kib.unwrap().mean, 48312.0);
        // Only 300 has a readable smaps_rollup.
        assert_eq!((m.pss_total_kib, m.pss_kib.unwrap().n), (31544, 1));
        let e = shim_memory(&proc, "no-such-shim", &["sb1".into()], 100, 5000).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }
}
