//! What the shim records on disk about each container, so that a berthd that finds the shim dead
//! still learns what happened: `<pod dir>/containers/<id>/status.json`, rewritten atomically
//! (temp file, fsync, rename, fsync of the directory) on create, start and exit.
//!
//! Format, version 1 (a JSON object):
//! `{"version":1,"id":"<id>","status":"created"|"running"|"stopped","pid":<u32>,"exit_code":<i32>,
//!   "created_at":<ns>,"started_at":<ns>,"exited_at":<ns>,"oom_killed":<bool>,"reclaimed":<bool>}`
//! Times are Unix nanoseconds, 0 when not (yet) known; `exit_code` is 128 + signal for a signal.
//! `reclaimed` (absent means false) marks a container whose shim died while it ran and that
//! `berth-shim cleanup` ended (exit code 137) or found already gone (255).
//! A reader must reject a version newer than it knows. Fields are only ever added.
//!
//! This module must never interpret the records beyond parsing them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

/// The name of the record file in a container's directory.
pub const STATUS_FILE: &str = "status.json";

/// The record format version written by this shim.
pub const VERSION: u32 = 1;

/// A container's lifecycle state as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordedStatus {
    Created,
    Running,
    Stopped,
}

/// The content of `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub version: u32,
    pub id: String,
    pub status: RecordedStatus,
    pub pid: u32,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    #[serde(default)]
    pub exited_at: i64,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub reclaimed: bool,
}

/// Atomically replaces `<container dir>/status.json`.
pub fn write(container_dir: &Path, record: &StatusRecord) -> Result<()> {
    let json =
        serde_json::to_vec(record).context(|| format!("encoding the status of container {}", record.id))?;
    crate::fsutil::write_atomic(&container_dir.join(STATUS_FILE), &json, 0o600)
}

/// Reads `<container dir>/status.json`.
pub fn read(container_dir: &Path) -> Result<StatusRecord> {
    let path = container_dir.join(STATUS_FILE);
    let bytes = std::fs::read(&path).context(|| format!("reading {}", path.display()))?;
    let record: StatusRecord =
        serde_json::from_slice(&bytes).context(|| format!("parsing {}", path.display()))?;
    if record.version > VERSION {
        return Err(Error::precondition(format!(
            "{} has version {}, newer than the supported {VERSION}",
            path.display(),
            record.version
        )));
    }
    Ok(record)
}

/// Reads the records of every container of a pod directory, sorted by id. Unreadable records
/// are skipped with a warning: one bad file must not hide the others.
pub fn read_all(pod_dir: &Path) -> Result<Vec<StatusRecord>> {
    let containers = pod_dir.join("containers");
    let entries = match std::fs::read_dir(&containers) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(|| format!("listing {}", containers.display())),
    };
    let mut records = Vec::new();
    for entry in entries {
        let entry = entry.context(|| format!("listing {}", containers.display()))?;
        if !entry.path().join(STATUS_FILE).exists() {
            continue;
        }
        match read(&entry.path()) {
            Ok(record) => records.push(record),
            Err(e) => tracing::warn!(error = %e, "skipping unreadable container status"),
        }
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: RecordedStatus) -> StatusRecord {
        StatusRecord {
            version: VERSION,
            id: id.into(),
            status,
            pid: 42,
            exit_code: 137,
            created_at: 1,
            started_at: 2,
            exited_at: 3,
            oom_killed: true,
            reclaimed: false,
        }
    }

    #[test]
    fn records_round_trip_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &record("c", RecordedStatus::Running)).unwrap();
        write(dir.path(), &record("c", RecordedStatus::Stopped)).unwrap();
        assert_eq!(read(dir.path()).unwrap(), record("c", RecordedStatus::Stopped));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [STATUS_FILE], "no temp file left behind");
        let text = std::fs::read_to_string(dir.path().join(STATUS_FILE)).unwrap();
        assert!(text.contains(r#""status":"stopped""#), "{text}");
    }

    #[test]
    fn missing_fields_default_and_newer_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATUS_FILE);
        std::fs::write(&path, r#"{"version":1,"id":"c","status":"created","pid":7,"extra":1}"#).unwrap();
        let r = read(dir.path()).unwrap();
        assert_eq!((r.status, r.pid, r.exit_code, r.started_at), (RecordedStatus::Created, 7, 0, 0));

        std::fs::write(&path, r#"{"version":2,"id":"c","status":"created","pid":7}"#).unwrap();
        assert_eq!(read(dir.path()).unwrap_err().kind(), crate::ErrorKind::FailedPrecondition);
    }

    #[test]
    fn read_all_sorts_and_skips_bad_records() {
        let pod = tempfile::tempdir().unwrap();
        assert!(read_all(pod.path()).unwrap().is_empty(), "no containers dir yet");
        for id in ["b", "a", "bad", "empty"] {
            std::fs::create_dir_all(pod.path().join("containers").join(id)).unwrap();
        }
        write(&pod.path().join("containers/b"), &record("b", RecordedStatus::Running)).unwrap();
        write(&pod.path().join("containers/a"), &record("a", RecordedStatus::Stopped)).unwrap();
        std::fs::write(pod.path().join("containers/bad").join(STATUS_FILE), "{not json").unwrap();
        let ids: Vec<_> = read_all(pod.path()).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
