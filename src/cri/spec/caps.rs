//! Capability sets of a container's first process, computed the way containerd's CRI plugin does:
//! the default set, then the security context's add/drop (with "ALL" meaning the capabilities this
//! node can actually grant: berthd's own bounding set), then privileged mode, then ambient
//! capabilities. Works on capability names ("CAP_CHOWN"); it never reads the host itself (the
//! bounding set comes from [`super::RuntimeEnv`]).

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxCapabilities};

use crate::cri::api;
use crate::error::{Error, Result};

/// The capabilities containerd gives every container (`pkg/oci` `defaultUnixCaps`), in its order.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Capability names by number (linux/capability.h), up to the newest this code knows.
const BY_NUMBER: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The names of the capabilities set in a `/proc/<pid>/status` capability mask (`CapBnd:` …);
/// bits this code has no name for are left out, as containerd's `cap.FromBitmap` does.
pub fn names_from_mask(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask >> bit & 1 == 1)
        .filter_map(|bit| BY_NUMBER.get(bit))
        .map(|s| s.to_string())
        .collect()
}

/// The bounding set in the text of a `/proc/<pid>/status` file.
pub fn bounding_from_status(status: &str) -> Result<Vec<String>> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .ok_or_else(|| Error::internal("reading the capability bounding set: no CapBnd line in status"))?;
    let mask = u64::from_str_radix(line.trim(), 16).map_err(|e| {
        Error::internal(format!("reading the capability bounding set {:?}: {e}", line.trim()))
    })?;
    Ok(names_from_mask(mask))
}

/// The capability sets of a process, as ordered lists of names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

impl CapSets {
    /// containerd's default: the 14 default capabilities in bounding, effective and permitted.
    pub fn default_set() -> Self {
        let caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        CapSets { bounding: caps.clone(), effective: caps.clone(), permitted: caps, ..Default::default() }
    }

    /// `oci.WithCapabilities`: replaces bounding/effective/permitted and keeps only the inheritable
    /// capabilities still granted.
    pub fn set_all(&mut self, caps: &[String]) {
        self.bounding = caps.to_vec();
        self.effective = caps.to_vec();
        self.permitted = caps.to_vec();
        if caps.is_empty() {
            self.inheritable.clear();
        } else {
            self.inheritable.retain(|c| caps.contains(c));
        }
    }

    /// `oci.WithAddedCapabilities`: adds to bounding, effective and permitted (not inheritable).
    pub fn add(&mut self, cap: &str) {
        for set in [&mut self.bounding, &mut self.effective, &mut self.permitted] {
            push_unique(set, cap);
        }
    }

    /// `oci.WithDroppedCapabilities`: removes from every set but ambient.
    pub fn drop_cap(&mut self, cap: &str) {
        for set in [&mut self.bounding, &mut self.effective, &mut self.permitted, &mut self.inheritable] {
            set.retain(|c| c != cap);
        }
    }

    /// An ambient capability must also be inheritable and permitted for the kernel to keep it,
    /// so it goes into every set (what the CRI field promises).
    pub fn add_ambient(&mut self, cap: &str) {
        for set in [
            &mut self.bounding,
            &mut self.effective,
            &mut self.permitted,
            &mut self.inheritable,
            &mut self.ambient,
        ] {
            push_unique(set, cap);
        }
    }

    /// The OCI form; empty sets are left out (runc treats a missing set as empty).
    pub fn to_oci(&self) -> Result<LinuxCapabilities> {
        let conv = |set: &[String]| -> Result<Option<HashSet<Capability>>> {
            if set.is_empty() {
                return Ok(None);
            }
            set.iter().map(|c| parse_cap(c)).collect::<Result<HashSet<_>>>().map(Some)
        };
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(conv(&self.bounding)?)
            .set_effective(conv(&self.effective)?)
            .set_permitted(conv(&self.permitted)?)
            .set_inheritable(conv(&self.inheritable)?)
            .set_ambient(conv(&self.ambient)?);
        Ok(caps)
    }
}

fn push_unique(set: &mut Vec<String>, cap: &str) {
    if !set.iter().any(|c| c == cap) {
        set.push(cap.to_string());
    }
}

fn parse_cap(name: &str) -> Result<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| Error::invalid(format!("unknown capability {name:?}")))
}

/// A CRI capability name ("NET_ADMIN"; the kubelet sends them without the prefix) as the OCI
/// name ("CAP_NET_ADMIN"), validated.
fn oci_name(field: &str, cri: &str) -> Result<String> {
    let upper = cri.to_ascii_uppercase();
    let name = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    if !BY_NUMBER.contains(&name.as_str()) {
        return Err(Error::invalid(format!(
            "security_context.capabilities.{field}: unknown capability {cri:?}"
        )));
    }
    Ok(name)
}

/// Applies the security context's capability changes the way containerd's
/// `customopts.WithCapabilities` does: "ALL" first (add ALL = `all`, drop ALL = nothing), then the
/// individual additions, then the individual drops; ambient capabilities last. `all` is the
/// node's bounding set.
pub fn apply_cri(sets: &mut CapSets, caps: Option<&api::Capability>, all: &[String]) -> Result<()> {
    let Some(caps) = caps else { return Ok(()) };
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    if caps.add_capabilities.iter().any(is_all) {
        sets.set_all(all);
    }
    if caps.drop_capabilities.iter().any(is_all) {
        sets.set_all(&[]);
    }
    for c in caps.add_capabilities.iter().filter(|c| !is_all(c)) {
        sets.add(&oci_name("add_capabilities", c)?);
    }
    for c in caps.drop_capabilities.iter().filter(|c| !is_all(c)) {
        sets.drop_cap(&oci_name("drop_capabilities", c)?);
    }
    Ok(())
}

/// Adds the CRI ambient capabilities ("ALL" is not accepted there: ambient capabilities are
/// named one by one).
pub fn apply_ambient(sets: &mut CapSets, caps: Option<&api::Capability>) -> Result<()> {
    for c in caps.map(|c| c.add_ambient_capabilities.as_slice()).unwrap_or_default() {
        sets.add_ambient(&oci_name("add_ambient_capabilities", c)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn cri(add: &[&str], drop: &[&str]) -> api::Capability {
        api::Capability {
            add_capabilities: strings(add),
            drop_capabilities: strings(drop),
            add_ambient_capabilities: vec![],
        }
    }

    // This machine's bounding set: everything up to CAP_CHECKPOINT_RESTORE but CAP_SYS_RESOURCE.
    const MACHINE_MASK: u64 = 0x1fffeffffff;

    #[test]
    fn bounding_set_is_read_from_status_and_skips_missing_bits() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n";
        let caps = bounding_from_status(status).unwrap();
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains(&"CAP_SYS_RESOURCE".to_string()));
        assert!(caps.contains(&"CAP_CHECKPOINT_RESTORE".to_string()));
        assert_eq!(caps[0], "CAP_CHOWN");
        // Unknown high bits are ignored, not an error.
        assert_eq!(names_from_mask(1 << 63 | 1), vec!["CAP_CHOWN".to_string()]);
        assert!(bounding_from_status("Name: x\n").is_err());
    }

    #[test]
    fn default_set_has_containerds_fourteen_and_no_inheritable_or_ambient() {
        let s = CapSets::default_set();
        assert_eq!(s.bounding, strings(&DEFAULT_CAPS));
        assert_eq!(s.effective, s.bounding);
        assert_eq!(s.permitted, s.bounding);
        assert!(s.inheritable.is_empty() && s.ambient.is_empty());
    }

    #[test]
    fn add_all_means_the_bounding_set_then_individual_drops_apply() {
        let all = names_from_mask(MACHINE_MASK);
        let mut s = CapSets::default_set();
        apply_cri(&mut s, Some(&cri(&["ALL"], &["CHOWN"])), &all).unwrap();
        assert_eq!(s.bounding.len(), 39);
        assert!(!s.bounding.contains(&"CAP_CHOWN".to_string()));
        assert!(!s.bounding.contains(&"CAP_SYS_RESOURCE".to_string()), "not in this node's bounding set");
        assert_eq!(s.effective, s.bounding);
    }

    #[test]
    fn drop_all_then_add_gives_only_the_added() {
        let mut s = CapSets::default_set();
        apply_cri(&mut s, Some(&cri(&["NET_ADMIN", "sys_time"], &["all"])), &[]).unwrap();
        assert_eq!(s.bounding, strings(&["CAP_NET_ADMIN", "CAP_SYS_TIME"]));
        assert_eq!(s.permitted, s.bounding);
        assert!(s.inheritable.is_empty());
    }

    #[test]
    fn add_and_drop_individual_capabilities() {
        let mut s = CapSets::default_set();
        apply_cri(&mut s, Some(&cri(&["SYS_ADMIN", "CHOWN"], &["NET_RAW", "CAP_MKNOD"])), &[]).unwrap();
        assert!(s.effective.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!s.effective.contains(&"CAP_NET_RAW".to_string()));
        assert!(!s.bounding.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(s.bounding.iter().filter(|c| *c == "CAP_CHOWN").count(), 1, "no duplicates");
        assert_eq!(s.bounding.len(), 13);
    }

    #[test]
    fn unknown_capability_is_invalid_argument_naming_the_field() {
        let mut s = CapSets::default_set();
        let e = apply_cri(&mut s, Some(&cri(&["BOGUS"], &[])), &[]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("add_capabilities"), "{e}");
    }

    #[test]
    fn ambient_capabilities_go_into_every_set() {
        let mut s = CapSets::default_set();
        let c = api::Capability { add_ambient_capabilities: strings(&["NET_ADMIN"]), ..Default::default() };
        apply_ambient(&mut s, Some(&c)).unwrap();
        for set in [&s.bounding, &s.effective, &s.permitted, &s.inheritable, &s.ambient] {
            assert!(set.contains(&"CAP_NET_ADMIN".to_string()));
        }
        assert_eq!(s.ambient.len(), 1);
    }

    #[test]
    fn oci_form_leaves_out_empty_sets() {
        let oci = CapSets::default_set().to_oci().unwrap();
        assert_eq!(oci.bounding().as_ref().unwrap().len(), 14);
        assert!(oci.bounding().as_ref().unwrap().contains(&Capability::AuditWrite));
        assert!(oci.inheritable().is_none() && oci.ambient().is_none());
    }
}
