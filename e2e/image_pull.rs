//! PullImage by tag and by digest: the returned ref is `sha256:<config digest>`, and ImageStatus (by
//! reference and by ID) and ListImages show the image with its tag, its repo digest and a size.

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_tag_reports_the_config_digest_and_status() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let reference = busybox.reference(&reg.host());

    assert!(cri.status(&reference).await.expect("ImageStatus").is_none(), "image present before the pull");
    let id = cri.pull(&reference).await.expect("PullImage");
    assert_eq!(id, busybox.id());

    let image = cri.status(&reference).await.expect("ImageStatus").expect("image present after the pull");
    assert_eq!(image.id, busybox.id());
    assert_eq!(image.repo_tags, vec![reference.clone()]);
    assert_eq!(image.repo_digests, vec![busybox.digest_reference(&reg.host())]);
    assert!(image.size > 0, "{image:?}");

    // The kubelet looks images up by ID as well.
    let by_id = cri.status(&id).await.expect("ImageStatus by id").expect("image found by id");
    assert_eq!(by_id, image);
    let listed = cri.list().await.expect("ListImages");
    assert!(listed.contains(&image), "{listed:?}");

    // Pulling again is a no-op with the same answer.
    assert_eq!(cri.pull(&reference).await.expect("second PullImage"), id);
    assert_eq!(cri.list().await.expect("ListImages").len(), listed.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_digest_records_the_repo_digest() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let reference = busybox.digest_reference(&reg.host());

    let id = cri.pull(&reference).await.expect("PullImage by digest");
    assert_eq!(id, busybox.id());
    let image = cri.status(&reference).await.expect("ImageStatus").expect("image present after the pull");
    assert_eq!(image.id, id);
    assert_eq!(image.repo_digests, vec![reference.clone()]);
    assert!(image.repo_tags.is_empty(), "a pull by digest names no tag: {:?}", image.repo_tags);
    assert!(image.size > 0);
    let listed = cri.list().await.expect("ListImages");
    assert!(listed.iter().any(|i| i.id == id), "{listed:?}");
}
