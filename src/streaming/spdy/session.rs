//! One SPDY/3.1 connection: a frame reader task and a frame writer task over any byte stream,
//! the stream table, stream lifecycle (SYN_STREAM/SYN_REPLY, half-close with FIN, RST_STREAM),
//! PING answers, GOAWAY, the idle timeout, and flow control. Streams opened by the peer come out
//! of [`Session::accept`]; [`Session::open_stream`] opens one (client role, used by tests).
//! This module knows nothing of what the streams carry, and must never let a peer's frames make it
//! panic or grow memory without bound.
//!
//! Flow control. Every stream starts with a 64 KiB window each way, and SPDY/3.1 adds one for the
//! session. Received data is acknowledged with WINDOW_UPDATE as the reader consumes it. What we
//! send is held to the peer's windows only once the peer shows that it keeps them (it sent a
//! WINDOW_UPDATE or a SETTINGS with an initial window): the Go implementation every kubelet and
//! crictl uses (moby/spdystream) never sends WINDOW_UPDATE and ignores ours, so holding it to a
//! window would stall every session after 64 KiB. For such a peer, the backpressure is TCP's: the
//! frame reader stops reading while a stream has a full window of unread data. For the same
//! reason a peer overrunning our windows is not reset: a peer that (like us) starts keeping
//! windows only once it sees ours may have sent more than a window before, and not reading is
//! what bounds memory anyway. Long DATA frames arrive in pieces (see [`super::frame`]), so a
//! stream holds at most a window and a piece of unread data.
//!
//! What we send. DATA waits for room in a fixed write budget. Control frames (PING answers,
//! resets, window updates, replies) are queued without waiting, because the frame reader must
//! not stop on them; a peer can make us queue one for each small frame it sends, so if
//! [`MAX_QUEUED_CONTROL`] of them wait for the socket, the peer is not reading, and it is
//! disconnected rather than buffered for.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame::{
    FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, FrameDecoder, FrameEncoder, Headers, SETTINGS_INITIAL_WINDOW_SIZE,
    goaway, rst,
};
use crate::error::{Error, Result};

/// The window every stream (and the session) starts with, each way.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;
/// The largest DATA frame we send.
const MAX_DATA_FRAME: usize = 16 * 1024;
/// DATA bytes queued for the socket before writers wait for the writer task.
const WRITE_BUDGET: usize = 256 * 1024;
/// Streams the peer may have open at once; more are refused.
const MAX_PEER_STREAMS: usize = 1000;
/// Control frames queued for the socket at once; one more disconnects the peer. A peer that reads
/// never gets near it: the writer takes frames off the queue as fast as the socket takes them.
pub const MAX_QUEUED_CONTROL: usize = 4096;
const MAX_WINDOW: i64 = 0x7fff_ffff;

/// Which end of the connection we are: it decides stream-id and ping-id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Timeouts of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The connection is closed after this long without a frame either way.
    pub idle_timeout: Duration,
    /// After our GOAWAY, how long to wait for the peer to close before dropping the connection.
    pub linger: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { idle_timeout: Duration::from_secs(4 * 3600), linger: Duration::from_secs(5) }
    }
}

enum Out {
    /// A control frame (or an empty DATA frame carrying FIN), counted in `queued_control`.
    Control(Frame),
    /// A DATA frame, and the bytes it holds of the write budget.
    Data(Frame, usize),
    /// Flush everything before this, shut the write side, and stop.
    Shutdown(Option<oneshot::Sender<()>>),
}

struct StreamState {
    reply: Option<Headers>,
    recv: VecDeque<Bytes>,
    recv_buffered: usize,
    recv_fin: bool,
    recv_unacked: u32,
    send_window: i64,
    sent_fin: bool,
    reset: Option<u32>,
    /// Wakes this stream's one reader: data, FIN, reply, reset, or the end of the session.
    notify: Arc<Notify>,
}

impl StreamState {
    fn new(send_window: i64) -> Self {
        StreamState {
            reply: None,
            recv: VecDeque::new(),
            recv_buffered: 0,
            recv_fin: false,
            recv_unacked: 0,
            send_window,
            sent_fin: false,
            reset: None,
            notify: Arc::new(Notify::new()),
        }
    }
}

struct State {
    streams: HashMap<u32, StreamState>,
    peer_flow_control: bool,
    peer_initial_window: i64,
    send_session_window: i64,
    recv_session_unacked: u32,
    last_peer_stream: u32,
    /// The last stream answered with INVALID_STREAM, so the pieces of one long DATA frame on a
    /// stream never opened get one reset, not one each.
    last_invalid_stream: u32,
    next_local_stream: u32,
    goaway_sent: bool,
    closed: bool,
    last_activity: Instant,
}

struct Shared {
    role: Role,
    state: Mutex<State>,
    out: mpsc::UnboundedSender<Out>,
    /// `Out::Control` items sent and not yet taken by the writer.
    queued_control: AtomicUsize,
    budget: Semaphore,
    /// A send window grew, or the session ended.
    window: Notify,
    /// A reader took data off a stream, or a stream went away (unblocks the frame reader).
    consumed: Notify,
    /// The connection is finished: the read side ended or the write side failed.
    gone: CancellationToken,
    /// The peer is being dropped: the writer stops at once, whatever it still holds. Cancelling
    /// it cancels `gone` too (`gone` is its child).
    abort: CancellationToken,
}

fn closed_error() -> Error {
    Error::unavailable("spdy connection closed")
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a control frame. May be called with the state locked.
    fn send(&self, frame: Frame) {
        let queued = self.queued_control.fetch_add(1, Ordering::Relaxed) + 1;
        if queued > MAX_QUEUED_CONTROL {
            if !self.abort.is_cancelled() {
                tracing::debug!(
                    queued,
                    kind = frame.kind(),
                    "spdy peer does not read what it makes us send; disconnecting"
                );
            }
            // Only tokens here: the caller may hold the state lock that `finish` takes. The frame
            // reader sees `gone` and finishes the session.
            self.abort.cancel();
            return;
        }
        // After the writer stopped there is no one to tell; the session is over anyway.
        let _ = self.out.send(Out::Control(frame));
    }

    fn touch(&self) {
        self.lock().last_activity = Instant::now();
    }

    fn peer_parity(&self) -> u32 {
        match self.role {
            Role::Server => 1,
            Role::Client => 0,
        }
    }

    /// Marks the session over and wakes everyone waiting on it. Idempotent.
    fn finish(&self) {
        let mut st = self.lock();
        st.closed = true;
        for s in st.streams.values() {
            s.notify.notify_one();
        }
        drop(st);
        self.budget.close();
        self.window.notify_waiters();
        self.consumed.notify_waiters();
        self.gone.cancel();
    }
}

/// A SPDY/3.1 connection. Dropping it drops the connection.
pub struct Session {
    shared: Arc<Shared>,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Stream>>,
    linger: Duration,
    _tasks: JoinSet<()>,
}

impl Session {
    /// Starts speaking SPDY/3.1 on `io` (already upgraded: the first bytes each way are frames).
    pub fn new<T>(io: T, role: Role, config: SessionConfig) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let abort = CancellationToken::new();
        let shared = Arc::new(Shared {
            role,
            state: Mutex::new(State {
                streams: HashMap::new(),
                peer_flow_control: false,
                peer_initial_window: i64::from(DEFAULT_WINDOW),
                send_session_window: i64::from(DEFAULT_WINDOW),
                recv_session_unacked: 0,
                last_peer_stream: 0,
                last_invalid_stream: 0,
                next_local_stream: if role == Role::Client { 1 } else { 2 },
                goaway_sent: false,
                closed: false,
                last_activity: Instant::now(),
            }),
            out: out_tx,
            queued_control: AtomicUsize::new(0),
            budget: Semaphore::new(WRITE_BUDGET),
            window: Notify::new(),
            consumed: Notify::new(),
            gone: abort.child_token(),
            abort,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(write_loop(shared.clone(), writer, out_rx));
        tasks.spawn(read_loop(shared.clone(), reader, in_tx, config.idle_timeout));
        Session { shared, incoming: tokio::sync::Mutex::new(in_rx), linger: config.linger, _tasks: tasks }
    }

    /// The next stream the peer opened; `None` once the connection is gone or the peer sent GOAWAY.
    /// The stream is not answered yet: call [`Stream::reply`] (or reset it).
    pub async fn accept(&self) -> Option<Stream> {
        self.incoming.lock().await.recv().await
    }

    /// Opens a stream and waits for the peer's SYN_REPLY.
    pub async fn open_stream(&self, headers: Headers) -> Result<Stream> {
        let (id, notify) = {
            let mut st = self.shared.lock();
            if st.closed || st.goaway_sent {
                return Err(closed_error());
            }
            let id = st.next_local_stream;
            if id > 0x7fff_ffff {
                return Err(Error::unavailable("spdy stream ids exhausted"));
            }
            st.next_local_stream += 2;
            let state = StreamState::new(st.peer_initial_window);
            let notify = state.notify.clone();
            st.streams.insert(id, state);
            (id, notify)
        };
        let stream = Stream { id, headers: headers.clone(), shared: self.shared.clone(), notify };
        self.shared.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers,
        });
        stream.wait_reply().await?;
        Ok(stream)
    }

    /// Resolves when the connection is gone (the peer closed it, it failed, or it went idle).
    pub fn done(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.gone.clone().cancelled_owned()
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.gone.is_cancelled()
    }

    /// Ends the session gracefully: GOAWAY after everything already queued, then our side of the
    /// connection is shut, then the peer gets `linger` to close its side.
    pub async fn close(&self) {
        let last = {
            let mut st = self.shared.lock();
            if st.closed || st.goaway_sent {
                None
            } else {
                st.goaway_sent = true;
                Some(st.last_peer_stream)
            }
        };
        if let Some(last) = last {
            self.shared.send(Frame::GoAway { last_good_stream_id: last, status: goaway::OK });
            let (tx, rx) = oneshot::channel();
            if self.shared.out.send(Out::Shutdown(Some(tx))).is_ok() {
                let _ = rx.await;
            }
        }
        let _ = tokio::time::timeout(self.linger, self.shared.gone.cancelled()).await;
        self.shared.finish();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.finish();
    }
}

/// One SPDY stream. Reads and writes take `&self` so one task can read while another writes, but
/// there should be only one reader. Dropping a stream we have not finished sending on resets it.
pub struct Stream {
    id: u32,
    headers: Headers,
    shared: Arc<Shared>,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).field("headers", &self.headers).finish()
    }
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers the stream was opened with.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Accepts a stream the peer opened (SYN_REPLY). Call it once, before writing.
    pub fn reply(&self, headers: Headers) -> Result<()> {
        let st = self.shared.lock();
        if st.closed {
            return Err(closed_error());
        }
        match st.streams.get(&self.id) {
            Some(s) if s.reset.is_none() => {}
            _ => return Err(Error::unavailable(format!("spdy stream {} was reset", self.id))),
        }
        self.shared.send(Frame::SynReply { stream_id: self.id, flags: 0, headers });
        Ok(())
    }

    async fn wait_reply(&self) -> Result<Headers> {
        loop {
            let notified = self.notify.notified();
            {
                let st = self.shared.lock();
                let s = st.streams.get(&self.id).ok_or_else(closed_error)?;
                if let Some(h) = &s.reply {
                    return Ok(h.clone());
                }
                if let Some(code) = s.reset {
                    return Err(Error::unavailable(format!(
                        "spdy stream {} was reset with status {code}",
                        self.id
                    )));
                }
                if st.closed {
                    return Err(closed_error());
                }
            }
            notified.await;
        }
    }

    /// The next piece of data; `Ok(None)` once the peer finished sending (FIN). An error if the
    /// stream was reset or the connection is gone.
    pub async fn read(&self) -> Result<Option<Bytes>> {
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.shared.lock();
                let closed = st.closed;
                let Some(s) = st.streams.get_mut(&self.id) else { return Ok(None) };
                if let Some(data) = s.recv.pop_front() {
                    let n = data.len() as u32;
                    s.recv_buffered -= data.len();
                    s.recv_unacked += n;
                    // Acknowledge in batches of half a window, as the peer can send more.
                    if s.recv_unacked >= DEFAULT_WINDOW / 2 && !s.recv_fin && s.reset.is_none() && !closed {
                        let delta = std::mem::take(&mut s.recv_unacked);
                        self.shared.send(Frame::WindowUpdate { stream_id: self.id, delta });
                    }
                    st.recv_session_unacked += n;
                    credit_session(&self.shared, &mut st);
                    drop(st);
                    self.shared.consumed.notify_waiters();
                    return Ok(Some(data));
                }
                if s.recv_fin {
                    return Ok(None);
                }
                if let Some(code) = s.reset {
                    return Err(Error::unavailable(format!(
                        "spdy stream {} was reset with status {code}",
                        self.id
                    )));
                }
                if closed {
                    return Err(closed_error());
                }
            }
            notified.await;
        }
    }

    /// Sends `data`, in frames the peer's windows allow.
    pub async fn write(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = self.reserve(data.len().min(MAX_DATA_FRAME)).await?;
            let permit = self.shared.budget.acquire_many(n as u32).await.map_err(|_| closed_error())?;
            permit.forget();
            let frame =
                Frame::Data { stream_id: self.id, flags: 0, data: Bytes::copy_from_slice(&data[..n]) };
            self.shared.out.send(Out::Data(frame, n)).map_err(|_| closed_error())?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Waits until up to `want` bytes may be sent, and takes them off the windows.
    async fn reserve(&self, want: usize) -> Result<usize> {
        loop {
            let notified = self.shared.window.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.shared.lock();
                if st.closed {
                    return Err(closed_error());
                }
                let enforce = st.peer_flow_control;
                let session_window = st.send_session_window;
                let s = st.streams.get_mut(&self.id).ok_or_else(closed_error)?;
                if let Some(code) = s.reset {
                    return Err(Error::unavailable(format!(
                        "spdy stream {} was reset with status {code}",
                        self.id
                    )));
                }
                if s.sent_fin {
                    return Err(Error::precondition(format!(
                        "writing to spdy stream {} after closing it",
                        self.id
                    )));
                }
                let n =
                    if enforce { (want as i64).min(s.send_window).min(session_window) } else { want as i64 };
                if n > 0 {
                    s.send_window -= n;
                    st.send_session_window -= n;
                    return Ok(n as usize);
                }
            }
            notified.await;
        }
    }

    /// Finishes our side of the stream (FIN); the peer may still send. Idempotent.
    pub fn close(&self) {
        let mut st = self.shared.lock();
        let closed = st.closed;
        if let Some(s) = st.streams.get_mut(&self.id)
            && !s.sent_fin
            && s.reset.is_none()
            && !closed
        {
            s.sent_fin = true;
            self.shared.send(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() });
        }
    }

    /// Abandons the stream both ways (RST_STREAM with `status`, one of [`super::frame::rst`]).
    pub fn reset(&self, status: u32) {
        let mut st = self.shared.lock();
        let closed = st.closed;
        if let Some(s) = st.streams.get_mut(&self.id)
            && s.reset.is_none()
        {
            s.reset = Some(status);
            s.recv.clear();
            s.recv_buffered = 0;
            s.notify.notify_one();
            if !closed {
                self.shared.send(Frame::RstStream { stream_id: self.id, status });
            }
        }
        drop(st);
        self.shared.window.notify_waiters();
        self.shared.consumed.notify_waiters();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(s) = st.streams.remove(&self.id)
            && !st.closed
            && s.reset.is_none()
            && !s.sent_fin
        {
            self.shared.send(Frame::RstStream { stream_id: self.id, status: rst::CANCEL });
        }
        drop(st);
        self.shared.consumed.notify_waiters();
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut io: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    let mut encoder = FrameEncoder::new();
    let mut buf = BytesMut::with_capacity(32 * 1024);
    let mut done: Option<Option<oneshot::Sender<()>>> = None;
    loop {
        let first = tokio::select! {
            next = rx.recv() => next,
            _ = shared.abort.cancelled() => None,
        };
        let Some(mut item) = first else { return };
        let mut released = 0;
        loop {
            let frame = match item {
                Out::Control(frame) => {
                    shared.queued_control.fetch_sub(1, Ordering::Relaxed);
                    frame
                }
                Out::Data(frame, budget) => {
                    released += budget;
                    frame
                }
                Out::Shutdown(tx) => {
                    done = Some(tx);
                    break;
                }
            };
            if let Err(e) = encoder.encode(&frame, &mut buf) {
                tracing::warn!(error = %e, "dropping a spdy frame that cannot be encoded");
            }
            if buf.len() >= 64 * 1024 {
                break;
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        let write = async {
            if !buf.is_empty() {
                io.write_all(&buf).await?;
            }
            io.flush().await
        };
        // A peer that never reads would hold this write forever: dropping it drops the peer.
        let written = tokio::select! {
            written = write => written,
            _ = shared.abort.cancelled() => return,
        };
        buf.clear();
        shared.budget.add_permits(released);
        if let Err(e) = written {
            tracing::debug!(error = %e, "spdy connection write failed");
            shared.finish();
            return;
        }
        shared.touch();
        if let Some(tx) = done {
            let _ = io.shutdown().await;
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
            return;
        }
    }
}

enum ReadEnd {
    Eof,
    Idle,
    Protocol(Error),
    Io(std::io::Error),
    Cancelled,
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    io: R,
    incoming: mpsc::UnboundedSender<Stream>,
    idle_timeout: Duration,
) {
    let end = read_frames(&shared, io, incoming, idle_timeout).await;
    let status = match &end {
        ReadEnd::Protocol(e) => {
            tracing::debug!(error = %e, "spdy protocol error from peer");
            Some(goaway::PROTOCOL_ERROR)
        }
        ReadEnd::Idle => {
            tracing::debug!("spdy connection idle, closing");
            Some(goaway::OK)
        }
        ReadEnd::Io(e) => {
            tracing::debug!(error = %e, "spdy connection read failed");
            None
        }
        ReadEnd::Eof | ReadEnd::Cancelled => None,
    };
    let last = {
        let mut st = shared.lock();
        let send_goaway = status.is_some() && !st.goaway_sent && !st.closed;
        st.goaway_sent = true;
        send_goaway.then_some(st.last_peer_stream)
    };
    if let (Some(last), Some(status)) = (last, status) {
        shared.send(Frame::GoAway { last_good_stream_id: last, status });
    }
    let _ = shared.out.send(Out::Shutdown(None));
    shared.finish();
}

async fn read_frames<R: AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    mut io: R,
    incoming: mpsc::UnboundedSender<Stream>,
    idle_timeout: Duration,
) -> ReadEnd {
    let mut incoming = Some(incoming);
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    shared.touch();
                    if let Err(e) = handle_frame(shared, frame, &mut incoming).await {
                        return ReadEnd::Protocol(e);
                    }
                }
                Ok(None) => break,
                Err(e) => return ReadEnd::Protocol(e),
            }
        }
        let deadline = shared.lock().last_activity + idle_timeout;
        buf.reserve(8 * 1024);
        tokio::select! {
            read = io.read_buf(&mut buf) => match read {
                Ok(0) => return ReadEnd::Eof,
                Ok(_) => {}
                Err(e) => return ReadEnd::Io(e),
            },
            _ = tokio::time::sleep_until(deadline) => {
                if shared.lock().last_activity + idle_timeout <= Instant::now() {
                    return ReadEnd::Idle;
                }
            }
            _ = shared.gone.cancelled() => return ReadEnd::Cancelled,
        }
    }
}

async fn handle_frame(
    shared: &Arc<Shared>,
    frame: Frame,
    incoming: &mut Option<mpsc::UnboundedSender<Stream>>,
) -> Result<()> {
    match frame {
        Frame::SynStream { stream_id, flags, headers, .. } => {
            let accepted = on_syn_stream(shared, stream_id, flags, headers, incoming.is_some());
            if let (Some(stream), Some(tx)) = (accepted, incoming.as_ref()) {
                // Nobody accepting any more: the stream drops here and is reset.
                let _ = tx.send(stream);
            }
        }
        Frame::SynReply { stream_id, flags, headers } => {
            let mut st = shared.lock();
            if let Some(s) = st.streams.get_mut(&stream_id) {
                if s.reply.is_some() {
                    s.reset = Some(rst::STREAM_IN_USE);
                    shared.send(Frame::RstStream { stream_id, status: rst::STREAM_IN_USE });
                } else {
                    s.reply = Some(headers);
                    s.recv_fin |= flags & FLAG_FIN != 0;
                }
                s.notify.notify_one();
            }
        }
        Frame::Headers { stream_id, flags, .. } => {
            // Extra headers mean nothing to the Kubernetes protocols; only FIN matters.
            if flags & FLAG_FIN != 0 {
                let mut st = shared.lock();
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.recv_fin = true;
                    s.notify.notify_one();
                }
            }
        }
        Frame::RstStream { stream_id, status } => {
            let mut st = shared.lock();
            if let Some(s) = st.streams.get_mut(&stream_id)
                && s.reset.is_none()
            {
                s.reset = Some(status);
                s.recv.clear();
                s.recv_buffered = 0;
                s.notify.notify_one();
            }
            drop(st);
            shared.window.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            let mut st = shared.lock();
            for e in entries.iter().filter(|e| e.id == SETTINGS_INITIAL_WINDOW_SIZE) {
                let value = i64::from(e.value);
                if value > MAX_WINDOW {
                    return Err(Error::invalid(format!("spdy initial window of {value} bytes is too large")));
                }
                let delta = value - st.peer_initial_window;
                st.peer_initial_window = value;
                st.peer_flow_control = true;
                for s in st.streams.values_mut() {
                    s.send_window += delta;
                }
            }
            drop(st);
            shared.window.notify_waiters();
        }
        Frame::Ping { id } => {
            // Odd ids are the client's; echo the peer's pings, ours come back as answers.
            if id % 2 == shared.peer_parity() {
                shared.send(Frame::Ping { id });
            }
        }
        Frame::GoAway { .. } => {
            // No new streams from the peer; the ones open carry on.
            *incoming = None;
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut st = shared.lock();
            st.peer_flow_control = true;
            if stream_id == 0 {
                st.send_session_window += i64::from(delta);
                if delta == 0 || st.send_session_window > MAX_WINDOW {
                    return Err(Error::invalid(format!("spdy session window update of {delta} overflows")));
                }
            } else if let Some(s) = st.streams.get_mut(&stream_id) {
                s.send_window += i64::from(delta);
                if (delta == 0 || s.send_window > MAX_WINDOW) && s.reset.is_none() {
                    s.reset = Some(rst::FLOW_CONTROL_ERROR);
                    s.notify.notify_one();
                    shared.send(Frame::RstStream { stream_id, status: rst::FLOW_CONTROL_ERROR });
                }
            }
            drop(st);
            shared.window.notify_waiters();
        }
        Frame::Data { stream_id, flags, data } => on_data(shared, stream_id, flags, data).await?,
        Frame::Unknown { frame_type } => tracing::debug!(frame_type, "ignoring unknown spdy control frame"),
    }
    Ok(())
}

/// Acknowledges consumed data on the session window, in batches of half a window.
fn credit_session(shared: &Shared, st: &mut State) {
    if st.recv_session_unacked >= DEFAULT_WINDOW / 2 && !st.closed {
        let delta = std::mem::take(&mut st.recv_session_unacked);
        shared.send(Frame::WindowUpdate { stream_id: 0, delta });
    }
}

fn on_syn_stream(
    shared: &Arc<Shared>,
    id: u32,
    flags: u8,
    headers: Headers,
    accepting: bool,
) -> Option<Stream> {
    let mut st = shared.lock();
    if id % 2 != shared.peer_parity() || id <= st.last_peer_stream {
        shared.send(Frame::RstStream { stream_id: id, status: rst::PROTOCOL_ERROR });
        return None;
    }
    st.last_peer_stream = id;
    if st.goaway_sent || !accepting {
        shared.send(Frame::RstStream { stream_id: id, status: rst::REFUSED_STREAM });
        return None;
    }
    let parity = shared.peer_parity();
    if st.streams.keys().filter(|k| *k % 2 == parity).count() >= MAX_PEER_STREAMS {
        shared.send(Frame::RstStream { stream_id: id, status: rst::REFUSED_STREAM });
        return None;
    }
    let mut state = StreamState::new(st.peer_initial_window);
    state.recv_fin = flags & FLAG_FIN != 0;
    state.sent_fin = flags & FLAG_UNIDIRECTIONAL != 0;
    let notify = state.notify.clone();
    st.streams.insert(id, state);
    Some(Stream { id, headers, shared: shared.clone(), notify })
}

async fn on_data(shared: &Arc<Shared>, id: u32, flags: u8, data: Bytes) -> Result<()> {
    let len = data.len() as i64;
    {
        let mut st = shared.lock();
        let known = if id % 2 == shared.peer_parity() {
            id <= st.last_peer_stream
        } else {
            id < st.next_local_stream
        };
        let kept = match st.streams.get_mut(&id) {
            // Data still in flight for a stream we dropped is expected; for one never opened it is not.
            None => {
                if !known && st.last_invalid_stream != id {
                    st.last_invalid_stream = id;
                    shared.send(Frame::RstStream { stream_id: id, status: rst::INVALID_STREAM });
                }
                false
            }
            Some(s) if s.reset.is_some() => false,
            Some(s) if s.recv_fin => {
                s.reset = Some(rst::STREAM_ALREADY_CLOSED);
                s.notify.notify_one();
                shared.send(Frame::RstStream { stream_id: id, status: rst::STREAM_ALREADY_CLOSED });
                false
            }
            Some(s) => {
                if !data.is_empty() {
                    s.recv_buffered += data.len();
                    s.recv.push_back(data);
                }
                s.recv_fin |= flags & FLAG_FIN != 0;
                s.notify.notify_one();
                true
            }
        };
        if !kept {
            // Discarded data still used the peer's session window: give it back at once.
            st.recv_session_unacked += len as u32;
            credit_session(shared, &mut st);
            return Ok(());
        }
    }
    // A peer that ignores windows is held back by not reading its socket until the reader of this
    // stream catches up.
    loop {
        let notified = shared.consumed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = shared.lock();
            match st.streams.get(&id) {
                Some(s) if !st.closed && s.reset.is_none() && s.recv_buffered > DEFAULT_WINDOW as usize => {}
                _ => return Ok(()),
            }
        }
        tokio::select! {
            _ = notified => {}
            _ = shared.gone.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use tokio::io::DuplexStream;

    /// The far end of a session, driven frame by frame by the test.
    struct RawPeer {
        io: DuplexStream,
        enc: FrameEncoder,
        dec: FrameDecoder,
        buf: BytesMut,
    }

    impl RawPeer {
        async fn send(&mut self, frame: Frame) {
            let mut b = BytesMut::new();
            self.enc.encode(&frame, &mut b).unwrap();
            self.io.write_all(&b).await.unwrap();
        }

        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                let read = tokio::time::timeout(Duration::from_secs(5), self.io.read_buf(&mut self.buf))
                    .await
                    .expect("peer waited 5s for a frame");
                if read.unwrap() == 0 {
                    return None;
                }
            }
        }

        /// Frames arriving within `wait`.
        async fn drain(&mut self, wait: Duration) -> Vec<Frame> {
            let mut out = Vec::new();
            loop {
                if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                    out.push(f);
                    continue;
                }
                match tokio::time::timeout(wait, self.io.read_buf(&mut self.buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return out,
                }
            }
        }
    }

    fn server_with_raw_peer() -> (Session, RawPeer) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let session = Session::new(a, Role::Server, SessionConfig::default());
        (session, RawPeer { io: b, enc: FrameEncoder::new(), dec: FrameDecoder::new(), buf: BytesMut::new() })
    }

    fn syn(id: u32, ty: &str) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: Headers::new().with("streamType", ty),
        }
    }

    async fn accepted(session: &Session) -> Stream {
        let s = tokio::time::timeout(Duration::from_secs(5), session.accept()).await.unwrap().unwrap();
        s.reply(Headers::new()).unwrap();
        s
    }

    fn data_len(frames: &[Frame], id: u32) -> usize {
        frames
            .iter()
            .map(|f| match f {
                Frame::Data { stream_id, data, .. } if *stream_id == id => data.len(),
                _ => 0,
            })
            .sum()
    }

    #[tokio::test]
    async fn client_and_server_sessions_exchange_data_and_half_close() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = Session::new(a, Role::Server, SessionConfig::default());
        let client = Session::new(b, Role::Client, SessionConfig::default());
        let srv = tokio::spawn(async move {
            let s = server.accept().await.unwrap();
            assert_eq!(s.headers().get("streamtype"), Some("stdin"));
            s.reply(Headers::new()).unwrap();
            let mut got = Vec::new();
            while let Some(b) = s.read().await.unwrap() {
                got.extend_from_slice(&b);
            }
            // The client finished sending; we can still answer on the same stream.
            s.write(&got).await.unwrap();
            s.close();
            server.close().await;
            got.len()
        });
        let s = client.open_stream(Headers::new().with("streamType", "stdin")).await.unwrap();
        assert_eq!(s.id(), 1);
        let payload = vec![7u8; 300 * 1024];
        s.write(&payload).await.unwrap();
        s.close();
        let mut echoed = Vec::new();
        while let Some(b) = s.read().await.unwrap() {
            echoed.extend_from_slice(&b);
        }
        assert_eq!(echoed, payload);
        assert_eq!(srv.await.unwrap(), payload.len());
    }

    #[tokio::test]
    async fn pings_are_answered_and_our_own_ping_ids_are_not() {
        let (_session, mut peer) = server_with_raw_peer();
        peer.send(Frame::Ping { id: 1 }).await;
        peer.send(Frame::Ping { id: 2 }).await;
        peer.send(Frame::Ping { id: 3 }).await;
        let frames = peer.drain(Duration::from_millis(200)).await;
        assert_eq!(frames, vec![Frame::Ping { id: 1 }, Frame::Ping { id: 3 }]);
    }

    #[tokio::test]
    async fn a_peer_keeping_windows_is_held_to_them() {
        let (session, mut peer) = server_with_raw_peer();
        // A WINDOW_UPDATE of 1 on the session says the peer keeps windows.
        peer.send(Frame::WindowUpdate { stream_id: 0, delta: 1 }).await;
        peer.send(syn(1, "stdout")).await;
        let s = accepted(&session).await;
        assert!(matches!(peer.next().await, Some(Frame::SynReply { stream_id: 1, .. })));
        let writer = tokio::spawn(async move {
            s.write(&vec![1u8; 100 * 1024]).await.unwrap();
            s
        });
        let frames = peer.drain(Duration::from_millis(300)).await;
        assert_eq!(data_len(&frames, 1), DEFAULT_WINDOW as usize, "stream window stops the writer");
        assert!(!writer.is_finished());
        // More stream window alone is not enough: the session window (64 KiB + 1) binds too.
        peer.send(Frame::WindowUpdate { stream_id: 1, delta: 100 * 1024 }).await;
        let frames = peer.drain(Duration::from_millis(300)).await;
        assert_eq!(data_len(&frames, 1), 1);
        peer.send(Frame::WindowUpdate { stream_id: 0, delta: 100 * 1024 }).await;
        let frames = peer.drain(Duration::from_millis(300)).await;
        assert_eq!(data_len(&frames, 1), 100 * 1024 - DEFAULT_WINDOW as usize - 1);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn settings_change_the_initial_window_of_open_streams() {
        let (session, mut peer) = server_with_raw_peer();
        peer.send(syn(1, "stdout")).await;
        let s = accepted(&session).await;
        peer.send(Frame::Settings {
            flags: 0,
            entries: vec![super::super::frame::Setting {
                flags: 0,
                id: SETTINGS_INITIAL_WINDOW_SIZE,
                value: 1000,
            }],
        })
        .await;
        peer.send(Frame::WindowUpdate { stream_id: 0, delta: 1 << 20 }).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let writer = tokio::spawn(async move { s.write(&[0u8; 5000]).await });
        let frames = peer.drain(Duration::from_millis(300)).await;
        assert_eq!(data_len(&frames, 1), 1000);
        assert!(!writer.is_finished());
        peer.send(Frame::WindowUpdate { stream_id: 1, delta: 4000 }).await;
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_peer_ignoring_windows_is_not_stalled() {
        let (session, mut peer) = server_with_raw_peer();
        peer.send(syn(1, "stdout")).await;
        let s = accepted(&session).await;
        // spdystream never sends WINDOW_UPDATE: the whole megabyte must go out regardless.
        tokio::time::timeout(Duration::from_secs(5), s.write(&vec![3u8; 1 << 20])).await.unwrap().unwrap();
        let frames = peer.drain(Duration::from_millis(300)).await;
        assert_eq!(data_len(&frames, 1), 1 << 20);
    }

    #[tokio::test]
    async fn window_updates_follow_consumption() {
        let (session, mut peer) = server_with_raw_peer();
        peer.send(syn(1, "stdin")).await;
        let s = accepted(&session).await;
        peer.next().await.unwrap(); // SYN_REPLY
        for _ in 0..4 {
            peer.send(Frame::Data { stream_id: 1, flags: 0, data: Bytes::from(vec![0u8; 16 * 1024]) }).await;
        }
        // Nothing is acknowledged before it is read.
        assert!(peer.drain(Duration::from_millis(200)).await.is_empty());
        for _ in 0..2 {
            s.read().await.unwrap().unwrap();
        }
        let frames = peer.drain(Duration::from_millis(200)).await;
        assert!(frames.contains(&Frame::WindowUpdate { stream_id: 1, delta: 32 * 1024 }), "{frames:?}");
        assert!(frames.contains(&Frame::WindowUpdate { stream_id: 0, delta: 32 * 1024 }), "{frames:?}");
    }

    #[tokio::test]
    async fn a_peer_overrunning_our_window_still_gets_its_data_through() {
        let (session, mut peer) = server_with_raw_peer();
        peer.send(Frame::WindowUpdate { stream_id: 0, delta: 1 }).await;
        peer.send(syn(1, "stdin")).await;
        let s1 = accepted(&session).await;
        // 128 KiB on a 64 KiB window: buffered up to a window, the rest waits in the socket.
        for _ in 0..8 {
            peer.send(Frame::Data { stream_id: 1, flags: 0, data: Bytes::from(vec![5u8; 16 * 1024]) }).await;
        }
        peer.send(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() }).await;
        let mut got = 0;
        while let Some(b) = s1.read().await.unwrap() {
            got += b.len();
        }
        assert_eq!(got, 128 * 1024);
        let frames = peer.drain(Duration::from_millis(200)).await;
        assert!(
            !frames.iter().any(|f| matches!(f, Frame::RstStream { .. } | Frame::GoAway { .. })),
            "{frames:?}"
        );
    }

    #[tokio::test]
    async fn a_peer_ignoring_windows_is_held_back_by_not_reading() {
        let (session, mut peer) = server_with_raw_peer();
        peer.send(syn(1, "stdin")).await;
        peer.send(syn(3, "resize")).await;
        let stdin = accepted(&session).await;
        let resize = accepted(&session).await;
        // 128 KiB on stdin, which nobody reads yet, then something on another stream.
        for _ in 0..8 {
            peer.send(Frame::Data { stream_id: 1, flags: 0, data: Bytes::from(vec![0u8; 16 * 1024]) }).await;
        }
        peer.send(Frame::Data { stream_id: 3, flags: 0, data: Bytes::from_static(b"x") }).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), resize.read()).await.is_err(),
            "reader must wait for stdin's reader"
        );
        let mut got = 0;
        while got < 8 * 16 * 1024 {
            got += stdin.read().await.unwrap().unwrap().len();
        }
        assert_eq!(&resize.read().await.unwrap().unwrap()[..], b"x");
    }

    #[tokio::test]
    async fn stream_lifecycle_errors_are_answered_with_resets() {
        let (session, mut peer) = server_with_raw_peer();
        peer.send(syn(2, "x")).await; // even id from a client
        peer.send(syn(5, "x")).await;
        peer.send(syn(3, "x")).await; // ids must grow
        let s5 = accepted(&session).await;
        peer.send(Frame::Data { stream_id: 9, flags: 0, data: Bytes::from_static(b"?") }).await; // never opened
        peer.send(Frame::Data { stream_id: 5, flags: FLAG_FIN, data: Bytes::new() }).await;
        peer.send(Frame::Data { stream_id: 5, flags: 0, data: Bytes::from_static(b"late") }).await;
        let frames = peer.drain(Duration::from_millis(300)).await;
        for expected in [
            Frame::RstStream { stream_id: 2, status: rst::PROTOCOL_ERROR },
            Frame::RstStream { stream_id: 3, status: rst::PROTOCOL_ERROR },
            Frame::RstStream { stream_id: 9, status: rst::INVALID_STREAM },
            Frame::RstStream { stream_id: 5, status: rst::STREAM_ALREADY_CLOSED },
        ] {
            assert!(frames.contains(&expected), "{expected:?} missing from {frames:?}");
        }
        // A stream dropped before we finished sending on it is cancelled.
        peer.send(syn(7, "x")).await;
        drop(accepted(&session).await);
        let frames = peer.drain(Duration::from_millis(300)).await;
        assert!(frames.contains(&Frame::RstStream { stream_id: 7, status: rst::CANCEL }), "{frames:?}");
        drop(s5);
    }

    #[tokio::test]
    async fn peer_reset_and_goaway_end_streams_and_accepting() {
        let (session, mut peer) = server_with_raw_peer();
        peer.send(syn(1, "stdout")).await;
        let s = accepted(&session).await;
        peer.send(Frame::RstStream { stream_id: 1, status: rst::CANCEL }).await;
        peer.send(Frame::GoAway { last_good_stream_id: 0, status: goaway::OK }).await;
        assert!(tokio::time::timeout(Duration::from_secs(5), session.accept()).await.unwrap().is_none());
        assert!(s.write(b"x").await.is_err());
        assert!(s.read().await.is_err());
        drop(peer);
        tokio::time::timeout(Duration::from_secs(5), session.done()).await.unwrap();
    }

    #[tokio::test]
    async fn garbage_from_the_peer_gets_goaway_protocol_error() {
        let (session, mut peer) = server_with_raw_peer();
        peer.io.write_all(&[0x80, 2, 0, 1, 0, 0, 0, 0]).await.unwrap();
        let frames = peer.drain(Duration::from_millis(300)).await;
        assert_eq!(frames, vec![Frame::GoAway { last_good_stream_id: 0, status: goaway::PROTOCOL_ERROR }]);
        tokio::time::timeout(Duration::from_secs(5), session.done()).await.unwrap();
        // The write side was shut after the GOAWAY.
        assert_eq!(peer.io.read(&mut [0u8; 8]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_peer_that_pings_and_never_reads_is_disconnected_not_buffered() {
        // Room for a few answers in the pipe; the peer never reads any of them.
        let (a, mut peer) = tokio::io::duplex(4096);
        let session = Session::new(a, Role::Server, SessionConfig::default());
        let mut enc = FrameEncoder::new();
        let mut batch = BytesMut::new();
        for id in 0..1000u32 {
            enc.encode(&Frame::Ping { id: 2 * id + 1 }, &mut batch).unwrap();
        }
        let mut pinged = 0usize;
        let cut_off = loop {
            if pinged >= 1_000_000 {
                break false;
            }
            match tokio::time::timeout(Duration::from_secs(5), peer.write_all(&batch)).await {
                Ok(Ok(())) => pinged += 1000,
                Ok(Err(_)) => break true,
                Err(_) => panic!("the session neither read nor dropped the peer after {pinged} pings"),
            }
        };
        assert!(cut_off, "a peer that never reads sent {pinged} pings and is still connected");
        // Answers queued: at most the writer's one batch (64 KiB of 12-byte frames) and the
        // control queue; the rest is what the pipes and read buffers held.
        let bound = MAX_QUEUED_CONTROL + 2 * (64 * 1024 / 12) + 4096;
        assert!(pinged <= bound, "{pinged} pings were taken in (bound {bound})");
        tokio::time::timeout(Duration::from_secs(5), session.done()).await.unwrap();
        assert!(session.is_closed());
    }

    #[tokio::test]
    async fn a_long_data_frame_reaches_its_reader_as_it_arrives() {
        let (session, mut peer) = server_with_raw_peer();
        peer.send(syn(1, "stdin")).await;
        let s = accepted(&session).await;
        // A frame announcing 16 MiB, of which only 100 KiB come for now.
        let len = super::super::frame::MAX_PAYLOAD;
        let mut head = BytesMut::new();
        head.put_u32(1);
        head.put_u32((u32::from(FLAG_FIN) << 24) | len as u32);
        peer.io.write_all(&head).await.unwrap();
        peer.io.write_all(&vec![9u8; 100 * 1024]).await.unwrap();
        let mut got = 0;
        while got < 64 * 1024 {
            let piece = tokio::time::timeout(Duration::from_secs(5), s.read())
                .await
                .expect("nothing of a long frame is read before all of it arrived")
                .unwrap()
                .unwrap();
            got += piece.len();
        }
        // The rest, while the reader keeps reading; FIN comes with the last piece.
        let rest = len - 100 * 1024;
        let writer = tokio::spawn(async move {
            let chunk = vec![9u8; 256 * 1024];
            let mut left = rest;
            while left > 0 {
                let n = left.min(chunk.len());
                peer.io.write_all(&chunk[..n]).await.unwrap();
                left -= n;
            }
            peer
        });
        while let Some(piece) = tokio::time::timeout(Duration::from_secs(5), s.read()).await.unwrap().unwrap()
        {
            got += piece.len();
        }
        assert_eq!(got, len);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn idle_sessions_are_closed() {
        let (a, mut b) = tokio::io::duplex(1024);
        let session = Session::new(
            a,
            Role::Server,
            SessionConfig { idle_timeout: Duration::from_millis(200), linger: Duration::from_secs(1) },
        );
        tokio::time::timeout(Duration::from_secs(5), session.done()).await.unwrap();
        let mut buf = BytesMut::new();
        while b.read_buf(&mut buf).await.unwrap() > 0 {}
        let frame = FrameDecoder::new().decode(&mut buf).unwrap();
        assert_eq!(frame, Some(Frame::GoAway { last_good_stream_id: 0, status: goaway::OK }));
    }
}
