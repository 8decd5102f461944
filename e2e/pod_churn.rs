//! Churn: 50 pods with one container each go through the kubelet's whole life cycle (RunPodSandbox,
//! CreateContainer, StartContainer, StopContainer, StopPodSandbox, RemovePodSandbox), five at a time.
//! Afterwards nothing is listed and the leak inventory is what it was before: no netns, mount, shim,
//! process, cgroup, IP, veth or portmap rule survives.

use futures_util::StreamExt;

use crate::harness::leaks::assert_back_to;
use crate::harness::net::free_port;
use crate::harness::{Berthd, Cri, Leaks, Registry, images};

const PODS: usize = 50;
const AT_ONCE: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn fifty_pods_five_at_a_time_leave_nothing_behind() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let lives = (0..PODS).map(|i| {
        let (mut cri, image): (Cri, String) = (cri.clone(), image.clone());
        // One port mapping per pod so that portmap's rules are churned too.
        let pod = berthd.pod(&format!("churn-{i}")).port(8080, free_port());
        async move {
            let pod_id = cri.run_pod(&pod).await.map_err(|e| format!("pod {i}: RunPodSandbox: {e:?}"))?;
            let c = pod.container("main", &image).sh("trap 'exit 0' TERM; sleep 100000 & wait").build();
            let id =
                cri.create_start(&pod_id, &pod, c).await.map_err(|e| format!("pod {i}: container: {e:?}"))?;
            cri.stop(&id, 10).await.map_err(|e| format!("pod {i}: StopContainer: {e:?}"))?;
            cri.stop_remove_pod(&pod_id).await.map_err(|e| format!("pod {i}: stop/remove: {e:?}"))?;
            Ok::<_, String>(())
        }
    });
    let errors: Vec<String> = futures_util::stream::iter(lives)
        .buffer_unordered(AT_ONCE)
        .filter_map(|r| async { r.err() })
        .collect()
        .await;
    assert!(errors.is_empty(), "{} of {PODS} pod lives failed:\n{}", errors.len(), errors.join("\n"));

    assert!(cri.pods().await.expect("ListPodSandbox").is_empty());
    assert!(cri.containers().await.expect("ListContainers").is_empty());
    assert_back_to(&berthd, &before);
}
