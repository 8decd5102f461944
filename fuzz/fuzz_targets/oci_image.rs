//! Image manifests, indexes and configs as a registry (or an image archive) serves them, through
//! what a pull does with them: the media type probe for answers without a content type,
//! `parse_manifest_or_index` under the media type the registry or the index claimed, the platform
//! choice in an index, `parse_config`, the manifest's check against its config and the chain IDs.
//! The first byte picks the claimed media type and whether the rest is a manifest and a config
//! (split at the first NUL, which JSON never holds). No input may panic; what parses writes back to
//! JSON that parses to the same thing.

#![no_main]

use berth::engine::digest::Digest;
use berth::engine::image::store::{check_manifest, select_manifest};
use berth::engine::oci::{
    Compression, Descriptor, Index, Manifest, Parsed, Platform, chain_ids, media, parse_config,
    parse_manifest_or_index, probe_media_type,
};
use libfuzzer_sys::fuzz_target;

/// What a registry's Content-Type (or an index entry) may claim.
const MEDIA_TYPES: &[&str] = &[
    "",
    media::OCI_INDEX,
    media::DOCKER_MANIFEST_LIST,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST,
    media::DOCKER_SCHEMA1_SIGNED,
    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
    media::OCI_CONFIG,
];

fn check_descriptor(d: &Descriptor) {
    // A digest that parsed is one berth may put in a path.
    assert_eq!(Digest::parse(&d.digest.to_string()).as_ref().ok(), Some(&d.digest));
    assert_eq!(d.digest.hex().len(), 64);
}

/// Written back and read again, a parsed document is the same document.
fn roundtrip(parsed: &Parsed) {
    match parsed {
        Parsed::Manifest(m) => {
            let json = serde_json::to_vec(m).expect("a manifest serializes");
            let again: Manifest = serde_json::from_slice(&json).expect("a written manifest parses");
            assert_eq!(serde_json::to_vec(&again).unwrap(), json);
        }
        Parsed::Index(i) => {
            let json = serde_json::to_vec(i).expect("an index serializes");
            let again: Index = serde_json::from_slice(&json).expect("a written index parses");
            assert_eq!(serde_json::to_vec(&again).unwrap(), json);
        }
    }
}

fn manifest_or_index(media_type: &str, bytes: &[u8]) -> Option<Manifest> {
    let _ = probe_media_type(bytes);
    let parsed = parse_manifest_or_index(media_type, bytes).ok()?;
    roundtrip(&parsed);
    match parsed {
        Parsed::Manifest(m) => {
            check_descriptor(&m.config);
            m.layers.iter().for_each(check_descriptor);
            Some(*m)
        }
        Parsed::Index(index) => {
            index.manifests.iter().for_each(check_descriptor);
            for platform in [Platform::host(), Platform { os: "linux".into(), ..Default::default() }] {
                if let Some(d) = select_manifest(&index, &platform) {
                    assert!(d.is_manifest(), "an index entry of type {:?} chosen", d.media_type);
                }
            }
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let media_type = MEDIA_TYPES[usize::from(mode & 7)];
    if mode & 8 == 0 {
        manifest_or_index(media_type, rest);
        return;
    }
    let (manifest_bytes, config_bytes) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let Ok(config) = parse_config(config_bytes) else { return };
    let chain = chain_ids(&config.rootfs.diff_ids);
    assert_eq!(chain.len(), config.rootfs.diff_ids.len());
    assert_eq!(chain.first(), config.rootfs.diff_ids.first());
    let Some(manifest) = manifest_or_index(media_type, manifest_bytes) else { return };
    let digest = Digest::of(manifest_bytes);
    if check_manifest(&manifest, &config, &digest).is_ok() {
        // What the pull then relies on: one diff ID per layer, every layer of a known compression.
        assert_eq!(manifest.layers.len(), config.rootfs.diff_ids.len());
        for l in &manifest.layers {
            assert!(Compression::of_layer(&l.media_type).is_ok());
            assert!(l.size >= 0);
        }
    }
});
