//! A hostNetwork pod: no network namespace of its own and no CNI (no IP allocated, no veth), the
//! host's interfaces visible inside (the test bridge, which only the host has), the node's hostname,
//! and a PodSandboxStatus with no IP and network mode NODE (the kubelet recreates a sandbox whose
//! mode differs from what it asked for).

use berth::cri::api::NamespaceMode;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn host_network_pod_sees_the_hosts_interfaces_and_reports_no_ip() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let net = berthd.net().expect("pod network");
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let pod = berthd.pod("hostnet").host_network();
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let status = cri.pod_status(&pod_id).await.expect("PodSandboxStatus");
    let network = status.network.expect("network status");
    assert_eq!(network.ip, "", "{network:?}");
    assert!(network.additional_ips.is_empty(), "{network:?}");
    let mode = status.linux.and_then(|l| l.namespaces).and_then(|n| n.options).map(|o| o.network);
    assert_eq!(mode, Some(NamespaceMode::Node as i32));
    let during = Leaks::of(&berthd);
    assert!(during.netns.is_empty() && during.ips.is_empty() && during.veths.is_empty(), "{during:#?}");

    let c = pod.container("main", &image).command(&["sleep", "100000"]).build();
    let id = cri.create_start(&pod_id, &pod, c).await.expect("container");
    let links = cri.sh(&id, "ip -o link show").await;
    assert!(
        links.contains(&format!(": {}:", net.bridge)),
        "the host's bridge {} is not visible:\n{links}",
        net.bridge
    );
    let host = nix::unistd::gethostname().expect("hostname").to_string_lossy().into_owned();
    assert_eq!(cri.sh(&id, "hostname").await.trim(), host);

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
