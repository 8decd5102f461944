//! In-memory stand-ins for a pod shim and its launcher, for berthd's unit tests: the same state
//! machine and error kinds as the real shim, no processes. Tests drive exits with
//! [`FakeShim::exit`], inject failures with [`FakeShim::fail_next`] and read back the calls.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use tokio::sync::{broadcast, watch};

use super::{
    ContainerState, ContainerStatus, CreateOptions, EventStream, ExecSyncOptions, ExecSyncResult, ExitEvent,
    LaunchOptions, ShimApi, ShimInfo, ShimLauncher,
};
use crate::error::{Error, Result};
use crate::shim::lock;

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
}

/// A pod shim in memory. Every signal but 0 is fatal to a fake container (exit 128 + signal).
pub struct FakeShim {
    state: Mutex<FakeState>,
    events: broadcast::Sender<ExitEvent>,
}

impl Default for FakeShim {
    fn default() -> Self {
        FakeShim { state: Mutex::default(), events: broadcast::channel(256).0 }
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

    /// What ExecSync answers from now on (default: exit 0, no output).
    pub fn set_exec_result(&self, result: ExecSyncResult) {
        lock(&self.state).exec_result = result;
    }

    /// Makes the next call named `call` ("create", "start", "kill", ...) fail with `error`.
    pub fn fail_next(&self, call: &str, error: Error) {
        lock(&self.state).failures.insert(call.to_string(), error);
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
            let c = state.containers.get_mut(id).ok_or_else(|| not_found(id))?;
            self.stop(c, 128 + signal);
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
