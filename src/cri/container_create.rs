//! CreateContainer: the image's snapshot mounted as the container's rootfs and the OCI spec built from
//! the CRI config, the image config and the sandbox. Like containerd, the runtime container itself is
//! created at StartContainer, so a bad command surfaces as a start error the kubelet shows.

use std::sync::Arc;

use super::api;
use super::pods::Pods;
use super::spec::{self, SandboxContext};
use super::store::{ContainerRecord, ContainerState, SandboxState, container_name, new_id};
use crate::engine::metadata::now_nanos;
use crate::error::{Error, Result};

impl Pods {
    pub async fn create_container(self: &Arc<Self>, req: api::CreateContainerRequest) -> Result<String> {
        let config = req.config.ok_or_else(|| Error::invalid("CreateContainer: config must be set"))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid("container config: metadata must be set"))?;
        if meta.name.is_empty() {
            return Err(Error::invalid("container config: metadata.name must not be empty"));
        }
        if config.image.as_ref().is_none_or(|i| i.image.is_empty()) {
            return Err(Error::invalid("container config: image.image must not be empty"));
        }
        if req.pod_sandbox_id.is_empty() {
            return Err(Error::invalid("CreateContainer: pod_sandbox_id must not be empty"));
        }
        let sandbox = self.store.find_sandbox(&req.pod_sandbox_id)?;
        let sandbox_id = sandbox.id.clone();
        if sandbox.state != SandboxState::Ready {
            return Err(Error::precondition(format!("pod sandbox {sandbox_id} is not ready")));
        }
        let sandbox_meta = sandbox.config.metadata.clone().unwrap_or_default();
        let sandbox_config = req.sandbox_config.unwrap_or_else(|| sandbox.config.clone());
        let id = new_id();
        let pods = self.clone();
        let id2 = id.clone();
        let work = async move { pods.build_container(&id2, &sandbox_id, config, sandbox_config).await };
        self.create_once("container", container_name(&meta, &sandbox_meta), id, work).await
    }

    async fn build_container(
        self: &Arc<Self>,
        id: &str,
        sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<()> {
        let image_spec = config.image.clone().unwrap_or_default();
        let found = self
            .images
            .lookup(&image_spec.image)?
            .ok_or_else(|| Error::not_found(format!("image {:?} not found", image_spec.image)))?;
        let sandbox =
            self.store.sandbox(sandbox_id).ok_or_else(|| Error::not_found("pod sandbox vanished"))?;
        let log_path = match (sandbox_config.log_directory.as_str(), config.log_path.as_str()) {
            ("", _) | (_, "") => None,
            (dir, file) => Some(std::path::Path::new(dir).join(file)),
        };
        self.store.put_container(ContainerRecord {
            id: id.to_string(),
            sandbox_id: sandbox_id.to_string(),
            config: config.clone(),
            state: ContainerState::Creating,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            image: image_spec.image.clone(),
            image_id: found.info.config_digest.to_string(),
            log_path,
            stop_signal: found.info.config.config.stop_signal.clone(),
        })?;
        let r = async {
            let rootfs = self.prepare_rootfs(id, &found.info).await?;
            let dir = self.paths.sandbox_dir(sandbox_id);
            let ctx = SandboxContext {
                id: sandbox_id.to_string(),
                netns: sandbox.netns.clone(),
                pause_pid: (sandbox.pid > 0).then_some(sandbox.pid),
                hostname: sandbox_config.hostname.clone(),
                hostname_path: dir.join("hostname"),
                hosts_path: dir.join("hosts"),
                resolv_conf_path: dir.join("resolv.conf"),
                shm_path: Some(dir.join("shm")).filter(|_| !super::pods::host_ipc(&sandbox.config)),
                cgroup_parent: sandbox
                    .config
                    .linux
                    .as_ref()
                    .map(|l| l.cgroup_parent.clone())
                    .unwrap_or_default(),
            };
            let image_name = if image_spec.user_specified_image.is_empty() {
                found.repo_tags.first().cloned().unwrap_or_else(|| image_spec.image.clone())
            } else {
                image_spec.user_specified_image.clone()
            };
            let target_pid = self.target_pid(&config)?;
            let spec = spec::container_spec(
                id,
                &config,
                &sandbox_config,
                &ctx,
                &found.info.config,
                &image_name,
                &rootfs,
                &self.env,
                target_pid,
            )?;
            self.write_spec(id, &spec)?;
            self.store.update_container(id, |r| r.state = ContainerState::Created)?;
            self.emit(self.event(id, sandbox_id, api::ContainerEventType::ContainerCreatedEvent));
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = r {
            super::pods::cleanup("rolling back CreateContainer", id, self.remove_container_locked(id)).await;
            return Err(e);
        }
        Ok(())
    }

    /// The pid of the container a TARGET pid namespace joins (ephemeral debug containers).
    fn target_pid(&self, config: &api::ContainerConfig) -> Result<Option<u32>> {
        let nso = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        if nso.pid != api::NamespaceMode::Target as i32 {
            return Ok(None);
        }
        let target =
            self.store.find_container(&nso.target_id).map_err(|e| e.context("the pid namespace's target"))?;
        if target.state != ContainerState::Running || target.pid == 0 {
            return Err(Error::precondition(format!("target container {} is not running", target.id)));
        }
        Ok(Some(target.pid))
    }
}
