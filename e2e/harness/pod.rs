//! CRI configs shaped the way the kubelet (1.34–1.36) builds them (see /work/shared/kubelet-cri.md):
//! [`PodConfig`] for RunPodSandbox (metadata with a random uid, the kubelet's labels, a pod log
//! directory `<logs>/<ns>_<name>_<uid>` created 0755 as the kubelet does, ClusterFirst-style DNS,
//! hostname, namespace options, RuntimeDefault seccomp for the sandbox), and [`ContainerBuilder`] for
//! CreateContainer (labels and annotations as the kubelet sets them, `log_path` `<name>/<restart>.log`
//! with its directory created, the termination-message file mounted at `/dev/termination-log`, explicit
//! masked/read-only paths, Unconfined seccomp, BestEffort resources with a zero hugepage limit per host
//! page size). The pod's "kubelet" directories (logs, `pods/<uid>`) live in a temp dir owned by the
//! [`PodConfig`] and removed with it. This module only builds messages; it never calls berth.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth::cri::api::{
    Capability, ContainerConfig, ContainerMetadata, DnsConfig, HugepageLimit, ImageSpec, Int64Value,
    KeyValue, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol, SecurityProfile,
    security_profile::ProfileType,
};

/// The kubelet's label names.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// The kubelet's annotation names.
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
pub const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
pub const TERMINATION_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";

/// Where the kubelet mounts the termination message file by default.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The namespace every test pod lives in.
pub const NAMESPACE: &str = "berth-e2e";

/// The paths the kubelet masks in every non-privileged container (procMount Default).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// The paths the kubelet makes read-only in every non-privileged container.
pub const READONLY_PATHS: &[&str] =
    &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A random lowercase hex string of `n` bytes.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the kernel's random source");
    hex::encode(b)
}

/// A UUID-shaped random uid, as the API server assigns.
fn random_uid() -> String {
    let h = random_hex(16);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The kubelet's side of one pod: its temp dirs.
#[derive(Debug)]
struct KubeletDirs {
    root: PathBuf,
}

impl Drop for KubeletDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A pod as the kubelet describes it to RunPodSandbox. Tests adjust `config` directly for anything
/// the helpers do not cover; clones share the kubelet directories.
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// The message passed to RunPodSandbox (and as `sandbox_config` to CreateContainer).
    pub config: PodSandboxConfig,
    dirs: Arc<KubeletDirs>,
}

fn mkdir_0755(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
}

impl PodConfig {
    /// A pod named `name` in namespace [`NAMESPACE`] with a random uid, attempt 0, its own network,
    /// IPC and UTS namespaces (pid per container), hostname = name, ClusterFirst DNS and its log
    /// directory created.
    pub fn new(name: &str) -> PodConfig {
        let uid = random_uid();
        let root = super::temp_dir("berth-e2e-kubelet-");
        let dirs = Arc::new(KubeletDirs { root });
        let log_directory = dirs.root.join("logs").join(format!("{NAMESPACE}_{name}_{uid}"));
        // The kubelet creates the pod log dir itself (MkdirAll 0755) before RunPodSandbox.
        mkdir_0755(&log_directory);
        let labels = HashMap::from([
            (POD_NAME.to_string(), name.to_string()),
            (POD_NAMESPACE.to_string(), NAMESPACE.to_string()),
            (POD_UID.to_string(), uid.clone()),
            ("app".to_string(), name.to_string()),
        ]);
        let annotations = HashMap::from([
            ("kubernetes.io/config.source".to_string(), "api".to_string()),
            ("kubernetes.io/config.seen".to_string(), "2025-01-01T00:00:00.000000000Z".to_string()),
        ]);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid,
                namespace: NAMESPACE.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_directory.display().to_string(),
            dns_config: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec![
                    format!("{NAMESPACE}.svc.cluster.local"),
                    "svc.cluster.local".into(),
                    "cluster.local".into(),
                ],
                options: vec!["ndots:5".into()],
            }),
            port_mappings: Vec::new(),
            labels,
            annotations,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    seccomp: Some(SecurityProfile {
                        profile_type: ProfileType::RuntimeDefault as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sysctls: HashMap::new(),
                overhead: None,
                resources: None,
            }),
            windows: None,
        };
        PodConfig { config, dirs }
    }

    /// The pod's metadata.
    pub fn metadata(&self) -> &PodSandboxMetadata {
        self.config.metadata.as_ref().expect("metadata set")
    }

    /// The pod's uid.
    pub fn uid(&self) -> &str {
        &self.metadata().uid
    }

    /// The pod log directory (absolute).
    pub fn log_directory(&self) -> PathBuf {
        PathBuf::from(&self.config.log_directory)
    }

    /// The kubelet's per-pod directory (`/var/lib/kubelet/pods/<uid>` on a node).
    pub fn pod_dir(&self) -> PathBuf {
        self.dirs.root.join("pods").join(self.uid())
    }

    fn namespace_options(&mut self) -> &mut NamespaceOption {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options
            .get_or_insert_with(Default::default)
    }

    /// hostNetwork: network and the kubelet's hostname both come from the node (no hostname is sent).
    pub fn host_network(mut self) -> PodConfig {
        self.namespace_options().network = NamespaceMode::Node as i32;
        self.config.hostname = String::new();
        self
    }

    /// Declares a TCP container port, mapped to `host_port` (0: declared but not mapped, which the
    /// kubelet still sends).
    pub fn port(mut self, container_port: u16, host_port: u16) -> PodConfig {
        self.config.port_mappings.push(PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: container_port.into(),
            host_port: host_port.into(),
            host_ip: String::new(),
        });
        self
    }

    /// The pod's cgroup parent (the kubelet's `/kubepods/besteffort/pod<uid>`).
    pub fn cgroup_parent(mut self, parent: &str) -> PodConfig {
        self.config.linux.get_or_insert_with(Default::default).cgroup_parent = parent.to_string();
        self
    }

    /// A container of this pod running `image` (an image ID, as the kubelet passes after PullImage).
    pub fn container(&self, name: &str, image: &str) -> ContainerBuilder {
        ContainerBuilder::new(self, name, image)
    }
}

/// Host page sizes as the kubelet names them ("2MB", "1GB").
fn host_hugepage_sizes() -> Vec<String> {
    let mut sizes: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let kb: u64 = n.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()?;
                    Some(match kb {
                        kb if kb >= 1 << 20 => format!("{}GB", kb >> 20),
                        kb if kb >= 1 << 10 => format!("{}MB", kb >> 10),
                        kb => format!("{kb}KB"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    sizes.sort();
    sizes
}

/// A container config under construction; [`ContainerBuilder::build`] creates what the kubelet
/// creates on disk for it.
#[derive(Debug, Clone)]
pub struct ContainerBuilder {
    config: ContainerConfig,
    pod: PodConfig,
    termination_log: Option<String>,
}

impl ContainerBuilder {
    fn new(pod: &PodConfig, name: &str, image: &str) -> ContainerBuilder {
        let m = pod.metadata();
        let labels = HashMap::from([
            (POD_NAME.to_string(), m.name.clone()),
            (POD_NAMESPACE.to_string(), m.namespace.clone()),
            (POD_UID.to_string(), m.uid.clone()),
            (CONTAINER_NAME.to_string(), name.to_string()),
        ]);
        let annotations = HashMap::from([
            (CONTAINER_HASH.to_string(), random_hex(4)),
            (RESTART_COUNT.to_string(), "0".to_string()),
            (TERMINATION_MESSAGE_PATH.to_string(), TERMINATION_LOG.to_string()),
            (TERMINATION_MESSAGE_POLICY.to_string(), "File".to_string()),
            (TERMINATION_GRACE.to_string(), "30".to_string()),
        ]);
        let nso = pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let resources = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_shares: 2,
            oom_score_adj: 1000,
            hugepage_limits: host_hugepage_sizes()
                .into_iter()
                .map(|page_size| HugepageLimit { page_size, limit: 0 })
                .collect(),
            ..Default::default()
        };
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.to_string(), attempt: 0 }),
            image: Some(ImageSpec {
                image: image.to_string(),
                user_specified_image: image.to_string(),
                ..Default::default()
            }),
            envs: vec![
                KeyValue { key: "KUBERNETES_SERVICE_HOST".into(), value: "10.96.0.1".into() },
                KeyValue { key: "KUBERNETES_SERVICE_PORT".into(), value: "443".into() },
            ],
            labels,
            annotations,
            log_path: format!("{name}/0.log"),
            linux: Some(LinuxContainerConfig {
                resources: Some(resources),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: nso,
                    masked_paths: MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
                    readonly_paths: READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
                    seccomp: Some(SecurityProfile {
                        profile_type: ProfileType::Unconfined as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        ContainerBuilder { config, pod: pod.clone(), termination_log: Some(TERMINATION_LOG.to_string()) }
    }

    /// The entrypoint override (`command:` in the pod spec).
    pub fn command(mut self, cmd: &[&str]) -> Self {
        self.config.command = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `sh -c <script>` as the command.
    pub fn sh(self, script: &str) -> Self {
        self.command(&["sh", "-c", script])
    }

    /// `args:` in the pod spec.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.config.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `stdin: true` (and `stdinOnce` as given): the container's stdin stays open for attachers.
    pub fn stdin(mut self, once: bool) -> Self {
        self.config.stdin = true;
        self.config.stdin_once = once;
        self
    }

    /// `tty: true`: the container runs on a terminal.
    pub fn tty(mut self) -> Self {
        self.config.tty = true;
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.config.envs.push(KeyValue { key: key.into(), value: value.into() });
        self
    }

    /// Adds a bind mount of `host_path` at `container_path`.
    pub fn mount(mut self, host_path: &Path, container_path: &str, readonly: bool) -> Self {
        self.config.mounts.push(Mount {
            host_path: host_path.display().to_string(),
            container_path: container_path.to_string(),
            readonly,
            ..Default::default()
        });
        self
    }

    /// Adds an image volume (`Mount.image`, read-only as the kubelet sends it) of `image` (the
    /// reference PullImage returned), or of `sub_path` inside it, at `container_path`.
    pub fn image_volume(mut self, image: &str, sub_path: &str, container_path: &str) -> Self {
        self.config.mounts.push(Mount {
            container_path: container_path.to_string(),
            readonly: true,
            image: Some(ImageSpec { image: image.to_string(), ..Default::default() }),
            image_sub_path: sub_path.to_string(),
            ..Default::default()
        });
        self
    }

    /// The restart count (annotation, attempt and log file name follow it).
    pub fn restart_count(mut self, n: u32) -> Self {
        self.config.annotations.insert(RESTART_COUNT.into(), n.to_string());
        if let Some(m) = self.config.metadata.as_mut() {
            m.attempt = n;
        }
        let name = self.config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        self.config.log_path = format!("{name}/{n}.log");
        self
    }

    /// The termination message path (`None`: no file and no annotation, as with an empty path).
    pub fn termination_message_path(mut self, path: Option<&str>) -> Self {
        self.termination_log = path.map(str::to_string);
        match path {
            Some(p) => self.config.annotations.insert(TERMINATION_MESSAGE_PATH.into(), p.into()),
            None => self.config.annotations.remove(TERMINATION_MESSAGE_PATH),
        };
        self
    }

    fn security(&mut self) -> &mut LinuxContainerSecurityContext {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn resources(&mut self) -> &mut LinuxContainerResources {
        self.config.linux.get_or_insert_with(Default::default).resources.get_or_insert_with(Default::default)
    }

    /// `readOnlyRootFilesystem: true`.
    pub fn readonly_rootfs(mut self) -> Self {
        self.security().readonly_rootfs = true;
        self
    }

    /// `runAsUser`.
    pub fn run_as_user(mut self, uid: i64) -> Self {
        self.security().run_as_user = Some(Int64Value { value: uid });
        self
    }

    /// A user name to resolve in the image's /etc/passwd (the kubelet sends it for non-numeric
    /// image users it cannot check itself).
    pub fn run_as_username(mut self, name: &str) -> Self {
        self.security().run_as_username = name.to_string();
        self
    }

    /// Capabilities to add and drop (`["ALL"]` drops everything first).
    pub fn capabilities(mut self, add: &[&str], drop: &[&str]) -> Self {
        self.security().capabilities = Some(Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: Vec::new(),
        });
        self
    }

    /// A memory limit (the kubelet sets the swap limit to the same on cgroup v1 without NodeSwap),
    /// with the oom_score_adj of a Burstable pod.
    pub fn memory_limit(mut self, bytes: i64) -> Self {
        let r = self.resources();
        r.memory_limit_in_bytes = bytes;
        r.memory_swap_limit_in_bytes = bytes;
        r.oom_score_adj = 999;
        self
    }

    /// Creates the container log dir `<pod log dir>/<name>` (0755) and the termination-message file
    /// `<pod dir>/containers/<name>/<8 hex>` (0666, mounted at the termination message path), as the
    /// kubelet does before CreateContainer, and returns the config.
    pub fn build(mut self) -> ContainerConfig {
        let name = self.config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        mkdir_0755(&self.pod.log_directory().join(&name));
        if let Some(path) = self.termination_log.clone() {
            let dir = self.pod.pod_dir().join("containers").join(&name);
            mkdir_0755(&dir);
            let file = dir.join(random_hex(4));
            std::fs::write(&file, b"").unwrap_or_else(|e| panic!("creating {}: {e}", file.display()));
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", file.display()));
            self = self.mount(&file, &path, false);
        }
        self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_config_is_kubelet_shaped_and_cleans_up() {
        let pod = PodConfig::new("web");
        let m = pod.metadata().clone();
        assert_eq!(m.uid.len(), 36);
        assert_eq!(pod.config.labels[POD_UID], m.uid);
        let logs = pod.log_directory();
        assert!(logs.ends_with(format!("{NAMESPACE}_web_{}", m.uid)));
        assert!(logs.is_dir());
        let c = pod.container("app", "sha256:abc").restart_count(2).build();
        assert_eq!(c.log_path, "app/2.log");
        assert!(logs.join("app").is_dir());
        assert_eq!(c.labels[CONTAINER_NAME], "app");
        assert_eq!(c.annotations[RESTART_COUNT], "2");
        let term = c.mounts.iter().find(|m| m.container_path == TERMINATION_LOG).expect("termination mount");
        let mode = std::fs::metadata(&term.host_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let other = PodConfig::new("web");
        assert_ne!(other.uid(), pod.uid());
        let root = pod.dirs.root.clone();
        drop(pod);
        assert!(!root.exists(), "{} left behind", root.display());
    }

    #[test]
    fn host_network_pods_send_no_hostname() {
        let pod = PodConfig::new("hn").host_network();
        assert_eq!(pod.config.hostname, "");
        let nso = pod.config.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(nso.network, NamespaceMode::Node as i32);
    }
}
