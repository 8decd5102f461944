//! The CNI result cache: what an ADD used and returned, kept on disk so that DEL and CHECK can hand
//! plugins the same config, arguments and `prevResult` even after the network config changed or
//! berthd restarted. The format is libcni's (`<cache_dir>/results/<network>-<container id>-<ifname>`,
//! JSON of kind `cniCacheV1`, the config list as base64 bytes), so tools that read libcni's cache
//! read berth's too. Files are written atomically (temp file, fsync, rename, fsync of the dir).
//! This module never runs plugins and never touches files outside `<cache_dir>/results`.

use std::io::{ErrorKind as IoKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Context, Error, ErrorKind, Result};

/// The `kind` of cache entries berth writes and reads (libcni's current format).
pub const CACHE_KIND: &str = "cniCacheV1";

/// One cached attachment, field for field libcni's `cachedInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAttachment {
    /// Always [`CACHE_KIND`].
    pub kind: String,
    /// CNI_CONTAINERID (the sandbox id).
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network config list used for ADD, as JSON bytes (base64 in the file, as Go writes []byte).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// CNI_IFNAME.
    #[serde(rename = "ifName")]
    pub if_name: String,
    /// The network's name.
    #[serde(rename = "networkName")]
    pub network_name: String,
    /// CNI_NETNS at ADD time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// CNI_ARGS as key/value pairs.
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<[String; 2]>,
    /// Every capability argument the runtime supplied (plugins got the ones they declared).
    #[serde(rename = "capabilityArgs", default, skip_serializing_if = "Map::is_empty")]
    pub capability_args: Map<String, Value>,
    /// The final result of the ADD chain.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub result: Value,
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// A cache file found for an attachment; `entry` is `None` when the file could not be read as a
/// `cniCacheV1` entry (it is still removed after a successful DEL).
#[derive(Debug)]
pub struct CacheFile {
    /// The file.
    pub path: PathBuf,
    /// Its content, if readable.
    pub entry: Option<CachedAttachment>,
}

/// The result cache under one cache dir.
#[derive(Debug, Clone)]
pub struct ResultCache {
    results: PathBuf,
}

impl ResultCache {
    /// The cache kept in `<cache_dir>/results`.
    pub fn new(cache_dir: &Path) -> ResultCache {
        ResultCache { results: cache_dir.join("results") }
    }

    /// The file for one attachment.
    pub fn path(&self, network: &str, container_id: &str, if_name: &str) -> PathBuf {
        self.results.join(format!("{network}-{container_id}-{if_name}"))
    }

    /// Writes (or replaces) the entry for `entry`'s attachment atomically and durably.
    pub fn write(&self, entry: &CachedAttachment) -> Result<()> {
        let what = || format!("writing the cni result cache of {}", entry.container_id);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.results).context(what)?;
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let tmp = self.results.join(format!(".{name}.tmp"));
        let bytes = serde_json::to_vec(entry).context(what)?;
        let written = (|| -> std::io::Result<()> {
            let mut f =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.results)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.context(what)
    }

    /// The cache files of the attachment `(container_id, if_name)` in any network, in lexical order.
    pub fn find(&self, container_id: &str, if_name: &str) -> Result<Vec<CacheFile>> {
        let entries = match std::fs::read_dir(&self.results) {
            Ok(e) => e,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::with_source(
                    ErrorKind::Internal,
                    format!("listing the cni result cache {}", self.results.display()),
                    e,
                ));
            }
        };
        let suffix = format!("-{container_id}-{if_name}");
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if name.starts_with('.') || !name.ends_with(&suffix) || name.len() == suffix.len() {
                continue;
            }
            let path = entry.path();
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<CachedAttachment>(&b).map_err(|e| e.to_string()))
                .and_then(|c| match c.kind == CACHE_KIND {
                    true => Ok(c),
                    false => Err(format!("kind {:?} is not {CACHE_KIND}", c.kind)),
                });
            let entry = match parsed {
                Ok(c) if c.container_id == container_id && c.if_name == if_name => Some(c),
                // Another attachment whose network name happens to end like this one's suffix.
                Ok(_) => continue,
                Err(why) => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable cni cache entry: {why}");
                    None
                }
            };
            found.push(CacheFile { path, entry });
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// Removes the temp files of writes a crash cut short (`.<name>.tmp`): only while no write can
    /// be in flight, i.e. at start. Returns how many went.
    pub fn remove_unfinished_writes(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.results) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), error = %e, "removing a cni cache temp file")
                    }
                }
            }
        }
        removed
    }

    /// Removes one cache file; a missing file is fine.
    pub fn remove(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) => Err(Error::with_source(
                ErrorKind::Internal,
                format!("removing cni cache {}", path.display()),
                e,
            )),
        }
    }
}

/// Encodes config bytes the way the cache file holds them (exposed for tests and tools).
pub fn encode_config(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(net: &str, id: &str) -> CachedAttachment {
        CachedAttachment {
            kind: CACHE_KIND.into(),
            container_id: id.into(),
            config: br#"{"name":"n"}"#.to_vec(),
            if_name: "eth0".into(),
            network_name: net.into(),
            netns: "/run/ns/x".into(),
            cni_args: vec![["IgnoreUnknown".into(), "1".into()]],
            capability_args: json!({"portMappings": []}).as_object().unwrap().clone(),
            result: json!({"cniVersion": "1.0.0", "ips": []}),
        }
    }

    #[test]
    fn entries_round_trip_in_libcni_format() {
        let d = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(d.path());
        let e = entry("net-a", "abc");
        cache.write(&e).unwrap();
        let path = d.path().join("results/net-a-abc-eth0");
        let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["kind"], "cniCacheV1");
        assert_eq!(raw["containerId"], "abc");
        assert_eq!(raw["config"], encode_config(br#"{"name":"n"}"#));
        assert_eq!(raw["cniArgs"], json!([["IgnoreUnknown", "1"]]));
        assert_eq!(raw["result"]["cniVersion"], "1.0.0");
        let found = cache.find("abc", "eth0").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].entry.as_ref(), Some(&e));
        assert!(cache.find("ab", "eth0").unwrap().is_empty());
        assert!(cache.find("abc", "eth1").unwrap().is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(d.path().join("results")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file stays behind");
        cache.remove(&path).unwrap();
        cache.remove(&path).unwrap();
        assert!(cache.find("abc", "eth0").unwrap().is_empty());
    }

    #[test]
    fn unfinished_writes_are_removed_and_entries_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        assert_eq!(cache.remove_unfinished_writes(), 0, "no results dir yet");
        let e = entry("net", "abc");
        cache.write(&e).unwrap();
        let kept = cache.path("net", "abc", "eth0");
        let torn = dir.path().join("results").join(".net-def-eth0.tmp");
        std::fs::write(&torn, b"{\"kind\":").unwrap();
        assert_eq!(cache.remove_unfinished_writes(), 1);
        assert!(!torn.exists());
        assert!(kept.exists());
        assert_eq!(cache.find("abc", "eth0").unwrap().len(), 1);
    }

    #[test]
    fn corrupt_and_foreign_entries() {
        let d = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(d.path());
        assert!(cache.find("abc", "eth0").unwrap().is_empty(), "no cache dir yet");
        cache.write(&entry("x", "zz-abc")).unwrap(); // file "x-zz-abc-eth0" ends like abc's suffix
        std::fs::write(d.path().join("results/bad-abc-eth0"), b"{not json").unwrap();
        let found = cache.find("abc", "eth0").unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].entry.is_none() && found[0].path.ends_with("bad-abc-eth0"));
    }
}
