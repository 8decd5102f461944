//! Writes image layers as tar streams header by header, so a test image can hold exactly what a test
//! needs: whiteouts, hard links, xattrs, set-uid files, and the hostile entries (`..` names, links out of
//! the root, sparse files bigger than any disk) that the tar crate's safe API refuses to write. It also streams the tar through hashing and
//! compression into an OCI layout's blob directory, giving the diff ID and the blob digest in one pass.
//! It must never normalise or check a name: producing malformed layers on purpose is its job.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use berth::engine::digest::{Digest, Hasher};
use berth::engine::oci::media;
use serde::{Deserialize, Serialize};

/// Modification time of every entry unless a test sets one (2024-01-01T00:00:00Z), so builds repeat
/// byte for byte.
pub const MTIME: u64 = 1_704_067_200;

/// What an entry is.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    File,
    Dir,
    Symlink(&'a [u8]),
    /// A hard link to another entry of the archive (named from the archive root).
    Hardlink(&'a [u8]),
}

/// One tar entry's metadata. Names are raw bytes, written as given.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub name: &'a [u8],
    pub kind: Kind<'a>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Extended attributes, written as PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Entry<'a> {
    /// An entry owned by root with the fixed [`MTIME`].
    pub fn new(name: &'a [u8], kind: Kind<'a>, mode: u32) -> Self {
        Entry { name, kind, mode, uid: 0, gid: 0, mtime: MTIME, xattrs: Vec::new() }
    }
}

/// A tar stream written entry by entry into `W`, hashing the uncompressed bytes (the diff ID).
pub struct TarWriter<W: Write> {
    out: HashWriter<W>,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out: HashWriter::new(out) }
    }

    /// Appends an entry; `data` is the content of a regular file (empty for anything else).
    pub fn entry(&mut self, e: &Entry<'_>, data: &[u8]) -> io::Result<()> {
        self.entry_from(e, data.len() as u64, &mut &data[..])
    }

    /// Appends a regular file entry whose `size` bytes come from `data`.
    pub fn entry_from(&mut self, e: &Entry<'_>, size: u64, data: &mut dyn io::Read) -> io::Result<()> {
        if !e.xattrs.is_empty() {
            let mut records = Vec::new();
            for (name, value) in &e.xattrs {
                records.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
            }
            let mut h = tar::Header::new_ustar();
            set_bytes(&mut h.as_old_mut().name, b"././@PaxHeader")?;
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_mode(0o644);
            h.set_size(records.len() as u64);
            h.set_mtime(e.mtime);
            h.set_cksum();
            self.out.write_all(h.as_bytes())?;
            self.write_padded(&mut &records[..], records.len() as u64)?;
        }
        let mut h = tar::Header::new_ustar();
        set_bytes(&mut h.as_old_mut().name, e.name)?;
        let (kind, size) = match e.kind {
            Kind::File => (tar::EntryType::Regular, size),
            Kind::Dir => (tar::EntryType::Directory, 0),
            Kind::Symlink(target) => {
                set_bytes(&mut h.as_old_mut().linkname, target)?;
                (tar::EntryType::Symlink, 0)
            }
            Kind::Hardlink(target) => {
                set_bytes(&mut h.as_old_mut().linkname, target)?;
                (tar::EntryType::Link, 0)
            }
        };
        h.set_entry_type(kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(size);
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        if size > 0 {
            self.write_padded(data, size)?;
        }
        Ok(())
    }

    /// A directory, mode `mode`, owned by root.
    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.entry(&Entry::new(name.as_bytes(), Kind::Dir, mode), &[])
    }

    /// A regular file owned by root.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(&Entry::new(name.as_bytes(), Kind::File, mode), data)
    }

    /// A symbolic link `name -> target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(&Entry::new(name.as_bytes(), Kind::Symlink(target.as_bytes()), 0o777), &[])
    }

    /// A hard link `name` to the archive entry `target`.
    pub fn hardlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(&Entry::new(name.as_bytes(), Kind::Hardlink(target.as_bytes()), 0o644), &[])
    }

    /// A GNU sparse file (type `S`) of `real_size` bytes, all of it a hole but `tail`, which ends the
    /// file: a few hundred bytes of tar for a file of any size.
    pub fn sparse(&mut self, name: &str, mode: u32, real_size: u64, tail: &[u8]) -> io::Result<()> {
        let offset =
            real_size.checked_sub(tail.len() as u64).ok_or_else(|| io::Error::other("tail too long"))?;
        let mut h = tar::Header::new_gnu();
        set_bytes(&mut h.as_old_mut().name, name.as_bytes())?;
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(tail.len() as u64);
        let gnu = h.as_gnu_mut().expect("a gnu header");
        gnu.sparse[0].set_offset(offset);
        gnu.sparse[0].set_length(tail.len() as u64);
        gnu.set_real_size(real_size);
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        self.write_padded(&mut &tail[..], tail.len() as u64)
    }

    /// An AUFS-style whiteout deleting `path` from the layers below (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> io::Result<()> {
        let name = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&name, 0o644, &[])
    }

    /// An opaque-directory marker: `dir` shows nothing from the layers below.
    pub fn opaque(&mut self, dir: &str) -> io::Result<()> {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, &[])
    }

    /// Ends the archive (two zero blocks) and returns the diff ID and the inner writer.
    pub fn finish(mut self) -> io::Result<(Digest, W)> {
        self.out.write_all(&[0u8; 1024])?;
        let (inner, hasher) = self.out.into_parts();
        Ok((hasher.finish(), inner))
    }

    fn write_padded(&mut self, data: &mut dyn io::Read, size: u64) -> io::Result<()> {
        let copied = io::copy(&mut <&mut dyn io::Read as io::Read>::take(data, size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::other(format!("entry data ended after {copied} of {size} bytes")));
        }
        let pad = (512 - size % 512) % 512;
        self.out.write_all(&vec![0u8; pad as usize])
    }
}

fn set_bytes(field: &mut [u8], value: &[u8]) -> io::Result<()> {
    if value.len() > field.len() {
        return Err(io::Error::other(format!(
            "tar name {:?} is longer than {} bytes",
            String::from_utf8_lossy(value),
            field.len()
        )));
    }
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
    Ok(())
}

/// A PAX record `"<len> <key>=<value>\n"`, where `<len>` counts the whole record including itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // space, '=', newline
    let mut len = rest + rest.to_string().len();
    if len.to_string().len() != (len - rest) {
        len += 1;
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// A writer that hashes everything written through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter { inner, hasher: Hasher::new() }
    }
    pub fn into_parts(self) -> (W, Hasher) {
        (self.inner, self.hasher)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        }
    }
}

/// The compressing stage between a layer's tar stream and its blob file.
pub enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    fn new(c: Compression, w: W) -> io::Result<Self> {
        Ok(match c {
            // Fast levels: the large image is mostly incompressible and building it must stay quick.
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(w, flate2::Compression::fast())),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        })
    }
    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// A layer blob as stored in an OCI layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    pub media_type: String,
    /// Digest of the compressed blob (what the manifest and the registry name).
    pub digest: Digest,
    /// Compressed size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
}

/// The blob directory of an OCI layout (`<layout>/blobs/sha256`), written atomically: temp file, then
/// rename to the digest once it is known.
#[derive(Debug, Clone)]
pub struct BlobDir {
    dir: PathBuf,
}

impl BlobDir {
    /// The blob directory of the OCI layout at `layout` (created if missing).
    pub fn new(layout: &Path) -> io::Result<Self> {
        let dir = layout.join("blobs/sha256");
        std::fs::create_dir_all(&dir)?;
        Ok(BlobDir { dir })
    }

    /// The path of the blob `digest`.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Stores `bytes` and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> io::Result<Digest> {
        let digest = Digest::of(bytes);
        let tmp = self.dir.join(format!(".tmp-{}", digest.hex()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.path(&digest))?;
        Ok(digest)
    }

    /// Writes a layer: `fill` appends the entries; the tar is compressed with `c` on the way to disk.
    pub fn layer(
        &self,
        c: Compression,
        fill: impl FnOnce(&mut TarWriter<Encoder<HashWriter<File>>>) -> io::Result<()>,
    ) -> io::Result<LayerBlob> {
        let tmp = tempfile::Builder::new().prefix(".tmp-layer").tempfile_in(&self.dir)?;
        let file = tmp.reopen()?;
        let mut tar = TarWriter::new(Encoder::new(c, HashWriter::new(file))?);
        fill(&mut tar)?;
        let (diff_id, encoder) = tar.finish()?;
        let (file, hasher) = encoder.finish()?.into_parts();
        file.sync_all()?;
        let size = hasher.len();
        let digest = hasher.finish();
        tmp.persist(self.path(&digest)).map_err(|e| e.error)?;
        Ok(LayerBlob { media_type: c.media_type().to_string(), digest, size, diff_id })
    }
}

/// One entry of a tar stream as stored: raw name, type and raw link target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub link: Option<Vec<u8>>,
}

/// Reads back every entry of an (uncompressed) tar stream with the tar crate's reader, which keeps
/// names as stored.
pub fn list_entries(tar: impl io::Read) -> io::Result<Vec<TarEntry>> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        out.push(TarEntry {
            name: entry.path_bytes().into_owned(),
            kind: entry.header().entry_type(),
            link: entry.link_name_bytes().map(|l| l.into_owned()),
        });
    }
    Ok(out)
}

/// Decompresses a layer blob of the given media type.
pub fn decompress(media_type: &str, blob: impl io::Read + 'static) -> io::Result<Box<dyn io::Read>> {
    Ok(match media_type {
        media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP => Box::new(flate2::read::GzDecoder::new(blob)),
        media::OCI_LAYER_ZSTD => Box::new(zstd::stream::read::Decoder::new(blob)?),
        media::OCI_LAYER | media::DOCKER_LAYER => Box::new(blob),
        other => return Err(io::Error::other(format!("not a layer media type: {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        for (key, value) in [("a", &b"1"[..]), ("SCHILY.xattr.user.berth", b"1"), ("k", &[b'x'; 95][..])] {
            let r = pax_record(key, value);
            let (len, _) = std::str::from_utf8(&r).unwrap().split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{}", String::from_utf8_lossy(&r));
        }
    }

    #[test]
    fn raw_entries_round_trip_through_the_tar_reader() {
        let mut w = TarWriter::new(Vec::new());
        w.dir("d", 0o755).unwrap();
        w.file("d/f", 0o644, b"hello").unwrap();
        w.whiteout("d/gone").unwrap();
        w.whiteout("top").unwrap();
        w.opaque("d").unwrap();
        w.entry(&Entry::new(b"../../escape", Kind::File, 0o644), b"x").unwrap();
        w.entry(&Entry::new(b"evil", Kind::Symlink(b"/"), 0o777), &[]).unwrap();
        w.hardlink("l", "../../etc/passwd").unwrap();
        let mut e = Entry::new(b"x", Kind::File, 0o4755);
        e.uid = 1000;
        e.xattrs.push(("user.berth", b"1"));
        w.entry(&e, b"data").unwrap();
        let (diff_id, bytes) = w.finish().unwrap();
        assert_eq!(diff_id, Digest::of(&bytes));
        assert_eq!(bytes.len() % 512, 0);

        let names: Vec<_> = list_entries(&bytes[..])
            .unwrap()
            .into_iter()
            .map(|e| {
                (String::from_utf8(e.name).unwrap(), e.kind, e.link.map(|l| String::from_utf8(l).unwrap()))
            })
            .collect();
        let expect = [
            ("d", tar::EntryType::Directory, None),
            ("d/f", tar::EntryType::Regular, None),
            ("d/.wh.gone", tar::EntryType::Regular, None),
            (".wh.top", tar::EntryType::Regular, None),
            ("d/.wh..wh..opq", tar::EntryType::Regular, None),
            ("../../escape", tar::EntryType::Regular, None),
            ("evil", tar::EntryType::Symlink, Some("/")),
            ("l", tar::EntryType::Link, Some("../../etc/passwd")),
            ("x", tar::EntryType::Regular, None),
        ];
        assert_eq!(names.len(), expect.len(), "{names:?}");
        for ((n, t, l), (en, et, el)) in names.iter().zip(expect) {
            assert_eq!((n.as_str(), *t, l.as_deref()), (en, et, el));
        }

        // The PAX xattr and the ownership/mode reach a reader.
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut last = archive.entries().unwrap().last().unwrap().unwrap();
        assert_eq!(last.header().mode().unwrap(), 0o4755);
        assert_eq!(last.header().uid().unwrap(), 1000);
        let pax: Vec<_> = last
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|p| p.unwrap())
            .map(|p| (p.key().unwrap().to_string(), p.value_bytes().to_vec()))
            .collect();
        assert_eq!(pax, vec![("SCHILY.xattr.user.berth".to_string(), b"1".to_vec())]);
    }

    #[test]
    fn too_long_names_are_an_error_not_a_truncation() {
        let mut w = TarWriter::new(Vec::new());
        let long = "a".repeat(101);
        assert!(w.file(&long, 0o644, b"").is_err());
    }

    #[test]
    fn layer_blob_digests_match_the_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::new(dir.path()).unwrap();
        for c in [Compression::Gzip, Compression::Zstd] {
            let layer = blobs.layer(c, |w| w.file("f", 0o644, b"content")).unwrap();
            let stored = std::fs::read(blobs.path(&layer.digest)).unwrap();
            assert_eq!(Digest::of(&stored), layer.digest);
            assert_eq!(stored.len() as u64, layer.size);
            let mut tar = Vec::new();
            io::copy(&mut decompress(&layer.media_type, io::Cursor::new(stored)).unwrap(), &mut tar).unwrap();
            assert_eq!(Digest::of(&tar), layer.diff_id);
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
