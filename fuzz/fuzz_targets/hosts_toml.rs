//! A registry's `certs.d/<domain>/hosts.toml` (or `_default`'s) through `parse_hosts`, for a domain
//! and file owner the first byte picks. No input may panic, and whatever parses keeps the module's
//! promises: the upstream (`server`) comes last; every host is a plain `host[:port]` and every path
//! empty or absolute, so that URLs built from them name that host; certificate paths are absolute;
//! header names and values are ones an HTTP request can carry; and plain-HTTP credentials go only
//! to loopback hosts or to the registry its own file names over `http://`.

#![no_main]

use std::net::IpAddr;
use std::path::Path;

use berth::engine::image::hosts::{RegistryHost, Scheme, parse_hosts};
use libfuzzer_sys::fuzz_target;

const DOMAINS: &[&str] = &[
    "docker.io",
    "registry.example.com",
    "localhost:5000",
    "127.0.0.1:5000",
    "[::1]:5000",
    "mirror.local:443",
    "my-registry:5000",
    "example.com:8443",
];

/// `localhost` or a loopback address, with or without a port (written here independently of berth's
/// own check, to hold it to the same answer).
fn loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None if host.matches(':').count() == 1 => host.split(':').next().unwrap_or(""),
        None => host,
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The API host of a registry domain (Docker Hub's is not its name).
fn registry_host(domain: &str) -> &str {
    if domain == "docker.io" { "registry-1.docker.io" } else { domain }
}

fn check(h: &RegistryHost, domain: &str, own: bool) {
    assert!(!h.host.is_empty());
    assert!(
        !h.host.bytes().any(|b| b"/?#@\\ \t\r\n".contains(&b) || b.is_ascii_control()),
        "host {:?}",
        h.host
    );
    assert!(h.path.is_empty() || h.path.starts_with('/'), "path {:?}", h.path);
    assert!(h.ca.iter().all(|p| p.is_absolute()));
    assert!(h.client.iter().all(|(c, k)| c.is_absolute() && k.as_ref().is_none_or(|k| k.is_absolute())));
    for (name, values) in &h.header {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
            "header {name:?}"
        );
        assert!(values.iter().all(|v| !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)));
    }
    if h.http_credentials {
        assert_eq!(h.scheme, Scheme::Http);
        assert!(
            loopback(&h.host) || (own && h.host == registry_host(domain)),
            "{h:?} for {domain} (own: {own})"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    // hosts.toml is read with read_to_string: only UTF-8 reaches the parser.
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let domain = DOMAINS[usize::from(mode & 7)];
    let own = mode & 8 != 0;
    let dir = Path::new("/etc/berth/certs.d").join(domain);
    let Ok(hosts) = parse_hosts(text, &dir, domain, own) else { return };
    assert!(!hosts.is_empty(), "not even the upstream");
    for h in &hosts {
        check(h, domain, own);
    }
});
