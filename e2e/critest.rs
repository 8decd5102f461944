//! The CRI conformance suite (critest, cri-tools at the version tools/versions pins) against a real
//! berthd started by `critest-config/berth-critest.sh`, with the project's own test registry
//! (`e2e/images/registry.sh`) behind the mirrors. Every group runs except those berth does not
//! implement yet ([`NOT_YET`]): when one lands, take it off that list so CI keeps it passing.
//!
//! critest is built by `tools/build.sh critest` (into a cache outside the repo), the registry and its
//! images by `e2e/images/registry.sh start`: the test needs nothing outside the repository but Debian
//! packages, Go and the module proxy on a cold machine. `BERTH_CRITEST_KIT`, when set, names another
//! kit instead (a folder holding `bin/critest` and a `registry.sh` whose `start` prints the address),
//! as a cross-check of this one; `BERTH_SKIP_CRITEST=1` skips the test explicitly.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness;

/// critest spec regexes of what berth does not implement yet.
const NOT_YET: &[&str] = &[
    // New in critest v1.37 ("returning metrics descriptors", "listing pod sandbox metrics"): they want
    // cAdvisor's full set of container metrics (container_blkio_device_usage_total,
    // container_file_descriptors, container_fs_*, container_memory_kernel_usage, container_oom_events_total,
    // container_sockets, container_spec_*, container_start_time_seconds, container_threads) from
    // ListMetricDescriptors and ListPodSandboxMetrics; berth's src/cri/stats.rs has a subset.
    "should support metrics operations",
];

/// Specs no runtime can pass offline: "public image with digest" pulls an upstream manifest digest
/// that no local look-alike can reproduce.
const OFFLINE: &str = "with digest";

/// Where critest and the registry come from.
struct Suite {
    critest: PathBuf,
    registry_sh: PathBuf,
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The last line of a command's stdout: where tools/build.sh and registry.sh print their answer.
fn last_line(out: &str) -> String {
    out.trim().lines().last().unwrap_or("").trim().to_string()
}

fn suite() -> Suite {
    if let Some(kit) = std::env::var_os("BERTH_CRITEST_KIT") {
        let kit = PathBuf::from(kit);
        return Suite { critest: kit.join("bin/critest"), registry_sh: kit.join("registry.sh") };
    }
    let bin = last_line(&harness::run(Command::new(repo_path("tools/build.sh")).args(["critest", "crictl"])));
    assert!(!bin.is_empty(), "tools/build.sh printed no bin dir");
    Suite { critest: Path::new(&bin).join("critest"), registry_sh: repo_path("e2e/images/registry.sh") }
}

#[test]
fn critest_groups_that_berth_passes() {
    if std::env::var("BERTH_SKIP_CRITEST").as_deref() == Ok("1") {
        eprintln!("critest skipped: BERTH_SKIP_CRITEST=1");
        return;
    }
    harness::require_prerequisites();
    let suite = suite();
    let registry = last_line(&harness::run(Command::new(&suite.registry_sh).arg("start")));
    assert!(!registry.is_empty(), "{} start printed no address", suite.registry_sh.display());

    // Short: a shim's socket is <dir>/state/pods/<64 hex>/shim.sock and must fit sun_path (107 bytes).
    let dir = harness::temp_dir("bct-");
    let script = repo_path("critest-config/berth-critest.sh");
    let skip = std::iter::once(OFFLINE).chain(NOT_YET.iter().copied()).collect::<Vec<_>>().join("|");
    let out = Command::new(&script)
        .arg("run")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "\"{critest}\" --runtime-endpoint unix://$BERTH_SOCK --image-endpoint unix://$BERTH_SOCK \
             --ginkgo.no-color --ginkgo.skip '{skip}'",
            critest = suite.critest.display()
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
    eprintln!("critest {} (skipping {skip}): {}", suite.critest.display(), summary.join(" / "));
    assert!(
        out.status.success() && stdout.contains("SUCCESS!"),
        "critest failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!dir.exists(), "berth-critest.sh left {} behind", dir.display());
}
