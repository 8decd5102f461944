//! Layer tar streams applied into a fresh snapshot directory, as an unpack does: `apply_tar` on the
//! bytes, then again on what follows the first tar's end marker (a second layer on top of the
//! first, so whiteouts and replacements meet content). The first byte picks overlay or delete
//! whiteouts, and whether every header's checksum is set first (so that mutated headers get past
//! the check). Each run applies beneath `<tmp>/root` in a fresh temporary directory and removes it
//! afterwards. No input may panic, nothing may appear in the temporary directory beside `root` (an
//! escape by `..` or a symlink lands there first), and no more file content is written than the
//! limit allows.
//!
//! The fuzzer runs as whoever starts it: as root (as berthd does) devices, owners and
//! `trusted.*`/`security.*` xattrs are applied too. `apply_tar` confines every write beneath the
//! target with `openat2`; a bug there would write elsewhere on this machine, so run it where
//! that does no harm.

#![no_main]

use std::collections::HashSet;
use std::io::{Cursor, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth::engine::image::apply::apply_tar;
use berth::engine::snapshot::WhiteoutMode;
use libfuzzer_sys::fuzz_target;

/// The most file content (logical bytes, holes included) one layer may write.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Bytes of regular files under `dir` (their logical sizes, each inode once), not following
/// symlinks.
fn file_bytes(dir: &Path, seen: &mut HashSet<u64>) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("reading the applied tree").flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        if meta.is_dir() {
            total += file_bytes(&entry.path(), seen);
        } else if meta.is_file() && seen.insert(meta.ino()) {
            total += meta.len();
        }
    }
    total
}

/// Sets the checksum of every header block, found by walking the stream as a tar reader does
/// (a header, then its data rounded up to blocks), so that a mutated header reaches the applier
/// instead of failing the checksum check.
fn fix_checksums(tar: &mut [u8]) {
    let mut at = 0;
    while let Some(block) = tar.get_mut(at..at + 512) {
        at += 512;
        if block.iter().all(|b| *b == 0) {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = if block[124] & 0x80 != 0 {
            block[125..136].iter().fold(0u64, |n, b| n.saturating_mul(256).saturating_add(u64::from(*b)))
        } else {
            let digits = String::from_utf8_lossy(&block[124..136]);
            u64::from_str_radix(digits.trim_matches(|c: char| c == ' ' || c == '\0'), 8).unwrap_or(0)
        };
        let Some(next) =
            usize::try_from(size.div_ceil(512).saturating_mul(512)).ok().and_then(|n| at.checked_add(n))
        else {
            return;
        };
        at = next;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut fixed;
    let rest = if mode & 2 != 0 {
        fixed = rest.to_vec();
        fix_checksums(&mut fixed);
        &fixed[..]
    } else {
        rest
    };
    let mode = if mode & 1 == 0 { WhiteoutMode::Overlay } else { WhiteoutMode::Delete };
    let tmp = tempfile::Builder::new().prefix("berth-fuzz-layer-").tempdir().expect("a temporary directory");
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).expect("creating the target");

    let mut stream = Cursor::new(rest);
    for _layer in 0..2 {
        // Each layer may write up to the limit; hard links share content, so count after each.
        let before = file_bytes(&root, &mut HashSet::new());
        let applied = apply_tar(&mut stream as &mut dyn Read, &root, mode, MAX_FILE_BYTES);
        if let Ok(stats) = applied {
            assert!(stats.bytes <= MAX_FILE_BYTES, "{} bytes written", stats.bytes);
        }
        let after = file_bytes(&root, &mut HashSet::new());
        assert!(after <= before + MAX_FILE_BYTES, "{after} bytes of files after a layer, {before} before");
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("reading the temporary directory")
            .map(|e| e.expect("an entry").file_name())
            .collect();
        assert_eq!(names, ["root"], "something was written beside the target");
        if applied.is_err() {
            break;
        }
        // The tar reader stops at the first block of the end marker: skip the rest of it (and any
        // further zero blocks), or the next layer would be read as empty.
        let mut at = usize::try_from(stream.position()).unwrap_or(usize::MAX);
        while rest.len().saturating_sub(at) >= 512 && rest[at..at + 512].iter().all(|b| *b == 0) {
            at += 512;
        }
        stream.set_position(at as u64);
    }
});
