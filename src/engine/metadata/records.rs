//! The records stored in the metadata database. Fields added later must carry `#[serde(default)]`
//! so that older records still load. Times are Unix nanoseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::digest::Digest;
use crate::engine::oci::Descriptor;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NamespaceRecord {
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub created_at: i64,
}

/// An image: a name pointing at a manifest or index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub target: Descriptor,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

/// What berth knows of a committed blob beyond the file itself. GC references to other blobs and
/// snapshots live in labels, as containerd does: `containerd.io/gc.ref.content.<x>` = digest,
/// `containerd.io/gc.ref.snapshot.<snapshotter>` = snapshot key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ContentRecord {
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Active,
    View,
    Committed,
}

/// A snapshot: committed layers are keyed by their chain ID, active ones by the caller's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub kind: SnapshotKind,
    /// The backend's directory id (snapshots/<id>), stable across commit.
    pub id: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

/// A lease keeps what it names from garbage collection until it is deleted or expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LeaseRecord {
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub created_at: i64,
    /// Unix nanoseconds after which GC ignores (and deletes) the lease; None never expires.
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub content: Vec<Digest>,
    #[serde(default)]
    pub snapshots: Vec<String>,
    #[serde(default)]
    pub ingests: Vec<String>,
}

/// Now, in Unix nanoseconds.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
