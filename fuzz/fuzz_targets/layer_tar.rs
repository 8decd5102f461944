//! Layer tar streams applied into a fresh snapshot directory, as an unpack does: `apply_tar` on the
//! bytes, then again on what follows the first tar's end marker (a second layer on top of the
//! first, so whiteouts and replacements meet content), whiteouts as overlayfs or as deletions (the
//! first byte picks). Each run applies beneath `<tmp>/root` in a fresh temporary directory and
//! removes it afterwards. No input may panic, nothing may appear in the temporary directory beside
//! `root` (an escape by `..` or a symlink lands there first), and no more file content is written
//! than the limit allows.
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

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
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
    }
});
