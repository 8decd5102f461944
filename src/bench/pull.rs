//! `berth-bench pull`: PullImage of one image several times, removing it in between, with the
//! wall time of each pull and the daemon's peak RSS during it (VmHWM, reset before each pull). Before
//! each pull the daemon is left to settle (its CPU time stops moving, e.g. after garbage collection)
//! and optionally the page cache is dropped. It reports; it never judges the numbers.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::procfs::Procfs;
use super::stats::Summary;
use super::{Bench, RuntimeInfo, mib, ms, summary_row, table};
use crate::error::{Context, Result};

/// How often the daemon's CPU time is sampled while waiting for it to settle.
const SETTLE_SAMPLE: Duration = Duration::from_millis(500);
/// CPU ticks (normally 10 ms each) per sample that still count as idle.
const IDLE_TICKS: u64 = 1;

/// What to run.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The image to pull.
    pub image: String,
    /// Number of pulls.
    pub runs: usize,
    /// The daemon; found from the socket when `None`.
    pub daemon_pid: Option<u32>,
    /// Longest wait for the daemon to settle before each pull.
    pub settle: Duration,
    /// Sync and drop the page cache before each pull.
    pub drop_caches: bool,
}

/// One pull.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PullRun {
    /// PullImage wall time.
    pub wall_ms: f64,
    /// The daemon's peak RSS during the pull.
    pub peak_rss_kib: u64,
    /// The daemon's RSS just before the pull.
    pub rss_before_kib: u64,
    /// How long the daemon took to settle before it.
    pub settle_ms: f64,
}

/// The report of `pull`.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The runtime measured.
    pub runtime: RuntimeInfo,
    /// The image pulled.
    pub image: String,
    /// The daemon's process id.
    pub daemon_pid: u32,
    /// Whether the page cache was dropped before each pull.
    pub drop_caches: bool,
    /// Each pull.
    pub runs: Vec<PullRun>,
    /// Wall time per pull.
    pub wall_ms: Option<Summary>,
    /// Peak RSS per pull.
    pub peak_rss_kib: Option<Summary>,
}

/// Pulls `opts.image` `opts.runs` times, each from scratch.
pub async fn run(bench: &Bench, opts: &PullOptions) -> Result<PullReport> {
    let proc = Procfs::host();
    let daemon = bench.daemon_pid(opts.daemon_pid)?;
    // Leave the runtime as found: an image it lacked goes again at cleanup.
    if !bench.image_present(&opts.image).await? {
        bench.remove_at_cleanup(&opts.image);
    }
    let mut runs = Vec::new();
    for _ in 0..opts.runs {
        if bench.image_present(&opts.image).await? {
            bench.remove_image(&opts.image).await?;
        }
        let settled = settle(&proc, daemon, opts.settle).await?;
        bench.check()?;
        if opts.drop_caches {
            drop_caches()?;
        }
        proc.reset_peak(daemon)?;
        let rss_before_kib = proc.memory(daemon)?.rss_kib;
        let t = Instant::now();
        bench.pull_image(&opts.image).await?;
        let wall = t.elapsed();
        let peak_rss_kib = proc.memory(daemon)?.hwm_kib;
        runs.push(PullRun { wall_ms: ms(wall), peak_rss_kib, rss_before_kib, settle_ms: ms(settled) });
    }
    Ok(PullReport {
        runtime: bench.info().clone(),
        image: opts.image.clone(),
        daemon_pid: daemon,
        drop_caches: opts.drop_caches,
        wall_ms: Summary::of(&runs.iter().map(|r| r.wall_ms).collect::<Vec<_>>()),
        peak_rss_kib: Summary::of(&runs.iter().map(|r| r.peak_rss_kib as f64).collect::<Vec<_>>()),
        runs,
    })
}

/// Waits until `pid` used at most [`IDLE_TICKS`] of CPU over one sample, or `max` passed; returns
/// how long that took.
pub async fn settle(proc: &Procfs, pid: u32, max: Duration) -> Result<Duration> {
    let t = Instant::now();
    let mut last = proc.stat(pid)?.cpu_ticks;
    loop {
        tokio::time::sleep(SETTLE_SAMPLE).await;
        let now = proc.stat(pid)?.cpu_ticks;
        if now.saturating_sub(last) <= IDLE_TICKS || t.elapsed() >= max {
            return Ok(t.elapsed());
        }
        last = now;
    }
}

/// Writes dirty pages back and drops the page cache, dentries and inodes machine-wide.
fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context(|| "dropping the page cache".to_string())
}

impl PullReport {
    /// The report as a text table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "pull: {} {} at {}, image {}, daemon pid {}{}\n",
            self.runtime.name,
            self.runtime.version,
            self.runtime.endpoint,
            self.image,
            self.daemon_pid,
            if self.drop_caches { ", page cache dropped before each pull" } else { "" }
        );
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                vec![
                    format!("pull {}", i + 1),
                    format!("{:.0}", r.wall_ms),
                    mib(r.peak_rss_kib as f64),
                    mib(r.rss_before_kib as f64),
                    format!("{:.1}", r.settle_ms / 1000.0),
                ]
            })
            .collect();
        out += &table(&["", "wall ms", "peak RSS MiB", "RSS before MiB", "settled s"], &rows);
        let summary = vec![
            summary_row("wall ms", self.wall_ms.as_ref(), |v| format!("{v:.0}")),
            summary_row("peak RSS MiB", self.peak_rss_kib.as_ref(), mib),
        ];
        out += &table(&["", "n", "min", "p50", "p90", "p99", "max", "mean"], &summary);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `settle` on a child running `script`, then kills it.
    async fn settle_on(script: &str, max: Duration) -> Duration {
        let mut child = std::process::Command::new("sh").arg("-c").arg(script).spawn().unwrap();
        let waited = settle(&Procfs::host(), child.id(), max).await;
        child.kill().unwrap();
        child.wait().unwrap();
        waited.unwrap()
    }

    #[tokio::test]
    async fn settle_returns_once_the_process_is_idle() {
        let max = Duration::from_secs(60);
        assert!(settle_on("exec sleep 120", max).await < max);
    }

    #[tokio::test]
    async fn settle_waits_for_a_busy_process_until_the_limit() {
        let max = Duration::from_secs(2);
        assert!(settle_on("while :; do :; done", max).await >= max);
    }
}
