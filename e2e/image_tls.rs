//! A registry with a certificate from a private CA: without the CA berth refuses the certificate; with
//! the CA named by `ca` in its hosts.toml the pull succeeds.

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn tls_registry_needs_its_ca_in_hosts_toml() {
    let reg = Registry::with_tls();
    let busybox = &images().busybox;
    reg.push(busybox);
    let mut berthd = Berthd::started(&[]);
    let reference = busybox.reference(&reg.host());

    let mut cri = berthd.cri().await;
    let err = cri.pull(&reference).await.expect_err("pull succeeded without trusting the test CA");
    assert!(err.message().to_lowercase().contains("certificate"), "not a certificate error: {err:?}");
    assert!(cri.status(&reference).await.expect("ImageStatus").is_none());
    drop(cri);

    berthd.trust(&reg);
    berthd.restart();
    let mut cri = berthd.cri().await;
    let id = cri.pull(&reference).await.expect("pull with the test CA in hosts.toml");
    assert_eq!(id, busybox.id());
}
