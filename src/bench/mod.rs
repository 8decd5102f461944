//! berth-bench: a CRI client that measures any CRI runtime (berth or containerd, through their
//! sockets) the way the kubelet drives it, and reports numbers. `pods` times pod start and
//! teardown, `rss` measures the daemon's and the shims' memory with pods running, `pull` times
//! image pulls and the daemon's peak RSS. Benchmarks print; they never pass or fail on timing.
//!
//! Everything a run creates (pods labelled with its run id, images it pulled that were absent,
//! log directories) is tracked and removed by [`Bench::cleanup`], also after an error or an
//! interruption ([`Bench::interrupter`]): in-flight calls finish, no new ones start. It must never
//! touch pods or images it did not create.

pub mod pods;
pub mod procfs;
pub mod pull;
pub mod rss;
pub mod stats;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cri::api;
use crate::cri::api::image_service_client::ImageServiceClient;
use crate::cri::api::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Context, Error, ErrorKind, Result};

/// Label put on every pod of a run, valued with the run id (cleanup finds pods by it).
pub const RUN_LABEL: &str = "berth-bench/run";
/// Kubernetes namespace of the bench's pods.
pub const POD_NAMESPACE: &str = "berth-bench";
/// Largest gRPC message accepted (ListPodSandbox on a busy node).
const MAX_MESSAGE: usize = 16 << 20;

/// The runtime under test, as its Version call names it.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeInfo {
    /// The CRI endpoint, `unix:///...`.
    pub endpoint: String,
    /// RuntimeName (e.g. "berth", "containerd").
    pub name: String,
    /// RuntimeVersion.
    pub version: String,
}

/// Durations of the three calls that start a pod.
#[derive(Debug, Clone, Copy)]
pub struct StartTimes {
    /// RunPodSandbox.
    pub run_sandbox: Duration,
    /// CreateContainer.
    pub create_container: Duration,
    /// StartContainer.
    pub start_container: Duration,
}

/// Durations of the two calls that tear a pod down.
#[derive(Debug, Clone, Copy)]
pub struct TeardownTimes {
    /// StopPodSandbox.
    pub stop_sandbox: Duration,
    /// RemovePodSandbox.
    pub remove_sandbox: Duration,
}

/// A connection to a CRI endpoint plus everything this run created on it.
pub struct Bench {
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
    socket: PathBuf,
    info: RuntimeInfo,
    run_id: String,
    log_root: PathBuf,
    /// Sandboxes created and not yet removed.
    live: Mutex<BTreeSet<String>>,
    /// Images pulled by the bench that the runtime did not have before.
    pulled: Mutex<BTreeSet<String>>,
    interrupted: Arc<AtomicBool>,
}

impl Bench {
    /// Connects to `endpoint` (`unix:///path` or a plain path) with `timeout` as the deadline of
    /// every call, and asks the runtime's Version.
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Bench> {
        let socket = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
        if !socket.is_absolute() {
            return Err(Error::invalid(format!("endpoint {endpoint:?}: expected unix:///absolute/path")));
        }
        let dial = socket.clone();
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel =
            Endpoint::try_from("http://[::]:50051")
                .context(|| "building the endpoint".to_string())?
                .timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let dial = dial.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(dial).await?))
                    }
                }))
                .await
                .context_kind(ErrorKind::Unavailable, || format!("connecting to {endpoint}"))?;
        let mut runtime = RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let image = ImageServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let version = runtime
            .version(api::VersionRequest { version: "v1".into() })
            .await
            .context_kind(ErrorKind::Unavailable, || format!("asking {endpoint} for its version"))?
            .into_inner();
        let mut id = [0u8; 4];
        getrandom::fill(&mut id).map_err(|e| Error::internal(format!("reading random bytes: {e}")))?;
        let run_id = hex::encode(id);
        let log_root = std::env::temp_dir().join(format!("berth-bench-{run_id}"));
        Ok(Bench {
            runtime,
            image,
            info: RuntimeInfo {
                endpoint: format!("unix://{}", socket.display()),
                name: version.runtime_name,
                version: version.runtime_version,
            },
            socket,
            run_id,
            log_root,
            live: Mutex::default(),
            pulled: Mutex::default(),
            interrupted: Arc::default(),
        })
    }

    /// The runtime under test.
    pub fn info(&self) -> &RuntimeInfo {
        &self.info
    }

    /// This run's id (the value of [`RUN_LABEL`] on its pods).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The flag that, once set (on Ctrl-C), makes every later pod or image operation fail with
    /// Cancelled, so the run winds down to its cleanup.
    pub fn interrupter(&self) -> Arc<AtomicBool> {
        self.interrupted.clone()
    }

    /// Cancelled if the run was interrupted.
    pub fn check(&self) -> Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Cancelled, "interrupted"));
        }
        Ok(())
    }

    /// The daemon behind the endpoint: `explicit`, else the process listening on the socket.
    pub fn daemon_pid(&self, explicit: Option<u32>) -> Result<u32> {
        match explicit {
            Some(pid) => Ok(pid),
            None => procfs::Procfs::host()
                .socket_listener(&self.socket)
                .map_err(|e| e.context("finding the daemon (pass --daemon-pid)")),
        }
    }

    /// Sandboxes this run created and has not removed yet.
    pub fn live_sandboxes(&self) -> Vec<String> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    fn track(&self, id: &str, live: bool) {
        let mut set = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live {
            set.insert(id.to_string());
        } else {
            set.remove(id);
        }
    }

    /// Whether the runtime has `image`.
    pub async fn image_present(&self, image: &str) -> Result<bool> {
        self.check()?;
        let request = api::ImageStatusRequest { image: Some(image_spec(image)), verbose: false };
        let status = self
            .image
            .clone()
            .image_status(request)
            .await
            .context(|| format!("ImageStatus of {image}"))?
            .into_inner();
        Ok(status.image.is_some())
    }

    /// Has [`Bench::cleanup`] remove `image` (one the runtime did not have before this run).
    pub fn remove_at_cleanup(&self, image: &str) {
        self.pulled.lock().unwrap_or_else(|e| e.into_inner()).insert(image.to_string());
    }

    /// PullImage of `image`, nothing else (callers time it).
    pub async fn pull_image(&self, image: &str) -> Result<()> {
        self.check()?;
        let request =
            api::PullImageRequest { image: Some(image_spec(image)), auth: None, sandbox_config: None };
        self.image.clone().pull_image(request).await.context(|| format!("PullImage of {image}"))?;
        Ok(())
    }

    /// Pulls `image` unless the runtime has it, and then removes it at cleanup.
    pub async fn ensure_image(&self, image: &str) -> Result<()> {
        if self.image_present(image).await? {
            return Ok(());
        }
        self.remove_at_cleanup(image);
        self.pull_image(image).await
    }

    /// RemoveImage of `image` (already gone is fine).
    pub async fn remove_image(&self, image: &str) -> Result<()> {
        self.check()?;
        let request = api::RemoveImageRequest { image: Some(image_spec(image)) };
        match self.image.clone().remove_image(request).await {
            Err(s) if s.code() != Code::NotFound => {
                Err(Error::with_source(ErrorKind::Internal, format!("RemoveImage of {image}"), s))
            }
            _ => Ok(()),
        }
    }

    /// The sandbox config the kubelet would send for a pod called `name` of this run: metadata,
    /// labels and annotations, a log directory (created here, as the kubelet does), the hostname,
    /// and pod network, pod IPC and per-container PID namespaces.
    pub fn sandbox_config(&self, name: &str) -> api::PodSandboxConfig {
        let pod = format!("bench-{}-{name}", self.run_id);
        let uid = format!("{}-{name}", self.run_id);
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_string(), pod.clone()),
            ("io.kubernetes.pod.namespace".to_string(), POD_NAMESPACE.to_string()),
            ("io.kubernetes.pod.uid".to_string(), uid.clone()),
            (RUN_LABEL.to_string(), self.run_id.clone()),
        ]);
        let annotations = HashMap::from([
            ("kubernetes.io/config.source".to_string(), "api".to_string()),
            ("kubernetes.io/config.seen".to_string(), "2024-01-01T00:00:00Z".to_string()),
        ]);
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: pod.clone(),
                uid: uid.clone(),
                namespace: POD_NAMESPACE.into(),
                attempt: 0,
            }),
            hostname: pod.clone(),
            log_directory: self.log_root.join(format!("{POD_NAMESPACE}_{pod}_{uid}")).display().to_string(),
            labels,
            annotations,
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Starts pod `name` of this run: RunPodSandbox, then CreateContainer and StartContainer of
    /// `image` running `sleep 3600`. Returns the sandbox id and how long each call took.
    pub async fn start_pod(&self, name: &str, image: &str) -> Result<(String, StartTimes)> {
        self.check()?;
        let config = self.sandbox_config(name);
        std::fs::create_dir_all(&config.log_directory)
            .context(|| format!("creating the log directory {}", config.log_directory))?;
        let mut rt = self.runtime.clone();
        let t = Instant::now();
        let sandbox = rt
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context(|| format!("RunPodSandbox of pod {name}"))?
            .into_inner()
            .pod_sandbox_id;
        let run_sandbox = t.elapsed();
        self.track(&sandbox, true);
        let meta = config.metadata.clone().unwrap_or_default();
        let container = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: "sleep".into(), attempt: 0 }),
            image: Some(image_spec(image)),
            command: vec!["sleep".into(), "3600".into()],
            labels: HashMap::from([
                ("io.kubernetes.container.name".to_string(), "sleep".to_string()),
                ("io.kubernetes.pod.name".to_string(), meta.name),
                ("io.kubernetes.pod.namespace".to_string(), meta.namespace),
                ("io.kubernetes.pod.uid".to_string(), meta.uid),
            ]),
            annotations: HashMap::from([
                ("io.kubernetes.container.restartCount".to_string(), "0".to_string()),
                ("io.kubernetes.container.terminationMessagePath".to_string(), "/dev/termination-log".into()),
            ]),
            log_path: "sleep/0.log".into(),
            linux: Some(api::LinuxContainerConfig {
                // What the kubelet sends for a best-effort pod.
                resources: Some(api::LinuxContainerResources {
                    cpu_shares: 2,
                    oom_score_adj: 1000,
                    ..Default::default()
                }),
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let t = Instant::now();
        let container_id = rt
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(container),
                sandbox_config: Some(config),
            })
            .await
            .context(|| format!("CreateContainer in pod {name}"))?
            .into_inner()
            .container_id;
        let create_container = t.elapsed();
        let t = Instant::now();
        rt.start_container(api::StartContainerRequest { container_id })
            .await
            .context(|| format!("StartContainer in pod {name}"))?;
        let start_container = t.elapsed();
        Ok((sandbox, StartTimes { run_sandbox, create_container, start_container }))
    }

    /// Tears the pod down as the kubelet does once its containers are gone: StopPodSandbox, then
    /// RemovePodSandbox.
    pub async fn teardown_pod(&self, sandbox: &str) -> Result<TeardownTimes> {
        self.check()?;
        let mut rt = self.runtime.clone();
        let t = Instant::now();
        rt.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: sandbox.into() })
            .await
            .context(|| format!("StopPodSandbox of {sandbox}"))?;
        let stop_sandbox = t.elapsed();
        let t = Instant::now();
        rt.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: sandbox.into() })
            .await
            .context(|| format!("RemovePodSandbox of {sandbox}"))?;
        let remove_sandbox = t.elapsed();
        self.track(sandbox, false);
        Ok(TeardownTimes { stop_sandbox, remove_sandbox })
    }

    /// Removes everything this run created that is still there: its pods (tracked, and any the
    /// runtime lists with this run's label), the images it pulled, its log directories. Runs even
    /// after an interruption; returns what could not be removed.
    pub async fn cleanup(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut ids: BTreeSet<String> = self.live_sandboxes().into_iter().collect();
        match self.labelled_sandboxes().await {
            Ok(listed) => ids.extend(listed),
            Err(e) => problems.push(format!("listing this run's pods: {e}")),
        }
        let mut rt = self.runtime.clone();
        for id in &ids {
            // Gone already is fine (containerd 1.6 answers NotFound to Stop of an unknown pod).
            let stop = rt.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
            if let Err(s) = stop
                && s.code() != Code::NotFound
            {
                problems.push(format!("stopping pod {id}: {}", s.message()));
            }
            match rt.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await {
                Err(s) if s.code() != Code::NotFound => {
                    problems.push(format!("removing pod {id}: {}", s.message()))
                }
                _ => self.track(id, false),
            }
        }
        let images: Vec<String> =
            std::mem::take(&mut *self.pulled.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
        for image in images {
            let request = api::RemoveImageRequest { image: Some(image_spec(&image)) };
            if let Err(s) = self.image.clone().remove_image(request).await
                && s.code() != Code::NotFound
            {
                problems.push(format!("removing image {image}: {}", s.message()));
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.log_root)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", self.log_root.display()));
        }
        problems
    }

    async fn labelled_sandboxes(&self) -> Result<Vec<String>> {
        let filter = api::PodSandboxFilter {
            label_selector: HashMap::from([(RUN_LABEL.to_string(), self.run_id.clone())]),
            ..Default::default()
        };
        let listed = self
            .runtime
            .clone()
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: Some(filter) })
            .await
            .context(|| "ListPodSandbox".to_string())?;
        Ok(listed.into_inner().items.into_iter().map(|s| s.id).collect())
    }

    /// The socket of the endpoint.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec { image: image.to_string(), ..Default::default() }
}

/// Pod network and IPC, a PID namespace per container: the kubelet's defaults.
fn namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Milliseconds of a duration, for samples.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// KiB as MiB with one decimal, for tables.
pub fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

/// Aligned text columns: the first left-aligned, the others right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> =
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 { format!("{c:<w$}", w = widths[0]) } else { format!("{c:>w$}", w = widths[i]) }
                })
                .collect();
        s.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A row of a summary table: label, count, then min/p50/p90/p99/max/mean rendered by `fmt`.
pub fn summary_row(label: &str, s: Option<&stats::Summary>, fmt: impl Fn(f64) -> String) -> Vec<String> {
    match s {
        Some(s) => vec![
            label.to_string(),
            s.n.to_string(),
            fmt(s.min),
            fmt(s.p50),
            fmt(s.p90),
            fmt(s.p99),
            fmt(s.max),
            fmt(s.mean),
        ],
        None => vec![label.to_string(), "0".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["op", "n"], &[vec!["pod start".into(), "30".into()], vec!["x".into(), "5".into()]]);
        assert_eq!(t, "op          n\npod start  30\nx           5\n");
    }

    #[test]
    fn summary_rows_render_every_statistic() {
        let s = stats::Summary::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            summary_row("a", Some(&s), |v| format!("{v:.0}")),
            ["a", "3", "1", "2", "3", "3", "3", "2"]
        );
        assert_eq!(summary_row("b", None, |v| v.to_string()), ["b", "0"]);
    }
}
