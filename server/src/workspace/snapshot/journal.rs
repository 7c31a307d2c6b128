//! Crash safety of snapshot operations.
//!
//! Every operation is journalled in the store before it changes anything in containerd, with
//! every key it will touch. Its steps are ordered so that containerd's state alone tells how far
//! it got, and each step can be repeated:
//!
//! - **create**: commit the writable layer `old_key` as `snapshot_key` (a GC root from its first
//!   moment: it holds the only copy of the files), prepare `new_key` on it, point the container
//!   at `new_key`, then one store transaction records the snapshot, the version and the new layer
//!   and ends the journal entry. `old_key` still there means the commit did not happen: undo.
//!   Otherwise the commit holds the files: finish.
//! - **restore**: prepare `new_key` on the snapshot, point the container at it, record the
//!   version and the new layer (the entry stays, marked `recorded`), remove `old_key`, end the
//!   entry. Before `recorded`, undo (the container back on `old_key`, `new_key` removed); after
//!   it, finish the removal.
//! - **delete**: one transaction forgets the snapshot and journals the removal of its
//!   containerd snapshot, which is then removed and the entry ended.
//!
//! [`Manager::settle_snapshot_operation`] finishes or undoes an entry a crash (or containerd
//! going away mid-way) left; the boot reconcile, StartWorkspace and every snapshot operation call
//! it first, under the workspace's lock. The boot reconcile then removes any snapshot labelled
//! with the workspace that the store does not list ([`Manager::sweep_snapshots`]).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::super::manager::Manager;
use super::image_change::ImageChangeOperation;
use super::lineage::leaf_first;
use crate::error::{Error, Result};
use crate::model::{SnapshotRecord, SnapshotSource, VersionReason, VersionRecord, WorkspaceId, WorkspaceRecord};
use crate::store::LineageChange;

/// A snapshot operation as the journal holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Operation {
    Create(CreateOperation),
    Restore(RestoreOperation),
    Delete(DeleteOperation),
    ImageChange(ImageChangeOperation),
}

/// CreateSnapshot: everything the snapshot's row and version need, and the keys it touches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CreateOperation {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The name or chain id of what the snapshot is taken on top of.
    pub parent: String,
    pub version: i64,
    /// containerd name of the commit.
    pub snapshot_key: String,
    /// The writable layer the commit consumes.
    pub old_key: String,
    /// The writable layer prepared on the commit.
    pub new_key: String,
    pub create_time_nanos: i64,
    /// The image the workspace runs on (empty in entries journalled before berth recorded it).
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub image_digest: String,
}

/// RestoreSnapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RestoreOperation {
    pub snapshot_name: String,
    pub snapshot_key: String,
    pub version: i64,
    pub old_key: String,
    pub new_key: String,
    /// Whether the store already names `new_key` as the writable layer (only `old_key`'s
    /// removal is left).
    pub recorded: bool,
    pub create_time_nanos: i64,
    /// The image the restore moves the workspace back onto (a snapshot taken on another image);
    /// its container is re-created rather than pointed at `new_key`.
    #[serde(default)]
    pub image: Option<ImageRef>,
}

/// An image by normalized reference and manifest digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ImageRef {
    pub name: String,
    pub digest: String,
}

/// DeleteSnapshot, after the store forgot the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DeleteOperation {
    pub snapshot_name: String,
    pub snapshot_key: String,
}

impl Operation {
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|err| Error::internal(format!("cannot encode a snapshot operation: {err}")))
    }
}

/// What [`Manager::settle_snapshot_operation`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// No operation was in flight.
    Nothing,
    /// The operation had not changed the workspace; it is undone.
    RolledBack,
    /// The operation is finished as if nothing had interrupted it.
    Completed,
}

pub(super) fn time_from_nanos(nanos: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(super) fn nanos_of(time: OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

impl CreateOperation {
    pub fn snapshot(&self, workspace_id: &WorkspaceId) -> SnapshotRecord {
        SnapshotRecord {
            workspace_id: workspace_id.clone(),
            name: self.name.clone(),
            parent: self.parent.clone(),
            version: self.version,
            source: SnapshotSource::User,
            labels: self.labels.clone(),
            snapshot_key: self.snapshot_key.clone(),
            image: self.image.clone(),
            image_digest: self.image_digest.clone(),
            create_time: time_from_nanos(self.create_time_nanos),
        }
    }
}

/// The version a lineage change creates on `record`.
pub(super) fn version_of(
    record: &WorkspaceRecord,
    version: i64,
    reason: VersionReason,
    snapshot_name: &str,
    create_time_nanos: i64,
) -> VersionRecord {
    VersionRecord {
        version,
        reason,
        snapshot_name: snapshot_name.to_owned(),
        image: record.spec.image.clone(),
        image_digest: record.image_digest.clone(),
        create_time: time_from_nanos(create_time_nanos),
    }
}

impl Manager {
    /// Finishes or undoes the workspace's journalled snapshot operation (see the module doc);
    /// the caller holds the workspace's lock and reads the record again when something changed.
    pub(crate) async fn settle_snapshot_operation(&self, id: &WorkspaceId) -> Result<Settled> {
        let Some(detail) = self.store.snapshot_operation(id).await? else {
            return Ok(Settled::Nothing);
        };
        let operation: Operation = serde_json::from_str(&detail).map_err(|err| {
            Error::internal(format!("the journalled snapshot operation of {id} is unreadable: {err}"))
        })?;
        let settled = match &operation {
            Operation::Create(create) => self.settle_create(id, create).await?,
            Operation::Restore(restore) => self.settle_restore(id, restore).await?,
            Operation::ImageChange(change) => self.settle_image_change(id, change).await?,
            Operation::Delete(delete) => {
                self.runtime.remove_snapshot(&delete.snapshot_key).await?;
                self.store.end_snapshot_operation(id).await?;
                Settled::Completed
            }
        };
        info!(workspace_id = %id, ?operation, ?settled, "settled an interrupted snapshot operation");
        Ok(settled)
    }

    async fn settle_create(&self, id: &WorkspaceId, create: &CreateOperation) -> Result<Settled> {
        if self.runtime.snapshot_exists(&create.old_key).await? {
            // Not committed: the workspace is as it was. A layer prepared on a commit cannot
            // exist without the commit, but removing it costs nothing.
            self.runtime.remove_snapshot(&create.new_key).await?;
            self.store.end_snapshot_operation(id).await?;
            return Ok(Settled::RolledBack);
        }
        if !self.runtime.snapshot_exists(&create.snapshot_key).await? {
            warn!(workspace_id = %id, key = %create.old_key, "neither the writable layer nor its commit exist; the workspace is rebuilt at its next start");
            self.store.end_snapshot_operation(id).await?;
            return Ok(Settled::RolledBack);
        }
        self.complete_create(id, create).await?;
        Ok(Settled::Completed)
    }

    /// The steps of a create after its commit: the new writable layer, the container on it, and
    /// the store transaction that ends the operation. Each can be repeated.
    pub(super) async fn complete_create(&self, id: &WorkspaceId, create: &CreateOperation) -> Result<()> {
        self.runtime.prepare_snapshot(id.as_str(), &create.new_key, &create.snapshot_key).await?;
        crate::failpoint::hit("snapshot.prepared");
        self.runtime.set_container_snapshot(id.as_str(), &create.new_key).await?;
        crate::failpoint::hit("snapshot.switched");
        let mut record = self.record(id).await?;
        record.snapshot_key = create.new_key.clone();
        record.current_version = create.version;
        record.update_time = OffsetDateTime::now_utc();
        let snapshot = create.snapshot(id);
        let version =
            version_of(&record, create.version, VersionReason::Snapshot, &create.name, create.create_time_nanos);
        self.store
            .record_lineage_change(LineageChange {
                record: &record,
                snapshot: Some(&snapshot),
                version: &version,
                operation: None,
            })
            .await?;
        crate::failpoint::hit("snapshot.recorded");
        Ok(())
    }

    async fn settle_restore(&self, id: &WorkspaceId, restore: &RestoreOperation) -> Result<Settled> {
        if !restore.recorded {
            if restore.image.is_some() {
                // The container may already be the restored image's: it goes back to the
                // stored record's image and layer.
                let record = self.record(id).await?;
                let image = self.image_at(&record.spec.image, &record.image_digest).await?;
                self.recreate_container(&record, &image).await?;
            } else {
                self.runtime.set_container_snapshot(id.as_str(), &restore.old_key).await?;
            }
            self.runtime.remove_snapshot(&restore.new_key).await?;
            self.store.end_snapshot_operation(id).await?;
            return Ok(Settled::RolledBack);
        }
        self.finish_restore(id, restore).await?;
        Ok(Settled::Completed)
    }

    /// The steps of a restore after the store names the new layer: the old one is removed.
    pub(super) async fn finish_restore(&self, id: &WorkspaceId, restore: &RestoreOperation) -> Result<()> {
        self.runtime.remove_snapshot(&restore.old_key).await?;
        crate::failpoint::hit("restore.removed");
        self.store.end_snapshot_operation(id).await
    }

    /// Removes every snapshot labelled with the workspace that the store does not list (neither
    /// its writable layer nor one of its snapshots), children first; returns how many. Only when
    /// no operation is journalled (a journalled one settles first, and would own them).
    pub(crate) async fn sweep_snapshots(&self, record: &WorkspaceRecord) -> Result<u32> {
        if self.store.snapshot_operation(&record.id).await?.is_some() {
            return Ok(0);
        }
        let kept: HashSet<String> = self
            .store
            .list_snapshots(&record.id)
            .await?
            .into_iter()
            .map(|snapshot| snapshot.snapshot_key)
            .chain([record.snapshot_key.clone()])
            .collect();
        let stale: Vec<_> = self
            .runtime
            .workspace_snapshots(record.id.as_str())
            .await?
            .into_iter()
            .filter(|info| !kept.contains(&info.name))
            .collect();
        let mut removed = 0;
        for key in leaf_first(&stale) {
            warn!(workspace_id = %record.id, snapshot = %key, "removing a snapshot of the workspace that berth does not list");
            self.runtime.remove_snapshot(&key).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes every snapshot of the workspace (its writable layer and every commit), children
    /// first: the end of a deleted or rolled-back workspace.
    pub(crate) async fn remove_workspace_snapshots(&self, record: &WorkspaceRecord) -> Result<()> {
        let snapshots = self.runtime.workspace_snapshots(record.id.as_str()).await?;
        for key in leaf_first(&snapshots) {
            self.runtime.remove_snapshot(&key).await?;
        }
        // A layer prepared by a berth without labels (or one a crash left half-made) goes too.
        self.runtime.remove_snapshot(&record.snapshot_key).await
    }
}
