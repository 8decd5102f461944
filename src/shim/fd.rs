//! Raw descriptor plumbing, the only `unsafe` of the shim: taking ownership of the pty master the
//! OCI runtime sends over `--console-socket` (SCM_RIGHTS), and closing the descriptors a serving
//! shim inherited from whoever launched it. This module must never do anything else with them.
#![allow(unsafe_code)]

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

    #[tokio::test]
    async fn closed_socket_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = receive_fd(&a).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("closed"), "{err}");
    }
}
