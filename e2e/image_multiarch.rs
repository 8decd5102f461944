//! Pulling an OCI index picks this host's platform: the image ID is that platform's config digest,
//! and the repo digest is the index's.

use berth::engine::oci::Platform;

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn multiarch_pull_takes_the_host_platform() {
    let reg = Registry::shared();
    let multiarch = &images().multiarch;
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let reference = multiarch.reference(&reg.host());

    let id = cri.pull(&reference).await.expect("PullImage");
    let host = multiarch.for_platform(&Platform::host());
    assert_eq!(id, host.config.to_string(), "not the {:?} config", Platform::host());
    for other in multiarch.manifests.iter().filter(|m| m.digest != host.digest) {
        assert_ne!(id, other.config.to_string(), "pulled {:?}", other.platform);
    }
    let image = cri.status(&reference).await.expect("ImageStatus").expect("image present after the pull");
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags, vec![reference.clone()]);
    assert_eq!(image.repo_digests, vec![multiarch.digest_reference(&reg.host())]);
}
