//! Raw descriptor plumbing, the only `unsafe` of the shim: taking ownership of the pty master the
//! OCI runtime sends over `--console-socket` (SCM_RIGHTS, and only from the runtime's user),
//! setting that pty's window size, and closing the descriptors a serving shim inherited from whoever
//! launched it. This module must never do anything else with them.
#![allow(unsafe_code)]

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

/// Accepts connections on a console socket until one from a peer whose uid (SO_PEERCRED) is in
/// `allowed` (root, or the uid the runtime runs as) hands over a descriptor, and returns it. Anyone
/// else who can reach the socket is dropped unread: they must neither plant a terminal of their own
/// as the container's console nor end the wait for the real one.
pub async fn receive_pty(listener: &UnixListener, allowed: &[u32]) -> io::Result<OwnedFd> {
    loop {
        let (conn, _) = listener.accept().await?;
        let peer = conn.peer_cred()?;
        if allowed.contains(&peer.uid()) {
            return receive_fd(&conn).await;
        }
        tracing::warn!(uid = peer.uid(), pid = ?peer.pid(), "refused a console socket connection: not the runtime");
    }
}

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

    /// Sends the write end of a new pipe over a new connection to `socket`; returns the read end.
    fn hand_over_a_pipe(socket: &std::path::Path) -> std::io::PipeReader {
        let conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let fds = [writer.as_fd().as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(conn.as_raw_fd(), &[IoSlice::new(b"/dev/pts/9")], &cmsg, MsgFlags::empty(), None)
            .unwrap();
        reader
    }

    /// Issue 8 item 11: a pty master is taken only from root or the runtime's uid. A process of
    /// another user that reaches the console socket first (the test opens the socket's modes, as a
    /// careless umask would) is refused, and the runtime's descriptor still arrives.
    #[tokio::test]
    async fn only_the_runtimes_user_hands_over_a_pty() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root to connect as another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("console.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        let receiving = tokio::spawn(async move { receive_pty(&listener, &[0]).await });

        let path = socket.clone();
        let intruder = std::thread::spawn(move || {
            let nobody: u32 = 65534;
            // SAFETY: the raw syscall changes the credentials of this thread only (glibc's wrapper
            // would change every thread of the test process), and the thread ends right after;
            // setresuid reads no memory of ours.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, u32::MAX, nobody, u32::MAX) };
            assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
            hand_over_a_pipe(&path)
        });
        let mut intruders = intruder.join().unwrap();
        let mut runtimes = hand_over_a_pipe(&socket);
        let fd = receiving.await.unwrap().unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(b"runtime").unwrap();
        drop(file);
        let mut got = String::new();
        intruders.read_to_string(&mut got).unwrap();
        assert_eq!(got, "", "the intruder's descriptor was taken");
        runtimes.read_to_string(&mut got).unwrap();
        assert_eq!(got, "runtime", "the runtime's descriptor was not taken");
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
