//! `berth-shim`, the per-pod shim: one small long-lived process per pod, started by berthd and
//! detached from it (reparented to init), so containers keep running and every exit is recorded
//! while berthd restarts. It drives the OCI runtime, is the child subreaper of the pod's processes,
//! owns the containers' stdio and CRI logs, records exits on disk, and serves the API of
//! `proto/berth/shim/v1/shim.proto` on `<pod dir>/shim.sock`.
//!
//! The pod directory it owns: `shim.sock`, `shim.pid`, `shim.log` (its stderr), `shim.lock`,
//! transient `console-<n>.sock`, and per container `containers/<id>/` with `status.json` (see
//! [`status`]), `init.pid`, and transient runtime scratch files (`runtime-<n>.log|err`,
//! `exec-<n>.json|pid`, `update-<n>.json`).
//!
//! The shim must stay tiny (a current-thread runtime, no gRPC stack, few allocations) and must
//! depend on nothing above it in the crate: berthd's side of the protocol lives in `task`.

pub mod cgroup;
pub mod cri_log;
pub mod fd;
pub mod frame;
pub mod reaper;
pub mod reclaim;
pub mod runtime;
pub mod server;
pub mod status;
pub mod stdio;
pub mod stream;

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message;

use crate::error::{Context, Error, ErrorKind, Result};

/// The generated messages of `proto/berth/shim/v1/shim.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/berth.shim.v1.rs"));
}

/// The API socket, in the pod directory (see [`socket_path`]).
pub const SOCKET_NAME: &str = "shim.sock";
/// Where sockets go whose path in the pod directory would be too long for a unix socket address, as
/// containerd keeps its shim sockets in /run/containerd/s.
pub const SHORT_SOCKET_DIR: &str = "/run/berth/s";
/// sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// The shim's pid, in the pod directory (written once serving).
pub const PID_FILE: &str = "shim.pid";
/// The shim's own log (its stderr), in the pod directory.
pub const LOG_FILE: &str = "shim.log";
/// Held (flock) by the serving shim for its lifetime: one shim per pod directory.
pub const LOCK_FILE: &str = "shim.lock";
/// The default longest CRI log record, as containerd's `max_container_log_line_size`.
pub const DEFAULT_LOG_LINE_MAX: usize = 16 * 1024;

/// What a shim serves and how it runs containers; the arguments of `start` and `serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimConfig {
    /// The pod (sandbox) id.
    pub id: String,
    /// The pod directory, `<state>/pods/<id>`: socket, pid file, log, container records.
    pub dir: PathBuf,
    /// The OCI runtime binary (a path, or a name looked up in PATH).
    pub runtime: PathBuf,
    /// The runtime's state directory (`--root`); the runtime's default when unset.
    pub runtime_root: Option<PathBuf>,
    /// Extra global runtime options, placed before the command.
    pub runtime_args: Vec<String>,
    /// The longest CRI log record; longer lines are split.
    pub log_line_max: usize,
    /// The pod uses the systemd cgroup driver: every runtime call gets `--systemd-cgroup`, and the
    /// shim serves from its own transient scope ([`scope_unit`]) rather than its launcher's cgroup.
    pub systemd_cgroup: bool,
    /// The cgroup mount point, where OOM kills are counted.
    pub cgroup_root: PathBuf,
}

/// The shim's subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimCommand {
    /// Make sure a shim serves the pod directory, spawning a detached one if needed; print the
    /// socket path.
    Start,
    /// Serve in this process.
    Serve,
    /// End what a dead shim of the pod ran ([`reclaim`]).
    Cleanup,
}

impl ShimConfig {
    /// Parses `start|serve --id ID --dir DIR --runtime BIN [--runtime-root DIR]
    /// [--runtime-arg ARG]... [--log-line-max N] [--systemd-cgroup]` (also `--flag=value`). A
    /// `--runtime-arg` value is taken verbatim, even when it starts with dashes.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<(ShimCommand, ShimConfig)> {
        let mut args = args.into_iter();
        let command = match args.next().as_deref().and_then(|a| a.to_str()) {
            Some("start") => ShimCommand::Start,
            Some("serve") => ShimCommand::Serve,
            Some("cleanup") => ShimCommand::Cleanup,
            other => {
                return Err(Error::invalid(format!(
                    "expected the command start, serve or cleanup, got {other:?}"
                )));
            }
        };
        let (mut id, mut dir, mut runtime, mut root, mut line_max) = (None, None, None, None, None);
        let mut runtime_args = Vec::new();
        let mut systemd_cgroup = false;
        while let Some(arg) = args.next() {
            let arg =
                arg.into_string().map_err(|a| Error::invalid(format!("argument {a:?} is not UTF-8")))?;
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg, None),
            };
            let mut value = || -> Result<String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => args
                        .next()
                        .and_then(|v| v.into_string().ok())
                        .ok_or_else(|| Error::invalid(format!("{flag} needs a UTF-8 value"))),
                }
            };
            match flag.as_str() {
                "--id" => id = Some(value()?),
                "--dir" => dir = Some(PathBuf::from(value()?)),
                "--runtime" => runtime = Some(PathBuf::from(value()?)),
                "--runtime-root" => root = Some(PathBuf::from(value()?)),
                "--runtime-arg" => runtime_args.push(value()?),
                "--systemd-cgroup" if inline.is_none() => systemd_cgroup = true,
                "--log-line-max" => {
                    let v = value()?;
                    let n = v.parse::<usize>().ok().filter(|&n| n > 0);
                    line_max = Some(n.ok_or_else(|| {
                        Error::invalid(format!("--log-line-max must be a positive number, not {v:?}"))
                    })?);
                }
                other => return Err(Error::invalid(format!("unknown argument {other:?}"))),
            }
        }
        let missing = |what: &str| Error::invalid(format!("missing {what}"));
        let config = ShimConfig {
            id: id.ok_or_else(|| missing("--id"))?,
            dir: dir.ok_or_else(|| missing("--dir"))?,
            runtime: runtime.ok_or_else(|| missing("--runtime"))?,
            runtime_root: root,
            runtime_args,
            log_line_max: line_max.unwrap_or(DEFAULT_LOG_LINE_MAX),
            systemd_cgroup,
            cgroup_root: PathBuf::from(cgroup::CGROUP_ROOT),
        };
        if !config.dir.is_absolute() {
            return Err(Error::invalid(format!("--dir must be absolute, not {:?}", config.dir)));
        }
        if config.systemd_cgroup && !valid_unit_part(&config.id) {
            return Err(Error::invalid(format!(
                "--id {:?} cannot name a systemd unit (letters, digits, '-', '_', '.' and ':' only)",
                config.id
            )));
        }
        Ok((command, config))
    }

    /// The arguments that [`ShimConfig::parse`] turns back into this configuration (after the
    /// command).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> =
            vec!["--id".into(), self.id.clone().into(), "--dir".into(), self.dir.clone().into()];
        args.extend(["--runtime".into(), self.runtime.clone().into()]);
        if let Some(root) = &self.runtime_root {
            args.extend(["--runtime-root".into(), root.clone().into()]);
        }
        for a in &self.runtime_args {
            args.extend(["--runtime-arg".into(), a.into()]);
        }
        args.extend(["--log-line-max".into(), self.log_line_max.to_string().into()]);
        if self.systemd_cgroup {
            args.push("--systemd-cgroup".into());
        }
        args
    }

    /// The API socket of this pod's shim.
    pub fn socket(&self) -> PathBuf {
        socket_path(&self.dir, SOCKET_NAME)
    }
}

/// The path of the socket `name` of the pod directory `dir`: `<dir>/<name>`, or, when that is longer
/// than a unix socket address holds (a long `state` directory), `<SHORT_SOCKET_DIR>/<hash of dir>-<name>`.
/// Both ends compute it the same way; the hash keeps pods, and berthd instances, apart.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    let natural = dir.join(name);
    if natural.as_os_str().len() <= MAX_SOCKET_PATH {
        return natural;
    }
    use sha2::Digest as _;
    use std::os::unix::ffi::OsStrExt as _;
    let hash = hex::encode(sha2::Sha256::digest(dir.as_os_str().as_bytes()));
    Path::new(SHORT_SOCKET_DIR).join(format!("{}-{name}", &hash[..32]))
}

/// Makes room for binding `socket`: creates its directory (root-only when it is the shared
/// [`SHORT_SOCKET_DIR`]) and removes a stale socket file left there.
pub fn prepare_socket(socket: &Path) -> Result<()> {
    if let Some(parent) = socket.parent()
        && parent == Path::new(SHORT_SOCKET_DIR)
    {
        use std::os::unix::fs::PermissionsExt as _;
        crate::fsutil::create_dir_all_with_mode(parent, 0o700)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
            .context(|| format!("setting the mode of {}", parent.display()))?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context(|| format!("removing the stale socket {}", socket.display()))
        }
        _ => Ok(()),
    }
}

/// `berth-shim start`: returns the socket of the shim serving `config.dir`, spawning one if none
/// answers. The new shim is `<this executable> serve ...` in its own process group, stdin /dev/null,
/// stderr appended to `shim.log`; it says "ready" on stdout once its socket listens. The caller
/// then exits, so the shim is reparented to init (or the nearest subreaper).
pub fn start(config: &ShimConfig) -> Result<PathBuf> {
    let socket = config.socket();
    if ping_blocking(&socket).is_ok() {
        return Ok(socket);
    }
    crate::fsutil::create_dir_all_with_mode(&config.dir, 0o700)?;
    let log_path = config.dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .mode(0o600)
        .append(true)
        .open(&log_path)
        .context(|| format!("opening {}", log_path.display()))?;
    // The installed path, so `ps` and `pgrep berth-shim` show the shims; this process's
    // /proc/<pid>/exe only if the binary was replaced or removed since it started (by pid, not
    // "self": systemd-run resolves the path, and this process lives until the shim is ready).
    let exe = std::env::current_exe()
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(format!("/proc/{}/exe", std::process::id())));
    let mut child = serve_command(&exe, config)
        .process_group(0)
        // Not pinning whatever directory (and mount) the caller runs in.
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context(|| format!("spawning the shim of pod {}", config.id))?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    if line.trim() == "ready" {
        return Ok(socket);
    }
    let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
    // Another start may have won the race for the pod directory: its shim answers shortly.
    for _ in 0..20 {
        if ping_blocking(&socket).is_ok() {
            return Ok(socket);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::unavailable(format!(
        "shim of pod {} failed to start ({status}): {}",
        config.id,
        log_tail(&log_path)
    )))
}

/// The slice of the shims' scopes with the systemd cgroup driver. Not the pod's own slice, as
/// CRI-O does with conmon: the kubelet stops a pod's slice, killing all it holds, once the pod's
/// containers are gone (berth needs the shim until RemovePodSandbox), and a shim there counts
/// against the pod's memory limit, so an OOM kill could take the shim that records the exits.
/// containerd's shims are in system.slice too (inside containerd.service).
pub const SCOPE_SLICE: &str = "system.slice";
/// Runs a command in a new transient scope; on every systemd node.
const SYSTEMD_RUN: &str = "systemd-run";
/// The longest systemd unit name.
const UNIT_NAME_MAX: usize = 255;

/// The transient scope unit the shim of pod `id` serves from with the systemd cgroup driver.
pub fn scope_unit(id: &str) -> String {
    format!("berth-shim-{id}.scope")
}

fn valid_unit_part(id: &str) -> bool {
    !id.is_empty()
        && scope_unit(id).len() <= UNIT_NAME_MAX
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// What a service manager sets for the unit that runs berthd (systemd.exec(5)) and must not reach
/// a shim that outlives it: the notify and watchdog channels (runc would proxy sd_notify for a
/// container), socket activation, and the unit's identity, journal stream, pressure file and
/// credentials, which all belong to berthd's unit.
const SERVICE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    "SYSTEMD_EXEC_PID",
    "MAINPID",
    "MANAGERPID",
    "JOURNAL_STREAM",
    "MEMORY_PRESSURE_WATCH",
    "MEMORY_PRESSURE_WRITE",
    "CREDENTIALS_DIRECTORY",
];

/// The command that becomes the serving shim: `<exe> serve <config>`, with the systemd cgroup
/// driver through `systemd-run --scope`, which asks systemd (over its private socket when root, no
/// dbus-daemon needed) for the shim's own scope in [`SCOPE_SLICE`], moves itself there and execs
/// the shim. So the shim and the runtimes it runs leave the launcher's cgroup (berthd's unit, whose
/// stop or restart would kill them) before they start; `--collect` lets systemd forget the scope
/// once the shim is gone, even after a kill.
fn serve_command(exe: &Path, config: &ShimConfig) -> Command {
    let mut cmd = if config.systemd_cgroup {
        let mut cmd = Command::new(SYSTEMD_RUN);
        cmd.args(["--scope", "--quiet", "--collect"])
            .arg(format!("--unit={}", scope_unit(&config.id)))
            .arg(format!("--slice={SCOPE_SLICE}"))
            .arg(format!("--description=berth shim of pod {}", config.id))
            .arg("--")
            .arg(exe);
        cmd
    } else {
        Command::new(exe)
    };
    cmd.arg("serve").args(config.to_args());
    for var in SERVICE_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// The last line of the shim's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no log").trim().to_string()
}

/// A synchronous Ping, for `start` (which has no runtime).
fn ping_blocking(socket: &Path) -> Result<proto::PingResponse> {
    let io = |e| Error::with_source(ErrorKind::Unavailable, format!("pinging {}", socket.display()), e);
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(io)?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).map_err(io)?;
    let request = proto::Request { call: Some(proto::request::Call::Ping(proto::PingRequest {})) };
    stream.write_all(&request.encode_length_delimited_to_vec()).map_err(io)?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).map_err(io)?;
    let response = proto::Response::decode_length_delimited(bytes.as_slice()).map_err(|e| {
        Error::with_source(ErrorKind::Unavailable, format!("pinging {}", socket.display()), e)
    })?;
    match response.result {
        Some(proto::response::Result::Ping(p)) if response.code == proto::Code::Ok as i32 => Ok(p),
        _ => Err(Error::unavailable(format!("pinging {}: {}", socket.display(), response.error))),
    }
}

/// `berth-shim serve`: takes the process over and serves until a Shutdown succeeds. It closes
/// inherited descriptors above stderr (so it must run before the process opens anything), becomes
/// the pod's subreaper, prints "ready" on stdout once the socket listens, then points stdout at
/// /dev/null (the reader, `start`, is gone by then). Removes the socket and pid file on the way out.
pub fn serve(config: ShimConfig) -> Result<()> {
    fd::close_inherited();
    nix::sys::prctl::set_child_subreaper(true).context(|| "becoming a child subreaper".to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context(|| "building the shim runtime".to_string())?;
    rt.block_on(serve_async(config))
}

async fn serve_async(config: ShimConfig) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before any child exists, so that no SIGCHLD is missed.
    let sigchld = signal(SignalKind::child()).context(|| "handling SIGCHLD".to_string())?;
    let dir = config.dir.clone();
    crate::fsutil::create_dir_all_with_mode(&dir.join("containers"), 0o700)?;
    let lock_path = dir.join(LOCK_FILE);
    let lock_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .context(|| format!("opening {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| Error::precondition(format!("another shim already serves {}", dir.display())))?;

    // Holding the lock, any socket left here is stale.
    let socket = config.socket();
    prepare_socket(&socket)?;
    // Its directory is root-only, so the moment between bind and chmod exposes nothing.
    let listener =
        tokio::net::UnixListener::bind(&socket).context(|| format!("binding {}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .context(|| format!("setting the mode of {}", socket.display()))?;
    }
    let pid_path = dir.join(PID_FILE);
    crate::fsutil::write_atomic(&pid_path, format!("{}\n", std::process::id()).as_bytes(), 0o600)?;

    let shim = server::Shim::new(config);
    tokio::spawn(shim.clone().reap_loop(sigchld));
    announce_ready()?;
    tracing::info!(pid = std::process::id(), socket = %socket.display(), "shim serving");
    shim.serve(listener).await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&pid_path);
    Ok(())
}

fn announce_ready() -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").and_then(|()| out.flush()).context(|| "announcing readiness".to_string())?;
    let null = std::fs::File::open("/dev/null").context(|| "opening /dev/null".to_string())?;
    nix::unistd::dup2_stdout(&null).context(|| "detaching stdout".to_string())
}

/// Locks a std mutex, ignoring poisoning: shim state stays usable after a panicking task.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The wire code for an error kind.
pub fn code_from_kind(kind: ErrorKind) -> proto::Code {
    use proto::Code as C;
    match kind {
        ErrorKind::NotFound => C::NotFound,
        ErrorKind::AlreadyExists => C::AlreadyExists,
        ErrorKind::InvalidArgument => C::InvalidArgument,
        ErrorKind::FailedPrecondition => C::FailedPrecondition,
        ErrorKind::Unavailable => C::Unavailable,
        ErrorKind::DeadlineExceeded => C::DeadlineExceeded,
        ErrorKind::ResourceExhausted => C::ResourceExhausted,
        ErrorKind::PermissionDenied => C::PermissionDenied,
        ErrorKind::Unauthenticated => C::Unauthenticated,
        ErrorKind::Unimplemented => C::Unimplemented,
        ErrorKind::Cancelled => C::Cancelled,
        ErrorKind::Internal => C::Internal,
    }
}

/// The error kind for a wire code (`None` for OK); unknown codes are Internal.
pub fn kind_from_code(code: i32) -> Option<ErrorKind> {
    use proto::Code as C;
    Some(match C::try_from(code).unwrap_or(C::Internal) {
        C::Ok => return None,
        C::NotFound => ErrorKind::NotFound,
        C::AlreadyExists => ErrorKind::AlreadyExists,
        C::InvalidArgument => ErrorKind::InvalidArgument,
        C::FailedPrecondition => ErrorKind::FailedPrecondition,
        C::Unavailable => ErrorKind::Unavailable,
        C::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        C::ResourceExhausted => ErrorKind::ResourceExhausted,
        C::PermissionDenied => ErrorKind::PermissionDenied,
        C::Unauthenticated => ErrorKind::Unauthenticated,
        C::Unimplemented => ErrorKind::Unimplemented,
        C::Cancelled => ErrorKind::Cancelled,
        C::Internal => ErrorKind::Internal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(ShimCommand, ShimConfig)> {
        ShimConfig::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn arguments_parse_and_round_trip() {
        let (cmd, config) = parse(&[
            "start",
            "--id",
            "pod1",
            "--dir=/run/berth/pods/pod1",
            "--runtime",
            "runc",
            "--runtime-root",
            "/run/berth/runtime/runc",
            "--runtime-arg",
            "--systemd-cgroup",
            "--runtime-arg=--debug",
            "--log-line-max",
            "100",
        ])
        .unwrap();
        assert_eq!(cmd, ShimCommand::Start);
        assert_eq!(config.id, "pod1");
        assert_eq!(config.dir, Path::new("/run/berth/pods/pod1"));
        assert_eq!(config.runtime_args, ["--systemd-cgroup", "--debug"]);
        assert_eq!(config.log_line_max, 100);
        assert_eq!(config.socket(), Path::new("/run/berth/pods/pod1/shim.sock"));
        let again = ShimConfig::parse(std::iter::once("serve".into()).chain(config.to_args())).unwrap();
        assert_eq!(again, (ShimCommand::Serve, config));
    }

    #[test]
    fn systemd_cgroup_round_trips_and_needs_a_unit_name() {
        let base = ["serve", "--id", "0123abcd", "--dir", "/d", "--runtime", "runc"];
        let (_, config) = parse(&[&base[..], &["--systemd-cgroup"]].concat()).unwrap();
        assert!(config.systemd_cgroup);
        assert!(config.to_args().contains(&"--systemd-cgroup".into()));
        let again = ShimConfig::parse(std::iter::once("serve".into()).chain(config.to_args())).unwrap();
        assert_eq!(again.1, config);
        let (_, plain) = parse(&base).unwrap();
        assert!(!plain.systemd_cgroup && !plain.to_args().contains(&"--systemd-cgroup".into()));
        assert!(parse(&[&base[..], &["--systemd-cgroup=false"]].concat()).is_err());
        // The id becomes part of a unit name with the systemd driver only.
        let odd = ["serve", "--id", "a/b c", "--dir", "/d", "--runtime", "runc"];
        assert!(parse(&odd).is_ok());
        let err = parse(&[&odd[..], &["--systemd-cgroup"]].concat()).unwrap_err();
        assert!(err.to_string().contains("systemd unit"), "{err}");
        let long = "a".repeat(250);
        assert!(
            parse(&["serve", "--id", &long, "--dir", "/d", "--runtime", "r", "--systemd-cgroup"]).is_err()
        );
    }

    #[test]
    fn systemd_shims_serve_from_their_own_scope_in_system_slice() {
        let (_, mut config) =
            parse(&["start", "--id", "0123abcd", "--dir", "/run/berth/pods/0123abcd", "--runtime", "runc"])
                .unwrap();
        let exe = Path::new("/usr/local/bin/berth-shim");
        let args =
            |cmd: &Command| cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>();

        let plain = serve_command(exe, &config);
        assert_eq!(plain.get_program(), exe);
        let mut expected = vec!["serve".to_string()];
        expected.extend(config.to_args().iter().map(|a| a.to_string_lossy().into_owned()));
        assert_eq!(args(&plain), expected);

        config.systemd_cgroup = true;
        let scoped = serve_command(exe, &config);
        assert_eq!(scoped.get_program(), "systemd-run");
        let mut expected: Vec<String> = [
            "--scope",
            "--quiet",
            "--collect",
            "--unit=berth-shim-0123abcd.scope",
            "--slice=system.slice",
            "--description=berth shim of pod 0123abcd",
            "--",
            "/usr/local/bin/berth-shim",
            "serve",
        ]
        .map(String::from)
        .to_vec();
        expected.extend(config.to_args().iter().map(|a| a.to_string_lossy().into_owned()));
        assert_eq!(args(&scoped), expected);
        assert_eq!(expected.last().map(String::as_str), Some("--systemd-cgroup"));

        for cmd in [plain, scoped] {
            let removed: Vec<_> = cmd
                .get_envs()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect();
            for var in [
                "NOTIFY_SOCKET",
                "LISTEN_FDS",
                "LISTEN_PID",
                "INVOCATION_ID",
                "WATCHDOG_USEC",
                "JOURNAL_STREAM",
            ] {
                assert!(removed.iter().any(|r| r == var), "{var} reaches the shim");
            }
        }
    }

    #[test]
    fn sockets_too_long_for_their_dir_move_to_the_short_dir() {
        let long = Path::new("/tmp/a-rather-long-state-directory/state/pods")
            .join("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        let socket = socket_path(&long, SOCKET_NAME);
        assert_eq!(socket.parent(), Some(Path::new(SHORT_SOCKET_DIR)));
        let name = socket.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with("-shim.sock") && name.len() == 32 + "-shim.sock".len(), "{name}");
        assert_eq!(socket, socket_path(&long, SOCKET_NAME), "both ends compute the same path");
        let other = socket_path(
            &long.with_file_name("another-pod-id-of-sixty-four-characters-0123456789abcdef0"),
            SOCKET_NAME,
        );
        assert_ne!(socket, other);
        let console = socket_path(&long, "console-7.sock");
        assert_ne!(socket, console);
        assert!(console.as_os_str().len() <= MAX_SOCKET_PATH);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let base = ["serve", "--id", "p", "--dir", "/d", "--runtime", "runc"];
        assert_eq!(parse(&base).unwrap().1.log_line_max, DEFAULT_LOG_LINE_MAX);
        assert!(parse(&["run"]).is_err());
        assert!(parse(&base[..5]).unwrap_err().to_string().contains("--runtime"));
        assert!(parse(&[&base[..], &["--log-line-max", "0"]].concat()).is_err());
        assert!(parse(&[&base[..], &["--bogus"]].concat()).is_err());
        assert!(parse(&[&base[..], &["--runtime-arg"]].concat()).is_err());
        assert!(parse(&["serve", "--id", "p", "--dir", "rel", "--runtime", "runc"]).is_err());
    }

    #[test]
    fn every_kind_survives_the_wire() {
        use ErrorKind::*;
        for kind in [
            NotFound,
            AlreadyExists,
            InvalidArgument,
            FailedPrecondition,
            Unavailable,
            DeadlineExceeded,
            ResourceExhausted,
            PermissionDenied,
            Unauthenticated,
            Unimplemented,
            Cancelled,
            Internal,
        ] {
            assert_eq!(kind_from_code(code_from_kind(kind) as i32), Some(kind));
        }
        assert_eq!(kind_from_code(0), None);
        assert_eq!(kind_from_code(999), Some(Internal));
    }

    #[test]
    fn ping_of_a_missing_socket_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let err = ping_blocking(&dir.path().join(SOCKET_NAME)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }
}
