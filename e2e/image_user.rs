//! The image config's `User` reaches ImageStatus: a numeric user as `uid`, a name as `username`
//! (the kubelet uses them for runAsNonRoot checks).

use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn numeric_user_is_reported_as_uid_and_name_as_username() {
    let reg = Registry::shared();
    let berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;

    let user = images().user.reference(&reg.host());
    cri.pull(&user).await.expect("PullImage e2e/user");
    let image = cri.status(&user).await.expect("ImageStatus").expect("e2e/user present");
    assert_eq!(image.uid.map(|u| u.value), Some(1000), "{image:?}");
    assert_eq!(image.username, "");

    let username = images().username.reference(&reg.host());
    cri.pull(&username).await.expect("PullImage e2e/username");
    let image = cri.status(&username).await.expect("ImageStatus").expect("e2e/username present");
    assert_eq!(image.uid, None, "{image:?}");
    assert_eq!(image.username, "app");
}
