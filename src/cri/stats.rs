//! CRI stats for the kubelet's eviction manager, `kubectl top` and its /metrics/cadvisor endpoint:
//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats, ListMetricDescriptors
//! and ListPodSandboxMetrics, from the readers in `crate::stats`.
//!
//! As containerd does: every listed container (created, running or exited) gets an entry with its
//! attributes and writable layer; CPU and memory only while it runs; the usage rate (nanocores) is
//! left out until a second sample exists. Pods are reported only while ready; their CPU and memory
//! come from the kubelet's pod cgroup (the parent of the pause container's) when it exists, else
//! from the sum of their containers; their network from the pause process's namespace (none for
//! hostNetwork pods). Metrics carry cAdvisor's names and labels (pod, namespace, container, id =
//! cgroup path, image) so dashboards built on cAdvisor keep working; the pod itself appears with an
//! empty `container`, as cAdvisor shows pod cgroups. CRI metric values are integers, so the
//! `*_seconds_total` counters are whole seconds.

use std::sync::Arc;

use super::api;
use super::pods::{Pods, blocking};
use super::sandbox_status::matches_selector;
use super::store::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};
use crate::engine::metadata::now_nanos;
use crate::error::{Error, Result};
use crate::stats::cgroup::{Pressure, Psi, PsiLine, cgroup_path, parent};
use crate::stats::{CgroupStats, CpuStats, InterfaceStats, MemoryStats};

/// The label keys every metric starts with, as the kubelet's cAdvisor metrics name them.
const BASE_LABELS: [&str; 5] = ["pod", "namespace", "container", "id", "image"];
/// The interface the kubelet reports as a pod's own (CNI's default).
const DEFAULT_INTERFACE: &str = "eth0";

/// (name, help, label keys after [`BASE_LABELS`]) of every metric ListPodSandboxMetrics emits.
const DESCRIPTORS: &[(&str, &str, &[&str])] = &[
    ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", &["cpu"]),
    ("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", &[]),
    ("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", &[]),
    ("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", &[]),
    ("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", &[]),
    (
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        &[],
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        &[],
    ),
    ("container_memory_working_set_bytes", "Current working set in bytes.", &[]),
    ("container_memory_rss", "Size of RSS in bytes.", &[]),
    ("container_memory_cache", "Number of bytes of page cache memory.", &[]),
    ("container_memory_mapped_file", "Size of memory mapped files in bytes.", &[]),
    ("container_memory_swap", "Container swap usage in bytes.", &[]),
    ("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", &[]),
    ("container_memory_failcnt", "Number of memory usage hits limits", &[]),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        &["failure_type", "scope"],
    ),
    ("container_spec_memory_limit_bytes", "Memory limit for the container.", &[]),
    ("container_processes", "Number of processes running inside the container.", &[]),
    (
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero",
        &[],
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        &["device"],
    ),
    ("container_last_seen", "Last time a container was seen by the exporter", &[]),
    ("container_network_receive_bytes_total", "Cumulative count of bytes received", &["interface"]),
    ("container_network_receive_packets_total", "Cumulative count of packets received", &["interface"]),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        &["interface"],
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        &["interface"],
    ),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", &["interface"]),
    ("container_network_transmit_packets_total", "Cumulative count of packets transmitted", &["interface"]),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        &["interface"],
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        &["interface"],
    ),
];

/// The metric descriptors of ListMetricDescriptors: every metric ListPodSandboxMetrics may emit.
pub fn metric_descriptors() -> api::ListMetricDescriptorsResponse {
    let descriptors = DESCRIPTORS
        .iter()
        .map(|(name, help, extra)| api::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: BASE_LABELS.iter().chain(extra.iter()).map(|s| s.to_string()).collect(),
        })
        .collect();
    api::ListMetricDescriptorsResponse { descriptors }
}

fn u64v(value: u64) -> Option<api::UInt64Value> {
    Some(api::UInt64Value { value })
}

/// What was read about one container at one moment.
struct ContainerSample {
    /// The container's cgroup path (cAdvisor's `id` label); empty if unknown.
    cgroup: String,
    /// Its cgroup counters, while it runs.
    stats: Option<CgroupStats>,
    /// Its writable layer (bytes, inodes).
    fs: crate::engine::Usage,
    at: i64,
}

/// CRI PSI from a `*.pressure` file: totals in nanoseconds (the kernel counts microseconds), as
/// containerd's `convertCg2PSIToCRI`.
fn psi(p: &Option<Psi>) -> Option<api::PsiStats> {
    let data = |l: &PsiLine| api::PsiData {
        total: l.total_us.saturating_mul(1000),
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
    };
    p.as_ref().map(|p| api::PsiStats { full: p.full.as_ref().map(data), some: p.some.as_ref().map(data) })
}

/// CRI IO usage: only its PSI, and only where the kernel has it (what containerd reports too).
fn io_usage(p: &Pressure, at: i64) -> Option<api::IoUsage> {
    psi(&p.io).map(|psi| api::IoUsage { timestamp: at, psi: Some(psi) })
}

/// CRI CPU usage from counters and the rate since the previous sample.
fn cpu_usage(cpu: &CpuStats, p: &Pressure, at: i64, rate: Option<u64>) -> api::CpuUsage {
    api::CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: u64v(cpu.usage_ns),
        usage_nano_cores: rate.and_then(u64v),
        psi: psi(&p.cpu),
    }
}

/// CRI memory usage; available bytes only under a limit (containerd reports 0 without one).
fn memory_usage(m: &MemoryStats, p: &Pressure, at: i64) -> api::MemoryUsage {
    api::MemoryUsage {
        timestamp: at,
        working_set_bytes: u64v(m.working_set),
        available_bytes: u64v(m.available().unwrap_or(0)),
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: u64v(m.pgfault),
        major_page_faults: u64v(m.pgmajfault),
        psi: psi(&p.memory),
    }
}

/// CRI swap usage, where the kernel accounts swap.
fn swap_usage(m: &MemoryStats, at: i64) -> Option<api::SwapUsage> {
    let used = m.swap?;
    Some(api::SwapUsage {
        timestamp: at,
        swap_usage_bytes: u64v(used),
        swap_available_bytes: m.swap_limit.map(|l| l.saturating_sub(used)).and_then(u64v),
    })
}

fn interface_usage(i: &InterfaceStats) -> api::NetworkInterfaceUsage {
    api::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(i.rx_bytes),
        rx_errors: u64v(i.rx_errors),
        tx_bytes: u64v(i.tx_bytes),
        tx_errors: u64v(i.tx_errors),
    }
}

/// CRI network usage: eth0 as the default interface, every interface (eth0 too) in the list, as
/// cAdvisor lists them. None without eth0 (a pod being stopped, its CNI DEL done): the kubelet
/// (1.36, `addCRIPodNetworkStats`) dereferences the default interface whenever a network is
/// reported, and a network without one crashed it. containerd never reports one without it either.
fn network_usage(ifaces: &[InterfaceStats], at: i64) -> Option<api::NetworkUsage> {
    let default = ifaces.iter().find(|i| i.name == DEFAULT_INTERFACE)?;
    Some(api::NetworkUsage {
        timestamp: at,
        default_interface: Some(interface_usage(default)),
        interfaces: ifaces.iter().map(interface_usage).collect(),
    })
}

/// Builds metrics that share one set of base label values.
struct MetricSink<'a> {
    labels: [&'a str; 5],
    at: i64,
    out: Vec<api::Metric>,
}

impl MetricSink<'_> {
    fn push(&mut self, name: &str, kind: api::MetricType, extra: &[&str], value: u64) {
        self.out.push(api::Metric {
            name: name.to_string(),
            timestamp: self.at,
            metric_type: kind as i32,
            label_values: self.labels.iter().chain(extra.iter()).map(|s| s.to_string()).collect(),
            value: u64v(value),
        });
    }
    fn counter(&mut self, name: &str, extra: &[&str], value: u64) {
        self.push(name, api::MetricType::Counter, extra, value)
    }
    fn gauge(&mut self, name: &str, extra: &[&str], value: u64) {
        self.push(name, api::MetricType::Gauge, extra, value)
    }

    fn cgroup(&mut self, s: &CgroupStats) {
        const NS: u64 = 1_000_000_000;
        if let Some(c) = &s.cpu {
            self.counter("container_cpu_usage_seconds_total", &["total"], c.usage_ns / NS);
            if let Some(v) = c.user_ns {
                self.counter("container_cpu_user_seconds_total", &[], v / NS);
            }
            if let Some(v) = c.system_ns {
                self.counter("container_cpu_system_seconds_total", &[], v / NS);
            }
            if let Some(v) = c.periods {
                self.counter("container_cpu_cfs_periods_total", &[], v);
            }
            if let Some(v) = c.throttled_periods {
                self.counter("container_cpu_cfs_throttled_periods_total", &[], v);
            }
            if let Some(v) = c.throttled_ns {
                self.counter("container_cpu_cfs_throttled_seconds_total", &[], v / NS);
            }
        }
        if let Some(m) = &s.memory {
            self.gauge("container_memory_usage_bytes", &[], m.usage);
            self.gauge("container_memory_working_set_bytes", &[], m.working_set);
            self.gauge("container_memory_rss", &[], m.rss);
            self.gauge("container_memory_cache", &[], m.cache);
            self.gauge("container_memory_mapped_file", &[], m.mapped_file);
            if let Some(v) = m.swap {
                self.gauge("container_memory_swap", &[], v);
            }
            if let Some(v) = m.max_usage {
                self.gauge("container_memory_max_usage_bytes", &[], v);
            }
            if let Some(v) = m.failcnt {
                self.counter("container_memory_failcnt", &[], v);
            }
            // The counters are hierarchical on both layouts; cAdvisor reports both scopes.
            for scope in ["container", "hierarchy"] {
                self.counter("container_memory_failures_total", &["pgfault", scope], m.pgfault);
                self.counter("container_memory_failures_total", &["pgmajfault", scope], m.pgmajfault);
            }
            // cAdvisor's convention: 0 means no limit.
            self.gauge("container_spec_memory_limit_bytes", &[], m.limit.unwrap_or(0));
        }
        if let Some(v) = s.pids {
            self.gauge("container_processes", &[], v);
            self.gauge("container_threads_max", &[], s.pids_limit.unwrap_or(0));
        }
    }

    fn network(&mut self, ifaces: &[InterfaceStats]) {
        for i in ifaces {
            let n = [i.name.as_str()];
            self.counter("container_network_receive_bytes_total", &n, i.rx_bytes);
            self.counter("container_network_receive_packets_total", &n, i.rx_packets);
            self.counter("container_network_receive_packets_dropped_total", &n, i.rx_dropped);
            self.counter("container_network_receive_errors_total", &n, i.rx_errors);
            self.counter("container_network_transmit_bytes_total", &n, i.tx_bytes);
            self.counter("container_network_transmit_packets_total", &n, i.tx_packets);
            self.counter("container_network_transmit_packets_dropped_total", &n, i.tx_dropped);
            self.counter("container_network_transmit_errors_total", &n, i.tx_errors);
        }
    }
}

fn container_attributes(c: &ContainerRecord) -> api::ContainerAttributes {
    api::ContainerAttributes {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
    }
}

fn sandbox_attributes(s: &SandboxRecord) -> api::PodSandboxAttributes {
    api::PodSandboxAttributes {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
    }
}

impl Pods {
    /// The `linux.cgroupsPath` of a container's (or the pause's) OCI spec.
    fn spec_cgroups_path(&self, id: &str) -> Option<String> {
        let bytes = std::fs::read(self.paths.bundle(id).join("config.json")).ok()?;
        let spec: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        spec.get("linux")?.get("cgroupsPath")?.as_str().map(String::from)
    }

    fn sample_container(&self, c: &ContainerRecord) -> ContainerSample {
        let cgroup = self.spec_cgroups_path(&c.id).map(|p| cgroup_path(&p)).unwrap_or_default();
        let stats = (c.state == ContainerState::Running && !cgroup.is_empty())
            .then(|| self.stats.read_cgroup(&cgroup))
            .flatten();
        // A layer that cannot be measured (not created yet, or going away) counts as empty, as
        // containerd reports it.
        let fs = self.stats.fs_usage(&c.id, || self.engine.snapshots.usage(&c.id)).unwrap_or_default();
        ContainerSample { cgroup, stats, fs, at: now_nanos() }
    }

    fn container_stats_of(&self, c: &ContainerRecord, sample: &ContainerSample) -> api::ContainerStats {
        let at = sample.at;
        let cpu = sample.stats.as_ref().and_then(|s| s.cpu.as_ref());
        let memory = sample.stats.as_ref().and_then(|s| s.memory.as_ref());
        let none = Pressure::default();
        let pressure = sample.stats.as_ref().map_or(&none, |s| &s.pressure);
        api::ContainerStats {
            attributes: Some(container_attributes(c)),
            cpu: cpu.map(|cpu| cpu_usage(cpu, pressure, at, self.stats.cpu_rate(&c.id, cpu.usage_ns, at))),
            memory: memory.map(|m| memory_usage(m, pressure, at)),
            writable_layer: Some(api::FilesystemUsage {
                timestamp: at,
                fs_id: Some(api::FilesystemIdentifier {
                    mountpoint: self.engine.options.root.display().to_string(),
                }),
                used_bytes: u64v(sample.fs.bytes),
                inodes_used: u64v(sample.fs.inodes),
            }),
            swap: memory.and_then(|m| swap_usage(m, at)),
            io: io_usage(pressure, at),
        }
    }

    /// Containers matching a stats filter (exact id or prefix, sandbox id prefix, labels).
    fn stats_containers(&self, f: &api::ContainerStatsFilter) -> Vec<ContainerRecord> {
        self.store
            .containers()
            .into_iter()
            .filter(|c| c.state != ContainerState::Creating)
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| matches_selector(&c.config.labels, &f.label_selector))
            .collect()
    }

    fn container_stats_matching(&self, f: &api::ContainerStatsFilter) -> Vec<api::ContainerStats> {
        self.stats_containers(f)
            .iter()
            .map(|c| self.container_stats_of(c, &self.sample_container(c)))
            .collect()
    }

    /// Drops the samples of containers and sandboxes that no longer exist.
    fn forget_gone_objects(&self) {
        let mut live: std::collections::HashSet<String> =
            self.store.containers().into_iter().map(|c| c.id).collect();
        live.extend(self.store.sandboxes().into_iter().map(|s| s.id));
        self.stats.retain(|id| live.contains(id));
    }

    /// The pod's own cgroup: the parent of the pause container's, when the kubelet gave the pod
    /// a cgroup parent (without one the parent is shared by every pod).
    fn pod_cgroup(&self, s: &SandboxRecord) -> Option<String> {
        let has_parent = s.config.linux.as_ref().is_some_and(|l| !l.cgroup_parent.is_empty());
        if !has_parent {
            return None;
        }
        let pause = cgroup_path(&self.spec_cgroups_path(&s.id)?);
        Some(parent(&pause))
    }

    /// A ready pod's stats and its id label for metrics; None when it is not ready.
    fn sandbox_sample(
        &self,
        s: &SandboxRecord,
    ) -> Option<(String, Option<CgroupStats>, Vec<InterfaceStats>)> {
        if s.state != SandboxState::Ready {
            return None;
        }
        let pod_cgroup = self.pod_cgroup(s);
        let mut stats = pod_cgroup.as_deref().and_then(|p| self.stats.read_cgroup(p));
        if stats.is_none() {
            let mut parts: Vec<CgroupStats> = self
                .spec_cgroups_path(&s.id)
                .and_then(|p| self.stats.read_cgroup(&cgroup_path(&p)))
                .into_iter()
                .collect();
            for c in self.store.containers_of(&s.id) {
                if c.state == ContainerState::Running
                    && let Some(st) =
                        self.spec_cgroups_path(&c.id).and_then(|p| self.stats.read_cgroup(&cgroup_path(&p)))
                {
                    parts.push(st);
                }
            }
            stats = (!parts.is_empty()).then(|| CgroupStats::sum(&parts));
        }
        // hostNetwork pods share the node's interfaces: those are the node's, not the pod's.
        let ifaces = match (&s.netns, s.pid) {
            (Some(_), pid) if pid != 0 => crate::stats::net::read_net_dev(pid).unwrap_or_else(|e| {
                tracing::debug!(sandbox = %s.id, error = %e, "reading the pod's network counters");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        Some((pod_cgroup.unwrap_or_default(), stats, ifaces))
    }

    fn pod_sandbox_stats_of(&self, s: &SandboxRecord) -> Option<api::PodSandboxStats> {
        let (_, stats, ifaces) = self.sandbox_sample(s)?;
        let at = now_nanos();
        let cpu = stats.as_ref().and_then(|st| st.cpu.as_ref());
        let memory = stats.as_ref().and_then(|st| st.memory.as_ref());
        let none = Pressure::default();
        let pressure = stats.as_ref().map_or(&none, |st| &st.pressure);
        let containers = self.container_stats_matching(&api::ContainerStatsFilter {
            pod_sandbox_id: s.id.clone(),
            ..Default::default()
        });
        Some(api::PodSandboxStats {
            attributes: Some(sandbox_attributes(s)),
            linux: Some(api::LinuxPodSandboxStats {
                cpu: cpu
                    .map(|cpu| cpu_usage(cpu, pressure, at, self.stats.cpu_rate(&s.id, cpu.usage_ns, at))),
                memory: memory.map(|m| memory_usage(m, pressure, at)),
                network: s.netns.as_ref().and_then(|_| network_usage(&ifaces, at)),
                process: stats
                    .as_ref()
                    .and_then(|st| st.pids)
                    .map(|n| api::ProcessUsage { timestamp: at, process_count: u64v(n) }),
                containers,
                io: io_usage(pressure, at),
            }),
            windows: None,
        })
    }

    fn pod_metrics_of(&self, s: &SandboxRecord) -> Option<api::PodSandboxMetrics> {
        let (pod_cgroup, stats, ifaces) = self.sandbox_sample(s)?;
        let meta = s.config.metadata.clone().unwrap_or_default();
        let at = now_nanos();
        // The pod as a whole, as cAdvisor reports the pod cgroup: `container` empty.
        let mut pod =
            MetricSink { labels: [&meta.name, &meta.namespace, "", &pod_cgroup, ""], at, out: vec![] };
        if let Some(st) = &stats {
            pod.cgroup(st);
        }
        pod.network(&ifaces);
        let device = self.engine.options.root.display().to_string();
        let container_metrics = self
            .store
            .containers_of(&s.id)
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| {
                let sample = self.sample_container(&c);
                let name = c.config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                let mut m = MetricSink {
                    labels: [&meta.name, &meta.namespace, &name, &sample.cgroup, &c.image],
                    at: sample.at,
                    out: vec![],
                };
                if let Some(st) = &sample.stats {
                    m.cgroup(st);
                }
                m.gauge("container_fs_usage_bytes", &[&device], sample.fs.bytes);
                m.gauge("container_last_seen", &[], (sample.at / 1_000_000_000) as u64);
                api::ContainerMetrics { container_id: c.id.clone(), metrics: m.out }
            })
            .collect();
        Some(api::PodSandboxMetrics { pod_sandbox_id: s.id.clone(), metrics: pod.out, container_metrics })
    }

    /// ContainerStats: NotFound for an unknown id (a unique prefix is accepted).
    pub async fn container_stats(self: &Arc<Self>, id: String) -> Result<api::ContainerStatsResponse> {
        let pods = self.clone();
        blocking(move || {
            let c = pods.store.find_container(&id)?;
            if c.state == ContainerState::Creating {
                return Err(Error::not_found(format!("container {id:?} not found")));
            }
            Ok(api::ContainerStatsResponse {
                stats: Some(pods.container_stats_of(&c, &pods.sample_container(&c))),
            })
        })
        .await
    }

    /// ListContainerStats: every container matching the filter, whatever its state.
    pub async fn list_container_stats(
        self: &Arc<Self>,
        filter: Option<api::ContainerStatsFilter>,
    ) -> Result<api::ListContainerStatsResponse> {
        let pods = self.clone();
        let f = filter.unwrap_or_default();
        blocking(move || {
            pods.forget_gone_objects();
            Ok(api::ListContainerStatsResponse { stats: pods.container_stats_matching(&f) })
        })
        .await
    }

    /// PodSandboxStats: NotFound for an unknown id, Unavailable for a pod that is not ready.
    pub async fn pod_sandbox_stats(self: &Arc<Self>, id: String) -> Result<api::PodSandboxStatsResponse> {
        let pods = self.clone();
        blocking(move || {
            let s = pods.store.find_sandbox(&id)?;
            let stats = pods
                .pod_sandbox_stats_of(&s)
                .ok_or_else(|| Error::unavailable(format!("pod sandbox {:?} is not ready", s.id)))?;
            Ok(api::PodSandboxStatsResponse { stats: Some(stats) })
        })
        .await
    }

    /// ListPodSandboxStats: the ready pods matching the filter.
    pub async fn list_pod_sandbox_stats(
        self: &Arc<Self>,
        filter: Option<api::PodSandboxStatsFilter>,
    ) -> Result<api::ListPodSandboxStatsResponse> {
        let pods = self.clone();
        let f = filter.unwrap_or_default();
        blocking(move || {
            pods.forget_gone_objects();
            let stats = pods
                .store
                .sandboxes()
                .iter()
                .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
                .filter(|s| matches_selector(&s.config.labels, &f.label_selector))
                .filter_map(|s| pods.pod_sandbox_stats_of(s))
                .collect();
            Ok(api::ListPodSandboxStatsResponse { stats })
        })
        .await
    }

    /// ListPodSandboxMetrics: cAdvisor-style metrics of every ready pod and its running containers.
    pub async fn list_pod_sandbox_metrics(self: &Arc<Self>) -> Result<api::ListPodSandboxMetricsResponse> {
        let pods = self.clone();
        blocking(move || {
            pods.forget_gone_objects();
            let pod_metrics = pods.store.sandboxes().iter().filter_map(|s| pods.pod_metrics_of(s)).collect();
            Ok(api::ListPodSandboxMetricsResponse { pod_metrics })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> MemoryStats {
        MemoryStats {
            usage: 1000,
            working_set: 800,
            rss: 500,
            pgfault: 7,
            pgmajfault: 1,
            limit: Some(2000),
            swap: Some(30),
            swap_limit: Some(100),
            ..Default::default()
        }
    }

    #[test]
    fn memory_and_swap_conversions() {
        let m = memory_usage(&memory(), &Pressure::default(), 5);
        assert_eq!(m.timestamp, 5);
        assert_eq!(m.working_set_bytes.unwrap().value, 800);
        assert_eq!(m.available_bytes.unwrap().value, 1200);
        assert_eq!(m.usage_bytes.unwrap().value, 1000);
        assert_eq!(m.rss_bytes.unwrap().value, 500);
        assert_eq!((m.page_faults.unwrap().value, m.major_page_faults.unwrap().value), (7, 1));
        let unlimited = memory_usage(&MemoryStats { limit: None, ..memory() }, &Pressure::default(), 5);
        assert_eq!(unlimited.available_bytes.unwrap().value, 0);

        let s = swap_usage(&memory(), 5).unwrap();
        assert_eq!((s.swap_usage_bytes.unwrap().value, s.swap_available_bytes.unwrap().value), (30, 70));
        assert!(swap_usage(&MemoryStats { swap: None, ..memory() }, 5).is_none());
    }

    #[test]
    fn psi_totals_become_nanoseconds_and_absent_files_stay_absent() {
        let line = |total_us| PsiLine { avg10: 2.5, avg60: 1.0, avg300: 0.5, total_us };
        let p = Pressure {
            cpu: Some(Psi { some: Some(line(3)), full: None }),
            memory: None,
            io: Some(Psi { some: Some(line(1)), full: Some(line(2)) }),
        };
        let cpu = cpu_usage(&CpuStats::default(), &p, 9, None).psi.unwrap();
        let some = cpu.some.unwrap();
        assert_eq!((some.total, some.avg10, some.avg60, some.avg300), (3000, 2.5, 1.0, 0.5));
        assert!(cpu.full.is_none());
        assert!(memory_usage(&memory(), &p, 9).psi.is_none());
        let io = io_usage(&p, 9).unwrap();
        assert_eq!((io.timestamp, io.psi.unwrap().full.unwrap().total), (9, 2000));
        assert!(io_usage(&Pressure::default(), 9).is_none(), "no io.pressure: no io usage at all");
    }

    #[test]
    fn cpu_rate_is_absent_until_known() {
        let cpu = CpuStats { usage_ns: 42, ..Default::default() };
        let first = cpu_usage(&cpu, &Pressure::default(), 9, None);
        assert_eq!(first.usage_core_nano_seconds.unwrap().value, 42);
        assert!(first.usage_nano_cores.is_none());
        assert_eq!(cpu_usage(&cpu, &Pressure::default(), 9, Some(3)).usage_nano_cores.unwrap().value, 3);
    }

    #[test]
    fn network_has_eth0_as_default() {
        let ifaces = vec![
            InterfaceStats { name: "net1".into(), rx_bytes: 1, ..Default::default() },
            InterfaceStats { name: "eth0".into(), rx_bytes: 2, tx_errors: 4, ..Default::default() },
        ];
        let n = network_usage(&ifaces, 3).unwrap();
        let d = n.default_interface.unwrap();
        assert_eq!((d.name.as_str(), d.rx_bytes.unwrap().value, d.tx_errors.unwrap().value), ("eth0", 2, 4));
        assert_eq!(n.interfaces.len(), 2);
        // No eth0 (its CNI DEL done): no network at all, never one without its default interface.
        assert!(network_usage(&ifaces[..1], 3).is_none());
        assert!(network_usage(&[], 3).is_none());
    }

    #[test]
    fn every_metric_matches_its_descriptor() {
        let descriptors = metric_descriptors().descriptors;
        let mut sink = MetricSink { labels: ["p", "ns", "c", "/kubepods/p/c", "img"], at: 1, out: vec![] };
        sink.cgroup(&CgroupStats {
            cpu: Some(CpuStats {
                usage_ns: 3_500_000_000,
                user_ns: Some(2_000_000_000),
                system_ns: Some(1_500_000_000),
                periods: Some(4),
                throttled_periods: Some(1),
                throttled_ns: Some(9),
            }),
            memory: Some(MemoryStats { max_usage: Some(1), failcnt: Some(2), ..memory() }),
            pids: Some(3),
            pids_limit: None,
            pressure: Pressure::default(),
        });
        sink.network(&[InterfaceStats { name: "eth0".into(), ..Default::default() }]);
        sink.gauge("container_fs_usage_bytes", &["/var/lib/berth"], 1);
        sink.gauge("container_last_seen", &[], 1);
        let mut seen = std::collections::HashSet::new();
        for m in &sink.out {
            let d = descriptors
                .iter()
                .find(|d| d.name == m.name)
                .unwrap_or_else(|| panic!("{} has no descriptor", m.name));
            assert_eq!(d.label_keys.len(), m.label_values.len(), "labels of {}", m.name);
            seen.insert(m.name.clone());
        }
        for d in &descriptors {
            assert!(seen.contains(&d.name), "{} is described but never emitted", d.name);
        }
        let value = |name: &str| sink.out.iter().find(|m| m.name == name).unwrap().value.unwrap().value;
        assert_eq!(value("container_cpu_usage_seconds_total"), 3);
        assert_eq!(value("container_spec_memory_limit_bytes"), 2000);
        assert_eq!(value("container_threads_max"), 0, "no pids limit is reported as 0");
        let cpu = sink.out.iter().find(|m| m.name == "container_cpu_usage_seconds_total").unwrap();
        assert_eq!(cpu.label_values, ["p", "ns", "c", "/kubepods/p/c", "img", "total"]);
        assert_eq!(cpu.metric_type, api::MetricType::Counter as i32);
    }
}
