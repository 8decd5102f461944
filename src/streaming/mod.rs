//! The streaming server behind CRI Exec, Attach and PortForward: the CRI calls return a URL on this
//! server carrying a single-use token; the client (kubelet's proxy, crictl) then connects and speaks
//! SPDY/3.1 or WebSocket with the remotecommand or port-forward subprotocols. This module owns the
//! HTTP side and the protocols; what actually runs the process or reaches the port is a [`Backend`]
//! passed in (berth's pod runtime in production, a fake in tests). It must never know about shims,
//! containers' state or CRI types beyond what a request carries.

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::error::Result;

mod cache;
#[doc(hidden)]
pub mod fuzzing;
mod portforward;
mod relay;
mod remotecommand;
pub mod server;
pub mod spdy;
mod websocket;

pub use server::{
    AttachRequest, DEFAULT_TOKEN_TTL, ExecRequest, PortForwardRequest, StreamServer, TlsConfig,
};

/// A terminal size, as sent on the resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// The client's side of an exec or attach: each present only if the client asked for it. With a
/// TTY there is no separate stderr (the terminal merges it into stdout). Dropping `stdin` (EOF)
/// closes the process's stdin.
pub struct Streams {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

/// A connection to a port inside a pod's network namespace.
pub trait PortStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PortStream for T {}

/// What the streaming server asks of the runtime. Every method returns when the session is over.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `cmd` in the container, wired to `streams`; returns its exit code. The process is
    /// killed if the client goes away (the streams close) before it exits.
    async fn exec(&self, container_id: &str, cmd: &[String], tty: bool, streams: Streams) -> Result<i32>;
    /// Attaches to the container's own stdio until the client detaches or the container exits;
    /// detaching leaves the container running.
    async fn attach(&self, container_id: &str, tty: bool, streams: Streams) -> Result<()>;
    /// Connects to `port` on localhost inside the pod's network namespace (the host's for a
    /// hostNetwork pod).
    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<Box<dyn PortStream>>;
}
