//! Wiring: builds every component from the configuration, takes the root lock, serves the gRPC
//! socket and drains in-flight calls on shutdown. Listeners and the shutdown signal are arguments,
//! so tests can bind their own; this module never reads global state other than what it is given.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::admin::AdminService;
use crate::config::Config;
use crate::cri;
use crate::cri::pods::{Deps, Pods};
use crate::engine::{Engine, EngineOptions};
use crate::metrics::Metrics;
use crate::network::{CniNetwork, CniOptions};
use crate::task::ProcessShimLauncher;

mod deadline;

/// How long in-flight calls may run after a shutdown signal before berthd exits anyway.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// An exclusive lock on `<root>/berthd.lock`, held for the daemon's lifetime: a second berthd on the
/// same root refuses to start instead of corrupting the store.
pub struct RootLock {
    _lock: nix::fcntl::Flock<File>,
}

impl RootLock {
    pub fn acquire(path: &Path) -> Result<RootLock> {
        use std::io::{Read, Seek, Write};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        let mut lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "another berthd (pid {}) is using {}: refusing to start",
                    holder.split_whitespace().next().unwrap_or("unknown"),
                    path.parent().unwrap_or(path).display()
                );
            }
            Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        };
        // The pid is for the operator and the refusal message; a full disk must not stop the start.
        let pid = lock
            .set_len(0)
            .and_then(|_| lock.rewind())
            .and_then(|_| writeln!(lock, "{}", std::process::id()));
        if let Err(e) = pid {
            tracing::warn!(path = %path.display(), "writing the pid into the lock file: {e}");
        }
        Ok(RootLock { _lock: lock })
    }
}

/// Tells the service manager that berthd is ready (systemd's `sd_notify(0, "READY=1")`), when it
/// was started with `$NOTIFY_SOCKET` (a `Type=notify` unit): one datagram to that socket, a path or
/// an abstract name written with a leading `@`. Without the variable it does nothing. The OCI
/// runtime never sees the variable (the shim removes it), so containers cannot notify for berthd.
pub fn notify_ready() -> Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => sd_notify(Path::new(&path), "READY=1"),
        None => Ok(()),
    }
}

fn sd_notify(socket: &Path, state: &str) -> Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = socket.as_os_str().as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(socket),
    }
    .with_context(|| format!("NOTIFY_SOCKET {}", socket.display()))?;
    let sock = UnixDatagram::unbound().context("creating a datagram socket for sd_notify")?;
    sock.send_to_addr(state.as_bytes(), &addr)
        .with_context(|| format!("notifying the service manager at {}", socket.display()))?;
    Ok(())
}

/// Binds the gRPC unix socket: refuses if another live server answers on it, replaces a stale socket
/// left by a crash, and creates it with mode 0660 owned by `uid:gid`.
pub fn bind_socket(path: &Path, uid: u32, gid: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() || std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another running server", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // berthd's umask (fsutil::DAEMON_UMASK) creates it without group/other access; widened to 0660
    // for `uid:gid` below.
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Exists while systemd is the init system (sd_booted(3)); runc checks the same directory.
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// The systemd driver needs systemd: without it every runc call would fail, and the kubelet (which
/// follows the driver berth reports) would make pod slices nobody can start. The cgroupfs driver on
/// a systemd node works, but runs beside systemd's own cgroup management, so it is only warned
/// about; there, berthd's unit needs `KillMode=process` so that a restart leaves the shims alone.
fn check_cgroup_driver(driver: crate::config::CgroupDriver, systemd_running: &Path) -> Result<()> {
    use crate::config::CgroupDriver;
    match (driver, systemd_running.is_dir()) {
        (CgroupDriver::Systemd, false) => bail!(
            "cri.cgroup_driver is \"systemd\" but systemd is not the init system ({} is missing)",
            systemd_running.display()
        ),
        (CgroupDriver::Cgroupfs, true) => tracing::warn!(
            "cri.cgroup_driver is \"cgroupfs\" on a node run by systemd; the kubelet follows berth's driver, \
             and \"systemd\" is what such nodes should use"
        ),
        _ => {}
    }
    Ok(())
}

/// Everything berthd serves, built from the configuration.
pub struct Daemon {
    pub config: Arc<Config>,
    pub engine: Arc<Engine>,
    pub pods: Arc<Pods>,
    pub metrics: Arc<Metrics>,
    runtime: cri::runtime::RuntimeService,
    images: Arc<cri::image::ImageService>,
    admin: AdminService,
    streams: Arc<crate::streaming::StreamServer>,
}

impl Daemon {
    /// Builds the components. The caller holds the root lock.
    pub async fn build(config: Config) -> Result<Daemon> {
        let config = Arc::new(config);
        check_cgroup_driver(config.cri.cgroup_driver, Path::new(SYSTEMD_RUNNING))?;
        // 0711 as containerd's: the CRI socket may live in the state dir, and nothing inside is
        // reachable because every entry is private.
        for dir in [&config.root, &config.state] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            crate::fsutil::restrict_dir(dir, 0o711)?;
        }
        let engine = Engine::open(EngineOptions::from_config(&config)).context("opening the engine")?;
        // Whatever a crash left behind (expired leases, orphaned snapshots and blobs) goes now,
        // without delaying the socket; later, whatever failed pulls and removals leave, and whatever
        // expires.
        tokio::spawn(tracing::Instrument::instrument(
            engine.clone().collect_in_background(),
            tracing::info_span!("gc"),
        ));
        let metrics = Arc::new(Metrics::new());
        let images = Arc::new(cri::image::ImageService::new(engine.clone(), &config, metrics.clone()));
        let e = engine.clone();
        tokio::task::spawn_blocking(move || cri::pause::ensure_builtin(&e, cri::image::NAMESPACE))
            .await
            .context("importing the built-in pause image")??;
        let network = Arc::new(CniNetwork::new(CniOptions {
            bin_dirs: config.cni.bin_dirs.clone(),
            conf_dir: config.cni.conf_dir.clone(),
            cache_dir: config.root.join("cni"),
            plugin_timeout: config.cni.plugin_timeout,
        }));
        let env = cri::spec::detect_runtime_env(config.cri.cgroup_driver).context("inspecting the node")?;
        let pods = Pods::new(Deps {
            config: config.clone(),
            engine: engine.clone(),
            images: images.clone(),
            network,
            launcher: Arc::new(ProcessShimLauncher),
            env,
            apparmor: Arc::new(cri::spec::apparmor::HostAppArmor::detect(config.cri.disable_apparmor)),
            shim_binary: sibling_binary("berth-shim"),
            metrics: metrics.clone(),
        })?;
        pods.recover().await;
        // Importing the pause image and recovery are the start's bursts.
        crate::mem::release_free_memory();
        let streams = Arc::new(stream_server(&config, pods.clone()).await?);
        tracing::info!(address = %streams.addr(), "streaming server listening");
        let runtime =
            cri::runtime::RuntimeService::new(config.clone(), pods.clone(), metrics.clone(), streams.clone());
        let admin = AdminService::new(engine.clone(), metrics.clone());
        Ok(Daemon { config, engine, pods, metrics, runtime, images, admin, streams })
    }

    /// Serves gRPC on `listener` until `shutdown` resolves, then drains in-flight calls for at most
    /// [`DRAIN_GRACE`].
    pub async fn serve(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        use crate::admin::proto::berth_server::BerthServer;
        use cri::api::image_service_server::ImageServiceServer;
        use cri::api::runtime_service_server::RuntimeServiceServer;
        let max_recv = self.config.grpc.max_recv_message_size;
        let max_send = self.config.grpc.max_send_message_size;
        let runtime = RuntimeServiceServer::new(self.runtime)
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(max_send);
        let images = ImageServiceServer::from_arc(self.images)
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(max_send);
        let admin = BerthServer::new(self.admin)
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(max_send);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
        if !self.config.metrics.address.is_empty() {
            let addr: std::net::SocketAddr =
                self.config.metrics.address.parse().context("metrics.address")?;
            // As containerd: a metrics address that cannot be served stops berthd.
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics.address {addr}"))?;
            let pods = self.pods.clone();
            let refresh: crate::metrics::Refresh = Arc::new(move |m: Arc<Metrics>| {
                let pods = pods.clone();
                Box::pin(async move {
                    pods.refresh_gauges(&m);
                    pods.refresh_log_dropped(&m).await;
                })
            });
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                let stop = async {
                    let _ = metrics_stop_rx.await;
                };
                if let Err(e) = crate::metrics::serve(listener, metrics, refresh, stop).await {
                    tracing::error!(error = %e, "metrics endpoint");
                }
            });
        }
        let (streams_stop_tx, streams_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let streams = self.streams.clone();
        tokio::spawn(async move {
            streams
                .serve(async {
                    let _ = streams_stop_rx.await;
                })
                .await
        });
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown.await;
            let _ = signalled_tx.send(());
            let _ = stop_tx.send(());
            let _ = metrics_stop_tx.send(());
            let _ = streams_stop_tx.send(());
        });
        let server = tonic::transport::Server::builder()
            .layer(deadline::DeadlineLayer)
            .add_service(runtime)
            .add_service(images)
            .add_service(admin)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stop_rx.await;
            });
        let mut server = Box::pin(server);
        tokio::select! {
            r = &mut server => return r.context("serving grpc"),
            _ = signalled_rx => {}
        }
        tracing::info!(grace = ?DRAIN_GRACE, "shutting down: draining in-flight calls");
        match tokio::time::timeout(DRAIN_GRACE, server).await {
            Ok(r) => r.context("serving grpc"),
            Err(_) => {
                tracing::warn!("in-flight calls did not finish within the grace period");
                Ok(())
            }
        }
    }
}

/// The streaming server for Exec, Attach and PortForward on `[cri] stream_server_address` and
/// `stream_server_port`, serving berth's pods.
async fn stream_server(config: &Config, pods: Arc<Pods>) -> Result<crate::streaming::StreamServer> {
    let ip: std::net::IpAddr =
        config.cri.stream_server_address.parse().context("cri.stream_server_address")?;
    let addr = std::net::SocketAddr::new(ip, config.cri.stream_server_port);
    let tls = (!config.cri.stream_tls_cert.as_os_str().is_empty()).then(|| crate::streaming::TlsConfig {
        cert_file: config.cri.stream_tls_cert.clone(),
        key_file: config.cri.stream_tls_key.clone(),
    });
    let backend = Arc::new(cri::container_stream::PodStreams::new(pods));
    crate::streaming::StreamServer::bind(addr, tls, backend, config.cri.stream_token_ttl)
        .await
        .with_context(|| format!("starting the streaming server on {addr}"))
}

/// A berth binary installed next to the running one (berthd finds berth-shim there), else `name`
/// to be looked up in PATH.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_driver_needs_systemd() {
        use crate::config::CgroupDriver;
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("system");
        let err = check_cgroup_driver(CgroupDriver::Systemd, &marker).unwrap_err().to_string();
        assert!(err.contains("systemd is not the init system"), "{err}");
        check_cgroup_driver(CgroupDriver::Cgroupfs, &marker).unwrap();
        std::fs::create_dir(&marker).unwrap();
        check_cgroup_driver(CgroupDriver::Systemd, &marker).unwrap();
        check_cgroup_driver(CgroupDriver::Cgroupfs, &marker).unwrap();
    }

    #[test]
    fn second_lock_on_the_same_root_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("berthd.lock");
        let first = RootLock::acquire(&p).unwrap();
        let err = RootLock::acquire(&p).err().expect("second lock refused").to_string();
        assert!(err.contains("another berthd"), "{err}");
        drop(first);
        RootLock::acquire(&p).expect("lock free again after the first holder is gone");
    }

    #[tokio::test]
    async fn socket_is_0660_and_stale_socket_is_replaced_but_live_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/berth.sock");
        let l = bind_socket(&p, 0, 0).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = bind_socket(&p, 0, 0).expect_err("live socket kept").to_string();
        assert!(err.contains("in use"), "{err}");
        drop(l);
        // The listener is gone but the file remains, as after a crash.
        assert!(p.exists());
        bind_socket(&p, 0, 0).expect("stale socket replaced");
    }

    #[test]
    fn sd_notify_sends_one_datagram_to_a_path_or_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        sd_notify(&p, "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("berth-test-notify-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        sd_notify(Path::new(&format!("@{name}")), "READY=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let err = sd_notify(&d.path().join("absent"), "READY=1").unwrap_err();
        assert!(format!("{err:#}").contains("notifying the service manager"), "{err:#}");
    }
}
