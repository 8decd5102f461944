//! The installer's settings (`install.toml`, rendered by the Helm chart from its values) and what
//! they turn into on the node: berthd's `/etc/berth/config.toml` and the registry mirrors'
//! `certs.d/<host>/hosts.toml` files. Both are checked by berth's own parsers before anything is
//! written.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{CgroupDriver, Config};
use crate::engine::image::hosts::parse_hosts;
use crate::error::{Error, Result};

/// `install.toml`. Every key is optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Switch the kubelet to berth; false only installs and starts berthd beside the old runtime.
    pub switch_kubelet: bool,
    /// Revert the node when the DaemonSet is deleted.
    pub uninstall_on_delete: bool,
    /// Install berth's bridge CNI config: "auto" (only when /etc/cni/net.d has none), "always", "never".
    pub install_cni: InstallCni,
    /// How long to wait for the node to be Ready on berth before reverting.
    #[serde(with = "crate::config::duration")]
    pub ready_timeout: Duration,
    /// Registry mirrors: registry host → mirror URLs (`http://host:port` or `https://…`), tried in order.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// berthd configuration overrides, merged over the defaults (same keys as config.toml).
    pub config: toml::Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallCni {
    Auto,
    Always,
    Never,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            switch_kubelet: true,
            uninstall_on_delete: true,
            install_cni: InstallCni::Auto,
            ready_timeout: Duration::from_secs(300),
            mirrors: BTreeMap::new(),
            config: toml::Table::new(),
        }
    }
}

impl Settings {
    pub fn parse(text: &str) -> Result<Settings> {
        let mut s: Settings =
            toml::from_str(text).map_err(|e| Error::invalid(format!("invalid installer settings: {e}")))?;
        whole_floats_to_integers(&mut s.config);
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Settings> {
        match std::fs::read_to_string(path) {
            Ok(t) => Settings::parse(&t).map_err(|e| e.context(format!("loading {}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(Error::invalid(format!("reading {}: {e}", path.display()))),
        }
    }
}

/// Helm keeps every number of its values as a float and `toToml` writes `3` as `3.0`; berth's keys
/// that are numbers are all integers, so whole floats become integers again.
fn whole_floats_to_integers(table: &mut toml::Table) {
    fn fix(v: &mut toml::Value) {
        match v {
            toml::Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                *v = toml::Value::Integer(*f as i64)
            }
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| fix(v)),
            toml::Value::Array(a) => a.iter_mut().for_each(fix),
            _ => {}
        }
    }
    table.iter_mut().for_each(|(_, v)| fix(v));
}

/// berthd's config.toml for this node: the values' overrides, with the node's cgroup driver (the
/// kubelet's must match berth's). Only what differs from berth's defaults is written, so a newer
/// berth's defaults apply on upgrade. Returns the file and the parsed configuration (validated by
/// the same code berthd runs at start).
pub fn berth_config(settings: &Settings, driver: CgroupDriver) -> Result<(String, Config)> {
    let mut table = settings.config.clone();
    // Handlers from the values come on top of berth's default runc handler, not instead of it.
    if let Some(toml::Value::Table(rt)) = table.get_mut("runtimes")
        && !rt.contains_key("default")
        && let Some(toml::Value::Table(handlers)) = rt.get_mut("handlers")
    {
        handlers.entry("runc").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let cri = table.entry("cri").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(cri) = cri else {
        return Err(Error::invalid("invalid installer settings: `config.cri` must be a table"));
    };
    let driver = match driver {
        CgroupDriver::Systemd => "systemd",
        CgroupDriver::Cgroupfs => "cgroupfs",
    };
    if let Some(v) = cri.get("cgroup_driver")
        && v.as_str() != Some(driver)
    {
        return Err(Error::invalid(format!(
            "invalid installer settings: `config.cri.cgroup_driver` is {v}, but the kubelet on this node uses {driver}"
        )));
    }
    if driver != "cgroupfs" {
        cri.insert("cgroup_driver".into(), toml::Value::String(driver.into()));
    }
    let text = format!(
        "# Written by berth-install from the chart's values; `berthd config dump` shows every key.\n{}",
        toml::to_string(&table).map_err(|e| Error::internal(format!("rendering config.toml: {e}")))?
    );
    let config = Config::parse(&text).map_err(|e| e.context("the configuration from the chart's values"))?;
    Ok((text, config))
}

/// The `hosts.toml` of each mirrored registry, by registry host, checked by berth's own parser.
pub fn mirror_files(settings: &Settings) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (registry, mirrors) in &settings.mirrors {
        if registry.is_empty() || registry.contains(['/', '\\']) || registry.starts_with('.') {
            return Err(Error::invalid(format!("invalid installer settings: mirror registry {registry:?}")));
        }
        let mut text = String::from("# Written by berth-install from the chart's values.\n");
        for m in mirrors {
            if !(m.starts_with("http://") || m.starts_with("https://")) || m.contains(['"', '\n', '\\']) {
                return Err(Error::invalid(format!(
                    "invalid installer settings: mirror {m:?} of {registry} must be an http:// or https:// URL"
                )));
            }
            text.push_str(&format!("\n[host.\"{m}\"]\ncapabilities = [\"pull\", \"resolve\"]\n"));
        }
        let dir = Path::new("/etc/berth/certs.d").join(registry);
        let hosts = parse_hosts(&text, &dir, registry, true)
            .map_err(|e| e.context(format!("mirrors of {registry} from the chart's values")))?;
        if hosts.len() != mirrors.len() + 1 {
            return Err(Error::invalid(format!(
                "invalid installer settings: mirrors of {registry} repeat a URL"
            )));
        }
        out.insert(registry.clone(), text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::image::hosts::Scheme;

    #[test]
    fn empty_settings_give_an_empty_valid_config_on_cgroupfs() {
        let s = Settings::parse("").unwrap();
        assert_eq!(s, Settings::default());
        let (text, config) = berth_config(&s, CgroupDriver::Cgroupfs).unwrap();
        assert_eq!(config, Config::default());
        assert!(!text.contains("cgroup_driver"), "{text}");
    }

    #[test]
    fn overrides_merge_and_the_node_driver_is_kept() {
        let s = Settings::parse(
            r#"
switch_kubelet = false
ready_timeout = "2m"
[config]
metrics = { address = "127.0.0.1:9830" }
grpc = { gid = 1000.0 }
[config.cri]
sandbox_image = "registry.k8s.io/pause:3.10"
[config.runtimes.handlers.crun]
binary = "/usr/bin/crun"
"#,
        )
        .unwrap();
        assert!(!s.switch_kubelet);
        assert_eq!(s.ready_timeout, Duration::from_secs(120));
        let (text, config) = berth_config(&s, CgroupDriver::Systemd).unwrap();
        assert_eq!(config.cri.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(config.cri.sandbox_image, "registry.k8s.io/pause:3.10");
        assert_eq!(config.metrics.address, "127.0.0.1:9830");
        assert_eq!(config.grpc.gid, 1000, "helm's whole floats are integers");
        assert_eq!(config.runtimes.handlers["crun"].binary, Path::new("/usr/bin/crun"));
        assert!(config.runtimes.handlers.contains_key("runc"), "the default handler stays");
        // What is written parses to the same thing berthd will load.
        assert_eq!(Config::parse(&text).unwrap(), config);
    }

    #[test]
    fn a_driver_that_contradicts_the_kubelet_or_a_bad_key_is_refused() {
        let s = Settings::parse("[config.cri]\ncgroup_driver = \"cgroupfs\"\n").unwrap();
        let e = berth_config(&s, CgroupDriver::Systemd).unwrap_err().to_string();
        assert!(e.contains("kubelet on this node uses systemd"), "{e}");
        let s = Settings::parse("[config.cri]\nno_such_key = 1\n").unwrap();
        let e = berth_config(&s, CgroupDriver::Cgroupfs).unwrap_err().to_string();
        assert!(e.contains("no_such_key"), "{e}");
        let e = Settings::parse("switch_kubelets = true\n").unwrap_err().to_string();
        assert!(e.contains("switch_kubelets"), "{e}");
    }

    #[test]
    fn mirrors_become_hosts_toml_that_berth_reads_in_order() {
        let s = Settings::parse(
            "[mirrors]\n\"docker.io\" = [\"http://10.86.0.1:5100\", \"https://mirror.example\"]\n",
        )
        .unwrap();
        let files = mirror_files(&s).unwrap();
        let text = &files["docker.io"];
        let hosts = parse_hosts(text, Path::new("/x"), "docker.io", true).unwrap();
        assert_eq!(hosts.len(), 3, "two mirrors, then the upstream");
        assert_eq!((hosts[0].scheme, hosts[0].host.as_str()), (Scheme::Http, "10.86.0.1:5100"));
        assert_eq!((hosts[1].scheme, hosts[1].host.as_str()), (Scheme::Https, "mirror.example"));

        for bad in ["[mirrors]\n\"docker.io\" = [\"10.0.0.1:5000\"]\n", "[mirrors]\n\"../etc\" = []\n"] {
            assert!(mirror_files(&Settings::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
