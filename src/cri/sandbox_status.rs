//! PodSandboxStatus and ListPodSandbox. The kubelet reads the state, created_at, metadata (attempt),
//! the IPs and the namespace options back (a sandbox whose network mode or IP does not match what it
//! asked for is recreated forever), so they are echoed exactly.

use std::collections::HashMap;

use super::api;
use super::pods::{Pods, namespace_options};
use super::store::{SandboxRecord, SandboxState};
use crate::error::Result;

fn state(s: SandboxState) -> api::PodSandboxState {
    match s {
        SandboxState::Ready => api::PodSandboxState::SandboxReady,
        SandboxState::NotReady | SandboxState::Creating => api::PodSandboxState::SandboxNotready,
    }
}

fn labels(m: &HashMap<String, String>) -> HashMap<String, String> {
    m.clone()
}

/// Whether `labels` has every pair of `selector`.
pub fn matches_selector(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Pods {
    fn sandbox_status_of(&self, r: &SandboxRecord) -> api::PodSandboxStatus {
        let nso = namespace_options(&r.config);
        let host_net = nso.network == api::NamespaceMode::Node as i32;
        let (ip, additional) = match (host_net, r.ips.split_first()) {
            (false, Some((first, rest))) => {
                (first.clone(), rest.iter().map(|ip| api::PodIp { ip: ip.clone() }).collect())
            }
            _ => (String::new(), Vec::new()),
        };
        api::PodSandboxStatus {
            id: r.id.clone(),
            metadata: r.config.metadata.clone(),
            state: state(r.state) as i32,
            created_at: r.created_at,
            network: Some(api::PodSandboxNetworkStatus { ip, additional_ips: additional }),
            linux: Some(api::LinuxPodSandboxStatus {
                namespaces: Some(api::Namespace { options: Some(nso) }),
            }),
            labels: labels(&r.config.labels),
            annotations: r.config.annotations.clone(),
            runtime_handler: r.runtime_handler.clone(),
        }
    }

    pub fn pod_sandbox_status(
        &self,
        req: api::PodSandboxStatusRequest,
    ) -> Result<api::PodSandboxStatusResponse> {
        let r = self.store.find_sandbox(&req.pod_sandbox_id)?;
        let id = r.id.clone();
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "pid": r.pid,
                "processStatus": if r.pid > 0 { "running" } else { "stopped" },
                "netNamespaceClosed": r.netns.as_ref().is_none_or(|p| !p.exists()),
                "netNamespacePath": r.netns,
                "image": r.image,
                "snapshotKey": r.id,
                "snapshotter": self.engine.snapshots.name(),
                "runtimeHandler": r.runtime_handler,
                "runtimeType": "berth-shim",
                "runtimeOptions": self.handler(&r.runtime_handler).ok().map(|(_, h)| h),
                "config": r.config,
                "ips": r.ips,
            });
            // What UpdatePodSandboxResources set, where containerd shows it (`setUpdatedResources`).
            let mut v = v;
            for (key, res) in [("overhead", &r.overhead), ("resources", &r.resources)] {
                if let Some(res) = res {
                    v[key] = serde_json::json!({ "linux": res });
                }
            }
            info.insert("info".to_string(), v.to_string());
        }
        let containers_statuses =
            self.store.containers_of(&id).iter().filter_map(|c| self.container_status_of(c).ok()).collect();
        Ok(api::PodSandboxStatusResponse {
            status: Some(self.sandbox_status_of(&r)),
            info,
            containers_statuses,
            timestamp: crate::engine::metadata::now_nanos(),
        })
    }

    pub fn list_pod_sandbox(&self, filter: Option<api::PodSandboxFilter>) -> Result<Vec<api::PodSandbox>> {
        let f = filter.unwrap_or_default();
        let mut out: Vec<api::PodSandbox> = self
            .store
            .sandboxes()
            .into_iter()
            .filter(|r| f.id.is_empty() || r.id.starts_with(&f.id))
            .filter(|r| f.state.as_ref().is_none_or(|s| s.state == state(r.state) as i32))
            .filter(|r| matches_selector(&r.config.labels, &f.label_selector))
            .map(|r| api::PodSandbox {
                id: r.id.clone(),
                metadata: r.config.metadata.clone(),
                state: state(r.state) as i32,
                created_at: r.created_at,
                labels: labels(&r.config.labels),
                annotations: r.config.annotations.clone(),
                runtime_handler: r.runtime_handler.clone(),
            })
            .collect();
        out.sort_by_key(|x| std::cmp::Reverse(x.created_at));
        Ok(out)
    }
}
