//! A registry requiring basic auth: no credentials fails saying so, a wrong password fails, and the
//! right password in PullImageRequest.auth (as the kubelet passes an image pull secret) succeeds.

use crate::harness::cri::basic_auth;
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
