//! Issue 8 item 9: a container whose pid namespace mode is TARGET (an ephemeral debug container)
//! joins the pid namespace of a running container of its own pod only. Naming a container of
//! another pod is INVALID_ARGUMENT, naming one that is not running FAILED_PRECONDITION; naming a
//! running container of the same pod works and shows that container's processes.

use berth::cri::api::{NamespaceMode, NamespaceOption};
use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

fn target(config: &mut berth::cri::api::ContainerConfig, id: &str) {
    let sc = config.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    let nso = sc.namespace_options.get_or_insert_with(NamespaceOption::default);
    nso.pid = NamespaceMode::Target as i32;
    nso.target_id = id.to_string();
}

#[tokio::test(flavor = "multi_thread")]
async fn pid_namespace_targets_stay_inside_the_pod() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let victim_pod = berthd.pod("victim");
    let victim_pod_id = cri.run_pod(&victim_pod).await.expect("RunPodSandbox victim");
    let victim = victim_pod.container("app", &image).command(&["sleep", "424242"]).build();
    let victim = cri.create_start(&victim_pod_id, &victim_pod, victim).await.expect("victim container");
    let stopped = victim_pod.container("stopped", &image).command(&["true"]).build();
    let stopped = cri.create(&victim_pod_id, &victim_pod, stopped).await.expect("created container");

    let pod = berthd.pod("debugger");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox debugger");
    let mut debug = pod.container("debug", &image).command(&["sleep", "100000"]).build();
    target(&mut debug, &victim);
    let e = cri.create(&pod_id, &pod, debug).await.expect_err("target in another pod");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(&victim_pod_id), "{e:?}");

    // Inside the victim's own pod: only a running container is a target.
    let mut debug = victim_pod.container("debug", &image).command(&["sleep", "100000"]).build();
    target(&mut debug, &stopped);
    let e = cri.create(&victim_pod_id, &victim_pod, debug.clone()).await.expect_err("target not running");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    target(&mut debug, &victim);
    let debug = cri.create_start(&victim_pod_id, &victim_pod, debug).await.expect("debug container");
    assert!(
        cri.sh(&debug, "ps -o args").await.contains("sleep 424242"),
        "the target's processes are not visible"
    );

    for id in [&pod_id, &victim_pod_id] {
        cri.stop_remove_pod(id).await.expect("stop and remove the pod");
    }
    assert_back_to(&berthd, &before);
}
