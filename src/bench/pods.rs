//! `berth-bench pods`: pod start (RunPodSandbox + CreateContainer + StartContainer) and teardown
//! (StopPodSandbox + RemovePodSandbox) latencies, first one pod at a time, then with several in
//! flight. All pods of a phase are started before any is torn down, as on a node filling up and
//! draining. It reports; it never judges the numbers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;

use super::stats::Summary;
use super::{Bench, RuntimeInfo, StartTimes, TeardownTimes, ms, summary_row, table};
use crate::error::Result;

/// What to run.
#[derive(Debug, Clone)]
pub struct PodsOptions {
    /// Container image (pulled first if absent).
    pub image: String,
    /// Pods per phase.
    pub count: usize,
    /// Pods in flight at once in the parallel phase.
    pub parallel: usize,
    /// Pods started and torn down before measuring (not counted): first-use costs such as the
    /// pause image pull.
    pub warmup: usize,
}

/// Latencies of one phase, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Pods in flight at once.
    pub concurrency: usize,
    /// RunPodSandbox + CreateContainer + StartContainer, per pod.
    pub start_ms: Option<Summary>,
    /// StopPodSandbox + RemovePodSandbox, per pod.
    pub teardown_ms: Option<Summary>,
    /// The calls one by one.
    pub run_sandbox_ms: Option<Summary>,
    /// CreateContainer.
    pub create_container_ms: Option<Summary>,
    /// StartContainer.
    pub start_container_ms: Option<Summary>,
    /// StopPodSandbox.
    pub stop_sandbox_ms: Option<Summary>,
    /// RemovePodSandbox.
    pub remove_sandbox_ms: Option<Summary>,
    /// Wall time to start all pods of the phase, in seconds.
    pub start_wall_s: f64,
    /// Wall time to tear them all down, in seconds.
    pub teardown_wall_s: f64,
}

/// The report of `pods`.
#[derive(Debug, Clone, Serialize)]
pub struct PodsReport {
    /// The runtime measured.
    pub runtime: RuntimeInfo,
    /// The container image.
    pub image: String,
    /// Pods per phase.
    pub count: usize,
    /// One pod at a time.
    pub sequential: Phase,
    /// `parallel` pods at a time.
    pub parallel: Phase,
}

/// Runs the warm-up, the sequential phase and the parallel phase.
pub async fn run(bench: &Bench, opts: &PodsOptions) -> Result<PodsReport> {
    bench.ensure_image(&opts.image).await?;
    for i in 0..opts.warmup {
        let (id, _) = bench.start_pod(&format!("warmup-{i}"), &opts.image).await?;
        bench.teardown_pod(&id).await?;
    }
    let sequential = phase(bench, &opts.image, "seq", opts.count, 1).await?;
    let parallel = phase(bench, &opts.image, "par", opts.count, opts.parallel.max(1)).await?;
    Ok(PodsReport {
        runtime: bench.info().clone(),
        image: opts.image.clone(),
        count: opts.count,
        sequential,
        parallel,
    })
}

/// Starts `count` pods with `concurrency` in flight, then tears them down the same way. After a
/// failure no new pod starts; those in flight finish, and the caller's cleanup removes them.
pub async fn phase(
    bench: &Bench,
    image: &str,
    label: &str,
    count: usize,
    concurrency: usize,
) -> Result<Phase> {
    let failed = AtomicBool::new(false);
    let wall = Instant::now();
    let started: Vec<Result<(String, StartTimes)>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let failed = &failed;
            async move {
                if failed.load(Ordering::SeqCst) {
                    return Err(crate::error::Error::new(
                        crate::error::ErrorKind::Cancelled,
                        "an earlier pod failed",
                    ));
                }
                let r = bench.start_pod(&format!("{label}-{i}"), image).await;
                if r.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                r
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let start_wall_s = wall.elapsed().as_secs_f64();
    let started = first_error(started)?;

    let wall = Instant::now();
    let torn: Vec<Result<TeardownTimes>> = futures_util::stream::iter(started.iter())
        .map(|(id, _)| {
            let failed = &failed;
            async move {
                if failed.load(Ordering::SeqCst) {
                    return Err(crate::error::Error::new(
                        crate::error::ErrorKind::Cancelled,
                        "an earlier pod failed",
                    ));
                }
                let r = bench.teardown_pod(id).await;
                if r.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                r
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let teardown_wall_s = wall.elapsed().as_secs_f64();
    let torn = first_error(torn)?;

    let starts: Vec<&StartTimes> = started.iter().map(|(_, t)| t).collect();
    let of = |f: &dyn Fn(&StartTimes) -> f64| Summary::of(&starts.iter().map(|t| f(t)).collect::<Vec<_>>());
    let of_down = |f: &dyn Fn(&TeardownTimes) -> f64| Summary::of(&torn.iter().map(f).collect::<Vec<_>>());
    Ok(Phase {
        concurrency,
        start_ms: of(&|t| ms(t.run_sandbox + t.create_container + t.start_container)),
        teardown_ms: of_down(&|t| ms(t.stop_sandbox + t.remove_sandbox)),
        run_sandbox_ms: of(&|t| ms(t.run_sandbox)),
        create_container_ms: of(&|t| ms(t.create_container)),
        start_container_ms: of(&|t| ms(t.start_container)),
        stop_sandbox_ms: of_down(&|t| ms(t.stop_sandbox)),
        remove_sandbox_ms: of_down(&|t| ms(t.remove_sandbox)),
        start_wall_s,
        teardown_wall_s,
    })
}

/// All the values, or the first real error (a Cancelled caused by another failure says less).
fn first_error<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    let mut values = Vec::with_capacity(results.len());
    let mut cancelled = None;
    for r in results {
        match r {
            Ok(v) => values.push(v),
            Err(e) if e.kind() == crate::error::ErrorKind::Cancelled => cancelled = cancelled.or(Some(e)),
            Err(e) => return Err(e),
        }
    }
    match cancelled {
        Some(e) => Err(e),
        None => Ok(values),
    }
}

impl PodsReport {
    /// The report as a text table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "pods: {} {} at {}, image {}, {} pods per phase\n",
            self.runtime.name, self.runtime.version, self.runtime.endpoint, self.image, self.count
        );
        let mut rows = Vec::new();
        let modes = [("sequential", &self.sequential), ("parallel", &self.parallel)];
        let width = modes.iter().map(|(m, p)| format!("{m} x{}", p.concurrency).len()).max().unwrap_or(0);
        for (mode, p) in modes {
            let mode = format!("{:<width$}", format!("{mode} x{}", p.concurrency));
            let f = |v: f64| format!("{v:.1}");
            rows.push(summary_row(&format!("{mode}  pod start"), p.start_ms.as_ref(), f));
            rows.push(summary_row(&format!("{mode}    RunPodSandbox"), p.run_sandbox_ms.as_ref(), f));
            rows.push(summary_row(&format!("{mode}    CreateContainer"), p.create_container_ms.as_ref(), f));
            rows.push(summary_row(&format!("{mode}    StartContainer"), p.start_container_ms.as_ref(), f));
            rows.push(summary_row(&format!("{mode}  pod teardown"), p.teardown_ms.as_ref(), f));
            rows.push(summary_row(&format!("{mode}    StopPodSandbox"), p.stop_sandbox_ms.as_ref(), f));
            rows.push(summary_row(&format!("{mode}    RemovePodSandbox"), p.remove_sandbox_ms.as_ref(), f));
        }
        out += &table(&["ms", "n", "min", "p50", "p90", "p99", "max", "mean"], &rows);
        for (mode, p) in [("sequential", &self.sequential), ("parallel", &self.parallel)] {
            out += &format!(
                "{mode}: all starts {:.2} s ({:.1} pods/s), all teardowns {:.2} s\n",
                p.start_wall_s,
                self.count as f64 / p.start_wall_s.max(1e-9),
                p.teardown_wall_s
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};

    #[test]
    fn first_error_prefers_the_cause_over_cancellations() {
        let r: Vec<Result<u32>> = vec![
            Ok(1),
            Err(Error::new(ErrorKind::Cancelled, "an earlier pod failed")),
            Err(Error::unavailable("RunPodSandbox of pod seq-2: boom")),
        ];
        assert_eq!(first_error(r).unwrap_err().message(), "RunPodSandbox of pod seq-2: boom");
        let r: Vec<Result<u32>> = vec![Ok(1), Err(Error::new(ErrorKind::Cancelled, "interrupted"))];
        assert_eq!(first_error(r).unwrap_err().kind(), ErrorKind::Cancelled);
        assert_eq!(first_error(vec![Ok::<_, Error>(1), Ok(2)]).unwrap(), vec![1, 2]);
    }
}
