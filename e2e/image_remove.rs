//! RemoveImage by ID, by tag and by digest reference; removing one tag of a two-tag image keeps the
//! image under the other tag; removing an image berth does not have succeeds (the kubelet retries).

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn remove_by_id_then_pull_again() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let reference = busybox.reference(&reg.host());
    let id = cri.pull(&reference).await.expect("PullImage");

    cri.remove(&id).await.expect("RemoveImage by id");
    assert!(cri.status(&reference).await.expect("ImageStatus").is_none());
    assert!(cri.status(&id).await.expect("ImageStatus").is_none());
    assert!(cri.list().await.expect("ListImages").iter().all(|i| i.id != id));

    assert_eq!(cri.pull(&reference).await.expect("PullImage after RemoveImage"), id);
    assert!(cri.status(&reference).await.expect("ImageStatus").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_by_tag() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let reference = busybox.reference(&reg.host());
    let id = cri.pull(&reference).await.expect("PullImage");

    cri.remove(&reference).await.expect("RemoveImage by tag");
    assert!(cri.status(&reference).await.expect("ImageStatus").is_none());
    assert!(cri.status(&id).await.expect("ImageStatus").is_none(), "image kept without any name");
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_by_digest_reference() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let reference = busybox.digest_reference(&reg.host());
    let id = cri.pull(&reference).await.expect("PullImage by digest");

    cri.remove(&reference).await.expect("RemoveImage by digest reference");
    assert!(cri.status(&reference).await.expect("ImageStatus").is_none());
    assert!(cri.status(&id).await.expect("ImageStatus").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_one_of_two_tags_keeps_the_other() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let one = busybox.tag_reference(&reg.host(), "1");
    let two = busybox.tag_reference(&reg.host(), "2");
    let id = cri.pull(&one).await.expect("PullImage :1");
    assert_eq!(cri.pull(&two).await.expect("PullImage :2"), id);
    let image = cri.status(&id).await.expect("ImageStatus").expect("image present");
    let mut tags = image.repo_tags.clone();
    tags.sort();
    assert_eq!(tags, vec![one.clone(), two.clone()]);

    cri.remove(&one).await.expect("RemoveImage :1");
    assert!(cri.status(&one).await.expect("ImageStatus").is_none(), "{one} still resolves");
    let image = cri.status(&two).await.expect("ImageStatus").expect("image kept under its other tag");
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags, vec![two.clone()]);
    assert!(cri.status(&id).await.expect("ImageStatus").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_missing_image_succeeds() {
    let reg = Registry::shared();
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let never = images().zstd.reference(&reg.host());
    cri.remove(&never).await.expect("RemoveImage of a never pulled image");
    cri.remove(&format!("sha256:{}", "0".repeat(64))).await.expect("RemoveImage of an unknown id");

    // Twice in a row, as the kubelet does after a timeout.
    let busybox = images().busybox.reference(&reg.host());
    let id = cri.pull(&busybox).await.expect("PullImage");
    cri.remove(&id).await.expect("first RemoveImage");
    cri.remove(&id).await.expect("second RemoveImage");
}
