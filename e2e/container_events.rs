//! GetContainerEvents as the kubelet's evented PLEG reads it: a subscriber sees a pod's whole life in
//! order (sandbox CREATED and STARTED, container CREATED, STARTED, STOPPED, DELETED, sandbox STOPPED
//! and DELETED), every event carrying the container id, a nanosecond `created_at` that never goes
//! back, the pod's sandbox status (metadata, state, IP while ready) and its containers' statuses as
//! they are after the change (the kubelet caches the pod status straight from them). A container
//! that exits on its own, even at once, produces STARTED then STOPPED with its exit code. A second
//! subscriber that never reads (on a connection with a tiny window) holds up neither the first
//! subscriber nor the runtime, and still gets its events once it reads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth::cri::api::{
    ContainerEventResponse, ContainerEventType, ContainerState, GetEventsRequest, PodSandboxState,
    VersionRequest,
};
use tokio::sync::mpsc;

use crate::harness::cri::Cri;
use crate::harness::leaks::assert_back_to;
use crate::harness::pod::PodConfig;
use crate::harness::{Berthd, Leaks, Registry, images};

use ContainerEventType::{
    ContainerCreatedEvent as CREATED, ContainerDeletedEvent as DELETED, ContainerStartedEvent as STARTED,
    ContainerStoppedEvent as STOPPED,
};

/// How long one expected event may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A GetContainerEvents stream read by a task of its own into a channel, so the stream is always
/// drained while the test drives the runtime.
struct Subscriber {
    rx: mpsc::UnboundedReceiver<Result<ContainerEventResponse, tonic::Status>>,
}

impl Subscriber {
    /// Subscribes; berth has registered the subscription once this returns.
    async fn new(cri: &mut Cri) -> Subscriber {
        let mut stream = cri
            .runtime
            .get_container_events(GetEventsRequest {})
            .await
            .expect("GetContainerEvents")
            .into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(e)) => {
                        if tx.send(Ok(e)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Subscriber { rx }
    }

    /// The next event; panics if none arrives in time or the stream ends or fails.
    async fn next(&mut self) -> ContainerEventResponse {
        match tokio::time::timeout(EVENT_TIMEOUT, self.rx.recv()).await {
            Ok(Some(Ok(e))) => e,
            Ok(Some(Err(e))) => panic!("the event stream failed: {e:?}"),
            Ok(None) => panic!("the event stream ended"),
            Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
        }
    }

    /// The next `n` events.
    async fn take(&mut self, n: usize) -> Vec<ContainerEventResponse> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts that nothing more arrives within `quiet`.
    async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(Some(e)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            panic!("unexpected extra event: {}", show(&[e.expect("event stream")]));
        }
    }
}

fn kind(e: &ContainerEventResponse) -> ContainerEventType {
    ContainerEventType::try_from(e.container_event_type).unwrap_or_else(|_| panic!("unknown type in {e:?}"))
}

/// "(id prefix, type)" of each event, for assertion messages.
fn show(events: &[ContainerEventResponse]) -> String {
    let v: Vec<String> = events
        .iter()
        .map(|e| format!("({}, {:?})", &e.container_id[..e.container_id.len().min(12)], kind(e)))
        .collect();
    v.join(", ")
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// Asserts the (container id, type) sequence and what the kubelet reads from every event: the sandbox
/// status of `pod` (uid, sandbox id), and created_at in nanoseconds, close to now, never decreasing.
fn check_sequence(
    events: &[ContainerEventResponse],
    pod: &PodConfig,
    sandbox: &str,
    want: &[(&str, ContainerEventType)],
) {
    let got: Vec<(&str, ContainerEventType)> =
        events.iter().map(|e| (e.container_id.as_str(), kind(e))).collect();
    assert_eq!(got, want, "events out of order or missing: {}", show(events));
    let now = now_nanos();
    let mut last = 0;
    for e in events {
        let status = e.pod_sandbox_status.as_ref().unwrap_or_else(|| panic!("no pod_sandbox_status: {e:?}"));
        assert_eq!(status.id, sandbox, "{e:?}");
        assert_eq!(status.metadata.as_ref().map(|m| m.uid.as_str()), Some(pod.uid()), "{e:?}");
        assert!(e.created_at >= last, "created_at went back: {}", show(events));
        assert!(
            (now - e.created_at).abs() < 300 * 1_000_000_000,
            "created_at {} is not unix nanoseconds",
            e.created_at
        );
        last = e.created_at;
    }
}

/// The state of container `id` in an event's containers_statuses, if listed.
fn container_state(e: &ContainerEventResponse, id: &str) -> Option<ContainerState> {
    e.containers_statuses
        .iter()
        .find(|s| s.id == id)
        .map(|s| ContainerState::try_from(s.state).expect("a known container state"))
}

fn sandbox_state(e: &ContainerEventResponse) -> PodSandboxState {
    PodSandboxState::try_from(e.pod_sandbox_status.as_ref().expect("pod_sandbox_status").state)
        .expect("a known sandbox state")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_lifecycle_arrives_in_order_with_statuses() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let mut events = Subscriber::new(&mut cri).await;

    let pod = berthd.pod("events");
    let s = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let config = pod.container("main", &image).command(&["sleep", "100000"]).build();
    let c = cri.create(&s, &pod, config).await.expect("CreateContainer");
    cri.start(&c).await.expect("StartContainer");
    cri.stop(&c, 10).await.expect("StopContainer");
    cri.remove_container(&c).await.expect("RemoveContainer");
    cri.stop_remove_pod(&s).await.expect("StopPodSandbox and RemovePodSandbox");

    let got = events.take(8).await;
    let want = [
        (s.as_str(), CREATED),
        (s.as_str(), STARTED),
        (c.as_str(), CREATED),
        (c.as_str(), STARTED),
        (c.as_str(), STOPPED),
        (c.as_str(), DELETED),
        (s.as_str(), STOPPED),
        (s.as_str(), DELETED),
    ];
    check_sequence(&got, &pod, &s, &want);
    events.assert_quiet(Duration::from_secs(1)).await;

    // The sandbox status is the one after the change: ready with its IP (the kubelet takes the pod's
    // IPs from the event) until StopPodSandbox, not ready after.
    for e in &got[..6] {
        assert_eq!(sandbox_state(e), PodSandboxState::SandboxReady, "{e:?}");
        let ip = e.pod_sandbox_status.as_ref().and_then(|p| p.network.as_ref()).map(|n| n.ip.as_str());
        assert!(ip.is_some_and(|ip| !ip.is_empty()), "no pod IP in a ready pod's event: {e:?}");
    }
    for e in &got[6..] {
        assert_eq!(sandbox_state(e), PodSandboxState::SandboxNotready, "{e:?}");
    }
    // The containers' statuses too.
    assert_eq!(container_state(&got[1], &c), None, "{:?}", got[1]);
    assert_eq!(container_state(&got[2], &c), Some(ContainerState::ContainerCreated), "{:?}", got[2]);
    assert_eq!(container_state(&got[3], &c), Some(ContainerState::ContainerRunning), "{:?}", got[3]);
    assert_eq!(container_state(&got[4], &c), Some(ContainerState::ContainerExited), "{:?}", got[4]);
    // On DELETED the container may still be listed (as exited) or already gone.
    assert!(
        matches!(container_state(&got[5], &c), None | Some(ContainerState::ContainerExited)),
        "{:?}",
        got[5]
    );
    for e in &got[6..] {
        assert_eq!(container_state(e, &c), None, "a removed container is still listed: {e:?}");
    }
    let stopped = got[4].containers_statuses.iter().find(|st| st.id == c).expect("listed");
    assert!(stopped.finished_at > 0, "{stopped:?}");

    drop(events);
    assert_back_to(&berthd, &before);
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_exiting_on_their_own_produce_stopped_after_started() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("exits");
    let s = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let mut events = Subscriber::new(&mut cri).await;

    // One that runs a moment, then a few that exit at once (racing StartContainer's own event).
    let mut scripts = vec![("late".to_string(), "sleep 1; exit 3".to_string(), 3)];
    for i in 0..5 {
        scripts.push((format!("instant{i}"), format!("exit {}", 10 + i), 10 + i));
    }
    for (name, script, code) in scripts {
        let config = pod.container(&name, &image).sh(&script).build();
        let c = cri.create_start(&s, &pod, config).await.expect("container");
        let got = events.take(3).await;
        check_sequence(
            &got,
            &pod,
            &s,
            &[(c.as_str(), CREATED), (c.as_str(), STARTED), (c.as_str(), STOPPED)],
        );
        let status = got[2].containers_statuses.iter().find(|st| st.id == c).expect("listed on STOPPED");
        assert_eq!(status.state, ContainerState::ContainerExited as i32, "{name}: {status:?}");
        assert_eq!(status.exit_code, code, "{name}: {status:?}");
        events.assert_quiet(Duration::from_millis(300)).await;
        cri.wait_exited(&c, Duration::from_secs(5)).await;
    }

    cri.stop_remove_pod(&s).await.expect("stop and remove the pod");
    drop(events);
    assert_back_to(&berthd, &before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_blocks_nobody() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    // Its own connection with a 1 KiB window: berth can send it about nothing before it must wait.
    let mut slow_client = Cri::connect_with_window(berthd.socket(), Some(1024)).await.expect("connecting");
    let mut stalled = slow_client
        .runtime
        .get_container_events(GetEventsRequest {})
        .await
        .expect("GetContainerEvents (stalled)")
        .into_inner();
    let mut events = Subscriber::new(&mut cri).await;

    const PODS: usize = 5;
    let mut expected = Vec::new();
    for i in 0..PODS {
        let pod = berthd.pod(&format!("busy{i}"));
        let ids = tokio::time::timeout(Duration::from_secs(60), async {
            let s = cri.run_pod(&pod).await.expect("RunPodSandbox");
            let config = pod.container("main", &image).command(&["sleep", "100000"]).build();
            let c = cri.create_start(&s, &pod, config).await.expect("container");
            cri.runtime.version(VersionRequest::default()).await.expect("Version");
            cri.stop_remove_pod(&s).await.expect("stop and remove the pod");
            (s, c)
        })
        .await
        .unwrap_or_else(|_| panic!("pod {i} took over a minute while a subscriber stalled"));
        expected.push((pod, ids));
    }

    // The reading subscriber saw every pod's events, in order, while the other one stalled.
    for (pod, (s, c)) in &expected {
        let got = events.take(8).await;
        let want = [
            (s.as_str(), CREATED),
            (s.as_str(), STARTED),
            (c.as_str(), CREATED),
            (c.as_str(), STARTED),
            // StopPodSandbox stops the container first.
            (c.as_str(), STOPPED),
            (s.as_str(), STOPPED),
            (c.as_str(), DELETED),
            (s.as_str(), DELETED),
        ];
        check_sequence(&got, pod, s, &want);
    }

    // The stalled subscriber was only behind: reading now, it gets the first pod's events.
    let first = tokio::time::timeout(EVENT_TIMEOUT, stalled.message())
        .await
        .expect("the stalled subscriber got nothing once it read")
        .expect("stalled stream")
        .expect("stalled stream ended");
    assert_eq!((first.container_id.as_str(), kind(&first)), (expected[0].1.0.as_str(), CREATED));

    drop((events, stalled, slow_client));
    assert_back_to(&berthd, &before);
}
