//! Boot-time reconcile of the store with containerd: interrupted creates are rolled back,
//! interrupted deletes finished, desired states enforced, vanished containers rebuilt (or the
//! workspace marked FAILED), and containers the store does not know reported.

use std::collections::{BTreeMap, HashSet};

use tracing::{info, warn};

use super::manager::{DEFAULT_STOP_TIMEOUT, Manager};
use crate::error::Result;
use crate::model::{DesiredState, WorkspaceId, WorkspaceRecord, WorkspaceState};
use crate::runtime::ContainerOwner;

/// What a reconcile did, for the boot log.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub checked: u32,
    pub started: u32,
    pub stopped: u32,
    pub rolled_back: u32,
    pub failed: u32,
    pub orphans: Vec<String>,
    pub stale_leases: u32,
    pub stale_mounts: u32,
}

impl Manager {
    /// Brings containerd in line with the store. Errors for one workspace mark it FAILED and
    /// do not stop the others.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let mount_dir = self.mount_dir();
        report.stale_mounts =
            tokio::task::spawn_blocking(move || crate::data::clear_stale_mounts(&mount_dir)).await.unwrap_or(0);
        // Best effort: leftover leases only delay garbage collection.
        match self.runtime.remove_stale_leases().await {
            Ok(removed) => report.stale_leases = removed,
            Err(err) => warn!(error = %err, "cannot remove stale leases"),
        }
        let mut known = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_workspaces(after.as_deref(), 200, &BTreeMap::new()).await?;
            for record in page.workspaces {
                known.insert(record.id.as_str().to_owned());
                report.checked += 1;
                self.reconcile_one(record, &mut report).await;
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let containers = self.runtime.list_containers().await.unwrap_or_else(|err| {
            warn!(error = %err, "cannot list containers to report unknown ones");
            Vec::new()
        });
        for id in containers {
            if known.contains(&id) {
                continue;
            }
            warn!(container_id = %id, namespace = %self.config.namespace, "container not known to the store; left alone");
            if let Ok(workspace_id) = WorkspaceId::parse(&id) {
                self.event(
                    &workspace_id,
                    "orphan_detected",
                    "container in the namespace that berth's store does not know",
                )
                .await;
            }
            report.orphans.push(id);
        }
        info!(
            checked = report.checked,
            started = report.started,
            stopped = report.stopped,
            rolled_back = report.rolled_back,
            failed = report.failed,
            orphans = report.orphans.len(),
            stale_leases = report.stale_leases,
            stale_mounts = report.stale_mounts,
            "reconciled the store with containerd"
        );
        Ok(report)
    }

    async fn reconcile_one(&self, mut record: WorkspaceRecord, report: &mut ReconcileReport) {
        let lock = self.lock_for(&record.id);
        let _guard = lock.lock().await;
        let outcome = match record.state {
            // A create or delete that a crash interrupted, or a create whose rollback failed:
            // finish removing what it made.
            WorkspaceState::Creating | WorkspaceState::Deleting => self.finish_removal(&record, report).await,
            WorkspaceState::Failed if record.current_version == 0 => self.finish_removal(&record, report).await,
            _ => self.enforce_desired_state(&mut record, report).await,
        };
        if let Err(err) = outcome {
            warn!(workspace_id = %record.id, error = %err, "reconcile failed; marking the workspace failed");
            report.failed += 1;
            record.state = WorkspaceState::Failed;
            record.failure_reason = err.reason().as_str().to_owned();
            record.failure_message = format!("at boot: {err}");
            if let Err(err) = self.save(&mut record).await {
                warn!(workspace_id = %record.id, error = %err, "cannot mark the workspace failed");
            }
        }
    }

    async fn finish_removal(&self, record: &WorkspaceRecord, report: &mut ReconcileReport) -> Result<()> {
        let removed = self.remove_everything(record).await;
        if removed.is_ok() {
            report.rolled_back += 1;
            info!(workspace_id = %record.id, state = record.state.as_str(), "removed what an unfinished create or delete left behind");
            self.event(&record.id, "deleted", "unfinished create or delete cleaned up at boot").await;
        }
        removed
    }

    async fn enforce_desired_state(&self, record: &mut WorkspaceRecord, report: &mut ReconcileReport) -> Result<()> {
        let running = self.runtime.task(record.id.as_str()).await?.is_some_and(|task| task.running);
        match record.desired_state {
            DesiredState::Running if !running => {
                self.bring_up(record).await?;
                report.started += 1;
            }
            DesiredState::Stopped if running => {
                self.runtime.stop_task(record.id.as_str(), DEFAULT_STOP_TIMEOUT).await?;
                record.state = WorkspaceState::Stopped;
                self.save(record).await?;
                report.stopped += 1;
            }
            DesiredState::Stopped
                if self.runtime.container_owner(record.id.as_str()).await? == ContainerOwner::Absent =>
            {
                // Rebuilt on the next start; nothing runs now.
                warn!(workspace_id = %record.id, "container is gone; it is rebuilt when the workspace starts");
            }
            _ => {}
        }
        Ok(())
    }
}
