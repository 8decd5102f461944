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
        if config.stop_signal != 0 && super::container_stop::cri_signal_number(config.stop_signal).is_none() {
            return Err(Error::invalid(format!(
                "container config: unknown stop_signal {}",
                config.stop_signal
            )));
        }
        if !config.log_path.is_empty() {
            super::files::check_relative("container config: log_path", &config.log_path)?;
        }
        let sandbox = self.store.find_sandbox(&req.pod_sandbox_id)?;
        let sandbox_id = sandbox.id.clone();
        if sandbox.state != SandboxState::Ready {
            return Err(Error::precondition(format!("pod sandbox {sandbox_id} is not ready")));
        }
        let sandbox_meta = sandbox.config.metadata.clone().unwrap_or_default();
        if let Some(sent) = &req.sandbox_config {
            same_security(&sandbox_id, &sandbox.config, sent)?;
        }
        // What the pod was created with, not what this request says it was.
        let sandbox_config = sandbox.config.clone();
        let target_pid = self.target_pid(&config, &sandbox_id)?;
        let id = new_id();
        let pods = self.clone();
        let id2 = id.clone();
        let work =
            async move { pods.build_container(&id2, &sandbox_id, config, sandbox_config, target_pid).await };
        self.create_once("container", container_name(&meta, &sandbox_meta), id, work).await
    }

    async fn build_container(
        self: &Arc<Self>,
        id: &str,
        sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
        target_pid: Option<u32>,
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
        // The image volumes this container uses: rolled back with it if nothing else uses them.
        let mut volumes = Vec::new();
        let r = async {
            let rootfs = self.prepare_rootfs(id, &found.info).await?;
            let (mounts, used) = self.mount_image_volumes(id, sandbox_id, &config.mounts).await?;
            volumes = used;
            // The spec sees image volumes as the read-only bind mounts they have become; the record
            // keeps what the kubelet sent (ContainerStatus reports it).
            let config = api::ContainerConfig { mounts, ..config.clone() };
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
                // A handler removed from the configuration since the pod started passes nothing.
                passthrough: self
                    .handler(&sandbox.runtime_handler)
                    .map(|(_, h)| spec::Passthrough::of(&h))
                    .unwrap_or_default(),
            };
            let image_name = if image_spec.user_specified_image.is_empty() {
                found.repo_tags.first().cloned().unwrap_or_else(|| image_spec.image.clone())
            } else {
                image_spec.user_specified_image.clone()
            };
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
                self.apparmor.as_ref(),
            )?;
            self.write_spec(id, &spec)?;
            self.store.update_container(id, |r| r.state = ContainerState::Created)?;
            self.emit(self.event(id, sandbox_id, api::ContainerEventType::ContainerCreatedEvent));
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = r {
            super::pods::cleanup("rolling back CreateContainer", id, self.remove_container_locked(id)).await;
            self.release_unused_image_volumes(sandbox_id, id, &volumes).await;
            return Err(e);
        }
        Ok(())
    }

    /// The pid of the container a TARGET pid namespace joins (ephemeral debug containers), checked
    /// as containerd's `validateTargetContainer` does: the target exists, is a container of the same
    /// sandbox, and is running.
    pub(crate) fn target_pid(&self, config: &api::ContainerConfig, sandbox_id: &str) -> Result<Option<u32>> {
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
        if target.sandbox_id != sandbox_id {
            return Err(Error::invalid(format!(
                "the pid namespace's target container {} belongs to pod sandbox {}, not to {sandbox_id}",
                target.id, target.sandbox_id
            )));
        }
        if target.state != ContainerState::Running || target.pid == 0 {
            return Err(Error::precondition(format!("target container {} is not running", target.id)));
        }
        Ok(Some(target.pid))
    }
}

/// The parts of a sandbox config that container creation reads for security decisions (privileged,
/// host and user namespaces) must be those the sandbox was created with. The kubelet sends the same
/// config with every CreateContainer; anything else is a forged or confused request.
fn same_security(
    sandbox_id: &str,
    stored: &api::PodSandboxConfig,
    sent: &api::PodSandboxConfig,
) -> Result<()> {
    let sc = |c: &api::PodSandboxConfig| {
        let sc = c.linux.as_ref().and_then(|l| l.security_context.clone()).unwrap_or_default();
        (sc.privileged, sc.namespace_options.unwrap_or_default())
    };
    let ((stored_privileged, stored_ns), (sent_privileged, sent_ns)) = (sc(stored), sc(sent));
    if stored_privileged != sent_privileged {
        return Err(Error::invalid(format!(
            "sandbox_config.linux.security_context.privileged is {sent_privileged}, but pod sandbox \
             {sandbox_id} was created with {stored_privileged}"
        )));
    }
    if stored_ns != sent_ns {
        return Err(Error::invalid(format!(
            "sandbox_config.linux.security_context.namespace_options differ from those pod sandbox \
             {sandbox_id} was created with"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::pods::fixture::test_pods;
    use crate::cri::store::SandboxRecord;
    use crate::error::ErrorKind;

    fn request(
        sandbox_config: Option<api::PodSandboxConfig>,
        pid: api::NamespaceOption,
    ) -> api::CreateContainerRequest {
        api::CreateContainerRequest {
            pod_sandbox_id: "sb1".into(),
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata { name: "debug".into(), attempt: 0 }),
                image: Some(api::ImageSpec { image: "busybox".into(), ..Default::default() }),
                linux: Some(api::LinuxContainerConfig {
                    security_context: Some(api::LinuxContainerSecurityContext {
                        namespace_options: Some(pid),
                        privileged: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config,
        }
    }

    fn target(id: &str) -> api::NamespaceOption {
        api::NamespaceOption {
            pid: api::NamespaceMode::Target as i32,
            target_id: id.into(),
            ..Default::default()
        }
    }

    fn privileged_sandbox(privileged: bool, network: api::NamespaceMode) -> api::PodSandboxConfig {
        api::PodSandboxConfig {
            hostname: "forged".into(),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    privileged,
                    namespace_options: Some(api::NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Issue 8 item 8: the privileged check and the host namespaces come from the sandbox as it was
    /// created; a request claiming otherwise is refused before anything is built.
    #[tokio::test]
    async fn a_forged_sandbox_config_is_refused() {
        let t = test_pods(false, None).await;
        let forged = privileged_sandbox(true, api::NamespaceMode::Pod);
        let e = t.pods.create_container(request(Some(forged), Default::default())).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("privileged") && e.to_string().contains("sb1"), "{e}");
        let forged = privileged_sandbox(false, api::NamespaceMode::Node);
        let e = t.pods.create_container(request(Some(forged), Default::default())).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("namespace_options"), "{e}");
        // The same security parts with other fields changed pass on to the image lookup.
        let same = privileged_sandbox(false, api::NamespaceMode::Pod);
        let e = t.pods.create_container(request(Some(same), Default::default())).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("image"), "{e}");
    }

    /// Issue 8 item 10: a container's log stays inside the pod's log directory.
    #[tokio::test]
    async fn log_paths_outside_the_pod_log_directory_are_refused() {
        let t = test_pods(false, None).await;
        t.pods
            .store
            .update_sandbox("sb1", |r| r.config.log_directory = "/var/log/pods/ns_pod_uid".into())
            .unwrap();
        for bad in ["/etc/cron.d/evil", "../../../etc/cron.d/evil", "app/../../x.log"] {
            let mut req = request(None, Default::default());
            req.config.as_mut().unwrap().log_path = bad.into();
            let e = t.pods.create_container(req).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
            assert!(e.to_string().contains("log_path"), "{e}");
        }
        let mut req = request(None, Default::default());
        req.config.as_mut().unwrap().log_path = "debug/0.log".into();
        assert!(t.pods.create_container(req).await.unwrap_err().is_not_found(), "on to the image lookup");
    }

    /// Issue 8 item 9: a TARGET pid namespace joins a running container of the same pod only.
    #[tokio::test]
    async fn pid_target_must_be_a_running_container_of_the_same_sandbox() {
        let t = test_pods(false, None).await;
        let mut other = t.pods.store.sandbox("sb1").unwrap();
        other.id = "sb2".into();
        t.pods.store.put_sandbox(SandboxRecord { ..other }).unwrap();
        let mut c = t.pods.store.container("c1").unwrap();
        c.id = "theirs".into();
        c.sandbox_id = "sb2".into();
        c.pid = 4242;
        t.pods.store.put_container(c).unwrap();
        t.pods.store.update_container("c1", |r| r.pid = 77).unwrap();

        let create = |target_id: &str| t.pods.create_container(request(None, target(target_id)));
        let e = create("theirs").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("sb2"), "{e}");
        let e = create("done").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        let e = create("nope").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("target"), "{e}");
        // A running container of the same pod passes on to the image lookup.
        let e = create("c1").await.unwrap_err();
        assert!(e.is_not_found() && e.to_string().contains("image"), "{e}");
        assert_eq!(t.pods.target_pid(&request(None, target("c1")).config.unwrap(), "sb1").unwrap(), Some(77));
    }
}
