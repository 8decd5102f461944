//! Hostile layers (a `..` name, a symlink to `/` or up out of the root followed by a file through it,
//! hard links to host files, a sparse file far bigger than its layer): the pull fails with an error,
//! nothing appears or changes on the host, berth's disk use stays small while it tries, and nothing
//! from the layer remains under berth's directories.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::harness::fs::{disk_usage, find_named};
use crate::harness::{Berthd, Hostile, Registry, images};

/// The most disk berth may use under its directories while refusing a hostile layer: the database and
/// directories, far below what the sparse layer describes.
const DISK_BOUND: u64 = 256 << 20;

/// Samples the disk use under a directory (as `du` counts it) until dropped, keeping the highest.
struct PeakUsage {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl PeakUsage {
    fn start(dir: PathBuf) -> PeakUsage {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                // One more sample after the stop, so the state at the end is always seen.
                let stopping = flag.load(Ordering::SeqCst);
                peak = peak.max(disk_usage(&dir).0);
                if stopping {
                    return peak;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        PeakUsage { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().expect("running").join().expect("disk sampler panicked")
    }
}

impl Drop for PeakUsage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Removes the hard-link victim file when the test ends, however it ends.
struct Victim;

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Hostile::HARDLINK_VICTIM);
    }
}

const VICTIM_CONTENT: &[u8] = b"berth-e2e: original content\n";

async fn pull_fails_without_escaping(h: Hostile) {
    let reg = Registry::shared();
    let image = images().hostile(h);
    // Leftovers of an earlier broken run would make this run's check meaningless.
    for p in h.host_paths() {
        let _ = std::fs::remove_file(p);
    }
    let _victim = (h == Hostile::Hardlink).then(|| {
        std::fs::write(Hostile::HARDLINK_VICTIM, VICTIM_CONTENT).unwrap();
        Victim
    });
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();

    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let reference = image.reference(&reg.host());
    let peak = PeakUsage::start(berthd.dir().to_path_buf());
    let pulled = cri.pull(&reference).await;
    let peak = peak.finish();
    let err = pulled.expect_err("pull of a hostile image succeeded");
    eprintln!("{h:?}: pull failed as it must: {err:?}");
    assert!(peak < DISK_BOUND, "{h:?}: berth used {peak} bytes of disk while pulling");
    if h == Hostile::Sparse {
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("decompression bomb"), "{err:?}");
    }

    for p in h.host_paths() {
        assert!(std::fs::symlink_metadata(&p).is_err(), "{h:?} escaped: {} exists", p.display());
    }
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd, "/etc/passwd changed");
    assert_eq!(std::fs::metadata("/etc/passwd").unwrap().nlink(), passwd_links, "/etc/passwd gained a link");
    if h == Hostile::Hardlink {
        let victim = Path::new(Hostile::HARDLINK_VICTIM);
        assert_eq!(std::fs::read(victim).unwrap(), VICTIM_CONTENT, "written through a hard link");
        assert_eq!(std::fs::metadata(victim).unwrap().nlink(), 1, "berth linked to a host file");
    }

    // Nothing from the layer remains anywhere under root or state (no snapshot kept from it).
    let mut names: Vec<String> = h
        .expected_entries()
        .into_iter()
        .filter_map(|(name, _)| name.rsplit('/').next().map(str::to_string))
        .collect();
    names.push(h.marker().to_string());
    names.dedup();
    for name in &names {
        let found = find_named(berthd.dir(), name);
        assert!(found.is_empty(), "{h:?}: entries of the hostile layer remain: {found:?}");
    }
    assert!(cri.status(&reference).await.expect("ImageStatus").is_none(), "hostile image recorded");

    // The failed pull left berth able to pull.
    let busybox = images().busybox.reference(&reg.host());
    cri.pull(&busybox).await.expect("pull after the hostile one");
}

#[tokio::test(flavor = "multi_thread")]
async fn dotdot_entry_is_refused() {
    pull_fails_without_escaping(Hostile::DotDot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn write_through_absolute_symlink_is_refused() {
    pull_fails_without_escaping(Hostile::AbsSymlink).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn write_through_relative_symlink_is_refused() {
    pull_fails_without_escaping(Hostile::RelSymlink).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hard_link_out_of_the_root_is_refused() {
    pull_fails_without_escaping(Hostile::Hardlink).await;
}

// Issue 8 item 13.
#[tokio::test(flavor = "multi_thread")]
async fn sparse_bomb_is_refused_without_filling_the_disk() {
    pull_fails_without_escaping(Hostile::Sparse).await;
}
