//! The node as the installer sees it: files under a root (`/host` in the DaemonSet pod, `/` in the
//! host unit, a temporary directory in tests) and commands run in the host's mount namespace.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Runs host commands (`systemctl`, `systemd-run`).
pub trait Runner {
    /// Runs `argv` on the host; returns its stdout, or an error naming the command and its stderr.
    fn run(&self, argv: &[&str]) -> Result<String>;
}

/// Where the host's files are and how to run its commands.
pub struct Host {
    pub root: PathBuf,
    pub runner: Box<dyn Runner>,
}

impl Host {
    /// The host path `abs` (absolute) under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub fn read(&self, abs: &str) -> Result<Option<Vec<u8>>> {
        match fs::read(self.path(abs)) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {abs}")),
        }
    }

    pub fn read_string(&self, abs: &str) -> Result<Option<String>> {
        Ok(self.read(abs)?.map(|d| String::from_utf8_lossy(&d).into_owned()))
    }

    /// Writes `data` when it differs from what is there; says whether it wrote.
    pub fn write_if_changed(&self, abs: &str, data: &[u8], mode: u32) -> Result<bool> {
        let path = self.path(abs);
        let same_mode = fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
        if same_mode && self.read(abs)?.as_deref() == Some(data) {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_atomic(&path, data, mode).with_context(|| format!("writing {abs}"))?;
        Ok(true)
    }

    pub fn remove(&self, abs: &str) -> Result<bool> {
        match fs::remove_file(self.path(abs)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {abs}")),
        }
    }

    /// Removes the empty directories under `abs`, and `abs` itself when it ends up empty; files and
    /// the directories holding them stay.
    pub fn prune(&self, abs: &str) -> Result<()> {
        fn walk(dir: &Path) -> std::io::Result<()> {
            for e in fs::read_dir(dir)? {
                let e = e?;
                if e.file_type()?.is_dir() {
                    walk(&e.path())?;
                }
            }
            match fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) => Ok(()),
                r => r,
            }
        }
        match walk(&self.path(abs)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.with_context(|| format!("removing the empty directories of {abs}")),
        }
    }

    /// Removes a directory tree, refusing (and removing nothing) while anything is mounted at or
    /// below it: a container's rootfs left mounted would otherwise lose its files.
    pub fn remove_tree(&self, abs: &str) -> Result<()> {
        let dir = self.path(abs);
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let mounted: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&dir))
            .collect();
        if !mounted.is_empty() {
            bail!("{abs} still has mounts ({}): left in place", mounted.join(", "));
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.with_context(|| format!("removing {abs}")),
        }
    }

    pub fn exists(&self, abs: &str) -> bool {
        fs::symlink_metadata(self.path(abs)).is_ok()
    }

    pub fn run(&self, argv: &[&str]) -> Result<String> {
        self.runner.run(argv)
    }

    /// `systemctl is-active UNIT` (no error: inactive, failed or unknown are all "not active").
    pub fn is_active(&self, unit: &str) -> bool {
        self.run(&["systemctl", "is-active", "--quiet", unit]).is_ok()
    }
}

/// temp file + fsync + rename, created with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_file_name(format!(
        ".{}.berth-install-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(data)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    Ok(())
}

/// Runs commands directly (the installer is already in the host's mount namespace).
pub struct Direct;

impl Runner for Direct {
    fn run(&self, argv: &[&str]) -> Result<String> {
        run_command(Command::new(argv[0]).args(&argv[1..]), argv)
    }
}

/// Runs commands in the mount namespace of the host's PID 1 (the pod has `hostPID`): the installer
/// re-executes itself as `berth-install host-exec -- ARGV`, which enters the namespace while it is
/// still single-threaded and then executes ARGV from the host's PATH.
pub struct HostNamespace;

impl Runner for HostNamespace {
    fn run(&self, argv: &[&str]) -> Result<String> {
        let exe = std::env::current_exe().context("finding the installer's own binary")?;
        run_command(Command::new(exe).arg("host-exec").arg("--").args(argv), argv)
    }
}

/// The `host-exec` half of [`HostNamespace`]: enter PID 1's mount namespace and execute `argv`.
pub fn host_exec(argv: &[String]) -> Result<std::convert::Infallible> {
    let ns = fs::File::open("/proc/1/ns/mnt").context("opening /proc/1/ns/mnt (is the pod hostPID?)")?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)
        .context("entering the host's mount namespace")?;
    let Some(cmd) = argv.first() else { bail!("host-exec: no command") };
    let err = std::os::unix::process::CommandExt::exec(
        Command::new(cmd)
            .args(&argv[1..])
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    );
    Err(err).with_context(|| format!("executing {cmd} on the host"))
}

fn run_command(cmd: &mut Command, argv: &[&str]) -> Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{} failed ({}): {}", argv.join(" "), out.status, err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A host-wide lock (`flock` on a file under the host's /run/lock), held while it lives.
pub struct HostLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

impl HostLock {
    pub fn acquire(host: &Host, timeout: Duration) -> Result<HostLock> {
        let path = host.path(super::LOCK);
        if let Some(d) = path.parent() {
            fs::create_dir_all(d)?;
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(HostLock { _lock: lock }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err((_, e)) => bail!("locking {} (another berth-install is running?): {e}", path.display()),
            }
        }
    }
}

/// A recording runner for tests: answers `systemctl is-active` from a set of active units.
#[cfg(test)]
pub struct Fake {
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub active: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    pub fail: Option<String>,
}

#[cfg(test)]
impl Runner for Fake {
    fn run(&self, argv: &[&str]) -> Result<String> {
        let line = argv.join(" ");
        self.log.lock().unwrap().push(line.clone());
        if self.fail.as_deref().is_some_and(|f| line.contains(f)) {
            bail!("{line} failed (fake)");
        }
        let mut active = self.active.lock().unwrap();
        match argv {
            ["systemctl", "is-active", "--quiet", unit] => {
                if active.contains(*unit) {
                    Ok(String::new())
                } else {
                    bail!("inactive")
                }
            }
            ["systemctl", "restart" | "start", unit] => {
                active.insert(unit.to_string());
                Ok(String::new())
            }
            ["systemctl", "stop", unit] => {
                active.remove(*unit);
                Ok(String::new())
            }
            ["systemctl", "disable", "--now", unit] => {
                active.remove(*unit);
                Ok(String::new())
            }
            ["systemctl", "enable", "--now", unit] => {
                active.insert(unit.to_string());
                Ok(String::new())
            }
            _ => Ok(String::new()),
        }
    }
}
