//! Image references (`registry.k8s.io/pause:3.10`, `busybox`, `x@sha256:…`), parsed and normalised
//! the way the kubelet and containerd do it (the docker/distribution reference grammar), so that the
//! name a user writes and the name berth stores are the same string every tool shows. This module
//! only parses and prints; it must never touch the network or the disk.

use std::fmt;
use std::str::FromStr;

use crate::engine::digest::Digest;
use crate::error::{Error, Result};

/// The registry of short names (`busybox`, `foo/bar`).
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The old name of Docker Hub, still found in references and credentials files.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// The host that serves Docker Hub's registry API.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// Docker Hub's namespace for official images (`busybox` → `library/busybox`).
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag a reference without tag or digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// The longest `domain/repository` the grammar allows.
const NAME_MAX: usize = 255;

/// A normalised image reference: `domain/repository[:tag][@digest]`. A parsed reference always
/// has a tag or a digest (or both): a bare name gets `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub domain: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference: `busybox` → `docker.io/library/busybox:latest`,
    /// `index.docker.io/x` → `docker.io/library/x:latest`; a digest keeps the tag only if one was given.
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| Error::invalid(format!("invalid image reference {s:?}: {why}"));
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(Digest::parse(d).map_err(|_| bad("invalid digest"))?)),
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it belongs to a `host:port` domain.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad("invalid tag"));
        }
        if name.is_empty() {
            return Err(bad("missing repository name"));
        }
        // As in docker/distribution: the first component is a domain if it looks like a host
        // (has a '.' or ':', is `localhost`, or has uppercase letters, which repositories cannot).
        let (domain, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, path)
            }
            _ => (DEFAULT_DOMAIN, name),
        };
        if !valid_domain(domain) {
            return Err(bad("invalid registry domain"));
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(bad("invalid repository name"));
        }
        if domain == DEFAULT_DOMAIN
            && path.len() == 64
            && path.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("cannot specify a 64-byte hexadecimal string as repository name"));
        }
        let domain = if domain == LEGACY_DEFAULT_DOMAIN { DEFAULT_DOMAIN } else { domain };
        let repository = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_REPO_PREFIX}{path}")
        } else {
            path.to_string()
        };
        if domain.len() + 1 + repository.len() > NAME_MAX {
            return Err(bad(&format!("name longer than {NAME_MAX} characters")));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference { domain: domain.to_string(), repository, tag, digest })
    }

    /// `domain/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.repository)
    }

    /// The same reference pinned to `digest` (the tag, if any, is kept).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference { digest: Some(digest), ..self.clone() }
    }

    /// `name:tag`, if the reference has a tag.
    pub fn tag_string(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `name@digest`, if the reference has a digest.
    pub fn digest_string(&self) -> Option<String> {
        self.digest.as_ref().map(|d| format!("{}@{d}", self.name()))
    }

    /// The host to contact when no hosts.toml says otherwise: Docker Hub's API lives on
    /// `registry-1.docker.io`, every other registry on its own domain.
    pub fn registry_host(&self) -> String {
        registry_host(&self.domain)
    }
}

/// The default API host of a registry domain (`docker.io` → `registry-1.docker.io`).
pub(crate) fn registry_host(domain: &str) -> String {
    if domain == DEFAULT_DOMAIN { DOCKER_HUB_HOST.to_string() } else { domain.to_string() }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A host name or IP (IPv6 in brackets), optionally with `:port`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else { return false };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if d.starts_with('[') {
        return true;
    }
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
    };
    host.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
    }

    #[test]
    fn normalises_like_the_kubelet() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(norm("index.docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("docker.io/library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(norm("127.0.0.1:5000/x/y:v1"), "127.0.0.1:5000/x/y:v1");
        assert_eq!(norm("[::1]:5000/x"), "[::1]:5000/x:latest");
        assert_eq!(norm("registry.k8s.io/pause:3.10"), "registry.k8s.io/pause:3.10");
        assert_eq!(norm("Registry.Example.com/a__b/c-d.e"), "Registry.Example.com/a__b/c-d.e:latest");
        assert_eq!(norm(&format!("x@{D}")), format!("docker.io/library/x@{D}"));
        assert_eq!(norm(&format!("x:t@{D}")), format!("docker.io/library/x:t@{D}"));
        assert_eq!(norm("localhost:5000"), "docker.io/library/localhost:5000");
    }

    #[test]
    fn accessors() {
        let r = Reference::parse(&format!("quay.io/a/b:v2@{D}")).unwrap();
        assert_eq!(r.domain, "quay.io");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.name(), "quay.io/a/b");
        assert_eq!(r.tag_string().as_deref(), Some("quay.io/a/b:v2"));
        assert_eq!(r.digest_string(), Some(format!("quay.io/a/b@{D}")));
        assert_eq!(r.registry_host(), "quay.io");
        let plain = Reference::parse("busybox").unwrap();
        assert_eq!(plain.digest_string(), None);
        assert_eq!(plain.registry_host(), "registry-1.docker.io");
        let pinned = plain.with_digest(Digest::parse(D).unwrap());
        assert_eq!(pinned.to_string(), format!("docker.io/library/busybox:latest@{D}"));
        assert_eq!("busybox".parse::<Reference>().unwrap(), plain);
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Busybox",
            "docker.io/Foo/bar",
            "foo//bar",
            "/foo",
            "foo/",
            "foo:",
            "foo:-tag",
            "foo:ta g",
            &format!("foo:{}", "t".repeat(129)),
            "foo@sha256:abc",
            "foo@md5:d41d8cd98f00b204e9800998ecf8427e",
            "foo@",
            "-foo",
            "foo-",
            "foo..bar",
            "foo___bar",
            "bad_host.com:/x",
            "host.com:12a/x",
            "-host.com/x",
            "[::1/x",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            &format!("r.io/{}", "a".repeat(260)),
        ] {
            let err = Reference::parse(bad).expect_err(bad);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let err = Reference::parse("docker.io/Foo/bar").unwrap_err().to_string();
        assert!(err.contains("lowercase"), "{err}");
    }
}
