//! Filesystem checks the scenarios make on berth's directories: disk usage as `du` counts it, content
//! blobs whose hash must equal their name, files found by name, and mounts left under a directory
//! (which the harness unmounts before deleting it). Read-only except [`unmount_all_under`].

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth::engine::digest::Hasher;

/// Every entry under `dir`, depth first, without following symlinks.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let is_dir = meta.is_dir();
        out.push((path.clone(), meta));
        if is_dir {
            walk(&path, out);
        }
    }
}

/// Disk usage under `dir` as `du` counts it: allocated bytes (st_blocks × 512) and inodes, each hard
/// link counted once, `dir` itself included.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut entries = Vec::new();
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        entries.push((dir.to_path_buf(), meta));
    }
    walk(dir, &mut entries);
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0, 0);
    for (_, meta) in entries {
        if seen.insert((meta.dev(), meta.ino())) {
            bytes += meta.blocks() * 512;
            inodes += 1;
        }
    }
    (bytes, inodes)
}

/// Content blobs under `root`: regular files named by 64 hex characters in a directory named
/// `sha256` (containerd's and OCI's `blobs/sha256/<hex>` layout, wherever berth puts it).
pub fn content_blobs(root: &Path) -> Vec<PathBuf> {
    let mut entries = Vec::new();
    walk(root, &mut entries);
    entries
        .into_iter()
        .filter(|(path, meta)| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            meta.is_file()
                && name.len() == 64
                && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                && path.parent().and_then(|p| p.file_name()).is_some_and(|p| p == "sha256")
        })
        .map(|(path, _)| path)
        .collect()
}

/// Checks every content blob under `root` hashes to its name; returns how many there are and panics
/// listing the ones that do not. A blob removed meanwhile (berth collects garbage in the background)
/// is not counted.
pub fn assert_blobs_match_their_names(root: &Path) -> usize {
    let blobs = content_blobs(root);
    let mut bad = Vec::new();
    let mut checked = 0;
    for blob in &blobs {
        let mut h = Hasher::new();
        let mut f = match std::fs::File::open(blob) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("opening {}: {e}", blob.display()),
        };
        checked += 1;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).unwrap_or_else(|e| panic!("reading {}: {e}", blob.display()));
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let digest = h.finish();
        if blob.file_name().and_then(|n| n.to_str()) != Some(digest.hex()) {
            bad.push(format!("{} holds {digest}", blob.display()));
        }
    }
    assert!(bad.is_empty(), "content blobs whose bytes do not match their name:\n{}", bad.join("\n"));
    checked
}

/// Every path under `dir` whose file name is `name`.
pub fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut entries = Vec::new();
    walk(dir, &mut entries);
    entries.into_iter().map(|(p, _)| p).filter(|p| p.file_name().is_some_and(|n| n == name)).collect()
}

/// Mount points at or under `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = berth::mountinfo::parse(&info)
        .into_iter()
        .map(|m| PathBuf::from(m.mount_point))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

/// Lazily unmounts everything at or under `dir` (like `umount -R -l`), deepest first, until nothing is
/// left; returns the mount points it unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    // Stacked mounts reappear after the top one goes: repeat, with a bound against a mount that
    // cannot be removed.
    for _ in 0..16 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            if nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                done.push(m);
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_blocks_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let (empty_bytes, empty_inodes) = disk_usage(dir.path());
        assert_eq!(empty_inodes, 1);
        std::fs::write(dir.path().join("a"), vec![7u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let (bytes, inodes) = disk_usage(dir.path());
        assert_eq!(inodes, 2);
        assert!(bytes >= empty_bytes + (1 << 20), "{bytes}");
        assert!(bytes < empty_bytes + (2 << 20), "hard link counted twice: {bytes}");
    }

    #[test]
    fn blobs_are_checked_against_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("content/blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let good = berth::engine::digest::Digest::of(b"good");
        std::fs::write(blobs.join(good.hex()), b"good").unwrap();
        // Neither of these is a content blob: wrong directory, wrong name.
        std::fs::write(dir.path().join(good.hex()), b"other").unwrap();
        std::fs::write(blobs.join("ingest-tmp"), b"partial").unwrap();
        assert_eq!(assert_blobs_match_their_names(dir.path()), 1);

        let bad = berth::engine::digest::Digest::of(b"expected");
        std::fs::write(blobs.join(bad.hex()), b"corrupted").unwrap();
        let result = std::panic::catch_unwind(|| assert_blobs_match_their_names(dir.path()));
        assert!(result.is_err(), "a blob whose bytes differ from its name passed");
    }

    #[test]
    fn find_named_searches_the_whole_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::write(dir.path().join("a/b/c/marker"), b"").unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("a/marker")).unwrap();
        let mut found = find_named(dir.path(), "marker");
        found.sort();
        assert_eq!(found, vec![dir.path().join("a/b/c/marker"), dir.path().join("a/marker")]);
        assert!(find_named(dir.path(), "absent").is_empty());
    }

    #[test]
    fn nested_mounts_are_unmounted_deepest_first() {
        use nix::mount::{MsFlags, mount};
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().join("outer");
        std::fs::create_dir(&outer).unwrap();
        mount(Some("tmpfs"), &outer, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        let inner = outer.join("inner");
        std::fs::create_dir(&inner).unwrap();
        mount(Some("tmpfs"), &inner, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        // A second mount stacked on the same point.
        mount(Some("tmpfs"), &inner, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
        assert_eq!(mounts_under(dir.path()).first(), Some(&inner));
        let done = unmount_all_under(dir.path());
        // A lazy unmount of `outer` takes the mounts below it along, so two calls may suffice.
        assert_eq!(done.first(), Some(&inner), "{done:?}");
        assert!(done.contains(&outer), "{done:?}");
        assert!(mounts_under(dir.path()).is_empty());
    }
}
