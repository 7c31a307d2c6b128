//! Snapshots and versions: CreateSnapshot commits the writable layer (installed software and
//! /data together) and prepares a new one on top, RestoreSnapshot prepares a fresh layer on an
//! older snapshot and removes the current one, DeleteSnapshot removes a snapshot nothing is built
//! on; ListSnapshots and ListVersions read the lineage and the history.
//!
//! The operations run detached from the caller under the workspace's lock (like start and stop),
//! stop a running task for the switch (processes end with a message saying why) and start it
//! again. Crash safety is `journal.rs`'s; what the lineage is, `lineage.rs`'s.

mod image_change;
#[cfg(test)]
mod image_change_tests;
mod journal;
mod lineage;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;
use tracing::{info, warn};

pub(crate) use self::journal::Settled;
use self::journal::{CreateOperation, DeleteOperation, ImageRef, Operation, RestoreOperation, nanos_of, version_of};
use self::lineage::Lineage;
use super::lifecycle::shutting_down;
use super::manager::{DEFAULT_STOP_TIMEOUT, Manager, ensure_settled};
use crate::error::{Error, Reason, Result};
use crate::model::{
    SnapshotRecord, SnapshotSource, VersionReason, VersionRecord, WorkspaceId, WorkspaceInfo, WorkspaceRecord,
    WorkspaceState,
};
use crate::store::LineageChange;

/// What processes started through ProcessService read in their `end.error` when a snapshot
/// operation restarts the workspace.
const SNAPSHOT_RESTART: &str = "a snapshot restarted the workspace";
const RESTORE_RESTART: &str = "a snapshot restore restarted the workspace";

/// Default and maximum page sizes of ListSnapshots and ListVersions.
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

/// Where a snapshot of a lineage comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotOrigin {
    /// A layer of the workspace's image, named by its chain id.
    Image,
    /// CreateSnapshot.
    User,
    /// berth itself.
    System,
}

/// One entry of a workspace's lineage, as ListSnapshots answers.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotView {
    pub name: String,
    pub workspace_id: String,
    /// Empty for the image's base layer.
    pub parent: String,
    pub origin: SnapshotOrigin,
    /// 0 for image layers.
    pub version: i64,
    pub labels: BTreeMap<String, String>,
    pub size_bytes: u64,
    pub create_time: Option<OffsetDateTime>,
}

/// One page of ListSnapshots.
#[derive(Clone, Debug)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotView>,
    pub next_page_token: String,
}

/// One page of ListVersions.
#[derive(Clone, Debug)]
pub struct VersionList {
    pub current_version: i64,
    pub versions: Vec<VersionRecord>,
    pub next_page_token: String,
}

/// The snapshot a RestoreSnapshot names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    Name(String),
    /// The snapshot a version took or restored.
    Version(i64),
}

/// What RestoreSnapshot answers.
#[derive(Clone, Debug)]
pub struct Restored {
    pub workspace: WorkspaceInfo,
    pub version: VersionRecord,
}

/// The outcome of a snapshot operation in flight, shared with the retries that attach to it.
#[derive(Clone, Debug)]
pub enum SnapshotAnswer {
    Created(Box<SnapshotView>),
    Restored(Box<Restored>),
    Deleted,
    Updated(Box<super::update::Updated>),
}

impl Manager {
    /// Commits the workspace's filesystem as snapshot `name` (empty: `v<new version>`) with
    /// `labels`, and starts a new version.
    pub async fn create_snapshot(
        self: &Arc<Self>,
        workspace_id: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<SnapshotView> {
        let id = WorkspaceId::parse(workspace_id)?;
        if !name.is_empty() {
            check_snapshot_name(name)?;
        }
        super::validate::check_labels(&labels)?;
        let key = format!("{id}/{name}/{labels:?}");
        let name = name.to_owned();
        let answer = self
            .detached_snapshot("create-snapshot", key, move |manager| async move {
                manager.create_snapshot_now(&id, name, labels).await.map(|view| SnapshotAnswer::Created(Box::new(view)))
            })
            .await?;
        match answer {
            SnapshotAnswer::Created(view) => Ok(*view),
            other => Err(Error::internal(format!("create-snapshot answered {other:?}"))),
        }
    }

    /// Rolls the workspace back to a snapshot: a fresh writable layer on it, the current one
    /// removed, a new version with reason RESTORE.
    pub async fn restore_snapshot(self: &Arc<Self>, workspace_id: &str, target: RestoreTarget) -> Result<Restored> {
        let id = WorkspaceId::parse(workspace_id)?;
        match &target {
            RestoreTarget::Name(name) if name.is_empty() => {
                return Err(Error::new(
                    Reason::InvalidArgument,
                    "snapshot_name is empty; name the snapshot to restore, or pass a version",
                ));
            }
            _ => {}
        }
        let key = format!("{id}/{target:?}");
        let answer = self
            .detached_snapshot("restore-snapshot", key, move |manager| async move {
                manager
                    .restore_snapshot_now(&id, target)
                    .await
                    .map(|restored| SnapshotAnswer::Restored(Box::new(restored)))
            })
            .await?;
        match answer {
            SnapshotAnswer::Restored(restored) => Ok(*restored),
            other => Err(Error::internal(format!("restore-snapshot answered {other:?}"))),
        }
    }

    /// Deletes a snapshot nothing is built on.
    pub async fn delete_snapshot(self: &Arc<Self>, workspace_id: &str, name: &str) -> Result<()> {
        let id = WorkspaceId::parse(workspace_id)?;
        if name.is_empty() {
            return Err(Error::new(Reason::InvalidArgument, "name is empty; name the snapshot to delete"));
        }
        let key = format!("{id}/{name}");
        let name = name.to_owned();
        self.detached_snapshot("delete-snapshot", key, move |manager| async move {
            manager.delete_snapshot_now(&id, &name).await.map(|()| SnapshotAnswer::Deleted)
        })
        .await
        .map(|_| ())
    }

    /// A page of the workspace's lineage: the image layers, base first, then its snapshots,
    /// oldest first.
    pub async fn list_snapshots(&self, workspace_id: &str, page_size: i32, page_token: &str) -> Result<SnapshotList> {
        let id = WorkspaceId::parse(workspace_id)?;
        let limit = page_limit(page_size)? as usize;
        let position = ListPosition::decode(page_token)?;
        self.wait_for_reconcile(Some(&id)).await;
        let record = self.record(&id).await?;
        let snapshots = self.store.list_snapshots(&id).await?;
        let lineage = Lineage::new(&snapshots);
        let layer_parent = if record.current_version > 0 { self.writable_layer_parent(&record).await? } else { None };
        let image_layers = self.image_layers(&lineage, layer_parent.as_deref()).await?;
        let entries: Vec<Entry<'_>> =
            image_layers.iter().map(Entry::Image).chain(snapshots.iter().map(Entry::Taken)).collect();
        let start = position.start_in(&entries);
        let page = &entries[start..entries.len().min(start + limit)];
        let next_page_token = match page.last() {
            Some(last) if start + page.len() < entries.len() => ListPosition::after(last).encode(),
            _ => String::new(),
        };
        let mut views = Vec::with_capacity(page.len());
        for entry in page {
            views.push(self.view(&id, entry).await?);
        }
        Ok(SnapshotList { snapshots: views, next_page_token })
    }

    /// A page of the workspace's version history, oldest first, with its current version.
    pub async fn list_versions(&self, workspace_id: &str, page_size: i32, page_token: &str) -> Result<VersionList> {
        let id = WorkspaceId::parse(workspace_id)?;
        let limit = page_limit(page_size)?;
        let after = decode_versions_token(page_token)?;
        self.wait_for_reconcile(Some(&id)).await;
        let record = self.record(&id).await?;
        let mut versions = self.store.list_versions(&id, after, limit + 1).await?;
        let next_page_token = if versions.len() > limit as usize {
            versions.truncate(limit as usize);
            versions.last().map(|last| encode_versions_token(last.version)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(VersionList { current_version: record.current_version, versions, next_page_token })
    }

    /// Runs a snapshot operation in its own task, like start and stop: a caller that goes away
    /// cannot cut it half-way, the same operation in flight is joined, and shutdown waits for it.
    pub(super) async fn detached_snapshot<F, Fut>(
        self: &Arc<Self>,
        kind: &'static str,
        key: String,
        operation: F,
    ) -> Result<SnapshotAnswer>
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: Future<Output = Result<SnapshotAnswer>> + Send + 'static,
    {
        if self.tasks.is_closed() {
            return Err(shutting_down());
        }
        let manager = self.clone();
        self.snapshot_ops.run(kind, &key, || operation(manager), |task| drop(self.tasks.spawn(task))).await
    }

    /// The workspace under its lock, with any interrupted snapshot operation settled first.
    pub(super) async fn settled_record(&self, id: &WorkspaceId, operation: &str) -> Result<WorkspaceRecord> {
        let record = self.record(id).await?;
        ensure_settled(&record, operation)?;
        if self.settle_snapshot_operation(id).await? == Settled::Nothing {
            return Ok(record);
        }
        self.record(id).await
    }

    async fn create_snapshot_now(
        &self,
        id: &WorkspaceId,
        requested_name: String,
        labels: BTreeMap<String, String>,
    ) -> Result<SnapshotView> {
        let _guard = self.lock(id).await;
        let mut record = self.settled_record(id, "taking a snapshot").await?;
        let version = record.current_version + 1;
        let name = if requested_name.is_empty() { format!("v{version}") } else { requested_name };
        let snapshots = self.store.list_snapshots(id).await?;
        let lineage = Lineage::new(&snapshots);
        if lineage.named(&name).is_some() {
            return Err(Error::new(
                Reason::SnapshotAlreadyExists,
                format!(
                    "workspace {id} already has a snapshot named {name:?}; choose another name or delete that snapshot"
                ),
            )
            .with_metadata("snapshot_name", name));
        }
        let Some(layer_parent) = self.writable_layer_parent(&record).await? else {
            return Err(missing_layer(&record));
        };
        let depth = lineage.depth_on(&layer_parent);
        let max_depth = self.config.max_snapshot_depth as usize;
        if depth >= max_depth {
            return Err(Error::new(
                Reason::InvalidStateTransition,
                format!(
                    "workspace {id} already stacks {depth} snapshots on its image, the most this server allows \
                     (--max-snapshot-depth {max_depth}; overlayfs stacks about 500 layers); restore an older snapshot \
                     to continue from a shorter lineage, then delete the snapshots you no longer need"
                ),
            )
            .with_metadata("max_snapshot_depth", max_depth.to_string()));
        }
        let parent = lineage.with_key(&layer_parent).map(|snapshot| snapshot.name.clone()).unwrap_or(layer_parent);
        let now = OffsetDateTime::now_utc();
        let nanos = nanos_of(now);
        let create = CreateOperation {
            snapshot_key: format!("{id}-snapshot-{nanos}-{name}"),
            new_key: format!("{id}-active-{nanos}"),
            old_key: record.snapshot_key.clone(),
            name,
            labels,
            parent,
            version,
            create_time_nanos: nanos,
            image: record.spec.image.clone(),
            image_digest: record.image_digest.clone(),
        };
        self.store.begin_snapshot_operation(id, &Operation::Create(create.clone()).to_json()?).await?;
        crate::failpoint::hit("snapshot.journaled");
        let was_running = self.stop_for_switch(&mut record, SNAPSHOT_RESTART).await?;
        let outcome = async {
            self.runtime.commit_snapshot(id.as_str(), &create.old_key, &create.snapshot_key, &create.name).await?;
            crate::failpoint::hit("snapshot.committed");
            self.complete_create(id, &create).await
        }
        .await;
        if let Err(err) = outcome {
            self.recover_from(id, was_running, &err).await?;
        }
        if was_running {
            let mut after = self.record(id).await?;
            self.start_after_switch(&mut after, &format!("snapshot {} was taken", create.name)).await?;
        }
        info!(workspace_id = %id, snapshot = %create.name, version, was_running, "snapshot taken");
        self.event_detail(
            id,
            "snapshot_created",
            &format!("snapshot {} taken (version {version})", create.name),
            serde_json::json!({ "snapshot_name": create.name, "version": version }),
        )
        .await;
        let snapshot = create.snapshot(id);
        self.view(id, &Entry::Taken(&snapshot)).await
    }

    async fn restore_snapshot_now(&self, id: &WorkspaceId, target: RestoreTarget) -> Result<Restored> {
        let _guard = self.lock(id).await;
        let mut record = self.settled_record(id, "restoring a snapshot").await?;
        let snapshots = self.store.list_snapshots(id).await?;
        let lineage = Lineage::new(&snapshots);
        let snapshot = self.restore_target(&record, &lineage, &target).await?.clone();
        // A snapshot taken on another image (before an image change) brings that image back:
        // it is made present before anything changes.
        let image = if snapshot.image.is_empty()
            || (snapshot.image == record.spec.image && snapshot.image_digest == record.image_digest)
        {
            None
        } else {
            Some(self.image_at(&snapshot.image, &snapshot.image_digest).await?)
        };
        let version = record.current_version + 1;
        let nanos = nanos_of(OffsetDateTime::now_utc());
        let mut restore = RestoreOperation {
            snapshot_name: snapshot.name.clone(),
            snapshot_key: snapshot.snapshot_key.clone(),
            version,
            old_key: record.snapshot_key.clone(),
            new_key: format!("{id}-active-{nanos}"),
            recorded: false,
            create_time_nanos: nanos,
            image: image
                .as_ref()
                .map(|_| ImageRef { name: snapshot.image.clone(), digest: snapshot.image_digest.clone() }),
        };
        self.store.begin_snapshot_operation(id, &Operation::Restore(restore.clone()).to_json()?).await?;
        let was_running = self.stop_for_switch(&mut record, RESTORE_RESTART).await?;
        let outcome = async {
            self.runtime.prepare_snapshot(id.as_str(), &restore.new_key, &restore.snapshot_key).await?;
            crate::failpoint::hit("restore.prepared");
            let mut switched = self.record(id).await?;
            switched.snapshot_key = restore.new_key.clone();
            switched.current_version = version;
            switched.update_time = OffsetDateTime::now_utc();
            match &image {
                Some(image) => {
                    switched.spec.image = snapshot.image.clone();
                    switched.image_digest = image.digest.clone();
                    self.recreate_container(&switched, image).await?;
                }
                None => self.runtime.set_container_snapshot(id.as_str(), &restore.new_key).await?,
            }
            crate::failpoint::hit("restore.switched");
            let entry = version_of(&switched, version, VersionReason::Restore, &snapshot.name, nanos);
            restore.recorded = true;
            let journal = Operation::Restore(restore.clone()).to_json()?;
            self.store
                .record_lineage_change(LineageChange {
                    record: &switched,
                    snapshot: None,
                    version: &entry,
                    operation: Some(&journal),
                })
                .await?;
            crate::failpoint::hit("restore.recorded");
            Ok(())
        }
        .await;
        match outcome {
            Err(err) => self.recover_from(id, was_running, &err).await?,
            // The restore took effect; the old layer's removal is cleanup that the journal
            // entry guarantees (the next operation or boot retries it).
            Ok(()) => {
                if let Err(err) = self.finish_restore(id, &restore).await {
                    warn!(workspace_id = %id, error = %err, "cannot remove the replaced writable layer yet; it is removed later");
                }
            }
        }
        let mut after = self.record(id).await?;
        if was_running {
            self.start_after_switch(&mut after, &format!("snapshot {} was restored", snapshot.name)).await?;
        }
        info!(workspace_id = %id, snapshot = %snapshot.name, version, was_running, "snapshot restored");
        self.event_detail(
            id,
            "snapshot_restored",
            &format!("snapshot {} restored (version {version})", snapshot.name),
            serde_json::json!({ "snapshot_name": snapshot.name, "version": version }),
        )
        .await;
        let version = self
            .store
            .get_version(id, version)
            .await?
            .ok_or_else(|| Error::internal(format!("version {version} of {id} vanished after the restore")))?;
        Ok(Restored { workspace: self.info(after).await, version })
    }

    async fn delete_snapshot_now(&self, id: &WorkspaceId, name: &str) -> Result<()> {
        let _guard = self.lock(id).await;
        let record = self.settled_record(id, "deleting a snapshot").await?;
        let snapshots = self.store.list_snapshots(id).await?;
        let lineage = Lineage::new(&snapshots);
        let Some(snapshot) = lineage.named(name) else {
            return Err(self.unknown_snapshot(&record, &lineage, name, "deleted").await);
        };
        let children = lineage.children_of(name);
        let layer_parent = self.writable_layer_parent(&record).await?;
        let current = layer_parent.as_deref() == Some(snapshot.snapshot_key.as_str());
        if current || !children.is_empty() {
            let mut dependents: Vec<String> = children.iter().map(|child| format!("snapshot {child}")).collect();
            if current {
                dependents.push("the workspace's current filesystem".to_owned());
            }
            return Err(Error::new(
                Reason::SnapshotInUse,
                format!(
                    "snapshot {name} of workspace {id} cannot be deleted: {} {} built on it; {}",
                    dependents.join(" and "),
                    if dependents.len() == 1 { "is" } else { "are" },
                    match (children.is_empty(), current) {
                        (false, true) => "delete those snapshots and restore another one first",
                        (false, false) => "delete those snapshots first",
                        _ => "restore another snapshot first",
                    }
                ),
            )
            .with_metadata("snapshot_name", name)
            .with_metadata("dependents", dependents.join(",")));
        }
        let delete = DeleteOperation { snapshot_name: name.to_owned(), snapshot_key: snapshot.snapshot_key.clone() };
        self.store.forget_snapshot(id, name, &Operation::Delete(delete.clone()).to_json()?).await?;
        crate::failpoint::hit("snapshot-delete.forgotten");
        // The snapshot is no longer listed: if containerd cannot remove it now, the journal
        // entry makes the next operation on the workspace (or the next boot) finish the job.
        match self.runtime.remove_snapshot(&delete.snapshot_key).await {
            Ok(()) => self.store.end_snapshot_operation(id).await?,
            Err(err) => {
                warn!(workspace_id = %id, snapshot = name, error = %err, "cannot remove the deleted snapshot from containerd yet; it is removed later")
            }
        }
        info!(workspace_id = %id, snapshot = name, "snapshot deleted");
        self.event_detail(
            id,
            "snapshot_deleted",
            &format!("snapshot {name} deleted"),
            serde_json::json!({ "snapshot_name": name }),
        )
        .await;
        Ok(())
    }

    /// The snapshot a restore names; a version names the snapshot it took or restored.
    async fn restore_target<'a>(
        &self,
        record: &WorkspaceRecord,
        lineage: &Lineage<'a>,
        target: &RestoreTarget,
    ) -> Result<&'a SnapshotRecord> {
        let id = &record.id;
        match target {
            RestoreTarget::Name(name) => match lineage.named(name) {
                Some(snapshot) => Ok(snapshot),
                None => Err(self.unknown_snapshot(record, lineage, name, "restored").await),
            },
            RestoreTarget::Version(version) => {
                let not_found = |why: String| {
                    Error::new(
                        Reason::VersionNotFound,
                        format!("{why}; list the versions with ListVersions and pick one with a snapshot"),
                    )
                    .with_metadata("version", version.to_string())
                };
                let Some(entry) = self.store.get_version(id, *version).await? else {
                    return Err(not_found(format!(
                        "workspace {id} has no version {version} (its current version is {})",
                        record.current_version
                    )));
                };
                if entry.snapshot_name.is_empty() {
                    return Err(not_found(format!(
                        "version {version} of workspace {id} ({}) has no snapshot to restore",
                        entry.reason.as_str()
                    )));
                }
                lineage.named(&entry.snapshot_name).ok_or_else(|| {
                    not_found(format!(
                        "the snapshot {} of version {version} of workspace {id} was deleted",
                        entry.snapshot_name
                    ))
                })
            }
        }
    }

    /// The error for a name that is no snapshot of the workspace: an image layer's chain id
    /// (which cannot be restored or deleted), or nothing at all.
    async fn unknown_snapshot(&self, record: &WorkspaceRecord, lineage: &Lineage<'_>, name: &str, verb: &str) -> Error {
        let layer_parent = self.writable_layer_parent(record).await.ok().flatten();
        let image_layers = self.image_layers(lineage, layer_parent.as_deref()).await.unwrap_or_default();
        if image_layers.iter().any(|layer| layer.name == name) {
            let reason = if verb == "deleted" { Reason::SnapshotInUse } else { Reason::InvalidArgument };
            return Error::new(
                reason,
                format!(
                    "{name} is a layer of workspace {}'s image, which cannot be {verb}; name a snapshot taken with CreateSnapshot",
                    record.id
                ),
            )
            .with_metadata("snapshot_name", name);
        }
        Error::new(
            Reason::SnapshotNotFound,
            format!("workspace {} has no snapshot named {name:?}; list its snapshots with ListSnapshots", record.id),
        )
        .with_metadata("snapshot_name", name)
    }

    /// Stops the task for a switch of the writable layer; returns whether it ran. A failure ends
    /// the journalled operation, which has not changed anything yet.
    pub(super) async fn stop_for_switch(&self, record: &mut WorkspaceRecord, why: &str) -> Result<bool> {
        let id = record.id.clone();
        let stopped = async {
            let running = self.runtime.task(id.as_str()).await?.is_some_and(|task| task.running);
            if running {
                self.ending_processes(&id, why, false, self.runtime.stop_task(id.as_str(), DEFAULT_STOP_TIMEOUT))
                    .await?;
            }
            Ok::<_, Error>(running)
        }
        .await;
        match stopped {
            Ok(true) => {
                record.last_stop_time = Some(OffsetDateTime::now_utc());
                self.save(record).await?;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(err) => {
                if let Err(end) = self.store.end_snapshot_operation(&id).await {
                    warn!(workspace_id = %id, error = %end, "cannot end the journalled snapshot operation");
                }
                Err(err)
            }
        }
    }

    /// After a step of an operation failed: settles it by what containerd holds. Completed
    /// means the operation took effect after all (an answer was lost); otherwise the error
    /// stands, and the task runs again on whatever layer the store names.
    async fn recover_from(&self, id: &WorkspaceId, was_running: bool, err: &Error) -> Result<()> {
        warn!(workspace_id = %id, error = %err, "a snapshot operation failed; settling it");
        let settled = self.settle_snapshot_operation(id).await;
        if let Ok(Settled::Completed) = settled {
            return Ok(());
        }
        if let Err(settle) = &settled {
            warn!(workspace_id = %id, error = %settle, "cannot settle the snapshot operation now; the next start or boot will");
        }
        if was_running {
            let record = self.record(id).await?;
            if let Err(start) = self.runtime.start_task(id.as_str(), &record.snapshot_key).await {
                warn!(workspace_id = %id, error = %start, "cannot start the workspace again after a failed snapshot operation");
            }
        }
        Err(err.clone())
    }

    /// Starts the task again on the new writable layer.
    pub(super) async fn start_after_switch(&self, record: &mut WorkspaceRecord, what: &str) -> Result<()> {
        if let Err(err) = self.runtime.start_task(record.id.as_str(), &record.snapshot_key).await {
            return Err(Error::new(
                err.reason(),
                format!(
                    "{what}, but the workspace did not start again: {}; start it with StartWorkspace",
                    err.message()
                ),
            ));
        }
        record.state = WorkspaceState::Running;
        record.last_start_time = Some(OffsetDateTime::now_utc());
        self.save(record).await
    }

    async fn view(&self, id: &WorkspaceId, entry: &Entry<'_>) -> Result<SnapshotView> {
        Ok(match entry {
            Entry::Image(layer) => SnapshotView {
                name: layer.name.clone(),
                workspace_id: id.as_str().to_owned(),
                parent: layer.parent.clone(),
                origin: SnapshotOrigin::Image,
                version: 0,
                labels: BTreeMap::new(),
                size_bytes: self.runtime.snapshot_usage(&layer.name).await?,
                create_time: layer.create_time,
            },
            Entry::Taken(snapshot) => SnapshotView {
                name: snapshot.name.clone(),
                workspace_id: id.as_str().to_owned(),
                parent: snapshot.parent.clone(),
                origin: match snapshot.source {
                    SnapshotSource::User => SnapshotOrigin::User,
                    SnapshotSource::System => SnapshotOrigin::System,
                },
                version: snapshot.version,
                labels: snapshot.labels.clone(),
                size_bytes: self.runtime.snapshot_usage(&snapshot.snapshot_key).await?,
                create_time: Some(snapshot.create_time),
            },
        })
    }
}

/// An entry of a lineage listing.
enum Entry<'a> {
    Image(&'a crate::runtime::SnapshotInfo),
    Taken(&'a SnapshotRecord),
}

/// Where a ListSnapshots page starts: after an image layer, or after a snapshot (by version and
/// name, so a deletion between pages skips nothing: snapshots are listed by version, and every
/// snapshot has its own).
#[derive(Debug, PartialEq, Eq)]
enum ListPosition {
    Start,
    AfterImageLayer(String),
    AfterSnapshot { version: i64, name: String },
}

const SNAPSHOTS_TOKEN_PREFIX: &str = "snapshots:";

impl ListPosition {
    fn after(entry: &Entry<'_>) -> Self {
        match entry {
            Entry::Image(layer) => ListPosition::AfterImageLayer(layer.name.clone()),
            Entry::Taken(snapshot) => {
                ListPosition::AfterSnapshot { version: snapshot.version, name: snapshot.name.clone() }
            }
        }
    }

    /// The index of the first entry after this position.
    fn start_in(&self, entries: &[Entry<'_>]) -> usize {
        let first_snapshot = entries.iter().position(|entry| matches!(entry, Entry::Taken(_))).unwrap_or(entries.len());
        match self {
            ListPosition::Start => 0,
            ListPosition::AfterImageLayer(name) => entries
                .iter()
                .position(|entry| matches!(entry, Entry::Image(layer) if layer.name == *name))
                .map_or(first_snapshot, |index| index + 1),
            ListPosition::AfterSnapshot { version, name } => entries
                .iter()
                .position(|entry| {
                    matches!(entry, Entry::Taken(snapshot)
                        if (snapshot.version, snapshot.name.as_str()) > (*version, name.as_str()))
                })
                .unwrap_or(entries.len()),
        }
    }

    fn encode(&self) -> String {
        let text = match self {
            ListPosition::Start => String::new(),
            ListPosition::AfterImageLayer(name) => format!("{SNAPSHOTS_TOKEN_PREFIX}image:{name}"),
            ListPosition::AfterSnapshot { version, name } => {
                format!("{SNAPSHOTS_TOKEN_PREFIX}snapshot:{version}:{name}")
            }
        };
        URL_SAFE_NO_PAD.encode(text)
    }

    fn decode(token: &str) -> Result<Self> {
        if token.is_empty() {
            return Ok(ListPosition::Start);
        }
        let text = URL_SAFE_NO_PAD.decode(token).ok().and_then(|bytes| String::from_utf8(bytes).ok());
        let position = text.as_deref().and_then(|text| text.strip_prefix(SNAPSHOTS_TOKEN_PREFIX)).and_then(|rest| {
            if let Some(name) = rest.strip_prefix("image:") {
                return Some(ListPosition::AfterImageLayer(name.to_owned()));
            }
            let (version, name) = rest.strip_prefix("snapshot:")?.split_once(':')?;
            Some(ListPosition::AfterSnapshot { version: version.parse().ok()?, name: name.to_owned() })
        });
        position.ok_or_else(invalid_token)
    }
}

const VERSIONS_TOKEN_PREFIX: &str = "versions:";

fn encode_versions_token(after: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{VERSIONS_TOKEN_PREFIX}{after}"))
}

fn decode_versions_token(token: &str) -> Result<i64> {
    if token.is_empty() {
        return Ok(0);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(VERSIONS_TOKEN_PREFIX).and_then(|after| after.parse().ok()))
        .ok_or_else(invalid_token)
}

fn invalid_token() -> Error {
    Error::new(
        Reason::InvalidArgument,
        "page_token is not one this server issued; pass the next_page_token of the previous response or leave it empty",
    )
}

/// The page size a request asks for: 0 is the default, larger ones are capped.
fn page_limit(page_size: i32) -> Result<u32> {
    match page_size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size < 0 => Err(Error::new(
            Reason::InvalidArgument,
            format!(
                "page_size {size} is negative; pass 0 for the default of {DEFAULT_PAGE_SIZE} or up to {MAX_PAGE_SIZE}"
            ),
        )),
        size => Ok((size as u32).min(MAX_PAGE_SIZE)),
    }
}

/// Snapshot names follow the workspace id pattern: `^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$`.
fn check_snapshot_name(name: &str) -> Result<()> {
    if WorkspaceId::parse(name).is_ok() {
        return Ok(());
    }
    Err(Error::new(
        Reason::InvalidArgument,
        format!(
            "snapshot name {name:?} is invalid; use 1-63 characters of a-z, 0-9, '_', '.', '-' starting and ending with a letter or digit, or leave it empty for v<version>"
        ),
    )
    .with_metadata("snapshot_name", name))
}

pub(super) fn missing_layer(record: &WorkspaceRecord) -> Error {
    Error::new(
        Reason::InvalidStateTransition,
        format!(
            "workspace {} has no writable layer in containerd (it vanished); start the workspace to rebuild it, then retry",
            record.id
        ),
    )
}
