//! Issue 8 item 8: CreateContainer decides with the sandbox config the pod was created with, not the
//! one the request carries. A request claiming a privileged sandbox for a pod that is not privileged
//! (to smuggle a privileged container in) is refused with INVALID_ARGUMENT and creates nothing; a
//! request whose other fields differ (here the hostname) is served from the stored config.

use berth::cri::api::{ContainerState, CreateContainerRequest};
use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_config_claiming_privileges_the_pod_lacks_is_refused() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("forged");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");

    let mut config = pod.container("root", &image).command(&["sleep", "100000"]).build();
    config.linux.as_mut().unwrap().security_context.as_mut().unwrap().privileged = true;
    // The pod as it was created refuses a privileged container.
    let e = cri.create(&pod_id, &pod, config.clone()).await.expect_err("privileged container in a plain pod");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // So does a request that says the pod is privileged.
    let mut forged = pod.clone();
    forged.config.linux.as_mut().unwrap().security_context.as_mut().unwrap().privileged = true;
    let e = cri.create(&pod_id, &forged, config).await.expect_err("forged privileged sandbox config");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("privileged"), "{e:?}");
    assert!(cri.containers().await.expect("ListContainers").is_empty());

    // Fields outside the security context are not checked: they are taken from the stored config.
    let mut renamed = pod.config.clone();
    renamed.hostname = "someone-else".into();
    let config = pod.container("plain", &image).command(&["sleep", "100000"]).build();
    let request = CreateContainerRequest {
        pod_sandbox_id: pod_id.clone(),
        config: Some(config),
        sandbox_config: Some(renamed),
    };
    let id = cri.runtime.create_container(request).await.expect("CreateContainer").into_inner().container_id;
    cri.start(&id).await.expect("StartContainer");
    assert_eq!(cri.container_status(&id).await.unwrap().state, ContainerState::ContainerRunning as i32);
    assert_eq!(cri.sh(&id, "echo $HOSTNAME").await.trim(), "forged");

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
