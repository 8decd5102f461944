//! `berth-shim cleanup`: what is left to do when a pod's shim died. The containers it ran keep
//! running, reparented to init, while berthd can no longer stop them through it; containerd runs its
//! shim binary's `delete` for the same reason. This one-shot command takes the pod's lock (so the
//! shim that ran them is provably dead), then for every container the dead shim recorded it asks the
//! OCI runtime for the container's state and runs `delete --force`, which kills whatever still runs
//! in the container and removes its cgroup and runtime state. A container that was still alive is
//! recorded as stopped with exit code 137 (killed); one that was recorded running but had already
//! ended (its status was reaped by init and is lost) gets 255. Both are marked `reclaimed`.
//!
//! Idempotent: a second run finds nothing alive and only repeats `delete --force` of containers the
//! runtime no longer knows. It must never touch a pod directory a live shim serves.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{SignalKind, signal};

use super::reaper::{self, Reaper, Target};
use super::runtime::{RemoveOnDrop, RuntimeDriver, RuntimeStdio};
use super::status::{self, RecordedStatus, StatusRecord};
use super::{LOCK_FILE, ShimConfig, lock};
use crate::error::{Context, Error, Result};

/// How long cleanup waits for the pod's lock: another cleanup may hold it for a moment; a live shim
/// holds it for good.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The exit code of a container the cleanup killed: 128 + SIGKILL, as containerd reports it.
pub const KILLED: i32 = 137;
/// The exit code of a container whose end nobody saw.
pub const UNKNOWN: i32 = 255;

/// What the runtime says of a container (`<runtime> state <id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuntimeView {
    /// Created, running or paused: something of it lives.
    Alive,
    /// Stopped: its init is gone, its state and cgroup may not be.
    Stopped,
    /// The runtime does not know it (deleted, or its state directory is gone).
    Unknown,
}

/// `berth-shim cleanup`: runs [`reclaim`] for the pod directory of `config` and prints one line per
/// container it changed.
pub fn cleanup(config: ShimConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context(|| "building the cleanup runtime".to_string())?;
    let changed = rt.block_on(reclaim(&config))?;
    for r in changed {
        println!("{} {}", r.id, r.exit_code);
    }
    Ok(())
}

/// Reclaims the containers of a pod whose shim is dead; returns the records it rewrote.
pub async fn reclaim(config: &ShimConfig) -> Result<Vec<StatusRecord>> {
    let dir = &config.dir;
    if !dir.join("containers").is_dir() {
        return Ok(Vec::new());
    }
    // Before any child exists, so that no SIGCHLD is missed.
    let mut sigchld = signal(SignalKind::child()).context(|| "handling SIGCHLD".to_string())?;
    let _lock = take_lock(dir).await?;
    let reaper = Arc::new(Mutex::new(Reaper::default()));
    let runtime = RuntimeDriver::for_config(config, reaper.clone());
    let reaping = reaper.clone();
    let reap = tokio::spawn(async move {
        loop {
            for exit in reaper::reap() {
                if let Some(Target::Notify(tx)) = lock(&reaping).exited(exit) {
                    let _ = tx.send(exit);
                }
            }
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    });

    let mut changed = Vec::new();
    let mut failed = None;
    for mut record in status::read_all(dir)? {
        let cdir = dir.join("containers").join(&record.id);
        let view = runtime_view(&runtime, &cdir, &record.id).await;
        if view != RuntimeView::Unknown {
            let what = format!("deleting container {} of a dead shim", record.id);
            let args: [&OsStr; 3] = ["delete".as_ref(), "--force".as_ref(), record.id.as_ref()];
            if let Err(e) = runtime.run(&cdir, &args, RuntimeStdio::null(), &what).await {
                tracing::warn!(id = record.id, error = %e, "reclaiming a container");
                failed.get_or_insert(e);
                continue;
            }
        }
        if record.status == RecordedStatus::Stopped {
            continue;
        }
        record.status = RecordedStatus::Stopped;
        record.reclaimed = true;
        record.oom_killed = false;
        if view == RuntimeView::Alive {
            record.exit_code = KILLED;
            record.exited_at = now_nanos();
        } else {
            record.exit_code = UNKNOWN;
            record.exited_at = 0;
        }
        status::write(&cdir, &record)?;
        tracing::info!(id = record.id, exit_code = record.exit_code, "reclaimed a container of a dead shim");
        changed.push(record);
    }
    reap.abort();
    match failed {
        Some(e) => Err(e),
        None => Ok(changed),
    }
}

/// Takes the pod's lock, waiting a little for another cleanup; a live shim keeps it.
async fn take_lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(LOCK_FILE);
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(_) => {
                return Err(Error::precondition(format!(
                    "a shim still serves {}: nothing to reclaim",
                    dir.display()
                )));
            }
        }
    }
}

/// `<runtime> state <id>`, read from a file in the container's directory.
async fn runtime_view(runtime: &RuntimeDriver, cdir: &Path, id: &str) -> RuntimeView {
    #[derive(serde::Deserialize)]
    struct State {
        status: String,
    }
    let out_path = cdir.join("reclaim-state.json");
    let _cleanup = RemoveOnDrop(vec![out_path.clone()]);
    let Ok(out) = std::fs::File::create(&out_path) else { return RuntimeView::Unknown };
    let stdio = RuntimeStdio { stdin: std::process::Stdio::null(), stdout: out.into(), stderr: None };
    let what = format!("reading the state of container {id}");
    let args: [OsString; 2] = ["state".into(), id.into()];
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    if runtime.run(cdir, &args, stdio, &what).await.is_err() {
        return RuntimeView::Unknown;
    }
    match std::fs::read(&out_path).ok().and_then(|b| serde_json::from_slice::<State>(&b).ok()) {
        Some(s) if s.status == "stopped" => RuntimeView::Stopped,
        Some(_) => RuntimeView::Alive,
        None => RuntimeView::Unknown,
    }
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
