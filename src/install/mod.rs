//! berth-install: puts berth on a Kubernetes node and switches the kubelet to it, or takes it off
//! again. It runs in the chart's privileged DaemonSet pod (`hostPID`, the host's `/` at `/host`)
//! and, for the disruptive part, as a transient host unit (`systemd-run --unit=berth-switch`),
//! because switching the kubelet removes every pod of the old runtime, the installer's own too.
//!
//! The phases:
//! * `install` (pod): copy the binaries, write `/etc/berth/config.toml` and the mirrors' hosts.toml,
//!   install and start `berth.service`, wait for berth's CRI to be ready, then hand the switch to a
//!   host unit. On a node already switched it only checks. A second run changes nothing.
//! * `switch` (host unit): stop the kubelet, stop and remove the old runtime's pod sandboxes,
//!   disable the old runtime (its data stays), point the kubelet's files at berth, start the kubelet
//!   and wait until the node is Ready on `berth://`. Any failure reverts to the old runtime.
//! * `uninstall` (host unit, when the DaemonSet is deleted): the revert, then berth's own files.
//!
//! Every edited file is backed up once under [`STATE_DIR`]`/backup` before it changes; revert
//! restores those bytes exactly (or removes files that did not exist).

pub mod host;
pub mod kube;
pub mod kubelet;
pub mod real;
pub mod settings;

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use sha2::Digest;

use crate::config::CgroupDriver;
use host::Host;
use settings::{InstallCni, Settings};

/// The installer's own state on the host: backups, the record of the switch, the failure marker.
pub const STATE_DIR: &str = "/var/lib/berth-install";
/// Serialises every installer run on a node.
pub const LOCK: &str = "/run/lock/berth-install.lock";
/// Where berth's binaries go.
pub const BIN_DIR: &str = "/usr/local/bin";
/// The binaries the image carries (in `<payload>/bin`).
pub const BINARIES: [&str; 5] = ["berthd", "berth-shim", "berthctl", "berth-pause", "berth-install"];
pub const UNIT: &str = "berth.service";
pub const UNIT_PATH: &str = "/etc/systemd/system/berth.service";
pub const KUBELET_DROPIN: &str = "/etc/systemd/system/kubelet.service.d/20-berth.conf";
pub const CONFIG_PATH: &str = "/etc/berth/config.toml";
/// The installer's settings, copied for the host units.
pub const SETTINGS_PATH: &str = "/etc/berth/install.toml";
pub const CERTS_DIR: &str = "/etc/berth/certs.d";
pub const CNI_CONF: &str = "/etc/cni/net.d/10-berth.conflist";
pub const CNI_DIR: &str = "/etc/cni/net.d";
pub const FLAGS_ENV: &str = "/var/lib/kubelet/kubeadm-flags.env";
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
pub const INSTANCE_CONFIG: &str = "/var/lib/kubelet/instance-config.yaml";
pub const DEFAULT_KUBELET: &str = "/etc/default/kubelet";
pub const CRICTL_YAML: &str = "/etc/crictl.yaml";
/// The kubelet's default endpoint when neither its flags nor its config name one.
pub const CONTAINERD_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

const UNIT_TEXT: &str = include_str!("../../deploy/systemd/berth.service");
const DROPIN_TEXT: &str = include_str!("../../deploy/systemd/kubelet.service.d/20-berth.conf");
const CNI_TEXT: &str = include_str!("../../cni/10-berth.conflist");

/// One step of a plan. Plans list only what needs doing, so an empty plan means "nothing to change".
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Write a host file (binary, unit, config); `why` says what changes.
    Write { path: String, data: Vec<u8>, mode: u32, why: String },
    /// Remove a host file.
    Remove { path: String },
    /// Remove the empty directories under a host directory (and it, when empty).
    Prune { path: String },
    /// Remove a host directory and everything in it, unless something is mounted below it.
    RemoveTree { path: String },
    /// Run a host command.
    Run { argv: Vec<String> },
    /// Wait until berth's CRI reports RuntimeReady.
    WaitBerth,
    /// Stop and remove every pod sandbox of the runtime at this endpoint.
    RemovePods { endpoint: String },
    /// Hand over to the host unit that switches the kubelet.
    StartSwitch,
    /// Wait until the node is Ready with this runtime (`berth`, or anything else).
    WaitReady { berth: bool },
    /// Wait until the installer's pod, re-created on berth, confirms the node works on berth (the
    /// node's label goes to `true`): berth pulled its image and runs its privileged container.
    WaitConfirmed,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Write { path, mode, why, .. } => write!(f, "write {path} (mode {mode:o}): {why}"),
            Step::Remove { path } => write!(f, "remove {path}"),
            Step::Prune { path } => write!(f, "remove the empty directories of {path}"),
            Step::RemoveTree { path } => write!(f, "remove {path} and everything in it"),
            Step::Run { argv } => write!(f, "run: {}", argv.join(" ")),
            Step::WaitBerth => write!(f, "wait for berth's CRI socket to report RuntimeReady"),
            Step::RemovePods { endpoint } => write!(f, "stop and remove every pod sandbox on {endpoint}"),
            Step::StartSwitch => write!(
                f,
                "start the host unit berth-switch (systemd-run) to switch the kubelet; this pod is then re-created on berth"
            ),
            Step::WaitReady { berth: true } => write!(f, "wait for the node to be Ready on berth://"),
            Step::WaitReady { berth: false } => write!(f, "wait for the node to be Ready on its old runtime"),
            Step::WaitConfirmed => write!(
                f,
                "wait for the installer's pod, re-created on berth, to confirm (label {}=true)",
                kube::LABEL
            ),
        }
    }
}

fn run(argv: &[&str]) -> Step {
    Step::Run { argv: argv.iter().map(|s| s.to_string()).collect() }
}

/// The node's runtime as the kubelet's files say: the flags file wins over config.yaml, and with
/// neither the kubelet uses containerd's socket.
pub fn kubelet_endpoint(host: &Host) -> Result<String> {
    if let Some(env) = host.read_string(FLAGS_ENV)?
        && let Some(ep) = kubelet::flags_env_endpoint(&env)
    {
        return Ok(ep);
    }
    if let Some(yaml) = host.read_string(KUBELET_CONFIG)?
        && let Some(ep) = kubelet::yaml_value(&yaml, "containerRuntimeEndpoint").filter(|e| !e.is_empty())
    {
        return Ok(ep);
    }
    Ok(CONTAINERD_ENDPOINT.into())
}

/// berth's CRI endpoint as the kubelet names it.
pub fn berth_endpoint(config: &crate::config::Config) -> String {
    format!("unix://{}", config.grpc.address.display())
}

/// The systemd unit of a runtime, from its socket (`…/containerd.sock` → `containerd.service`).
pub fn runtime_unit(endpoint: &str) -> String {
    let file = endpoint.rsplit('/').next().unwrap_or("");
    let name = file.strip_suffix(".sock").unwrap_or(file);
    format!("{}.service", if name.is_empty() { "containerd" } else { name })
}

/// What the image brings: the binaries' bytes, and a version identifying them.
pub struct Payload {
    pub binaries: Vec<(&'static str, Vec<u8>)>,
    pub version: String,
}

impl Payload {
    pub fn load(dir: &Path) -> Result<Payload> {
        let mut binaries = Vec::new();
        let mut hash = sha2::Sha256::new();
        for name in BINARIES {
            let p = dir.join("bin").join(name);
            let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            hash.update(&data);
            binaries.push((name, data));
        }
        Ok(Payload { binaries, version: hex::encode(&hash.finalize()[..6]) })
    }
}

/// What `install` found and decided, for the plan and for the caller.
pub struct InstallPlan {
    pub steps: Vec<Step>,
    pub driver: CgroupDriver,
    pub berth_endpoint: String,
    pub kubelet_endpoint: String,
    /// The kubelet already uses berth: only verify.
    pub switched: bool,
}

/// The install phase's plan: files that differ, the service (re)start, the wait, the switch.
pub fn plan_install(
    host: &Host,
    payload: &Payload,
    settings: &Settings,
    settings_text: &str,
) -> Result<InstallPlan> {
    let kubelet_yaml = host.read_string(KUBELET_CONFIG)?.unwrap_or_default();
    let driver = kubelet::cgroup_driver(&kubelet_yaml);
    let (config_text, config) = settings::berth_config(settings, driver)?;
    let mirrors = settings::mirror_files(settings)?;
    let mut steps = Vec::new();
    let mut changed = |host: &Host, path: String, data: Vec<u8>, mode: u32, what: &str| -> Result<bool> {
        let old = host.read(&path)?;
        if old.as_deref() == Some(&data[..]) {
            return Ok(false);
        }
        let why = if old.is_some() { format!("{what} changed") } else { what.to_string() };
        steps.push(Step::Write { path, data, mode, why });
        Ok(true)
    };
    let mut restart = false;
    for (name, data) in &payload.binaries {
        restart |=
            changed(host, format!("{BIN_DIR}/{name}"), data.clone(), 0o755, &format!("berth binary {name}"))?;
    }
    let unit_changed = changed(host, UNIT_PATH.into(), UNIT_TEXT.into(), 0o644, "systemd unit")?;
    restart |= unit_changed;
    restart |= changed(host, CONFIG_PATH.into(), config_text.into_bytes(), 0o644, "berthd configuration")?;
    changed(host, SETTINGS_PATH.into(), settings_text.as_bytes().to_vec(), 0o600, "installer settings")?;
    for (registry, text) in mirrors {
        changed(
            host,
            format!("{CERTS_DIR}/{registry}/hosts.toml"),
            text.into_bytes(),
            0o644,
            "registry mirrors",
        )?;
    }
    let cni = match settings.install_cni {
        InstallCni::Always => true,
        InstallCni::Never => false,
        InstallCni::Auto => host.exists(CNI_CONF) || !has_cni_config(host)?,
    };
    if cni {
        changed(host, CNI_CONF.into(), CNI_TEXT.into(), 0o644, "berth's bridge CNI network")?;
    }
    if unit_changed {
        steps.push(run(&["systemctl", "daemon-reload"]));
    }
    if unit_changed || host.run(&["systemctl", "is-enabled", "--quiet", UNIT]).is_err() {
        steps.push(run(&["systemctl", "enable", UNIT]));
    }
    if restart || !host.is_active(UNIT) {
        steps.push(run(&["systemctl", "restart", UNIT]));
    }
    steps.push(Step::WaitBerth);
    let berth_endpoint = berth_endpoint(&config);
    let kubelet_endpoint = kubelet_endpoint(host)?;
    let switched = kubelet_endpoint == berth_endpoint;
    if settings.switch_kubelet && !switched {
        steps.push(Step::StartSwitch);
    }
    Ok(InstallPlan { steps, driver, berth_endpoint, kubelet_endpoint, switched })
}

fn has_cni_config(host: &Host) -> Result<bool> {
    let dir = host.path(CNI_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {CNI_DIR}")),
    };
    Ok(entries.flatten().any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json")
    }))
}

/// The kubelet's files and their content once pointed at `endpoint` (only those that change).
fn kubelet_edits(
    host: &Host,
    endpoint: &str,
    old_unit: &str,
    new_unit: &str,
) -> Result<Vec<(&'static str, String)>> {
    let mut out = Vec::new();
    let mut edit = |path: &'static str, f: &dyn Fn(&str) -> String| -> Result<()> {
        if let Some(old) = host.read_string(path)? {
            let new = f(&old);
            if new != old {
                out.push((path, new));
            }
        }
        Ok(())
    };
    edit(FLAGS_ENV, &|c| kubelet::edit_flags_env(c, endpoint))?;
    edit(KUBELET_CONFIG, &|c| kubelet::edit_kubelet_yaml(c, endpoint, true))?;
    edit(INSTANCE_CONFIG, &|c| kubelet::edit_kubelet_yaml(c, endpoint, false))?;
    edit(DEFAULT_KUBELET, &|c| kubelet::edit_default_kubelet(c, old_unit, new_unit))?;
    edit(CRICTL_YAML, &|c| kubelet::edit_crictl_yaml(c, endpoint))?;
    Ok(out)
}

fn backup_path(path: &str) -> String {
    format!("{STATE_DIR}/backup{path}")
}
fn absent_marker(path: &str) -> String {
    format!("{STATE_DIR}/backup{path}.absent")
}
const SWITCH_RECORD: &str = "/var/lib/berth-install/switch.toml";
const FAILED: &str = "/var/lib/berth-install/failed";
const INSTALLED: &str = "/var/lib/berth-install/installed";

/// What the switch replaced, kept for the revert.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SwitchRecord {
    pub old_endpoint: String,
    pub old_unit: String,
}

/// The switch phase's plan (run on the host by the berth-switch unit).
pub fn plan_switch(host: &Host, berth_endpoint: &str) -> Result<Vec<Step>> {
    let old_endpoint = kubelet_endpoint(host)?;
    if old_endpoint == berth_endpoint {
        return Ok(vec![Step::WaitReady { berth: true }]);
    }
    let old_unit = runtime_unit(&old_endpoint);
    let record = SwitchRecord { old_endpoint: old_endpoint.clone(), old_unit: old_unit.clone() };
    let mut steps = vec![Step::Write {
        path: SWITCH_RECORD.into(),
        data: toml::to_string(&record)?.into_bytes(),
        mode: 0o600,
        why: format!("record the old runtime ({old_endpoint}, {old_unit}) for the revert"),
    }];
    let edits = kubelet_edits(host, berth_endpoint, &old_unit, UNIT)?;
    for (path, _) in &edits {
        if !host.exists(&backup_path(path)) {
            let data = host.read(path)?.unwrap_or_default();
            steps.push(Step::Write {
                path: backup_path(path),
                data,
                mode: 0o600,
                why: format!("backup of {path}"),
            });
        }
    }
    if !host.exists(KUBELET_DROPIN) && !host.exists(&backup_path(KUBELET_DROPIN)) {
        steps.push(Step::Write {
            path: absent_marker(KUBELET_DROPIN),
            data: Vec::new(),
            mode: 0o600,
            why: format!("{KUBELET_DROPIN} did not exist"),
        });
    }
    steps.push(run(&["systemctl", "stop", "kubelet.service"]));
    steps.push(Step::RemovePods { endpoint: old_endpoint });
    steps.push(run(&["systemctl", "disable", "--now", &old_unit]));
    for (path, data) in edits {
        steps.push(Step::Write {
            path: path.into(),
            data: data.into_bytes(),
            mode: 0o644,
            why: format!("point at {berth_endpoint}"),
        });
    }
    steps.push(Step::Write {
        path: KUBELET_DROPIN.into(),
        data: DROPIN_TEXT.into(),
        mode: 0o644,
        why: "start the kubelet after berth".into(),
    });
    steps.push(run(&["systemctl", "daemon-reload"]));
    steps.push(run(&["systemctl", "start", "kubelet.service"]));
    steps.push(Step::WaitReady { berth: true });
    steps.push(Step::WaitConfirmed);
    Ok(steps)
}

/// The revert: the kubelet back on the old runtime, every edited file as it was (see
/// [`execute_revert`]).
pub fn plan_revert(host: &Host, berth_endpoint: &str) -> Result<Vec<Step>> {
    let record: Option<SwitchRecord> = match host.read_string(SWITCH_RECORD)? {
        Some(t) => Some(toml::from_str(&t).with_context(|| format!("reading {SWITCH_RECORD}"))?),
        None => None,
    };
    let mut steps = Vec::new();
    let mut restores = Vec::new();
    for path in [FLAGS_ENV, KUBELET_CONFIG, INSTANCE_CONFIG, DEFAULT_KUBELET, CRICTL_YAML, KUBELET_DROPIN] {
        if let Some(data) = host.read(&backup_path(path))? {
            if host.read(path)?.as_deref() != Some(&data[..]) {
                restores.push(Step::Write {
                    path: path.into(),
                    data,
                    mode: 0o644,
                    why: "restore the backup".into(),
                });
            }
        } else if host.exists(&absent_marker(path)) && host.exists(path) {
            restores.push(Step::Remove { path: path.into() });
        }
    }
    let switched = kubelet_endpoint(host)? == berth_endpoint;
    if let Some(record) = &record
        && (switched || !restores.is_empty())
    {
        steps.push(run(&["systemctl", "stop", "kubelet.service"]));
        steps.push(Step::RemovePods { endpoint: berth_endpoint.into() });
        steps.append(&mut restores);
        steps.push(run(&["systemctl", "daemon-reload"]));
        steps.push(run(&["systemctl", "enable", "--now", &record.old_unit]));
        steps.push(run(&["systemctl", "start", "kubelet.service"]));
        steps.push(Step::WaitReady { berth: false });
    } else {
        steps.append(&mut restores);
    }
    Ok(steps)
}

/// The uninstall after the revert: berth's service, every file the installer created, and berth's
/// own directories (`data`: its root and state, images and all).
pub fn plan_remove(host: &Host, data: &[&Path]) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    if host.exists(UNIT_PATH) {
        steps.push(run(&["systemctl", "disable", "--now", UNIT]));
    }
    let installed = host.read_string(INSTALLED)?.unwrap_or_default();
    for path in installed.lines().filter(|l| l.starts_with('/')) {
        if host.exists(path) {
            steps.push(Step::Remove { path: path.into() });
        }
    }
    steps.push(run(&["systemctl", "daemon-reload"]));
    if host.exists("/etc/berth") {
        steps.push(Step::Prune { path: "/etc/berth".into() });
    }
    for path in [SWITCH_RECORD, FAILED, INSTALLED] {
        if host.exists(path) {
            steps.push(Step::Remove { path: path.into() });
        }
    }
    for dir in data {
        let dir = dir.to_string_lossy();
        if host.exists(&dir) {
            steps.push(Step::RemoveTree { path: dir.into_owned() });
        }
    }
    Ok(steps)
}

/// Where waits and CRI calls happen: the real implementation talks to sockets and the API.
pub trait Effects {
    fn wait_berth(&mut self, host: &Host) -> Result<()>;
    fn remove_pods(&mut self, host: &Host, endpoint: &str) -> Result<usize>;
    fn start_switch(&mut self, host: &Host) -> Result<()>;
    fn wait_ready(&mut self, berth: bool, since: SystemTime) -> Result<()>;
    fn wait_confirmed(&mut self) -> Result<()>;
}

/// Runs the steps in order; stops at the first failure, naming the step.
pub fn execute(host: &Host, steps: &[Step], fx: &mut dyn Effects, log: &mut dyn FnMut(&str)) -> Result<()> {
    let since = SystemTime::now();
    for step in steps {
        run_step(host, step, since, fx, log)?;
    }
    Ok(())
}

/// Runs a revert: every step, even after one failed (berth's pods that would not stop must not
/// keep the kubelet from its old runtime); the first failure is returned at the end, with the
/// number of others.
pub fn execute_revert(
    host: &Host,
    steps: &[Step],
    fx: &mut dyn Effects,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let since = SystemTime::now();
    let mut failures = Vec::new();
    for step in steps {
        if let Err(e) = run_step(host, step, since, fx, log) {
            log(&format!("  {e:#}; the revert goes on"));
            failures.push(e);
        }
    }
    let n = failures.len();
    match failures.into_iter().next() {
        None => Ok(()),
        Some(e) if n == 1 => Err(e),
        Some(e) => Err(e.context(format!("{} steps of the revert failed, the first", n))),
    }
}

fn run_step(
    host: &Host,
    step: &Step,
    since: SystemTime,
    fx: &mut dyn Effects,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    log(&step.to_string());
    let r: Result<()> = match step {
        Step::Write { path, data, mode, .. } => {
            let r = host.write_if_changed(path, data, *mode).map(|_| ());
            if r.is_ok() && !path.starts_with(STATE_DIR) {
                record_installed(host, path)?;
            }
            r
        }
        Step::Remove { path } => host.remove(path).map(|_| ()),
        Step::Prune { path } => host.prune(path),
        Step::RemoveTree { path } => host.remove_tree(path),
        Step::Run { argv } => host.run(&argv.iter().map(String::as_str).collect::<Vec<_>>()).map(|_| ()),
        Step::WaitBerth => fx.wait_berth(host),
        Step::RemovePods { endpoint } => {
            fx.remove_pods(host, endpoint).map(|n| log(&format!("  removed {n} pod sandboxes")))
        }
        Step::StartSwitch => fx.start_switch(host),
        Step::WaitReady { berth } => fx.wait_ready(*berth, since),
        Step::WaitConfirmed => fx.wait_confirmed(),
    };
    r.with_context(|| format!("step failed: {step}"))
}

/// Files the installer created (not edited ones: those have backups) are listed for uninstall.
fn record_installed(host: &Host, path: &str) -> Result<()> {
    let kubelet_files = [FLAGS_ENV, KUBELET_CONFIG, INSTANCE_CONFIG, DEFAULT_KUBELET, CRICTL_YAML];
    if kubelet_files.contains(&path) {
        return Ok(());
    }
    let mut list = host.read_string(INSTALLED)?.unwrap_or_default();
    if !list.lines().any(|l| l == path) {
        list.push_str(path);
        list.push('\n');
        host.write_if_changed(INSTALLED, list.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// Runs the switch; on failure after the kubelet was touched, reverts, and in every failure case
/// leaves the failure marker (with the installer's version) and returns the error.
pub fn switch(
    host: &Host,
    berth_endpoint: &str,
    version: &str,
    fx: &mut dyn Effects,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let steps = plan_switch(host, berth_endpoint)?;
    let Err(err) = execute(host, &steps, fx, log) else {
        host.remove(FAILED)?;
        return Ok(());
    };
    log(&format!("switch failed: {err:#}; reverting to the old runtime"));
    let reverted = plan_revert(host, berth_endpoint).and_then(|s| execute_revert(host, &s, fx, log));
    let msg = match &reverted {
        Ok(()) => format!("{err:#}"),
        Err(e) => format!("{err:#}; the revert failed too: {e:#}"),
    };
    host.write_if_changed(FAILED, format!("{version}\n{msg}\n").as_bytes(), 0o600)?;
    bail!(msg)
}

/// The failure a previous switch with this same version left, if any: the pod does not retry it.
pub fn previous_failure(host: &Host, version: &str) -> Result<Option<String>> {
    let Some(text) = host.read_string(FAILED)? else { return Ok(None) };
    let (v, msg) = text.split_once('\n').unwrap_or((&text, ""));
    Ok((v == version).then(|| msg.trim().to_string()))
}

/// The steps as the dry run prints them.
pub fn describe(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "  nothing to do\n".into();
    }
    steps.iter().enumerate().map(|(i, s)| format!("  {:>2}. {s}\n", i + 1)).collect()
}

/// Waits with a deadline, polling `check` every `every`.
pub fn poll(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if std::time::Instant::now() >= deadline {
            return match last {
                Some(e) => {
                    Err(e.context(format!("{what}: not within {}", humantime::format_duration(timeout))))
                }
                None => bail!("{what}: not within {}", humantime::format_duration(timeout)),
            };
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests;
