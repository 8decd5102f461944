//! What berthd does at start, before serving: it rebuilds its view from the database and the shims.
//! CNI plugins a killed berthd left running are waited for (network::orphans), then sandboxes and
//! containers whose creation a crash cut short are rolled back; every pod's shim is
//! reconnected and its exits (including those that happened while berthd was down) are recorded; a
//! pod whose shim is gone has its containers recorded as exited. Finally anything on disk that no
//! record owns (network namespaces, bundles, rootfs snapshots, image volumes, shims, pod directories) is removed,
//! so a crash at any point leaks nothing.

use std::collections::HashSet;
use std::sync::Arc;

use super::pods::{LABEL_OWNER, Pods, blocking, cleanup};
use super::store::{ContainerState, SandboxState};

fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

impl Pods {
    pub async fn recover(self: &Arc<Self>) {
        let started = std::time::Instant::now();
        // Before any rollback: a plugin still finishing an ADD would re-take what the DEL released.
        let grace = self.config.cni.plugin_timeout.min(std::time::Duration::from_secs(10));
        crate::network::orphans::wait_for_orphaned_plugins(&self.paths.netns, grace).await;
        for c in self.store.containers() {
            if c.state == ContainerState::Creating {
                tracing::info!(container = %c.id, "rolling back a container whose creation was interrupted");
                cleanup("rolling back container", &c.id, self.remove_container_locked(&c.id)).await;
            }
        }
        for s in self.store.sandboxes() {
            if s.state == SandboxState::Creating {
                tracing::info!(sandbox = %s.id, "rolling back a pod sandbox whose creation was interrupted");
                self.destroy_sandbox(&s.id).await;
                continue;
            }
            match self.launcher.connect(&self.paths.shim_dir(&s.id)).await {
                Ok(shim) => self.adopt_shim(&s.id, shim),
                Err(e) => {
                    tracing::info!(sandbox = %s.id, error = %e, "the pod's shim is gone");
                    self.shim_gone(&s.id).await;
                }
            }
        }
        self.sweep_orphans().await;
        tracing::info!(
            sandboxes = self.store.sandboxes().len(),
            containers = self.store.containers().len(),
            elapsed = ?started.elapsed(),
            "recovered"
        );
    }

    async fn sweep_orphans(self: &Arc<Self>) {
        let sandboxes: HashSet<String> = self.store.sandboxes().into_iter().map(|s| s.id).collect();
        let containers: HashSet<String> = self.store.containers().into_iter().map(|c| c.id).collect();
        let owned = |id: &str| sandboxes.contains(id) || containers.contains(id);

        for id in dir_entries(&self.paths.pods) {
            if sandboxes.contains(&id) {
                continue;
            }
            if let Ok(shim) = self.launcher.connect(&self.paths.shim_dir(&id)).await {
                tracing::info!(shim = %id, "stopping an orphaned shim");
                for c in shim.list().await.unwrap_or_default() {
                    let _ = shim.delete(&c.id).await;
                }
                let _ = shim.shutdown().await;
            }
            let _ = std::fs::remove_dir_all(self.paths.shim_dir(&id));
        }
        for id in dir_entries(&self.paths.netns) {
            if !sandboxes.contains(&id) {
                let path = self.paths.netns(&id);
                cleanup(
                    "removing an orphaned netns",
                    &id,
                    blocking(move || crate::network::netns::remove(&path)),
                )
                .await;
            }
        }
        for id in dir_entries(&self.paths.bundles) {
            if !owned(&id) {
                cleanup("removing an orphaned bundle", &id, self.remove_rootfs(&id)).await;
            }
        }
        for id in dir_entries(&self.paths.sandboxes) {
            if !sandboxes.contains(&id) {
                let dir = self.paths.sandbox_dir(&id);
                let _ = super::files::unmount(&dir.join("shm"));
                // Before the directory goes: never descend into a mounted image.
                if !cleanup("removing orphaned image volumes", &id, self.release_image_volumes(&id)).await {
                    continue;
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        if let Ok(snaps) = self.engine.snapshots.list() {
            for s in snaps {
                if let Some(owner) = s.labels.get(LABEL_OWNER)
                    && !owned(owner)
                {
                    cleanup("removing an orphaned rootfs", owner, self.remove_rootfs(&s.key)).await;
                }
            }
        }
    }
}
