//! The installer's phases against a fake kind node: a temporary host root with kind's kubelet files,
//! a recording command runner and scripted waits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::host::Fake;
use super::*;

const FLAGS: &str = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/containerd/containerd.sock --node-ip=172.18.0.2 --node-labels= --provider-id=kind://docker/kind/kind-control-plane\"\n";
const CONFIG_YAML: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nauthentication:\n  anonymous:\n    enabled: false\ncgroupDriver: systemd\ncgroupRoot: /kubelet\nkind: KubeletConfiguration\n";
const DEFAULT_KUBELET_TEXT: &str = "KUBELET_EXTRA_ARGS=--runtime-cgroups=/system.slice/containerd.service\n";
const CRICTL: &str = "runtime-endpoint: unix:///run/containerd/containerd.sock\n";
const KINDNET: &str = "{\"cniVersion\":\"0.3.1\",\"name\":\"kindnet\",\"plugins\":[]}\n";
const BERTH_EP: &str = "unix:///run/berth/berth.sock";

struct Node {
    _dir: tempfile::TempDir,
    host: Host,
    log: Arc<Mutex<Vec<String>>>,
    active: Arc<Mutex<BTreeSet<String>>>,
}

fn kind_node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let active = Arc::new(Mutex::new(BTreeSet::from([
        "containerd.service".to_string(),
        "kubelet.service".to_string(),
    ])));
    let runner = Fake { log: log.clone(), active: active.clone(), fail: None };
    let host = Host { root: dir.path().to_path_buf(), runner: Box::new(runner) };
    for (path, text) in [
        (FLAGS_ENV, FLAGS),
        (KUBELET_CONFIG, CONFIG_YAML),
        (DEFAULT_KUBELET, DEFAULT_KUBELET_TEXT),
        (CRICTL_YAML, CRICTL),
        ("/etc/cni/net.d/10-kindnet.conflist", KINDNET),
    ] {
        host.write_if_changed(path, text.as_bytes(), 0o644).unwrap();
    }
    Node { _dir: dir, host, log, active }
}

/// Every regular file under the root with its bytes.
fn snapshot(host: &Host) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(&p, root, out);
            } else {
                out.insert(
                    format!("/{}", p.strip_prefix(root).unwrap().display()),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&host.root, &host.root, &mut out);
    out
}

fn payload(tag: &str) -> Payload {
    Payload {
        binaries: BINARIES.iter().map(|n| (*n, format!("#!{n} {tag}\n").into_bytes())).collect(),
        version: tag.to_string(),
    }
}

/// Scripted effects: what they were asked, and whether the node becomes Ready on berth.
#[derive(Default)]
struct Effs {
    calls: Vec<String>,
    berth_ready_fails: bool,
    /// The installer's pod on berth never confirms (berth cannot run it).
    unconfirmed: bool,
    /// Removing the pods of this endpoint fails (a pod that will not stop).
    remove_fails: Option<&'static str>,
}

impl Effects for Effs {
    fn wait_berth(&mut self, _: &Host) -> Result<()> {
        self.calls.push("wait_berth".into());
        Ok(())
    }
    fn remove_pods(&mut self, _: &Host, endpoint: &str) -> Result<usize> {
        self.calls.push(format!("remove_pods {endpoint}"));
        if self.remove_fails == Some(endpoint) {
            bail!("stopping pod sandbox 138d5: deadline exceeded");
        }
        Ok(2)
    }
    fn start_switch(&mut self, _: &Host) -> Result<()> {
        self.calls.push("start_switch".into());
        Ok(())
    }
    fn wait_ready(&mut self, berth: bool, _: SystemTime) -> Result<()> {
        self.calls.push(format!("wait_ready berth={berth}"));
        if berth && self.berth_ready_fails {
            bail!("the node Ready on berth://: not within 5m");
        }
        Ok(())
    }
    fn wait_confirmed(&mut self) -> Result<()> {
        self.calls.push("wait_confirmed".into());
        if self.unconfirmed {
            bail!("no confirmation from the installer's pod on berth: not within 5m");
        }
        Ok(())
    }
}

const SETTINGS: &str = "[mirrors]\n\"docker.io\" = [\"http://10.86.0.1:5100\"]\n";

fn install(node: &Node, tag: &str) -> (InstallPlan, Effs) {
    let settings = Settings::parse(SETTINGS).unwrap();
    let plan = plan_install(&node.host, &payload(tag), &settings, SETTINGS).unwrap();
    let mut fx = Effs::default();
    execute(&node.host, &plan.steps, &mut fx, &mut |_| {}).unwrap();
    (plan, fx)
}

fn writes(steps: &[Step]) -> Vec<&str> {
    steps
        .iter()
        .filter_map(|s| if let Step::Write { path, .. } = s { Some(path.as_str()) } else { None })
        .collect()
}

#[test]
fn install_writes_berth_files_keeps_the_node_driver_and_hands_over_the_switch() {
    let node = kind_node();
    let (plan, fx) = install(&node, "v1");
    assert_eq!(plan.driver, CgroupDriver::Systemd);
    assert_eq!(plan.kubelet_endpoint, CONTAINERD_ENDPOINT);
    assert!(!plan.switched);
    let w = writes(&plan.steps);
    for p in [
        "/usr/local/bin/berthd",
        "/usr/local/bin/berth-shim",
        UNIT_PATH,
        CONFIG_PATH,
        SETTINGS_PATH,
        "/etc/berth/certs.d/docker.io/hosts.toml",
    ] {
        assert!(w.contains(&p), "{p} in {w:?}");
    }
    assert!(!w.contains(&CNI_CONF), "kindnet's network is kept: {w:?}");
    let config = node.host.read_string(CONFIG_PATH).unwrap().unwrap();
    assert_eq!(crate::config::Config::parse(&config).unwrap().cri.cgroup_driver, CgroupDriver::Systemd);
    assert_eq!(node.host.read_string(UNIT_PATH).unwrap().unwrap(), UNIT_TEXT);
    assert_eq!(fx.calls, ["wait_berth", "start_switch"]);
    assert_eq!(
        *node.log.lock().unwrap(),
        ["systemctl daemon-reload", "systemctl enable berth.service", "systemctl restart berth.service"]
    );
    // The kubelet is untouched until the switch.
    assert_eq!(node.host.read_string(FLAGS_ENV).unwrap().unwrap(), FLAGS);

    // A second run changes nothing: no writes, no restart; it waits for berth and (the kubelet
    // still being on containerd) hands over the switch again.
    node.log.lock().unwrap().clear();
    let before = snapshot(&node.host);
    let (again, _) = install(&node, "v1");
    assert_eq!(again.steps, [Step::WaitBerth, Step::StartSwitch]);
    assert_eq!(snapshot(&node.host), before);

    // A new version replaces the binaries and restarts berth, and nothing else.
    let (upgrade, _) = install(&node, "v2");
    let w = writes(&upgrade.steps);
    assert_eq!(w.len(), BINARIES.len(), "{w:?}");
    assert!(
        upgrade.steps.contains(&Step::Run { argv: vec!["systemctl".into(), "restart".into(), UNIT.into()] })
    );
}

#[test]
fn dry_run_plan_names_every_step_and_changes_nothing() {
    let node = kind_node();
    let before = snapshot(&node.host);
    let settings = Settings::parse(SETTINGS).unwrap();
    let plan = plan_install(&node.host, &payload("v1"), &settings, SETTINGS).unwrap();
    let text = describe(&plan.steps);
    assert!(text.contains("write /etc/berth/config.toml (mode 644): berthd configuration"), "{text}");
    assert!(text.contains("run: systemctl restart berth.service"), "{text}");
    assert!(text.contains("start the host unit berth-switch"), "{text}");
    let switch = describe(&plan_switch(&node.host, BERTH_EP).unwrap());
    assert!(switch.contains("run: systemctl stop kubelet.service"), "{switch}");
    assert!(
        switch.contains("stop and remove every pod sandbox on unix:///run/containerd/containerd.sock"),
        "{switch}"
    );
    assert!(switch.contains("run: systemctl disable --now containerd.service"), "{switch}");
    assert!(
        switch.contains(
            "write /var/lib/kubelet/kubeadm-flags.env (mode 644): point at unix:///run/berth/berth.sock"
        ),
        "{switch}"
    );
    assert_eq!(snapshot(&node.host), before, "planning writes nothing");
}

#[test]
fn switch_points_the_kubelet_at_berth_and_a_second_switch_only_waits() {
    let node = kind_node();
    install(&node, "v1");
    let mut fx = Effs::default();
    switch(&node.host, BERTH_EP, "v1", &mut fx, &mut |_| {}).unwrap();
    assert_eq!(
        fx.calls,
        [
            format!("remove_pods {CONTAINERD_ENDPOINT}"),
            "wait_ready berth=true".into(),
            "wait_confirmed".into()
        ]
    );
    let read = |p| node.host.read_string(p).unwrap().unwrap();
    assert!(
        read(FLAGS_ENV)
            .contains("--container-runtime-endpoint=unix:///run/berth/berth.sock --node-ip=172.18.0.2")
    );
    assert_eq!(
        kubelet::yaml_value(&read(KUBELET_CONFIG), "containerRuntimeEndpoint").as_deref(),
        Some(BERTH_EP)
    );
    assert_eq!(kubelet::cgroup_driver(&read(KUBELET_CONFIG)), CgroupDriver::Systemd);
    assert!(read(DEFAULT_KUBELET).contains("/system.slice/berth.service"));
    assert!(read(CRICTL_YAML).contains(BERTH_EP));
    assert_eq!(read(KUBELET_DROPIN), DROPIN_TEXT);
    let active = node.active.lock().unwrap().clone();
    assert!(active.contains("kubelet.service") && !active.contains("containerd.service"), "{active:?}");
    let log = node.log.lock().unwrap().clone();
    let pos = |c: &str| log.iter().position(|l| l == c).unwrap_or_else(|| panic!("{c} in {log:?}"));
    assert!(pos("systemctl stop kubelet.service") < pos("systemctl disable --now containerd.service"));
    assert!(pos("systemctl disable --now containerd.service") < pos("systemctl start kubelet.service"));

    // On berth, the installer only verifies.
    let settings = Settings::parse(SETTINGS).unwrap();
    let plan = plan_install(&node.host, &payload("v1"), &settings, SETTINGS).unwrap();
    assert!(plan.switched);
    assert_eq!(plan.steps, [Step::WaitBerth]);
    assert_eq!(plan_switch(&node.host, BERTH_EP).unwrap(), [Step::WaitReady { berth: true }]);
}

#[test]
fn a_failed_switch_reverts_every_kubelet_file_and_is_not_retried() {
    let node = kind_node();
    install(&node, "v1");
    let before = snapshot(&node.host);
    let mut fx = Effs { berth_ready_fails: true, ..Default::default() };
    let err = switch(&node.host, BERTH_EP, "v1", &mut fx, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("step failed: wait for the node to be Ready on berth://"), "{err}");
    assert!(err.contains("not within 5m"), "{err}");
    assert_eq!(fx.calls.last().unwrap(), "wait_ready berth=false", "{:?}", fx.calls);
    assert!(
        fx.calls.contains(&format!("remove_pods {BERTH_EP}")),
        "berth's pods are removed: {:?}",
        fx.calls
    );
    let after = snapshot(&node.host);
    for path in [FLAGS_ENV, KUBELET_CONFIG, DEFAULT_KUBELET, CRICTL_YAML] {
        assert_eq!(after.get(path), before.get(path), "{path} restored byte for byte");
    }
    assert!(!after.contains_key(KUBELET_DROPIN), "the drop-in is gone again");
    let active = node.active.lock().unwrap().clone();
    assert!(active.contains("containerd.service") && active.contains("kubelet.service"), "{active:?}");
    assert_eq!(previous_failure(&node.host, "v1").unwrap().as_deref(), Some(err.as_str()));
    assert_eq!(previous_failure(&node.host, "v2").unwrap(), None, "a new version tries again");
}

#[test]
fn a_node_ready_on_berth_whose_installer_pod_never_confirms_is_reverted() {
    // The kubelet reports Ready on berth before it runs any pod: only the installer's own pod,
    // running on berth, proves berth runs pods on this node.
    let node = kind_node();
    install(&node, "v1");
    let before = snapshot(&node.host);
    let mut fx = Effs { unconfirmed: true, ..Default::default() };
    let err = switch(&node.host, BERTH_EP, "v1", &mut fx, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("step failed: wait for the installer's pod, re-created on berth, to confirm"),
        "{err}"
    );
    let i = |c: &str| fx.calls.iter().position(|x| x == c).unwrap_or_else(|| panic!("{c} in {:?}", fx.calls));
    assert!(i("wait_ready berth=true") < i("wait_confirmed"));
    assert!(i("wait_confirmed") < i(&format!("remove_pods {BERTH_EP}")));
    assert_eq!(fx.calls.last().unwrap(), "wait_ready berth=false");
    let after = snapshot(&node.host);
    for path in [FLAGS_ENV, KUBELET_CONFIG, DEFAULT_KUBELET, CRICTL_YAML] {
        assert_eq!(after.get(path), before.get(path), "{path} restored byte for byte");
    }
    assert!(node.active.lock().unwrap().contains("containerd.service"));
    assert!(previous_failure(&node.host, "v1").unwrap().is_some());
}

#[test]
fn the_revert_goes_on_when_berths_pods_do_not_stop() {
    let node = kind_node();
    install(&node, "v1");
    let before = snapshot(&node.host);
    let mut fx = Effs { unconfirmed: true, remove_fails: Some(BERTH_EP), ..Default::default() };
    let err = switch(&node.host, BERTH_EP, "v1", &mut fx, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("the revert failed too"), "{err}");
    assert!(err.contains("stopping pod sandbox 138d5"), "{err}");
    // Everything after the failed step still ran: the node is back on containerd.
    assert_eq!(fx.calls.last().unwrap(), "wait_ready berth=false", "{:?}", fx.calls);
    let after = snapshot(&node.host);
    for path in [FLAGS_ENV, KUBELET_CONFIG, DEFAULT_KUBELET, CRICTL_YAML] {
        assert_eq!(after.get(path), before.get(path), "{path} restored byte for byte");
    }
    assert!(!after.contains_key(KUBELET_DROPIN));
    let active = node.active.lock().unwrap().clone();
    assert!(active.contains("containerd.service") && active.contains("kubelet.service"), "{active:?}");
}

#[test]
fn uninstall_puts_every_file_back_and_removes_berths() {
    let node = kind_node();
    let original = snapshot(&node.host);
    install(&node, "v1");
    let mut fx = Effs::default();
    switch(&node.host, BERTH_EP, "v1", &mut fx, &mut |_| {}).unwrap();
    let mut fx = Effs::default();
    let revert = plan_revert(&node.host, BERTH_EP).unwrap();
    execute_revert(&node.host, &revert, &mut fx, &mut |_| {}).unwrap();
    // berth's root and state, as berthd left them.
    node.host.write_if_changed("/var/lib/berth/meta.redb", b"db", 0o600).unwrap();
    node.host.write_if_changed("/run/berth/pods/x/shim.log", b"log", 0o600).unwrap();
    let data = [Path::new("/var/lib/berth"), Path::new("/run/berth")];
    execute(&node.host, &plan_remove(&node.host, &data).unwrap(), &mut fx, &mut |_| {}).unwrap();
    assert!(!node.host.exists("/var/lib/berth") && !node.host.exists("/run/berth"));
    assert!(!node.host.exists("/etc/berth"), "berth's emptied directories go too");
    let _ = std::fs::remove_dir_all(node.host.path(STATE_DIR)); // as `berth-install uninstall` ends
    let mut now = snapshot(&node.host);
    now.retain(|p, _| !p.starts_with("/run/lock/"));
    assert_eq!(now, original, "only the node's own files are left, as they were");
    let active = node.active.lock().unwrap().clone();
    assert_eq!(active, BTreeSet::from(["containerd.service".to_string(), "kubelet.service".to_string()]));
    // A second uninstall has nothing to revert.
    let again =
        [plan_revert(&node.host, BERTH_EP).unwrap(), plan_remove(&node.host, &data).unwrap()].concat();
    assert!(again.iter().all(|s| matches!(s, Step::Run { .. })), "{again:?}");
}

#[test]
fn berth_cni_goes_in_only_on_a_node_without_a_network() {
    let node = kind_node();
    node.host.remove("/etc/cni/net.d/10-kindnet.conflist").unwrap();
    let (plan, _) = install(&node, "v1");
    assert!(writes(&plan.steps).contains(&CNI_CONF));
    // Now that it is berth's own, it stays managed (and a second run changes nothing).
    let (again, _) = install(&node, "v1");
    assert!(!writes(&again.steps).contains(&CNI_CONF));
}

#[test]
fn prune_removes_empty_directories_only() {
    let node = kind_node();
    node.host.write_if_changed("/etc/berth/certs.d/a/hosts.toml", b"x", 0o644).unwrap();
    std::fs::create_dir_all(node.host.path("/etc/berth/certs.d/b/c")).unwrap();
    node.host.prune("/etc/berth").unwrap();
    assert!(node.host.exists("/etc/berth/certs.d/a/hosts.toml"));
    assert!(!node.host.exists("/etc/berth/certs.d/b"));
    node.host.remove("/etc/berth/certs.d/a/hosts.toml").unwrap();
    node.host.prune("/etc/berth").unwrap();
    assert!(!node.host.exists("/etc/berth") && node.host.exists("/etc"));
    node.host.prune("/etc/berth").unwrap(); // already gone: fine
}

#[test]
fn remove_tree_refuses_a_tree_with_a_mount_below() {
    let node = kind_node();
    // /proc is a mount point on every machine (and nothing in it could be removed anyway).
    let err =
        Host { root: "/".into(), runner: Box::new(super::host::Direct) }.remove_tree("/proc").unwrap_err();
    assert!(err.to_string().contains("still has mounts"), "{err}");
    node.host.write_if_changed("/var/lib/berth/a/b", b"x", 0o600).unwrap();
    node.host.remove_tree("/var/lib/berth").unwrap();
    assert!(!node.host.exists("/var/lib/berth") && node.host.exists("/var/lib"));
    node.host.remove_tree("/var/lib/berth").unwrap(); // gone already: fine
}

#[test]
fn runtime_units_follow_the_socket_name() {
    assert_eq!(runtime_unit(CONTAINERD_ENDPOINT), "containerd.service");
    assert_eq!(runtime_unit("unix:///var/run/crio/crio.sock"), "crio.service");
}
