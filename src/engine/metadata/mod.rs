//! The metadata database: one redb file (`<root>/meta.redb`) holding every record berth keeps
//! (namespaces, images, content labels, snapshots, leases, later sandboxes and containers).
//!
//! Schema (version [`SCHEMA_VERSION`]); every table maps a string key to a JSON document:
//!
//! ```text
//! meta        "schema_version"        → u32
//! namespaces  <ns>                    → NamespaceRecord
//! images      <ns>/<image name>       → ImageRecord       (name → target descriptor, labels, times)
//! content     <digest>                → ContentRecord     (size, labels incl. gc.ref.* references)
//! snapshots   <key>                   → SnapshotRecord    (kind, parent key, backend id, labels)
//! leases      <ns>/<lease id>         → LeaseRecord       (expiry, content, snapshots, ingests held)
//! ```
//!
//! Composite keys join the namespace and the name with `/`; namespaces cannot contain `/`, so the
//! first `/` splits them. Content and snapshots are shared by all namespaces (they are immutable
//! and addressed by digest or chain ID); images and leases belong to a namespace. JSON keeps the
//! format readable with any redb tool and lets fields be added with serde defaults; a change that
//! needs more than that bumps [`SCHEMA_VERSION`] and adds a step to [`migrate`].
//!
//! This module must never hold a transaction across an await point or do I/O other than the database.

use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Context, Error, ErrorKind, Result};

pub mod records;

pub use records::*;

/// The schema version this berth writes. Opening a newer database is refused.
pub const SCHEMA_VERSION: u32 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A table of JSON documents under string keys.
pub struct Table<V> {
    name: &'static str,
    def: TableDefinition<'static, &'static str, &'static [u8]>,
    _value: PhantomData<fn() -> V>,
}

impl<V> Table<V> {
    pub const fn new(name: &'static str) -> Self {
        Table { name, def: TableDefinition::new(name), _value: PhantomData }
    }
    pub fn name(&self) -> &'static str {
        self.name
    }
}

pub const NAMESPACES: Table<NamespaceRecord> = Table::new("namespaces");
pub const IMAGES: Table<ImageRecord> = Table::new("images");
pub const CONTENT: Table<ContentRecord> = Table::new("content");
pub const SNAPSHOTS: Table<SnapshotRecord> = Table::new("snapshots");
pub const LEASES: Table<LeaseRecord> = Table::new("leases");

/// The key of a namespaced record.
pub fn ns_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Checks a namespace name: what containerd allows (a DNS label-like name), so it can never
/// contain the `/` that composite keys rely on.
pub fn validate_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 76
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_')
        && ns.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(Error::invalid(format!("invalid namespace name {ns:?}"))) }
}

/// Disk kept allocated past the end of the database file (`fallocate` with `FALLOC_FL_KEEP_SIZE`), so
/// that commits can grow the file, and fill its holes, on a filesystem that is full: deleting records
/// (RemoveImage, RemoveContainer, garbage collection) must work exactly when the disk is full.
pub const RESERVE_BYTES: u64 = 8 << 20;

/// How long closing the database after an I/O error waits for the transactions other threads have
/// in flight (they never span an await, so they end in microseconds unless nested in this thread).
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Db {
    path: PathBuf,
    /// The open database; None once an I/O error closed it. redb refuses every operation after a
    /// failed write until the file is opened again, so the next call reopens it (redb repairs what
    /// the failed commit left; the last committed transaction is what is there).
    slot: Mutex<Option<Arc<redb::Database>>>,
    reserve: Reserve,
}

/// redb's errors as berth's, Internal unless the storage failed: an I/O error keeps its
/// `io::Error` as the cause, so that a full disk becomes ResourceExhausted.
fn storage<E: Into<redb::Error>>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> Error {
    move |e| match e.into() {
        redb::Error::Io(io) => Error::with_source(ErrorKind::Internal, what(), io),
        e @ (redb::Error::PreviousIo | redb::Error::DatabaseClosed) => {
            Error::with_source(ErrorKind::Unavailable, what(), e)
        }
        e => Error::with_source(ErrorKind::Internal, what(), e),
    }
}

fn db_err(what: &'static str) -> impl FnOnce() -> String {
    move || format!("metadata database: {what}")
}

/// Whether `e` says the database file could not be read or written: redb then refuses every
/// later operation until the database is opened again.
fn storage_failed(e: &Error) -> bool {
    let Some(cause) = e.cause() else { return false };
    cause.downcast_ref::<std::io::Error>().is_some()
        || matches!(
            cause.downcast_ref::<redb::Error>(),
            Some(redb::Error::PreviousIo | redb::Error::DatabaseClosed)
        )
}

fn open_redb(path: &Path) -> Result<redb::Database> {
    redb::Builder::new()
        .set_cache_size(4 << 20)
        .create(path)
        .map_err(storage(|| format!("opening metadata database {}", path.display())))
}

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// A new database is built under a temporary name and renamed into place once initialised, so a
    /// crash during the very first start never leaves a half-written file that could not be opened.
    /// Opening an existing database whose schema is current writes nothing (it must work on a full
    /// disk).
    pub fn open(path: &Path) -> Result<Db> {
        if !path.exists() {
            let tmp = path.with_extension("redb.new");
            let _ = std::fs::remove_file(&tmp);
            drop(Self::open_existing(&tmp)?);
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .context(|| format!("syncing new metadata database {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .context(|| format!("installing metadata database {}", path.display()))?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .context(|| format!("syncing {}", dir.display()))?;
            }
        }
        Self::open_existing(path)
    }

    fn open_existing(path: &Path) -> Result<Db> {
        let inner = open_redb(path).map_err(|e| crate::engine::space::name_full_filesystem(e, path))?;
        let db = Db {
            path: path.to_path_buf(),
            slot: Mutex::new(Some(Arc::new(inner))),
            reserve: Reserve::open(path),
        };
        let found: Option<u32> = db.read(|tx| {
            let t = match tx.inner.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(storage(db_err("opening meta table"))(e)),
            };
            let v = t.get("schema_version").map_err(storage(db_err("reading schema version")))?;
            v.map(|v| {
                serde_json::from_slice(v.value())
                    .context(|| "metadata database: corrupt schema version".to_string())
            })
            .transpose()
        })?;
        match found {
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v > SCHEMA_VERSION => {
                return Err(Error::precondition(format!(
                    "metadata database {} has schema version {v}, newer than this berthd's {SCHEMA_VERSION}: \
                     refusing to downgrade",
                    path.display()
                )));
            }
            found => db.write(|tx| {
                if let Some(v) = found {
                    migrate(tx, v)?;
                }
                let mut t = tx.inner.open_table(META).map_err(storage(db_err("opening meta table")))?;
                let v = serde_json::to_vec(&SCHEMA_VERSION).expect("u32 serializes");
                t.insert("schema_version", v.as_slice())
                    .map_err(storage(db_err("writing schema version")))?;
                Ok(())
            })?,
        }
        db.reserve.top_up();
        Ok(db)
    }

    /// The open database, opening it again if an I/O error closed it.
    fn handle(&self) -> Result<Arc<redb::Database>> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = open_redb(&self.path).map_err(|e| {
            let e = e.context("metadata database: reopening after an I/O error");
            crate::engine::space::name_full_filesystem(e, &self.path)
        })?;
        tracing::info!(path = %self.path.display(), "metadata database reopened after an I/O error");
        let db = Arc::new(db);
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Closes `failed` (if it is still the open database) once the transactions in flight on it are
    /// done, so that the next call opens the file again. Gives up after [`CLOSE_WAIT`] (a transaction
    /// nested in this thread's) and leaves it for the next failure to retry.
    fn close_failed(&self, failed: Arc<redb::Database>) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|db| Arc::ptr_eq(db, &failed)) {
            return;
        }
        drop(failed);
        let mut db = slot.take().expect("checked above");
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    drop(db);
                    tracing::warn!(path = %self.path.display(), "metadata database closed after an I/O error");
                    return;
                }
                Err(still) if std::time::Instant::now() >= deadline => {
                    tracing::warn!(path = %self.path.display(), "metadata database failed but is still in use");
                    *slot = Some(still);
                    return;
                }
                Err(still) => {
                    db = still;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    /// What every call does with its outcome: a storage failure closes the database (reopened by the
    /// next call), and a full filesystem is named.
    fn finish<T>(&self, db: Arc<redb::Database>, r: Result<T>) -> Result<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                if storage_failed(&e) {
                    self.close_failed(db);
                }
                Err(crate::engine::space::name_full_filesystem(e, &self.path))
            }
        }
    }

    /// Runs `f` in a read transaction (a consistent snapshot of the database).
    pub fn read<T>(&self, f: impl FnOnce(&ReadTx) -> Result<T>) -> Result<T> {
        let db = self.handle()?;
        let r = db
            .begin_read()
            .map_err(storage(db_err("beginning read transaction")))
            .and_then(|tx| f(&ReadTx { inner: tx }));
        self.finish(db, r)
    }

    /// Runs `f` in a write transaction, committed when `f` returns Ok and aborted otherwise.
    /// Writers are serialised by redb. A commit that fails (a full disk) leaves the database as the
    /// last successful commit left it.
    pub fn write<T>(&self, f: impl FnOnce(&WriteTx) -> Result<T>) -> Result<T> {
        let db = self.handle()?;
        let r = db.begin_write().map_err(storage(db_err("beginning write transaction"))).and_then(|tx| {
            let wtx = WriteTx { inner: tx };
            match f(&wtx) {
                Ok(v) => {
                    let t = std::time::Instant::now();
                    wtx.inner.commit().map_err(storage(db_err("committing transaction")))?;
                    // Each commit syncs the file: several ms on slow disks, so callers count them.
                    tracing::debug!(elapsed = ?t.elapsed(), "transaction committed");
                    Ok(v)
                }
                Err(e) => {
                    let _ = wtx.inner.abort();
                    Err(e)
                }
            }
        });
        if r.is_ok() {
            self.reserve.top_up();
        }
        self.finish(db, r)
    }

    /// Disk the database file takes, its reserve included.
    pub fn usage(&self) -> Result<crate::engine::Usage> {
        let m = std::fs::metadata(&self.path)
            .context(|| format!("measuring disk usage of {}", self.path.display()))?;
        Ok(crate::engine::Usage { bytes: m.blocks() * 512, inodes: 1 })
    }
}

/// Keeps [`RESERVE_BYTES`] allocated past the end of the database file. Best effort: where the
/// filesystem cannot preallocate, or is already full, the database works without it.
struct Reserve {
    file: Option<std::fs::File>,
    /// Whether the last top-up failed (logged once per failure streak).
    failing: std::sync::atomic::AtomicBool,
}

impl Reserve {
    fn open(path: &Path) -> Reserve {
        let file = std::fs::OpenOptions::new().write(true).open(path).ok();
        Reserve { file, failing: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Allocates whatever of the first `size + RESERVE_BYTES` bytes of the file is not allocated
    /// yet (holes left by the file's growth, and the reserve past its end).
    fn top_up(&self) {
        use std::sync::atomic::Ordering;
        let Some(file) = &self.file else { return };
        let Ok(m) = file.metadata() else { return };
        let want = m.len() + RESERVE_BYTES;
        if m.blocks() * 512 >= want {
            return;
        }
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, want) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("metadata database reserve restored");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        reserve = RESERVE_BYTES,
                        "could not keep disk reserved for the metadata database: {e}"
                    );
                }
            }
        }
    }
}

/// Brings a database at schema `from` up to [`SCHEMA_VERSION`]. There is only version 1 so far.
fn migrate(_tx: &WriteTx, from: u32) -> Result<()> {
    Err(Error::precondition(format!("no migration from metadata schema version {from}")))
}

fn decode<V: DeserializeOwned>(table: &str, key: &str, bytes: &[u8]) -> Result<V> {
    serde_json::from_slice(bytes).context(|| format!("metadata database: corrupt record {table}/{key}"))
}

fn prefix_end(prefix: &str) -> Option<String> {
    // The smallest string greater than every string starting with `prefix`.
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

macro_rules! read_methods {
    () => {
        /// The record under `key`, if any.
        pub fn get<V: DeserializeOwned>(&self, table: &Table<V>, key: &str) -> Result<Option<V>> {
            let t = match self.inner.open_table(table.def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(storage(|| format!("metadata database: opening {}", table.name()))(e)),
            };
            let v = t
                .get(key)
                .map_err(storage(|| format!("metadata database: reading {}/{key}", table.name())))?;
            v.map(|v| decode(table.name(), key, v.value())).transpose()
        }

        /// Every record whose key starts with `prefix`, in key order.
        pub fn list<V: DeserializeOwned>(&self, table: &Table<V>, prefix: &str) -> Result<Vec<(String, V)>> {
            let t = match self.inner.open_table(table.def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(storage(|| format!("metadata database: opening {}", table.name()))(e)),
            };
            let what = || format!("metadata database: listing {}", table.name());
            let range = match prefix_end(prefix) {
                Some(end) if !prefix.is_empty() => t.range(prefix..end.as_str()).map_err(storage(what))?,
                _ => t.range::<&str>(prefix..).map_err(storage(what))?,
            };
            let mut out = Vec::new();
            for item in range {
                let (k, v) = item.map_err(storage(what))?;
                let key = k.value().to_string();
                if !key.starts_with(prefix) {
                    break;
                }
                let value = decode(table.name(), &key, v.value())?;
                out.push((key, value));
            }
            Ok(out)
        }
    };
}

pub struct ReadTx {
    inner: redb::ReadTransaction,
}

impl ReadTx {
    read_methods!();
}

pub struct WriteTx {
    inner: redb::WriteTransaction,
}

impl WriteTx {
    read_methods!();

    /// Inserts or replaces the record under `key`.
    pub fn put<V: Serialize>(&self, table: &Table<V>, key: &str, value: &V) -> Result<()> {
        let bytes = serde_json::to_vec(value).context(|| format!("encoding {}/{key}", table.name()))?;
        let mut t = self
            .inner
            .open_table(table.def)
            .map_err(storage(|| format!("metadata database: opening {}", table.name())))?;
        t.insert(key, bytes.as_slice())
            .map_err(storage(|| format!("metadata database: writing {}/{key}", table.name())))?;
        Ok(())
    }

    /// Removes the record under `key`; returns whether it existed.
    pub fn delete<V>(&self, table: &Table<V>, key: &str) -> Result<bool> {
        let mut t = self
            .inner
            .open_table(table.def)
            .map_err(storage(|| format!("metadata database: opening {}", table.name())))?;
        let old = t
            .remove(key)
            .map_err(storage(|| format!("metadata database: deleting {}/{key}", table.name())))?;
        Ok(old.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        n: u32,
    }
    const THINGS: Table<Thing> = Table::new("things");

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, db)
    }

    #[test]
    fn put_get_list_delete() {
        let (_d, db) = open();
        assert_eq!(db.read(|tx| tx.get(&THINGS, "a")).unwrap(), None);
        db.write(|tx| {
            tx.put(&THINGS, "k8s.io/a", &Thing { n: 1 })?;
            tx.put(&THINGS, "k8s.io/b", &Thing { n: 2 })?;
            tx.put(&THINGS, "k8s.iox/c", &Thing { n: 3 })?;
            tx.put(&THINGS, "default/d", &Thing { n: 4 })
        })
        .unwrap();
        let l = db.read(|tx| tx.list(&THINGS, "k8s.io/")).unwrap();
        assert_eq!(l.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["k8s.io/a", "k8s.io/b"]);
        assert_eq!(db.read(|tx| tx.list(&THINGS, "")).unwrap().len(), 4);
        assert!(db.write(|tx| tx.delete(&THINGS, "k8s.io/a")).unwrap());
        assert!(!db.write(|tx| tx.delete(&THINGS, "k8s.io/a")).unwrap());
        assert_eq!(db.read(|tx| tx.get(&THINGS, "k8s.io/b")).unwrap(), Some(Thing { n: 2 }));
    }

    #[test]
    fn failed_write_is_rolled_back() {
        let (_d, db) = open();
        let r: Result<()> = db.write(|tx| {
            tx.put(&THINGS, "x", &Thing { n: 1 })?;
            Err(Error::invalid("no"))
        });
        assert!(r.is_err());
        assert_eq!(db.read(|tx| tx.get(&THINGS, "x")).unwrap(), None);
    }

    #[test]
    fn newer_schema_is_refused_and_reopen_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        drop(Db::open(&path).unwrap());
        drop(Db::open(&path).unwrap());
        {
            let raw = redb::Database::create(&path).unwrap();
            let tx = raw.begin_write().unwrap();
            tx.open_table(META).unwrap().insert("schema_version", b"99".as_slice()).unwrap();
            tx.commit().unwrap();
        }
        let err = Db::open(&path).err().expect("refused");
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn a_leftover_half_created_database_does_not_block_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        // What a crash during the first creation leaves: only the temporary file, with garbage in it.
        std::fs::write(path.with_extension("redb.new"), b"partial").unwrap();
        let db = Db::open(&path).unwrap();
        db.write(|tx| tx.put(&THINGS, "a", &Thing { n: 1 })).unwrap();
        assert!(!path.with_extension("redb.new").exists());
    }

    // berthd must start on a full disk: opening a current database reads it, and writes nothing.
    #[test]
    fn opening_an_existing_database_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let db = Db::open(&path).unwrap();
        db.write(|tx| tx.put(&THINGS, "a", &Thing { n: 1 })).unwrap();
        drop(db);
        let before = std::fs::read(&path).unwrap();
        let db = Db::open(&path).unwrap();
        assert_eq!(db.read(|tx| tx.get(&THINGS, "a")).unwrap(), Some(Thing { n: 1 }));
        let after = std::fs::read(&path).unwrap();
        let changed: Vec<usize> =
            (0..before.len().max(after.len())).filter(|i| before.get(*i) != after.get(*i)).collect();
        // redb flags the file as open in a header byte: a write in place, which needs no space.
        assert!(changed.iter().all(|i| *i == 9), "the database file changed on open at {changed:?}");
    }

    #[test]
    fn disk_is_kept_allocated_ahead_of_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let db = Db::open(&path).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert!(m.blocks() * 512 >= m.len() + RESERVE_BYTES, "{} of {}", m.blocks() * 512, m.len());
        for i in 0..200 {
            db.write(|tx| tx.put(&THINGS, &format!("k{i}"), &Thing { n: i })).unwrap();
        }
        let m = std::fs::metadata(&path).unwrap();
        assert!(m.blocks() * 512 >= m.len() + RESERVE_BYTES, "{} of {}", m.blocks() * 512, m.len());
        assert_eq!(db.usage().unwrap().bytes, m.blocks() * 512);
    }

    #[test]
    fn namespace_names() {
        assert!(validate_namespace("k8s.io").is_ok());
        assert!(validate_namespace("default").is_ok());
        for bad in ["", "a/b", "UPPER", "-x", "x y"] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
    }
}
