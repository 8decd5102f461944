//! Two clients pulling the same large image at once both succeed with the same image ID, and the
//! store stays consistent.

use crate::harness::fs::assert_blobs_match_their_names;
use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_one_image_both_succeed() {
    let reg = Registry::shared();
    let large = &images().large;
    let berthd = Berthd::started(&[reg]);
    let (mut a, mut b) = (berthd.cri().await, berthd.cri().await);
    let reference = large.reference(&reg.host());

    let (ra, rb) = tokio::join!(a.pull(&reference), b.pull(&reference));
    assert_eq!(ra.expect("first concurrent pull"), large.id());
    assert_eq!(rb.expect("second concurrent pull"), large.id());
    let image = a.status(&reference).await.expect("ImageStatus").expect("image present");
    assert_eq!(image.repo_tags, vec![reference.clone()]);
    let listed = a.list().await.expect("ListImages");
    assert_eq!(listed.iter().filter(|i| i.id == large.id()).count(), 1, "{listed:?}");
    assert_blobs_match_their_names(berthd.root());
}
