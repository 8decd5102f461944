//! StopContainer and RemoveContainer, idempotent: an unknown id is success. Stop sends the image's
//! STOPSIGNAL (else SIGTERM), waits up to the timeout, then SIGKILLs every process of the container.
//! Remove kills a running container first, then deletes it from the shim, unmounts and removes its
//! rootfs snapshot and bundle, and releases its name.

use std::sync::Arc;
use std::time::Duration;

use super::pods::{Pods, blocking};
use super::store::{ContainerState, container_name};
use crate::error::{Error, ErrorKind, Result};

/// How long a SIGKILLed container may take to be reaped before Stop fails.
const KILL_WAIT: Duration = Duration::from_secs(60);

/// A signal by name ("SIGTERM", "TERM", "15"), as images give STOPSIGNAL.
pub fn parse_signal(s: &str) -> Option<i32> {
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
    name.parse::<nix::sys::signal::Signal>().ok().map(|s| s as i32)
}

impl Pods {
    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout: i64) -> Result<()> {
        let Some(id) = self.store.resolve_container(id)? else { return Ok(()) };
        let lock = self.store.lock(&id);
        let _guard = lock.lock().await;
        self.stop_container_locked(&id, timeout).await
    }

    /// Stops a container; the caller holds its lock.
    pub async fn stop_container_locked(self: &Arc<Self>, id: &str, timeout: i64) -> Result<()> {
        let Some(rec) = self.store.container(id) else { return Ok(()) };
        if rec.state != ContainerState::Running {
            return Ok(());
        }
        let shim = match self.shim(&rec.sandbox_id).await {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::Unavailable || e.is_not_found() => {
                // No shim: the container cannot be running any more.
                self.shim_gone(&rec.sandbox_id).await;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if timeout > 0 {
            let signal = parse_signal(&rec.stop_signal).unwrap_or(libc::SIGTERM);
            shim.kill(id, signal, false).await?;
            if let Ok(ev) = tokio::time::timeout(Duration::from_secs(timeout as u64), shim.wait(id)).await {
                self.on_exit(&rec.sandbox_id, &ev?);
                return Ok(());
            }
            tracing::info!(container = id, timeout, "stop timeout passed: killing");
        }
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
            self.stop_container_locked(id, 0).await?;
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

    #[test]
    fn stop_signals_parse_like_docker() {
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+3"), None);
    }
}
