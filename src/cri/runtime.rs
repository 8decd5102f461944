//! CRI RuntimeService: the node-level calls (Version, Status, RuntimeConfig, UpdateRuntimeConfig)
//! here, every sandbox and container call dispatched to the pod runtime (`pods.rs` and the files of
//! each RPC family). Exec, Attach and PortForward check their target and answer a single-use URL on
//! the streaming server. Checkpoints answer Unimplemented, never a fake success.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::api;
use super::pods::Pods;
use super::rpc;
use crate::config::{CgroupDriver, Config};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::streaming::{self, StreamServer};

/// The CRI API version berth speaks.
pub const CRI_API_VERSION: &str = "v1";
/// Berth's name as reported to the kubelet.
pub const RUNTIME_NAME: &str = "berth";

pub struct RuntimeService {
    config: Arc<Config>,
    pods: Arc<Pods>,
    metrics: Arc<Metrics>,
    streams: Arc<StreamServer>,
}

impl RuntimeService {
    pub fn new(
        config: Arc<Config>,
        pods: Arc<Pods>,
        metrics: Arc<Metrics>,
        streams: Arc<StreamServer>,
    ) -> Self {
        RuntimeService { config, pods, metrics, streams }
    }

    /// The ready sandbox a PortForward targets, and the ports it may reach.
    fn port_forward_request(
        &self,
        r: api::PortForwardRequest,
    ) -> crate::Result<streaming::PortForwardRequest> {
        let id = self.pods.ready_sandbox(&r.pod_sandbox_id)?.id;
        let ports = r
            .port
            .iter()
            .map(|&p| {
                u16::try_from(p)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| Error::invalid(format!("port {p} is not a valid port number")))
            })
            .collect::<crate::Result<Vec<u16>>>()?;
        Ok(streaming::PortForwardRequest { pod_sandbox_id: id, ports })
    }

    async fn status_response(&self, verbose: bool) -> api::StatusResponse {
        let runtime = api::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        let network = match self.pods.network.status().await {
            Ok(()) => api::RuntimeCondition {
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
            .flat_map(|name| {
                let features = Some(api::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                });
                let named = api::RuntimeHandler { name: name.clone(), features };
                // The default handler also answers to "", as the kubelet names it.
                let default = (*name == self.config.runtimes.default)
                    .then(|| api::RuntimeHandler { name: String::new(), features });
                default.into_iter().chain(std::iter::once(named))
            })
            .collect();
        api::StatusResponse {
            status: Some(api::RuntimeStatus { conditions: vec![runtime, network] }),
            info,
            runtime_handlers,
            features: Some(api::RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
            }),
        }
    }
}

fn unimplemented<T>(method: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!("{method} is not implemented by berth yet")))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<api::ContainerEventResponse, Status>> + Send + 'static>>;

/// The answer of a streaming list RPC (cri-api v0.36, feature gate CRIListStreaming).
pub type ListStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Items per message of a streaming list: containerd's `DefaultStreamBatchSize`.
const STREAM_BATCH: usize = 5000;

/// A streaming list's answer: the whole list, taken at once as its List RPC takes it, in messages of
/// at most [`STREAM_BATCH`] items, each item once; an empty list is a stream that ends at once.
pub fn batches<T: Send + 'static, R: Send + 'static>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> R + Send + 'static,
) -> ListStream<R> {
    let mut items = items.into_iter().peekable();
    let messages = std::iter::from_fn(move || {
        items.peek()?;
        Some(Ok(wrap(items.by_ref().take(STREAM_BATCH).collect())))
    });
    Box::pin(tokio_stream::iter(messages.collect::<Vec<_>>()))
}

#[tonic::async_trait]
impl api::runtime_service_server::RuntimeService for RuntimeService {
    async fn version(
        &self,
        _r: Request<api::VersionRequest>,
    ) -> Result<Response<api::VersionResponse>, Status> {
        rpc(&self.metrics, "Version", "", async {
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
        rpc(&self.metrics, "Status", "", async { Ok(self.status_response(verbose).await) }).await
    }

    async fn runtime_config(
        &self,
        _r: Request<api::RuntimeConfigRequest>,
    ) -> Result<Response<api::RuntimeConfigResponse>, Status> {
        rpc(&self.metrics, "RuntimeConfig", "", async {
            // The driver the specs and shims are made with; the kubelet (1.31+) adopts it.
            let driver = match self.pods.env.cgroup_driver {
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
        r: Request<api::RunPodSandboxRequest>,
    ) -> Result<Response<api::RunPodSandboxResponse>, Status> {
        let r = r.into_inner();
        let name =
            r.config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| m.name.clone()).unwrap_or_default();
        rpc(&self.metrics, "RunPodSandbox", &name, async {
            let started = std::time::Instant::now();
            let pod_sandbox_id = self.pods.run_pod_sandbox(r).await?;
            self.metrics.pod_start_duration.observe(started.elapsed().as_secs_f64());
            Ok(api::RunPodSandboxResponse { pod_sandbox_id })
        })
        .await
    }
    async fn stop_pod_sandbox(
        &self,
        r: Request<api::StopPodSandboxRequest>,
    ) -> Result<Response<api::StopPodSandboxResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        rpc(&self.metrics, "StopPodSandbox", &id, async {
            let started = std::time::Instant::now();
            self.pods.stop_pod_sandbox(&id).await?;
            self.metrics.pod_teardown_duration.observe(started.elapsed().as_secs_f64());
            Ok(api::StopPodSandboxResponse {})
        })
        .await
    }
    async fn remove_pod_sandbox(
        &self,
        r: Request<api::RemovePodSandboxRequest>,
    ) -> Result<Response<api::RemovePodSandboxResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        rpc(&self.metrics, "RemovePodSandbox", &id, async {
            let started = std::time::Instant::now();
            self.pods.remove_pod_sandbox(&id).await?;
            self.metrics.pod_teardown_duration.observe(started.elapsed().as_secs_f64());
            Ok(api::RemovePodSandboxResponse {})
        })
        .await
    }
    async fn pod_sandbox_status(
        &self,
        r: Request<api::PodSandboxStatusRequest>,
    ) -> Result<Response<api::PodSandboxStatusResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "PodSandboxStatus", &r.pod_sandbox_id.clone(), async {
            self.pods.pod_sandbox_status(r)
        })
        .await
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<api::ListPodSandboxRequest>,
    ) -> Result<Response<api::ListPodSandboxResponse>, Status> {
        let filter = r.into_inner().filter;
        rpc(&self.metrics, "ListPodSandbox", "", async {
            Ok(api::ListPodSandboxResponse { items: self.pods.list_pod_sandbox(filter)? })
        })
        .await
    }
    async fn create_container(
        &self,
        r: Request<api::CreateContainerRequest>,
    ) -> Result<Response<api::CreateContainerResponse>, Status> {
        let r = r.into_inner();
        let sandbox = r.pod_sandbox_id.clone();
        rpc(&self.metrics, "CreateContainer", &sandbox, async {
            Ok(api::CreateContainerResponse { container_id: self.pods.create_container(r).await? })
        })
        .await
    }
    async fn start_container(
        &self,
        r: Request<api::StartContainerRequest>,
    ) -> Result<Response<api::StartContainerResponse>, Status> {
        let id = r.into_inner().container_id;
        rpc(&self.metrics, "StartContainer", &id, async {
            self.pods.start_container(&id).await?;
            Ok(api::StartContainerResponse {})
        })
        .await
    }
    async fn stop_container(
        &self,
        r: Request<api::StopContainerRequest>,
    ) -> Result<Response<api::StopContainerResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "StopContainer", &r.container_id.clone(), async {
            self.pods.stop_container(&r.container_id, r.timeout).await?;
            Ok(api::StopContainerResponse {})
        })
        .await
    }
    async fn remove_container(
        &self,
        r: Request<api::RemoveContainerRequest>,
    ) -> Result<Response<api::RemoveContainerResponse>, Status> {
        let id = r.into_inner().container_id;
        rpc(&self.metrics, "RemoveContainer", &id, async {
            self.pods.remove_container(&id).await?;
            Ok(api::RemoveContainerResponse {})
        })
        .await
    }
    async fn list_containers(
        &self,
        r: Request<api::ListContainersRequest>,
    ) -> Result<Response<api::ListContainersResponse>, Status> {
        let filter = r.into_inner().filter;
        rpc(&self.metrics, "ListContainers", "", async {
            Ok(api::ListContainersResponse { containers: self.pods.list_containers(filter)? })
        })
        .await
    }
    async fn container_status(
        &self,
        r: Request<api::ContainerStatusRequest>,
    ) -> Result<Response<api::ContainerStatusResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "ContainerStatus", &r.container_id.clone(), async {
            self.pods.container_status(r)
        })
        .await
    }
    async fn update_container_resources(
        &self,
        r: Request<api::UpdateContainerResourcesRequest>,
    ) -> Result<Response<api::UpdateContainerResourcesResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "UpdateContainerResources", &r.container_id.clone(), async {
            self.pods.update_container_resources(r).await?;
            Ok(api::UpdateContainerResourcesResponse {})
        })
        .await
    }
    async fn reopen_container_log(
        &self,
        r: Request<api::ReopenContainerLogRequest>,
    ) -> Result<Response<api::ReopenContainerLogResponse>, Status> {
        let id = r.into_inner().container_id;
        rpc(&self.metrics, "ReopenContainerLog", &id, async {
            self.pods.reopen_container_log(&id).await?;
            Ok(api::ReopenContainerLogResponse {})
        })
        .await
    }
    async fn exec_sync(
        &self,
        r: Request<api::ExecSyncRequest>,
    ) -> Result<Response<api::ExecSyncResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "ExecSync", &r.container_id.clone(), self.pods.exec_sync(r)).await
    }
    async fn exec(&self, r: Request<api::ExecRequest>) -> Result<Response<api::ExecResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "Exec", &r.container_id.clone(), async {
            let rec = self.pods.running(&r.container_id)?;
            let req = streaming::ExecRequest {
                container_id: rec.id,
                cmd: r.cmd,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            };
            Ok(api::ExecResponse { url: self.streams.get_exec(req)? })
        })
        .await
    }
    async fn attach(&self, r: Request<api::AttachRequest>) -> Result<Response<api::AttachResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "Attach", &r.container_id.clone(), async {
            let rec = self.pods.running(&r.container_id)?;
            let req = streaming::AttachRequest {
                container_id: rec.id,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            };
            Ok(api::AttachResponse { url: self.streams.get_attach(req)? })
        })
        .await
    }
    async fn port_forward(
        &self,
        r: Request<api::PortForwardRequest>,
    ) -> Result<Response<api::PortForwardResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "PortForward", &r.pod_sandbox_id.clone(), async {
            let req = self.port_forward_request(r)?;
            Ok(api::PortForwardResponse { url: self.streams.get_port_forward(req)? })
        })
        .await
    }
    async fn container_stats(
        &self,
        r: Request<api::ContainerStatsRequest>,
    ) -> Result<Response<api::ContainerStatsResponse>, Status> {
        let id = r.into_inner().container_id;
        rpc(&self.metrics, "ContainerStats", &id.clone(), self.pods.container_stats(id)).await
    }
    async fn list_container_stats(
        &self,
        r: Request<api::ListContainerStatsRequest>,
    ) -> Result<Response<api::ListContainerStatsResponse>, Status> {
        let filter = r.into_inner().filter;
        rpc(&self.metrics, "ListContainerStats", "", self.pods.list_container_stats(filter)).await
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<api::PodSandboxStatsRequest>,
    ) -> Result<Response<api::PodSandboxStatsResponse>, Status> {
        let id = r.into_inner().pod_sandbox_id;
        rpc(&self.metrics, "PodSandboxStats", &id.clone(), self.pods.pod_sandbox_stats(id)).await
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<api::ListPodSandboxStatsRequest>,
    ) -> Result<Response<api::ListPodSandboxStatsResponse>, Status> {
        let filter = r.into_inner().filter;
        rpc(&self.metrics, "ListPodSandboxStats", "", self.pods.list_pod_sandbox_stats(filter)).await
    }
    async fn update_runtime_config(
        &self,
        r: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<api::UpdateRuntimeConfigResponse>, Status> {
        let cidr = r.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr);
        rpc(&self.metrics, "UpdateRuntimeConfig", "", async {
            if let Some(cidr) = cidr {
                self.pods.network.set_pod_cidr(&cidr)?;
            }
            Ok(api::UpdateRuntimeConfigResponse {})
        })
        .await
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
        use tokio_stream::StreamExt;
        let events = tokio_stream::wrappers::BroadcastStream::new(self.pods.subscribe());
        // A subscriber that fell behind misses what it could not keep; the stream goes on.
        let stream = events.filter_map(|e| e.ok().map(Ok));
        self.metrics.observe_rpc("GetContainerEvents", tonic::Code::Ok, std::time::Duration::ZERO);
        Ok(Response::new(Box::pin(stream)))
    }
    async fn list_metric_descriptors(
        &self,
        _r: Request<api::ListMetricDescriptorsRequest>,
    ) -> Result<Response<api::ListMetricDescriptorsResponse>, Status> {
        rpc(&self.metrics, "ListMetricDescriptors", "", async { Ok(super::stats::metric_descriptors()) })
            .await
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<api::ListPodSandboxMetricsResponse>, Status> {
        rpc(&self.metrics, "ListPodSandboxMetrics", "", self.pods.list_pod_sandbox_metrics()).await
    }

    type StreamPodSandboxesStream = ListStream<api::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        r: Request<api::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = r.into_inner().filter;
        rpc(&self.metrics, "StreamPodSandboxes", "", async {
            let items = self.pods.list_pod_sandbox(filter)?;
            Ok(batches(items, |pod_sandboxes| api::StreamPodSandboxesResponse { pod_sandboxes }))
        })
        .await
    }
    type StreamContainersStream = ListStream<api::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        r: Request<api::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = r.into_inner().filter;
        rpc(&self.metrics, "StreamContainers", "", async {
            let items = self.pods.list_containers(filter)?;
            Ok(batches(items, |containers| api::StreamContainersResponse { containers }))
        })
        .await
    }
    type StreamContainerStatsStream = ListStream<api::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        r: Request<api::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = r.into_inner().filter;
        rpc(&self.metrics, "StreamContainerStats", "", async {
            let items = self.pods.list_container_stats(filter).await?.stats;
            Ok(batches(items, |container_stats| api::StreamContainerStatsResponse { container_stats }))
        })
        .await
    }
    type StreamPodSandboxStatsStream = ListStream<api::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<api::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = r.into_inner().filter;
        rpc(&self.metrics, "StreamPodSandboxStats", "", async {
            let items = self.pods.list_pod_sandbox_stats(filter).await?.stats;
            Ok(batches(items, |pod_sandbox_stats| api::StreamPodSandboxStatsResponse { pod_sandbox_stats }))
        })
        .await
    }
    type StreamPodSandboxMetricsStream = ListStream<api::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _r: Request<api::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        rpc(&self.metrics, "StreamPodSandboxMetrics", "", async {
            let items = self.pods.list_pod_sandbox_metrics().await?.pod_metrics;
            Ok(batches(items, |pod_sandbox_metrics| api::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }))
        })
        .await
    }
    async fn update_pod_sandbox_resources(
        &self,
        r: Request<api::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<api::UpdatePodSandboxResourcesResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "UpdatePodSandboxResources", &r.pod_sandbox_id.clone(), async {
            self.pods.update_pod_sandbox_resources(r)?;
            Ok(api::UpdatePodSandboxResourcesResponse {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    async fn sizes(n: usize) -> Vec<usize> {
        let items: Vec<usize> = (0..n).collect();
        let stream = batches(items, |b| b);
        let messages: Vec<Vec<usize>> = stream.map(|m| m.unwrap()).collect().await;
        assert_eq!(messages.concat(), (0..n).collect::<Vec<_>>(), "every item once, in order");
        messages.iter().map(Vec::len).collect()
    }

    #[tokio::test]
    async fn streamed_lists_come_in_batches_of_at_least_one_item() {
        assert_eq!(sizes(0).await, Vec::<usize>::new());
        assert_eq!(sizes(3).await, [3]);
        assert_eq!(sizes(STREAM_BATCH).await, [STREAM_BATCH]);
        assert_eq!(sizes(2 * STREAM_BATCH + 1).await, [STREAM_BATCH, STREAM_BATCH, 1]);
    }
}
