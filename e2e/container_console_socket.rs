//! Issue 8 item 11: the shim takes a container's pty master only from the OCI runtime. A runtime
//! wrapper lets an intruder connect to each `--console-socket` first, as `nobody` (with
//! CAP_DAC_OVERRIDE, so that no file mode keeps it out) sending an HTTP request instead of a
//! descriptor; the shim refuses it by its peer credentials (and says so in its log), the real runc
//! hands over the pty, and the tty container runs on its terminal. Before the check, the shim took
//! the intruder's connection as the runtime's and the container failed to start.

use std::time::{Duration, Instant};

use berth::cri::api::ContainerState;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn an_intruder_on_the_console_socket_is_refused() {
    let reg = Registry::shared();
    let mut berthd = Berthd::with_network();
    berthd.trust(reg);
    let marker = berthd.dir().join("intruder.txt");
    let wrapper = format!(
        r#"#!/bin/sh
prev=
for a in "$@"; do
  if [ "$prev" = --console-socket ]; then
    setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=+dac_override --ambient-caps=+dac_override \
      curl -s --max-time 10 --unix-socket "$a" http://intruder/ >/dev/null 2>&1
    echo "$a" >> {marker}
  fi
  prev=$a
done
exec runc "$@"
"#,
        marker = marker.display()
    );
    berthd.add_runtime_script("intruded", &wrapper);
    berthd.start();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let pod = berthd.pod("console");
    let pod_id = cri.run_pod_with(&pod, "intruded").await.expect("RunPodSandbox");
    let config = pod.container("term", &image).sh("tty; sleep 100000").tty().build();
    let id = cri.create_start(&pod_id, &pod, config).await.expect("a tty container");
    let sockets = std::fs::read_to_string(&marker).expect("the intruder never ran");
    assert_eq!(sockets.lines().count(), 1, "one console socket, for the tty container: {sockets}");
    // The intruder got through to the shim, which refused it by its uid.
    let shim_log = std::fs::read_to_string(berthd.state().join("pods").join(&pod_id).join("shim.log"))
        .expect("the pod's shim log");
    assert!(
        shim_log
            .lines()
            .any(|l| l.contains("refused a console socket connection") && l.contains("uid=65534")),
        "{shim_log}"
    );
    assert_eq!(cri.container_status(&id).await.unwrap().state, ContainerState::ContainerRunning as i32);
    let log = pod.log_directory().join("term/0.log");
    let guard = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("/dev/pts/") {
        assert!(Instant::now() < guard, "hang guard: the container never reported its terminal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
