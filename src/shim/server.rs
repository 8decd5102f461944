//! The serving shim: the containers of one pod, their lifecycle through the OCI runtime, exit
//! handling (OOM evidence → status.json → Wait callers and Events subscribers, in that order), and
//! the API on the unix socket, one request per connection (a streaming call, Exec or Attach, keeps
//! its connection for the session's frames, see [`super::stream`]).
//!
//! Everything runs on one current-thread runtime; state sits behind std mutexes that are never held
//! across an await. This module must never block on a container (stdio is drained by tasks) and
//! never reap children itself (the reaper does).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::{ReadHalf, WriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::Signal as SignalStream;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use super::cgroup::OomCounter;
use super::cri_log::{LogFile, Stream};
use super::frame::{Output, read_message, write_message};
use super::proto::{self, request::Call, response};
use super::reaper::{self, Exit, Reaper, Target};
use super::runtime::{RemoveOnDrop, RuntimeDriver, RuntimeStdio};
use super::status::{self, RecordedStatus, StatusRecord};
use super::stdio::{Fanout, StdinWriter};
use super::stream::{ExecOutput, pump_attach_output, pump_exec_output, pump_input, write_exit};
use super::{ShimConfig, code_from_kind, fd, lock, stdio};
use crate::error::{Context, Error, ErrorKind, Result};

/// How long a client has to send its request after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an exit waits for the container's output to reach end of stream before it is
/// published: long enough for the last lines to reach the log, short enough that a background
/// process holding the pipe does not hide the exit.
const IO_DRAIN: Duration = Duration::from_secs(2);
/// How long Delete waits for a killed container's exit.
const DELETE_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Delete waits for a Create of the same id still in flight.
const DELETE_CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default and the largest ExecSync output kept per stream.
const EXEC_OUTPUT_CAP: usize = 16 << 20;
/// Pending events per subscriber before it is cut off (it then reconnects and lists).
const EVENT_BACKLOG: usize = 64;
/// Output chunks (of up to 8 KiB) an attacher may fall behind by before it is detached.
const ATTACH_BACKLOG: usize = 64;
/// How long the runtime's pty master may take to arrive once the runtime has exited (it sends it
/// before exiting, so it is normally there at once).
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(5);

struct ExitInfo {
    code: i32,
    at: SystemTime,
    oom_killed: bool,
}

struct Container {
    id: String,
    dir: PathBuf,
    pid: u32,
    status: RecordedStatus,
    created_at: SystemTime,
    started_at: Option<SystemTime>,
    /// Set when the init was reaped; published (status Stopped) once the output drained.
    exit: Option<ExitInfo>,
    exiting: bool,
    log: Arc<Mutex<LogFile>>,
    /// The container's stdin (a pipe, or the pty master) if it was created with one: held open so
    /// the container does not see end of file, written by attachers.
    stdin: Option<Arc<StdinWriter>>,
    /// The pty master, for resizes.
    console: Option<Arc<OwnedFd>>,
    /// Copies of the output for attachers.
    fanout: Arc<Fanout>,
    io: Vec<JoinHandle<()>>,
    io_abort: Vec<AbortHandle>,
    oom: OomCounter,
    oom_baseline: u64,
    exited: watch::Sender<Option<proto::ExitStatus>>,
}

impl Container {
    fn running(&self) -> bool {
        self.status != RecordedStatus::Stopped || self.exiting
    }

    fn record(&self) -> StatusRecord {
        // An exit shows only once published, together with the Stopped status.
        let exit = self.exit.as_ref().filter(|_| self.status == RecordedStatus::Stopped);
        StatusRecord {
            version: status::VERSION,
            id: self.id.clone(),
            status: self.status,
            pid: self.pid,
            exit_code: exit.map_or(0, |e| e.code),
            created_at: nanos(Some(self.created_at)),
            started_at: nanos(self.started_at),
            exited_at: nanos(exit.map(|e| e.at)),
            oom_killed: exit.is_some_and(|e| e.oom_killed),
            reclaimed: false,
        }
    }

    fn state(&self) -> proto::ContainerState {
        // Until its exit is published, a reaped container still reads as running.
        let status = match self.status {
            RecordedStatus::Created => proto::Status::Created,
            RecordedStatus::Running => proto::Status::Running,
            RecordedStatus::Stopped => proto::Status::Stopped,
        };
        let r = self.record();
        let dropped = lock(&self.log).dropped();
        proto::ContainerState {
            id: r.id,
            status: status as i32,
            pid: r.pid,
            exit_code: r.exit_code,
            created_at: r.created_at,
            started_at: r.started_at,
            exited_at: r.exited_at,
            oom_killed: r.oom_killed,
            log_dropped_records: dropped.records,
            log_dropped_bytes: dropped.bytes,
        }
    }

    fn exit_status(&self) -> Option<proto::ExitStatus> {
        let e = self.exit.as_ref()?;
        Some(proto::ExitStatus {
            id: self.id.clone(),
            pid: self.pid,
            exit_code: e.code,
            exited_at: nanos(Some(e.at)),
            oom_killed: e.oom_killed,
        })
    }

    fn persist(&self) {
        if let Err(e) = status::write(&self.dir, &self.record()) {
            tracing::warn!(id = %self.id, error = %e, "recording container status failed");
        }
    }
}

/// Unix nanoseconds, 0 for none.
fn nanos(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as i64)
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    /// Ids whose Create is in progress.
    creating: HashSet<String>,
}

/// The serving shim.
pub struct Shim {
    config: ShimConfig,
    runtime: RuntimeDriver,
    reaper: Arc<Mutex<Reaper>>,
    state: Mutex<State>,
    events: broadcast::Sender<proto::ExitStatus>,
    shutdown: Notify,
    /// Notified each time a Create ends, whatever its outcome.
    create_done: Notify,
    seq: AtomicU64,
}

/// Ends a start (see [`Reaper::begin_start`]) when dropped, whatever path the start took.
struct StartGuard<'a>(&'a Mutex<Reaper>);

impl<'a> StartGuard<'a> {
    fn new(reaper: &'a Mutex<Reaper>) -> Self {
        lock(reaper).begin_start();
        StartGuard(reaper)
    }
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        lock(self.0).end_start();
    }
}

/// Releases a container id reserved by Create when dropped.
struct Reservation<'a>(&'a Shim, String);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).creating.remove(&self.1);
        self.0.create_done.notify_waiters();
    }
}

/// An exec's process and pid files, removed when dropped.
struct ExecFiles {
    process: PathBuf,
    pid: PathBuf,
    _cleanup: RemoveOnDrop,
}

impl ExecFiles {
    /// `exec -d --pid-file P --process F`: the runtime's arguments up to the options that vary.
    fn args(&self) -> Vec<&OsStr> {
        vec![
            os("exec"),
            os("-d"),
            os("--pid-file"),
            self.pid.as_os_str(),
            os("--process"),
            self.process.as_os_str(),
        ]
    }
}

/// A socket the runtime sends a new pty's master to (`--console-socket`), removed when dropped.
struct ConsoleSocket {
    path: PathBuf,
    receiving: JoinHandle<std::io::Result<OwnedFd>>,
    _file: RemoveOnDrop,
}

impl ConsoleSocket {
    fn bind(shim: &Shim, what: &str) -> Result<ConsoleSocket> {
        let seq = shim.seq.fetch_add(1, Ordering::Relaxed);
        let path = super::socket_path(&shim.config.dir, &format!("console-{seq}.sock"));
        super::prepare_socket(&path).context(|| what.to_string())?;
        let listener = UnixListener::bind(&path).context(|| format!("{what}: binding {}", path.display()))?;
        let file = RemoveOnDrop(vec![path.clone()]);
        // The runtime is our child: it runs as we do (or as root).
        let allowed = [0, nix::unistd::geteuid().as_raw()];
        let receiving = tokio::spawn(async move { fd::receive_pty(&listener, &allowed).await });
        Ok(ConsoleSocket { path, receiving, _file: file })
    }

    /// The master, once the runtime has run.
    async fn receive(mut self, what: &str) -> Result<OwnedFd> {
        match tokio::time::timeout(CONSOLE_TIMEOUT, &mut self.receiving).await {
            Ok(Ok(Ok(fd))) => Ok(fd),
            Ok(Ok(Err(e))) => {
                Err(Error::with_source(ErrorKind::Internal, format!("{what}: receiving the pty"), e))
            }
            _ => Err(Error::internal(format!("{what}: the runtime sent no pty"))),
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        self.receiving.abort();
    }
}

/// An exec started for a streaming call.
struct StreamedExec {
    pid: u32,
    exit: oneshot::Receiver<Exit>,
    outputs: [Option<ExecOutput>; 2],
    stdin: Option<StdinWriter>,
    console: Option<OwnedFd>,
}

fn duplicate(fd: &OwnedFd, what: &str) -> Result<OwnedFd> {
    fd.try_clone()
        .map_err(|e| Error::with_source(ErrorKind::Internal, format!("{what}: duplicating the pty"), e))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b));
    if ok { Ok(()) } else { Err(Error::invalid(format!("invalid container id {id:?}"))) }
}

fn read_pid(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).context(|| format!("reading pid file {}", path.display()))?;
    text.trim().parse::<u32>().ok().filter(|&p| p > 0 && p <= i32::MAX as u32).ok_or_else(|| {
        Error::internal(format!("pid file {} holds {:?}, not a pid", path.display(), text.trim()))
    })
}

type Answer = Result<Option<response::Result>>;

impl Shim {
    /// A shim with no containers, driving the runtime named in `config`.
    pub fn new(config: ShimConfig) -> Arc<Shim> {
        let reaper = Arc::new(Mutex::new(Reaper::default()));
        let runtime = RuntimeDriver::for_config(&config, reaper.clone());
        Arc::new(Shim {
            config,
            runtime,
            reaper,
            state: Mutex::new(State::default()),
            events: broadcast::channel(EVENT_BACKLOG).0,
            shutdown: Notify::new(),
            create_done: Notify::new(),
            seq: AtomicU64::new(0),
        })
    }

    /// Reaps children on every SIGCHLD and dispatches their exits. `sigchld` must have been
    /// registered before the first child was spawned.
    pub async fn reap_loop(self: Arc<Self>, mut sigchld: SignalStream) {
        loop {
            for exit in reaper::reap() {
                self.dispatch(exit);
            }
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }

    /// Accepts connections until Shutdown succeeds.
    pub async fn serve(self: &Arc<Self>, listener: UnixListener) {
        loop {
            tokio::select! {
                conn = listener.accept() => match conn {
                    Ok((stream, _)) => {
                        tokio::spawn(self.clone().connection(stream));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = self.shutdown.notified() => return,
            }
        }
    }

    fn dispatch(self: &Arc<Self>, exit: Exit) {
        let target = lock(&self.reaper).exited(exit);
        match target {
            Some(Target::Notify(tx)) => {
                let _ = tx.send(exit);
            }
            Some(Target::Container(id)) => self.container_exited(&id, exit),
            None => tracing::debug!(pid = exit.pid, code = exit.code, "reaped an unwatched process"),
        }
    }

    /// The init of a container was reaped: take the OOM evidence now (before anything removes the
    /// cgroup), then publish once the output has drained.
    fn container_exited(self: &Arc<Self>, id: &str, exit: Exit) {
        let io = {
            let mut state = lock(&self.state);
            let Some(c) = state.containers.get_mut(id) else { return };
            if c.pid as i32 != exit.pid || c.exiting || c.exit.is_some() {
                return;
            }
            let oom_killed = c.oom.read().is_some_and(|n| n > c.oom_baseline);
            c.exit = Some(ExitInfo { code: exit.code, at: exit.at, oom_killed });
            c.exiting = true;
            std::mem::take(&mut c.io)
        };
        tracing::info!(id, pid = exit.pid, code = exit.code, "container exited");
        let shim = self.clone();
        let id = id.to_string();
        let span = tracing::info_span!("exit", id);
        tokio::spawn(
            async move {
                let _ = tokio::time::timeout(IO_DRAIN, futures_util::future::join_all(io)).await;
                shim.publish_exit(&id);
            }
            .instrument(span),
        );
    }

    fn publish_exit(&self, id: &str) {
        let status = {
            let mut state = lock(&self.state);
            let Some(c) = state.containers.get_mut(id) else { return };
            c.status = RecordedStatus::Stopped;
            c.exiting = false;
            c.persist();
            let Some(status) = c.exit_status() else { return };
            c.exited.send_replace(Some(status.clone()));
            status
        };
        let _ = self.events.send(status);
    }

    async fn connection(self: Arc<Self>, mut stream: UnixStream) {
        let request =
            match tokio::time::timeout(REQUEST_TIMEOUT, read_message::<_, proto::Request>(&mut stream)).await
            {
                Ok(Ok(Some(request))) => request,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "reading a request failed");
                    return;
                }
                Err(_) => return,
            };
        let call = match request.call {
            Some(Call::Exec(req)) => return self.exec_stream(req, stream).await,
            Some(Call::Attach(req)) => return self.attach(req, stream).await,
            Some(call) => call,
            None => {
                let error = Error::invalid("empty or unknown request");
                let _ = write_message(&mut stream, &answer(Err(error))).await;
                return;
            }
        };
        let (mut rd, mut wr) = stream.split();
        let gone = client_gone(&mut rd);
        match call {
            Call::Wait(req) => self.wait(req, gone, &mut wr).await,
            Call::Events(_) => self.events(gone, &mut wr).await,
            Call::Shutdown(_) => {
                let result = self.can_shut_down();
                let ok = result.is_ok();
                let _ = write_message(&mut wr, &answer(result.map(|()| None))).await;
                if ok {
                    tracing::info!("shutting down on request");
                    self.shutdown.notify_one();
                }
            }
            call => {
                let name = call_name(&call);
                let started = Instant::now();
                let result = self.handle(call, gone).instrument(tracing::info_span!("call", name)).await;
                let elapsed = started.elapsed();
                match &result {
                    Ok(_) => tracing::debug!(name, ?elapsed, "ok"),
                    Err(e) => tracing::info!(name, ?elapsed, error = %e, "failed"),
                }
                if let Err(e) = write_message(&mut wr, &answer(result)).await {
                    tracing::debug!(name, error = %e, "writing a response failed");
                }
            }
        }
    }

    /// Answers the calls with one response; `gone` resolves if the client hangs up meanwhile.
    async fn handle(self: &Arc<Self>, call: Call, gone: impl Future<Output = ()>) -> Answer {
        use response::Result as R;
        match call {
            Call::Create(req) => Ok(Some(R::Create(proto::CreateResponse { pid: self.create(req).await? }))),
            Call::Start(req) => Ok(Some(R::Start(proto::StartResponse { pid: self.start(&req.id).await? }))),
            Call::Kill(req) => self.kill(req).await.map(|()| None),
            Call::Delete(req) => self.delete(&req.id).await.map(|()| None),
            Call::State(req) => {
                let state = lock(&self.state);
                let c = state.containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
                Ok(Some(R::State(c.state())))
            }
            Call::List(_) => {
                let state = lock(&self.state);
                let mut containers: Vec<_> = state.containers.values().map(Container::state).collect();
                containers.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(Some(R::List(proto::ListResponse { containers })))
            }
            Call::ExecSync(req) => Ok(Some(R::ExecSync(self.exec_sync(req, gone).await?))),
            Call::Update(req) => self.update(req).await.map(|()| None),
            Call::ReopenLog(req) => {
                let log = self.container(&req.id, |c| c.log.clone())?;
                lock(&log).reopen().map(|()| None)
            }
            Call::Ping(_) => Ok(Some(R::Ping(proto::PingResponse {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            }))),
            Call::Wait(_) | Call::Events(_) | Call::Shutdown(_) | Call::Exec(_) | Call::Attach(_) => {
                Err(Error::internal("streaming call reached the unary handler"))
            }
        }
    }

    fn container<T>(&self, id: &str, f: impl FnOnce(&Container) -> T) -> Result<T> {
        let state = lock(&self.state);
        state.containers.get(id).map(f).ok_or_else(|| not_found(id))
    }

    async fn create(self: &Arc<Self>, req: proto::CreateRequest) -> Result<u32> {
        let id = req.id.clone();
        validate_id(&id)?;
        {
            let mut state = lock(&self.state);
            if state.containers.contains_key(&id) || !state.creating.insert(id.clone()) {
                return Err(Error::already_exists(format!(
                    "container {id} already exists in pod {}",
                    self.config.id
                )));
            }
        }
        let _reservation = Reservation(self, id.clone());
        let dir = self.config.dir.join("containers").join(&id);
        let result = self.create_in(&dir, req).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    async fn create_in(self: &Arc<Self>, dir: &Path, req: proto::CreateRequest) -> Result<u32> {
        let id = req.id;
        let what = format!("creating container {id}");
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(Error::invalid(format!(
                "{what}: the bundle must be an absolute path, not {bundle:?}"
            )));
        }
        let spec_path = bundle.join("config.json");
        let spec = std::fs::read(&spec_path).context_kind(ErrorKind::InvalidArgument, || {
            format!("{what}: reading {}", spec_path.display())
        })?;
        let spec: serde_json::Value = serde_json::from_slice(&spec)
            .context_kind(ErrorKind::InvalidArgument, || {
                format!("{what}: parsing {}", spec_path.display())
            })?;
        let terminal = spec.pointer("/process/terminal").and_then(|v| v.as_bool()).unwrap_or(false);
        if terminal != req.tty {
            return Err(Error::invalid(format!(
                "{what}: tty is {} but process.terminal is {terminal}",
                req.tty
            )));
        }
        let oom = OomCounter::locate(
            &self.config.cgroup_root,
            spec.pointer("/linux/cgroupsPath").and_then(|v| v.as_str()),
            &id,
        );
        crate::fsutil::create_dir_all_with_mode(dir, 0o700).map_err(|e| e.context(&what))?;
        let log_path = (!req.log_path.is_empty()).then(|| PathBuf::from(&req.log_path));
        let log = Arc::new(Mutex::new(LogFile::open(log_path.as_deref()).map_err(|e| e.context(&what))?));
        let pid_file = dir.join("init.pid");
        let mut args = if req.start { vec![os("run"), os("--detach")] } else { vec![os("create")] };
        args.extend([os("--bundle"), bundle.as_os_str(), os("--pid-file"), pid_file.as_os_str()]);
        // Taken before the runtime runs, as in `start`.
        let started_at = req.start.then(SystemTime::now);

        // Held until the init's pid is watched, so that an early exit is kept for it.
        let start = StartGuard::new(&self.reaper);
        let (readers, stdin, console) = if req.tty {
            let console = ConsoleSocket::bind(self, &what)?;
            args.extend([os("--console-socket"), console.path.as_os_str(), os(&id)]);
            self.runtime.run(dir, &args, RuntimeStdio::null(), &what).await?;
            let ends = async {
                let master = console.receive(&what).await?;
                let reader = duplicate(&master, &what)?;
                let stdin = match req.stdin {
                    true => Some(Arc::new(StdinWriter::new(duplicate(&master, &what)?)?)),
                    false => None,
                };
                Ok::<_, Error>((reader, stdin, master))
            };
            let (reader, stdin, master) = match ends.await {
                Ok(ends) => ends,
                Err(e) => return Err(self.undo_create(dir, &id, e).await),
            };
            (vec![(reader, Stream::Stdout)], stdin, Some(Arc::new(master)))
        } else {
            let (out_r, out_w) = stdio::pipe()?;
            let (err_r, err_w) = stdio::pipe()?;
            let (child_stdin, stdin) = if req.stdin {
                let (r, w) = stdio::pipe()?;
                (Stdio::from(r), Some(w))
            } else {
                (Stdio::null(), None)
            };
            args.push(os(&id));
            let stdio = RuntimeStdio {
                stdin: child_stdin,
                stdout: Stdio::from(out_w),
                stderr: Some(Stdio::from(err_w)),
            };
            self.runtime.run(dir, &args, stdio, &what).await?;
            let stdin = match stdin.map(StdinWriter::new).transpose() {
                Ok(stdin) => stdin.map(Arc::new),
                Err(e) => return Err(self.undo_create(dir, &id, e.context(&what)).await),
            };
            (vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)], stdin, None)
        };

        let pid = match read_pid(&pid_file) {
            Ok(pid) => pid,
            Err(e) => return Err(self.undo_create(dir, &id, e.context(&what)).await),
        };
        let mut io = Vec::new();
        let fanout = Arc::new(Fanout::default());
        for (fd, stream) in readers {
            match stdio::receiver(fd) {
                Ok(rx) => {
                    let span = tracing::info_span!("output", id, stream = stream.as_str());
                    let max_line = self.config.log_line_max;
                    let copy = stdio::copy_to_log(rx, stream, max_line, log.clone(), fanout.clone());
                    io.push(tokio::spawn(copy.instrument(span)));
                }
                Err(e) => return Err(self.undo_create(dir, &id, e.context(&what)).await),
            }
        }
        let container = Container {
            id: id.clone(),
            dir: dir.to_path_buf(),
            pid,
            status: if req.start { RecordedStatus::Running } else { RecordedStatus::Created },
            created_at: SystemTime::now(),
            started_at,
            exit: None,
            exiting: false,
            log,
            stdin,
            console,
            fanout,
            io_abort: io.iter().map(JoinHandle::abort_handle).collect(),
            io,
            oom_baseline: oom.read().unwrap_or(0),
            oom,
            exited: watch::channel(None).0,
        };
        container.persist();
        lock(&self.state).containers.insert(id.clone(), container);
        let early = lock(&self.reaper).watch(pid as i32, Target::Container(id.clone()));
        drop(start);
        if let Some((_, exit)) = early {
            self.container_exited(&id, exit);
        }
        tracing::info!(id, pid, started = req.start, "container created");
        Ok(pid)
    }

    /// Best-effort removal of a half-created container, returning the error that caused it.
    async fn undo_create(&self, dir: &Path, id: &str, error: Error) -> Error {
        let what = format!("cleaning up container {id} after a failed create");
        if let Err(e) =
            self.runtime.run(dir, &[os("delete"), os("--force"), os(id)], RuntimeStdio::null(), &what).await
        {
            tracing::warn!(error = %e, "cleanup failed");
        }
        let _ = std::fs::remove_dir_all(dir);
        error
    }

    async fn start(&self, id: &str) -> Result<u32> {
        let dir = {
            let state = lock(&self.state);
            let c = state.containers.get(id).ok_or_else(|| not_found(id))?;
            if c.status != RecordedStatus::Created || c.exiting {
                return Err(Error::precondition(format!(
                    "container {id} cannot be started: it is {:?}",
                    c.status
                )));
            }
            c.dir.clone()
        };
        let what = format!("starting container {id}");
        // Taken before the runtime runs: a quick process may be reaped before `start` returns,
        // and it must not look like it exited before it started.
        let started_at = SystemTime::now();
        self.runtime.run(&dir, &[os("start"), os(id)], RuntimeStdio::null(), &what).await?;
        let mut state = lock(&self.state);
        let c = state.containers.get_mut(id).ok_or_else(|| not_found(id))?;
        c.started_at.get_or_insert(started_at);
        if c.status == RecordedStatus::Created {
            c.status = RecordedStatus::Running;
        }
        c.persist();
        tracing::info!(id, pid = c.pid, "container started");
        Ok(c.pid)
    }

    async fn kill(&self, req: proto::KillRequest) -> Result<()> {
        let id = &req.id;
        if req.signal == 0 || req.signal > 64 {
            return Err(Error::invalid(format!("invalid signal {} for container {id}", req.signal)));
        }
        let dir = {
            let state = lock(&self.state);
            let c = state.containers.get(id).ok_or_else(|| not_found(id))?;
            // Nothing to signal; with `all`, processes left in a shared namespace may remain.
            if !c.running() && !req.all {
                return Ok(());
            }
            c.dir.clone()
        };
        // SIGKILL also goes to the init straight away, before the runtime runs: the runtime may
        // reach nothing (runc 1.1's `kill --all` under the systemd v1 driver lists the processes
        // of the devices cgroup only, and the init can end up elsewhere), or hang freezing the
        // cgroup. As the init of its PID namespace, its death takes every process in it along, as
        // runc 1.2 relies on when it ignores `--all` for a private PID namespace. The runtime still
        // runs, for what shares a PID namespace with others.
        let direct = req.signal == libc::SIGKILL as u32 && self.signal_init(id, Signal::SIGKILL);
        let signal = req.signal.to_string();
        let mut args = vec![os("kill")];
        if req.all {
            args.push(os("--all"));
        }
        args.extend([os(id), os(&signal)]);
        let what = format!("signalling container {id} with {signal}");
        match self.runtime.run(&dir, &args, RuntimeStdio::null(), &what).await {
            Ok(()) => Ok(()),
            // It exited meanwhile: the reaper has seen it by the time the runtime's own exit came.
            Err(_) if self.container(id, |c| c.exit.is_some()).unwrap_or(true) => Ok(()),
            Err(e) if direct => {
                tracing::warn!(id, error = %e, "the runtime's kill failed; the init was killed directly");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` to the container's init unless it has been reaped, returning whether it was
    /// sent. The shim is the init's parent (or subreaper), so until the reaper has waited for it
    /// its pid cannot have been reused, and the reaper runs on this thread: nothing reaps between
    /// the check and the kill, which happen under the state's lock.
    fn signal_init(&self, id: &str, signal: Signal) -> bool {
        let state = lock(&self.state);
        let Some(c) = state.containers.get(id) else { return false };
        if c.exit.is_some() || c.pid == 0 {
            return false;
        }
        match kill(Pid::from_raw(c.pid as i32), signal) {
            Ok(()) => {
                tracing::debug!(id, pid = c.pid, %signal, "signalled the init directly");
                true
            }
            Err(e) => {
                tracing::warn!(id, pid = c.pid, %signal, error = %e, "signalling the init failed");
                false
            }
        }
    }

    async fn delete(&self, id: &str) -> Result<()> {
        // A Create still in flight (berthd died during it and its recovery now removes the pod):
        // let it settle, or the container it makes would outlive its pod.
        loop {
            let done = self.create_done.notified();
            if !lock(&self.state).creating.contains(id) {
                break;
            }
            tokio::time::timeout(DELETE_CREATE_TIMEOUT, done).await.map_err(|_| {
                Error::new(
                    ErrorKind::DeadlineExceeded,
                    format!("deleting container {id}: its creation is still in progress"),
                )
            })?;
        }
        let Ok((dir, running, mut exited)) =
            self.container(id, |c| (c.dir.clone(), c.running(), c.exited.subscribe()))
        else {
            return Ok(());
        };
        let what = format!("deleting container {id}");
        if running {
            // As in `kill`: whatever the runtime's forced delete reaches, the init dies.
            self.signal_init(id, Signal::SIGKILL);
            self.runtime
                .run(&dir, &[os("delete"), os("--force"), os(id)], RuntimeStdio::null(), &what)
                .await?;
            tokio::time::timeout(DELETE_EXIT_TIMEOUT, exited.wait_for(Option::is_some))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::DeadlineExceeded,
                        format!("{what}: it did not exit after a forced delete"),
                    )
                })?
                .map_err(|_| Error::internal(format!("{what}: its exit was lost")))?;
        } else if let Err(e) =
            self.runtime.run(&dir, &[os("delete"), os(id)], RuntimeStdio::null(), &what).await
        {
            let forced = self
                .runtime
                .run(&dir, &[os("delete"), os("--force"), os(id)], RuntimeStdio::null(), &what)
                .await;
            if forced.is_err() {
                // Already gone from the runtime (deleted before, or its state dir was wiped)?
                let probe = format!("checking whether container {id} still exists");
                if self.runtime.run(&dir, &[os("state"), os(id)], RuntimeStdio::null(), &probe).await.is_ok()
                {
                    return Err(e);
                }
            }
        }
        let removed = lock(&self.state).containers.remove(id);
        if let Some(c) = removed {
            for task in &c.io_abort {
                task.abort();
            }
            if let Err(e) = std::fs::remove_dir_all(&c.dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(id, error = %e, "removing the container directory failed");
            }
        }
        tracing::info!(id, "container deleted");
        Ok(())
    }

    /// Runs a process to completion. It is killed when the timeout passes or the client hangs up
    /// (`gone`): nobody would read its result.
    async fn exec_sync(
        self: &Arc<Self>,
        req: proto::ExecSyncRequest,
        gone: impl Future<Output = ()>,
    ) -> Result<proto::ExecSyncResponse> {
        let started = Instant::now();
        let id = req.id.as_str();
        let dir = self.exec_dir(id)?;
        let what = format!("executing a process in container {id}");
        let files = self.exec_files(&dir, &req.process_json, &what)?;
        let cap = match req.max_output_bytes {
            0 => EXEC_OUTPUT_CAP,
            n => (n as usize).min(EXEC_OUTPUT_CAP),
        };
        // A timeout too far away to represent is no timeout.
        let deadline =
            started.checked_add(Duration::from_millis(req.timeout_ms)).filter(|_| req.timeout_ms > 0);

        let (out_r, out_w) = stdio::pipe()?;
        let (err_r, err_w) = stdio::pipe()?;
        let (out_rx, err_rx) = (stdio::receiver(out_r)?, stdio::receiver(err_r)?);
        let done = Notify::new();
        let run = async {
            let result = async {
                let (pid, mut rx) = {
                    let _start = StartGuard::new(&self.reaper);
                    let mut args = files.args();
                    args.push(os(id));
                    let stdio = RuntimeStdio {
                        stdin: Stdio::null(),
                        stdout: Stdio::from(out_w),
                        stderr: Some(Stdio::from(err_w)),
                    };
                    self.runtime.run(&dir, &args, stdio, &what).await?;
                    self.watch_exec(&files.pid, &what)?
                };
                let lost = || Error::internal(format!("{what}: the reaper lost the exit of pid {pid}"));
                let timer = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                        None => std::future::pending().await,
                    }
                };
                let hung_up = tokio::select! {
                    exit = &mut rx => return Ok((exit.map_err(|_| lost())?, false)),
                    _ = timer => false,
                    _ = gone => true,
                };
                let exit = match rx.try_recv() {
                    Ok(exit) => exit,
                    Err(_) => {
                        // Not reaped yet (at worst a zombie), so the pid is still this process.
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                        rx.await.map_err(|_| lost())?
                    }
                };
                if hung_up {
                    return Err(Error::new(ErrorKind::Cancelled, format!("{what}: the client hung up")));
                }
                Ok((exit, true))
            }
            .await;
            done.notify_one();
            result
        };
        let (result, (stdout, stderr)) =
            tokio::join!(run, stdio::capture(out_rx, err_rx, cap, &done, IO_DRAIN));
        let (exit, timed_out): (Exit, bool) = result?;
        Ok(proto::ExecSyncResponse { exit_code: exit.code, stdout, stderr, timed_out })
    }

    /// The directory of a container that can run an exec (it is running).
    /// Writes an exec's process file in the container directory `dir`, next to its pid file to be;
    /// both go when the returned value is dropped.
    fn exec_files(&self, dir: &Path, process_json: &[u8], what: &str) -> Result<ExecFiles> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let process = dir.join(format!("exec-{seq}.json"));
        let pid = dir.join(format!("exec-{seq}.pid"));
        let _cleanup = RemoveOnDrop(vec![process.clone(), pid.clone()]);
        // The process holds its environment: secrets.
        crate::fsutil::write_private(&process, process_json).map_err(|e| e.context(what))?;
        Ok(ExecFiles { process, pid, _cleanup })
    }

    fn exec_dir(&self, id: &str) -> Result<PathBuf> {
        let state = lock(&self.state);
        let c = state.containers.get(id).ok_or_else(|| not_found(id))?;
        if c.status != RecordedStatus::Running || c.exiting {
            return Err(Error::precondition(format!("cannot exec in container {id}: it is not running")));
        }
        Ok(c.dir.clone())
    }

    /// Watches the process `runtime exec -d` started (its pid is in `pid_file`); the receiver gets
    /// its exit. To be called while a [`StartGuard`] is held, so an exit before this is kept.
    fn watch_exec(&self, pid_file: &Path, what: &str) -> Result<(u32, oneshot::Receiver<Exit>)> {
        let pid = read_pid(pid_file).map_err(|e| e.context(what))?;
        let (tx, rx) = oneshot::channel();
        if let Some((Target::Notify(tx), exit)) = lock(&self.reaper).watch(pid as i32, Target::Notify(tx)) {
            let _ = tx.send(exit);
        }
        Ok((pid, rx))
    }

    /// Exec with streams: start the process, answer, then carry its stdio until it exits (exit
    /// frame) or the client goes away (SIGKILL).
    async fn exec_stream(self: Arc<Self>, req: proto::ExecRequest, mut stream: UnixStream) {
        let id = req.id.clone();
        let span = tracing::info_span!("exec", id);
        let exec = match self.start_exec(req).instrument(span.clone()).await {
            Ok(exec) => exec,
            Err(e) => {
                tracing::info!(parent: &span, error = %e, "exec failed");
                let _ = write_message(&mut stream, &answer(Err(e))).await;
                return;
            }
        };
        let StreamedExec { pid, mut exit, outputs, stdin, console } = exec;
        tracing::info!(parent: &span, pid, "exec started");
        let (mut rd, mut wr) = stream.split();
        let mut exited = None;
        let started = answer(Ok(Some(response::Result::Exec(proto::ExecResponse { pid }))));
        let finished = async {
            write_message(&mut wr, &started).await?;
            tokio::select! {
                r = pump_exec_output(&mut wr, outputs, &mut exit, &mut exited, IO_DRAIN) => r.map(|()| true),
                () = pump_input(&mut rd, stdin.as_ref(), console.as_ref()) => Ok(false),
            }
        }
        .await;
        if let (Ok(true), Some(e)) = (&finished, exited) {
            tracing::info!(parent: &span, pid, code = e.code, "exec exited");
            let _ = write_exit(&mut wr, e.code).await;
            return;
        }
        // The client went away. Not reaped yet means the pid is still this process (at worst a
        // zombie): nothing else runs on this thread between the check and the kill.
        if exited.is_none() && exit.try_recv().is_err() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            tracing::info!(parent: &span, pid, "exec client went away, killed the process");
        }
    }

    async fn start_exec(self: &Arc<Self>, req: proto::ExecRequest) -> Result<StreamedExec> {
        let id = req.id.as_str();
        let dir = self.exec_dir(id)?;
        let what = format!("executing a process in container {id}");
        let process: serde_json::Value = serde_json::from_slice(&req.process_json)
            .context_kind(ErrorKind::InvalidArgument, || format!("{what}: parsing the process"))?;
        let terminal = process.get("terminal").and_then(|t| t.as_bool()).unwrap_or(false);
        if terminal != req.tty {
            return Err(Error::invalid(format!(
                "{what}: tty is {} but process.terminal is {terminal}",
                req.tty
            )));
        }
        let files = self.exec_files(&dir, &req.process_json, &what)?;
        let mut args = files.args();
        let _start = StartGuard::new(&self.reaper);
        if req.tty {
            let console = ConsoleSocket::bind(self, &what)?;
            args.extend([os("--console-socket"), console.path.as_os_str(), os(id)]);
            self.runtime.run(&dir, &args, RuntimeStdio::null(), &what).await?;
            let (pid, exit) = self.watch_exec(&files.pid, &what)?;
            let ends = async {
                let master = console.receive(&what).await?;
                let rx = stdio::receiver(duplicate(&master, &what)?)?;
                let stdin = match req.stdin {
                    true => Some(StdinWriter::new(duplicate(&master, &what)?)?),
                    false => None,
                };
                Ok::<_, Error>((rx, stdin, master))
            };
            let (rx, stdin, master) = match ends.await {
                Ok(ends) => ends,
                Err(e) => {
                    // Nobody could talk to it: it must not run unattended.
                    if exit.is_empty() {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                    return Err(e);
                }
            };
            let output = ExecOutput { rx, output: Output::Stdout, wanted: req.stdout };
            return Ok(StreamedExec {
                pid,
                exit,
                outputs: [Some(output), None],
                stdin,
                console: Some(master),
            });
        }
        args.push(os(id));
        let mut outputs = [None, None];
        let mut stdio =
            RuntimeStdio { stdin: Stdio::null(), stdout: Stdio::null(), stderr: Some(Stdio::null()) };
        if req.stdout {
            let (r, w) = stdio::pipe()?;
            stdio.stdout = Stdio::from(w);
            outputs[0] = Some(ExecOutput { rx: stdio::receiver(r)?, output: Output::Stdout, wanted: true });
        }
        if req.stderr {
            let (r, w) = stdio::pipe()?;
            stdio.stderr = Some(Stdio::from(w));
            outputs[1] = Some(ExecOutput { rx: stdio::receiver(r)?, output: Output::Stderr, wanted: true });
        }
        let mut stdin = None;
        if req.stdin {
            let (r, w) = stdio::pipe()?;
            stdio.stdin = Stdio::from(r);
            stdin = Some(StdinWriter::new(w)?);
        }
        self.runtime.run(&dir, &args, stdio, &what).await?;
        let (pid, exit) = self.watch_exec(&files.pid, &what)?;
        Ok(StreamedExec { pid, exit, outputs, stdin, console: None })
    }

    /// Attach: a copy of the container's output from now on, stdin to the container's, until the
    /// container exits (exit frame), the attacher falls behind, or the client detaches.
    async fn attach(self: Arc<Self>, req: proto::AttachRequest, mut stream: UnixStream) {
        let id = req.id.as_str();
        let session = {
            let state = lock(&self.state);
            match state.containers.get(id) {
                None => Err(not_found(id)),
                Some(c) if c.status != RecordedStatus::Running || c.exiting => {
                    Err(Error::precondition(format!("cannot attach to container {id}: it is not running")))
                }
                Some(c) if c.console.is_some() != req.tty => Err(Error::invalid(format!(
                    "cannot attach to container {id}: tty is {} but the container has {}",
                    req.tty,
                    if req.tty { "no terminal" } else { "a terminal" }
                ))),
                Some(c) => Ok((
                    c.fanout.subscribe(req.stdout, req.stderr, ATTACH_BACKLOG),
                    c.stdin.clone().filter(|_| req.stdin),
                    c.console.clone(),
                    c.exited.subscribe(),
                )),
            }
        };
        let (chunks, stdin, console, exited) = match session {
            Ok(session) => session,
            Err(e) => {
                let _ = write_message(&mut stream, &answer(Err(e))).await;
                return;
            }
        };
        let (mut rd, mut wr) = stream.split();
        if write_message(&mut wr, &answer(Ok(None))).await.is_err() {
            return;
        }
        tracing::info!(id, "attached");
        let ended = tokio::select! {
            r = pump_attach_output(&mut wr, chunks, exited) => match r {
                Ok(true) => "the container exited",
                Ok(false) => "the attacher fell behind",
                Err(_) => "the client went away",
            },
            () = pump_input(&mut rd, stdin.as_deref(), console.as_deref()) => "the client detached",
        };
        tracing::info!(id, ended, "attach ended");
    }

    async fn update(&self, req: proto::UpdateRequest) -> Result<()> {
        let id = &req.id;
        let dir = self.container(id, |c| c.dir.clone())?;
        let what = format!("updating the resources of container {id}");
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        // A file, not stdin: a pipe could fill before the runtime reads it.
        let file = dir.join(format!("update-{seq}.json"));
        let _file = RemoveOnDrop(vec![file.clone()]);
        crate::fsutil::write_private(&file, &req.resources_json).map_err(|e| e.context(&what))?;
        self.runtime
            .run(
                &dir,
                &[os("update"), os("--resources"), file.as_os_str(), os(id)],
                RuntimeStdio::null(),
                &what,
            )
            .await
    }

    fn can_shut_down(&self) -> Result<()> {
        let state = lock(&self.state);
        let busy = state.containers.values().filter(|c| c.running()).count() + state.creating.len();
        if busy > 0 {
            return Err(Error::precondition(format!(
                "shim of pod {} cannot shut down: {busy} containers are created or running",
                self.config.id
            )));
        }
        Ok(())
    }

    async fn wait(&self, req: proto::WaitRequest, gone: impl Future<Output = ()>, wr: &mut WriteHalf<'_>) {
        let id = req.id;
        let mut exited = match self.container(&id, |c| c.exited.subscribe()) {
            Ok(rx) => rx,
            Err(e) => {
                let _ = write_message(wr, &answer(Err(e))).await;
                return;
            }
        };
        let result = tokio::select! {
            r = exited.wait_for(Option::is_some) => match r {
                Ok(status) => Ok(status.clone().map(response::Result::Exit)),
                Err(_) => Err(Error::not_found(format!("container {id} was deleted before it exited"))),
            },
            _ = gone => return,
        };
        let _ = write_message(wr, &answer(result)).await;
    }

    async fn events(&self, gone: impl Future<Output = ()>, wr: &mut WriteHalf<'_>) {
        let mut events = self.events.subscribe();
        if write_message(wr, &answer(Ok(None))).await.is_err() {
            return;
        }
        tokio::pin!(gone);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(exit) => {
                        let event = proto::Event { event: Some(proto::event::Event::Exit(exit)) };
                        if write_message(wr, &event).await.is_err() {
                            return;
                        }
                    }
                    // Closing tells the subscriber it missed events and must list again.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "events subscriber too slow, disconnecting");
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = &mut gone => return,
            }
        }
    }
}

/// Resolves when the client hangs up: after its request it never sends anything, so any read
/// completing (end of stream, or stray bytes) means it is done with this connection.
async fn client_gone(rd: &mut ReadHalf<'_>) {
    let mut probe = [0u8; 1];
    let _ = rd.read(&mut probe).await;
}

/// The call's name, for logs and messages.
pub fn call_name(call: &Call) -> &'static str {
    match call {
        Call::Create(_) => "create",
        Call::Start(_) => "start",
        Call::Kill(_) => "kill",
        Call::Delete(_) => "delete",
        Call::State(_) => "state",
        Call::List(_) => "list",
        Call::Wait(_) => "wait",
        Call::ExecSync(_) => "exec_sync",
        Call::Update(_) => "update",
        Call::ReopenLog(_) => "reopen_log",
        Call::Events(_) => "events",
        Call::Shutdown(_) => "shutdown",
        Call::Ping(_) => "ping",
        Call::Exec(_) => "exec",
        Call::Attach(_) => "attach",
    }
}

fn not_found(id: &str) -> Error {
    Error::not_found(format!("container {id} not found"))
}

/// The response for a call's result.
fn answer(result: Answer) -> proto::Response {
    match result {
        Ok(result) => proto::Response { code: proto::Code::Ok as i32, error: String::new(), result },
        Err(e) => {
            proto::Response { code: code_from_kind(e.kind()) as i32, error: e.to_string(), result: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_checked() {
        for ok in ["abc", "a-b_c.d+e", "0123456789abcdef"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ü"] {
            assert_eq!(validate_id(bad).unwrap_err().kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn pid_files_are_parsed_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pid");
        std::fs::write(&path, "1234").unwrap();
        assert_eq!(read_pid(&path).unwrap(), 1234);
        std::fs::write(&path, "1234\n").unwrap();
        assert_eq!(read_pid(&path).unwrap(), 1234);
        for bad in ["", "0", "-1", "x", "99999999999"] {
            std::fs::write(&path, bad).unwrap();
            assert!(read_pid(&path).is_err(), "{bad:?}");
        }
    }

    /// A shim whose runtime cannot even be started (its kill reaches nothing), serving `sleep`
    /// children of the test standing in for container inits; the test reaps them itself.
    fn shim_with_sleeper(dir: &Path, id: &str) -> (Arc<Shim>, std::process::Child) {
        let args = ["serve", "--id", "p", "--dir", "/d", "--runtime", "/nonexistent/runtime"];
        let (_, mut config) = ShimConfig::parse(args.map(std::ffi::OsString::from)).unwrap();
        config.dir = dir.to_path_buf();
        let shim = Shim::new(config);
        let child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let container = Container {
            id: id.to_string(),
            dir: dir.join(id),
            pid: child.id(),
            status: RecordedStatus::Running,
            created_at: SystemTime::now(),
            started_at: Some(SystemTime::now()),
            exit: None,
            exiting: false,
            log: Arc::new(Mutex::new(LogFile::open(None).unwrap())),
            stdin: None,
            console: None,
            fanout: Arc::default(),
            io: Vec::new(),
            io_abort: Vec::new(),
            oom: OomCounter::locate(dir, None, id),
            oom_baseline: 0,
            exited: watch::channel(None).0,
        };
        lock(&shim.state).containers.insert(id.to_string(), container);
        (shim, child)
    }

    fn kill_request(id: &str, signal: Signal, all: bool) -> proto::KillRequest {
        proto::KillRequest { id: id.into(), signal: signal as u32, all }
    }

    #[tokio::test]
    async fn sigkill_reaches_the_init_when_the_runtime_reaches_nothing() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let (shim, mut child) = shim_with_sleeper(dir.path(), "c");
        // Any other signal is the runtime's alone: its failure is the caller's, the init lives.
        let err = shim.kill(kill_request("c", Signal::SIGTERM, false)).await.unwrap_err();
        assert!(err.to_string().contains("signalling container c with 15"), "{err}");
        assert_eq!(child.try_wait().unwrap(), None);
        for all in [true, false] {
            shim.kill(kill_request("c", Signal::SIGKILL, all)).await.unwrap();
        }
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn a_reaped_init_is_never_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let (shim, mut child) = shim_with_sleeper(dir.path(), "c");
        let exit = ExitInfo { code: 0, at: SystemTime::now(), oom_killed: false };
        lock(&shim.state).containers.get_mut("c").unwrap().exit = Some(exit);
        assert!(!shim.signal_init("c", Signal::SIGKILL));
        assert!(!shim.signal_init("unknown", Signal::SIGKILL));
        // Exited: the runtime's failure means nothing was left to signal.
        shim.kill(kill_request("c", Signal::SIGKILL, true)).await.unwrap();
        assert_eq!(child.try_wait().unwrap(), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn errors_keep_their_kind_on_the_wire() {
        let r = answer(Err(Error::not_found("container x not found")));
        assert_eq!(r.code, proto::Code::NotFound as i32);
        assert_eq!(r.error, "container x not found");
        let ok = answer(Ok(None));
        assert_eq!((ok.code, ok.error.as_str(), ok.result), (0, "", None));
    }
}
