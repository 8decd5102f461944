//! berthd's side of the per-pod shim: launching `berth-shim` for a pod, connecting to it again
//! after a berthd restart, typed calls with deadlines, the stream of exit events, and the records a
//! dead shim left on disk. Shim errors come back as `crate::error::Error`s of the same kind.
//!
//! berthd uses the shim only through [`ShimApi`] and [`ShimLauncher`], so its tests run on
//! [`FakeShim`] without processes. This module must never run an OCI runtime itself, and never
//! expose the wire types of `proto/berth/shim/v1`.

mod client;
mod fake;
mod stream;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::Stream;
use futures_util::future::BoxFuture;

pub use client::{ShimClient, cleanup, launch};
pub use fake::{FakeShim, FakeShimLauncher};
pub use stream::{ProcessStream, StreamOutput, StreamReceiver, StreamSender};

use crate::error::Result;
use crate::shim::{self, proto};

/// The default deadline of one call (Wait and Events have none).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// The default time `berth-shim start` may take.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `berth-shim cleanup` may take: a forced delete per container of the pod.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

/// How to launch a pod's shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// The `berth-shim` executable (berthd passes the one next to its own).
    pub shim_binary: PathBuf,
    /// The pod (sandbox) id.
    pub id: String,
    /// The pod directory, `<state>/pods/<id>`.
    pub dir: PathBuf,
    /// The OCI runtime binary of the pod's runtime handler.
    pub runtime: PathBuf,
    /// The runtime's `--root`; the runtime's default when unset.
    pub runtime_root: Option<PathBuf>,
    /// Extra global runtime options.
    pub runtime_args: Vec<String>,
    /// The pod's cgroups are managed through systemd: the runtime gets `--systemd-cgroup` on every
    /// call and the shim runs in its own scope (see [`crate::shim::ShimConfig::systemd_cgroup`]).
    pub systemd_cgroup: bool,
    /// The longest CRI log record.
    pub log_line_max: usize,
    /// How long `berth-shim start` may take.
    pub start_timeout: Duration,
    /// The deadline of each call on the returned client.
    pub call_timeout: Duration,
}

impl LaunchOptions {
    /// Options with the default log line limit and timeouts.
    pub fn new(
        shim_binary: impl Into<PathBuf>,
        id: impl Into<String>,
        dir: impl Into<PathBuf>,
        runtime: impl Into<PathBuf>,
    ) -> Self {
        LaunchOptions {
            shim_binary: shim_binary.into(),
            id: id.into(),
            dir: dir.into(),
            runtime: runtime.into(),
            runtime_root: None,
            runtime_args: Vec::new(),
            systemd_cgroup: false,
            log_line_max: shim::DEFAULT_LOG_LINE_MAX,
            start_timeout: DEFAULT_START_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// A container to create from an OCI bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    pub id: String,
    /// Absolute path of the bundle (config.json and rootfs).
    pub bundle: PathBuf,
    /// Keep a pipe on the container's stdin.
    pub stdin: bool,
    /// Give the container a pty (config.json's process.terminal must agree).
    pub tty: bool,
    /// The CRI log file (its directory must exist); `None` discards the output.
    pub log_path: Option<PathBuf>,
}

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    Running,
    Stopped,
    Unknown,
}

/// What the shim knows of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub status: ContainerStatus,
    /// The init's pid (kept after it exits).
    pub pid: u32,
    /// 128 + signal for a process killed by a signal; meaningful once stopped.
    pub exit_code: i32,
    pub created_at: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub exited_at: Option<SystemTime>,
    pub oom_killed: bool,
    /// Its shim died while it ran; `berth-shim cleanup` ended it (exit code 137) or found it gone (255).
    pub reclaimed: bool,
    /// Output its CRI log could not take (a full disk), over its life: records and content bytes.
    /// Zero when the shim is gone (it is not recorded on disk).
    pub log_dropped_records: u64,
    pub log_dropped_bytes: u64,
}

/// A container's exit, from Wait or the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub id: String,
    pub pid: u32,
    /// 128 + signal for a process killed by a signal.
    pub exit_code: i32,
    pub exited_at: Option<SystemTime>,
    pub oom_killed: bool,
}

/// A process to run to completion in a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSyncOptions {
    pub id: String,
    /// The OCI process object (config.json's `process`), as JSON.
    pub process_json: Vec<u8>,
    /// Killed (SIGKILL) after this long; zero means no limit.
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr (the rest is read and dropped); 0 means the shim's
    /// default of 16 MiB, which is also the maximum.
    pub max_output_bytes: usize,
}

/// The outcome of an ExecSync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSyncResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// A process to run in a running container with its stdio streamed ([`ShimApi::exec_stream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    /// The container to run the process in.
    pub id: String,
    /// The OCI process object (config.json's `process`), as JSON; its `terminal` must equal `tty`.
    pub process_json: Vec<u8>,
    /// Run it on a new pty (its output all comes as stdout).
    pub tty: bool,
    /// Give it a stdin fed by the sender; otherwise it reads /dev/null.
    pub stdin: bool,
    /// Stream its stdout / stderr; otherwise they go to /dev/null.
    pub stdout: bool,
    pub stderr: bool,
}

/// Which of a running container's stdio to attach to ([`ShimApi::attach`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOptions {
    /// The container to attach to.
    pub id: String,
    /// Write to the container's stdin (ignored if it was created without one).
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Whether the container has a pty; a mismatch is an InvalidArgument.
    pub tty: bool,
}

/// Who answers on a shim socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimInfo {
    pub pid: u32,
    pub version: String,
}

/// Exit events, until the shim closes the stream (it exited, or the subscriber fell behind and
/// must list again).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ExitEvent>> + Send>>;

/// The calls berthd makes on a pod's shim. Implemented by [`ShimClient`] and [`FakeShim`].
pub trait ShimApi: Send + Sync {
    /// Creates a container (not started); returns its init's pid.
    fn create<'a>(&'a self, opts: &'a CreateOptions) -> BoxFuture<'a, Result<u32>>;
    /// Starts a created container; returns its init's pid.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u32>>;
    /// Creates and starts a container; returns its init's pid. The real shim does both in one
    /// runtime call; this default (for fakes) calls `create` then `start`.
    fn run<'a>(&'a self, opts: &'a CreateOptions) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            self.create(opts).await?;
            self.start(&opts.id).await
        })
    }
    /// Signals the container's init, or all its processes; a stopped container is not an error.
    fn kill<'a>(&'a self, id: &'a str, signal: i32, all: bool) -> BoxFuture<'a, Result<()>>;
    /// Deletes the container (killing it if needed) and forgets it; unknown ids are not an error.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// One container's state; NotFound if unknown.
    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerState>>;
    /// Every container's state, sorted by id.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerState>>>;
    /// Waits for the container's exit, without deadline (drop the future to stop waiting).
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitEvent>>;
    /// Runs a process to completion in a running container.
    fn exec_sync<'a>(&'a self, opts: &'a ExecSyncOptions) -> BoxFuture<'a, Result<ExecSyncResult>>;
    /// Starts a process in a running container and streams its stdio until it exits; dropping the
    /// stream before that kills it.
    fn exec_stream<'a>(&'a self, opts: &'a ExecOptions) -> BoxFuture<'a, Result<ProcessStream>>;
    /// Attaches to a running container's stdio until it exits; dropping the stream detaches.
    fn attach<'a>(&'a self, opts: &'a AttachOptions) -> BoxFuture<'a, Result<ProcessStream>>;
    /// Updates resources from the OCI `linux.resources` JSON.
    fn update<'a>(&'a self, id: &'a str, resources_json: &'a [u8]) -> BoxFuture<'a, Result<()>>;
    /// Reopens the container's log path after the kubelet rotated it.
    fn reopen_log<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Subscribes to exit events; the subscription is in place when this returns.
    fn events(&self) -> BoxFuture<'_, Result<EventStream>>;
    /// Asks the shim to exit; FailedPrecondition while a container is created or running.
    fn shutdown(&self) -> BoxFuture<'_, Result<()>>;
    /// Checks that the shim answers.
    fn ping(&self) -> BoxFuture<'_, Result<ShimInfo>>;
}

/// Starts pod shims and finds them again. Implemented by [`ProcessShimLauncher`] and
/// [`FakeShimLauncher`].
pub trait ShimLauncher: Send + Sync {
    /// Makes sure a shim serves `opts.dir` (idempotent) and connects to it.
    fn launch<'a>(&'a self, opts: &'a LaunchOptions) -> BoxFuture<'a, Result<Arc<dyn ShimApi>>>;
    /// Connects to the shim already serving `dir` (after a berthd restart); Unavailable if none.
    fn connect<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<Arc<dyn ShimApi>>>;
    /// Ends what the pod's dead shim ran (`berth-shim cleanup`, idempotent) and records their exits
    /// in the pod directory; FailedPrecondition if a shim still serves the pod.
    fn cleanup<'a>(&'a self, opts: &'a LaunchOptions) -> BoxFuture<'a, Result<()>>;
}

/// Launches real `berth-shim` processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessShimLauncher;

impl ShimLauncher for ProcessShimLauncher {
    fn launch<'a>(&'a self, opts: &'a LaunchOptions) -> BoxFuture<'a, Result<Arc<dyn ShimApi>>> {
        Box::pin(async move { Ok(Arc::new(launch(opts).await?) as Arc<dyn ShimApi>) })
    }
    fn connect<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<Arc<dyn ShimApi>>> {
        Box::pin(async move { Ok(Arc::new(ShimClient::connect(dir).await?) as Arc<dyn ShimApi>) })
    }
    fn cleanup<'a>(&'a self, opts: &'a LaunchOptions) -> BoxFuture<'a, Result<()>> {
        Box::pin(cleanup(opts))
    }
}

/// What a pod's shim recorded on disk (`containers/<id>/status.json`), for when the shim is gone:
/// a container recorded as running whose shim is dead has an unknown fate.
pub fn recorded_states(dir: &Path) -> Result<Vec<ContainerState>> {
    use shim::status::RecordedStatus;
    Ok(shim::status::read_all(dir)?
        .into_iter()
        .map(|r| ContainerState {
            id: r.id,
            status: match r.status {
                RecordedStatus::Created => ContainerStatus::Created,
                RecordedStatus::Running => ContainerStatus::Running,
                RecordedStatus::Stopped => ContainerStatus::Stopped,
            },
            pid: r.pid,
            exit_code: r.exit_code,
            created_at: time(r.created_at),
            started_at: time(r.started_at),
            exited_at: time(r.exited_at),
            oom_killed: r.oom_killed,
            reclaimed: r.reclaimed,
            log_dropped_records: 0,
            log_dropped_bytes: 0,
        })
        .collect())
}

fn time(nanos: i64) -> Option<SystemTime> {
    (nanos > 0).then(|| UNIX_EPOCH + Duration::from_nanos(nanos as u64))
}

impl From<proto::ContainerState> for ContainerState {
    fn from(s: proto::ContainerState) -> Self {
        let status = match proto::Status::try_from(s.status) {
            Ok(proto::Status::Created) => ContainerStatus::Created,
            Ok(proto::Status::Running) => ContainerStatus::Running,
            Ok(proto::Status::Stopped) => ContainerStatus::Stopped,
            _ => ContainerStatus::Unknown,
        };
        ContainerState {
            id: s.id,
            status,
            pid: s.pid,
            exit_code: s.exit_code,
            created_at: time(s.created_at),
            started_at: time(s.started_at),
            exited_at: time(s.exited_at),
            oom_killed: s.oom_killed,
            reclaimed: false,
            log_dropped_records: s.log_dropped_records,
            log_dropped_bytes: s.log_dropped_bytes,
        }
    }
}

impl From<proto::ExitStatus> for ExitEvent {
    fn from(e: proto::ExitStatus) -> Self {
        ExitEvent {
            id: e.id,
            pid: e.pid,
            exit_code: e.exit_code,
            exited_at: time(e.exited_at),
            oom_killed: e.oom_killed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_states_convert() {
        let s = ContainerState::from(proto::ContainerState {
            id: "c".into(),
            status: proto::Status::Stopped as i32,
            pid: 9,
            exit_code: 137,
            created_at: 1_000,
            started_at: 0,
            exited_at: 3_000,
            oom_killed: true,
            log_dropped_records: 4,
            log_dropped_bytes: 80,
        });
        assert_eq!(s.status, ContainerStatus::Stopped);
        assert_eq!(s.created_at, Some(UNIX_EPOCH + Duration::from_nanos(1_000)));
        assert_eq!(s.started_at, None);
        assert!(s.oom_killed);
        assert_eq!((s.log_dropped_records, s.log_dropped_bytes), (4, 80));
        let unknown = ContainerState::from(proto::ContainerState { status: 42, ..Default::default() });
        assert_eq!(unknown.status, ContainerStatus::Unknown);
    }

    #[test]
    fn recorded_states_read_the_shim_records() {
        use shim::status::{RecordedStatus, StatusRecord, VERSION};
        let pod = tempfile::tempdir().unwrap();
        let dir = pod.path().join("containers/c1");
        std::fs::create_dir_all(&dir).unwrap();
        let record = StatusRecord {
            version: VERSION,
            id: "c1".into(),
            status: RecordedStatus::Stopped,
            pid: 5,
            exit_code: 3,
            created_at: 10,
            started_at: 20,
            exited_at: 30,
            oom_killed: false,
            reclaimed: false,
        };
        shim::status::write(&dir, &record).unwrap();
        let states = recorded_states(pod.path()).unwrap();
        assert_eq!(states.len(), 1);
        assert_eq!((states[0].status, states[0].exit_code), (ContainerStatus::Stopped, 3));
        assert_eq!(states[0].exited_at, Some(UNIX_EPOCH + Duration::from_nanos(30)));
    }
}
