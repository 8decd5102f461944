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

impl Drop for StreamServer {
    /// A server dropped without its `serve` finishing still ends every connection and session.
    fn drop(&mut self) {
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.stopped = true;
        tasks.set.abort_all();
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
            Err(resp) => return *resp,
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
            let ws = WebSocketStream::from_raw_socket(io, WsRole::Server, Some(websocket::config())).await;
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

/// The 101 answer and the subprotocol, or the refusal.
type Handshake = std::result::Result<(Response<Full<Bytes>>, &'static str), Box<Response<Full<Bytes>>>>;

/// Checks a WebSocket opening handshake and builds the 101 answer with the negotiated
/// subprotocol ("" when the client offered none: binary channels, first protocol version).
fn websocket_handshake(req: &Request<Incoming>, supported: &[&'static str]) -> Handshake {
    if req.method() != Method::GET {
        return Err(Box::new(respond(StatusCode::METHOD_NOT_ALLOWED, "websocket handshake must be a GET\n")));
    }
    let headers = req.headers();
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        let mut resp = respond(StatusCode::BAD_REQUEST, "unsupported websocket version\n");
        resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(Box::new(resp));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(respond(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n")));
    };
    let offered = header_values(headers, header::SEC_WEBSOCKET_PROTOCOL);
    let protocol = if offered.is_empty() {
        ""
    } else {
        negotiate(&offered, supported).ok_or_else(|| {
            Box::new(respond(
                StatusCode::FORBIDDEN,
                format!("requested protocol(s) are not supported: {offered:?}; supports {supported:?}\n"),
            ))
        })?
    };
    let mut resp = respond(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| Box::new(respond(StatusCode::BAD_REQUEST, "bad key\n")))?;
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if !protocol.is_empty() {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }
    Ok((resp, protocol))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::BytesMut;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{broadcast, mpsc};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::streaming::spdy::frame::{FLAG_FIN, Frame, FrameDecoder};
    use crate::streaming::spdy::{Headers, Stream};
    use crate::streaming::{PortStream, Streams, TermSize};

    const WAIT: Duration = Duration::from_secs(10);

    /// A backend whose commands are scripts of the test's own.
    struct Fake {
        resizes: Mutex<Vec<TermSize>>,
        attach_out: broadcast::Sender<Bytes>,
        attached: AtomicUsize,
        /// Told when a `hang` exec starts and when its call is dropped.
        hang_events: mpsc::UnboundedSender<&'static str>,
    }

    struct Dropped(mpsc::UnboundedSender<&'static str>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.send("dropped");
        }
    }

    #[async_trait::async_trait]
    impl Backend for Fake {
        async fn exec(&self, container_id: &str, cmd: &[String], tty: bool, mut s: Streams) -> Result<i32> {
            assert_eq!(container_id, "c");
            match cmd[0].as_str() {
                "out-err" => {
                    s.stdout.as_mut().unwrap().write_all(b"out\n").await.unwrap();
                    s.stderr.as_mut().unwrap().write_all(b"err\n").await.unwrap();
                    Ok(cmd[1].parse().unwrap())
                }
                "cat" => {
                    let (mut stdin, mut stdout) = (s.stdin.take().unwrap(), s.stdout.take().unwrap());
                    tokio::io::copy(&mut stdin, &mut stdout)
                        .await
                        .map_err(|e| Error::internal(e.to_string()))?;
                    Ok(0)
                }
                "tty" => {
                    assert!(tty && s.stderr.is_none());
                    let (mut stdin, stdout, mut resize) =
                        (s.stdin.take().unwrap(), s.stdout.as_mut().unwrap(), s.resize.take().unwrap());
                    let mut buf = [0u8; 1024];
                    loop {
                        tokio::select! {
                            Some(size) = resize.recv() => {
                                self.resizes.lock().unwrap().push(size);
                                stdout.write_all(format!("{}x{}\n", size.width, size.height).as_bytes()).await.unwrap();
                            }
                            n = stdin.read(&mut buf) => match n.unwrap() {
                                0 => return Ok(0),
                                n => stdout.write_all(&buf[..n]).await.unwrap(),
                            },
                        }
                    }
                }
                "hang" => {
                    let _guard = Dropped(self.hang_events.clone());
                    self.hang_events.send("started").unwrap();
                    std::future::pending().await
                }
                other => panic!("unknown fake command {other}"),
            }
        }

        async fn attach(&self, container_id: &str, _tty: bool, mut s: Streams) -> Result<()> {
            assert_eq!(container_id, "c");
            let mut output = self.attach_out.subscribe();
            let stdout = s.stdout.as_mut().unwrap();
            stdout.write_all(b"attached\n").await.unwrap();
            self.attached.fetch_add(1, Ordering::SeqCst);
            while let Ok(data) = output.recv().await {
                if stdout.write_all(&data).await.is_err() {
                    break;
                }
            }
            Ok(())
        }

        async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<Box<dyn PortStream>> {
            assert_eq!(sandbox_id, "pod");
            if port == 81 {
                return Err(Error::unavailable("dial tcp 127.0.0.1:81: connect: connection refused"));
            }
            // Everything else answers in upper case.
            let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = theirs.read(&mut buf).await {
                    if theirs.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                        return;
                    }
                }
                let _ = theirs.shutdown().await;
            });
            Ok(Box::new(ours))
        }
    }

    struct Harness {
        server: Arc<StreamServer>,
        fake: Arc<Fake>,
        hang_events: mpsc::UnboundedReceiver<&'static str>,
        stop: CancellationToken,
        serving: tokio::task::JoinHandle<()>,
    }

    async fn start(ttl: Duration) -> Harness {
        let (tx, hang_events) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            resizes: Mutex::new(Vec::new()),
            attach_out: broadcast::channel(16).0,
            attached: AtomicUsize::new(0),
            hang_events: tx,
        });
        let server = Arc::new(
            StreamServer::bind("127.0.0.1:0".parse().unwrap(), None, fake.clone(), ttl).await.unwrap(),
        );
        let stop = CancellationToken::new();
        let serving = tokio::spawn({
            let (server, stop) = (server.clone(), stop.clone());
            async move { server.serve(stop.cancelled_owned()).await }
        });
        Harness { server, fake, hang_events, stop, serving }
    }

    fn exec(cmd: &[&str], tty: bool, stdin: bool, stderr: bool) -> ExecRequest {
        ExecRequest {
            container_id: "c".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr,
        }
    }

    /// The address and path of a streaming URL.
    fn split_url(url: &str) -> (String, String) {
        let rest = url.strip_prefix("http://").unwrap();
        let slash = rest.find('/').unwrap();
        (rest[..slash].to_string(), rest[slash..].to_string())
    }

    /// Reads an HTTP response head byte by byte, leaving what follows on the socket.
    async fn read_head(tcp: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = tokio::time::timeout(WAIT, tcp.read_u8()).await.unwrap().unwrap();
            head.push(b);
        }
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    }

    /// Sends an SPDY upgrade request; the response head, and the session if it was upgraded.
    async fn spdy_connect(url: &str, protocols: &[&str]) -> (String, Option<Session>) {
        let (addr, path) = split_url(url);
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        );
        for p in protocols {
            req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp).await;
        let session = head
            .starts_with("http/1.1 101")
            .then(|| Session::new(tcp, Role::Client, SessionConfig::default()));
        (head, session)
    }

    const CLIENT_PROTOCOLS: &[&str] = &[
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ];

    async fn open(session: &Session, ty: &str) -> Stream {
        tokio::time::timeout(WAIT, session.open_stream(Headers::new().with("streamType", ty)))
            .await
            .unwrap()
            .unwrap()
    }

    async fn read_all(s: &Stream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = tokio::time::timeout(WAIT, s.read()).await.unwrap().unwrap() {
            out.extend_from_slice(&b);
        }
        out
    }

    /// Reads `s` until what came contains `want`.
    async fn read_until(s: &Stream, want: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !out.windows(want.len()).any(|w| w == want) {
            let b = tokio::time::timeout(WAIT, s.read()).await.unwrap().unwrap().expect("stream ended early");
            out.extend_from_slice(&b);
        }
        out
    }

    const SUCCESS: &[u8] = br#"{"metadata":{},"status":"Success"}"#;

    #[tokio::test]
    async fn spdy_exec_without_tty_reports_output_and_exit_status() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        for (code, protocols, want) in [
            ("0", CLIENT_PROTOCOLS, SUCCESS.to_vec()),
            ("3", CLIENT_PROTOCOLS, br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [out-err 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#.to_vec()),
            // Before v4 the error stream carries only a failure's text.
            ("3", &CLIENT_PROTOCOLS[3..], b"command terminated with non-zero exit code: error executing command [out-err 3], exit code 3".to_vec()),
            ("0", &CLIENT_PROTOCOLS[3..], Vec::new()),
        ] {
            let url = h.server.get_exec(exec(&["out-err", code], false, false, true)).unwrap();
            assert!(url.starts_with(&format!("http://{}/exec/", h.server.addr())), "{url}");
            let (head, session) = spdy_connect(&url, protocols).await;
            let session = session.unwrap_or_else(|| panic!("not upgraded: {head}"));
            assert!(head.contains(&format!("x-stream-protocol-version: {}\r\n", protocols[0].replace("v5", "v4"))), "{head}");
            assert!(head.contains("upgrade: spdy/3.1\r\n"), "{head}");
            let error = open(&session, "error").await;
            let stdout = open(&session, "stdout").await;
            let stderr = open(&session, "stderr").await;
            assert_eq!(read_all(&stdout).await, b"out\n");
            assert_eq!(read_all(&stderr).await, b"err\n");
            assert_eq!(String::from_utf8(read_all(&error).await).unwrap(), String::from_utf8(want).unwrap());
            tokio::time::timeout(WAIT, session.done()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn spdy_exec_echoes_stdin() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["cat"], false, true, false)).unwrap();
        let session = spdy_connect(&url, CLIENT_PROTOCOLS).await.1.unwrap();
        let error = open(&session, "error").await;
        let stdin = open(&session, "stdin").await;
        let stdout = open(&session, "stdout").await;
        // More than a window's worth, so flow control is exercised both ways.
        let input: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
        let (_, echoed) = tokio::join!(
            async {
                stdin.write(&input).await.unwrap();
                stdin.close();
            },
            read_all(&stdout)
        );
        assert!(echoed == input, "echoed {} bytes of {}", echoed.len(), input.len());
        assert_eq!(read_all(&error).await, SUCCESS);
    }

    #[tokio::test]
    async fn spdy_exec_with_tty_delivers_resizes() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["tty"], true, true, false)).unwrap();
        let session = spdy_connect(&url, CLIENT_PROTOCOLS).await.1.unwrap();
        let error = open(&session, "error").await;
        let stdin = open(&session, "stdin").await;
        let stdout = open(&session, "stdout").await;
        let resize = open(&session, "resize").await;
        resize.write(b"{\"Width\":100,\"Height\":30}\n{\"Width\":").await.unwrap();
        read_until(&stdout, b"100x30\n").await;
        resize.write(b"120,\"Height\":40}\n").await.unwrap();
        read_until(&stdout, b"120x40\n").await;
        stdin.write(b"typed").await.unwrap();
        read_until(&stdout, b"typed").await;
        stdin.close();
        assert_eq!(read_all(&error).await, SUCCESS);
        assert_eq!(
            *h.fake.resizes.lock().unwrap(),
            vec![TermSize { width: 100, height: 30 }, TermSize { width: 120, height: 40 }]
        );
    }

    #[tokio::test]
    async fn spdy_attach_serves_several_clients_at_once() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let attach =
            AttachRequest { container_id: "c".into(), tty: false, stdin: false, stdout: true, stderr: false };
        let mut clients = Vec::new();
        for _ in 0..2 {
            let url = h.server.get_attach(attach.clone()).unwrap();
            let session = spdy_connect(&url, CLIENT_PROTOCOLS).await.1.unwrap();
            let error = open(&session, "error").await;
            let stdout = open(&session, "stdout").await;
            read_until(&stdout, b"attached\n").await;
            clients.push((session, error, stdout));
        }
        assert_eq!(h.fake.attached.load(Ordering::SeqCst), 2);
        h.fake.attach_out.send(Bytes::from_static(b"hello\n")).unwrap();
        for (_, _, stdout) in &clients {
            assert_eq!(read_until(stdout, b"hello\n").await, b"hello\n");
        }
        // One client detaches; the other keeps receiving.
        let (first, _, _) = clients.remove(0);
        drop(first);
        h.fake.attach_out.send(Bytes::from_static(b"bye\n")).unwrap();
        assert_eq!(read_until(&clients[0].2, b"bye\n").await, b"bye\n");
    }

    #[tokio::test]
    async fn exec_is_dropped_when_the_client_goes_away_or_the_server_stops() {
        let mut h = start(DEFAULT_TOKEN_TTL).await;
        for stop_server in [false, true] {
            let url = h.server.get_exec(exec(&["hang"], false, false, false)).unwrap();
            let session = spdy_connect(&url, CLIENT_PROTOCOLS).await.1.unwrap();
            let _error = open(&session, "error").await;
            let _stdout = open(&session, "stdout").await;
            assert_eq!(tokio::time::timeout(WAIT, h.hang_events.recv()).await.unwrap(), Some("started"));
            if stop_server {
                h.stop.cancel();
                tokio::time::timeout(WAIT, &mut h.serving).await.unwrap().unwrap();
            } else {
                drop(session);
            }
            assert_eq!(tokio::time::timeout(WAIT, h.hang_events.recv()).await.unwrap(), Some("dropped"));
        }
    }

    #[tokio::test]
    async fn tokens_are_single_use_bound_to_their_kind_and_expire() {
        let h = start(Duration::from_millis(300)).await;
        let url = h.server.get_exec(exec(&["cat"], false, true, false)).unwrap();
        // The token of an exec is no good for an attach, and is spent by the attempt.
        let (head, _) = spdy_connect(&url.replace("/exec/", "/attach/"), CLIENT_PROTOCOLS).await;
        assert!(head.starts_with("http/1.1 404"), "{head}");
        let (head, _) = spdy_connect(&url, CLIENT_PROTOCOLS).await;
        assert!(head.starts_with("http/1.1 404"), "{head}");

        let url = h.server.get_exec(exec(&["cat"], false, true, false)).unwrap();
        let (head, session) = spdy_connect(&url, CLIENT_PROTOCOLS).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        drop(session);
        let (head, _) = spdy_connect(&url, CLIENT_PROTOCOLS).await;
        assert!(head.starts_with("http/1.1 404"), "{head}");

        let url = h.server.get_exec(exec(&["cat"], false, true, false)).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (head, _) = spdy_connect(&url, CLIENT_PROTOCOLS).await;
        assert!(head.starts_with("http/1.1 404"), "{head}");

        let base = format!("http://{}", h.server.addr());
        for path in ["/exec/unknown", "/exec/", "/other/x", "/"] {
            let (head, _) = spdy_connect(&format!("{base}{path}"), CLIENT_PROTOCOLS).await;
            assert!(head.starts_with("http/1.1 404"), "{path}: {head}");
        }
        // No protocol both sides speak: refused, with what the server speaks.
        let url = h.server.get_exec(exec(&["cat"], false, true, false)).unwrap();
        let (head, _) = spdy_connect(&url, &["v9.channel.k8s.io"]).await;
        assert!(
            head.starts_with("http/1.1 403")
                && head.contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"),
            "{head}"
        );
        // Requests are checked when registered, as the kubelet does.
        assert!(h.server.get_exec(exec(&["cat"], true, true, true)).is_err());
        assert!(
            h.server
                .get_port_forward(PortForwardRequest { pod_sandbox_id: String::new(), ports: vec![] })
                .is_err()
        );
    }

    async fn forward_pair(session: &Session, port: u16, request_id: u32) -> (Stream, Stream) {
        let headers = |ty: &str| {
            Headers::new()
                .with("streamType", ty)
                .with("port", &port.to_string())
                .with("requestID", &request_id.to_string())
        };
        // client-go opens the error stream first and never writes to it.
        let error = tokio::time::timeout(WAIT, session.open_stream(headers("error"))).await.unwrap().unwrap();
        error.close();
        let data = tokio::time::timeout(WAIT, session.open_stream(headers("data"))).await.unwrap().unwrap();
        (data, error)
    }

    #[tokio::test]
    async fn spdy_port_forward_runs_pairs_concurrently_and_reports_errors() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h
            .server
            .get_port_forward(PortForwardRequest { pod_sandbox_id: "pod".into(), ports: vec![80, 81] })
            .unwrap();
        let (head, session) = spdy_connect(&url, &["portforward.k8s.io"]).await;
        assert!(head.contains("x-stream-protocol-version: portforward.k8s.io\r\n"), "{head}");
        let session = session.unwrap();
        let (data0, error0) = forward_pair(&session, 80, 0).await;
        let (data1, error1) = forward_pair(&session, 80, 1).await;
        // Both connections open at once: each answers on its own.
        data1.write(b"second").await.unwrap();
        data0.write(b"first").await.unwrap();
        assert_eq!(read_until(&data0, b"FIRST").await, b"FIRST");
        assert_eq!(read_until(&data1, b"SECOND").await, b"SECOND");
        data0.close();
        data1.close();
        assert_eq!(read_all(&data0).await, b"");
        assert_eq!(read_all(&error0).await, b"");
        assert_eq!(read_all(&error1).await, b"");

        let (data, error) = forward_pair(&session, 81, 2).await;
        let msg = String::from_utf8(read_all(&error).await).unwrap();
        assert!(
            msg.starts_with("error forwarding port 81 to pod pod, uid : ")
                && msg.contains("connection refused"),
            "{msg}"
        );
        assert_eq!(read_all(&data).await, b"");

        let (_data, error) = forward_pair(&session, 82, 3).await;
        let msg = String::from_utf8(read_all(&error).await).unwrap();
        assert!(msg.contains("port 82 is not one of the ports"), "{msg}");
    }

    async fn ws_connect(url: &str, protocol: &str) -> (WebSocketStream<TcpStream>, String) {
        let (addr, path) = split_url(url);
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol).unwrap());
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        let chosen = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (ws, chosen)
    }

    /// Channel messages until the server closes: the data of each channel, concatenated.
    async fn ws_collect(ws: &mut WebSocketStream<TcpStream>) -> std::collections::BTreeMap<u8, Vec<u8>> {
        let mut channels = std::collections::BTreeMap::new();
        while let Some(msg) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            match msg.unwrap() {
                Message::Binary(b) => {
                    channels.entry(b[0]).or_insert_with(Vec::new).extend_from_slice(&b[1..])
                }
                Message::Close(_) => {}
                other => panic!("unexpected message {other:?}"),
            }
        }
        channels
    }

    #[tokio::test]
    async fn websocket_v4_exec_reports_output_and_status() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["out-err", "3"], false, false, true)).unwrap();
        let (mut ws, protocol) = ws_connect(&url, "v4.channel.k8s.io").await;
        assert_eq!(protocol, "v4.channel.k8s.io");
        let channels = ws_collect(&mut ws).await;
        assert_eq!(channels[&1], b"out\n");
        assert_eq!(channels[&2], b"err\n");
        let status = String::from_utf8(channels[&3].clone()).unwrap();
        assert!(
            status.contains(
                r#""reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}"#
            ),
            "{status}"
        );
    }

    #[tokio::test]
    async fn websocket_v5_exec_closes_stdin_with_the_close_signal() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["cat"], false, true, false)).unwrap();
        let (mut ws, protocol) = ws_connect(&url, "v5.channel.k8s.io, v4.channel.k8s.io").await;
        assert_eq!(protocol, "v5.channel.k8s.io");
        ws.send(Message::binary(b"\x00hello ".to_vec())).await.unwrap();
        ws.send(Message::binary(b"\x00world".to_vec())).await.unwrap();
        // Without the close signal cat would never end.
        ws.send(Message::binary(vec![255, 0])).await.unwrap();
        let channels = ws_collect(&mut ws).await;
        assert_eq!(channels[&1], b"hello world");
        assert_eq!(channels[&3], SUCCESS);
    }

    #[tokio::test]
    async fn websocket_messages_over_the_limit_end_the_session() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["cat"], false, true, false)).unwrap();
        let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
        let mut big = vec![b'x'; websocket::MAX_MESSAGE + 1];
        big[0] = 0;
        // The server may cut the connection while this is still going out.
        let _ = ws.send(Message::binary(big)).await;
        let _ = ws.send(Message::binary(vec![255, 0])).await;
        let mut echoed = 0;
        while let Some(Ok(msg)) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            if let Message::Binary(b) = msg
                && b.first() == Some(&1)
            {
                echoed += b.len() - 1;
            }
        }
        assert_eq!(echoed, 0, "a message over the limit reached the process");
    }

    #[tokio::test]
    async fn websocket_port_forward_uses_two_channels_per_port() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h
            .server
            .get_port_forward(PortForwardRequest { pod_sandbox_id: "pod".into(), ports: vec![] })
            .unwrap();
        let (mut ws, protocol) = ws_connect(&format!("{url}?port=80&port=81"), "v4.channel.k8s.io").await;
        assert_eq!(protocol, "v4.channel.k8s.io");
        // Each channel starts with its port, little-endian.
        let mut firsts = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
                Message::Binary(b) => firsts.push(b.to_vec()),
                other => panic!("unexpected message {other:?}"),
            }
        }
        firsts.sort();
        assert_eq!(firsts, vec![vec![0, 80, 0], vec![1, 80, 0], vec![2, 81, 0], vec![3, 81, 0]]);
        ws.send(Message::binary(b"\x00ping".to_vec())).await.unwrap();
        let mut got = Vec::new();
        let mut errors = Vec::new();
        while got != b"PING" || errors.is_empty() {
            match tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
                Message::Binary(b) if b[0] == 0 => got.extend_from_slice(&b[1..]),
                Message::Binary(b) if b[0] == 3 => errors.extend_from_slice(&b[1..]),
                other => panic!("unexpected message {other:?}"),
            }
        }
        assert!(String::from_utf8_lossy(&errors).contains("connection refused"));
    }

    #[tokio::test]
    async fn spdy_exec_without_negotiation_speaks_the_first_version() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["out-err", "2"], false, false, true)).unwrap();
        let (head, session) = spdy_connect(&url, &[]).await;
        assert!(!head.contains("x-stream-protocol-version"), "{head}");
        let session = session.unwrap();
        let error = open(&session, "error").await;
        let stdout = open(&session, "stdout").await;
        let stderr = open(&session, "stderr").await;
        assert_eq!(read_all(&stdout).await, b"out\n");
        assert_eq!(read_all(&stderr).await, b"err\n");
        let msg = String::from_utf8(read_all(&error).await).unwrap();
        assert!(
            msg.starts_with("command terminated with non-zero exit code") && msg.ends_with("exit code 2"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn websocket_base64_exec_and_client_going_away() {
        let mut h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["out-err", "0"], false, false, true)).unwrap();
        let (mut ws, protocol) = ws_connect(&url, "v4.base64.channel.k8s.io").await;
        assert_eq!(protocol, "v4.base64.channel.k8s.io");
        let mut texts = Vec::new();
        while let Some(msg) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            if let Message::Text(t) = msg.unwrap() {
                texts.push(t.to_string());
            }
        }
        texts.sort();
        // The first message is the empty one saying the session is up.
        assert_eq!(
            texts,
            vec!["1", "1b3V0Cg==", "2ZXJyCg==", "3eyJtZXRhZGF0YSI6e30sInN0YXR1cyI6IlN1Y2Nlc3MifQ=="]
        );

        // A WebSocket client going away ends the backend's call too.
        let url = h.server.get_exec(exec(&["hang"], false, true, false)).unwrap();
        let (ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
        assert_eq!(tokio::time::timeout(WAIT, h.hang_events.recv()).await.unwrap(), Some("started"));
        drop(ws);
        assert_eq!(tokio::time::timeout(WAIT, h.hang_events.recv()).await.unwrap(), Some("dropped"));
    }

    #[tokio::test]
    async fn spdy_tunnelled_in_websocket_forwards_ports() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h
            .server
            .get_port_forward(PortForwardRequest { pod_sandbox_id: "pod".into(), ports: vec![] })
            .unwrap();
        let (ws, protocol) = ws_connect(&url, "SPDY/3.1+portforward.k8s.io").await;
        assert_eq!(protocol, "SPDY/3.1+portforward.k8s.io");
        // The client's side of the tunnel: SPDY over the WebSocket's binary messages.
        let (io, pump) = websocket::byte_stream(ws);
        tokio::spawn(pump);
        let session = Session::new(io, Role::Client, SessionConfig::default());
        let (data, error) = forward_pair(&session, 80, 0).await;
        data.write(b"tunnelled").await.unwrap();
        data.close();
        assert_eq!(read_all(&data).await, b"TUNNELLED");
        assert_eq!(read_all(&error).await, b"");
        let (_data, error) = forward_pair(&session, 81, 1).await;
        assert!(String::from_utf8(read_all(&error).await).unwrap().contains("connection refused"));
    }

    #[tokio::test]
    async fn dropping_the_server_ends_its_sessions() {
        let mut h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["hang"], false, false, false)).unwrap();
        let session = spdy_connect(&url, CLIENT_PROTOCOLS).await.1.unwrap();
        let _error = open(&session, "error").await;
        let _stdout = open(&session, "stdout").await;
        assert_eq!(tokio::time::timeout(WAIT, h.hang_events.recv()).await.unwrap(), Some("started"));
        // Not shut down: the serving task is cancelled and the last handle dropped.
        h.serving.abort();
        let _ = (&mut h.serving).await;
        drop(h.server);
        assert_eq!(tokio::time::timeout(WAIT, h.hang_events.recv()).await.unwrap(), Some("dropped"));
        tokio::time::timeout(WAIT, session.done()).await.unwrap();
    }

    /// A recorded client's bytes with the request path pointed at `path`.
    fn with_path(recorded: &[u8], path: &str) -> Vec<u8> {
        let line_end = recorded.iter().position(|b| *b == b'\r').unwrap();
        let line = std::str::from_utf8(&recorded[..line_end]).unwrap();
        let mut parts = line.split(' ');
        let (method, _, version) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let mut out = format!("{method} {path} {version}").into_bytes();
        out.extend_from_slice(&recorded[line_end..]);
        out
    }

    /// Where each frame after the HTTP head starts.
    fn frame_starts(bytes: &[u8]) -> Vec<usize> {
        let mut i = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut starts = Vec::new();
        while i + 8 <= bytes.len() {
            starts.push(i);
            i += 8 + (u32::from_be_bytes([0, bytes[i + 5], bytes[i + 6], bytes[i + 7]]) as usize);
        }
        starts
    }

    async fn next_frame(tcp: &mut TcpStream, dec: &mut FrameDecoder, buf: &mut BytesMut) -> Option<Frame> {
        loop {
            if let Some(f) = dec.decode(buf).unwrap() {
                return Some(f);
            }
            if tokio::time::timeout(WAIT, tcp.read_buf(buf)).await.unwrap().unwrap() == 0 {
                return None;
            }
        }
    }

    #[tokio::test]
    async fn recorded_crictl_exec_replayed_gets_the_answers_crictl_got() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["cat"], false, true, true)).unwrap();
        let recorded = with_path(include_bytes!("testdata/exec_stdin.c2s"), &split_url(&url).1);
        // crictl reset stdout once it had the status: hold that back until we have it too.
        let last = *frame_starts(&recorded).last().unwrap();
        let mut tcp = TcpStream::connect(h.server.addr()).await.unwrap();
        tcp.write_all(&recorded[..last]).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(
            head.starts_with("http/1.1 101") && head.contains("x-stream-protocol-version: v4.channel.k8s.io"),
            "{head}"
        );
        let (mut dec, mut buf) = (FrameDecoder::new(), BytesMut::new());
        let (mut replies, mut stdout, mut status) = (Vec::new(), Vec::new(), Vec::new());
        let mut sent_rest = false;
        let mut goaway = false;
        while let Some(frame) = next_frame(&mut tcp, &mut dec, &mut buf).await {
            match frame {
                Frame::SynReply { stream_id, .. } => replies.push(stream_id),
                Frame::Data { stream_id: 5, data, .. } => stdout.extend_from_slice(&data),
                Frame::Data { stream_id: 1, data, flags } => {
                    status.extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 && !sent_rest {
                        tcp.write_all(&recorded[last..]).await.unwrap();
                        sent_rest = true;
                    }
                }
                Frame::GoAway { .. } => {
                    goaway = true;
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(replies, vec![1, 3, 5, 7]);
        assert_eq!(stdout, b"hello\nworld\n");
        assert_eq!(status, SUCCESS);
        assert!(goaway);
    }

    #[tokio::test]
    async fn recorded_crictl_port_forward_replayed_gets_both_connections_through() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h
            .server
            .get_port_forward(PortForwardRequest { pod_sandbox_id: "pod".into(), ports: vec![8080] })
            .unwrap();
        let recorded = with_path(include_bytes!("testdata/portforward.c2s"), &split_url(&url).1);
        let mut tcp = TcpStream::connect(h.server.addr()).await.unwrap();
        tcp.write_all(&recorded).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.contains("x-stream-protocol-version: portforward.k8s.io"), "{head}");
        let (mut dec, mut buf) = (FrameDecoder::new(), BytesMut::new());
        let mut data: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
        while let Some(frame) = next_frame(&mut tcp, &mut dec, &mut buf).await {
            if let Frame::Data { stream_id, data: d, .. } = frame {
                data.entry(stream_id).or_default().extend_from_slice(&d);
            }
        }
        let answers: Vec<&[u8]> = data.values().map(|v| v.as_slice()).filter(|v| !v.is_empty()).collect();
        assert_eq!(answers, vec![&b"FIRST CONNECTION\n"[..], &b"SECOND CONNECTION\n"[..]]);
    }

    #[tokio::test]
    async fn recorded_websocket_handshakes_are_accepted() {
        let h = start(DEFAULT_TOKEN_TTL).await;
        let url = h.server.get_exec(exec(&["cat"], false, true, false)).unwrap();
        let mut tcp = TcpStream::connect(h.server.addr()).await.unwrap();
        tcp.write_all(&with_path(include_bytes!("testdata/ws_exec.c2s"), &split_url(&url).1)).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // RFC 6455's accept key of the recorded Sec-WebSocket-Key, computed independently.
        assert!(head.contains("sec-websocket-accept: tsxihfbwavssoymzhurfpjskhbs="), "{head}");
        assert!(head.contains("sec-websocket-protocol: v5.channel.k8s.io\r\n"), "{head}");

        let url = h
            .server
            .get_port_forward(PortForwardRequest { pod_sandbox_id: "pod".into(), ports: vec![] })
            .unwrap();
        let mut tcp = TcpStream::connect(h.server.addr()).await.unwrap();
        tcp.write_all(&with_path(include_bytes!("testdata/ws_portforward.c2s"), &split_url(&url).1))
            .await
            .unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("sec-websocket-protocol: spdy/3.1+portforward.k8s.io\r\n"), "{head}");
    }

    #[tokio::test]
    async fn tls_serves_https_urls() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            resizes: Mutex::default(),
            attach_out: broadcast::channel(1).0,
            attached: AtomicUsize::new(0),
            hang_events: tx,
        });
        let tls = TlsConfig { cert_file, key_file };
        let server =
            StreamServer::bind("127.0.0.1:0".parse().unwrap(), Some(tls), fake.clone(), DEFAULT_TOKEN_TTL)
                .await
                .unwrap();
        let url = server.get_exec(exec(&["out-err", "0"], false, false, true)).unwrap();
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        let stop = CancellationToken::new();
        let addr = server.addr();
        let serving = tokio::spawn({
            let stop = stop.clone();
            async move { server.serve(stop.cancelled_owned()).await }
        });
        // A client trusting the certificate gets an answer over TLS.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /exec/nope HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut head = [0u8; 12];
        tls.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 404");
        stop.cancel();
        serving.await.unwrap();
        // Files that are not a certificate and key are refused at bind.
        let bad = TlsConfig { cert_file: dir.path().join("key.pem"), key_file: dir.path().join("key.pem") };
        assert!(
            StreamServer::bind("127.0.0.1:0".parse().unwrap(), Some(bad), fake, DEFAULT_TOKEN_TTL)
                .await
                .is_err()
        );
    }
}
