//! The pod runtime behind the streaming server ([`crate::streaming::Backend`]): Exec and Attach
//! carried through the pod's shim, PortForward to a port on localhost inside the pod's network
//! namespace.
//!
//! A session ends when the process (or container) exits, when writing to the client fails, or when
//! the streaming server drops the future: the shim connection closes with it, which kills an
//! exec'd process and detaches an attacher. Namespaces are entered only by a dedicated thread
//! that exits right after; this module must never change the namespace of a runtime thread, and
//! never run nsenter or socat.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::pods::{Pods, host_network};
use crate::error::{Error, ErrorKind, Result};
use crate::streaming::{Backend, PortStream, Reader, Streams, TermSize, Writer};
use crate::task::{AttachOptions, ExecOptions, ProcessStream, StreamOutput};

/// How long connecting to a forwarded port may take.
pub const PORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most stdin bytes read from the client at once.
const STDIN_CHUNK: usize = 32 << 10;

/// [`Backend`] for berth's pods.
pub struct PodStreams {
    pods: Arc<Pods>,
}

impl PodStreams {
    /// The streaming backend of `pods`.
    pub fn new(pods: Arc<Pods>) -> PodStreams {
        PodStreams { pods }
    }
}

#[async_trait::async_trait]
impl Backend for PodStreams {
    async fn exec(&self, container_id: &str, cmd: &[String], tty: bool, streams: Streams) -> Result<i32> {
        if cmd.is_empty() {
            return Err(Error::invalid("Exec: cmd must not be empty"));
        }
        let rec = self.pods.running(container_id)?;
        let shim = self.pods.shim(&rec.sandbox_id).await?;
        let opts = ExecOptions {
            id: rec.id.clone(),
            process_json: self.pods.exec_process(&rec.id, cmd, tty)?,
            tty,
            stdin: streams.stdin.is_some(),
            stdout: streams.stdout.is_some(),
            // A terminal merges stderr into its output.
            stderr: streams.stderr.is_some() && !tty,
        };
        let what = format!("exec in container {}", rec.id);
        let session = shim.exec_stream(&opts).await?;
        tracing::debug!(id = rec.id, pid = session.pid, ?cmd, "exec started");
        pump(session, streams, true, &what).await?.ok_or_else(|| {
            Error::unavailable(format!("{what}: the shim ended the session without an exit status"))
        })
    }

    async fn attach(&self, container_id: &str, tty: bool, streams: Streams) -> Result<()> {
        let rec = self.pods.running(container_id)?;
        // As containerd: what the container was created with decides, not what the client asks.
        if tty != rec.config.tty {
            tracing::debug!(id = rec.id, tty, "attach: using the container's own tty setting");
        }
        let tty = rec.config.tty;
        let shim = self.pods.shim(&rec.sandbox_id).await?;
        let opts = AttachOptions {
            id: rec.id.clone(),
            stdin: streams.stdin.is_some() && rec.config.stdin,
            stdout: streams.stdout.is_some(),
            stderr: streams.stderr.is_some() && !tty,
            tty,
        };
        let what = format!("attach to container {}", rec.id);
        let session = shim.attach(&opts).await?;
        // stdin_once: the first attacher's end of input is the container's (as containerd, only
        // without a terminal, whose input a client ends by typing ^D).
        let pass_eof = rec.config.stdin_once && !tty;
        if pump(session, streams, pass_eof, &what).await?.is_none() {
            tracing::info!(
                id = rec.id,
                "attach ended by the shim (the client fell behind, or the shim is gone)"
            );
        }
        Ok(())
    }

    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<Box<dyn PortStream>> {
        let rec = self.pods.ready_sandbox(sandbox_id)?;
        let id = rec.id;
        let netns = match (host_network(&rec.config), rec.netns) {
            (true, _) => None,
            (false, Some(path)) => Some(path),
            (false, None) => {
                return Err(Error::precondition(format!("pod sandbox {id} has no network namespace")));
            }
        };
        let stream = connect_in_netns(netns.as_deref(), port)
            .await
            .map_err(|e| e.context(format!("forwarding to port {port} of pod sandbox {id}")))?;
        Ok(Box::new(stream))
    }
}

/// Carries a session between the client's `streams` and the shim until the process exits (its
/// exit code) or the shim ends the session without one (`None`). With `pass_eof`, the end of the
/// client's stdin is passed on; otherwise the process's stdin stays open.
async fn pump(session: ProcessStream, streams: Streams, pass_eof: bool, what: &str) -> Result<Option<i32>> {
    let ProcessStream { mut sender, mut receiver, .. } = session;
    let Streams { stdin, mut stdout, mut stderr, resize } = streams;
    let input = async move {
        let (mut stdin, mut resize) = (stdin, resize);
        let mut buf = vec![0u8; STDIN_CHUNK];
        let sent: Result<()> = async {
            loop {
                tokio::select! {
                    r = read_some(&mut stdin, &mut buf), if stdin.is_some() => match r {
                        Ok(n) if n > 0 => sender.stdin(&buf[..n]).await?,
                        _ => {
                            stdin = None;
                            if pass_eof {
                                sender.close_stdin().await?;
                            }
                        }
                    },
                    size = next_size(&mut resize), if resize.is_some() => match size {
                        Some(size) => sender.resize(size.width, size.height).await?,
                        None => resize = None,
                    },
                    else => return Ok(()),
                }
            }
        }
        .await;
        // The shim closes its end once the process exited: the output side tells how it ended.
        if let Err(e) = sent {
            tracing::debug!(error = %e, "input of a streaming session ended");
        }
        // Keeping the sender alive keeps nothing open: the connection lives as long as the
        // receiver, so it is fine for this half to end here.
        std::future::pending::<()>().await;
    };
    let output = async {
        let gone = |e: std::io::Error| {
            Error::with_source(ErrorKind::Cancelled, format!("{what}: the client went away"), e)
        };
        loop {
            match receiver.next().await? {
                Some(StreamOutput::Stdout(data)) => write_to(&mut stdout, &data).await.map_err(gone)?,
                Some(StreamOutput::Stderr(data)) => write_to(&mut stderr, &data).await.map_err(gone)?,
                Some(StreamOutput::Exit(code)) => return Ok(Some(code)),
                None => return Ok(None),
            }
        }
    };
    let result = tokio::select! {
        r = output => r,
        () = input => unreachable!("the input side never completes"),
    };
    for w in [&mut stdout, &mut stderr].into_iter().flatten() {
        let _ = w.shutdown().await;
    }
    result
}

async fn read_some(r: &mut Option<Reader>, buf: &mut [u8]) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn next_size(rx: &mut Option<tokio::sync::mpsc::Receiver<TermSize>>) -> Option<TermSize> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Output for a stream the client did not ask for is dropped.
async fn write_to(w: &mut Option<Writer>, data: &[u8]) -> std::io::Result<()> {
    match w {
        Some(w) => {
            w.write_all(data).await?;
            w.flush().await
        }
        None => Ok(()),
    }
}

/// Connects to 127.0.0.1:`port` inside the network namespace pinned at `netns` (the host's with
/// `None`). A dedicated thread enters the namespace, creates and connects the socket (a socket
/// stays in the namespace it was created in) and exits; the runtime's threads never move.
pub async fn connect_in_netns(netns: Option<&Path>, port: u16) -> Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let refused = |e| Error::with_source(ErrorKind::Unavailable, format!("connecting to {addr}"), e);
    let Some(path) = netns else {
        return match tokio::time::timeout(PORT_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(r) => r.map_err(refused),
            Err(_) => Err(Error::new(
                ErrorKind::DeadlineExceeded,
                format!("connecting to {addr}: no answer within {PORT_CONNECT_TIMEOUT:?}"),
            )),
        };
    };
    let ns = std::fs::File::open(path).map_err(|e| {
        let kind =
            if e.kind() == std::io::ErrorKind::NotFound { ErrorKind::NotFound } else { ErrorKind::Internal };
        Error::with_source(kind, format!("opening netns {}", path.display()), e)
    })?;
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || {
            let entered = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET);
            drop(ns);
            let result = entered.map(|()| {
                std::net::TcpStream::connect_timeout(&addr, PORT_CONNECT_TIMEOUT)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
            });
            let _ = tx.send(result);
        })
        .map_err(|e| Error::with_source(ErrorKind::Internal, "starting the netns thread".to_string(), e))?;
    let joined = rx.await.map_err(|_| Error::internal("the netns thread died"))?;
    let connected = joined.map_err(|e| {
        Error::with_source(ErrorKind::Internal, format!("joining netns {}", path.display()), e)
    })?;
    let stream = connected.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => Error::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "connecting to {addr} in netns {}: no answer within {PORT_CONNECT_TIMEOUT:?}",
                path.display()
            ),
        ),
        _ => Error::with_source(
            ErrorKind::Unavailable,
            format!("connecting to {addr} in netns {}", path.display()),
            e,
        ),
    })?;
    TcpStream::from_std(stream).map_err(|e| {
        Error::with_source(ErrorKind::Internal, "registering a forwarded connection".to_string(), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::api;
    use crate::cri::pods::fixture::test_pods;
    use crate::cri::store::SandboxState;
    use crate::network::netns;
    use crate::task::{ExecSyncResult, FakeShim};
    use std::io::Write;
    use std::path::PathBuf;

    fn is_root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("skipping: needs root");
        }
        root
    }

    /// Client streams backed by in-memory pipes: (streams, stdin writer, stdout reader, stderr
    /// reader, resize sender).
    fn client_streams() -> (
        Streams,
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::sync::mpsc::Sender<TermSize>,
    ) {
        let (stdin_w, stdin_r) = tokio::io::duplex(1 << 16);
        let (stdout_w, stdout_r) = tokio::io::duplex(1 << 16);
        let (stderr_w, stderr_r) = tokio::io::duplex(1 << 16);
        let (resize_tx, resize_rx) = tokio::sync::mpsc::channel(4);
        let streams = Streams {
            stdin: Some(Box::pin(stdin_r)),
            stdout: Some(Box::pin(stdout_w)),
            stderr: Some(Box::pin(stderr_w)),
            resize: Some(resize_rx),
        };
        (streams, stdin_w, stdout_r, stderr_r, resize_tx)
    }

    async fn read_all(mut r: tokio::io::DuplexStream) -> String {
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        s
    }

    async fn wait_for_call(shim: &FakeShim, call: &str) {
        let start = std::time::Instant::now();
        while !shim.calls().iter().any(|c| c == call) {
            assert!(start.elapsed() < Duration::from_secs(5), "no {call:?} in {:?}", shim.calls());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn exec_pumps_stdio_and_returns_the_exit_code() {
        let t = test_pods(false, None).await;
        let backend = PodStreams::new(t.pods.clone());
        t.shim.set_exec_result(ExecSyncResult {
            exit_code: 7,
            stdout: b"first ".to_vec(),
            stderr: b"err".to_vec(),
            timed_out: false,
        });
        let (streams, mut stdin, stdout, stderr, resize) = client_streams();
        let shim = t.shim.clone();
        let client = async move {
            stdin.write_all(b"hello").await.unwrap();
            resize.send(TermSize { width: 90, height: 30 }).await.unwrap();
            // Closing stdin ends the scripted process: only once the resize got through.
            wait_for_call(&shim, "resize c1 90x30").await;
            drop(stdin);
            (read_all(stdout).await, read_all(stderr).await)
        };
        let cmd = ["cat".to_string()];
        let (code, (out, err)) = tokio::join!(backend.exec("c1", &cmd, false, streams), client);
        assert_eq!(code.unwrap(), 7);
        assert_eq!((out.as_str(), err.as_str()), ("first hello", "err"));
        assert!(t.shim.calls().contains(&"resize c1 90x30".to_string()), "{:?}", t.shim.calls());

        let none = || Streams { stdin: None, stdout: None, stderr: None, resize: None };
        let kind = |r: Result<i32>| r.unwrap_err().kind();
        assert_eq!(kind(backend.exec("nope", &cmd, false, none()).await), ErrorKind::NotFound);
        assert_eq!(kind(backend.exec("done", &cmd, false, none()).await), ErrorKind::FailedPrecondition);
        assert_eq!(kind(backend.exec("c1", &[], false, none()).await), ErrorKind::InvalidArgument);
        // Without stdin, the scripted process ends at once.
        assert_eq!(backend.exec("c1", &cmd, false, none()).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn exec_is_killed_when_the_client_goes_away() {
        let t = test_pods(false, None).await;
        let backend = Arc::new(PodStreams::new(t.pods.clone()));
        let cmd = vec!["cat".to_string()];

        // The streaming server drops the session.
        let (streams, _stdin, _stdout, _stderr, _resize) = client_streams();
        let (b, c) = (backend.clone(), cmd.clone());
        let session = tokio::spawn(async move { b.exec("c1", &c, false, streams).await });
        wait_for_call(&t.shim, "exec_stream c1").await;
        session.abort();
        wait_for_call(&t.shim, "exec_killed c1").await;

        // The client's stdout is gone: the next output cannot be delivered.
        t.shim.set_exec_result(ExecSyncResult { stdout: b"lost".to_vec(), ..Default::default() });
        let (streams, _stdin, stdout, _stderr, _resize) = client_streams();
        drop(stdout);
        let err = backend.exec("c1", &cmd, false, streams).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
        let killed = t.shim.calls().iter().filter(|c| *c == "exec_killed c1").count();
        let start = std::time::Instant::now();
        while t.shim.calls().iter().filter(|c| *c == "exec_killed c1").count() == killed {
            assert!(start.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn attach_echoes_until_the_container_exits() {
        let t = test_pods(false, None).await;
        let backend = PodStreams::new(t.pods.clone());
        let (streams, mut stdin, mut stdout, _stderr, _resize) = client_streams();
        let shim = t.shim.clone();
        let client = async move {
            stdin.write_all(b"line\n").await.unwrap();
            let mut buf = [0u8; 5];
            stdout.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"line\n");
            drop(stdin); // not stdin_once: the container's stdin stays open
            tokio::time::sleep(Duration::from_millis(50)).await;
            shim.exit("c1", 0);
        };
        let (attached, ()) = tokio::join!(backend.attach("c1", false, streams), client);
        attached.unwrap();
        assert!(!t.shim.calls().contains(&"close_stdin c1".to_string()));
        let none = Streams { stdin: None, stdout: None, stderr: None, resize: None };
        assert_eq!(backend.attach("nope", false, none).await.unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn attach_with_stdin_once_closes_the_containers_stdin() {
        let t = test_pods(true, None).await;
        let backend = Arc::new(PodStreams::new(t.pods.clone()));
        let (streams, stdin, _stdout, _stderr, _resize) = client_streams();
        drop(stdin);
        let b = backend.clone();
        let session = tokio::spawn(async move { b.attach("c1", false, streams).await });
        wait_for_call(&t.shim, "close_stdin c1").await;
        session.abort();
        wait_for_call(&t.shim, "detach c1").await;
    }

    #[tokio::test]
    async fn port_forward_refuses_unknown_and_unready_sandboxes() {
        let t = test_pods(false, None).await;
        let backend = PodStreams::new(t.pods.clone());
        let kind = |r: Result<Box<dyn PortStream>>| r.err().unwrap().kind();
        assert_eq!(kind(backend.port_forward("nope", 80).await), ErrorKind::NotFound);
        // Not hostNetwork, yet no netns recorded.
        assert_eq!(kind(backend.port_forward("sb1", 80).await), ErrorKind::FailedPrecondition);
        t.pods.store.update_sandbox("sb1", |s| s.state = SandboxState::NotReady).unwrap();
        assert_eq!(kind(backend.port_forward("sb1", 80).await), ErrorKind::FailedPrecondition);
    }

    /// Serves one connection on `listener`, answering with `banner`.
    fn respond_once(listener: std::net::TcpListener, banner: &'static [u8]) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(banner).unwrap();
        })
    }

    async fn banner(mut stream: impl tokio::io::AsyncRead + Unpin) -> String {
        let mut s = String::new();
        stream.read_to_string(&mut s).await.unwrap();
        s
    }

    fn current_netns() -> PathBuf {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    }

    /// The same port answers differently on the host and in the pod: the connector must reach the
    /// pod's, and leave the calling thread in the host's namespace.
    #[tokio::test]
    async fn port_forward_reaches_the_port_inside_the_pod() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let ns = netns::create(&tmp.path().join("netns"), "pf").unwrap();
        let result = std::panic::AssertUnwindSafe(async {
            netns::set_loopback_up(&ns).unwrap();
            let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = host.local_addr().unwrap().port();
            let ns_file = std::fs::File::open(&ns).unwrap();
            let pod = std::thread::spawn(move || {
                nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                std::net::TcpListener::bind(("127.0.0.1", port)).unwrap()
            })
            .join()
            .unwrap();
            let (pod_server, host_server) = (respond_once(pod, b"pod"), respond_once(host, b"host"));

            let before = current_netns();
            let t = test_pods(false, Some(ns.clone())).await;
            let backend = PodStreams::new(t.pods.clone());
            assert_eq!(banner(backend.port_forward("sb1", port).await.unwrap()).await, "pod");
            assert_eq!(banner(connect_in_netns(None, port).await.unwrap()).await, "host");
            assert_eq!(current_netns(), before, "the caller's thread stayed in the host's netns");
            pod_server.join().unwrap();
            host_server.join().unwrap();

            // hostNetwork: the host's port.
            let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let host_port = host.local_addr().unwrap().port();
            let host_server = respond_once(host, b"host");
            let node =
                api::NamespaceOption { network: api::NamespaceMode::Node as i32, ..Default::default() };
            t.pods
                .store
                .update_sandbox("sb1", |s| {
                    s.config.linux = Some(api::LinuxPodSandboxConfig {
                        security_context: Some(api::LinuxSandboxSecurityContext {
                            namespace_options: Some(node),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                })
                .unwrap();
            assert_eq!(banner(backend.port_forward("sb1", host_port).await.unwrap()).await, "host");
            host_server.join().unwrap();

            // Nothing listens in the pod any more.
            let err = connect_in_netns(Some(&ns), port).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
            let err = connect_in_netns(Some(&tmp.path().join("missing")), port).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        });
        let outcome = futures_util::FutureExt::catch_unwind(result).await;
        netns::remove(&ns).unwrap();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
