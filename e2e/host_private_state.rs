//! Nothing a container writes, and none of its secrets, is reachable by another host user (issue 8,
//! item 1; containerd's CVE-2021-41103). A root container leaves a setuid-root copy of busybox in its
//! /tmp; the host user `nobody` can neither run it through the bundle's rootfs mount nor through the
//! snapshot's upper directory, nor read the bundle's config.json (the container's env) or the
//! metadata database. A walk of root and state finds no entry another user can reach. berthd runs
//! with umask 0077 and the shim with 0022, so non-root containers still read /etc/hosts and traverse
//! the mount points runc creates. A root left by an older berth (0755 directories, a 0644 database)
//! is made private at the next start. The rootfs is not mounted nosuid: setuid binaries keep working
//! inside containers.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::leaks::{assert_back_to, processes, shims_of};
use crate::harness::{Berthd, Leaks, Registry, images};

const NOBODY: &str = "65534";
const SECRET: &str = "berth-e2e-secret-4b1d";

/// Runs `args` as the unprivileged host user nobody; returns (success, stdout + stderr). A shell
/// started as nobody execs the command: setpriv itself still holds root's capabilities while it
/// looks up the program it runs, so `setpriv … -- <path>` would reach paths nobody cannot.
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            "exec \"$@\"",
            "sh",
        ])
        .args(args)
        .output()
        .expect("running setpriv (util-linux)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Every path under `top` (not following symlinks, descending into mounts) with its mode and
/// whether another user could reach it: every directory from `top` down to its parent has o+x.
fn walk(top: &Path, reachable: bool, out: &mut Vec<(PathBuf, u32, bool)>) {
    let Ok(rd) = std::fs::read_dir(top) else { return };
    let top_mode = std::fs::symlink_metadata(top).map(|m| m.mode()).unwrap_or(0);
    let children_reachable = reachable && top_mode & 0o001 != 0;
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
        out.push((e.path(), meta.mode(), children_reachable));
        // Only what another user reaches matters; below a private directory, containers own the modes.
        if meta.is_dir() && children_reachable {
            walk(&e.path(), true, out);
        }
    }
}

/// The entries of root and state another user can reach and do something with: anything but the
/// top directories themselves (0711: traversable, not listable) and sockets (their own mode decides).
fn exposed(berthd: &Berthd) -> Vec<String> {
    let mut bad = Vec::new();
    for top in [berthd.root(), berthd.state()] {
        let mode = std::fs::symlink_metadata(top).unwrap().mode() & 0o7777;
        if mode & 0o006 != 0 {
            bad.push(format!("{} {mode:o}", top.display()));
        }
        let mut all = Vec::new();
        walk(top, true, &mut all);
        for (path, mode, reachable) in all {
            let is_socket = mode & 0o170000 == 0o140000;
            if reachable && !is_socket && mode & 0o007 != 0 {
                bad.push(format!("{} {:o}", path.display(), mode & 0o7777));
            }
        }
    }
    // A regression exposes whole trees: the first entries say enough.
    let n = bad.len();
    bad.truncate(12);
    if n > bad.len() {
        bad.push(format!("… {} more", n - bad.len()));
    }
    bad
}

/// The `Umask:` of process `pid`.
fn umask_of(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Umask:")).map(|s| s.trim().to_string()).unwrap()
}

fn find_named(top: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(top) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            find_named(&e.path(), name, out);
        } else if e.file_name() == name {
            out.push(e.path());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn another_host_user_reaches_nothing_a_container_wrote() {
    let reg = Registry::shared();
    let mut berthd = Berthd::started_with_network(&[reg]);
    // The test's own temp dir is private; open it so that only berth's modes protect root and state.
    std::fs::set_permissions(berthd.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");

    let volume = tempfile::Builder::new().prefix("berth-e2e-token-").tempdir().unwrap();
    std::fs::set_permissions(volume.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(volume.path().join("token"), "t0ken\n").unwrap();
    std::fs::set_permissions(volume.path().join("token"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let pod = berthd.pod("private");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let c = pod.container("root", &image).command(&["sleep", "100000"]).env("API_TOKEN", SECRET).build();
    let root_ctr = cri.create_start(&pod_id, &pod, c).await.expect("root container");
    cri.sh(&root_ctr, "mkdir /tmp/suid && cp /bin/busybox /tmp/suid/busybox && chmod 4755 /tmp/suid/busybox")
        .await;

    // setuid binaries inside containers keep working: the rootfs is not mounted nosuid.
    let root_mount = cri.sh(&root_ctr, "grep ' / / ' /proc/self/mountinfo").await;
    assert!(!root_mount.contains("nosuid"), "the rootfs is mounted nosuid: {root_mount}");
    let c = pod
        .container("nonroot", &image)
        .command(&["sleep", "100000"])
        .run_as_user(1000)
        .mount(volume.path(), "/var/run/secrets/berth.test/sa", true)
        .build();
    let nonroot = cri.create_start(&pod_id, &pod, c).await.expect("non-root container");
    // What a non-root container needs from the files berth writes and the mount points runc creates.
    let seen = cri
        .sh(&nonroot, "cat /etc/hosts /etc/hostname /etc/resolv.conf >/dev/null && cat /var/run/secrets/berth.test/sa/token && ls / >/dev/null && id -u")
        .await;
    assert_eq!(seen, "t0ken\n1000\n", "a non-root container could not read what it needs");

    assert_eq!(exposed(&berthd), Vec::<String>::new(), "entries of root/state reachable by other users");
    // The reproduction: as nobody on the host, through every path that leads to the copy.
    let mut copies = Vec::new();
    find_named(berthd.root(), "busybox", &mut copies);
    find_named(berthd.state(), "busybox", &mut copies);
    copies.retain(|p| p.ends_with("tmp/suid/busybox"));
    assert!(copies.len() >= 2, "expected the copy in the upper dir and the rootfs mount, found {copies:?}");
    // busybox runs as the applet its file is named after: /tmp/suid/busybox id -u.
    for copy in &copies {
        assert_eq!(std::fs::metadata(copy).unwrap().mode() & 0o7777, 0o4755);
        let (ok, out) = as_nobody(&[copy.to_str().unwrap(), "id", "-u"]);

        assert!(!ok && out.contains("ermission denied"), "nobody ran {}: {out}", copy.display());
    }
    let mut configs = Vec::new();
    find_named(berthd.state(), "config.json", &mut configs);
    assert!(!configs.is_empty(), "no bundle config.json under {}", berthd.state().display());
    let mut secret_files = configs.clone();
    secret_files.push(berthd.root().join("meta.redb"));
    for f in &secret_files {
        let (ok, out) = as_nobody(&["cat", f.to_str().unwrap()]);
        assert!(!ok && !out.contains(SECRET), "nobody read {}", f.display());
    }
    for c in &configs {
        assert_eq!(std::fs::metadata(c).unwrap().mode() & 0o777, 0o600, "{}", c.display());
    }

    // The umasks: berthd private from its first instant, the shim (and runc under it) 0022.
    assert_eq!(umask_of(berthd.pid().unwrap() as i32), "0077");
    let shims = shims_of(&berthd, &processes());
    assert!(!shims.is_empty());
    for s in &shims {
        assert_eq!(umask_of(s.pid), "0022", "shim {}", s.pid);
    }

    // A root that an older berth left open is made private at the next start.
    berthd.stop();
    let bundles = berthd.state().join("bundles");
    for (p, m) in [
        (berthd.root().join("meta.redb"), 0o644),
        (bundles.clone(), 0o755),
        (berthd.root().to_path_buf(), 0o755),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    assert!(!exposed(&berthd).is_empty(), "the test did not open anything");
    berthd.start();
    assert_eq!(exposed(&berthd), Vec::<String>::new(), "entries still reachable after a restart");
    assert_eq!(std::fs::metadata(&bundles).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(berthd.root().join("meta.redb")).unwrap().mode() & 0o777, 0o600);

    let mut cri = berthd.cri().await;
    assert_eq!(cri.sh(&root_ctr, "echo alive").await, "alive\n", "the pod did not survive the restart");
    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
