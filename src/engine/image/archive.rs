//! Image archives: import of OCI image layout tarballs and `docker save` archives (old layout with
//! `<id>/layer.tar`, and the newer one with `blobs/sha256/…`), and export as an OCI image layout that
//! also carries a `manifest.json`, so `docker load`, `ctr import` and `berthctl images import` all read
//! it. Archives are untrusted: every blob is verified against its digest on the way into the content
//! store, manifests must reference only blobs the archive brought (or the store has), and layers go
//! through the same hostile-input unpacker as pulls.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::reference::Reference;
use super::store::{ImageInfo, MAX_MANIFEST_BYTES};
use crate::engine::digest::Digest;
use crate::engine::oci::{Descriptor, Index, Manifest, media};
use crate::engine::{Engine, lease};
use crate::error::{Context, Error, Result};

/// Annotation holding the full image name in an OCI layout's index.json (containerd's).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the reference name (often only the tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One entry of a docker `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn small(entry: &mut impl Read, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    entry
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut buf)
        .context(|| format!("reading {what} from archive"))?;
    if buf.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Error::invalid(format!(
            "archive member {what} is larger than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    Ok(buf)
}

fn layer_media_type(engine: &Engine, d: &Digest) -> Result<&'static str> {
    let mut f = engine.content.open_blob(d)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).context(|| format!("reading blob {d}"))?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => media::DOCKER_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => media::OCI_LAYER_ZSTD,
        _ => media::DOCKER_LAYER,
    })
}

/// Imports every image of an archive into `ns`. Returns the image names recorded.
pub fn import(engine: &Engine, ns: &str, reader: impl Read) -> Result<Vec<String>> {
    let lease =
        lease::create(&engine.db, ns, None, Some(super::pull::PULL_LEASE_EXPIRY), Default::default())?;
    let r = import_leased(engine, ns, &lease, reader);
    if let Err(e) = lease::delete(&engine.db, ns, &lease) {
        tracing::warn!(lease = %lease, error = %e, "deleting import lease");
    }
    if r.is_err() {
        // What the import wrote is referenced by nothing now.
        engine.request_gc();
    }
    r.map_err(|e| crate::engine::space::name_full_filesystem(e, &engine.options.root))
}

fn import_leased(engine: &Engine, ns: &str, lease: &str, reader: impl Read) -> Result<Vec<String>> {
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, reader));
    let mut index_json: Option<Vec<u8>> = None;
    let mut manifest_json: Option<Vec<u8>> = None;
    // Archive paths of blobs written to the store (docker's `<id>/layer.tar`, `<hex>.json`, blobs/…).
    let mut by_path: HashMap<String, (Digest, u64)> = HashMap::new();
    for entry in archive.entries().context(|| "reading archive".to_string())? {
        let mut entry = entry.context(|| "reading archive entry".to_string())?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().context(|| "archive entry path".to_string())?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./").to_string();
        match path.as_str() {
            "index.json" => index_json = Some(small(&mut entry, "index.json")?),
            "manifest.json" => manifest_json = Some(small(&mut entry, "manifest.json")?),
            "oci-layout" | "repositories" => {}
            p => {
                let expected = if let Some(hex) = p.strip_prefix("blobs/sha256/") {
                    Some(
                        Digest::from_hex(hex)
                            .map_err(|_| Error::invalid(format!("archive blob name {p:?}")))?,
                    )
                } else if let Some(hex) = p.strip_suffix(".json").filter(|h| !h.contains('/')) {
                    Digest::from_hex(hex).ok()
                } else if p.ends_with("/layer.tar") {
                    None
                } else {
                    continue;
                };
                if let Some(d) = &expected {
                    lease::add_content(&engine.db, ns, lease, d)?;
                }
                let (digest, size) = engine.content.write_blob(expected.as_ref(), &mut entry)?;
                if expected.is_none() {
                    lease::add_content(&engine.db, ns, lease, &digest)?;
                }
                by_path.insert(p.to_string(), (digest, size));
            }
        }
    }

    // (names, target) of every image in the archive.
    let mut images: Vec<(Vec<String>, Descriptor)> = Vec::new();
    if let Some(bytes) = index_json {
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("archive index.json: {e}")))?;
        for desc in index.manifests {
            let name = desc
                .annotations
                .get(ANNOTATION_IMAGE_NAME)
                .or_else(|| {
                    desc.annotations.get(ANNOTATION_REF_NAME).filter(|n| n.contains('/') || n.contains(':'))
                })
                .and_then(|n| Reference::parse(n).ok())
                .map(|r| r.to_string());
            images.push((name.into_iter().collect(), desc));
        }
    } else if let Some(bytes) = manifest_json {
        let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("archive manifest.json: {e}")))?;
        for e in entries {
            let blob = |p: &str| {
                by_path
                    .get(p)
                    .cloned()
                    .ok_or_else(|| Error::invalid(format!("archive lacks {p} named in manifest.json")))
            };
            let (config_digest, config_size) = blob(&e.config)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let (d, size) = blob(l)?;
                layers.push(Descriptor::new(layer_media_type(engine, &d)?, d, size as i64));
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: media::DOCKER_MANIFEST.into(),
                config: Descriptor::new(media::DOCKER_CONFIG, config_digest, config_size as i64),
                layers,
                annotations: BTreeMap::new(),
            };
            let bytes = serde_json::to_vec(&manifest)
                .map_err(|e| Error::internal(format!("encoding manifest: {e}")))?;
            let digest = Digest::of(&bytes);
            lease::add_content(&engine.db, ns, lease, &digest)?;
            engine.content.write_blob(Some(&digest), bytes.as_slice())?;
            let names = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| Reference::parse(t).ok())
                .map(|r| r.to_string())
                .collect();
            images.push((names, Descriptor::new(media::DOCKER_MANIFEST, digest, bytes.len() as i64)));
        }
    } else {
        return Err(Error::invalid(
            "archive has neither index.json (OCI layout) nor manifest.json (docker save)",
        ));
    }
    if images.is_empty() {
        return Err(Error::invalid("archive holds no images"));
    }

    let mut recorded = Vec::new();
    for (mut names, target) in images {
        let info: std::sync::Arc<ImageInfo> =
            engine.image_info(&target).map_err(|e| e.context("importing image"))?;
        for l in &info.manifest.layers {
            if !engine.content.exists(&l.digest) {
                return Err(Error::invalid(format!(
                    "archive lacks layer {} of image {}",
                    l.digest, target.digest
                )));
            }
        }
        engine.unpack_blocking(ns, lease, &info)?;
        engine.label_image_refs(&info)?;
        if names.is_empty() {
            names.push(format!("import@{}", target.digest));
        }
        engine.put_images(ns, &names, &target)?;
        recorded.extend(names);
    }
    Ok(recorded)
}

/// What an export will write, resolved before the first byte goes out (so a bad name is an error
/// the client sees as a status, not a truncated stream).
pub struct ExportPlan {
    images: Vec<(String, std::sync::Arc<ImageInfo>)>,
}

/// Resolves the names to export.
pub fn plan_export(engine: &Engine, ns: &str, names: &[String]) -> Result<ExportPlan> {
    if names.is_empty() {
        return Err(Error::invalid("export: no image names given"));
    }
    let mut images = Vec::new();
    for name in names {
        let rec = match engine.image(ns, name)? {
            Some(r) => r,
            None => {
                let full = Reference::parse(name)?.to_string();
                engine
                    .image(ns, &full)?
                    .ok_or_else(|| Error::not_found(format!("image {name:?} not found in namespace {ns}")))?
            }
        };
        let info = engine.image_info(&rec.target)?;
        for l in &info.manifest.layers {
            if !engine.content.exists(&l.digest) {
                return Err(Error::precondition(format!(
                    "image {name}: layer {} is not in the content store",
                    l.digest
                )));
            }
        }
        images.push((rec.name, info));
    }
    Ok(ExportPlan { images })
}

fn append(builder: &mut tar::Builder<impl Write>, path: &str, size: u64, data: impl Read) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut h, path, data).context(|| format!("writing {path} to archive"))
}

/// Writes the export as an OCI image layout tarball with a docker `manifest.json`.
pub fn write_export(engine: &Engine, plan: &ExportPlan, out: impl Write) -> Result<()> {
    let mut builder = tar::Builder::new(out);
    append(&mut builder, "oci-layout", 30, &br#"{"imageLayoutVersion":"1.0.0"}"#[..])?;
    let mut written = std::collections::HashSet::new();
    let mut index = Index {
        schema_version: 2,
        media_type: media::OCI_INDEX.into(),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    };
    let mut docker: Vec<DockerEntry> = Vec::new();
    for (name, info) in &plan.images {
        let blobs = std::iter::once(&info.manifest_desc.digest)
            .chain(std::iter::once(&info.config_digest))
            .chain(info.manifest.layers.iter().map(|l| &l.digest));
        for d in blobs {
            if written.insert(d.clone()) {
                let f = engine.content.open_blob(d)?;
                let size = f.metadata().context(|| format!("stat blob {d}"))?.len();
                append(&mut builder, &format!("blobs/sha256/{}", d.hex()), size, f)?;
            }
        }
        // An index is exported as its platform manifest: only that manifest's blobs are here.
        let mut desc = info.manifest_desc.clone();
        desc.platform = None;
        desc.annotations.insert(ANNOTATION_IMAGE_NAME.into(), name.clone());
        let tag = Reference::parse(name).ok().and_then(|r| r.tag.clone());
        if let Some(t) = &tag {
            desc.annotations.insert(ANNOTATION_REF_NAME.into(), t.clone());
        }
        index.manifests.push(desc);
        docker.push(DockerEntry {
            config: format!("blobs/sha256/{}", info.config_digest.hex()),
            repo_tags: tag.map(|_| vec![name.clone()]),
            layers: info.manifest.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.hex())).collect(),
        });
    }
    let index_bytes =
        serde_json::to_vec(&index).map_err(|e| Error::internal(format!("encoding index: {e}")))?;
    append(&mut builder, "index.json", index_bytes.len() as u64, index_bytes.as_slice())?;
    let docker_bytes =
        serde_json::to_vec(&docker).map_err(|e| Error::internal(format!("encoding manifest.json: {e}")))?;
    append(&mut builder, "manifest.json", docker_bytes.len() as u64, docker_bytes.as_slice())?;
    builder
        .into_inner()
        .context(|| "finishing archive".to_string())?
        .flush()
        .context(|| "flushing archive".to_string())?;
    Ok(())
}
