//! The streaming list RPCs of cri-api v0.36 (kubelet feature gate CRIListStreaming): each answers
//! what its List RPC answers, with the same filters, every item once; a filter that matches nothing
//! gives a stream that ends without a message.

use std::collections::BTreeSet;

use berth::cri::api::{
    ContainerFilter, ContainerStatsFilter, ListContainerStatsRequest, ListContainersRequest,
    ListPodSandboxMetricsRequest, ListPodSandboxStatsRequest, PodSandboxFilter, PodSandboxStatsFilter,
    StreamContainerStatsRequest, StreamContainersRequest, StreamImagesRequest,
    StreamPodSandboxMetricsRequest, StreamPodSandboxStatsRequest, StreamPodSandboxesRequest,
};
use tonic::Streaming;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

/// Every message of a stream, as lists of item keys; fails on an empty message or a repeated item.
async fn drain<R, T>(
    mut s: Streaming<R>,
    items: impl Fn(R) -> Vec<T>,
    key: impl Fn(&T) -> String,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    while let Some(message) = s.message().await.expect("a stream message") {
        let batch = items(message);
        assert!(!batch.is_empty(), "a streamed message without items");
        for item in &batch {
            assert!(seen.insert(key(item)), "{} streamed twice", key(item));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_lists_match_the_list_rpcs() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let mut pods = Vec::new();
    for name in ["stream-a", "stream-b"] {
        let pod = berthd.pod(name);
        let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
        for c in ["one", "two"] {
            cri.create_start(&pod_id, &pod, pod.container(c, &image).sh("sleep 100000").build())
                .await
                .expect("container");
        }
        pods.push(pod_id);
    }
    let rt = &mut cri.runtime.clone();

    let listed: BTreeSet<String> = cri.pods().await.unwrap().into_iter().map(|p| p.id).collect();
    let s = rt.stream_pod_sandboxes(StreamPodSandboxesRequest { filter: None }).await.unwrap().into_inner();
    assert_eq!(drain(s, |m| m.pod_sandboxes, |p| p.id.clone()).await, listed);
    assert_eq!(listed.len(), 2);

    let one_pod = ContainerFilter { pod_sandbox_id: pods[0].clone(), ..Default::default() };
    let listed: BTreeSet<String> = rt
        .list_containers(ListContainersRequest { filter: Some(one_pod.clone()) })
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    let s =
        rt.stream_containers(StreamContainersRequest { filter: Some(one_pod) }).await.unwrap().into_inner();
    assert_eq!(drain(s, |m| m.containers, |c| c.id.clone()).await, listed);
    assert_eq!(listed.len(), 2, "the filter: the containers of one pod");

    let stats_filter = Some(ContainerStatsFilter::default());
    let listed: BTreeSet<String> = rt
        .list_container_stats(ListContainerStatsRequest { filter: stats_filter.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .into_iter()
        .map(|s| s.attributes.unwrap().id)
        .collect();
    let s = rt.stream_container_stats(StreamContainerStatsRequest { filter: stats_filter }).await.unwrap();
    assert_eq!(
        drain(s.into_inner(), |m| m.container_stats, |s| s.attributes.clone().unwrap().id).await,
        listed
    );
    assert_eq!(listed.len(), 4);

    let listed: BTreeSet<String> = rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats
        .into_iter()
        .map(|s| s.attributes.unwrap().id)
        .collect();
    let s = rt.stream_pod_sandbox_stats(StreamPodSandboxStatsRequest { filter: None }).await.unwrap();
    assert_eq!(
        drain(s.into_inner(), |m| m.pod_sandbox_stats, |s| s.attributes.clone().unwrap().id).await,
        listed
    );
    assert_eq!(listed.len(), 2);

    let listed: BTreeSet<String> = rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics
        .into_iter()
        .map(|m| m.pod_sandbox_id)
        .collect();
    let s = rt.stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest {}).await.unwrap().into_inner();
    assert_eq!(drain(s, |m| m.pod_sandbox_metrics, |m| m.pod_sandbox_id.clone()).await, listed);

    let listed: BTreeSet<String> = cri.list().await.unwrap().into_iter().map(|i| i.id).collect();
    let s = cri.image.stream_images(StreamImagesRequest { filter: None }).await.unwrap().into_inner();
    assert_eq!(drain(s, |m| m.images, |i| i.id.clone()).await, listed);
    assert!(!listed.is_empty());

    let nothing = PodSandboxFilter { id: "0000000000nothing".into(), ..Default::default() };
    let s = rt.stream_pod_sandboxes(StreamPodSandboxesRequest { filter: Some(nothing) }).await.unwrap();
    assert!(drain(s.into_inner(), |m| m.pod_sandboxes, |p| p.id.clone()).await.is_empty());
    let nothing = PodSandboxStatsFilter { id: "0000000000nothing".into(), ..Default::default() };
    let s =
        rt.stream_pod_sandbox_stats(StreamPodSandboxStatsRequest { filter: Some(nothing) }).await.unwrap();
    assert!(
        drain(s.into_inner(), |m| m.pod_sandbox_stats, |s| s.attributes.clone().unwrap().id).await.is_empty()
    );

    for pod_id in &pods {
        cri.stop_remove_pod(pod_id).await.expect("stop and remove the pod");
    }
    assert_back_to(&berthd, &before);
}
