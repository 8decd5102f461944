//! The OCI image format types berth reads and writes: descriptors, manifests, indexes and image
//! configs, with the Docker schema 2 media types accepted alongside the OCI ones. Parsing is lenient
//! about unknown fields (registries add them) and strict about what berth relies on (digests, sizes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::digest::Digest;
use crate::error::{Error, Result};

pub mod media {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER_NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_LAYER_NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const OCI_LAYER_NONDIST_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_FOREIGN_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

    /// The Accept header for manifest requests, most specific first.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json, \
        application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, \
        application/vnd.docker.distribution.manifest.v1+json;q=0.5";
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type; an error for anything that is not a layer.
    pub fn of_layer(media_type: &str) -> Result<Self> {
        use media::*;
        match media_type {
            OCI_LAYER | OCI_LAYER_NONDIST | DOCKER_LAYER => Ok(Compression::None),
            OCI_LAYER_GZIP | OCI_LAYER_NONDIST_GZIP | DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN_GZIP => {
                Ok(Compression::Gzip)
            }
            OCI_LAYER_ZSTD | OCI_LAYER_NONDIST_ZSTD => Ok(Compression::Zstd),
            other => Err(Error::invalid(format!("unsupported layer media type {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(rename = "os.version", default, skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// The platform berth runs on, as OCI names it (`linux/amd64`, `linux/arm64/v8` …).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "arm" => "arm",
            other => other,
        };
        let variant = match architecture {
            "arm64" => "v8",
            "arm" => "v7",
            _ => "",
        };
        Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.into(),
            ..Default::default()
        }
    }

    /// Whether a manifest for `other` runs here. Variants are compared only when both are given,
    /// and arm64's `v8` is the default variant (as containerd's platform matcher does).
    pub fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        let norm = |v: &str| {
            if self.architecture == "arm64" && v.is_empty() { "v8".to_string() } else { v.to_string() }
        };
        other.variant.is_empty() || self.variant.is_empty() || norm(&self.variant) == norm(&other.variant)
    }
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: i64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
            urls: Vec::new(),
        }
    }

    pub fn is_index(&self) -> bool {
        self.media_type == media::OCI_INDEX || self.media_type == media::DOCKER_MANIFEST_LIST
    }

    pub fn is_manifest(&self) -> bool {
        self.media_type == media::OCI_MANIFEST || self.media_type == media::DOCKER_MANIFEST
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default = "two")]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index / Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default = "two")]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn two() -> u32 {
    2
}

/// The runtime part of an image config (`config` in the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// An image config blob (OCI image config / Docker container image v1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(default)]
    pub config: RuntimeConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<serde_json::Value>>,
}

/// The chain IDs of a stack of layers: `chain[0] = diff[0]`,
/// `chain[n] = sha256(chain[n-1] + " " + diff[n])` (OCI image spec, "Layer ChainID").
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The media type a manifest or index document names itself, or guessed from its shape (for
/// registries that send no content type); an error if it is not JSON of that shape.
pub fn probe_media_type(bytes: &[u8]) -> serde_json::Result<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: String,
        #[serde(default)]
        schema_version: u32,
        manifests: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(bytes)?;
    Ok(if p.schema_version == 1 {
        media::DOCKER_SCHEMA1.to_string()
    } else if !p.media_type.is_empty() {
        p.media_type
    } else if p.manifests.is_some() {
        media::OCI_INDEX.to_string()
    } else {
        media::OCI_MANIFEST.to_string()
    })
}

/// Parses an image config (also the entry point for fuzzing it).
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("invalid image config: {e}")))
}

/// Parses a manifest or index by its media type, refusing Docker schema 1 with a clear error.
pub enum Parsed {
    Index(Index),
    Manifest(Box<Manifest>),
}

pub fn parse_manifest_or_index(media_type: &str, bytes: &[u8]) -> Result<Parsed> {
    let mt = if media_type.is_empty() {
        // Some registries answer without a content type: look at the document itself.
        probe_media_type(bytes).map_err(|e| Error::invalid(format!("invalid manifest json: {e}")))?
    } else {
        media_type.split(';').next().unwrap_or("").trim().to_string()
    };
    match mt.as_str() {
        media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => serde_json::from_slice(bytes)
            .map(Parsed::Index)
            .map_err(|e| Error::invalid(format!("invalid image index: {e}"))),
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => serde_json::from_slice(bytes)
            .map(|m| Parsed::Manifest(Box::new(m)))
            .map_err(|e| Error::invalid(format!("invalid image manifest: {e}"))),
        media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED => Err(Error::invalid(
            "docker schema 1 manifests are not supported: the image must be re-pushed with schema 2 or OCI",
        )),
        other => Err(Error::invalid(format!("unsupported manifest media type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn schema1_is_refused_clearly() {
        let err = match parse_manifest_or_index("", br#"{"schemaVersion":1,"name":"x"}"#) {
            Err(e) => e,
            Ok(_) => panic!("schema 1 accepted"),
        };
        assert!(err.to_string().contains("schema 1"), "{err}");
    }

    #[test]
    fn platform_matching() {
        let host = Platform { architecture: "amd64".into(), os: "linux".into(), ..Default::default() };
        assert!(host.matches(&Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        }));
        assert!(!host.matches(&Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            ..Default::default()
        }));
        let arm = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: "v8".into(),
            ..Default::default()
        };
        assert!(arm.matches(&Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            ..Default::default()
        }));
    }

    #[test]
    fn layer_compression_from_media_type() {
        assert_eq!(Compression::of_layer(media::DOCKER_LAYER_GZIP).unwrap(), Compression::Gzip);
        assert_eq!(Compression::of_layer(media::OCI_LAYER_ZSTD).unwrap(), Compression::Zstd);
        assert_eq!(Compression::of_layer(media::OCI_LAYER).unwrap(), Compression::None);
        assert!(Compression::of_layer(media::OCI_CONFIG).is_err());
    }
}
