//! CNI plugin output: ADD results (1.x, 0.3.x/0.4.0 and the legacy 0.1/0.2 `ip4`/`ip6` form),
//! VERSION answers and error objects. Results are kept as JSON (plugins and later spec versions add
//! fields that must survive a round trip through the cache) and converted between spec versions the
//! way libcni does, so a chained plugin and the cache always see the list's `cniVersion`. This
//! module only parses and converts; it never runs a plugin.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::conf::parse_version;
use crate::error::{Error, Result};

/// An interface from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The interface name (`eth0` inside the pod, `veth…`/bridge on the host).
    pub name: String,
    /// The hardware address, if the plugin reported one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The network namespace path for interfaces inside the pod; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address (without its prefix).
    pub address: IpAddr,
    /// The prefix length of the subnet.
    pub prefix: u8,
    /// The gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Index into the result's interfaces, if the plugin set one.
    pub interface: Option<usize>,
}

/// The parts of a CNI result berth itself looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultView {
    /// Interfaces created by the attachment (host side and pod side).
    pub interfaces: Vec<Interface>,
    /// Addresses assigned by the attachment.
    pub ips: Vec<IpConfig>,
}

impl ResultView {
    /// Reads interfaces and addresses from a result already converted to 0.3.0 or later.
    pub fn parse(result: &Value) -> Result<ResultView> {
        let bad = |why: String| Error::internal(format!("invalid cni result: {why}"));
        let interfaces: Vec<Interface> = match result.get("interfaces") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("interfaces: {e}")))?,
        };
        let mut ips = Vec::new();
        for ip in result.get("ips").and_then(Value::as_array).into_iter().flatten() {
            let cidr =
                ip.get("address").and_then(Value::as_str).ok_or_else(|| bad("ip without address".into()))?;
            let (address, prefix) =
                parse_cidr(cidr).ok_or_else(|| bad(format!("address {cidr:?} is not a cidr")))?;
            let gateway = match ip.get("gateway").and_then(Value::as_str) {
                None | Some("") => None,
                Some(g) => Some(g.parse().map_err(|_| bad(format!("gateway {g:?} is not an ip")))?),
            };
            let interface = match ip.get("interface") {
                None | Some(Value::Null) => None,
                Some(i) => {
                    let i = i.as_u64().ok_or_else(|| bad(format!("interface index {i} is not a number")))?;
                    Some(usize::try_from(i).map_err(|_| bad(format!("interface index {i} too large")))?)
                }
            };
            ips.push(IpConfig { address, prefix, gateway, interface });
        }
        Ok(ResultView { interfaces, ips })
    }

    /// The pod's addresses: those on the interface named `ifname` inside the sandbox (or, when the
    /// plugins did not say which interface an address belongs to, every address), IPv4 first and
    /// otherwise in the plugin's order, the way containerd picks the pod IP.
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let on_pod_if = |ip: &&IpConfig| match ip.interface.and_then(|i| self.interfaces.get(i)) {
            Some(iface) => iface.name == ifname && !iface.sandbox.is_empty(),
            None => false,
        };
        let mut chosen: Vec<IpAddr> = self.ips.iter().filter(on_pod_if).map(|ip| ip.address).collect();
        if chosen.is_empty() {
            chosen = self.ips.iter().filter(|ip| ip.interface.is_none()).map(|ip| ip.address).collect();
        }
        chosen.sort_by_key(|ip| ip.is_ipv6());
        chosen
    }
}

/// Parses `addr/prefix`.
pub fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = cidr.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

/// Parses a plugin's ADD output and converts it to `version` (the list's `cniVersion`). Output
/// without a `cniVersion` is taken to be in `version`, as libcni does.
pub fn parse_add_output(stdout: &[u8], version: &str) -> Result<Value> {
    let value: Value = serde_json::from_slice(stdout).map_err(|e| {
        let text = String::from_utf8_lossy(stdout);
        Error::internal(format!("cni result {:?} is not json: {e}", text.trim()))
    })?;
    convert(value, version)
}

/// Converts a result (any supported version) to `target`: 0.1/0.2 results are rewritten to the
/// `ips` form, `ips[].version` is present below 1.0.0 and absent from 1.0.0 on, and `cniVersion`
/// is set to `target`. Unknown fields are kept. Converting down to 0.1/0.2 is not supported
/// (chaining and cached results did not exist then).
pub fn convert(value: Value, target: &str) -> Result<Value> {
    let Value::Object(mut obj) = value else {
        return Err(Error::internal(format!("cni result is not a json object: {value}")));
    };
    let bad_version = |v: &str| Error::internal(format!("cni result version {v:?} is not supported"));
    let target_v = parse_version(target).ok_or_else(|| bad_version(target))?;
    if target_v < (0, 3, 0) {
        return Err(bad_version(target));
    }
    if obj.contains_key("ip4") || obj.contains_key("ip6") {
        obj = from_legacy(obj)?;
    }
    if let Some(Value::Array(ips)) = obj.get_mut("ips") {
        for ip in ips {
            let Value::Object(ip) = ip else { continue };
            if target_v >= (1, 0, 0) {
                ip.remove("version");
            } else {
                let family = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(parse_cidr)
                    .map(|(a, _)| if a.is_ipv4() { "4" } else { "6" });
                if let Some(f) = family {
                    ip.insert("version".into(), json!(f));
                }
            }
        }
    }
    obj.insert("cniVersion".into(), json!(target));
    Ok(Value::Object(obj))
}

/// Rewrites a 0.1.0/0.2.0 result (`ip4`/`ip6` objects with their own routes) into the 0.3.0 form.
fn from_legacy(mut obj: Map<String, Value>) -> Result<Map<String, Value>> {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for key in ["ip4", "ip6"] {
        let Some(Value::Object(mut legacy)) = obj.remove(key) else { continue };
        let mut ip = Map::new();
        let address =
            legacy.remove("ip").ok_or_else(|| Error::internal(format!("cni result {key} has no ip")))?;
        ip.insert("address".into(), address);
        if let Some(g) = legacy.remove("gateway") {
            ip.insert("gateway".into(), g);
        }
        ips.push(Value::Object(ip));
        if let Some(Value::Array(r)) = legacy.remove("routes") {
            routes.extend(r);
        }
    }
    obj.insert("ips".into(), Value::Array(ips));
    if !routes.is_empty() {
        obj.insert("routes".into(), Value::Array(routes));
    }
    Ok(obj)
}

/// A CNI error object as printed by a failing plugin.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct PluginFailure {
    /// The well-known (0–99) or plugin-specific error code; 0 when the plugin printed none.
    #[serde(default)]
    pub code: u32,
    /// The short message.
    #[serde(default)]
    pub msg: String,
    /// The longer explanation.
    #[serde(default)]
    pub details: String,
}

/// CNI error code: the container is unknown or does not exist.
pub const CODE_CONTAINER_UNKNOWN: u32 = 3;
/// CNI error code: a transient condition, try again later.
pub const CODE_TRY_AGAIN_LATER: u32 = 11;

impl PluginFailure {
    /// Builds the failure of a plugin that exited non-zero: the error object it printed on
    /// stdout, or else its stderr (then stdout) as the message.
    pub fn from_output(stdout: &[u8], stderr: &[u8], status: &str) -> PluginFailure {
        if let Ok(f) = serde_json::from_slice::<PluginFailure>(stdout)
            && (!f.msg.is_empty() || f.code != 0)
        {
            return f;
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        let msg = match (text(stderr), text(stdout)) {
            (e, _) if !e.is_empty() => e,
            (_, o) if !o.is_empty() => o,
            _ => format!("plugin failed with no error message ({status})"),
        };
        PluginFailure { code: 0, msg, details: String::new() }
    }

    /// Whether this DEL failure says the thing to delete is already gone: CNI wants DEL to
    /// succeed for missing resources, and some plugins still report them as errors.
    pub fn is_gone(&self) -> bool {
        if self.code == CODE_CONTAINER_UNKNOWN {
            return true;
        }
        let text = format!("{} {}", self.msg, self.details).to_ascii_lowercase();
        ["not found", "no such file", "no such device", "does not exist", "not exist", "no such process"]
            .iter()
            .any(|needle| text.contains(needle))
    }
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        if self.code != 0 {
            write!(f, " (code {})", self.code)?;
        }
        Ok(())
    }
}

/// The spec versions a plugin speaks, from its VERSION output. Plugins from before VERSION
/// existed answer with nothing useful; they are taken to speak 0.1.0 and 0.2.0, as libcni does.
pub fn parse_supported_versions(stdout: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct VersionInfo {
        #[serde(default)]
        supported_versions: Vec<String>,
    }
    match serde_json::from_slice::<VersionInfo>(stdout) {
        Ok(v) if !v.supported_versions.is_empty() => v.supported_versions,
        _ => vec!["0.1.0".into(), "0.2.0".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE_100: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:01"},
        {"name":"veth1","mac":"aa:bb:cc:dd:ee:02"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:03","sandbox":"/run/ns/x"}],
        "ips":[{"interface":2,"address":"fd00::5/64"},{"interface":2,"address":"10.1.0.5/24","gateway":"10.1.0.1"},
        {"interface":0,"address":"10.1.0.1/24"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{},"extra":{"kept":true}}"#;

    #[test]
    fn pod_ips_are_those_on_the_sandbox_interface_ipv4_first() {
        let v = parse_add_output(BRIDGE_100.as_bytes(), "1.0.0").unwrap();
        let view = ResultView::parse(&v).unwrap();
        assert_eq!(view.interfaces.len(), 3);
        assert_eq!(view.ips[1].gateway, Some("10.1.0.1".parse().unwrap()));
        let ips = view.pod_ips("eth0");
        assert_eq!(ips, vec!["10.1.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        assert!(view.pod_ips("eth1").is_empty());
    }

    #[test]
    fn converts_between_versions_keeping_unknown_fields() {
        let v = parse_add_output(BRIDGE_100.as_bytes(), "0.4.0").unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "6");
        assert_eq!(v["ips"][1]["version"], "4");
        assert_eq!(v["extra"]["kept"], true);
        let back = convert(v, "1.1.0").unwrap();
        assert_eq!(back["cniVersion"], "1.1.0");
        assert!(back["ips"][0].get("version").is_none());
        // A 0.4.0 result parses and gives the same view.
        let view = ResultView::parse(&back).unwrap();
        assert_eq!(view.pod_ips("eth0").len(), 2);
        assert!(convert(back.clone(), "0.2.0").is_err());
        assert!(convert(json!([1]), "1.0.0").is_err());
        assert!(parse_add_output(b"not json", "1.0.0").unwrap_err().to_string().contains("not json"));
    }

    #[test]
    fn legacy_results_become_ips() {
        let legacy = br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.2.0.7/16","gateway":"10.2.0.1",
            "routes":[{"dst":"0.0.0.0/0"}]},"dns":{"nameservers":["10.2.0.1"]}}"#;
        let v = parse_add_output(legacy, "0.3.1").unwrap();
        assert_eq!(v["ips"][0]["address"], "10.2.0.7/16");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        assert!(v.get("ip4").is_none());
        let view = ResultView::parse(&v).unwrap();
        assert_eq!(view.pod_ips("eth0"), vec!["10.2.0.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn failures_prefer_the_error_object_then_stderr() {
        let f = PluginFailure::from_output(
            br#"{"cniVersion":"1.0.0","code":7,"msg":"Invalid Configuration","details":"too small"}"#,
            b"log line",
            "exit status: 1",
        );
        assert_eq!(f.to_string(), "Invalid Configuration: too small (code 7)");
        assert!(!f.is_gone());
        let f = PluginFailure::from_output(b"", b"panic: boom\n", "exit status: 2");
        assert_eq!(f.msg, "panic: boom");
        let f = PluginFailure::from_output(b"", b"", "exit status: 2");
        assert!(f.msg.contains("no error message (exit status: 2)"), "{f}");
        let gone = PluginFailure { code: 0, msg: "Link not found".into(), details: String::new() };
        assert!(gone.is_gone());
        assert!(PluginFailure { code: 3, ..Default::default() }.is_gone());
    }

    #[test]
    fn version_answers() {
        let v = parse_supported_versions(br#"{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}"#);
        assert_eq!(v, vec!["1.0.0", "1.1.0"]);
        assert_eq!(parse_supported_versions(b""), vec!["0.1.0", "0.2.0"]);
        assert_eq!(parse_cidr("10.0.0.1/33"), None);
        assert_eq!(parse_cidr("fd00::1/128"), Some(("fd00::1".parse().unwrap(), 128)));
    }
}
