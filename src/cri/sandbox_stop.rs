//! StopPodSandbox and RemovePodSandbox, both idempotent: an unknown or already removed id is success.
//! Stop kills every container and the pause, always runs CNI DEL while the network is attached (a
//! failure is returned, and retried by the next Stop or Remove, never forgotten), unmounts the pod's
//! /dev/shm and image volumes and removes the network namespace. Remove stops first, then removes the containers, the
//! pause, its rootfs, the shim and the pod's directories. The pod's log directory belongs to the
//! kubelet and stays.

use std::sync::Arc;

use super::api;
use super::pods::{Pods, blocking, cleanup};
use super::sandbox_run::pod_network;
use super::store::{SandboxState, sandbox_name};
use crate::error::Result;

impl Pods {
    pub async fn stop_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(id) = self.store.resolve_sandbox(id)? else { return Ok(()) };
        let lock = self.store.lock(&id);
        let _guard = lock.lock().await;
        self.stop_sandbox_locked(&id).await
    }

    async fn stop_sandbox_locked(self: &Arc<Self>, id: &str) -> Result<()> {
        for c in self.store.containers_of(id) {
            let lock = self.store.lock(&c.id);
            let _g = lock.lock().await;
            self.kill_container_locked(&c.id).await?;
        }
        self.stop_pause(id).await?;
        self.release_network(id, false).await?;
        // No container of the pod can run again: its image volumes go (as containerd does at Stop).
        self.release_image_volumes(id).await?;
        if self.store.sandbox(id).is_some() {
            // Decided under the store's lock: the pause's exit event may be recording this stop too.
            let mut was_ready = false;
            self.store.update_sandbox(id, |r| {
                was_ready = r.state == SandboxState::Ready;
                if r.state != SandboxState::Creating {
                    r.state = SandboxState::NotReady;
                    r.pid = 0;
                }
            })?;
            if was_ready {
                self.emit(self.event(id, id, api::ContainerEventType::ContainerStoppedEvent));
            }
        }
        Ok(())
    }

    /// Kills the pause container (if its shim still answers) and waits for it.
    async fn stop_pause(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(rec) = self.store.sandbox(id) else { return Ok(()) };
        // A sandbox still being created records no pid even when its pause already runs (the
        // pause starts while CNI is in flight): only a stopped one is known to have none.
        if rec.pid == 0 && rec.state == SandboxState::NotReady {
            return Ok(());
        }
        let shim = match self.shim(id).await {
            Ok(s) => s,
            Err(e) if e.kind() == crate::ErrorKind::Unavailable || e.is_not_found() => {
                // Its shim died: end what it ran (the pause among it), if an earlier attempt failed.
                self.shim_gone(id).await;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match shim.state(id).await {
            Ok(s) if s.status == crate::task::ContainerStatus::Running => {
                shim.kill(id, libc::SIGKILL, true).await?;
                let ev = tokio::time::timeout(super::pods::CLEANUP_TIMEOUT, shim.wait(id)).await.map_err(
                    |_| {
                        crate::Error::new(
                            crate::ErrorKind::DeadlineExceeded,
                            format!("pod sandbox {id}: pause did not exit"),
                        )
                    },
                )??;
                self.on_exit(id, &ev);
            }
            _ => {}
        }
        Ok(())
    }

    /// CNI DEL while the network is attached, then the pod's shm and network namespace. A failed DEL
    /// keeps the namespace for the next Stop or Remove to retry, unless `force` (the sandbox record
    /// is about to go, as containerd does on a failed RunPodSandbox): then the DEL error is returned
    /// after the namespace is removed anyway.
    async fn release_network(&self, id: &str, force: bool) -> Result<()> {
        let Some(rec) = self.store.sandbox(id) else { return Ok(()) };
        let mut teardown = Ok(());
        if rec.network_attached {
            let pod = pod_network(id, &rec.config, rec.netns.clone().filter(|p| p.exists()))?;
            let started = std::time::Instant::now();
            teardown = self.network.teardown(&pod).await;
            self.metrics
                .cni_duration
                .with_label_values(&["teardown"])
                .observe(started.elapsed().as_secs_f64());
            if teardown.is_ok() {
                self.store.update_sandbox(id, |r| r.network_attached = false)?;
            } else if !force {
                return teardown;
            } else {
                // The record goes: no later Stop or Remove could retry this DEL.
                match self.network.forget(id) {
                    Ok(ips) => tracing::warn!(
                        sandbox = id,
                        ?ips,
                        "cni DEL failed while the pod sandbox is removed anyway: its cached result is \
                         dropped and IPAM may still hold its addresses"
                    ),
                    Err(e) => tracing::warn!(sandbox = id, error = %e, "dropping the cni cache"),
                }
            }
        }
        super::files::unmount(&self.paths.sandbox_dir(id).join("shm"))?;
        let netns = self.paths.netns(id);
        blocking(move || crate::network::netns::remove(&netns)).await?;
        teardown
    }

    pub async fn remove_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(id) = self.store.resolve_sandbox(id)? else { return Ok(()) };
        let lock = self.store.lock(&id);
        let _guard = lock.lock().await;
        self.stop_sandbox_locked(&id).await?;
        for c in self.store.containers_of(&id) {
            let lock = self.store.lock(&c.id);
            let _g = lock.lock().await;
            self.remove_container_locked(&c.id).await?;
        }
        self.remove_sandbox_resources(&id).await?;
        Ok(())
    }

    /// Removes the pause container, its rootfs, the shim, the pod's directories and the record.
    async fn remove_sandbox_resources(self: &Arc<Self>, id: &str) -> Result<()> {
        if let Ok(shim) = self.shim(id).await {
            shim.delete(id).await?;
            self.forget_shim(id);
            if let Err(e) = shim.shutdown().await {
                tracing::warn!(sandbox = id, error = %e, "shutting down the pod's shim");
            }
        }
        self.remove_rootfs(id).await?;
        self.release_image_volumes(id).await?;
        // A shim killed before it could clean up leaves its socket, which may live outside its dir.
        let socket = crate::shim::socket_path(&self.paths.shim_dir(id), crate::shim::SOCKET_NAME);
        let _ = std::fs::remove_file(socket);
        for dir in [self.paths.sandbox_dir(id), self.paths.shim_dir(id)] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(sandbox = id, error = %e, "removing {}", dir.display()),
            }
        }
        if let Some(rec) = self.store.sandbox(id) {
            let event = self.event(id, id, api::ContainerEventType::ContainerDeletedEvent);
            self.store.delete_sandbox(id)?;
            if rec.state != SandboxState::Creating {
                self.emit(event);
            }
            if let Some(m) = &rec.config.metadata {
                self.store.release(&sandbox_name(m), id);
            }
        }
        Ok(())
    }

    /// Rolls back or removes a sandbox whatever state it is in, logging what fails: used when
    /// RunPodSandbox fails and for sandboxes a crash left half-built.
    pub async fn destroy_sandbox(self: &Arc<Self>, id: &str) {
        for c in self.store.containers_of(id) {
            cleanup("removing container", &c.id, self.remove_container_locked(&c.id)).await;
        }
        cleanup("stopping pause", id, self.stop_pause(id)).await;
        cleanup("releasing the network", id, self.release_network(id, true)).await;
        cleanup("removing sandbox", id, self.remove_sandbox_resources(id)).await;
    }
}
