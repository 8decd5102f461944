//! A mirror from `certs.d/<host>/hosts.toml`: pulling a name whose registry does not even resolve
//! succeeds through the mirror, and the image is listed under the name that was asked for.

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn pull_through_a_mirror_while_upstream_is_unreachable() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let upstream = "unreachable.invalid:5000";
    let mut berthd = Berthd::new();
    berthd.write_hosts_toml(
        upstream,
        &format!(
            "server = \"http://{upstream}\"\n\n[host.\"{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            reg.url()
        ),
    );
    berthd.start();
    let mut cri = berthd.cri().await;
    let reference = busybox.reference(upstream);

    let id = cri.pull(&reference).await.expect("PullImage through the mirror");
    assert_eq!(id, busybox.id());
    let image =
        cri.status(&reference).await.expect("ImageStatus").expect("image listed under the upstream name");
    assert_eq!(image.repo_tags, vec![reference.clone()]);
    assert_eq!(image.repo_digests, vec![busybox.digest_reference(upstream)]);
    let mirror_name = busybox.reference(&reg.host());
    assert!(cri.status(&mirror_name).await.expect("ImageStatus").is_none(), "listed under the mirror's name");
}
