//! Chooses the seccomp filter of a container or sandbox from its CRI security profile (or the
//! deprecated `seccomp_profile_path` string) the way containerd's `sputil` does, and loads
//! Localhost profiles. A Localhost profile may be in the OCI form (`architectures`, `syscalls` with
//! `names`) or in Docker/containerd's extended form (`archMap`, `name`, `includes`/`excludes`
//! conditions on capabilities, architectures and kernel version), which is resolved here for the
//! process's capabilities and this machine. This module reads only the profile file it is named.

use std::path::Path;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSyscall,
};
use serde::Deserialize;

use super::seccomp_default;
use crate::cri::api::{self, security_profile::ProfileType};
use crate::error::{Context, Error, ErrorKind, Result};

/// The largest profile file berth reads.
const MAX_PROFILE_BYTES: u64 = 4 << 20;

/// Which filter a process asked for, once the deprecated string form is folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChoice {
    RuntimeDefault,
    Unconfined,
    Localhost(String),
}

/// containerd's `generateSecurityProfile` for the deprecated string field: "" means nothing was
/// asked for.
fn from_path(field: &str, path: &str) -> Result<Option<SeccompChoice>> {
    Ok(Some(match path {
        "" => return Ok(None),
        "runtime/default" | "docker/default" => SeccompChoice::RuntimeDefault,
        "unconfined" => SeccompChoice::Unconfined,
        other => match other.strip_prefix("localhost/") {
            Some(p) => SeccompChoice::Localhost(p.to_string()),
            None => return Err(Error::invalid(format!("{field}: invalid profile {other:?}"))),
        },
    }))
}

/// The choice made by a security context: the typed field wins over the deprecated string.
pub fn choice(
    field: &str,
    profile: Option<&api::SecurityProfile>,
    deprecated_path: &str,
) -> Result<Option<SeccompChoice>> {
    let Some(p) = profile else { return from_path(&format!("{field}_profile_path"), deprecated_path) };
    let kind = ProfileType::try_from(p.profile_type)
        .map_err(|_| Error::invalid(format!("{field}: unknown profile type {}", p.profile_type)))?;
    if kind != ProfileType::Localhost && !p.localhost_ref.is_empty() {
        return Err(Error::invalid(format!(
            "{field}: localhost_ref must only be set for a Localhost profile"
        )));
    }
    Ok(Some(match kind {
        ProfileType::RuntimeDefault => SeccompChoice::RuntimeDefault,
        ProfileType::Unconfined => SeccompChoice::Unconfined,
        // The prefix is trimmed "just in case", as containerd does.
        ProfileType::Localhost => SeccompChoice::Localhost(
            p.localhost_ref.strip_prefix("localhost/").unwrap_or(&p.localhost_ref).into(),
        ),
    }))
}

/// What the filter is resolved against.
pub struct Target<'a> {
    /// The process's bounding set (capability-conditional rules).
    pub bounding: &'a [String],
    /// `std::env::consts::ARCH`.
    pub arch: &'a str,
    pub kernel: (u32, u32),
}

/// The OCI seccomp section for `choice`: none when privileged or unconfined; when the kernel has no
/// seccomp, anything but unconfined is an error (as containerd).
pub fn filter(
    field: &str,
    choice: Option<&SeccompChoice>,
    privileged: bool,
    enabled: bool,
    target: &Target,
) -> Result<Option<LinuxSeccomp>> {
    if privileged {
        return Ok(None);
    }
    match choice {
        None | Some(SeccompChoice::Unconfined) => Ok(None),
        Some(_) if !enabled => {
            Err(Error::precondition(format!("{field}: seccomp is not supported by this node's kernel")))
        }
        Some(SeccompChoice::RuntimeDefault) => {
            Ok(Some(seccomp_default::default_profile(target.bounding, target.arch, target.kernel)))
        }
        Some(SeccompChoice::Localhost(path)) => load_profile(field, Path::new(path), target).map(Some),
    }
}

/// A profile file: the OCI fields plus Docker's extensions.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMapEntry>,
    #[serde(default)]
    flags: Vec<LinuxSeccompFilterFlag>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Vec<SyscallRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMapEntry {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyscallRule {
    #[serde(default)]
    name: String,
    #[serde(default)]
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    includes: Condition,
    #[serde(default)]
    excludes: Condition,
}

/// Docker's `Filter`: architectures use Go's names (amd64, arm64 …).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// Go's GOARCH name of a Rust architecture name, for `includes`/`excludes`.
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The seccomp architecture of the machine itself (the one `archMap` entries are keyed by).
fn native_arch(arch: &str) -> Option<Arch> {
    Some(match arch {
        "x86_64" => Arch::ScmpArchX86_64,
        "x86" => Arch::ScmpArchX86,
        "aarch64" => Arch::ScmpArchAarch64,
        "arm" => Arch::ScmpArchArm,
        "s390x" => Arch::ScmpArchS390x,
        "riscv64" => Arch::ScmpArchRiscv64,
        "powerpc64" => Arch::ScmpArchPpc64le,
        "loongarch64" => Arch::ScmpArchLoongarch64,
        "mips64" => Arch::ScmpArchMips64,
        _ => return None,
    })
}

/// Parses a "major.minor" kernel version as Docker's profiles write it.
fn parse_kernel(field: &str, s: &str) -> Result<(u32, u32)> {
    let bad = || Error::invalid(format!("{field}: invalid minKernel {s:?}"));
    let mut it = s.split('.');
    let major = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let minor = match it.next() {
        Some(v) => v.parse().map_err(|_| bad())?,
        None => 0,
    };
    Ok((major, minor))
}

/// Loads a Localhost profile and resolves it for `target`.
pub fn load_profile(field: &str, path: &Path, target: &Target) -> Result<LinuxSeccomp> {
    if !path.is_absolute() {
        return Err(Error::invalid(format!("{field}: localhost profile path {path:?} is not absolute")));
    }
    let what = || format!("{field}: loading seccomp profile {}", path.display());
    let file = std::fs::File::open(path).context_kind(ErrorKind::InvalidArgument, what)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_PROFILE_BYTES + 1), &mut text)
        .context_kind(ErrorKind::InvalidArgument, what)?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(Error::invalid(format!("{}: larger than {MAX_PROFILE_BYTES} bytes", what())));
    }
    let profile: ProfileFile = serde_json::from_str(&text).context_kind(ErrorKind::InvalidArgument, what)?;
    resolve(profile, target).map_err(|e| e.context(what()))
}

fn resolve(p: ProfileFile, target: &Target) -> Result<LinuxSeccomp> {
    if !p.architectures.is_empty() && !p.arch_map.is_empty() {
        return Err(Error::invalid("both 'architectures' and 'archMap' are specified"));
    }
    let mut arches = p.architectures;
    if let Some(native) = native_arch(target.arch) {
        for entry in p.arch_map.iter().filter(|e| e.architecture == native) {
            arches =
                std::iter::once(entry.architecture).chain(entry.sub_architectures.iter().copied()).collect();
        }
    }
    let arch = go_arch(target.arch);
    let mut syscalls = Vec::new();
    for rule in p.syscalls {
        if !rule.name.is_empty() && !rule.names.is_empty() {
            return Err(Error::invalid(
                "'name' and 'names' were specified in the seccomp profile, use either",
            ));
        }
        let ex = &rule.excludes;
        if ex.arches.iter().any(|a| a == arch) || ex.caps.iter().any(|c| target.bounding.contains(c)) {
            continue;
        }
        if let Some(k) = &ex.min_kernel
            && target.kernel >= parse_kernel("excludes", k)?
        {
            continue;
        }
        let inc = &rule.includes;
        if (!inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch))
            || !inc.caps.iter().all(|c| target.bounding.contains(c))
        {
            continue;
        }
        if let Some(k) = &inc.min_kernel
            && target.kernel < parse_kernel("includes", k)?
        {
            continue;
        }
        let names = if rule.name.is_empty() { rule.names } else { vec![rule.name] };
        let mut s = LinuxSyscall::default();
        s.set_names(names)
            .set_action(rule.action)
            .set_errno_ret(rule.errno_ret)
            .set_args((!rule.args.is_empty()).then_some(rule.args));
        syscalls.push(s);
    }
    let mut out = LinuxSeccomp::default();
    out.set_default_action(p.default_action)
        .set_default_errno_ret(p.default_errno_ret)
        .set_architectures((!arches.is_empty()).then_some(arches))
        .set_flags((!p.flags.is_empty()).then_some(p.flags))
        .set_listener_path(p.listener_path.map(Into::into))
        .set_listener_metadata(p.listener_metadata)
        .set_syscalls((!syscalls.is_empty()).then_some(syscalls));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxSeccompOperator;

    fn target(caps: &[&str]) -> (Vec<String>, (u32, u32)) {
        (caps.iter().map(|s| s.to_string()).collect(), (5, 10))
    }

    fn load(json: &str, caps: &[&str]) -> Result<LinuxSeccomp> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        std::fs::write(&path, json).unwrap();
        let (bounding, kernel) = target(caps);
        load_profile(
            "security_context.seccomp",
            &path,
            &Target { bounding: &bounding, arch: "x86_64", kernel },
        )
    }

    fn profile(ptype: ProfileType, r: &str) -> api::SecurityProfile {
        api::SecurityProfile { profile_type: ptype as i32, localhost_ref: r.into() }
    }

    #[test]
    fn typed_field_wins_and_deprecated_strings_map_like_containerd() {
        let f = "security_context.seccomp";
        assert_eq!(choice(f, None, "").unwrap(), None);
        assert_eq!(choice(f, None, "runtime/default").unwrap(), Some(SeccompChoice::RuntimeDefault));
        assert_eq!(choice(f, None, "docker/default").unwrap(), Some(SeccompChoice::RuntimeDefault));
        assert_eq!(choice(f, None, "unconfined").unwrap(), Some(SeccompChoice::Unconfined));
        assert_eq!(
            choice(f, None, "localhost//p.json").unwrap(),
            Some(SeccompChoice::Localhost("/p.json".into()))
        );
        let e = choice(f, None, "bogus").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("seccomp_profile_path"), "{e}");
        let p = profile(ProfileType::Unconfined, "");
        assert_eq!(choice(f, Some(&p), "runtime/default").unwrap(), Some(SeccompChoice::Unconfined));
        let p = profile(ProfileType::Localhost, "localhost//x.json");
        assert_eq!(choice(f, Some(&p), "").unwrap(), Some(SeccompChoice::Localhost("/x.json".into())));
        assert!(choice(f, Some(&profile(ProfileType::RuntimeDefault, "/x")), "").is_err());
        // The default message (RuntimeDefault = 0) is what an empty typed field decodes to.
        let p = api::SecurityProfile::default();
        assert_eq!(choice(f, Some(&p), "").unwrap(), Some(SeccompChoice::RuntimeDefault));
    }

    #[test]
    fn privileged_unconfined_and_disabled_seccomp() {
        let (b, k) = target(&[]);
        let t = Target { bounding: &b, arch: "x86_64", kernel: k };
        let rd = Some(&SeccompChoice::RuntimeDefault);
        assert!(filter("f", rd, true, true, &t).unwrap().is_none());
        assert!(filter("f", rd, false, true, &t).unwrap().is_some());
        assert!(filter("f", Some(&SeccompChoice::Unconfined), false, true, &t).unwrap().is_none());
        assert!(filter("f", None, false, true, &t).unwrap().is_none());
        assert_eq!(filter("f", rd, false, false, &t).unwrap_err().kind(), ErrorKind::FailedPrecondition);
        assert!(filter("f", Some(&SeccompChoice::Unconfined), false, false, &t).unwrap().is_none());
    }

    #[test]
    fn loads_an_oci_profile_as_is() {
        let p = load(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["sethostname","setdomainname"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                            {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                             "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}],
                "unknownField": true}"#,
            &[],
        )
        .unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(p.architectures().as_ref().unwrap(), &vec![Arch::ScmpArchX86_64]);
        let s = p.syscalls().as_ref().unwrap();
        assert_eq!(s[0].names(), &vec!["sethostname".to_string(), "setdomainname".to_string()]);
        assert_eq!((s[0].action(), s[0].errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(1)));
        let arg = s[1].args().as_ref().unwrap()[0];
        assert_eq!((arg.index(), arg.value(), arg.op()), (0, 8, LinuxSeccompOperator::ScmpCmpEq));
    }

    #[test]
    fn resolves_docker_arch_map_includes_and_excludes() {
        let p = load(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86","SCMP_ARCH_X32"]},
                           {"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]}],
                "syscalls":[
                  {"name":"read","action":"SCMP_ACT_ALLOW"},
                  {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
                  {"names":["arch_prctl"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["amd64"]}},
                  {"names":["set_tls"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm64"]}},
                  {"names":["newer"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"6.2"}},
                  {"names":["older"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4.8"}},
                  {"names":["chown"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_CHOWN"]}},
                  {"names":["clone"],"action":"SCMP_ACT_ALLOW","excludes":{"arches":["amd64"]}}
                ]}"#,
            &["CAP_CHOWN"],
        )
        .unwrap();
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            p.architectures().as_ref().unwrap(),
            &vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        let names: Vec<String> =
            p.syscalls().as_ref().unwrap().iter().flat_map(|s| s.names().clone()).collect();
        assert_eq!(names, vec!["read", "arch_prctl", "older"]);
    }

    #[test]
    fn bad_profiles_are_invalid_arguments() {
        let cases = [
            r#"{"syscalls":[]}"#,
            r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],"archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"name":"a","names":["b"],"action":"SCMP_ACT_ALLOW"}]}"#,
            "not json",
        ];
        for c in cases {
            assert_eq!(load(c, &[]).unwrap_err().kind(), ErrorKind::InvalidArgument, "{c}");
        }
        let (b, k) = target(&[]);
        let t = Target { bounding: &b, arch: "x86_64", kernel: k };
        let e = load_profile("f", Path::new("/nonexistent/profile.json"), &t).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(load_profile("f", Path::new("relative.json"), &t).is_err());
    }
}
