//! CRI RuntimeService. This file holds the node-level calls (Version, Status, RuntimeConfig,
//! UpdateRuntimeConfig); pod and container calls answer Unimplemented until their issue lands,
//! never a fake success.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::api;
use super::rpc;
use crate::config::{CgroupDriver, Config};

/// The CRI API version berth speaks.
pub const CRI_API_VERSION: &str = "v1";
/// Berth's name as reported to the kubelet.
pub const RUNTIME_NAME: &str = "berth";

pub struct RuntimeService {
    config: Arc<Config>,
}

impl RuntimeService {
    pub fn new(config: Arc<Config>) -> Self {
        RuntimeService { config }
    }

    fn status_response(&self, verbose: bool) -> api::StatusResponse {
        let runtime = api::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        let network = match crate::network::conf::load_network(&self.config.cni.conf_dir) {
            Ok(_) => api::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(e) => api::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: cni plugin not initialized: {e}"),
            },
        };
        let mut info = HashMap::new();
        if verbose {
            info.insert(
                "config".to_string(),
                serde_json::to_string(&*self.config).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
            );
        }
        let runtime_handlers = self
            .config
            .runtimes
            .handlers
            .keys()
            .map(|name| api::RuntimeHandler {
                name: if *name == self.config.runtimes.default { String::new() } else { name.clone() },
                features: Some(api::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            })
            .collect();
        api::StatusResponse {
            status: Some(api::RuntimeStatus { conditions: vec![runtime, network] }),
            info,
            runtime_handlers,
            features: Some(api::RuntimeFeatures { supplemental_groups_policy: false }),
        }
    }
}

fn unimplemented<T>(method: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!("{method} is not implemented by berth yet")))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<api::ContainerEventResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl api::runtime_service_server::RuntimeService for RuntimeService {
    async fn version(
        &self,
        _r: Request<api::VersionRequest>,
    ) -> Result<Response<api::VersionResponse>, Status> {
        rpc("Version", "", async {
            Ok(api::VersionResponse {
                version: "0.1.0".into(),
                runtime_name: RUNTIME_NAME.into(),
                runtime_version: env!("CARGO_PKG_VERSION").into(),
                runtime_api_version: CRI_API_VERSION.into(),
            })
        })
        .await
    }

    async fn status(&self, r: Request<api::StatusRequest>) -> Result<Response<api::StatusResponse>, Status> {
        let verbose = r.get_ref().verbose;
        rpc("Status", "", async { Ok(self.status_response(verbose)) }).await
    }

    async fn runtime_config(
        &self,
        _r: Request<api::RuntimeConfigRequest>,
    ) -> Result<Response<api::RuntimeConfigResponse>, Status> {
        rpc("RuntimeConfig", "", async {
            let driver = match self.config.cri.cgroup_driver {
                CgroupDriver::Systemd => api::CgroupDriver::Systemd,
                CgroupDriver::Cgroupfs => api::CgroupDriver::Cgroupfs,
            };
            Ok(api::RuntimeConfigResponse {
                linux: Some(api::LinuxRuntimeConfiguration { cgroup_driver: driver as i32 }),
            })
        })
        .await
    }

    async fn run_pod_sandbox(
        &self,
        _r: Request<api::RunPodSandboxRequest>,
    ) -> Result<Response<api::RunPodSandboxResponse>, Status> {
        unimplemented("RunPodSandbox")
    }
    async fn stop_pod_sandbox(
        &self,
        _r: Request<api::StopPodSandboxRequest>,
    ) -> Result<Response<api::StopPodSandboxResponse>, Status> {
        unimplemented("StopPodSandbox")
    }
    async fn remove_pod_sandbox(
        &self,
        _r: Request<api::RemovePodSandboxRequest>,
    ) -> Result<Response<api::RemovePodSandboxResponse>, Status> {
        unimplemented("RemovePodSandbox")
    }
    async fn pod_sandbox_status(
        &self,
        _r: Request<api::PodSandboxStatusRequest>,
    ) -> Result<Response<api::PodSandboxStatusResponse>, Status> {
        unimplemented("PodSandboxStatus")
    }
    async fn list_pod_sandbox(
        &self,
        _r: Request<api::ListPodSandboxRequest>,
    ) -> Result<Response<api::ListPodSandboxResponse>, Status> {
        unimplemented("ListPodSandbox")
    }
    async fn create_container(
        &self,
        _r: Request<api::CreateContainerRequest>,
    ) -> Result<Response<api::CreateContainerResponse>, Status> {
        unimplemented("CreateContainer")
    }
    async fn start_container(
        &self,
        _r: Request<api::StartContainerRequest>,
    ) -> Result<Response<api::StartContainerResponse>, Status> {
        unimplemented("StartContainer")
    }
    async fn stop_container(
        &self,
        _r: Request<api::StopContainerRequest>,
    ) -> Result<Response<api::StopContainerResponse>, Status> {
        unimplemented("StopContainer")
    }
    async fn remove_container(
        &self,
        _r: Request<api::RemoveContainerRequest>,
    ) -> Result<Response<api::RemoveContainerResponse>, Status> {
        unimplemented("RemoveContainer")
    }
    async fn list_containers(
        &self,
        _r: Request<api::ListContainersRequest>,
    ) -> Result<Response<api::ListContainersResponse>, Status> {
        unimplemented("ListContainers")
    }
    async fn container_status(
        &self,
        _r: Request<api::ContainerStatusRequest>,
    ) -> Result<Response<api::ContainerStatusResponse>, Status> {
        unimplemented("ContainerStatus")
    }
    async fn update_container_resources(
        &self,
        _r: Request<api::UpdateContainerResourcesRequest>,
    ) -> Result<Response<api::UpdateContainerResourcesResponse>, Status> {
        unimplemented("UpdateContainerResources")
    }
    async fn reopen_container_log(
        &self,
        _r: Request<api::ReopenContainerLogRequest>,
    ) -> Result<Response<api::ReopenContainerLogResponse>, Status> {
        unimplemented("ReopenContainerLog")
    }
    async fn exec_sync(
        &self,
        _r: Request<api::ExecSyncRequest>,
    ) -> Result<Response<api::ExecSyncResponse>, Status> {
        unimplemented("ExecSync")
    }
    async fn exec(&self, _r: Request<api::ExecRequest>) -> Result<Response<api::ExecResponse>, Status> {
        unimplemented("Exec")
    }
    async fn attach(&self, _r: Request<api::AttachRequest>) -> Result<Response<api::AttachResponse>, Status> {
        unimplemented("Attach")
    }
    async fn port_forward(
        &self,
        _r: Request<api::PortForwardRequest>,
    ) -> Result<Response<api::PortForwardResponse>, Status> {
        unimplemented("PortForward")
    }
    async fn container_stats(
        &self,
        _r: Request<api::ContainerStatsRequest>,
    ) -> Result<Response<api::ContainerStatsResponse>, Status> {
        unimplemented("ContainerStats")
    }
    async fn list_container_stats(
        &self,
        _r: Request<api::ListContainerStatsRequest>,
    ) -> Result<Response<api::ListContainerStatsResponse>, Status> {
        unimplemented("ListContainerStats")
    }
    async fn pod_sandbox_stats(
        &self,
        _r: Request<api::PodSandboxStatsRequest>,
    ) -> Result<Response<api::PodSandboxStatsResponse>, Status> {
        unimplemented("PodSandboxStats")
    }
    async fn list_pod_sandbox_stats(
        &self,
        _r: Request<api::ListPodSandboxStatsRequest>,
    ) -> Result<Response<api::ListPodSandboxStatsResponse>, Status> {
        unimplemented("ListPodSandboxStats")
    }
    async fn update_runtime_config(
        &self,
        _r: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<api::UpdateRuntimeConfigResponse>, Status> {
        unimplemented("UpdateRuntimeConfig")
    }
    async fn checkpoint_container(
        &self,
        _r: Request<api::CheckpointContainerRequest>,
    ) -> Result<Response<api::CheckpointContainerResponse>, Status> {
        unimplemented("CheckpointContainer")
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _r: Request<api::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        unimplemented("GetContainerEvents")
    }
    async fn list_metric_descriptors(
        &self,
        _r: Request<api::ListMetricDescriptorsRequest>,
    ) -> Result<Response<api::ListMetricDescriptorsResponse>, Status> {
        unimplemented("ListMetricDescriptors")
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<api::ListPodSandboxMetricsResponse>, Status> {
        unimplemented("ListPodSandboxMetrics")
    }
}
