//! A CRI v1 client over berthd's unix socket, as the kubelet connects: gRPC on HTTP/2 over a
//! `UnixStream`. Thin helpers wrap the image calls the scenarios repeat; anything else goes through the
//! public `image` and `runtime` clients directly. It must never interpret berth's answers: tests do.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, Image, ImageFsInfoRequest, ImageFsInfoResponse, ImageSpec, ImageStatusRequest,
    ListImagesRequest, PullImageRequest, RemoveImageRequest,
};
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
        let socket: PathBuf = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector ignores it and dials the socket.
        let channel = Endpoint::try_from("http://[::]:50051")?
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

/// An `ImageSpec` naming `image` (a reference or an image ID).
pub fn spec(image: &str) -> ImageSpec {
    ImageSpec { image: image.to_string(), ..Default::default() }
}

/// Basic-auth credentials as the kubelet passes them from an image pull secret.
pub fn basic_auth(username: &str, password: &str) -> AuthConfig {
    AuthConfig { username: username.into(), password: password.into(), ..Default::default() }
}
