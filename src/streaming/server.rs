//! The streaming server's HTTP side: one listener (plain or TLS), the request cache behind the
//! URLs the CRI calls hand out, and the routing of `/exec/<token>`, `/attach/<token>` and
//! `/portforward/<token>` to an upgrade — SPDY/3.1 (`Upgrade: SPDY/3.1`, subprotocol from
//! `X-Stream-Protocol-Version`) or WebSocket (subprotocol from `Sec-WebSocket-Protocol`) — and
//! from there to the remotecommand or port-forward protocol. Every connection and session runs as
//! a task the server tracks, and all of them are dropped when the server shuts down. This module
//! must never serve a request without a valid, unused, unexpired token, and never knows what the
//! backend does with a session.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

use super::Backend;
use super::cache::{CachedRequest, RequestCache};
use super::portforward;
use super::remotecommand::{self, Command, Options};
use super::spdy::{Role, Session, SessionConfig};
use super::websocket::{self, Codec};
use crate::error::{Error, Result};

/// How long a streaming URL stays valid by default (the kubelet's).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Requests waiting for their client at once (the kubelet's limit).
const MAX_IN_FLIGHT: usize = 1000;
/// How long a client has to open the streams of a session (the kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// A session with no traffic either way for this long is closed (the kubelet's default).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// How long a client has to finish the TLS handshake and send its request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

const X_STREAM_PROTOCOL_VERSION: &str = "x-stream-protocol-version";
const X_ACCEPTED_STREAM_PROTOCOL_VERSIONS: &str = "x-accepted-stream-protocol-versions";

/// An exec to run once its client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The container to run the command in.
    pub container_id: String,
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// Whether the command gets a terminal (stderr then goes to stdout).
    pub tty: bool,
    /// Whether the client sends input.
    pub stdin: bool,
    /// Whether the client wants stdout.
    pub stdout: bool,
    /// Whether the client wants stderr (not with `tty`).
    pub stderr: bool,
}

/// An attach to a running container once its client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// The container to attach to.
    pub container_id: String,
    /// Whether the container has a terminal.
    pub tty: bool,
    /// Whether the client sends input.
    pub stdin: bool,
    /// Whether the client wants stdout.
    pub stdout: bool,
    /// Whether the client wants stderr (not with `tty`).
    pub stderr: bool,
}

/// A port forward into a pod once its client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    /// The pod whose network namespace the ports are in.
    pub pod_sandbox_id: String,
    /// The only ports the client may reach; empty means any.
    pub ports: Vec<u16>,
}

/// Where the server's certificate and key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key of the leaf certificate.
    pub key_file: PathBuf,
}

/// The streaming server: hands out URLs for exec, attach and port-forward requests and serves
/// them when their clients connect.
pub struct StreamServer {
    listener: TcpListener,
    addr: SocketAddr,
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    cache: RequestCache,
    tls: Option<TlsAcceptor>,
    base_url: String,
    tasks: Mutex<Tasks>,
}

/// Every connection and session running, so shutdown can drop them all.
#[derive(Default)]
struct Tasks {
    set: JoinSet<()>,
    stopped: bool,
}

impl Inner {
    /// Runs `task` tracked, unless the server is shutting down.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.stopped {
            return;
        }
        // Reap what finished so the set stays the size of what runs.
        while tasks.set.try_join_next().is_some() {}
        tasks.set.spawn(task);
    }

    /// Stops taking tasks and drops every one running.
    async fn stop(&self) {
        let mut set = {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.stopped = true;
            std::mem::take(&mut tasks.set)
        };
        set.shutdown().await;
    }
}

impl StreamServer {
    /// Listens on `addr` (port 0 picks a free port), with TLS if `tls` is given. Streaming URLs
    /// are valid for `token_ttl` ([`DEFAULT_TOKEN_TTL`] is the kubelet's) and name the bound
    /// address, so bind a concrete address the clients can reach, not a wildcard.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<TlsConfig>,
        backend: Arc<dyn Backend>,
        token_ttl: Duration,
    ) -> Result<StreamServer> {
        let tls = tls.map(|t| tls_acceptor(&t)).transpose()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::unavailable(format!("binding the streaming server to {addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::internal(format!("reading the streaming server's address: {e}")))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let inner = Inner {
            backend,
            cache: RequestCache::new(token_ttl, MAX_IN_FLIGHT),
            tls,
            base_url: format!("{scheme}://{addr}"),
            tasks: Mutex::new(Tasks::default()),
        };
        Ok(StreamServer { listener, addr, inner: Arc::new(inner) })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers an exec and returns the single-use URL its client must connect to.
    pub fn get_exec(&self, req: ExecRequest) -> Result<String> {
        let opts = Options { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
        remotecommand::validate(&req.container_id, opts)?;
        if req.cmd.is_empty() {
            return Err(Error::invalid("missing required cmd"));
        }
        self.url("exec", CachedRequest::Exec(req))
    }

    /// Registers an attach and returns the single-use URL its client must connect to.
    pub fn get_attach(&self, req: AttachRequest) -> Result<String> {
        let opts = Options { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
        remotecommand::validate(&req.container_id, opts)?;
        self.url("attach", CachedRequest::Attach(req))
    }

    /// Registers a port forward and returns the single-use URL its client must connect to.
    pub fn get_port_forward(&self, req: PortForwardRequest) -> Result<String> {
        if req.pod_sandbox_id.is_empty() {
            return Err(Error::invalid("missing required pod_sandbox_id"));
        }
        if req.ports.contains(&0) {
            return Err(Error::invalid(format!("port forward to pod {} names port 0", req.pod_sandbox_id)));
        }
        self.url("portforward", CachedRequest::PortForward(req))
    }

    fn url(&self, kind: &str, req: CachedRequest) -> Result<String> {
        let token = self.inner.cache.insert(req)?;
        Ok(format!("{}/{kind}/{token}", self.inner.base_url))
    }

    /// Serves connections until `shutdown` resolves, then drops every connection and session
    /// (which ends the backend's calls) and returns.
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => self.inner.spawn(connection(self.inner.clone(), tcp, peer)),
                    Err(e) => {
                        // Out of file descriptors and the like: give the system a moment.
                        tracing::warn!(error = %e, "streaming server failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        self.inner.stop().await;
    }
}

fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::invalid(format!("reading streaming certificate {}: {e}", tls.cert_file.display()))
        })?;
    if chain.is_empty() {
        return Err(Error::invalid(format!("no certificate in {}", tls.cert_file.display())));
    }
    // A key parse error never includes key material.
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| Error::invalid(format!("reading streaming key {}: {e}", tls.key_file.display())))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("configuring streaming tls: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                Error::invalid(format!(
                    "streaming certificate {} and key do not fit: {e}",
                    tls.cert_file.display()
                ))
            })?;
    // Upgrades exist only in HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn connection(inner: Arc<Inner>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    match inner.tls.clone() {
        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => serve_http(inner, tls, peer).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "streaming tls handshake failed"),
            Err(_) => tracing::debug!(%peer, "streaming tls handshake timed out"),
        },
        None => serve_http(inner, tcp, peer).await,
    }
}

async fn serve_http<IO>(inner: Arc<Inner>, io: IO, peer: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        async move { Ok::<_, Infallible>(route(&inner, req)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "streaming http connection failed");
    }
}

fn respond(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn not_found() -> Response<Full<Bytes>> {
    respond(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// What a connection's request is, once its token was redeemed.
enum Pending {
    RemoteCommand(Command, Options),
    PortForward(PortForwardRequest),
}

fn route(inner: &Arc<Inner>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some((kind, token)) = req.uri().path().strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return not_found();
    };
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/') {
        return not_found();
    }
    if req.method() != Method::GET && req.method() != Method::POST {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    // The token is spent by this attempt whatever comes of it, as in the kubelet.
    let session = match (kind, inner.cache.consume(token)) {
        ("exec", Some(CachedRequest::Exec(r))) => Pending::RemoteCommand(
            Command::Exec { container_id: r.container_id, cmd: r.cmd },
            Options { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty },
        ),
        ("attach", Some(CachedRequest::Attach(r))) => Pending::RemoteCommand(
            Command::Attach { container_id: r.container_id },
            Options { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty },
        ),
        ("portforward", Some(CachedRequest::PortForward(r))) => Pending::PortForward(r),
        _ => return not_found(),
    };
    let headers = req.headers();
    let upgrade = header_values(headers, header::UPGRADE);
    let connection_upgrade =
        header_values(headers, header::CONNECTION).iter().any(|v| v.eq_ignore_ascii_case("upgrade"));
    let websocket = connection_upgrade && upgrade.iter().any(|v| v.eq_ignore_ascii_case("websocket"));
    let spdy = connection_upgrade && upgrade.iter().any(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    let backend = inner.backend.clone();
    if websocket {
        let protocols: &[&'static str] = match &session {
            Pending::RemoteCommand(..) => remotecommand::WEBSOCKET_PROTOCOLS,
            Pending::PortForward(_) => &[
                portforward::TUNNEL_PROTOCOL,
                portforward::CHANNEL_PROTOCOLS[0],
                portforward::CHANNEL_PROTOCOLS[1],
            ],
        };
        let (resp, protocol) = match websocket_handshake(&req, protocols) {
            Ok(ok) => ok,
            Err(resp) => return resp,
        };
        let query = req.uri().query().map(str::to_string);
        let ports = match &session {
            Pending::PortForward(r) if protocol != portforward::TUNNEL_PROTOCOL => {
                match portforward::websocket_ports(query.as_deref(), r) {
                    Ok(p) => p,
                    Err(e) => return respond(StatusCode::BAD_REQUEST, format!("{}\n", e.message())),
                }
            }
            _ => Vec::new(),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        inner.spawn(async move {
            let io = match on_upgrade.await {
                Ok(upgraded) => TokioIo::new(upgraded),
                Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
            };
            let ws = WebSocketStream::from_raw_socket(io, WsRole::Server, None).await;
            match session {
                Pending::RemoteCommand(command, opts) => {
                    remotecommand::serve_websocket(ws, protocol, backend, command, opts, STREAM_IDLE_TIMEOUT)
                        .await
                }
                Pending::PortForward(r) if protocol == portforward::TUNNEL_PROTOCOL => {
                    tunnel_port_forward(ws, backend, r).await
                }
                Pending::PortForward(r) => {
                    portforward::serve_websocket(
                        ws,
                        Codec::for_protocol(protocol),
                        ports,
                        backend,
                        r,
                        STREAM_IDLE_TIMEOUT,
                    )
                    .await
                }
            }
        });
        return resp;
    }
    if !spdy {
        return respond(StatusCode::BAD_REQUEST, "unable to upgrade: missing upgrade headers in request\n");
    }
    let protocols = match &session {
        Pending::RemoteCommand(..) => remotecommand::SPDY_PROTOCOLS,
        Pending::PortForward(_) => &[portforward::SPDY_PROTOCOL],
    };
    let offered = header_values(headers, HeaderName::from_static(X_STREAM_PROTOCOL_VERSION));
    let protocol = if offered.is_empty() {
        // Clients from before protocol negotiation speak the first version.
        None
    } else {
        match negotiate(&offered, protocols) {
            Some(p) => Some(p),
            None => {
                let mut resp = respond(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {protocols:?}\n"
                    ),
                );
                for p in protocols {
                    resp.headers_mut()
                        .append(X_ACCEPTED_STREAM_PROTOCOL_VERSIONS, HeaderValue::from_static(p));
                }
                return resp;
            }
        }
    };
    let mut resp = respond(StatusCode::SWITCHING_PROTOCOLS, "");
    resp.headers_mut().remove(header::CONTENT_TYPE);
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Some(p) = protocol {
        resp.headers_mut().insert(X_STREAM_PROTOCOL_VERSION, HeaderValue::from_static(p));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    inner.spawn(async move {
        let io = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => return tracing::debug!(error = %e, "spdy upgrade failed"),
        };
        let spdy = Session::new(
            io,
            Role::Server,
            SessionConfig { idle_timeout: STREAM_IDLE_TIMEOUT, ..SessionConfig::default() },
        );
        match session {
            Pending::RemoteCommand(command, opts) => {
                let protocol = protocol.unwrap_or(remotecommand::V1);
                remotecommand::serve_spdy(spdy, protocol, backend, command, opts, STREAM_CREATION_TIMEOUT)
                    .await
            }
            Pending::PortForward(r) => {
                portforward::serve_spdy(spdy, backend, r, STREAM_CREATION_TIMEOUT).await
            }
        }
    });
    resp
}

/// SPDY carried in WebSocket messages: the port-forward protocol over the unwrapped bytes.
async fn tunnel_port_forward<S>(ws: WebSocketStream<S>, backend: Arc<dyn Backend>, req: PortForwardRequest)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, pump) = websocket::byte_stream(ws);
    let session = Session::new(
        io,
        Role::Server,
        SessionConfig { idle_timeout: STREAM_IDLE_TIMEOUT, ..SessionConfig::default() },
    );
    let serve = portforward::serve_spdy(session, backend, req, STREAM_CREATION_TIMEOUT);
    tokio::pin!(pump, serve);
    tokio::select! {
        // The client closed the WebSocket: the session has nothing more to read.
        _ = &mut pump => {}
        _ = &mut serve => {
            // Give the close a moment to reach the client.
            let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
        }
    }
}

/// Every value of `name`, split at commas and trimmed (HTTP list syntax).
fn header_values(headers: &HeaderMap, name: impl header::AsHeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first protocol the client offers that the server speaks (the client's preference wins,
/// as in the kubelet).
fn negotiate(offered: &[String], supported: &[&'static str]) -> Option<&'static str> {
    offered.iter().find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
}

/// Checks a WebSocket opening handshake and builds the 101 answer with the negotiated
/// subprotocol ("" when the client offered none: binary channels, first protocol version).
fn websocket_handshake(
    req: &Request<Incoming>,
    supported: &[&'static str],
) -> std::result::Result<(Response<Full<Bytes>>, &'static str), Response<Full<Bytes>>> {
    if req.method() != Method::GET {
        return Err(respond(StatusCode::METHOD_NOT_ALLOWED, "websocket handshake must be a GET\n"));
    }
    let headers = req.headers();
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        let mut resp = respond(StatusCode::BAD_REQUEST, "unsupported websocket version\n");
        resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(resp);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(respond(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n"));
    };
    let offered = header_values(headers, header::SEC_WEBSOCKET_PROTOCOL);
    let protocol = if offered.is_empty() {
        ""
    } else {
        negotiate(&offered, supported).ok_or_else(|| {
            respond(
                StatusCode::FORBIDDEN,
                format!("requested protocol(s) are not supported: {offered:?}; supports {supported:?}\n"),
            )
        })?
    };
    let mut resp = respond(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| respond(StatusCode::BAD_REQUEST, "bad key\n"))?;
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if !protocol.is_empty() {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }
    Ok((resp, protocol))
}
