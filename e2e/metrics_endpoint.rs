//! berthd's Prometheus endpoint (`[metrics] address`), scraped over plain HTTP after a pull, a failed
//! pull, a pod started and torn down and a few other RPCs: per-RPC request counts by method and code
//! (a NotFound among them), the latency histogram, pod start and teardown durations, image pull bytes,
//! duration and errors, CNI setup and teardown latency, build info, and the running pods, containers
//! and shims gauges, which follow the pods up and back down to zero.

use berth::cri::api::{ContainerStatusRequest, VersionRequest};
use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::metrics::scrape;
use crate::harness::{Berthd, Leaks, Registry, images};

/// The request counter of `method` answered with `code`.
fn requests(method: &str, code: &str) -> String {
    format!("berth_grpc_requests_total{{code=\"{code}\",method=\"{method}\"}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn families_count_what_happened() {
    let reg = Registry::shared();
    let mut berthd = Berthd::with_network();
    let port = berthd.serve_metrics();
    berthd.trust(reg);
    berthd.start();
    let before = Leaks::of(&berthd);

    // Before anything: the build info, and gauges at zero.
    let s = scrape(port);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(s.get(&format!("berth_build_info{{version=\"{version}\"}}")), 1.0);
    for gauge in ["berth_pods_running", "berth_containers_running", "berth_shims"] {
        assert_eq!(s.get(gauge), 0.0, "{gauge}");
    }

    let mut cri = berthd.cri().await;
    let busybox = &images().busybox;
    let image = cri.pull(&busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let missing = format!("{}/berth-e2e/no-such-image:1", reg.host());
    let err = cri.pull(&missing).await.expect_err("pulling an image the registry does not have");
    let unknown = cri
        .runtime
        .container_status(ContainerStatusRequest { container_id: "0123456789abcdef".into(), verbose: false })
        .await
        .expect_err("ContainerStatus of an unknown id");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    for _ in 0..3 {
        cri.runtime.version(VersionRequest::default()).await.expect("Version");
    }

    let pod = berthd.pod("metrics");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let c = pod.container("main", &image).command(&["sleep", "100000"]).build();
    cri.create_start(&pod_id, &pod, c).await.expect("container");

    // While the pod runs: one of each.
    let s = scrape(port);
    assert_eq!(s.get("berth_pods_running"), 1.0);
    assert_eq!(s.get("berth_containers_running"), 1.0);
    assert_eq!(s.get("berth_shims"), 1.0);

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    let s = scrape(port);
    for gauge in ["berth_pods_running", "berth_containers_running", "berth_shims"] {
        assert_eq!(s.get(gauge), 0.0, "{gauge} after the pod is gone");
    }

    // Requests by method and code, with their latency.
    for method in [
        "PullImage",
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopPodSandbox",
        "RemovePodSandbox",
    ] {
        s.at_least(&requests(method, "Ok"), 1.0);
        s.at_least(&format!("berth_grpc_request_duration_seconds_count{{method=\"{method}\"}}"), 1.0);
        s.at_least(
            &format!("berth_grpc_request_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}}"),
            1.0,
        );
    }
    assert_eq!(s.get(&requests("Version", "Ok")), 3.0);
    assert_eq!(s.get(&requests("ContainerStatus", "NotFound")), 1.0);
    let failed_pulls: f64 = s
        .samples
        .iter()
        .filter(|(k, _)| {
            k.starts_with("berth_grpc_requests_total{")
                && k.contains("method=\"PullImage\"")
                && !k.contains("code=\"Ok\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        failed_pulls, 1.0,
        "the failed pull ({err:?}) is not counted under an error code:\n{}",
        s.text
    );
    assert!(s.get("berth_grpc_request_duration_seconds_sum{method=\"RunPodSandbox\"}") > 0.0);

    // Pods: one start, a stop and a remove.
    assert_eq!(s.get("berth_pod_start_duration_seconds_count"), 1.0);
    assert!(s.get("berth_pod_start_duration_seconds_sum") > 0.0);
    s.at_least("berth_pod_teardown_duration_seconds_count", 1.0);
    assert!(s.get("berth_pod_teardown_duration_seconds_sum") > 0.0);

    // Images: the pull's bytes (at least its layers) and duration; the failed one as an error.
    s.at_least("berth_image_pull_bytes_total", busybox.layer_bytes() as f64);
    assert_eq!(s.get("berth_image_pull_duration_seconds_count"), 1.0);
    assert!(s.get("berth_image_pull_duration_seconds_sum") > 0.0);
    assert_eq!(s.get("berth_image_pull_errors_total"), 1.0);

    // CNI: one setup, at least one teardown.
    assert_eq!(s.get("berth_cni_duration_seconds_count{operation=\"setup\"}"), 1.0);
    s.at_least("berth_cni_duration_seconds_count{operation=\"teardown\"}", 1.0);
    assert!(s.get("berth_cni_duration_seconds_sum{operation=\"setup\"}") > 0.0);

    assert_back_to(&berthd, &before);
}
