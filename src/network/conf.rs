//! CNI network configuration: finding and parsing the network in `conf_dir` the way containerd and
//! CRI-O do (the first `.conflist`, `.conf` or `.json` file in lexical order; a single-plugin `.conf`
//! is wrapped into a list). This module reads files only; it never runs a plugin.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A parsed network configuration list, with the file it came from and its raw plugin configs
/// (kept as JSON values: each plugin defines its own keys).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub file: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub plugins: Vec<serde_json::Value>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct RawList {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    disable_check: bool,
    #[serde(default)]
    plugins: Option<Vec<serde_json::Value>>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// Loads the network berth uses from `conf_dir`. The error says why no network is ready (for
/// `Status`' NetworkReady condition): no directory, no file, or the first file invalid.
pub fn load_network(conf_dir: &Path) -> Result<NetworkConfigList> {
    let entries = std::fs::read_dir(conf_dir)
        .map_err(|e| Error::precondition(format!("cni config dir {}: {e}", conf_dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist") | Some("conf") | Some("json")
                )
        })
        .collect();
    files.sort();
    let Some(first) = files.into_iter().next() else {
        return Err(Error::precondition(format!("no network config found in {}", conf_dir.display())));
    };
    parse_file(&first)
}

/// Parses one CNI config file: a `.conflist` or a single-plugin `.conf`/`.json`.
pub fn parse_file(path: &Path) -> Result<NetworkConfigList> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::precondition(format!("reading cni config {}: {e}", path.display())))?;
    let bad = |why: String| Error::precondition(format!("invalid cni config {}: {why}", path.display()));
    let raw: RawList = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if raw.name.is_empty() {
        return Err(bad("missing network name".into()));
    }
    let plugins = match (raw.plugins, raw.kind) {
        (Some(p), _) => p,
        (None, Some(_)) => {
            // A single plugin config: it is its own (only) plugin.
            vec![serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?]
        }
        (None, None) => return Err(bad("neither \"plugins\" nor \"type\" is set".into())),
    };
    if plugins.is_empty() {
        return Err(bad("no plugins in the list".into()));
    }
    for (i, p) in plugins.iter().enumerate() {
        if p.get("type").and_then(|t| t.as_str()).is_none_or(str::is_empty) {
            return Err(bad(format!("plugin {i} has no \"type\"")));
        }
    }
    Ok(NetworkConfigList {
        file: path.to_path_buf(),
        name: raw.name,
        cni_version: if raw.cni_version.is_empty() { "0.4.0".into() } else { raw.cni_version },
        disable_check: raw.disable_check,
        plugins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn picks_first_file_in_lexical_order_and_wraps_single_conf() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "20-b.conflist",
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        );
        write(d.path(), "10-a.conf", r#"{"cniVersion":"0.4.0","name":"a","type":"ptp"}"#);
        write(d.path(), "00-ignored.txt", "junk");
        let n = load_network(d.path()).unwrap();
        assert_eq!(n.name, "a");
        assert_eq!(n.plugins.len(), 1);
        assert_eq!(n.plugins[0]["type"], "ptp");
    }

    #[test]
    fn missing_or_invalid_config_says_why() {
        let d = tempfile::tempdir().unwrap();
        let e = load_network(d.path()).unwrap_err().to_string();
        assert!(e.contains("no network config"), "{e}");
        write(d.path(), "10-x.conflist", r#"{"name":"x","plugins":[{"nottype":1}]}"#);
        let e = load_network(d.path()).unwrap_err().to_string();
        assert!(e.contains("no \"type\""), "{e}");
        let e = load_network(&d.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("cni config dir"), "{e}");
    }
}
