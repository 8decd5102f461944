//! The OCI runtime driver: runs the runtime binary (runc, crun, or anything with their command
//! line) with the shim's global options, under a deadline, and turns a failure into an error that
//! carries the runtime's own message. Every invocation gets `--log <file> --log-format json`, so
//! the message is found even when the runtime's stderr is the container's (create, exec).
//!
//! This module never waits on a child itself: the exit of each invocation comes from the reaper,
//! which owns `waitpid`.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::lock;
use super::reaper::{Reaper, Target};
use crate::error::{Context, Error, ErrorKind, Result};

/// How long one runtime invocation may take before it is killed.
pub const RUNTIME_TIMEOUT: Duration = Duration::from_secs(60);

/// The global option that makes runc and crun manage cgroups through systemd.
pub const SYSTEMD_CGROUP: &str = "--systemd-cgroup";

/// The longest runtime message kept in an error.
const MAX_MESSAGE: usize = 4096;

/// The standard streams of one invocation. `stderr: None` captures it for the error message.
pub struct RuntimeStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Option<Stdio>,
}

impl RuntimeStdio {
    /// /dev/null in and out, stderr captured.
    pub fn null() -> RuntimeStdio {
        RuntimeStdio { stdin: Stdio::null(), stdout: Stdio::null(), stderr: None }
    }
}

/// Runs the OCI runtime binary.
#[derive(Debug)]
pub struct RuntimeDriver {
    binary: PathBuf,
    root: Option<PathBuf>,
    args: Vec<OsString>,
    reaper: Arc<Mutex<Reaper>>,
    seq: AtomicU64,
}

impl RuntimeDriver {
    /// `root` is passed as `--root`; `args` are global options placed before the command.
    pub fn new(
        binary: PathBuf,
        root: Option<PathBuf>,
        args: Vec<OsString>,
        reaper: Arc<Mutex<Reaper>>,
    ) -> Self {
        RuntimeDriver { binary, root, args, reaper, seq: AtomicU64::new(0) }
    }

    /// The runtime a shim configuration names, with its root and global options: with the systemd
    /// cgroup driver `--systemd-cgroup` comes first (runc and crun alike take it), on every call:
    /// runc up to 1.1 (Debian 12's) picks the cgroup manager of an existing container (kill,
    /// delete, update …) by the flag, not by what the container was created with.
    pub fn for_config(config: &super::ShimConfig, reaper: Arc<Mutex<Reaper>>) -> Self {
        let mut args: Vec<OsString> = Vec::new();
        if config.systemd_cgroup && !config.runtime_args.iter().any(|a| a == SYSTEMD_CGROUP) {
            args.push(SYSTEMD_CGROUP.into());
        }
        args.extend(config.runtime_args.iter().map(Into::into));
        RuntimeDriver::new(config.runtime.clone(), config.runtime_root.clone(), args, reaper)
    }

    /// `<binary> [--root R] --log <log_path> --log-format json <args> <command...>`.
    fn command(&self, log_path: &Path, command: &[&OsStr]) -> Command {
        let mut cmd = Command::new(&self.binary);
        if let Some(root) = &self.root {
            cmd.arg("--root").arg(root);
        }
        cmd.arg("--log").arg(log_path).arg("--log-format").arg("json");
        cmd.args(&self.args).args(command);
        // Inherited from a berthd run by systemd, it would make runc proxy sd_notify for the
        // container and `start` wait for a READY=1 that never comes.
        cmd.env_remove("NOTIFY_SOCKET");
        cmd
    }

    /// Runs `<binary> [--root R] --log F --log-format json <args> <command...>` and waits for it.
    /// `work_dir` (the container's directory) holds the invocation's log and stderr files, removed
    /// afterwards. `what` says what was being done, for the error message.
    pub async fn run(
        &self,
        work_dir: &Path,
        command: &[&OsStr],
        stdio: RuntimeStdio,
        what: &str,
    ) -> Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let log_path = work_dir.join(format!("runtime-{seq}.log"));
        let err_path = work_dir.join(format!("runtime-{seq}.err"));
        let _cleanup = RemoveOnDrop(vec![log_path.clone(), err_path.clone()]);
        let name = self.binary.file_name().unwrap_or(self.binary.as_os_str()).to_string_lossy().into_owned();
        let verb = command.first().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();

        let mut cmd = self.command(&log_path, command);
        cmd.stdin(stdio.stdin).stdout(stdio.stdout);
        let captured = stdio.stderr.is_none();
        match stdio.stderr {
            Some(stderr) => cmd.stderr(stderr),
            None => cmd.stderr(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&err_path)
                    .context(|| format!("{what}: creating {}", err_path.display()))?,
            ),
        };

        let (tx, mut rx) = oneshot::channel();
        let started = std::time::Instant::now();
        let child = cmd.spawn().context_kind(ErrorKind::FailedPrecondition, || {
            format!("{what}: running {}", self.binary.display())
        })?;
        let pid = child.id() as i32;
        // No await between spawn and watch: the reaper cannot have seen this exit yet.
        lock(&self.reaper).watch_spawned(pid, Target::Notify(tx));
        // Close our copies of the child's stdio now, or pipe readers would never see EOF.
        drop(cmd);
        drop(child);

        let exit = match tokio::time::timeout(RUNTIME_TIMEOUT, &mut rx).await {
            Ok(Ok(exit)) => exit,
            Ok(Err(_)) => {
                return Err(Error::internal(format!("{what}: {name} {verb}: the reaper lost its exit")));
            }
            Err(_) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
                return Err(Error::new(
                    ErrorKind::DeadlineExceeded,
                    format!("{what}: {name} {verb} did not finish within {RUNTIME_TIMEOUT:?}"),
                ));
            }
        };
        tracing::debug!(verb, code = exit.code, elapsed = ?started.elapsed(), "runtime call finished");
        if exit.code == 0 {
            return Ok(());
        }
        let message = log_error(&log_path)
            .or_else(|| captured.then(|| stderr_text(&err_path)).flatten())
            .unwrap_or_else(|| format!("exit status {}", exit.code));
        Err(Error::internal(format!("{what}: {name} {verb} failed: {message}")))
    }
}

/// The last error-level message of a runtime's JSON log (runc and crun: one object per line with
/// `level` and `msg`).
fn log_error(path: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct Line {
        level: String,
        msg: String,
    }
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .find(|l| matches!(l.level.as_str(), "error" | "fatal" | "panic"))
        .map(|l| truncate(l.msg.trim()))
}

fn stderr_text(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    (!text.is_empty()).then(|| truncate(text))
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Removes files when dropped (ignoring errors): the per-invocation scratch files.
pub struct RemoveOnDrop(pub Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(systemd_cgroup: bool, runtime_args: &[&str]) -> RuntimeDriver {
        let (_, mut config) = super::super::ShimConfig::parse(
            ["serve", "--id", "p", "--dir", "/d", "--runtime", "runc", "--runtime-root", "/r"]
                .map(OsString::from),
        )
        .unwrap();
        config.systemd_cgroup = systemd_cgroup;
        config.runtime_args = runtime_args.iter().map(|a| a.to_string()).collect();
        RuntimeDriver::for_config(&config, Arc::default())
    }

    fn argv(driver: &RuntimeDriver, command: &[&str]) -> Vec<String> {
        let command: Vec<&OsStr> = command.iter().map(OsStr::new).collect();
        let cmd = driver.command(Path::new("/c/runtime-0.log"), &command);
        assert_eq!(cmd.get_program(), "runc");
        cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    /// Every call the shim makes, by the command lines of server.rs and reclaim.rs.
    const CALLS: &[&[&str]] = &[
        &["create", "--bundle", "/b", "--pid-file", "/c/init.pid", "c"],
        &["run", "--detach", "--bundle", "/b", "--pid-file", "/c/init.pid", "c"],
        &["start", "c"],
        &["exec", "--process", "/c/exec-0.json", "--detach", "--pid-file", "/c/exec-0.pid", "c"],
        &["kill", "--all", "c", "9"],
        &["update", "--resources", "/c/update-0.json", "c"],
        &["state", "c"],
        &["delete", "c"],
        &["delete", "--force", "c"],
        &["events", "--stats", "c"],
        &["pause", "c"],
        &["resume", "c"],
    ];

    #[test]
    fn systemd_driver_puts_the_flag_on_every_call() {
        let d = driver(true, &["--debug"]);
        for call in CALLS {
            let args = argv(&d, call);
            let mut expected: Vec<String> = [
                "--root",
                "/r",
                "--log",
                "/c/runtime-0.log",
                "--log-format",
                "json",
                "--systemd-cgroup",
                "--debug",
            ]
            .map(String::from)
            .to_vec();
            expected.extend(call.iter().map(|a| a.to_string()));
            assert_eq!(args, expected, "{call:?}");
        }
        // Named in the handler's options already: not twice.
        let d = driver(true, &["--systemd-cgroup"]);
        let args = argv(&d, &["start", "c"]);
        assert_eq!(args.iter().filter(|a| *a == SYSTEMD_CGROUP).count(), 1, "{args:?}");
    }

    #[test]
    fn cgroupfs_driver_has_no_flag() {
        let d = driver(false, &[]);
        for call in CALLS {
            let args = argv(&d, call);
            assert!(!args.iter().any(|a| a == SYSTEMD_CGROUP), "{args:?}");
            assert_eq!(args[..6], ["--root", "/r", "--log", "/c/runtime-0.log", "--log-format", "json"]);
            assert_eq!(args[6..], call.iter().map(|a| a.to_string()).collect::<Vec<_>>()[..]);
        }
    }

    #[test]
    fn runtime_calls_do_not_inherit_the_notify_socket() {
        let cmd = driver(true, &[]).command(Path::new("/l"), &[OsStr::new("start")]);
        assert!(cmd.get_envs().any(|(k, v)| k == "NOTIFY_SOCKET" && v.is_none()));
    }

    #[test]
    fn error_comes_from_the_last_error_line_of_the_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(
            &path,
            concat!(
                "{\"level\":\"warning\",\"msg\":\"ignored\",\"time\":\"t\"}\n",
                "not json\n",
                "{\"msg\":\"first\",\"level\":\"error\"}\n",
                "{\"level\":\"error\",\"msg\":\"container does not exist\",\"time\":\"t\"}\n",
                "{\"level\":\"info\",\"msg\":\"later\"}\n",
            ),
        )
        .unwrap();
        assert_eq!(log_error(&path).as_deref(), Some("container does not exist"));
        assert_eq!(log_error(&dir.path().join("missing")), None);
    }

    #[test]
    fn stderr_is_trimmed_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("err");
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(stderr_text(&path), None);
        std::fs::write(&path, "Incorrect Usage.\n").unwrap();
        assert_eq!(stderr_text(&path).as_deref(), Some("Incorrect Usage."));
        std::fs::write(&path, "é".repeat(MAX_MESSAGE)).unwrap();
        let t = stderr_text(&path).unwrap();
        assert!(t.len() <= MAX_MESSAGE + '…'.len_utf8() && t.ends_with('…'));
    }
}
