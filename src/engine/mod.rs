//! The containerd-like core: content store, metadata database, images, snapshots, leases and garbage
//! collection. It knows nothing of CRI or gRPC; `cri/` translates CRI calls into calls on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, SnapshotterKind};
use crate::error::{Error, Result};

pub mod content;
pub mod digest;
pub mod gc;
pub mod image;
pub mod lease;
pub mod metadata;
pub mod oci;
pub mod snapshot;
pub mod space;

/// Disk used by a store: allocated bytes (st_blocks × 512) and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage { bytes: self.bytes + o.bytes, inodes: self.inodes + o.inodes }
    }
}

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub root: PathBuf,
    pub snapshotter: SnapshotterKind,
    pub registry: image::registry::RegistryOptions,
    pub max_concurrent_downloads: usize,
    pub unpack_max_expansion: u64,
}

impl EngineOptions {
    pub fn from_config(c: &Config) -> Self {
        EngineOptions {
            root: c.root.clone(),
            snapshotter: c.cri.snapshotter,
            registry: image::registry::RegistryOptions {
                config_path: c.cri.registry.config_path.clone(),
                auth_file: c.cri.registry.auth_file.clone(),
                progress_timeout: c.cri.image_pull_progress_timeout,
                user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
            },
            max_concurrent_downloads: c.cri.max_concurrent_downloads,
            unpack_max_expansion: c.cri.unpack_max_expansion,
        }
    }
}

/// What one garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub content: usize,
    pub snapshots: usize,
    pub leases: usize,
    pub ingests: usize,
}

/// The engine: every store, opened from `root`.
pub struct Engine {
    pub db: Arc<metadata::Db>,
    pub content: content::ContentStore,
    pub snapshots: Arc<snapshot::Snapshots>,
    pub unpacker: image::unpack::Unpacker,
    pub registry: image::registry::Registry,
    pub options: EngineOptions,
    /// Held for writing while GC plans and deletes; held for reading while a pull adds to its lease.
    gc_lock: tokio::sync::RwLock<()>,
    info_cache: image::store::InfoCache,
}

impl Engine {
    /// Opens (creating as needed) the stores under `options.root`.
    pub fn open(options: EngineOptions) -> Result<Arc<Engine>> {
        let root = &options.root;
        std::fs::create_dir_all(root)
            .map_err(|e| Error::internal(format!("creating {}: {e}", root.display())))?;
        let db = Arc::new(metadata::Db::open(&root.join("meta.redb"))?);
        let content = content::ContentStore::open(&root.join("content"))?;
        let snapshots =
            Arc::new(snapshot::Snapshots::open(&root.join("snapshots"), options.snapshotter, db.clone())?);
        let unpacker = image::unpack::Unpacker::new(snapshots.clone());
        let registry = image::registry::Registry::new(options.registry.clone())?;
        Ok(Arc::new(Engine {
            db,
            content,
            snapshots,
            unpacker,
            registry,
            options,
            gc_lock: tokio::sync::RwLock::new(()),
            info_cache: Default::default(),
        }))
    }

    /// Removes everything no image, lease or `roots` references: content, snapshots, expired
    /// leases, abandoned downloads.
    pub async fn gc(self: &Arc<Self>, roots: gc::Roots) -> Result<GcStats> {
        let _w = self.gc_lock.write().await;
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.gc_locked(&roots))
            .await
            .map_err(|e| Error::internal(format!("gc task failed: {e}")))?
    }

    fn gc_locked(&self, roots: &gc::Roots) -> Result<GcStats> {
        let started = std::time::Instant::now();
        // Disk first, then the database: whatever a pull created after this listing is in a lease
        // that the database read below sees.
        let blobs: Vec<digest::Digest> = self.content.list()?.into_iter().map(|(d, _)| d).collect();
        let ingests = self.content.ingests()?;
        let plan = gc::plan(&self.db, &blobs, &ingests, roots, metadata::now_nanos())?;
        gc::delete_records(&self.db, &plan)?;
        let mut stats = GcStats { leases: plan.expired_leases.len(), ..Default::default() };
        for key in &plan.snapshots {
            match self.snapshots.remove(key) {
                Ok(()) => stats.snapshots += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(snapshot = %key, error = %e, "gc: removing snapshot"),
            }
        }
        for d in &plan.content {
            match self.content.delete(d) {
                Ok(true) => stats.content += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(digest = %d, error = %e, "gc: removing blob"),
            }
        }
        for d in &plan.ingests {
            match self.content.remove_ingest(d) {
                Ok(()) => stats.ingests += 1,
                Err(e) => tracing::warn!(digest = %d, error = %e, "gc: removing ingest"),
            }
        }
        tracing::info!(?stats, elapsed = ?started.elapsed(), "garbage collected");
        Ok(stats)
    }

    /// Disk used by content and snapshots.
    pub fn usage(&self) -> Result<Usage> {
        Ok(self.content.usage()? + self.snapshots.total_usage()?)
    }

    /// How long a pull may go without progress.
    pub fn pull_progress_timeout(&self) -> Duration {
        self.options.registry.progress_timeout
    }
}
