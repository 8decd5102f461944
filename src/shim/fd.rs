//! Raw descriptor plumbing, the only `unsafe` of the shim: taking ownership of the pty master the
//! OCI runtime sends over `--console-socket` (SCM_RIGHTS), setting that pty's window size, and
//! closing the descriptors a serving shim inherited from whoever launched it. This module must
//! never do anything else with them.
#![allow(unsafe_code)]

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Waits for one message carrying a file descriptor on `stream` and returns the descriptor
/// (close-on-exec). Extra descriptors in the message are closed.
pub async fn receive_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    stream.async_io(Interest::READABLE, || receive_now(stream.as_raw_fd())).await
}

fn receive_now(fd: RawFd) -> io::Result<OwnedFd> {
    // runc and crun send the pty's name as the payload; it is not needed.
    let mut payload = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut payload)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in our descriptor table for this message;
                // nothing else in the process knows it, so this is its only owner.
                received.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    if received.is_empty() {
        let what = if msg.bytes == 0 { "closed the console socket" } else { "sent no descriptor" };
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the runtime {what}")));
    }
    Ok(received.swap_remove(0))
}

/// Sets the window size of the terminal `pty` (a pty master or slave) in characters, as a
/// terminal emulator does on a resize; the kernel sends SIGWINCH to the terminal's foreground
/// process group.
pub fn set_window_size(pty: impl AsFd, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points at a live local for
    // the duration of the call; the descriptor is borrowed, so it stays open meanwhile.
    let rc = unsafe { libc::ioctl(pty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size as *const libc::winsize) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The window size of the terminal `pty` as (width, height).
#[cfg(test)]
pub(crate) fn window_size(pty: impl AsFd) -> io::Result<(u16, u16)> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points at a live local.
    let rc =
        unsafe { libc::ioctl(pty.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut size as *mut libc::winsize) };
    if rc == 0 { Ok((size.ws_col, size.ws_row)) } else { Err(io::Error::last_os_error()) }
}

/// Closes every descriptor above stderr. Only for a process taking itself over (the start of
/// `serve`): a long-lived shim must not keep its launcher's pipes or sockets open.
pub fn close_inherited() {
    // SAFETY: called before the shim opens anything, so no object of this process owns a
    // descriptor above 2; the inherited ones belong to nobody here.
    let rc = unsafe { libc::close_range(3, u32::MAX, 0) };
    if rc != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "closing inherited descriptors failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessage, sendmsg};
    use std::io::{IoSlice, Read, Write};
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn descriptor_arrives_and_works() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let sender = tokio::task::spawn_blocking(move || {
            let b = b.into_std().unwrap();
            b.set_nonblocking(false).unwrap();
            let fds = [writer.as_fd().as_raw_fd()];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(b.as_raw_fd(), &[IoSlice::new(b"/dev/pts/9")], &cmsg, MsgFlags::empty(), None)
                .unwrap();
        });
        let fd = receive_fd(&a).await.unwrap();
        sender.await.unwrap();
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "received descriptors are close-on-exec");
        let mut file = std::fs::File::from(fd);
        file.write_all(b"through").unwrap();
        drop(file);
        let mut got = String::new();
        // The original write end was moved into the sender task and dropped with it.
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
    }

    #[test]
    fn window_size_set_on_the_master_shows_on_the_slave() {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_window_size(&pty.master, 132, 43).unwrap();
        assert_eq!(window_size(&pty.slave).unwrap(), (132, 43));
        let (r, _w) = std::io::pipe().unwrap();
        assert!(set_window_size(&r, 80, 24).is_err(), "a pipe is not a terminal");
    }

    #[tokio::test]
    async fn closed_socket_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = receive_fd(&a).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("closed"), "{err}");
    }
}
