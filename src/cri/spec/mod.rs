//! CRI configuration → OCI runtime spec (`config.json` for runc/crun), for the pod's pause
//! container ([`sandbox_spec`]) and for every container ([`container_spec`]), doing what
//! containerd's CRI plugin does (`container_create*.go`, `podsandbox/sandbox_run_linux.go`,
//! `pkg/oci`, `contrib/seccomp`): the same process, user, capabilities, namespaces, mounts,
//! devices, resources, seccomp filter and annotations for the same request.
//!
//! Inputs are the CRI messages, the image config, the mounted root filesystem (only its
//! `/etc/passwd` and `/etc/group` are read, safely) and facts about the node gathered once by
//! [`detect_runtime_env`]. This module builds data: it must never create namespaces, mount, or start
//! anything. The only host changes it makes are containerd's: creating a missing host directory of
//! a bind mount, and loading berth's default AppArmor profile through the injected
//! [`apparmor::AppArmor`] (containerd's `WithDefaultProfile`).

pub mod apparmor;
mod caps;
mod devices;
mod mounts;
mod seccomp;
mod seccomp_default;
mod user;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxHugepageLimit, LinuxIdMapping, LinuxMemory,
    LinuxNamespace, LinuxNamespaceType, LinuxResources, LinuxSeccomp, Mount, Process, Root, Spec, User,
};

use crate::config::{CgroupDriver, glob};
use crate::cri::api::{self, NamespaceMode};
use crate::engine::oci::ImageConfig;
use crate::error::{Context, Error, Result};

pub use caps::DEFAULT_CAPS;

/// The PATH a container gets when its image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The oom_score_adj of pause containers (kubernetes#47938).
const SANDBOX_OOM_SCORE_ADJ: i64 = -998;
/// The cpu shares of pause containers.
const SANDBOX_CPU_SHARES: u64 = 2;
/// The OCI runtime spec version the generated specs follow.
const OCI_VERSION: &str = "1.1.0";

/// containerd's annotations on every spec, read by OCI runtimes and tooling (e.g. kata, NRI).
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
    pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
    pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
    pub const SANDBOX_CPU_SHARES: &str = "io.kubernetes.cri.sandbox-cpu-shares";
    pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// What the pod sandbox provides to its containers (and to its own pause container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxContext {
    /// The sandbox id.
    pub id: String,
    /// The pod's network namespace (a bind-mounted nsfs file); `None` for a hostNetwork pod.
    pub netns: Option<PathBuf>,
    /// The pause process, whose ipc/uts/pid (and user) namespaces containers join through
    /// `/proc/<pid>/ns/*`; `None` only while the pause itself is being created.
    pub pause_pid: Option<u32>,
    /// The pod's hostname (the node's for hostNetwork pods): the pause's UTS name and the
    /// containers' HOSTNAME.
    pub hostname: String,
    /// Files bind-mounted into containers at /etc/hostname, /etc/hosts and /etc/resolv.conf.
    pub hostname_path: PathBuf,
    pub hosts_path: PathBuf,
    pub resolv_conf_path: PathBuf,
    /// The pod's /dev/shm tmpfs; `None` when the pod uses the host's IPC namespace.
    pub shm_path: Option<PathBuf>,
    /// The pod cgroup as the kubelet sent it.
    pub cgroup_parent: String,
    /// Which request annotations the pod's runtime handler lets into its specs.
    pub passthrough: Passthrough,
}

/// A runtime handler's allowlists of request annotations copied into OCI specs (glob patterns, see
/// [`crate::config::glob`]); empty lists copy nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Passthrough {
    /// For the pod's annotations, in the pause's and every container's spec.
    pub pod: Vec<String>,
    /// For a container's own annotations, in its spec.
    pub container: Vec<String>,
}

impl Passthrough {
    pub fn of(handler: &crate::config::RuntimeHandler) -> Passthrough {
        Passthrough { pod: handler.pod_annotations.clone(), container: handler.container_annotations.clone() }
    }
}

/// Facts about the node and runtime, computed once by berthd ([`detect_runtime_env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEnv {
    pub cgroup_driver: CgroupDriver,
    /// The unified hierarchy is mounted at /sys/fs/cgroup.
    pub cgroup_v2: bool,
    /// berthd's capability bounding set ("CAP_CHOWN" …): what "ALL" and privileged mean here.
    pub bounding_caps: Vec<String>,
    /// berthd's own oom_score_adj.
    pub own_oom_score_adj: i32,
    /// CAP_SYS_RESOURCE is in the bounding set: containers may get an oom_score_adj below ours.
    pub can_lower_oom_score_adj: bool,
    /// Huge page sizes of the node as the CRI names them ("2MB", "1GB").
    pub hugepage_sizes: Vec<String>,
    /// The hugetlb cgroup controller is available (else huge page limits are left out).
    pub hugetlb_controller: bool,
    /// The memory controller accounts swap (memsw / memory.swap.max).
    pub swap_controller: bool,
    pub seccomp_enabled: bool,
    /// Recursive read-only bind mounts work (kernel ≥ 5.12 with mount_setattr).
    pub recursive_read_only_mounts: bool,
    /// berthd itself runs in a user namespace.
    pub in_user_namespace: bool,
    /// Super options of the host's cgroup2 mount at /sys/fs/cgroup (cgroup v2 only).
    pub cgroup2_mount_options: Vec<String>,
    /// The running kernel's (major, minor) version.
    pub kernel: (u32, u32),
}

fn read_host(path: &str) -> Result<String> {
    std::fs::read_to_string(path).context(|| format!("reading {path}"))
}

/// "2048kB" directory suffixes of /sys/kernel/mm/hugepages as the CRI names page sizes.
fn hugepage_size_name(kb: u64) -> String {
    if kb >= 1 << 20 && kb.is_multiple_of(1 << 20) {
        format!("{}GB", kb >> 20)
    } else if kb >= 1 << 10 && kb.is_multiple_of(1 << 10) {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}KB")
    }
}

fn parse_kernel_release(release: &str) -> (u32, u32) {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Gathers the node facts specs depend on, from /proc and /sys.
pub fn detect_runtime_env(cgroup_driver: CgroupDriver) -> Result<RuntimeEnv> {
    let status = read_host("/proc/self/status")?;
    let bounding_caps = caps::bounding_from_status(&status)?;
    let own_oom_score_adj = read_host("/proc/self/oom_score_adj")?
        .trim()
        .parse()
        .map_err(|e| Error::internal(format!("reading /proc/self/oom_score_adj: {e}")))?;
    let cgroup_v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .context(|| "statfs /sys/fs/cgroup".into())?
        .filesystem_type()
        == nix::sys::statfs::CGROUP2_SUPER_MAGIC;

    let mut hugepage_sizes: Vec<(u64, String)> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let kb = e
                        .file_name()
                        .to_str()?
                        .strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()?;
                    Some((kb, hugepage_size_name(kb)))
                })
                .collect()
        })
        .unwrap_or_default();
    hugepage_sizes.sort();

    let (hugetlb_controller, swap_controller) = if cgroup_v2 {
        let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        // memory.swap.max does not exist in the root cgroup: look in our own.
        let own = read_host("/proc/self/cgroup")?
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            .unwrap_or_default();
        let swap =
            Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/')).join("memory.swap.max").exists();
        (controllers.split_whitespace().any(|c| c == "hugetlb"), swap)
    } else {
        (
            Path::new("/sys/fs/cgroup/hugetlb").is_dir(),
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
        )
    };
    let cgroup2_mount_options = if cgroup_v2 {
        let info = mounts::HostMounts::read()?;
        info.mountinfo
            .iter()
            .rev()
            .find(|m| m.mount_point == "/sys/fs/cgroup" && m.fs_type == "cgroup2")
            .map(|m| m.super_options.clone())
            .unwrap_or_default()
    } else {
        vec![]
    };
    let kernel = parse_kernel_release(&read_host("/proc/sys/kernel/osrelease")?);
    let in_user_namespace = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false);
    Ok(RuntimeEnv {
        cgroup_driver,
        cgroup_v2,
        can_lower_oom_score_adj: bounding_caps.iter().any(|c| c == "CAP_SYS_RESOURCE"),
        bounding_caps,
        own_oom_score_adj,
        hugepage_sizes: hugepage_sizes.into_iter().map(|(_, n)| n).collect(),
        hugetlb_controller,
        swap_controller,
        seccomp_enabled: status.lines().any(|l| l.starts_with("Seccomp:")),
        recursive_read_only_mounts: kernel >= (5, 12),
        in_user_namespace,
        cgroup2_mount_options,
        kernel,
    })
}

/// The OCI `linux.cgroupsPath` of a sandbox or container: `<parent>/<id>` with the cgroupfs
/// driver; `<slice>:berth:<id>` with the systemd driver, the slice being the last element of the
/// parent (the kubelet gives `/kubepods.slice/…/kubepods-…-pod<uid>.slice`), which runc turns into
/// the unit `berth-<id>.scope` in that slice (containerd: `<slice>:cri-containerd:<id>`). Without a
/// parent, cgroupfs uses `/k8s.io/<id>` as containerd does for its k8s.io namespace, and systemd
/// runc's default slice, system.slice. A systemd parent that is not a slice is refused, as CRI-O
/// does: the kubelet and berth disagree on the driver, and the pod's limits would be lost.
pub fn cgroups_path(driver: CgroupDriver, parent: &str, id: &str) -> Result<String> {
    match driver {
        CgroupDriver::Systemd => {
            let base = parent.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            if !base.is_empty() && !base.ends_with(".slice") {
                return Err(Error::invalid(format!(
                    "cgroup parent {parent:?} is not a systemd slice (\"<name>.slice\"), but berth uses \
                     the systemd cgroup driver (cri.cgroup_driver): the kubelet's cgroup driver must match"
                )));
            }
            Ok(format!("{base}:berth:{id}"))
        }
        CgroupDriver::Cgroupfs if parent.is_empty() => Ok(format!("/k8s.io/{id}")),
        CgroupDriver::Cgroupfs => Ok(mounts::clean(&format!("{parent}/{id}"))),
    }
}

/// containerd's `replaceOrAppendEnvValues`: overrides replace by key, keep order, and an override
/// without '=' removes the variable.
fn merge_env(base: Vec<String>, overrides: impl IntoIterator<Item = String>) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let mut out: Vec<Option<String>> = base.into_iter().map(Some).collect();
    for o in overrides {
        let k = key(&o);
        let pos = out.iter().position(|e| e.as_deref().is_some_and(|e| key(e) == k));
        match (o.contains('='), pos) {
            (false, Some(i)) => out[i] = None,
            (false, None) => {}
            (true, Some(i)) => out[i] = Some(o),
            (true, None) => out.push(Some(o)),
        }
    }
    out.into_iter().flatten().collect()
}

/// containerd's `WithProcessArgs`: the CRI command replaces the image entrypoint; CRI args
/// replace the image cmd.
fn process_args(config: &api::ContainerConfig, image: &ImageConfig) -> Result<Vec<String>> {
    let mut command = config.command.clone();
    let mut args = config.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.config.cmd.clone().unwrap_or_default();
        }
        let entrypoint = image.config.entrypoint.clone().unwrap_or_default();
        // Docker's way of clearing an inherited entrypoint is `[""]`.
        if entrypoint.len() != 1 || !entrypoint[0].is_empty() {
            command = entrypoint;
        }
    }
    if command.is_empty() && args.is_empty() {
        return Err(Error::invalid("no command specified"));
    }
    command.extend(args);
    Ok(command)
}

fn ns(typ: LinuxNamespaceType, path: Option<String>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ).set_path(path.map(PathBuf::from));
    n
}

fn mode(m: i32, field: &str) -> Result<NamespaceMode> {
    NamespaceMode::try_from(m).map_err(|_| Error::invalid(format!("{field}: unknown namespace mode {m}")))
}

/// The uid/gid mappings of a pod user namespace (`None`: the node's user namespace), validated
/// like containerd's `parseUsernsIDs`: one mapping line each, required in POD mode, forbidden in
/// NODE mode.
type IdMaps = (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>);

fn userns_maps(userns: Option<&api::UserNamespace>, field: &str) -> Result<Option<IdMaps>> {
    let Some(u) = userns else { return Ok(None) };
    let conv = |m: &[api::IdMapping], what: &str| -> Result<Vec<LinuxIdMapping>> {
        if m.len() > 1 {
            return Err(Error::invalid(format!(
                "{field}.{what}: only one mapping line supported, got {}",
                m.len()
            )));
        }
        m.iter()
            .map(|m| {
                if m.length < 1 {
                    return Err(Error::invalid(format!(
                        "{field}.{what}: invalid mapping length {}",
                        m.length
                    )));
                }
                Ok(mounts::id_mapping(m))
            })
            .collect()
    };
    let uids = conv(&u.uids, "uids")?;
    let gids = conv(&u.gids, "gids")?;
    match mode(u.mode, field)? {
        NamespaceMode::Node if uids.is_empty() && gids.is_empty() => Ok(None),
        NamespaceMode::Node => Err(Error::invalid(format!("{field}: mode NODE can't have mappings"))),
        NamespaceMode::Pod if uids.is_empty() || gids.is_empty() => {
            Err(Error::invalid(format!("{field}: mode POD needs uid and gid mappings")))
        }
        NamespaceMode::Pod => Ok(Some((uids, gids))),
        other => Err(Error::invalid(format!("{field}: unsupported mode {}", other.as_str_name()))),
    }
}

// The deprecated string forms of the security profiles, still honoured when the typed field is
// absent (as containerd does).
#[allow(deprecated)]
fn sandbox_seccomp_path(sc: &api::LinuxSandboxSecurityContext) -> &str {
    &sc.seccomp_profile_path
}

#[allow(deprecated)]
fn container_seccomp_path(sc: &api::LinuxContainerSecurityContext) -> &str {
    &sc.seccomp_profile_path
}

#[allow(deprecated)]
fn container_apparmor_name(sc: &api::LinuxContainerSecurityContext) -> &str {
    &sc.apparmor_profile
}

/// The pause process's path for one of its namespaces.
fn pause_ns(ctx: &SandboxContext, ns: &str) -> Result<String> {
    let pid = ctx
        .pause_pid
        .ok_or_else(|| Error::precondition(format!("sandbox {} has no running pause process", ctx.id)))?;
    Ok(format!("/proc/{pid}/ns/{ns}"))
}

fn clamp_oom_score_adj(adj: i64, env: &RuntimeEnv, field: &str) -> Result<i32> {
    if !(-1000..=1000).contains(&adj) {
        return Err(Error::invalid(format!("{field}: oom_score_adj {adj} is outside [-1000, 1000]")));
    }
    let adj = adj as i32;
    // Going below our own value needs CAP_SYS_RESOURCE; without it runc's write fails (EPERM).
    Ok(if !env.can_lower_oom_score_adj && adj < env.own_oom_score_adj { env.own_oom_score_adj } else { adj })
}

/// berth's own annotation keys: set by berth, never taken from a request.
const BERTH_ANNOTATION_PREFIX: &str = "io.kubernetes.cri.";

/// Copies the request annotations an allowlist names into `out`. Annotations configure OCI runtimes
/// (runc's `org.systemd.property.*`, crun's `run.oci.*`, kata's `io.katacontainers.*`), so a pod
/// gets only what the node's operator allowed for its runtime handler.
fn passthrough(
    from_request: &HashMap<String, String>,
    patterns: &[String],
    out: &mut HashMap<String, String>,
) {
    for (k, v) in from_request {
        if !k.starts_with(BERTH_ANNOTATION_PREFIX) && patterns.iter().any(|p| glob::matches(p, k)) {
            out.insert(k.clone(), v.clone());
        }
    }
}

fn sandbox_annotations(out: &mut HashMap<String, String>, sandbox_id: &str, sandbox: &api::PodSandboxConfig) {
    let meta = sandbox.metadata.clone().unwrap_or_default();
    out.insert(annotations::SANDBOX_ID.into(), sandbox_id.into());
    out.insert(annotations::SANDBOX_NAMESPACE.into(), meta.namespace);
    out.insert(annotations::SANDBOX_UID.into(), meta.uid);
    out.insert(annotations::SANDBOX_NAME.into(), meta.name);
}

/// containerd's `WithResources`, plus the checks the OCI runtime would otherwise fail on later.
pub fn container_resources(
    r: Option<&api::LinuxContainerResources>,
    env: &RuntimeEnv,
    devices: Vec<LinuxDeviceCgroup>,
) -> Result<LinuxResources> {
    let mut res = LinuxResources::default();
    res.set_devices(Some(devices));
    let Some(r) = r else { return Ok(res) };
    let field = "linux.resources";
    let nonneg = |v: i64, name: &str| -> Result<u64> {
        u64::try_from(v).map_err(|_| Error::invalid(format!("{field}.{name}: negative value {v}")))
    };
    let mut cpu = LinuxCpu::default();
    if r.cpu_period != 0 {
        cpu.set_period(Some(nonneg(r.cpu_period, "cpu_period")?));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_shares != 0 {
        cpu.set_shares(Some(nonneg(r.cpu_shares, "cpu_shares")?));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    let mut mem = LinuxMemory::default();
    if r.memory_limit_in_bytes != 0 {
        mem.set_limit(Some(r.memory_limit_in_bytes));
        // Memory and memory+swap equal: no swapping unless asked for.
        if r.memory_swap_limit_in_bytes == 0 && env.swap_controller {
            mem.set_swap(Some(r.memory_limit_in_bytes));
        }
    }
    if r.memory_swap_limit_in_bytes != 0 && env.swap_controller {
        mem.set_swap(Some(r.memory_swap_limit_in_bytes));
    }
    res.set_cpu(Some(cpu)).set_memory(Some(mem));
    if !r.hugepage_limits.is_empty() {
        if env.hugetlb_controller {
            let limits = r
                .hugepage_limits
                .iter()
                .map(|h| {
                    if !env.hugepage_sizes.contains(&h.page_size) {
                        return Err(Error::invalid(format!(
                            "{field}.hugepage_limits: page size {:?} is not supported by this node",
                            h.page_size
                        )));
                    }
                    let limit = i64::try_from(h.limit).map_err(|_| {
                        Error::invalid(format!("{field}.hugepage_limits: limit {} is too large", h.limit))
                    })?;
                    let mut l = LinuxHugepageLimit::default();
                    l.set_page_size(h.page_size.clone()).set_limit(limit);
                    Ok(l)
                })
                .collect::<Result<Vec<_>>>()?;
            res.set_hugepage_limits(Some(limits));
        } else {
            // containerd's default (tolerate_missing_hugetlb_controller).
            tracing::debug!("hugetlb cgroup controller is absent: skipping huge page limits");
        }
    }
    if !r.unified.is_empty() {
        if env.cgroup_v2 {
            res.set_unified(Some(r.unified.clone()));
        } else {
            tracing::warn!("{field}.unified is ignored on cgroup v1");
        }
    }
    Ok(res)
}

/// Everything that differs between sandbox and container specs, assembled into an OCI spec.
struct Draft {
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    terminal: bool,
    user: user::ResolvedUser,
    caps: caps::CapSets,
    no_new_privileges: bool,
    oom_score_adj: Option<i32>,
    apparmor: Option<String>,
    rootfs: PathBuf,
    readonly_rootfs: bool,
    hostname: Option<String>,
    mounts: Vec<Mount>,
    namespaces: Vec<LinuxNamespace>,
    id_maps: Option<IdMaps>,
    sysctls: HashMap<String, String>,
    resources: LinuxResources,
    devices: Vec<LinuxDevice>,
    cgroups_path: String,
    rootfs_propagation: Option<String>,
    masked_paths: Option<Vec<String>>,
    readonly_paths: Option<Vec<String>>,
    seccomp: Option<LinuxSeccomp>,
    annotations: HashMap<String, String>,
}

impl Draft {
    fn into_spec(self) -> Result<Spec> {
        let mut user = User::default();
        user.set_uid(self.user.uid)
            .set_gid(self.user.gid)
            .set_additional_gids((!self.user.additional_gids.is_empty()).then_some(self.user.additional_gids))
            .set_umask(None)
            .set_username(None);
        // Every field is set explicitly: the oci-spec defaults are youki's, not containerd's.
        let mut process = Process::default();
        process
            .set_terminal(Some(self.terminal))
            .set_console_size(None)
            .set_user(user)
            .set_args(Some(self.args))
            .set_command_line(None)
            .set_env(Some(self.env))
            .set_cwd(self.cwd.into())
            .set_capabilities(Some(self.caps.to_oci()?))
            .set_rlimits(None)
            .set_no_new_privileges(Some(self.no_new_privileges))
            .set_apparmor_profile(self.apparmor)
            .set_oom_score_adj(self.oom_score_adj)
            .set_selinux_label(None)
            .set_io_priority(None)
            .set_scheduler(None)
            .set_exec_cpu_affinity(None);

        let mut root = Root::default();
        root.set_path(self.rootfs).set_readonly(Some(self.readonly_rootfs));

        let (uid_mappings, gid_mappings) = match self.id_maps {
            Some((u, g)) => (Some(u), Some(g)),
            None => (None, None),
        };
        let mut linux = oci_spec::runtime::Linux::default();
        linux
            .set_uid_mappings(uid_mappings)
            .set_gid_mappings(gid_mappings)
            .set_sysctl((!self.sysctls.is_empty()).then_some(self.sysctls))
            .set_resources(Some(self.resources))
            .set_cgroups_path(Some(self.cgroups_path.into()))
            .set_namespaces(Some(self.namespaces))
            .set_devices((!self.devices.is_empty()).then_some(self.devices))
            .set_seccomp(self.seccomp)
            .set_rootfs_propagation(self.rootfs_propagation)
            .set_masked_paths(self.masked_paths)
            .set_readonly_paths(self.readonly_paths)
            .set_mount_label(None)
            .set_intel_rdt(None)
            .set_personality(None)
            .set_net_devices(None)
            .set_memory_policy(None)
            .set_time_offsets(None);

        let mut spec = Spec::default();
        spec.set_version(OCI_VERSION.into())
            .set_root(Some(root))
            .set_mounts(Some(self.mounts))
            .set_process(Some(process))
            .set_hostname(self.hostname)
            .set_domainname(None)
            .set_hooks(None)
            .set_annotations(Some(self.annotations))
            .set_linux(Some(linux));
        Ok(spec)
    }
}

/// The spec of a pod's pause container: the pause image's command, a read-only root, no new
/// privileges, the pod's network namespace and new ipc/uts/pid namespaces (unless shared with the
/// node), the pod cgroup, the sandbox security context and RuntimeDefault seccomp as the kubelet
/// asks, oom_score_adj -998 (clamped) and cpu shares 2.
pub fn sandbox_spec(
    config: &api::PodSandboxConfig,
    ctx: &SandboxContext,
    image: &ImageConfig,
    rootfs: &Path,
    env: &RuntimeEnv,
) -> Result<Spec> {
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let nso = sc.namespace_options.clone().unwrap_or_default();
    let field = "linux.security_context.namespace_options";
    let host_network = mode(nso.network, field)? == NamespaceMode::Node;
    let host_ipc = mode(nso.ipc, field)? == NamespaceMode::Node;
    let host_pid = mode(nso.pid, field)? == NamespaceMode::Node;
    let id_maps = userns_maps(nso.userns_options.as_ref(), &format!("{field}.userns_options"))?;

    let mut args = image.config.entrypoint.clone().unwrap_or_default();
    args.extend(image.config.cmd.clone().unwrap_or_default());
    if args.is_empty() {
        return Err(Error::invalid(format!("sandbox {}: the pause image has no entrypoint or cmd", ctx.id)));
    }
    let env_vars = merge_env(vec![], image.config.env.clone().unwrap_or_default());
    let cwd =
        if image.config.working_dir.is_empty() { "/".to_string() } else { image.config.working_dir.clone() };

    // Namespaces in containerd's default order; the network one is the pod's netns berthd made.
    let mut namespaces = Vec::new();
    if !host_pid {
        namespaces.push(ns(LinuxNamespaceType::Pid, None));
    }
    if !host_ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, None));
    }
    if !host_network {
        namespaces.push(ns(LinuxNamespaceType::Uts, None));
    }
    namespaces.push(ns(LinuxNamespaceType::Mount, None));
    if !host_network {
        let netns = ctx.netns.as_ref().ok_or_else(|| {
            Error::precondition(format!("sandbox {}: pod network namespace is missing", ctx.id))
        })?;
        namespaces.push(ns(LinuxNamespaceType::Network, Some(netns.to_string_lossy().into_owned())));
    }
    if id_maps.is_some() {
        namespaces.push(ns(LinuxNamespaceType::User, None));
    }

    // The pod's /dev/shm (the host's with hostIPC) replaces the default tmpfs; without one the
    // pause keeps a private tmpfs.
    let mut mounts_list = mounts::default_mounts();
    let shm = if host_ipc { Some(PathBuf::from(mounts::DEV_SHM)) } else { ctx.shm_path.clone() };
    let ro_bind = ["rbind", "ro", "nosuid", "nodev", "noexec"];
    if let Some(shm) = shm {
        mounts_list.retain(|m| m.destination() != Path::new(mounts::DEV_SHM));
        mounts_list.push(mounts::mount(mounts::DEV_SHM, "bind", &shm.to_string_lossy(), &ro_bind));
    }
    mounts_list.push(mounts::mount(
        "/etc/resolv.conf",
        "bind",
        &ctx.resolv_conf_path.to_string_lossy(),
        &ro_bind,
    ));
    if host_network && id_maps.is_some() {
        // sysfs cannot be mounted in a user namespace that does not own the network namespace.
        mounts_list.retain(|m| m.destination() != Path::new("/sys"));
        mounts_list.push(mounts::mount(
            "/sys",
            "bind",
            "/sys",
            &["rbind", "rro", "nosuid", "nodev", "noexec"],
        ));
    }

    let mut sysctls: HashMap<String, String> = linux.sysctls.clone();
    if !host_network {
        // containerd's defaults (enable_unprivileged_ports / enable_unprivileged_icmp).
        sysctls.entry("net.ipv4.ip_unprivileged_port_start".into()).or_insert_with(|| "0".into());
        if !env.in_user_namespace && id_maps.is_none() {
            sysctls.entry("net.ipv4.ping_group_range".into()).or_insert_with(|| "0 2147483647".into());
        }
    }

    let mut resources = LinuxResources::default();
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(SANDBOX_CPU_SHARES));
    resources.set_devices(Some(devices::default_rules())).set_cpu(Some(cpu));

    let user = user::sandbox_user(rootfs, Some(&sc), &image.config.user)?;
    let caps = caps::CapSets::default_set();
    let choice =
        seccomp::choice("linux.security_context.seccomp", sc.seccomp.as_ref(), sandbox_seccomp_path(&sc))?;
    let seccomp = seccomp::filter(
        "linux.security_context.seccomp",
        choice.as_ref(),
        sc.privileged,
        env.seccomp_enabled,
        &seccomp::Target { bounding: &caps.bounding, arch: std::env::consts::ARCH, kernel: env.kernel },
    )?;

    let mut ann = HashMap::new();
    passthrough(&config.annotations, &ctx.passthrough.pod, &mut ann);
    sandbox_annotations(&mut ann, &ctx.id, config);
    ann.insert(annotations::SANDBOX_LOG_DIR.into(), config.log_directory.clone());
    ann.insert(annotations::CONTAINER_TYPE.into(), annotations::CONTAINER_TYPE_SANDBOX.into());
    if let Some(r) = &linux.resources {
        ann.insert(annotations::SANDBOX_CPU_PERIOD.into(), r.cpu_period.to_string());
        ann.insert(annotations::SANDBOX_CPU_QUOTA.into(), r.cpu_quota.to_string());
        ann.insert(annotations::SANDBOX_CPU_SHARES.into(), r.cpu_shares.to_string());
        ann.insert(annotations::SANDBOX_MEMORY.into(), r.memory_limit_in_bytes.to_string());
    }

    Draft {
        args,
        env: env_vars,
        cwd,
        terminal: false,
        user,
        caps,
        no_new_privileges: true,
        oom_score_adj: Some(clamp_oom_score_adj(SANDBOX_OOM_SCORE_ADJ, env, "sandbox")?),
        apparmor: None,
        rootfs: rootfs.to_path_buf(),
        readonly_rootfs: true,
        hostname: (!host_network).then(|| ctx.hostname.clone()),
        mounts: mounts_list,
        namespaces,
        id_maps,
        sysctls,
        resources,
        devices: vec![],
        cgroups_path: cgroups_path(env.cgroup_driver, &ctx.cgroup_parent, &ctx.id)?,
        rootfs_propagation: None,
        masked_paths: Some(DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()),
        readonly_paths: Some(DEFAULT_READONLY_PATHS.iter().map(|s| s.to_string()).collect()),
        seccomp,
        annotations: ann,
    }
    .into_spec()
}

/// containerd's default masked paths, which the pause container keeps.
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's default read-only paths, which the pause container keeps.
pub const DEFAULT_READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The spec of a container in a pod. `image_name` is what the user asked for (the CRI
/// `user_specified_image`, else the image's name) and goes into an annotation; `target_pid` is the
/// process of the container named by `namespace_options.target_id` when the pid namespace mode is
/// TARGET (ephemeral debug containers); `apparmor` is the host's AppArmor, which may get berth's
/// default profile loaded (as containerd's `WithDefaultProfile` does).
#[allow(clippy::too_many_arguments)]
pub fn container_spec(
    id: &str,
    config: &api::ContainerConfig,
    sandbox: &api::PodSandboxConfig,
    ctx: &SandboxContext,
    image: &ImageConfig,
    image_name: &str,
    rootfs: &Path,
    env: &RuntimeEnv,
    target_pid: Option<u32>,
    apparmor: &dyn apparmor::AppArmor,
) -> Result<Spec> {
    let meta =
        config.metadata.clone().ok_or_else(|| Error::invalid("container config must include metadata"))?;
    if sandbox.metadata.is_none() {
        return Err(Error::invalid("pod sandbox config must include metadata"));
    }
    if !config.cdi_devices.is_empty() {
        let names: Vec<&str> = config.cdi_devices.iter().map(|d| d.name.as_str()).collect();
        return Err(Error::unimplemented(format!(
            "cdi_devices: CDI devices are not supported ({})",
            names.join(", ")
        )));
    }
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let sandbox_sc = sandbox.linux.clone().unwrap_or_default().security_context.unwrap_or_default();
    let privileged = sc.privileged;
    if privileged && !sandbox_sc.privileged {
        return Err(Error::invalid(
            "security_context.privileged: no privileged container allowed in a sandbox that is not privileged",
        ));
    }

    // Process: args, then env built in containerd's order (default PATH, TERM for a tty,
    // HOSTNAME, then image env and CRI env overriding by key).
    let args = process_args(config, image)?;
    let mut env_vars = vec![DEFAULT_PATH.to_string()];
    if config.tty {
        env_vars.push("TERM=xterm".into());
    }
    env_vars = merge_env(env_vars, [format!("HOSTNAME={}", ctx.hostname)]);
    // Env values are bytes since cri-api v0.36. containerd takes string(value) and its JSON encoder
    // writes invalid UTF-8 as U+FFFD, the same config.json from_utf8_lossy gives.
    let cri_env = config.envs.iter().map(|kv| format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)));
    env_vars = merge_env(env_vars, image.config.env.clone().unwrap_or_default().into_iter().chain(cri_env));
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !image.config.working_dir.is_empty() {
        image.config.working_dir.clone()
    } else {
        "/".to_string()
    };

    let user = user::container_user(rootfs, Some(&sc), &image.config.user)?;

    let mut caps = caps::CapSets::default_set();
    caps::apply_cri(&mut caps, sc.capabilities.as_ref(), &env.bounding_caps)?;
    if privileged {
        caps.set_all(&env.bounding_caps);
    }
    // Ambient capabilities are cleared (kubernetes#56374) except those the CRI names explicitly.
    caps.ambient.clear();
    caps::apply_ambient(&mut caps, sc.capabilities.as_ref())?;

    // Namespaces: the pod's network, ipc and uts; pid by mode; a private mount namespace; a
    // private cgroup namespace on cgroup v2 (hides the host's hierarchy).
    let field = "security_context.namespace_options";
    let nso = sc.namespace_options.clone().unwrap_or_default();
    let sandbox_nso = sandbox_sc.namespace_options.clone().unwrap_or_default();
    let host_network = mode(sandbox_nso.network, &format!("linux.{field}"))? == NamespaceMode::Node;
    let host_ipc = mode(nso.ipc, field)? == NamespaceMode::Node;
    let id_maps = userns_maps(nso.userns_options.as_ref(), &format!("{field}.userns_options"))?;
    let sandbox_maps =
        userns_maps(sandbox_nso.userns_options.as_ref(), &format!("linux.{field}.userns_options"))?;
    if id_maps != sandbox_maps {
        return Err(Error::invalid(format!("{field}.userns_options: differs from the sandbox's")));
    }
    let mut namespaces = Vec::new();
    match mode(nso.pid, field)? {
        NamespaceMode::Pod => namespaces.push(ns(LinuxNamespaceType::Pid, Some(pause_ns(ctx, "pid")?))),
        NamespaceMode::Container => namespaces.push(ns(LinuxNamespaceType::Pid, None)),
        NamespaceMode::Node => {}
        NamespaceMode::Target => {
            let pid = target_pid.ok_or_else(|| {
                Error::invalid(format!(
                    "{field}.target_id {:?}: target container is not running",
                    nso.target_id
                ))
            })?;
            namespaces.push(ns(LinuxNamespaceType::Pid, Some(format!("/proc/{pid}/ns/pid"))));
        }
    }
    if !host_ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, Some(pause_ns(ctx, "ipc")?)));
    }
    if !host_network {
        namespaces.push(ns(LinuxNamespaceType::Uts, Some(pause_ns(ctx, "uts")?)));
    }
    namespaces.push(ns(LinuxNamespaceType::Mount, None));
    if !host_network {
        let netns = ctx.netns.as_ref().ok_or_else(|| {
            Error::precondition(format!("sandbox {}: pod network namespace is missing", ctx.id))
        })?;
        namespaces.push(ns(LinuxNamespaceType::Network, Some(netns.to_string_lossy().into_owned())));
    }
    let cgroupns = env.cgroup_v2 && !privileged;
    if cgroupns {
        namespaces.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    if id_maps.is_some() {
        namespaces.push(ns(LinuxNamespaceType::User, Some(pause_ns(ctx, "user")?)));
    }

    // berth's own files, unless the request mounts something there (the kubelet mounts its
    // /etc/hosts); read-only when the root is.
    let (uid_maps, gid_maps) = match &nso.userns_options {
        Some(u) if id_maps.is_some() => (u.uids.clone(), u.gids.clone()),
        _ => (vec![], vec![]),
    };
    let file_mount = |dest: &str, src: &Path| api::Mount {
        container_path: dest.into(),
        host_path: src.to_string_lossy().into_owned(),
        readonly: sc.readonly_rootfs,
        uid_mappings: uid_maps.clone(),
        gid_mappings: gid_maps.clone(),
        ..Default::default()
    };
    let mut extra = vec![
        file_mount("/etc/hostname", &ctx.hostname_path),
        file_mount("/etc/hosts", &ctx.hosts_path),
        file_mount("/etc/resolv.conf", &ctx.resolv_conf_path),
    ];
    let shm = if host_ipc { Some(PathBuf::from(mounts::DEV_SHM)) } else { ctx.shm_path.clone() };
    if let Some(shm) = shm {
        extra.push(api::Mount {
            container_path: mounts::DEV_SHM.into(),
            host_path: shm.to_string_lossy().into_owned(),
            ..Default::default()
        });
    }
    let host_mounts = mounts::HostMounts::read()?;
    let built = mounts::container_mounts(
        &config.mounts,
        extra,
        &mounts::MountOptions {
            privileged,
            cgroupns,
            cgroup_host_options: &env.cgroup2_mount_options,
            recursive_read_only: env.recursive_read_only_mounts,
            host: &host_mounts,
        },
    )?;
    let mut mounts_list = built.mounts;
    if host_network && id_maps.is_some() {
        mounts_list.retain(|m| m.destination() != Path::new("/sys"));
        mounts_list.push(mounts::mount(
            "/sys",
            "bind",
            "/sys",
            &["rbind", "rro", "nosuid", "nodev", "noexec"],
        ));
    }

    // Devices: deny all, the usual allow list, the CRI devices; privileged: every host device.
    let (mut device_nodes, cri_rules) = devices::cri_devices(&config.devices)?;
    let mut rules = devices::default_rules();
    rules.extend(cri_rules);
    if privileged {
        device_nodes.extend(devices::host_devices()?);
        rules = devices::allow_all();
    }
    let resources = container_resources(linux.resources.as_ref(), env, rules)?;
    let oom_score_adj = linux
        .resources
        .as_ref()
        .map(|r| clamp_oom_score_adj(r.oom_score_adj, env, "linux.resources"))
        .transpose()?;

    let seccomp_choice =
        seccomp::choice("security_context.seccomp", sc.seccomp.as_ref(), container_seccomp_path(&sc))?;
    let seccomp = seccomp::filter(
        "security_context.seccomp",
        seccomp_choice.as_ref(),
        privileged,
        env.seccomp_enabled,
        &seccomp::Target { bounding: &caps.bounding, arch: std::env::consts::ARCH, kernel: env.kernel },
    )?;
    let apparmor = apparmor::container_profile(
        "security_context.apparmor",
        sc.apparmor.as_ref(),
        container_apparmor_name(&sc),
        privileged,
        apparmor,
    )?;

    let mut ann = HashMap::new();
    passthrough(&sandbox.annotations, &ctx.passthrough.pod, &mut ann);
    passthrough(&config.annotations, &ctx.passthrough.container, &mut ann);
    sandbox_annotations(&mut ann, &ctx.id, sandbox);
    ann.insert(annotations::CONTAINER_NAME.into(), meta.name);
    ann.insert(annotations::IMAGE_NAME.into(), image_name.into());
    ann.insert(annotations::CONTAINER_TYPE.into(), annotations::CONTAINER_TYPE_CONTAINER.into());

    Draft {
        args,
        env: env_vars,
        cwd,
        terminal: config.tty,
        user,
        caps,
        no_new_privileges: sc.no_new_privs,
        oom_score_adj,
        apparmor,
        rootfs: rootfs.to_path_buf(),
        readonly_rootfs: sc.readonly_rootfs,
        // The container shares the pause's UTS namespace, which already has the pod's hostname.
        hostname: None,
        mounts: mounts_list,
        namespaces,
        id_maps,
        // Pod sysctls are set on the pause container, whose namespaces the containers share.
        sysctls: HashMap::new(),
        resources,
        devices: device_nodes,
        cgroups_path: cgroups_path(env.cgroup_driver, &ctx.cgroup_parent, id)?,
        rootfs_propagation: built.rootfs_propagation,
        // containerd clears its defaults and applies exactly what the kubelet sends (nothing for
        // procMount: Unmasked); privileged containers get none.
        masked_paths: (!privileged).then(|| sc.masked_paths.clone()),
        readonly_paths: (!privileged).then(|| sc.readonly_paths.clone()),
        seccomp,
        annotations: ann,
    }
    .into_spec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::api::security_profile::ProfileType;
    use crate::engine::oci::RuntimeConfig;
    use oci_spec::runtime::{Capability, LinuxSeccompAction};

    // This machine's bounding set: everything up to CAP_CHECKPOINT_RESTORE but CAP_SYS_RESOURCE.
    const MACHINE_MASK: u64 = 0x1fffeffffff;
    const KUBELET_MASKED: [&str; 11] = [
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
    const KUBELET_READONLY: [&str; 5] =
        ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn no_apparmor() -> apparmor::FakeAppArmor {
        apparmor::FakeAppArmor::disabled()
    }

    fn test_env() -> RuntimeEnv {
        RuntimeEnv {
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_v2: false,
            bounding_caps: caps::names_from_mask(MACHINE_MASK),
            own_oom_score_adj: 0,
            can_lower_oom_score_adj: false,
            hugepage_sizes: strings(&["2MB", "1GB"]),
            hugetlb_controller: true,
            swap_controller: true,
            seccomp_enabled: true,
            recursive_read_only_mounts: true,
            in_user_namespace: false,
            cgroup2_mount_options: vec![],
            kernel: (6, 1),
        }
    }

    /// The pod's files in a temp dir, and a context pointing at them.
    struct Pod {
        dir: tempfile::TempDir,
        ctx: SandboxContext,
    }

    fn pod() -> Pod {
        let dir = tempfile::tempdir().unwrap();
        for f in ["hostname", "hosts", "resolv.conf", "etc-hosts", "termination-log"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("shm")).unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let ctx = SandboxContext {
            id: "sb1".into(),
            netns: Some("/var/run/netns/cni-1234".into()),
            pause_pid: Some(4242),
            hostname: "nginx".into(),
            hostname_path: dir.path().join("hostname"),
            hosts_path: dir.path().join("hosts"),
            resolv_conf_path: dir.path().join("resolv.conf"),
            shm_path: Some(dir.path().join("shm")),
            cgroup_parent: "/kubepods/besteffort/poduid-1".into(),
            passthrough: Passthrough::default(),
        };
        Pod { dir, ctx }
    }

    impl Pod {
        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).to_string_lossy().into_owned()
        }
        fn rootfs(&self) -> PathBuf {
            self.dir.path().join("rootfs")
        }
    }

    fn ns_options(network: NamespaceMode, pid: NamespaceMode, ipc: NamespaceMode) -> api::NamespaceOption {
        api::NamespaceOption {
            network: network as i32,
            pid: pid as i32,
            ipc: ipc as i32,
            ..Default::default()
        }
    }

    fn profile(t: ProfileType) -> api::SecurityProfile {
        api::SecurityProfile { profile_type: t as i32, localhost_ref: String::new() }
    }

    /// A sandbox config as the kubelet sends it (generatePodSandboxConfig).
    fn kubelet_sandbox() -> api::PodSandboxConfig {
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: "nginx".into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "nginx".into(),
            log_directory: "/var/log/pods/default_nginx_uid-1".into(),
            annotations: [("kubernetes.io/config.source".to_string(), "api".to_string())].into(),
            labels: [("io.kubernetes.pod.uid".to_string(), "uid-1".to_string())].into(),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/besteffort/poduid-1".into(),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns_options(
                        NamespaceMode::Pod,
                        NamespaceMode::Container,
                        NamespaceMode::Pod,
                    )),
                    seccomp: Some(profile(ProfileType::RuntimeDefault)),
                    ..Default::default()
                }),
                sysctls: [("net.ipv4.ip_local_port_range".to_string(), "1024 65000".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A container config as the kubelet sends it (generateContainerConfig) for a BestEffort pod.
    fn kubelet_container(p: &Pod) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: "app".into(), attempt: 0 }),
            image: Some(api::ImageSpec {
                image: "sha256:0123".into(),
                user_specified_image: "nginx:1.27".into(),
                ..Default::default()
            }),
            envs: vec![
                api::KeyValue { key: "KUBERNETES_SERVICE_HOST".into(), value: "10.96.0.1".into() },
                api::KeyValue { key: "FOO".into(), value: "pod".into() },
            ],
            mounts: vec![
                api::Mount {
                    container_path: "/etc/hosts".into(),
                    host_path: p.path("etc-hosts"),
                    ..Default::default()
                },
                api::Mount {
                    container_path: "/dev/termination-log".into(),
                    host_path: p.path("termination-log"),
                    ..Default::default()
                },
            ],
            annotations: [
                ("io.kubernetes.container.hash".to_string(), "abc".to_string()),
                ("io.kubernetes.cri.container-type".to_string(), "spoofed".to_string()),
                ("org.systemd.property.CPUQuota".to_string(), "1%".to_string()),
            ]
            .into(),
            log_path: "app/0.log".into(),
            linux: Some(api::LinuxContainerConfig {
                resources: Some(api::LinuxContainerResources {
                    cpu_period: 100000,
                    cpu_shares: 2,
                    oom_score_adj: 1000,
                    hugepage_limits: vec![
                        api::HugepageLimit { page_size: "2MB".into(), limit: 0 },
                        api::HugepageLimit { page_size: "1GB".into(), limit: 0 },
                    ],
                    ..Default::default()
                }),
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(ns_options(
                        NamespaceMode::Pod,
                        NamespaceMode::Container,
                        NamespaceMode::Pod,
                    )),
                    masked_paths: strings(&KUBELET_MASKED),
                    readonly_paths: strings(&KUBELET_READONLY),
                    // seccompDefault is off by default: the kubelet says Unconfined explicitly.
                    seccomp: Some(profile(ProfileType::Unconfined)),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            config: RuntimeConfig {
                env: Some(strings(&["PATH=/usr/local/bin:/bin", "FOO=image", "NGINX_VERSION=1.27"])),
                entrypoint: Some(strings(&["/docker-entrypoint.sh"])),
                cmd: Some(strings(&["nginx", "-g", "daemon off;"])),
                working_dir: "/srv".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn build(p: &Pod, c: &api::ContainerConfig, s: &api::PodSandboxConfig, env: &RuntimeEnv) -> Result<Spec> {
        container_spec("ctr1", c, s, &p.ctx, &image(), "nginx:1.27", &p.rootfs(), env, None, &no_apparmor())
    }

    fn sc_mut(c: &mut api::ContainerConfig) -> &mut api::LinuxContainerSecurityContext {
        c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
    }

    fn sandbox_sc_mut(s: &mut api::PodSandboxConfig) -> &mut api::LinuxSandboxSecurityContext {
        s.linux.as_mut().unwrap().security_context.as_mut().unwrap()
    }

    fn process(s: &Spec) -> &Process {
        s.process().as_ref().unwrap()
    }

    fn linux(s: &Spec) -> &oci_spec::runtime::Linux {
        s.linux().as_ref().unwrap()
    }

    fn namespaces(s: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
        linux(s)
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().as_ref().map(|p| p.to_string_lossy().into_owned())))
            .collect()
    }

    fn mount_of<'a>(s: &'a Spec, dest: &str) -> &'a Mount {
        s.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new(dest)).unwrap()
    }

    fn cap_set(set: &Option<std::collections::HashSet<Capability>>) -> Vec<String> {
        let mut v: Vec<String> = set
            .iter()
            .flatten()
            .map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    fn sorted(v: &[&str]) -> Vec<String> {
        let mut v = strings(v);
        v.sort();
        v
    }

    #[test]
    fn kubelet_container_gets_what_containerd_would_build() {
        let p = pod();
        let s = build(&p, &kubelet_container(&p), &kubelet_sandbox(), &test_env()).unwrap();
        let pr = process(&s);
        assert_eq!(
            pr.args().as_ref().unwrap(),
            &strings(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
        );
        assert_eq!(
            pr.env().as_ref().unwrap(),
            &strings(&[
                "PATH=/usr/local/bin:/bin",
                "HOSTNAME=nginx",
                "FOO=pod",
                "NGINX_VERSION=1.27",
                "KUBERNETES_SERVICE_HOST=10.96.0.1"
            ])
        );
        assert_eq!(pr.cwd(), Path::new("/srv"));
        assert_eq!(pr.terminal(), Some(false));
        assert_eq!((pr.user().uid(), pr.user().gid()), (0, 0));
        assert_eq!(pr.user().additional_gids().as_ref().unwrap(), &vec![0]);
        assert_eq!(pr.no_new_privileges(), Some(false));
        assert_eq!(pr.oom_score_adj(), Some(1000));
        assert!(pr.rlimits().is_none(), "containerd removes the default rlimits");
        let caps = pr.capabilities().as_ref().unwrap();
        assert_eq!(cap_set(caps.bounding()), sorted(&DEFAULT_CAPS));
        assert_eq!(cap_set(caps.effective()), sorted(&DEFAULT_CAPS));
        assert_eq!(cap_set(caps.permitted()), sorted(&DEFAULT_CAPS));
        assert!(caps.inheritable().is_none() && caps.ambient().is_none());
        assert!(pr.apparmor_profile().is_none());

        assert_eq!(s.root().as_ref().unwrap().path(), &p.rootfs());
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
        assert!(s.hostname().is_none(), "the pod's UTS namespace already has the hostname");
        assert_eq!(
            namespaces(&s),
            vec![
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Ipc, Some("/proc/4242/ns/ipc".into())),
                (LinuxNamespaceType::Uts, Some("/proc/4242/ns/uts".into())),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Network, Some("/var/run/netns/cni-1234".into())),
            ]
        );
        let l = linux(&s);
        assert_eq!(l.cgroups_path().as_ref().unwrap(), Path::new("/kubepods/besteffort/poduid-1/ctr1"));
        assert_eq!(l.masked_paths().as_ref().unwrap(), &strings(&KUBELET_MASKED));
        assert_eq!(l.readonly_paths().as_ref().unwrap(), &strings(&KUBELET_READONLY));
        assert!(l.seccomp().is_none(), "Unconfined");
        assert!(l.sysctl().is_none(), "pod sysctls are the pause's");
        assert!(l.rootfs_propagation().is_none());
        let r = l.resources().as_ref().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!((cpu.shares(), cpu.period(), cpu.quota()), (Some(2), Some(100000), None));
        assert_eq!(r.memory().as_ref().unwrap().limit(), None);
        assert_eq!(r.hugepage_limits().as_ref().unwrap().len(), 2);
        assert_eq!(r.devices().as_ref().unwrap(), &devices::default_rules());

        let dests: Vec<String> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            dests,
            strings(&[
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hosts",
                "/dev/termination-log",
                "/etc/hostname",
                "/etc/resolv.conf",
                "/dev/shm"
            ])
        );
        assert_eq!(mount_of(&s, "/etc/hosts").source().as_ref().unwrap(), Path::new(&p.path("etc-hosts")));
        assert_eq!(mount_of(&s, "/etc/hostname").source().as_ref().unwrap(), Path::new(&p.path("hostname")));
        assert_eq!(
            mount_of(&s, "/etc/resolv.conf").options().as_ref().unwrap(),
            &strings(&["rbind", "rprivate", "rw"])
        );
        assert_eq!(mount_of(&s, "/dev/shm").source().as_ref().unwrap(), Path::new(&p.path("shm")));

        let a = s.annotations().as_ref().unwrap();
        assert!(!a.contains_key("io.kubernetes.container.hash"), "no allowlist, no request annotations");
        assert!(!a.contains_key("kubernetes.io/config.source"));
        assert_eq!(a[annotations::CONTAINER_TYPE], "container", "berth's keys cannot be spoofed");
        assert!(!a.contains_key("org.systemd.property.CPUQuota"));
        assert_eq!(a[annotations::SANDBOX_ID], "sb1");
        assert_eq!(a[annotations::SANDBOX_NAME], "nginx");
        assert_eq!(a[annotations::SANDBOX_NAMESPACE], "default");
        assert_eq!(a[annotations::SANDBOX_UID], "uid-1");
        assert_eq!(a[annotations::CONTAINER_NAME], "app");
        assert_eq!(a[annotations::IMAGE_NAME], "nginx:1.27");
    }

    #[test]
    fn spec_serialises_to_the_oci_json_runc_reads() {
        let p = pod();
        let mut c = kubelet_container(&p);
        sc_mut(&mut c).seccomp = Some(profile(ProfileType::RuntimeDefault));
        let s = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["process"]["user"]["additionalGids"], serde_json::json!([0]));
        assert!(v["process"].get("rlimits").is_none());
        assert!(v["process"]["capabilities"].get("ambient").is_none());
        assert_eq!(
            v["linux"]["namespaces"][1],
            serde_json::json!({"type": "ipc", "path": "/proc/4242/ns/ipc"})
        );
        assert_eq!(v["linux"]["namespaces"][3], serde_json::json!({"type": "mount"}));
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            v["linux"]["resources"]["devices"][0],
            serde_json::json!({"allow": false, "access": "rwm"})
        );
        assert_eq!(v["linux"]["cgroupsPath"], "/kubepods/besteffort/poduid-1/ctr1");
        // And back: what berthd writes, the shim can read.
        let back: Spec = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn command_and_args_merge_like_containerd() {
        let img = |ep: Option<&[&str]>, cmd: Option<&[&str]>| ImageConfig {
            config: RuntimeConfig {
                entrypoint: ep.map(strings),
                cmd: cmd.map(strings),
                ..Default::default()
            },
            ..Default::default()
        };
        let cfg = |command: &[&str], args: &[&str]| api::ContainerConfig {
            command: strings(command),
            args: strings(args),
            ..Default::default()
        };
        let run = |c: api::ContainerConfig, i: ImageConfig| process_args(&c, &i);
        let both = img(Some(&["/ep"]), Some(&["cmd1", "cmd2"]));
        assert_eq!(run(cfg(&[], &[]), both.clone()).unwrap(), strings(&["/ep", "cmd1", "cmd2"]));
        assert_eq!(run(cfg(&[], &["a"]), both.clone()).unwrap(), strings(&["/ep", "a"]));
        assert_eq!(run(cfg(&["/c"], &[]), both.clone()).unwrap(), strings(&["/c"]));
        assert_eq!(run(cfg(&["/c"], &["a"]), both).unwrap(), strings(&["/c", "a"]));
        assert_eq!(run(cfg(&[], &[]), img(Some(&[""]), Some(&["sh"]))).unwrap(), strings(&["sh"]));
        assert_eq!(run(cfg(&[], &["x"]), img(None, None)).unwrap(), strings(&["x"]));
        let e = run(cfg(&[], &[]), img(None, None)).unwrap_err();
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (crate::ErrorKind::InvalidArgument, "no command specified")
        );
    }

    #[test]
    fn env_merges_by_key_and_unsets_keys_without_value() {
        let base = strings(&["PATH=/bin", "A=1", "B=2"]);
        assert_eq!(
            merge_env(base, strings(&["A=x", "C=3", "B", "D"])),
            strings(&["PATH=/bin", "A=x", "C=3"])
        );
        // No PATH in the image: containerd's default stays; tty adds TERM.
        let p = pod();
        let mut c = kubelet_container(&p);
        c.tty = true;
        c.working_dir = "/work".into();
        let s = container_spec(
            "c",
            &c,
            &kubelet_sandbox(),
            &p.ctx,
            &ImageConfig::default(),
            "x",
            &p.rootfs(),
            &test_env(),
            None,
            &no_apparmor(),
        );
        let e = s.unwrap_err();
        assert_eq!(e.to_string(), "no command specified");
        c.command = strings(&["/bin/sh"]);
        let s = container_spec(
            "c",
            &c,
            &kubelet_sandbox(),
            &p.ctx,
            &ImageConfig::default(),
            "x",
            &p.rootfs(),
            &test_env(),
            None,
            &no_apparmor(),
        )
        .unwrap();
        assert_eq!(
            process(&s).env().as_ref().unwrap(),
            &strings(&[
                DEFAULT_PATH,
                "TERM=xterm",
                "HOSTNAME=nginx",
                "KUBERNETES_SERVICE_HOST=10.96.0.1",
                "FOO=pod"
            ])
        );
        assert_eq!(process(&s).terminal(), Some(true));
        assert_eq!(process(&s).cwd(), Path::new("/work"));
    }

    #[test]
    fn oom_score_adj_is_clamped_when_lowering_is_not_permitted() {
        let p = pod();
        let mut c = kubelet_container(&p);
        c.linux.as_mut().unwrap().resources.as_mut().unwrap().oom_score_adj = -997;
        let mut env = test_env();
        env.own_oom_score_adj = -500;
        assert_eq!(process(&build(&p, &c, &kubelet_sandbox(), &env).unwrap()).oom_score_adj(), Some(-500));
        env.can_lower_oom_score_adj = true;
        assert_eq!(process(&build(&p, &c, &kubelet_sandbox(), &env).unwrap()).oom_score_adj(), Some(-997));
        c.linux.as_mut().unwrap().resources.as_mut().unwrap().oom_score_adj = -1001;
        assert!(build(&p, &c, &kubelet_sandbox(), &env).is_err());
        c.linux.as_mut().unwrap().resources = None;
        assert_eq!(process(&build(&p, &c, &kubelet_sandbox(), &env).unwrap()).oom_score_adj(), None);
    }

    #[test]
    fn security_context_user_caps_no_new_privs_and_readonly_root() {
        let p = pod();
        std::fs::create_dir(p.rootfs().join("etc")).unwrap();
        std::fs::write(p.rootfs().join("etc/passwd"), "root:x:0:0::/:/bin/sh\nweb:x:33:33::/:/bin/sh\n")
            .unwrap();
        std::fs::write(p.rootfs().join("etc/group"), "www:x:33:\nlogs:x:4:web\n").unwrap();
        let mut c = kubelet_container(&p);
        let sc = sc_mut(&mut c);
        sc.run_as_username = "web".into();
        sc.supplemental_groups = vec![2000];
        sc.no_new_privs = true;
        sc.readonly_rootfs = true;
        sc.capabilities = Some(api::Capability {
            add_capabilities: strings(&["NET_ADMIN"]),
            drop_capabilities: strings(&["NET_RAW", "MKNOD"]),
            add_ambient_capabilities: vec![],
        });
        let s = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap();
        let pr = process(&s);
        assert_eq!((pr.user().uid(), pr.user().gid()), (33, 33));
        assert_eq!(pr.user().additional_gids().as_ref().unwrap(), &vec![4, 33, 2000]);
        assert_eq!(pr.no_new_privileges(), Some(true));
        let bounding = cap_set(pr.capabilities().as_ref().unwrap().bounding());
        assert_eq!(bounding.len(), 13);
        assert!(
            bounding.contains(&"CAP_NET_ADMIN".to_string()) && !bounding.contains(&"CAP_NET_RAW".to_string())
        );
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(
            mount_of(&s, "/etc/hostname").options().as_ref().unwrap(),
            &strings(&["rbind", "rprivate", "ro"])
        );
        // The kubelet's /etc/hosts keeps its own mode.
        assert_eq!(
            mount_of(&s, "/etc/hosts").options().as_ref().unwrap(),
            &strings(&["rbind", "rprivate", "rw"])
        );

        sc_mut(&mut c).run_as_username = "nobody".into();
        let e = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "security_context.run_as_username \"nobody\" not found in the image's /etc/passwd"
        );
    }

    #[test]
    fn runtime_default_seccomp_follows_the_final_capabilities() {
        let p = pod();
        let mut c = kubelet_container(&p);
        sc_mut(&mut c).seccomp = Some(profile(ProfileType::RuntimeDefault));
        let s = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap();
        let sec = linux(&s).seccomp().as_ref().unwrap();
        assert_eq!(sec.default_action(), LinuxSeccompAction::ScmpActErrno);
        let allows = |sec: &LinuxSeccomp, name: &str| {
            sec.syscalls().as_ref().unwrap().iter().any(|r| {
                r.action() == LinuxSeccompAction::ScmpActAllow
                    && r.args().is_none()
                    && r.names().iter().any(|n| n == name)
            })
        };
        assert!(allows(sec, "chroot") && !allows(sec, "mount"));
        sc_mut(&mut c).capabilities = Some(api::Capability {
            add_capabilities: strings(&["SYS_ADMIN"]),
            drop_capabilities: strings(&["SYS_CHROOT"]),
            ..Default::default()
        });
        let s = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap();
        let sec = linux(&s).seccomp().as_ref().unwrap();
        assert!(allows(sec, "mount") && !allows(sec, "chroot"));
        // The deprecated string still works when the typed field is absent.
        sc_mut(&mut c).seccomp = None;
        #[allow(deprecated)]
        {
            sc_mut(&mut c).seccomp_profile_path = "runtime/default".into();
        }
        assert!(linux(&build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap()).seccomp().is_some());
    }

    #[test]
    fn privileged_gets_every_bounding_capability_host_devices_and_no_confinement() {
        let p = pod();
        let mut c = kubelet_container(&p);
        sc_mut(&mut c).privileged = true;
        sc_mut(&mut c).seccomp = Some(profile(ProfileType::RuntimeDefault));
        let e = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        let mut sb = kubelet_sandbox();
        sandbox_sc_mut(&mut sb).privileged = true;
        let s = build(&p, &c, &sb, &test_env()).unwrap();
        let caps = process(&s).capabilities().as_ref().unwrap();
        assert_eq!(cap_set(caps.bounding()).len(), 40);
        assert!(!cap_set(caps.effective()).contains(&"CAP_SYS_RESOURCE".to_string()));
        let l = linux(&s);
        assert!(l.seccomp().is_none() && l.masked_paths().is_none() && l.readonly_paths().is_none());
        assert_eq!(l.resources().as_ref().unwrap().devices().as_ref().unwrap(), &devices::allow_all());
        assert!(l.devices().as_ref().unwrap().iter().any(|d| d.path() == Path::new("/dev/null")));
        assert_eq!(mount_of(&s, "/sys").options().as_ref().unwrap().last().unwrap(), "rw");
    }

    #[test]
    fn pid_ipc_and_network_namespace_modes() {
        let p = pod();
        let mut c = kubelet_container(&p);
        let ns_of = |s: &Spec, t: LinuxNamespaceType| namespaces(s).into_iter().find(|(typ, _)| *typ == t);
        sc_mut(&mut c).namespace_options.as_mut().unwrap().pid = NamespaceMode::Pod as i32;
        let s = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap();
        assert_eq!(ns_of(&s, LinuxNamespaceType::Pid).unwrap().1.as_deref(), Some("/proc/4242/ns/pid"));
        sc_mut(&mut c).namespace_options.as_mut().unwrap().pid = NamespaceMode::Node as i32;
        assert!(
            ns_of(&build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap(), LinuxNamespaceType::Pid)
                .is_none()
        );
        sc_mut(&mut c).namespace_options.as_mut().unwrap().pid = NamespaceMode::Target as i32;
        sc_mut(&mut c).namespace_options.as_mut().unwrap().target_id = "other".into();
        assert!(
            build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap_err().to_string().contains("\"other\"")
        );
        let s = container_spec(
            "c",
            &c,
            &kubelet_sandbox(),
            &p.ctx,
            &image(),
            "i",
            &p.rootfs(),
            &test_env(),
            Some(77),
            &no_apparmor(),
        )
        .unwrap();
        assert_eq!(ns_of(&s, LinuxNamespaceType::Pid).unwrap().1.as_deref(), Some("/proc/77/ns/pid"));

        // hostIPC: no ipc namespace and the host's /dev/shm.
        sc_mut(&mut c).namespace_options.as_mut().unwrap().pid = NamespaceMode::Container as i32;
        sc_mut(&mut c).namespace_options.as_mut().unwrap().ipc = NamespaceMode::Node as i32;
        let s = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap();
        assert!(ns_of(&s, LinuxNamespaceType::Ipc).is_none());
        assert_eq!(
            mount_of(&s, "/dev/shm").source().as_ref().unwrap(),
            &std::fs::canonicalize("/dev/shm").unwrap()
        );

        // hostNetwork: no network or uts namespace.
        let mut sb = kubelet_sandbox();
        sandbox_sc_mut(&mut sb).namespace_options.as_mut().unwrap().network = NamespaceMode::Node as i32;
        let mut ctx = p.ctx.clone();
        ctx.netns = None;
        let s =
            container_spec("c", &c, &sb, &ctx, &image(), "i", &p.rootfs(), &test_env(), None, &no_apparmor())
                .unwrap();
        assert!(
            ns_of(&s, LinuxNamespaceType::Network).is_none() && ns_of(&s, LinuxNamespaceType::Uts).is_none()
        );
        // A pod network without a netns is berthd's bug, never silently the host's network.
        let e = container_spec(
            "c",
            &c,
            &kubelet_sandbox(),
            &ctx,
            &image(),
            "i",
            &p.rootfs(),
            &test_env(),
            None,
            &no_apparmor(),
        );
        assert_eq!(e.unwrap_err().kind(), crate::ErrorKind::FailedPrecondition);

        // cgroup v2: a private cgroup namespace (not for privileged containers).
        let mut env = test_env();
        env.cgroup_v2 = true;
        let s = build(&p, &kubelet_container(&p), &kubelet_sandbox(), &env).unwrap();
        assert_eq!(ns_of(&s, LinuxNamespaceType::Cgroup), Some((LinuxNamespaceType::Cgroup, None)));
    }

    #[test]
    fn user_namespaces_join_the_pods() {
        let p = pod();
        let userns = api::UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids: vec![api::IdMapping { host_id: 100000, container_id: 0, length: 65536 }],
            gids: vec![api::IdMapping { host_id: 100000, container_id: 0, length: 65536 }],
        };
        let mut sb = kubelet_sandbox();
        sandbox_sc_mut(&mut sb).namespace_options.as_mut().unwrap().userns_options = Some(userns.clone());
        let mut c = kubelet_container(&p);
        // Different from the sandbox's: refused.
        assert!(build(&p, &c, &sb, &test_env()).is_err());
        sc_mut(&mut c).namespace_options.as_mut().unwrap().userns_options = Some(userns.clone());
        let s = build(&p, &c, &sb, &test_env()).unwrap();
        assert!(namespaces(&s).contains(&(LinuxNamespaceType::User, Some("/proc/4242/ns/user".into()))));
        assert_eq!(linux(&s).uid_mappings().as_ref().unwrap()[0].host_id(), 100000);
        assert_eq!(mount_of(&s, "/etc/hostname").uid_mappings().as_ref().unwrap()[0].size(), 65536);
        assert!(mount_of(&s, "/dev/shm").uid_mappings().is_none());
        let sp = sandbox_spec(&sb, &p.ctx, &pause_image(), &p.rootfs(), &test_env()).unwrap();
        assert!(namespaces(&sp).contains(&(LinuxNamespaceType::User, None)));
        assert!(!linux(&sp).sysctl().as_ref().unwrap().contains_key("net.ipv4.ping_group_range"));
        // POD mode without mappings is invalid.
        let bad = api::UserNamespace { uids: vec![], ..userns };
        sandbox_sc_mut(&mut sb).namespace_options.as_mut().unwrap().userns_options = Some(bad);
        assert!(sandbox_spec(&sb, &p.ctx, &pause_image(), &p.rootfs(), &test_env()).is_err());
    }

    #[test]
    fn resources_map_like_containerd() {
        let p = pod();
        let mut c = kubelet_container(&p);
        let res = c.linux.as_mut().unwrap().resources.as_mut().unwrap();
        res.cpu_quota = 50000;
        res.memory_limit_in_bytes = 128 << 20;
        res.cpuset_cpus = "0-1".into();
        res.cpuset_mems = "0".into();
        res.unified = [("memory.oom.group".to_string(), "1".to_string())].into();
        let s = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap();
        let r = linux(&s).resources().as_ref().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.quota(), cpu.cpus().as_deref(), cpu.mems().as_deref()),
            (Some(50000), Some("0-1"), Some("0"))
        );
        let mem = r.memory().as_ref().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(128 << 20), Some(128 << 20)), "no swap by default");
        assert!(r.unified().is_none(), "cgroup v1");
        let mut env = test_env();
        env.cgroup_v2 = true;
        env.swap_controller = false;
        let s = build(&p, &c, &kubelet_sandbox(), &env).unwrap();
        let r = linux(&s).resources().as_ref().unwrap();
        assert_eq!(r.unified().as_ref().unwrap()["memory.oom.group"], "1");
        assert_eq!(r.memory().as_ref().unwrap().swap(), None);

        c.linux.as_mut().unwrap().resources.as_mut().unwrap().memory_swap_limit_in_bytes = 256 << 20;
        let s = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap();
        assert_eq!(
            linux(&s).resources().as_ref().unwrap().memory().as_ref().unwrap().swap(),
            Some(256 << 20)
        );

        env.hugetlb_controller = false;
        let s = build(&p, &c, &kubelet_sandbox(), &env).unwrap();
        assert!(linux(&s).resources().as_ref().unwrap().hugepage_limits().is_none());
        c.linux.as_mut().unwrap().resources.as_mut().unwrap().hugepage_limits[0].page_size = "4MB".into();
        assert!(build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap_err().to_string().contains("4MB"));
    }

    #[test]
    fn missing_metadata_and_cdi_devices_are_refused() {
        let p = pod();
        let mut c = kubelet_container(&p);
        c.cdi_devices = vec![api::CdiDevice { name: "vendor.com/gpu=0".into() }];
        let e = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unimplemented);
        assert!(e.to_string().contains("vendor.com/gpu=0"));
        let mut c = kubelet_container(&p);
        c.metadata = None;
        assert_eq!(
            build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
        let mut sb = kubelet_sandbox();
        sb.metadata = None;
        assert!(build(&p, &kubelet_container(&p), &sb, &test_env()).is_err());
    }

    #[test]
    fn cri_devices_are_added_after_the_default_rules() {
        let p = pod();
        let mut c = kubelet_container(&p);
        c.devices = vec![api::Device {
            container_path: "/dev/xnull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let s = build(&p, &c, &kubelet_sandbox(), &test_env()).unwrap();
        let l = linux(&s);
        assert_eq!(l.devices().as_ref().unwrap()[0].path(), Path::new("/dev/xnull"));
        let rules = l.resources().as_ref().unwrap().devices().as_ref().unwrap();
        assert_eq!(rules.len(), devices::default_rules().len() + 1);
        assert_eq!(rules.last().unwrap().access().as_deref(), Some("rw"));
    }

    /// Issue 8 item 6: request annotations reach a spec only through the runtime handler's allowlists
    /// (containerd's `pod_annotations` / `container_annotations`), never berth's own keys.
    #[test]
    fn request_annotations_pass_only_through_the_handlers_allowlists() {
        let mut p = pod();
        let mut sb = kubelet_sandbox();
        for (k, v) in [
            ("io.katacontainers.config.hypervisor.kernel_params", "init=/bin/sh"),
            ("run.oci.keep_original_groups", "1"),
            ("io.kubernetes.cri.sandbox-log-directory", "/etc"),
        ] {
            sb.annotations.insert(k.into(), v.into());
        }
        let mut c = kubelet_container(&p);
        c.annotations.insert("io.katacontainers.container.resource".into(), "x".into());
        let request_keys = |a: &HashMap<String, String>| {
            let mut keys: Vec<String> =
                a.keys().filter(|k| !k.starts_with(BERTH_ANNOTATION_PREFIX)).cloned().collect();
            keys.sort();
            keys
        };

        let s = sandbox_spec(&sb, &p.ctx, &pause_image(), &p.rootfs(), &test_env()).unwrap();
        assert_eq!(request_keys(s.annotations().as_ref().unwrap()), Vec::<String>::new());
        let s = build(&p, &c, &sb, &test_env()).unwrap();
        assert_eq!(request_keys(s.annotations().as_ref().unwrap()), Vec::<String>::new());

        p.ctx.passthrough = Passthrough {
            pod: strings(&["io.katacontainers.*", "io.kubernetes.cri.*"]),
            container: strings(&["io.kubernetes.container.*", "io.katacontainers.container.*"]),
        };
        let s = sandbox_spec(&sb, &p.ctx, &pause_image(), &p.rootfs(), &test_env()).unwrap();
        let a = s.annotations().as_ref().unwrap();
        assert_eq!(request_keys(a), strings(&["io.katacontainers.config.hypervisor.kernel_params"]));
        assert_eq!(a[annotations::SANDBOX_LOG_DIR], "/var/log/pods/default_nginx_uid-1");
        let s = build(&p, &c, &sb, &test_env()).unwrap();
        let a = s.annotations().as_ref().unwrap();
        assert_eq!(
            request_keys(a),
            strings(&[
                "io.katacontainers.config.hypervisor.kernel_params",
                "io.katacontainers.container.resource",
                "io.kubernetes.container.hash"
            ])
        );
        assert_eq!(a[annotations::CONTAINER_TYPE], "container");
        assert!(!a.contains_key(annotations::SANDBOX_LOG_DIR));
    }

    /// Issue 8 item 5: with AppArmor on the host, a container that asks for nothing runs under
    /// berth-default; a privileged one does not.
    #[test]
    fn containers_get_the_default_apparmor_profile_where_apparmor_is_enabled() {
        let p = pod();
        let aa = apparmor::FakeAppArmor::enabled(&[]);
        let spec = |c: &api::ContainerConfig, sb: &api::PodSandboxConfig| {
            container_spec("c", c, sb, &p.ctx, &image(), "i", &p.rootfs(), &test_env(), None, &aa).unwrap()
        };
        let c = kubelet_container(&p);
        assert_eq!(
            process(&spec(&c, &kubelet_sandbox())).apparmor_profile().as_deref(),
            Some("berth-default")
        );
        assert_eq!(aa.loads().len(), 1);
        let mut c = kubelet_container(&p);
        sc_mut(&mut c).privileged = true;
        let mut sb = kubelet_sandbox();
        sandbox_sc_mut(&mut sb).privileged = true;
        assert_eq!(process(&spec(&c, &sb)).apparmor_profile(), &None);
        // The pause keeps no profile, as containerd's.
        let s = sandbox_spec(&kubelet_sandbox(), &p.ctx, &pause_image(), &p.rootfs(), &test_env()).unwrap();
        assert_eq!(process(&s).apparmor_profile(), &None);
    }

    fn pause_image() -> ImageConfig {
        ImageConfig {
            config: RuntimeConfig {
                entrypoint: Some(strings(&["/pause"])),
                env: Some(strings(&["PATH=/bin"])),
                user: "65535:65535".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn sandbox_spec_is_containerds_pause_container() {
        let p = pod();
        let mut sb = kubelet_sandbox();
        sb.linux.as_mut().unwrap().resources = Some(api::LinuxContainerResources {
            cpu_shares: 1024,
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        });
        let s = sandbox_spec(&sb, &p.ctx, &pause_image(), &p.rootfs(), &test_env()).unwrap();
        let pr = process(&s);
        assert_eq!(pr.args().as_ref().unwrap(), &strings(&["/pause"]));
        assert_eq!(pr.env().as_ref().unwrap(), &strings(&["PATH=/bin"]));
        assert_eq!(pr.cwd(), Path::new("/"));
        assert_eq!((pr.user().uid(), pr.user().gid()), (65535, 65535));
        assert_eq!(pr.no_new_privileges(), Some(true));
        assert_eq!(pr.oom_score_adj(), Some(0), "-998 clamped to berthd's own value");
        assert_eq!(cap_set(pr.capabilities().as_ref().unwrap().bounding()), sorted(&DEFAULT_CAPS));
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(s.hostname().as_deref(), Some("nginx"));
        assert_eq!(
            namespaces(&s),
            vec![
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Ipc, None),
                (LinuxNamespaceType::Uts, None),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Network, Some("/var/run/netns/cni-1234".into())),
            ]
        );
        let l = linux(&s);
        assert_eq!(l.cgroups_path().as_ref().unwrap(), Path::new("/kubepods/besteffort/poduid-1/sb1"));
        assert_eq!(l.masked_paths().as_ref().unwrap(), &strings(&DEFAULT_MASKED_PATHS));
        assert_eq!(l.readonly_paths().as_ref().unwrap(), &strings(&DEFAULT_READONLY_PATHS));
        let sysctls = l.sysctl().as_ref().unwrap();
        assert_eq!(sysctls["net.ipv4.ip_local_port_range"], "1024 65000");
        assert_eq!(sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
        assert_eq!(sysctls["net.ipv4.ping_group_range"], "0 2147483647");
        let r = l.resources().as_ref().unwrap();
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(2));
        assert!(r.memory().is_none());
        assert_eq!(l.seccomp().as_ref().unwrap().default_action(), LinuxSeccompAction::ScmpActErrno);
        let shm = mount_of(&s, "/dev/shm");
        assert_eq!(shm.source().as_ref().unwrap(), Path::new(&p.path("shm")));
        assert_eq!(shm.options().as_ref().unwrap(), &strings(&["rbind", "ro", "nosuid", "nodev", "noexec"]));
        assert_eq!(
            mount_of(&s, "/etc/resolv.conf").source().as_ref().unwrap(),
            Path::new(&p.path("resolv.conf"))
        );
        assert!(!s.mounts().as_ref().unwrap().iter().any(|m| m.destination() == Path::new("/sys/fs/cgroup")));
        let a = s.annotations().as_ref().unwrap();
        assert_eq!(a[annotations::CONTAINER_TYPE], "sandbox");
        assert_eq!(a[annotations::SANDBOX_ID], "sb1");
        assert_eq!(a[annotations::SANDBOX_LOG_DIR], "/var/log/pods/default_nginx_uid-1");
        assert_eq!(a[annotations::SANDBOX_CPU_SHARES], "1024");
        assert_eq!(a[annotations::SANDBOX_MEMORY], "1073741824");
        assert!(!a.contains_key("kubernetes.io/config.source"), "no allowlist, no request annotations");

        let mut env = test_env();
        env.can_lower_oom_score_adj = true;
        let s = sandbox_spec(&sb, &p.ctx, &pause_image(), &p.rootfs(), &env).unwrap();
        assert_eq!(process(&s).oom_score_adj(), Some(-998));
    }

    #[test]
    fn host_namespace_sandboxes() {
        let p = pod();
        let mut sb = kubelet_sandbox();
        sandbox_sc_mut(&mut sb).namespace_options =
            Some(ns_options(NamespaceMode::Node, NamespaceMode::Node, NamespaceMode::Node));
        let mut ctx = p.ctx.clone();
        ctx.netns = None;
        ctx.shm_path = None;
        let s = sandbox_spec(&sb, &ctx, &pause_image(), &p.rootfs(), &test_env()).unwrap();
        assert_eq!(namespaces(&s), vec![(LinuxNamespaceType::Mount, None)]);
        assert!(s.hostname().is_none());
        assert!(!linux(&s).sysctl().as_ref().unwrap().contains_key("net.ipv4.ip_unprivileged_port_start"));
        assert_eq!(mount_of(&s, "/dev/shm").source().as_ref().unwrap(), Path::new("/dev/shm"));

        // A pod network without a netns is an error, not the host network.
        let e = sandbox_spec(&kubelet_sandbox(), &ctx, &pause_image(), &p.rootfs(), &test_env()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition);
        // Without a pod shm the pause keeps its tmpfs.
        let s = sandbox_spec(&kubelet_sandbox(), &p.ctx.clone(), &pause_image(), &p.rootfs(), &test_env());
        assert!(s.is_ok());
        let mut ctx = p.ctx.clone();
        ctx.shm_path = None;
        let s = sandbox_spec(&kubelet_sandbox(), &ctx, &pause_image(), &p.rootfs(), &test_env()).unwrap();
        assert_eq!(mount_of(&s, "/dev/shm").typ().as_deref(), Some("tmpfs"));
        // The pause image must have something to run.
        let e = sandbox_spec(&kubelet_sandbox(), &p.ctx, &ImageConfig::default(), &p.rootfs(), &test_env());
        assert_eq!(e.unwrap_err().kind(), crate::ErrorKind::InvalidArgument);
    }

    #[test]
    fn cgroups_paths_per_driver() {
        let path = |driver, parent: &str| cgroups_path(driver, parent, "c");
        assert_eq!(
            path(CgroupDriver::Cgroupfs, "/kubepods/burstable/pod1").unwrap(),
            "/kubepods/burstable/pod1/c"
        );
        assert_eq!(path(CgroupDriver::Cgroupfs, "/kubepods/pod1/").unwrap(), "/kubepods/pod1/c");
        assert_eq!(path(CgroupDriver::Cgroupfs, "").unwrap(), "/k8s.io/c");
        // cgroupfs keeps a slice-looking parent as a plain path, as before.
        assert_eq!(
            path(CgroupDriver::Cgroupfs, "/kubepods.slice/a.slice").unwrap(),
            "/kubepods.slice/a.slice/c"
        );
        assert_eq!(
            path(
                CgroupDriver::Systemd,
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
            )
            .unwrap(),
            "kubepods-burstable-pod1.slice:berth:c"
        );
        // kind's cgroupRoot /kubelet.
        assert_eq!(
            path(
                CgroupDriver::Systemd,
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
                 kubelet-kubepods-besteffort-pod1.slice/"
            )
            .unwrap(),
            "kubelet-kubepods-besteffort-pod1.slice:berth:c"
        );
        assert_eq!(
            path(CgroupDriver::Systemd, "kubepods-pod1.slice").unwrap(),
            "kubepods-pod1.slice:berth:c"
        );
        assert_eq!(path(CgroupDriver::Systemd, "").unwrap(), ":berth:c");
        let e = path(CgroupDriver::Systemd, "/kubepods/burstable/pod1").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("cgroup_driver"), "{e}");
    }

    #[test]
    fn node_facts() {
        assert_eq!(hugepage_size_name(2048), "2MB");
        assert_eq!(hugepage_size_name(1048576), "1GB");
        assert_eq!(hugepage_size_name(64), "64KB");
        assert_eq!(parse_kernel_release("6.18.44-fc-v782\n"), (6, 18));
        assert_eq!(parse_kernel_release("5.4"), (5, 4));
        let env = detect_runtime_env(CgroupDriver::Cgroupfs).unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(env.bounding_caps, caps::bounding_from_status(&status).unwrap());
        assert_eq!(env.can_lower_oom_score_adj, env.bounding_caps.contains(&"CAP_SYS_RESOURCE".to_string()));
        assert!(env.kernel.0 >= 3);
        assert_eq!(
            env.cgroup_v2,
            nix::sys::statfs::statfs("/sys/fs/cgroup").unwrap().filesystem_type()
                == nix::sys::statfs::CGROUP2_SUPER_MAGIC
        );
        for size in &env.hugepage_sizes {
            assert!(size.ends_with("B"), "{size}");
        }
    }

    /// Stops and removes what [`runc_runs_the_pause_and_a_container`] started, even when it fails.
    struct RuncCleanup {
        runc: PathBuf,
        state: PathBuf,
        ids: Vec<String>,
        cgroup: String,
    }

    impl RuncCleanup {
        fn runc(&self) -> std::process::Command {
            let mut c = std::process::Command::new(&self.runc);
            c.arg("--root").arg(&self.state);
            c.stdin(std::process::Stdio::null());
            c
        }
    }

    impl Drop for RuncCleanup {
        fn drop(&mut self) {
            for id in self.ids.iter().rev() {
                let _ = self.runc().args(["kill", id, "KILL"]).output();
                let _ = self.runc().args(["delete", "--force", id]).output();
            }
            // runc removes the containers' cgroups, not the parent it created for them.
            if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
                for h in hierarchies.flatten() {
                    let _ = std::fs::remove_dir(h.path().join(&self.cgroup));
                }
            }
        }
    }

    fn cap_mask(names: &[&str]) -> u64 {
        (0..64)
            .filter(|bit| {
                caps::names_from_mask(1 << bit).first().is_some_and(|n| names.contains(&n.as_str()))
            })
            .fold(0, |m, bit| m | 1 << bit)
    }

    /// The specs must be accepted by the real OCI runtime and do what they say: run the pause with
    /// runc, then a container joining its namespaces that prints its own /proc status.
    #[test]
    fn runc_runs_the_pause_and_a_container() {
        let runc = ["/usr/sbin/runc", "/usr/bin/runc"].into_iter().map(PathBuf::from).find(|p| p.exists());
        let busybox = Path::new("/bin/busybox");
        let (Some(runc), true, true) = (runc, nix::unistd::geteuid().is_root(), busybox.exists()) else {
            eprintln!("skipping: needs root, runc and a static /bin/busybox");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let tag = format!("berth-spec-test-{}", std::process::id());
        let mut cleanup =
            RuncCleanup { runc, state: dir.path().join("state"), ids: vec![], cgroup: tag.clone() };

        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
            .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app\n").unwrap();
        for (f, text) in [("hostname", "specpod\n"), ("hosts", "127.0.0.1 localhost\n"), ("resolv.conf", "")]
        {
            std::fs::write(dir.path().join(f), text).unwrap();
        }
        std::fs::create_dir(dir.path().join("shm")).unwrap();

        let env = detect_runtime_env(CgroupDriver::Cgroupfs).unwrap();
        // hostNetwork keeps the test off the node's network setup; ipc and pid are the pod's.
        let nso = ns_options(NamespaceMode::Node, NamespaceMode::Pod, NamespaceMode::Pod);
        let mut sb = kubelet_sandbox();
        sb.linux.as_mut().unwrap().cgroup_parent = format!("/{tag}");
        sb.linux.as_mut().unwrap().sysctls.clear();
        sandbox_sc_mut(&mut sb).namespace_options = Some(nso.clone());
        let mut ctx = SandboxContext {
            id: format!("{tag}-pause"),
            netns: None,
            pause_pid: None,
            hostname: "specpod".into(),
            hostname_path: dir.path().join("hostname"),
            hosts_path: dir.path().join("hosts"),
            resolv_conf_path: dir.path().join("resolv.conf"),
            shm_path: Some(dir.path().join("shm")),
            cgroup_parent: format!("/{tag}"),
            passthrough: Passthrough::default(),
        };
        let pause = ImageConfig {
            config: RuntimeConfig {
                entrypoint: Some(strings(&["/bin/busybox", "sleep", "600"])),
                ..Default::default()
            },
            ..Default::default()
        };
        let spec = sandbox_spec(&sb, &ctx, &pause, &rootfs, &env).unwrap();
        let bundle = dir.path().join("pause");
        std::fs::create_dir(&bundle).unwrap();
        spec.save(bundle.join("config.json")).unwrap();
        cleanup.ids.push(ctx.id.clone());
        // The detached pause inherits runc's stdio: a pipe would keep output() waiting for it.
        let log = dir.path().join("pause.log");
        let status = cleanup
            .runc()
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(&ctx.id)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "runc run pause: {}", std::fs::read_to_string(&log).unwrap());
        let state = cleanup.runc().args(["state", &ctx.id]).output().unwrap();
        let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
        ctx.pause_pid = Some(state["pid"].as_u64().unwrap() as u32);

        let mut c = kubelet_container(&Pod { dir: tempfile::tempdir().unwrap(), ctx: ctx.clone() });
        c.mounts.clear();
        c.command = strings(&[
            "/bin/sh",
            "-c",
            "cat /proc/self/status; echo oom=$(cat /proc/self/oom_score_adj); echo pid1=$(cat /proc/1/comm); cat /etc/hostname",
        ]);
        let res = c.linux.as_mut().unwrap().resources.as_mut().unwrap();
        // Guaranteed pods ask for -997: only possible here when CAP_SYS_RESOURCE is available.
        res.oom_score_adj = -997;
        res.memory_limit_in_bytes = 64 << 20;
        res.hugepage_limits.clear();
        let sc = sc_mut(&mut c);
        sc.namespace_options = Some(nso);
        sc.run_as_user = Some(api::Int64Value { value: 1000 });
        sc.supplemental_groups = vec![3000];
        sc.no_new_privs = true;
        sc.readonly_rootfs = true;
        sc.seccomp = Some(profile(ProfileType::RuntimeDefault));
        sc.capabilities = Some(api::Capability {
            add_capabilities: strings(&["NET_ADMIN"]),
            drop_capabilities: strings(&["NET_RAW"]),
            ..Default::default()
        });
        let id = format!("{tag}-ctr");
        let spec = container_spec(
            &id,
            &c,
            &sb,
            &ctx,
            &ImageConfig::default(),
            "busybox",
            &rootfs,
            &env,
            None,
            &apparmor::FakeAppArmor::disabled(),
        )
        .unwrap();
        let bundle = dir.path().join("ctr");
        std::fs::create_dir(&bundle).unwrap();
        spec.save(bundle.join("config.json")).unwrap();
        cleanup.ids.push(id.clone());
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(&cleanup.runc)
            .arg("--root")
            .arg(&cleanup.state)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "runc run: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap_or_else(|| panic!("no {name} in {stdout}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(field("Uid"), "1000 1000 1000 1000");
        assert_eq!(field("Gid"), "1000 1000 1000 1000");
        assert_eq!(field("Groups"), "1000 2000 3000");
        assert_eq!(field("NoNewPrivs"), "1");
        assert_eq!(field("Seccomp"), "2");
        let mut want: Vec<&str> = DEFAULT_CAPS.iter().copied().filter(|c| *c != "CAP_NET_RAW").collect();
        want.push("CAP_NET_ADMIN");
        assert_eq!(u64::from_str_radix(&field("CapBnd"), 16).unwrap(), cap_mask(&want));
        // A non-root user keeps no effective or ambient capabilities.
        assert_eq!(u64::from_str_radix(&field("CapEff"), 16).unwrap(), 0);
        assert_eq!(u64::from_str_radix(&field("CapAmb"), 16).unwrap(), 0);
        // Inside the pause's pid namespace, where pid 1 is the pause (busybox), not our sh.
        assert!(stdout.contains("pid1=busybox\n"), "{stdout}");
        let want_oom = if env.can_lower_oom_score_adj { -997 } else { env.own_oom_score_adj.max(-997) };
        assert!(stdout.contains(&format!("oom={want_oom}\n")), "{stdout}");
        assert!(stdout.ends_with("specpod\n"), "{stdout}");
    }
}
