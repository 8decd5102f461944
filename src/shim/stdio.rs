//! Container and exec stdio on the shim side: pipes handed to the runtime, the tasks that copy a
//! container's output into its CRI log, and the capped capture of an ExecSync's output.
//!
//! Readers must never stop reading before end of stream (a container blocked on a full pipe is a
//! hung container): output beyond a cap, or that cannot be written, is read and dropped.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use super::cri_log::{LineSplitter, LogFile, Stream};
use super::lock;
use crate::error::{Context, Result};

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context(|| "creating a pipe".to_string())
}

/// Registers a read end (pipe or pty master) with the runtime for async reads.
pub fn receiver(fd: OwnedFd) -> Result<pipe::Receiver> {
    // Unchecked: a pty master is a character device, not a FIFO, and reads the same way.
    pipe::Receiver::from_owned_fd_unchecked(fd).context(|| "registering a stdio reader".to_string())
}

/// Copies one output stream of a container into its log until end of stream.
pub async fn copy_to_log(mut rx: pipe::Receiver, stream: Stream, max_line: usize, log: Arc<Mutex<LogFile>>) {
    let mut buf = vec![0u8; 8192];
    let mut splitter = LineSplitter::new(stream, max_line);
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => splitter.feed(&buf[..n], &mut *lock(&log)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A pty master reads EIO once the last slave descriptor is closed: its end of stream.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!(stream = stream.as_str(), error = %e, "reading container output failed");
                break;
            }
        }
    }
    splitter.finish(&mut *lock(&log));
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
        copy_to_log(receiver(r).unwrap(), Stream::Stderr, 16384, log).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let tails: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(tails, ["stderr F line one", "stderr F line two", "stderr P tail"]);
    }
}
