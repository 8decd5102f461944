//! The CRI conformance suite (critest v1.36, from the workspace's critest kit) against a real berthd
//! started by `critest-config/berth-critest.sh`, with the kit's registry of look-alike images behind
//! the mirrors. Every group runs except those berth does not implement yet ([`NOT_YET`]): when one
//! lands, take it off that list so CI keeps it passing.
//!
//! The kit is found at `$BERTH_CRITEST_KIT`, else `../shared/critest` next to this checkout. Without it
//! the test fails (it is part of the suite); `BERTH_SKIP_CRITEST=1` skips it explicitly.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness;

/// critest spec regexes of what berth does not implement yet (none: every group runs).
const NOT_YET: &[&str] = &[];

/// Specs no runtime can pass offline: "public image with digest" pulls an upstream manifest digest
/// that no local look-alike can reproduce.
const OFFLINE: &str = "with digest";

fn kit() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_CRITEST_KIT") {
        return Some(PathBuf::from(p));
    }
    let sibling = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/critest");
    sibling.join("bin/critest").is_file().then_some(sibling)
}

#[test]
fn critest_groups_that_berth_passes() {
    if std::env::var("BERTH_SKIP_CRITEST").as_deref() == Ok("1") {
        eprintln!("critest skipped: BERTH_SKIP_CRITEST=1");
        return;
    }
    harness::require_prerequisites();
    let kit = kit().expect(
        "critest kit not found: set BERTH_CRITEST_KIT to the folder holding bin/critest and registry.sh \
         (or BERTH_SKIP_CRITEST=1 to skip this test)",
    );
    let registry = harness::run(Command::new(kit.join("registry.sh")).arg("start"));
    let registry = registry.trim().lines().last().unwrap_or("").to_string();
    assert!(!registry.is_empty(), "registry.sh start printed no address");

    // Short: a shim's socket is <dir>/state/pods/<64 hex>/shim.sock and must fit sun_path (107 bytes).
    let dir = harness::temp_dir("bct-");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("critest-config/berth-critest.sh");
    let skip = std::iter::once(OFFLINE).chain(NOT_YET.iter().copied()).collect::<Vec<_>>().join("|");
    let out = Command::new(&script)
        .arg("run")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "\"{critest}\" --runtime-endpoint unix://$BERTH_SOCK --image-endpoint unix://$BERTH_SOCK \
             --ginkgo.no-color --ginkgo.skip '{skip}'",
            critest = kit.join("bin/critest").display()
        ))
        .env("BERTH_TEST_REGISTRY", &registry)
        .env("BERTH_CRITEST_DIR", &dir)
        .env("BERTHD", env!("CARGO_BIN_EXE_berthd"))
        .output()
        .expect("running berth-critest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary =
        stdout.lines().filter(|l| l.starts_with("Ran ") || l.contains("Passed")).collect::<Vec<_>>();
    eprintln!("critest (skipping {skip}): {}", summary.join(" / "));
    assert!(
        out.status.success() && stdout.contains("SUCCESS!"),
        "critest failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!dir.exists(), "berth-critest.sh left {} behind", dir.display());
}
