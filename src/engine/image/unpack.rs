//! Unpacking: turns downloaded layer blobs into committed snapshots named by chain ID. Each layer
//! is decompressed, hashed as it streams (the hash must equal the layer's diff ID from the image
//! config) and written by the applier into a fresh `extract-…` snapshot, which is committed only
//! when everything checked out and removed otherwise. Layers already unpacked (by an earlier pull
//! or by a concurrent one of an image sharing them) are skipped.
//!
//! This module must never leave an uncommitted snapshot behind on error, never commit a layer
//! whose diff ID did not match, and never decompress without the expansion guard. Its functions
//! block: async callers run them in `spawn_blocking`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::engine::digest::{Digest, HashingReader};
use crate::engine::image::apply::apply_tar;
use crate::engine::metadata::Labels;
use crate::engine::oci::{self, Compression};
use crate::engine::snapshot::{EXTRACT_PREFIX, SnapshotKind, Snapshots, WhiteoutMode};
use crate::error::{Context, Error, ErrorKind, Result};

/// Uncompressed bytes always allowed before the expansion ratio is enforced, so that small,
/// highly compressible layers (a tar of zeros, sparse files) are not mistaken for bombs.
pub const DEFAULT_EXPANSION_FLOOR: u64 = 1 << 30;

/// Large reads keep syscalls and decompressor calls few on layers of hundreds of MiB.
const READ_BUFFER: usize = 1 << 20;

/// Decompresses the layer `blob`, applies it to `target` and checks that the uncompressed stream
/// hashes to `diff_id` (InvalidArgument otherwise). Fails with ResourceExhausted once more than
/// [`DEFAULT_EXPANSION_FLOOR`] bytes came out of it and more than `max_expansion` ×
/// `compressed_size`. On error `target` is half-written and must be discarded.
pub fn unpack_layer(
    blob: impl Read,
    compression: Compression,
    diff_id: &Digest,
    compressed_size: u64,
    max_expansion: u64,
    target: &Path,
    mode: WhiteoutMode,
) -> Result<()> {
    let limit = expansion_limit(compressed_size, max_expansion, DEFAULT_EXPANSION_FLOOR);
    unpack_layer_limited(blob, compression, diff_id, limit, target, mode)
}

fn expansion_limit(compressed_size: u64, max_expansion: u64, floor: u64) -> u64 {
    floor.max(compressed_size.saturating_mul(max_expansion))
}

/// [`unpack_layer`] with the most uncompressed bytes allowed given directly.
fn unpack_layer_limited(
    blob: impl Read,
    compression: Compression,
    diff_id: &Digest,
    limit: u64,
    target: &Path,
    mode: WhiteoutMode,
) -> Result<()> {
    let input = BufReader::with_capacity(READ_BUFFER, blob);
    match compression {
        Compression::None => apply_verified(input, diff_id, limit, target, mode),
        Compression::Gzip => {
            // Multi-member: some tools write a layer as several concatenated gzip members.
            apply_verified(flate2::bufread::MultiGzDecoder::new(input), diff_id, limit, target, mode)
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input)
                .context(|| format!("layer {diff_id}: starting zstd decompression"))?;
            apply_verified(decoder, diff_id, limit, target, mode)
        }
    }
}

fn apply_verified(
    decoded: impl Read,
    diff_id: &Digest,
    limit: u64,
    target: &Path,
    mode: WhiteoutMode,
) -> Result<()> {
    let guard = ExpansionGuard { inner: decoded, read: 0, limit, tripped: false };
    let mut stream = BufReader::with_capacity(READ_BUFFER, HashingReader::new(guard));
    let applied = apply_tar(&mut stream, target, mode).and_then(|stats| {
        // Whatever follows the tar end marker (padding to a record size) is part of the diff ID.
        io::copy(&mut stream, &mut io::sink())
            .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, "reading layer tar stream", e))?;
        Ok(stats)
    });
    let (guard, hasher) = stream.into_inner().into_parts();
    if guard.tripped {
        return Err(Error::new(
            ErrorKind::ResourceExhausted,
            format!(
                "layer {diff_id}: refusing to decompress more than {limit} bytes \
                 (cri.unpack_max_expansion times the compressed size): a decompression bomb"
            ),
        ));
    }
    let stats = applied.map_err(|e| e.context(format!("layer {diff_id}")))?;
    let actual = hasher.finish();
    if actual != *diff_id {
        return Err(Error::invalid(format!(
            "layer {diff_id}: diff id mismatch: the uncompressed content hashes to {actual}"
        )));
    }
    tracing::debug!(%diff_id, entries = stats.entries, bytes = stats.bytes, "layer applied");
    Ok(())
}

/// Fails the stream once more than `limit` bytes came out of the decompressor.
struct ExpansionGuard<R> {
    inner: R,
    read: u64,
    limit: u64,
    tripped: bool,
}

impl<R: Read> Read for ExpansionGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            self.tripped = true;
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        Ok(n)
    }
}

/// One layer of an image, downloaded.
#[derive(Debug, Clone)]
pub struct LayerToUnpack {
    /// The compressed blob in the content store.
    pub blob_path: PathBuf,
    /// The layer's descriptor from the manifest (media type, digest, size).
    pub desc: oci::Descriptor,
    /// The layer's diff ID from the image config.
    pub diff_id: Digest,
}

/// Unpacks layers into committed snapshots named by chain ID, once per chain ID even when
/// several pulls sharing layers run at the same time.
pub struct Unpacker {
    snapshots: Arc<Snapshots>,
    /// One lock per chain ID being unpacked; entries are removed when nobody holds them.
    locks: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    expansion_floor: u64,
}

impl Unpacker {
    /// An unpacker writing into `snapshots`.
    pub fn new(snapshots: Arc<Snapshots>) -> Self {
        Unpacker { snapshots, locks: Mutex::new(HashMap::new()), expansion_floor: DEFAULT_EXPANSION_FLOOR }
    }

    /// Changes the uncompressed size below which the expansion ratio is not enforced
    /// (default [`DEFAULT_EXPANSION_FLOOR`]).
    pub fn with_expansion_floor(mut self, floor: u64) -> Self {
        self.expansion_floor = floor;
        self
    }

    /// The snapshotter this unpacker writes into.
    pub fn snapshots(&self) -> &Arc<Snapshots> {
        &self.snapshots
    }

    /// Unpacks `layers` (base first) and returns the chain ID of the top one, the name of its
    /// committed snapshot. `on_new_snapshot` is called with the key of each snapshot about to be
    /// created, before it exists (the caller records it in its lease).
    pub fn unpack(
        &self,
        layers: &[LayerToUnpack],
        on_new_snapshot: &dyn Fn(&str) -> Result<()>,
        max_expansion: u64,
    ) -> Result<Digest> {
        let mut top: Option<Digest> = None;
        for layer in layers {
            top = Some(self.unpack_one(top.as_ref(), layer, on_new_snapshot, max_expansion)?);
        }
        top.ok_or_else(|| Error::invalid("unpacking an image without layers"))
    }

    /// Unpacks one layer on top of the committed snapshot `parent_chain` (None for the base
    /// layer) and returns its chain ID; a layer already unpacked is skipped. Lets a puller unpack
    /// layer i as soon as its blob is downloaded.
    pub fn unpack_one(
        &self,
        parent_chain: Option<&Digest>,
        layer: &LayerToUnpack,
        on_new_snapshot: &dyn Fn(&str) -> Result<()>,
        max_expansion: u64,
    ) -> Result<Digest> {
        let chain = next_chain_id(parent_chain, &layer.diff_id);
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(chain.clone()).or_default().clone()
        };
        let result = {
            let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
            self.unpack_locked(&chain, parent_chain, layer, on_new_snapshot, max_expansion)
        };
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else is waiting for this chain ID.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&chain);
        }
        result
    }

    fn unpack_locked(
        &self,
        chain: &Digest,
        parent_chain: Option<&Digest>,
        layer: &LayerToUnpack,
        on_new_snapshot: &dyn Fn(&str) -> Result<()>,
        max_expansion: u64,
    ) -> Result<Digest> {
        let name = chain.to_string();
        if self.is_committed(&name)? {
            return Ok(chain.clone());
        }
        let digest = &layer.desc.digest;
        let compression = Compression::of_layer(&layer.desc.media_type)
            .map_err(|e| e.context(format!("unpacking layer {digest}")))?;
        let size = u64::try_from(layer.desc.size)
            .map_err(|_| Error::invalid(format!("unpacking layer {digest}: negative size")))?;
        let limit = expansion_limit(size, max_expansion, self.expansion_floor);

        let key = format!("{EXTRACT_PREFIX}{}-{}", random_hex()?, chain.hex());
        on_new_snapshot(&key)?;
        let parent = parent_chain.map(|p| p.to_string());
        self.snapshots.prepare(&key, parent.as_deref(), Labels::new())?;
        let result = (|| {
            let (target, mode) = self.snapshots.apply_target(&key)?;
            let blob = File::open(&layer.blob_path)
                .context(|| format!("opening layer blob {}", layer.blob_path.display()))?;
            unpack_layer_limited(blob, compression, &layer.diff_id, limit, &target, mode)?;
            self.snapshots.commit(&name, &key, Labels::new())
        })();
        let Err(e) = result else {
            return Ok(chain.clone());
        };
        if let Err(e2) = self.snapshots.remove(&key) {
            tracing::warn!(key, "removing snapshot of a failed unpack: {e2}");
        }
        // Committed meanwhile by someone not going through this unpacker: same content.
        if e.kind() == ErrorKind::AlreadyExists && self.is_committed(&name)? {
            return Ok(chain.clone());
        }
        Err(e.context(format!("unpacking layer {digest}")))
    }

    fn is_committed(&self, name: &str) -> Result<bool> {
        match self.snapshots.stat(name) {
            Ok(info) if info.kind == SnapshotKind::Committed => Ok(true),
            Ok(info) => Err(Error::precondition(format!(
                "snapshot {name:?} exists but is {:?}, not committed",
                info.kind
            ))),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The chain ID of a layer on top of `parent` (see [`oci::chain_ids`]).
fn next_chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()),
    }
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("reading random bytes: {e}")))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {}
