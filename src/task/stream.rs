//! berthd's side of a streaming shim call (Exec with streams, Attach) once it is answered: a
//! [`ProcessStream`] whose [`StreamSender`] writes the client's input frames and whose
//! [`StreamReceiver`] reads the output frames, each half usable from its own task.
//!
//! The connection belongs to the session: dropping both halves closes it, which kills an exec'd
//! process or detaches an attacher. Dropping only the sender does not close the connection (the
//! shim would take a half-close for a client going away). This module must never interpret the
//! output beyond framing.

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, ErrorKind, Result};
use crate::shim::frame::{MAX_CHUNK, MAX_FRAME, read_message_max, write_message};
use crate::shim::proto::{self, stream_frame::Frame};

/// What the process (or container) sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOutput {
    /// Output of stdout (with a tty: of the terminal).
    Stdout(Vec<u8>),
    /// Output of stderr (never with a tty).
    Stderr(Vec<u8>),
    /// The process exited (128 + signal for a signal); the last item of the stream.
    Exit(i32),
}

/// A streaming session with a process in a container.
pub struct ProcessStream {
    /// The exec'd process's pid in the shim's pid namespace; 0 for an attach.
    pub pid: u32,
    /// Input to the process.
    pub sender: StreamSender,
    /// Output of the process, then its exit.
    pub receiver: StreamReceiver,
}

/// The input half: stdin, its end, terminal resizes.
pub struct StreamSender {
    w: Pin<Box<dyn AsyncWrite + Send>>,
    what: String,
}

/// The output half.
pub struct StreamReceiver {
    r: Pin<Box<dyn AsyncRead + Send>>,
    what: String,
    done: bool,
}

impl ProcessStream {
    /// A session over an answered connection's two halves; `what` names it in errors ("exec in
    /// container c1").
    pub(crate) fn new(
        pid: u32,
        r: impl AsyncRead + Send + 'static,
        w: impl AsyncWrite + Send + 'static,
        what: String,
    ) -> ProcessStream {
        ProcessStream {
            pid,
            sender: StreamSender { w: Box::pin(w), what: what.clone() },
            receiver: StreamReceiver { r: Box::pin(r), what, done: false },
        }
    }
}

impl StreamSender {
    /// Writes `data` to the process's stdin (in frames of at most 32 KiB). Waits while the
    /// process does not read.
    pub async fn stdin(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_CHUNK) {
            self.send(Frame::Stdin(chunk.to_vec())).await?;
        }
        Ok(())
    }

    /// Ends the process's stdin: an exec'd process reading a pipe sees end of file; for an attach
    /// it closes the container's stdin for good (the CRI's stdin_once).
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.send(Frame::StdinClose(proto::StdinClose {})).await
    }

    /// Resizes the process's terminal (ignored without one).
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let size = proto::Resize { width: width.into(), height: height.into() };
        self.send(Frame::Resize(size)).await
    }

    async fn send(&mut self, frame: Frame) -> Result<()> {
        write_message(&mut self.w, &proto::StreamFrame { frame: Some(frame) }).await.map_err(|e| {
            Error::with_source(ErrorKind::Unavailable, format!("{}: sending input", self.what), e)
        })
    }
}

impl StreamReceiver {
    /// The next output; `None` once the stream ended (after the exit, or when the shim closed the
    /// connection without one: an attacher that fell behind, or a shim that went away).
    pub async fn next(&mut self) -> Result<Option<StreamOutput>> {
        while !self.done {
            let frame =
                read_message_max::<_, proto::StreamFrame>(&mut self.r, MAX_FRAME).await.map_err(|e| {
                    self.done = true;
                    Error::with_source(ErrorKind::Unavailable, format!("{}: reading output", self.what), e)
                })?;
            let Some(frame) = frame else {
                self.done = true;
                return Ok(None);
            };
            match frame.frame {
                Some(Frame::Stdout(data)) => return Ok(Some(StreamOutput::Stdout(data))),
                Some(Frame::Stderr(data)) => return Ok(Some(StreamOutput::Stderr(data))),
                Some(Frame::Exit(exit)) => {
                    self.done = true;
                    return Ok(Some(StreamOutput::Exit(exit.exit_code)));
                }
                // Input frames, or a kind this berthd does not know yet.
                _ => continue,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::frame::{Output, encode_output, read_message};

    #[tokio::test]
    async fn input_is_framed_and_chunked() {
        let (ours, mut shim) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(ours);
        let mut stream = ProcessStream::new(0, r, w, "exec in container c".into());
        let big = vec![7u8; MAX_CHUNK * 2 + 1];
        stream.sender.stdin(&big).await.unwrap();
        stream.sender.resize(120, 50).await.unwrap();
        stream.sender.close_stdin().await.unwrap();
        drop(stream);
        let mut frames = Vec::new();
        while let Some(f) = read_message::<_, proto::StreamFrame>(&mut shim).await.unwrap() {
            frames.push(f.frame.unwrap());
        }
        let sizes: Vec<usize> = frames
            .iter()
            .filter_map(|f| if let Frame::Stdin(d) = f { Some(d.len()) } else { None })
            .collect();
        assert_eq!(sizes, [MAX_CHUNK, MAX_CHUNK, 1]);
        assert_eq!(frames[3], Frame::Resize(proto::Resize { width: 120, height: 50 }));
        assert_eq!(frames[4], Frame::StdinClose(proto::StdinClose {}));
    }

    #[tokio::test]
    async fn output_ends_after_the_exit_or_at_a_close() {
        let mut wire = Vec::new();
        encode_output(Output::Stdout, b"out", &mut wire);
        encode_output(Output::Stderr, b"err", &mut wire);
        let stdin = proto::StreamFrame { frame: Some(Frame::Stdin(b"echo".to_vec())) };
        wire.extend(prost::Message::encode_length_delimited_to_vec(&stdin));
        let exit = proto::StreamFrame { frame: Some(Frame::Exit(proto::StreamExit { exit_code: 7 })) };
        wire.extend(prost::Message::encode_length_delimited_to_vec(&exit));
        encode_output(Output::Stdout, b"after the exit", &mut wire);
        let mut stream = ProcessStream::new(1, std::io::Cursor::new(wire), tokio::io::sink(), "x".into());
        let mut got = Vec::new();
        while let Some(o) = stream.receiver.next().await.unwrap() {
            got.push(o);
        }
        assert_eq!(
            got,
            [
                StreamOutput::Stdout(b"out".to_vec()),
                StreamOutput::Stderr(b"err".to_vec()),
                StreamOutput::Exit(7)
            ]
        );

        let mut cut = Vec::new();
        encode_output(Output::Stdout, b"partial", &mut cut);
        cut.truncate(cut.len() - 2);
        let mut stream = ProcessStream::new(1, std::io::Cursor::new(cut), tokio::io::sink(), "attach".into());
        let err = stream.receiver.next().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().starts_with("attach: reading output"), "{err}");
        assert_eq!(stream.receiver.next().await.unwrap(), None);
    }
}
