//! Network counters of a pod: `/proc/<pid>/net/dev` shows the interfaces of the network namespace
//! that process lives in, so reading it for the pod's pause process needs no setns. Only reads.

use crate::error::{Context, Result};

/// One interface's counters, as the kernel keeps them since the interface appeared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The interfaces (loopback left out) of the network namespace `pid` lives in.
pub fn read_net_dev(pid: u32) -> Result<Vec<InterfaceStats>> {
    let path = format!("/proc/{pid}/net/dev");
    let text = std::fs::read_to_string(&path).context(|| format!("reading {path}"))?;
    Ok(parse_net_dev(&text))
}

/// Parses the text of /proc/net/dev: two header lines, then `name: rx(8 fields) tx(8 fields)`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            let v: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
            if name == "lo" || v.len() < 16 {
                return None;
            }
            Some(InterfaceStats {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0
  eth0: 9876543    5432    1    2    0     0          0         0   123456    1000    3    4    0     0       0          0
 net1:0 0 0 0 0 0 0 0 7 8 9 10 0 0 0 0
";
        let got = parse_net_dev(text);
        assert_eq!(got.len(), 2, "loopback is left out");
        assert_eq!(
            got[0],
            InterfaceStats {
                name: "eth0".into(),
                rx_bytes: 9876543,
                rx_packets: 5432,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 123456,
                tx_packets: 1000,
                tx_errors: 3,
                tx_dropped: 4,
            }
        );
        assert_eq!((got[1].name.as_str(), got[1].tx_bytes, got[1].tx_dropped), ("net1", 7, 10));
    }

    #[test]
    fn reads_own_namespace() {
        // Our own netns always has at least loopback; the call itself must work.
        assert!(read_net_dev(std::process::id()).is_ok());
        assert!(read_net_dev(u32::MAX).is_err());
    }
}
