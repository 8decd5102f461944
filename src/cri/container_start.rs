//! StartContainer: the runtime creates the container in the pod's shim from its bundle and starts
//! it, in one runtime call. A failure (a missing command, a bad mount) leaves the container exited with reason
//! "StartError" and the runtime's message, as containerd reports it to the kubelet.

use std::sync::Arc;

use super::pods::Pods;
use super::store::{ContainerState, SandboxState};
use crate::engine::metadata::now_nanos;
use crate::error::{Error, Result};
use crate::task::CreateOptions;

/// containerd's exit code for a container that could not start.
pub const START_ERROR_EXIT_CODE: i32 = 128;

impl Pods {
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let id = self.store.find_container(id)?.id;
        let lock = self.store.lock(&id);
        let _guard = lock.lock().await;
        // Again under the lock: a Remove may have run in between.
        let rec = self.store.find_container(&id)?;
        if rec.state != ContainerState::Created {
            return Err(Error::precondition(format!(
                "container {id} is not in created state: {}",
                format!("{:?}", rec.state).to_lowercase()
            )));
        }
        let sandbox =
            self.store.sandbox(&rec.sandbox_id).filter(|s| s.state == SandboxState::Ready).ok_or_else(
                || {
                    Error::precondition(format!(
                        "container {id}: its pod sandbox {} is not ready",
                        rec.sandbox_id
                    ))
                },
            )?;
        let shim = self.shim(&sandbox.id).await?;
        // As containerd: the target of a TARGET pid namespace is checked again, since it may have
        // exited (and its pid been reused) since the spec named it.
        if let Err(e) = self.target_pid(&rec.config, &sandbox.id) {
            self.start_failed(&id, &e)?;
            return Err(e.context(format!("starting container {id}")));
        }
        // The log's directory is made inside the pod's log directory only (the kubelet has usually
        // made it already); the shim opens the file itself without following a symlink.
        if rec.log_path.is_some() {
            let rel = std::path::Path::new(&rec.config.log_path).parent().unwrap_or(std::path::Path::new(""));
            let dir = std::path::Path::new(&sandbox.config.log_directory);
            if let Err(e) = super::files::create_dirs_beneath(dir, rel) {
                self.start_failed(&id, &e)?;
                return Err(e.context(format!("starting container {id}")));
            }
        }
        let opts = CreateOptions {
            id: id.clone(),
            bundle: self.paths.bundle(&id),
            stdin: rec.config.stdin,
            tty: rec.config.tty,
            log_path: rec.log_path.clone(),
        };
        let started = shim.run(&opts).await;
        match started {
            Ok(pid) => {
                let now = now_nanos();
                let rec = self.store.update_container(&id, |r| {
                    if r.state == ContainerState::Created {
                        r.state = ContainerState::Running;
                    }
                    r.pid = pid;
                    // An instant exit may already be recorded: it cannot have finished before it started.
                    r.started_at = if r.finished_at > 0 { now.min(r.finished_at) } else { now };
                })?;
                self.emit(self.event(
                    &id,
                    &sandbox.id,
                    super::api::ContainerEventType::ContainerStartedEvent,
                ));
                if rec.state == ContainerState::Exited {
                    // on_exit recorded it while the start was in flight and left the event to us.
                    self.emit(self.event(
                        &id,
                        &sandbox.id,
                        super::api::ContainerEventType::ContainerStoppedEvent,
                    ));
                } else if let Ok(s) = shim.state(&id).await
                    && s.status == crate::task::ContainerStatus::Stopped
                {
                    // An exit the watcher has not delivered yet: record it now.
                    self.reconcile(&sandbox.id, &shim).await;
                }
                Ok(())
            }
            Err(e) => {
                let _ = shim.delete(&id).await;
                self.start_failed(&id, &e)?;
                Err(e.context(format!("starting container {id}")))
            }
        }
    }

    /// Records a container that could not start as exited with reason "StartError" and the error as
    /// its message, as containerd reports it.
    fn start_failed(&self, id: &str, e: &Error) -> Result<()> {
        let now = now_nanos();
        self.store.update_container(id, |r| {
            r.state = ContainerState::Exited;
            r.started_at = now;
            r.finished_at = now;
            r.exit_code = START_ERROR_EXIT_CODE;
            r.reason = "StartError".into();
            r.message = e.to_string();
        })?;
        Ok(())
    }
}
