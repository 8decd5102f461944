//! Kubernetes' channel protocol over WebSocket (`channel.k8s.io` and its versions): each message
//! is one channel's data, its first byte the channel number (in the base64 variants, an ASCII
//! digit followed by base64 text); `v5.channel.k8s.io` adds a close signal (255, then the channel
//! to close). Also the byte-stream adapter for SPDY tunnelled in WebSocket binary messages
//! (`SPDY/3.1+portforward.k8s.io`). This module only moves bytes; it must never decide what a
//! channel means, nor hold more of what a client sends than [`MAX_MESSAGE`] per message and
//! [`CHANNEL_BUFFER`] per channel.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::relay::{Sink, Source};
use crate::error::{Error, Result};

/// The v5 close signal: a message of two bytes, this and the channel to close.
const CLOSE_SIGNAL: u8 = 255;
/// After our close frame, how long the client gets to answer before the connection is dropped.
const LINGER: Duration = Duration::from_secs(5);
/// The largest message (and frame) a client may send; a larger one ends the connection. The
/// clients send what they read in one go (32 KiB buffers in client-go and kubectl), and
/// tungstenite's defaults (64 MiB messages, 16 MiB frames) are buffered whole before we see them.
pub(crate) const MAX_MESSAGE: usize = 1 << 20;
/// Bytes of client data waiting for one channel's reader; past it the connection is not read
/// until the reader catches up (a message larger than this waits for an empty channel).
pub(crate) const CHANNEL_BUFFER: usize = 256 * 1024;
/// Messages waiting for one channel's reader, whatever their size.
const CHANNEL_MESSAGES: usize = 16;
/// What tungstenite may buffer toward a client that does not read: our own messages are at most
/// a relay buffer's worth (32 KiB, a third more in base64), and its pongs replace one another
/// once this is full instead of piling up.
const MAX_WRITE_BUFFER: usize = 256 * 1024;

/// The WebSocket limits of every streaming connection.
pub(crate) fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
}

/// How channel data travels in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Binary messages: the channel byte, then the data.
    Binary,
    /// Text messages: the channel as an ASCII digit, then the data in standard base64.
    Base64,
}

impl Codec {
    /// The codec a negotiated subprotocol implies.
    pub(crate) fn for_protocol(protocol: &str) -> Codec {
        if protocol.contains("base64.") { Codec::Base64 } else { Codec::Binary }
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))
}

/// A WebSocket carrying numbered channels.
pub(crate) struct ChannelConn {
    out: mpsc::Sender<Message>,
    codec: Codec,
    gone: CancellationToken,
    _tasks: JoinSet<()>,
}

impl ChannelConn {
    /// Starts reading and writing `ws`. Returns the connection and a [`Source`] for each channel
    /// in `readable`; messages on other channels are ignored. With `close_signal` (v5), the client
    /// can end a readable channel early.
    pub(crate) fn open<S>(
        ws: WebSocketStream<S>,
        codec: Codec,
        readable: &[u8],
        close_signal: bool,
        idle_timeout: Duration,
    ) -> (ChannelConn, HashMap<u8, ChannelSource>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let (out_tx, out_rx) = mpsc::channel(16);
        let mut senders = HashMap::new();
        let mut sources = HashMap::new();
        for &ch in readable {
            let (tx, rx) = mpsc::channel(CHANNEL_MESSAGES);
            senders.insert(ch, ChannelQueue { tx, room: Arc::new(Semaphore::new(CHANNEL_BUFFER)) });
            sources.insert(ch, ChannelSource { rx });
        }
        let gone = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(write_loop(sink, out_rx, gone.clone()));
        tasks.spawn(read_loop(stream, senders, codec, close_signal, idle_timeout, gone.clone()));
        (ChannelConn { out: out_tx, codec, gone, _tasks: tasks }, sources)
    }

    /// The channel `ch` toward the client.
    pub(crate) fn sink(&self, ch: u8) -> Arc<dyn Sink> {
        Arc::new(ChannelSink { ch, codec: self.codec, out: self.out.clone() })
    }

    /// Resolves when the connection is gone.
    pub(crate) fn done(&self) -> impl Future<Output = ()> + Send + 'static {
        self.gone.clone().cancelled_owned()
    }

    /// Sends a normal close after everything queued and waits a moment for the client's answer.
    pub(crate) async fn close(self) {
        if self.out.send(normal_close()).await.is_ok() {
            let _ = tokio::time::timeout(LINGER, self.gone.cancelled()).await;
        }
    }
}

async fn write_loop<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Message>,
    gone: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = rx.recv().await {
        let last = matches!(msg, Message::Close(_));
        if let Err(e) = sink.send(msg).await {
            tracing::debug!(error = %e, "websocket write failed");
            gone.cancel();
            return;
        }
        if last {
            return;
        }
    }
}

async fn read_loop<S>(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    mut senders: HashMap<u8, ChannelQueue>,
    codec: Codec,
    close_signal: bool,
    idle_timeout: Duration,
    gone: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle_timeout, stream.next()) => next,
            _ = gone.cancelled() => break,
        };
        let msg = match next {
            Err(_) => {
                tracing::debug!("websocket connection idle, closing");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // Among others, a message or frame over MAX_MESSAGE.
                tracing::debug!(error = %e, "websocket read failed");
                break;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        let incoming = match msg {
            Message::Binary(b) => parse_message(b, false, codec, close_signal),
            Message::Text(t) => parse_message(t.into(), true, codec, close_signal),
            // Pings are answered by tungstenite; after a close the stream ends.
            _ => continue,
        };
        match incoming {
            Incoming::Data(ch, data) => {
                if let Some(queue) = senders.get(&ch)
                    && !queue.send(data).await
                {
                    senders.remove(&ch);
                }
            }
            // The client will send nothing more on this channel: its reader sees the end.
            Incoming::Close(ch) => {
                senders.remove(&ch);
            }
            Incoming::Ignored => {}
            Incoming::Malformed(why) => {
                tracing::debug!(why, "malformed websocket message");
                break;
            }
        }
    }
    gone.cancel();
}

/// What one message from the client says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// Data for a channel (the channel byte taken off).
    Data(u8, Bytes),
    /// The v5 close signal for a channel.
    Close(u8),
    /// Nothing to act on: empty, or not decodable in the codec (the kubelet skips those too).
    Ignored,
    /// Something the connection cannot go on after.
    Malformed(&'static str),
}

/// Reads one data message (`text` for a text message) the way the channel protocol of `codec`
/// and `close_signal` (v5) says.
pub(crate) fn parse_message(payload: Bytes, text: bool, codec: Codec, close_signal: bool) -> Incoming {
    let data = match (text, codec) {
        (true, Codec::Base64) => match decode_base64(&payload) {
            Some(b) => b,
            None => return Incoming::Ignored,
        },
        _ => payload,
    };
    let Some(&ch) = data.first() else { return Incoming::Ignored };
    if close_signal && ch == CLOSE_SIGNAL {
        return match data.len() {
            2 => Incoming::Close(data[1]),
            _ => Incoming::Malformed("a close signal is two bytes"),
        };
    }
    Incoming::Data(ch, data.slice(1..))
}

/// A base64-codec message back into the channel byte and the data.
fn decode_base64(text: &[u8]) -> Option<Bytes> {
    let (&digit, rest) = text.split_first()?;
    let ch = digit.checked_sub(b'0')?;
    let data = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
    let mut out = BytesMut::with_capacity(1 + data.len());
    out.put_u8(ch);
    out.put_slice(&data);
    Some(out.freeze())
}

/// The read loop's end of one channel from the client: each message holds its size (up to
/// [`CHANNEL_BUFFER`]) of the channel's room until its reader takes it.
struct ChannelQueue {
    tx: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
}

impl ChannelQueue {
    /// Queues `data`, waiting for room; false once the channel's reader is gone (dropping the
    /// reader drops what it had queued, which gives the room back).
    async fn send(&self, data: Bytes) -> bool {
        let size = data.len().clamp(1, CHANNEL_BUFFER) as u32;
        let Ok(permit) = self.room.clone().acquire_many_owned(size).await else { return false };
        self.tx.send((data, permit)).await.is_ok()
    }
}

/// One channel toward the client.
struct ChannelSink {
    ch: u8,
    codec: Codec,
    out: mpsc::Sender<Message>,
}

#[async_trait::async_trait]
impl Sink for ChannelSink {
    async fn write(&self, data: &[u8]) -> Result<()> {
        let msg = match self.codec {
            Codec::Binary => {
                let mut b = BytesMut::with_capacity(1 + data.len());
                b.put_u8(self.ch);
                b.put_slice(data);
                Message::Binary(b.freeze())
            }
            Codec::Base64 => {
                let mut text = String::with_capacity(2 + data.len() * 4 / 3);
                text.push(char::from(b'0' + self.ch));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                Message::text(text)
            }
        };
        self.out.send(msg).await.map_err(|_| Error::unavailable("websocket connection closed"))
    }

    fn close(&self) {
        // The channel protocol has no way to end one channel from the server's side.
    }
}

/// One channel from the client.
pub(crate) struct ChannelSource {
    rx: mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>,
}

#[async_trait::async_trait]
impl Source for ChannelSource {
    async fn read(&mut self) -> Option<Bytes> {
        // The permit goes with the message: its room is free again once it is taken.
        self.rx.recv().await.map(|(data, _room)| data)
    }
}

/// Unwraps a byte stream carried in binary messages (SPDY tunnelled through a WebSocket). Returns
/// the byte stream and the pump that must run alongside its user: the pump ends after the stream's
/// user shut its write side (a normal close is sent) and the client closed the WebSocket.
pub(crate) fn byte_stream<S>(
    ws: WebSocketStream<S>,
) -> (DuplexStream, impl Future<Output = ()> + Send + 'static)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let pump = async move {
        let (mut sink, mut stream) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(ours);
        let from_client = async {
            while let Some(Ok(msg)) = stream.next().await {
                let data = match msg {
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        };
        let to_client = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sink.send(normal_close()).await;
        };
        tokio::join!(from_client, to_client);
    };
    (theirs, pump)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (
            WebSocketStream::from_raw_socket(a, Role::Server, Some(config())).await,
            WebSocketStream::from_raw_socket(b, Role::Client, None).await,
        )
    }

    #[tokio::test]
    async fn channels_are_demultiplexed_and_v5_close_ends_one() {
        let (server, mut client) = pair().await;
        let (conn, mut sources) =
            ChannelConn::open(server, Codec::Binary, &[0, 4], true, Duration::from_secs(60));
        client.send(Message::binary(vec![0, b'h', b'i'])).await.unwrap();
        client.send(Message::binary(vec![7, b'?'])).await.unwrap(); // not readable: ignored
        client.send(Message::binary(vec![4, b'{'])).await.unwrap();
        client.send(Message::binary(vec![CLOSE_SIGNAL, 0])).await.unwrap();
        let mut stdin = sources.remove(&0).unwrap();
        let mut resize = sources.remove(&4).unwrap();
        assert_eq!(stdin.read().await.unwrap(), Bytes::from_static(b"hi"));
        assert_eq!(stdin.read().await, None);
        assert_eq!(resize.read().await.unwrap(), Bytes::from_static(b"{"));

        conn.sink(1).write(b"out").await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(vec![1, b'o', b'u', b't']));
        let closing = tokio::spawn(conn.close());
        match client.next().await.unwrap().unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("expected a close, got {other:?}"),
        }
        // tungstenite answers the close; the server side then finishes.
        assert!(client.next().await.is_none());
        closing.await.unwrap();
    }

    #[tokio::test]
    async fn base64_codec_roundtrips() {
        let (server, mut client) = pair().await;
        let (conn, mut sources) =
            ChannelConn::open(server, Codec::Base64, &[0], false, Duration::from_secs(60));
        client.send(Message::text("0aGVsbG8=")).await.unwrap();
        assert_eq!(sources.get_mut(&0).unwrap().read().await.unwrap(), Bytes::from_static(b"hello"));
        conn.sink(2).write(b"\xffbin").await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text("2/2Jpbg=="));
    }

    #[tokio::test]
    async fn messages_and_frames_over_the_limit_end_the_connection() {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

        // A message of exactly the limit (channel byte included) goes through.
        let (server, mut client) = pair().await;
        let (_conn, mut sources) =
            ChannelConn::open(server, Codec::Binary, &[0], false, Duration::from_secs(60));
        let mut msg = vec![0u8; MAX_MESSAGE];
        msg[1] = 1;
        client.send(Message::binary(msg)).await.unwrap();
        let mut got = 0;
        while got < MAX_MESSAGE - 1 {
            got += sources.get_mut(&0).unwrap().read().await.unwrap().len();
        }

        // One byte more, in one frame: nothing of it reaches the channel, the connection ends.
        let (server, mut client) = pair().await;
        let (conn, mut sources) =
            ChannelConn::open(server, Codec::Binary, &[0], false, Duration::from_secs(60));
        let sending = tokio::spawn(async move {
            let _ = client.send(Message::binary(vec![0u8; MAX_MESSAGE + 1])).await;
            client
        });
        let got = sources.get_mut(&0).unwrap().read().await.map(|b| b.len());
        assert_eq!(got, None, "an oversized frame was delivered");
        conn.done().await;
        drop(sending);

        // Frames under the limit adding up to a message over it: the same.
        let (server, mut client) = pair().await;
        let (conn, mut sources) =
            ChannelConn::open(server, Codec::Base64, &[0], false, Duration::from_secs(60));
        let sending = tokio::spawn(async move {
            let part = vec![b'A'; MAX_MESSAGE / 2];
            let mut first = part.clone();
            first[0] = b'0';
            let frames = [
                Frame::message(first, OpCode::Data(Data::Text), false),
                Frame::message(part.clone(), OpCode::Data(Data::Continue), false),
                Frame::message(part, OpCode::Data(Data::Continue), true),
            ];
            for f in frames {
                if client.send(Message::Frame(f)).await.is_err() {
                    break;
                }
            }
            client
        });
        let got = sources.get_mut(&0).unwrap().read().await.map(|b| b.len());
        assert_eq!(got, None, "an oversized message was delivered");
        conn.done().await;
        drop(sending);
    }

    #[tokio::test]
    async fn a_channel_queue_holds_at_most_its_room() {
        use futures_util::FutureExt;

        let (tx, rx) = mpsc::channel(CHANNEL_MESSAGES);
        let queue = ChannelQueue { tx, room: Arc::new(Semaphore::new(CHANNEL_BUFFER)) };
        let mut source = ChannelSource { rx };
        let part = Bytes::from(vec![1u8; CHANNEL_BUFFER / 2]);
        assert_eq!(queue.send(part.clone()).now_or_never(), Some(true));
        assert_eq!(queue.send(part.clone()).now_or_never(), Some(true));
        // The room is full: one byte more waits for the reader.
        assert_eq!(queue.send(Bytes::from_static(b"x")).now_or_never(), None);
        assert_eq!(source.read().await.unwrap().len(), CHANNEL_BUFFER / 2);
        assert_eq!(queue.send(Bytes::from_static(b"x")).now_or_never(), Some(true));
        // A message larger than the room waits until the channel is empty.
        let huge = Bytes::from(vec![2u8; 3 * CHANNEL_BUFFER]);
        assert_eq!(queue.send(huge.clone()).now_or_never(), None);
        source.read().await.unwrap();
        assert_eq!(queue.send(huge.clone()).now_or_never(), None);
        assert_eq!(source.read().await.unwrap(), Bytes::from_static(b"x"));
        assert_eq!(queue.send(huge).now_or_never(), Some(true));
        assert_eq!(queue.send(Bytes::from_static(b"y")).now_or_never(), None);
        // A reader gone gives its room back, and the queue says so.
        drop(source);
        assert_eq!(queue.send(Bytes::from_static(b"y")).now_or_never(), Some(false));
    }

    #[tokio::test]
    async fn a_channel_nobody_reads_stops_the_connection_being_read() {
        let (server, mut client) = pair().await;
        let (_conn, mut sources) =
            ChannelConn::open(server, Codec::Binary, &[0], false, Duration::from_secs(60));
        // Two messages filling more than a channel's room, then a ping: the ping is answered only
        // once the connection is read again.
        let mut msg = vec![7u8; CHANNEL_BUFFER * 3 / 4];
        msg[0] = 0;
        client.send(Message::binary(msg.clone())).await.unwrap();
        client.send(Message::binary(msg)).await.unwrap();
        client.send(Message::Ping(Bytes::from_static(b"p"))).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), client.next()).await.is_err(),
            "the server read past a full channel"
        );
        let mut stdin = sources.remove(&0).unwrap();
        assert_eq!(stdin.read().await.unwrap().len(), CHANNEL_BUFFER * 3 / 4 - 1);
        assert_eq!(client.next().await.unwrap().unwrap(), Message::Pong(Bytes::from_static(b"p")));
        assert_eq!(stdin.read().await.unwrap().len(), CHANNEL_BUFFER * 3 / 4 - 1);
    }

    #[tokio::test]
    async fn byte_stream_carries_bytes_both_ways_and_closes_normally() {
        let (server, mut client) = pair().await;
        let (mut io, pump) = byte_stream(server);
        let pump = tokio::spawn(pump);
        client.send(Message::binary(b"abc".to_vec())).await.unwrap();
        client.send(Message::binary(b"def".to_vec())).await.unwrap();
        let mut got = [0u8; 6];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcdef");
        io.write_all(b"xyz").await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(b"xyz".to_vec()));
        io.shutdown().await.unwrap();
        assert!(matches!(client.next().await.unwrap().unwrap(), Message::Close(_)));
        assert!(client.next().await.is_none());
        pump.await.unwrap();
        assert_eq!(io.read(&mut got).await.unwrap(), 0);
    }
}
