//! Garbage-collection planning: a mark and sweep over the metadata, as containerd does it. [`plan`]
//! marks everything reachable from the roots and returns what is unreachable; the engine executes the
//! plan (it owns the content store and the snapshotter) after [`delete_records`] has removed the
//! metadata records. A crash in between leaves only orphans without records, which the next GC removes.
//!
//! Roots: every image's target (all namespaces); everything a lease that has not expired holds; the
//! caller's [`Roots`] (container rootfs snapshots); content and snapshot records labelled
//! `containerd.io/gc.root`. References followed: content and snapshot labels
//! `containerd.io/gc.ref.content[.<any>]` = digest and `containerd.io/gc.ref.snapshot[.<snapshotter>]`
//! = snapshot key, and a snapshot's parent. References to unknown or malformed things are ignored.
//!
//! This module only reads (and, in [`delete_records`], deletes) metadata records: it must never touch
//! files or snapshots itself. The engine must keep new leases and images from being recorded between
//! [`plan`] and executing the plan (its GC lock), or it could delete something just claimed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use crate::engine::content::IngestInfo;
use crate::engine::digest::Digest;
use crate::engine::metadata::{CONTENT, Db, IMAGES, LEASES, Labels, SNAPSHOTS, SnapshotRecord, ns_key};
use crate::error::Result;

/// Label that makes a content or snapshot record a root.
pub const LABEL_ROOT: &str = "containerd.io/gc.root";
/// Label prefix of a reference to a blob; the value is its digest.
pub const LABEL_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Label prefix of a reference to a snapshot; the suffix names the snapshotter, the value is its key.
pub const LABEL_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";

/// How long an ingest without a live lease is kept for resuming after its last write.
pub const INGEST_EXPIRY: Duration = Duration::from_secs(3600);

/// The most bytes of abandoned downloads kept for resuming, whatever the size of the filesystem.
pub const MAX_RESUME_BYTES: u64 = 256 << 20;

/// The bytes of abandoned downloads GC keeps for resuming on a filesystem of `fs_size` bytes: a
/// twentieth of it, at most [`MAX_RESUME_BYTES`]. A failed pull must not hold a small disk full.
pub fn resume_budget(fs_size: u64) -> u64 {
    (fs_size / 20).min(MAX_RESUME_BYTES)
}

/// Roots that live outside the metadata, e.g. the rootfs snapshots of existing containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// Blobs to keep, with everything they reference.
    pub content: Vec<Digest>,
    /// Snapshot keys to keep, with their parents and everything they reference.
    pub snapshots: Vec<String>,
}

/// What a GC run should delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Unreachable blobs: files on disk and content records, in digest order.
    pub content: Vec<Digest>,
    /// Unreachable snapshot keys, children before their parents (remove them in this order).
    pub snapshots: Vec<String>,
    /// Expired leases as (namespace, id).
    pub expired_leases: Vec<(String, String)>,
    /// Abandoned ingests: held by no live lease, and idle for at least [`INGEST_EXPIRY`] or beyond
    /// the bytes kept for resuming (the most recently written are kept first).
    pub ingests: Vec<Digest>,
    /// When something kept now becomes removable (Unix nanoseconds): the earliest expiry of a live
    /// lease or of a kept ingest. None if nothing will expire.
    pub next_expiry: Option<i64>,
}

impl Plan {
    /// Whether there is nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
            && self.snapshots.is_empty()
            && self.expired_leases.is_empty()
            && self.ingests.is_empty()
    }
}

enum Node {
    Content(Digest),
    Snapshot(String),
}

/// The references held in `labels`, pushed onto `work`. Malformed digests are ignored.
fn push_label_refs(labels: &Labels, work: &mut Vec<Node>) {
    let is_ref = |key: &str, prefix: &str| {
        key.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    for (k, v) in labels {
        if is_ref(k, LABEL_REF_CONTENT) {
            if let Ok(d) = Digest::parse(v) {
                work.push(Node::Content(d));
            }
        } else if is_ref(k, LABEL_REF_SNAPSHOT) && !v.is_empty() {
            work.push(Node::Snapshot(v.clone()));
        }
    }
}

/// Marks everything reachable from the roots and returns what is not. `now` is Unix nanoseconds;
/// abandoned ingests totalling at most `resume_bytes` are kept for resuming until they expire.
pub fn plan(
    db: &Db,
    blobs_on_disk: &[Digest],
    ingests_on_disk: &[IngestInfo],
    extra_roots: &Roots,
    now: i64,
    resume_bytes: u64,
) -> Result<Plan> {
    let (images, leases, content, snapshots) = db.read(|tx| {
        Ok((tx.list(&IMAGES, "")?, tx.list(&LEASES, "")?, tx.list(&CONTENT, "")?, tx.list(&SNAPSHOTS, "")?))
    })?;
    // Content records are keyed by digest string; a key that is not a digest cannot name a blob
    // and is left alone (it can only come from a bug or manual editing).
    let content: BTreeMap<Digest, Labels> = content
        .into_iter()
        .filter_map(|(k, r)| match Digest::parse(&k) {
            Ok(d) => Some((d, r.labels)),
            Err(_) => {
                tracing::warn!(key = %k, "gc: ignoring content record whose key is not a digest");
                None
            }
        })
        .collect();
    let snapshots: BTreeMap<String, SnapshotRecord> = snapshots.into_iter().collect();

    let mut work = Vec::new();
    let mut expired_leases = Vec::new();
    let mut held_ingests = HashSet::new();
    let mut next_expiry: Option<i64> = None;
    for (_, image) in &images {
        work.push(Node::Content(image.target.digest.clone()));
    }
    for (key, lease) in leases {
        if lease.expires_at.is_some_and(|t| t <= now) {
            if let Some((ns, id)) = key.split_once('/') {
                expired_leases.push((ns.to_string(), id.to_string()));
            }
            continue;
        }
        next_expiry = earliest(next_expiry, lease.expires_at);
        // An ingest is in flight while its lease holds either the ingest or the blob it will become.
        held_ingests.extend(lease.ingests.iter().filter_map(|s| Digest::parse(s).ok()));
        held_ingests.extend(lease.content.iter().cloned());
        work.extend(lease.content.into_iter().map(Node::Content));
        work.extend(lease.snapshots.into_iter().map(Node::Snapshot));
    }
    work.extend(extra_roots.content.iter().cloned().map(Node::Content));
    work.extend(extra_roots.snapshots.iter().cloned().map(Node::Snapshot));
    for (d, labels) in &content {
        if labels.contains_key(LABEL_ROOT) {
            work.push(Node::Content(d.clone()));
        }
    }
    for (key, s) in &snapshots {
        if s.labels.contains_key(LABEL_ROOT) {
            work.push(Node::Snapshot(key.clone()));
        }
    }

    // Mark. Each node is expanded once, so reference cycles terminate.
    let mut marked_content = HashSet::new();
    let mut marked_snapshots = HashSet::new();
    while let Some(node) = work.pop() {
        match node {
            Node::Content(d) => {
                if let Some(labels) = content.get(&d)
                    && !marked_content.contains(&d)
                {
                    push_label_refs(labels, &mut work);
                }
                marked_content.insert(d);
            }
            Node::Snapshot(key) => {
                if let Some(s) = snapshots.get(&key)
                    && !marked_snapshots.contains(&key)
                {
                    work.extend(s.parent.iter().cloned().map(Node::Snapshot));
                    push_label_refs(&s.labels, &mut work);
                }
                marked_snapshots.insert(key);
            }
        }
    }

    // Sweep.
    let unmarked_content: BTreeSet<Digest> = blobs_on_disk
        .iter()
        .chain(content.keys())
        .filter(|d| !marked_content.contains(*d))
        .cloned()
        .collect();
    let unmarked_snapshots: BTreeSet<&String> =
        snapshots.keys().filter(|k| !marked_snapshots.contains(*k)).collect();
    let expiry = i64::try_from(INGEST_EXPIRY.as_nanos()).unwrap_or(i64::MAX);
    let mut abandoned: Vec<&IngestInfo> =
        ingests_on_disk.iter().filter(|i| !held_ingests.contains(&i.digest)).collect();
    abandoned.sort_by_key(|i| std::cmp::Reverse(i.updated_at));
    let mut kept = 0u64;
    let mut ingests = Vec::new();
    for i in abandoned {
        let expires_at = i.updated_at.saturating_add(expiry);
        if expires_at <= now || kept.saturating_add(i.offset) > resume_bytes {
            ingests.push(i.digest.clone());
        } else {
            kept += i.offset;
            next_expiry = earliest(next_expiry, Some(expires_at));
        }
    }
    ingests.sort();
    ingests.dedup();

    Ok(Plan {
        content: unmarked_content.into_iter().collect(),
        snapshots: children_first(&unmarked_snapshots, &snapshots),
        expired_leases,
        ingests,
        next_expiry,
    })
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Orders `keys` so that every snapshot comes before its parent. A marked snapshot's parent is marked
/// too, so an unmarked snapshot's children are all in `keys`. Snapshots caught in a parent cycle
/// (corrupt records) come last, in key order.
fn children_first(keys: &BTreeSet<&String>, all: &BTreeMap<String, SnapshotRecord>) -> Vec<String> {
    let parent_of = |k: &String| all.get(k).and_then(|s| s.parent.as_ref()).filter(|p| keys.contains(p));
    let mut children: BTreeMap<&String, usize> = keys.iter().map(|k| (*k, 0)).collect();
    for k in keys {
        if let Some(p) = parent_of(k) {
            *children.get_mut(p).expect("parent is in keys") += 1;
        }
    }
    let mut ready: Vec<&String> = children.iter().filter(|(_, n)| **n == 0).map(|(k, _)| *k).collect();
    ready.reverse(); // popped from the end: start in key order
    let mut out = Vec::with_capacity(keys.len());
    let mut done = HashSet::new();
    while let Some(k) = ready.pop() {
        out.push(k.clone());
        done.insert(k);
        if let Some(p) = parent_of(k) {
            let n = children.get_mut(p).expect("parent is in keys");
            *n -= 1;
            if *n == 0 {
                ready.push(p);
            }
        }
    }
    out.extend(keys.iter().filter(|k| !done.contains(**k)).map(|k| (*k).clone()));
    out
}

/// Removes, in one write transaction, the content records and expired lease records of `plan`.
/// Run it before deleting the blob files and snapshots of the plan.
pub fn delete_records(db: &Db, plan: &Plan) -> Result<()> {
    if plan.content.is_empty() && plan.expired_leases.is_empty() {
        return Ok(());
    }
    db.write(|tx| {
        for d in &plan.content {
            tx.delete(&CONTENT, &d.to_string())?;
        }
        for (ns, id) in &plan.expired_leases {
            tx.delete(&LEASES, &ns_key(ns, id))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::metadata::{ContentRecord, ImageRecord, LeaseRecord, SnapshotKind};
    use crate::engine::oci::{Descriptor, media};

    const NOW: i64 = 1_000_000_000_000_000_000;
    const HOUR: i64 = 3_600_000_000_000;

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, db)
    }

    fn d(name: &str) -> Digest {
        Digest::of(name.as_bytes())
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn put_content(db: &Db, name: &str, refs: &[(&str, &str)]) {
        let record = ContentRecord { size: 1, labels: labels(refs), ..Default::default() };
        db.write(|tx| tx.put(&CONTENT, &d(name).to_string(), &record)).unwrap();
    }

    fn put_snapshot(db: &Db, key: &str, parent: Option<&str>, l: &[(&str, &str)]) {
        let record = SnapshotRecord {
            kind: SnapshotKind::Committed,
            id: key.to_string(),
            parent: parent.map(str::to_string),
            labels: labels(l),
            created_at: 0,
            updated_at: 0,
        };
        db.write(|tx| tx.put(&SNAPSHOTS, key, &record)).unwrap();
    }

    fn put_image(db: &Db, ns: &str, name: &str, target: &str) {
        let record = ImageRecord {
            name: name.to_string(),
            target: Descriptor::new(media::OCI_INDEX, d(target), 1),
            labels: Labels::new(),
            created_at: 0,
            updated_at: 0,
        };
        db.write(|tx| tx.put(&IMAGES, &ns_key(ns, name), &record)).unwrap();
    }

    fn put_lease(db: &Db, ns: &str, id: &str, expires_at: Option<i64>, content: &[&str], snapshots: &[&str]) {
        let record = LeaseRecord {
            expires_at,
            content: content.iter().map(|c| d(c)).collect(),
            snapshots: snapshots.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        db.write(|tx| tx.put(&LEASES, &ns_key(ns, id), &record)).unwrap();
    }

    fn ref_content(suffix: &str) -> String {
        format!("{LABEL_REF_CONTENT}.{suffix}")
    }

    /// An image as the puller records it: index → manifest → config + two layers; the config
    /// references the top snapshot of the chain `<p>chain1 ← <p>chain2`. Names are prefixed by `p`.
    fn put_image_graph(db: &Db, p: &str, layers: [&str; 2]) {
        let n = |s: &str| format!("{p}{s}");
        let (m0, cfg, l0, l1) =
            (ref_content("m.0"), ref_content("config"), ref_content("l.0"), ref_content("l.1"));
        let snap = format!("{LABEL_REF_SNAPSHOT}.overlayfs");
        put_content(db, &n("index"), &[(&m0, &d(&n("manifest")).to_string())]);
        put_content(
            db,
            &n("manifest"),
            &[
                (&cfg, &d(&n("config")).to_string()),
                (&l0, &d(layers[0]).to_string()),
                (&l1, &d(layers[1]).to_string()),
            ],
        );
        put_content(db, &n("config"), &[(&snap, &n("chain2"))]);
        put_content(db, layers[0], &[]);
        put_content(db, layers[1], &[]);
        put_snapshot(db, &n("chain1"), None, &[]);
        put_snapshot(db, &n("chain2"), Some(&n("chain1")), &[]);
    }

    fn digests(names: &[&str]) -> Vec<Digest> {
        let mut v: Vec<Digest> = names.iter().map(|n| d(n)).collect();
        v.sort();
        v
    }

    fn run(db: &Db, blobs: &[&str]) -> Plan {
        plan(db, &digests(blobs), &[], &Roots::default(), NOW, u64::MAX).unwrap()
    }

    const ALL_A: [&str; 5] = ["a-index", "a-manifest", "a-config", "layer0", "layer1"];

    #[test]
    fn image_keeps_its_whole_graph() {
        let (_d, db) = open();
        put_image_graph(&db, "a-", ["layer0", "layer1"]);
        put_image(&db, "k8s.io", "example.com/a:1", "a-index");
        // An orphan blob on disk without a record, and a record without a blob.
        put_content(&db, "no-blob", &[]);
        let p = run(&db, &[&ALL_A[..], &["orphan"]].concat());
        assert_eq!(p.content, digests(&["orphan", "no-blob"]));
        assert!(p.snapshots.is_empty());
        assert!(p.expired_leases.is_empty() && p.ingests.is_empty());
    }

    #[test]
    fn removing_the_image_frees_all_of_it() {
        let (_d, db) = open();
        put_image_graph(&db, "a-", ["layer0", "layer1"]);
        let p = run(&db, &ALL_A);
        assert_eq!(p.content, digests(&ALL_A));
        assert_eq!(p.snapshots, ["a-chain2", "a-chain1"], "children before parents");
    }

    #[test]
    fn images_in_any_namespace_are_roots() {
        let (_d, db) = open();
        put_image_graph(&db, "a-", ["layer0", "layer1"]);
        put_image(&db, "default", "example.com/a:1", "a-index");
        let p = run(&db, &ALL_A);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn shared_layers_stay_while_one_image_remains() {
        let (_d, db) = open();
        put_image_graph(&db, "a-", ["layer0", "layer1"]);
        put_image_graph(&db, "b-", ["layer0", "layer-b"]);
        // b's chain shares a's bottom snapshot.
        put_snapshot(&db, "b-chain2", Some("a-chain1"), &[]);
        put_snapshot(&db, "b-chain1", None, &[]);
        put_image(&db, "k8s.io", "example.com/a:1", "a-index");
        put_image(&db, "k8s.io", "example.com/b:1", "b-index");
        let on_disk = [&ALL_A[..], &["b-index", "b-manifest", "b-config", "layer-b"]].concat();
        let p = run(&db, &on_disk);
        assert!(p.content.is_empty());
        assert_eq!(p.snapshots, ["b-chain1"]);

        db.write(|tx| tx.delete(&IMAGES, &ns_key("k8s.io", "example.com/a:1"))).unwrap();
        let p = run(&db, &on_disk);
        assert_eq!(p.content, digests(&["a-index", "a-manifest", "a-config", "layer1"]));
        assert_eq!(p.snapshots, ["a-chain2", "b-chain1"]);
    }

    #[test]
    fn lease_keeps_content_until_it_expires() {
        let (_d, db) = open();
        put_image_graph(&db, "a-", ["layer0", "layer1"]);
        put_lease(&db, "k8s.io", "pull", Some(NOW + 10), &["a-manifest"], &[]);
        put_lease(&db, "k8s.io", "old", Some(NOW - 10), &["a-index"], &[]);
        let p = run(&db, &ALL_A);
        assert_eq!(p.content, digests(&["a-index"]), "the expired lease protects nothing");
        assert!(p.snapshots.is_empty(), "reached through the manifest's config");
        assert_eq!(p.expired_leases, [("k8s.io".to_string(), "old".to_string())]);

        let later = plan(&db, &digests(&ALL_A), &[], &Roots::default(), NOW + 10, u64::MAX).unwrap();
        assert_eq!(later.content, digests(&ALL_A));
        assert_eq!(later.snapshots, ["a-chain2", "a-chain1"]);
        let mut expired = later.expired_leases.clone();
        expired.sort();
        assert_eq!(
            expired,
            [("k8s.io".to_string(), "old".to_string()), ("k8s.io".to_string(), "pull".to_string())]
        );
    }

    #[test]
    fn lease_without_expiry_holds_snapshots() {
        let (_d, db) = open();
        put_snapshot(&db, "base", None, &[]);
        put_snapshot(&db, "active", Some("base"), &[(&ref_content("x"), &d("blob").to_string())]);
        put_snapshot(&db, "other", None, &[]);
        put_content(&db, "blob", &[]);
        put_lease(&db, "default", "forever", None, &[], &["active"]);
        let p = run(&db, &["blob"]);
        assert!(p.content.is_empty(), "referenced by the snapshot's label");
        assert_eq!(p.snapshots, ["other"]);
        assert!(p.expired_leases.is_empty());
    }

    #[test]
    fn gc_root_label_keeps_records_and_their_references() {
        let (_d, db) = open();
        put_image_graph(&db, "a-", ["layer0", "layer1"]);
        put_content(
            &db,
            "a-manifest-root",
            &[(LABEL_ROOT, ""), (&ref_content("m"), &d("a-manifest").to_string())],
        );
        put_snapshot(&db, "pinned", Some("base"), &[(LABEL_ROOT, "2024-01-01")]);
        put_snapshot(&db, "base", None, &[]);
        let p = run(&db, &[&ALL_A[..], &["a-manifest-root"]].concat());
        assert_eq!(p.content, digests(&["a-index"]));
        assert!(p.snapshots.is_empty(), "{p:?}");
    }

    #[test]
    fn extra_roots_are_kept() {
        let (_d, db) = open();
        put_image_graph(&db, "a-", ["layer0", "layer1"]);
        put_snapshot(&db, "rootfs", Some("a-chain2"), &[]);
        let roots = Roots { content: vec![d("a-config")], snapshots: vec!["rootfs".to_string()] };
        let p = plan(&db, &digests(&ALL_A), &[], &roots, NOW, u64::MAX).unwrap();
        assert_eq!(p.content, digests(&["a-index", "a-manifest", "layer0", "layer1"]));
        assert!(p.snapshots.is_empty());
    }

    #[test]
    fn cycles_and_dangling_references_terminate() {
        let (_d, db) = open();
        let snap = format!("{LABEL_REF_SNAPSHOT}.native");
        put_content(&db, "x", &[(&ref_content("a"), &d("y").to_string()), (&snap, "s1")]);
        put_content(
            &db,
            "y",
            &[
                (&ref_content("a"), &d("x").to_string()),
                (&ref_content("bad"), "sha256:nope"),
                (&ref_content("gone"), &d("missing").to_string()),
                (&snap, "no-such-snapshot"),
            ],
        );
        put_snapshot(&db, "s1", Some("s2"), &[]);
        put_snapshot(&db, "s2", Some("s1"), &[(&ref_content("c"), &d("x").to_string())]);
        put_snapshot(&db, "leaf", Some("s1"), &[]);
        let p = run(&db, &["x", "y"]);
        assert_eq!(p.content, digests(&["x", "y"]));
        assert_eq!(p.snapshots[0], "leaf");
        let mut rest = p.snapshots[1..].to_vec();
        rest.sort();
        assert_eq!(rest, ["s1", "s2"]);

        put_lease(&db, "default", "l", None, &["x"], &[]);
        let p = run(&db, &["x", "y"]);
        assert!(p.content.is_empty());
        assert_eq!(p.snapshots, ["leaf"]);
    }

    #[test]
    fn snapshots_are_ordered_children_first() {
        let (_d, db) = open();
        // a ← b ← c, a ← d ← e, and f on its own.
        put_snapshot(&db, "a", None, &[]);
        put_snapshot(&db, "b", Some("a"), &[]);
        put_snapshot(&db, "c", Some("b"), &[]);
        put_snapshot(&db, "d", Some("a"), &[]);
        put_snapshot(&db, "e", Some("d"), &[]);
        put_snapshot(&db, "f", None, &[]);
        put_snapshot(&db, "g", Some("not-recorded"), &[]);
        let p = run(&db, &[]);
        assert_eq!(p.snapshots.len(), 7);
        let pos = |k: &str| p.snapshots.iter().position(|s| s == k).unwrap();
        for (child, parent) in [("b", "a"), ("c", "b"), ("d", "a"), ("e", "d")] {
            assert!(pos(child) < pos(parent), "{child} before {parent}: {:?}", p.snapshots);
        }
    }

    #[test]
    fn abandoned_ingests_are_planned() {
        let (_d, db) = open();
        let ingest = |name: &str, updated_at: i64| IngestInfo {
            digest: d(name),
            offset: 1,
            total: 2,
            started_at: updated_at,
            updated_at,
        };
        let mut live = LeaseRecord { ingests: vec![d("held").to_string()], ..Default::default() };
        live.content = vec![d("held-as-content")];
        db.write(|tx| tx.put(&LEASES, "k8s.io/pull", &live)).unwrap();
        let dead = LeaseRecord {
            ingests: vec![d("expired-lease").to_string()],
            expires_at: Some(NOW - 1),
            ..Default::default()
        };
        db.write(|tx| tx.put(&LEASES, "k8s.io/dead", &dead)).unwrap();
        let ingests = [
            ingest("held", NOW - 5 * HOUR),
            ingest("held-as-content", NOW - 5 * HOUR),
            ingest("recent", NOW - HOUR + 1),
            ingest("abandoned", NOW - HOUR),
            ingest("expired-lease", NOW - 2 * HOUR),
        ];
        let p = plan(&db, &[], &ingests, &Roots::default(), NOW, u64::MAX).unwrap();
        assert_eq!(p.ingests, digests(&["abandoned", "expired-lease"]));
        assert_eq!(p.next_expiry, Some(NOW + 1), "the recent ingest expires first");
        assert_eq!(p.expired_leases, [("k8s.io".to_string(), "dead".to_string())]);
    }

    // A pull failing on a 200 MiB disk left 155 MB of ingests behind for an hour, and every later
    // pull failed: only a bounded amount, the most recently written first, is kept for resuming.
    #[test]
    fn abandoned_ingests_beyond_the_resume_budget_are_planned() {
        let (_d, db) = open();
        let ingest = |name: &str, offset: u64, updated_at: i64| IngestInfo {
            digest: d(name),
            offset,
            total: 1000,
            started_at: updated_at,
            updated_at,
        };
        let held = LeaseRecord {
            ingests: vec![d("held").to_string()],
            expires_at: Some(NOW + 5 * HOUR),
            ..Default::default()
        };
        db.write(|tx| tx.put(&LEASES, "k8s.io/pull", &held)).unwrap();
        let ingests = [
            ingest("held", 900, NOW - 1),
            ingest("newest", 60, NOW - 10),
            ingest("older", 50, NOW - 20),
            ingest("small-but-oldest", 10, NOW - 30),
        ];
        let p = plan(&db, &[], &ingests, &Roots::default(), NOW, 100).unwrap();
        assert_eq!(p.ingests, digests(&["older"]), "held ones do not count against the budget");
        assert_eq!(p.next_expiry, Some(NOW - 30 + HOUR), "the oldest kept ingest expires first");
        let p = plan(&db, &[], &ingests, &Roots::default(), NOW, 0).unwrap();
        assert_eq!(p.ingests, digests(&["newest", "older", "small-but-oldest"]));
        assert_eq!(p.next_expiry, Some(NOW + 5 * HOUR), "the lease expires");
        assert_eq!(resume_budget(200 << 20), 10 << 20);
        assert_eq!(resume_budget(1 << 40), MAX_RESUME_BYTES);
    }

    #[test]
    fn delete_records_removes_planned_content_and_expired_leases() {
        let (_d, db) = open();
        put_image_graph(&db, "a-", ["layer0", "layer1"]);
        put_image(&db, "k8s.io", "example.com/a:1", "a-index");
        put_content(&db, "unused", &[]);
        put_lease(&db, "k8s.io", "old", Some(NOW - 1), &["unused"], &[]);
        put_lease(&db, "k8s.io", "live", None, &[], &[]);
        let p = run(&db, &ALL_A);
        assert_eq!(p.content, digests(&["unused"]));
        delete_records(&db, &p).unwrap();
        let (content, leases) = db.read(|tx| Ok((tx.list(&CONTENT, "")?, tx.list(&LEASES, "")?))).unwrap();
        assert_eq!(content.len(), 5, "the image's records stay");
        assert!(content.iter().all(|(k, _)| *k != d("unused").to_string()));
        assert_eq!(leases.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), ["k8s.io/live"]);
        assert!(run(&db, &ALL_A).is_empty());
        delete_records(&db, &p).unwrap(); // idempotent
    }
}
