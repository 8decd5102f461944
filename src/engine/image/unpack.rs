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
/// [`DEFAULT_EXPANSION_FLOOR`] bytes and more than `max_expansion` × `compressed_size` came out of
/// it, or would be written as files (sparse entries count at their logical size). On error `target` is half-written and must be discarded.
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
    // The same limit bounds what the files add up to: sparse entries expand without passing
    // through the decompressor.
    let applied = apply_tar(&mut stream, target, mode, limit).and_then(|stats| {
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

    /// Whether the layer stack `chain` is already unpacked (its committed snapshot exists).
    pub fn is_unpacked(&self, chain: &Digest) -> Result<bool> {
        self.is_committed(&chain.to_string())
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
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tar::EntryType;

    use super::*;
    use crate::config::SnapshotterKind;
    use crate::engine::image::apply::test_tar::{Layer, header};
    use crate::engine::metadata::Db;
    use crate::engine::oci::media;
    use crate::engine::snapshot::{Mount, mount_all, unmount};

    struct Fixture {
        tmp: tempfile::TempDir,
        unpacker: Unpacker,
    }

    fn open(kind: SnapshotterKind) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&tmp.path().join("meta.redb")).unwrap());
        let snaps = Snapshots::open(&tmp.path().join("snapshotter"), kind, db).unwrap();
        assert_eq!(snaps.name(), kind.as_str());
        Fixture { tmp, unpacker: Unpacker::new(Arc::new(snaps)) }
    }

    impl Fixture {
        fn snaps(&self) -> &Snapshots {
            self.unpacker.snapshots()
        }
        /// Stores `tar` compressed as `compression` and describes it as a layer.
        fn blob(&self, name: &str, tar: &[u8], compression: Compression) -> LayerToUnpack {
            let (data, media_type) = match compression {
                Compression::None => (tar.to_vec(), media::OCI_LAYER),
                Compression::Gzip => {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(tar).unwrap();
                    (e.finish().unwrap(), media::DOCKER_LAYER_GZIP)
                }
                Compression::Zstd => (zstd::encode_all(tar, 3).unwrap(), media::OCI_LAYER_ZSTD),
            };
            let blob_path = self.tmp.path().join(name);
            fs::write(&blob_path, &data).unwrap();
            let desc = oci::Descriptor::new(media_type, Digest::of(&data), data.len() as i64);
            LayerToUnpack { blob_path, desc, diff_id: Digest::of(tar) }
        }
        /// Mounts a view of `chain` for the duration of `check`.
        fn with_view(&self, chain: &Digest, check: impl FnOnce(&Path)) {
            let mounts: Vec<Mount> =
                self.snaps().view("check", Some(&chain.to_string()), Labels::new()).unwrap();
            let target = self.tmp.path().join("mnt");
            fs::create_dir_all(&target).unwrap();
            mount_all(&mounts, &target).unwrap();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&target)));
            unmount(&target).unwrap();
            self.snaps().remove("check").unwrap();
            if let Err(p) = result {
                std::panic::resume_unwind(p);
            }
        }
    }

    fn owned(kind: EntryType, name: &str, mode: u32, data: &[u8]) -> tar::Header {
        let mut h = header(kind, name.as_bytes(), data.len() as u64);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h
    }

    /// Three layers exercising every entry kind, whiteouts and an opaque directory.
    fn image(f: &Fixture) -> Vec<LayerToUnpack> {
        let mut l1 = Layer::new();
        l1.dir("etc").file("etc/conf", b"v1").dir("bin");
        l1.pax(&[("SCHILY.xattr.user.berth", b"yes")]);
        l1.add(owned(EntryType::Regular, "bin/tool", 0o4755, b"tool"), b"tool");
        l1.hardlink("bin/tool-link", "bin/tool").symlink("bin/sh", "tool");
        l1.dir("opq").file("opq/old1", b"o").dir("opq/sub").file("opq/sub/old2", b"o");
        l1.file("gone.txt", b"gone").dir("dev").device(EntryType::Char, "dev/null", 1, 3);
        l1.add(header(EntryType::Fifo, b"dev/pipe", 0), b"");
        let mut data_dir = header(EntryType::Directory, b"data", 0);
        data_dir.set_mtime(1_400_000_000);
        l1.file("data/f", b"f").add(data_dir, b"");

        let long = format!("deep/{}/file", "n".repeat(150));
        let mut l2 = Layer::new();
        l2.file(".wh.gone.txt", b"").dir("opq").file("opq/new", b"new").file("opq/.wh..wh..opq", b"");
        l2.add(owned(EntryType::Regular, "etc/conf", 0o600, b"v2"), b"v2");
        l2.pax(&[("path", long.as_bytes())]).file("placeholder", b"long");

        let mut l3 = Layer::new();
        l3.file("top", b"top");
        let mut l3 = l3.bytes();
        // Padding after the end marker, as tools padding to a record size write: part of the diff ID.
        l3.extend_from_slice(&[0u8; 8192]);

        vec![
            f.blob("l1", &l1.bytes(), Compression::Gzip),
            f.blob("l2", &l2.bytes(), Compression::Zstd),
            f.blob("l3", &l3, Compression::None),
        ]
    }

    fn multi_layer_image_is_unpacked(kind: SnapshotterKind) {
        let f = open(kind);
        let layers = image(&f);
        let created = Mutex::new(Vec::new());
        let record = |key: &str| {
            // Called before the snapshot exists, so a lease can name it first.
            assert_eq!(f.snaps().stat(key).unwrap_err().kind(), ErrorKind::NotFound);
            created.lock().unwrap().push(key.to_string());
            Ok(())
        };
        let top = f.unpacker.unpack(&layers, &record, 100).unwrap();
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let chains = oci::chain_ids(&diff_ids);
        assert_eq!(&top, chains.last().unwrap());
        let created = created.into_inner().unwrap();
        assert_eq!(created.len(), 3);
        assert!(created.iter().all(|k| k.starts_with(EXTRACT_PREFIX)));
        let committed: Vec<String> = f.snaps().list().unwrap().into_iter().map(|i| i.key).collect();
        let mut expected: Vec<String> = chains.iter().map(|c| c.to_string()).collect();
        expected.sort();
        assert_eq!(committed, expected);

        f.with_view(&top, |root| {
            let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
            let exists = |p: &str| fs::symlink_metadata(root.join(p)).is_ok();
            assert!(!exists("gone.txt"), "whiteout");
            assert!(!exists("opq/old1") && !exists("opq/sub"), "opaque directory hides the lower layer");
            assert_eq!(fs::read(root.join("opq/new")).unwrap(), b"new");
            assert_eq!(fs::read(root.join("etc/conf")).unwrap(), b"v2");
            let conf = meta("etc/conf");
            assert_eq!((conf.mode() & 0o7777, conf.uid(), conf.gid()), (0o600, 1000, 1001));
            let tool = meta("bin/tool");
            assert_eq!((tool.mode() & 0o7777, tool.uid(), tool.gid(), tool.nlink()), (0o4755, 1000, 1001, 2));
            assert_eq!(meta("bin/tool-link").ino(), tool.ino());
            assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("tool"));
            let mut buf = [0u8; 8];
            let n = rustix::fs::lgetxattr(root.join("bin/tool"), "user.berth", &mut buf).unwrap();
            assert_eq!(&buf[..n], b"yes");
            let null = meta("dev/null");
            assert!(null.file_type().is_char_device());
            assert_eq!((rustix::fs::major(null.rdev()), rustix::fs::minor(null.rdev())), (1, 3));
            assert!(meta("dev/pipe").file_type().is_fifo());
            assert_eq!(meta("data").mtime(), 1_400_000_000);
            assert_eq!(meta("top").mtime(), 1_600_000_000);
            let long = format!("deep/{}/file", "n".repeat(150));
            assert_eq!(fs::read(root.join(long)).unwrap(), b"long");
        });

        // A second pull of the same image finds every layer unpacked.
        let again = f.unpacker.unpack(&layers, &|_| panic!("nothing to create"), 100).unwrap();
        assert_eq!(again, top);
    }

    fn diff_id_mismatch_leaves_no_snapshot(kind: SnapshotterKind) {
        let f = open(kind);
        let mut layer = f.blob("l", &Layer::new().file("a", b"a").bytes(), Compression::Gzip);
        layer.diff_id = Digest::of(b"something else");
        let err = f.unpacker.unpack(&[layer], &|_| Ok(()), 100).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("diff id mismatch"), "{err}");
        assert!(f.snaps().list().unwrap().is_empty());
        assert!(fs::read_dir(f.tmp.path().join("snapshotter/snapshots")).unwrap().next().is_none());
    }

    fn hostile_layer_leaves_no_snapshot(kind: SnapshotterKind) {
        let f = open(kind);
        let layer =
            f.blob("l", &Layer::new().file("ok", b"ok").file("../escape", b"x").bytes(), Compression::Zstd);
        let err = f.unpacker.unpack(&[layer], &|_| Ok(()), 100).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(f.snaps().list().unwrap().is_empty());
        assert!(!f.tmp.path().join("snapshotter/snapshots/escape").exists());
    }

    fn concurrent_unpacks_make_one_snapshot_per_chain_id(kind: SnapshotterKind) {
        let f = open(kind);
        let layers = image(&f);
        let created = AtomicUsize::new(0);
        let count = |_: &str| {
            created.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        let barrier = std::sync::Barrier::new(2);
        let tops: Vec<Digest> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        f.unpacker.unpack(&layers, &count, 100).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(tops[0], tops[1]);
        assert_eq!(created.load(Ordering::SeqCst), 3);
        assert_eq!(f.snaps().list().unwrap().len(), 3);
        assert!(f.unpacker.locks.lock().unwrap().is_empty(), "locks are released");
    }

    macro_rules! both_backends {
        ($($name:ident),*) => {
            mod overlayfs {
                $( #[test] fn $name() { super::$name(crate::config::SnapshotterKind::Overlayfs) } )*
            }
            mod native {
                $( #[test] fn $name() { super::$name(crate::config::SnapshotterKind::Native) } )*
            }
        };
    }

    both_backends!(
        multi_layer_image_is_unpacked,
        diff_id_mismatch_leaves_no_snapshot,
        hostile_layer_leaves_no_snapshot,
        concurrent_unpacks_make_one_snapshot_per_chain_id
    );

    /// A layer of 8 MiB of zeros: a few KiB of gzip.
    fn bomb(f: &Fixture) -> LayerToUnpack {
        let zeros = vec![0u8; 8 << 20];
        let mut tar = Layer::new();
        tar.file("zeros", &zeros);
        f.blob("bomb", &tar.bytes(), Compression::Gzip)
    }

    #[test]
    fn decompression_bombs_are_refused_above_the_floor() {
        let f = open(SnapshotterKind::Native);
        let layer = bomb(&f);
        let size = layer.desc.size as u64;
        assert!(size * 10 < 8 << 20, "compressed to {size}");
        let target = f.tmp.path().join("t");

        fs::create_dir(&target).unwrap();
        let blob = File::open(&layer.blob_path).unwrap();
        let limit = expansion_limit(size, 10, 1 << 20);
        let err = unpack_layer_limited(
            blob,
            Compression::Gzip,
            &layer.diff_id,
            limit,
            &target,
            WhiteoutMode::Delete,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");

        // Under the default 1 GiB floor the same layer is fine.
        fs::remove_dir_all(&target).unwrap();
        fs::create_dir(&target).unwrap();
        let blob = File::open(&layer.blob_path).unwrap();
        unpack_layer(blob, Compression::Gzip, &layer.diff_id, size, 10, &target, WhiteoutMode::Delete)
            .unwrap();
        assert_eq!(fs::metadata(target.join("zeros")).unwrap().len(), 8 << 20);

        // Through the unpacker: refused, and nothing left behind.
        let unpacker = Unpacker::new(f.unpacker.snapshots().clone()).with_expansion_floor(1 << 20);
        let err = unpacker.unpack(&[layer], &|_| Ok(()), 10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
        assert!(f.snaps().list().unwrap().is_empty());
    }

    // Issue 8 item 13: 64 MiB of file from a few hundred bytes of layer, with no byte of it
    // passing through the decompressor.
    #[test]
    fn sparse_bombs_are_refused_above_the_floor() {
        // Overlayfs: a view shows the committed layer itself, not a copy of it.
        let f = open(SnapshotterKind::Overlayfs);
        let size = 64u64 << 20;
        let tar = Layer::new().sparse("bomb", size, &[(size - 4, b"end\n")]).bytes();
        let layer = f.blob("sparse-bomb", &tar, Compression::Gzip);
        let unpacker = Unpacker::new(f.unpacker.snapshots().clone()).with_expansion_floor(1 << 20);
        let err = unpacker.unpack(std::slice::from_ref(&layer), &|_| Ok(()), 10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&layer.diff_id.to_string()) && msg.contains("sparse"), "{msg}");
        assert!(f.snaps().list().unwrap().is_empty());

        // Under the floor it unpacks, as holes.
        let chain = f.unpacker.unpack(&[layer], &|_| Ok(()), 10).unwrap();
        f.with_view(&chain, |root| {
            let m = fs::metadata(root.join("bomb")).unwrap();
            assert_eq!(m.len(), size);
            assert!(m.blocks() * 512 < 1 << 20, "{} bytes allocated", m.blocks() * 512);
        });
    }

    #[test]
    fn expansion_limit_is_the_larger_of_floor_and_ratio() {
        assert_eq!(expansion_limit(10, 100, 1 << 30), 1 << 30);
        assert_eq!(expansion_limit(1 << 30, 100, 1 << 30), 100 << 30);
        assert_eq!(expansion_limit(u64::MAX, 100, 1), u64::MAX);
    }

    #[test]
    fn chain_ids_match_the_oci_definition() {
        let d: Vec<Digest> = [b"a", b"b", b"c"].iter().map(|x| Digest::of(*x)).collect();
        let mut prev: Option<Digest> = None;
        let mut ours = Vec::new();
        for diff in &d {
            let next = next_chain_id(prev.as_ref(), diff);
            ours.push(next.clone());
            prev = Some(next);
        }
        assert_eq!(ours, oci::chain_ids(&d));
    }

    #[test]
    fn a_missing_blob_leaves_no_snapshot() {
        let f = open(SnapshotterKind::Native);
        let mut layer = f.blob("l", &Layer::new().file("a", b"a").bytes(), Compression::None);
        layer.blob_path = f.tmp.path().join("absent");
        assert!(f.unpacker.unpack(&[layer], &|_| Ok(()), 100).is_err());
        assert!(f.snaps().list().unwrap().is_empty());
    }
}
