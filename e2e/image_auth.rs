//! A registry requiring basic auth: no credentials fails saying so, a wrong password fails, and the
//! right password in PullImageRequest.auth (as the kubelet passes an image pull secret) succeeds.
//! Those credentials go to that registry only: a mirror in front of it, with credentials of its own,
//! never receives them (a recording proxy shows every Authorization header that reached it), refuses
//! the pull, and the pull falls back to the registry, where they work.

use crate::harness::cri::basic_auth;
use crate::harness::registry::{Recorded, RecordingProxy};
use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn pull_needs_the_right_credentials() {
    let reg = Registry::with_auth();
    let busybox = &images().busybox;
    reg.push(busybox);
    let creds = reg.creds().expect("auth registry").clone();
    let berthd = Berthd::started(&[&reg]);
    let mut cri = berthd.cri().await;
    let reference = busybox.reference(&reg.host());

    let err = cri.pull(&reference).await.expect_err("pull without credentials succeeded");
    assert!(err.message().to_lowercase().contains("auth"), "error does not mention authentication: {err:?}");
    assert!(cri.status(&reference).await.expect("ImageStatus").is_none());

    let wrong = basic_auth(&creds.username, "not-the-password");
    cri.pull_with(&reference, Some(wrong)).await.expect_err("pull with a wrong password succeeded");
    assert!(cri.status(&reference).await.expect("ImageStatus").is_none());

    let right = basic_auth(&creds.username, &creds.password);
    let id = cri.pull_with(&reference, Some(right)).await.expect("pull with the right password");
    assert_eq!(id, busybox.id());
    assert!(cri.status(&reference).await.expect("ImageStatus").is_some());
}

// Issue 8 item 7.
#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_never_sees_the_upstreams_credentials() {
    let upstream = Registry::with_auth();
    let mirror = Registry::with_credentials("mirror-user", "mirror-only-secret");
    let busybox = &images().busybox;
    upstream.push(busybox);
    // The mirror has the image: only its own credentials would get it out.
    mirror.push(busybox);
    let proxy = RecordingProxy::start(&mirror);
    let mut berthd = Berthd::new();
    berthd.write_hosts_toml(
        &upstream.host(),
        &format!(
            "server = \"{}\"\n\n[host.\"{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            upstream.url(),
            proxy.url()
        ),
    );
    berthd.start();
    let mut cri = berthd.cri().await;
    let reference = busybox.reference(&upstream.host());
    let creds = upstream.creds().expect("auth registry").clone();

    let id = cri
        .pull_with(&reference, Some(basic_auth(&creds.username, &creds.password)))
        .await
        .expect("the pull falls back to the upstream");
    assert_eq!(id, busybox.id());
    let seen = proxy.requests();
    assert!(!seen.is_empty(), "the mirror was never asked");
    let sent: Vec<&Recorded> = seen.iter().filter(|r| r.authorization.is_some()).collect();
    assert!(sent.is_empty(), "the mirror received credentials: {sent:?}");
}
