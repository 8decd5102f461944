//! ExecSync, UpdateContainerResources and ReopenContainerLog: calls on a running container through
//! the pod's shim. ExecSync runs the command with the container's process settings (user, env, cwd,
//! capabilities, seccomp…), kills it at the timeout, and caps the output it keeps.

use std::sync::Arc;
use std::time::Duration;

use super::api;
use super::pods::Pods;
use super::store::ContainerState;
use crate::error::{Error, ErrorKind, Result};
use crate::task::ExecSyncOptions;

/// Output kept of each of stdout and stderr of an ExecSync (the rest is read and dropped). Both
/// together, with the message framing, must fit one 16 MiB gRPC message (berth's default send limit
/// and the kubelet's receive limit), or a chatty probe fails with OutOfRange instead of its output.
pub const EXEC_SYNC_MAX_OUTPUT: usize = (8 << 20) - 4096;

impl Pods {
    /// The record of the running container `id` (or a unique prefix of it): NotFound if unknown,
    /// FailedPrecondition if not running.
    pub(crate) fn running(&self, id: &str) -> Result<super::store::ContainerRecord> {
        let rec = self.store.find_container(id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::precondition(format!("container {} is not running", rec.id)));
        }
        Ok(rec)
    }

    /// The container's OCI process with `args`, for an exec.
    pub(crate) fn exec_process(&self, id: &str, args: &[String], tty: bool) -> Result<Vec<u8>> {
        let path = self.paths.bundle(id).join("config.json");
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).map_err(|e| Error::internal(format!("reading {}: {e}", path.display())))?,
        )
        .map_err(|e| Error::internal(format!("parsing {}: {e}", path.display())))?;
        let mut process = spec.get("process").cloned().unwrap_or_default();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(tty);
        if let Some(p) = process.as_object_mut() {
            p.remove("consoleSize");
        }
        serde_json::to_vec(&process).map_err(|e| Error::internal(format!("encoding exec process: {e}")))
    }

    pub async fn exec_sync(self: &Arc<Self>, req: api::ExecSyncRequest) -> Result<api::ExecSyncResponse> {
        if req.cmd.is_empty() {
            return Err(Error::invalid("ExecSync: cmd must not be empty"));
        }
        let rec = self.running(&req.container_id)?;
        let shim = self.shim(&rec.sandbox_id).await?;
        let timeout = Duration::from_secs(req.timeout.max(0) as u64);
        let opts = ExecSyncOptions {
            id: rec.id.clone(),
            process_json: self.exec_process(&rec.id, &req.cmd, false)?,
            timeout,
            max_output_bytes: EXEC_SYNC_MAX_OUTPUT,
        };
        let r = shim.exec_sync(&opts).await?;
        if r.timed_out {
            return Err(Error::new(
                ErrorKind::DeadlineExceeded,
                format!("command {:?} timed out after {}s", req.cmd, req.timeout),
            ));
        }
        Ok(api::ExecSyncResponse { stdout: r.stdout, stderr: r.stderr, exit_code: r.exit_code })
    }

    pub async fn update_container_resources(
        self: &Arc<Self>,
        req: api::UpdateContainerResourcesRequest,
    ) -> Result<()> {
        let id = self.store.find_container(&req.container_id)?.id;
        let lock = self.store.lock(&id);
        let _guard = lock.lock().await;
        // Again under the lock: a Remove may have run in between.
        let rec = self.store.find_container(&id)?;
        let Some(linux) = req.linux else { return Ok(()) };
        let mut resources = super::spec::container_resources(Some(&linux), &self.env, Vec::new())?;
        resources.set_devices(None);
        let json = serde_json::to_vec(&resources)
            .map_err(|e| Error::internal(format!("encoding resources: {e}")))?;
        if rec.state == ContainerState::Running {
            self.shim(&rec.sandbox_id).await?.update(&id, &json).await?;
        }
        // Keep the spec and the record in step, so a later start and ContainerStatus see the update.
        let path = self.paths.bundle(&id).join("config.json");
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(mut spec) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            let mut merged = spec["linux"]["resources"].clone();
            if let (Some(m), Ok(serde_json::Value::Object(new))) =
                (merged.as_object_mut(), serde_json::to_value(&resources))
            {
                for (k, v) in new {
                    m.insert(k, v);
                }
            }
            spec["linux"]["resources"] = merged;
            if let Ok(b) = serde_json::to_vec_pretty(&spec) {
                crate::fsutil::write_atomic(&path, &b, 0o600)?;
            }
        }
        self.store.update_container(&id, |r| {
            r.config.linux.get_or_insert_with(Default::default).resources = Some(linux);
        })?;
        Ok(())
    }

    pub async fn reopen_container_log(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = self.running(id)?;
        self.shim(&rec.sandbox_id).await?.reopen_log(&rec.id).await
    }
}
