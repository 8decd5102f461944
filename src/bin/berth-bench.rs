//! berth-bench: berth's benchmark, a CRI client for any CRI endpoint (berth's or containerd's
//! socket) that prints numbers. Subcommands `pods`, `rss` and `pull`; see `berth::bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use berth::bench::{self, Bench};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-bench", version, about = "Benchmarks a CRI runtime through its socket")]
struct Cli {
    /// The CRI endpoint.
    #[arg(long, global = true, default_value = "unix:///run/berth/berth.sock")]
    endpoint: String,
    /// Also write the report as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Deadline of each CRI call.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "5m")]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pod start (RunPodSandbox+CreateContainer+StartContainer) and teardown (StopPodSandbox+
    /// RemovePodSandbox) latencies, sequential then parallel.
    Pods {
        /// Container image, running `sleep 3600` (pulled first if absent).
        #[arg(long, default_value = "docker.io/library/busybox:latest")]
        image: String,
        /// Pods per phase.
        #[arg(long, default_value_t = 30)]
        count: usize,
        /// Pods in flight at once in the parallel phase.
        #[arg(long, default_value_t = 10)]
        parallel: usize,
        /// Pods started and removed before measuring.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// RSS and PSS of the daemon (idle and with pods) and of the pods' shims.
    Rss {
        /// Container image, running `sleep 3600`.
        #[arg(long, default_value = "docker.io/library/busybox:latest")]
        image: String,
        /// Pods to run while measuring.
        #[arg(long, default_value_t = 10)]
        pods: usize,
        /// The daemon's pid (default: the process listening on the endpoint's socket).
        #[arg(long)]
        daemon_pid: Option<u32>,
        /// The shim's process name (comm or argv[0] base name).
        #[arg(long, default_value = "berth-shim")]
        shim_name: String,
        /// Wait this long with the pods running before measuring.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
        settle: Duration,
    },
    /// PullImage wall time and the daemon's peak RSS, pulling the image from scratch each run.
    Pull {
        /// The image to pull.
        #[arg(long)]
        image: String,
        /// Number of pulls.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The daemon's pid (default: the process listening on the endpoint's socket).
        #[arg(long)]
        daemon_pid: Option<u32>,
        /// Longest wait for the daemon to go idle before each pull.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        settle: Duration,
        /// Sync and drop the page cache (echo 3 > /proc/sys/vm/drop_caches) before each pull.
        #[arg(long)]
        drop_caches: bool,
    },
}

/// On the first Ctrl-C or SIGTERM, stops starting new work so the run winds down to its cleanup;
/// on the second, exits at once.
fn watch_signals(bench: &Bench) {
    let flag = bench.interrupter();
    tokio::spawn(async move {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n > 0 {
                eprintln!("berth-bench: interrupted again, exiting without cleanup");
                std::process::exit(130);
            }
            eprintln!(
                "berth-bench: interrupted, finishing calls in flight and removing what this run created"
            );
            flag.store(true, Ordering::SeqCst);
        }
    });
}

async fn run(cli: Cli) -> Result<bool> {
    let bench = Bench::connect(&cli.endpoint, cli.timeout).await?;
    watch_signals(&bench);
    let outcome: berth::Result<(String, serde_json::Value)> = match &cli.command {
        Command::Pods { image, count, parallel, warmup } => {
            let opts = bench::pods::PodsOptions {
                image: image.clone(),
                count: *count,
                parallel: *parallel,
                warmup: *warmup,
            };
            bench::pods::run(&bench, &opts).await.map(|r| (r.render(), serde_json::json!(r)))
        }
        Command::Rss { image, pods, daemon_pid, shim_name, settle } => {
            let opts = bench::rss::RssOptions {
                image: image.clone(),
                pods: *pods,
                daemon_pid: *daemon_pid,
                shim_name: shim_name.clone(),
                settle: *settle,
            };
            bench::rss::run(&bench, &opts).await.map(|r| (r.render(), serde_json::json!(r)))
        }
        Command::Pull { image, runs, daemon_pid, settle, drop_caches } => {
            let opts = bench::pull::PullOptions {
                image: image.clone(),
                runs: *runs,
                daemon_pid: *daemon_pid,
                settle: *settle,
                drop_caches: *drop_caches,
            };
            bench::pull::run(&bench, &opts).await.map(|r| (r.render(), serde_json::json!(r)))
        }
    };
    let problems = bench.cleanup().await;
    for p in &problems {
        eprintln!("berth-bench: cleanup: {p}");
    }
    let (text, json) = outcome.with_context(|| format!("benchmarking {}", cli.endpoint))?;
    print!("{text}");
    if let Some(path) = &cli.json {
        let body = serde_json::to_vec_pretty(&json)?;
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(problems.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
