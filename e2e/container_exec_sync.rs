//! ExecSync as the kubelet's exec probes use it: stdout, stderr and the exit code come back; a command
//! running past its timeout fails with DeadlineExceeded soon after the timeout and is killed inside the
//! container; a call whose gRPC deadline passes ends with DeadlineExceeded; a command writing far more
//! than berth keeps returns at most the cap, without hanging.

use std::time::{Duration, Instant};

use berth::cri::api::runtime_service_client::RuntimeServiceClient;
use berth::cri::container_exec::EXEC_SYNC_MAX_OUTPUT as CAP;
use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

/// A RuntimeService client straight on an HTTP/2 connection to `socket`, without tonic's Channel
/// (whose own timer would answer a deadline before berth could).
async fn raw_runtime_client(
    socket: &std::path::Path,
) -> RuntimeServiceClient<
    impl tonic::client::GrpcService<
        tonic::body::Body,
        Error = hyper::Error,
        ResponseBody = hyper::body::Incoming,
        Future = impl Send,
    > + Clone,
> {
    let io = hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await.expect("connecting"));
    let (sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let svc = tower::service_fn(move |req| {
        let mut sender = sender.clone();
        async move { sender.send_request(req).await }
    });
    RuntimeServiceClient::with_origin(svc, "http://localhost".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn output_exit_code_timeout_and_cap() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("exec");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let c = pod.container("main", &image).command(&["sleep", "100000"]).build();
    let id = cri.create_start(&pod_id, &pod, c).await.expect("container");

    let r = cri.exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 7"], 10).await.expect("ExecSync");
    assert_eq!((r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code), (&b"out\n"[..], &b"err\n"[..], 7));

    // The command would run for a day: that the call comes back at all is the timeout at work.
    let started = Instant::now();
    let err = cri.exec(&id, &["sleep", "86437"], 2).await.expect_err("sleep with a 2 s timeout succeeded");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(took >= Duration::from_secs(2), "the timeout fired early: {took:?}");
    // The timed-out command is killed, not left running in the container.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ps = cri.sh(&id, "ps -o pid,args").await;
        if !ps.contains("sleep 86437") {
            break;
        }
        assert!(Instant::now() < deadline, "the timed-out command still runs:\n{ps}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The client's own deadline (the kubelet's `timeout + cmd timeout`, critest's short pulls) reaches
    // berth as grpc-timeout. Sent by a client that does not enforce it itself (tonic's Channel would),
    // the answer is berth's, and must be DEADLINE_EXCEEDED as gRPC and the kubelet have it.
    let mut raw = raw_runtime_client(berthd.socket()).await;
    let mut req = tonic::Request::new(berth::cri::api::ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["sleep".into(), "86441".into()],
        timeout: 0,
    });
    req.set_timeout(Duration::from_millis(300));
    let err = raw.exec_sync(req).await.expect_err("ExecSync past its grpc deadline succeeded");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    // 40 MiB on stdout and 20 MiB on stderr: berth reads it all and keeps at most the cap of each,
    // in an answer that fits the kubelet's 16 MiB message limit (the harness client has the same).
    let script = "head -c 41943040 /dev/zero; head -c 20971520 /dev/zero >&2";
    let r = cri.exec(&id, &["sh", "-c", script], 60).await.expect("ExecSync of 60 MiB");
    assert_eq!(r.exit_code, 0);
    assert!(!r.stdout.is_empty() && r.stdout.len() <= CAP, "stdout of {} bytes", r.stdout.len());
    assert!(!r.stderr.is_empty() && r.stderr.len() <= CAP, "stderr of {} bytes", r.stderr.len());

    // The container is unaffected.
    assert_eq!(cri.sh(&id, "echo still-here").await, "still-here\n");

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
