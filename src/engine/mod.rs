//! The containerd-like core: content store, metadata database, images, snapshots, leases and garbage
//! collection. It knows nothing of CRI or gRPC; `cri/` translates CRI calls into calls on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, SnapshotterKind};
use crate::error::{Context, Error, Result};

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
    /// Wakes the background collector ([`Engine::collect_in_background`]).
    gc_wanted: tokio::sync::Notify,
    /// When the last collection found something that will expire (Unix nanoseconds).
    gc_next_expiry: std::sync::Mutex<Option<i64>>,
    info_cache: image::store::InfoCache,
}

impl Engine {
    /// Opens (creating as needed) the stores under `options.root`.
    pub fn open(options: EngineOptions) -> Result<Arc<Engine>> {
        let root = &options.root;
        std::fs::create_dir_all(root).context(|| format!("creating {}", root.display()))?;
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
            gc_wanted: tokio::sync::Notify::new(),
            gc_next_expiry: std::sync::Mutex::new(None),
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

    /// Asks the background collector to run soon: something may have become garbage (a pull failed,
    /// an image was removed). Requests made while it runs make it run once more.
    pub fn request_gc(&self) {
        self.gc_wanted.notify_one();
    }

    /// Collects garbage once now (what a crash left behind), then whenever [`Engine::request_gc`]
    /// asks and whenever something kept by the last run expires (a lease, a download kept for
    /// resuming). Runs until the task is dropped.
    pub async fn collect_in_background(self: Arc<Self>) {
        loop {
            if let Err(e) = self.gc(Default::default()).await {
                tracing::warn!(error = %e, "background garbage collection");
            }
            let next = *self.gc_next_expiry.lock().unwrap_or_else(|p| p.into_inner());
            let sleep = match next {
                Some(at) => Duration::from_nanos(at.saturating_sub(metadata::now_nanos()).max(0) as u64),
                // Nothing to expire: wake only when asked (a day is "never" with a deadline).
                None => Duration::from_secs(24 * 3600),
            };
            tokio::select! {
                _ = self.gc_wanted.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    fn gc_locked(&self, roots: &gc::Roots) -> Result<GcStats> {
        let started = std::time::Instant::now();
        let root = &self.options.root;
        let resume_bytes = space::Filesystem::of(root).map_or(0, |fs| gc::resume_budget(fs.size));
        // Disk first, then the database: whatever a pull created after this listing is in a lease
        // that the database read below sees.
        let blobs: Vec<digest::Digest> = self.content.list()?.into_iter().map(|(d, _)| d).collect();
        let ingests = self.content.ingests()?;
        let plan = gc::plan(&self.db, &blobs, &ingests, roots, metadata::now_nanos(), resume_bytes)?;
        *self.gc_next_expiry.lock().unwrap_or_else(|p| p.into_inner()) = plan.next_expiry;
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
                Ok(true) => stats.ingests += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(digest = %d, error = %e, "gc: removing ingest"),
            }
        }
        if stats != GcStats::default() {
            tracing::info!(?stats, elapsed = ?started.elapsed(), "garbage collected");
        } else {
            tracing::debug!(elapsed = ?started.elapsed(), "garbage collected: nothing to remove");
        }
        Ok(stats)
    }

    /// Disk used by berth's own data: content (downloads included), snapshots and the metadata
    /// database.
    pub fn usage(&self) -> Result<Usage> {
        Ok(self.content.usage()? + self.snapshots.total_usage()? + self.db.usage()?)
    }

    /// How long a pull may go without progress.
    pub fn pull_progress_timeout(&self) -> Duration {
        self.options.registry.progress_timeout
    }
}
