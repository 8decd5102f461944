//! A layer compressed with zstd (`application/vnd.oci.image.layer.v1.tar+zstd`) pulls like gzip.

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn zstd_layer_pulls() {
    let reg = Registry::shared();
    let zstd = &images().zstd;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let reference = zstd.reference(&reg.host());

    let id = cri.pull(&reference).await.expect("PullImage of a zstd image");
    assert_eq!(id, zstd.id());
    let image = cri.status(&reference).await.expect("ImageStatus").expect("image present after the pull");
    assert_eq!(image.repo_digests, vec![zstd.digest_reference(&reg.host())]);
    assert!(image.size > 0);
}
