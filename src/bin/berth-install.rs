//! berth-install: installs berth on a Kubernetes node and switches the kubelet to it (see
//! `berth::install`). The chart's DaemonSet runs `berth-install install --wait` in a privileged,
//! hostPID pod with the host's `/` at `/host`; the switch and the uninstall run as host units.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth::install::host::{Direct, Host, HostLock, HostNamespace};
use berth::install::kube::{self, Kube};
use berth::install::real::Real;
use berth::install::settings::Settings;
use berth::install::{self as inst, Payload};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-install",
    version,
    about = "Install berth on a Kubernetes node and switch the kubelet to it"
)]
struct Cli {
    /// Where the host's `/` is: `/host` in the DaemonSet pod, `/` on the host itself.
    #[arg(long, global = true, default_value = "/host")]
    host_root: PathBuf,
    /// The installer's settings (the chart renders them from its values).
    #[arg(long, global = true, default_value = "/etc/berth-install/install.toml")]
    settings: PathBuf,
    /// This node's name (the chart passes spec.nodeName).
    #[arg(long, global = true, env = "NODE_NAME")]
    node: Option<String>,
    /// Print the plan and change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install berth and start the switch of the kubelet (run in the DaemonSet pod).
    Install {
        /// The image's files: bin/berthd, bin/berth-shim, ...
        #[arg(long, default_value = "/berth")]
        payload: PathBuf,
        /// Then stay until SIGTERM; revert the node if the DaemonSet is gone by then.
        #[arg(long)]
        wait: bool,
        /// The DaemonSet's name (with POD_NAMESPACE), to tell its deletion from a rolling update.
        #[arg(long, env = "BERTH_DAEMONSET")]
        daemonset: Option<String>,
    },
    /// Switch the kubelet to berth (run by the host unit berth-switch).
    Switch,
    /// Put the node back on its old runtime and remove berth (as a host unit when run in a pod).
    Uninstall,
    /// Internal: run a command in the host's mount namespace.
    #[command(hide = true)]
    HostExec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

fn say(msg: &str) {
    eprintln!("berth-install: {msg}");
}

fn host(cli: &Cli) -> Host {
    if cli.host_root == std::path::Path::new("/") {
        Host { root: "/".into(), runner: Box::new(Direct) }
    } else {
        Host { root: cli.host_root.clone(), runner: Box::new(HostNamespace) }
    }
}

fn settings(cli: &Cli) -> Result<Settings> {
    Ok(Settings::load(&cli.settings)?)
}

/// The API client: the pod's service account in the pod; on the host (the switch and uninstall
/// units), the node's own credentials, the kubelet's kubeconfig.
fn kube_client(on_host: bool, node: &Option<String>) -> Option<(Kube, String)> {
    let node = node.clone()?;
    let client = if on_host {
        Kube::from_kubeconfig(std::path::Path::new(kube::KUBELET_KUBECONFIG))
    } else {
        Kube::from_dir(std::path::Path::new(kube::SERVICE_ACCOUNT_DIR))
    };
    match client {
        Ok(k) => Some((k, node)),
        Err(e) => {
            say(&format!("no API access ({e:#}): node labels and readiness are not checked"));
            None
        }
    }
}

fn label(real: &Real, value: &str, error: Option<&str>) {
    if let Some((k, node)) = &real.kube {
        let err = error.map(|e| e.chars().take(1000).collect::<String>());
        let r = real.block_on(k.label(
            node,
            &[(kube::LABEL, Some(value))],
            &[("berth.dev/install-error", err.as_deref())],
        ));
        if let Err(e) = r {
            say(&format!("{e:#}"));
        }
    }
}

fn install(cli: &Cli, payload: &std::path::Path, wait: bool, daemonset: Option<&str>) -> Result<()> {
    let host = host(cli);
    let settings_text = std::fs::read_to_string(&cli.settings).unwrap_or_default();
    let settings = Settings::parse(&settings_text)?;
    let payload = Payload::load(payload)?;
    let plan = inst::plan_install(&host, &payload, &settings, &settings_text)?;
    say(&format!(
        "installer {}; kubelet endpoint {}; cgroup driver {:?}",
        payload.version, plan.kubelet_endpoint, plan.driver
    ));
    if cli.dry_run {
        println!("install plan:\n{}", inst::describe(&plan.steps));
        if plan.steps.contains(&inst::Step::StartSwitch) {
            let switch = inst::plan_switch(&host, &plan.berth_endpoint)?;
            println!("switch plan (host unit berth-switch):\n{}", inst::describe(&switch));
        }
        return Ok(());
    }
    let mut real = Real::new(berth_socket(&plan.berth_endpoint), settings.ready_timeout)?;
    real.kube = kube_client(false, &cli.node);
    real.switch_argv = vec![
        format!("{}/berth-install", inst::BIN_DIR),
        "--host-root=/".into(),
        format!("--settings={}", inst::SETTINGS_PATH),
    ];
    real.switch_argv.extend(cli.node.as_ref().map(|n| format!("--node={n}")));
    real.switch_argv.push("switch".into());
    // Only a plan that changes the node takes its lock, and is then made again under it. The pod
    // re-created on berth only verifies, and must not wait for the lock: the switch unit holds it
    // while it waits for this very pod's word.
    let verify_only = plan.steps.iter().all(|s| *s == inst::Step::WaitBerth);
    let (plan, lock) = if verify_only {
        (plan, None)
    } else {
        let lock = HostLock::acquire(&host, std::time::Duration::from_secs(600))?;
        (inst::plan_install(&host, &payload, &settings, &settings_text)?, Some(lock))
    };
    if let Some(msg) = inst::previous_failure(&host, &payload.version)? {
        say(&format!("a previous switch with this installer failed, not retrying: {msg}"));
        label(&real, "failed", Some(&msg));
        return idle(&real, cli, wait, daemonset, &settings);
    }
    if !plan.switched {
        label(&real, "pending", None);
    }
    let mut log = |s: &str| say(s);
    if let Err(e) = inst::execute(&host, &plan.steps, &mut real, &mut log) {
        let msg = format!("{e:#}");
        say(&format!("install failed, the kubelet stays on {}: {msg}", plan.kubelet_endpoint));
        if !plan.switched {
            // berthd must not crash-loop beside the old runtime.
            let _ = host.run(&["systemctl", "disable", "--now", inst::UNIT]);
        }
        label(&real, "failed", Some(&msg));
        return Err(e);
    }
    if plan.steps.contains(&inst::Step::StartSwitch) {
        say("the host unit berth-switch is switching the kubelet; this pod is re-created on berth");
    } else if plan.switched {
        let mut fx = real;
        if fx.kube.is_some() {
            // Any Ready heartbeat on berth:// will do: the kubelet reports its status only every
            // few minutes while nothing changes, and the switch (if it just happened) waited for a
            // fresh one already.
            say(&inst::Step::WaitReady { berth: true }.to_string());
            if let Err(e) = inst::Effects::wait_ready(&mut fx, true, std::time::SystemTime::UNIX_EPOCH) {
                // The switch unit, waiting for this pod's word, reverts the node now.
                label(&fx, "failed", Some(&format!("{e:#}")));
                return Err(e);
            }
        }
        say("the node runs on berth");
        label(&fx, "true", None);
        drop(lock);
        return idle(&fx, cli, wait, daemonset, &settings);
    } else {
        say("berth is installed beside the old runtime (switchKubelet is off)");
    }
    drop(lock);
    idle(&real, cli, wait, daemonset, &settings)
}

fn berth_socket(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}

/// Stays until SIGTERM; then, when the DaemonSet is gone (not a rolling update), starts the revert.
fn idle(real: &Real, cli: &Cli, wait: bool, daemonset: Option<&str>, settings: &Settings) -> Result<()> {
    if !wait {
        return Ok(());
    }
    real.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        anyhow::Ok(())
    })?;
    say("SIGTERM");
    if !settings.uninstall_on_delete {
        return Ok(());
    }
    let (Some((k, _)), Some(ds), Ok(ns)) = (&real.kube, daemonset, std::env::var("POD_NAMESPACE")) else {
        say("cannot tell whether the DaemonSet is gone (no API, name or namespace): leaving berth installed");
        return Ok(());
    };
    if real.block_on(k.daemonset_alive(&ns, ds))? {
        return Ok(());
    }
    say("the DaemonSet is gone: starting the host unit berth-uninstall");
    start_uninstall_unit(&host(cli), &cli.node)
}

fn start_uninstall_unit(host: &Host, node: &Option<String>) -> Result<()> {
    let mut argv = vec![
        "systemd-run",
        "--unit=berth-uninstall",
        "--collect",
        "--description=berth: put the kubelet back on its old runtime",
        "/usr/local/bin/berth-install",
        "--host-root=/",
        "--settings=/etc/berth/install.toml", // inst::SETTINGS_PATH
    ];
    let node_arg = node.as_ref().map(|n| format!("--node={n}"));
    argv.extend(node_arg.as_deref());
    argv.push("uninstall");
    host.run(&argv).map(|_| ())
}

fn switch(cli: &Cli) -> Result<()> {
    let host = host(cli);
    let settings = settings(cli)?;
    let (_, config) = inst::settings::berth_config(
        &settings,
        inst::kubelet::cgroup_driver(&host.read_string(inst::KUBELET_CONFIG)?.unwrap_or_default()),
    )?;
    let endpoint = inst::berth_endpoint(&config);
    if cli.dry_run {
        println!("switch plan:\n{}", inst::describe(&inst::plan_switch(&host, &endpoint)?));
        return Ok(());
    }
    let _lock = HostLock::acquire(&host, std::time::Duration::from_secs(600))?;
    let mut real = Real::new(berth_socket(&endpoint), settings.ready_timeout)?;
    real.kube = kube_client(true, &cli.node);
    let version = Payload::load(&host.path("/usr/local"))?.version;
    let mut log = |s: &str| say(s);
    match inst::switch(&host, &endpoint, &version, &mut real, &mut log) {
        Ok(()) => {
            say("the kubelet runs on berth");
            Ok(())
        }
        Err(e) => {
            label(&real, "failed", Some(&format!("{e:#}")));
            Err(e)
        }
    }
}

fn uninstall(cli: &Cli) -> Result<()> {
    let host = host(cli);
    let settings = settings(cli).unwrap_or_default();
    let driver = inst::kubelet::cgroup_driver(&host.read_string(inst::KUBELET_CONFIG)?.unwrap_or_default());
    let config = inst::settings::berth_config(&settings, driver).map(|(_, c)| c).unwrap_or_default();
    let endpoint = inst::berth_endpoint(&config);
    let revert = inst::plan_revert(&host, &endpoint)?;
    let remove = inst::plan_remove(&host, &[&config.root, &config.state])?;
    if cli.dry_run {
        println!("uninstall plan:\n{}", inst::describe(&[revert, remove].concat()));
        return Ok(());
    }
    if cli.host_root != std::path::Path::new("/") {
        // The revert removes berth's pods, this one included: it must run outside any pod.
        return start_uninstall_unit(&host, &cli.node);
    }
    let _lock = HostLock::acquire(&host, std::time::Duration::from_secs(600))?;
    let mut real = Real::new(berth_socket(&endpoint), settings.ready_timeout)?;
    real.kube = kube_client(true, &cli.node);
    let mut log = |s: &str| say(s);
    // berth goes only once the node is back: its pods that would not stop are left to berth.
    inst::execute_revert(&host, &revert, &mut real, &mut log)?;
    inst::execute(&host, &remove, &mut real, &mut log)?;
    // The backups are spent: every file they kept is back.
    std::fs::remove_dir_all(host.path(inst::STATE_DIR))
        .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
        .with_context(|| format!("removing {}", inst::STATE_DIR))?;
    if let Some((k, node)) = &real.kube {
        real.block_on(k.label(node, &[(kube::LABEL, None)], &[("berth.dev/install-error", None)]))?;
    }
    say("berth is uninstalled; the kubelet runs on its old runtime");
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::HostExec { argv } => match berth::install::host::host_exec(argv)? {},
        Command::Install { payload, wait, daemonset } => install(&cli, payload, *wait, daemonset.as_deref()),
        Command::Switch => switch(&cli),
        Command::Uninstall => uninstall(&cli),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-install: {e:#}");
            ExitCode::FAILURE
        }
    }
}
