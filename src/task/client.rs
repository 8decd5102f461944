//! The real shim client: one unix-socket connection per call, each under a deadline, so a client
//! survives berthd and shim restarts alike (there is no session to lose).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::net::UnixStream;

use super::{
    AttachOptions, ContainerState, CreateOptions, DEFAULT_CALL_TIMEOUT, EventStream, ExecOptions,
    ExecSyncOptions, ExecSyncResult, ExitEvent, LaunchOptions, ProcessStream, ShimApi, ShimInfo,
};
use crate::error::{Error, ErrorKind, Result};
use crate::shim::frame::{read_message, write_message};
use crate::shim::proto::{self, request::Call, response::Result as R};
use crate::shim::server::call_name;
use crate::shim::{self, ShimConfig};

/// Runs `berth-shim start` for the pod (idempotent: an existing shim is reused), waits for it to
/// exit within `opts.start_timeout`, and connects.
pub async fn launch(opts: &LaunchOptions) -> Result<ShimClient> {
    let what = format!("launching the shim of pod {}", opts.id);
    run_shim_command(opts, "start", opts.start_timeout, &what).await?;
    let client = ShimClient::connect(&opts.dir).await.map_err(|e| e.context(&what))?;
    Ok(client.with_timeout(opts.call_timeout))
}

/// Runs `berth-shim cleanup` for the pod: what its dead shim ran is ended and recorded.
pub async fn cleanup(opts: &LaunchOptions) -> Result<()> {
    let what = format!("cleaning up after the dead shim of pod {}", opts.id);
    run_shim_command(opts, "cleanup", super::CLEANUP_TIMEOUT, &what).await
}

/// Runs `berth-shim <command>` with the pod's options and waits for it within `timeout`.
async fn run_shim_command(opts: &LaunchOptions, command: &str, timeout: Duration, what: &str) -> Result<()> {
    let config = ShimConfig {
        id: opts.id.clone(),
        dir: opts.dir.clone(),
        runtime: opts.runtime.clone(),
        runtime_root: opts.runtime_root.clone(),
        runtime_args: opts.runtime_args.clone(),
        log_line_max: opts.log_line_max,
        systemd_cgroup: opts.systemd_cgroup,
        cgroup_root: PathBuf::from(shim::cgroup::CGROUP_ROOT),
    };
    let mut cmd = tokio::process::Command::new(&opts.shim_binary);
    cmd.arg(command).args(config.to_args()).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| {
            Error::new(ErrorKind::DeadlineExceeded, format!("{what}: no answer within {timeout:?}"))
        })?
        .map_err(|e| {
            Error::with_source(
                ErrorKind::FailedPrecondition,
                format!("{what}: running {}", opts.shim_binary.display()),
                e,
            )
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::unavailable(format!("{what}: {} ({})", stderr.trim(), output.status)));
    }
    Ok(())
}

/// A connection-per-call client of one pod's shim.
#[derive(Debug, Clone)]
pub struct ShimClient {
    dir: PathBuf,
    socket: PathBuf,
    timeout: Duration,
}

impl ShimClient {
    /// Connects to the shim serving `dir` (checking that it answers a Ping); Unavailable if none.
    pub async fn connect(dir: &Path) -> Result<ShimClient> {
        let client = ShimClient {
            dir: dir.to_path_buf(),
            socket: shim::socket_path(dir, shim::SOCKET_NAME),
            timeout: DEFAULT_CALL_TIMEOUT,
        };
        client.ping().await?;
        Ok(client)
    }

    /// The same client with another per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> ShimClient {
        self.timeout = timeout;
        self
    }

    /// The pod directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn open(&self) -> Result<UnixStream> {
        UnixStream::connect(&self.socket).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Unavailable,
                format!("connecting to the shim at {}", self.socket.display()),
                e,
            )
        })
    }

    /// Sends one request and reads its response, under `deadline` (none: wait as long as it takes).
    async fn call(&self, call: Call, deadline: Option<Duration>) -> Result<Option<R>> {
        let name = call_name(&call);
        let exchange = async {
            let mut stream = self.open().await?;
            write_message(&mut stream, &proto::Request { call: Some(call) })
                .await
                .map_err(|e| self.io(name, e))?;
            read_response(&mut stream, name, &self.socket).await
        };
        match deadline {
            None => exchange.await,
            Some(d) => tokio::time::timeout(d, exchange).await.map_err(|_| {
                Error::new(
                    ErrorKind::DeadlineExceeded,
                    format!("shim call {name} at {} took over {d:?}", self.socket.display()),
                )
            })?,
        }
    }

    fn io(&self, name: &str, e: std::io::Error) -> Error {
        Error::with_source(
            ErrorKind::Unavailable,
            format!("shim call {name} at {}", self.socket.display()),
            e,
        )
    }

    async fn unary(&self, call: Call) -> Result<Option<R>> {
        self.call(call, Some(self.timeout)).await
    }

    /// Creates a container; returns its init's pid.
    pub async fn create(&self, opts: &CreateOptions) -> Result<u32> {
        self.create_call(opts, false).await
    }

    /// Creates and starts a container in one call; returns its init's pid.
    pub async fn run(&self, opts: &CreateOptions) -> Result<u32> {
        self.create_call(opts, true).await
    }

    async fn create_call(&self, opts: &CreateOptions, start: bool) -> Result<u32> {
        let req = proto::CreateRequest {
            start,
            id: opts.id.clone(),
            bundle: opts.bundle.to_string_lossy().into_owned(),
            stdin: opts.stdin,
            tty: opts.tty,
            log_path: opts.log_path.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        match self.unary(Call::Create(req)).await? {
            Some(R::Create(r)) => Ok(r.pid),
            other => Err(unexpected("create", other)),
        }
    }

    /// Starts a created container; returns its init's pid.
    pub async fn start(&self, id: &str) -> Result<u32> {
        match self.unary(Call::Start(proto::StartRequest { id: id.into() })).await? {
            Some(R::Start(r)) => Ok(r.pid),
            other => Err(unexpected("start", other)),
        }
    }

    /// Signals the container's init (or every process with `all`).
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let signal = u32::try_from(signal).map_err(|_| Error::invalid(format!("invalid signal {signal}")))?;
        self.unary(Call::Kill(proto::KillRequest { id: id.into(), signal, all })).await.map(drop)
    }

    /// Deletes and forgets the container; idempotent.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.unary(Call::Delete(proto::DeleteRequest { id: id.into() })).await.map(drop)
    }

    /// One container's state.
    pub async fn state(&self, id: &str) -> Result<ContainerState> {
        match self.unary(Call::State(proto::StateRequest { id: id.into() })).await? {
            Some(R::State(s)) => Ok(s.into()),
            other => Err(unexpected("state", other)),
        }
    }

    /// Every container's state, sorted by id.
    pub async fn list(&self) -> Result<Vec<ContainerState>> {
        match self.unary(Call::List(proto::ListRequest {})).await? {
            Some(R::List(l)) => Ok(l.containers.into_iter().map(Into::into).collect()),
            other => Err(unexpected("list", other)),
        }
    }

    /// Waits for the container's exit, without deadline.
    pub async fn wait(&self, id: &str) -> Result<ExitEvent> {
        match self.call(Call::Wait(proto::WaitRequest { id: id.into() }), None).await? {
            Some(R::Exit(e)) => Ok(e.into()),
            other => Err(unexpected("wait", other)),
        }
    }

    /// Runs a process to completion in the container; the deadline is the exec's timeout plus
    /// the client's call deadline.
    pub async fn exec_sync(&self, opts: &ExecSyncOptions) -> Result<ExecSyncResult> {
        let req = proto::ExecSyncRequest {
            id: opts.id.clone(),
            process_json: opts.process_json.clone(),
            timeout_ms: opts.timeout.as_millis().try_into().unwrap_or(u64::MAX),
            max_output_bytes: opts.max_output_bytes as u64,
        };
        let deadline =
            if opts.timeout.is_zero() { None } else { Some(opts.timeout.saturating_add(self.timeout)) };
        match self.call(Call::ExecSync(req), deadline).await? {
            Some(R::ExecSync(r)) => Ok(ExecSyncResult {
                exit_code: r.exit_code,
                stdout: r.stdout,
                stderr: r.stderr,
                timed_out: r.timed_out,
            }),
            other => Err(unexpected("exec_sync", other)),
        }
    }

    /// Starts a process in the container with its stdio streamed (see [`ShimApi::exec_stream`]).
    pub async fn exec_stream(&self, opts: &ExecOptions) -> Result<ProcessStream> {
        let req = proto::ExecRequest {
            id: opts.id.clone(),
            process_json: opts.process_json.clone(),
            tty: opts.tty,
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
        };
        let what = format!("exec in container {}", opts.id);
        match self.open_stream(Call::Exec(req), what).await? {
            (Some(R::Exec(r)), stream) => Ok(ProcessStream { pid: r.pid, ..stream }),
            (other, _) => Err(unexpected("exec", other)),
        }
    }

    /// Attaches to the container's stdio (see [`ShimApi::attach`]).
    pub async fn attach(&self, opts: &AttachOptions) -> Result<ProcessStream> {
        let req = proto::AttachRequest {
            id: opts.id.clone(),
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
            tty: opts.tty,
        };
        let what = format!("attach to container {}", opts.id);
        match self.open_stream(Call::Attach(req), what).await? {
            (None, stream) => Ok(stream),
            (other, _) => Err(unexpected("attach", other)),
        }
    }

    /// Sends a streaming call and reads its answer under the call deadline; the connection then
    /// belongs to the returned stream (which has no deadline).
    async fn open_stream(&self, call: Call, what: String) -> Result<(Option<R>, ProcessStream)> {
        let name = call_name(&call);
        let exchange = async {
            let mut stream = self.open().await?;
            write_message(&mut stream, &proto::Request { call: Some(call) })
                .await
                .map_err(|e| self.io(name, e))?;
            let result = read_response(&mut stream, name, &self.socket).await?;
            Ok::<_, Error>((result, stream))
        };
        let (result, stream) = tokio::time::timeout(self.timeout, exchange).await.map_err(|_| {
            Error::new(
                ErrorKind::DeadlineExceeded,
                format!("shim call {name} at {} took over {:?}", self.socket.display(), self.timeout),
            )
        })??;
        // Not `into_split`: its write half shuts the socket down when dropped, which the shim
        // would take for the client going away.
        let (r, w) = tokio::io::split(stream);
        Ok((result, ProcessStream::new(0, r, w, what)))
    }

    /// Updates the container's resources (OCI `linux.resources` JSON).
    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let req = proto::UpdateRequest { id: id.into(), resources_json: resources_json.to_vec() };
        self.unary(Call::Update(req)).await.map(drop)
    }

    /// Reopens the container's log path.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        self.unary(Call::ReopenLog(proto::ReopenLogRequest { id: id.into() })).await.map(drop)
    }

    /// Subscribes to exit events; the subscription is in place when this returns.
    pub async fn events(&self) -> Result<EventStream> {
        let subscribe = async {
            let mut stream = self.open().await?;
            let request = proto::Request { call: Some(Call::Events(proto::EventsRequest {})) };
            write_message(&mut stream, &request).await.map_err(|e| self.io("events", e))?;
            read_response(&mut stream, "events", &self.socket).await?;
            Ok::<_, Error>(stream)
        };
        let stream = tokio::time::timeout(self.timeout, subscribe).await.map_err(|_| {
            Error::new(
                ErrorKind::DeadlineExceeded,
                format!("subscribing to events at {}", self.socket.display()),
            )
        })??;
        let socket = self.socket.clone();
        let events = futures_util::stream::unfold(Some(stream), move |stream| {
            let socket = socket.clone();
            async move {
                let mut stream = stream?;
                loop {
                    match read_message::<_, proto::Event>(&mut stream).await {
                        Ok(Some(proto::Event { event: Some(proto::event::Event::Exit(e)) })) => {
                            return Some((Ok(e.into()), Some(stream)));
                        }
                        // An event kind this berthd does not know yet.
                        Ok(Some(_)) => continue,
                        Ok(None) => return None,
                        Err(e) => {
                            let e = Error::with_source(
                                ErrorKind::Unavailable,
                                format!("reading events from {}", socket.display()),
                                e,
                            );
                            return Some((Err(e), None));
                        }
                    }
                }
            }
        });
        Ok(Box::pin(events))
    }

    /// Asks the shim to exit; FailedPrecondition while a container is created or running.
    pub async fn shutdown(&self) -> Result<()> {
        self.unary(Call::Shutdown(proto::ShutdownRequest {})).await.map(drop)
    }

    /// Checks that the shim answers; returns its pid and version.
    pub async fn ping(&self) -> Result<ShimInfo> {
        match self.unary(Call::Ping(proto::PingRequest {})).await? {
            Some(R::Ping(p)) => Ok(ShimInfo { pid: p.pid, version: p.version }),
            other => Err(unexpected("ping", other)),
        }
    }
}

async fn read_response(stream: &mut UnixStream, name: &str, socket: &Path) -> Result<Option<R>> {
    let response: proto::Response = read_message(stream)
        .await
        .map_err(|e| {
            Error::with_source(ErrorKind::Unavailable, format!("shim call {name} at {}", socket.display()), e)
        })?
        .ok_or_else(|| {
            Error::unavailable(format!(
                "shim call {name} at {}: connection closed without an answer",
                socket.display()
            ))
        })?;
    match shim::kind_from_code(response.code) {
        None => Ok(response.result),
        Some(kind) => Err(Error::new(kind, response.error)),
    }
}

fn unexpected(call: &str, got: Option<R>) -> Error {
    Error::internal(format!("shim answered {call} with {got:?}"))
}

impl ShimApi for ShimClient {
    fn create<'a>(&'a self, opts: &'a CreateOptions) -> BoxFuture<'a, Result<u32>> {
        Box::pin(ShimClient::create(self, opts))
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u32>> {
        Box::pin(ShimClient::start(self, id))
    }
    fn run<'a>(&'a self, opts: &'a CreateOptions) -> BoxFuture<'a, Result<u32>> {
        Box::pin(ShimClient::run(self, opts))
    }
    fn kill<'a>(&'a self, id: &'a str, signal: i32, all: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(ShimClient::kill(self, id, signal, all))
    }
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(ShimClient::delete(self, id))
    }
    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerState>> {
        Box::pin(ShimClient::state(self, id))
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerState>>> {
        Box::pin(ShimClient::list(self))
    }
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitEvent>> {
        Box::pin(ShimClient::wait(self, id))
    }
    fn exec_sync<'a>(&'a self, opts: &'a ExecSyncOptions) -> BoxFuture<'a, Result<ExecSyncResult>> {
        Box::pin(ShimClient::exec_sync(self, opts))
    }
    fn exec_stream<'a>(&'a self, opts: &'a ExecOptions) -> BoxFuture<'a, Result<ProcessStream>> {
        Box::pin(ShimClient::exec_stream(self, opts))
    }
    fn attach<'a>(&'a self, opts: &'a AttachOptions) -> BoxFuture<'a, Result<ProcessStream>> {
        Box::pin(ShimClient::attach(self, opts))
    }
    fn update<'a>(&'a self, id: &'a str, resources_json: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(ShimClient::update(self, id, resources_json))
    }
    fn reopen_log<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(ShimClient::reopen_log(self, id))
    }
    fn events(&self) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(ShimClient::events(self))
    }
    fn shutdown(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(ShimClient::shutdown(self))
    }
    fn ping(&self) -> BoxFuture<'_, Result<ShimInfo>> {
        Box::pin(ShimClient::ping(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::net::UnixListener;

    /// A one-connection-at-a-time stand-in for the shim: answers each request with `reply`.
    fn serve(
        dir: &Path,
        reply: impl Fn(proto::Request) -> Vec<Vec<u8>> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(dir.join(shim::SOCKET_NAME)).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let Ok(Some(req)) = read_message::<_, proto::Request>(&mut s).await else { continue };
                for frame in reply(req) {
                    use tokio::io::AsyncWriteExt;
                    let _ = s.write_all(&frame).await;
                }
            }
        })
    }

    fn ok(result: Option<R>) -> Vec<u8> {
        use prost::Message;
        proto::Response { code: 0, error: String::new(), result }.encode_length_delimited_to_vec()
    }

    fn ping_reply() -> Vec<u8> {
        ok(Some(R::Ping(proto::PingResponse { pid: 7, version: "v".into() })))
    }

    #[tokio::test]
    async fn errors_come_back_with_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let server = serve(dir.path(), |req| match req.call {
            Some(Call::Ping(_)) => vec![ping_reply()],
            _ => {
                use prost::Message;
                vec![
                    proto::Response {
                        code: proto::Code::NotFound as i32,
                        error: "container x not found".into(),
                        result: None,
                    }
                    .encode_length_delimited_to_vec(),
                ]
            }
        });
        let client = ShimClient::connect(dir.path()).await.unwrap();
        assert_eq!(client.ping().await.unwrap(), ShimInfo { pid: 7, version: "v".into() });
        let err = client.state("x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.to_string(), "container x not found");
        server.abort();
    }

    #[tokio::test]
    async fn no_shim_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let err = ShimClient::connect(dir.path()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn a_silent_shim_hits_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let _listener = UnixListener::bind(dir.path().join(shim::SOCKET_NAME)).unwrap();
        let client = ShimClient {
            dir: dir.path().into(),
            socket: dir.path().join(shim::SOCKET_NAME),
            timeout: DEFAULT_CALL_TIMEOUT,
        }
        .with_timeout(Duration::from_millis(100));
        assert_eq!(client.list().await.unwrap_err().kind(), ErrorKind::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_closed_connection_is_unavailable_and_a_wrong_answer_internal() {
        let dir = tempfile::tempdir().unwrap();
        let server = serve(dir.path(), |req| match req.call {
            Some(Call::Ping(_)) => vec![ping_reply()],
            Some(Call::List(_)) => vec![ping_reply()],
            _ => vec![],
        });
        let client = ShimClient::connect(dir.path()).await.unwrap();
        assert_eq!(client.delete("c").await.unwrap_err().kind(), ErrorKind::Unavailable);
        assert_eq!(client.list().await.unwrap_err().kind(), ErrorKind::Internal);
        server.abort();
    }

    #[tokio::test]
    async fn events_stream_until_the_shim_closes() {
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let server = serve(dir.path(), |req| match req.call {
            Some(Call::Ping(_)) => vec![ping_reply()],
            Some(Call::Events(_)) => {
                let exit = |id: &str, code| {
                    proto::Event {
                        event: Some(proto::event::Event::Exit(proto::ExitStatus {
                            id: id.into(),
                            pid: 1,
                            exit_code: code,
                            exited_at: 5,
                            oom_killed: false,
                        })),
                    }
                    .encode_length_delimited_to_vec()
                };
                let unknown = proto::Event { event: None }.encode_length_delimited_to_vec();
                vec![ok(None), exit("a", 0), unknown, exit("b", 137)]
            }
            _ => vec![],
        });
        let client = ShimClient::connect(dir.path()).await.unwrap();
        let events: Vec<_> = client.events().await.unwrap().collect().await;
        let got: Vec<_> = events.into_iter().map(|e| e.map(|e| (e.id, e.exit_code)).unwrap()).collect();
        assert_eq!(got, [("a".to_string(), 0), ("b".to_string(), 137)]);
        server.abort();
    }
}
