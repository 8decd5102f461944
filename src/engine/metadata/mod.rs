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
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Context, Error, Result};

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

pub struct Db {
    inner: redb::Database,
}

fn db_err(what: &'static str) -> impl FnOnce() -> String {
    move || format!("metadata database: {what}")
}

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// A new database is built under a temporary name and renamed into place once initialised, so a
    /// crash during the very first start never leaves a half-written file that could not be opened.
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
        let inner = redb::Builder::new()
            .set_cache_size(4 << 20)
            .create(path)
            .context(|| format!("opening metadata database {}", path.display()))?;
        let db = Db { inner };
        db.write(|tx| {
            let found: Option<u32> = {
                let t = tx.inner.open_table(META).context(db_err("opening meta table"))?;
                let v = t.get("schema_version").context(db_err("reading schema version"))?;
                match v {
                    Some(v) => Some(
                        serde_json::from_slice(v.value())
                            .context(|| "metadata database: corrupt schema version".to_string())?,
                    ),
                    None => None,
                }
            };
            match found {
                None => {}
                Some(v) if v == SCHEMA_VERSION => return Ok(()),
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(Error::precondition(format!(
                        "metadata database {} has schema version {v}, newer than this berthd's {SCHEMA_VERSION}: \
                         refusing to downgrade",
                        path.display()
                    )));
                }
                Some(v) => migrate(tx, v)?,
            }
            let mut t = tx.inner.open_table(META).context(db_err("opening meta table"))?;
            let v = serde_json::to_vec(&SCHEMA_VERSION).expect("u32 serializes");
            t.insert("schema_version", v.as_slice()).context(db_err("writing schema version"))?;
            Ok(())
        })?;
        Ok(db)
    }

    /// Runs `f` in a read transaction (a consistent snapshot of the database).
    pub fn read<T>(&self, f: impl FnOnce(&ReadTx) -> Result<T>) -> Result<T> {
        let tx = self.inner.begin_read().context(db_err("beginning read transaction"))?;
        f(&ReadTx { inner: tx })
    }

    /// Runs `f` in a write transaction, committed when `f` returns Ok and aborted otherwise.
    /// Writers are serialised by redb.
    pub fn write<T>(&self, f: impl FnOnce(&WriteTx) -> Result<T>) -> Result<T> {
        let tx = self.inner.begin_write().context(db_err("beginning write transaction"))?;
        let wtx = WriteTx { inner: tx };
        match f(&wtx) {
            Ok(v) => {
                let t = std::time::Instant::now();
                wtx.inner.commit().context(db_err("committing transaction"))?;
                // Each commit syncs the file: several ms on slow disks, so callers count them.
                tracing::debug!(elapsed = ?t.elapsed(), "transaction committed");
                Ok(v)
            }
            Err(e) => {
                let _ = wtx.inner.abort();
                Err(e)
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
                Err(e) => return Err(e).context(|| format!("metadata database: opening {}", table.name())),
            };
            let v = t.get(key).context(|| format!("metadata database: reading {}/{key}", table.name()))?;
            v.map(|v| decode(table.name(), key, v.value())).transpose()
        }

        /// Every record whose key starts with `prefix`, in key order.
        pub fn list<V: DeserializeOwned>(&self, table: &Table<V>, prefix: &str) -> Result<Vec<(String, V)>> {
            let t = match self.inner.open_table(table.def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e).context(|| format!("metadata database: opening {}", table.name())),
            };
            let what = || format!("metadata database: listing {}", table.name());
            let range = match prefix_end(prefix) {
                Some(end) if !prefix.is_empty() => t.range(prefix..end.as_str()).context(what)?,
                _ => t.range::<&str>(prefix..).context(what)?,
            };
            let mut out = Vec::new();
            for item in range {
                let (k, v) = item.context(what)?;
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
            .context(|| format!("metadata database: opening {}", table.name()))?;
        t.insert(key, bytes.as_slice())
            .context(|| format!("metadata database: writing {}/{key}", table.name()))?;
        Ok(())
    }

    /// Removes the record under `key`; returns whether it existed.
    pub fn delete<V>(&self, table: &Table<V>, key: &str) -> Result<bool> {
        let mut t = self
            .inner
            .open_table(table.def)
            .context(|| format!("metadata database: opening {}", table.name()))?;
        let old = t.remove(key).context(|| format!("metadata database: deleting {}/{key}", table.name()))?;
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

    #[test]
    fn namespace_names() {
        assert!(validate_namespace("k8s.io").is_ok());
        assert!(validate_namespace("default").is_ok());
        for bad in ["", "a/b", "UPPER", "-x", "x y"] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
    }
}
