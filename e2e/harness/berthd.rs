//! A real `berthd` process per test: its own root, state, socket and `certs.d` in a temp dir, its
//! configuration written from berth's own [`Config`] type (so a test adjusts typed fields and the file
//! always matches the schema), its output captured to a log that is printed (and kept in
//! `<tmp>/berth-e2e-failed/`) when the test fails. A berthd can get a pod network of its own
//! ([`Berthd::with_network`]) and hands out kubelet-shaped pod configs ([`Berthd::pod`]) whose cgroups
//! sit under a cgroup root of its own. Dropping it first stops and removes every pod through CRI (a
//! berthd killed by the test is started again for that), then force-deletes whatever runc still runs
//! from its state and kills what is left of its shims, removes its cgroup root, stops berthd and
//! unmounts whatever is left under its directories before deleting them. This module must never touch
//! paths, processes or cgroups that are not this berthd's, and must never leave a berthd or a pod
//! running after its [`Berthd`] is gone.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth::config::Config;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cri::Cri;
use super::net::{CNI_BIN, PodNet};
use super::pod::PodConfig;
use super::registry::Registry;

/// How long berthd may take to accept on its socket after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long berthd may take to exit after SIGTERM (its drain grace is 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// berthd's command line for a configuration file: the one place that knows its flag names.
fn berthd_args(config: &Path) -> Vec<OsString> {
    vec!["--config".into(), config.into()]
}

/// A berthd under test.
pub struct Berthd {
    dir: PathBuf,
    /// The configuration written before each start; adjust it before [`Berthd::start`].
    pub config: Config,
    binary: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
    cgroup_root: String,
    /// Dropped after berthd is stopped (fields drop after `Drop::drop`).
    net: Option<PodNet>,
}

impl Berthd {
    /// A berthd that is not started yet, configured for a temp dir: `root`, `state`, the socket in
    /// `state`, `certs.d` and a (missing) docker auth file of its own, a 1 min pull progress timeout,
    /// and debug logs from berth itself.
    pub fn new() -> Berthd {
        super::require_prerequisites();
        // Long enough that <state>/pods/<64 hex>/shim.sock exceeds sun_path's 107 bytes: every pod
        // scenario also proves the shim sockets' fallback under /run/berth/s.
        let dir = super::temp_dir("berth-e2e-run-");
        let mut config = Config { root: dir.join("root"), state: dir.join("state"), ..Config::default() };
        config.grpc.address = dir.join("state/berth.sock");
        config.cri.registry.config_path = dir.join("certs.d");
        config.cri.registry.auth_file = dir.join("docker-config.json");
        config.cri.image_pull_progress_timeout = Duration::from_secs(60);
        config.debug.level = "info,berth=debug".into();
        let log = dir.join("berthd.log");
        let cgroup_root = dir.file_name().and_then(|n| n.to_str()).unwrap_or("berth-e2e").to_string();
        Berthd {
            dir,
            config,
            binary: env!("CARGO_BIN_EXE_berthd").into(),
            child: None,
            log,
            starts: 0,
            cgroup_root,
            net: None,
        }
    }

    /// A berthd (not started) with a pod network of its own ([`PodNet`]): the conflist in
    /// `<dir>/net.d`, Debian's CNI plugins from /usr/lib/cni.
    pub fn with_network() -> Berthd {
        let mut b = Berthd::new();
        let net = PodNet::claim();
        b.config.cni.conf_dir = b.dir.join("net.d");
        b.config.cni.bin_dirs = vec![CNI_BIN.into()];
        net.write_conflist(&b.config.cni.conf_dir);
        b.net = Some(net);
        b
    }

    /// [`Berthd::with_network`] trusting `registries`, started.
    pub fn started_with_network(registries: &[&Registry]) -> Berthd {
        let mut b = Berthd::with_network();
        for r in registries {
            b.trust(r);
        }
        b.start();
        b
    }

    /// The pod network, if this berthd has one.
    pub fn net(&self) -> Option<&PodNet> {
        self.net.as_ref()
    }

    /// The cgroup (relative to each hierarchy's root) under which [`Berthd::pod`] puts pods.
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// A kubelet-shaped pod config (see [`PodConfig::new`]) whose cgroup parent is
    /// `/<cgroup root>/pod<uid>`, as the kubelet's `/kubepods/besteffort/pod<uid>`.
    pub fn pod(&self, name: &str) -> PodConfig {
        let pod = PodConfig::new(name);
        let parent = format!("/{}/pod{}", self.cgroup_root, pod.uid());
        pod.cgroup_parent(&parent)
    }

    /// Puts a wrapper of the CNI plugin `plugin` first in `bin_dirs`: a shell script that runs
    /// `prelude` (with the CNI environment, e.g. `[ "$CNI_COMMAND" = ADD ] && sleep 3`) and then the
    /// real plugin from /usr/lib/cni. Takes effect at the next start.
    pub fn wrap_cni_plugin(&mut self, plugin: &str, prelude: &str) {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.dir.join("cni-wrap");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let path = dir.join(plugin);
        let script = format!("#!/bin/sh\n{prelude}\nexec {CNI_BIN}/{plugin} \"$@\"\n");
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        if !self.config.cni.bin_dirs.contains(&dir) {
            self.config.cni.bin_dirs.insert(0, dir);
        }
    }

    /// Adds the runtime handler `name` whose binary is the shell script `script` (written to this
    /// berthd's dir, executable), usually a wrapper that ends in `exec runc "$@"`. Takes effect at
    /// the next start.
    pub fn add_runtime_script(&mut self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(format!("runtime-{name}.sh"));
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        let handler = berth::config::RuntimeHandler { binary: path, ..Default::default() };
        self.config.runtimes.handlers.insert(name.to_string(), handler);
    }

    /// A berthd that trusts `registries` (see [`Berthd::trust`]), started.
    pub fn started(registries: &[&Registry]) -> Berthd {
        let mut b = Berthd::new();
        for r in registries {
            b.trust(r);
        }
        b.start();
        b
    }

    /// Has berthd serve its metrics on a free port of 127.0.0.1 from the next start; returns the port.
    pub fn serve_metrics(&mut self) -> u16 {
        let port = super::net::free_port();
        self.config.metrics.address = format!("127.0.0.1:{port}");
        port
    }

    /// berth's persistent root.
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// berth's state directory.
    pub fn state(&self) -> &Path {
        &self.config.state
    }

    /// The temp dir holding root, state, certs.d, the config file and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.config.grpc.address
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything berthd wrote to stdout and stderr so far (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Writes `<certs.d>/<host>/hosts.toml`.
    pub fn write_hosts_toml(&self, host: &str, toml: &str) {
        let dir = self.config.cri.registry.config_path.join(host);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let path = dir.join("hosts.toml");
        std::fs::write(&path, toml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Makes berth reach `registry` under its own name: its hosts.toml (scheme, and CA for TLS).
    pub fn trust(&self, registry: &Registry) {
        self.write_hosts_toml(&registry.host(), &registry.hosts_toml());
    }

    /// Writes the config file, spawns berthd and waits until its socket accepts; panics with the log if
    /// it exits or does not accept within 30 s.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "berthd is already running");
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// [`Berthd::start`] returning the failure instead of panicking (for use in `Drop`).
    fn try_start(&mut self) -> Result<(), String> {
        let config_path = self.dir.join("config.toml");
        std::fs::write(&config_path, self.config.dump())
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("opening {}: {e}", self.log.display()))?;
        let _ = writeln!(log, "=== berth-e2e: start #{} of {} ===", self.starts, self.binary.display());
        let stderr = log.try_clone().map_err(|e| format!("cloning the log file handle: {e}"))?;
        let child = Command::new(&self.binary)
            .args(berthd_args(&config_path))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!(
                    "berthd exited ({status}) before accepting on its socket; log:\n{}",
                    self.log()
                ));
            }
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "berthd did not accept on {} within {START_TIMEOUT:?}; log:\n{}",
                    self.socket().display(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A CRI client connected to this berthd.
    pub async fn cri(&self) -> Cri {
        Cri::connect(self.socket()).await.unwrap_or_else(|e| {
            panic!("connecting to {}: {e}; log:\n{}", self.socket().display(), self.log())
        })
    }

    /// SIGKILL, as a crash or an OOM kill would; waits for the process to be gone.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("berthd is not running");
        child.kill().unwrap_or_else(|e| panic!("killing berthd: {e}"));
        child.wait().unwrap_or_else(|e| panic!("waiting for berthd: {e}"))
    }

    /// SIGTERM and wait (at most 30 s, then SIGKILL and panic): a clean shutdown. Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("berthd is not running");
        match terminate(&mut child, STOP_TIMEOUT) {
            Some(status) => status,
            None => panic!("berthd did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}", self.log()),
        }
    }

    /// Stops berthd (if running) and starts it again on the same directories and configuration.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(status.success(), "berthd exited with {status} on SIGTERM; log:\n{}", self.log());
        }
        self.start();
    }
}

/// SIGTERM, then wait up to `timeout`; SIGKILL and `None` if it is still running then.
fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long Drop's "stop and remove every pod" may take.
const REMOVE_PODS_TIMEOUT: Duration = Duration::from_secs(120);

/// Stops and removes every pod sandbox through CRI, as the kubelet would for deleted pods. Runs on a
/// thread with a runtime of its own, since Drop may run inside (or outside) a tokio runtime.
fn remove_all_pods(socket: &Path) -> Result<usize, String> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("building a runtime: {e}"))?;
        rt.block_on(async {
            tokio::time::timeout(REMOVE_PODS_TIMEOUT, async {
                use berth::cri::api::{
                    ListPodSandboxRequest, RemovePodSandboxRequest, StopPodSandboxRequest,
                };
                let mut cri = Cri::connect(&socket).await.map_err(|e| format!("connecting: {e}"))?;
                let pods = cri
                    .runtime
                    .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                    .await
                    .map_err(|e| format!("ListPodSandbox: {e}"))?
                    .into_inner()
                    .items;
                let mut errors = Vec::new();
                for p in &pods {
                    let id = p.id.clone();
                    if let Err(e) = cri
                        .runtime
                        .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() })
                        .await
                    {
                        errors.push(format!("StopPodSandbox {id}: {e}"));
                    }
                    if let Err(e) = cri
                        .runtime
                        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() })
                        .await
                    {
                        errors.push(format!("RemovePodSandbox {id}: {e}"));
                    }
                }
                if errors.is_empty() { Ok(pods.len()) } else { Err(errors.join("; ")) }
            })
            .await
            .map_err(|_| format!("removing the pods took more than {REMOVE_PODS_TIMEOUT:?}"))?
        })
    })
    .join()
    .map_err(|_| "the pod removal thread panicked".to_string())?
}

impl Berthd {
    /// Whether berthd's state holds any pod (a shim's directory or a sandbox's).
    fn has_pods(&self) -> bool {
        ["pods", "sandboxes"].iter().any(|d| {
            std::fs::read_dir(self.state().join(d)).map(|mut rd| rd.next().is_some()).unwrap_or(false)
        })
    }

    /// What a failed test may leave behind that CRI could not remove: containers runc still knows in
    /// berthd's runtime roots (force-deleted), shims and container processes (SIGKILLed), and the
    /// cgroup root (removed). Returns what it had to do.
    fn force_cleanup(&self) -> Vec<String> {
        let mut done = Vec::new();
        let roots = std::fs::read_dir(self.state().join("runtime"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for root in roots {
            let Ok(out) = Command::new("runc").arg("--root").arg(&root).args(["list", "-q"]).output() else {
                continue;
            };
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ =
                    Command::new("runc").arg("--root").arg(&root).args(["delete", "--force", id]).output();
                done.push(format!("runc delete --force {id}"));
            }
        }
        let procs = super::leaks::processes();
        for p in super::leaks::shims_of(self, &procs)
            .into_iter()
            .chain(super::leaks::container_processes(self, &procs))
        {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            done.push(format!("killed {} {}", p.pid, p.command()));
        }
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.filter_map(|e| e.ok()) {
                let root = h.path().join(&self.cgroup_root);
                if root.is_dir() {
                    remove_cgroup_tree(&root);
                }
            }
        }
        done
    }
}

/// Removes a cgroup directory and its children, deepest first (cgroup dirs are removed with rmdir;
/// their files are not real files). A cgroup whose last process is still exiting is retried briefly.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    eprintln!("berth-e2e: could not remove cgroup {}", dir.display());
}

impl Drop for Berthd {
    fn drop(&mut self) {
        // Every pod goes the way the kubelet removes it, so a failing test leaves nothing running;
        // a berthd the test killed is started again to do it (it recovers its pods first).
        if self.child.is_none()
            && self.has_pods()
            && let Err(e) = self.try_start()
        {
            eprintln!("berth-e2e: restarting berthd to remove its pods: {e}");
        }
        if self.child.is_some() {
            match remove_all_pods(self.socket()) {
                Ok(0) => {}
                Ok(n) => eprintln!("berth-e2e: removed {n} pod(s) the test left"),
                Err(e) => eprintln!("berth-e2e: removing the pods the test left: {e}"),
            }
        }
        if let Some(mut child) = self.child.take()
            && terminate(&mut child, Duration::from_secs(15)).is_none()
        {
            eprintln!("berth-e2e: berthd ignored SIGTERM for 15 s and was killed");
        }
        if std::thread::panicking() {
            let failed = std::env::temp_dir().join("berth-e2e-failed");
            let kept = failed
                .join(format!("{}.log", self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("berthd")));
            let _ = std::fs::create_dir_all(&failed).and_then(|_| std::fs::copy(&self.log, &kept));
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(300)..].join("\n");
            eprintln!(
                "---- berthd log (last 300 lines; whole log kept in {}) ----\n{tail}\n----",
                kept.display()
            );
        }
        let forced = self.force_cleanup();
        if !forced.is_empty() {
            eprintln!("berth-e2e: force-cleaned what CRI did not remove: {forced:?}");
        }
        let unmounted = super::fs::unmount_all_under(&self.dir);
        if !unmounted.is_empty() {
            eprintln!("berth-e2e: unmounted what berthd left mounted: {unmounted:?}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("berth-e2e: removing {}: {e}", self.dir.display());
        }
    }
}

/// The signal that ended a process, if one did.
/// Runs berthctl against `socket`; panics unless it succeeds. Returns its standard output.
pub fn berthctl(socket: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .expect("running berthctl");
    assert!(
        out.status.success(),
        "berthctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// [`berthctl`] with `-o json`, the output parsed.
pub fn berthctl_json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let text = berthctl(socket, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("berthctl {args:?}: not JSON ({e}): {text}"))
}

pub fn killed_by(status: ExitStatus) -> Option<i32> {
    status.signal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn berthd_starts_answers_cri_and_stops_cleanly() {
        let mut b = Berthd::new();
        b.start();
        let written = std::fs::read_to_string(b.dir().join("config.toml")).unwrap();
        assert_eq!(Config::parse(&written).unwrap(), b.config);
        let mut cri = b.cri().await;
        let version =
            cri.runtime.version(berth::cri::api::VersionRequest::default()).await.unwrap().into_inner();
        assert_eq!(version.runtime_api_version, "v1");
        drop(cri);
        let status = b.stop();
        assert!(status.success(), "{status}; log:\n{}", b.log());
        assert!(b.log().contains("=== berth-e2e: start #1"), "{}", b.log());
        assert!(b.pid().is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn kill9_then_restart_serves_again_from_the_same_root() {
        let mut b = Berthd::new();
        b.start();
        let first = b.pid().unwrap();
        std::fs::write(b.root().join("survivor"), b"x").unwrap();
        let status = b.kill9();
        assert_eq!(killed_by(status), Some(9));
        // The socket file is left behind by the crash; restart must not be fooled by it.
        b.restart();
        assert_ne!(b.pid(), Some(first));
        assert!(b.root().join("survivor").exists());
        let mut cri = b.cri().await;
        cri.runtime.version(berth::cri::api::VersionRequest::default()).await.unwrap();
        assert!(b.log().contains("=== berth-e2e: start #2"));
    }

    #[test]
    fn drop_stops_berthd_unmounts_and_removes_everything() {
        use nix::mount::{MsFlags, mount};
        let mut b = Berthd::new();
        b.start();
        let pid = b.pid().unwrap();
        let mnt = b.root().join("leftover-mount");
        std::fs::create_dir_all(&mnt).unwrap();
        mount(Some("tmpfs"), &mnt, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        let dir = b.dir().to_path_buf();
        drop(b);
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(super::super::fs::mounts_under(&dir).is_empty());
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "berthd {pid} still running");
    }

    #[test]
    fn start_failure_shows_berthds_own_error() {
        let mut b = Berthd::new();
        b.config.cri.max_concurrent_downloads = 0;
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.start())).unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("exited"), "{msg}");
        assert!(
            msg.contains("max_concurrent_downloads"),
            "berthd's error is not in the panic message: {msg}"
        );
    }

    #[test]
    fn hosts_toml_lands_in_the_configured_certs_dir() {
        let b = Berthd::new();
        b.write_hosts_toml("unreachable.invalid:5000", "server = \"http://x\"\n");
        let path = b.config.cri.registry.config_path.join("unreachable.invalid:5000/hosts.toml");
        assert_eq!(std::fs::read_to_string(path).unwrap(), "server = \"http://x\"\n");
        assert!(b.config.cri.registry.config_path.starts_with(b.dir()));
    }
}
