//! ContainerStatus and ListContainers. Exited containers stay listed until RemoveContainer: the
//! kubelet derives restart counts, init progress and crash-loop backoff from them. Labels and
//! annotations come back exactly as sent (the kubelet restores pod specs from them).

use std::collections::HashMap;

use super::api;
use super::pods::Pods;
use super::sandbox_status::matches_selector;
use super::store::{ContainerRecord, ContainerState};
use crate::error::Result;

fn state(s: ContainerState) -> api::ContainerState {
    match s {
        ContainerState::Creating | ContainerState::Created => api::ContainerState::ContainerCreated,
        ContainerState::Running => api::ContainerState::ContainerRunning,
        ContainerState::Exited => api::ContainerState::ContainerExited,
        ContainerState::Unknown => api::ContainerState::ContainerUnknown,
    }
}

impl Pods {
    /// The image name shown for a container (its first repo tag, as containerd does), the image ref
    /// (repo digest, else the ID) and the image ID.
    fn container_image(&self, c: &ContainerRecord) -> (String, String) {
        match self.images.lookup(&c.image_id).ok().flatten() {
            Some(found) => (
                found.repo_tags.first().cloned().unwrap_or_else(|| c.image.clone()),
                found.repo_digests.first().cloned().unwrap_or_else(|| c.image_id.clone()),
            ),
            None => (c.image.clone(), c.image_id.clone()),
        }
    }

    pub fn container_status_of(&self, c: &ContainerRecord) -> Result<api::ContainerStatus> {
        let (image, image_ref) = self.container_image(c);
        let mounts = c
            .config
            .mounts
            .iter()
            .map(|m| api::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation,
                ..Default::default()
            })
            .collect();
        let resources = c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| api::ContainerResources { linux: Some(r), ..Default::default() });
        Ok(api::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: state(c.state) as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: Some(api::ImageSpec { image, ..Default::default() }),
            image_ref,
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts,
            log_path: c.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            resources,
            image_id: c.image_id.clone(),
            user: self.container_user(&c.id),
            stop_signal: super::container_stop::cri_signal(super::container_stop::stop_signal_of(c)) as i32,
        })
    }

    /// The identity the container's first process started with, from its spec (the kubelet's
    /// SupplementalGroupsPolicy reads it back).
    fn container_user(&self, id: &str) -> Option<api::ContainerUser> {
        let bytes = std::fs::read(self.paths.bundle(id).join("config.json")).ok()?;
        let spec: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let user = spec.get("process")?.get("user")?;
        let mut groups: Vec<i64> = user
            .get("additionalGids")
            .and_then(|g| g.as_array())
            .map(|a| a.iter().filter_map(|g| g.as_i64()).collect())
            .unwrap_or_default();
        let gid = user.get("gid")?.as_i64()?;
        if !groups.contains(&gid) {
            groups.insert(0, gid);
        }
        Some(api::ContainerUser {
            linux: Some(api::LinuxContainerUser {
                uid: user.get("uid")?.as_i64()?,
                gid,
                supplemental_groups: groups,
            }),
        })
    }

    pub fn container_status(&self, req: api::ContainerStatusRequest) -> Result<api::ContainerStatusResponse> {
        let c = self.store.find_container(&req.container_id)?;
        let id = c.id.clone();
        let mut info = HashMap::new();
        if req.verbose {
            let spec = std::fs::read(self.paths.bundle(&id).join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            let v = serde_json::json!({
                "sandboxID": c.sandbox_id,
                "pid": c.pid,
                "snapshotKey": c.id,
                "snapshotter": self.engine.snapshots.name(),
                "runtimeSpec": spec,
                "config": c.config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(api::ContainerStatusResponse { status: Some(self.container_status_of(&c)?), info })
    }

    pub fn list_containers(&self, filter: Option<api::ContainerFilter>) -> Result<Vec<api::Container>> {
        let f = filter.unwrap_or_default();
        let mut out: Vec<api::Container> = self
            .store
            .containers()
            .into_iter()
            .filter(|c| c.state != ContainerState::Creating)
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| f.state.as_ref().is_none_or(|s| s.state == state(c.state) as i32))
            .filter(|c| matches_selector(&c.config.labels, &f.label_selector))
            .map(|c| {
                let (image, image_ref) = self.container_image(&c);
                api::Container {
                    id: c.id.clone(),
                    pod_sandbox_id: c.sandbox_id.clone(),
                    metadata: c.config.metadata.clone(),
                    image: Some(api::ImageSpec { image, ..Default::default() }),
                    image_ref,
                    state: state(c.state) as i32,
                    created_at: c.created_at,
                    labels: c.config.labels.clone(),
                    annotations: c.config.annotations.clone(),
                    image_id: c.image_id.clone(),
                }
            })
            .collect();
        out.sort_by_key(|x| std::cmp::Reverse(x.created_at));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::pods::fixture::test_pods;

    /// The status and list calls answer from the stored requests: every annotation comes back as
    /// sent, whatever the runtime handler lets into the OCI specs (issue 8 item 6).
    #[tokio::test]
    async fn annotations_come_back_exactly_as_sent() {
        let t = test_pods(false, None).await;
        let sent: HashMap<String, String> = [
            ("io.kubernetes.container.hash", "abc"),
            ("run.oci.keep_original_groups", "1"),
            ("io.kubernetes.cri.container-type", "spoofed"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        t.pods.store.update_sandbox("sb1", |r| r.config.annotations = sent.clone()).unwrap();
        t.pods.store.update_container("c1", |r| r.config.annotations = sent.clone()).unwrap();
        let req = api::PodSandboxStatusRequest { pod_sandbox_id: "sb1".into(), verbose: false };
        assert_eq!(t.pods.pod_sandbox_status(req).unwrap().status.unwrap().annotations, sent);
        let req = api::ContainerStatusRequest { container_id: "c1".into(), verbose: false };
        assert_eq!(t.pods.container_status(req).unwrap().status.unwrap().annotations, sent);
        let listed = t.pods.list_containers(None).unwrap();
        assert_eq!(listed.iter().find(|c| c.id == "c1").unwrap().annotations, sent);
    }
}
