//! Pod networking: network namespaces and CNI plugins. Knows nothing of CRI: `cri/` passes in what a
//! pod asks for ([`PodNetwork`]) and gets back IPs ([`NetworkStatus`]) through the [`Network`]
//! trait, whose real implementation is [`cni::CniNetwork`] and whose fake is [`fake::FakeNetwork`].
//! This module must never look at CRI or gRPC types, and never route pod traffic anywhere itself:
//! that is the plugins' job, as configured by the operator.

pub mod cache;
pub mod cni;
pub mod conf;
pub mod fake;
pub mod netns;
pub mod orphans;
pub mod result;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::error::{Error, Result};

pub use cni::{CniNetwork, CniOptions};
pub use fake::FakeNetwork;
pub use result::Interface;

/// Pod networking as the runtime sees it. Callers must not run two operations for the same pod at
/// once (the CNI spec forbids parallel operations on one container); different pods are fine.
#[async_trait::async_trait]
pub trait Network: Send + Sync {
    /// Attaches the pod (whose namespace is `pod.netns`) to the network and returns its addresses.
    /// On failure nothing stays attached: everything done so far is undone before returning.
    async fn setup(&self, pod: &PodNetwork) -> Result<NetworkStatus>;

    /// Detaches the pod and releases what the attachment holds (addresses, host rules).
    /// Idempotent: tearing down a pod that is not attached, or whose namespace is gone, succeeds.
    async fn teardown(&self, pod: &PodNetwork) -> Result<()>;

    /// Forgets what is kept to tear the pod down later (the cached results), without running a
    /// plugin: for a pod whose record goes although its teardown failed (a failed RunPodSandbox
    /// whose undo failed too), so that nothing is left that no Stop or Remove can ever reach.
    /// Returns the addresses the plugins had assigned, which IPAM may still hold.
    fn forget(&self, pod_id: &str) -> Result<Vec<IpAddr>>;

    /// Asks the plugins whether the pod's attachment is still as set up. Succeeds without asking
    /// when the network does not support checking (cniVersion below 0.4.0, or `disableCheck`).
    async fn check(&self, pod: &PodNetwork) -> Result<()>;

    /// NetworkReady: Ok when a valid network config exists, its plugins are installed and (CNI
    /// 1.1) they report ready; otherwise the error says why.
    async fn status(&self) -> Result<()>;

    /// Sets the node's pod CIDR(s) (comma-separated, as the kubelet sends them; empty clears it),
    /// handed to plugins declaring the `ipRanges` capability on later setups.
    fn set_pod_cidr(&self, cidr: &str) -> Result<()>;
}

/// What a pod asks of the network: who it is, where its namespace is, and the per-pod options
/// that reach plugins as capability arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetwork {
    /// The sandbox id (CNI_CONTAINERID and K8S_POD_INFRA_CONTAINER_ID).
    pub id: String,
    /// The pinned network namespace; required for setup, optional for teardown.
    pub netns: Option<PathBuf>,
    /// Pod name (K8S_POD_NAME).
    pub name: String,
    /// Pod namespace (K8S_POD_NAMESPACE).
    pub namespace: String,
    /// Pod UID (K8S_POD_UID).
    pub uid: String,
    /// Host port mappings (`portMappings` capability); entries with host port 0 are skipped.
    pub port_mappings: Vec<PortMapping>,
    /// Traffic shaping (`bandwidth` capability), see [`Bandwidth::from_annotations`].
    pub bandwidth: Option<Bandwidth>,
    /// DNS settings (`dns` capability).
    pub dns: Option<Dns>,
    /// The pod's annotations (`io.kubernetes.cri.pod-annotations` capability).
    pub annotations: BTreeMap<String, String>,
}

/// A transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// TCP (the default, as in Kubernetes).
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The name CNI plugins expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A host port forwarded into the pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortMapping {
    /// The transport protocol.
    pub protocol: Protocol,
    /// The port inside the pod.
    pub container_port: u16,
    /// 0 means "no host port": the mapping is not passed to plugins (as containerd does).
    pub host_port: u16,
    /// The host address to bind; `None` for all addresses.
    pub host_ip: Option<IpAddr>,
}

/// Bandwidth limits in bits per second, bursts in bits (the `bandwidth` capability's units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bandwidth {
    /// Limit of traffic into the pod (0: none).
    pub ingress_rate: u64,
    /// Burst allowed into the pod.
    pub ingress_burst: u64,
    /// Limit of traffic out of the pod (0: none).
    pub egress_rate: u64,
    /// Burst allowed out of the pod.
    pub egress_burst: u64,
}

/// Annotation limiting traffic into the pod, a Kubernetes quantity in bits per second.
pub const INGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
/// Annotation limiting traffic out of the pod, a Kubernetes quantity in bits per second.
pub const EGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

impl Bandwidth {
    /// Reads the kubelet's bandwidth annotations. `None` when neither is set. Rates must lie in
    /// 1k..=1P bits/s (the kubelet's bounds). The burst is not settable through annotations; like
    /// containerd, berth passes the largest burst the bandwidth plugin accepts (u32::MAX bits) with
    /// each rate.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Option<Bandwidth>> {
        let read = |key: &str| -> Result<Option<u64>> {
            let Some(v) = annotations.get(key) else { return Ok(None) };
            let bits = parse_quantity(v).map_err(|e| e.context(format!("annotation {key}")))?;
            if !(1_000..=1_000_000_000_000_000).contains(&bits) {
                return Err(Error::invalid(format!(
                    "annotation {key}: {v:?} is outside 1k..1P bits per second"
                )));
            }
            Ok(Some(bits))
        };
        let ingress = read(INGRESS_BANDWIDTH_ANNOTATION)?;
        let egress = read(EGRESS_BANDWIDTH_ANNOTATION)?;
        if ingress.is_none() && egress.is_none() {
            return Ok(None);
        }
        let burst = |rate: Option<u64>| if rate.is_some() { u64::from(u32::MAX) } else { 0 };
        Ok(Some(Bandwidth {
            ingress_rate: ingress.unwrap_or(0),
            ingress_burst: burst(ingress),
            egress_rate: egress.unwrap_or(0),
            egress_burst: burst(egress),
        }))
    }
}

/// Parses a Kubernetes resource quantity ("10M", "1.5Gi", "100", "2e3", "500m") to an integer,
/// rounding fractions up as `Quantity.Value()` does.
pub fn parse_quantity(s: &str) -> Result<u64> {
    let bad = || Error::invalid(format!("invalid quantity {s:?}"));
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(bad());
    }
    // value = digits / 10^frac_len * multiplier, computed exactly in u128.
    let digits: u128 = format!("{int_part}{frac_part}").parse().map_err(|_| bad())?;
    let (mul, div_pow10): (u128, u32) = match suffix {
        "" => (1, 0),
        "m" => (1, 3),
        "k" => (1_000, 0),
        "M" => (1_000_000, 0),
        "G" => (1_000_000_000, 0),
        "T" => (1_000_000_000_000, 0),
        "P" => (1_000_000_000_000_000, 0),
        "E" => (1_000_000_000_000_000_000, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| bad())?;
            if exp >= 0 {
                (10u128.checked_pow(exp as u32).ok_or_else(bad)?, 0)
            } else {
                (1, exp.unsigned_abs())
            }
        }
        _ => return Err(bad()),
    };
    let frac_len = u32::try_from(frac_part.len()).map_err(|_| bad())?;
    let numerator = digits.checked_mul(mul).ok_or_else(bad)?;
    let denominator = 10u128.checked_pow(frac_len + div_pow10).ok_or_else(bad)?;
    u64::try_from(numerator.div_ceil(denominator)).map_err(|_| bad())
}

/// DNS settings for the pod (`dns` capability).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    /// Name server addresses.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// The outcome of a setup.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkStatus {
    /// The pod's addresses on its interface (eth0) inside the namespace, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// Every interface the plugins reported, host side included.
    pub interfaces: Vec<Interface>,
    /// The final CNI result as JSON, in the network's cniVersion.
    pub result: Value,
}

/// The interface name berth gives the pod's network device, as every Kubernetes runtime does.
pub const POD_IFNAME: &str = "eth0";

impl PodNetwork {
    /// The CNI_ARGS pairs the kubelet's runtimes have always passed.
    pub fn cni_args(&self) -> Vec<[String; 2]> {
        vec![
            ["IgnoreUnknown".into(), "1".into()],
            ["K8S_POD_NAMESPACE".into(), self.namespace.clone()],
            ["K8S_POD_NAME".into(), self.name.clone()],
            ["K8S_POD_INFRA_CONTAINER_ID".into(), self.id.clone()],
            ["K8S_POD_UID".into(), self.uid.clone()],
        ]
    }

    /// The capability arguments this pod supplies, keyed by capability name. Plugins receive only
    /// those they declare in their `capabilities`.
    pub fn capability_args(&self, pod_cidrs: &[String]) -> serde_json::Map<String, Value> {
        let mut caps = serde_json::Map::new();
        let mappings: Vec<Value> = self
            .port_mappings
            .iter()
            .filter(|m| m.host_port != 0)
            .map(|m| {
                let mut v = json!({
                    "hostPort": m.host_port,
                    "containerPort": m.container_port,
                    "protocol": m.protocol.as_str(),
                });
                if let Some(ip) = m.host_ip {
                    v["hostIP"] = json!(ip.to_string());
                }
                v
            })
            .collect();
        if !mappings.is_empty() {
            caps.insert("portMappings".into(), Value::Array(mappings));
        }
        if let Some(b) = &self.bandwidth {
            caps.insert(
                "bandwidth".into(),
                json!({
                    "ingressRate": b.ingress_rate,
                    "ingressBurst": b.ingress_burst,
                    "egressRate": b.egress_rate,
                    "egressBurst": b.egress_burst,
                }),
            );
        }
        if let Some(d) = &self.dns {
            caps.insert(
                "dns".into(),
                json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
            );
        }
        if !pod_cidrs.is_empty() {
            let ranges: Vec<Value> = pod_cidrs.iter().map(|c| json!([{ "subnet": c }])).collect();
            caps.insert("ipRanges".into(), Value::Array(ranges));
        }
        if !self.annotations.is_empty() {
            caps.insert("io.kubernetes.cri.pod-annotations".into(), json!(self.annotations));
        }
        caps
    }
}

/// Splits and validates the kubelet's pod CIDR string ("10.0.0.0/24" or "a/x,b/y").
pub fn parse_pod_cidrs(cidr: &str) -> Result<Vec<String>> {
    cidr.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| match result::parse_cidr(c) {
            Some(_) => Ok(c.to_string()),
            None => Err(Error::invalid(format!("invalid pod cidr {c:?}"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        let q = |s| parse_quantity(s).unwrap();
        assert_eq!(q("100"), 100);
        assert_eq!(q("10M"), 10_000_000);
        assert_eq!(q("1.5k"), 1_500);
        assert_eq!(q("1Mi"), 1_048_576);
        assert_eq!(q("2e3"), 2_000);
        assert_eq!(q("1500m"), 2, "fractions round up");
        assert_eq!(q("0.1"), 1);
        assert_eq!(q("+5G"), 5_000_000_000);
        for bad in ["", "M", "1.2.3", "10X", "-1", "1e", "99999999999999999999E"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bandwidth_comes_from_annotations() {
        let mut a = BTreeMap::new();
        assert_eq!(Bandwidth::from_annotations(&a).unwrap(), None);
        a.insert(INGRESS_BANDWIDTH_ANNOTATION.to_string(), "10M".to_string());
        let b = Bandwidth::from_annotations(&a).unwrap().unwrap();
        assert_eq!(
            b,
            Bandwidth { ingress_rate: 10_000_000, ingress_burst: u32::MAX as u64, ..Default::default() }
        );
        a.insert(EGRESS_BANDWIDTH_ANNOTATION.to_string(), "10".to_string());
        let e = Bandwidth::from_annotations(&a).unwrap_err();
        assert!(e.to_string().contains("outside 1k..1P"), "{e}");
        a.insert(EGRESS_BANDWIDTH_ANNOTATION.to_string(), "lots".to_string());
        assert!(Bandwidth::from_annotations(&a).unwrap_err().to_string().contains("egress-bandwidth"));
    }

    #[test]
    fn capability_args_skip_unset_options_and_host_port_zero() {
        let mut pod = PodNetwork { id: "s1".into(), ..Default::default() };
        assert!(pod.capability_args(&[]).is_empty());
        pod.port_mappings = vec![
            PortMapping { protocol: Protocol::Udp, container_port: 53, host_port: 5353, host_ip: None },
            PortMapping { protocol: Protocol::Tcp, container_port: 80, host_port: 0, host_ip: None },
            PortMapping {
                protocol: Protocol::Sctp,
                container_port: 9,
                host_port: 9009,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
        ];
        pod.dns = Some(Dns { servers: vec!["10.0.0.10".into()], ..Default::default() });
        let caps = pod.capability_args(&["10.9.0.0/24".into(), "fd00::/64".into()]);
        assert_eq!(
            caps["portMappings"],
            json!([{"hostPort":5353,"containerPort":53,"protocol":"udp"},
                   {"hostPort":9009,"containerPort":9,"protocol":"sctp","hostIP":"127.0.0.1"}])
        );
        assert_eq!(caps["ipRanges"], json!([[{"subnet":"10.9.0.0/24"}],[{"subnet":"fd00::/64"}]]));
        assert_eq!(caps["dns"]["servers"], json!(["10.0.0.10"]));
        assert!(!caps.contains_key("bandwidth") && !caps.contains_key("io.kubernetes.cri.pod-annotations"));
    }

    #[test]
    fn pod_cidrs_are_validated() {
        assert_eq!(parse_pod_cidrs(" 10.1.0.0/16 , fd00::/64").unwrap(), vec!["10.1.0.0/16", "fd00::/64"]);
        assert!(parse_pod_cidrs("").unwrap().is_empty());
        assert!(parse_pod_cidrs("10.1.0.0").is_err());
    }
}
