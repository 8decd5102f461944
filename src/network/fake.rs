//! [`FakeNetwork`]: an in-memory [`Network`] for unit tests of the layers above (berthd's CRI
//! services). It hands out addresses from 10.88.0.0/16, records every call, and can be told to
//! fail; it never touches the host. Its contract matches [`super::CniNetwork`]'s where callers can
//! observe it: setup needs a netns, a second setup of an attached pod fails, teardown is idempotent.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use serde_json::json;

use super::{Interface, Network, NetworkStatus, POD_IFNAME, PodNetwork, parse_pod_cidrs};
use crate::error::{Error, Result};

/// An in-memory stand-in for [`super::CniNetwork`].
#[derive(Debug, Default)]
pub struct FakeNetwork {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    attached: BTreeMap<String, NetworkStatus>,
    requests: BTreeMap<String, PodNetwork>,
    next_host: u32,
    calls: Vec<String>,
    fail_setup: Option<String>,
    fail_teardown: Option<String>,
    not_ready: Option<String>,
    pod_cidrs: Vec<String>,
}

impl FakeNetwork {
    /// A ready fake network with nothing attached.
    pub fn new() -> FakeNetwork {
        FakeNetwork::default()
    }

    /// Makes later setups fail with this message (`None`: succeed again).
    pub fn fail_setup(&self, message: Option<&str>) {
        self.lock().fail_setup = message.map(str::to_string);
    }

    /// Makes later teardowns fail with this message (`None`: succeed again).
    pub fn fail_teardown(&self, message: Option<&str>) {
        self.lock().fail_teardown = message.map(str::to_string);
    }

    /// Makes `status` report not ready with this message (`None`: ready again).
    pub fn set_not_ready(&self, message: Option<&str>) {
        self.lock().not_ready = message.map(str::to_string);
    }

    /// Every call so far as `"<operation> <pod id>"` (`"status"`, `"set_pod_cidr <cidr>"`).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The ids of the pods currently attached.
    pub fn attached(&self) -> Vec<String> {
        self.lock().attached.keys().cloned().collect()
    }

    /// The request a currently attached pod was set up with.
    pub fn request(&self, id: &str) -> Option<PodNetwork> {
        self.lock().requests.get(id).cloned()
    }

    /// The pod CIDRs last set.
    pub fn pod_cidrs(&self) -> Vec<String> {
        self.lock().pod_cidrs.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Network for FakeNetwork {
    async fn setup(&self, pod: &PodNetwork) -> Result<NetworkStatus> {
        let mut s = self.lock();
        s.calls.push(format!("setup {}", pod.id));
        if let Some(m) = &s.fail_setup {
            return Err(Error::internal(format!("setting up the network of pod sandbox {}: {m}", pod.id)));
        }
        let Some(netns) = &pod.netns else {
            return Err(Error::invalid(format!(
                "setting up the network of pod sandbox {}: no netns given",
                pod.id
            )));
        };
        if s.attached.contains_key(&pod.id) {
            return Err(Error::already_exists(format!("pod sandbox {} is already attached", pod.id)));
        }
        s.next_host += 1;
        let host = 2 + s.next_host;
        let ip = IpAddr::V4(Ipv4Addr::new(10, 88, (host >> 8) as u8, host as u8));
        let status = NetworkStatus {
            ips: vec![ip],
            interfaces: vec![Interface {
                name: POD_IFNAME.into(),
                mac: String::new(),
                sandbox: netns.display().to_string(),
            }],
            result: json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": POD_IFNAME, "sandbox": netns.display().to_string()}],
                "ips": [{"address": format!("{ip}/16"), "interface": 0}],
            }),
        };
        s.attached.insert(pod.id.clone(), status.clone());
        s.requests.insert(pod.id.clone(), pod.clone());
        Ok(status)
    }

    async fn teardown(&self, pod: &PodNetwork) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(format!("teardown {}", pod.id));
        if let Some(m) = &s.fail_teardown {
            return Err(Error::internal(format!("tearing down the network of pod sandbox {}: {m}", pod.id)));
        }
        s.attached.remove(&pod.id);
        s.requests.remove(&pod.id);
        Ok(())
    }

    fn forget(&self, pod_id: &str) -> Result<Vec<IpAddr>> {
        let mut s = self.lock();
        s.calls.push(format!("forget {pod_id}"));
        s.requests.remove(pod_id);
        Ok(s.attached.remove(pod_id).map(|a| a.ips).unwrap_or_default())
    }

    async fn check(&self, pod: &PodNetwork) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(format!("check {}", pod.id));
        match s.attached.contains_key(&pod.id) {
            true => Ok(()),
            false => {
                Err(Error::not_found(format!("checking the network of pod sandbox {}: not attached", pod.id)))
            }
        }
    }

    async fn status(&self) -> Result<()> {
        let mut s = self.lock();
        s.calls.push("status".into());
        match &s.not_ready {
            Some(m) => Err(Error::precondition(m.clone())),
            None => Ok(()),
        }
    }

    fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        let cidrs = parse_pod_cidrs(cidr)?;
        let mut s = self.lock();
        s.calls.push(format!("set_pod_cidr {cidr}"));
        s.pod_cidrs = cidrs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[tokio::test]
    async fn fake_attaches_detaches_and_fails_on_request() {
        let net = FakeNetwork::new();
        let pod = PodNetwork { id: "s1".into(), netns: Some("/run/ns/s1".into()), ..Default::default() };
        let st = net.setup(&pod).await.unwrap();
        assert_eq!(st.ips.len(), 1);
        assert_eq!(net.setup(&pod).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
        let other = PodNetwork { id: "s2".into(), netns: Some("/run/ns/s2".into()), ..Default::default() };
        assert_ne!(net.setup(&other).await.unwrap().ips, st.ips, "distinct addresses");
        net.check(&pod).await.unwrap();
        net.teardown(&pod).await.unwrap();
        net.teardown(&pod).await.unwrap();
        assert_eq!(net.check(&pod).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(net.attached(), vec!["s2"]);
        net.fail_setup(Some("boom"));
        assert!(net.setup(&pod).await.unwrap_err().to_string().contains("boom"));
        net.set_not_ready(Some("no config"));
        assert!(net.status().await.is_err());
        net.set_pod_cidr("10.5.0.0/24").unwrap();
        assert_eq!(net.pod_cidrs(), vec!["10.5.0.0/24"]);
        assert!(net.set_pod_cidr("bad").is_err());
        assert_eq!(net.calls()[..3], ["setup s1", "setup s1", "setup s2"]);
    }
}
