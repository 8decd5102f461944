//! A CRI v1 client over berthd's unix socket, as the kubelet connects: gRPC on HTTP/2 over a
//! `UnixStream`. Thin helpers wrap the image, pod and container calls the scenarios repeat (sending
//! the requests as the kubelet does: the sandbox config with every CreateContainer); anything else
//! goes through the public `image` and `runtime` clients directly. It must never interpret berth's
//! answers: tests do.

use std::path::{Path, PathBuf};

use berth::cri::api::image_service_client::ImageServiceClient;
use berth::cri::api::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};

use berth::cri::api::{
    AttachRequest, AuthConfig, Container, ContainerConfig, ContainerState, ContainerStatus,
    ContainerStatusRequest, CreateContainerRequest, ExecRequest, ExecSyncRequest, ExecSyncResponse, Image,
    ImageFsInfoRequest, ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ListContainersRequest,
    ListImagesRequest, ListPodSandboxRequest, PodSandbox, PodSandboxStatus, PodSandboxStatusRequest,
    PortForwardRequest, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, ReopenContainerLogRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};

use super::pod::PodConfig;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Uri};

/// Largest gRPC message accepted (berth's default send limit).
const MAX_MESSAGE: usize = 16 << 20;

/// Both CRI services on one connection.
#[derive(Clone)]
pub struct Cri {
    pub image: ImageServiceClient<Channel>,
    pub runtime: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI socket at `socket`.
    pub async fn connect(socket: &Path) -> Result<Cri, tonic::transport::Error> {
        Cri::connect_with_window(socket, None).await
    }

    /// Connects with an HTTP/2 receive window of `window` bytes per stream and per connection
    /// (`None`: the default), e.g. a tiny one for a client that stops reading a stream and should
    /// push back on berth at once.
    pub async fn connect_with_window(
        socket: &Path,
        window: Option<u32>,
    ) -> Result<Cri, tonic::transport::Error> {
        let socket: PathBuf = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector ignores it and dials the socket.
        let channel = Endpoint::try_from("http://[::]:50051")?
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
                }
            }))
            .await?;
        Ok(Cri {
            image: ImageServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            runtime: RuntimeServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }

    /// PullImage without credentials; returns the image ref (`sha256:<config digest>` for berth).
    pub async fn pull(&mut self, image: &str) -> Result<String, Status> {
        self.pull_with(image, None).await
    }

    /// PullImage with optional credentials.
    pub async fn pull_with(&mut self, image: &str, auth: Option<AuthConfig>) -> Result<String, Status> {
        let request = PullImageRequest { image: Some(spec(image)), auth, sandbox_config: None };
        Ok(self.image.pull_image(request).await?.into_inner().image_ref)
    }

    /// ImageStatus; `None` when berth does not have the image.
    pub async fn status(&mut self, image: &str) -> Result<Option<Image>, Status> {
        let request = ImageStatusRequest { image: Some(spec(image)), verbose: false };
        Ok(self.image.image_status(request).await?.into_inner().image)
    }

    /// ListImages without a filter.
    pub async fn list(&mut self) -> Result<Vec<Image>, Status> {
        Ok(self.image.list_images(ListImagesRequest { filter: None }).await?.into_inner().images)
    }

    /// RemoveImage.
    pub async fn remove(&mut self, image: &str) -> Result<(), Status> {
        self.image.remove_image(RemoveImageRequest { image: Some(spec(image)) }).await?;
        Ok(())
    }

    /// ImageFsInfo.
    pub async fn fs_info(&mut self) -> Result<ImageFsInfoResponse, Status> {
        Ok(self.image.image_fs_info(ImageFsInfoRequest {}).await?.into_inner())
    }
}

impl Cri {
    /// RunPodSandbox with the default runtime handler; returns the sandbox id.
    pub async fn run_pod(&mut self, pod: &PodConfig) -> Result<String, Status> {
        self.run_pod_with(pod, "").await
    }

    /// RunPodSandbox with the runtime handler `handler`.
    pub async fn run_pod_with(&mut self, pod: &PodConfig, handler: &str) -> Result<String, Status> {
        let request =
            RunPodSandboxRequest { config: Some(pod.config.clone()), runtime_handler: handler.into() };
        Ok(self.runtime.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id)
    }

    /// PodSandboxStatus (not verbose).
    pub async fn pod_status(&mut self, id: &str) -> Result<PodSandboxStatus, Status> {
        let request = PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false };
        let status = self.runtime.pod_sandbox_status(request).await?.into_inner().status;
        status.ok_or_else(|| Status::internal(format!("PodSandboxStatus of {id}: no status in the answer")))
    }

    /// ListPodSandbox without a filter.
    pub async fn pods(&mut self) -> Result<Vec<PodSandbox>, Status> {
        Ok(self.runtime.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await?.into_inner().items)
    }

    /// StopPodSandbox then RemovePodSandbox, as the kubelet's GC removes a deleted pod.
    pub async fn stop_remove_pod(&mut self, id: &str) -> Result<(), Status> {
        self.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.into() }).await?;
        self.runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await?;
        Ok(())
    }

    /// CreateContainer in sandbox `pod_id`, passing the pod's config along as the kubelet does.
    pub async fn create(
        &mut self,
        pod_id: &str,
        pod: &PodConfig,
        config: ContainerConfig,
    ) -> Result<String, Status> {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        Ok(self.runtime.create_container(request).await?.into_inner().container_id)
    }

    /// StartContainer.
    pub async fn start(&mut self, id: &str) -> Result<(), Status> {
        self.runtime.start_container(StartContainerRequest { container_id: id.into() }).await?;
        Ok(())
    }

    /// CreateContainer then StartContainer; returns the container id.
    pub async fn create_start(
        &mut self,
        pod_id: &str,
        pod: &PodConfig,
        config: ContainerConfig,
    ) -> Result<String, Status> {
        let id = self.create(pod_id, pod, config).await?;
        self.start(&id).await?;
        Ok(id)
    }

    /// StopContainer with a timeout in seconds.
    pub async fn stop(&mut self, id: &str, timeout: i64) -> Result<(), Status> {
        self.runtime.stop_container(StopContainerRequest { container_id: id.into(), timeout }).await?;
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove_container(&mut self, id: &str) -> Result<(), Status> {
        self.runtime.remove_container(RemoveContainerRequest { container_id: id.into() }).await?;
        Ok(())
    }

    /// Rotates the container's log `log` as the kubelet does: renames it to `<log>.20250101-000000`
    /// (returned), then ReopenContainerLog. Panics if the rename fails.
    pub async fn rotate_log(&mut self, id: &str, log: &Path) -> Result<PathBuf, Status> {
        let rotated = log.with_extension("log.20250101-000000");
        std::fs::rename(log, &rotated).unwrap_or_else(|e| panic!("renaming {}: {e}", log.display()));
        self.runtime.reopen_container_log(ReopenContainerLogRequest { container_id: id.into() }).await?;
        Ok(rotated)
    }

    /// ContainerStatus (not verbose).
    pub async fn container_status(&mut self, id: &str) -> Result<ContainerStatus, Status> {
        let request = ContainerStatusRequest { container_id: id.into(), verbose: false };
        let status = self.runtime.container_status(request).await?.into_inner().status;
        status.ok_or_else(|| Status::internal(format!("ContainerStatus of {id}: no status in the answer")))
    }

    /// ListContainers without a filter.
    pub async fn containers(&mut self) -> Result<Vec<Container>, Status> {
        Ok(self
            .runtime
            .list_containers(ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers)
    }

    /// ExecSync of `cmd` with a timeout in seconds (0: none).
    pub async fn exec(&mut self, id: &str, cmd: &[&str], timeout: i64) -> Result<ExecSyncResponse, Status> {
        let request = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        Ok(self.runtime.exec_sync(request).await?.into_inner())
    }

    /// ExecSync of `sh -c <script>` that must exit 0; returns its stdout. Panics otherwise.
    pub async fn sh(&mut self, id: &str, script: &str) -> String {
        let r = self
            .exec(id, &["sh", "-c", script], 30)
            .await
            .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e:?}"));
        assert_eq!(
            r.exit_code,
            0,
            "{script:?} exited {}: stdout {:?} stderr {:?}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    /// Exec: the streaming URL for `cmd` with the streams asked for (stdout always).
    pub async fn exec_url(
        &mut self,
        id: &str,
        cmd: &[&str],
        tty: bool,
        stdin: bool,
        stderr: bool,
    ) -> Result<String, Status> {
        let request = ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr,
        };
        Ok(self.runtime.exec(request).await?.into_inner().url)
    }

    /// Attach: the streaming URL with the streams asked for (stdout always).
    pub async fn attach_url(
        &mut self,
        id: &str,
        tty: bool,
        stdin: bool,
        stderr: bool,
    ) -> Result<String, Status> {
        let request = AttachRequest { container_id: id.into(), stdin, tty, stdout: true, stderr };
        Ok(self.runtime.attach(request).await?.into_inner().url)
    }

    /// PortForward: the streaming URL for `ports` of sandbox `pod_id` (empty: any port).
    pub async fn port_forward_url(&mut self, pod_id: &str, ports: &[u16]) -> Result<String, Status> {
        let request = PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: ports.iter().map(|&p| i32::from(p)).collect(),
        };
        Ok(self.runtime.port_forward(request).await?.into_inner().url)
    }

    /// Polls ContainerStatus until the container is EXITED; panics after `timeout`.
    pub async fn wait_exited(&mut self, id: &str, timeout: Duration) -> ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.container_status(id).await.unwrap_or_else(|e| panic!("ContainerStatus {id}: {e:?}"));
            if s.state == ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(Instant::now() < deadline, "container {id} still not exited after {timeout:?}: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An `ImageSpec` naming `image` (a reference or an image ID).
pub fn spec(image: &str) -> ImageSpec {
    ImageSpec { image: image.to_string(), ..Default::default() }
}

/// Basic-auth credentials as the kubelet passes them from an image pull secret.
pub fn basic_auth(username: &str, password: &str) -> AuthConfig {
    AuthConfig { username: username.into(), password: password.into(), ..Default::default() }
}
