//! Image records (a name pointing at a manifest or index, per namespace) and what berth derives from
//! them: the platform manifest, the config, the image id, the size and the top chain ID. Derived
//! information is read from the content store once and cached by target digest: content is
//! immutable, so the cache can only become unused, never wrong.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::engine::Engine;
use crate::engine::digest::Digest;
use crate::engine::gc::{LABEL_REF_CONTENT, LABEL_REF_SNAPSHOT};
use crate::engine::metadata::{
    CONTENT, ContentRecord, IMAGES, ImageRecord, NAMESPACES, NamespaceRecord, now_nanos, ns_key,
    validate_namespace,
};
use crate::engine::oci::{self, Descriptor, ImageConfig, Manifest, Parsed, Platform};
use crate::error::{Error, Result};

/// Largest manifest, index or config berth reads (containerd uses the same bound for manifests).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config berth reads.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// What an image is, for this platform.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// What the image name points at (an index or a manifest).
    pub target: Descriptor,
    /// The manifest for this platform.
    pub manifest_desc: Descriptor,
    pub manifest: Manifest,
    /// The config digest: the image ID.
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Bytes of content: manifest, config and (compressed) layers.
    pub size: i64,
    /// Chain ID of the top layer: the snapshot a container's rootfs is prepared from. None for an
    /// image without layers.
    pub chain_id: Option<Digest>,
}

/// Cache of [`ImageInfo`] by target digest.
#[derive(Default)]
pub struct InfoCache {
    inner: Mutex<HashMap<Digest, Arc<ImageInfo>>>,
}

/// Picks the manifest of an index that runs on `platform` (the first match in index order).
pub fn select_manifest<'a>(index: &'a oci::Index, platform: &Platform) -> Option<&'a Descriptor> {
    index
        .manifests
        .iter()
        .filter(|d| d.is_manifest())
        .find(|d| d.platform.as_ref().is_none_or(|p| platform.matches(p)))
}

/// Checks a manifest's own fields against its config (layer count and diff IDs).
pub fn check_manifest(manifest: &Manifest, config: &ImageConfig, digest: &Digest) -> Result<()> {
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(format!(
            "image manifest {digest} has {} layers but its config lists {} diff ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    for l in &manifest.layers {
        oci::Compression::of_layer(&l.media_type)?;
        if l.size < 0 {
            return Err(Error::invalid(format!("layer {} has a negative size", l.digest)));
        }
    }
    Ok(())
}

impl Engine {
    /// The image record `name` in `ns`, if any.
    pub fn image(&self, ns: &str, name: &str) -> Result<Option<ImageRecord>> {
        self.db.read(|tx| tx.get(&IMAGES, &ns_key(ns, name)))
    }

    /// Every image record of `ns`, by name.
    pub fn images(&self, ns: &str) -> Result<Vec<ImageRecord>> {
        let prefix = format!("{ns}/");
        Ok(self.db.read(|tx| tx.list(&IMAGES, &prefix))?.into_iter().map(|(_, v)| v).collect())
    }

    /// Creates or updates image records pointing at `target` (keeping `created_at` of existing ones).
    pub fn put_images(&self, ns: &str, names: &[String], target: &Descriptor) -> Result<()> {
        validate_namespace(ns)?;
        let now = now_nanos();
        self.db.write(|tx| {
            if tx.get(&NAMESPACES, ns)?.is_none() {
                tx.put(&NAMESPACES, ns, &NamespaceRecord { labels: Default::default(), created_at: now })?;
            }
            for name in names {
                let key = ns_key(ns, name);
                let record = match tx.get(&IMAGES, &key)? {
                    Some(mut old) => {
                        old.target = target.clone();
                        old.updated_at = now;
                        old
                    }
                    None => ImageRecord {
                        name: name.clone(),
                        target: target.clone(),
                        labels: Default::default(),
                        created_at: now,
                        updated_at: now,
                    },
                };
                tx.put(&IMAGES, &key, &record)?;
            }
            Ok(())
        })
    }

    /// Deletes image records; returns how many existed. Content goes at the next garbage collection.
    pub fn delete_images(&self, ns: &str, names: &[String]) -> Result<usize> {
        self.db.write(|tx| {
            let mut n = 0;
            for name in names {
                if tx.delete(&IMAGES, &ns_key(ns, name))? {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// The namespaces that exist.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        Ok(self.db.read(|tx| tx.list(&NAMESPACES, ""))?.into_iter().map(|(k, _)| k).collect())
    }

    /// What `target` is for this platform, read from the content store (cached).
    pub fn image_info(&self, target: &Descriptor) -> Result<Arc<ImageInfo>> {
        if let Some(info) = self.info_cache.inner.lock().unwrap().get(&target.digest) {
            return Ok(info.clone());
        }
        let info = Arc::new(self.read_image_info(target)?);
        self.info_cache.inner.lock().unwrap().insert(target.digest.clone(), info.clone());
        Ok(info)
    }

    /// Writes the GC references that keep an image's pieces alive from its target: index → platform
    /// manifest → config and layers, config → top snapshot. Must run before the lease that protected
    /// them during a pull or import goes away.
    pub fn label_image_refs(&self, info: &ImageInfo) -> Result<()> {
        let mut labels: Vec<(Digest, BTreeMap<String, String>)> = Vec::new();
        if info.target.digest != info.manifest_desc.digest {
            let l =
                BTreeMap::from([(format!("{LABEL_REF_CONTENT}.m.0"), info.manifest_desc.digest.to_string())]);
            labels.push((info.target.digest.clone(), l));
        }
        let mut l = BTreeMap::from([(format!("{LABEL_REF_CONTENT}.config"), info.config_digest.to_string())]);
        for (i, layer) in info.manifest.layers.iter().enumerate() {
            l.insert(format!("{LABEL_REF_CONTENT}.l.{i}"), layer.digest.to_string());
        }
        labels.push((info.manifest_desc.digest.clone(), l));
        if let Some(top) = &info.chain_id {
            let l = BTreeMap::from([(
                format!("{LABEL_REF_SNAPSHOT}.{}", self.snapshots.name()),
                top.to_string(),
            )]);
            labels.push((info.config_digest.clone(), l));
        }
        let now = now_nanos();
        self.db.write(|tx| {
            for (digest, add) in &labels {
                let key = digest.to_string();
                let mut rec = tx.get(&CONTENT, &key)?.unwrap_or_else(|| ContentRecord {
                    size: self.content.size(digest).ok().flatten().map(|s| s as i64).unwrap_or(0),
                    created_at: now,
                    ..Default::default()
                });
                rec.labels.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
                rec.updated_at = now;
                tx.put(&CONTENT, &key, &rec)?;
            }
            Ok(())
        })
    }

    /// Unpacks every layer of an image whose blobs are all in the content store (import); the
    /// snapshots it creates are added to `lease` first. Blocking.
    pub fn unpack_blocking(&self, ns: &str, lease: &str, info: &ImageInfo) -> Result<()> {
        let chain = oci::chain_ids(&info.config.rootfs.diff_ids);
        for c in &chain {
            crate::engine::lease::add_snapshot(&self.db, ns, lease, &c.to_string())?;
        }
        let on_new = |key: &str| crate::engine::lease::add_snapshot(&self.db, ns, lease, key);
        let mut parent: Option<Digest> = None;
        for (layer, diff_id) in info.manifest.layers.iter().zip(&info.config.rootfs.diff_ids) {
            let to_unpack = super::unpack::LayerToUnpack {
                blob_path: self.content.path(&layer.digest),
                desc: layer.clone(),
                diff_id: diff_id.clone(),
            };
            parent = Some(self.unpacker.unpack_one(
                parent.as_ref(),
                &to_unpack,
                &on_new,
                self.options.unpack_max_expansion,
            )?);
        }
        Ok(())
    }

    fn read_image_info(&self, target: &Descriptor) -> Result<ImageInfo> {
        let bytes = self.content.read(&target.digest, MAX_MANIFEST_BYTES)?;
        let (manifest_desc, manifest) = match oci::parse_manifest_or_index(&target.media_type, &bytes)? {
            Parsed::Manifest(m) => (target.clone(), *m),
            Parsed::Index(index) => {
                let platform = Platform::host();
                let desc = select_manifest(&index, &platform).cloned().ok_or_else(|| {
                    Error::not_found(format!(
                        "image index {} has no manifest for {}/{}",
                        target.digest, platform.os, platform.architecture
                    ))
                })?;
                let bytes = self.content.read(&desc.digest, MAX_MANIFEST_BYTES)?;
                match oci::parse_manifest_or_index(&desc.media_type, &bytes)? {
                    Parsed::Manifest(m) => (desc, *m),
                    Parsed::Index(_) => {
                        return Err(Error::invalid(format!(
                            "nested image index {} is not supported",
                            desc.digest
                        )));
                    }
                }
            }
        };
        let config_bytes = self.content.read(&manifest.config.digest, MAX_CONFIG_BYTES)?;
        let config = oci::parse_config(&config_bytes).map_err(|e| e.context(&manifest.config.digest))?;
        check_manifest(&manifest, &config, &manifest_desc.digest)?;
        let size =
            manifest_desc.size + manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<i64>();
        let chain_id = oci::chain_ids(&config.rootfs.diff_ids).pop();
        Ok(ImageInfo {
            target: target.clone(),
            config_digest: manifest.config.digest.clone(),
            manifest_desc,
            manifest,
            config,
            size,
            chain_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(p: Option<(&str, &str)>) -> Descriptor {
        let mut d = Descriptor::new(oci::media::OCI_MANIFEST, Digest::of(format!("{p:?}").as_bytes()), 1);
        d.platform =
            p.map(|(os, arch)| Platform { os: os.into(), architecture: arch.into(), ..Default::default() });
        d
    }

    #[test]
    fn selects_the_host_platform_from_an_index() {
        let index = oci::Index {
            schema_version: 2,
            media_type: oci::media::OCI_INDEX.into(),
            manifests: vec![desc(Some(("linux", "arm64"))), desc(Some(("linux", "amd64"))), desc(None)],
            annotations: Default::default(),
        };
        let amd64 = Platform { os: "linux".into(), architecture: "amd64".into(), ..Default::default() };
        assert_eq!(select_manifest(&index, &amd64), Some(&index.manifests[1]));
        let s390 = Platform { os: "linux".into(), architecture: "s390x".into(), ..Default::default() };
        assert_eq!(
            select_manifest(&index, &s390),
            Some(&index.manifests[2]),
            "a manifest without platform matches"
        );
    }
}
