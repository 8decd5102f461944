//! StopContainer and RemoveContainer, idempotent: an unknown id is success. Stop sends the config's
//! stop_signal (else the image's STOPSIGNAL, else SIGTERM), waits up to the timeout, then SIGKILLs every process of the container;
//! the wait does not hold the container's lock, so a later Stop with a shorter timeout, a Remove or
//! StopPodSandbox kills at once.
//! Remove kills a running container first, then deletes it from the shim, unmounts and removes its
//! rootfs snapshot and bundle, and releases its name.

use std::sync::Arc;
use std::time::Duration;

use super::api;
use super::pods::{Pods, blocking};
use super::store::{ContainerRecord, ContainerState, container_name};
use crate::error::{Error, ErrorKind, Result};
use crate::task::ShimApi;

/// How long a SIGKILLed container may take to be reaped before Stop fails.
const KILL_WAIT: Duration = Duration::from_secs(60);

/// The real-time signal range as container processes see it: glibc keeps 32 and 33 for itself. Docker
/// and containerd (moby/sys/signal) number `RTMIN+n` and `RTMAX-n` from these too.
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// A signal by name ("SIGTERM", "TERM", "RTMIN+3") or number ("15"), as images give STOPSIGNAL.
pub fn parse_signal(s: &str) -> Option<i32> {
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let offset = |rest: &str| if rest.is_empty() { Some(0) } else { rest.parse::<i32>().ok() };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let n = SIGRTMIN + offset(rest.strip_prefix('+').unwrap_or(rest))?;
        return (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let n = SIGRTMAX - offset(rest.strip_prefix('-').unwrap_or(rest))?;
        return (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n);
    }
    let name = match name {
        "CLD" => "CHLD",
        "POLL" => "IO",
        "IOT" => "ABRT",
        other => other,
    };
    format!("SIG{name}").parse::<nix::sys::signal::Signal>().ok().map(|s| s as i32)
}

/// The number of a CRI stop signal (cri-api v0.36); `None` for RUNTIME_DEFAULT or a value CRI does
/// not define. CRI names them as signal names with `PLUS`/`MINUS` for `+`/`-` (`SIGRTMINPLUS3`).
pub fn cri_signal_number(signal: i32) -> Option<i32> {
    let signal = api::Signal::try_from(signal).ok().filter(|s| *s != api::Signal::RuntimeDefault)?;
    parse_signal(&signal.as_str_name().replacen("PLUS", "+", 1).replacen("MINUS", "-", 1))
}

/// The CRI name of a signal number (the first CRI gives it, so SIGCHLD rather than SIGCLD);
/// RUNTIME_DEFAULT when CRI has none.
pub fn cri_signal(number: i32) -> api::Signal {
    (1..)
        .map_while(|v| api::Signal::try_from(v).ok())
        .find(|s| cri_signal_number(*s as i32) == Some(number))
        .unwrap_or(api::Signal::RuntimeDefault)
}

/// The signal StopContainer sends first, in containerd's order: the container config's stop_signal,
/// else the image's STOPSIGNAL, else SIGTERM.
pub fn stop_signal_of(rec: &ContainerRecord) -> i32 {
    cri_signal_number(rec.config.stop_signal)
        .or_else(|| parse_signal(&rec.stop_signal))
        .unwrap_or(libc::SIGTERM)
}

impl Pods {
    /// Stops a container. The grace period is waited without the container's lock, so that a later
    /// StopContainer with a shorter timeout (the kubelet's forced delete sends 0), StopPodSandbox or
    /// RemoveContainer kills at once; every waiting Stop returns once the container is dead.
    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout: i64) -> Result<()> {
        let Some(id) = self.store.resolve_container(id)? else { return Ok(()) };
        if timeout > 0 {
            let Some((shim, sandbox)) = self.send_stop_signal(&id).await? else { return Ok(()) };
            match tokio::time::timeout(Duration::from_secs(timeout as u64), shim.wait(&id)).await {
                Ok(Ok(ev)) => {
                    self.on_exit(&sandbox, &ev);
                    return Ok(());
                }
                // Removed (by a RemoveContainer that killed it) while we waited.
                Ok(Err(e)) if e.is_not_found() => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => tracing::info!(container = id, timeout, "stop timeout passed: killing"),
            }
        }
        let lock = self.store.lock(&id);
        let _guard = lock.lock().await;
        self.kill_container_locked(&id).await
    }

    /// Sends a running container its stop signal ([`stop_signal_of`]) under its
    /// lock; returns its shim and sandbox, or `None` when it is not running.
    async fn send_stop_signal(self: &Arc<Self>, id: &str) -> Result<Option<(Arc<dyn ShimApi>, String)>> {
        let lock = self.store.lock(id);
        let _guard = lock.lock().await;
        let Some(rec) = self.store.container(id) else { return Ok(None) };
        let Some(shim) = self.running_shim(&rec).await? else { return Ok(None) };
        shim.kill(id, stop_signal_of(&rec), false).await?;
        Ok(Some((shim, rec.sandbox_id)))
    }

    /// The shim of a running container; `None` when it is not running (any more).
    async fn running_shim(self: &Arc<Self>, rec: &ContainerRecord) -> Result<Option<Arc<dyn ShimApi>>> {
        if rec.state != ContainerState::Running {
            return Ok(None);
        }
        match self.shim(&rec.sandbox_id).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::Unavailable || e.is_not_found() => {
                // No shim: the container cannot be running any more.
                self.shim_gone(&rec.sandbox_id).await;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// SIGKILLs every process of a running container and waits for its exit; the caller holds its
    /// lock.
    pub async fn kill_container_locked(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(rec) = self.store.container(id) else { return Ok(()) };
        let Some(shim) = self.running_shim(&rec).await? else { return Ok(()) };
        shim.kill(id, libc::SIGKILL, true).await?;
        let ev = tokio::time::timeout(KILL_WAIT, shim.wait(id)).await.map_err(|_| {
            Error::new(ErrorKind::DeadlineExceeded, format!("container {id} did not exit after SIGKILL"))
        })??;
        self.on_exit(&rec.sandbox_id, &ev);
        Ok(())
    }

    pub async fn remove_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(id) = self.store.resolve_container(id)? else { return Ok(()) };
        let lock = self.store.lock(&id);
        let _guard = lock.lock().await;
        self.remove_container_locked(&id).await
    }

    /// Removes a container in any state; the caller holds its lock (or owns it, in a rollback).
    pub async fn remove_container_locked(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(rec) = self.store.container(id) else { return Ok(()) };
        if rec.state == ContainerState::Running {
            self.kill_container_locked(id).await?;
        }
        if let Ok(shim) = self.shim(&rec.sandbox_id).await {
            shim.delete(id).await?;
        }
        self.remove_rootfs(id).await?;
        let event = self.event(id, &rec.sandbox_id, super::api::ContainerEventType::ContainerDeletedEvent);
        self.store.delete_container(id)?;
        if rec.state != ContainerState::Creating {
            self.emit(event);
        }
        if let (Some(cm), Some(sm)) =
            (&rec.config.metadata, self.store.sandbox(&rec.sandbox_id).and_then(|s| s.config.metadata))
        {
            self.store.release(&container_name(cm, &sm), id);
        }
        Ok(())
    }

    /// Unmounts and removes an object's rootfs snapshot and its bundle directory (all idempotent).
    pub async fn remove_rootfs(&self, id: &str) -> Result<()> {
        let bundle = self.paths.bundle(id);
        let snapshots = self.engine.snapshots.clone();
        let key = id.to_string();
        blocking(move || {
            super::files::unmount(&bundle.join("rootfs"))?;
            match snapshots.remove(&key) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            match std::fs::remove_dir_all(&bundle) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::internal(format!("removing {}: {e}", bundle.display()))),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8 item 12: a Stop waiting out a long grace period does not hold up a later Stop with
    /// timeout 0 (the kubelet's forced delete): that one kills at once, and both return once the
    /// container is dead.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_later_stop_without_grace_kills_at_once() {
        // Hang guards only: nothing here waits for time to pass.
        const GUARD: Duration = Duration::from_secs(120);
        let t = crate::cri::pods::fixture::test_pods(false, None).await;
        t.shim.ignore_signal(libc::SIGTERM);
        let pods = t.pods.clone();
        let patient = tokio::spawn(async move { pods.stop_container("c1", 600).await });
        tokio::time::timeout(GUARD, async {
            while !t.shim.calls().iter().any(|c| c == "kill c1 15") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("hang guard: the first Stop never sent SIGTERM");
        tokio::time::timeout(GUARD, t.pods.stop_container("c1", 0))
            .await
            .expect("hang guard: StopContainer(0) waited for the first Stop's grace period")
            .unwrap();
        let rec = t.pods.store.container("c1").unwrap();
        assert_eq!((rec.state, rec.exit_code), (ContainerState::Exited, 137));
        tokio::time::timeout(GUARD, patient)
            .await
            .expect("hang guard: the first Stop did not return with the exit")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn stop_signals_parse_like_docker() {
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(37));
        assert_eq!(parse_signal("RTMAX-1"), Some(63));
        assert_eq!(parse_signal("SIGRTMAX"), Some(64));
        assert_eq!(parse_signal("SIGRTMIN+31"), None);
        assert_eq!(parse_signal("SIGPOLL"), Some(libc::SIGIO));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn every_cri_signal_has_a_number_and_names_come_back() {
        assert_eq!(cri_signal_number(api::Signal::RuntimeDefault as i32), None);
        assert_eq!(cri_signal_number(66), None);
        let mut numbers = std::collections::BTreeSet::new();
        for v in 1..=65 {
            let n = cri_signal_number(v).unwrap_or_else(|| panic!("CRI signal {v} has no number"));
            numbers.insert(n);
            assert_eq!(cri_signal_number(cri_signal(n) as i32), Some(n));
        }
        // 1..=31 and 34..=64: only the three aliases (SIGCLD, SIGPOLL, SIGIOT) share a number.
        assert_eq!(numbers.len(), 62, "{numbers:?}");
        assert_eq!(cri_signal_number(api::Signal::Sigrtminplus3 as i32), Some(37));
        assert_eq!(cri_signal_number(api::Signal::Sigrtmaxminus14 as i32), Some(50));
        assert_eq!(cri_signal(libc::SIGCHLD), api::Signal::Sigchld);
        assert_eq!(cri_signal(libc::SIGUSR1), api::Signal::Sigusr1);
        assert_eq!(cri_signal(32), api::Signal::RuntimeDefault);
    }

    /// cri-api v0.36: the config's stop_signal wins over the image's STOPSIGNAL, and the status says
    /// which signal a stop sends.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_config_stop_signal_wins_over_the_image() {
        let t = crate::cri::pods::fixture::test_pods(false, None).await;
        let status = |t: &crate::cri::pods::fixture::TestPods| {
            let req = api::ContainerStatusRequest { container_id: "c1".into(), verbose: false };
            t.pods.container_status(req).unwrap().status.unwrap().stop_signal
        };
        assert_eq!(status(&t), api::Signal::Sigterm as i32, "neither sets one");
        t.pods.store.update_container("c1", |r| r.stop_signal = "SIGQUIT".into()).unwrap();
        assert_eq!(status(&t), api::Signal::Sigquit as i32, "the image's");
        t.pods.store.update_container("c1", |r| r.config.stop_signal = api::Signal::Sigusr1 as i32).unwrap();
        assert_eq!(status(&t), api::Signal::Sigusr1 as i32, "the config's");
        t.pods.stop_container("c1", 30).await.unwrap();
        let calls = t.shim.calls();
        assert!(calls.iter().any(|c| c == &format!("kill c1 {}", libc::SIGUSR1)), "{calls:?}");
        assert!(!calls.iter().any(|c| c == &format!("kill c1 {}", libc::SIGQUIT)), "{calls:?}");
    }
}
