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
    /// Where the list came from (a config file, or a result cache entry).
    pub file: PathBuf,
    /// The network name.
    pub name: String,
    /// The spec version used for the list (see `select_version`).
    pub cni_version: String,
    /// Whether CHECK must not be called.
    pub disable_check: bool,
    /// The plugin configs, in order.
    pub plugins: Vec<serde_json::Value>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct RawList {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    cni_versions: Vec<String>,
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
    parse_bytes(&bytes, path)
}

/// Parses a CNI config list (or single-plugin config) held in memory; `origin` names where it came
/// from (a file, or the result cache) in errors and in [`NetworkConfigList::file`].
pub fn parse_bytes(bytes: &[u8], origin: &Path) -> Result<NetworkConfigList> {
    let bad = |why: String| Error::precondition(format!("invalid cni config {}: {why}", origin.display()));
    let raw: RawList = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if raw.name.is_empty() {
        return Err(bad("missing network name".into()));
    }
    // The name becomes part of file names (result cache, host-local's store): keep it to what the
    // CNI spec allows so it can never name a path outside those directories.
    if !valid_name(&raw.name) {
        return Err(bad(format!("network name {:?} is not [a-zA-Z0-9][a-zA-Z0-9_.-]*", raw.name)));
    }
    let plugins = match (raw.plugins, raw.kind) {
        (Some(p), _) => p,
        (None, Some(_)) => {
            // A single plugin config: it is its own (only) plugin.
            vec![serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?]
        }
        (None, None) => return Err(bad("neither \"plugins\" nor \"type\" is set".into())),
    };
    if plugins.is_empty() {
        return Err(bad("no plugins in the list".into()));
    }
    for (i, p) in plugins.iter().enumerate() {
        match p.get("type").and_then(|t| t.as_str()) {
            None | Some("") => return Err(bad(format!("plugin {i} has no \"type\""))),
            Some(t) if t.contains('/') || t == "." || t == ".." => {
                return Err(bad(format!("plugin {i} has an invalid \"type\" {t:?}")));
            }
            Some(_) => {}
        }
    }
    Ok(NetworkConfigList {
        file: origin.to_path_buf(),
        name: raw.name,
        cni_version: select_version(&raw.cni_version, &raw.cni_versions),
        disable_check: raw.disable_check,
        plugins,
    })
}

/// The newest CNI spec version berth speaks.
pub const MAX_CNI_VERSION: &str = "1.1.0";

/// The version to use for a list: the highest of `cniVersion` and `cniVersions` that berth speaks
/// (the spec's rule since 1.1), `cniVersion` alone when none of them parse, 0.4.0 when nothing is
/// set (what containerd assumes).
fn select_version(cni_version: &str, cni_versions: &[String]) -> String {
    let max = parse_version(MAX_CNI_VERSION);
    let best = std::iter::once(cni_version)
        .chain(cni_versions.iter().map(String::as_str))
        .filter_map(|v| parse_version(v).map(|p| (p, v)))
        .filter(|(p, _)| Some(*p) <= max)
        .max_by_key(|(p, _)| *p);
    match best {
        Some((_, v)) => v.to_string(),
        None if cni_version.is_empty() => "0.4.0".into(),
        None => cni_version.to_string(),
    }
}

/// Parses a CNI spec version "major.minor.patch" for comparisons; `None` if it is not one.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let parsed = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(parsed)
}

/// Whether `name` is a valid CNI network name or container id: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
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
        let e = parse_bytes(br#"{"name":"../x","type":"ptp"}"#, Path::new("mem")).unwrap_err().to_string();
        assert!(e.contains("network name"), "{e}");
        let e = parse_bytes(br#"{"name":"x","type":"../ptp"}"#, Path::new("mem")).unwrap_err().to_string();
        assert!(e.contains("invalid \"type\""), "{e}");
    }

    #[test]
    fn version_is_the_highest_spoken_of_cni_version_and_cni_versions() {
        let v = |body: &str| parse_bytes(body.as_bytes(), Path::new("mem")).unwrap().cni_version;
        assert_eq!(v(r#"{"name":"n","type":"ptp"}"#), "0.4.0");
        assert_eq!(v(r#"{"cniVersion":"0.3.1","name":"n","type":"ptp"}"#), "0.3.1");
        assert_eq!(
            v(r#"{"cniVersion":"0.4.0","cniVersions":["1.0.0","9.0.0","0.3.1"],"name":"n","type":"ptp"}"#),
            "1.0.0"
        );
        assert_eq!(v(r#"{"cniVersion":"2.0.0","name":"n","type":"ptp"}"#), "2.0.0");
        assert_eq!(parse_version("1.10.2"), Some((1, 10, 2)));
        assert!(parse_version("1.0").is_none() && parse_version("1.0.0.0").is_none());
        assert!(valid_name("a-1_b.c") && !valid_name("-a") && !valid_name("") && !valid_name("a/b"));
    }
}
