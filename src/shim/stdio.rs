//! Container and exec stdio on the shim side: pipes handed to the runtime, the tasks that copy a
//! container's output into its CRI log and to its attachers ([`Fanout`]), the shared writer of a
//! process's stdin, and the capped capture of an ExecSync's output.
//!
//! A container's log readers must never stop reading before end of stream (a container blocked on
//! a full pipe is a hung container): output beyond a cap, or that cannot be written, is read and
//! dropped, and an attacher that cannot take more is dropped. Every descriptor read or written
//! here is non-blocking: the shim has one thread, and one blocking read would stall the pod.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{Notify, mpsc};

use super::cri_log::{LineSplitter, LogFile, Stream};
use super::lock;
use crate::error::{Context, Result};

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context(|| "creating a pipe".to_string())
}

/// Registers a read end (pipe or pty master) with the runtime for async reads, making it
/// non-blocking.
pub fn receiver(fd: OwnedFd) -> Result<pipe::Receiver> {
    set_nonblocking(&fd).context(|| "making a stdio reader non-blocking".to_string())?;
    // Unchecked: a pty master is a character device, not a FIFO, and reads the same way.
    pipe::Receiver::from_owned_fd_unchecked(fd).context(|| "registering a stdio reader".to_string())
}

/// Registers a write end (pipe or pty master) with the runtime for async writes, making it
/// non-blocking.
pub fn sender(fd: OwnedFd) -> Result<pipe::Sender> {
    set_nonblocking(&fd).context(|| "making a stdio writer non-blocking".to_string())?;
    pipe::Sender::from_owned_fd_unchecked(fd).context(|| "registering a stdio writer".to_string())
}

/// O_NONBLOCK is a property of the open file, shared by every duplicate of the descriptor: only for
/// the shim's own ends (never the ones given to a process, which expects blocking stdio).
fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// The write side of a process's stdin (a pipe, or a pty master), shared by everyone who may
/// write it: an exec's client, or a container's attachers. Writes of one caller are not
/// interleaved with another's. Closing it closes it for all.
pub struct StdinWriter {
    tx: tokio::sync::Mutex<Option<pipe::Sender>>,
}

impl StdinWriter {
    /// Takes over the write end `fd`.
    pub fn new(fd: OwnedFd) -> Result<StdinWriter> {
        Ok(StdinWriter { tx: tokio::sync::Mutex::new(Some(sender(fd)?)) })
    }

    /// Writes all of `data`, waiting while the process does not read. Once the process's end is
    /// gone (EPIPE, or EIO of a pty), the writer closes itself and later data is dropped.
    pub async fn write(&self, data: &[u8]) {
        let mut tx = self.tx.lock().await;
        let Some(pipe) = tx.as_mut() else { return };
        if let Err(e) = pipe.write_all(data).await {
            tracing::debug!(error = %e, "writing stdin failed, closing it");
            *tx = None;
        }
    }

    /// Closes this end: a process reading a pipe sees end of file. (For a pty this only stops
    /// the writes: the terminal stays, and its end of input is the ^D a client types.)
    pub async fn close(&self) {
        *self.tx.lock().await = None;
    }
}

/// An output chunk of a container, for its attachers.
pub type Chunk = (Stream, Bytes);

struct Subscriber {
    stdout: bool,
    stderr: bool,
    tx: mpsc::Sender<Chunk>,
}

/// Copies of a container's output for its attachers. Sending never waits: an attacher whose
/// backlog is full is dropped (its receiver ends), so neither the container nor its log ever
/// waits for a slow attacher. With nobody attached, sending costs a lock and nothing else.
#[derive(Default)]
pub struct Fanout {
    subscribers: Mutex<Vec<Subscriber>>,
}

impl Fanout {
    /// A new attacher of the chosen streams, with room for `backlog` chunks (at least 1).
    pub fn subscribe(&self, stdout: bool, stderr: bool, backlog: usize) -> mpsc::Receiver<Chunk> {
        let (tx, rx) = mpsc::channel(backlog.max(1));
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|s| !s.tx.is_closed());
        subscribers.push(Subscriber { stdout, stderr, tx });
        rx
    }

    /// Hands `data` to every attacher of `stream`.
    pub fn send(&self, stream: Stream, data: &[u8]) {
        let mut subscribers = lock(&self.subscribers);
        if subscribers.is_empty() || data.is_empty() {
            return;
        }
        let mut chunk: Option<Bytes> = None;
        subscribers.retain(|s| {
            let wanted = match stream {
                Stream::Stdout => s.stdout,
                Stream::Stderr => s.stderr,
            };
            if !wanted {
                return !s.tx.is_closed();
            }
            let bytes = chunk.get_or_insert_with(|| Bytes::copy_from_slice(data)).clone();
            match s.tx.try_send((stream, bytes)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(stream = stream.as_str(), "an attacher does not keep up, detaching it");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// Copies one output stream of a container into its log and to its attachers until end of
/// stream.
pub async fn copy_to_log(
    mut rx: pipe::Receiver,
    stream: Stream,
    max_line: usize,
    log: Arc<Mutex<LogFile>>,
    fanout: Arc<Fanout>,
) {
    let mut buf = vec![0u8; 8192];
    let mut splitter = LineSplitter::new(stream, max_line);
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                splitter.feed(&buf[..n], &mut *lock(&log));
                fanout.send(stream, &buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A pty master reads EIO once the last slave descriptor is closed: its end of stream.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!(stream = stream.as_str(), error = %e, "reading container output failed");
                break;
            }
        }
    }
    let mut log = lock(&log);
    splitter.finish(&mut *log);
    // The output may end inside a gap, with no next record to carry its marker.
    log.flush_gap(SystemTime::now());
}

/// Reads an exec's stdout and stderr until both end, keeping at most `cap` bytes of each. Once
/// `done` is notified (the process exited), reading goes on for at most `grace`: a background
/// child may hold the pipes open forever.
pub async fn capture(
    mut out: pipe::Receiver,
    mut err: pipe::Receiver,
    cap: usize,
    done: &Notify,
    grace: Duration,
) -> (Vec<u8>, Vec<u8>) {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    let (mut out_open, mut err_open) = (true, true);
    let drain = async {
        done.notified().await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(drain);
    while out_open || err_open {
        tokio::select! {
            r = out.read(&mut out_buf), if out_open => out_open = keep(r, &out_buf, &mut stdout, cap),
            r = err.read(&mut err_buf), if err_open => err_open = keep(r, &err_buf, &mut stderr, cap),
            _ = &mut drain => break,
        }
    }
    (stdout, stderr)
}

/// Appends what a read returned, up to `cap`; false at end of stream (or on an error).
fn keep(read: io::Result<usize>, buf: &[u8], into: &mut Vec<u8>, cap: usize) -> bool {
    match read {
        Ok(0) => false,
        Ok(n) => {
            let room = cap.saturating_sub(into.len());
            into.extend_from_slice(&buf[..n.min(room)]);
            true
        }
        Err(e) => e.kind() == io::ErrorKind::Interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn capture_caps_each_stream_and_drains_the_rest() {
        let (out_r, out_w) = pipe().unwrap();
        let (err_r, err_w) = pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut out = std::fs::File::from(out_w);
            let mut err = std::fs::File::from(err_w);
            for _ in 0..64 {
                out.write_all(&[b'o'; 16 * 1024]).unwrap();
            }
            err.write_all(b"small").unwrap();
        });
        let done = Notify::new();
        let (o, e) =
            capture(receiver(out_r).unwrap(), receiver(err_r).unwrap(), 1000, &done, Duration::ZERO).await;
        writer.join().unwrap();
        assert_eq!(o.len(), 1000);
        assert_eq!(e, b"small");
    }

    #[tokio::test]
    async fn capture_stops_after_the_grace_when_a_pipe_stays_open() {
        let (out_r, out_w) = pipe().unwrap();
        let (err_r, _err_w_held) = pipe().unwrap();
        std::fs::File::from(out_w).write_all(b"out").unwrap();
        let done = Notify::new();
        done.notify_one();
        let (o, e) = capture(
            receiver(out_r).unwrap(),
            receiver(err_r).unwrap(),
            1000,
            &done,
            Duration::from_millis(50),
        )
        .await;
        assert_eq!((o.as_slice(), e.as_slice()), (&b"out"[..], &b""[..]));
    }

    #[tokio::test]
    async fn output_is_copied_to_the_log_with_a_partial_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = Arc::new(Mutex::new(LogFile::open(Some(&path)).unwrap()));
        let (r, w) = pipe().unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"line one\nline two\ntail").unwrap();
        drop(w);
        copy_to_log(receiver(r).unwrap(), Stream::Stderr, 16384, log, Arc::default()).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let tails: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(tails, ["stderr F line one", "stderr F line two", "stderr P tail"]);
    }

    /// A reader that drained its pipe must wait for more, not block the shim's only thread in
    /// read(2): the watchdog unblocks a blocking read after 2 s, which the assertion catches.
    #[tokio::test]
    async fn readers_do_not_block_the_thread() {
        let (r, w) = pipe().unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(&[b'x'; 8192]).unwrap();
        let mut rx = receiver(r).unwrap();
        let watchdog = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let _ = w.write_all(b"late");
        });
        let mut buf = vec![0u8; 8192];
        assert_eq!(rx.read(&mut buf).await.unwrap(), 8192);
        let again = tokio::time::timeout(Duration::from_millis(100), rx.read(&mut buf)).await;
        assert!(again.is_err(), "the second read returned {again:?} instead of waiting");
        watchdog.join().unwrap();
    }

    #[tokio::test]
    async fn stdin_writer_writes_closes_and_survives_a_gone_reader() {
        let (r, w) = pipe().unwrap();
        let writer = StdinWriter::new(w).unwrap();
        writer.write(b"hello ").await;
        writer.write(b"world").await;
        writer.close().await;
        writer.write(b"dropped").await;
        let mut got = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut got).unwrap();
        assert_eq!(got, "hello world");

        let (r, w) = pipe().unwrap();
        drop(r);
        let writer = StdinWriter::new(w).unwrap();
        writer.write(b"nobody reads").await; // EPIPE: closed, no panic, no SIGPIPE death
        assert!(writer.tx.lock().await.is_none());
    }

    #[tokio::test]
    async fn fanout_drops_a_slow_attacher_and_the_log_gets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = Arc::new(Mutex::new(LogFile::open(Some(&path)).unwrap()));
        let fanout = Arc::new(Fanout::default());
        let mut fast = fanout.subscribe(true, true, 4);
        let mut slow = fanout.subscribe(true, true, 4);
        let mut stderr_only = fanout.subscribe(false, true, 4);
        let (r, w) = pipe().unwrap();
        let copy = tokio::spawn(copy_to_log(receiver(r).unwrap(), Stream::Stdout, 1024, log, fanout.clone()));
        let mut w = std::fs::File::from(w);
        let mut fast_got = Vec::new();
        for i in 0..100 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
            // One chunk per line: wait for the fast attacher to see it before writing the next.
            let (stream, chunk) = fast.recv().await.unwrap();
            assert_eq!(stream, Stream::Stdout);
            fast_got.extend_from_slice(&chunk);
        }
        drop(w);
        copy.await.unwrap();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(fast_got).unwrap(), expected);
        // The slow one got its backlog and then was cut off.
        let mut slow_got = 0;
        while slow.recv().await.is_some() {
            slow_got += 1;
        }
        assert_eq!(slow_got, 4);
        assert!(stderr_only.try_recv().is_err(), "no stdout for a stderr attacher");
        assert_eq!(lock(&fanout.subscribers).len(), 2, "the slow attacher is gone");
        let records = std::fs::read_to_string(&path).unwrap();
        assert_eq!(records.lines().count(), 100, "the log lost nothing");
        drop(fast);
        drop(stderr_only);
        fanout.send(Stream::Stderr, b"x");
        assert!(lock(&fanout.subscribers).is_empty(), "detached attachers are forgotten");
    }
}
