//! berthd's configuration: the TOML schema with its defaults, loading with errors that name the key
//! and line, validation, and the commented default file printed by `berthd config default`.
//! Loading must never touch the disk beyond reading the file: callers act only on a valid config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod glob;

/// The commented default configuration, printed by `berthd config default`. A unit test keeps it
/// identical to [`Config::default`] and makes sure every key is in it.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The default path of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/berth/config.toml";

/// The name of the pause image built into berth (used when `cri.sandbox_image` is left at it).
pub const BUILTIN_PAUSE_IMAGE: &str = "localhost/berth/pause:builtin";

/// The longest path a unix socket can be bound to (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub version: u32,
    pub root: PathBuf,
    pub state: PathBuf,
    pub grpc: Grpc,
    pub debug: Debug,
    pub metrics: Metrics,
    pub cri: Cri,
    pub cni: Cni,
    pub runtimes: Runtimes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grpc {
    pub address: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub max_recv_message_size: usize,
    pub max_send_message_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Debug {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    pub address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotterKind {
    #[serde(rename = "overlayfs")]
    Overlayfs,
    #[serde(rename = "native")]
    Native,
}

impl SnapshotterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotterKind::Overlayfs => "overlayfs",
            SnapshotterKind::Native => "native",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cri {
    pub sandbox_image: String,
    pub snapshotter: SnapshotterKind,
    #[serde(with = "duration")]
    pub image_pull_progress_timeout: Duration,
    pub max_concurrent_downloads: usize,
    pub unpack_max_expansion: u64,
    pub max_container_log_line_size: usize,
    pub cgroup_driver: CgroupDriver,
    pub disable_apparmor: bool,
    pub stream_server_address: String,
    pub stream_server_port: u16,
    #[serde(with = "duration")]
    pub stream_token_ttl: Duration,
    pub stream_tls_cert: PathBuf,
    pub stream_tls_key: PathBuf,
    pub registry: Registry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registry {
    pub config_path: PathBuf,
    pub auth_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cni {
    pub bin_dirs: Vec<PathBuf>,
    pub conf_dir: PathBuf,
    #[serde(with = "duration")]
    pub plugin_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtimes {
    pub default: String,
    pub handlers: BTreeMap<String, RuntimeHandler>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeHandler {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub options: Vec<String>,
    /// Pod annotations (glob patterns, see [`glob`]) copied into the OCI specs of the pod's pause and
    /// containers. Annotations can configure an OCI runtime, so none pass unless named here.
    pub pod_annotations: Vec<String>,
    /// Container annotations (glob patterns) copied into the container's OCI spec.
    pub container_annotations: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: 1,
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            grpc: Grpc::default(),
            debug: Debug::default(),
            metrics: Metrics::default(),
            cri: Cri::default(),
            cni: Cni::default(),
            runtimes: Runtimes::default(),
        }
    }
}

impl Default for Grpc {
    fn default() -> Self {
        Grpc {
            address: "/run/berth/berth.sock".into(),
            uid: 0,
            gid: 0,
            max_recv_message_size: 16 << 20,
            max_send_message_size: 16 << 20,
        }
    }
}

impl Default for Debug {
    fn default() -> Self {
        Debug { level: "info".into(), format: LogFormat::Text }
    }
}

impl Default for Cri {
    fn default() -> Self {
        Cri {
            sandbox_image: BUILTIN_PAUSE_IMAGE.into(),
            snapshotter: SnapshotterKind::Overlayfs,
            image_pull_progress_timeout: Duration::from_secs(5 * 60),
            max_concurrent_downloads: 3,
            unpack_max_expansion: 100,
            max_container_log_line_size: 16 * 1024,
            cgroup_driver: CgroupDriver::Cgroupfs,
            disable_apparmor: false,
            stream_server_address: "127.0.0.1".into(),
            stream_server_port: 0,
            stream_token_ttl: Duration::from_secs(60),
            stream_tls_cert: PathBuf::new(),
            stream_tls_key: PathBuf::new(),
            registry: Registry::default(),
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry { config_path: "/etc/berth/certs.d".into(), auth_file: "/root/.docker/config.json".into() }
    }
}

impl Default for Cni {
    fn default() -> Self {
        Cni {
            bin_dirs: vec!["/opt/cni/bin".into()],
            conf_dir: "/etc/cni/net.d".into(),
            plugin_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for Runtimes {
    fn default() -> Self {
        let mut handlers = BTreeMap::new();
        handlers.insert("runc".to_string(), RuntimeHandler::default());
        Runtimes { default: "runc".into(), handlers }
    }
}

impl Default for RuntimeHandler {
    fn default() -> Self {
        RuntimeHandler {
            binary: "runc".into(),
            root: PathBuf::new(),
            options: Vec::new(),
            pod_annotations: Vec::new(),
            container_annotations: Vec::new(),
        }
    }
}

impl Config {
    /// Parses a configuration document. Errors name the key and the line.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config =
            toml::from_str(text).map_err(|e| Error::invalid(format!("invalid configuration: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads `path`. A missing file is an error only when `required` (an explicit `--config`);
    /// otherwise the built-in defaults apply.
    pub fn load(path: &Path, required: bool) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text).map_err(|e| e.context(format!("loading {}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                let config = Config::default();
                config.validate()?;
                Ok(config)
            }
            Err(e) => Err(Error::with_source(
                crate::error::ErrorKind::InvalidArgument,
                format!("reading configuration {}", path.display()),
                e,
            )),
        }
    }

    /// The effective configuration as TOML (`berthd config dump`).
    pub fn dump(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not render configuration: {e}\n"))
    }

    /// Checks what the types alone cannot. Each message names the key.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |key: &str, why: String| Err(Error::invalid(format!("invalid configuration: `{key}` {why}")));
        if self.version != 1 {
            return bad("version", format!("is {}, this berthd understands version 1", self.version));
        }
        for (key, path) in [
            ("root", &self.root),
            ("state", &self.state),
            ("grpc.address", &self.grpc.address),
            ("cni.conf_dir", &self.cni.conf_dir),
        ] {
            if !path.is_absolute() {
                return bad(key, format!("must be an absolute path, got {:?}", path.display().to_string()));
            }
        }
        if self.grpc.address.as_os_str().len() > MAX_SOCKET_PATH {
            return bad(
                "grpc.address",
                format!("is longer than {MAX_SOCKET_PATH} bytes, the unix socket limit"),
            );
        }
        if self.root == self.state {
            return bad("state", "must differ from `root`".into());
        }
        if self.grpc.max_recv_message_size < 1024 || self.grpc.max_send_message_size < 1024 {
            return bad(
                "grpc.max_recv_message_size",
                "and max_send_message_size must be at least 1024".into(),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.debug.level).is_err() {
            return bad("debug.level", format!("{:?} is not a log level or filter", self.debug.level));
        }
        if !self.metrics.address.is_empty() && self.metrics.address.parse::<std::net::SocketAddr>().is_err() {
            return bad("metrics.address", format!("{:?} is not host:port", self.metrics.address));
        }
        if self.cri.sandbox_image.trim().is_empty() {
            return bad("cri.sandbox_image", "must not be empty".into());
        }
        if self.cri.image_pull_progress_timeout.is_zero() {
            return bad("cri.image_pull_progress_timeout", "must be greater than zero".into());
        }
        if self.cri.max_concurrent_downloads == 0 {
            return bad("cri.max_concurrent_downloads", "must be at least 1".into());
        }
        if self.cri.unpack_max_expansion < 2 {
            return bad("cri.unpack_max_expansion", "must be at least 2".into());
        }
        if self.cri.max_container_log_line_size == 0 {
            return bad("cri.max_container_log_line_size", "must be at least 1".into());
        }
        if self.cri.stream_server_address.parse::<std::net::IpAddr>().is_err() {
            return bad(
                "cri.stream_server_address",
                format!("{:?} is not an IP address", self.cri.stream_server_address),
            );
        }
        if self.cri.stream_token_ttl.is_zero() {
            return bad("cri.stream_token_ttl", "must be greater than zero".into());
        }
        if self.cri.stream_tls_cert.as_os_str().is_empty() != self.cri.stream_tls_key.as_os_str().is_empty() {
            return bad("cri.stream_tls_cert", "and stream_tls_key must be set together".into());
        }
        if self.cni.bin_dirs.is_empty() {
            return bad("cni.bin_dirs", "must name at least one directory".into());
        }
        if self.cni.plugin_timeout.is_zero() {
            return bad("cni.plugin_timeout", "must be greater than zero".into());
        }
        if !self.runtimes.handlers.contains_key(&self.runtimes.default) {
            return bad(
                "runtimes.default",
                format!("names {:?}, which is not in [runtimes.handlers]", self.runtimes.default),
            );
        }
        for (name, h) in &self.runtimes.handlers {
            if h.binary.as_os_str().is_empty() {
                return bad(&format!("runtimes.handlers.{name}.binary"), "must not be empty".into());
            }
            for (key, patterns) in
                [("pod_annotations", &h.pod_annotations), ("container_annotations", &h.container_annotations)]
            {
                for p in patterns {
                    if let Err(glob::BadPattern(why)) = glob::validate(p) {
                        return bad(
                            &format!("runtimes.handlers.{name}.{key}"),
                            format!("pattern {p:?} {why}"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("meta.redb")
    }

    /// The lock file that keeps a second berthd off the same root.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("berthd.lock")
    }
}

/// Durations as humantime strings ("5m", "90s", "1h 30m").
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not a duration like \"5m\" or \"30s\": {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_is_the_default_config() {
        let parsed = Config::parse(DEFAULT_TOML).expect("default.toml parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn default_file_mentions_every_key() {
        // Every key of the serialized default must appear in the commented file, with a comment above.
        fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let full = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    out.push(full.clone());
                    keys(&full, v, out);
                }
            }
        }
        let value: toml::Value = toml::from_str(&Config::default().dump()).unwrap();
        let mut all = Vec::new();
        keys("", &value, &mut all);
        let doc: toml::Value = toml::from_str(DEFAULT_TOML).unwrap();
        let mut in_doc = Vec::new();
        keys("", &doc, &mut in_doc);
        for k in &all {
            assert!(in_doc.contains(k), "default.toml lacks key {k}");
        }
        // Each `key =` line is preceded by a comment line.
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if !t.starts_with('#') && !t.starts_with('[') && t.contains(" = ") && !t.starts_with('"') {
                assert!(lines[i - 1].trim_start().starts_with('#'), "line {} has no comment: {l}", i + 1);
            }
        }
    }

    #[test]
    fn dump_round_trips() {
        let mut c = Config::default();
        c.cri.snapshotter = SnapshotterKind::Native;
        c.cri.image_pull_progress_timeout = Duration::from_secs(90);
        assert_eq!(Config::parse(&c.dump()).unwrap(), c);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name_and_line() {
        let err = Config::parse("version = 1\n[grpc]\nadress = \"/x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("adress"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let err = Config::parse("[cri]\nsnapshotter = \"zfs\"\n").unwrap_err().to_string();
        assert!(err.contains("zfs") && err.contains("line 2"), "{err}");
        let err = Config::parse("[cri]\nimage_pull_progress_timeout = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("soon"), "{err}");
        let err = Config::parse("root = \"relative/dir\"\n").unwrap_err().to_string();
        assert!(err.contains("`root`"), "{err}");
        let err = Config::parse("[runtimes]\ndefault = \"kata\"\n").unwrap_err().to_string();
        assert!(err.contains("runtimes.default"), "{err}");
        let err = Config::parse("version = 2\n").unwrap_err().to_string();
        assert!(err.contains("`version`"), "{err}");
        let err = Config::parse("[runtimes.handlers.runc]\npod_annotations = [\"io.kata.[\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtimes.handlers.runc.pod_annotations") && err.contains("io.kata.["), "{err}");
        let err = Config::parse("[metrics]\naddress = \"nowhere\"\n").unwrap_err().to_string();
        assert!(err.contains("metrics.address"), "{err}");
        let long = format!("[grpc]\naddress = \"/tmp/{}\"\n", "s".repeat(110));
        let err = Config::parse(&long).unwrap_err().to_string();
        assert!(err.contains("grpc.address"), "{err}");
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::parse("[cri]\nsandbox_image = \"registry.k8s.io/pause:3.10\"\n").unwrap();
        assert_eq!(c.cri.sandbox_image, "registry.k8s.io/pause:3.10");
        assert_eq!(c.grpc, Grpc::default());
        assert_eq!(c.cri.max_concurrent_downloads, 3);
    }

    #[test]
    fn missing_optional_file_gives_defaults() {
        let c = Config::load(Path::new("/nonexistent/berth/config.toml"), false).unwrap();
        assert_eq!(c, Config::default());
        assert!(Config::load(Path::new("/nonexistent/berth/config.toml"), true).is_err());
    }
}
