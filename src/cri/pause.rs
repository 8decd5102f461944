//! The pause image built into berth: a one-layer image holding the static `berth-pause` (compiled by
//! build.rs and embedded here), imported into the CRI namespace at start under
//! [`config::BUILTIN_PAUSE_IMAGE`], so a node starts pods without any registry. It goes through the
//! same import path as any archive (verified blobs, unpacker, GC labels); the same binary always gives
//! the same image, so restarts find it in place.

use std::io::Write;

use crate::config;
use crate::engine::Engine;
use crate::engine::digest::Digest;
use crate::engine::oci::{self, Descriptor, ImageConfig, Index, Manifest, RootFs, RuntimeConfig, media};
use crate::error::{Context, Error, Result};

/// The static pause executable.
pub static PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-pause"));

/// The uid:gid the built-in pause runs as (the upstream pause image's nobody).
pub const PAUSE_USER: &str = "65535:65535";

fn tar_file(out: &mut tar::Builder<impl Write>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    out.append_data(&mut h, path, data).context(|| format!("building the pause layer: {path}"))
}

/// The image as an OCI layout tarball, plus its manifest digest.
fn layout(name: &str) -> Result<(Vec<u8>, Digest)> {
    let mut layer = tar::Builder::new(Vec::new());
    tar_file(&mut layer, "pause", 0o755, PAUSE_BINARY)?;
    let layer = layer.into_inner().context(|| "building the pause layer".to_string())?;
    let diff_id = Digest::of(&layer);
    let platform = oci::Platform::host();
    let config = ImageConfig {
        created: Some("1970-01-01T00:00:00Z".into()),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        config: RuntimeConfig {
            entrypoint: Some(vec!["/pause".into()]),
            user: PAUSE_USER.into(),
            ..Default::default()
        },
        rootfs: RootFs { kind: "layers".into(), diff_ids: vec![diff_id.clone()] },
        ..Default::default()
    };
    let config = serde_json::to_vec(&config).map_err(|e| Error::internal(format!("pause config: {e}")))?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: media::OCI_MANIFEST.into(),
        config: Descriptor::new(media::OCI_CONFIG, Digest::of(&config), config.len() as i64),
        layers: vec![Descriptor::new(media::OCI_LAYER, diff_id.clone(), layer.len() as i64)],
        annotations: Default::default(),
    };
    let manifest =
        serde_json::to_vec(&manifest).map_err(|e| Error::internal(format!("pause manifest: {e}")))?;
    let manifest_digest = Digest::of(&manifest);
    let mut desc = Descriptor::new(media::OCI_MANIFEST, manifest_digest.clone(), manifest.len() as i64);
    desc.annotations.insert(crate::engine::image::archive::ANNOTATION_IMAGE_NAME.into(), name.into());
    let index = Index {
        schema_version: 2,
        media_type: media::OCI_INDEX.into(),
        manifests: vec![desc],
        annotations: Default::default(),
    };
    let index = serde_json::to_vec(&index).map_err(|e| Error::internal(format!("pause index: {e}")))?;
    let mut out = tar::Builder::new(Vec::new());
    tar_file(&mut out, "oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for blob in [&layer, &config, &manifest] {
        tar_file(&mut out, &format!("blobs/sha256/{}", Digest::of(blob).hex()), 0o644, blob)?;
    }
    tar_file(&mut out, "index.json", 0o644, &index)?;
    Ok((out.into_inner().context(|| "building the pause layout".to_string())?, manifest_digest))
}

/// Makes sure the built-in pause image is present in `ns` (blocking; cheap when it already is).
pub fn ensure_builtin(engine: &Engine, ns: &str) -> Result<()> {
    let name = config::BUILTIN_PAUSE_IMAGE;
    let (tarball, digest) = layout(name)?;
    if let Some(rec) = engine.image(ns, name)?
        && rec.target.digest == digest
        && engine.image_info(&rec.target).is_ok()
    {
        return Ok(());
    }
    crate::engine::image::archive::import(engine, ns, tarball.as_slice())?;
    tracing::info!(image = name, digest = %digest, "built-in pause image ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_pause_is_a_static_executable() {
        let b = PAUSE_BINARY;
        assert_eq!(&b[..4], b"\x7fELF");
        // A dynamically linked executable has a PT_INTERP program header; a static one does not.
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        const PT_INTERP: u32 = 3;
        for i in 0..phnum {
            let o = phoff + i * phentsize;
            let p_type = u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            assert_ne!(p_type, PT_INTERP, "berth-pause must be statically linked");
        }
    }

    #[test]
    fn the_layout_is_deterministic() {
        let (a, da) = layout("x/pause:1").unwrap();
        let (b, db) = layout("x/pause:1").unwrap();
        assert_eq!(da, db);
        assert_eq!(a, b);
    }
}
