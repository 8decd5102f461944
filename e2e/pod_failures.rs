//! Bad input and failures, each answered with the right gRPC code and a message naming what was
//! wrong, and each leaving nothing behind (the leak inventory before and after is the same): a
//! sandbox config without metadata, a container for an unknown sandbox, an image berth does not have,
//! a CNI network whose IPAM fails, a runtime handler whose binary fails `create`, a command that does
//! not exist in the image, and berthd SIGKILLed in the middle of RunPodSandbox (during CNI ADD).

use std::time::{Duration, Instant};

use berth::cri::api::{ContainerState, RunPodSandboxRequest};
use tonic::Code;

use crate::harness::leaks::{assert_back_to, processes};
use crate::harness::{Berthd, Leaks, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_its_name_and_leaves_nothing() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    // Sandbox metadata: missing, then each required field empty.
    let pod = berthd.pod("bad-input");
    let mut config = pod.config.clone();
    config.metadata = None;
    let err = cri
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
        .await
        .expect_err("RunPodSandbox without metadata succeeded");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("metadata"), "{err:?}");
    for field in ["name", "namespace", "uid"] {
        let mut config = pod.config.clone();
        let m = config.metadata.as_mut().expect("metadata");
        match field {
            "name" => m.name.clear(),
            "namespace" => m.namespace.clear(),
            _ => m.uid.clear(),
        }
        let err = cri
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
            .await
            .expect_err("RunPodSandbox with an empty metadata field succeeded");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(&format!("metadata.{field}")), "{field}: {err:?}");
    }
    assert!(cri.pods().await.expect("ListPodSandbox").is_empty());

    // A container for a sandbox that does not exist.
    let unknown = "0".repeat(64);
    let c = pod.container("orphan", &image).command(&["sleep", "1"]).build();
    let err =
        cri.create(&unknown, &pod, c).await.expect_err("CreateContainer in an unknown sandbox succeeded");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");

    // An image berth does not have.
    let absent = format!("{}/e2e/absent:1", reg.host());
    let c = pod.container("no-image", &absent).command(&["sleep", "1"]).build();
    let err = cri.create(&pod_id, &pod, c).await.expect_err("CreateContainer of an absent image succeeded");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&absent), "the error does not name the image: {err:?}");

    // A command that does not exist: the start fails, and the container says why.
    let c = pod.container("no-command", &image).command(&["/no/such/command"]).build();
    let id = cri.create(&pod_id, &pod, c).await.expect("CreateContainer (the command is checked at start)");
    let err = cri.start(&id).await.expect_err("StartContainer of a missing command succeeded");
    assert!(err.message().contains("/no/such/command"), "the error does not name the command: {err:?}");
    let s = cri.container_status(&id).await.expect("ContainerStatus");
    assert_eq!(s.state, ContainerState::ContainerExited as i32, "{s:?}");
    assert_eq!(s.reason, "StartError", "{s:?}");
    assert!(s.message.contains("/no/such/command"), "{s:?}");
    assert_ne!(s.exit_code, 0, "{s:?}");

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_cni_ipam_leaves_nothing_and_the_name_is_free_again() {
    let mut berthd = Berthd::with_network();
    let net = berthd.net().expect("pod network");
    let broken = net.conflist().replace(&net.subnet, "10.999.0.0/24");
    net.write_conflist_text(&berthd.config.cni.conf_dir, &broken);
    berthd.start();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;

    let pod = berthd.pod("bad-cni");
    let err = cri.run_pod(&pod).await.expect_err("RunPodSandbox on a broken network succeeded");
    assert_ne!(err.code(), Code::Ok);
    assert!(err.message().contains("10.999.0.0"), "the plugin's complaint is not passed on: {err:?}");
    assert!(cri.pods().await.expect("ListPodSandbox").is_empty());
    assert_back_to(&berthd, &before);

    // Fixed by the operator, the kubelet's retry of the same pod goes through.
    let net = berthd.net().expect("pod network");
    net.write_conflist(&berthd.config.cni.conf_dir);
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox after fixing the network");
    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_runtime_leaves_nothing() {
    let mut berthd = Berthd::with_network();
    // Every runtime command but `create` (and `run`, create and start at once) goes to runc, so
    // cleanup (delete, state) works as usual.
    // `create` fails the way runc does: an error record in the `--log` file (JSON) and exit 1.
    let fake = r#"#!/bin/sh
log=/dev/null; prev=
for a in "$@"; do
  [ "$prev" = --log ] && log=$a
  if [ "$a" = create ] || [ "$a" = run ]; then
    echo '{"level":"error","msg":"broken runtime: create refused","time":"2025-01-01T00:00:00Z"}' >> "$log"
    exit 1
  fi
  prev=$a
done
exec runc "$@"
"#;
    berthd.add_runtime_script("broken", fake);
    berthd.start();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;

    let pod = berthd.pod("bad-runtime");
    let err =
        cri.run_pod_with(&pod, "broken").await.expect_err("RunPodSandbox with a broken runtime succeeded");
    assert!(err.message().contains("create refused"), "the runtime's message is not passed on: {err:?}");
    assert!(cri.pods().await.expect("ListPodSandbox").is_empty());
    assert_back_to(&berthd, &before);

    // The name is free again: the same pod runs with the default handler.
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox with runc");
    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_run_pod_sandbox_then_restart_leaves_nothing() {
    let mut berthd = Berthd::with_network();
    let marker = berthd.dir().join("cni-add-pid");
    // The bridge plugin's ADD announces itself (its pid stays the same through exec) and dawdles.
    berthd.wrap_cni_plugin(
        "bridge",
        &format!("if [ \"$CNI_COMMAND\" = ADD ]; then echo $$ > {}; sleep 4; fi", marker.display()),
    );
    berthd.start();
    let before = Leaks::of(&berthd);
    let cri = berthd.cri().await;

    let pod = berthd.pod("killed-mid-run");
    let run = {
        let (mut cri, pod) = (cri.clone(), pod.clone());
        tokio::spawn(async move { cri.run_pod(&pod).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let plugin_pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&marker).ok().and_then(|s| s.trim().parse().ok()) {
            break pid;
        }
        assert!(!run.is_finished(), "RunPodSandbox ended before CNI ADD: {:?}", run.await);
        assert!(Instant::now() < deadline, "CNI ADD never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    berthd.kill9();
    let result = run.await.expect("RunPodSandbox task");
    assert!(result.is_err(), "RunPodSandbox succeeded although berthd was killed: {result:?}");

    berthd.start();
    // The orphaned plugin finishes its ADD after the restart, against a namespace that is gone: wait
    // for it, so that whatever it could leave is in the inventory.
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes().iter().any(|p| p.pid == plugin_pid) {
        assert!(Instant::now() < deadline, "the orphaned CNI plugin {plugin_pid} never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cri2 = berthd.cri().await;
    for p in cri2.pods().await.expect("ListPodSandbox") {
        assert_ne!(
            p.state,
            berth::cri::api::PodSandboxState::SandboxReady as i32,
            "a half-made pod is READY: {p:?}"
        );
        cri2.stop_remove_pod(&p.id).await.expect("removing the half-made pod");
    }
    assert_back_to(&berthd, &before);
    drop(cri);

    // And the kubelet's retry of the same pod now works.
    let pod_id = cri2.run_pod(&pod).await.expect("RunPodSandbox after the restart");
    cri2.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
