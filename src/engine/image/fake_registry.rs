//! An in-process OCI registry for tests (axum on 127.0.0.1:0, plain or TLS): manifests and blobs
//! in memory, optional basic or bearer authentication with its own token endpoint, and switches
//! for misbehaviour (no digest header, no HEAD, ignored ranges, stalled or slow bodies, redirects,
//! fixed error statuses). Every request is logged for assertions. Test-only; never shipped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::engine::digest::Digest;

/// How the fake registry wants to be authenticated.
#[derive(Clone, Default)]
pub(crate) enum FakeAuth {
    #[default]
    None,
    /// `WWW-Authenticate: Basic`; these credentials on every request.
    Basic { user: String, pass: String },
    /// `WWW-Authenticate: Bearer` with the fake's `/token` endpoint. With `creds`, the token
    /// endpoint demands them (basic auth on GET, `grant_type=password` on POST); with
    /// `refresh_token`, it also accepts that identity token (POST `grant_type=refresh_token`, or
    /// as the password of a basic-authenticated GET).
    Bearer { creds: Option<(String, String)>, refresh_token: Option<String> },
    /// Only this bearer token is accepted; there is no token endpoint.
    RegistryToken(String),
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub(crate) struct Logged {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Logged {
    pub fn authorization(&self) -> Option<&str> {
        self.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
    }
}

/// The fake's content and behaviour; tests change it through [`FakeRegistry::state`].
#[derive(Default)]
pub(crate) struct FakeState {
    /// (repository, tag or digest) → (media type, body).
    pub manifests: HashMap<(String, String), (String, Bytes)>,
    /// (repository, digest) → body.
    pub blobs: HashMap<(String, String), Bytes>,
    pub auth: FakeAuth,
    pub omit_digest_header: bool,
    /// Answer 405 to HEAD.
    pub no_head: bool,
    pub ignore_range: bool,
    /// Blob bodies stop after this many bytes and the connection stays open.
    pub stall_after: Option<usize>,
    /// Blob bodies come in chunks of this many bytes with this pause before each.
    pub slow_chunks: Option<(usize, Duration)>,
    /// Answer every registry API request with this status.
    pub status: Option<u16>,
    /// Blob GETs are redirected (307) to the same path on this base URL.
    pub redirect_blobs: Option<String>,
    /// Whether `/token` accepts POST (else 405).
    pub token_post: bool,
    pub token_expires_in: Option<u64>,
    pub requests: Vec<Logged>,
    pub tokens_issued: usize,
    /// Valid token → the scopes it was issued for.
    pub tokens: HashMap<String, String>,
    base_url: String,
}

/// A running fake registry; stopped when dropped.
pub(crate) struct FakeRegistry {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRegistry {
    /// A plain HTTP registry.
    pub async fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Self::state_for(format!("http://{addr}"));
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRegistry { addr, state, task }
    }

    /// An HTTPS registry with this server configuration.
    pub async fn start_tls(config: rustls::ServerConfig) -> FakeRegistry {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let state = Self::state_for(format!("https://{addr}"));
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRegistry { addr, state, task }
    }

    fn state_for(base_url: String) -> Arc<Mutex<FakeState>> {
        Arc::new(Mutex::new(FakeState { base_url, token_post: true, ..Default::default() }))
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// `127.0.0.1:<port>`, the domain of references to this registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stores a blob; returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        self.state().blobs.insert((repo.into(), d.to_string()), Bytes::copy_from_slice(data));
        d
    }

    /// Stores a manifest under its digest and, if given, a tag; returns its digest.
    pub fn push_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, body: &[u8]) -> Digest {
        let d = Digest::of(body);
        let entry = (media_type.to_string(), Bytes::copy_from_slice(body));
        let mut st = self.state();
        st.manifests.insert((repo.into(), d.to_string()), entry.clone());
        if let Some(t) = tag {
            st.manifests.insert((repo.into(), t.into()), entry);
        }
        d
    }

    /// Requests to the registry API (not the token endpoint), in order.
    pub fn api_requests(&self) -> Vec<Logged> {
        self.state().requests.iter().filter(|r| r.path.starts_with("/v2/")).cloned().collect()
    }
}

struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            // A client that refuses our certificate just fails its handshake.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

fn respond(status: u16, headers: &[(&str, String)], body: Body) -> Response {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(body).unwrap()
}

async fn handle(State(state): State<Arc<Mutex<FakeState>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let logged = Logged {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let mut st = state.lock().unwrap();
    st.requests.push(logged.clone());
    if logged.path == "/token" {
        return token(&mut st, &logged);
    }
    let Some(rest) = logged.path.strip_prefix("/v2/") else { return respond(404, &[], Body::empty()) };
    let (repo, kind, object) = match (rest.rfind("/manifests/"), rest.rfind("/blobs/")) {
        (Some(i), _) => (&rest[..i], "manifests", &rest[i + "/manifests/".len()..]),
        (None, Some(i)) => (&rest[..i], "blobs", &rest[i + "/blobs/".len()..]),
        _ => return respond(404, &[], Body::empty()),
    };
    if let Some(denied) = check_auth(&st, &logged, repo) {
        return denied;
    }
    if let Some(s) = st.status {
        return respond(
            s,
            &[],
            Body::from(r#"{"errors":[{"code":"UNAVAILABLE","message":"fake failure"}]}"#),
        );
    }
    if parts.method == Method::HEAD && st.no_head {
        return respond(405, &[], Body::empty());
    }
    let not_found = |code: &str| {
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"unknown"}}]}}"#);
        respond(404, &[("content-type", "application/json".into())], Body::from(body))
    };
    if kind == "manifests" {
        let Some((media_type, data)) = st.manifests.get(&(repo.to_string(), object.to_string())).cloned()
        else {
            return not_found("MANIFEST_UNKNOWN");
        };
        let mut headers = vec![("content-type", media_type), ("content-length", data.len().to_string())];
        if !st.omit_digest_header {
            headers.push(("docker-content-digest", Digest::of(&data).to_string()));
        }
        return respond(200, &headers, Body::from(data));
    }
    if let Some(base) = &st.redirect_blobs
        && parts.method == Method::GET
    {
        return respond(307, &[("location", format!("{base}{}", logged.path))], Body::empty());
    }
    let Some(data) = st.blobs.get(&(repo.to_string(), object.to_string())).cloned() else {
        return not_found("BLOB_UNKNOWN");
    };
    let range = logged
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|_| !st.ignore_range);
    let (status, mut headers, data) = match range {
        Some(o) if o < data.len() => {
            let cr = format!("bytes {o}-{}/{}", data.len() - 1, data.len());
            (206, vec![("content-range", cr)], data.slice(o..))
        }
        Some(_) => return respond(416, &[], Body::empty()),
        None => (200, vec![], data),
    };
    headers.push(("content-length", data.len().to_string()));
    let body = if let Some(n) = st.stall_after {
        let first = data.slice(..n.min(data.len()));
        Body::from_stream(
            futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures_util::stream::pending()),
        )
    } else if let Some((size, pause)) = st.slow_chunks {
        let chunks: Vec<Bytes> = data.chunks(size).map(Bytes::copy_from_slice).collect();
        Body::from_stream(futures_util::stream::iter(chunks).then(move |c| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::io::Error>(c)
        }))
    } else {
        Body::from(data)
    };
    respond(status, &headers, body)
}

/// None if the request may proceed, else the 401 to send.
fn check_auth(st: &FakeState, req: &Logged, repo: &str) -> Option<Response> {
    let got = req.authorization();
    let scope = format!("repository:{repo}:pull");
    let bearer_challenge = || {
        let c = format!(r#"Bearer realm="{}/token",service="fake",scope="{scope}""#, st.base_url);
        respond(401, &[("www-authenticate", c)], Body::empty())
    };
    match &st.auth {
        FakeAuth::None => None,
        FakeAuth::Basic { user, pass } => (got != Some(basic(user, pass).as_str()))
            .then(|| respond(401, &[("www-authenticate", r#"Basic realm="fake""#.into())], Body::empty())),
        FakeAuth::Bearer { .. } => {
            let ok = got
                .and_then(|a| a.strip_prefix("Bearer "))
                .and_then(|t| st.tokens.get(t))
                .is_some_and(|scopes| scopes.split(' ').any(|s| s == scope));
            (!ok).then(bearer_challenge)
        }
        FakeAuth::RegistryToken(t) => (got != Some(format!("Bearer {t}").as_str())).then(bearer_challenge),
    }
}

fn token(st: &mut FakeState, req: &Logged) -> Response {
    let FakeAuth::Bearer { creds, refresh_token } = st.auth.clone() else {
        return respond(404, &[], Body::empty());
    };
    let pairs = |s: &str| -> Vec<(String, String)> {
        reqwest::Url::parse(&format!("http://x/?{s}")).unwrap().query_pairs().into_owned().collect()
    };
    let (allowed, scopes, field) = if req.method == Method::POST {
        if !st.token_post {
            return respond(405, &[], Body::empty());
        }
        let form = pairs(&req.body);
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let allowed = match get("grant_type").as_str() {
            "refresh_token" => refresh_token.as_deref() == Some(get("refresh_token").as_str()),
            "password" => creds.as_ref().is_some_and(|(u, p)| *u == get("username") && *p == get("password")),
            _ => false,
        };
        (allowed, get("scope"), "access_token")
    } else {
        let got = req.authorization();
        let allowed = match (&creds, &refresh_token) {
            (None, None) => true,
            _ => {
                creds.as_ref().is_some_and(|(u, p)| got == Some(basic(u, p).as_str()))
                    || refresh_token.as_ref().is_some_and(|t| {
                        got.and_then(|g| g.strip_prefix("Basic "))
                            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                            .and_then(|b| String::from_utf8(b).ok())
                            .is_some_and(|up| up.split_once(':').is_some_and(|(_, p)| p == t))
                    })
            }
        };
        let scopes: Vec<String> =
            pairs(&req.query).into_iter().filter(|(k, _)| k == "scope").map(|(_, v)| v).collect();
        (allowed, scopes.join(" "), "token")
    };
    if !allowed {
        return respond(401, &[], Body::from("denied"));
    }
    st.tokens_issued += 1;
    let tok = format!("tok{}", st.tokens_issued);
    st.tokens.insert(tok.clone(), scopes);
    let mut answer = serde_json::json!({ field: tok });
    if let Some(e) = st.token_expires_in {
        answer["expires_in"] = e.into();
    }
    respond(200, &[("content-type", "application/json".into())], Body::from(answer.to_string()))
}

/// A test CA, a server certificate for 127.0.0.1/localhost and a client certificate, both
/// signed by the CA.
pub(crate) struct TestPki {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "berth test ca");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .signed_by(&client_key, &issuer)
            .unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
            ca_der: ca_cert.der().clone(),
            server_chain: vec![leaf.der().clone()],
            server_key: rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        }
    }

    /// The server's TLS configuration, optionally demanding a client certificate from the CA.
    pub fn server(&self, require_client_cert: bool) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
            b.with_client_cert_verifier(verifier)
        } else {
            b.with_no_client_auth()
        };
        b.with_single_cert(self.server_chain.clone(), self.server_key.clone_key()).unwrap()
    }
}
