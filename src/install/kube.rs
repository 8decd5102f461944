//! The few Kubernetes API calls the installer makes: read its Node (readiness, runtime version),
//! label it, and ask whether its DaemonSet still exists. The pod uses its service account; the host
//! units (switch, uninstall) act as the node itself, with the kubelet's own kubeconfig: the pod's
//! token dies with the pod and its ServiceAccount, which `helm uninstall` deletes before the
//! uninstall has run. A node may read its own Node and set labels outside `kubernetes.io` on it
//! (NodeRestriction), which is all the host units do.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use base64::Engine;
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// In-cluster credentials of a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The kubelet's kubeconfig on kubeadm and kind nodes.
pub const KUBELET_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";

/// How a client proves who it is.
pub enum Auth {
    Token(String),
    /// A client certificate and its key, PEM.
    Cert {
        cert: Vec<u8>,
        key: Vec<u8>,
    },
}

/// What a kubeconfig with one cluster and one user (the kubelet's) says.
pub struct Kubeconfig {
    pub server: String,
    pub ca: Vec<u8>,
    pub auth: Auth,
}

/// Reads a kubeconfig with a single cluster and user, as kubeadm writes the kubelet's: the keys are
/// found by name wherever they are (no YAML parser: only these scalars matter), and a file naming
/// two servers or two users is refused rather than guessed at. Relative file names are relative to
/// `dir`, the kubeconfig's directory, as kubectl reads them.
pub fn parse_kubeconfig(text: &str, dir: &Path) -> Result<Kubeconfig> {
    const KEYS: [&str; 8] = [
        "server",
        "certificate-authority-data",
        "certificate-authority",
        "client-certificate-data",
        "client-certificate",
        "client-key-data",
        "client-key",
        "token",
    ];
    let mut found: std::collections::BTreeMap<&str, String> = Default::default();
    for line in text.lines() {
        let l = line.trim_start().trim_start_matches("- ").trim_start();
        let Some((key, value)) = l.split_once(':') else { continue };
        let Some(key) = KEYS.iter().find(|k| **k == key) else { continue };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        if found.insert(key, value.to_string()).is_some() {
            bail!("the kubeconfig names more than one {key}: only a single cluster and user are read");
        }
    }
    let data = |key: &str| -> Result<Option<Vec<u8>>> {
        if let Some(v) = found.get(format!("{key}-data").as_str()) {
            let d =
                base64::engine::general_purpose::STANDARD.decode(v).with_context(|| format!("{key}-data"))?;
            return Ok(Some(d));
        }
        match found.get(key) {
            Some(p) => Ok(Some(std::fs::read(dir.join(p)).with_context(|| format!("reading {key} {p}"))?)),
            None => Ok(None),
        }
    };
    let server = found.get("server").context("the kubeconfig names no server")?.clone();
    let ca = data("certificate-authority")?.context("the kubeconfig names no certificate authority")?;
    let auth = match (data("client-certificate")?, data("client-key")?, found.get("token")) {
        (Some(cert), Some(key), _) => Auth::Cert { cert, key },
        (_, _, Some(t)) => Auth::Token(t.clone()),
        _ => bail!("the kubeconfig has neither a client certificate and key nor a token"),
    };
    Ok(Kubeconfig { server, ca, auth })
}

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

/// An API client.
pub struct Kube {
    server: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Kube {
    /// A pod's credentials: a directory holding `token` and `ca.crt`; the server comes from
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`.
    pub fn from_dir(dir: &Path) -> Result<Kube> {
        let token = std::fs::read_to_string(dir.join("token"))
            .with_context(|| format!("reading {}/token", dir.display()))?;
        let ca =
            std::fs::read(dir.join("ca.crt")).with_context(|| format!("reading {}/ca.crt", dir.display()))?;
        Kube::new(in_cluster_server()?, Auth::Token(token.trim().to_string()), &ca)
    }

    /// The credentials of a kubeconfig file (the kubelet's, for the host units).
    pub fn from_kubeconfig(path: &Path) -> Result<Kube> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let k = parse_kubeconfig(&text, path.parent().unwrap_or(Path::new("/")))
            .with_context(|| format!("reading {}", path.display()))?;
        Kube::new(k.server, k.auth, &k.ca)
    }

    pub fn new(server: String, auth: Auth, ca_pem: &[u8]) -> Result<Kube> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.context("parsing the cluster CA")?).context("adding the cluster CA")?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("tls versions")?
            .with_root_certificates(roots);
        let (tls, token) = match auth {
            Auth::Token(t) => (tls.with_no_client_auth(), Some(t)),
            Auth::Cert { cert, key } => {
                let chain = CertificateDer::pem_slice_iter(&cert)
                    .collect::<Result<Vec<_>, _>>()
                    .context("parsing the client certificate")?;
                let key = PrivateKeyDer::from_pem_slice(&key).context("parsing the client key")?;
                (tls.with_client_auth_cert(chain, key).context("the client certificate")?, None)
            }
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(crate::engine::image::dns::SystemResolver)
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .context("building the API client")?;
        Ok(Kube { server: server.trim_end_matches('/').to_string(), token, http })
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(StatusCode, serde_json::Value)> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.with_context(|| what.to_string())?;
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
    fn kubeconfigs_of_kubeadm_and_kind_kubelets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client.pem"), "CERT AND KEY").unwrap();
        // kind / kubeadm join: the CA inline, the rotated client certificate by file name.
        let kind = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0EgUEVN\n    server: https://kind-control-plane:6443\n  name: kind\ncontexts:\n- context:\n    cluster: kind\n    user: system:node:kind-worker\n  name: system:node:kind-worker@kind\ncurrent-context: system:node:kind-worker@kind\nkind: Config\nusers:\n- name: system:node:kind-worker\n  user:\n    client-certificate: client.pem\n    client-key: client.pem\n";
        let k = parse_kubeconfig(kind, dir.path()).unwrap();
        assert_eq!(k.server, "https://kind-control-plane:6443");
        assert_eq!(k.ca, b"CA PEM");
        let Auth::Cert { cert, key } = k.auth else { panic!("a client certificate") };
        assert_eq!((cert.as_slice(), key.as_slice()), (&b"CERT AND KEY"[..], &b"CERT AND KEY"[..]));

        // Everything inline, quoted; or a token.
        let inline = "clusters:\n- cluster: {}\n  cluster:\n    server: \"https://10.0.0.1:6443\"\n    certificate-authority-data: Q0E=\nusers:\n- user:\n    token: abc\n";
        let k = parse_kubeconfig(inline, dir.path()).unwrap();
        assert_eq!((k.server.as_str(), k.ca.as_slice()), ("https://10.0.0.1:6443", &b"CA"[..]));
        assert!(matches!(k.auth, Auth::Token(t) if t == "abc"));

        // Two clusters: which one the kubelet uses is not guessed.
        let two = format!("{kind}- cluster:\n    server: https://other:6443\n");
        let err = parse_kubeconfig(&two, dir.path()).err().unwrap().to_string();
        assert!(err.contains("more than one server"), "{err}");
        let none = "clusters:\n- cluster:\n    server: https://x\n    certificate-authority-data: Q0E=\n";
        assert!(parse_kubeconfig(none, dir.path()).is_err(), "no credentials");
    }

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
