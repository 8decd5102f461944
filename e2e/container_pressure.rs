//! Pressure stall information (cri-api v0.36: `cpu.psi`, `memory.psi`, `io.psi` in ContainerStats):
//! read from the container's cgroup in the unified hierarchy (beside the v1 controllers on a hybrid
//! host such as this one), and absent where the kernel has no `*.pressure` file for it. The values
//! must be the kernel's: each total lies between two reads of the file around the stats call.

use std::path::PathBuf;

use berth::cri::api::{ContainerStatsRequest, ContainerStatusRequest, PsiStats};

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

/// The container's directory in the unified hierarchy, from its init's /proc/<pid>/cgroup.
fn unified_dir(pid: u64) -> PathBuf {
    let own =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the container's /proc/<pid>/cgroup");
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a unified hierarchy line");
    let root = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/unified"
    };
    PathBuf::from(root).join(path.trim_start_matches('/'))
}

/// The `some` total (µs) of a pressure file, None if the kernel has none.
fn some_total_us(file: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace().find_map(|w| w.strip_prefix("total="))?.parse().ok()
}

fn check(what: &str, dir: &std::path::Path, psi: Option<&PsiStats>, before: Option<u64>) {
    let after = some_total_us(&dir.join(format!("{what}.pressure")));
    match (before, after) {
        (Some(before), Some(after)) => {
            let psi = psi.unwrap_or_else(|| panic!("{what}.pressure exists but no {what} PSI was reported"));
            let total = psi.some.as_ref().expect("a some line").total;
            assert!(
                before * 1000 <= total && total <= after * 1000,
                "{what}: reported {total} ns, the kernel said {before}..{after} µs"
            );
        }
        _ => assert!(psi.is_none(), "{what}: PSI reported without a {what}.pressure file: {psi:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn container_stats_carry_the_kernels_pressure() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("pressure");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let id = cri
        .create_start(&pod_id, &pod, pod.container("busy", &image).sh("while :; do :; done").build())
        .await
        .expect("container");
    let info = cri
        .runtime
        .container_status(ContainerStatusRequest { container_id: id.clone(), verbose: true })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).expect("verbose info");
    let dir = unified_dir(info["pid"].as_u64().expect("the container's pid"));

    let read = |what: &str| some_total_us(&dir.join(format!("{what}.pressure")));
    let (cpu, memory, io) = (read("cpu"), read("memory"), read("io"));
    let stats = cri
        .runtime
        .container_stats(ContainerStatsRequest { container_id: id.clone() })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    check("cpu", &dir, stats.cpu.as_ref().and_then(|c| c.psi.as_ref()), cpu);
    check("memory", &dir, stats.memory.as_ref().and_then(|m| m.psi.as_ref()), memory);
    check("io", &dir, stats.io.as_ref().and_then(|i| i.psi.as_ref()), io);
    eprintln!("unified cgroup {}: cpu {cpu:?} memory {memory:?} io {io:?} µs", dir.display());

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
