//! A hostPort: the pod declares container port 8080 mapped to a free host port, and 9090 with
//! hostPort 0 (the kubelet sends every declared port; 0 means "not mapped" and must be skipped). A
//! TCP connection from the test process to 127.0.0.1:<host port> reaches the busybox server in the
//! pod (portmap's DNAT in OUTPUT, with route_localnet and masquerade for traffic from localhost).
//! Removing the pod removes portmap's rules.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::leaks::assert_back_to;
use crate::harness::net::free_port;
use crate::harness::{Berthd, Leaks, Registry, images};

/// Connects to `addr` and reads until EOF.
fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn host_port_reaches_the_pod_from_localhost() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let net = berthd.net().expect("pod network");
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let host_port = free_port();
    let pod = berthd.pod("hostport").port(8080, host_port).port(9090, 0);
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let c = pod
        .container("web", &image)
        .command(&["nc", "-ll", "-p", "8080", "-e", "echo", "hello from the pod"])
        .build();
    cri.create_start(&pod_id, &pod, c).await.expect("container");

    let rules = net.iptables_rules();
    assert!(rules.iter().any(|r| r.contains(&format!("--dport {host_port}"))), "no portmap rule: {rules:#?}");
    assert!(!rules.iter().any(|r| r.contains("9090")), "host port 0 was mapped: {rules:#?}");

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::task::spawn_blocking(move || fetch(addr)).await.expect("fetch task") {
            Ok(body) if body.trim() == "hello from the pod" => break,
            other => assert!(Instant::now() < deadline, "127.0.0.1:{host_port} never answered: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
    assert!(fetch(addr).is_err(), "127.0.0.1:{host_port} still answers after the pod is gone");
}
