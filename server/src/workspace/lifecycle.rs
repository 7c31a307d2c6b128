//! Start, stop, delete and the /data operations (preserve, restore, reset) of a workspace.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use super::manager::{DEFAULT_STOP_TIMEOUT, Manager, ensure_settled};
use crate::data::{MountedRootfs, WritableLayer};
use crate::error::{Error, Reason, Result};
use crate::model::{DesiredState, WorkspaceId, WorkspaceInfo, WorkspaceRecord, WorkspaceState};
use crate::runtime::{ContainerOwner, PullPolicy};

impl Manager {
    /// Starts a workspace (idempotent); a container that vanished is rebuilt from the store,
    /// keeping its snapshot when it still exists.
    pub async fn start(self: &Arc<Self>, workspace_id: &str) -> Result<WorkspaceInfo> {
        let id = workspace_id.to_owned();
        self.detached("start", workspace_id, |manager| async move { manager.start_now(&id).await.map(Some) })
            .await
            .map(expect_info)
    }

    /// Stops a workspace (idempotent): SIGTERM to its processes, then PID 1, SIGKILL to all after
    /// `timeout`, task deleted. The stop is persisted across server restarts. A stop already in
    /// flight answers a retry, whatever the retry's timeout.
    pub async fn stop(self: &Arc<Self>, workspace_id: &str, timeout: Option<Duration>) -> Result<WorkspaceInfo> {
        let id = workspace_id.to_owned();
        self.detached(
            "stop",
            workspace_id,
            move |manager| async move { manager.stop_now(&id, timeout).await.map(Some) },
        )
        .await
        .map(expect_info)
    }

    /// Deletes a workspace from any state, archiving /data first with `preserve_data`.
    pub async fn delete(self: &Arc<Self>, workspace_id: &str, preserve_data: bool) -> Result<()> {
        let id = workspace_id.to_owned();
        let kind = if preserve_data { "delete-preserving" } else { "delete" };
        self.detached(kind, workspace_id, move |manager| async move {
            manager.delete_now(&id, preserve_data).await.map(|()| None)
        })
        .await
        .map(|_| ())
    }

    /// Replaces /data with the archive preserved at deletion, then removes the archive.
    pub async fn restore_data(self: &Arc<Self>, workspace_id: &str) -> Result<WorkspaceInfo> {
        let id = workspace_id.to_owned();
        self.detached(
            "restore-data",
            workspace_id,
            |manager| async move { manager.restore_data_now(&id).await.map(Some) },
        )
        .await
        .map(expect_info)
    }

    /// Empties /data.
    pub async fn reset_data(self: &Arc<Self>, workspace_id: &str) -> Result<WorkspaceInfo> {
        let id = workspace_id.to_owned();
        self.detached("reset-data", workspace_id, |manager| async move { manager.reset_data_now(&id).await.map(Some) })
            .await
            .map(expect_info)
    }

    /// Runs a mutating operation in its own task, so a caller that goes away (client reset,
    /// deadline) cannot cut it half-way: it finishes and releases the workspace lock. The same
    /// operation on the same workspace already in flight is joined instead of queued, so
    /// retries cannot pile up; the server's shutdown waits for the task.
    async fn detached<F, Fut>(
        self: &Arc<Self>,
        kind: &'static str,
        workspace_id: &str,
        operation: F,
    ) -> Result<Option<WorkspaceInfo>>
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: Future<Output = Result<Option<WorkspaceInfo>>> + Send + 'static,
    {
        if self.tasks.is_closed() {
            return Err(shutting_down());
        }
        let manager = self.clone();
        let outcome =
            self.in_flight.run(kind, workspace_id, || operation(manager), |task| drop(self.tasks.spawn(task)));
        outcome.await
    }

    /// Starts a workspace (idempotent); a container that vanished is rebuilt from the store,
    /// keeping its snapshot when it still exists.
    async fn start_now(&self, workspace_id: &str) -> Result<WorkspaceInfo> {
        let id = WorkspaceId::parse(workspace_id)?;
        let _guard = self.lock(&id).await;
        let mut record = self.record(&id).await?;
        ensure_settled(&record, "starting it")?;
        // A snapshot operation that failed half-way (containerd went away) is finished first:
        // until then the record may name a writable layer that a commit consumed.
        if self.settle_snapshot_operation(&id).await? != super::snapshot::Settled::Nothing {
            record = self.record(&id).await?;
        }
        record.desired_state = DesiredState::Running;
        self.save(&mut record).await?;
        self.bring_up(&mut record).await?;
        Ok(self.info(record).await)
    }

    /// Makes the task run, rebuilding the container first if needed, and records it.
    pub(super) async fn bring_up(&self, record: &mut WorkspaceRecord) -> Result<()> {
        let already_running = self.runtime.task(record.id.as_str()).await?.is_some_and(|task| task.running);
        if !already_running {
            match self.runtime.container_owner(record.id.as_str()).await? {
                ContainerOwner::Berth => {}
                ContainerOwner::Absent => self.rebuild_container(record).await?,
                ContainerOwner::Foreign => return Err(foreign_container(record)),
            }
            // A task that ended on its own may leave its root open in the file gate: it must
            // not keep the old overlay alive beside the new task's.
            self.file_gates.forget_root(&record.id).await;
            self.runtime.start_task(record.id.as_str(), &record.snapshot_key).await?;
            record.last_start_time = Some(OffsetDateTime::now_utc());
            info!(workspace_id = %record.id, "workspace started");
        }
        // A stored RUNNING without a running task was observed as STOPPED (see `info`).
        let previous = match record.state {
            WorkspaceState::Running => WorkspaceState::Stopped,
            state => state,
        };
        record.state = WorkspaceState::Running;
        record.failure_reason.clear();
        record.failure_message.clear();
        self.save(record).await?;
        if !already_running {
            self.state_changed(&record.id, previous, WorkspaceState::Running, "", "running").await;
        }
        Ok(())
    }

    /// Re-creates a vanished container from the stored spec. Its snapshot is kept when it
    /// exists; otherwise a fresh one is prepared from the image (the old filesystem is gone).
    async fn rebuild_container(&self, record: &mut WorkspaceRecord) -> Result<()> {
        // Nobody watches a rebuild's pull: the receiver is dropped, so sends never wait.
        let (progress, _) = tokio::sync::mpsc::channel(1);
        let image = self.runtime.pull_image(&record.spec.image, PullPolicy::IfNotPresent, &progress).await?;
        if !self.runtime.snapshot_exists(&record.snapshot_key).await? {
            warn!(workspace_id = %record.id, "the workspace snapshot is gone; rebuilding from the image");
            record.snapshot_key = format!("{}-active-{}", record.id, OffsetDateTime::now_utc().unix_timestamp_nanos());
            self.event(&record.id, "rebuilt", "snapshot was missing; filesystem rebuilt from the image").await;
        }
        record.image_digest = image.digest.clone();
        self.save(record).await?;
        self.create_container_for(record, &image, None).await?;
        info!(workspace_id = %record.id, "container rebuilt from the store");
        Ok(())
    }

    /// Stops a workspace (idempotent): SIGTERM, SIGKILL to all after `timeout`, task deleted.
    /// The stop is persisted, so the workspace stays stopped across server restarts.
    async fn stop_now(&self, workspace_id: &str, timeout: Option<Duration>) -> Result<WorkspaceInfo> {
        let id = WorkspaceId::parse(workspace_id)?;
        let _guard = self.lock(&id).await;
        let mut record = self.record(&id).await?;
        ensure_settled(&record, "stopping it")?;
        record.desired_state = DesiredState::Stopped;
        self.save(&mut record).await?;
        self.bring_down(&mut record, timeout.unwrap_or(DEFAULT_STOP_TIMEOUT)).await?;
        Ok(self.info(record).await)
    }

    async fn bring_down(&self, record: &mut WorkspaceRecord, timeout: Duration) -> Result<()> {
        let was_running = self
            .ending_processes(
                &record.id,
                "the workspace was stopped",
                false,
                self.runtime.stop_task(record.id.as_str(), timeout),
            )
            .await?;
        if was_running {
            record.last_stop_time = Some(OffsetDateTime::now_utc());
        }
        if record.state != WorkspaceState::Failed {
            record.state = WorkspaceState::Stopped;
        }
        self.save(record).await?;
        if was_running {
            info!(workspace_id = %record.id, "workspace stopped");
            let message = if record.state == WorkspaceState::Failed { "failed" } else { "stopped" };
            self.state_changed(&record.id, WorkspaceState::Running, record.state, &record.failure_reason, message)
                .await;
        }
        Ok(())
    }

    /// Deletes a workspace from any state. With `preserve_data`, /data is archived first; if
    /// that fails nothing is deleted and the workspace runs again if it ran before.
    async fn delete_now(&self, workspace_id: &str, preserve_data: bool) -> Result<()> {
        let id = WorkspaceId::parse(workspace_id)?;
        let _guard = self.lock(&id).await;
        let mut record = self.record(&id).await?;
        if preserve_data {
            // The task stays stopped after archiving: the deletion follows. Only a failed
            // archive starts it again, leaving the workspace as it was.
            let was_running = self
                .ending_processes(
                    &id,
                    "the workspace was deleted",
                    false,
                    self.runtime.stop_task(id.as_str(), DEFAULT_STOP_TIMEOUT),
                )
                .await?;
            let archive = self.preserved_archive(&id);
            let archived = self
                .with_data_dir(&record, move |data_dir| {
                    crate::data::preserve_to_file(data_dir, &archive, &mut |_| {}).map(|_| ())
                })
                .await;
            if let Err(err) = archived {
                if was_running {
                    self.restart_after_failure(&record).await;
                }
                return Err(err);
            }
            self.event(&id, "data_preserved", "/data archived before deletion").await;
        }
        record.state = WorkspaceState::Deleting;
        self.save(&mut record).await?;
        self.ending_processes(&id, "the workspace was deleted", true, self.remove_everything(&record)).await?;
        self.restarts.forget(&id);
        self.event(&id, "deleted", if preserve_data { "deleted; /data preserved" } else { "deleted" }).await;
        info!(workspace_id = %id, preserve_data, "workspace deleted");
        Ok(())
    }

    /// Replaces /data with the archive preserved at deletion, then removes the archive.
    async fn restore_data_now(&self, workspace_id: &str) -> Result<WorkspaceInfo> {
        let id = WorkspaceId::parse(workspace_id)?;
        let _guard = self.lock(&id).await;
        let record = self.record(&id).await?;
        ensure_settled(&record, "restoring data")?;
        let archive = self.preserved_archive(&id);
        if !tokio::fs::try_exists(&archive).await.unwrap_or(false) {
            return Err(Error::new(
                Reason::PreservedDataNotFound,
                format!(
                    "no preserved data exists for workspace {id}; delete a workspace with preserve_data to create one"
                ),
            ));
        }
        self.while_stopped(&record, self.replace_data(&record, archive.clone())).await?;
        if let Err(err) = tokio::fs::remove_file(&archive).await {
            warn!(workspace_id = %id, error = %err, "cannot remove the restored archive");
        }
        self.event(&id, "data_restored", "preserved /data restored").await;
        Ok(self.info(record).await)
    }

    /// Empties /data.
    async fn reset_data_now(&self, workspace_id: &str) -> Result<WorkspaceInfo> {
        let id = WorkspaceId::parse(workspace_id)?;
        let _guard = self.lock(&id).await;
        let record = self.record(&id).await?;
        ensure_settled(&record, "resetting data")?;
        let emptied = self.with_data_dir(&record, |data_dir| crate::data::empty_dir(data_dir).map(|_| ()));
        self.while_stopped(&record, emptied).await?;
        self.event(&id, "data_reset", "/data emptied").await;
        Ok(self.info(record).await)
    }

    /// Runs `work` (which reaches /data on the host) with the task stopped (an overlay upper dir
    /// must not be mounted twice), then starts the task again if it ran before, also on failure.
    async fn while_stopped(&self, record: &WorkspaceRecord, work: impl Future<Output = Result<()>>) -> Result<()> {
        let was_running = self.runtime.task(record.id.as_str()).await?.is_some_and(|task| task.running);
        if was_running {
            let why = "the workspace was stopped for a /data operation";
            self.ending_processes(
                &record.id,
                why,
                false,
                self.runtime.stop_task(record.id.as_str(), DEFAULT_STOP_TIMEOUT),
            )
            .await?;
        }
        let outcome = work.await;
        if was_running {
            if outcome.is_err() {
                self.restart_after_failure(record).await;
            } else {
                self.runtime.start_task(record.id.as_str(), &record.snapshot_key).await?;
            }
        }
        outcome
    }

    /// Runs `stop` (which ends the workspace's task) so that the `end` of every process started
    /// through ProcessService says `why`, no stream outlives the task, and no file operation
    /// holds the running root meanwhile.
    pub(super) async fn ending_processes<T>(
        &self,
        id: &WorkspaceId,
        why: &str,
        forget: bool,
        stop: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.processes.workspace_ending(id.as_str(), why);
        let files = self.file_gates.quiesce(id).await;
        let outcome = stop.await;
        drop(files);
        if forget && outcome.is_ok() {
            self.file_gates.forget(id);
        }
        match &outcome {
            Ok(_) => self.processes.workspace_ended(id.as_str(), forget),
            Err(_) => self.processes.workspace_not_ending(id.as_str(), why),
        }
        outcome
    }

    /// Starts the task again after a failed data operation; a failure here is logged so the
    /// caller sees the original error.
    async fn restart_after_failure(&self, record: &WorkspaceRecord) {
        if let Err(err) = self.runtime.start_task(record.id.as_str(), &record.snapshot_key).await {
            warn!(workspace_id = %record.id, error = %err, "cannot start the workspace again after a failed data operation");
        }
    }

    /// Swaps the preserved archive in as /data in the stopped workspace's writable layer (see
    /// [`crate::data::replace_data_dir`]: atomic whether /data comes from an image layer or not).
    async fn replace_data(&self, record: &WorkspaceRecord, archive: PathBuf) -> Result<()> {
        let mounts = self.runtime.snapshot_mounts(&record.snapshot_key).await?;
        let layer = WritableLayer::from_mounts(&mounts)?;
        tokio::task::spawn_blocking(move || crate::data::replace_data_dir(&layer, &archive))
            .await
            .map_err(|err| Error::internal(format!("the /data worker failed: {err}")))?
    }

    /// Mounts the workspace snapshot on the host (the task must not run) and runs `work` on its
    /// /data (created when missing) in a blocking thread.
    pub(super) async fn with_data_dir<F>(&self, record: &WorkspaceRecord, work: F) -> Result<()>
    where
        F: FnOnce(&Path) -> Result<()> + Send + 'static,
    {
        self.with_rootfs(record, move |rootfs| work(&crate::data::data_dir(rootfs)?)).await
    }

    /// Mounts the workspace snapshot on the host (nosuid, nodev, noexec; the task must not run)
    /// and runs `work` on the mounted root in a blocking thread; the mount ends with `work`.
    pub(super) async fn with_rootfs<T, F>(&self, record: &WorkspaceRecord, work: F) -> Result<T>
    where
        F: FnOnce(&Path) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        if !self.runtime.snapshot_exists(&record.snapshot_key).await? {
            return Err(Error::new(
                Reason::DataArchiveFailed,
                format!(
                    "workspace {} has no filesystem snapshot to reach /data through; start it to rebuild it",
                    record.id
                ),
            ));
        }
        let mounts = self.runtime.snapshot_mounts(&record.snapshot_key).await?;
        let target =
            self.mount_dir().join(format!("{}-{}", record.id, OffsetDateTime::now_utc().unix_timestamp_nanos()));
        tokio::task::spawn_blocking(move || {
            let rootfs = MountedRootfs::mount(&mounts, &target)?;
            work(rootfs.path())
        })
        .await
        .map_err(|err| Error::internal(format!("the /data worker failed: {err}")))?
    }
}

/// The answer of an operation that returns the workspace.
fn expect_info(info: Option<WorkspaceInfo>) -> WorkspaceInfo {
    info.expect("start, stop and data operations answer with the workspace")
}

/// Refuses new work once the server is draining for shutdown.
pub(super) fn shutting_down() -> Error {
    Error::new(Reason::ServerShuttingDown, "berth is shutting down; retry against the restarted server")
}

/// A container with the workspace's id that berth did not make: berth neither starts nor
/// removes it.
pub(super) fn foreign_container(record: &WorkspaceRecord) -> Error {
    Error::new(
        Reason::WorkspaceAlreadyExists,
        format!(
            "a container named {} already exists in containerd but berth does not manage it (it lacks berth's labels); \
             berth leaves it alone: remove it, or choose another workspace id",
            record.id
        ),
    )
}
