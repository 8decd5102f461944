//! The stats the kubelet's eviction manager and `kubectl top` read: ContainerStats,
//! ListContainerStats, PodSandboxStats and ListPodSandboxStats. A container spinning on a CPU shows
//! its cumulative usage growing and a non-zero rate on the second sample; 40 MiB written to
//! /dev/shm (charged to the writer's memory cgroup) grows the working set by about that much; a file
//! written to the rootfs grows the writable layer; a pod's eth0 counts the traffic of a ping to its
//! gateway; the pod's totals cover its containers. Filters by id, sandbox id and labels select what
//! they name, created and exited containers are listed too (without CPU and memory), and unknown or
//! removed ids are NotFound.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use berth::cri::api::{
    ContainerStats, ContainerStatsFilter, ContainerStatsRequest, ListContainerStatsRequest,
    ListPodSandboxStatsRequest, NetworkInterfaceUsage, PodSandboxStats, PodSandboxStatsFilter,
    PodSandboxStatsRequest,
};
use tonic::Code;

use crate::harness::cri::Cri;
use crate::harness::leaks::assert_back_to;
use crate::harness::pod::{CONTAINER_NAME, POD_UID};
use crate::harness::{Berthd, Leaks, Registry, images};

const MIB: u64 = 1 << 20;

async fn container_stats(cri: &mut Cri, id: &str) -> ContainerStats {
    cri.runtime
        .container_stats(ContainerStatsRequest { container_id: id.into() })
        .await
        .unwrap_or_else(|e| panic!("ContainerStats {id}: {e:?}"))
        .into_inner()
        .stats
        .unwrap_or_else(|| panic!("ContainerStats {id}: no stats in the answer"))
}

async fn pod_stats(cri: &mut Cri, id: &str) -> PodSandboxStats {
    cri.runtime
        .pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: id.into() })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStats {id}: {e:?}"))
        .into_inner()
        .stats
        .unwrap_or_else(|| panic!("PodSandboxStats {id}: no stats in the answer"))
}

/// The container ids ListContainerStats answers for `filter`.
async fn listed_containers(cri: &mut Cri, filter: ContainerStatsFilter) -> BTreeSet<String> {
    let stats = cri
        .runtime
        .list_container_stats(ListContainerStatsRequest { filter: Some(filter.clone()) })
        .await
        .unwrap_or_else(|e| panic!("ListContainerStats {filter:?}: {e:?}"))
        .into_inner()
        .stats;
    stats.into_iter().map(|s| s.attributes.expect("attributes").id).collect()
}

/// The sandbox ids ListPodSandboxStats answers for `filter`.
async fn listed_pods(cri: &mut Cri, filter: Option<PodSandboxStatsFilter>) -> BTreeSet<String> {
    let stats = cri
        .runtime
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: filter.clone() })
        .await
        .unwrap_or_else(|e| panic!("ListPodSandboxStats {filter:?}: {e:?}"))
        .into_inner()
        .stats;
    stats.into_iter().map(|s| s.attributes.expect("attributes").id).collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn cpu_total(s: &ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value)
        .unwrap_or_else(|| panic!("no CPU usage: {s:?}"))
}

fn working_set(s: &ContainerStats) -> u64 {
    s.memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value)
        .unwrap_or_else(|| panic!("no working set: {s:?}"))
}

/// (bytes, inodes) of the writable layer.
fn layer(s: &ContainerStats) -> (u64, u64) {
    let w = s.writable_layer.as_ref().unwrap_or_else(|| panic!("no writable layer: {s:?}"));
    assert!(w.fs_id.as_ref().is_some_and(|f| !f.mountpoint.is_empty()), "no fs_id: {w:?}");
    (
        w.used_bytes.as_ref().map(|v| v.value).unwrap_or(0),
        w.inodes_used.as_ref().map(|v| v.value).unwrap_or(0),
    )
}

/// (rx, tx) bytes of an interface.
fn rx_tx(i: &NetworkInterfaceUsage) -> (u64, u64) {
    (i.rx_bytes.as_ref().map(|v| v.value).unwrap_or(0), i.tx_bytes.as_ref().map(|v| v.value).unwrap_or(0))
}

/// eth0's (rx, tx) as PodSandboxStats reports it, as the default interface and in the list.
fn eth0(s: &PodSandboxStats) -> (u64, u64) {
    let net = s
        .linux
        .as_ref()
        .and_then(|l| l.network.as_ref())
        .unwrap_or_else(|| panic!("no network stats: {s:?}"));
    let default = net.default_interface.as_ref().unwrap_or_else(|| panic!("no default interface: {net:?}"));
    assert_eq!(default.name, "eth0", "{net:?}");
    let listed = net
        .interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .unwrap_or_else(|| panic!("eth0 not listed: {net:?}"));
    assert_eq!(rx_tx(listed), rx_tx(default), "{net:?}");
    rx_tx(default)
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_memory_layer_and_network_with_filters() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let gateway = berthd.net().expect("pod network").gateway();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let pod = berthd.pod("stats");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let sleeper = |name: &str| pod.container(name, &image).command(&["sleep", "100000"]).build();
    let burn = pod.container("burn", &image).sh("while :; do :; done").build();
    let burn = cri.create_start(&pod_id, &pod, burn).await.expect("container burn");
    let mem = cri.create_start(&pod_id, &pod, sleeper("mem")).await.expect("container mem");
    let disk = cri.create_start(&pod_id, &pod, sleeper("disk")).await.expect("container disk");
    let other = berthd.pod("other");
    let other_id = cri.run_pod(&other).await.expect("RunPodSandbox other");
    let idle = other.container("idle", &image).command(&["sleep", "100000"]).build();
    let idle = cri.create_start(&other_id, &other, idle).await.expect("container idle");

    // CPU: the cumulative usage grows (by a fraction of a core at least: other work shares the CPUs);
    // the rate needs two samples.
    let first = container_stats(&mut cri, &burn).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = container_stats(&mut cri, &burn).await;
    let (u1, u2) = (cpu_total(&first), cpu_total(&second));
    assert!(u2 >= u1 + 200_000_000, "2 s of spinning added only {} ns of CPU", u2.saturating_sub(u1));
    let cpu = second.cpu.as_ref().expect("cpu");
    assert!(cpu.timestamp > first.cpu.as_ref().expect("cpu").timestamp, "{first:?} then {second:?}");
    let rate = cpu.usage_nano_cores.as_ref().map(|v| v.value).unwrap_or(0);
    let cores = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    assert!(
        rate >= 50_000_000 && rate <= cores * 1_100_000_000,
        "usage_nano_cores {rate} of a spinning container"
    );
    // The pod's CPU covers it.
    let p1 = pod_stats(&mut cri, &pod_id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p2 = pod_stats(&mut cri, &pod_id).await;
    let pod_cpu = |p: &PodSandboxStats| {
        p.linux.as_ref().and_then(|l| l.cpu).unwrap_or_else(|| panic!("no pod CPU: {p:?}"))
    };
    let pod_total = |p: &PodSandboxStats| pod_cpu(p).usage_core_nano_seconds.map(|v| v.value).unwrap_or(0);
    assert!(pod_total(&p1) >= u2, "the pod used less CPU ({}) than its container ({u2})", pod_total(&p1));
    assert!(pod_total(&p2) > pod_total(&p1), "{p1:?} then {p2:?}");
    let pod_rate = pod_cpu(&p2).usage_nano_cores.map(|v| v.value).unwrap_or(0);
    assert!(pod_rate >= 50_000_000, "the pod's usage_nano_cores {pod_rate} with a spinning container");
    let containers: BTreeSet<String> = p2
        .linux
        .as_ref()
        .expect("linux")
        .containers
        .iter()
        .map(|c| c.attributes.as_ref().expect("attributes").id.clone())
        .collect();
    assert_eq!(containers, set(&[&burn, &mem, &disk]));
    let attributes = p2.attributes.as_ref().expect("pod attributes");
    assert_eq!(
        (attributes.id.as_str(), attributes.metadata.as_ref()),
        (pod_id.as_str(), pod.config.metadata.as_ref())
    );
    assert_eq!(attributes.labels, pod.config.labels);
    // Stopped, it is still listed, with its layer but without CPU and memory (as containerd).
    cri.stop(&burn, 0).await.expect("StopContainer burn");
    let stopped = container_stats(&mut cri, &burn).await;
    assert!(stopped.cpu.is_none() && stopped.memory.is_none(), "{stopped:?}");
    assert!(stopped.writable_layer.is_some(), "{stopped:?}");

    // Memory: 40 MiB in /dev/shm, written by a process in the container's cgroup.
    let before_ws = working_set(&container_stats(&mut cri, &mem).await);
    cri.sh(&mem, "dd if=/dev/zero of=/dev/shm/f bs=1M count=40 2>/dev/null").await;
    let after_ws = working_set(&container_stats(&mut cri, &mem).await);
    let grown = after_ws.saturating_sub(before_ws);
    assert!(
        (36 * MIB..=60 * MIB).contains(&grown),
        "40 MiB in /dev/shm grew the working set from {before_ws} to {after_ws}"
    );
    let pod_ws = pod_stats(&mut cri, &pod_id)
        .await
        .linux
        .and_then(|l| l.memory)
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(pod_ws >= after_ws, "the pod's working set {pod_ws} is below its container's {after_ws}");

    // Writable layer: a 20 MiB file in the rootfs (measured at most every few seconds: poll).
    let (bytes0, inodes0) = layer(&container_stats(&mut cri, &disk).await);
    cri.sh(&disk, "dd if=/dev/zero of=/fill bs=1M count=20 2>/dev/null && sync").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (bytes, inodes) = layer(&container_stats(&mut cri, &disk).await);
        if bytes >= bytes0 + 20 * MIB && inodes > inodes0 {
            assert!(bytes < bytes0 + 30 * MIB, "a 20 MiB file grew the layer from {bytes0} to {bytes}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the writable layer stayed at {bytes} bytes, {inodes} inodes (was {bytes0}, {inodes0}) after a 20 MiB file"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Network: five 1000-byte pings to the gateway and back on the pod's eth0.
    let (rx0, tx0) = eth0(&pod_stats(&mut cri, &pod_id).await);
    cri.sh(&disk, &format!("ping -c 5 -i 0.2 -s 1000 -W 2 {gateway}")).await;
    let (rx1, tx1) = eth0(&pod_stats(&mut cri, &pod_id).await);
    assert!(
        rx1 >= rx0 + 4000 && tx1 >= tx0 + 4000,
        "eth0 went from rx {rx0} tx {tx0} to rx {rx1} tx {tx1} after 5 KB of pings each way"
    );
    // The other pod has a network of its own that saw none of it.
    let (other_rx, other_tx) = eth0(&pod_stats(&mut cri, &other_id).await);
    assert!(other_rx < 5000 && other_tx < 5000, "the other pod's eth0: rx {other_rx} tx {other_tx}");

    // A container created but not started is listed too (the kubelet's summary expects every
    // listed container), with its layer and without CPU and memory.
    let created = cri.create(&pod_id, &pod, sleeper("created")).await.expect("CreateContainer created");
    let c = container_stats(&mut cri, &created).await;
    assert!(c.cpu.is_none() && c.memory.is_none() && c.writable_layer.is_some(), "{c:?}");

    // Filters.
    let all = set(&[&burn, &mem, &disk, &created, &idle]);
    assert_eq!(listed_containers(&mut cri, ContainerStatsFilter::default()).await, all);
    let by_pod = |id: &str| ContainerStatsFilter { pod_sandbox_id: id.into(), ..Default::default() };
    assert_eq!(listed_containers(&mut cri, by_pod(&pod_id)).await, set(&[&burn, &mem, &disk, &created]));
    assert_eq!(listed_containers(&mut cri, by_pod(&other_id)).await, set(&[&idle]));
    let by_id = ContainerStatsFilter { id: mem.clone(), ..Default::default() };
    assert_eq!(listed_containers(&mut cri, by_id).await, set(&[&mem]));
    let by_label = ContainerStatsFilter {
        label_selector: HashMap::from([(CONTAINER_NAME.to_string(), "disk".to_string())]),
        ..Default::default()
    };
    assert_eq!(listed_containers(&mut cri, by_label).await, set(&[&disk]));
    let by_uid = ContainerStatsFilter {
        label_selector: HashMap::from([(POD_UID.to_string(), other.uid().to_string())]),
        ..Default::default()
    };
    assert_eq!(listed_containers(&mut cri, by_uid).await, set(&[&idle]));
    let nothing = ContainerStatsFilter { pod_sandbox_id: "0123456789abcdef".into(), ..Default::default() };
    assert!(listed_containers(&mut cri, nothing).await.is_empty());

    assert_eq!(listed_pods(&mut cri, None).await, set(&[&pod_id, &other_id]));
    let by_id = PodSandboxStatsFilter { id: other_id.clone(), ..Default::default() };
    assert_eq!(listed_pods(&mut cri, Some(by_id)).await, set(&[&other_id]));
    let by_label = PodSandboxStatsFilter {
        label_selector: HashMap::from([("app".to_string(), "stats".to_string())]),
        ..Default::default()
    };
    assert_eq!(listed_pods(&mut cri, Some(by_label)).await, set(&[&pod_id]));
    let by_uid = PodSandboxStatsFilter {
        label_selector: HashMap::from([(POD_UID.to_string(), other.uid().to_string())]),
        ..Default::default()
    };
    assert_eq!(listed_pods(&mut cri, Some(by_uid)).await, set(&[&other_id]));
    let none = PodSandboxStatsFilter {
        label_selector: HashMap::from([("app".to_string(), "nope".to_string())]),
        ..Default::default()
    };
    assert!(listed_pods(&mut cri, Some(none)).await.is_empty());

    // Unknown ids.
    let unknown = "0123456789abcdef0123456789abcdef";
    let err = cri
        .runtime
        .container_stats(ContainerStatsRequest { container_id: unknown.into() })
        .await
        .expect_err("ContainerStats of an unknown id");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = cri
        .runtime
        .pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: unknown.into() })
        .await
        .expect_err("PodSandboxStats of an unknown id");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Gone once removed.
    cri.stop_remove_pod(&other_id).await.expect("stop and remove the other pod");
    let err = cri
        .runtime
        .container_stats(ContainerStatsRequest { container_id: idle.clone() })
        .await
        .expect_err("ContainerStats of a removed container");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(listed_pods(&mut cri, None).await, set(&[&pod_id]));

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
