//! Registry host configuration in containerd's `certs.d` layout: `<config_path>/<domain>/hosts.toml`
//! lists the mirrors to try (in file order) before the upstream `server`, with their TLS settings
//! and extra headers; a directory without hosts.toml may hold Docker-style `*.crt`/`*.cert`/`*.key`
//! files; `_default` applies to every registry without a directory of its own. Files are read on
//! every call, so edits apply to the next pull without a restart (as in containerd).
//!
//! It also decides which hosts may receive credentials over plain HTTP: loopback hosts (nothing
//! leaves the node), and a registry that its own hosts.toml (`<config_path>/<host>/hosts.toml`, not
//! `_default`) names with an `http://` URL for that same host, in `server` or a `[host."http://…"]`
//! entry. A mirror listed as `http://` in another registry's file does not qualify: that file
//! speaks for the other registry, not for the mirror.
//!
//! This module only reads configuration; it must never open connections or read certificates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::header::{HeaderName, HeaderValue};
use toml::Value;

use crate::engine::image::reference::registry_host;
use crate::error::{Context, Error, Result};

/// How to talk to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What a host may be trusted with. Resolving a tag to a digest is a trusted operation: a public
/// mirror should only pull (fetch by digest), never resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    /// pull, resolve and push: the upstream registry, and any host whose `capabilities` are not given.
    pub const ALL: Capabilities = Capabilities { pull: true, resolve: true, push: true };
}

/// One host to try for a registry domain, in the order [`hosts_for`] returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    pub scheme: Scheme,
    /// `host[:port]` (IPv6 in brackets).
    pub host: String,
    /// The API root: `/v2` unless `override_path` gave another (possibly empty) path.
    pub path: String,
    pub capabilities: Capabilities,
    /// Accept any server certificate (testing only).
    pub skip_verify: bool,
    /// Extra CA certificate files, trusted on top of the system roots.
    pub ca: Vec<PathBuf>,
    /// Client certificates: (certificate, key); no key means the key is in the certificate file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra headers sent with every request to this host.
    pub header: BTreeMap<String, Vec<String>>,
    /// Whether credentials may go to this host over plain HTTP (see the module doc). Meaningless for
    /// HTTPS hosts, which may always receive the credentials configured for them.
    pub http_credentials: bool,
}

impl RegistryHost {
    /// `scheme://host`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.host)
    }

    /// Whether requests to this host are made on behalf of another registry (a mirror), in which
    /// case they carry `ns=<domain>` as containerd's do.
    pub fn is_mirror_for(&self, domain: &str) -> bool {
        self.host != domain && !(domain == "docker.io" && self.host == registry_host(domain))
    }

    /// The default upstream of `domain`: `https://<registry host>/v2` with every capability, plain
    /// HTTP for loopback hosts (except on port 443), as containerd does for local registries.
    pub fn upstream(domain: &str) -> RegistryHost {
        let scheme =
            if is_localhost(domain) && port_of(domain) != Some("443") { Scheme::Http } else { Scheme::Https };
        RegistryHost {
            scheme,
            host: registry_host(domain),
            path: "/v2".into(),
            capabilities: Capabilities::ALL,
            skip_verify: false,
            ca: Vec::new(),
            client: Vec::new(),
            header: BTreeMap::new(),
            // Plain HTTP by default only for loopback hosts.
            http_credentials: scheme == Scheme::Http,
        }
    }

    /// Whether credentials configured for this host may be sent to it: always over HTTPS, over
    /// plain HTTP only where [`RegistryHost::http_credentials`] allows it.
    pub fn may_receive_credentials(&self) -> bool {
        self.scheme == Scheme::Https || self.http_credentials
    }
}

/// The hosts to try for `domain`, in order: the `[host."…"]` entries of its hosts.toml in file
/// order, then the `server` (or the default upstream when the file names none). Without a
/// directory for the domain (nor `_default`), just the default upstream.
pub fn hosts_for(config_path: &Path, domain: &str) -> Result<Vec<RegistryHost>> {
    check_domain(domain)?;
    let Some(dir) = host_dir(config_path, domain)? else {
        return Ok(vec![RegistryHost::upstream(domain)]);
    };
    let own = dir.file_name().is_some_and(|n| n != "_default");
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => parse_hosts_toml(&file, &text, &dir, domain, own),
        Ok(_) => load_cert_files(&dir, domain),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => load_cert_files(&dir, domain),
        Err(e) => Err(e).context(|| format!("reading registry host config {}", file.display())),
    }
}

/// The hosts a hosts.toml text gives for `domain`, as [`hosts_for`] would from
/// `<dir>/hosts.toml` (relative paths resolve against `dir`); `own` says whether the file is the
/// domain's own rather than `_default`'s. Also the entry point for fuzzing the parser.
pub fn parse_hosts(text: &str, dir: &Path, domain: &str, own: bool) -> Result<Vec<RegistryHost>> {
    check_domain(domain)?;
    parse_hosts_toml(&dir.join("hosts.toml"), text, dir, domain, own)
}

fn check_domain(domain: &str) -> Result<()> {
    if domain.is_empty() || domain.contains('/') || domain.starts_with('.') {
        return Err(Error::invalid(format!("invalid registry domain {domain:?}")));
    }
    Ok(())
}

/// The first of `<host>_<port>_`, `<host>:<port>`, `_default` that exists (containerd's order).
fn host_dir(root: &Path, domain: &str) -> Result<Option<PathBuf>> {
    let mut candidates = Vec::new();
    if let Some(i) = domain.rfind(':')
        && i > 0
    {
        candidates.push(root.join(format!("{}_{}_", &domain[..i], &domain[i + 1..])));
    }
    candidates.push(root.join(domain));
    candidates.push(root.join("_default"));
    for c in candidates {
        match std::fs::metadata(&c) {
            Ok(m) if m.is_dir() => return Ok(Some(c)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(|| format!("reading registry host dir {}", c.display())),
        }
    }
    Ok(None)
}

/// Docker's certs.d layout: `*.crt` are CAs, `*.cert` client certificates with the `*.key` of the
/// same name, all for the default upstream.
fn load_cert_files(dir: &Path, domain: &str) -> Result<Vec<RegistryHost>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .context(|| format!("reading registry host dir {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut host = RegistryHost::upstream(domain);
    for name in &names {
        if name.ends_with(".crt") {
            host.ca.push(dir.join(name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = format!("{stem}.key");
            host.client.push((dir.join(name), names.contains(&key).then(|| dir.join(&key))));
        }
    }
    Ok(vec![host])
}

fn parse_hosts_toml(
    file: &Path,
    text: &str,
    dir: &Path,
    domain: &str,
    own: bool,
) -> Result<Vec<RegistryHost>> {
    let bad = |why: String| Error::invalid(format!("invalid registry host config {}: {why}", file.display()));
    let table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_string()))?;
    let mut hosts = Vec::new();
    if let Some(h) = table.get("host") {
        let h = h.as_table().ok_or_else(|| bad("\"host\" must be a table".into()))?;
        for name in host_order(text, h) {
            let what = format!("host.{name:?}");
            let entry = h[&name].as_table().ok_or_else(|| bad(format!("{what} must be a table")))?;
            let parsed = parse_entry(Some(&name), entry, dir, domain, &what).map_err(bad)?;
            hosts.push(parsed);
        }
    }
    let server = match table.get("server") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        Some(Value::String(_)) => None,
        Some(_) => return Err(bad("\"server\" must be a string".into())),
    };
    let mut root = parse_entry(server, &table, dir, domain, "server").map_err(bad)?;
    if server.is_none() {
        // The default upstream keeps every capability (containerd ignores them there too).
        root.capabilities = Capabilities::ALL;
    }
    hosts.push(root);
    let registry = registry_host(domain);
    for h in &mut hosts {
        h.http_credentials =
            h.scheme == Scheme::Http && (is_localhost(&h.host) || (own && h.host == registry));
    }
    Ok(hosts)
}

/// The `[host."…"]` names in the order they first appear in the file (the parsed table is sorted).
fn host_order(text: &str, hosts: &toml::Table) -> Vec<String> {
    let mut order: Vec<(usize, String)> = Vec::new();
    if let Ok(doc) = toml::de::DeTable::parse(text)
        && let Some((_, v)) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == "host")
        && let Some(t) = v.get_ref().as_table()
    {
        order = t.iter().map(|(k, _)| (k.span().start, k.get_ref().to_string())).collect();
    }
    order.sort();
    let mut names: Vec<String> =
        order.into_iter().map(|(_, n)| n).filter(|n| hosts.contains_key(n)).collect();
    for n in hosts.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// One `[host."<server>"]` entry, or the file's top level (`what` = "server") whose URL is the
/// `server` key, or the default upstream of `domain` when that is absent.
fn parse_entry(
    server: Option<&str>,
    t: &toml::Table,
    dir: &Path,
    domain: &str,
    what: &str,
) -> std::result::Result<RegistryHost, String> {
    let root = what == "server";
    let override_path = match t.get("override_path") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| format!("{what}: override_path must be a boolean"))?,
    };
    let mut host = RegistryHost::upstream(domain);
    if let Some(server) = server {
        (host.scheme, host.host, host.path) = parse_server(server, override_path)?;
    }
    for (key, value) in t {
        match key.as_str() {
            "override_path" => {}
            "server" | "host" if root => {}
            "capabilities" => {
                let caps = strings(value)
                    .ok_or_else(|| format!("{what}: capabilities must be a list of strings"))?;
                let mut c = Capabilities { pull: false, resolve: false, push: false };
                for cap in caps {
                    match cap.to_ascii_lowercase().as_str() {
                        "pull" => c.pull = true,
                        "resolve" => c.resolve = true,
                        "push" => c.push = true,
                        // Newer containerd lists the referrers API; berth does not use it.
                        "referrers" => {}
                        other => tracing::warn!(
                            entry = what,
                            capability = other,
                            "unknown registry host capability ignored"
                        ),
                    }
                }
                host.capabilities = c;
            }
            "skip_verify" => {
                host.skip_verify =
                    value.as_bool().ok_or_else(|| format!("{what}: skip_verify must be a boolean"))?;
            }
            "ca" => {
                let files = match value {
                    Value::String(s) => vec![s.clone()],
                    v => strings(v).ok_or_else(|| format!("{what}: ca must be a path or a list of paths"))?,
                };
                host.ca = files.iter().map(|f| abs(dir, f)).collect();
            }
            "client" => {
                host.client = parse_client(value, dir).ok_or_else(|| {
                    format!("{what}: client must be a path, a list of paths or a list of [cert, key] pairs")
                })?
            }
            "header" => host.header = parse_header(value).map_err(|e| format!("{what}: {e}"))?,
            "dial_timeout" | "proxy" => {
                tracing::warn!(
                    entry = what,
                    key = key.as_str(),
                    "registry host setting not supported by berth, ignored"
                )
            }
            other => tracing::warn!(entry = what, key = other, "unknown registry host setting ignored"),
        }
    }
    Ok(host)
}

/// `https://mirror/us` → (https, "mirror", "/us/v2"); a server without scheme is https.
fn parse_server(server: &str, override_path: bool) -> std::result::Result<(Scheme, String, String), String> {
    let full = if server.contains("://") { server.to_string() } else { format!("https://{server}") };
    let url = reqwest::Url::parse(&full).map_err(|e| format!("invalid server {server:?}: {e}"))?;
    let scheme = match url.scheme() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("invalid server {server:?}: unsupported scheme {other:?}")),
    };
    let Some(h) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!("invalid server {server:?}: no host"));
    };
    let host = match url.port() {
        Some(p) => format!("{h}:{p}"),
        None => h.to_string(),
    };
    let mut path = url.path().trim_end_matches('/').to_string();
    if !override_path && !path.ends_with("/v2") {
        path.push_str("/v2");
    }
    Ok((scheme, host, path))
}

fn parse_client(value: &Value, dir: &Path) -> Option<Vec<(PathBuf, Option<PathBuf>)>> {
    let items = match value {
        Value::String(s) => return Some(vec![(abs(dir, s), None)]),
        Value::Array(a) => a,
        _ => return None,
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Some((abs(dir, s), None)),
            Value::Array(_) => match strings(item)?.as_slice() {
                [cert, key] => Some((abs(dir, cert), (!key.is_empty()).then(|| abs(dir, key)))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn parse_header(value: &Value) -> std::result::Result<BTreeMap<String, Vec<String>>, String> {
    let t = value.as_table().ok_or("header must be a table")?;
    let mut out = BTreeMap::new();
    for (name, v) in t {
        let values = match v {
            Value::String(s) => vec![s.clone()],
            v => {
                strings(v).ok_or_else(|| format!("header {name:?} must be a string or a list of strings"))?
            }
        };
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
        for v in &values {
            HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {name:?}"))?;
        }
        out.insert(name.clone(), values);
    }
    Ok(out)
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?.iter().map(|x| x.as_str().map(str::to_string)).collect()
}

fn abs(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() { p.to_path_buf() } else { dir.join(p) }
}

fn port_of(host: &str) -> Option<&str> {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => Some(&host[i + 1..]),
        _ => None,
    }
}

/// `localhost`, `127.x.x.x`, `::1`, with or without a port.
pub(crate) fn is_localhost(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or("")
    } else {
        host
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(pull: bool, resolve: bool, push: bool) -> Capabilities {
        Capabilities { pull, resolve, push }
    }

    fn host(scheme: Scheme, h: &str, path: &str, c: Capabilities) -> RegistryHost {
        RegistryHost {
            scheme,
            host: h.into(),
            path: path.into(),
            capabilities: c,
            skip_verify: false,
            ca: vec![],
            client: vec![],
            header: BTreeMap::new(),
            http_credentials: scheme == Scheme::Http && is_localhost(h),
        }
    }

    fn write(dir: &Path, sub: &str, name: &str, text: &str) {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join(name), text).unwrap();
    }

    #[test]
    fn default_upstream_without_config() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        assert_eq!(
            hosts_for(&missing, "docker.io").unwrap(),
            vec![host(Scheme::Https, "registry-1.docker.io", "/v2", Capabilities::ALL)]
        );
        assert_eq!(
            hosts_for(tmp.path(), "quay.io").unwrap(),
            vec![host(Scheme::Https, "quay.io", "/v2", Capabilities::ALL)]
        );
        for local in ["localhost:5000", "127.0.0.1:5000", "[::1]:5000", "localhost", "127.0.0.2"] {
            assert_eq!(hosts_for(tmp.path(), local).unwrap()[0].scheme, Scheme::Http, "{local}");
        }
        assert_eq!(hosts_for(tmp.path(), "localhost:443").unwrap()[0].scheme, Scheme::Https);
        assert_eq!(hosts_for(tmp.path(), "example.com:5000").unwrap()[0].scheme, Scheme::Https);
        assert!(hosts_for(tmp.path(), "../etc").is_err());
    }

    // containerd's own TestParseHostFile example (core/remotes/docker/config/hosts_test.go).
    #[test]
    fn parses_containerds_example() {
        let toml = r#"
server = "https://test-default.registry"
ca = "/etc/path/default"
[header]
  x-custom-1 = "custom header"

[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push", "referrers"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://test-3.registry"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://noncompliantmirror.registry/v2/namespaceprefix"]
  capabilities = ["pull"]
  override_path = true

[host."https://noprefixnoncompliant.registry"]
  override_path = true

[host."https://onlyheader.registry".header]
  x-custom-1 = "justaheader"
"#;
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "example.com", "hosts.toml", toml);
        let got = hosts_for(tmp.path(), "example.com").unwrap();
        let pull = caps(true, false, false);
        let p = PathBuf::from;
        let mut want = vec![
            RegistryHost {
                ca: vec![p("/etc/certs/mirror.pem")],
                header: BTreeMap::from([("x-custom-2".into(), vec!["value1".into(), "value2".into()])]),
                ..host(Scheme::Https, "mirror.registry", "/v2", pull)
            },
            RegistryHost { skip_verify: true, ..host(Scheme::Https, "mirror-bak.registry", "/us/v2", pull) },
            host(Scheme::Http, "mirror.registry", "/v2", pull),
            RegistryHost {
                ca: vec![p("/etc/certs/test-1-ca.pem"), p("/etc/certs/special.pem")],
                client: vec![
                    (p("/etc/certs/client.cert"), Some(p("/etc/certs/client.key"))),
                    (p("/etc/certs/client.pem"), None),
                ],
                ..host(Scheme::Https, "test-1.registry", "/v2", Capabilities::ALL)
            },
            RegistryHost {
                client: vec![(p("/etc/certs/client.pem"), None)],
                ..host(Scheme::Https, "test-2.registry", "/v2", Capabilities::ALL)
            },
            RegistryHost {
                client: vec![(p("/etc/certs/client-1.pem"), None), (p("/etc/certs/client-2.pem"), None)],
                ..host(Scheme::Https, "test-3.registry", "/v2", Capabilities::ALL)
            },
            host(Scheme::Https, "noncompliantmirror.registry", "/v2/namespaceprefix", pull),
            host(Scheme::Https, "noprefixnoncompliant.registry", "", Capabilities::ALL),
            RegistryHost {
                header: BTreeMap::from([("x-custom-1".into(), vec!["justaheader".into()])]),
                ..host(Scheme::Https, "onlyheader.registry", "/v2", Capabilities::ALL)
            },
            RegistryHost {
                ca: vec![p("/etc/path/default")],
                header: BTreeMap::from([("x-custom-1".into(), vec!["custom header".into()])]),
                ..host(Scheme::Https, "test-default.registry", "/v2", Capabilities::ALL)
            },
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want.drain(..)) {
            assert_eq!(*g, w);
        }
    }

    // The "Setup a Local Mirror for Docker" example of containerd's docs/hosts.md: relative paths
    // are relative to the hosts.toml directory, and mirrors come first in file order.
    #[test]
    fn docs_mirror_example_with_relative_ca() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "docker.io",
            "hosts.toml",
            r#"server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]                  # Requires less trust, won't resolve tag to digest from this host
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"                 # Or absolute path /etc/containerd/certs.d/docker.io/docker-mirror.crt
"#,
        );
        let got = hosts_for(tmp.path(), "docker.io").unwrap();
        let names: Vec<&str> = got.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["public-mirror.example.com", "docker-mirror.internal", "registry-1.docker.io"]);
        assert_eq!(got[0].capabilities, caps(true, false, false));
        assert_eq!(got[1].capabilities, caps(true, true, false));
        assert_eq!(got[1].ca, vec![tmp.path().join("docker.io/docker-mirror.crt")]);
        assert_eq!(got[2].capabilities, Capabilities::ALL);
        assert!(got[0].is_mirror_for("docker.io"));
        assert!(!got[2].is_mirror_for("docker.io"));
    }

    // "Setup Default Mirror for All Registries": `_default` applies to registries without a dir, and
    // without `server` the registry's own upstream comes last.
    #[test]
    fn default_dir_and_missing_server() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "_default",
            "hosts.toml",
            "[host.\"https://registry.example.com\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        );
        let got = hosts_for(tmp.path(), "ghcr.io").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].host, "registry.example.com");
        assert!(got[0].is_mirror_for("ghcr.io"));
        assert_eq!(got[1], host(Scheme::Https, "ghcr.io", "/v2", Capabilities::ALL));
        let local = hosts_for(tmp.path(), "localhost:5000").unwrap();
        assert_eq!(local[1], host(Scheme::Http, "localhost:5000", "/v2", Capabilities::ALL));
    }

    #[test]
    fn port_dirs_in_containerds_order() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "_default", "hosts.toml", "server = \"https://default.example\"\n");
        write(tmp.path(), "r.io:5000", "hosts.toml", "server = \"http://colon.example\"\n");
        assert_eq!(hosts_for(tmp.path(), "r.io:5000").unwrap()[0].host, "colon.example");
        write(tmp.path(), "r.io_5000_", "hosts.toml", "server = \"underscore.example:8443\"\n");
        let got = hosts_for(tmp.path(), "r.io:5000").unwrap();
        assert_eq!(got, vec![host(Scheme::Https, "underscore.example:8443", "/v2", Capabilities::ALL)]);
        assert_eq!(hosts_for(tmp.path(), "other.io").unwrap()[0].host, "default.example");
    }

    #[test]
    fn docker_style_cert_files_without_hosts_toml() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["ca.crt", "client.cert", "client.key", "other.cert", "readme.txt"] {
            write(tmp.path(), "r.io", f, "x");
        }
        let got = hosts_for(tmp.path(), "r.io").unwrap();
        let d = tmp.path().join("r.io");
        assert_eq!(
            got,
            vec![RegistryHost {
                ca: vec![d.join("ca.crt")],
                client: vec![
                    (d.join("client.cert"), Some(d.join("client.key"))),
                    (d.join("other.cert"), None)
                ],
                ..host(Scheme::Https, "r.io", "/v2", Capabilities::ALL)
            }]
        );
    }

    #[test]
    fn bad_files_are_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        for (i, text) in [
            "server = [",
            "server = 5",
            "[host.\"https://m\"]\ncapabilities = \"pull\"\n",
            "[host.\"https://m\"]\nclient = [[\"a\", \"b\", \"c\"]]\n",
            "[host.\"https://m\".header]\n\"bad header\" = \"x\"\n",
            "server = \"ftp://x\"\n",
        ]
        .into_iter()
        .enumerate()
        {
            let dom = format!("r{i}.io");
            write(tmp.path(), &dom, "hosts.toml", text);
            let err = hosts_for(tmp.path(), &dom).expect_err(text);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
            assert!(err.to_string().contains(&format!("{dom}/hosts.toml")), "{err}");
        }
        // Unknown keys are only warned about.
        write(tmp.path(), "ok.io", "hosts.toml", "colour = \"blue\"\n[host.\"http://m:5000\"]\nfoo = 1\n");
        let got = hosts_for(tmp.path(), "ok.io").unwrap();
        assert_eq!(got[0], host(Scheme::Http, "m:5000", "/v2", Capabilities::ALL));
        assert_eq!(got[1].host, "ok.io");
    }

    // Issue 8 item 7: credentials never cross plain HTTP unless the registry's own file says so.
    #[test]
    fn plain_http_credentials_only_where_the_registrys_own_file_says_http() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "r.example:5000",
            "hosts.toml",
            r#"server = "http://r.example:5000"
[host."http://mirror.example"]
[host."https://secure-mirror.example"]
[host."http://127.0.0.1:5001"]
[host."http://r.example:5000"]
  capabilities = ["pull"]
"#,
        );
        let got = hosts_for(tmp.path(), "r.example:5000").unwrap();
        let allowed: Vec<(&str, bool)> =
            got.iter().map(|h| (h.host.as_str(), h.may_receive_credentials())).collect();
        assert_eq!(
            allowed,
            [
                ("mirror.example", false),
                ("secure-mirror.example", true),
                ("127.0.0.1:5001", true),
                ("r.example:5000", true),
                ("r.example:5000", true),
            ]
        );

        // The server is another host: the file does not speak for it.
        write(tmp.path(), "r2.example", "hosts.toml", "server = \"http://elsewhere.example\"\n");
        assert!(!hosts_for(tmp.path(), "r2.example").unwrap()[0].may_receive_credentials());

        // `_default` speaks for no registry in particular.
        write(tmp.path(), "_default", "hosts.toml", "server = \"http://r3.example\"\n");
        let got = hosts_for(tmp.path(), "r3.example").unwrap();
        assert_eq!(got[0].scheme, Scheme::Http);
        assert!(!got[0].may_receive_credentials());

        // Defaults: HTTPS always; plain HTTP for loopback registries only.
        let missing = tmp.path().join("nope");
        assert!(hosts_for(&missing, "quay.io").unwrap()[0].may_receive_credentials());
        assert!(hosts_for(&missing, "localhost:5000").unwrap()[0].may_receive_credentials());

        // The parser entry point agrees with the file.
        let text = "server = \"http://r4.example\"\n";
        assert!(parse_hosts(text, tmp.path(), "r4.example", true).unwrap()[0].may_receive_credentials());
        assert!(!parse_hosts(text, tmp.path(), "r4.example", false).unwrap()[0].may_receive_credentials());
    }

    #[test]
    fn localhost_detection() {
        for h in ["localhost", "localhost:5000", "127.0.0.1", "127.1.2.3:80", "::1", "[::1]:5000"] {
            assert!(is_localhost(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "localhost.example.com", "[::2]:5000"] {
            assert!(!is_localhost(h), "{h}");
        }
    }
}
