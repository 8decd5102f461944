//! UpdatePodSandboxResources (cri-api v0.36, in-place pod resize): the kubelet tells the runtime the
//! pod's new overhead and resources after it has resized the pod cgroup itself. Like containerd 2.x
//! (`sandbox_update_resources.go`), berth records them on the sandbox, persisted, and shows them in
//! the verbose PodSandboxStatus; it writes no cgroup. containerd also hands them to NRI plugins and its
//! sandbox controller, whose podsandbox implementation does nothing with them; berth has neither.

use super::api;
use super::pods::Pods;
use crate::error::Result;

impl Pods {
    pub fn update_pod_sandbox_resources(&self, req: api::UpdatePodSandboxResourcesRequest) -> Result<()> {
        let id = self.store.find_sandbox(&req.pod_sandbox_id)?.id;
        self.store.update_sandbox(&id, |r| {
            r.overhead = req.overhead;
            r.resources = req.resources;
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::pods::fixture::test_pods;

    fn verbose_info(t: &crate::cri::pods::fixture::TestPods) -> serde_json::Value {
        let req = api::PodSandboxStatusRequest { pod_sandbox_id: "sb1".into(), verbose: true };
        serde_json::from_str(&t.pods.pod_sandbox_status(req).unwrap().info["info"]).unwrap()
    }

    #[tokio::test]
    async fn resources_are_recorded_and_shown_in_the_verbose_status() {
        let t = test_pods(false, None).await;
        assert!(verbose_info(&t).get("resources").is_none());
        let resources = api::LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        };
        let overhead = api::LinuxContainerResources { cpu_shares: 10, ..Default::default() };
        t.pods
            .update_pod_sandbox_resources(api::UpdatePodSandboxResourcesRequest {
                pod_sandbox_id: "sb".into(),
                overhead: Some(overhead.clone()),
                resources: Some(resources.clone()),
            })
            .unwrap();
        let rec = t.pods.store.sandbox("sb1").unwrap();
        assert_eq!((rec.overhead, rec.resources), (Some(overhead), Some(resources)));
        let info = verbose_info(&t);
        assert_eq!(info["resources"]["linux"]["memory_limit_in_bytes"], 1 << 30, "{info}");
        assert_eq!(info["overhead"]["linux"]["cpu_shares"], 10, "{info}");

        let gone =
            api::UpdatePodSandboxResourcesRequest { pod_sandbox_id: "nope".into(), ..Default::default() };
        assert!(t.pods.update_pod_sandbox_resources(gone).unwrap_err().is_not_found());
    }
}
