//! The shim's side of the streaming calls (Exec with streams, Attach) once they are answered: the
//! connection then carries `StreamFrame`s both ways. [`pump_input`] applies the client's frames
//! (stdin, its end, terminal resizes); [`pump_exec_output`] and [`pump_attach_output`] send the
//! process's output and finally its exit.
//!
//! Output is sent as it is read, one chunk at a time, and nothing is read while a chunk waits to
//! be written: a client that does not keep up slows the exec'd process down (its pipe fills)
//! instead of making the shim buffer. This module must never decide what a call means (which
//! process, which container): the server hands it descriptors and channels.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::unix::ReadHalf;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::cri_log::Stream;
use super::fd;
use super::frame::{MAX_CHUNK, MAX_FRAME, Output, encode_output, read_message_max, write_message};
use super::proto::{self, stream_frame::Frame};
use super::reaper::Exit;
use super::stdio::{Chunk, StdinWriter};

/// How often a stalled stdin write looks whether the client is still there.
const HANGUP_POLL: Duration = Duration::from_millis(250);

/// Applies the client's frames until it closes the connection (or its sending side), which is
/// when this returns. Stdin goes to `stdin` (dropped without one), resizes to the pty `console`
/// (ignored without one). A process that does not read its stdin cannot hold this up past the
/// client's going away: a stdin write waiting for the process is abandoned when the client hangs
/// up, even with more of its frames unread.
pub async fn pump_input(rd: &mut ReadHalf<'_>, stdin: Option<&StdinWriter>, console: Option<&OwnedFd>) {
    loop {
        let frame = match read_message_max::<_, proto::StreamFrame>(rd, MAX_FRAME).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "reading a stream frame failed");
                return;
            }
        };
        match frame.frame {
            Some(Frame::Stdin(data)) => {
                if let Some(stdin) = stdin {
                    // The write first: input that can be delivered is, even from a client that
                    // has already hung up.
                    tokio::select! {
                        biased;
                        () = stdin.write(&data) => {}
                        () = hung_up(rd) => return,
                    }
                }
            }
            Some(Frame::StdinClose(_)) => {
                if let Some(stdin) = stdin {
                    // Another attacher's write may hold the stdin.
                    tokio::select! {
                        biased;
                        () = stdin.close() => {}
                        () = hung_up(rd) => return,
                    }
                }
            }
            Some(Frame::Resize(size)) => {
                let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                if let Some(console) = console
                    && let Err(e) = fd::set_window_size(console, clamp(size.width), clamp(size.height))
                {
                    tracing::debug!(error = %e, "resizing the pty failed");
                }
            }
            _ => tracing::debug!("ignoring a frame a client does not send"),
        }
    }
}

/// Resolves once the client has hung up (or the socket failed), even with frames of it still
/// unread: epoll reports the peer's shutdown (EPOLLRDHUP) as read-closed, a state that stays set.
/// While unread frames keep the socket readable, readiness cannot be waited for, so it is looked
/// at every [`HANGUP_POLL`].
async fn hung_up(rd: &ReadHalf<'_>) {
    loop {
        match rd.ready(Interest::READABLE).await {
            Ok(ready) if !ready.is_read_closed() => tokio::time::sleep(HANGUP_POLL).await,
            _ => return,
        }
    }
}

/// Writes the exit frame, the last one of a streaming call.
pub async fn write_exit<W: AsyncWrite + Unpin>(wr: &mut W, exit_code: i32) -> io::Result<()> {
    let frame = proto::StreamFrame { frame: Some(Frame::Exit(proto::StreamExit { exit_code })) };
    write_message(wr, &frame).await
}

/// One of an exec's outputs: the shim's read end, and whether the client wants what it carries
/// (a pty is read even when not wanted, or the process would block on it).
pub struct ExecOutput {
    pub rx: pipe::Receiver,
    pub output: Output,
    pub wanted: bool,
}

/// Forwards an exec's outputs (at most two: stdout and stderr) until they end and the process has
/// exited (`exit` resolves), or for at most `drain` after the exit (a background child may hold a
/// pipe open forever). The exit is stored in `exited` as soon as it is known. Returns `Err` if
/// writing to the client fails (it went away); the caller then kills the process, or on `Ok`
/// sends the exit frame.
pub async fn pump_exec_output<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut outputs: [Option<ExecOutput>; 2],
    exit: &mut oneshot::Receiver<Exit>,
    exited: &mut Option<Exit>,
    drain: Duration,
) -> io::Result<()> {
    // The buffers live only as long as the exec: a shim with no exec running holds none.
    let buffer = |o: &Option<ExecOutput>| if o.is_some() { vec![0u8; MAX_CHUNK] } else { Vec::new() };
    let mut bufs = [buffer(&outputs[0]), buffer(&outputs[1])];
    let mut frame = Vec::with_capacity(MAX_CHUNK + 16);
    let mut deadline: Option<Instant> = None;
    loop {
        if outputs.iter().all(Option::is_none) && exited.is_some() {
            return Ok(());
        }
        let [out0, out1] = &mut outputs;
        let [buf0, buf1] = &mut bufs;
        let drained = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // A pipe read is cancel-safe: the branch that loses has read nothing.
        let (i, result) = tokio::select! {
            r = read_some(out0, buf0), if out0.is_some() => (0, r),
            r = read_some(out1, buf1), if out1.is_some() => (1, r),
            e = &mut *exit, if exited.is_none() => {
                let e = e.map_err(|_| io::Error::other("the reaper lost the exit of the process"))?;
                *exited = Some(e);
                deadline = Some(Instant::now() + drain);
                continue;
            }
            _ = drained => return Ok(()),
        };
        match result {
            Ok(n) if n > 0 => {
                let Some(o) = &outputs[i] else { continue };
                if o.wanted {
                    frame.clear();
                    encode_output(o.output, &bufs[i][..n], &mut frame);
                    wr.write_all(&frame).await?;
                    wr.flush().await?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // End of stream; a pty master reads EIO once the last slave descriptor is closed.
            _ => {
                outputs[i] = None;
                bufs[i] = Vec::new();
            }
        }
    }
}

async fn read_some(output: &mut Option<ExecOutput>, buf: &mut [u8]) -> io::Result<usize> {
    match output {
        Some(o) => o.rx.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Forwards what an attacher receives until the container's exit is published (`exited`), then
/// what is left in its backlog and the exit frame. Returns `Ok(false)` without an exit frame if
/// the attacher was dropped for not keeping up or the container was forgotten, `Err` if writing
/// to the client fails.
pub async fn pump_attach_output<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut chunks: mpsc::Receiver<Chunk>,
    mut exited: watch::Receiver<Option<proto::ExitStatus>>,
) -> io::Result<bool> {
    let mut frame = Vec::with_capacity(MAX_CHUNK + 16);
    loop {
        tokio::select! {
            // Output before the exit: the exit is published after the output has drained.
            biased;
            chunk = chunks.recv() => match chunk {
                Some(chunk) => send_chunk(wr, &mut frame, chunk).await?,
                None => return Ok(false),
            },
            // Cloned at once: the watch's read guard must not be held across an await.
            status = async { exited.wait_for(Option::is_some).await.map(|s| s.clone()) } => {
                let Ok(status) = status else { return Ok(false) };
                while let Ok(chunk) = chunks.try_recv() {
                    send_chunk(wr, &mut frame, chunk).await?;
                }
                write_exit(wr, status.map_or(0, |s| s.exit_code)).await?;
                return Ok(true);
            }
        }
    }
}

async fn send_chunk<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frame: &mut Vec<u8>,
    (stream, data): Chunk,
) -> io::Result<()> {
    let output = match stream {
        Stream::Stdout => Output::Stdout,
        Stream::Stderr => Output::Stderr,
    };
    frame.clear();
    encode_output(output, &data, frame);
    wr.write_all(frame).await?;
    wr.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::frame::read_message;
    use crate::shim::stdio;
    use bytes::Bytes;
    use std::io::Write;
    use std::time::SystemTime;
    use tokio::io::AsyncRead;
    use tokio::net::UnixStream;

    fn frame(f: Frame) -> proto::StreamFrame {
        proto::StreamFrame { frame: Some(f) }
    }

    async fn next(rd: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
        read_message::<_, proto::StreamFrame>(rd).await.unwrap().map(|f| f.frame.unwrap())
    }

    #[tokio::test]
    async fn input_frames_reach_stdin_and_the_pty() {
        let (stdin_r, stdin_w) = stdio::pipe().unwrap();
        let stdin = StdinWriter::new(stdin_w).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let (mut client, mut shim) = UnixStream::pair().unwrap();
        let client_side = async {
            for f in [
                frame(Frame::Stdin(b"abc".to_vec())),
                frame(Frame::Resize(proto::Resize { width: 100, height: 40 })),
                frame(Frame::Stdout(b"ignored".to_vec())),
                frame(Frame::Stdin(b"def".to_vec())),
                frame(Frame::StdinClose(proto::StdinClose {})),
                frame(Frame::Stdin(b"after close".to_vec())),
            ] {
                write_message(&mut client, &f).await.unwrap();
            }
            drop(client);
        };
        let (mut rd, _wr) = shim.split();
        tokio::join!(client_side, pump_input(&mut rd, Some(&stdin), Some(&pty.master)));
        let mut got = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(stdin_r), &mut got).unwrap();
        assert_eq!(got, "abcdef");
        assert_eq!(fd::window_size(&pty.slave).unwrap(), (100, 40));
    }

    /// A process that never reads its stdin: the client's input fills the pipe and the socket,
    /// then the client hangs up with frames still unread; the pump must notice and return.
    #[tokio::test]
    async fn a_stalled_stdin_write_ends_when_the_client_hangs_up() {
        let (_stdin_r_held, stdin_w) = stdio::pipe().unwrap();
        let stdin = StdinWriter::new(stdin_w).unwrap();
        let (mut client, mut shim) = UnixStream::pair().unwrap();
        let (mut rd, _wr) = shim.split();
        let pump = pump_input(&mut rd, Some(&stdin), None);
        tokio::pin!(pump);
        let chunk = frame(Frame::Stdin(vec![b'x'; MAX_CHUNK]));
        // 4 MiB: more than the pipe and the socket buffers hold; the client's writes stall too.
        let flood = async {
            for _ in 0..128 {
                write_message(&mut client, &chunk).await.unwrap();
            }
        };
        tokio::select! {
            () = &mut pump => panic!("the pump ended while the client is there"),
            r = tokio::time::timeout(Duration::from_millis(500), flood) => assert!(r.is_err(), "the input was not held up"),
        }
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .expect("the pump did not notice the hang-up");
    }

    #[tokio::test]
    async fn exec_output_is_forwarded_then_the_exit() {
        let (out_r, out_w) = stdio::pipe().unwrap();
        let (err_r, err_w) = stdio::pipe().unwrap();
        let outputs = [
            Some(ExecOutput { rx: stdio::receiver(out_r).unwrap(), output: Output::Stdout, wanted: true }),
            Some(ExecOutput { rx: stdio::receiver(err_r).unwrap(), output: Output::Stderr, wanted: true }),
        ];
        std::fs::File::from(out_w).write_all(b"out").unwrap();
        std::fs::File::from(err_w).write_all(b"err").unwrap();
        let (tx, mut rx) = oneshot::channel();
        tx.send(Exit { pid: 1, code: 3, at: SystemTime::now() }).unwrap();
        let mut exited = None;
        let mut wire = Vec::new();
        pump_exec_output(&mut wire, outputs, &mut rx, &mut exited, Duration::from_secs(5)).await.unwrap();
        assert_eq!(exited.unwrap().code, 3);
        let mut rd = wire.as_slice();
        let mut frames = vec![next(&mut rd).await.unwrap(), next(&mut rd).await.unwrap()];
        frames.sort_by_key(|f| matches!(f, Frame::Stderr(_)));
        assert_eq!(frames, [Frame::Stdout(b"out".to_vec()), Frame::Stderr(b"err".to_vec())]);
        assert_eq!(next(&mut rd).await, None);
    }

    #[tokio::test]
    async fn exec_output_stops_after_the_drain_when_a_pipe_stays_open() {
        let (out_r, _out_w_held) = stdio::pipe().unwrap();
        let out = ExecOutput { rx: stdio::receiver(out_r).unwrap(), output: Output::Stdout, wanted: true };
        let outputs = [Some(out), None];
        let (tx, mut rx) = oneshot::channel();
        tx.send(Exit { pid: 1, code: 0, at: SystemTime::now() }).unwrap();
        let mut exited = None;
        let started = std::time::Instant::now();
        pump_exec_output(&mut Vec::new(), outputs, &mut rx, &mut exited, Duration::from_millis(50))
            .await
            .unwrap();
        // Ends after the drain instead of waiting for a pipe nobody closes (generous bound: no timing).
        assert!(exited.is_some() && started.elapsed() < Duration::from_secs(30));
    }

    /// With a client that reads nothing, the pump stops reading the process's pipe: the writer
    /// blocks once the socket buffer and the pipe are full, instead of the shim buffering.
    #[tokio::test]
    async fn a_slow_client_stops_the_reading_not_the_shim() {
        let (out_r, out_w) = stdio::pipe().unwrap();
        let out = ExecOutput { rx: stdio::receiver(out_r).unwrap(), output: Output::Stdout, wanted: true };
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = written.clone();
        // Detached: it ends with a broken pipe once the test drops the read end.
        std::thread::spawn(move || {
            let mut w = std::fs::File::from(out_w);
            let chunk = [b'y'; 4096];
            // 64 MiB: far more than the pipe (64 KiB) and the duplex (64 KiB) hold.
            for _ in 0..16384 {
                if w.write_all(&chunk).is_err() {
                    return;
                }
                counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        let (mut client, mut shim) = tokio::io::duplex(64 << 10);
        let (_tx, mut rx) = oneshot::channel::<Exit>();
        let mut exited = None;
        let pump = pump_exec_output(&mut shim, [Some(out), None], &mut rx, &mut exited, Duration::ZERO);
        tokio::pin!(pump);
        let stalled = tokio::time::timeout(Duration::from_millis(500), &mut pump).await;
        assert!(stalled.is_err(), "the pump cannot finish while its client is stuck");
        let total = written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(total < 1 << 20, "{total} bytes were taken from the process although nobody read them");
        // The client starts reading: everything flows again.
        let reading = async {
            let mut sum = 0;
            while sum < 2 << 20 {
                match next(&mut client).await {
                    Some(Frame::Stdout(d)) => sum += d.len(),
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        tokio::select! {
            r = &mut pump => panic!("the pump ended: {r:?}"),
            () = reading => {}
        }
    }

    #[tokio::test]
    async fn attach_gets_output_then_the_exit() {
        let (tx, chunks) = mpsc::channel(8);
        let (exit_tx, exited) = watch::channel(None);
        tx.send((Stream::Stdout, Bytes::from_static(b"one"))).await.unwrap();
        tx.send((Stream::Stderr, Bytes::from_static(b"two"))).await.unwrap();
        exit_tx.send_replace(Some(proto::ExitStatus { exit_code: 137, ..Default::default() }));
        let mut wire = Vec::new();
        assert!(pump_attach_output(&mut wire, chunks, exited).await.unwrap());
        let mut rd = wire.as_slice();
        assert_eq!(next(&mut rd).await, Some(Frame::Stdout(b"one".to_vec())));
        assert_eq!(next(&mut rd).await, Some(Frame::Stderr(b"two".to_vec())));
        assert_eq!(next(&mut rd).await, Some(Frame::Exit(proto::StreamExit { exit_code: 137 })));
        assert_eq!(next(&mut rd).await, None);

        // Dropped by the fan-out (its sender is gone): no exit frame.
        let (tx, chunks) = mpsc::channel::<Chunk>(1);
        drop(tx);
        let (_exit_tx, exited) = watch::channel(None);
        let mut wire = Vec::new();
        assert!(!pump_attach_output(&mut wire, chunks, exited).await.unwrap());
        assert!(wire.is_empty());
    }
}
