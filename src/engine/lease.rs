//! Leases: records that keep in-flight work (a pull, an unpack) safe from garbage collection. A lease
//! names the content, snapshots and ingests it holds; GC treats everything named by a lease that has
//! not expired as a root. Callers add a resource to their lease BEFORE creating it (record intent
//! first), so a GC running in between never sees an unprotected new resource.
//!
//! Records live in `metadata::LEASES` under `<ns>/<id>`. Ingests are recorded as digest strings
//! (`sha256:<hex>`). This module only edits records: it must never start background tasks or delete
//! the resources a lease names (expired leases are removed by GC).

use std::time::Duration;

use crate::engine::digest::Digest;
use crate::engine::metadata::{Db, LEASES, Labels, LeaseRecord, now_nanos, ns_key, validate_namespace};
use crate::error::{Error, Result};

/// Checks a lease id: containerd's identifier rules (alphanumerics joined by `.`, `_` or `-`, at most
/// 76 characters), which also keeps `/` out of the composite key.
fn validate_id(id: &str) -> Result<()> {
    let bytes = id.as_bytes();
    let sep = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let ok = !id.is_empty()
        && id.len() <= 76
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || sep(b))
        && !sep(bytes[0])
        && !sep(bytes[bytes.len() - 1])
        && !bytes.windows(2).any(|w| sep(w[0]) && sep(w[1]));
    if ok { Ok(()) } else { Err(Error::invalid(format!("invalid lease id {id:?}"))) }
}

/// Creates lease `id` (a random `berth-<16 hex>` if None) in namespace `ns`, expiring `expires_in`
/// from now (never if None). Returns the id; AlreadyExists if it is taken.
pub fn create(
    db: &Db,
    ns: &str,
    id: Option<&str>,
    expires_in: Option<Duration>,
    labels: Labels,
) -> Result<String> {
    validate_namespace(ns)?;
    let id = match id {
        Some(id) => {
            validate_id(id)?;
            id.to_string()
        }
        None => format!("berth-{}", crate::engine::content::random_hex()?),
    };
    let now = now_nanos();
    let expires_at = expires_in.map(|d| now.saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)));
    let key = ns_key(ns, &id);
    db.write(|tx| {
        if tx.get(&LEASES, &key)?.is_some() {
            return Err(Error::already_exists(format!(
                "creating lease {id:?} in namespace {ns:?}: already exists"
            )));
        }
        let record = LeaseRecord { labels, created_at: now, expires_at, ..Default::default() };
        tx.put(&LEASES, &key, &record)
    })?;
    Ok(id)
}

/// The lease `id` of namespace `ns`, if it exists.
pub fn get(db: &Db, ns: &str, id: &str) -> Result<Option<LeaseRecord>> {
    db.read(|tx| tx.get(&LEASES, &ns_key(ns, id)))
}

/// Applies `f` to lease `id` of `ns` in one write transaction; NotFound if the lease is gone.
fn update(db: &Db, ns: &str, id: &str, what: &str, f: impl FnOnce(&mut LeaseRecord)) -> Result<()> {
    let key = ns_key(ns, id);
    db.write(|tx| {
        let Some(mut record) = tx.get(&LEASES, &key)? else {
            return Err(Error::not_found(format!(
                "{what} to lease {id:?} in namespace {ns:?}: lease not found"
            )));
        };
        let before = record.clone();
        f(&mut record);
        if record != before { tx.put(&LEASES, &key, &record) } else { Ok(()) }
    })
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, item: T) {
    if !v.contains(&item) {
        v.push(item);
    }
}

/// Adds blob `d` to lease `id` (idempotent; NotFound if the lease is gone).
pub fn add_content(db: &Db, ns: &str, id: &str, d: &Digest) -> Result<()> {
    update(db, ns, id, &format!("adding content {d}"), |r| push_unique(&mut r.content, d.clone()))
}

/// Adds snapshot `key` to lease `id` (idempotent; NotFound if the lease is gone).
pub fn add_snapshot(db: &Db, ns: &str, id: &str, key: &str) -> Result<()> {
    update(db, ns, id, &format!("adding snapshot {key:?}"), |r| {
        push_unique(&mut r.snapshots, key.to_string())
    })
}

/// Adds the ingest of blob `d` to lease `id` (idempotent; NotFound if the lease is gone).
pub fn add_ingest(db: &Db, ns: &str, id: &str, d: &Digest) -> Result<()> {
    update(db, ns, id, &format!("adding ingest {d}"), |r| push_unique(&mut r.ingests, d.to_string()))
}

/// Deletes lease `id` of `ns`; deleting a missing lease is not an error.
pub fn delete(db: &Db, ns: &str, id: &str) -> Result<()> {
    db.write(|tx| tx.delete(&LEASES, &ns_key(ns, id)).map(|_| ()))
}

/// Every lease of namespace `ns` as (id, record), in id order, expired ones included.
pub fn list(db: &Db, ns: &str) -> Result<Vec<(String, LeaseRecord)>> {
    validate_namespace(ns)?;
    let prefix = ns_key(ns, "");
    let leases = db.read(|tx| tx.list(&LEASES, &prefix))?;
    Ok(leases.into_iter().map(|(k, r)| (k[prefix.len()..].to_string(), r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, db)
    }

    #[test]
    fn create_with_and_without_id() {
        let (_d, db) = open();
        let labels = Labels::from([("purpose".to_string(), "pull".to_string())]);
        let id = create(&db, "k8s.io", Some("pull-1"), None, labels.clone()).unwrap();
        assert_eq!(id, "pull-1");
        let r = get(&db, "k8s.io", "pull-1").unwrap().unwrap();
        assert_eq!(r.labels, labels);
        assert_eq!(r.expires_at, None);
        assert!(r.created_at > 0);

        let random = create(&db, "k8s.io", None, Some(Duration::from_secs(60)), Labels::new()).unwrap();
        assert!(random.starts_with("berth-") && random.len() == 22, "{random}");
        let r = get(&db, "k8s.io", &random).unwrap().unwrap();
        assert_eq!(r.expires_at, Some(r.created_at + 60_000_000_000));
        let other = create(&db, "k8s.io", None, None, Labels::new()).unwrap();
        assert_ne!(random, other);
    }

    #[test]
    fn create_refuses_taken_and_invalid_ids() {
        let (_d, db) = open();
        create(&db, "default", Some("x"), None, Labels::new()).unwrap();
        let e = create(&db, "default", Some("x"), None, Labels::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        // The same id in another namespace is a different lease.
        create(&db, "k8s.io", Some("x"), None, Labels::new()).unwrap();
        for bad in ["", "a/b", "-a", "a-", "a..b", "a b", &"a".repeat(77)] {
            let e = create(&db, "default", Some(bad), None, Labels::new()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
        let e = create(&db, "Bad/ns", Some("y"), None, Labels::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn add_resources_is_idempotent() {
        let (_d, db) = open();
        create(&db, "k8s.io", Some("l"), None, Labels::new()).unwrap();
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        for _ in 0..2 {
            add_content(&db, "k8s.io", "l", &a).unwrap();
            add_content(&db, "k8s.io", "l", &b).unwrap();
            add_snapshot(&db, "k8s.io", "l", "sha256:chain").unwrap();
            add_ingest(&db, "k8s.io", "l", &a).unwrap();
        }
        let r = get(&db, "k8s.io", "l").unwrap().unwrap();
        assert_eq!(r.content, vec![a.clone(), b]);
        assert_eq!(r.snapshots, vec!["sha256:chain".to_string()]);
        assert_eq!(r.ingests, vec![a.to_string()]);
    }

    #[test]
    fn adding_to_a_missing_lease_is_not_found() {
        let (_d, db) = open();
        let d = Digest::of(b"a");
        for e in [
            add_content(&db, "k8s.io", "gone", &d).unwrap_err(),
            add_snapshot(&db, "k8s.io", "gone", "k").unwrap_err(),
            add_ingest(&db, "k8s.io", "gone", &d).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains("\"gone\""), "{e}");
        }
        assert!(get(&db, "k8s.io", "gone").unwrap().is_none());
    }

    #[test]
    fn delete_is_idempotent_and_list_is_per_namespace() {
        let (_d, db) = open();
        create(&db, "k8s.io", Some("b"), None, Labels::new()).unwrap();
        create(&db, "k8s.io", Some("a"), None, Labels::new()).unwrap();
        create(&db, "k8s.iox", Some("c"), None, Labels::new()).unwrap();
        let ids = |ns| list(&db, ns).unwrap().into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids("k8s.io"), ["a", "b"]);
        assert_eq!(ids("k8s.iox"), ["c"]);
        delete(&db, "k8s.io", "a").unwrap();
        delete(&db, "k8s.io", "a").unwrap();
        assert_eq!(ids("k8s.io"), ["b"]);
        assert!(ids("default").is_empty());
    }
}
