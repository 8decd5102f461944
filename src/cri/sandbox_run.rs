//! RunPodSandbox: two branches run concurrently, as pod start latency is their longer one, not their
//! sum. The network: the namespace (bind-mounted under `state`), CNI ADD into it, then the hosts
//! file (it names the pod's address). The pause: the pod's shim launches while its files
//! (hostname, resolv.conf), /dev/shm, rootfs and spec are made; once the namespace exists the pause
//! is created and started in one runtime call, joining the namespace by path. The record is written
//! before any of it ("creating"), so a berthd that dies half way rolls it back at its next start; a
//! failure of either branch rolls back every step of both, once both have finished.

use std::sync::Arc;

use super::api;
use super::pods::{LABEL_OWNER, Pods, blocking, host_ipc, host_network};
use super::spec::{self, SandboxContext};
use super::store::{SandboxRecord, SandboxState, new_id, sandbox_name};
use crate::config::RuntimeHandler;
use crate::engine::gc::LABEL_ROOT;
use crate::engine::metadata::now_nanos;
use crate::engine::snapshot;
use crate::error::{Context, Error, Result};
use crate::network::{Bandwidth, Dns, PodNetwork, PortMapping, Protocol};
use crate::task::CreateOptions;

/// Checks the sandbox config fields berth relies on, naming the bad one.
pub fn validate(config: &api::PodSandboxConfig) -> Result<api::PodSandboxMetadata> {
    let m = config.metadata.clone().ok_or_else(|| Error::invalid("sandbox config: metadata must be set"))?;
    for (field, v) in [("name", &m.name), ("namespace", &m.namespace), ("uid", &m.uid)] {
        if v.is_empty() {
            return Err(Error::invalid(format!("sandbox config: metadata.{field} must not be empty")));
        }
    }
    // Container logs are written beneath it, by root: it must say plainly where.
    let logs = std::path::Path::new(&config.log_directory);
    if !config.log_directory.is_empty()
        && (!logs.is_absolute() || logs.components().any(|c| c == std::path::Component::ParentDir))
    {
        return Err(Error::invalid(format!(
            "sandbox config: log_directory {:?} must be an absolute path without \"..\"",
            config.log_directory
        )));
    }
    Ok(m)
}

/// What CNI needs to know about a pod.
pub fn pod_network(
    id: &str,
    config: &api::PodSandboxConfig,
    netns: Option<std::path::PathBuf>,
) -> Result<PodNetwork> {
    let m = config.metadata.clone().unwrap_or_default();
    let annotations = config.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let port_mappings = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            Ok(PortMapping {
                protocol: match api::Protocol::try_from(p.protocol) {
                    Ok(api::Protocol::Udp) => Protocol::Udp,
                    Ok(api::Protocol::Sctp) => Protocol::Sctp,
                    _ => Protocol::Tcp,
                },
                container_port: u16::try_from(p.container_port).map_err(|_| {
                    Error::invalid(format!("port_mappings: container_port {} out of range", p.container_port))
                })?,
                host_port: u16::try_from(p.host_port).map_err(|_| {
                    Error::invalid(format!("port_mappings: host_port {} out of range", p.host_port))
                })?,
                host_ip: if p.host_ip.is_empty() {
                    None
                } else {
                    Some(
                        p.host_ip
                            .parse()
                            .map_err(|_| Error::invalid(format!("port_mappings: host_ip {:?}", p.host_ip)))?,
                    )
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let bandwidth = Bandwidth::from_annotations(&annotations)?;
    let dns = config.dns_config.as_ref().map(|d| Dns {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    Ok(PodNetwork {
        id: id.to_string(),
        netns,
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        port_mappings,
        bandwidth,
        dns,
        annotations,
    })
}

impl Pods {
    pub async fn run_pod_sandbox(self: &Arc<Self>, req: api::RunPodSandboxRequest) -> Result<String> {
        let config = req.config.ok_or_else(|| Error::invalid("RunPodSandbox: config must be set"))?;
        let meta = validate(&config)?;
        let (handler_name, handler) = self.handler(&req.runtime_handler)?;
        // Fail early on config the network cannot take (before anything is created).
        pod_network("", &config, None)?;
        let id = new_id();
        let pods = self.clone();
        let id2 = id.clone();
        let work = async move { pods.create_sandbox(&id2, config, &handler_name, &handler).await };
        self.create_once("pod sandbox", sandbox_name(&meta), id, work).await
    }

    async fn create_sandbox(
        self: &Arc<Self>,
        id: &str,
        config: api::PodSandboxConfig,
        handler_name: &str,
        handler: &RuntimeHandler,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let image = self.images.ensure_sandbox_image().await?;
        // The namespace's path is known up front, so the intent to create and attach it is part of
        // the first record (a rollback of a namespace never made is harmless: DEL is idempotent).
        let netns = (!host_network(&config)).then(|| self.paths.netns(id));
        self.store.put_sandbox(SandboxRecord {
            id: id.to_string(),
            config: config.clone(),
            runtime_handler: handler_name.to_string(),
            state: SandboxState::Creating,
            created_at: now_nanos(),
            network_attached: netns.is_some(),
            netns,
            ips: Vec::new(),
            pid: 0,
            image: self.config.cri.sandbox_image.clone(),
            overhead: None,
            resources: None,
        })?;
        match self.build_sandbox(id, &config, handler_name, handler, &image).await {
            Ok(()) => {
                tracing::info!(sandbox = id, elapsed = ?started.elapsed(), "pod sandbox ready");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "RunPodSandbox failed: rolling back");
                self.destroy_sandbox(id).await;
                Err(e)
            }
        }
    }

    /// Once the network namespace exists, CNI ADD and the pause container (which joins the
    /// namespace by path, and needs no address) run concurrently. Both are awaited to the end
    /// before a failure of either is returned, so the rollback never races a step in flight.
    async fn build_sandbox(
        self: &Arc<Self>,
        id: &str,
        config: &api::PodSandboxConfig,
        handler_name: &str,
        handler: &RuntimeHandler,
        image: &crate::engine::image::store::ImageInfo,
    ) -> Result<()> {
        let dir = self.paths.sandbox_dir(id);
        std::fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
        let host_net = host_network(config);
        let hostname = if host_net {
            nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
        } else {
            config.hostname.clone()
        };
        // The namespace's path is known before it exists: the shim's launch and the pause's bundle
        // go ahead while it is made; only running the pause waits for it.
        let netns = (!host_net).then(|| self.paths.netns(id));
        let (netns_made, netns_ready) = tokio::sync::oneshot::channel();
        let network = async {
            if !host_net {
                let (ns_dir, sid) = (self.paths.netns.clone(), id.to_string());
                blocking(move || crate::network::netns::create(&ns_dir, &sid)).await?;
            }
            let _ = netns_made.send(());
            self.attach_network(id, config, netns.clone(), &hostname).await
        };
        let pause =
            self.start_pause(id, config, handler_name, handler, image, netns.clone(), &hostname, netns_ready);
        let (network, pause) = tokio::join!(network, pause);
        let (ips, pid) = (network?, pause?);
        self.store.update_sandbox(id, |r| {
            r.ips = ips;
            r.state = SandboxState::Ready;
            r.pid = pid;
        })?;
        self.emit(self.event(id, id, api::ContainerEventType::ContainerCreatedEvent));
        self.emit(self.event(id, id, api::ContainerEventType::ContainerStartedEvent));
        Ok(())
    }

    /// CNI ADD into the pod's namespace (none for a host-network pod), then the hosts file, which
    /// names the pod's first address. Returns the pod's addresses.
    async fn attach_network(
        &self,
        id: &str,
        config: &api::PodSandboxConfig,
        netns: Option<std::path::PathBuf>,
        hostname: &str,
    ) -> Result<Vec<String>> {
        let mut ips = Vec::new();
        if let Some(path) = netns {
            let started = std::time::Instant::now();
            let status = self.network.setup(&pod_network(id, config, Some(path))?).await?;
            let elapsed = started.elapsed();
            self.metrics.cni_duration.with_label_values(&["setup"]).observe(elapsed.as_secs_f64());
            tracing::debug!(sandbox = id, ?elapsed, "pod network attached");
            ips = status.ips.iter().map(|ip| ip.to_string()).collect();
        }
        let (dir, hostname, ip) = (self.paths.sandbox_dir(id), hostname.to_string(), ips.first().cloned());
        let host_net = host_network(config);
        blocking(move || super::files::write_hosts(&dir, &hostname, host_net, ip.as_deref())).await?;
        Ok(ips)
    }

    /// The pod's files the pause needs, its /dev/shm, the pause's rootfs and spec, and meanwhile
    /// the pod's shim; then, once `netns_ready` says the namespace exists, the pause is created and
    /// started in the shim. Returns its pid.
    #[allow(clippy::too_many_arguments)]
    async fn start_pause(
        self: &Arc<Self>,
        id: &str,
        config: &api::PodSandboxConfig,
        handler_name: &str,
        handler: &RuntimeHandler,
        image: &crate::engine::image::store::ImageInfo,
        netns: Option<std::path::PathBuf>,
        hostname: &str,
        netns_ready: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<u32> {
        let started = std::time::Instant::now();
        let launch = async {
            let shim = self.launcher.launch(&self.launch_options(id, handler_name, handler)).await?;
            self.adopt_shim(id, shim.clone());
            tracing::debug!(sandbox = id, elapsed = ?started.elapsed(), "pod shim launched");
            Ok::<_, Error>(shim)
        };
        let bundle = async {
            let dir = self.paths.sandbox_dir(id);
            {
                let (dir, hostname, dns) = (dir.clone(), hostname.to_string(), config.dns_config.clone());
                blocking(move || super::files::write_sandbox_files(&dir, &hostname, dns.as_ref())).await?;
            }
            let shm = if host_ipc(config) {
                None
            } else {
                let shm = dir.join("shm");
                super::files::mount_shm(&shm)?;
                Some(shm)
            };
            let rootfs = self.prepare_rootfs(id, image).await?;
            let ctx = SandboxContext {
                id: id.to_string(),
                netns,
                pause_pid: None,
                hostname: hostname.to_string(),
                hostname_path: dir.join("hostname"),
                hosts_path: dir.join("hosts"),
                resolv_conf_path: dir.join("resolv.conf"),
                shm_path: shm,
                cgroup_parent: config.linux.as_ref().map(|l| l.cgroup_parent.clone()).unwrap_or_default(),
                passthrough: spec::Passthrough::of(handler),
            };
            let spec = spec::sandbox_spec(config, &ctx, &image.config, &rootfs, &self.env)?;
            self.write_spec(id, &spec)?;
            tracing::debug!(sandbox = id, elapsed = ?started.elapsed(), "pause bundle written");
            Ok::<_, Error>(())
        };
        // Both run to the end (no cancellation of a launch half done), then the first error wins.
        let (shim, bundle) = tokio::join!(launch, bundle);
        let shim = shim?;
        bundle?;
        netns_ready.await.map_err(|_| {
            Error::unavailable(format!("pod sandbox {id}: its network namespace was not made"))
        })?;
        let opts = CreateOptions {
            id: id.to_string(),
            bundle: self.paths.bundle(id),
            stdin: false,
            tty: false,
            log_path: None,
        };
        let pid = shim.run(&opts).await?;
        tracing::debug!(sandbox = id, elapsed = ?started.elapsed(), "pause started");
        Ok(pid)
    }

    /// Prepares the snapshot of a sandbox's or container's rootfs from `image` and mounts it at
    /// `<bundle>/rootfs`. The snapshot is a GC root owned by `id` until the object is removed.
    pub async fn prepare_rootfs(
        &self,
        id: &str,
        image: &crate::engine::image::store::ImageInfo,
    ) -> Result<std::path::PathBuf> {
        let rootfs = self.paths.rootfs(id);
        let snapshots = self.engine.snapshots.clone();
        let (key, parent, target) =
            (id.to_string(), image.chain_id.as_ref().map(|c| c.to_string()), rootfs.clone());
        blocking(move || {
            std::fs::create_dir_all(&target).context(|| format!("creating {}", target.display()))?;
            let labels = [
                (LABEL_ROOT.to_string(), crate::engine::metadata::now_nanos().to_string()),
                (LABEL_OWNER.to_string(), key.clone()),
            ]
            .into_iter()
            .collect();
            let mounts = snapshots.prepare(&key, parent.as_deref(), labels)?;
            if let Err(e) = snapshot::mount_all(&mounts, &target) {
                let _ = snapshots.remove(&key);
                return Err(e);
            }
            Ok(())
        })
        .await?;
        Ok(rootfs)
    }

    /// Writes a bundle's config.json.
    pub fn write_spec(&self, id: &str, spec: &oci_spec::runtime::Spec) -> Result<()> {
        let json = serde_json::to_vec_pretty(spec)
            .map_err(|e| Error::internal(format!("encoding spec of {id}: {e}")))?;
        // It holds the container's environment: Kubernetes secrets.
        crate::fsutil::write_atomic(&self.paths.bundle(id).join("config.json"), &json, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8 item 10: the pod log directory is absolute and says where it is without "..".
    #[test]
    fn log_directory_must_be_absolute_without_dot_dot() {
        let config = |dir: &str| api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: "p".into(),
                uid: "u".into(),
                namespace: "n".into(),
                attempt: 0,
            }),
            log_directory: dir.into(),
            ..Default::default()
        };
        for ok in ["", "/var/log/pods/n_p_u", "/tmp/./logs"] {
            validate(&config(ok)).unwrap();
        }
        for bad in ["logs", "/var/log/pods/../../etc", "./x"] {
            let e = validate(&config(bad)).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(e.to_string().contains("log_directory"), "{e}");
        }
    }
}
