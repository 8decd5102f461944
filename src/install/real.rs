//! The installer's effects on a real node: CRI calls on runtime sockets, the Kubernetes API, and the
//! host unit that runs the switch.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cri::api as cri;
use crate::cri::api::runtime_service_client::RuntimeServiceClient;
use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::host::Host;
use super::kube::{Kube, LABEL};
use super::{Effects, poll};

/// How long a CRI call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Real {
    rt: tokio::runtime::Runtime,
    /// The node and an API client; without them nothing waits for Ready (dry runs, `--no-api`).
    pub kube: Option<(Kube, String)>,
    pub berth_socket: PathBuf,
    pub ready_timeout: Duration,
    /// The `berth-install switch` command line the host unit runs.
    pub switch_argv: Vec<String>,
}

impl Real {
    pub fn new(berth_socket: PathBuf, ready_timeout: Duration) -> Result<Real> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime")?;
        Ok(Real { rt, kube: None, berth_socket, ready_timeout, switch_argv: Vec::new() })
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>> {
    let dial = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(dial).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok(RuntimeServiceClient::new(channel))
}

async fn runtime_ready(socket: &Path) -> Result<bool> {
    let mut c = connect(socket).await?;
    let status = c.status(cri::StatusRequest { verbose: false }).await?.into_inner();
    Ok(status.status.is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "RuntimeReady" && c.status)))
}

async fn remove_all(socket: &Path) -> Result<usize> {
    let mut c = connect(socket).await?;
    let pods = c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner().items;
    for p in &pods {
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p.id.clone() }).await.with_context(
            || format!("stopping pod sandbox {} ({:?})", p.id, p.metadata.as_ref().map(|m| &m.name)),
        )?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p.id.clone() })
            .await
            .with_context(|| format!("removing pod sandbox {}", p.id))?;
    }
    Ok(pods.len())
}

impl Effects for Real {
    fn wait_berth(&mut self, host: &Host) -> Result<()> {
        let socket = host.path(&self.berth_socket.to_string_lossy());
        let rt = &self.rt;
        poll("berth's CRI reporting RuntimeReady", Duration::from_secs(120), Duration::from_secs(1), || {
            rt.block_on(runtime_ready(&socket))
        })
    }

    fn remove_pods(&mut self, host: &Host, endpoint: &str) -> Result<usize> {
        let socket = host.path(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
        if std::fs::symlink_metadata(&socket).is_err() {
            return Ok(0); // the runtime is not running: nothing of it is left to stop
        }
        self.rt.block_on(remove_all(&socket))
    }

    fn start_switch(&mut self, host: &Host) -> Result<()> {
        let mut argv: Vec<&str> = vec![
            "systemd-run",
            "--unit=berth-switch",
            "--collect",
            "--description=berth: switch the kubelet to berth",
            "--property=KillMode=process",
        ];
        argv.extend(self.switch_argv.iter().map(String::as_str));
        host.run(&argv).map(|_| ())
    }

    fn wait_confirmed(&mut self) -> Result<()> {
        let Some((kube, node)) = &self.kube else {
            bail!("no API credentials: cannot see the installer's confirmation");
        };
        let rt = &self.rt;
        let mut failed = false;
        poll("the installer's pod on berth to confirm", self.ready_timeout, Duration::from_secs(2), || {
            let n = rt.block_on(kube.node(node))?;
            let label = n.labels.get(LABEL).and_then(|v| v.as_str()).unwrap_or("");
            failed = label == "failed";
            Ok(label == "true" || failed)
        })?;
        if failed {
            bail!("the installer's pod on berth failed (annotation berth.dev/install-error)");
        }
        Ok(())
    }

    fn wait_ready(&mut self, berth: bool, since: SystemTime) -> Result<()> {
        let Some((kube, node)) = &self.kube else {
            bail!("no API credentials: cannot tell whether the node is Ready");
        };
        let rt = &self.rt;
        let what = if berth { "the node Ready on berth://" } else { "the node Ready on its old runtime" };
        poll(what, self.ready_timeout, Duration::from_secs(3), || {
            let n = rt.block_on(kube.node(node))?;
            Ok(if berth {
                n.ready_on("berth", since)
            } else {
                n.ready
                    && !n.runtime_version.starts_with("berth://")
                    && n.ready_on(n.runtime_version.split("://").next().unwrap_or(""), since)
            })
        })
    }
}
