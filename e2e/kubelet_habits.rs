//! What the kubelet relies on beyond the happy path: Stop and Remove of ids that do not exist succeed
//! (it retries kills and GC freely), Status of an unknown id is NotFound (any other code breaks its
//! pod status), and a RunPodSandbox whose client gave up (the kubelet's deadline) and is then retried
//! with the same config gets the same sandbox, never a second one for the same pod uid.

use std::collections::HashMap;
use std::time::Duration;

use berth::cri::api::{
    ContainerStatusRequest, ListPodSandboxRequest, PodSandboxFilter, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::pod::{POD_UID, random_hex};
use crate::harness::{Berthd, Leaks};

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_stop_and_remove_fine_and_status_is_not_found() {
    let berthd = Berthd::started_with_network(&[]);
    let mut cri = berthd.cri().await;
    let rt = &mut cri.runtime;
    for id in [random_hex(32), random_hex(6)] {
        rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() })
            .await
            .expect("StopPodSandbox");
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() })
            .await
            .expect("RemovePodSandbox");
        rt.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 2 })
            .await
            .expect("StopContainer");
        rt.remove_container(RemoveContainerRequest { container_id: id.clone() })
            .await
            .expect("RemoveContainer");
        let err = rt
            .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false })
            .await
            .expect_err("PodSandboxStatus of an unknown id");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        let err = rt
            .container_status(ContainerStatusRequest { container_id: id.clone(), verbose: true })
            .await
            .expect_err("ContainerStatus of an unknown id");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_pod_sandbox_retried_after_a_client_timeout_gets_the_same_sandbox() {
    let mut berthd = Berthd::with_network();
    berthd.wrap_cni_plugin("bridge", "if [ \"$CNI_COMMAND\" = ADD ]; then sleep 2; fi");
    berthd.start();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let pod = berthd.pod("impatient");

    let mut request = tonic::Request::new(RunPodSandboxRequest {
        config: Some(pod.config.clone()),
        runtime_handler: String::new(),
    });
    request.set_timeout(Duration::from_millis(100));
    let err =
        cri.runtime.run_pod_sandbox(request).await.expect_err("RunPodSandbox beat a 2 s CNI ADD in 100 ms");
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");

    // The kubelet's next sync sends the same config again.
    let first = cri.run_pod(&pod).await.expect("RunPodSandbox retried");
    let again = cri.run_pod(&pod).await;
    let listed = cri
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                label_selector: HashMap::from([(POD_UID.to_string(), pod.uid().to_string())]),
                ..Default::default()
            }),
        })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1, "more than one sandbox for uid {}: {listed:#?}", pod.uid());
    assert_eq!(listed[0].id, first);
    // A third RunPodSandbox, after the retry got its answer, may be refused (containerd: name
    // reserved) or answered with the same id, never with a new sandbox.
    if let Ok(id) = again {
        assert_eq!(id, first);
    }

    cri.stop_remove_pod(&first).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
