//! Who a container runs as: the image's `User "app"` resolved through the image's /etc/passwd
//! (uid and gid 1000); `runAsUsername` resolved the same way and overriding the image's user; a
//! numeric `runAsUser` without any passwd; a name the image does not have is refused; and capabilities (drop ALL, add NET_ADMIN)
//! are exactly what /proc/self/status shows as effective.

use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

/// CAP_NET_ADMIN is capability 12.
const NET_ADMIN_ONLY: u64 = 1 << 12;

/// The `CapEff` mask of /proc/self/status output.
fn cap_eff(status: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or_else(|| panic!("no CapEff in {status}"))
        .trim();
    u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("CapEff {hex:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn image_user_run_as_username_and_capabilities() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let all = images();
    let username = cri.pull(&all.username.reference(&reg.host())).await.expect("PullImage e2e/username");
    let user = cri.pull(&all.user.reference(&reg.host())).await.expect("PullImage e2e/user");
    let busybox = cri.pull(&all.busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let pod = berthd.pod("users");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");

    // The image says `User "app"`: 1000:1000 from its /etc/passwd.
    let c = pod.container("by-image", &username).command(&["sleep", "100000"]).build();
    let id = cri.create_start(&pod_id, &pod, c).await.expect("container by-image");
    assert_eq!(cri.sh(&id, "id -u; id -g").await, "1000\n1000\n");

    // runAsUsername overrides the image's `User "1000"`, looked up in the image's passwd.
    let c = pod.container("as-root", &user).command(&["sleep", "100000"]).run_as_username("root").build();
    let id = cri.create_start(&pod_id, &pod, c).await.expect("container as-root");
    assert_eq!(cri.sh(&id, "id -u").await, "0\n");

    // A numeric runAsUser needs no passwd entry.
    let c = pod.container("numeric", &busybox).command(&["sleep", "100000"]).run_as_user(1234).build();
    let id = cri.create_start(&pod_id, &pod, c).await.expect("container numeric");
    assert_eq!(cri.sh(&id, "id -u").await, "1234\n");

    // busybox has no /etc/passwd: a user name cannot be resolved.
    let c = pod.container("nobody", &busybox).command(&["sleep", "100000"]).run_as_username("app").build();
    let err = match cri.create(&pod_id, &pod, c).await {
        Ok(id) => cri.start(&id).await.expect_err("a container ran as a user its image does not have"),
        Err(e) => e,
    };
    assert_ne!(err.code(), Code::Ok);
    assert!(err.message().contains("app"), "the error does not name the user: {err:?}");

    let c = pod
        .container("caps", &busybox)
        .command(&["sleep", "100000"])
        .capabilities(&["NET_ADMIN"], &["ALL"])
        .build();
    let id = cri.create_start(&pod_id, &pod, c).await.expect("container caps");
    let status = cri.sh(&id, "cat /proc/self/status").await;
    assert_eq!(cap_eff(&status), NET_ADMIN_ONLY, "{status}");
    // NET_ADMIN really works in the pod's network namespace: change the loopback's MTU and back.
    cri.sh(&id, "ip link set lo mtu 1500 && ip link set lo mtu 65536").await;

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
