//! Chaos: berthd is SIGKILLed at a random moment while pods churn through the kubelet's calls
//! (RunPodSandbox, CreateContainer, StartContainer, ExecSync, StopContainer, StopPodSandbox,
//! RemovePodSandbox, three lives at a time), then started again, round after round. After each restart
//! the pod that lives through every round is still ready with its container running, and the kubelet's
//! cleanup (stop and remove every other pod it lists) brings the leak inventory back to what it was: no
//! netns, mount, shim, process, cgroup, IP, veth, portmap rule, per-pod directory, CNI cache entry or
//! rootfs snapshot survives a kill at any point.
//!
//! The kill delays come from a seed printed at the start; `BERTH_CHAOS_SEED=<n>` replays a run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth::cri::api::{ContainerState, PodSandboxState};

use crate::harness::berthd::berthctl_json;
use crate::harness::leaks::{assert_back_to, processes};
use crate::harness::net::free_port;
use crate::harness::pod::PodConfig;
use crate::harness::{Berthd, Cri, Leaks, Registry, images};

const ROUNDS: u64 = 8;
const WORKERS: usize = 3;

/// xorshift64*: enough to spread kill points, and replayable from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// One pod's whole life; the first failed call ends it (berthd was killed under it).
async fn life(cri: &mut Cri, pod: PodConfig, image: &str) -> Result<(), String> {
    let pod = pod.port(8080, free_port());
    let id = cri.run_pod(&pod).await.map_err(|e| format!("RunPodSandbox: {e:?}"))?;
    let c = pod.container("main", image).sh("trap 'exit 0' TERM; sleep 100000 & wait").build();
    let c = cri.create_start(&id, &pod, c).await.map_err(|e| format!("container: {e:?}"))?;
    cri.exec(&c, &["true"], 10).await.map_err(|e| format!("ExecSync: {e:?}"))?;
    cri.stop(&c, 10).await.map_err(|e| format!("StopContainer: {e:?}"))?;
    cri.stop_remove_pod(&id).await.map_err(|e| format!("stop/remove: {e:?}"))
}

/// The keys of the active (writable, container rootfs) snapshots, as `berthctl snapshots ls` lists them.
fn active_snapshots(berthd: &Berthd) -> Vec<String> {
    let v = berthctl_json(berthd.socket(), &["snapshots", "ls"]);
    let mut keys: Vec<String> = v["snapshots"]
        .as_array()
        .expect("a snapshot list")
        .iter()
        .filter(|s| s["kind"] != "committed")
        .map(|s| s["key"].as_str().unwrap_or_default().to_string())
        .collect();
    keys.sort();
    keys
}

/// Waits until no CNI plugin works on a network namespace of `berthd`: one orphaned by the kill
/// finishes its ADD or DEL against the old state, and its leftovers must be in the inventory.
async fn orphaned_plugins_done(berthd: &Berthd) {
    let netns = berthd.state().join("netns");
    let netns = format!("CNI_NETNS={}", netns.display());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy: Vec<i32> = processes()
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{}/environ", p.pid))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v.starts_with(netns.as_bytes())))
            })
            .map(|p| p.pid)
            .collect();
        if busy.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "CNI plugins {busy:?} still running a minute after the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_of_pod_churn_leaves_nothing_behind() {
    let seed = std::env::var("BERTH_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("pod_chaos: BERTH_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);

    let reg = Registry::shared();
    let mut berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    // A pod that lives through every kill: restart recovery must keep it and its container.
    let keeper_pod = berthd.pod("keeper");
    let keeper = cri.run_pod(&keeper_pod).await.expect("RunPodSandbox keeper");
    let keeper_config = keeper_pod.container("main", &image).command(&["sleep", "100000"]).build();
    let keeper_c = cri.create_start(&keeper, &keeper_pod, keeper_config).await.expect("keeper container");
    let with_keeper = Leaks::of(&berthd);
    let keeper_snapshots = active_snapshots(&berthd);
    assert_eq!(keeper_snapshots.len(), 2, "the keeper's pause and container rootfs: {keeper_snapshots:?}");

    let mut lives_done = 0;
    for round in 0..ROUNDS {
        let running = Arc::new(AtomicBool::new(true));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (mut cri, image, running) = (cri.clone(), image.clone(), running.clone());
                let pods: Vec<_> = (0..100).map(|n| berthd.pod(&format!("chaos-{round}-{w}-{n}"))).collect();
                tokio::spawn(async move {
                    let mut done = 0;
                    for pod in pods {
                        if !running.load(Ordering::Relaxed) || life(&mut cri, pod, &image).await.is_err() {
                            break;
                        }
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let delay = Duration::from_millis(300 + rng.below(4000));
        tokio::time::sleep(delay).await;
        berthd.kill9();
        running.store(false, Ordering::Relaxed);
        for w in workers {
            lives_done += tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .unwrap_or_else(|_| panic!("round {round}: a worker hung after the kill"))
                .expect("worker task");
        }
        berthd.start();
        orphaned_plugins_done(&berthd).await;
        cri = berthd.cri().await;

        // The keeper came through.
        let status = cri.pod_status(&keeper).await.expect("PodSandboxStatus keeper");
        assert_eq!(
            status.state,
            PodSandboxState::SandboxReady as i32,
            "round {round} (killed after {delay:?})"
        );
        let c = cri.container_status(&keeper_c).await.expect("ContainerStatus keeper");
        assert_eq!(c.state, ContainerState::ContainerRunning as i32, "round {round}: {c:?}");

        // The kubelet's cleanup of what it no longer wants: everything else.
        for p in cri.pods().await.expect("ListPodSandbox") {
            if p.id != keeper {
                cri.stop_remove_pod(&p.id)
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: removing {}: {e:?}", p.id));
            }
        }
        let left: Vec<String> = cri
            .containers()
            .await
            .expect("ListContainers")
            .into_iter()
            .map(|c| c.id)
            .filter(|id| *id != keeper_c)
            .collect();
        assert!(left.is_empty(), "round {round}: containers outlived their pods: {left:?}");
        assert_back_to(&berthd, &with_keeper);
        assert_eq!(active_snapshots(&berthd), keeper_snapshots, "round {round}: rootfs snapshots leaked");
    }
    eprintln!("pod_chaos: {ROUNDS} kills, {lives_done} whole pod lives in between");

    // And berthd still works: a new pod lives, the keeper goes.
    let pod = berthd.pod("after-chaos");
    life(&mut cri, pod, &image).await.expect("a pod life after the last restart");
    cri.stop_remove_pod(&keeper).await.expect("removing the keeper");
    assert_back_to(&berthd, &before);
}
