//! CRI ImageService: PullImage, ImageStatus, ListImages, RemoveImage, ImageFsInfo, on the engine's
//! `k8s.io` namespace. As in containerd, one pulled image is recorded under up to three names: its tag
//! (`docker.io/library/busybox:1.36`), its repo digest (`docker.io/library/busybox@sha256:…`) and its
//! ID (`sha256:<config digest>`), so `berthctl -n k8s.io images ls` reads like `ctr -n k8s.io images ls`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use tonic::{Request, Response, Status};

use super::api;
use super::rpc;
use crate::config::Config;
use crate::engine::Engine;
use crate::engine::digest::Digest;
use crate::engine::image::auth::Credentials;
use crate::engine::image::reference::Reference;
use crate::engine::image::store::ImageInfo;
use crate::engine::metadata::ImageRecord;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The engine namespace of everything CRI creates.
pub const NAMESPACE: &str = "k8s.io";

/// One image as CRI sees it: an ID and every name pointing at it.
struct CriImage {
    info: Arc<ImageInfo>,
    names: Vec<String>,
}

pub struct ImageService {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    sandbox_image: Option<String>,
    /// The sandbox image as configured.
    sandbox_image_name: String,
}

/// An image found by a name, ID or ID prefix.
pub struct Found {
    pub info: Arc<ImageInfo>,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

/// The user an image runs as, split as CRI wants it: a numeric uid, or a name.
pub fn image_user(user: &str) -> (Option<i64>, String) {
    let user = user.split(':').next().unwrap_or("");
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

/// The pull's credentials, for `server_address` when the kubelet names it, else for the image's
/// registry: the engine sends them to that host only.
fn credentials(auth: Option<api::AuthConfig>) -> Result<Option<Credentials>> {
    let Some(a) = auth else { return Ok(None) };
    let (mut username, mut password) = (a.username, a.password);
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| Error::invalid("auth config: \"auth\" is not valid base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| Error::invalid("auth config: \"auth\" is not utf-8"))?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| Error::invalid("auth config: \"auth\" must be base64 of user:password"))?;
        username = u.to_string();
        password = p.to_string();
    }
    if username.is_empty()
        && password.is_empty()
        && a.identity_token.is_empty()
        && a.registry_token.is_empty()
    {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username,
        password,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
        server_address: a.server_address,
    }))
}

/// Whether `s` could be (a prefix of) an image ID rather than a name.
fn id_prefix(s: &str) -> Option<&str> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    (!hex.is_empty()
        && hex.len() <= 64
        && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

impl ImageService {
    pub fn new(engine: Arc<Engine>, config: &Config, metrics: Arc<Metrics>) -> Self {
        let sandbox_image = Reference::parse(&config.cri.sandbox_image).ok().map(|r| r.to_string());
        ImageService { engine, metrics, sandbox_image, sandbox_image_name: config.cri.sandbox_image.clone() }
    }

    /// The image `spec` names (a name, an ID or a unique ID prefix), if present.
    pub fn lookup(&self, spec: &str) -> Result<Option<Found>> {
        Ok(self.find(spec)?.map(|(img, _)| {
            let cri = self.to_cri(&img);
            Found { info: img.info, repo_tags: cri.repo_tags, repo_digests: cri.repo_digests }
        }))
    }

    /// The sandbox (pause) image, pulled if it is missing (as containerd does); the built-in one is
    /// imported at start and re-imported here if it went missing.
    pub async fn ensure_sandbox_image(&self) -> Result<Arc<ImageInfo>> {
        if let Some(found) = self.lookup(&self.sandbox_image_name)? {
            return Ok(found.info);
        }
        if self.sandbox_image_name == crate::config::BUILTIN_PAUSE_IMAGE {
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || super::pause::ensure_builtin(&engine, NAMESPACE))
                .await
                .map_err(|e| Error::internal(format!("importing the pause image: {e}")))??;
        } else {
            let reference = Reference::parse(&self.sandbox_image_name)?;
            self.pull_reference(&reference, None).await?;
        }
        self.lookup(&self.sandbox_image_name)?
            .map(|f| f.info)
            .ok_or_else(|| Error::not_found(format!("sandbox image {:?} not found", self.sandbox_image_name)))
    }

    /// Every image of the namespace, grouped by ID. Records whose content is incomplete are skipped.
    fn all(&self) -> Result<BTreeMap<Digest, CriImage>> {
        let mut out: BTreeMap<Digest, CriImage> = BTreeMap::new();
        for rec in self.engine.images(NAMESPACE)? {
            let info = match self.engine.image_info(&rec.target) {
                Ok(i) => i,
                Err(e) => {
                    tracing::debug!(image = %rec.name, error = %e, "skipping image with incomplete content");
                    continue;
                }
            };
            out.entry(info.config_digest.clone())
                .or_insert_with(|| CriImage { info, names: Vec::new() })
                .names
                .push(rec.name);
        }
        Ok(out)
    }

    /// Finds the image `spec` names: a name (normalised like the kubelet does), an ID, or a unique
    /// ID prefix.
    fn find(&self, spec: &str) -> Result<Option<(CriImage, Option<ImageRecord>)>> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::invalid("image spec: image must not be empty"));
        }
        let mut all = self.all()?;
        if let Ok(r) = Reference::parse(spec) {
            let name = r.to_string();
            if let Some(rec) = self.engine.image(NAMESPACE, &name)? {
                let id = match self.engine.image_info(&rec.target) {
                    Ok(i) => i.config_digest.clone(),
                    Err(_) => return Ok(None),
                };
                return Ok(all.remove(&id).map(|img| (img, Some(rec))));
            }
        }
        if let Some(hex) = id_prefix(spec) {
            let matches: Vec<Digest> = all.keys().filter(|d| d.hex().starts_with(hex)).cloned().collect();
            match matches.len() {
                0 => {}
                1 => return Ok(all.remove(&matches[0]).map(|img| (img, None))),
                _ => return Err(Error::invalid(format!("image id prefix {spec:?} is ambiguous"))),
            }
        }
        Ok(None)
    }

    /// The images ListImages and StreamImages answer: the one `filter` names, else all.
    fn list(&self, filter: Option<&str>) -> Result<Vec<api::Image>> {
        Ok(match filter {
            Some(spec) => self.find(spec)?.map(|(img, _)| vec![self.to_cri(&img)]).unwrap_or_default(),
            None => self.all()?.values().map(|img| self.to_cri(img)).collect(),
        })
    }

    fn to_cri(&self, img: &CriImage) -> api::Image {
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for n in &img.names {
            if n.starts_with("sha256:") {
                continue;
            }
            if n.contains('@') { repo_digests.push(n.clone()) } else { repo_tags.push(n.clone()) }
        }
        repo_tags.sort();
        repo_digests.sort();
        let (uid, username) = image_user(&img.info.config.config.user);
        let id = img.info.config_digest.to_string();
        let pinned = self.sandbox_image.as_ref().is_some_and(|s| repo_tags.contains(s) || *s == id);
        api::Image {
            id: id.clone(),
            repo_tags,
            repo_digests,
            size: img.info.size.max(0) as u64,
            uid: uid.map(|value| api::Int64Value { value }),
            username,
            spec: Some(api::ImageSpec { image: id, ..Default::default() }),
            pinned,
        }
    }

    async fn pull(&self, req: api::PullImageRequest) -> Result<api::PullImageResponse> {
        let spec = req.image.map(|i| i.image).unwrap_or_default();
        if spec.trim().is_empty() {
            return Err(Error::invalid("pull image: image must not be empty"));
        }
        let reference = Reference::parse(spec.trim())?;
        let creds = credentials(req.auth)?;
        let pulled = self.pull_reference(&reference, creds).await?;
        Ok(api::PullImageResponse { image_ref: pulled.info.config_digest.to_string() })
    }

    /// Pulls into the CRI namespace, recording the tag, the repo digest and the ID.
    async fn pull_reference(
        &self,
        reference: &Reference,
        creds: Option<Credentials>,
    ) -> Result<crate::engine::image::pull::Pulled> {
        let r = reference.clone();
        let names = Box::new(move |target: &crate::engine::oci::Descriptor, info: &ImageInfo| {
            let mut names = Vec::new();
            if r.digest.is_none() {
                names.push(r.to_string());
            }
            names.push(format!("{}@{}", r.name(), target.digest));
            names.push(info.config_digest.to_string());
            names
        });
        let started = std::time::Instant::now();
        let pulled = self.engine.pull(NAMESPACE, reference, creds, names, None).await;
        match &pulled {
            Ok(p) => {
                self.metrics.image_pull_duration.observe(started.elapsed().as_secs_f64());
                self.metrics.image_pull_bytes.inc_by(p.info.size.max(0) as u64);
            }
            Err(_) => self.metrics.image_pull_errors.inc(),
        }
        pulled
    }

    async fn remove(&self, spec: &str) -> Result<()> {
        let Some((img, by_name)) = self.find(spec)? else {
            return Ok(());
        };
        let is_tag =
            by_name.as_ref().is_some_and(|r| !r.name.contains('@') && !r.name.starts_with("sha256:"));
        let tags = img.names.iter().filter(|n| !n.contains('@') && !n.starts_with("sha256:")).count();
        let doomed: Vec<String> = match by_name {
            // Removing one tag of an image that has others removes only that tag.
            Some(rec) if is_tag && tags > 1 => vec![rec.name],
            _ => img.names.clone(),
        };
        self.engine.delete_images(NAMESPACE, &doomed)?;
        self.engine.gc(Default::default()).await?;
        Ok(())
    }

    fn fs_info(&self) -> Result<api::ImageFsInfoResponse> {
        let usage = self.engine.usage()?;
        let timestamp = crate::engine::metadata::now_nanos();
        let fs = api::FilesystemUsage {
            timestamp,
            fs_id: Some(api::FilesystemIdentifier {
                mountpoint: self.engine.options.root.display().to_string(),
            }),
            used_bytes: Some(api::UInt64Value { value: usage.bytes }),
            inodes_used: Some(api::UInt64Value { value: usage.inodes }),
        };
        Ok(api::ImageFsInfoResponse { image_filesystems: vec![fs.clone()], container_filesystems: vec![fs] })
    }
}

#[tonic::async_trait]
impl api::image_service_server::ImageService for ImageService {
    async fn list_images(
        &self,
        r: Request<api::ListImagesRequest>,
    ) -> Result<Response<api::ListImagesResponse>, Status> {
        let filter = r.into_inner().filter.and_then(|f| f.image).map(|i| i.image).filter(|s| !s.is_empty());
        rpc(&self.metrics, "ListImages", filter.as_deref().unwrap_or(""), async {
            Ok(api::ListImagesResponse { images: self.list(filter.as_deref())? })
        })
        .await
    }

    async fn image_status(
        &self,
        r: Request<api::ImageStatusRequest>,
    ) -> Result<Response<api::ImageStatusResponse>, Status> {
        let r = r.into_inner();
        let spec = r.image.map(|i| i.image).unwrap_or_default();
        rpc(&self.metrics, "ImageStatus", &spec.clone(), async {
            let Some((img, _)) = self.find(&spec)? else {
                return Ok(api::ImageStatusResponse::default());
            };
            let mut info = HashMap::new();
            if r.verbose {
                let v = serde_json::json!({
                    "chainID": img.info.chain_id.as_ref().map(|d| d.to_string()),
                    "imageSpec": img.info.config,
                    "manifest": img.info.manifest_desc.digest.to_string(),
                    "target": img.info.target.digest.to_string(),
                });
                info.insert("info".to_string(), v.to_string());
            }
            Ok(api::ImageStatusResponse { image: Some(self.to_cri(&img)), info })
        })
        .await
    }

    async fn pull_image(
        &self,
        r: Request<api::PullImageRequest>,
    ) -> Result<Response<api::PullImageResponse>, Status> {
        let r = r.into_inner();
        let id = r.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        rpc(&self.metrics, "PullImage", &id, self.pull(r)).await
    }

    async fn remove_image(
        &self,
        r: Request<api::RemoveImageRequest>,
    ) -> Result<Response<api::RemoveImageResponse>, Status> {
        let spec = r.into_inner().image.map(|i| i.image).unwrap_or_default();
        rpc(&self.metrics, "RemoveImage", &spec.clone(), async {
            self.remove(&spec).await?;
            Ok(api::RemoveImageResponse {})
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _r: Request<api::ImageFsInfoRequest>,
    ) -> Result<Response<api::ImageFsInfoResponse>, Status> {
        rpc(&self.metrics, "ImageFsInfo", "", async { self.fs_info() }).await
    }

    type StreamImagesStream = super::runtime::ListStream<api::StreamImagesResponse>;
    async fn stream_images(
        &self,
        r: Request<api::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = r.into_inner().filter.and_then(|f| f.image).map(|i| i.image).filter(|s| !s.is_empty());
        rpc(&self.metrics, "StreamImages", filter.as_deref().unwrap_or(""), async {
            let images = self.list(filter.as_deref())?;
            Ok(super::runtime::batches(images, |images| api::StreamImagesResponse { images }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_user_splits_uid_and_name() {
        assert_eq!(image_user(""), (None, String::new()));
        assert_eq!(image_user("1000"), (Some(1000), String::new()));
        assert_eq!(image_user("1000:1000"), (Some(1000), String::new()));
        assert_eq!(image_user("app"), (None, "app".to_string()));
        assert_eq!(image_user("app:staff"), (None, "app".to_string()));
    }

    #[test]
    fn credentials_from_auth_config() {
        assert!(credentials(None).unwrap().is_none());
        assert!(credentials(Some(api::AuthConfig::default())).unwrap().is_none());
        let c = credentials(Some(api::AuthConfig { auth: "dXNlcjpwYTpzcw==".into(), ..Default::default() }))
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pa:ss"));
        assert_eq!(c.server_address, "");
        assert!(credentials(Some(api::AuthConfig { auth: "!!".into(), ..Default::default() })).is_err());
        let c = credentials(Some(api::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            server_address: "https://index.docker.io/v1/".into(),
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert_eq!(c.server_address, "https://index.docker.io/v1/");
    }

    #[test]
    fn id_prefixes() {
        assert_eq!(id_prefix("sha256:abc"), Some("abc"));
        assert_eq!(id_prefix("abc123"), Some("abc123"));
        assert_eq!(id_prefix("busybox"), None);
        assert_eq!(id_prefix(""), None);
    }
}
