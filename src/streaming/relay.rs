//! What every streaming session shares, whatever the transport: a byte channel to the client
//! ([`Sink`]) and from it ([`Source`]) — an SPDY stream or a WebSocket channel — and the pumps
//! between those and the pipes handed to the [`super::Backend`]. The pumps are what make the
//! backend's streams close when the client goes away: this module must never hold a pipe end
//! past the end of its session.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy;
use super::{Reader, TermSize, Writer};
use crate::error::Result;

/// Bytes buffered between the backend and a pump, each way.
const PIPE_SIZE: usize = 64 * 1024;
/// Unparsed resize input allowed before the resize channel is given up as garbage.
const MAX_RESIZE_BACKLOG: usize = 64 * 1024;

/// A byte channel to the client.
#[async_trait::async_trait]
pub(crate) trait Sink: Send + Sync {
    /// Sends `data` to the client.
    async fn write(&self, data: &[u8]) -> Result<()>;
    /// Tells the client nothing more comes on this channel, where the transport can say so.
    fn close(&self);
}

/// A byte channel from the client.
#[async_trait::async_trait]
pub(crate) trait Source: Send {
    /// The next bytes; `None` once the client finished sending or the channel broke.
    async fn read(&mut self) -> Option<Bytes>;
}

/// An SPDY stream as a channel to the client.
pub(crate) struct SpdySink(pub Arc<spdy::Stream>);

#[async_trait::async_trait]
impl Sink for SpdySink {
    async fn write(&self, data: &[u8]) -> Result<()> {
        self.0.write(data).await
    }
    fn close(&self) {
        self.0.close();
    }
}

/// An SPDY stream as a channel from the client. A reset reads as the end.
pub(crate) struct SpdySource(pub Arc<spdy::Stream>);

#[async_trait::async_trait]
impl Source for SpdySource {
    async fn read(&mut self) -> Option<Bytes> {
        self.0.read().await.ok().flatten()
    }
}

/// A writer for the backend whose bytes reach `sink`, and the pump that carries them: it ends
/// (closing `sink`) once the backend drops the writer, or when the client stops taking data (the
/// backend's writes then fail).
pub(crate) fn outbound(sink: Arc<dyn Sink>) -> (Writer, impl Future<Output = ()> + Send + 'static) {
    let (backend_end, mut our_end) = tokio::io::duplex(PIPE_SIZE);
    let pump = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match our_end.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        sink.close();
    };
    (Box::pin(backend_end), pump)
}

/// A reader for the backend fed from `source`, and the pump that feeds it: the backend reads the
/// end of input once the client closes its side (or goes away).
pub(crate) fn inbound(mut source: Box<dyn Source>) -> (Reader, impl Future<Output = ()> + Send + 'static) {
    let (backend_end, mut our_end) = tokio::io::duplex(PIPE_SIZE);
    let pump = async move {
        while let Some(data) = source.read().await {
            if our_end.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = our_end.shutdown().await;
    };
    (Box::pin(backend_end), pump)
}

#[derive(Deserialize)]
struct WireSize {
    // Go decodes field names without regard to case; the clients send "Width" and "Height".
    #[serde(rename = "Width", alias = "width")]
    width: u16,
    #[serde(rename = "Height", alias = "height")]
    height: u16,
}

/// Turns the resize channel's JSON objects (`{"Width":80,"Height":24}`, one after another, split
/// anywhere) into terminal sizes for the backend.
pub(crate) async fn pump_resize(mut source: Box<dyn Source>, sizes: mpsc::Sender<TermSize>) {
    let mut parser = ResizeParser::default();
    let mut parsed = Vec::new();
    while let Some(data) = source.read().await {
        let fed = parser.feed(&data, &mut parsed);
        for size in parsed.drain(..) {
            if sizes.send(size).await.is_err() {
                return;
            }
        }
        if let Err(why) = fed {
            tracing::debug!(why, "giving up on a resize channel");
            return;
        }
    }
}

/// The resize channel's parser: bytes in, whole sizes out, the start of an object kept for the
/// next bytes (at most [`MAX_RESIZE_BACKLOG`] of it).
#[derive(Default)]
pub(crate) struct ResizeParser {
    backlog: Vec<u8>,
}

impl ResizeParser {
    /// Appends to `out` the sizes `data` completes. An error once the channel carried something
    /// other than sizes, or an object longer than [`MAX_RESIZE_BACKLOG`]: the channel is then
    /// given up (the sizes before the error are still in `out`).
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        out: &mut Vec<TermSize>,
    ) -> std::result::Result<(), &'static str> {
        self.backlog.extend_from_slice(data);
        let mut objects = serde_json::Deserializer::from_slice(&self.backlog).into_iter::<WireSize>();
        loop {
            match objects.next() {
                Some(Ok(s)) => out.push(TermSize { width: s.width, height: s.height }),
                // An object cut short: the rest comes with the next bytes.
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return Err("the channel carries something other than sizes"),
                None => break,
            }
        }
        let used = objects.byte_offset();
        self.backlog.drain(..used);
        if self.backlog.len() > MAX_RESIZE_BACKLOG {
            return Err("the channel carries an endless object");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    struct Chunks(VecDeque<&'static [u8]>);

    #[async_trait::async_trait]
    impl Source for Chunks {
        async fn read(&mut self) -> Option<Bytes> {
            self.0.pop_front().map(Bytes::from_static)
        }
    }

    #[derive(Default)]
    struct Collect(Mutex<(Vec<u8>, bool)>);

    #[async_trait::async_trait]
    impl Sink for Collect {
        async fn write(&self, data: &[u8]) -> Result<()> {
            self.0.lock().unwrap().0.extend_from_slice(data);
            Ok(())
        }
        fn close(&self) {
            self.0.lock().unwrap().1 = true;
        }
    }

    #[tokio::test]
    async fn resize_objects_split_across_reads_are_reassembled() {
        let source = Chunks(VecDeque::from(vec![
            &b"{\"Width\":100,\"Hei"[..],
            &b"ght\":30}\n{\"width\":80,\"height\":24}\n{\"Width\""[..],
            &b":1,\"Height\":2}"[..],
        ]));
        let (tx, mut rx) = mpsc::channel(8);
        pump_resize(Box::new(source), tx).await;
        let mut got = Vec::new();
        while let Some(s) = rx.recv().await {
            got.push((s.width, s.height));
        }
        assert_eq!(got, vec![(100, 30), (80, 24), (1, 2)]);
    }

    #[tokio::test]
    async fn garbage_on_the_resize_channel_stops_it() {
        let source = Chunks(VecDeque::from(vec![
            &b"{\"Width\":1,\"Height\":2} \"tall\""[..],
            &b"{\"Width\":3,\"Height\":4}"[..],
        ]));
        let (tx, mut rx) = mpsc::channel(8);
        pump_resize(Box::new(source), tx).await;
        assert_eq!(rx.recv().await, Some(TermSize { width: 1, height: 2 }));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn pumps_close_the_far_side_when_either_end_goes() {
        let sink = Arc::new(Collect::default());
        let (mut writer, pump) = outbound(sink.clone());
        let pump = tokio::spawn(pump);
        writer.write_all(b"out").await.unwrap();
        drop(writer);
        pump.await.unwrap();
        assert_eq!(*sink.0.lock().unwrap(), (b"out".to_vec(), true));

        let (mut reader, pump) = inbound(Box::new(Chunks(VecDeque::from(vec![&b"in"[..]]))));
        tokio::spawn(pump);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"in");

        // The pump gone (its session ended): the backend's writes fail instead of hanging.
        let (mut writer, pump) = outbound(sink);
        drop(pump);
        assert!(writer.write_all(b"x").await.is_err());
    }
}
