//! The content store: content-addressed blobs (manifests, configs, layers) on disk, as containerd keeps
//! them. A blob is only ever added through an ingest that is hashed while written and verified before an
//! atomic rename, so a file under `blobs/` always holds exactly the bytes its name promises. Partial
//! downloads stay under `ingest/` and are resumed by the next writer of the same digest.
//!
//! Layout under the store directory:
//!
//! ```text
//! blobs/sha256/<hex>        committed blobs, mode 0444, written once and never modified
//! ingest/<hex>/data         bytes of an in-progress write of blob <hex>
//! ingest/<hex>/total        expected size (decimal text)
//! ingest/<hex>/startedat    when the ingest began (Unix nanoseconds, decimal text)
//! ingest/tmp-<random>       temporary file of `write_blob`; removed by `open` if left by a crash
//! ```
//!
//! This module must never modify a committed blob in place, never name a path from an unvalidated
//! string (everything goes through [`Digest`]), and knows nothing of metadata records, leases or images:
//! deciding what may be deleted is the garbage collector's job.
//!
//! One `ContentStore` per directory per process: the per-digest writer locks live in the value (and its
//! clones), not on disk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::engine::Usage;
use crate::engine::digest::{Digest, Hasher};
use crate::engine::metadata::now_nanos;
use crate::error::{Context, Error, Result};

/// Prefix of `write_blob`'s temporary files under `ingest/`; such names are never valid digests.
const TMP_PREFIX: &str = "tmp-";

/// Buffer size for hashing and copying blobs.
const BUF_SIZE: usize = 256 * 1024;

/// A content-addressed blob store rooted at one directory. Cheap to clone; clones share the writer locks.
#[derive(Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

struct Inner {
    blobs: PathBuf,
    ingest: PathBuf,
    /// One async lock per digest being written, so that concurrent pulls of the same blob wait for each
    /// other instead of downloading it twice. Weak so that the map only holds digests in use.
    locks: Mutex<HashMap<Digest, Weak<AsyncMutex<()>>>>,
}

/// An in-progress (or abandoned) ingest found under `ingest/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestInfo {
    /// The digest the ingest is expected to produce.
    pub digest: Digest,
    /// Bytes written so far.
    pub offset: u64,
    /// Expected size; 0 if unknown (the `total` file is missing or unreadable).
    pub total: u64,
    /// When the ingest began, Unix nanoseconds (0 if unknown).
    pub started_at: i64,
    /// When bytes were last written, Unix nanoseconds (the data file's modification time).
    pub updated_at: i64,
}

impl ContentStore {
    /// Opens the store at `dir`, creating its directories, and removes what a crash may have left:
    /// temporary files of `write_blob` and ingest directories whose blob was already committed.
    pub fn open(dir: &Path) -> Result<ContentStore> {
        let blobs = dir.join("blobs").join(Digest::ALGORITHM);
        let ingest = dir.join("ingest");
        for d in [&blobs, &ingest] {
            fs::create_dir_all(d).context(|| format!("creating content store directory {}", d.display()))?;
        }
        let store =
            ContentStore { inner: Arc::new(Inner { blobs, ingest, locks: Mutex::new(HashMap::new()) }) };
        store.clean_ingest_dir()?;
        Ok(store)
    }

    fn clean_ingest_dir(&self) -> Result<()> {
        let dir = &self.inner.ingest;
        for entry in fs::read_dir(dir).context(|| format!("listing {}", dir.display()))? {
            let entry = entry.context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            let stale = if name.starts_with(TMP_PREFIX) {
                true
            } else {
                // A crash between the rename into blobs/ and removing the ingest directory.
                Digest::from_hex(&name).is_ok_and(|d| self.exists(&d))
            };
            if stale {
                remove_path(&path).context(|| format!("removing stale ingest {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Where the committed blob `d` is (or would be) stored.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.inner.blobs.join(d.hex())
    }

    fn ingest_dir(&self, d: &Digest) -> PathBuf {
        self.inner.ingest.join(d.hex())
    }

    /// Whether blob `d` is committed.
    pub fn exists(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// The size of committed blob `d`, or None if it is absent.
    pub fn size(&self, d: &Digest) -> Result<Option<u64>> {
        match fs::metadata(self.path(d)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context(|| format!("reading size of blob {d}")),
        }
    }

    /// Reads the whole of blob `d` (for manifests, indexes and configs) and checks that its bytes match
    /// its digest. NotFound if absent; InvalidArgument if it is larger than `max` bytes.
    pub fn read(&self, d: &Digest, max: u64) -> Result<Vec<u8>> {
        let file = self.open_blob(d)?;
        let len = file.metadata().context(|| format!("reading size of blob {d}"))?.len();
        if len > max {
            return Err(Error::invalid(format!("blob {d} is {len} bytes, more than the {max} allowed")));
        }
        let mut data = Vec::with_capacity(len as usize);
        // The bound guards against a file that grows behind our back.
        file.take(max + 1).read_to_end(&mut data).context(|| format!("reading blob {d}"))?;
        if data.len() as u64 > max {
            return Err(Error::invalid(format!("blob {d} is more than the {max} bytes allowed")));
        }
        let actual = Digest::of(&data);
        if &actual != d {
            return Err(Error::internal(format!(
                "blob {d} is corrupt on disk: its content has digest {actual}"
            )));
        }
        Ok(data)
    }

    /// Opens committed blob `d` for reading (NotFound if absent). The caller verifies what it streams.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        match File::open(self.path(d)) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::not_found(format!("blob {d} not found")))
            }
            Err(e) => Err(e).context(|| format!("opening blob {d}")),
        }
    }

    fn lock_for(&self, d: &Digest) -> Arc<AsyncMutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = locks.get(d).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, w| w.strong_count() > 0);
        let lock = Arc::new(AsyncMutex::new(()));
        locks.insert(d.clone(), Arc::downgrade(&lock));
        lock
    }

    /// The single way to add a blob of `size` bytes that must hash to `expected`. Waits while another
    /// writer of the same digest is active in this process. Returns None if the blob is already
    /// committed (the caller skips the download); otherwise a [`Writer`] positioned after the bytes an
    /// interrupted earlier attempt left in the ingest (see [`Writer::offset`]).
    pub async fn writer(&self, expected: &Digest, size: u64) -> Result<Option<Writer>> {
        let guard = self.lock_for(expected).lock_owned().await;
        if self.exists(expected) {
            return Ok(None);
        }
        let store = self.clone();
        let digest = expected.clone();
        // Re-hashing a large partial download takes a while: keep it off the async workers.
        let writer = tokio::task::spawn_blocking(move || store.resume(digest, size, guard))
            .await
            .map_err(|e| Error::internal(format!("preparing ingest of blob {expected}: {e}")))??;
        Ok(Some(writer))
    }

    /// Opens (or starts) the ingest of `digest` and rebuilds the hash state of the bytes already in it.
    fn resume(&self, digest: Digest, size: u64, guard: OwnedMutexGuard<()>) -> Result<Writer> {
        let dir = self.ingest_dir(&digest);
        let what = || format!("preparing ingest of blob {digest}");
        fs::create_dir_all(&dir).context(what)?;
        let total_path = dir.join("total");
        let data_path = dir.join("data");
        let total = read_number::<u64>(&total_path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .context(what)?;
        let len = file.metadata().context(what)?.len();

        let mut hasher = Hasher::new();
        let mut offset = 0;
        if total == Some(size) && len > 0 && len <= size {
            let mut buf = vec![0u8; BUF_SIZE];
            loop {
                let n = file.read(&mut buf).context(what)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            offset = hasher.len();
            // A complete but wrong ingest can never commit; starting over is the only way forward.
            if offset == size && hasher.clone().finish() != digest {
                offset = 0;
            }
        }
        if offset == 0 {
            hasher = Hasher::new();
            file.set_len(0).context(what)?;
            fs::write(&total_path, size.to_string()).context(what)?;
            fs::write(dir.join("startedat"), now_nanos().to_string()).context(what)?;
        }
        Ok(Writer { store: self.clone(), digest, size, file, data_path, hasher, offset, _guard: guard })
    }

    /// Adds a blob from `reader` in one go (import, tests), verifying it against `expected` if given.
    /// Goes through a temporary file, fsync and rename like every other write. If `expected` is already
    /// committed the reader is not consumed.
    pub fn write_blob(&self, expected: Option<&Digest>, mut reader: impl Read) -> Result<(Digest, u64)> {
        if let Some(d) = expected
            && let Some(size) = self.size(d)?
        {
            return Ok((d.clone(), size));
        }
        let tmp = self.inner.ingest.join(format!("{TMP_PREFIX}{}", random_hex()?));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .context(|| format!("creating temporary blob {}", tmp.display()))?;
        let result = (|| {
            let mut hasher = Hasher::new();
            let mut buf = vec![0u8; BUF_SIZE];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context(|| "writing blob: reading input".to_string()),
                };
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).context(|| format!("writing temporary blob {}", tmp.display()))?;
            }
            let size = hasher.len();
            let actual = hasher.finish();
            if let Some(expected) = expected
                && &actual != expected
            {
                return Err(Error::invalid(format!(
                    "writing blob: expected digest {expected}, got {actual} ({size} bytes)"
                )));
            }
            self.install(&file, &tmp, &actual)?;
            Ok((actual, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Makes a verified file the committed blob `d`: fsync, read-only, rename, fsync the directory.
    fn install(&self, file: &File, from: &Path, d: &Digest) -> Result<()> {
        let what = || format!("committing blob {d}");
        file.sync_all().context(what)?;
        file.set_permissions(fs::Permissions::from_mode(0o444)).context(what)?;
        fs::rename(from, self.path(d)).context(what)?;
        File::open(&self.inner.blobs).and_then(|dir| dir.sync_all()).context(what)
    }

    /// Removes committed blob `d`; returns whether it existed.
    pub fn delete(&self, d: &Digest) -> Result<bool> {
        match fs::remove_file(self.path(d)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).context(|| format!("deleting blob {d}")),
        }
    }

    /// Every committed blob with its size, in digest order. Files whose names are not digests are ignored.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let dir = &self.inner.blobs;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).context(|| format!("listing {}", dir.display()))? {
            let entry = entry.context(|| format!("listing {}", dir.display()))?;
            let Ok(d) = Digest::from_hex(&entry.file_name().to_string_lossy()) else { continue };
            match entry.metadata() {
                Ok(m) if m.is_file() => out.push((d, m.len())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // deleted while listing
                Err(e) => return Err(e).context(|| format!("reading size of blob {d}")),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every ingest directory (in progress or abandoned), in digest order.
    pub fn ingests(&self) -> Result<Vec<IngestInfo>> {
        let dir = &self.inner.ingest;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).context(|| format!("listing {}", dir.display()))? {
            let entry = entry.context(|| format!("listing {}", dir.display()))?;
            let Ok(digest) = Digest::from_hex(&entry.file_name().to_string_lossy()) else { continue };
            let path = entry.path();
            let total = read_number(&path.join("total")).unwrap_or(0);
            let started_at = read_number(&path.join("startedat")).unwrap_or(0);
            // No data file: the ingest is being created or removed; report the directory's own time.
            let meta = match fs::metadata(path.join("data")).or_else(|_| fs::metadata(&path)) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).context(|| format!("reading ingest of blob {digest}")),
            };
            let offset = if meta.is_file() { meta.len() } else { 0 };
            let updated_at = meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
            out.push(IngestInfo { digest, offset, total, started_at, updated_at });
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Removes the ingest of `d` (an abandoned download); returns whether there was one to remove.
    /// Does nothing (false) if a writer of `d` is active.
    pub fn remove_ingest(&self, d: &Digest) -> Result<bool> {
        let lock = self.lock_for(d);
        let Ok(_guard) = lock.try_lock() else { return Ok(false) };
        let dir = self.ingest_dir(d);
        if fs::symlink_metadata(&dir).is_err() {
            return Ok(false);
        }
        remove_path(&dir).context(|| format!("removing ingest of blob {d}"))?;
        Ok(true)
    }

    /// Disk used by committed blobs and ingests: allocated bytes and inodes (for CRI ImageFsInfo).
    pub fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        for dir in [&self.inner.blobs, &self.inner.ingest] {
            add_usage(dir, &mut usage).context(|| format!("measuring disk usage of {}", dir.display()))?;
        }
        Ok(usage)
    }
}

/// Adds every entry below `dir` (not `dir` itself) to `usage`. Entries vanishing meanwhile are skipped.
fn add_usage(dir: &Path, usage: &mut Usage) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let meta = match fs::symlink_metadata(entry.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        usage.bytes += meta.blocks() * 512;
        usage.inodes += 1;
        if meta.is_dir() {
            add_usage(&entry.path(), usage)?;
        }
    }
    Ok(())
}

/// The decimal number in the small text file at `path`, if it is there and well-formed.
fn read_number<T: std::str::FromStr>(path: &Path) -> Option<T> {
    fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok())
}

/// Removes a file or a directory tree; a missing path is not an error.
fn remove_path(path: &Path) -> io::Result<()> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// 16 random hex characters, for temporary names.
pub(crate) fn random_hex() -> Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| Error::internal(format!("reading random bytes: {e}")))?;
    Ok(hex::encode(b))
}

/// Writes one blob into its ingest, hashing as it goes. Holds the digest's lock until dropped.
/// Dropping without [`commit`](Writer::commit) keeps the partial ingest for a later resume.
pub struct Writer {
    store: ContentStore,
    digest: Digest,
    size: u64,
    file: File,
    data_path: PathBuf,
    hasher: Hasher,
    offset: u64,
    _guard: OwnedMutexGuard<()>,
}

impl Writer {
    /// Bytes written so far (including those resumed from an earlier attempt): where the caller's
    /// download must continue, e.g. with an HTTP `Range: bytes=<offset>-` request.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The digest this writer must produce.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The expected size of the blob.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `data`. Refuses (InvalidArgument) to go past the expected size.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let end = self.offset + data.len() as u64;
        if end > self.size {
            return Err(Error::invalid(format!(
                "writing blob {}: {end} bytes is more than the expected {}",
                self.digest, self.size
            )));
        }
        // Positional writes: after a failed partial write, the next write overwrites the stray bytes
        // at the same offset, so the file and the hash state never disagree.
        self.file
            .write_all_at(data, self.offset)
            .context(|| format!("writing ingest of blob {}", self.digest))?;
        self.hasher.update(data);
        self.offset = end;
        Ok(())
    }

    /// Discards what was written and starts again at offset 0 (e.g. the server ignored a Range request).
    pub fn reset(&mut self) -> Result<()> {
        self.file.set_len(0).context(|| format!("resetting ingest of blob {}", self.digest))?;
        self.hasher = Hasher::new();
        self.offset = 0;
        Ok(())
    }

    /// Verifies size and digest and makes the blob committed. A short blob is an InvalidArgument error
    /// that keeps the ingest for resumption; a digest mismatch is an InvalidArgument error that discards
    /// the ingest, so that a retry starts clean.
    pub fn commit(self) -> Result<()> {
        let d = &self.digest;
        if self.offset != self.size {
            return Err(Error::invalid(format!(
                "committing blob {d}: got {} of the expected {} bytes",
                self.offset, self.size
            )));
        }
        let actual = self.hasher.clone().finish();
        if &actual != d {
            let err = Error::invalid(format!("committing blob: expected digest {d}, got {actual}"));
            let dir = self.store.ingest_dir(d);
            if let Err(e) = remove_path(&dir) {
                tracing::warn!(digest = %d, error = %e, "removing ingest of a corrupt download");
            }
            return Err(err);
        }
        self.store.install(&self.file, &self.data_path, d)?;
        let dir = self.store.ingest_dir(d);
        // The blob is safe; a leftover directory is removed by the next `open`.
        if let Err(e) = remove_path(&dir) {
            tracing::warn!(digest = %d, error = %e, "removing ingest directory after commit");
        }
        Ok(())
    }

    /// Gives up on this blob and deletes the partial ingest.
    pub fn abort(self) -> Result<()> {
        let d = &self.digest;
        remove_path(&self.store.ingest_dir(d)).context(|| format!("aborting ingest of blob {d}"))
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("offset", &self.offset)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::time::Duration;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn write_blob_then_read_back() {
        let (dir, s) = store();
        assert!(dir.path().join("blobs/sha256").is_dir() && dir.path().join("ingest").is_dir());
        let bytes = data(1000);
        let d = Digest::of(&bytes);
        assert!(!s.exists(&d));
        assert_eq!(s.size(&d).unwrap(), None);
        assert_eq!(s.write_blob(None, bytes.as_slice()).unwrap(), (d.clone(), 1000));
        assert!(s.exists(&d));
        assert_eq!(s.path(&d), dir.path().join("blobs/sha256").join(d.hex()));
        assert_eq!(s.size(&d).unwrap(), Some(1000));
        assert_eq!(s.read(&d, 1000).unwrap(), bytes);
        let mut from_file = Vec::new();
        s.open_blob(&d).unwrap().read_to_end(&mut from_file).unwrap();
        assert_eq!(from_file, bytes);
        let mode = fs::metadata(s.path(&d)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
        // Writing it again with the expected digest does not need the bytes.
        assert_eq!(s.write_blob(Some(&d), io::empty()).unwrap(), (d.clone(), 1000));
        assert_eq!(s.list().unwrap(), vec![(d, 1000)]);
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0, "no temp file left");
    }

    #[test]
    fn write_blob_with_wrong_digest_leaves_nothing() {
        let (dir, s) = store();
        let wrong = Digest::of(b"something else");
        let e = s.write_blob(Some(&wrong), &b"hello"[..]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains(&wrong.to_string()), "{e}");
        assert!(e.to_string().contains(&Digest::of(b"hello").to_string()), "{e}");
        assert!(s.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn read_checks_presence_size_and_digest() {
        let (_d, s) = store();
        let missing = Digest::of(b"missing");
        assert_eq!(s.read(&missing, 10).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(s.open_blob(&missing).unwrap_err().kind(), ErrorKind::NotFound);

        let (d, _) = s.write_blob(None, &b"0123456789"[..]).unwrap();
        assert_eq!(s.read(&d, 9).unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(s.read(&d, 10).unwrap(), b"0123456789");

        // Tamper with the file behind the store's back (same size, different bytes).
        let path = s.path(&d);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"0123456780").unwrap();
        let e = s.read(&d, 10).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[tokio::test]
    async fn writer_commits_verified_blob() {
        let (dir, s) = store();
        let bytes = data(300_000);
        let d = Digest::of(&bytes);
        let mut w = s.writer(&d, bytes.len() as u64).await.unwrap().expect("not yet committed");
        assert_eq!(w.offset(), 0);
        assert!(dir.path().join("ingest").join(d.hex()).join("data").is_file());
        for chunk in bytes.chunks(7000) {
            w.write(chunk).unwrap();
        }
        assert_eq!(w.offset(), 300_000);
        w.commit().unwrap();
        assert_eq!(s.read(&d, 1 << 20).unwrap(), bytes);
        assert!(!dir.path().join("ingest").join(d.hex()).exists());
        assert_eq!(fs::metadata(s.path(&d)).unwrap().permissions().mode() & 0o777, 0o444);
        // A second writer learns the blob is there.
        assert!(s.writer(&d, bytes.len() as u64).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn empty_blob_commits() {
        let (_d, s) = store();
        let d = Digest::of(b"");
        s.writer(&d, 0).await.unwrap().unwrap().commit().unwrap();
        assert_eq!(s.read(&d, 0).unwrap(), b"");
    }

    #[tokio::test]
    async fn dropped_writer_is_resumed() {
        let (_d, s) = store();
        let bytes = data(10_000);
        let d = Digest::of(&bytes);
        let mut w = s.writer(&d, 10_000).await.unwrap().unwrap();
        w.write(&bytes[..4321]).unwrap();
        drop(w);
        let info = s.ingests().unwrap();
        assert_eq!(info.len(), 1);
        assert_eq!((info[0].digest.clone(), info[0].offset, info[0].total), (d.clone(), 4321, 10_000));
        assert!(info[0].started_at > 0 && info[0].updated_at > 0);

        let mut w = s.writer(&d, 10_000).await.unwrap().unwrap();
        assert_eq!(w.offset(), 4321);
        w.write(&bytes[4321..]).unwrap();
        w.commit().unwrap();
        assert_eq!(s.read(&d, 10_000).unwrap(), bytes);
        assert!(s.ingests().unwrap().is_empty());
    }

    #[tokio::test]
    async fn resume_starts_over_when_ingest_disagrees() {
        let (dir, s) = store();
        let bytes = data(1000);
        let d = Digest::of(&bytes);
        let mut w = s.writer(&d, 1000).await.unwrap().unwrap();
        w.write(&bytes[..500]).unwrap();
        drop(w);
        // A different expected size: the partial bytes cannot be trusted.
        let w = s.writer(&d, 999).await.unwrap().unwrap();
        assert_eq!(w.offset(), 0);
        drop(w);

        // More bytes than expected (e.g. a crash of an older version): start over.
        let ingest = dir.path().join("ingest").join(d.hex());
        fs::write(ingest.join("data"), data(1200)).unwrap();
        fs::write(ingest.join("total"), "1000").unwrap();
        let w = s.writer(&d, 1000).await.unwrap().unwrap();
        assert_eq!(w.offset(), 0);
        drop(w);

        // Complete but wrong bytes can never commit: start over.
        let mut wrong = bytes.clone();
        wrong[0] ^= 1;
        fs::write(ingest.join("data"), &wrong).unwrap();
        let mut w = s.writer(&d, 1000).await.unwrap().unwrap();
        assert_eq!(w.offset(), 0);
        w.write(&bytes).unwrap();
        w.commit().unwrap();
        assert!(s.exists(&d));
    }

    #[tokio::test]
    async fn writer_refuses_to_go_past_size_and_can_reset() {
        let (_d, s) = store();
        let bytes = data(100);
        let d = Digest::of(&bytes);
        let mut w = s.writer(&d, 100).await.unwrap().unwrap();
        w.write(&bytes[..60]).unwrap();
        let e = w.write(&bytes[..41]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(w.offset(), 60);
        // The server ignored our Range request and sends everything from the start.
        w.reset().unwrap();
        assert_eq!(w.offset(), 0);
        w.write(&bytes).unwrap();
        w.commit().unwrap();
        assert_eq!(s.read(&d, 100).unwrap(), bytes);
    }

    #[tokio::test]
    async fn commit_with_wrong_digest_discards_ingest() {
        let (dir, s) = store();
        let bytes = data(100);
        let claimed = Digest::of(b"not these bytes");
        let mut w = s.writer(&claimed, 100).await.unwrap().unwrap();
        w.write(&bytes).unwrap();
        let e = w.commit().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let msg = e.to_string();
        assert!(msg.contains(&claimed.to_string()) && msg.contains(&Digest::of(&bytes).to_string()), "{msg}");
        assert!(!s.exists(&claimed));
        assert!(!dir.path().join("ingest").join(claimed.hex()).exists());
        assert!(s.ingests().unwrap().is_empty());
    }

    #[tokio::test]
    async fn short_commit_keeps_ingest_for_resume() {
        let (_d, s) = store();
        let bytes = data(100);
        let d = Digest::of(&bytes);
        let mut w = s.writer(&d, 100).await.unwrap().unwrap();
        w.write(&bytes[..30]).unwrap();
        assert_eq!(w.commit().unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert!(!s.exists(&d));
        let w = s.writer(&d, 100).await.unwrap().unwrap();
        assert_eq!(w.offset(), 30);
    }

    #[tokio::test]
    async fn abort_deletes_ingest() {
        let (_d, s) = store();
        let d = Digest::of(b"abc");
        let mut w = s.writer(&d, 3).await.unwrap().unwrap();
        w.write(b"ab").unwrap();
        w.abort().unwrap();
        assert!(s.ingests().unwrap().is_empty());
        assert_eq!(s.writer(&d, 3).await.unwrap().unwrap().offset(), 0);
    }

    #[tokio::test]
    async fn second_writer_waits_for_the_first() {
        let (_d, s) = store();
        let bytes = data(5000);
        let d = Digest::of(&bytes);
        let mut first = s.writer(&d, 5000).await.unwrap().unwrap();
        let (s2, d2) = (s.clone(), d.clone());
        let mut second = tokio::spawn(async move { s2.writer(&d2, 5000).await });
        // While the first writer holds the lock, the second cannot proceed.
        assert!(tokio::time::timeout(Duration::from_millis(100), &mut second).await.is_err());
        first.write(&bytes).unwrap();
        first.commit().unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap().unwrap();
        assert!(got.is_none(), "the blob was committed by the first writer");
        // Writers of different digests do not block each other.
        let a = s.writer(&Digest::of(b"a"), 1).await.unwrap().unwrap();
        let b = tokio::time::timeout(Duration::from_secs(5), s.writer(&Digest::of(b"b"), 1)).await;
        assert!(b.unwrap().unwrap().is_some());
        drop(a);
    }

    #[tokio::test]
    async fn remove_ingest_spares_active_writers() {
        let (_d, s) = store();
        let d = Digest::of(b"abc");
        let mut w = s.writer(&d, 3).await.unwrap().unwrap();
        w.write(b"a").unwrap();
        assert!(!s.remove_ingest(&d).unwrap(), "not removed, not counted");
        assert_eq!(s.ingests().unwrap().len(), 1, "held by a writer");
        drop(w);
        assert!(s.remove_ingest(&d).unwrap());
        assert!(s.ingests().unwrap().is_empty());
        assert!(!s.remove_ingest(&d).unwrap(), "idempotent, and nothing to count");
    }

    #[test]
    fn delete_and_list() {
        let (dir, s) = store();
        let (a, _) = s.write_blob(None, &b"a"[..]).unwrap();
        let (b, _) = s.write_blob(None, &b"bb"[..]).unwrap();
        fs::write(dir.path().join("blobs/sha256/not-a-digest"), b"x").unwrap();
        let mut want = vec![(a.clone(), 1), (b.clone(), 2)];
        want.sort();
        assert_eq!(s.list().unwrap(), want);
        assert!(s.delete(&a).unwrap());
        assert!(!s.delete(&a).unwrap());
        assert_eq!(s.list().unwrap(), vec![(b, 2)]);
    }

    #[tokio::test]
    async fn usage_counts_blobs_and_ingests() {
        let (_d, s) = store();
        assert_eq!(s.usage().unwrap(), Usage::default());
        s.write_blob(None, data(10_000).as_slice()).unwrap();
        let u = s.usage().unwrap();
        assert_eq!(u.inodes, 1);
        assert!(u.bytes >= 10_000, "{u:?}");
        let d = Digest::of(b"partial");
        let mut w = s.writer(&d, 7).await.unwrap().unwrap();
        w.write(b"par").unwrap();
        drop(w);
        // The ingest directory and its data, total and startedat files.
        assert_eq!(s.usage().unwrap().inodes, 1 + 4);
    }

    #[tokio::test]
    async fn open_removes_what_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        let s = ContentStore::open(dir.path()).unwrap();
        let (committed, _) = s.write_blob(None, &b"done"[..]).unwrap();
        let partial = Digest::of(b"partial");
        let mut w = s.writer(&partial, 7).await.unwrap().unwrap();
        w.write(b"par").unwrap();
        drop(w);
        let ingest = dir.path().join("ingest");
        fs::write(ingest.join("tmp-0123456789abcdef"), b"half a blob").unwrap();
        // A crash after the rename into blobs/ and before the ingest directory was removed.
        fs::create_dir(ingest.join(committed.hex())).unwrap();
        fs::write(ingest.join(committed.hex()).join("total"), "4").unwrap();

        let s = ContentStore::open(dir.path()).unwrap();
        let left: Vec<_> = fs::read_dir(&ingest).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from(partial.hex())]);
        assert_eq!(s.writer(&partial, 7).await.unwrap().unwrap().offset(), 3);
        assert_eq!(s.read(&committed, 4).unwrap(), b"done");
    }
}
