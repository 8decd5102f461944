//! A failed pull gives its space back by itself (issue 14 item 2). A pull larger than berth's root (a
//! tmpfs two thirds the size of the large image) fails with ResourceExhausted naming that filesystem;
//! then, without anyone running `berthctl gc`, every blob, snapshot and partial download it wrote goes
//! and the next pull works. A pull failing for another reason (a layer the registry does not have)
//! also leaves no unreferenced blob or snapshot, and keeps at most the bytes berth keeps for resuming;
//! `berthctl gc` then has nothing left to remove and says so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Code;

use crate::harness::berthd::berthctl_json;
use crate::harness::disk::SmallFs;
use crate::harness::fs::content_blobs;
use crate::harness::{Berthd, Registry, images};

/// How long berth may take to collect a failed pull's garbage: a hang guard, not a time bound.
const GC_HANG_GUARD: Duration = Duration::from_secs(120);

/// What a pull leaves under berth's root: committed blobs, snapshot directories
/// (`snapshots/snapshots/<id>`) and the bytes of partial downloads (`content/ingest/<hex>/data`).
#[derive(Debug, PartialEq, Eq)]
struct Leftovers {
    blobs: BTreeSet<PathBuf>,
    snapshots: BTreeSet<String>,
    ingest_bytes: u64,
}

fn leftovers(root: &Path) -> Leftovers {
    let snapshots = std::fs::read_dir(root.join("snapshots/snapshots"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let ingest_bytes = std::fs::read_dir(root.join("content/ingest"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::metadata(e.path().join("data")).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    Leftovers { blobs: content_blobs(root).into_iter().collect(), snapshots, ingest_bytes }
}

/// Waits until `root` holds the blobs and snapshots of `before` again and at most `ingest_bytes` of
/// partial downloads; returns what it holds then.
async fn wait_collected(root: &Path, before: &Leftovers, ingest_bytes: u64, berthd: &Berthd) -> Leftovers {
    let deadline = Instant::now() + GC_HANG_GUARD;
    loop {
        let now = leftovers(root);
        if now.blobs == before.blobs && now.snapshots == before.snapshots && now.ingest_bytes <= ingest_bytes
        {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{GC_HANG_GUARD:?} after the failed pull berth still holds {:?} (before it: {:?}, {} bytes of \
             partial downloads allowed); log:\n{}",
            now,
            before,
            ingest_bytes,
            berthd.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_that_fills_the_disk_gives_its_space_back() {
    let reg = Registry::shared();
    let large = &images().large;
    let busybox = &images().busybox;
    let root = SmallFs::mount("root", (large.layer_bytes() >> 20) * 2 / 3);
    let mut berthd = Berthd::new();
    berthd.trust(reg);
    berthd.config.root = root.path().to_path_buf();
    berthd.start();
    let mut cri = berthd.cri().await;
    let before = leftovers(root.path());
    let used_before = root.used();

    let err =
        cri.pull(&large.reference(&reg.host())).await.expect_err("a pull larger than the disk succeeded");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let named = format!(
        "no space left on the filesystem of {} (tmpfs at {}",
        root.path().display(),
        root.path().display()
    );
    assert!(err.message().starts_with(&named), "the error does not name the full filesystem: {err:?}");

    // On a full disk, nothing is kept for resuming: the partial downloads are what fills it.
    wait_collected(root.path(), &before, 0, &berthd).await;
    let used = root.used();
    // Records written and deleted again may leave the database a few pages longer.
    assert!(
        used <= used_before + (1 << 20),
        "{used} bytes in use after the failed pull, {used_before} before it"
    );

    let id = cri.pull(&busybox.reference(&reg.host())).await.expect("a small pull after the failed one");
    assert_eq!(id, busybox.id());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_failing_half_way_leaves_no_garbage() {
    // Its own registry: the test deletes a blob from it.
    let reg = Registry::plain();
    let large = &images().large;
    reg.push(large);
    let layers = &large.host_manifest().layers;
    let missing = layers.last().expect("layers");
    std::fs::remove_file(reg.blob_data(&missing.digest)).expect("removing a layer from the registry");

    let berthd = Berthd::started(&[&reg]);
    let mut cri = berthd.cri().await;
    let before = leftovers(berthd.root());
    let err = cri.pull(&large.reference(&reg.host())).await.expect_err("a pull of a missing layer succeeded");
    assert!(
        err.message().contains(missing.digest.hex()),
        "the error does not name the missing layer: {err:?}"
    );

    // What the pull completed (blobs, the layers below the missing one unpacked) is referenced by
    // nothing: it goes. Partial downloads stay within what berth keeps for resuming.
    let fs = rustix::fs::statvfs(berthd.root()).expect("statvfs");
    let budget = berth::engine::gc::resume_budget(fs.f_blocks * fs.f_frsize);
    let after = wait_collected(berthd.root(), &before, budget, &berthd).await;

    // Nothing left to collect, and berthctl says exactly that.
    let stats = berthctl_json(berthd.socket(), &["gc"]);
    for field in ["content", "snapshots", "leases", "ingests"] {
        let n = stats.get(field).and_then(|v| v.as_i64()).expect("a count");
        assert_eq!(n, 0, "berthctl gc after berth collected by itself: {stats}");
    }
    assert_eq!(leftovers(berthd.root()), after, "berthctl gc removed something it did not count");
}
