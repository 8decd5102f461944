//! What berth knows about pod sandboxes and containers: their records (persisted in the metadata
//! database, mirrored in memory for the kubelet's once-a-second relists), the per-object operation
//! locks, and name reservations.
//!
//! Name reservation follows the kubelet's habit of retrying a RunPodSandbox or CreateContainer that
//! timed out on its side while berth was still working: the retry carries the same name (metadata
//! name, namespace, uid, attempt). The first request's work runs to completion in its own task; a
//! retry that arrives while it runs waits for it, and a retry that arrives after it finished gets its
//! id if the first answer was never delivered (the client had gone). Only a name held by an object
//! whose creation was answered gives AlreadyExists. A failed creation releases the name.
//!
//! Tables (JSON, see `engine::metadata`): `cri_sandboxes` id → [`SandboxRecord`], `cri_containers`
//! id → [`ContainerRecord`]. The CRI configs are stored as the kubelet sent them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::api;
use crate::engine::metadata::{Db, Table};
use crate::error::{Error, ErrorKind, Result};

pub const SANDBOXES: Table<SandboxRecord> = Table::new("cri_sandboxes");
pub const CONTAINERS: Table<ContainerRecord> = Table::new("cri_containers");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// RunPodSandbox is (or was, if berthd died) building it: recovery rolls it back.
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: api::PodSandboxConfig,
    pub runtime_handler: String,
    pub state: SandboxState,
    pub created_at: i64,
    /// The network namespace (None for hostNetwork pods).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// CNI was run and not yet torn down: teardown is owed.
    #[serde(default)]
    pub network_attached: bool,
    #[serde(default)]
    pub ips: Vec<String>,
    /// The pause container's pid (0 when not running).
    #[serde(default)]
    pub pid: u32,
    /// The image the pause container runs.
    #[serde(default)]
    pub image: String,
    /// The pod's overhead and resources as UpdatePodSandboxResources last set them (cri-api v0.36).
    #[serde(default)]
    pub overhead: Option<api::LinuxContainerResources>,
    #[serde(default)]
    pub resources: Option<api::LinuxContainerResources>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// CreateContainer is (or was) building it: recovery rolls it back.
    Creating,
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: api::ContainerConfig,
    pub state: ContainerState,
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    #[serde(default)]
    pub finished_at: i64,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub pid: u32,
    /// The image as the kubelet named it in the config (often an image ID).
    pub image: String,
    /// The image ID (config digest).
    pub image_id: String,
    /// Full path of the CRI log file, if the pod has a log directory.
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    /// The image's STOPSIGNAL (empty: SIGTERM).
    #[serde(default)]
    pub stop_signal: String,
}

/// The outcome of a creation, shared with retries waiting on it.
pub type Outcome = Option<std::result::Result<String, (ErrorKind, String)>>;

struct NameEntry {
    id: String,
    done: watch::Receiver<Outcome>,
    delivered: bool,
}

/// What reserving a name found.
pub enum Reservation {
    /// The name is ours: report the creation's outcome through the sender.
    Fresh(watch::Sender<Outcome>),
    /// Another creation holds it (running or finished): wait on its outcome.
    Existing { id: String, done: watch::Receiver<Outcome>, delivered: bool },
}

#[derive(Default)]
struct Inner {
    sandboxes: BTreeMap<String, SandboxRecord>,
    containers: BTreeMap<String, ContainerRecord>,
    names: HashMap<String, NameEntry>,
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

pub struct Store {
    db: Arc<Db>,
    inner: Mutex<Inner>,
}

/// The reserved name of a sandbox (containerd's form).
pub fn sandbox_name(m: &api::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// The reserved name of a container in a sandbox (containerd's form).
pub fn container_name(c: &api::ContainerMetadata, s: &api::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}_{}", c.name, s.name, s.namespace, s.uid, c.attempt)
}

fn done_receiver(id: &str) -> watch::Receiver<Outcome> {
    let (tx, rx) = watch::channel(Some(Ok(id.to_string())));
    drop(tx);
    rx
}

impl Store {
    /// Loads every record. Names of loaded objects count as delivered.
    pub fn load(db: Arc<Db>) -> Result<Store> {
        let sandboxes: BTreeMap<String, SandboxRecord> =
            db.read(|tx| tx.list(&SANDBOXES, ""))?.into_iter().collect();
        let containers: BTreeMap<String, ContainerRecord> =
            db.read(|tx| tx.list(&CONTAINERS, ""))?.into_iter().collect();
        let mut names = HashMap::new();
        for s in sandboxes.values() {
            if let Some(m) = &s.config.metadata {
                names.insert(
                    sandbox_name(m),
                    NameEntry { id: s.id.clone(), done: done_receiver(&s.id), delivered: true },
                );
            }
        }
        for c in containers.values() {
            let sm = sandboxes.get(&c.sandbox_id).and_then(|s| s.config.metadata.clone());
            if let (Some(cm), Some(sm)) = (&c.config.metadata, sm) {
                names.insert(
                    container_name(cm, &sm),
                    NameEntry { id: c.id.clone(), done: done_receiver(&c.id), delivered: true },
                );
            }
        }
        Ok(Store { db, inner: Mutex::new(Inner { sandboxes, containers, names, locks: HashMap::new() }) })
    }

    /// The lock serialising lifecycle operations on one object.
    pub fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut inner = self.inner.lock().unwrap();
        inner.locks.entry(id.to_string()).or_default().clone()
    }

    pub fn reserve(&self, name: &str, id: &str) -> Reservation {
        let mut inner = self.inner.lock().unwrap();
        if let Some(e) = inner.names.get(name) {
            return Reservation::Existing { id: e.id.clone(), done: e.done.clone(), delivered: e.delivered };
        }
        let (tx, rx) = watch::channel(None);
        inner.names.insert(name.to_string(), NameEntry { id: id.to_string(), done: rx, delivered: false });
        Reservation::Fresh(tx)
    }

    /// Marks the creation's answer as delivered to a client.
    pub fn delivered(&self, name: &str) {
        if let Some(e) = self.inner.lock().unwrap().names.get_mut(name) {
            e.delivered = true;
        }
    }

    /// Releases `name` if `id` holds it.
    pub fn release(&self, name: &str, id: &str) {
        let mut inner = self.inner.lock().unwrap();
        if inner.names.get(name).is_some_and(|e| e.id == id) {
            inner.names.remove(name);
        }
    }

    pub fn sandbox(&self, id: &str) -> Option<SandboxRecord> {
        self.inner.lock().unwrap().sandboxes.get(id).cloned()
    }

    pub fn container(&self, id: &str) -> Option<ContainerRecord> {
        self.inner.lock().unwrap().containers.get(id).cloned()
    }

    pub fn sandboxes(&self) -> Vec<SandboxRecord> {
        self.inner.lock().unwrap().sandboxes.values().cloned().collect()
    }

    pub fn containers(&self) -> Vec<ContainerRecord> {
        self.inner.lock().unwrap().containers.values().cloned().collect()
    }

    pub fn containers_of(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        self.inner
            .lock()
            .unwrap()
            .containers
            .values()
            .filter(|c| c.sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }

    /// The full id of the sandbox `id` names: itself, or a unique prefix (as crictl passes).
    pub fn resolve_sandbox(&self, id: &str) -> Result<Option<String>> {
        let inner = self.inner.lock().unwrap();
        resolve(id, inner.sandboxes.keys(), "pod sandbox")
    }

    /// The full id of the container `id` names: itself, or a unique prefix.
    pub fn resolve_container(&self, id: &str) -> Result<Option<String>> {
        let inner = self.inner.lock().unwrap();
        resolve(id, inner.containers.keys(), "container")
    }

    /// The record of the sandbox `id` names (itself or a unique prefix); NotFound if none.
    pub fn find_sandbox(&self, id: &str) -> Result<SandboxRecord> {
        let inner = self.inner.lock().unwrap();
        resolve(id, inner.sandboxes.keys(), "pod sandbox")?
            .and_then(|full| inner.sandboxes.get(&full).cloned())
            .ok_or_else(|| Error::not_found(format!("pod sandbox {id:?} not found")))
    }

    /// The record of the container `id` names (itself or a unique prefix); NotFound if none.
    pub fn find_container(&self, id: &str) -> Result<ContainerRecord> {
        let inner = self.inner.lock().unwrap();
        resolve(id, inner.containers.keys(), "container")?
            .and_then(|full| inner.containers.get(&full).cloned())
            .ok_or_else(|| Error::not_found(format!("container {id:?} not found")))
    }

    /// Inserts or replaces a sandbox record (database first).
    pub fn put_sandbox(&self, rec: SandboxRecord) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        self.db.write(|tx| tx.put(&SANDBOXES, &rec.id, &rec))?;
        inner.sandboxes.insert(rec.id.clone(), rec);
        Ok(())
    }

    /// Changes a sandbox record; NotFound if it is gone.
    pub fn update_sandbox(&self, id: &str, f: impl FnOnce(&mut SandboxRecord)) -> Result<SandboxRecord> {
        let mut inner = self.inner.lock().unwrap();
        let mut rec = inner
            .sandboxes
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("pod sandbox {id:?} not found")))?;
        f(&mut rec);
        if inner.sandboxes.get(id) != Some(&rec) {
            self.db.write(|tx| tx.put(&SANDBOXES, id, &rec))?;
            inner.sandboxes.insert(id.to_string(), rec.clone());
        }
        Ok(rec)
    }

    pub fn delete_sandbox(&self, id: &str) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        self.db.write(|tx| tx.delete(&SANDBOXES, id))?;
        inner.sandboxes.remove(id);
        inner.locks.remove(id);
        Ok(())
    }

    pub fn put_container(&self, rec: ContainerRecord) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        self.db.write(|tx| tx.put(&CONTAINERS, &rec.id, &rec))?;
        inner.containers.insert(rec.id.clone(), rec);
        Ok(())
    }

    pub fn update_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord> {
        let mut inner = self.inner.lock().unwrap();
        let mut rec = inner
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("container {id:?} not found")))?;
        f(&mut rec);
        if inner.containers.get(id) != Some(&rec) {
            self.db.write(|tx| tx.put(&CONTAINERS, id, &rec))?;
            inner.containers.insert(id.to_string(), rec.clone());
        }
        Ok(rec)
    }

    pub fn delete_container(&self, id: &str) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        self.db.write(|tx| tx.delete(&CONTAINERS, id))?;
        inner.containers.remove(id);
        inner.locks.remove(id);
        Ok(())
    }
}

fn resolve<'a>(id: &str, keys: impl Iterator<Item = &'a String>, what: &str) -> Result<Option<String>> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{what} id must not be empty")));
    }
    let mut found: Option<String> = None;
    for k in keys {
        if k == id {
            return Ok(Some(k.clone()));
        }
        if k.starts_with(id) {
            if found.is_some() {
                return Err(Error::invalid(format!("{what} id prefix {id:?} is ambiguous")));
            }
            found = Some(k.clone());
        }
    }
    Ok(found)
}

/// A new object id: 64 random hex characters, like containerd's.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the kernel's random source");
    hex::encode(b)
}

/// The stored form of a `KeyValue.value` (an env value): `bytes` since cri-api v0.36, a string before.
/// It stays a JSON string when it is UTF-8 (always, from a kubelet), so records written by either
/// version load; other bytes are stored as an array of numbers.
pub mod env_value {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(v) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_bytes(v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Text(String),
            Bytes(Vec<u8>),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Text(t) => t.into_bytes(),
            Stored::Bytes(b) => b,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_stored_before_cri_api_v036_load() {
        // A container config as berth stored it with cri-api v0.32 types: string env values, and no
        // stop_signal / image_sub_path fields.
        let old = r#"{"metadata":{"name":"c","attempt":1},"image":{"image":"sha256:ab","annotations":{},
            "user_specified_image":"busybox","runtime_handler":""},"command":[],"args":[],"working_dir":"",
            "envs":[{"key":"A","value":"x=1"}],"mounts":[{"container_path":"/d","host_path":"/h",
            "readonly":true,"selinux_relabel":false,"propagation":0,"uid_mappings":[],"gid_mappings":[],
            "recursive_read_only":false,"image":null}],"devices":[],"labels":{},"annotations":{},
            "log_path":"c/1.log","stdin":false,"stdin_once":false,"tty":false,"linux":null,"windows":null,
            "cdi_devices":[]}"#;
        let c: api::ContainerConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c.envs[0].value, b"x=1");
        assert_eq!(c.mounts[0].host_path, "/h");
        assert_eq!(c.stop_signal, 0);
        let again = serde_json::to_value(&c).unwrap();
        assert_eq!(again["envs"][0]["value"], "x=1");
        let odd = api::KeyValue { key: "B".into(), value: vec![0xff, b'a'] };
        let back: api::KeyValue = serde_json::from_str(&serde_json::to_string(&odd).unwrap()).unwrap();
        assert_eq!(back.value, odd.value);
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&d.path().join("meta.redb")).unwrap());
        (d, Store::load(db).unwrap())
    }

    fn sandbox(id: &str, name: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            config: api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata {
                    name: name.into(),
                    namespace: "ns".into(),
                    uid: "u".into(),
                    attempt: 0,
                }),
                ..Default::default()
            },
            runtime_handler: String::new(),
            state: SandboxState::Ready,
            created_at: 1,
            netns: None,
            network_attached: false,
            ips: vec![],
            pid: 0,
            image: String::new(),
            overhead: None,
            resources: None,
        }
    }

    #[test]
    fn records_persist_and_names_come_back_as_delivered() {
        let d = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&d.path().join("meta.redb")).unwrap());
        let s = Store::load(db.clone()).unwrap();
        s.put_sandbox(sandbox("abc1", "web")).unwrap();
        s.update_sandbox("abc1", |r| r.state = SandboxState::NotReady).unwrap();
        drop(s);
        let s = Store::load(db).unwrap();
        assert_eq!(s.sandbox("abc1").unwrap().state, SandboxState::NotReady);
        match s.reserve("web_ns_u_0", "other") {
            Reservation::Existing { id, delivered, .. } => {
                assert_eq!(id, "abc1");
                assert!(delivered);
            }
            Reservation::Fresh(_) => panic!("name of a loaded sandbox must be held"),
        }
    }

    #[test]
    fn reservation_is_shared_until_released() {
        let (_d, s) = store();
        let tx = match s.reserve("n", "id1") {
            Reservation::Fresh(tx) => tx,
            _ => panic!("fresh"),
        };
        let rx = match s.reserve("n", "id2") {
            Reservation::Existing { id, done, delivered } => {
                assert_eq!(id, "id1");
                assert!(!delivered);
                done
            }
            _ => panic!("existing"),
        };
        tx.send(Some(Ok("id1".into()))).unwrap();
        assert_eq!(*rx.borrow(), Some(Ok("id1".to_string())));
        s.release("n", "id2"); // not the holder: no effect
        assert!(matches!(s.reserve("n", "id3"), Reservation::Existing { .. }));
        s.release("n", "id1");
        assert!(matches!(s.reserve("n", "id3"), Reservation::Fresh(_)));
    }

    #[test]
    fn ids_resolve_by_unique_prefix() {
        let (_d, s) = store();
        s.put_sandbox(sandbox("abc1", "a")).unwrap();
        s.put_sandbox(sandbox("abd2", "b")).unwrap();
        assert_eq!(s.resolve_sandbox("abc").unwrap().as_deref(), Some("abc1"));
        assert!(s.resolve_sandbox("ab").is_err());
        assert_eq!(s.resolve_sandbox("zz").unwrap(), None);
        assert!(s.resolve_sandbox("").is_err());
        assert_eq!(new_id().len(), 64);
        // The records, by full id or prefix; NotFound names what was asked for.
        assert_eq!(s.find_sandbox("abc").unwrap().id, "abc1");
        assert_eq!(s.find_sandbox("abd2").unwrap().id, "abd2");
        let e = s.find_sandbox("zz").unwrap_err();
        assert_eq!((e.kind(), e.to_string().contains("\"zz\"")), (ErrorKind::NotFound, true), "{e}");
        assert_ne!(s.find_sandbox("ab").unwrap_err().kind(), ErrorKind::NotFound, "ambiguous is not absent");
        assert_eq!(s.find_container("abc").unwrap_err().kind(), ErrorKind::NotFound);
    }
}
