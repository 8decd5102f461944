//! CRI Exec, Attach and PortForward end to end: the URL each call returns is dialled by a SPDY/3.1
//! client (berth's own framing in client mode, opening the streams client-go opens) and by a
//! WebSocket client (v4/v5 binary channels), against real containers. Exec: output on stdout and
//! stderr, stdin, a TTY with resizes, the exit code in the v4 status, and the process killed when
//! the client goes away. Attach: a running container's output reaches the client and the client's
//! input reaches the container. PortForward: a server inside the pod's network namespace answers
//! both ways, over two connections at once. Tokens are single-use and expire; unknown or stopped
//! targets are refused with the CRI error codes. A hostile SPDY client with a valid token (the
//! header-block bomb of issue 8) is answered with GOAWAY and leaves berthd up with its memory
//! bounded. If crictl is installed (PATH or the critest kit) the Go client does the same through
//! `crictl exec -it`, `crictl attach` and `crictl port-forward`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth::cri::api::VersionRequest;
use berth::streaming::spdy::frame::goaway;
use berth::streaming::spdy::{Frame, FrameDecoder, FrameEncoder, Headers};
use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::pod::PodConfig;
use crate::harness::stream::{
    self, SpdyCommand, WAIT, Want, exit_code, parse_status, read_all, read_until, spdy_forward, spdy_upgrade,
    ws_collect, ws_connect, ws_next, ws_read_until, ws_send,
};
use crate::harness::{Berthd, Cri, Leaks, Registry, images};

/// The forwarded port's echo server: busybox nc serving each connection with `cat`, in parallel.
const ECHO_PORT: u16 = 8080;

/// A berthd with a pod network, busybox pulled and one pod running.
struct Setup {
    berthd: Berthd,
    before: Leaks,
    cri: Cri,
    image: String,
    pod: PodConfig,
    pod_id: String,
}

async fn setup(name: &str, token_ttl: Option<Duration>) -> Setup {
    let reg = Registry::shared();
    let mut berthd = Berthd::with_network();
    berthd.trust(reg);
    if let Some(ttl) = token_ttl {
        berthd.config.cri.stream_token_ttl = ttl;
    }
    berthd.start();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod(name);
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    Setup { berthd, before, cri, image, pod, pod_id }
}

impl Setup {
    /// Starts a container running `sh -c <script>`.
    async fn sh(&mut self, name: &str, script: &str) -> String {
        let c = self.pod.container(name, &self.image).sh(script).build();
        self.cri
            .create_start(&self.pod_id, &self.pod, c)
            .await
            .unwrap_or_else(|e| panic!("container {name}: {e:?}"))
    }

    /// Starts the attach target: prints `tick` every half second and echoes each input line as
    /// `echo:<line>`; its stdin stays open for attachers.
    async fn echo_container(&mut self) -> String {
        let script = "while true; do echo tick; sleep 0.5; done & while read l; do echo echo:$l; done";
        let c = self.pod.container("echo", &self.image).sh(script).stdin(false).build();
        self.cri.create_start(&self.pod_id, &self.pod, c).await.expect("echo container")
    }

    /// Starts the echo server on [`ECHO_PORT`] and waits until it answers inside the pod.
    async fn echo_server(&mut self) -> String {
        let c = self
            .pod
            .container("server", &self.image)
            .command(&["nc", "-ll", "-p", &ECHO_PORT.to_string(), "-e", "cat"])
            .build();
        let id = self.cri.create_start(&self.pod_id, &self.pod, c).await.expect("server container");
        let probe = format!("echo up | nc -w 1 127.0.0.1 {ECHO_PORT}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.cri.exec(&id, &["sh", "-c", &probe], 10).await.expect("ExecSync nc");
            if String::from_utf8_lossy(&r.stdout).trim() == "up" {
                return id;
            }
            assert!(Instant::now() < deadline, "the echo server never answered: {r:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `ps` in container `id` no longer shows `marker`; panics after 10 s.
    async fn wait_gone(&mut self, id: &str, marker: &str, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ps = self.cri.sh(id, "ps -o pid,args").await;
            if !ps.contains(marker) {
                return;
            }
            assert!(Instant::now() < deadline, "{marker:?} still runs after {why}:\n{ps}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn assert_runs(&mut self, id: &str, marker: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ps = self.cri.sh(id, "ps -o pid,args").await;
            if ps.contains(marker) {
                return;
            }
            assert!(Instant::now() < deadline, "{marker:?} never showed up in ps:\n{ps}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn assert_running(&mut self, id: &str, why: &str) {
        let s = self.cri.container_status(id).await.expect("ContainerStatus");
        assert_eq!(s.state, berth::cri::api::ContainerState::ContainerRunning as i32, "after {why}: {s:?}");
    }

    async fn finish(mut self) {
        self.cri.stop_remove_pod(&self.pod_id).await.expect("stop and remove the pod");
        assert_back_to(&self.berthd, &self.before);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spdy_exec_output_stdin_exit_code_tty_resize_and_disconnect() {
    let mut s = setup("spdy-exec", None).await;
    let id = s.sh("main", "exec sleep 100000").await;

    // stdout and stderr apart, a non-zero exit code in the v4 status.
    let script = "echo out; echo err >&2; exit 3";
    let url = s.cri.exec_url(&id, &["sh", "-c", script], false, false, true).await.expect("Exec");
    let c = SpdyCommand::connect(&url, Want { stdout: true, stderr: true, ..Want::default() }).await;
    assert_eq!(c.protocol, "v4.channel.k8s.io");
    assert_eq!(read_all(c.stdout()).await, b"out\n");
    assert_eq!(read_all(c.stderr.as_ref().unwrap()).await, b"err\n");
    let status = c.status().await;
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");
    drop(c);

    // stdin reaches the process, its end closes the process's stdin, and success is reported.
    let script = "while read l; do echo got:$l; done; echo eof";
    let url = s.cri.exec_url(&id, &["sh", "-c", script], false, true, false).await.expect("Exec");
    let c = SpdyCommand::connect(&url, Want { stdin: true, stdout: true, ..Want::default() }).await;
    c.send("one\n").await;
    read_until(c.stdout(), "got:one\n").await;
    c.send("two\nthree\n").await;
    c.stdin().close();
    assert_eq!(String::from_utf8(read_all(c.stdout()).await).unwrap(), "got:two\ngot:three\neof\n");
    assert_eq!(c.status().await, parse_status(br#"{"metadata":{},"status":"Success"}"#));
    drop(c);

    // Several MiB both ways at once through `cat`, as `kubectl cp` streams: flow control on the
    // client's, the server's and the shim's side holds nothing back and loses nothing.
    let url = s.cri.exec_url(&id, &["cat"], false, true, false).await.expect("Exec");
    let c = SpdyCommand::connect(&url, Want { stdin: true, stdout: true, ..Want::default() }).await;
    let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let (sent, echoed) = tokio::join!(
        async {
            let r = tokio::time::timeout(Duration::from_secs(60), c.stdin().write(&big)).await;
            c.stdin().close();
            r
        },
        tokio::time::timeout(Duration::from_secs(60), read_all(c.stdout()))
    );
    sent.expect("writing 4 MiB timed out").expect("writing 4 MiB to cat");
    let echoed = echoed.expect("reading 4 MiB back timed out");
    assert!(echoed == big, "4 MiB through cat came back as {} different bytes", echoed.len());
    assert_eq!(exit_code(&c.status().await), 0);
    drop(c);

    // A terminal: the shell sees a tty of the sizes the client sends, and its exit code comes back.
    let url = s.cri.exec_url(&id, &["sh"], true, true, false).await.expect("Exec with a tty");
    let c =
        SpdyCommand::connect(&url, Want { stdin: true, stdout: true, tty: true, ..Want::default() }).await;
    assert!(c.stderr.is_none());
    for (w, h) in [(100, 30), (132, 43)] {
        c.resize(w, h).await;
        // The resize and the command travel on different streams: ask until the size shows.
        let want = format!("{h} {w}\r\n");
        let mut seen = String::new();
        let deadline = Instant::now() + WAIT;
        loop {
            c.send("tty; stty size\n").await;
            match stream::read_until_within(c.stdout(), &want, Duration::from_millis(500)).await {
                Ok(out) => {
                    seen.push_str(&out);
                    break;
                }
                Err(out) => seen.push_str(&out),
            }
            assert!(Instant::now() < deadline, "stty never reported {want:?}:\n{seen}");
        }
        assert!(seen.contains("/dev/pts/"), "the shell has no terminal:\n{seen}");
    }
    c.send("exit 5\n").await;
    assert_eq!(exit_code(&c.status().await), 5);
    drop(c);

    // A client going away kills its process.
    let script = "echo started; exec sleep 4242";
    let url = s.cri.exec_url(&id, &["sh", "-c", script], false, false, false).await.expect("Exec");
    let c = SpdyCommand::connect(&url, Want { stdout: true, ..Want::default() }).await;
    read_until(c.stdout(), "started").await;
    s.assert_runs(&id, "sleep 4242").await;
    drop(c);
    s.wait_gone(&id, "sleep 4242", "the SPDY client went away").await;
    // The same for a process on a terminal.
    let url = s
        .cri
        .exec_url(&id, &["sh", "-c", script.replace("4242", "4244").as_str()], true, true, false)
        .await
        .expect("Exec with a tty");
    let c =
        SpdyCommand::connect(&url, Want { stdin: true, stdout: true, tty: true, ..Want::default() }).await;
    read_until(c.stdout(), "started").await;
    s.assert_runs(&id, "sleep 4244").await;
    drop(c);
    s.wait_gone(&id, "sleep 4244", "the SPDY client of a tty exec went away").await;
    s.assert_running(&id, "exec clients came and went").await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_exec_v4_v5_tty_resize_and_disconnect() {
    let mut s = setup("ws-exec", None).await;
    let id = s.sh("main", "exec sleep 100000").await;

    // v4: output per channel and the exit code in the status on channel 3.
    let script = "echo out; echo err >&2; exit 7";
    let url = s.cri.exec_url(&id, &["sh", "-c", script], false, false, true).await.expect("Exec");
    let (mut ws, protocol) = ws_connect(&url, "v4.channel.k8s.io").await.expect("websocket handshake");
    assert_eq!(protocol, "v4.channel.k8s.io");
    let channels = ws_collect(&mut ws).await;
    assert_eq!(channels.get(&1).map(Vec::as_slice), Some(&b"out\n"[..]), "{channels:?}");
    assert_eq!(channels.get(&2).map(Vec::as_slice), Some(&b"err\n"[..]), "{channels:?}");
    assert_eq!(exit_code(&parse_status(&channels[&3])), 7);

    // v5: stdin, ended by the close signal (255, channel 0).
    let script = "while read l; do echo got:$l; done; echo eof";
    let url = s.cri.exec_url(&id, &["sh", "-c", script], false, true, false).await.expect("Exec");
    let (mut ws, protocol) =
        ws_connect(&url, "v5.channel.k8s.io, v4.channel.k8s.io").await.expect("websocket handshake");
    assert_eq!(protocol, "v5.channel.k8s.io");
    ws_send(&mut ws, 0, b"one\n").await;
    let mut got = ws_read_until(&mut ws, 1, "got:one\n").await;
    ws_send(&mut ws, 0, b"two\n").await;
    ws_send(&mut ws, 255, &[0]).await;
    for (ch, data) in ws_collect(&mut ws).await {
        got.entry(ch).or_default().extend_from_slice(&data);
    }
    assert_eq!(String::from_utf8_lossy(&got[&1]), "got:one\ngot:two\neof\n");
    assert_eq!(exit_code(&parse_status(&got[&3])), 0);

    // A terminal with resizes on channel 4.
    let url = s.cri.exec_url(&id, &["sh"], true, true, false).await.expect("Exec with a tty");
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await.expect("websocket handshake");
    ws_send(&mut ws, 4, &stream::ws_resize(90, 25)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        ws_send(&mut ws, 0, b"stty size\n").await;
        match stream::ws_read_until_within(&mut ws, 1, "25 90\r\n", Duration::from_millis(500)).await {
            Ok(_) => break,
            Err(got) => assert!(Instant::now() < deadline, "stty never reported 25 90: {got}"),
        }
    }
    ws_send(&mut ws, 0, b"exit 6\n").await;
    let channels = ws_collect(&mut ws).await;
    assert_eq!(exit_code(&parse_status(&channels[&3])), 6, "{channels:?}");

    // A client going away kills its process.
    let script = "echo started; exec sleep 4343";
    let url = s.cri.exec_url(&id, &["sh", "-c", script], false, true, false).await.expect("Exec");
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await.expect("websocket handshake");
    ws_read_until(&mut ws, 1, "started").await;
    s.assert_runs(&id, "sleep 4343").await;
    drop(ws);
    s.wait_gone(&id, "sleep 4343", "the WebSocket client went away").await;
    s.assert_running(&id, "exec clients came and went").await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_spdy_and_websocket_see_output_and_send_input() {
    let mut s = setup("attach", None).await;
    let id = s.echo_container().await;

    let url = s.cri.attach_url(&id, false, true, true).await.expect("Attach");
    let c = SpdyCommand::connect(&url, Want { stdin: true, stdout: true, stderr: true, tty: false }).await;
    // Output the container writes while we are attached.
    read_until(c.stdout(), "tick\n").await;
    c.send("hello\n").await;
    read_until(c.stdout(), "echo:hello\n").await;
    // Detaching leaves the container running.
    c.session.close().await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.assert_running(&id, "an SPDY attacher detached").await;

    let url = s.cri.attach_url(&id, false, true, false).await.expect("Attach");
    let (mut ws, protocol) =
        ws_connect(&url, "v5.channel.k8s.io, v4.channel.k8s.io").await.expect("websocket handshake");
    assert_eq!(protocol, "v5.channel.k8s.io");
    ws_read_until(&mut ws, 1, "tick\n").await;
    ws_send(&mut ws, 0, b"world\n").await;
    ws_read_until(&mut ws, 1, "echo:world\n").await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.assert_running(&id, "a WebSocket attacher detached").await;

    // A container on a terminal: the attacher gets its terminal (input echoed by the tty).
    let c = s.pod.container("term", &s.image).command(&["sh"]).stdin(false).tty().build();
    let term = s.cri.create_start(&s.pod_id, &s.pod, c).await.expect("tty container");
    let url = s.cri.attach_url(&term, true, true, false).await.expect("Attach with a tty");
    let c =
        SpdyCommand::connect(&url, Want { stdin: true, stdout: true, tty: true, ..Want::default() }).await;
    c.send("echo sum=$((40+2))\n").await;
    let out = read_until(c.stdout(), "sum=42").await;
    assert!(out.contains("echo sum=$((40+2))"), "the terminal did not echo the input: {out:?}");
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.assert_running(&term, "a tty attacher detached").await;

    // `kubectl run -i` shape: stdinOnce, the container ends when its input does; the attach
    // session ends with it, and the container is left exited.
    let c = s.pod.container("once", &s.image).sh("read l; echo bye:$l; exit 4").stdin(true).build();
    let once = s.cri.create_start(&s.pod_id, &s.pod, c).await.expect("stdin-once container");
    let url = s.cri.attach_url(&once, false, true, true).await.expect("Attach");
    let c = SpdyCommand::connect(&url, Want { stdin: true, stdout: true, stderr: true, tty: false }).await;
    c.send("last\n").await;
    c.stdin().close();
    assert_eq!(read_all(c.stdout()).await, b"bye:last\n");
    assert_eq!(exit_code(&c.status().await), 0, "an attach reports no exit code of its own");
    drop(c);
    assert_eq!(s.cri.wait_exited(&once, Duration::from_secs(10)).await.exit_code, 4);

    // What attachers typed went to the container's own stdin: its log has the answers.
    let log = s.pod.log_directory().join("echo/0.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("echo:hello") && text.contains("echo:world") {
            break;
        }
        assert!(Instant::now() < deadline, "{} lacks the echoed input:\n{text}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.finish().await;
}

/// Sends `data` on a forwarded SPDY connection while reading the echo; returns the echo.
async fn echo_through(f: &stream::SpdyForward, data: &[u8]) -> Vec<u8> {
    let ((), echoed) = tokio::join!(
        async {
            f.data.write(data).await.unwrap_or_else(|e| panic!("writing to the forwarded port: {e}"));
        },
        async {
            let mut out = Vec::new();
            while out.len() < data.len() {
                match tokio::time::timeout(WAIT, f.data.read()).await {
                    Ok(Ok(Some(b))) => out.extend_from_slice(&b),
                    other => {
                        panic!("reading the echo after {} of {} bytes: {other:?}", out.len(), data.len())
                    }
                }
            }
            out
        }
    );
    echoed
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_spdy_and_websocket_both_ways_two_connections_at_once() {
    let mut s = setup("forward", None).await;
    s.echo_server().await;

    // SPDY: two connections open at once, each answered on its own.
    let url = s.cri.port_forward_url(&s.pod_id, &[]).await.expect("PortForward");
    let up = spdy_upgrade(&url, &["portforward.k8s.io"]).await;
    assert!(up.head.contains("x-stream-protocol-version: portforward.k8s.io\r\n"), "{}", up.head);
    let session = up.session();
    let first = spdy_forward(&session, ECHO_PORT, 0).await;
    let second = spdy_forward(&session, ECHO_PORT, 1).await;
    assert_eq!(echo_through(&second, b"second\n").await, b"second\n");
    assert_eq!(echo_through(&first, b"first\n").await, b"first\n");
    // A MiB each way on one while the other stays open.
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    assert!(echo_through(&first, &big).await == big, "1 MiB did not come back intact");
    assert_eq!(echo_through(&second, b"still here\n").await, b"still here\n");
    // Closing our side ends the server's cat: the connection finishes cleanly.
    for f in [&first, &second] {
        f.data.close();
        assert_eq!(read_all(&f.data).await, b"");
        assert_eq!(read_all(&f.error).await, b"", "error stream of a good connection");
    }
    // Nothing listens on port 9: the error stream says so.
    let refused = spdy_forward(&session, 9, 2).await;
    let msg = String::from_utf8(read_all(&refused.error).await).unwrap();
    assert!(msg.contains("port 9") && msg.to_lowercase().contains("refused"), "{msg}");
    drop(session);

    // WebSocket (v4 channels): one port per connection here, two connections at once.
    let mut conns = Vec::new();
    for _ in 0..2 {
        let url = s.cri.port_forward_url(&s.pod_id, &[ECHO_PORT]).await.expect("PortForward");
        let (mut ws, protocol) =
            ws_connect(&format!("{url}?port={ECHO_PORT}"), "v4.channel.k8s.io").await.expect("handshake");
        assert_eq!(protocol, "v4.channel.k8s.io");
        // Each channel first carries its port, little-endian.
        let mut firsts = vec![ws_next(&mut ws).await, ws_next(&mut ws).await];
        firsts.sort();
        let port = ECHO_PORT.to_le_bytes().to_vec();
        assert_eq!(firsts, vec![Some((0, port.clone())), Some((1, port))]);
        conns.push(ws);
    }
    ws_send(&mut conns[1], 0, b"ws-second\n").await;
    ws_read_until(&mut conns[1], 0, "ws-second\n").await;
    ws_send(&mut conns[0], 0, b"ws-first\n").await;
    ws_read_until(&mut conns[0], 0, "ws-first\n").await;
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    ws_send(&mut conns[0], 0, &chunk).await;
    let mut got = Vec::new();
    while got.len() < chunk.len() {
        match ws_next(&mut conns[0]).await {
            Some((0, data)) => got.extend_from_slice(&data),
            other => panic!("after {} bytes of the echo: {other:?}", got.len()),
        }
    }
    assert!(got == chunk, "64 KiB over WebSocket came back changed ({} bytes)", got.len());
    drop(conns);

    // A port outside the request's list is not reached: its error channel says why.
    let url = s.cri.port_forward_url(&s.pod_id, &[ECHO_PORT]).await.expect("PortForward");
    let (mut ws, _) = ws_connect(&format!("{url}?port=9"), "v4.channel.k8s.io").await.expect("handshake");
    let got = ws_read_until(&mut ws, 1, "not one of the ports").await;
    assert_eq!(got.get(&0).map(Vec::as_slice), Some(&[9u8, 0][..]), "{got:?}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_single_use_and_expire_and_bad_targets_are_refused() {
    let ttl = Duration::from_secs(2);
    let mut s = setup("tokens", Some(ttl)).await;
    let id = s.sh("main", "exec sleep 100000").await;
    let echo = &["echo", "hi"][..];

    // Used once: works; again: 404, over either transport.
    let url = s.cri.exec_url(&id, echo, false, false, false).await.expect("Exec");
    let c = SpdyCommand::connect(&url, Want { stdout: true, ..Want::default() }).await;
    assert_eq!(read_all(c.stdout()).await, b"hi\n");
    assert_eq!(exit_code(&c.status().await), 0);
    drop(c);
    assert_eq!(spdy_upgrade(&url, stream::SPDY_PROTOCOLS).await.status(), 404);
    let err = ws_connect(&url, "v5.channel.k8s.io").await.expect_err("a spent token was accepted");
    assert_eq!(stream::refused_status(&err), 404);
    // A refused attempt spends the token too (as the kubelet): a first try over WebSocket
    // with a protocol berth does not speak leaves nothing for SPDY.
    let url = s.cri.exec_url(&id, echo, false, false, false).await.expect("Exec");
    let err = ws_connect(&url, "v9.channel.k8s.io").await.expect_err("an unknown protocol was accepted");
    assert_eq!(stream::refused_status(&err), 403);
    assert_eq!(spdy_upgrade(&url, stream::SPDY_PROTOCOLS).await.status(), 404);

    // Past the TTL: refused, whatever the kind.
    let exec = s.cri.exec_url(&id, echo, false, false, false).await.expect("Exec");
    let attach = s.cri.attach_url(&id, false, false, true).await.expect("Attach");
    let forward = s.cri.port_forward_url(&s.pod_id, &[]).await.expect("PortForward");
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert_eq!(spdy_upgrade(&exec, stream::SPDY_PROTOCOLS).await.status(), 404);
    let err = ws_connect(&attach, "v5.channel.k8s.io").await.expect_err("an expired attach was accepted");
    assert_eq!(stream::refused_status(&err), 404);
    assert_eq!(spdy_upgrade(&forward, &["portforward.k8s.io"]).await.status(), 404);
    // A token is bound to its kind.
    let url = s.cri.exec_url(&id, echo, false, false, false).await.expect("Exec");
    assert_eq!(spdy_upgrade(&url.replace("/exec/", "/attach/"), stream::SPDY_PROTOCOLS).await.status(), 404);

    // Unknown and stopped targets get the CRI codes the kubelet maps.
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let err =
        s.cri.exec_url(unknown, echo, false, false, false).await.expect_err("Exec of an unknown container");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err =
        s.cri.attach_url(unknown, false, false, true).await.expect_err("Attach to an unknown container");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = s.cri.port_forward_url(unknown, &[80]).await.expect_err("PortForward of an unknown sandbox");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let done = s.sh("done", "exit 0").await;
    s.cri.wait_exited(&done, Duration::from_secs(20)).await;
    let err =
        s.cri.exec_url(&done, echo, false, false, false).await.expect_err("Exec in a stopped container");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = s.cri.attach_url(&done, false, false, true).await.expect_err("Attach to a stopped container");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    s.finish().await;
}

/// VmHWM (the peak) and VmRSS of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {path}:\n{status}"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// What berthd's peak memory may grow by while it refuses the bomb: nothing like the 256 GiB the
/// bomb asks for, with room for allocator noise and the sessions around it.
const BOMB_GROWTH_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn spdy_header_bomb_is_refused_and_berthd_stays_up_with_bounded_memory() {
    let mut s = setup("bomb", None).await;
    let id = s.sh("main", "exec sleep 100000").await;
    let echo = &["echo", "hi"][..];
    // One ordinary session first, so what any session costs is in the baseline.
    let url = s.cri.exec_url(&id, echo, false, false, false).await.expect("Exec");
    let c = SpdyCommand::connect(&url, Want { stdout: true, ..Want::default() }).await;
    assert_eq!(read_all(c.stdout()).await, b"hi\n");
    drop(c);
    let pid = s.berthd.pid().expect("berthd is running");
    let (peak_before, rss_before) = memory_kib(pid);

    // The bomb, with a valid token: one SYN_STREAM of about 2 KB whose header block inflates to
    // a name of almost 512 KiB with a value of as many NULs, which is one value per NUL: a copy
    // of the name for each was 256 GiB. (Just under 512 KiB each, so the block fits the 1 MiB
    // limit berth had before; exactly 512 KiB was refused by that limit already.)
    let url = s.cri.exec_url(&id, echo, false, false, false).await.expect("Exec");
    let (head, mut tcp) = stream::spdy_upgrade_raw(&url, stream::SPDY_PROTOCOLS).await;
    assert!(head.starts_with("http/1.1 101"), "no SPDY upgrade:\n{head}");
    let n = (512 << 10) - 16;
    let bomb = Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        flags: 0,
        headers: Headers::new().with(&"a".repeat(n), &"\0".repeat(n)),
    };
    let mut wire = BytesMut::new();
    FrameEncoder::new().encode(&bomb, &mut wire).expect("encoding the bomb");
    assert!(wire.len() < 4096, "the bomb is {} bytes on the wire", wire.len());
    tcp.write_all(&wire).await.expect("sending the bomb");
    // berthd answers GOAWAY (protocol error) and closes the connection.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("berthd neither answered nor closed the bomb's connection");
    read.unwrap_or_else(|e| {
        panic!("reading berthd's answer to the bomb ({} bytes so far): {e}", answer.len())
    });
    let mut buf = BytesMut::from(&answer[..]);
    let mut frames = Vec::new();
    let mut decoder = FrameDecoder::new();
    while let Ok(Some(f)) = decoder.decode(&mut buf) {
        frames.push(f);
    }
    assert!(
        frames.iter().any(|f| matches!(f, Frame::GoAway { status: goaway::PROTOCOL_ERROR, .. })),
        "berthd's answer to the bomb: {frames:?}"
    );

    // berthd is up, answers, and did not grow with what the bomb asked for.
    s.cri.runtime.version(VersionRequest::default()).await.expect("Version after the bomb");
    assert_eq!(s.berthd.pid(), Some(pid), "berthd restarted");
    let (peak_after, rss_after) = memory_kib(pid);
    eprintln!(
        "berthd memory around the bomb: peak {peak_before} -> {peak_after} KiB, rss {rss_before} -> {rss_after} KiB"
    );
    assert!(
        peak_after <= peak_before + BOMB_GROWTH_KIB,
        "berthd's peak memory grew from {peak_before} KiB to {peak_after} KiB on one bomb"
    );
    // A later exec works.
    let url = s.cri.exec_url(&id, echo, false, false, false).await.expect("Exec after the bomb");
    let c = SpdyCommand::connect(&url, Want { stdout: true, ..Want::default() }).await;
    assert_eq!(read_all(c.stdout()).await, b"hi\n");
    assert_eq!(exit_code(&c.status().await), 0);
    drop(c);
    s.finish().await;
}

/// crictl from PATH, else the critest kit's next to this checkout.
fn crictl() -> Option<PathBuf> {
    crate::harness::which("crictl").or_else(|| {
        let kit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/critest/bin/crictl");
        kit.is_file().then_some(kit)
    })
}

/// A local TCP port nobody listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    l.local_addr().expect("probe port address").port()
}

/// Reads `r` line by line until a line contains `want`; returns what came. Panics after [`WAIT`].
async fn read_lines_until<R: tokio::io::AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    want: &str,
    what: &str,
) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut line = String::new();
        match tokio::time::timeout_at(deadline, r.read_line(&mut line)).await {
            Ok(Ok(0)) => panic!("{what} ended before printing {want:?}:\n{seen}"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("reading {what}: {e}\n{seen}"),
            Err(_) => panic!("{what} did not print {want:?} within {WAIT:?}:\n{seen}"),
        }
        seen.push_str(&line);
        if line.contains(want) {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_attach_and_port_forward() {
    let Some(crictl) = crictl() else {
        eprintln!(
            "crictl not found in PATH nor in ../shared/critest/bin: skipping the crictl streaming checks"
        );
        return;
    };
    let Some(script) = crate::harness::which("script") else {
        eprintln!("`script` (util-linux) not found: skipping the crictl streaming checks");
        return;
    };
    let mut s = setup("crictl", None).await;
    let id = s.sh("main", "exec sleep 100000").await;
    let echo = s.echo_container().await;
    s.echo_server().await;
    let endpoint = format!("unix://{}", s.berthd.socket().display());
    let crictl_cmd = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&crictl);
        cmd.args(["--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint, "--timeout", "20s"])
            .args(args)
            .kill_on_drop(true);
        cmd
    };

    // exec -it on a pty (script gives crictl one): the shell has a terminal of crictl's size (sent
    // on the resize stream, which may land just after the process started: look a few times).
    let inner = "for i in 1 2 3 4 5 6 7 8 9 10; do [ \"$(stty size)\" = \"22 77\" ] && break; sleep 0.2; done; \
                 tty; stty size; echo crictl-tty-ok";
    let line = format!(
        "stty rows 22 cols 77; {} --runtime-endpoint {endpoint} exec -it {id} sh -c '{inner}'",
        crictl.display()
    );
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(&script)
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("crictl exec -it timed out")
    .expect("running script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "crictl exec -it failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("/dev/pts/") && text.contains("22 77") && text.contains("crictl-tty-ok"),
        "crictl exec -it printed:\n{text}"
    );

    // exec with stdin and a non-zero exit code.
    let mut child = crictl_cmd(&["exec", "-i", &id, "sh", "-c", "read l; echo got:$l; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning crictl exec");
    child.stdin.take().unwrap().write_all(b"typed\n").await.expect("writing to crictl's stdin");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("crictl exec -i timed out")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:typed\n");
    assert!(!out.status.success(), "crictl exec of `exit 3` succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit code 3") || out.status.code() == Some(3), "{}: {stderr}", out.status);

    // attach: the container's output, and our input echoed back.
    let mut child = crictl_cmd(&["attach", "-i", &echo])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning crictl attach");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    read_lines_until(&mut stdout, "tick", "crictl attach").await;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"from-crictl\n").await.expect("writing to crictl attach");
    read_lines_until(&mut stdout, "echo:from-crictl", "crictl attach").await;
    child.kill().await.expect("stopping crictl attach");
    s.assert_running(&echo, "crictl attach went away").await;

    // port-forward: two local connections at once through crictl.
    let local = free_port();
    let mut child = crictl_cmd(&["port-forward", &s.pod_id, &format!("{local}:{ECHO_PORT}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning crictl port-forward");
    let deadline = Instant::now() + WAIT;
    let mut first = loop {
        match TcpStream::connect(("127.0.0.1", local)).await {
            Ok(c) => break c,
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    let _ = child.stderr.take().unwrap().read_to_string(&mut err).await;
                    panic!("crictl port-forward exited ({status}): {err}");
                }
                assert!(Instant::now() < deadline, "crictl port-forward never listened on {local}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut second = TcpStream::connect(("127.0.0.1", local)).await.expect("second local connection");
    for (conn, text) in [(&mut second, "via-crictl-2\n"), (&mut first, "via-crictl-1\n")] {
        conn.write_all(text.as_bytes()).await.expect("writing through crictl port-forward");
        let mut buf = vec![0u8; text.len()];
        tokio::time::timeout(WAIT, conn.read_exact(&mut buf))
            .await
            .expect("no echo through crictl port-forward")
            .expect("reading through crictl port-forward");
        assert_eq!(String::from_utf8_lossy(&buf), text);
    }
    drop((first, second));
    child.kill().await.expect("stopping crictl port-forward");
    s.finish().await;
}
