//! The pod runtime behind CRI's RuntimeService: what every sandbox and container call needs (the
//! engine, the network, the shim launcher, the spec environment, the store) and the plumbing they
//! share — the state directory layout, the per-pod shims and the watcher that turns their exit
//! events into container states. The calls themselves live in one file per family
//! (`sandbox_run.rs`, `sandbox_stop.rs`, `container_create.rs` …).
//!
//! State directory layout (`state` is tmpfs on a real node):
//!
//! ```text
//! <state>/pods/<sandbox id>/        the pod's shim (socket, pid, its container status files)
//! <state>/sandboxes/<sandbox id>/   hostname, hosts, resolv.conf, shm/ (the pod's /dev/shm),
//!                                   image-volumes/<image id>/ (read-only image mounts, image_volume.rs)
//! <state>/bundles/<container id>/   config.json and rootfs/ (the mounted snapshot); the pause too
//! <state>/netns/<sandbox id>        the pod's network namespace (bind mount)
//! <root>/cni/                       the CNI result cache (survives reboots, for DEL)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt;

use super::api;
use super::image::ImageService;
use super::spec::RuntimeEnv;
use super::spec::apparmor::AppArmor;
use super::store::{ContainerState, SandboxRecord, SandboxState, Store};
use crate::config::{CgroupDriver, Config, RuntimeHandler};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::metrics::{LogDropped, Metrics};
use crate::network::Network;
use crate::task::{ExitEvent, LaunchOptions, ShimApi, ShimLauncher};

/// How long a metrics scrape waits for a shim's list of its containers.
pub const SCRAPE_SHIM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long cleanup steps of a failed or removed object may take, apart from the request's deadline.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Label on snapshots of sandboxes and containers: which object owns it.
pub const LABEL_OWNER: &str = "berth.io/owner";

/// Where things live under `state`.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
    pub pods: PathBuf,
    pub sandboxes: PathBuf,
    pub bundles: PathBuf,
    pub netns: PathBuf,
}

impl Paths {
    pub fn new(state: &Path) -> Paths {
        Paths {
            state: state.to_path_buf(),
            pods: state.join("pods"),
            sandboxes: state.join("sandboxes"),
            bundles: state.join("bundles"),
            netns: state.join("netns"),
        }
    }
    pub fn shim_dir(&self, sandbox: &str) -> PathBuf {
        self.pods.join(sandbox)
    }
    pub fn sandbox_dir(&self, sandbox: &str) -> PathBuf {
        self.sandboxes.join(sandbox)
    }
    pub fn bundle(&self, container: &str) -> PathBuf {
        self.bundles.join(container)
    }
    pub fn rootfs(&self, container: &str) -> PathBuf {
        self.bundles.join(container).join("rootfs")
    }
    pub fn netns(&self, sandbox: &str) -> PathBuf {
        self.netns.join(sandbox)
    }
}

/// Everything the pod runtime is built from; tests pass fakes for the network and the shims.
pub struct Deps {
    pub config: Arc<Config>,
    pub engine: Arc<Engine>,
    pub images: Arc<ImageService>,
    pub network: Arc<dyn Network>,
    pub launcher: Arc<dyn ShimLauncher>,
    pub env: RuntimeEnv,
    /// The host's AppArmor (berth's default profile is loaded through it).
    pub apparmor: Arc<dyn AppArmor>,
    pub shim_binary: PathBuf,
    pub metrics: Arc<Metrics>,
}

pub struct Pods {
    pub config: Arc<Config>,
    pub engine: Arc<Engine>,
    pub images: Arc<ImageService>,
    pub network: Arc<dyn Network>,
    pub launcher: Arc<dyn ShimLauncher>,
    pub env: RuntimeEnv,
    pub apparmor: Arc<dyn AppArmor>,
    pub shim_binary: PathBuf,
    pub paths: Paths,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Samples kept between stats calls (CPU rates, writable-layer sizes).
    pub stats: crate::stats::Sampler,
    shims: Mutex<HashMap<String, Arc<dyn ShimApi>>>,
    events: tokio::sync::broadcast::Sender<api::ContainerEventResponse>,
}

/// Container events kept for subscribers that fall behind (they then miss events, as with
/// containerd; the kubelet's evented PLEG relists periodically).
pub const EVENT_BUFFER: usize = 1024;

/// Unix nanoseconds of a SystemTime (0 for none).
pub fn nanos(t: Option<std::time::SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Runs a cleanup step under its own deadline, logging (not returning) its failure.
pub async fn cleanup<F: std::future::Future<Output = Result<()>>>(what: &str, id: &str, f: F) -> bool {
    match tokio::time::timeout(CLEANUP_TIMEOUT, f).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(id, error = %e, "cleanup: {what}");
            false
        }
        Err(_) => {
            tracing::warn!(id, "cleanup: {what} timed out");
            false
        }
    }
}

/// Runs blocking work off the async workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
}

impl Pods {
    /// Builds the pod runtime and creates the state directories.
    pub fn new(deps: Deps) -> Result<Arc<Pods>> {
        let paths = Paths::new(&deps.config.state);
        for d in [&paths.pods, &paths.sandboxes, &paths.bundles, &paths.netns] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::internal(format!("creating {}: {e}", d.display())))?;
        }
        let store = Store::load(deps.engine.db.clone())?;
        Ok(Arc::new(Pods {
            config: deps.config,
            engine: deps.engine,
            images: deps.images,
            network: deps.network,
            launcher: deps.launcher,
            env: deps.env,
            apparmor: deps.apparmor,
            shim_binary: deps.shim_binary,
            paths,
            store,
            metrics: deps.metrics,
            stats: crate::stats::Sampler::default(),
            shims: Mutex::new(HashMap::new()),
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
        }))
    }

    /// The runtime handler `name` names ("" is the default one), with its resolved name.
    pub fn handler(&self, name: &str) -> Result<(String, RuntimeHandler)> {
        let name = if name.is_empty() { self.config.runtimes.default.as_str() } else { name };
        let h = self.config.runtimes.handlers.get(name).ok_or_else(|| {
            Error::not_found(format!("runtime handler {name:?} is not configured (see [runtimes.handlers])"))
        })?;
        Ok((name.to_string(), h.clone()))
    }

    /// How a pod's shim is launched.
    pub fn launch_options(
        &self,
        sandbox: &str,
        handler_name: &str,
        handler: &RuntimeHandler,
    ) -> LaunchOptions {
        let mut o =
            LaunchOptions::new(&self.shim_binary, sandbox, self.paths.shim_dir(sandbox), &handler.binary);
        o.runtime_root = Some(if handler.root.as_os_str().is_empty() {
            self.paths.state.join("runtime").join(handler_name)
        } else {
            handler.root.clone()
        });
        o.runtime_args = handler.options.clone();
        o.systemd_cgroup = self.env.cgroup_driver == CgroupDriver::Systemd;
        o.log_line_max = self.config.cri.max_container_log_line_size;
        o
    }

    /// Remembers a pod's shim and starts watching its exit events.
    pub fn adopt_shim(self: &Arc<Self>, sandbox: &str, shim: Arc<dyn ShimApi>) {
        self.shims.lock().unwrap().insert(sandbox.to_string(), shim.clone());
        let pods = self.clone();
        let sandbox = sandbox.to_string();
        tokio::spawn(async move { pods.watch(sandbox, shim).await });
    }

    /// Forgets a pod's shim (before it is shut down), which also ends its watcher.
    pub fn forget_shim(&self, sandbox: &str) -> Option<Arc<dyn ShimApi>> {
        self.shims.lock().unwrap().remove(sandbox)
    }

    /// The pod's shim, reconnecting to it if berthd does not hold a connection.
    pub async fn shim(self: &Arc<Self>, sandbox: &str) -> Result<Arc<dyn ShimApi>> {
        if let Some(s) = self.shims.lock().unwrap().get(sandbox) {
            return Ok(s.clone());
        }
        let shim = self.launcher.connect(&self.paths.shim_dir(sandbox)).await?;
        self.adopt_shim(sandbox, shim.clone());
        Ok(shim)
    }

    /// Subscribes to container lifecycle events.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<api::ContainerEventResponse> {
        self.events.subscribe()
    }

    /// The event for `container` (a container, or the sandbox itself) in `sandbox`, with the pod's
    /// current statuses. Build it before a removal, emit it after.
    pub fn event(
        &self,
        container: &str,
        sandbox: &str,
        kind: api::ContainerEventType,
    ) -> api::ContainerEventResponse {
        let pod_sandbox_status = self
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.to_string(),
                verbose: false,
            })
            .ok()
            .and_then(|r| r.status);
        let containers_statuses = self
            .store
            .containers_of(sandbox)
            .iter()
            .filter_map(|c| self.container_status_of(c).ok())
            .collect();
        api::ContainerEventResponse {
            container_id: container.to_string(),
            container_event_type: kind as i32,
            created_at: crate::engine::metadata::now_nanos(),
            pod_sandbox_status,
            containers_statuses,
        }
    }

    /// Publishes an event; nobody listening is fine, and a slow listener only lags.
    pub fn emit(&self, event: api::ContainerEventResponse) {
        let _ = self.events.send(event);
    }

    /// The record of the ready sandbox `id` (or a unique prefix of it): NotFound if unknown,
    /// FailedPrecondition if not ready.
    pub(crate) fn ready_sandbox(&self, id: &str) -> Result<SandboxRecord> {
        let rec = self.store.find_sandbox(id)?;
        if rec.state != SandboxState::Ready {
            return Err(Error::precondition(format!("pod sandbox {} is not ready", rec.id)));
        }
        Ok(rec)
    }

    /// Fills the state gauges for a scrape.
    pub fn refresh_gauges(&self, m: &Metrics) {
        let ready = self.store.sandboxes().iter().filter(|s| s.state == SandboxState::Ready).count();
        let running = self.store.containers().iter().filter(|c| c.state == ContainerState::Running).count();
        m.pods_running.set(ready as i64);
        m.containers_running.set(running as i64);
        m.shims.set(self.shims.lock().unwrap().len() as i64);
    }

    /// Brings the per-container log drop counters up to what the shims report, asking them all at
    /// once; a shim that does not answer within [`SCRAPE_SHIM_TIMEOUT`] keeps its containers' last
    /// numbers, so a hung shim delays a scrape by that much at most.
    pub async fn refresh_log_dropped(&self, m: &Metrics) {
        let shims: Vec<(String, Arc<dyn ShimApi>)> =
            self.shims.lock().unwrap().iter().map(|(id, shim)| (id.clone(), shim.clone())).collect();
        let lists = futures_util::future::join_all(shims.into_iter().map(|(sandbox, shim)| async move {
            let states = match tokio::time::timeout(SCRAPE_SHIM_TIMEOUT, shim.list()).await {
                Ok(Ok(states)) => states,
                Ok(Err(e)) => {
                    tracing::debug!(sandbox, error = %e, "listing the shim's containers for metrics");
                    Vec::new()
                }
                Err(_) => {
                    tracing::debug!(sandbox, "listing the shim's containers for metrics timed out");
                    Vec::new()
                }
            };
            states
                .into_iter()
                .map(|s| LogDropped {
                    container: s.id,
                    sandbox: sandbox.clone(),
                    records: s.log_dropped_records,
                    bytes: s.log_dropped_bytes,
                })
                .collect::<Vec<_>>()
        }))
        .await;
        let reported: Vec<LogDropped> = lists.into_iter().flatten().collect();
        // The pause is no container of the store: it never gets series (nor has it a log).
        m.update_log_dropped(&reported, |id| self.store.container(id).is_some());
    }

    fn watching(&self, sandbox: &str, shim: &Arc<dyn ShimApi>) -> bool {
        self.shims.lock().unwrap().get(sandbox).is_some_and(|s| Arc::ptr_eq(s, shim))
    }

    /// Follows a shim's exit events until the shim is forgotten or dies. After each (re)subscription
    /// the states are listed again, so an exit between two subscriptions is not missed.
    async fn watch(self: Arc<Self>, sandbox: String, shim: Arc<dyn ShimApi>) {
        loop {
            if !self.watching(&sandbox, &shim) {
                return;
            }
            if let Ok(mut events) = shim.events().await {
                self.reconcile(&sandbox, &shim).await;
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(ev) => self.on_exit(&sandbox, &ev),
                        Err(_) => break,
                    }
                }
            }
            if !self.watching(&sandbox, &shim) {
                return;
            }
            if shim.ping().await.is_err() {
                tracing::warn!(sandbox, "the pod's shim is gone");
                self.forget_shim(&sandbox);
                self.shim_gone(&sandbox).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Brings container states in line with what the shim reports.
    pub async fn reconcile(&self, sandbox: &str, shim: &Arc<dyn ShimApi>) {
        let Ok(states) = shim.list().await else { return };
        // Running containers the shim does not know any more have an unknown fate.
        for c in self.store.containers_of(sandbox) {
            if c.state == ContainerState::Running && !states.iter().any(|s| s.id == c.id) {
                let ev = ExitEvent {
                    id: c.id.clone(),
                    pid: c.pid,
                    exit_code: 255,
                    exited_at: None,
                    oom_killed: false,
                };
                self.on_exit(sandbox, &ev);
            }
        }
        for s in &states {
            // Started by a StartContainer that berthd did not live to record (and maybe exited since).
            if matches!(
                s.status,
                crate::task::ContainerStatus::Running | crate::task::ContainerStatus::Stopped
            ) && s.id != sandbox
            {
                let _ = self.store.update_container(&s.id, |r| {
                    if r.state == ContainerState::Created {
                        r.state = ContainerState::Running;
                        r.pid = s.pid;
                        r.started_at = nanos(s.started_at).max(r.created_at);
                    }
                });
            }
        }
        for s in states {
            if s.status == crate::task::ContainerStatus::Stopped {
                let ev = ExitEvent {
                    id: s.id.clone(),
                    pid: s.pid,
                    exit_code: s.exit_code,
                    exited_at: s.exited_at,
                    oom_killed: s.oom_killed,
                };
                self.on_exit(sandbox, &ev);
            }
        }
    }

    /// Records an exit: of the pause (the sandbox is no longer ready) or of a container.
    pub fn on_exit(&self, sandbox: &str, ev: &ExitEvent) {
        if ev.id == sandbox {
            // Decided under the store's lock: the shim's exit event and StopPodSandbox may both
            // report this exit, and only the one that moves the sandbox out of Ready sends the event.
            let mut was_ready = false;
            let _ = self.store.update_sandbox(sandbox, |r| {
                if r.state == SandboxState::Ready {
                    r.state = SandboxState::NotReady;
                    was_ready = true;
                }
                r.pid = 0;
            });
            if was_ready {
                self.emit(self.event(sandbox, sandbox, api::ContainerEventType::ContainerStoppedEvent));
            }
            return;
        }
        // Still Created: StartContainer has not recorded the start yet (an instant exit raced it), or
        // berthd died in between. The exit is recorded either way; its event is StartContainer's to
        // send after STARTED, so that the kubelet never sees a container stop before it started.
        // Decided under the store's lock, as for the pause: of two reports of one exit (the shim's
        // event and a Stop waiting for it), only the one that records it sends the event.
        let mut stopped_now = false;
        let _ = self.store.update_container(&ev.id, |r| {
            if matches!(r.state, ContainerState::Running | ContainerState::Created | ContainerState::Unknown)
            {
                stopped_now = matches!(r.state, ContainerState::Running | ContainerState::Unknown);
                r.state = ContainerState::Exited;
                r.exit_code = ev.exit_code;
                r.finished_at = nanos(ev.exited_at).max(r.started_at);
                if r.finished_at == 0 {
                    r.finished_at = crate::engine::metadata::now_nanos();
                }
                r.reason = exit_reason(ev.exit_code, ev.oom_killed).into();
            }
        });
        if stopped_now {
            self.emit(self.event(&ev.id, sandbox, api::ContainerEventType::ContainerStoppedEvent));
        }
    }

    /// The pod's shim died (or vanished with a reboot). What it ran would keep running, reparented
    /// to init, while berth reports it gone and the kubelet starts it again elsewhere: so first
    /// `berth-shim cleanup` ends it (through the OCI runtime, which also removes its cgroups), as
    /// containerd's shim `delete` does; then running containers are recorded as exited with what
    /// is recorded on disk, else as Unknown-fated exits. Idempotent, and safe to repeat from Stop
    /// and Remove when an earlier cleanup failed.
    pub async fn shim_gone(self: &Arc<Self>, sandbox: &str) {
        if let Some(rec) = self.store.sandbox(sandbox) {
            match self.handler(&rec.runtime_handler) {
                Ok((name, handler)) => {
                    let opts = self.launch_options(sandbox, &name, &handler);
                    if let Err(e) = self.launcher.cleanup(&opts).await {
                        tracing::warn!(sandbox, error = %e, "ending what the pod's dead shim ran");
                    }
                }
                Err(e) => tracing::warn!(sandbox, error = %e, "ending what the pod's dead shim ran"),
            }
        }
        let recorded = crate::task::recorded_states(&self.paths.shim_dir(sandbox)).unwrap_or_default();
        for c in self.store.containers_of(sandbox) {
            if !matches!(c.state, ContainerState::Running | ContainerState::Created) {
                continue;
            }
            let stopped =
                recorded.iter().find(|r| r.id == c.id && r.status == crate::task::ContainerStatus::Stopped);
            let ev = match stopped {
                Some(r) => ExitEvent {
                    id: c.id.clone(),
                    pid: r.pid,
                    exit_code: r.exit_code,
                    exited_at: r.exited_at,
                    oom_killed: r.oom_killed,
                },
                None => ExitEvent {
                    id: c.id.clone(),
                    pid: c.pid,
                    exit_code: crate::shim::reclaim::UNKNOWN,
                    exited_at: None,
                    oom_killed: false,
                },
            };
            self.on_exit(sandbox, &ev);
            let message = match stopped {
                Some(r) if r.reclaimed && r.exit_code == crate::shim::reclaim::KILLED => Some((
                    "Error",
                    "the pod's shim died while the container was running: berth killed the container",
                )),
                Some(r) if !r.reclaimed => None,
                _ => Some((
                    "Unknown",
                    "the pod's shim died while the container was running: its exit status is lost",
                )),
            };
            if let Some((reason, message)) = message {
                let _ = self.store.update_container(&c.id, |r| {
                    r.reason = reason.into();
                    r.message = message.into();
                });
            }
        }
        let _ = self.store.update_sandbox(sandbox, |r| {
            if r.state == SandboxState::Ready {
                r.state = SandboxState::NotReady;
            }
            r.pid = 0;
        });
    }
}

/// The reason a container exited, as containerd reports it.
pub fn exit_reason(exit_code: i32, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// The namespace options of a sandbox config (defaults when absent).
pub fn namespace_options(config: &api::PodSandboxConfig) -> api::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

pub fn host_network(config: &api::PodSandboxConfig) -> bool {
    namespace_options(config).network == api::NamespaceMode::Node as i32
}

pub fn host_ipc(config: &api::PodSandboxConfig) -> bool {
    namespace_options(config).ipc == api::NamespaceMode::Node as i32
}

impl Pods {
    /// Runs a creation under a reserved name (see `store`): the work runs in its own task so that a
    /// client giving up does not cut it half way, a concurrent or retried request for the same name
    /// gets the same outcome, and a name already answered for gives AlreadyExists.
    pub async fn create_once<F>(
        self: &Arc<Self>,
        what: &str,
        name: String,
        id: String,
        work: F,
    ) -> Result<String>
    where
        F: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        use super::store::Reservation;
        let (mut done, holder, delivered) = match self.store.reserve(&name, &id) {
            Reservation::Fresh(tx) => {
                let rx = tx.subscribe();
                let pods = self.clone();
                let (name2, id2) = (name.clone(), id.clone());
                tokio::spawn(async move {
                    let r = work.await;
                    if r.is_err() {
                        pods.store.release(&name2, &id2);
                    }
                    let _ = tx.send(Some(r.map(|()| id2).map_err(|e| (e.kind(), e.to_string()))));
                });
                (rx, None, false)
            }
            Reservation::Existing { id, done, delivered } => (done, Some(id), delivered),
        };
        let outcome = loop {
            if let Some(o) = done.borrow_and_update().clone() {
                break o;
            }
            if done.changed().await.is_err() && done.borrow().is_none() {
                break Err((crate::ErrorKind::Internal, format!("{what} {name:?}: creation vanished")));
            }
        };
        match (outcome, holder) {
            (Ok(id), None) => {
                self.store.delivered(&name);
                Ok(id)
            }
            // A retry of a request whose answer never reached its client.
            (Ok(id), Some(_)) if !delivered => {
                self.store.delivered(&name);
                Ok(id)
            }
            (Ok(id), Some(_)) => {
                Err(Error::already_exists(format!("{what} name {name:?} is reserved for {id:?}")))
            }
            (Err((kind, msg)), _) => Err(Error::new(kind, msg)),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    use super::*;
    use crate::cri::image::ImageService;
    use crate::cri::store::{ContainerRecord, SandboxRecord};
    use crate::engine::EngineOptions;
    use crate::network::fake::FakeNetwork;
    use crate::task::{FakeShim, FakeShimLauncher, LaunchOptions, ShimLauncher};

    /// A pod runtime on fakes with one ready sandbox `sb1` and a shim holding the running
    /// container `c1` (created with stdin, `stdin_once` as given).
    pub(crate) struct TestPods {
        _tmp: tempfile::TempDir,
        pub pods: Arc<Pods>,
        pub shim: Arc<FakeShim>,
    }

    pub(crate) async fn test_pods(stdin_once: bool, netns: Option<PathBuf>) -> TestPods {
        test_pods_with(stdin_once, netns, CgroupDriver::Cgroupfs).await
    }

    /// [`test_pods`] with the given cgroup driver.
    pub(crate) async fn test_pods_with(
        stdin_once: bool,
        netns: Option<PathBuf>,
        driver: CgroupDriver,
    ) -> TestPods {
        let tmp = tempfile::tempdir().unwrap();
        let mut config =
            Config { root: tmp.path().join("root"), state: tmp.path().join("state"), ..Default::default() };
        config.cri.cgroup_driver = driver;
        let config = Arc::new(config);
        let engine = Engine::open(EngineOptions::from_config(&config)).unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let images = Arc::new(ImageService::new(engine.clone(), &config, metrics.clone()));
        let launcher = FakeShimLauncher::new();
        let pods = Pods::new(Deps {
            env: crate::cri::spec::detect_runtime_env(config.cri.cgroup_driver).unwrap(),
            config,
            engine,
            images,
            network: Arc::new(FakeNetwork::new()),
            launcher: launcher.clone(),
            apparmor: Arc::new(crate::cri::spec::apparmor::FakeAppArmor::disabled()),
            shim_binary: PathBuf::from("/nonexistent/berth-shim"),
            metrics,
        })
        .unwrap();
        pods.store
            .put_sandbox(SandboxRecord {
                id: "sb1".into(),
                config: api::PodSandboxConfig::default(),
                runtime_handler: String::new(),
                state: SandboxState::Ready,
                created_at: 1,
                netns,
                network_attached: false,
                ips: Vec::new(),
                pid: 1,
                image: String::new(),
                overhead: None,
                resources: None,
            })
            .unwrap();
        let container = |id: &str, state| ContainerRecord {
            id: id.into(),
            sandbox_id: "sb1".into(),
            config: api::ContainerConfig { stdin: true, stdin_once, ..Default::default() },
            state,
            created_at: 1,
            started_at: 2,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            image: String::new(),
            image_id: String::new(),
            log_path: None,
            stop_signal: String::new(),
        };
        pods.store.put_container(container("c1", ContainerState::Running)).unwrap();
        pods.store.put_container(container("done", ContainerState::Exited)).unwrap();
        let bundle = pods.paths.bundle("c1");
        std::fs::create_dir_all(&bundle).unwrap();
        let spec = serde_json::json!({"process": {"args": ["sleep", "1"], "cwd": "/", "consoleSize": {}}});
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();

        let dir = pods.paths.shim_dir("sb1");
        let shim = launcher.launch(&LaunchOptions::new("/x", "sb1", &dir, "runc")).await.unwrap();
        let create =
            crate::task::CreateOptions { id: "c1".into(), bundle, stdin: true, tty: false, log_path: None };
        shim.create(&create).await.unwrap();
        shim.start("c1").await.unwrap();
        pods.adopt_shim("sb1", shim);
        TestPods { shim: launcher.shim(&dir).unwrap(), pods, _tmp: tmp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shims_get_the_cgroup_driver_in_their_launch_options() {
        for (driver, systemd) in [(CgroupDriver::Cgroupfs, false), (CgroupDriver::Systemd, true)] {
            let t = fixture::test_pods_with(false, None, driver).await;
            let (name, mut handler) = t.pods.handler("").unwrap();
            handler.options = vec!["--debug".into()];
            let o = t.pods.launch_options("sb1", &name, &handler);
            assert_eq!(o.systemd_cgroup, systemd, "{driver:?}");
            assert_eq!(o.runtime_args, ["--debug"], "the flag is the shim's to add, once");
        }
    }

    /// The shim's exit event and a Stop waiting for the same exit both report it: however they
    /// interleave, the kubelet gets one ContainerStoppedEvent for the container and one for the sandbox.
    #[tokio::test(flavor = "multi_thread")]
    async fn one_exit_reported_twice_at_once_is_one_stopped_event() {
        let t = fixture::test_pods(false, None).await;
        let mut events = t.pods.subscribe();
        const ROUNDS: usize = 50;
        for _ in 0..ROUNDS {
            t.pods.store.update_container("c1", |r| r.state = ContainerState::Running).unwrap();
            t.pods.store.update_sandbox("sb1", |r| r.state = SandboxState::Ready).unwrap();
            let exit = |id: &str| ExitEvent {
                id: id.into(),
                pid: 7,
                exit_code: 137,
                exited_at: Some(std::time::SystemTime::now()),
                oom_killed: false,
            };
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                for id in ["c1", "c1", "sb1", "sb1"] {
                    let (pods, barrier, ev) = (&t.pods, &barrier, exit(id));
                    s.spawn(move || {
                        barrier.wait();
                        pods.on_exit("sb1", &ev);
                    });
                }
            });
        }
        let mut stopped = HashMap::<String, usize>::new();
        while let Ok(e) = events.try_recv() {
            assert_eq!(e.container_event_type, api::ContainerEventType::ContainerStoppedEvent as i32);
            *stopped.entry(e.container_id).or_default() += 1;
        }
        assert_eq!(stopped.get("c1"), Some(&ROUNDS), "{stopped:?}");
        assert_eq!(stopped.get("sb1"), Some(&ROUNDS), "{stopped:?}");
        assert_eq!(t.pods.store.container("c1").unwrap().state, ContainerState::Exited);
    }

    /// Issue 14 item 5: a scrape reads what the shims report dropped from their containers' logs,
    /// and the series go when the container is removed.
    #[tokio::test(flavor = "multi_thread")]
    async fn scrapes_read_log_drops_from_the_shims() {
        let t = fixture::test_pods(false, None).await;
        let m = Metrics::new();
        let series = r#"berth_container_log_dropped_records_total{container_id="c1",pod_sandbox_id="sb1"}"#;
        t.pods.refresh_log_dropped(&m).await;
        assert!(!m.encode().contains("berth_container_log_dropped_records_total{"), "{}", m.encode());

        t.shim.set_log_dropped("c1", 7, 70);
        t.pods.refresh_log_dropped(&m).await;
        let text = m.encode();
        assert!(text.contains(&format!("{series} 7")), "{text}");
        assert!(
            text.contains(
                r#"berth_container_log_dropped_bytes_total{container_id="c1",pod_sandbox_id="sb1"} 70"#
            ),
            "{text}"
        );

        t.pods.store.delete_container("c1").unwrap();
        t.pods.refresh_log_dropped(&m).await;
        assert!(!m.encode().contains("container_id=\"c1\""), "{}", m.encode());
    }

    #[test]
    fn exit_reasons() {
        assert_eq!(exit_reason(0, false), "Completed");
        assert_eq!(exit_reason(3, false), "Error");
        assert_eq!(exit_reason(137, true), "OOMKilled");
    }
}
