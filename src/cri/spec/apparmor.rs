//! AppArmor for containers, as containerd does it (`GenerateApparmorSpecOpts`, `contrib/apparmor`):
//! on a host where AppArmor confines processes, a container that asks for RuntimeDefault, or for
//! nothing, runs under berth's own profile [`DEFAULT_PROFILE`], which berth writes and loads itself;
//! privileged containers and Unconfined run unconfined; Localhost names a profile the node's operator
//! loaded. On a host without AppArmor only Localhost is refused: the others run unconfined.
//!
//! This module decides and writes the profile's text; the host is reached only through the
//! [`AppArmor`] trait ([`HostAppArmor`] runs `apparmor_parser`, [`FakeAppArmor`] records), and it
//! must never confine or signal anything itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cri::api::{self, security_profile::ProfileType};
use crate::error::{Context, Error, Result};

/// The profile of containers that ask for RuntimeDefault or for nothing (containerd's is
/// `cri-containerd.apparmor.d`).
pub const DEFAULT_PROFILE: &str = "berth-default";

/// Where the kernel lists the loaded profiles, one `<name> (<mode>)` per line.
const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";
/// How long `apparmor_parser` may take to load a profile.
const PARSER_TIMEOUT: Duration = Duration::from_secs(30);

/// The host's AppArmor, as far as containers need it.
pub trait AppArmor: Send + Sync {
    /// AppArmor confines processes on this host and berth may use it.
    fn enabled(&self) -> bool;
    /// Whether the profile `name` is loaded in the kernel.
    fn is_loaded(&self, name: &str) -> Result<bool>;
    /// Loads the profile `text` defines, replacing one of the same name.
    fn load(&self, text: &str) -> Result<()>;
    /// The text of [`DEFAULT_PROFILE`] for this host.
    fn default_profile(&self) -> String;
}

/// What the default profile takes from the host's AppArmor installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileHost {
    /// `/etc/apparmor.d/abi/3.0` exists: the profile pins that feature ABI.
    pub abi_3: bool,
    /// `/etc/apparmor.d/tunables/global` exists (it defines `@{PROC}` among others).
    pub tunables: bool,
    /// `/etc/apparmor.d/abstractions/base` exists.
    pub base_abstraction: bool,
    /// The profile berthd runs under (its shims too): "unconfined" when none.
    pub daemon_profile: String,
}

impl ProfileHost {
    /// Reads what the profile needs from `/etc/apparmor.d` and berthd's own confinement.
    pub fn detect() -> ProfileHost {
        let dir = Path::new("/etc/apparmor.d");
        let current = std::fs::read_to_string("/proc/self/attr/current").unwrap_or_default();
        ProfileHost {
            abi_3: dir.join("abi/3.0").exists(),
            tunables: dir.join("tunables/global").exists(),
            base_abstraction: dir.join("abstractions/base").exists(),
            daemon_profile: profile_name(&current),
        }
    }
}

/// The profile name of a `/proc/<pid>/attr/current` line ("name (enforce)"); names hold no spaces.
fn profile_name(current: &str) -> String {
    match current.split_whitespace().next() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => "unconfined".to_string(),
    }
}

/// The text of the profile `name` that confines containers: everything a container does inside its
/// own namespaces (network, files, the capabilities its spec grants), but no mounts, no writes to
/// the kernel's knobs under /proc and /sys beyond what its namespaces own, no reading of the kernel's
/// memory or firmware, and signals and ptrace only among its own processes and from the runtime.
pub fn default_profile(name: &str, host: &ProfileHost) -> String {
    let mut out = String::new();
    if host.abi_3 {
        out.push_str("abi <abi/3.0>,\n");
    }
    if host.tunables {
        out.push_str("#include <tunables/global>\n");
    } else {
        out.push_str("@{PROC}=/proc/\n");
    }
    out.push_str(&format!("\nprofile {name} flags=(attach_disconnected,mediate_deleted) {{\n"));
    if host.base_abstraction {
        out.push_str("  #include <abstractions/base>\n\n");
    }
    out.push_str(
        "  # The container's own namespaces and its spec bound these.
  network,
  capability,
  file,
  umount,

  # Never a new mount, whatever capabilities the container has.
  deny mount,

",
    );
    // The runtimes and berth (its shims run under berthd's profile) signal the container; its own
    // processes signal each other.
    let mut senders = vec!["unconfined", "runc", "crun", host.daemon_profile.as_str()];
    senders.dedup();
    senders.sort_unstable();
    senders.dedup();
    for peer in senders {
        out.push_str(&format!("  signal (receive) peer={peer},\n"));
    }
    out.push_str(&format!("  signal (send,receive) peer={name},\n"));
    out.push_str(&format!("  ptrace (trace,tracedby,read,readby) peer={name},\n\n"));
    out.push_str(
        "  # /proc: writable only in a process's own directory (/proc/<pid>/...) and at
  # /proc/sys/kernel/shm*, which the pod's IPC namespace owns.
  deny @{PROC}/* w,
  deny @{PROC}/{[^1-9s/]*,s[^y/]*,sy[^s/]*,sys?*}/** w,
  deny @{PROC}/sys/{[^k]*,kernel/[^s]*,kernel/s[^h]*,kernel/sh[^m]*}{,/**} w,
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,

  # /sys: read-only but for the cgroup tree; firmware, power capping and the LSMs' files not at all.
  deny /sys/{[^f]*,f[^s]*,fs/[^c]*,fs/c[^g]*,fs/cg[^r]*}/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,
}
",
    );
    out
}

/// The AppArmor profile a container runs under (`None`: unconfined), from its security context's
/// typed `profile` or, when that is absent, the `deprecated` string form; RuntimeDefault and an
/// unset profile load [`DEFAULT_PROFILE`] first when it is not loaded yet.
pub fn container_profile(
    field: &str,
    profile: Option<&api::SecurityProfile>,
    deprecated: &str,
    privileged: bool,
    apparmor: &dyn AppArmor,
) -> Result<Option<String>> {
    // `None`: nothing asked for (kubernetes#51746: the runtime's default applies).
    let (kind, name) = match profile {
        Some(p) => {
            let kind = ProfileType::try_from(p.profile_type)
                .map_err(|_| Error::invalid(format!("{field}: unknown profile type {}", p.profile_type)))?;
            if kind != ProfileType::Localhost && !p.localhost_ref.is_empty() {
                return Err(Error::invalid(format!(
                    "{field}: localhost_ref must only be set for a Localhost profile"
                )));
            }
            let name = p.localhost_ref.strip_prefix("localhost/").unwrap_or(&p.localhost_ref);
            (Some(kind), name.to_string())
        }
        None => match deprecated {
            "" => (None, String::new()),
            "runtime/default" | "docker/default" => (Some(ProfileType::RuntimeDefault), String::new()),
            "unconfined" => (Some(ProfileType::Unconfined), String::new()),
            other => match other.strip_prefix("localhost/") {
                Some(n) => (Some(ProfileType::Localhost), n.to_string()),
                None => return Err(Error::invalid(format!("{field}_profile: invalid profile {other:?}"))),
            },
        },
    };
    if !apparmor.enabled() {
        // As containerd, a profile of the node's that cannot be applied is an error; the runtime's
        // default has nothing to confine with and is left out.
        return match kind {
            Some(ProfileType::Localhost) => {
                Err(Error::precondition(format!("{field}: apparmor is not enabled on this node")))
            }
            _ => Ok(None),
        };
    }
    match kind {
        Some(ProfileType::Unconfined) => Ok(None),
        None | Some(ProfileType::RuntimeDefault) if privileged => Ok(None),
        None | Some(ProfileType::RuntimeDefault) => {
            if !apparmor.is_loaded(DEFAULT_PROFILE)? {
                apparmor.load(&apparmor.default_profile()).map_err(|e| e.context(field))?;
            }
            Ok(Some(DEFAULT_PROFILE.to_string()))
        }
        Some(ProfileType::Localhost) => {
            if name.is_empty() {
                return Err(Error::invalid(format!("{field}: empty localhost profile name")));
            }
            if !apparmor.is_loaded(&name)? {
                return Err(Error::precondition(format!(
                    "{field}: apparmor profile {name:?} is not loaded on this node"
                )));
            }
            Ok(Some(name))
        }
    }
}

/// The host's AppArmor: the kernel's profile list and `apparmor_parser`.
#[derive(Debug)]
pub struct HostAppArmor {
    parser: Option<PathBuf>,
    host: ProfileHost,
}

impl HostAppArmor {
    /// containerd's `hostSupports`: the AppArmor LSM is enabled, its filesystem is mounted,
    /// `apparmor_parser` is installed and berthd does not run in a container (`$container` set);
    /// and the operator did not turn it off (`cri.disable_apparmor`).
    pub fn detect(disabled: bool) -> HostAppArmor {
        let kernel = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.starts_with('Y'))
            && Path::new("/sys/kernel/security/apparmor").exists();
        let parser = ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        let in_container = std::env::var_os("container").is_some_and(|v| !v.is_empty());
        let usable = kernel && !in_container && !disabled;
        HostAppArmor { parser: parser.filter(|_| usable), host: ProfileHost::detect() }
    }
}

impl AppArmor for HostAppArmor {
    fn enabled(&self) -> bool {
        self.parser.is_some()
    }

    fn is_loaded(&self, name: &str) -> Result<bool> {
        let loaded = std::fs::read_to_string(PROFILES).context(|| format!("reading {PROFILES}"))?;
        Ok(loaded.lines().any(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(" ("))))
    }

    fn load(&self, text: &str) -> Result<()> {
        let parser = self.parser.as_ref().ok_or_else(|| Error::precondition("apparmor is not enabled"))?;
        // -K: no cache to write; -r: replace a loaded profile of the same name. Read from stdin.
        let mut child = Command::new(parser)
            .args(["-Kr"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context(|| format!("running {}", parser.display()))?;
        let written = child.stdin.take().map(|mut stdin| stdin.write_all(text.as_bytes()));
        let deadline = Instant::now() + PARSER_TIMEOUT;
        let status = loop {
            match child.try_wait().context(|| format!("waiting for {}", parser.display()))? {
                Some(status) => break status,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::internal(format!(
                        "loading apparmor profile {DEFAULT_PROFILE}: apparmor_parser did not finish within {PARSER_TIMEOUT:?}"
                    )));
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        if !status.success() || written.is_some_and(|w| w.is_err()) {
            return Err(Error::internal(format!(
                "loading apparmor profile {DEFAULT_PROFILE}: apparmor_parser {status}: {}",
                stderr.trim()
            )));
        }
        Ok(())
    }

    fn default_profile(&self) -> String {
        default_profile(DEFAULT_PROFILE, &self.host)
    }
}

/// A host's AppArmor in memory, for tests: enabled or not, a set of loaded profiles, and the texts
/// loaded.
#[derive(Debug, Default)]
pub struct FakeAppArmor {
    enabled: bool,
    loaded: Mutex<Vec<String>>,
    loads: Mutex<Vec<String>>,
}

impl FakeAppArmor {
    /// A host without AppArmor.
    pub fn disabled() -> FakeAppArmor {
        FakeAppArmor::default()
    }

    /// A host with AppArmor and the profiles `loaded`.
    pub fn enabled(loaded: &[&str]) -> FakeAppArmor {
        FakeAppArmor {
            enabled: true,
            loaded: Mutex::new(loaded.iter().map(|s| s.to_string()).collect()),
            loads: Mutex::default(),
        }
    }

    /// The profile texts loaded so far.
    pub fn loads(&self) -> Vec<String> {
        self.loads.lock().unwrap().clone()
    }
}

impl AppArmor for FakeAppArmor {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn is_loaded(&self, name: &str) -> Result<bool> {
        Ok(self.loaded.lock().unwrap().iter().any(|p| p == name))
    }

    fn load(&self, text: &str) -> Result<()> {
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("profile "))
            .and_then(|l| l.split_whitespace().next())
            .ok_or_else(|| Error::invalid("a profile without a name"))?;
        self.loaded.lock().unwrap().push(name.to_string());
        self.loads.lock().unwrap().push(text.to_string());
        Ok(())
    }

    fn default_profile(&self) -> String {
        let host = ProfileHost {
            abi_3: true,
            tunables: true,
            base_abstraction: true,
            daemon_profile: "unconfined".into(),
        };
        default_profile(DEFAULT_PROFILE, &host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = "security_context.apparmor";

    fn profile(t: ProfileType, localhost_ref: &str) -> api::SecurityProfile {
        api::SecurityProfile { profile_type: t as i32, localhost_ref: localhost_ref.into() }
    }

    /// Issue 8 item 5: on a host with AppArmor, RuntimeDefault and an unset profile confine a
    /// container with berth-default, loaded once; privileged containers and Unconfined run
    /// unconfined; Localhost must name a loaded profile.
    #[test]
    fn decision_table_with_apparmor() {
        let aa = FakeAppArmor::enabled(&["custom"]);
        let run = |p: Option<api::SecurityProfile>, deprecated: &str, privileged: bool| {
            container_profile(FIELD, p.as_ref(), deprecated, privileged, &aa)
        };
        let default = Some(DEFAULT_PROFILE.to_string());
        assert_eq!(run(None, "", false).unwrap(), default, "unset");
        assert_eq!(aa.loads().len(), 1, "loaded on first use");
        assert!(aa.loads()[0].contains("profile berth-default flags=(attach_disconnected,mediate_deleted)"));
        assert_eq!(run(Some(profile(ProfileType::RuntimeDefault, "")), "", false).unwrap(), default);
        assert_eq!(run(None, "runtime/default", false).unwrap(), default);
        assert_eq!(aa.loads().len(), 1, "not loaded again while loaded");
        assert_eq!(run(None, "", true).unwrap(), None, "privileged, unset");
        assert_eq!(run(Some(profile(ProfileType::RuntimeDefault, "")), "", true).unwrap(), None);
        assert_eq!(run(Some(profile(ProfileType::Unconfined, "")), "", false).unwrap(), None);
        assert_eq!(run(None, "unconfined", false).unwrap(), None);
        let custom = Some("custom".to_string());
        assert_eq!(run(Some(profile(ProfileType::Localhost, "custom")), "", false).unwrap(), custom);
        assert_eq!(run(Some(profile(ProfileType::Localhost, "localhost/custom")), "", true).unwrap(), custom);
        assert_eq!(run(None, "localhost/custom", false).unwrap(), custom);

        let e = run(Some(profile(ProfileType::Localhost, "missing")), "", false).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("\"missing\" is not loaded"), "{e}");
        let e = run(Some(profile(ProfileType::Localhost, "")), "", false).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        let e = run(Some(profile(ProfileType::RuntimeDefault, "custom")), "", false).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(run(None, "weird", false).is_err());
    }

    /// Without AppArmor, RuntimeDefault and unset run unconfined without error; a Localhost profile
    /// cannot be honoured and is refused, as containerd refuses it.
    #[test]
    fn decision_table_without_apparmor() {
        let aa = FakeAppArmor::disabled();
        let run = |p: Option<api::SecurityProfile>, deprecated: &str| {
            container_profile(FIELD, p.as_ref(), deprecated, false, &aa)
        };
        assert_eq!(run(None, "").unwrap(), None);
        assert_eq!(run(Some(profile(ProfileType::RuntimeDefault, "")), "").unwrap(), None);
        assert_eq!(run(None, "runtime/default").unwrap(), None);
        assert_eq!(run(Some(profile(ProfileType::Unconfined, "")), "").unwrap(), None);
        let e = run(Some(profile(ProfileType::Localhost, "p")), "").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("not enabled"), "{e}");
        assert!(run(None, "localhost/p").is_err());
        assert!(aa.loads().is_empty());
    }

    #[test]
    fn default_profile_text() {
        let host = ProfileHost {
            abi_3: false,
            tunables: false,
            base_abstraction: false,
            daemon_profile: "berthd".into(),
        };
        let text = default_profile("berth-default", &host);
        assert!(text.starts_with("@{PROC}=/proc/\n"), "{text}");
        assert!(!text.contains("#include"));
        for rule in [
            "profile berth-default flags=(attach_disconnected,mediate_deleted) {",
            "  deny mount,\n",
            "  signal (receive) peer=berthd,\n",
            "  signal (receive) peer=runc,\n",
            "  signal (send,receive) peer=berth-default,\n",
            "  ptrace (trace,tracedby,read,readby) peer=berth-default,\n",
            "  deny @{PROC}/sysrq-trigger rwklx,\n",
            "  deny /sys/firmware/** rwklx,\n",
        ] {
            assert!(text.contains(rule), "no {rule:?} in\n{text}");
        }
        assert_eq!(text.matches("peer=unconfined").count(), 1);
        let host = ProfileHost { abi_3: true, tunables: true, base_abstraction: true, ..host };
        let text = default_profile("berth-default", &host);
        assert!(text.starts_with("abi <abi/3.0>,\n#include <tunables/global>\n"), "{text}");
        assert!(text.contains("  #include <abstractions/base>\n"));
        assert_eq!(profile_name("berthd (enforce)\n"), "berthd");
        assert_eq!(profile_name("unconfined\n"), "unconfined");
        assert_eq!(profile_name(""), "unconfined");
    }

    /// Where apparmor_parser is installed, it compiles the profile (without loading it).
    #[test]
    fn apparmor_parser_accepts_the_default_profile() {
        let Some(parser) = ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
        else {
            eprintln!("skipping: apparmor_parser is not installed");
            return;
        };
        for host in [
            ProfileHost::detect(),
            ProfileHost {
                abi_3: false,
                tunables: false,
                base_abstraction: false,
                daemon_profile: "unconfined".into(),
            },
        ] {
            let mut child = Command::new(parser)
                .args(["-Q", "-K"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(default_profile(DEFAULT_PROFILE, &host).as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{host:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
