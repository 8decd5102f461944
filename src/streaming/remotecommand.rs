//! Kubernetes' remotecommand protocol: exec and attach sessions as the kubelet serves them. Over
//! SPDY the client opens one stream per `streamType` (error, stdin, stdout, stderr, resize) and
//! the session starts once all expected ones are there; over WebSocket they are fixed channels
//! (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize). Either way the backend runs with pipes wired
//! to them, and how the command ended goes on the error channel: plain text up to v3, a
//! `metav1.Status` in JSON from v4, byte for byte as the kubelet writes it. This module must never
//! keep the backend's call running once the client is gone: the call is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;

use super::relay::{self, Sink, Source, SpdySink, SpdySource};
use super::spdy::frame::rst;
use super::spdy::{Headers, Session};
use super::websocket::{ChannelConn, Codec};
use super::{Backend, Streams};
use crate::error::{Error, Result};

pub(crate) const V1: &str = "channel.k8s.io";
pub(crate) const V2: &str = "v2.channel.k8s.io";
pub(crate) const V3: &str = "v3.channel.k8s.io";
pub(crate) const V4: &str = "v4.channel.k8s.io";
pub(crate) const V5: &str = "v5.channel.k8s.io";

/// What the server offers over SPDY, best first (v5 only adds the WebSocket close signal).
pub(crate) const SPDY_PROTOCOLS: &[&str] = &[V4, V3, V2, V1];
/// What the server offers over WebSocket.
pub(crate) const WEBSOCKET_PROTOCOLS: &[&str] =
    &[V5, V4, "v4.base64.channel.k8s.io", V1, "base64.channel.k8s.io"];

/// How long the backend's output may keep draining to the client after the call returned.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// What a session runs.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Exec { container_id: String, cmd: Vec<String> },
    Attach { container_id: String },
}

/// Which streams the request asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The client's ends of a session, whatever the transport.
struct ClientIo {
    stdin: Option<Box<dyn Source>>,
    stdout: Option<Arc<dyn Sink>>,
    stderr: Option<Arc<dyn Sink>>,
    error: Arc<dyn Sink>,
    resize: Option<Box<dyn Source>>,
}

/// Whether the error channel carries a JSON status (v4 and later) or a failure's text.
fn json_status(protocol: &str) -> bool {
    protocol.starts_with("v4.") || protocol.starts_with("v5.")
}

/// Runs `command` wired to the client and reports how it ended. Returns early, dropping the
/// backend's call (and with it the pipes it holds), if `gone` resolves first.
async fn run(
    backend: &dyn Backend,
    command: &Command,
    tty: bool,
    io: ClientIo,
    json: bool,
    gone: impl Future<Output = ()>,
) {
    let mut outputs = JoinSet::new();
    let mut inputs = JoinSet::new();
    let mut streams = Streams { stdin: None, stdout: None, stderr: None, resize: None };
    if let Some(source) = io.stdin {
        let (reader, pump) = relay::inbound(source);
        streams.stdin = Some(reader);
        inputs.spawn(pump);
    }
    if let Some(sink) = io.stdout {
        let (writer, pump) = relay::outbound(sink);
        streams.stdout = Some(writer);
        outputs.spawn(pump);
    }
    // A terminal merges stderr into stdout.
    if let Some(sink) = io.stderr.filter(|_| !tty) {
        let (writer, pump) = relay::outbound(sink);
        streams.stderr = Some(writer);
        outputs.spawn(pump);
    }
    if let Some(source) = io.resize.filter(|_| tty) {
        let (tx, rx) = mpsc::channel(16);
        streams.resize = Some(rx);
        inputs.spawn(relay::pump_resize(source, tx));
    }
    let outcome = tokio::select! {
        outcome = call(backend, command, tty, streams) => outcome,
        _ = gone => {
            tracing::debug!("client went away; abandoning the session");
            return;
        }
    };
    // The call dropped its pipe ends; let what they hold reach the client.
    let drained =
        tokio::time::timeout(OUTPUT_DRAIN, async { while outputs.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("backend output still open {OUTPUT_DRAIN:?} after the call returned; cutting it off");
    }
    let status = Status::of(command, &outcome);
    if let Err(e) = &outcome {
        tracing::warn!(error = %e, "streaming session failed");
    }
    let report =
        if json { Some(status.to_json()) } else { status.failure_message().map(|m| m.as_bytes().to_vec()) };
    if let Some(report) = report {
        let _ = io.error.write(&report).await;
    }
    io.error.close();
}

/// Calls the backend: `Some(exit code)` for exec, `None` for attach.
async fn call(backend: &dyn Backend, command: &Command, tty: bool, streams: Streams) -> Result<Option<i32>> {
    match command {
        Command::Exec { container_id, cmd } => backend.exec(container_id, cmd, tty, streams).await.map(Some),
        Command::Attach { container_id } => backend.attach(container_id, tty, streams).await.map(|()| None),
    }
}

#[derive(Serialize)]
struct EmptyMeta {}

#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

/// `metav1.Status`, with the fields (and their order) the kubelet's JSON has.
#[derive(Serialize)]
struct Status {
    metadata: EmptyMeta,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

impl Status {
    fn of(command: &Command, outcome: &Result<Option<i32>>) -> Status {
        let success = Status {
            metadata: EmptyMeta {},
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: None,
        };
        match (command, outcome) {
            (_, Ok(None)) | (_, Ok(Some(0))) => success,
            (command, Ok(Some(code))) => {
                let cmd = match command {
                    Command::Exec { cmd, .. } => cmd.as_slice(),
                    Command::Attach { .. } => &[],
                };
                // The message containerd's exec error gives, as the kubelet wraps it.
                Status {
                    metadata: EmptyMeta {},
                    status: "Failure",
                    message: Some(format!(
                        "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                        cmd.join(" ")
                    )),
                    reason: Some("NonZeroExitCode"),
                    details: Some(Details {
                        causes: vec![Cause { reason: Some("ExitCode"), message: Some(code.to_string()) }],
                    }),
                    code: None,
                }
            }
            (command, Err(e)) => {
                let what = match command {
                    Command::Exec { .. } => "error executing command in container",
                    Command::Attach { .. } => "error attaching to container",
                };
                let inner = format!("{what}: {e}");
                Status {
                    metadata: EmptyMeta {},
                    status: "Failure",
                    message: Some(format!("Internal error occurred: {inner}")),
                    reason: Some("InternalError"),
                    details: Some(Details { causes: vec![Cause { reason: None, message: Some(inner) }] }),
                    code: Some(500),
                }
            }
        }
    }

    /// What v1–v3 write on the error stream: nothing on success.
    fn failure_message(&self) -> Option<&str> {
        self.message.as_deref().filter(|_| self.status != "Success")
    }

    /// The JSON, escaped the way Go's encoder escapes (HTML-safe), so the bytes match the kubelet's.
    fn to_json(&self) -> Vec<u8> {
        let json = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"metadata":{},"status":"Failure"}"#.to_string());
        // These characters can only occur inside strings, where the escapes mean the same.
        json.replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029")
            .into_bytes()
    }
}

/// The stream types a SPDY client must open for `opts` under `protocol`.
fn expected_streams(opts: Options, protocol: &str) -> Vec<&'static str> {
    let mut types = vec!["error"];
    for (wanted, ty) in [(opts.stdin, "stdin"), (opts.stdout, "stdout"), (opts.stderr, "stderr")] {
        if wanted {
            types.push(ty);
        }
    }
    if opts.tty && (protocol == V3 || protocol == V4) {
        types.push("resize");
    }
    types
}

/// Serves one exec or attach over an upgraded SPDY connection.
pub(crate) async fn serve_spdy(
    session: Session,
    protocol: &str,
    backend: Arc<dyn Backend>,
    command: Command,
    opts: Options,
    creation_timeout: Duration,
) {
    let expected = expected_streams(opts, protocol);
    let mut streams: HashMap<&'static str, Arc<super::spdy::Stream>> = HashMap::new();
    let deadline = Instant::now() + creation_timeout;
    while streams.len() < expected.len() {
        let stream = tokio::select! {
            s = session.accept() => s,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(?expected, got = ?streams.keys().collect::<Vec<_>>(), "timed out waiting for client to create streams");
                None
            }
        };
        let Some(stream) = stream else {
            session.close().await;
            return;
        };
        if stream.reply(Headers::new()).is_err() {
            continue;
        }
        let ty = stream.headers().get("streamtype").unwrap_or_default().to_string();
        match expected.iter().find(|t| **t == ty) {
            Some(t) if !streams.contains_key(t) => {
                streams.insert(t, Arc::new(stream));
            }
            _ => {
                tracing::debug!(stream_type = %ty, "resetting an unexpected stream");
                stream.reset(rst::CANCEL);
            }
        }
    }
    let take_source = |t: &str| streams.get(t).map(|s| Box::new(SpdySource(s.clone())) as Box<dyn Source>);
    let take_sink = |t: &str| streams.get(t).map(|s| Arc::new(SpdySink(s.clone())) as Arc<dyn Sink>);
    let io = ClientIo {
        stdin: take_source("stdin"),
        stdout: take_sink("stdout"),
        stderr: take_sink("stderr"),
        error: Arc::new(SpdySink(streams["error"].clone())),
        resize: take_source("resize"),
    };
    let work = run(backend.as_ref(), &command, opts.tty, io, json_status(protocol), session.done());
    // Streams opened after the session started have no place in it.
    let refuse = async {
        while let Some(s) = session.accept().await {
            s.reset(rst::REFUSED_STREAM);
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = work => {}
        _ = refuse => {}
    }
    for s in streams.values() {
        s.close();
    }
    session.close().await;
}

/// Serves one exec or attach over an upgraded WebSocket.
pub(crate) async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    backend: Arc<dyn Backend>,
    command: Command,
    opts: Options,
    idle_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut readable = vec![RESIZE];
    if opts.stdin {
        readable.push(STDIN);
    }
    let (conn, mut sources) =
        ChannelConn::open(ws, Codec::for_protocol(protocol), &readable, protocol == V5, idle_timeout);
    // An empty message on the lowest channel the client reads says the session is up.
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = conn.sink(first).write(&[]).await;
    let io = ClientIo {
        stdin: sources.remove(&STDIN).map(|s| Box::new(s) as Box<dyn Source>),
        stdout: opts.stdout.then(|| conn.sink(STDOUT)),
        stderr: opts.stderr.then(|| conn.sink(STDERR)),
        error: conn.sink(ERROR),
        resize: sources.remove(&RESIZE).map(|s| Box::new(s) as Box<dyn Source>),
    };
    run(backend.as_ref(), &command, opts.tty, io, json_status(protocol), conn.done()).await;
    conn.close().await;
}

/// Checks an exec or attach request the way the kubelet's streaming server does.
pub(crate) fn validate(container_id: &str, opts: Options) -> Result<()> {
    if container_id.is_empty() {
        return Err(Error::invalid("missing required container_id"));
    }
    if opts.tty && opts.stderr {
        // A terminal has one output; stderr cannot be told apart from stdout.
        return Err(Error::invalid("tty and stderr cannot both be true"));
    }
    if !opts.stdin && !opts.stdout && !opts.stderr {
        return Err(Error::invalid("one of stdin, stdout, or stderr must be set"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(cmd: &[&str]) -> Command {
        Command::Exec { container_id: "c".into(), cmd: cmd.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn status_json_is_the_kubelets() {
        let cmd = exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
        assert_eq!(
            String::from_utf8(Status::of(&cmd, &Ok(Some(0))).to_json()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        // Recorded from the kubelet streaming code in containerd (testdata/exec_exit.s2c).
        assert_eq!(
            String::from_utf8(Status::of(&cmd, &Ok(Some(3))).to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c echo out; echo err \u003e\u00262; exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        let failed = Status::of(
            &Command::Attach { container_id: "c".into() },
            &Err(Error::not_found("container \"c\" not found")),
        );
        assert_eq!(
            String::from_utf8(failed.to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: error attaching to container: container \"c\" not found","reason":"InternalError","details":{"causes":[{"message":"error attaching to container: container \"c\" not found"}]},"code":500}"#
        );
        assert_eq!(
            failed.failure_message(),
            Some("Internal error occurred: error attaching to container: container \"c\" not found")
        );
        assert_eq!(Status::of(&cmd, &Ok(Some(0))).failure_message(), None);
    }

    #[test]
    fn expected_streams_follow_options_and_protocol() {
        let tty = Options { stdin: true, stdout: true, stderr: false, tty: true };
        assert_eq!(expected_streams(tty, V4), vec!["error", "stdin", "stdout", "resize"]);
        assert_eq!(expected_streams(tty, V2), vec!["error", "stdin", "stdout"]);
        let plain = Options { stdin: false, stdout: true, stderr: true, tty: false };
        assert_eq!(expected_streams(plain, V4), vec!["error", "stdout", "stderr"]);
    }

    #[test]
    fn requests_are_validated_like_the_kubelet() {
        let ok = Options { stdin: false, stdout: true, stderr: true, tty: false };
        assert!(validate("c", ok).is_ok());
        assert!(validate("", ok).is_err());
        assert!(validate("c", Options { tty: true, ..ok }).is_err());
        assert!(validate("c", Options { stdin: false, stdout: false, stderr: false, tty: false }).is_err());
    }
}
