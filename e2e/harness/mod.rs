//! The e2e harness: real registries (Debian's `docker-registry`), test images built here from
//! busybox-static, a real `berthd` process per test (optionally with a pod network of its own), a CRI
//! client over its unix socket, kubelet-shaped pod and container configs, and a leak inventory.
//! It must never mock berth: if a scenario passes here, a kubelet would work against the same binary.
//! Harness calls panic with a message that says what failed (they run inside tests), and every
//! process or directory they create is removed again, even when the test panics.

pub mod berthd;
pub mod cri;
pub mod disk;
pub mod fs;
pub mod images;
pub mod layer;
pub mod leaks;
pub mod metrics;
pub mod net;
pub mod pod;
pub mod registry;
pub mod stream;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub use berthd::Berthd;
pub use cri::Cri;
pub use images::{Hostile, images};
pub use leaks::Leaks;
pub use registry::Registry;

/// Debian packages the suite needs; `./test.sh` installs the same list.
pub const PACKAGES: &str = "docker-registry skopeo busybox-static umoci openssl apache2-utils curl runc crun \
     containerd containernetworking-plugins iptables protobuf-compiler util-linux iproute2 bsdutils";

/// Programs the harness runs itself.
const TOOLS: &[&str] = &["docker-registry", "skopeo", "htpasswd", "umoci", "sh"];

/// Checks once per process that we are root and the tools are installed; panics with the fix if not.
pub fn require_prerequisites() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        let mut missing = Vec::new();
        if !nix::unistd::geteuid().is_root() {
            missing.push("root (run the e2e tests as root)".to_string());
        }
        for tool in TOOLS {
            if which(tool).is_none() {
                missing.push(format!("`{tool}` in PATH"));
            }
        }
        if !std::path::Path::new(images::BUSYBOX).is_file() {
            missing.push(format!("{} (busybox-static)", images::BUSYBOX));
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "e2e prerequisites missing: {}; on Debian 12 run `./test.sh` or `apt-get install {PACKAGES}`",
                missing.join(", ")
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The full path of `program` found in PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Runs a command to completion and returns its stdout; panics with the command line, exit status and
/// stderr when it fails.
pub fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("running {shown}: {e}"));
    if !out.status.success() {
        panic!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh directory under the system temp dir, returned as a path that nothing deletes automatically
/// (the owner removes it, possibly from another process).
pub fn temp_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temp dir: {e}"))
        .keep()
}
