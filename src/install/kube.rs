//! The few Kubernetes API calls the installer makes, with the pod's service account: read its Node
//! (readiness, runtime version), label it, and ask whether its DaemonSet still exists. The
//! credentials are copied to a private host directory so the host unit that switches the kubelet
//! (outside any pod) can use them too.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// In-cluster credentials of a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The node label that says where the installation stands: `pending`, `true` or `failed`.
pub const LABEL: &str = "berth.dev/runtime";

/// What the installer needs from a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub ready: bool,
    /// `status.nodeInfo.containerRuntimeVersion`, e.g. `berth://0.1.0`.
    pub runtime_version: String,
    /// The Ready condition's `lastHeartbeatTime`.
    pub heartbeat: Option<SystemTime>,
    pub labels: serde_json::Map<String, serde_json::Value>,
}

impl NodeState {
    pub fn from_json(node: &serde_json::Value) -> NodeState {
        let status = &node["status"];
        let ready_cond = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        NodeState {
            ready: ready_cond["status"] == "True",
            runtime_version: status["nodeInfo"]["containerRuntimeVersion"].as_str().unwrap_or("").to_string(),
            heartbeat: ready_cond["lastHeartbeatTime"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok()),
            labels: node["metadata"]["labels"].as_object().cloned().unwrap_or_default(),
        }
    }

    /// Ready on a runtime named `runtime` (`berth`, `containerd`), with a heartbeat at or after
    /// `since` (seconds resolution: the API keeps no more).
    pub fn ready_on(&self, runtime: &str, since: SystemTime) -> bool {
        let fresh = self.heartbeat.is_some_and(|h| h + Duration::from_secs(1) > since);
        self.ready && self.runtime_version.starts_with(&format!("{runtime}://")) && fresh
    }
}

/// An API client with a bearer token.
pub struct Kube {
    server: String,
    token: String,
    http: reqwest::Client,
}

impl Kube {
    /// Credentials from a directory holding `token`, `ca.crt` and, outside a pod, `server`; inside
    /// a pod the server comes from `KUBERNETES_SERVICE_HOST`/`_PORT`.
    pub fn from_dir(dir: &Path) -> Result<Kube> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let token = read("token")?.trim().to_string();
        let ca =
            std::fs::read(dir.join("ca.crt")).with_context(|| format!("reading {}/ca.crt", dir.display()))?;
        let server = match read("server") {
            Ok(s) => s.trim().to_string(),
            Err(_) => in_cluster_server()?,
        };
        Kube::new(server, token, &ca)
    }

    pub fn new(server: String, token: String, ca_pem: &[u8]) -> Result<Kube> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.context("parsing the cluster CA")?).context("adding the cluster CA")?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("tls versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(crate::engine::image::dns::SystemResolver)
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .context("building the API client")?;
        Ok(Kube { server: server.trim_end_matches('/').to_string(), token, http })
    }

    /// Copies the pod's credentials (and the API server's address) to `dir`, private to root.
    pub fn save_credentials(from: &Path, dir: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for name in ["token", "ca.crt"] {
            let data = std::fs::read(from.join(name))
                .with_context(|| format!("reading {}", from.join(name).display()))?;
            crate::install::host::write_atomic(&dir.join(name), &data, 0o600)?;
        }
        crate::install::host::write_atomic(&dir.join("server"), in_cluster_server()?.as_bytes(), 0o600)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(StatusCode, serde_json::Value)> {
        let resp = req.bearer_auth(&self.token).send().await.with_context(|| what.to_string())?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| what.to_string())?;
        Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
    }

    pub async fn node(&self, name: &str) -> Result<NodeState> {
        let what = format!("reading node {name}");
        let (status, body) =
            self.send(self.http.get(format!("{}/api/v1/nodes/{name}", self.server)), &what).await?;
        if !status.is_success() {
            bail!("{what}: {status} {}", body["message"].as_str().unwrap_or(""));
        }
        Ok(NodeState::from_json(&body))
    }

    /// Sets (or, with `None`, removes) labels and annotations on the node.
    pub async fn label(
        &self,
        name: &str,
        labels: &[(&str, Option<&str>)],
        annotations: &[(&str, Option<&str>)],
    ) -> Result<()> {
        let map = |kv: &[(&str, Option<&str>)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.map_or(serde_json::Value::Null, |v| v.into())))
                .collect::<serde_json::Map<_, _>>()
        };
        let patch = serde_json::json!({"metadata": {"labels": map(labels), "annotations": map(annotations)}});
        let what = format!("labelling node {name}");
        let req = self
            .http
            .patch(format!("{}/api/v1/nodes/{name}", self.server))
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string());
        let (status, body) = self.send(req, &what).await?;
        if !status.is_success() {
            bail!("{what}: {status} {}", body["message"].as_str().unwrap_or(""));
        }
        Ok(())
    }

    /// Whether the DaemonSet exists and is not being deleted. A 403 counts as gone: Helm deletes
    /// the installer's RBAC with the DaemonSet, while a rolling update keeps both.
    pub async fn daemonset_alive(&self, namespace: &str, name: &str) -> Result<bool> {
        let what = format!("reading daemonset {namespace}/{name}");
        let url = format!("{}/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}", self.server);
        let (status, body) = self.send(self.http.get(url), &what).await?;
        match status {
            s if s.is_success() => Ok(body["metadata"]["deletionTimestamp"].is_null()),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Ok(false),
            s => bail!("{what}: {s} {}", body["message"].as_str().unwrap_or("")),
        }
    }
}

fn in_cluster_server() -> Result<String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").context("KUBERNETES_SERVICE_HOST is not set")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    Ok(if host.contains(':') { format!("https://[{host}]:{port}") } else { format!("https://{host}:{port}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_state_reads_ready_runtime_and_heartbeat() {
        let node = serde_json::json!({
            "metadata": {"name": "n1", "labels": {"berth.dev/runtime": "pending"}},
            "status": {
                "nodeInfo": {"containerRuntimeVersion": "berth://0.1.0"},
                "conditions": [
                    {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2026-05-01T10:00:00Z"},
                    {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-05-01T10:00:30Z"}
                ]
            }
        });
        let s = NodeState::from_json(&node);
        assert!(s.ready);
        assert_eq!(s.labels[LABEL], "pending");
        let t = |x: &str| humantime::parse_rfc3339(x).unwrap();
        assert!(s.ready_on("berth", t("2026-05-01T10:00:30.400Z")), "same second counts");
        assert!(!s.ready_on("berth", t("2026-05-01T10:00:31.5Z")), "a heartbeat from before is stale");
        assert!(!s.ready_on("containerd", t("2026-05-01T10:00:00Z")));

        let not_ready =
            serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
        let s = NodeState::from_json(&not_ready);
        assert!(!s.ready && s.heartbeat.is_none() && !s.ready_on("berth", SystemTime::UNIX_EPOCH));
    }
}
