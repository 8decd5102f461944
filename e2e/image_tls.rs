//! A registry with a certificate from a private CA: with hosts.toml saying `https` but naming no CA,
//! berth refuses the certificate; with the CA named by `ca` the pull succeeds. The scheme is explicit
//! in both steps, so a plain-HTTP default for 127.0.0.1 (as containerd has) cannot hide the CA check.

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn tls_registry_needs_its_ca_in_hosts_toml() {
    let reg = Registry::with_tls();
    let busybox = &images().busybox;
    reg.push(busybox);
    let mut berthd = Berthd::new();
    berthd.write_hosts_toml(&reg.host(), &format!("server = \"{}\"\n", reg.url()));
    berthd.start();
    let reference = busybox.reference(&reg.host());

    let mut cri = berthd.cri().await;
    let err = cri.pull(&reference).await.expect_err("pull succeeded without trusting the test CA");
    assert!(err.message().to_lowercase().contains("certificate"), "not a certificate error: {err:?}");
    assert!(cri.status(&reference).await.expect("ImageStatus").is_none());
    drop(cri);

    // Restarted so the test does not depend on when berth reads hosts.toml.
    berthd.trust(&reg);
    assert!(reg.hosts_toml().contains("ca = "));
    berthd.restart();
    let mut cri = berthd.cri().await;
    let id = cri.pull(&reference).await.expect("pull with the test CA in hosts.toml");
    assert_eq!(id, busybox.id());
}
