//! CNI plugins a killed berthd left running. berthd's own plugins die with it (PR_SET_PDEATHSIG),
//! but what they delegated to (an IPAM plugin such as host-local) does not: an ADD of that kind
//! finishing after the restarted berthd rolled the pod back (its DEL found nothing to release yet)
//! keeps the address for good. So at start, before any rollback, berthd waits for every process
//! that runs a CNI command on one of its network namespaces to end, and kills what is still running
//! after `grace`. Processes are found by their environment (`CNI_NETNS=<netns dir>/...`), which
//! every plugin of a chain inherits.

use std::path::Path;
use std::time::{Duration, Instant};

/// The pids of live processes whose environment holds `CNI_NETNS=<netns_dir>/…`. Zombies have no
/// environment left and are not counted.
pub fn plugins_on(netns_dir: &Path) -> Vec<i32> {
    let needle = format!("CNI_NETNS={}/", netns_dir.display());
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v.starts_with(needle.as_bytes())))
        })
        .collect()
}

/// Waits up to `grace` for the CNI plugins still working on namespaces under `netns_dir` to end,
/// then SIGKILLs the rest and waits (briefly) for them to go. Returns how many were found at first.
pub async fn wait_for_orphaned_plugins(netns_dir: &Path, grace: Duration) -> usize {
    let found = plugins_on(netns_dir);
    if found.is_empty() {
        return 0;
    }
    tracing::info!(pids = ?found, "waiting for CNI plugins a previous berthd left running");
    let deadline = Instant::now() + grace;
    let mut left = found.clone();
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = plugins_on(netns_dir);
    }
    if !left.is_empty() {
        tracing::warn!(pids = ?left, ?grace, "killing CNI plugins a previous berthd left running");
        for pid in &left {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !plugins_on(netns_dir).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(netns_dir: &Path, script: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", script])
            .env("CNI_NETNS", netns_dir.join("pod-a"))
            .env("CNI_COMMAND", "ADD")
            .spawn()
            .expect("sh")
    }

    #[tokio::test]
    async fn a_plugin_that_ends_by_itself_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let netns = dir.path().join("netns");
        let done = dir.path().join("done");
        let mut p = plugin(&netns, &format!("sleep 0.3; touch {}", done.display()));
        let other = plugin(&dir.path().join("other"), "sleep 5");
        let found = plugins_on(&netns);
        assert!(found.contains(&(p.id() as i32)) && !found.contains(&(other.id() as i32)), "{found:?}");
        assert!(wait_for_orphaned_plugins(&netns, Duration::from_secs(30)).await >= 1);
        assert!(done.exists(), "returned before the plugin finished its work");
        assert!(p.wait().unwrap().success());
        let mut other = other;
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[tokio::test]
    async fn a_plugin_still_running_after_the_grace_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let netns = dir.path().join("netns");
        let mut p = plugin(&netns, "sleep 100");
        assert!(wait_for_orphaned_plugins(&netns, Duration::from_millis(200)).await >= 1);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(p.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(plugins_on(&netns).is_empty());
        assert_eq!(wait_for_orphaned_plugins(&netns, Duration::from_secs(1)).await, 0);
    }
}
