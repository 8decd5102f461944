//! berthd dies (SIGKILL) under five running pods, and one container dies while berthd is down. The
//! shims keep the pods alive; the restarted berthd lists all five pods READY, the killed container
//! EXITED with its exit code (137), the other four RUNNING and answering ExecSync; afterwards every
//! pod stops and is removed cleanly and nothing is left behind.

use std::time::{Duration, Instant};

use berth::cri::api::{ContainerState, PodSandboxState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::leaks::{assert_back_to, in_container};
use crate::harness::{Berthd, Leaks, Registry, images};

const PODS: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn pods_survive_a_berthd_crash_and_exits_meanwhile_are_recorded() {
    let reg = Registry::shared();
    let mut berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let mut pods = Vec::new();
    for i in 0..PODS {
        let pod = berthd.pod(&format!("survivor-{i}"));
        let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
        let c = pod.container("main", &image).command(&["sleep", "100000"]).build();
        let id = cri.create_start(&pod_id, &pod, c).await.expect("container");
        pods.push((pod, pod_id, id));
    }
    drop(cri);

    berthd.kill9();
    // The victim's process: the one in its container's cgroup.
    let (_, victim_pod, victim) = &pods[2];
    let procs = in_container(victim);
    assert_eq!(procs.len(), 1, "expected one process in the cgroup of {victim}: {procs:?}");
    assert_eq!(procs[0].command(), "sleep 100000");
    kill(Pid::from_raw(procs[0].pid), Signal::SIGKILL).expect("killing the victim container");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !in_container(victim).is_empty() {
        assert!(Instant::now() < deadline, "the victim did not die");
        std::thread::sleep(Duration::from_millis(50));
    }

    berthd.start();
    let mut cri = berthd.cri().await;
    let listed = cri.pods().await.expect("ListPodSandbox");
    assert_eq!(listed.len(), PODS, "{listed:#?}");
    assert!(listed.iter().all(|p| p.state == PodSandboxState::SandboxReady as i32), "{listed:#?}");
    for (_, pod_id, id) in &pods {
        let s = cri.container_status(id).await.expect("ContainerStatus after the restart");
        if id == victim {
            assert_eq!(s.state, ContainerState::ContainerExited as i32, "{s:?}");
            assert_eq!(s.exit_code, 137, "{s:?}");
            assert_eq!(s.reason, "Error", "{s:?}");
            assert!(s.finished_at >= s.started_at, "{s:?}");
        } else {
            assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
            assert_eq!(cri.sh(id, "echo alive").await, "alive\n");
        }
        assert!(cri.pod_status(pod_id).await.is_ok());
    }
    assert!(cri.pod_status(victim_pod).await.is_ok());

    for (_, pod_id, _) in &pods {
        cri.stop_remove_pod(pod_id).await.expect("stop and remove a pod");
    }
    assert!(cri.pods().await.expect("ListPodSandbox").is_empty());
    assert_back_to(&berthd, &before);
}
