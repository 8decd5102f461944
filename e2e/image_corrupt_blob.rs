//! A registry serving a layer whose bytes do not match its digest: the pull fails, no image is
//! recorded, and berth committed no blob with the bad content (every content blob under root hashes to
//! its name). Once the registry serves the right bytes again, the same pull succeeds.

use crate::harness::fs::{assert_blobs_match_their_names, find_named};
use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_blob_fails_the_pull_and_leaves_nothing() {
    // Its own registry: blobs are shared between repositories, so corrupting one in the shared
    // registry would break other tests.
    let reg = Registry::plain();
    let busybox = &images().busybox;
    reg.push(busybox);
    let layer = &busybox.host_manifest().layers[0];
    let data = reg.blob_data(&layer.digest);
    let good = std::fs::read(&data).unwrap_or_else(|e| panic!("reading {}: {e}", data.display()));
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&data, &bad).unwrap();

    let berthd = Berthd::started(&[&reg]);
    let mut cri = berthd.cri().await;
    let reference = busybox.reference(&reg.host());

    let err = cri.pull(&reference).await.expect_err("pull of a corrupted layer succeeded");
    eprintln!("pull failed as it must: {err:?}");
    assert!(
        cri.status(&reference).await.expect("ImageStatus").is_none(),
        "image recorded after a failed pull"
    );
    assert!(cri.status(&busybox.id()).await.expect("ImageStatus by id").is_none());
    let listed = cri.list().await.expect("ListImages");
    assert!(listed.iter().all(|i| i.id != busybox.id()), "{listed:?}");
    assert_blobs_match_their_names(berthd.root());
    let named = find_named(berthd.root(), layer.digest.hex());
    assert!(named.is_empty(), "files named after the corrupted layer: {named:?}");

    std::fs::write(&data, &good).unwrap();
    let id = cri.pull(&reference).await.expect("pull after the registry was repaired");
    assert_eq!(id, busybox.id());
    let blobs = assert_blobs_match_their_names(berthd.root());
    assert!(
        blobs >= 2,
        "found {blobs} content blobs (<root>/**/sha256/<hex>) after a successful pull: the check above would be \
         vacuous; adjust harness::fs::content_blobs to berth's content layout"
    );
}
