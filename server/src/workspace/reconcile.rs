//! Boot-time reconcile of the store with containerd: interrupted creates are rolled back,
//! interrupted deletes finished, desired states enforced, vanished containers rebuilt (or the
//! workspace marked FAILED), and containers the store does not know reported.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use tracing::{info, warn};

use super::locks::WorkspaceGuard;
use super::manager::{DEFAULT_STOP_TIMEOUT, Manager};
use crate::error::{Reason, Result};
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
    /// Workspaces left as they were because containerd did not answer.
    pub deferred: u32,
}

impl ReconcileReport {
    fn add(&mut self, other: &ReconcileReport) {
        self.started += other.started;
        self.stopped += other.stopped;
        self.rolled_back += other.rolled_back;
    }
}

/// How often, and how long apart, a reconcile retries a workspace while containerd does not
/// answer (1 s, 2 s, 4 s, 8 s, 16 s): a containerd restarting with berth is no reason to mark
/// healthy workspaces FAILED.
const TRANSIENT_RETRIES: u32 = 5;

/// How many workspaces are reconciled at the same time.
const RECONCILE_CONCURRENCY: usize = 4;

impl Manager {
    /// Brings workspace networks in line with the store, before any task starts (their specs
    /// name the namespace files): see [`crate::network::Network::reconcile`]. A failure here
    /// must stop the server: without berth's table, workspaces would reach the host.
    pub async fn reconcile_network(&self) -> Result<crate::network::NetworkReport> {
        let mut owned = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_workspaces(after.as_deref(), 200, &BTreeMap::new()).await?;
            owned.extend(
                page.workspaces
                    .into_iter()
                    .filter(|record| record.state != WorkspaceState::Deleting)
                    .map(|record| (record.id, record.spec.network)),
            );
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        self.network.reconcile(&owned).await
    }

    /// Starts the boot reconcile: takes the lock of every stored workspace at once (so a call
    /// for a workspace waits for that workspace's reconcile, not for all of them), then
    /// reconciles them in a background task and marks the Manager reconciled. Returns once the
    /// locks are held, so the server can serve at once; health stays NOT_SERVING until the
    /// reconcile finishes. The returned handle yields the report.
    pub async fn start_reconcile(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<ReconcileReport>> {
        let mut held = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_workspaces(after.as_deref(), 200, &BTreeMap::new()).await?;
            for record in page.workspaces {
                let guard = self.lock(&record.id).await;
                held.push((record, guard));
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        self.reconciling.lock().expect("reconciling set").extend(held.iter().map(|(record, _)| record.id.clone()));
        let manager = self.clone();
        Ok(self.tasks.spawn(async move {
            let report = manager.reconcile_held(held).await;
            manager.reconciled.send_replace(true);
            report
        }))
    }

    /// Brings containerd in line with the store now (the boot reconcile, awaited; for tests).
    #[cfg(test)]
    pub async fn reconcile(self: &Arc<Self>) -> Result<ReconcileReport> {
        let handle = self.start_reconcile().await?;
        handle.await.map_err(|err| crate::error::Error::internal(format!("the reconcile task failed: {err}")))
    }

    async fn reconcile_held(&self, held: Vec<(WorkspaceRecord, WorkspaceGuard)>) -> ReconcileReport {
        let report = Mutex::new(ReconcileReport::default());
        let mount_dir = self.mount_dir();
        let stale_mounts =
            tokio::task::spawn_blocking(move || crate::data::clear_stale_mounts(&mount_dir)).await.unwrap_or(0);
        // Best effort: leftover leases only delay garbage collection.
        let stale_leases = self.runtime.remove_stale_leases().await.unwrap_or_else(|err| {
            warn!(error = %err, "cannot remove stale leases");
            0
        });
        let known: HashSet<String> = held.iter().map(|(record, _)| record.id.as_str().to_owned()).collect();
        futures::stream::iter(held)
            .for_each_concurrent(RECONCILE_CONCURRENCY, |(record, guard)| {
                let report = &report;
                async move {
                    let id = record.id.clone();
                    self.reconcile_one(record, report).await;
                    drop(guard);
                    self.reconciling.lock().expect("reconciling set").remove(&id);
                    self.reconcile_progress.notify_waiters();
                }
            })
            .await;
        let mut report = report.into_inner().expect("reconcile report");
        report.stale_mounts = stale_mounts;
        report.stale_leases = stale_leases;
        report.checked = u32::try_from(known.len()).unwrap_or(u32::MAX);
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
            deferred = report.deferred,
            orphans = report.orphans.len(),
            stale_leases = report.stale_leases,
            stale_mounts = report.stale_mounts,
            "reconciled the store with containerd"
        );
        report
    }

    /// Reconciles one workspace (its lock is held by the caller). containerd not answering is
    /// retried with backoff and, if it persists, leaves the workspace as it was (its next
    /// operation tries again); other errors mark it FAILED.
    async fn reconcile_one(&self, mut record: WorkspaceRecord, report: &Mutex<ReconcileReport>) {
        let mut attempt = 0;
        let outcome = loop {
            let mut counts = ReconcileReport::default();
            let outcome = match record.state {
                // A create or delete that a crash interrupted, or a create whose rollback failed:
                // finish removing what it made.
                WorkspaceState::Creating | WorkspaceState::Deleting => self.finish_removal(&record, &mut counts).await,
                WorkspaceState::Failed if record.current_version == 0 => {
                    self.finish_removal(&record, &mut counts).await
                }
                _ => self.reconcile_settled(&mut record, &mut counts).await,
            };
            match outcome {
                Err(err) if err.reason() == Reason::ContainerdUnavailable && attempt < TRANSIENT_RETRIES => {
                    let pause = Duration::from_secs(1 << attempt);
                    warn!(workspace_id = %record.id, error = %err, retry_in_secs = pause.as_secs(), "containerd did not answer; retrying the reconcile");
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                }
                outcome => {
                    report.lock().expect("reconcile report").add(&counts);
                    break outcome;
                }
            }
        };
        let Err(err) = outcome else {
            return;
        };
        if err.reason() == Reason::ContainerdUnavailable {
            warn!(workspace_id = %record.id, error = %err, "containerd still does not answer; the workspace is left as it was");
            report.lock().expect("reconcile report").deferred += 1;
            return;
        }
        warn!(workspace_id = %record.id, error = %err, "reconcile failed; marking the workspace failed");
        report.lock().expect("reconcile report").failed += 1;
        record.state = WorkspaceState::Failed;
        record.failure_reason = err.reason().as_str().to_owned();
        record.failure_message = format!("at boot: {err}");
        if let Err(err) = self.save(&mut record).await {
            warn!(workspace_id = %record.id, error = %err, "cannot mark the workspace failed");
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

    /// A created workspace: an interrupted snapshot operation is finished or undone first (the
    /// record may name a layer a commit consumed), then the desired state is enforced, then
    /// snapshots of the workspace that the store does not list are removed.
    async fn reconcile_settled(&self, record: &mut WorkspaceRecord, report: &mut ReconcileReport) -> Result<()> {
        if self.settle_snapshot_operation(&record.id).await? != super::snapshot::Settled::Nothing {
            *record = self.record(&record.id).await?;
        }
        self.enforce_desired_state(record, report).await?;
        match self.sweep_snapshots(record).await {
            Ok(0) => {}
            Ok(removed) => info!(workspace_id = %record.id, removed, "removed snapshots the store does not list"),
            Err(err) => {
                warn!(workspace_id = %record.id, error = %err, "cannot check the workspace's snapshots for leftovers")
            }
        }
        Ok(())
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
