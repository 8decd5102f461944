//! The shim against real OCI runtimes (Debian's runc, and crun), as root: bundles built from
//! busybox-static, a shim launched through `berth::task::launch`, every container, process and
//! cgroup removed afterwards even when a test fails. Skipped (with a message) when not root or
//! when the runtime or busybox is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth::ErrorKind;
use berth::task::{
    self, AttachOptions, ContainerStatus, CreateOptions, ExecOptions, ExecSyncOptions, LaunchOptions,
    ProcessStream, ShimApi, ShimClient, StreamOutput, StreamReceiver,
};
use futures_util::StreamExt;
use serde_json::json;

const RUNC: &str = "/usr/sbin/runc";
const CRUN: &str = "/usr/bin/crun";
const BUSYBOX: &str = "/bin/busybox";

fn can_run(runtime: &str) -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new(runtime).exists() && Path::new(BUSYBOX).exists();
    if !ok {
        eprintln!("skipping: needs root, {runtime} and {BUSYBOX}");
    }
    ok
}

/// A pod under test: a temp state dir, a runtime root, the shim, and the containers to clean up.
struct Pod {
    tmp: tempfile::TempDir,
    runtime: PathBuf,
    runtime_root: PathBuf,
    client: ShimClient,
    created: Vec<String>,
}

impl Pod {
    async fn launch(runtime: &str) -> Pod {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = if runtime == CRUN { crun_wrapper(tmp.path()) } else { PathBuf::from(runtime) };
        Pod::launch_in(tmp, runtime).await
    }

    /// A pod in `tmp` whose shim runs `runtime`.
    async fn launch_in(tmp: tempfile::TempDir, runtime: PathBuf) -> Pod {
        let runtime_root = tmp.path().join("runtime-root");
        let mut opts = LaunchOptions::new(
            env!("CARGO_BIN_EXE_berth-shim"),
            "pod1",
            tmp.path().join("pods/pod1"),
            &runtime,
        );
        opts.runtime_root = Some(runtime_root.clone());
        let client = task::launch(&opts).await.expect("launching the shim");
        Pod { tmp, runtime, runtime_root, client, created: Vec::new() }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("pods/pod1")
    }

    fn shim_pid(&self) -> i32 {
        std::fs::read_to_string(self.dir().join("shim.pid")).unwrap().trim().parse().unwrap()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.tmp.path().join(format!("{id}.log"))
    }

    /// Writes a bundle for `args` (no tty), returning the options to create it with.
    fn bundle(&mut self, id: &str, args: &[&str]) -> CreateOptions {
        let bundle = self.tmp.path().join("bundles").join(id);
        let spec = bundle_spec(&bundle, args, &cgroup_name(self, id));
        std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        self.created.push(id.to_string());
        CreateOptions { id: id.into(), bundle, stdin: false, tty: false, log_path: Some(self.log_path(id)) }
    }

    /// Writes a bundle for `args` and creates the container from it.
    async fn create(&mut self, id: &str, args: &[&str], tweak: impl FnOnce(&mut serde_json::Value)) -> u32 {
        let bundle = self.tmp.path().join("bundles").join(id);
        let mut spec = bundle_spec(&bundle, args, &cgroup_name(self, id));
        tweak(&mut spec);
        let tty = spec["process"]["terminal"].as_bool().unwrap_or(false);
        std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        self.created.push(id.to_string());
        let opts =
            CreateOptions { id: id.into(), bundle, stdin: false, tty, log_path: Some(self.log_path(id)) };
        self.client.create(&opts).await.expect("creating the container")
    }

    /// The log's records without their timestamps.
    fn log(&self, id: &str) -> Vec<String> {
        read_records(&self.log_path(id))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for id in &self.created {
            let _ = Command::new(&self.runtime)
                .arg("--root")
                .arg(&self.runtime_root)
                .args(["delete", "--force", id])
                .output();
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir().join("shim.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

fn read_records(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Split on \n only: `lines()` would also drop a \r that belongs to the content.
    text.split_terminator('\n')
        .map(|l| {
            let (ts, rest) = l.split_once(' ').unwrap();
            assert!(ts.ends_with('Z') && ts.contains('T'), "timestamp {ts:?}");
            rest.to_string()
        })
        .collect()
}

/// A per-test cgroup name, so parallel tests and leftovers never collide.
fn cgroup_name(pod: &Pod, id: &str) -> String {
    let tag = pod.tmp.path().file_name().unwrap().to_string_lossy().replace('.', "");
    format!("/berth-test-{tag}-{id}")
}

/// crun refuses hybrid cgroups while the v2 hierarchy has controllers (as on this machine); the
/// wrapper hides /sys/fs/cgroup/unified in a private mount namespace so crun sees plain v1.
fn crun_wrapper(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("crun");
    let script = format!(
        "#!/bin/sh\nexec unshare -m --propagation private sh -c 'mount -t tmpfs none /sys/fs/cgroup/unified && exec {CRUN} \"$@\"' crun \"$@\"\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A busybox rootfs and the `runc spec` defaults, adjusted: host network, writable root, no tty.
fn bundle_spec(bundle: &Path, args: &[&str], cgroup: &str) -> serde_json::Value {
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    for tool in ["sh", "echo", "sleep", "cat", "true", "false", "yes", "head", "tty", "stty"] {
        std::os::unix::fs::symlink("busybox", bin.join(tool)).unwrap();
    }
    let out = Command::new(RUNC).args(["spec", "--bundle"]).arg(bundle).output().unwrap();
    assert!(out.status.success(), "runc spec: {out:?}");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    spec["process"]["args"] = json!(args);
    spec["process"]["terminal"] = json!(false);
    spec["root"]["readonly"] = json!(false);
    spec["linux"]["cgroupsPath"] = json!(cgroup);
    let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network");
    spec
}

fn without_pid_namespace(spec: &mut serde_json::Value) {
    spec["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid");
}

fn process(args: &[&str]) -> Vec<u8> {
    process_on(args, false)
}

fn process_on(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/",
    }))
    .unwrap()
}

fn exec(id: &str, args: &[&str], timeout: Duration, max_output_bytes: usize) -> ExecSyncOptions {
    ExecSyncOptions { id: id.into(), process_json: process(args), timeout, max_output_bytes }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_start_wait(runtime: &str) {
    let mut pod = Pod::launch(runtime).await;
    let mut events = pod.client.events().await.unwrap();
    let pid = pod.create("c1", &["sh", "-c", "echo hi; echo err >&2; exit 3"], |_| {}).await;
    assert!(pid > 0);
    let state = pod.client.state("c1").await.unwrap();
    assert_eq!((state.status, state.pid), (ContainerStatus::Created, pid));
    assert_eq!(pod.client.start("c1").await.unwrap(), pid);

    let exit = pod.client.wait("c1").await.unwrap();
    assert_eq!((exit.id.as_str(), exit.pid, exit.exit_code, exit.oom_killed), ("c1", pid, 3, false));
    let mut log = pod.log("c1");
    log.sort();
    assert_eq!(log, ["stderr F err", "stdout F hi"]);

    let event = events.next().await.unwrap().unwrap();
    assert_eq!(event, exit);
    let state = pod.client.state("c1").await.unwrap();
    assert_eq!((state.status, state.exit_code), (ContainerStatus::Stopped, 3));
    assert!(state.started_at.is_some() && state.exited_at >= state.started_at);
    let recorded = task::recorded_states(&pod.dir()).unwrap();
    assert_eq!((recorded[0].status, recorded[0].exit_code), (ContainerStatus::Stopped, 3));

    // Stopped: kill is a no-op, Start is refused, Wait answers at once.
    pod.client.kill("c1", 9, false).await.unwrap();
    assert_eq!(pod.client.start("c1").await.unwrap_err().kind(), ErrorKind::FailedPrecondition);
    assert_eq!(pod.client.wait("c1").await.unwrap(), exit);

    pod.client.delete("c1").await.unwrap();
    pod.client.delete("c1").await.unwrap();
    assert_eq!(pod.client.state("c1").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(!pod.dir().join("containers/c1").exists());
    assert!(pod.client.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn runc_create_start_wait_and_log() {
    if can_run(RUNC) {
        create_start_wait(RUNC).await;
    }
}

#[tokio::test]
async fn crun_create_start_wait_and_log() {
    if can_run(CRUN) && can_run(RUNC) {
        create_start_wait(CRUN).await;
    }
}

#[tokio::test]
async fn sigterm_ends_a_sleep_with_143() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    // Outside a pid namespace: as a namespace's init, sleep would ignore SIGTERM.
    pod.create("sleeper", &["sleep", "1000"], without_pid_namespace).await;
    pod.client.start("sleeper").await.unwrap();
    assert_eq!(pod.client.state("sleeper").await.unwrap().status, ContainerStatus::Running);
    assert_eq!(pod.client.kill("sleeper", 0, false).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
    pod.client.kill("sleeper", 15, false).await.unwrap();
    assert_eq!(pod.client.wait("sleeper").await.unwrap().exit_code, 143);
    pod.client.delete("sleeper").await.unwrap();
}

#[tokio::test]
async fn exec_sync_output_timeout_and_cap() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    pod.create("box", &["sleep", "1000"], |_| {}).await;
    pod.client.start("box").await.unwrap();
    let dup = CreateOptions {
        id: "box".into(),
        bundle: pod.tmp.path().join("bundles/box"),
        stdin: false,
        tty: false,
        log_path: None,
    };
    assert_eq!(pod.client.create(&dup).await.unwrap_err().kind(), ErrorKind::AlreadyExists);

    // `echo` usually exits before `runc exec -d` does: its exit is claimed after the fact.
    let r = pod.client.exec_sync(&exec("box", &["echo", "ok"], Duration::from_secs(10), 0)).await.unwrap();
    assert_eq!(
        (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice(), r.timed_out),
        (0, &b"ok\n"[..], &b""[..], false)
    );

    let r = pod
        .client
        .exec_sync(&exec("box", &["sh", "-c", "echo out; echo err >&2; exit 7"], Duration::ZERO, 0))
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()), (7, &b"out\n"[..], &b"err\n"[..]));

    let start = Instant::now();
    let r =
        pod.client.exec_sync(&exec("box", &["sleep", "10"], Duration::from_millis(500), 0)).await.unwrap();
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 137);
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    // Only the container's init is left in its cgroup: the exec'd sleep is gone.
    let procs_path = PathBuf::from("/sys/fs/cgroup/pids")
        .join(cgroup_name(&pod, "box").trim_start_matches('/'))
        .join("cgroup.procs");
    let procs = std::fs::read_to_string(&procs_path).unwrap();
    assert_eq!(procs.lines().count(), 1, "processes left: {procs}");

    // A client that hangs up takes its exec with it, even without a timeout.
    let client = pod.client.clone();
    let hung_up =
        tokio::spawn(
            async move { client.exec_sync(&exec("box", &["sleep", "100"], Duration::ZERO, 0)).await },
        );
    wait_until("the exec to start", || std::fs::read_to_string(&procs_path).unwrap().lines().count() == 2)
        .await;
    hung_up.abort();
    wait_until("the exec to be killed", || {
        std::fs::read_to_string(&procs_path).unwrap().lines().count() == 1
    })
    .await;

    let r = pod
        .client
        .exec_sync(&exec("box", &["sh", "-c", "yes | head -c 50000000"], Duration::from_secs(60), 1000))
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.stdout.len(), r.timed_out), (0, 1000, false));
    assert!(r.stdout.starts_with(b"y\ny\n"));

    let err = pod.client.exec_sync(&exec("box", &["/nope"], Duration::from_secs(10), 0)).await.unwrap_err();
    assert!(err.to_string().contains("runc exec failed") && err.to_string().contains("/nope"), "{err}");

    let missing = exec("nope", &["true"], Duration::ZERO, 0);
    assert_eq!(pod.client.exec_sync(&missing).await.unwrap_err().kind(), ErrorKind::NotFound);

    pod.client.kill("box", 9, false).await.unwrap();
    assert_eq!(pod.client.wait("box").await.unwrap().exit_code, 137);
    let stopped = exec("box", &["true"], Duration::ZERO, 0);
    assert_eq!(pod.client.exec_sync(&stopped).await.unwrap_err().kind(), ErrorKind::FailedPrecondition);
    pod.client.delete("box").await.unwrap();
}

#[tokio::test]
async fn quick_exit_of_true_is_reported() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    let mut events = pod.client.events().await.unwrap();
    pod.create("t", &["true"], |_| {}).await;
    pod.client.start("t").await.unwrap();
    let event = events.next().await.unwrap().unwrap();
    assert_eq!((event.id.as_str(), event.exit_code), ("t", 0));
    assert_eq!(pod.client.wait("t").await.unwrap().exit_code, 0);
    pod.client.delete("t").await.unwrap();

    // A created container that never starts is killed by Delete, and its exit still reported.
    let pid = pod.create("never", &["true"], |_| {}).await;
    pod.client.delete("never").await.unwrap();
    let event = events.next().await.unwrap().unwrap();
    assert_eq!((event.id.as_str(), event.pid, event.exit_code), ("never", pid, 137));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[tokio::test]
async fn run_creates_and_starts_in_one_call() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    let mut events = pod.client.events().await.unwrap();
    let opts = pod.bundle("r", &["sh", "-c", "echo hi; exit 3"]);
    let pid = pod.client.run(&opts).await.unwrap();
    assert!(pid > 0);
    // Running or already exited: never merely created, so Start is refused.
    assert_ne!(pod.client.state("r").await.unwrap().status, ContainerStatus::Created);
    assert_eq!(pod.client.start("r").await.unwrap_err().kind(), ErrorKind::FailedPrecondition);
    let exit = pod.client.wait("r").await.unwrap();
    assert_eq!((exit.pid, exit.exit_code), (pid, 3));
    assert_eq!(events.next().await.unwrap().unwrap(), exit);
    assert_eq!(pod.log("r"), ["stdout F hi"]);
    let state = pod.client.state("r").await.unwrap();
    assert!(state.started_at.is_some() && state.exited_at >= state.started_at);
    pod.client.delete("r").await.unwrap();

    // A command that cannot run fails the call with the runtime's message and leaves nothing.
    let opts = pod.bundle("bad", &["/nope"]);
    let err = pod.client.run(&opts).await.unwrap_err();
    assert!(err.to_string().contains("/nope"), "{err}");
    assert_eq!(pod.client.state("bad").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(!pod.dir().join("containers/bad").exists());
    assert!(pod.client.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn shim_survives_its_launcher_and_shuts_down_when_idle() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    let shim_pid = pod.shim_pid();
    let stat = std::fs::read_to_string(format!("/proc/{shim_pid}/stat")).unwrap();
    let ppid: u32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_ne!(ppid, std::process::id(), "the shim is detached from its launcher");

    pod.create("c", &["sleep", "1000"], |_| {}).await;
    pod.client.start("c").await.unwrap();
    // berthd "restarts": a new client, and a second launch reuses the running shim.
    pod.client = ShimClient::connect(&pod.dir()).await.unwrap();
    assert_eq!(pod.client.list().await.unwrap()[0].status, ContainerStatus::Running);
    let mut opts = LaunchOptions::new(env!("CARGO_BIN_EXE_berth-shim"), "pod1", pod.dir(), RUNC);
    opts.runtime_root = Some(pod.runtime_root.clone());
    let again = task::launch(&opts).await.unwrap();
    assert_eq!(again.ping().await.unwrap().pid as i32, shim_pid);

    let shim: &dyn ShimApi = &pod.client;
    assert_eq!(shim.shutdown().await.unwrap_err().kind(), ErrorKind::FailedPrecondition);
    // Delete kills a running container and waits for its exit.
    shim.delete("c").await.unwrap();
    shim.shutdown().await.unwrap();
    wait_until("the shim to exit", || {
        std::fs::read_to_string(format!("/proc/{shim_pid}/stat"))
            .map_or(true, |s| s.rsplit(')').next().unwrap().trim_start().starts_with('Z'))
    })
    .await;
    assert!(!pod.dir().join("shim.sock").exists() && !pod.dir().join("shim.pid").exists());
    assert_eq!(ShimClient::connect(&pod.dir()).await.unwrap_err().kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn tty_output_reaches_the_log() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    pod.create("tty", &["sh", "-c", "echo tty-hello"], |spec| spec["process"]["terminal"] = json!(true))
        .await;
    pod.client.start("tty").await.unwrap();
    assert_eq!(pod.client.wait("tty").await.unwrap().exit_code, 0);
    // The pty turns \n into \r\n; the \r is kept as content.
    assert_eq!(pod.log("tty"), ["stdout F tty-hello\r"]);
    pod.client.delete("tty").await.unwrap();
}

#[tokio::test]
async fn stdin_pipe_is_held_open_for_attach() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    for (id, stdin) in [("closed", false), ("open", true)] {
        let bundle = pod.tmp.path().join("bundles").join(id);
        let spec = bundle_spec(&bundle, &["sh", "-c", "read x; echo eof"], &cgroup_name(&pod, id));
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        pod.created.push(id.to_string());
        let opts =
            CreateOptions { id: id.into(), bundle, stdin, tty: false, log_path: Some(pod.log_path(id)) };
        pod.client.create(&opts).await.unwrap();
        pod.client.start(id).await.unwrap();
    }
    // Without stdin, `read` sees /dev/null's end at once; with it, the shim holds the write end.
    assert_eq!(pod.client.wait("closed").await.unwrap().exit_code, 0);
    assert_eq!(pod.log("closed"), ["stdout F eof"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pod.client.state("open").await.unwrap().status, ContainerStatus::Running);
    pod.client.delete("open").await.unwrap();
    pod.client.delete("closed").await.unwrap();
}

#[tokio::test]
async fn reopen_log_update_and_oom() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    pod.create(
        "talker",
        &["sh", "-c", "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.1; done"],
        |_| {},
    )
    .await;
    pod.client.start("talker").await.unwrap();
    let path = pod.log_path("talker");
    wait_until("a first line", || !read_records(&path).is_empty()).await;
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    pod.client.reopen_log("talker").await.unwrap();
    wait_until("a line in the new file", || !read_records(&path).is_empty()).await;
    assert!(read_records(&rotated).iter().all(|l| l.starts_with("stdout F line")));

    pod.client.update("talker", br#"{"memory":{"limit":67108864}}"#).await.unwrap();
    let limit = PathBuf::from("/sys/fs/cgroup/memory")
        .join(cgroup_name(&pod, "talker").trim_start_matches('/'))
        .join("memory.limit_in_bytes");
    assert_eq!(std::fs::read_to_string(limit).unwrap().trim(), "67108864");
    assert_eq!(pod.client.update("nope", b"{}").await.unwrap_err().kind(), ErrorKind::NotFound);
    pod.client.kill("talker", 9, false).await.unwrap();
    assert_eq!(pod.client.wait("talker").await.unwrap().exit_code, 137);

    // A shell that keeps 200 MB in a variable under a 32 MiB limit is OOM-killed.
    pod.create("hog", &["sh", "-c", "x=$(yes | head -c 200000000); echo survived"], |spec| {
        spec["linux"]["resources"]["memory"] = json!({"limit": 33554432});
    })
    .await;
    pod.client.start("hog").await.unwrap();
    let exit = pod.client.wait("hog").await.unwrap();
    assert_eq!((exit.exit_code, exit.oom_killed), (137, true), "{exit:?}");
    assert!(pod.client.state("hog").await.unwrap().oom_killed);
    pod.client.delete("hog").await.unwrap();
    pod.client.delete("talker").await.unwrap();
}

/// Reports the memory of a shim serving two containers (one logging) after an exec. Checks only
/// what does not depend on the build profile: one thread, and little private memory.
#[tokio::test]
async fn serving_shim_stays_small() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    pod.create("a", &["sleep", "1000"], |_| {}).await;
    pod.client.start("a").await.unwrap();
    pod.create("b", &["sh", "-c", "while true; do echo x; sleep 0.1; done"], |_| {}).await;
    pod.client.start("b").await.unwrap();
    let r = pod.client.exec_sync(&exec("a", &["echo", "ok"], Duration::from_secs(10), 0)).await.unwrap();
    assert_eq!(r.exit_code, 0);
    let log = pod.log_path("b");
    wait_until("some output of b", || read_records(&log).len() >= 3).await;

    // An attacher of the talking container and a streamed exec, both kept open while measuring.
    let mut attached = pod.client.attach(&attach_opts("b", false, false)).await.unwrap();
    let mut seen = Seen::default();
    seen.until(&mut attached.receiver, |s| s.stdout.contains("x\n")).await;
    let exec = pod.client.exec_stream(&exec_stream("a", &["sleep", "100"], false, true)).await.unwrap();

    let status = std::fs::read_to_string(format!("/proc/{}/status", pod.shim_pid())).unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", pod.shim_pid())).unwrap();
    let field = |text: &str, name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    eprintln!(
        "serving shim with 2 containers, an attach and an exec stream: VmRSS {} kB (RssAnon {} kB, \
         RssFile {} kB), Pss {} kB (Pss_Anon {} kB)",
        field(&status, "VmRSS:"),
        field(&status, "RssAnon:"),
        field(&status, "RssFile:"),
        field(&rollup, "Pss:"),
        field(&rollup, "Pss_Anon:"),
    );
    let field = |name: &str| field(&status, name);
    drop((attached, exec));
    assert_eq!(field("Threads:"), 1, "the shim runs on one thread");
    assert!(field("RssAnon:") < 2048, "private memory grew: {status}");

    for id in ["a", "b"] {
        pod.client.kill(id, 9, false).await.unwrap();
        assert_eq!(pod.client.wait(id).await.unwrap().exit_code, 137);
        pod.client.delete(id).await.unwrap();
    }
}

/// An exec of `args` with every stream (stderr only without a tty).
fn exec_stream(id: &str, args: &[&str], tty: bool, stdin: bool) -> ExecOptions {
    ExecOptions { id: id.into(), process_json: process_on(args, tty), tty, stdin, stdout: true, stderr: !tty }
}

/// Output read so far on a session.
#[derive(Debug, Default)]
struct Seen {
    stdout: String,
    stderr: String,
    exit: Option<i32>,
}

impl Seen {
    /// Reads until `done` holds (or the stream ends), within 20 s.
    async fn until(&mut self, rx: &mut StreamReceiver, mut done: impl FnMut(&Seen) -> bool) {
        let read = async {
            while !done(self) {
                match rx.next().await.unwrap() {
                    Some(StreamOutput::Stdout(d)) => self.stdout.push_str(&String::from_utf8_lossy(&d)),
                    Some(StreamOutput::Stderr(d)) => self.stderr.push_str(&String::from_utf8_lossy(&d)),
                    Some(StreamOutput::Exit(code)) => self.exit = Some(code),
                    None => return,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("timed out, saw {self:?}"));
    }

    async fn to_exit(rx: &mut StreamReceiver) -> Seen {
        let mut seen = Seen::default();
        seen.until(rx, |s| s.exit.is_some()).await;
        assert_eq!(rx.next().await.unwrap(), None, "nothing after the exit");
        seen
    }
}

async fn running_box(pod: &mut Pod) {
    pod.create("box", &["sleep", "1000"], |_| {}).await;
    pod.client.start("box").await.unwrap();
}

fn cgroup_procs(pod: &Pod, id: &str) -> usize {
    let path = PathBuf::from("/sys/fs/cgroup/pids")
        .join(cgroup_name(pod, id).trim_start_matches('/'))
        .join("cgroup.procs");
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[tokio::test]
async fn exec_stream_carries_stdin_stdout_stderr_and_the_exit() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    running_box(&mut pod).await;
    let script = "read x; echo got:$x; echo err >&2; exit 7";
    let mut s =
        pod.client.exec_stream(&exec_stream("box", &["sh", "-c", script], false, true)).await.unwrap();
    assert!(s.pid > 0);
    s.sender.stdin(b"hello\n").await.unwrap();
    let seen = Seen::to_exit(&mut s.receiver).await;
    assert_eq!((seen.stdout.as_str(), seen.stderr.as_str(), seen.exit), ("got:hello\n", "err\n", Some(7)));

    // Closing stdin is the end of file of a process reading it.
    let mut s = pod.client.exec_stream(&exec_stream("box", &["cat"], false, true)).await.unwrap();
    s.sender.stdin(b"a\nb\n").await.unwrap();
    s.sender.close_stdin().await.unwrap();
    let seen = Seen::to_exit(&mut s.receiver).await;
    assert_eq!((seen.stdout.as_str(), seen.exit), ("a\nb\n", Some(0)));

    // A large output arrives whole and in order, streamed rather than buffered.
    let mut s = pod
        .client
        .exec_stream(&exec_stream("box", &["sh", "-c", "yes abcdefgh | head -c 20000000"], false, false))
        .await
        .unwrap();
    let seen = Seen::to_exit(&mut s.receiver).await;
    assert_eq!((seen.stdout.len(), seen.exit), (20_000_000, Some(0)));
    assert!(seen.stdout.lines().all(|l| l == "abcdefgh" || "abcdefgh".starts_with(l)));

    let err = pod.client.exec_stream(&exec_stream("box", &["/nope"], false, false)).await.err().unwrap();
    assert!(err.to_string().contains("/nope"), "{err}");
    let mismatch = ExecOptions { tty: true, ..exec_stream("box", &["true"], false, false) };
    assert_eq!(pod.client.exec_stream(&mismatch).await.err().unwrap().kind(), ErrorKind::InvalidArgument);
    let missing = exec_stream("nope", &["true"], false, false);
    assert_eq!(pod.client.exec_stream(&missing).await.err().unwrap().kind(), ErrorKind::NotFound);
    assert_eq!(cgroup_procs(&pod, "box"), 1, "every exec'd process is gone");
    pod.client.delete("box").await.unwrap();
}

#[tokio::test]
async fn exec_stream_with_a_tty_resizes() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    running_box(&mut pod).await;
    let opts = exec_stream("box", &["sh", "-c", "tty; read x; stty size"], true, true);
    let mut s = pod.client.exec_stream(&opts).await.unwrap();
    let mut seen = Seen::default();
    seen.until(&mut s.receiver, |s| s.stdout.contains('\n')).await;
    assert!(seen.stdout.starts_with("/dev/pts/"), "{seen:?}");
    s.sender.resize(100, 40).await.unwrap();
    s.sender.stdin(b"go\n").await.unwrap();
    seen.until(&mut s.receiver, |s| s.exit.is_some()).await;
    // The terminal echoes the input and ends lines with \r\n.
    assert!(seen.stdout.contains("go\r\n40 100\r\n"), "{seen:?}");
    assert_eq!((seen.stderr.as_str(), seen.exit), ("", Some(0)));
    pod.client.delete("box").await.unwrap();
}

#[tokio::test]
async fn exec_stream_client_going_away_kills_the_process() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    running_box(&mut pod).await;
    let s = pod.client.exec_stream(&exec_stream("box", &["sleep", "1000"], false, false)).await.unwrap();
    wait_until("the exec to start", || cgroup_procs(&pod, "box") == 2).await;
    drop(s);
    wait_until("the exec to be killed", || cgroup_procs(&pod, "box") == 1).await;

    // Same while the process is writing and the client is not reading.
    let s = pod.client.exec_stream(&exec_stream("box", &["yes"], false, true)).await.unwrap();
    wait_until("the exec to start", || cgroup_procs(&pod, "box") == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ProcessStream { sender, receiver, .. } = s;
    drop(sender);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cgroup_procs(&pod, "box"), 2, "dropping only the sender keeps the session");
    drop(receiver);
    wait_until("the exec to be killed", || cgroup_procs(&pod, "box") == 1).await;

    // Same while the process does not read the stdin the client keeps sending.
    let mut s = pod.client.exec_stream(&exec_stream("box", &["sleep", "1000"], false, true)).await.unwrap();
    wait_until("the exec to start", || cgroup_procs(&pod, "box") == 2).await;
    let flood = tokio::time::timeout(Duration::from_millis(500), s.sender.stdin(&vec![b'x'; 8 << 20])).await;
    assert!(flood.is_err(), "8 MiB of stdin went somewhere although nothing reads it");
    drop(s);
    wait_until("the exec to be killed", || cgroup_procs(&pod, "box") == 1).await;
    assert_eq!(pod.client.state("box").await.unwrap().status, ContainerStatus::Running);
    pod.client.delete("box").await.unwrap();
}

fn attach_opts(id: &str, stdin: bool, tty: bool) -> AttachOptions {
    AttachOptions { id: id.into(), stdin, stdout: true, stderr: !tty, tty }
}

/// Creates and starts a container with a stdin pipe (or a pty).
async fn create_with_stdin(pod: &mut Pod, id: &str, args: &[&str], tty: bool) {
    let bundle = pod.tmp.path().join("bundles").join(id);
    let mut spec = bundle_spec(&bundle, args, &cgroup_name(pod, id));
    spec["process"]["terminal"] = json!(tty);
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    pod.created.push(id.to_string());
    let opts = CreateOptions { id: id.into(), bundle, stdin: true, tty, log_path: Some(pod.log_path(id)) };
    pod.client.create(&opts).await.unwrap();
    pod.client.start(id).await.unwrap();
}

#[tokio::test]
async fn attach_fans_out_output_and_feeds_stdin() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    create_with_stdin(
        &mut pod,
        "echo",
        &["sh", "-c", "while read l; do echo echo:$l; done; echo bye"],
        false,
    )
    .await;
    let mut a = pod.client.attach(&attach_opts("echo", true, false)).await.unwrap();
    let mut b = pod.client.attach(&attach_opts("echo", false, false)).await.unwrap();
    a.sender.stdin(b"one\n").await.unwrap();
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
    seen_a.until(&mut a.receiver, |s| s.stdout.contains("echo:one\n")).await;
    seen_b.until(&mut b.receiver, |s| s.stdout.contains("echo:one\n")).await;

    // Detaching leaves the container running, its stdin open.
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pod.client.state("echo").await.unwrap().status, ContainerStatus::Running);
    let mut c = pod.client.attach(&attach_opts("echo", true, false)).await.unwrap();
    c.sender.stdin(b"two\n").await.unwrap();
    seen_b.until(&mut b.receiver, |s| s.stdout.contains("echo:two\n")).await;
    assert_eq!(seen_b.stdout, "echo:one\necho:two\n");

    let tty = attach_opts("echo", false, true);
    assert_eq!(pod.client.attach(&tty).await.err().unwrap().kind(), ErrorKind::InvalidArgument);
    let missing = attach_opts("nope", false, false);
    assert_eq!(pod.client.attach(&missing).await.err().unwrap().kind(), ErrorKind::NotFound);

    // stdin_once: closing the container's stdin ends its loop; every attacher sees the exit.
    c.sender.close_stdin().await.unwrap();
    seen_b.until(&mut b.receiver, |s| s.exit.is_some()).await;
    assert_eq!((seen_b.stdout.as_str(), seen_b.exit), ("echo:one\necho:two\nbye\n", Some(0)));
    let seen_c = Seen::to_exit(&mut c.receiver).await;
    assert_eq!((seen_c.stdout.as_str(), seen_c.exit), ("echo:two\nbye\n", Some(0)));
    assert_eq!(pod.log("echo"), ["stdout F echo:one", "stdout F echo:two", "stdout F bye"]);
    let stopped = attach_opts("echo", false, false);
    assert_eq!(pod.client.attach(&stopped).await.err().unwrap().kind(), ErrorKind::FailedPrecondition);
    pod.client.delete("echo").await.unwrap();
}

#[tokio::test]
async fn attach_to_a_tty_resizes_it() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    create_with_stdin(&mut pod, "term", &["sh", "-c", "while read l; do stty size; done"], true).await;
    let mut a = pod.client.attach(&attach_opts("term", true, true)).await.unwrap();
    a.sender.resize(120, 50).await.unwrap();
    a.sender.stdin(b"\n").await.unwrap();
    let mut seen = Seen::default();
    seen.until(&mut a.receiver, |s| s.stdout.contains("50 120")).await;
    assert_eq!(seen.stderr, "");
    pod.client.kill("term", 9, false).await.unwrap();
    seen.until(&mut a.receiver, |s| s.exit.is_some()).await;
    assert_eq!(seen.exit, Some(137));
    pod.client.delete("term").await.unwrap();
}

/// `berth-shim cleanup` after the shim was SIGKILLed: the containers it ran (still running,
/// reparented to init) are killed through the runtime, their cgroups and runtime state go, and
/// their records say stopped, 137, reclaimed; one that had exited keeps its own exit code. While
/// a shim serves the pod, cleanup refuses; a second cleanup changes nothing.
#[tokio::test]
async fn cleanup_ends_what_a_dead_shim_ran() {
    if !can_run(RUNC) {
        return;
    }
    let mut pod = Pod::launch(RUNC).await;
    let mut opts = LaunchOptions::new(env!("CARGO_BIN_EXE_berth-shim"), "pod1", pod.dir(), RUNC);
    opts.runtime_root = Some(pod.runtime_root.clone());
    let err = task::cleanup(&opts).await.expect_err("cleanup while the shim serves the pod");
    assert!(err.to_string().contains("still serves"), "{err}");

    running_box(&mut pod).await;
    pod.create("done", &["true"], |_| {}).await;
    pod.client.start("done").await.unwrap();
    wait_until("`done` to exit", || {
        std::fs::read_to_string(pod.dir().join("containers/done/status.json"))
            .is_ok_and(|s| s.contains("\"stopped\""))
    })
    .await;
    let pid = pod.client.state("box").await.unwrap().pid as i32;
    let shim_pid = pod.shim_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim_pid), nix::sys::signal::SIGKILL).unwrap();
    wait_until("the shim to die", || gone(shim_pid)).await;
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the container died with its shim");
    assert_eq!(cgroup_procs(&pod, "box"), 1);

    task::cleanup(&opts).await.expect("cleanup after the shim died");
    let records = task::recorded_states(&pod.dir()).unwrap();
    let by_id = |id: &str| records.iter().find(|r| r.id == id).unwrap().clone();
    let b = by_id("box");
    assert_eq!((b.status, b.exit_code, b.reclaimed), (ContainerStatus::Stopped, 137, true));
    assert!(b.exited_at.is_some());
    let d = by_id("done");
    assert_eq!((d.status, d.exit_code, d.reclaimed), (ContainerStatus::Stopped, 0, false));
    wait_until("the container's process to go", || gone(pid)).await;
    let cgroup = PathBuf::from("/sys/fs/cgroup/pids").join(cgroup_name(&pod, "box").trim_start_matches('/'));
    assert!(!cgroup.exists(), "{} is left behind", cgroup.display());
    for id in ["box", "done"] {
        let state =
            Command::new(RUNC).arg("--root").arg(&pod.runtime_root).args(["state", id]).output().unwrap();
        assert!(!state.status.success(), "runc still knows {id}");
    }

    task::cleanup(&opts).await.expect("a second cleanup");
    assert_eq!(task::recorded_states(&pod.dir()).unwrap(), records);
}

/// A runc wrapper whose `kill` signals nothing and succeeds, as runc 1.1's `kill --all` does under
/// the systemd v1 driver once the init has left the container's devices cgroup; it records the
/// kills it swallowed.
fn deaf_runc(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("runc");
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" kill \"*) printf '%s\\n' \"$*\" >> {}/kills.log; exit 0;; esac\n\
         exec {RUNC} \"$@\"\n",
        dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// SIGKILL ends a container even when the runtime's kill reaches none of its processes: the shim
/// kills the init it knows, and with it every process of its PID namespace.
#[tokio::test]
async fn sigkill_ends_a_container_the_runtime_kill_misses() {
    if !can_run(RUNC) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = deaf_runc(tmp.path());
    let mut pod = Pod::launch_in(tmp, runtime).await;
    for (id, all) in [("with-all", true), ("init-only", false)] {
        pod.create(id, &["sh", "-c", "sleep 1000 & wait"], |_| {}).await;
        pod.client.start(id).await.unwrap();
        wait_until("the init and its child", || cgroup_procs(&pod, id) == 2).await;
        pod.client.kill(id, 9, all).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(30), pod.client.wait(id))
            .await
            .expect("the container did not exit after SIGKILL")
            .unwrap();
        assert_eq!(exit.exit_code, 137);
        assert_eq!(cgroup_procs(&pod, id), 0, "a process of {id} outlived its init");
        pod.client.delete(id).await.unwrap();
    }
    let kills = std::fs::read_to_string(pod.tmp.path().join("kills.log")).unwrap();
    assert_eq!(kills.lines().count(), 2, "{kills}");
    assert!(kills.contains("kill --all with-all 9") && kills.contains("kill init-only 9"), "{kills}");
}

/// Whether process `pid` is gone or a zombie.
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.rsplit(')').next().unwrap().trim_start().starts_with('Z'))
}

/// Stand-ins in `<dir>/bin`: a `systemd-run` that records its arguments and the service manager's
/// variables it was given, then runs the command after `--` (as `systemd-run --scope` execs it once
/// the scope exists), and a runc wrapper that records each command line and drops
/// `--systemd-cgroup` (this machine has no systemd) before running runc.
fn systemd_stand_ins(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let d = dir.display();
    let systemd_run = format!(
        "#!/bin/sh\n{{ printf '%s\\n' \"$@\"; env | grep -E '^(NOTIFY_SOCKET|INVOCATION_ID|LISTEN_FDS)=' ; }} > {d}/systemd-run.log\n\
         while [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n"
    );
    let runc = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {d}/runtime.log\n\
         for a; do shift; [ \"$a\" = --systemd-cgroup ] || set -- \"$@\" \"$a\"; done\nexec {RUNC} \"$@\"\n"
    );
    for (name, script) in [("systemd-run", systemd_run), ("runc", runc)] {
        std::fs::write(bin.join(name), script).unwrap();
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// A pod's whole life with one cgroup driver, through the stand-ins: the shim's start (as berthd
/// runs it from a systemd unit), create, start, exec, update, kill, wait, delete, run, and the
/// cleanup after a shim's death. Returns the runtime's command lines and the stand-in
/// systemd-run's record, if it ran.
async fn lifecycle_with_driver(systemd_cgroup: bool) -> (Vec<String>, Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = systemd_stand_ins(tmp.path());
    let runtime = bin.join("runc");
    let runtime_root = tmp.path().join("runtime-root");
    let dir = tmp.path().join("pods/pod1");
    let mut opts = LaunchOptions::new(env!("CARGO_BIN_EXE_berth-shim"), "pod1", &dir, &runtime);
    opts.runtime_root = Some(runtime_root.clone());
    opts.systemd_cgroup = systemd_cgroup;
    // `berth-shim start` as `task::launch` runs it, but with the stand-ins first in PATH and the
    // variables systemd gives berthd's unit.
    let mut start = Command::new(&opts.shim_binary);
    start.arg("start").args(["--id", "pod1", "--dir"]).arg(&dir).arg("--runtime").arg(&runtime);
    start.arg("--runtime-root").arg(&runtime_root);
    if systemd_cgroup {
        start.arg("--systemd-cgroup");
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    start.env("PATH", path).env("NOTIFY_SOCKET", "/run/systemd/notify");
    start.env("INVOCATION_ID", "0123456789abcdef").env("LISTEN_FDS", "1");
    let out = start.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(out.status.success(), "berth-shim start: {out:?}");
    let client = ShimClient::connect(&dir).await.unwrap();
    let mut pod = Pod { tmp, runtime, runtime_root, client, created: Vec::new() };

    let environ = std::fs::read(format!("/proc/{}/environ", pod.shim_pid())).unwrap();
    for var in environ.split(|b| *b == 0).map(String::from_utf8_lossy) {
        assert!(
            !["NOTIFY_SOCKET=", "INVOCATION_ID=", "LISTEN_FDS="].iter().any(|v| var.starts_with(v)),
            "the shim inherited {var}"
        );
    }

    pod.create("c", &["sleep", "1000"], |_| {}).await;
    pod.client.start("c").await.unwrap();
    let r = pod.client.exec_sync(&exec("c", &["true"], Duration::from_secs(10), 0)).await.unwrap();
    assert_eq!(r.exit_code, 0);
    pod.client.update("c", br#"{"memory":{"limit":67108864}}"#).await.unwrap();
    pod.client.kill("c", 9, false).await.unwrap();
    assert_eq!(pod.client.wait("c").await.unwrap().exit_code, 137);
    pod.client.delete("c").await.unwrap();
    let run = pod.bundle("r", &["true"]);
    pod.client.run(&run).await.unwrap();
    assert_eq!(pod.client.wait("r").await.unwrap().exit_code, 0);
    pod.client.delete("r").await.unwrap();

    running_box(&mut pod).await;
    let shim_pid = pod.shim_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim_pid), nix::sys::signal::SIGKILL).unwrap();
    wait_until("the shim to die", || gone(shim_pid)).await;
    task::cleanup(&opts).await.expect("cleanup after the shim died");

    let lines = std::fs::read_to_string(pod.tmp.path().join("runtime.log")).unwrap();
    let systemd_run = std::fs::read_to_string(pod.tmp.path().join("systemd-run.log")).ok();
    (lines.lines().map(String::from).collect(), systemd_run)
}

/// The verb of a recorded runtime command line (after the global options).
fn verb(line: &str) -> &str {
    let mut words = line.split(' ');
    while let Some(w) = words.next() {
        match w {
            "--root" | "--log" | "--log-format" => {
                words.next();
            }
            w if w.starts_with("--") => {}
            w => return w,
        }
    }
    ""
}

#[tokio::test]
async fn systemd_driver_reaches_every_runtime_call_and_gives_the_shim_its_scope() {
    if !can_run(RUNC) {
        return;
    }
    let (lines, systemd_run) = lifecycle_with_driver(true).await;
    let verbs: std::collections::BTreeSet<&str> = lines.iter().map(|l| verb(l)).collect();
    for v in ["create", "start", "exec", "update", "kill", "delete", "run", "state"] {
        assert!(verbs.contains(v), "no {v} call in {lines:#?}");
    }
    for line in &lines {
        assert!(line.contains("--log-format json --systemd-cgroup "), "{line}");
    }
    let systemd_run = systemd_run.expect("the shim was started through systemd-run");
    let args: Vec<&str> = systemd_run.lines().collect();
    assert_eq!(
        args[..8],
        [
            "--scope",
            "--quiet",
            "--collect",
            "--unit=berth-shim-pod1.scope",
            "--slice=system.slice",
            "--description=berth shim of pod pod1",
            "--",
            env!("CARGO_BIN_EXE_berth-shim"),
        ]
    );
    assert_eq!(args[8], "serve");
    assert_eq!(args.last(), Some(&"--systemd-cgroup"), "{args:?}");
    assert!(!args.iter().any(|a| a.contains('=') && !a.starts_with("--")), "unit variables: {args:?}");
}

#[tokio::test]
async fn cgroupfs_driver_runs_no_systemd_run_and_passes_no_flag() {
    if !can_run(RUNC) {
        return;
    }
    let (lines, systemd_run) = lifecycle_with_driver(false).await;
    assert!(lines.iter().any(|l| verb(l) == "create") && lines.iter().any(|l| verb(l) == "delete"));
    for line in &lines {
        assert!(!line.contains("--systemd-cgroup"), "{line}");
    }
    assert_eq!(systemd_run, None);
}
