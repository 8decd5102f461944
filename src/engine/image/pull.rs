//! Pulling an image: resolve the reference (mirrors in order), fetch the manifest (the platform's
//! one from an index) and config, download layers in parallel into the content store, and unpack each
//! layer into a snapshot as soon as it and the layers below it are there. Everything a pull creates
//! is held by a lease from before it exists until the image records point at it, so a garbage
//! collection running at any moment never removes a piece of an in-flight pull, and a crash leaves
//! only what the lease's expiry or the next GC cleans up.
//!
//! A pull runs in its own task: a client that goes away (a kubelet timeout) does not abort it half
//! way, so the retry finds the work done or in progress (its downloads wait on the same blob locks).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Semaphore, oneshot};

use super::auth::Credentials;
use super::reference::Reference;
use super::registry::Fetcher;
use super::store::{ImageInfo, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, check_manifest, select_manifest};
use super::unpack::LayerToUnpack;
use crate::engine::digest::Digest;
use crate::engine::oci::{self, Descriptor, Parsed, Platform};
use crate::engine::{Engine, lease};
use crate::error::{Error, ErrorKind, Result};

/// How long a pull's lease protects what it fetched if berthd dies before finishing.
pub const PULL_LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerStatus {
    Waiting,
    Downloading,
    Downloaded,
    Exists,
    Unpacking,
    Unpacked,
    /// Its snapshot was there before this pull: nothing was unpacked.
    AlreadyUnpacked,
}

impl LayerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerStatus::Waiting => "waiting",
            LayerStatus::Downloading => "downloading",
            LayerStatus::Downloaded => "downloaded",
            LayerStatus::Exists => "exists",
            LayerStatus::Unpacking => "unpacking",
            LayerStatus::Unpacked => "unpacked",
            LayerStatus::AlreadyUnpacked => "already unpacked",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LayerProgress {
    pub digest: Digest,
    pub media_type: String,
    pub total: i64,
    pub offset: i64,
    pub status: LayerStatus,
}

/// Live progress of one pull, sampled by whoever displays it (berthctl's progress bars).
#[derive(Default)]
pub struct PullProgress {
    layers: Mutex<Vec<LayerProgress>>,
}

impl PullProgress {
    pub fn snapshot(&self) -> Vec<LayerProgress> {
        self.layers.lock().unwrap().clone()
    }
    fn set_layers(&self, layers: &[Descriptor]) {
        *self.layers.lock().unwrap() = layers
            .iter()
            .map(|l| LayerProgress {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                total: l.size,
                offset: 0,
                status: LayerStatus::Waiting,
            })
            .collect();
    }
    fn update(&self, digest: &Digest, offset: Option<i64>, status: LayerStatus) {
        for l in self.layers.lock().unwrap().iter_mut().filter(|l| &l.digest == digest) {
            if let Some(o) = offset {
                l.offset = o;
            }
            l.status = status;
        }
    }
}

/// The result of a pull.
pub struct Pulled {
    /// The reference as resolved (normalised string).
    pub name: String,
    /// What the reference resolved to (index or manifest).
    pub target: Descriptor,
    pub info: Arc<ImageInfo>,
}

/// What the caller wants recorded once the image is complete: the image record names, computed
/// from what was resolved (a CRI pull records the tag, the repo digest and the image ID).
pub type NamesFn = Box<dyn FnOnce(&Descriptor, &ImageInfo) -> Vec<String> + Send>;

impl Engine {
    /// Pulls `reference` into namespace `ns` and records it under the names `names` returns.
    pub async fn pull(
        self: &Arc<Self>,
        ns: &str,
        reference: &Reference,
        creds: Option<Credentials>,
        names: NamesFn,
        progress: Option<Arc<PullProgress>>,
    ) -> Result<Pulled> {
        let engine = self.clone();
        let ns = ns.to_string();
        let reference = reference.clone();
        let task = tokio::spawn(async move {
            let lease = lease::create(&engine.db, &ns, None, Some(PULL_LEASE_EXPIRY), Default::default())?;
            let progress = progress.unwrap_or_default();
            let r = engine.pull_leased(&ns, &lease, &reference, creds, names, &progress).await;
            if let Err(e) = lease::delete(&engine.db, &ns, &lease) {
                tracing::warn!(lease = %lease, error = %e, "deleting pull lease");
            }
            r
        });
        let pulled = task.await.map_err(|e| Error::internal(format!("pull task failed: {e}")));
        crate::mem::release_free_memory();
        pulled?
    }

    async fn pull_leased(
        self: &Arc<Self>,
        ns: &str,
        lease: &str,
        reference: &Reference,
        creds: Option<Credentials>,
        names: NamesFn,
        progress: &Arc<PullProgress>,
    ) -> Result<Pulled> {
        let started = std::time::Instant::now();
        let resolved = self.registry.resolve(reference, creds).await?;
        let fetcher = resolved.fetcher;
        let target = resolved.descriptor;
        tracing::info!(image = %reference, digest = %target.digest, host = %fetcher.host(), "resolved");

        // Manifest (through the index when there is one) and config.
        let top = self.fetch_small(ns, lease, &fetcher, &target, MAX_MANIFEST_BYTES).await?;
        let (manifest_desc, manifest) = match oci::parse_manifest_or_index(&target.media_type, &top)? {
            Parsed::Manifest(m) => (target.clone(), *m),
            Parsed::Index(index) => {
                let platform = Platform::host();
                let desc = select_manifest(&index, &platform).cloned().ok_or_else(|| {
                    Error::not_found(format!(
                        "image {reference}: no manifest for platform {}/{}",
                        platform.os, platform.architecture
                    ))
                })?;
                let bytes = self.fetch_small(ns, lease, &fetcher, &desc, MAX_MANIFEST_BYTES).await?;
                match oci::parse_manifest_or_index(&desc.media_type, &bytes)? {
                    Parsed::Manifest(m) => (desc, *m),
                    Parsed::Index(_) => {
                        return Err(Error::invalid(format!(
                            "image {reference}: nested image index not supported"
                        )));
                    }
                }
            }
        };
        let config_bytes = self.fetch_small(ns, lease, &fetcher, &manifest.config, MAX_CONFIG_BYTES).await?;
        let config = oci::parse_config(&config_bytes).map_err(|e| e.context(format!("image {reference}")))?;
        check_manifest(&manifest, &config, &manifest_desc.digest)?;
        let chain = oci::chain_ids(&config.rootfs.diff_ids);

        // Record intent: every layer blob and chain ID goes into the lease before it is looked up,
        // so a concurrent GC either ran before (and we re-create what it removed) or keeps it.
        {
            let _gc = self.gc_lock.read().await;
            for l in &manifest.layers {
                lease::add_content(&self.db, ns, lease, &l.digest)?;
            }
            for c in &chain {
                lease::add_snapshot(&self.db, ns, lease, &c.to_string())?;
            }
        }
        progress.set_layers(&manifest.layers);

        // Downloads run in parallel (bounded); layer i is unpacked once it and layers below it are in.
        let semaphore = Arc::new(Semaphore::new(self.options.max_concurrent_downloads.max(1)));
        let mut downloads = tokio::task::JoinSet::new();
        let mut done_rx = Vec::with_capacity(manifest.layers.len());
        for layer in &manifest.layers {
            let layer = layer.clone();
            let (tx, rx) = oneshot::channel::<Result<()>>();
            done_rx.push(rx);
            let engine = self.clone();
            let fetcher = fetcher.clone();
            let semaphore = semaphore.clone();
            let progress = progress.clone();
            let (ns, lease) = (ns.to_string(), lease.to_string());
            downloads.spawn(async move {
                let r = async {
                    let _permit =
                        semaphore.acquire_owned().await.map_err(|_| Error::internal("pull cancelled"))?;
                    engine.fetch_layer(&ns, &lease, &fetcher, &layer, &progress).await
                }
                .await;
                let _ = tx.send(r);
            });
        }
        let mut parent: Option<Digest> = None;
        for (i, rx) in done_rx.into_iter().enumerate() {
            let layer = &manifest.layers[i];
            rx.await.map_err(|_| Error::internal("layer download task vanished"))??;
            // Said as it is, so that a progress display shows no unpacking (nor a rate) for it.
            let already = self.unpacker.is_unpacked(&chain[i])?;
            if !already {
                progress.update(&layer.digest, None, LayerStatus::Unpacking);
            }
            let to_unpack = LayerToUnpack {
                blob_path: self.content.path(&layer.digest),
                desc: layer.clone(),
                diff_id: config.rootfs.diff_ids[i].clone(),
            };
            let engine = self.clone();
            let (ns2, lease2) = (ns.to_string(), lease.to_string());
            let max_expansion = self.options.unpack_max_expansion;
            let parent_for_task = parent.clone();
            let chain_id = tokio::task::spawn_blocking(move || {
                let on_new = |key: &str| lease::add_snapshot(&engine.db, &ns2, &lease2, key);
                engine.unpacker.unpack_one(parent_for_task.as_ref(), &to_unpack, &on_new, max_expansion)
            })
            .await
            .map_err(|e| Error::internal(format!("unpack task failed: {e}")))??;
            debug_assert_eq!(chain_id, chain[i]);
            let done = if already { LayerStatus::AlreadyUnpacked } else { LayerStatus::Unpacked };
            progress.update(&layer.digest, None, done);
            parent = Some(chain_id);
        }
        downloads.shutdown().await;

        // GC references, then the image records; only then may the lease go.
        let info = self.image_info(&target)?;
        self.label_image_refs(&info)?;
        let names = names(&target, &info);
        self.put_images(ns, &names, &target)?;
        tracing::info!(
            image = %reference, id = %info.config_digest, size = info.size,
            elapsed = ?started.elapsed(), "pulled"
        );
        Ok(Pulled { name: reference.to_string(), target, info })
    }

    /// A manifest, index or config: from the content store if present, else fetched and stored.
    async fn fetch_small(
        &self,
        ns: &str,
        lease: &str,
        fetcher: &Fetcher,
        desc: &Descriptor,
        max: u64,
    ) -> Result<Vec<u8>> {
        {
            let _gc = self.gc_lock.read().await;
            lease::add_content(&self.db, ns, lease, &desc.digest)?;
        }
        if self.content.exists(&desc.digest) {
            return self.content.read(&desc.digest, max);
        }
        let bytes = fetcher.fetch_bytes(desc, max).await?;
        if let Some(mut w) = self.content.writer(&desc.digest, bytes.len() as u64).await? {
            w.reset()?;
            w.write(&bytes)?;
            w.commit()?;
        }
        Ok(bytes.to_vec())
    }

    /// Downloads one layer blob into the content store, resuming an interrupted download.
    async fn fetch_layer(
        &self,
        ns: &str,
        lease: &str,
        fetcher: &Fetcher,
        desc: &Descriptor,
        progress: &PullProgress,
    ) -> Result<()> {
        lease::add_ingest(&self.db, ns, lease, &desc.digest)?;
        let size =
            u64::try_from(desc.size).map_err(|_| Error::invalid(format!("layer {} size", desc.digest)))?;
        let mut retried = false;
        loop {
            let Some(mut w) = self.content.writer(&desc.digest, size).await? else {
                progress.update(&desc.digest, Some(desc.size), LayerStatus::Exists);
                return Ok(());
            };
            let resumed_from = w.offset();
            let r = async {
                if w.offset() < size {
                    let mut stream = fetcher.fetch_blob(desc, w.offset()).await?;
                    if stream.offset() != w.offset() {
                        w.reset()?;
                    }
                    progress.update(&desc.digest, Some(w.offset() as i64), LayerStatus::Downloading);
                    while let Some(chunk) = stream.next().await {
                        w.write(&chunk?)?;
                        progress.update(&desc.digest, Some(w.offset() as i64), LayerStatus::Downloading);
                    }
                }
                Ok::<_, Error>(())
            }
            .await;
            match r.and_then(|_| w.commit()) {
                Ok(()) => {
                    progress.update(&desc.digest, Some(desc.size), LayerStatus::Downloaded);
                    return Ok(());
                }
                // Bytes kept from an earlier attempt may be what was wrong: start over once.
                Err(e) if resumed_from > 0 && !retried && e.kind() == ErrorKind::InvalidArgument => {
                    tracing::warn!(digest = %desc.digest, error = %e, "resumed download did not verify, starting over");
                    retried = true;
                }
                Err(e) => return Err(e.context(format!("fetching layer {}", desc.digest))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::config::SnapshotterKind;
    use crate::engine::EngineOptions;
    use crate::engine::image::apply::test_tar::Layer;
    use crate::engine::image::fake_registry::FakeRegistry;
    use crate::engine::image::registry::RegistryOptions;
    use crate::engine::oci::media;

    /// Pushes a one-layer image tagged `v1` into `reg`'s repository `app`.
    fn push_image(reg: &FakeRegistry) -> Digest {
        let tar = Layer::new().file("hello", b"hello\n").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer = gz.finish().unwrap();
        let platform = Platform::host();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).to_string()]},
        }))
        .unwrap();
        let config_desc =
            Descriptor::new(media::OCI_CONFIG, reg.push_blob("app", &config), config.len() as i64);
        let layer_desc =
            Descriptor::new(media::OCI_LAYER_GZIP, reg.push_blob("app", &layer), layer.len() as i64);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config_desc,
            "layers": [layer_desc],
        }))
        .unwrap();
        reg.push_manifest("app", Some("v1"), media::OCI_MANIFEST, &manifest);
        layer_desc.digest
    }

    // berthctl printed "unpacked … 334 GiB/s" for layers a pull found in place: the engine says
    // what it did.
    #[tokio::test]
    async fn layers_found_in_place_are_reported_as_such() {
        let reg = FakeRegistry::start().await;
        let layer = push_image(&reg);
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineOptions {
            root: tmp.path().join("root"),
            snapshotter: SnapshotterKind::Native,
            registry: RegistryOptions {
                config_path: tmp.path().join("certs.d"),
                auth_file: tmp.path().join("config.json"),
                progress_timeout: Duration::from_secs(10),
                user_agent: String::new(),
            },
            max_concurrent_downloads: 2,
            unpack_max_expansion: 100,
        })
        .unwrap();
        let reference = Reference::parse(&format!("{}/app:v1", reg.host())).unwrap();
        let pull = |engine: Arc<Engine>| {
            let reference = reference.clone();
            async move {
                let progress = Arc::new(PullProgress::default());
                let names: NamesFn = Box::new(|_, _| vec!["app".to_string()]);
                engine.pull("test", &reference, None, names, Some(progress.clone())).await.unwrap();
                progress.snapshot().into_iter().map(|l| (l.digest, l.status.as_str())).collect::<Vec<_>>()
            }
        };
        assert_eq!(pull(engine.clone()).await, [(layer.clone(), "unpacked")]);
        assert_eq!(pull(engine.clone()).await, [(layer, "already unpacked")]);
    }
}
