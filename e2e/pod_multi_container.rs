//! Two containers in one pod share the pod's UTS and network namespaces: the same hostname, the same
//! IP on eth0 (the one PodSandboxStatus reports, from the test subnet, with the bridge as default
//! gateway), and the same localhost, so one reaches the other's TCP server on 127.0.0.1. Removing the pod leaves nothing behind.

use std::time::{Duration, Instant};

use berth::cri::api::{ContainerState, NamespaceMode, PodSandboxState};

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn containers_of_a_pod_share_hostname_ip_and_localhost() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let net = berthd.net().expect("pod network");
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let pod = berthd.pod("multi");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let status = cri.pod_status(&pod_id).await.expect("PodSandboxStatus");
    // What the kubelet reads back and compares: metadata, labels, the network mode and the IP.
    assert_eq!(status.metadata.as_ref(), pod.config.metadata.as_ref());
    assert_eq!(status.labels, pod.config.labels);
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    let mode = status.linux.and_then(|l| l.namespaces).and_then(|n| n.options).map(|o| o.network);
    assert_eq!(mode, Some(NamespaceMode::Pod as i32));
    let ip = status.network.expect("network status").ip;
    assert!(ip.starts_with(&net.prefix), "pod IP {ip:?} is not in {}", net.subnet);

    let server = pod
        .container("server", &image)
        .command(&["nc"])
        .args(&["-ll", "-p", "8080", "-e", "echo", "hi"])
        .build();
    let (labels, annotations) = (server.labels.clone(), server.annotations.clone());
    let server = cri.create_start(&pod_id, &pod, server).await.expect("server container");
    // Labels and annotations come back unchanged: the kubelet restores pod specs from them.
    let s = cri.container_status(&server).await.expect("ContainerStatus");
    assert_eq!((&s.labels, &s.annotations), (&labels, &annotations));
    assert_eq!(s.state, ContainerState::ContainerRunning as i32);
    assert_eq!(s.image_id, image);
    assert!(!s.image_ref.is_empty() && s.started_at > 0, "{s:?}");
    let client = pod.container("client", &image).command(&["sleep", "100000"]).build();
    let client = cri.create_start(&pod_id, &pod, client).await.expect("client container");

    for c in [&server, &client] {
        assert_eq!(cri.sh(c, "hostname").await.trim(), "multi", "hostname in {c}");
        let addr = cri.sh(c, "ip -4 -o addr show dev eth0").await;
        assert!(addr.contains(&format!("inet {ip}/24")), "eth0 of {c} lacks the pod IP {ip}: {addr}");
        let routes = cri.sh(c, "ip route").await;
        assert!(
            routes.contains(&format!("default via {}", net.gateway())),
            "no route via the bridge in {c}: {routes}"
        );
    }

    // The server may still be starting: retry the connection for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = cri.exec(&client, &["nc", "-w", "2", "127.0.0.1", "8080"], 10).await.expect("ExecSync nc");
        if String::from_utf8_lossy(&r.stdout).trim() == "hi" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client never reached the server over localhost: exit {}, stdout {:?}, stderr {:?}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert!(cri.pods().await.expect("ListPodSandbox").is_empty());
    assert!(cri.containers().await.expect("ListContainers").is_empty());
    assert_back_to(&berthd, &before);
}
