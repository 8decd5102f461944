//! A pod network of its own per berthd: a bridge `be2e<k>` and the subnet `10.<100 + k/256>.<k%256>.0/24`
//! (`k` in 0..4096), claimed across every test process on the machine by creating the bridge (creation
//! fails if another process holds that number). The CNI conflist (bridge with `isGateway`, no masquerade,
//! host-local with a default route, portmap) is written into the berthd's `conf_dir`, and a FORWARD rule drops everything
//! from the subnet to anywhere else, so pod traffic never leaves the machine. Dropping the [`PodNet`]
//! removes the rule, the bridge and host-local's allocation directory.
//!
//! This module must never touch another network's bridge, rule or allocations.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Subnets available to tests (16 × /24 per second octet, 10.100.0.0 to 10.115.255.0).
const SLOTS: u32 = 4096;

/// Where host-local keeps its allocations (the plugin's default `dataDir`).
pub const HOST_LOCAL_DIR: &str = "/var/lib/cni/networks";

/// The CNI plugins shipped by Debian's containernetworking-plugins.
pub const CNI_BIN: &str = "/usr/lib/cni";

/// A TCP port nothing listens on right now on 127.0.0.1 (for host ports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"))
        .port()
}

/// A claimed bridge and subnet.
#[derive(Debug)]
pub struct PodNet {
    /// The CNI network name (`berth-e2e-<bridge>`): also host-local's allocation directory name.
    pub name: String,
    /// The bridge interface.
    pub bridge: String,
    /// The subnet in CIDR form.
    pub subnet: String,
    /// The first three octets with a trailing dot (`10.100.7.`): what every pod address starts with.
    pub prefix: String,
}

impl PodNet {
    /// Claims a free bridge and subnet and installs the FORWARD drop rule.
    pub fn claim() -> PodNet {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let start = std::process::id().wrapping_mul(37);
        for _ in 0..SLOTS {
            let k = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SLOTS;
            let (a, b) = (100 + k / 256, k % 256);
            let prefix = format!("10.{a}.{b}.");
            // An address of this subnet already on the host (a leftover of a killed run): skip it.
            let addrs = super::run(Command::new("ip").args(["-4", "-o", "addr", "show"]));
            if addrs.contains(&format!(" {prefix}")) {
                continue;
            }
            let bridge = format!("be2e{k}");
            // A fixed MAC: a bridge that takes its ports' MAC is left with 00:00:00:00:00:00 when its
            // last port goes, and Debian's bridge plugin then fails every ADD ("could not set
            // bridge's mac") — a plugin quirk any runtime would hit after a failed ADD.
            let mac = format!("02:be:2e:{:02x}:{:02x}:01", k >> 8, k & 0xff);
            let created = Command::new("ip")
                .args(["link", "add", "name", &bridge, "address", &mac, "type", "bridge"])
                .output()
                .unwrap_or_else(|e| panic!("running ip link add: {e}"));
            if !created.status.success() {
                continue;
            }
            let net = PodNet {
                name: format!("berth-e2e-{bridge}"),
                bridge,
                subnet: format!("{prefix}0/24"),
                prefix,
            };
            super::run(Command::new("iptables").args(net.forward_rule("-I")));
            // A previous run that used this number and died may have left allocations behind.
            let _ = std::fs::remove_dir_all(net.host_local_dir());
            return net;
        }
        panic!("no free test subnet among {SLOTS}: leftover be2e* bridges? (`ip -br link`)");
    }

    fn forward_rule(&self, op: &str) -> Vec<String> {
        [op, "FORWARD", "-s", &self.subnet, "!", "-d", &self.subnet, "-j", "DROP"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The bridge's own address (the pods' gateway).
    pub fn gateway(&self) -> String {
        format!("{}1", self.prefix)
    }

    /// host-local's allocation directory of this network.
    pub fn host_local_dir(&self) -> PathBuf {
        Path::new(HOST_LOCAL_DIR).join(&self.name)
    }

    /// The conflist: bridge (gateway, no masquerade, hairpin) with host-local (a default route via the
    /// bridge, as pods on a node have), then portmap.
    pub fn conflist(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": self.subnet }]],
                        "routes": [{ "dst": "0.0.0.0/0" }]
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        })
        .to_string()
    }

    /// Writes [`PodNet::conflist`] as `<conf_dir>/10-berth-e2e.conflist`.
    pub fn write_conflist(&self, conf_dir: &Path) {
        self.write_conflist_text(conf_dir, &self.conflist());
    }

    /// Writes `text` as the conflist in `conf_dir` (for tests that need a broken network).
    pub fn write_conflist_text(&self, conf_dir: &Path, text: &str) {
        std::fs::create_dir_all(conf_dir).unwrap_or_else(|e| panic!("creating {}: {e}", conf_dir.display()));
        let path = conf_dir.join("10-berth-e2e.conflist");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// The veth interfaces attached to the bridge.
    pub fn bridge_ports(&self) -> Vec<String> {
        let dir = Path::new("/sys/class/net").join(&self.bridge).join("brif");
        let mut ports: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
            })
            .unwrap_or_default();
        ports.sort();
        ports
    }

    /// Addresses host-local has handed out (its files named after an address).
    pub fn allocated_ips(&self) -> Vec<String> {
        let mut ips: Vec<String> = std::fs::read_dir(self.host_local_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        ips
    }

    /// iptables rules (every table) that mention this network's subnet or name, except the FORWARD
    /// drop rule of [`PodNet::claim`]: what portmap left for a pod.
    pub fn iptables_rules(&self) -> Vec<String> {
        let out =
            Command::new("iptables-save").output().unwrap_or_else(|e| panic!("running iptables-save: {e}"));
        let ours = format!("-A FORWARD -s {} ! -d {} -j DROP", self.subnet, self.subnet);
        let mut rules: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .filter(|l| l.contains(&self.prefix) || l.contains(&self.name))
            .filter(|l| *l != ours)
            .map(str::to_string)
            .collect();
        rules.sort();
        rules
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = Command::new("iptables").args(self.forward_rule("-D")).output();
        let _ = Command::new("ip").args(["link", "delete", &self.bridge]).output();
        let _ = std::fs::remove_dir_all(self.host_local_dir());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_distinct_and_released() {
        let a = PodNet::claim();
        let b = PodNet::claim();
        assert_ne!(a.bridge, b.bridge);
        assert_ne!(a.subnet, b.subnet);
        assert!(Path::new("/sys/class/net").join(&a.bridge).exists());
        let rules = super::super::run(Command::new("iptables").args(["-S", "FORWARD"]));
        assert!(rules.contains(&format!("-A FORWARD -s {} ! -d {} -j DROP", a.subnet, a.subnet)), "{rules}");
        let list: serde_json::Value = serde_json::from_str(&a.conflist()).unwrap();
        assert_eq!(list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], a.subnet.as_str());
        let bridge = a.bridge.clone();
        let subnet = a.subnet.clone();
        drop(a);
        assert!(!Path::new("/sys/class/net").join(&bridge).exists(), "{bridge} left behind");
        let rules = super::super::run(Command::new("iptables").args(["-S", "FORWARD"]));
        assert!(!rules.contains(&format!("-s {subnet} ")), "{rules}");
    }
}
