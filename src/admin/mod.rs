//! berth's own gRPC API (`proto/berth/v1/berth.proto`), served beside CRI on the same socket. It
//! exposes what CRI cannot: any namespace, content, snapshots, pull progress, import and export,
//! garbage collection. berthctl is its client. Generated types stay in this module.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::cri::rpc;
use crate::engine::Engine;
use crate::engine::image::auth::Credentials;
use crate::engine::image::pull::PullProgress;
use crate::engine::image::reference::Reference;
use crate::engine::metadata::{CONTENT, ImageRecord, validate_namespace};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The generated code of `berth.v1`.
pub mod proto {
    tonic::include_proto!("berth.v1");
}

use proto::berth_server::Berth;

/// Chunk size of import/export streams.
const CHUNK: usize = 256 * 1024;

pub struct AdminService {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
}

impl AdminService {
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>) -> Self {
        AdminService { engine, metrics }
    }

    fn image(&self, rec: ImageRecord) -> proto::Image {
        let info = self.engine.image_info(&rec.target).ok();
        proto::Image {
            name: rec.name,
            target: Some(descriptor(&rec.target)),
            labels: rec.labels.into_iter().collect(),
            created_at: rec.created_at,
            updated_at: rec.updated_at,
            config_digest: info.as_ref().map(|i| i.config_digest.to_string()).unwrap_or_default(),
            size: info.map(|i| i.size).unwrap_or(0),
        }
    }
}

fn descriptor(d: &crate::engine::oci::Descriptor) -> proto::Descriptor {
    proto::Descriptor { media_type: d.media_type.clone(), digest: d.digest.to_string(), size: d.size }
}

fn namespace(ns: &str) -> Result<String> {
    let ns = if ns.is_empty() { "default" } else { ns };
    validate_namespace(ns)?;
    Ok(ns.to_string())
}

fn progress_message(p: &PullProgress) -> proto::PullProgress {
    proto::PullProgress {
        layers: p
            .snapshot()
            .into_iter()
            .map(|l| proto::LayerProgress {
                digest: l.digest.to_string(),
                media_type: l.media_type,
                total: l.total,
                offset: l.offset,
                status: l.status.as_str().to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Berth for AdminService {
    async fn version(
        &self,
        _r: Request<proto::VersionRequest>,
    ) -> std::result::Result<Response<proto::VersionResponse>, Status> {
        rpc(&self.metrics, "berth.Version", "", async {
            Ok(proto::VersionResponse {
                version: env!("CARGO_PKG_VERSION").into(),
                revision: option_env!("BERTH_REVISION").unwrap_or("").into(),
            })
        })
        .await
    }

    async fn list_namespaces(
        &self,
        _r: Request<proto::ListNamespacesRequest>,
    ) -> std::result::Result<Response<proto::ListNamespacesResponse>, Status> {
        rpc(&self.metrics, "berth.ListNamespaces", "", async {
            Ok(proto::ListNamespacesResponse { namespaces: self.engine.namespaces()? })
        })
        .await
    }

    async fn list_images(
        &self,
        r: Request<proto::ListImagesRequest>,
    ) -> std::result::Result<Response<proto::ListImagesResponse>, Status> {
        let ns = r.into_inner().namespace;
        rpc(&self.metrics, "berth.ListImages", &ns.clone(), async {
            let ns = namespace(&ns)?;
            let images = self.engine.images(&ns)?.into_iter().map(|r| self.image(r)).collect();
            Ok(proto::ListImagesResponse { images })
        })
        .await
    }

    type PullImageStream = BoxStream<proto::PullProgress>;

    async fn pull_image(
        &self,
        r: Request<proto::PullImageRequest>,
    ) -> std::result::Result<Response<Self::PullImageStream>, Status> {
        let r = r.into_inner();
        let ns = namespace(&r.namespace).map_err(|e| crate::cri::status::to_status(&e))?;
        let reference = Reference::parse(&r.reference).map_err(|e| crate::cri::status::to_status(&e))?;
        let creds = r.credentials.and_then(|c| {
            let c = Credentials {
                username: c.username,
                password: c.password,
                identity_token: c.identity_token,
                registry_token: c.registry_token,
                // berthctl's --user is for the image's own registry.
                server_address: String::new(),
            };
            let empty = c.username.is_empty() && c.identity_token.is_empty() && c.registry_token.is_empty();
            (!empty).then_some(c)
        });
        let progress = Arc::new(PullProgress::default());
        let engine = self.engine.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let p = progress.clone();
        tokio::spawn(async move {
            let name = reference.to_string();
            let names = Box::new(move |_: &_, _: &_| vec![name]);
            let pull = engine.pull(&ns, &reference, creds, names, Some(p.clone()));
            tokio::pin!(pull);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let result = loop {
                tokio::select! {
                    r = &mut pull => break r,
                    _ = tick.tick() => {
                        if tx.send(Ok(progress_message(&p))).await.is_err() {
                            // The client is gone; the pull goes on to completion regardless.
                        }
                    }
                }
            };
            let last = match result {
                Ok(pulled) => Ok(proto::PullProgress {
                    done: true,
                    name: pulled.name,
                    image_id: pulled.info.config_digest.to_string(),
                    digest: pulled.target.digest.to_string(),
                    ..progress_message(&p)
                }),
                Err(e) => Err(crate::cri::status::to_status(&e)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn remove_image(
        &self,
        r: Request<proto::RemoveImageRequest>,
    ) -> std::result::Result<Response<proto::RemoveImageResponse>, Status> {
        let r = r.into_inner();
        rpc(&self.metrics, "berth.RemoveImage", &r.name.clone(), async {
            let ns = namespace(&r.namespace)?;
            let name = match Reference::parse(&r.name) {
                Ok(reference) if self.engine.image(&ns, &r.name)?.is_none() => reference.to_string(),
                _ => r.name.clone(),
            };
            let removed = self.engine.delete_images(&ns, &[name])? > 0;
            if r.sync {
                self.engine.gc(Default::default()).await?;
            }
            Ok(proto::RemoveImageResponse { removed })
        })
        .await
    }

    async fn list_content(
        &self,
        _r: Request<proto::ListContentRequest>,
    ) -> std::result::Result<Response<proto::ListContentResponse>, Status> {
        rpc(&self.metrics, "berth.ListContent", "", async {
            let blobs = self.engine.content.list()?;
            let content = blobs
                .into_iter()
                .map(|(d, size)| {
                    let rec = self.engine.db.read(|tx| tx.get(&CONTENT, &d.to_string())).ok().flatten();
                    proto::ContentInfo {
                        digest: d.to_string(),
                        size: size as i64,
                        labels: rec
                            .as_ref()
                            .map(|r| r.labels.clone().into_iter().collect())
                            .unwrap_or_default(),
                        created_at: rec.map(|r| r.created_at).unwrap_or(0),
                    }
                })
                .collect();
            Ok(proto::ListContentResponse { content })
        })
        .await
    }

    async fn list_snapshots(
        &self,
        _r: Request<proto::ListSnapshotsRequest>,
    ) -> std::result::Result<Response<proto::ListSnapshotsResponse>, Status> {
        rpc(&self.metrics, "berth.ListSnapshots", "", async {
            let snaps = self.engine.snapshots.list()?;
            let snapshots = snaps
                .into_iter()
                .map(|s| {
                    let usage = self.engine.snapshots.usage(&s.key).unwrap_or_default();
                    proto::SnapshotInfo {
                        kind: format!("{:?}", s.kind).to_lowercase(),
                        parent: s.parent.clone().unwrap_or_default(),
                        labels: s.labels.clone().into_iter().collect(),
                        created_at: s.created_at,
                        size: usage.bytes as i64,
                        inodes: usage.inodes as i64,
                        key: s.key,
                    }
                })
                .collect();
            Ok(proto::ListSnapshotsResponse {
                snapshotter: self.engine.snapshots.name().to_string(),
                snapshots,
            })
        })
        .await
    }

    async fn import_images(
        &self,
        r: Request<Streaming<proto::ImportChunk>>,
    ) -> std::result::Result<Response<proto::ImportImagesResponse>, Status> {
        let mut stream = r.into_inner();
        let first = match stream.message().await? {
            Some(c) => c,
            None => return Err(Status::invalid_argument("import: empty stream")),
        };
        let ns = namespace(&first.namespace).map_err(|e| crate::cri::status::to_status(&e))?;
        rpc(&self.metrics, "berth.ImportImages", &ns.clone(), async {
            let chunks = futures_util::stream::iter([Ok::<_, Status>(first)])
                .chain(stream)
                .map(|c| c.map(|c| bytes::Bytes::from(c.data)).map_err(std::io::Error::other));
            let reader = tokio_util::io::StreamReader::new(chunks);
            let reader = tokio_util::io::SyncIoBridge::new(reader);
            let engine = self.engine.clone();
            let ns2 = ns.clone();
            let imported = tokio::task::spawn_blocking(move || {
                crate::engine::image::archive::import(&engine, &ns2, reader)
            })
            .await
            .map_err(|e| Error::internal(format!("import task failed: {e}")))??;
            let images = imported
                .into_iter()
                .filter_map(|name| self.engine.image(&ns, &name).ok().flatten())
                .map(|r| self.image(r))
                .collect();
            Ok(proto::ImportImagesResponse { images })
        })
        .await
    }

    type ExportImagesStream = BoxStream<proto::ExportChunk>;

    async fn export_images(
        &self,
        r: Request<proto::ExportImagesRequest>,
    ) -> std::result::Result<Response<Self::ExportImagesStream>, Status> {
        let r = r.into_inner();
        let ns = namespace(&r.namespace).map_err(|e| crate::cri::status::to_status(&e))?;
        let plan = crate::engine::image::archive::plan_export(&self.engine, &ns, &r.names)
            .map_err(|e| crate::cri::status::to_status(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<proto::ExportChunk, Status>>(8);
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
            let r = crate::engine::image::archive::write_export(&engine, &plan, &mut w)
                .and_then(|_| w.flush_chunk().map_err(|e| Error::internal(format!("export stream: {e}"))));
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(crate::cri::status::to_status(&e)));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn garbage_collect(
        &self,
        _r: Request<proto::GarbageCollectRequest>,
    ) -> std::result::Result<Response<proto::GarbageCollectResponse>, Status> {
        rpc(&self.metrics, "berth.GarbageCollect", "", async {
            let s = self.engine.gc(Default::default()).await?;
            Ok(proto::GarbageCollectResponse {
                content_removed: s.content as i64,
                snapshots_removed: s.snapshots as i64,
                leases_removed: s.leases as i64,
                ingests_removed: s.ingests as i64,
            })
        })
        .await
    }
}

/// A blocking writer that sends fixed-size chunks down a gRPC response stream.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<std::result::Result<proto::ExportChunk, Status>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(proto::ExportChunk { data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "export client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
