//! In-memory stand-ins for a pod shim and its launcher, for berthd's unit tests: the same state
//! machine and error kinds as the real shim, no processes. Tests drive exits with
//! [`FakeShim::exit`], inject failures with [`FakeShim::fail_next`] and read back the calls.
//!
//! Streaming calls speak the real frame protocol over an in-memory pipe, to a scripted process:
//! an exec'd one writes the ExecSync result's stdout, echoes its stdin to stdout, and when its
//! stdin ends (at once without stdin) writes the result's stderr and exits with its exit code; an
//! attached container echoes stdin to stdout until it exits. Resizes are recorded as
//! `"resize <id> <w>x<h>"`, a client going away as `"exec_killed <id>"` or `"detach <id>"`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::{broadcast, watch};

use super::{
    AttachOptions, ContainerState, ContainerStatus, CreateOptions, EventStream, ExecOptions, ExecSyncOptions,
    ExecSyncResult, ExitEvent, LaunchOptions, ProcessStream, ShimApi, ShimInfo, ShimLauncher,
};
use crate::error::{Error, Result};
use crate::shim::frame::{read_message, write_message};
use crate::shim::lock;
use crate::shim::proto::{self, stream_frame::Frame};

struct FakeContainer {
    state: ContainerState,
    exited: watch::Sender<Option<ExitEvent>>,
}

#[derive(Default)]
struct FakeState {
    containers: BTreeMap<String, FakeContainer>,
    next_pid: u32,
    calls: Vec<String>,
    exec_result: ExecSyncResult,
    failures: HashMap<String, Error>,
    shut_down: bool,
    ignored_signals: Vec<i32>,
}

/// A pod shim in memory. Every signal but 0 is fatal to a fake container (exit 128 + signal),
/// unless [`FakeShim::ignore_signal`] says otherwise.
pub struct FakeShim {
    /// Shared with the tasks playing streamed processes.
    state: Arc<Mutex<FakeState>>,
    events: broadcast::Sender<ExitEvent>,
}

impl Default for FakeShim {
    fn default() -> Self {
        FakeShim { state: Arc::default(), events: broadcast::channel(256).0 }
    }
}

impl FakeShim {
    /// A fake shim with no containers.
    pub fn new() -> Arc<FakeShim> {
        Arc::new(FakeShim::default())
    }

    /// Makes the container's init exit with `code` now, as a real exit would: state, Wait callers,
    /// events. No effect on an unknown or already stopped container.
    pub fn exit(&self, id: &str, code: i32) {
        let mut state = lock(&self.state);
        if let Some(c) = state.containers.get_mut(id) {
            self.stop(c, code);
        }
    }

    /// The calls made so far, as `"<call> <id> [details]"` strings (e.g. `"kill c1 15 all"`).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// What ExecSync answers from now on, and what a streamed exec writes and exits with
    /// (default: exit 0, no output).
    pub fn set_exec_result(&self, result: ExecSyncResult) {
        lock(&self.state).exec_result = result;
    }

    /// Makes the next call named `call` ("create", "start", "kill", ...) fail with `error`.
    pub fn fail_next(&self, call: &str, error: Error) {
        lock(&self.state).failures.insert(call.to_string(), error);
    }

    /// Makes the containers ignore `signal` from now on, as a process whose handler does nothing
    /// (SIGKILL cannot be ignored).
    pub fn ignore_signal(&self, signal: i32) {
        if signal != libc::SIGKILL {
            lock(&self.state).ignored_signals.push(signal);
        }
    }

    /// Whether a Shutdown succeeded.
    pub fn is_shut_down(&self) -> bool {
        lock(&self.state).shut_down
    }

    fn stop(&self, c: &mut FakeContainer, code: i32) {
        if c.state.status == ContainerStatus::Stopped {
            return;
        }
        let now = SystemTime::now();
        c.state.status = ContainerStatus::Stopped;
        c.state.exit_code = code;
        c.state.exited_at = Some(now);
        let event = ExitEvent {
            id: c.state.id.clone(),
            pid: c.state.pid,
            exit_code: code,
            exited_at: Some(now),
            oom_killed: false,
        };
        c.exited.send_replace(Some(event.clone()));
        let _ = self.events.send(event);
    }

    /// Records the call and applies the checks every call shares.
    fn enter(&self, call: &str, detail: String) -> Result<std::sync::MutexGuard<'_, FakeState>> {
        let mut state = lock(&self.state);
        state.calls.push(if detail.is_empty() { call.to_string() } else { format!("{call} {detail}") });
        if state.shut_down {
            return Err(Error::unavailable("connecting to the shim: it has shut down"));
        }
        if let Some(e) = state.failures.remove(call) {
            return Err(e);
        }
        Ok(state)
    }
}

fn not_found(id: &str) -> Error {
    Error::not_found(format!("container {id} not found"))
}

fn running<'a>(state: &'a FakeState, id: &str, what: &str) -> Result<&'a FakeContainer> {
    let c = state.containers.get(id).ok_or_else(|| not_found(id))?;
    if c.state.status != ContainerStatus::Running {
        return Err(Error::precondition(format!("cannot {what} container {id}: it is not running")));
    }
    Ok(c)
}

fn record(state: &Mutex<FakeState>, call: String) {
    lock(state).calls.push(call);
}

async fn send(w: &mut (impl AsyncWrite + Unpin), frame: Frame) -> bool {
    write_message(w, &proto::StreamFrame { frame: Some(frame) }).await.is_ok()
}

/// The next input frame; `None` when the client went away.
async fn input(r: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    read_message::<_, proto::StreamFrame>(r).await.ok().flatten().and_then(|f| f.frame)
}

/// The scripted exec'd process (see the module doc), on the shim's end of the pipe.
async fn fake_exec(
    end: DuplexStream,
    state: Arc<Mutex<FakeState>>,
    opts: ExecOptions,
    result: ExecSyncResult,
) {
    let (mut r, mut w) = tokio::io::split(end);
    let id = opts.id;
    let with_stderr = opts.stderr && !opts.tty;
    if opts.stdout && !result.stdout.is_empty() && !send(&mut w, Frame::Stdout(result.stdout)).await {
        return record(&state, format!("exec_killed {id}"));
    }
    if opts.stdin {
        loop {
            match input(&mut r).await {
                Some(Frame::Stdin(data)) => {
                    if opts.stdout && !send(&mut w, Frame::Stdout(data)).await {
                        return record(&state, format!("exec_killed {id}"));
                    }
                }
                Some(Frame::Resize(s)) => record(&state, format!("resize {id} {}x{}", s.width, s.height)),
                Some(Frame::StdinClose(_)) => break,
                Some(_) => {}
                None => return record(&state, format!("exec_killed {id}")),
            }
        }
    }
    let stderr = match with_stderr && !result.stderr.is_empty() {
        true => send(&mut w, Frame::Stderr(result.stderr)).await,
        false => true,
    };
    let exit = proto::StreamExit { exit_code: result.exit_code };
    if !stderr || !send(&mut w, Frame::Exit(exit)).await {
        record(&state, format!("exec_killed {id}"));
    }
}

/// The scripted attached container (see the module doc).
async fn fake_attach(
    end: DuplexStream,
    state: Arc<Mutex<FakeState>>,
    opts: AttachOptions,
    mut exited: watch::Receiver<Option<ExitEvent>>,
) {
    let (mut r, mut w) = tokio::io::split(end);
    let id = opts.id;
    loop {
        tokio::select! {
            frame = input(&mut r) => match frame {
                Some(Frame::Stdin(data)) if opts.stdin && opts.stdout => {
                    if !send(&mut w, Frame::Stdout(data)).await {
                        return record(&state, format!("detach {id}"));
                    }
                }
                Some(Frame::Resize(s)) => record(&state, format!("resize {id} {}x{}", s.width, s.height)),
                Some(Frame::StdinClose(_)) => record(&state, format!("close_stdin {id}")),
                Some(_) => {}
                None => return record(&state, format!("detach {id}")),
            },
            code = async { exited.wait_for(Option::is_some).await.ok().and_then(|e| e.as_ref().map(|e| e.exit_code)) } => {
                if let Some(exit_code) = code {
                    send(&mut w, Frame::Exit(proto::StreamExit { exit_code })).await;
                }
                return;
            }
        }
    }
}

impl ShimApi for FakeShim {
    fn create<'a>(&'a self, opts: &'a CreateOptions) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let mut state = self.enter("create", opts.id.clone())?;
            if state.containers.contains_key(&opts.id) {
                return Err(Error::already_exists(format!("container {} already exists", opts.id)));
            }
            state.next_pid += 1;
            let pid = 1000 + state.next_pid;
            let container = FakeContainer {
                state: ContainerState {
                    id: opts.id.clone(),
                    status: ContainerStatus::Created,
                    pid,
                    exit_code: 0,
                    created_at: Some(SystemTime::now()),
                    started_at: None,
                    exited_at: None,
                    oom_killed: false,
                    reclaimed: false,
                },
                exited: watch::channel(None).0,
            };
            state.containers.insert(opts.id.clone(), container);
            Ok(pid)
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let mut state = self.enter("start", id.to_string())?;
            let c = state.containers.get_mut(id).ok_or_else(|| not_found(id))?;
            if c.state.status != ContainerStatus::Created {
                return Err(Error::precondition(format!(
                    "container {id} cannot be started: it is {:?}",
                    c.state.status
                )));
            }
            c.state.status = ContainerStatus::Running;
            c.state.started_at = Some(SystemTime::now());
            Ok(c.state.pid)
        })
    }

    fn kill<'a>(&'a self, id: &'a str, signal: i32, all: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let detail = format!("{id} {signal}{}", if all { " all" } else { "" });
            let mut state = self.enter("kill", detail)?;
            if !(1..=64).contains(&signal) {
                return Err(Error::invalid(format!("invalid signal {signal} for container {id}")));
            }
            let ignored = state.ignored_signals.contains(&signal);
            let c = state.containers.get_mut(id).ok_or_else(|| not_found(id))?;
            if !ignored {
                self.stop(c, 128 + signal);
            }
            Ok(())
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.enter("delete", id.to_string())?;
            if let Some(mut c) = state.containers.remove(id) {
                self.stop(&mut c, 137);
            }
            Ok(())
        })
    }

    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerState>> {
        Box::pin(async move {
            let state = self.enter("state", id.to_string())?;
            state.containers.get(id).map(|c| c.state.clone()).ok_or_else(|| not_found(id))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerState>>> {
        Box::pin(async move {
            let state = self.enter("list", String::new())?;
            Ok(state.containers.values().map(|c| c.state.clone()).collect())
        })
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitEvent>> {
        Box::pin(async move {
            let mut exited = {
                let state = self.enter("wait", id.to_string())?;
                state.containers.get(id).ok_or_else(|| not_found(id))?.exited.subscribe()
            };
            let event = exited
                .wait_for(Option::is_some)
                .await
                .map_err(|_| Error::not_found(format!("container {id} was deleted before it exited")))?;
            event.clone().ok_or_else(|| Error::internal(format!("waiting for container {id}: no exit")))
        })
    }

    fn exec_sync<'a>(&'a self, opts: &'a ExecSyncOptions) -> BoxFuture<'a, Result<ExecSyncResult>> {
        Box::pin(async move {
            let state = self.enter("exec_sync", opts.id.clone())?;
            let c = state.containers.get(&opts.id).ok_or_else(|| not_found(&opts.id))?;
            if c.state.status != ContainerStatus::Running {
                return Err(Error::precondition(format!(
                    "cannot exec in container {}: it is not running",
                    opts.id
                )));
            }
            Ok(state.exec_result.clone())
        })
    }

    fn exec_stream<'a>(&'a self, opts: &'a ExecOptions) -> BoxFuture<'a, Result<ProcessStream>> {
        Box::pin(async move {
            let state = self.enter("exec_stream", opts.id.clone())?;
            let pid = running(&state, &opts.id, "exec in")?.state.pid + 100;
            let result = state.exec_result.clone();
            drop(state);
            let (ours, theirs) = tokio::io::duplex(64 << 10);
            tokio::spawn(fake_exec(theirs, self.state.clone(), opts.clone(), result));
            let (r, w) = tokio::io::split(ours);
            Ok(ProcessStream::new(pid, r, w, format!("exec in container {}", opts.id)))
        })
    }

    fn attach<'a>(&'a self, opts: &'a AttachOptions) -> BoxFuture<'a, Result<ProcessStream>> {
        Box::pin(async move {
            let state = self.enter("attach", opts.id.clone())?;
            let exited = running(&state, &opts.id, "attach to")?.exited.subscribe();
            drop(state);
            let (ours, theirs) = tokio::io::duplex(64 << 10);
            tokio::spawn(fake_attach(theirs, self.state.clone(), opts.clone(), exited));
            let (r, w) = tokio::io::split(ours);
            Ok(ProcessStream::new(0, r, w, format!("attach to container {}", opts.id)))
        })
    }

    fn update<'a>(&'a self, id: &'a str, resources_json: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let state = self.enter("update", format!("{id} {}", String::from_utf8_lossy(resources_json)))?;
            state.containers.get(id).map(drop).ok_or_else(|| not_found(id))
        })
    }

    fn reopen_log<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let state = self.enter("reopen_log", id.to_string())?;
            state.containers.get(id).map(drop).ok_or_else(|| not_found(id))
        })
    }

    fn events(&self) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(async move {
            let _state = self.enter("events", String::new())?;
            // Like the real shim, a subscriber that falls behind is cut off.
            let stream = futures_util::stream::unfold(self.events.subscribe(), |mut rx| async move {
                rx.recv().await.ok().map(|event| (Ok(event), rx))
            });
            Ok(Box::pin(stream) as EventStream)
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut state = self.enter("shutdown", String::new())?;
            let busy =
                state.containers.values().filter(|c| c.state.status != ContainerStatus::Stopped).count();
            if busy > 0 {
                return Err(Error::precondition(format!(
                    "shim cannot shut down: {busy} containers are created or running"
                )));
            }
            state.shut_down = true;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<ShimInfo>> {
        Box::pin(async move {
            drop(self.enter("ping", String::new())?);
            Ok(ShimInfo { pid: 1, version: env!("CARGO_PKG_VERSION").to_string() })
        })
    }
}

/// Launches [`FakeShim`]s, one per pod directory, and finds them again on connect (as after a
/// berthd restart). A shut-down fake is replaced on the next launch.
#[derive(Default)]
pub struct FakeShimLauncher {
    shims: Mutex<HashMap<PathBuf, Arc<FakeShim>>>,
    launches: Mutex<Vec<LaunchOptions>>,
    cleanups: Mutex<Vec<PathBuf>>,
}

impl FakeShimLauncher {
    /// A launcher with no shims.
    pub fn new() -> Arc<FakeShimLauncher> {
        Arc::new(FakeShimLauncher::default())
    }

    /// The fake serving `dir`, if one was launched.
    pub fn shim(&self, dir: &Path) -> Option<Arc<FakeShim>> {
        lock(&self.shims).get(dir).cloned()
    }

    /// Every launch request so far.
    pub fn launches(&self) -> Vec<LaunchOptions> {
        lock(&self.launches).clone()
    }

    /// The pod directories `cleanup` was asked for so far.
    pub fn cleanups(&self) -> Vec<PathBuf> {
        lock(&self.cleanups).clone()
    }
}

impl ShimLauncher for FakeShimLauncher {
    fn launch<'a>(&'a self, opts: &'a LaunchOptions) -> BoxFuture<'a, Result<Arc<dyn ShimApi>>> {
        Box::pin(async move {
            lock(&self.launches).push(opts.clone());
            let mut shims = lock(&self.shims);
            let shim = shims.entry(opts.dir.clone()).or_default();
            if shim.is_shut_down() {
                *shim = FakeShim::new();
            }
            Ok(shim.clone() as Arc<dyn ShimApi>)
        })
    }

    fn connect<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<Arc<dyn ShimApi>>> {
        Box::pin(async move {
            match lock(&self.shims).get(dir) {
                Some(shim) if !shim.is_shut_down() => Ok(shim.clone() as Arc<dyn ShimApi>),
                _ => Err(Error::unavailable(format!("no shim serves {}", dir.display()))),
            }
        })
    }

    fn cleanup<'a>(&'a self, opts: &'a LaunchOptions) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            lock(&self.cleanups).push(opts.dir.clone());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use futures_util::StreamExt;
    use std::time::Duration;

    fn create(id: &str) -> CreateOptions {
        CreateOptions { id: id.into(), bundle: "/b".into(), stdin: false, tty: false, log_path: None }
    }

    #[tokio::test]
    async fn lifecycle_matches_the_real_shim() {
        let shim = FakeShim::new();
        let mut events = shim.events().await.unwrap();
        let pid = shim.create(&create("c1")).await.unwrap();
        assert_eq!(shim.create(&create("c1")).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
        assert_eq!(shim.start("c1").await.unwrap(), pid);
        assert_eq!(shim.start("c1").await.unwrap_err().kind(), ErrorKind::FailedPrecondition);
        assert_eq!(shim.shutdown().await.unwrap_err().kind(), ErrorKind::FailedPrecondition);

        let waiter = {
            let shim = shim.clone();
            tokio::spawn(async move { shim.wait("c1").await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        shim.kill("c1", 15, false).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap().exit_code, 143);
        assert_eq!(events.next().await.unwrap().unwrap().exit_code, 143);
        assert_eq!(shim.state("c1").await.unwrap().status, ContainerStatus::Stopped);
        shim.kill("c1", 9, false).await.unwrap();
        assert_eq!(shim.state("c1").await.unwrap().exit_code, 143, "a stopped container stays as it was");

        shim.delete("c1").await.unwrap();
        shim.delete("c1").await.unwrap();
        assert_eq!(shim.state("c1").await.unwrap_err().kind(), ErrorKind::NotFound);
        shim.shutdown().await.unwrap();
        assert_eq!(shim.ping().await.unwrap_err().kind(), ErrorKind::Unavailable);
        assert_eq!(shim.calls()[..3], ["events", "create c1", "create c1"]);
    }

    #[tokio::test]
    async fn exits_exec_results_and_injected_failures() {
        let shim = FakeShim::new();
        shim.create(&create("c")).await.unwrap();
        let exec = ExecSyncOptions {
            id: "c".into(),
            process_json: b"{}".to_vec(),
            timeout: Duration::ZERO,
            max_output_bytes: 0,
        };
        assert_eq!(shim.exec_sync(&exec).await.unwrap_err().kind(), ErrorKind::FailedPrecondition);
        shim.start("c").await.unwrap();
        shim.set_exec_result(ExecSyncResult { exit_code: 0, stdout: b"ok\n".to_vec(), ..Default::default() });
        assert_eq!(shim.exec_sync(&exec).await.unwrap().stdout, b"ok\n");

        shim.fail_next("update", Error::internal("boom"));
        assert_eq!(shim.update("c", b"{}").await.unwrap_err().kind(), ErrorKind::Internal);
        shim.update("c", b"{}").await.unwrap();

        shim.exit("c", 3);
        let exit = shim.wait("c").await.unwrap();
        assert_eq!((exit.exit_code, exit.id.as_str()), (3, "c"));
        assert!(shim.calls().contains(&"update c {}".to_string()));
    }

    #[tokio::test]
    async fn streamed_exec_echoes_exits_and_dies_with_its_client() {
        use crate::task::StreamOutput;
        let shim = FakeShim::new();
        shim.create(&create("c")).await.unwrap();
        let opts = ExecOptions {
            id: "c".into(),
            process_json: b"{}".to_vec(),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        };
        assert_eq!(shim.exec_stream(&opts).await.err().unwrap().kind(), ErrorKind::FailedPrecondition);
        shim.start("c").await.unwrap();
        shim.set_exec_result(ExecSyncResult { exit_code: 3, stderr: b"bye".to_vec(), ..Default::default() });
        let mut s = shim.exec_stream(&opts).await.unwrap();
        s.sender.stdin(b"hello").await.unwrap();
        s.sender.resize(80, 24).await.unwrap();
        assert_eq!(s.receiver.next().await.unwrap(), Some(StreamOutput::Stdout(b"hello".to_vec())));
        s.sender.close_stdin().await.unwrap();
        assert_eq!(s.receiver.next().await.unwrap(), Some(StreamOutput::Stderr(b"bye".to_vec())));
        assert_eq!(s.receiver.next().await.unwrap(), Some(StreamOutput::Exit(3)));
        assert_eq!(s.receiver.next().await.unwrap(), None);

        let s = shim.exec_stream(&opts).await.unwrap();
        drop(s);
        let start = std::time::Instant::now();
        while !shim.calls().contains(&"exec_killed c".to_string()) {
            assert!(start.elapsed() < Duration::from_secs(5), "{:?}", shim.calls());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(shim.calls().contains(&"resize c 80x24".to_string()));

        let attach = AttachOptions { id: "c".into(), stdin: true, stdout: true, stderr: false, tty: false };
        let mut a = shim.attach(&attach).await.unwrap();
        a.sender.stdin(b"line\n").await.unwrap();
        assert_eq!(a.receiver.next().await.unwrap(), Some(StreamOutput::Stdout(b"line\n".to_vec())));
        shim.exit("c", 137);
        assert_eq!(a.receiver.next().await.unwrap(), Some(StreamOutput::Exit(137)));
        assert_eq!(shim.attach(&attach).await.err().unwrap().kind(), ErrorKind::FailedPrecondition);
    }

    #[tokio::test]
    async fn launcher_reconnects_to_the_same_fake() {
        let launcher = FakeShimLauncher::new();
        let dir = Path::new("/run/berth/pods/p1");
        assert_eq!(launcher.connect(dir).await.err().unwrap().kind(), ErrorKind::Unavailable);
        let opts = LaunchOptions::new("/usr/bin/berth-shim", "p1", dir, "runc");
        let shim = launcher.launch(&opts).await.unwrap();
        shim.create(&create("c")).await.unwrap();
        let again = launcher.connect(dir).await.unwrap();
        assert_eq!(again.list().await.unwrap().len(), 1);
        assert_eq!(launcher.launches(), std::slice::from_ref(&opts));

        again.delete("c").await.unwrap();
        again.shutdown().await.unwrap();
        assert!(launcher.connect(dir).await.is_err());
        let fresh = launcher.launch(&opts).await.unwrap();
        assert!(fresh.list().await.unwrap().is_empty());
        assert!(launcher.shim(dir).is_some());
    }
}
