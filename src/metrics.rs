//! berth's own Prometheus metrics and the endpoint that serves them (`[metrics] address`). Names
//! follow Prometheus conventions (`berth_…_total`, `…_seconds`). The registry is a value passed to
//! whoever records, never a process global; gauges that describe current state (pods, containers,
//! shims) are filled in at scrape time by a callback, so they can never drift from the truth.
//! Counters kept by the shims (log output dropped) are read from them at scrape time too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::BoxFuture;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::error::{Context, Result};

/// The labels of the per-container log drop counters.
const LOG_DROPPED_LABELS: [&str; 2] = ["container_id", "pod_sandbox_id"];

/// Latency buckets for RPCs and pod operations: 1 ms … 2 min.
const BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub pod_start_duration: Histogram,
    pub pod_teardown_duration: Histogram,
    pub image_pull_bytes: IntCounter,
    pub image_pull_duration: Histogram,
    pub image_pull_errors: IntCounter,
    pub cni_duration: HistogramVec,
    pub pods_running: IntGauge,
    pub containers_running: IntGauge,
    pub shims: IntGauge,
    pub container_log_dropped_records: IntCounterVec,
    pub container_log_dropped_bytes: IntCounterVec,
    /// The containers that have log drop series, with their sandbox (the series' other label).
    log_dropped_series: Mutex<HashMap<String, String>>,
}

/// Runs before each scrape to bring the state-describing metrics up to date; it may ask the shims.
pub type Refresh = Arc<dyn Fn(Arc<Metrics>) -> BoxFuture<'static, ()> + Send + Sync>;

/// What a container's CRI log could not take so far, as its shim reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDropped {
    pub container: String,
    pub sandbox: String,
    pub records: u64,
    pub bytes: u64,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let h = |name: &str, help: &str| HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
        let build =
            IntCounterVec::new(Opts::new("berth_build_info", "Build information (always 1)."), &["version"])
                .expect("valid metric");
        reg(&r, build.clone()).with_label_values(&[env!("CARGO_PKG_VERSION")]).inc();
        Metrics {
            requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "berth_grpc_requests_total",
                        "gRPC requests served, by method and status code.",
                    ),
                    &["method", "code"],
                )
                .expect("valid metric"),
            ),
            request_duration: reg(
                &r,
                HistogramVec::new(
                    h("berth_grpc_request_duration_seconds", "gRPC request latency by method."),
                    &["method"],
                )
                .expect("valid metric"),
            ),
            pod_start_duration: reg(
                &r,
                Histogram::with_opts(h(
                    "berth_pod_start_duration_seconds",
                    "RunPodSandbox duration (successful).",
                ))
                .expect("valid metric"),
            ),
            pod_teardown_duration: reg(
                &r,
                Histogram::with_opts(h(
                    "berth_pod_teardown_duration_seconds",
                    "StopPodSandbox and RemovePodSandbox duration (successful).",
                ))
                .expect("valid metric"),
            ),
            image_pull_bytes: reg(
                &r,
                IntCounter::new("berth_image_pull_bytes_total", "Bytes of images pulled (content size).")
                    .expect("valid metric"),
            ),
            image_pull_duration: reg(
                &r,
                Histogram::with_opts(h(
                    "berth_image_pull_duration_seconds",
                    "Image pull duration (successful).",
                ))
                .expect("valid metric"),
            ),
            image_pull_errors: reg(
                &r,
                IntCounter::new("berth_image_pull_errors_total", "Image pulls that failed.")
                    .expect("valid metric"),
            ),
            cni_duration: reg(
                &r,
                HistogramVec::new(
                    h("berth_cni_duration_seconds", "CNI network setup and teardown latency, by operation."),
                    &["operation"],
                )
                .expect("valid metric"),
            ),
            pods_running: reg(
                &r,
                IntGauge::new("berth_pods_running", "Pod sandboxes ready.").expect("valid metric"),
            ),
            containers_running: reg(
                &r,
                IntGauge::new("berth_containers_running", "Containers running.").expect("valid metric"),
            ),
            shims: reg(
                &r,
                IntGauge::new("berth_shims", "Pod shims berthd is connected to.").expect("valid metric"),
            ),
            container_log_dropped_records: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "berth_container_log_dropped_records_total",
                        "Log records (lines, or pieces of long lines) a container wrote that its CRI log \
                         could not take (a full disk), by container; only containers that dropped some.",
                    ),
                    &LOG_DROPPED_LABELS,
                )
                .expect("valid metric"),
            ),
            container_log_dropped_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "berth_container_log_dropped_bytes_total",
                        "Bytes of the log records counted in berth_container_log_dropped_records_total.",
                    ),
                    &LOG_DROPPED_LABELS,
                )
                .expect("valid metric"),
            ),
            log_dropped_series: Mutex::default(),
            registry: r,
        }
    }

    /// Records one RPC.
    pub fn observe_rpc(&self, method: &str, code: tonic::Code, elapsed: std::time::Duration) {
        self.requests.with_label_values(&[method, &format!("{code:?}")]).inc();
        self.request_duration.with_label_values(&[method]).observe(elapsed.as_secs_f64());
    }

    /// Raises the log drop counters of the containers that still exist (`exists`) to what their
    /// shims report, and removes the series of containers that no longer exist. A container gets
    /// series once it dropped something; a container missing from `reported` (its shim did not
    /// answer) keeps its last numbers.
    pub fn update_log_dropped(&self, reported: &[LogDropped], exists: impl Fn(&str) -> bool) {
        // Held across the read-then-raise of each counter, so concurrent scrapes add no delta twice.
        let mut series = self.log_dropped_series.lock().unwrap_or_else(PoisonError::into_inner);
        let counters = [&self.container_log_dropped_records, &self.container_log_dropped_bytes];
        for r in reported.iter().filter(|r| (r.records > 0 || r.bytes > 0) && exists(&r.container)) {
            let labels = [r.container.as_str(), r.sandbox.as_str()];
            for (counter, total) in counters.iter().zip([r.records, r.bytes]) {
                let counter = counter.with_label_values(&labels);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
            series.insert(r.container.clone(), r.sandbox.clone());
        }
        series.retain(|container, sandbox| {
            let keep = exists(container);
            if !keep {
                for counter in counters {
                    let _ = counter.remove_label_values(&[container.as_str(), sandbox.as_str()]);
                }
            }
            keep
        });
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown`; `refresh` runs before each scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint serving");
    }
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, refresh) = (metrics.clone(), refresh.clone());
            async move {
                refresh(metrics.clone()).await;
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.encode())
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context(|| "serving metrics".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_named_like_prometheus_wants() {
        let m = Metrics::new();
        m.observe_rpc("RunPodSandbox", tonic::Code::Ok, std::time::Duration::from_millis(12));
        m.image_pull_bytes.inc_by(42);
        let text = m.encode();
        for family in [
            "berth_build_info",
            "berth_grpc_requests_total",
            "berth_grpc_request_duration_seconds_bucket",
            "berth_image_pull_bytes_total 42",
            "berth_pods_running",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
        assert!(text.contains(r#"berth_grpc_requests_total{code="Ok",method="RunPodSandbox"} 1"#), "{text}");
    }

    fn dropped(container: &str, records: u64, bytes: u64) -> LogDropped {
        LogDropped { container: container.into(), sandbox: "sb".into(), records, bytes }
    }

    /// Issue 14 item 5: per-container log drop counters follow the shims' numbers, exist only for
    /// containers that dropped something, and go away with the container.
    #[test]
    fn log_dropped_counters_follow_the_shims_and_leave_with_the_container() {
        let m = Metrics::new();
        let series = |c: &str| format!("{{container_id=\"{c}\",pod_sandbox_id=\"sb\"}}");
        m.update_log_dropped(&[dropped("c1", 3, 30), dropped("c2", 0, 0)], |_| true);
        let text = m.encode();
        assert!(
            text.contains(&format!("berth_container_log_dropped_records_total{} 3", series("c1"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("berth_container_log_dropped_bytes_total{} 30", series("c1"))),
            "{text}"
        );
        assert!(!text.contains("\"c2\""), "a container that dropped nothing has series:\n{text}");

        // Raised to the new totals; a shim that did not answer (c1 missing) keeps the last numbers.
        m.update_log_dropped(&[dropped("c1", 5, 50), dropped("c2", 1, 7)], |_| true);
        m.update_log_dropped(&[dropped("c2", 1, 7)], |_| true);
        let text = m.encode();
        assert!(
            text.contains(&format!("berth_container_log_dropped_records_total{} 5", series("c1"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("berth_container_log_dropped_bytes_total{} 7", series("c2"))),
            "{text}"
        );

        // c1 removed: its series go, even though a stale report still names it.
        m.update_log_dropped(&[dropped("c1", 5, 50)], |c| c != "c1");
        let text = m.encode();
        assert!(!text.contains("\"c1\""), "{text}");
        assert!(
            text.contains(&format!("berth_container_log_dropped_records_total{} 1", series("c2"))),
            "{text}"
        );
    }

    #[tokio::test]
    async fn endpoint_serves_text_format() {
        let m = Arc::new(Metrics::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let refresh: Refresh = Arc::new(|m: Arc<Metrics>| {
            Box::pin(async move {
                tokio::task::yield_now().await;
                m.pods_running.set(3);
            })
        });
        let task = tokio::spawn(serve(listener, m, refresh, async move {
            let _ = rx.await;
        }));
        let mut body = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
                s.read_to_string(&mut body).await.unwrap();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("berth_pods_running 3"), "{body}");
        let _ = tx.send(());
        task.await.unwrap().unwrap();
    }
}
