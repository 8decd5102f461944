//! Clients for the URLs that CRI Exec, Attach and PortForward return, as the kubelet's proxy and
//! crictl dial them: SPDY/3.1 (berth's own frame and session code in client mode, with the streams
//! client-go opens) and WebSocket (tokio-tungstenite, the binary channel protocols v4/v5). They
//! only move bytes and report what came back (response heads, channel data, the status JSON); tests
//! judge it. Every wait is bounded by [`WAIT`] and panics with what was seen so far.

use std::collections::BTreeMap;
use std::time::Duration;

use berth::streaming::spdy::{Headers, Role, Session, SessionConfig, Stream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

/// The longest any single read or handshake may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// The remotecommand protocols client-go offers over SPDY, best first.
pub const SPDY_PROTOCOLS: &[&str] =
    &["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

/// The `host:port` and the path (with query) of a streaming URL (`http://` only).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http:// URL: {url}"));
    let slash = rest.find('/').unwrap_or_else(|| panic!("no path in {url}"));
    (rest[..slash].to_string(), rest[slash..].to_string())
}

async fn connect(addr: &str) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// Reads an HTTP response head byte by byte, leaving what follows on the socket; lowercased.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tokio::time::timeout(WAIT, tcp.read_u8())
            .await
            .unwrap_or_else(|_| panic!("no full response head within {WAIT:?}: {head:?}"))
            .unwrap_or_else(|e| {
                panic!("reading the response head ({:?}): {e}", String::from_utf8_lossy(&head))
            });
        head.push(b);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// The answer to an SPDY upgrade request: the response head (lowercased) and, if the server
/// switched protocols, the client session.
pub struct SpdyUpgrade {
    pub head: String,
    pub session: Option<Session>,
}

impl SpdyUpgrade {
    /// The response's status code.
    pub fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// The session; panics with the head if the server did not upgrade.
    pub fn session(self) -> Session {
        let head = self.head;
        self.session.unwrap_or_else(|| panic!("the server did not upgrade to SPDY:\n{head}"))
    }
}

/// POSTs `url` asking for `Upgrade: SPDY/3.1` with the subprotocols `protocols`, as client-go does.
pub async fn spdy_upgrade(url: &str, protocols: &[&str]) -> SpdyUpgrade {
    let (head, tcp) = spdy_upgrade_raw(url, protocols).await;
    let session =
        head.starts_with("http/1.1 101").then(|| Session::new(tcp, Role::Client, SessionConfig::default()));
    SpdyUpgrade { head, session }
}

/// [`spdy_upgrade`] without a session on top: the response head (lowercased) and the connection,
/// for tests that write frames of their own making.
pub async fn spdy_upgrade_raw(url: &str, protocols: &[&str]) -> (String, TcpStream) {
    let (addr, path) = split_url(url);
    let mut tcp = connect(&addr).await;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: berth-e2e\r\nContent-Length: 0\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap_or_else(|e| panic!("sending the upgrade to {addr}: {e}"));
    let head = read_head(&mut tcp).await;
    (head, tcp)
}

/// Opens a stream with `headers` and waits for the server's reply.
pub async fn open(session: &Session, headers: Headers) -> Stream {
    let shown = format!("{headers:?}");
    tokio::time::timeout(WAIT, session.open_stream(headers))
        .await
        .unwrap_or_else(|_| panic!("no reply to the stream {shown} within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("opening the stream {shown}: {e}"))
}

/// Everything `s` carries until the server finishes it.
pub async fn read_all(s: &Stream) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, s.read()).await {
            Ok(Ok(Some(b))) => out.extend_from_slice(&b),
            Ok(Ok(None)) => return out,
            Ok(Err(e)) => {
                panic!("reading stream {}: {e} (after {:?})", s.id(), String::from_utf8_lossy(&out))
            }
            Err(_) => {
                panic!("stream {} not finished within {WAIT:?}: {:?}", s.id(), String::from_utf8_lossy(&out))
            }
        }
    }
}

/// Reads `s` until what came contains `want`; returns all of it.
pub async fn read_until(s: &Stream, want: &str) -> String {
    read_until_within(s, want, WAIT)
        .await
        .unwrap_or_else(|got| panic!("stream {} did not carry {want:?} within {WAIT:?}; got {got:?}", s.id()))
}

/// Reads `s` for at most `limit` until what came contains `want`: `Ok` with all of it, or `Err`
/// with what came instead.
pub async fn read_until_within(s: &Stream, want: &str, limit: Duration) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(want) {
        match tokio::time::timeout_at(deadline, s.read()).await {
            Ok(Ok(Some(b))) => out.extend_from_slice(&b),
            Ok(Ok(None)) => return Err(format!("{} (stream ended)", String::from_utf8_lossy(&out))),
            Ok(Err(e)) => return Err(format!("{} ({e})", String::from_utf8_lossy(&out))),
            Err(_) => return Err(String::from_utf8_lossy(&out).into_owned()),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The streams of a remotecommand (exec or attach) session over SPDY, opened in client-go's order:
/// error, stdin, stdout, stderr, resize (each only if asked for).
pub struct SpdyCommand {
    pub session: Session,
    pub protocol: String,
    pub error: Stream,
    pub stdin: Option<Stream>,
    pub stdout: Option<Stream>,
    pub stderr: Option<Stream>,
    pub resize: Option<Stream>,
}

/// Which streams a session uses; must match what the CRI request asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl SpdyCommand {
    /// Upgrades `url` offering [`SPDY_PROTOCOLS`] and opens the streams of `want`.
    pub async fn connect(url: &str, want: Want) -> SpdyCommand {
        let up = spdy_upgrade(url, SPDY_PROTOCOLS).await;
        let protocol = up
            .head
            .lines()
            .find_map(|l| l.strip_prefix("x-stream-protocol-version: "))
            .unwrap_or("")
            .trim()
            .to_string();
        let session = up.session();
        let ty = |t: &str| Headers::new().with("streamType", t);
        let error = open(&session, ty("error")).await;
        let stdin = if want.stdin { Some(open(&session, ty("stdin")).await) } else { None };
        let stdout = if want.stdout { Some(open(&session, ty("stdout")).await) } else { None };
        let stderr = if want.stderr && !want.tty { Some(open(&session, ty("stderr")).await) } else { None };
        let resize = if want.tty { Some(open(&session, ty("resize")).await) } else { None };
        SpdyCommand { session, protocol, error, stdin, stdout, stderr, resize }
    }

    /// The stdin stream.
    pub fn stdin(&self) -> &Stream {
        self.stdin.as_ref().expect("the session has no stdin stream")
    }

    /// The stdout stream.
    pub fn stdout(&self) -> &Stream {
        self.stdout.as_ref().expect("the session has no stdout stream")
    }

    /// Writes to stdin.
    pub async fn send(&self, data: &str) {
        tokio::time::timeout(WAIT, self.stdin().write(data.as_bytes()))
            .await
            .unwrap_or_else(|_| panic!("writing {data:?} to stdin timed out"))
            .unwrap_or_else(|e| panic!("writing {data:?} to stdin: {e}"));
    }

    /// Sends a terminal size on the resize stream, as client-go does (JSON, one per line).
    pub async fn resize(&self, width: u16, height: u16) {
        let msg = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
        let resize = self.resize.as_ref().expect("the session has no resize stream");
        resize.write(msg.as_bytes()).await.unwrap_or_else(|e| panic!("sending a resize: {e}"));
    }

    /// The status the server ends the session with (the error stream's JSON, v4).
    pub async fn status(&self) -> Value {
        parse_status(&read_all(&self.error).await)
    }
}

/// Parses a metav1.Status; panics with the text if it is not JSON.
pub fn parse_status(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("status {:?} is not JSON: {e}", String::from_utf8_lossy(bytes)))
}

/// The exit code a v4 status stands for: 0 for Success, the ExitCode cause of a NonZeroExitCode
/// failure; panics for anything else.
pub fn exit_code(status: &Value) -> i32 {
    match status["status"].as_str() {
        Some("Success") => 0,
        Some("Failure") if status["reason"] == "NonZeroExitCode" => {
            let causes = status["details"]["causes"].as_array().cloned().unwrap_or_default();
            let code = causes.iter().find(|c| c["reason"] == "ExitCode").and_then(|c| c["message"].as_str());
            code.and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no ExitCode cause in {status}"))
        }
        _ => panic!("status is neither Success nor NonZeroExitCode: {status}"),
    }
}

/// The two streams of one forwarded connection over SPDY (`portforward.k8s.io`).
pub struct SpdyForward {
    pub data: Stream,
    pub error: Stream,
}

/// Opens the error then the data stream of forwarded connection `request_id` to `port`, as
/// client-go does (it never writes to the error stream, so closes it at once).
pub async fn spdy_forward(session: &Session, port: u16, request_id: u32) -> SpdyForward {
    let headers = |ty: &str| {
        Headers::new()
            .with("streamType", ty)
            .with("port", &port.to_string())
            .with("requestID", &request_id.to_string())
    };
    let error = open(session, headers("error")).await;
    error.close();
    let data = open(session, headers("data")).await;
    SpdyForward { data, error }
}

/// A WebSocket connection to a streaming URL.
pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `url` (the path with its query) offering `protocols` (comma-separated);
/// the connection and the subprotocol the server chose, or the handshake's error (an HTTP refusal
/// comes back as `tungstenite::Error::Http`).
pub async fn ws_connect(url: &str, protocols: &str) -> Result<(Ws, String), tungstenite::Error> {
    let (addr, path) = split_url(url);
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocols).unwrap_or_else(|e| panic!("protocols {protocols:?}: {e}")),
    );
    let tcp = connect(&addr).await;
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .unwrap_or_else(|_| panic!("websocket handshake with {addr} timed out"))?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, chosen))
}

/// The HTTP status a refused WebSocket handshake got.
pub fn refused_status(e: &tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(resp) => resp.status().as_u16(),
        other => panic!("the handshake failed without an HTTP answer: {other}"),
    }
}

/// Sends `data` on channel `channel` (one binary message, channel byte first).
pub async fn ws_send(ws: &mut Ws, channel: u8, data: &[u8]) {
    let mut msg = Vec::with_capacity(data.len() + 1);
    msg.push(channel);
    msg.extend_from_slice(data);
    tokio::time::timeout(WAIT, ws.send(Message::binary(msg)))
        .await
        .unwrap_or_else(|_| panic!("sending on channel {channel} timed out"))
        .unwrap_or_else(|e| panic!("sending on channel {channel}: {e}"));
}

/// The next binary message as (channel, data); `None` once the server closed the connection.
pub async fn ws_next(ws: &mut Ws) -> Option<(u8, Vec<u8>)> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no websocket message within {WAIT:?}"))?;
        match msg {
            Ok(Message::Binary(b)) if !b.is_empty() => return Some((b[0], b[1..].to_vec())),
            // An empty message or a ping is no data; a close ends the stream.
            Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_)) => {}
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("unexpected websocket message {other:?}"),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return None,
            // The server may drop the TCP connection right after its close frame.
            Err(tungstenite::Error::Protocol(_) | tungstenite::Error::Io(_)) => return None,
            Err(e) => panic!("reading the websocket: {e}"),
        }
    }
}

/// Everything each channel carries until the server closes the connection.
pub async fn ws_collect(ws: &mut Ws) -> BTreeMap<u8, Vec<u8>> {
    let mut channels: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    while let Some((ch, data)) = ws_next(ws).await {
        channels.entry(ch).or_default().extend_from_slice(&data);
    }
    channels
}

/// Reads until channel `channel` has carried `want` (other channels' data is kept too); returns
/// what each channel carried. Panics if the connection ends or [`WAIT`] passes first.
pub async fn ws_read_until(ws: &mut Ws, channel: u8, want: &str) -> BTreeMap<u8, Vec<u8>> {
    ws_read_until_within(ws, channel, want, WAIT)
        .await
        .unwrap_or_else(|got| panic!("channel {channel} did not carry {want:?}; got {got:?}"))
}

/// [`ws_read_until`] for at most `limit`: `Err` with what came (per channel, lossy text) instead.
pub async fn ws_read_until_within(
    ws: &mut Ws,
    channel: u8,
    want: &str,
    limit: Duration,
) -> Result<BTreeMap<u8, Vec<u8>>, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut channels: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let shown = |c: &BTreeMap<u8, Vec<u8>>| {
        c.iter().map(|(k, v)| format!("{k}: {:?}", String::from_utf8_lossy(v))).collect::<Vec<_>>().join(", ")
    };
    loop {
        let got = channels.get(&channel).map(|d| String::from_utf8_lossy(d).contains(want));
        if got == Some(true) {
            return Ok(channels);
        }
        match tokio::time::timeout_at(deadline, ws_next(ws)).await {
            Ok(Some((ch, data))) => channels.entry(ch).or_default().extend_from_slice(&data),
            Ok(None) => return Err(format!("{} (connection closed)", shown(&channels))),
            Err(_) => return Err(shown(&channels)),
        }
    }
}

/// A resize message for the WebSocket resize channel (4).
pub fn ws_resize(width: u16, height: u16) -> Vec<u8> {
    format!("{{\"Width\":{width},\"Height\":{height}}}").into_bytes()
}
