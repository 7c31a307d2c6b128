//! UpdateWorkspace's image path: a workspace moves onto another image and keeps its /data.
//!
//! The current filesystem is committed as a SYSTEM snapshot (so RestoreSnapshot goes back to the
//! old image and everything installed on it), a fresh writable layer is prepared on the new
//! image, /data is copied into it while both are mounted, and the container is re-created on the
//! new image and layer. The steps and their crash safety (`prepared` splits undo from finish)
//! are in [`ImageChangeOperation`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::journal::{Operation, Settled, nanos_of, time_from_nanos, version_of};
use super::lineage::Lineage;
use super::missing_layer;
use crate::data::MountedRootfs;
use crate::error::{Error, Result};
use crate::model::{SnapshotRecord, SnapshotSource, VersionReason, VersionRecord, WorkspaceId, WorkspaceRecord};
use crate::runtime::{ContainerOwner, PullPolicy, PulledImage};
use crate::store::LineageChange;
use crate::workspace::lifecycle::foreign_container;
use crate::workspace::manager::Manager;

/// What processes started through ProcessService read in their `end.error`.
const IMAGE_CHANGE_RESTART: &str = "an image change restarted the workspace";

/// The label of a SYSTEM snapshot naming the image (`reference@digest`) it was taken on.
const PREVIOUS_IMAGE_LABEL: &str = "berth.image";

/// An image change as the journal holds it. Steps: prepare `new_key` on the new image, copy
/// /data into it, journal `prepared`, re-create the container on the new image and `new_key`,
/// commit `old_key` as the SYSTEM snapshot `snapshot_key`, then one store transaction records
/// the workspace on the new image, the snapshot and the version and ends the entry. Before
/// `prepared` the container and `old_key` are untouched: undo removes `new_key`. After it, every
/// step can be repeated: finish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ImageChangeOperation {
    pub version: i64,
    /// Name of the SYSTEM snapshot keeping the state before the change.
    pub snapshot_name: String,
    /// Its containerd name: the commit of `old_key`.
    pub snapshot_key: String,
    /// The name or chain id `old_key` is built on.
    pub parent: String,
    pub old_key: String,
    pub new_key: String,
    pub old_image: String,
    pub old_image_digest: String,
    pub new_image: String,
    pub new_image_digest: String,
    /// Whether `new_key` holds the copy of /data.
    pub prepared: bool,
    pub create_time_nanos: i64,
}

impl ImageChangeOperation {
    fn snapshot(&self, workspace_id: &WorkspaceId) -> SnapshotRecord {
        SnapshotRecord {
            workspace_id: workspace_id.clone(),
            name: self.snapshot_name.clone(),
            parent: self.parent.clone(),
            version: self.version,
            source: SnapshotSource::System,
            labels: BTreeMap::from([(
                PREVIOUS_IMAGE_LABEL.to_owned(),
                format!("{}@{}", self.old_image, self.old_image_digest),
            )]),
            snapshot_key: self.snapshot_key.clone(),
            image: self.old_image.clone(),
            image_digest: self.old_image_digest.clone(),
            create_time: time_from_nanos(self.create_time_nanos),
        }
    }
}

impl Manager {
    /// Moves the workspace (its lock held, its record settled) onto `image`, keeping /data; the
    /// previous state stays as a SYSTEM snapshot. `None` when it already runs on that build;
    /// otherwise whether the task was restarted, and the IMAGE_CHANGE version.
    pub(crate) async fn change_image_locked(
        &self,
        mut record: WorkspaceRecord,
        image: &PulledImage,
    ) -> Result<Option<(bool, VersionRecord)>> {
        let id = record.id.clone();
        let id = &id;
        if image.name == record.spec.image && image.digest == record.image_digest {
            return Ok(None);
        }
        let Some(layer_parent) = self.writable_layer_parent(&record).await? else {
            return Err(missing_layer(&record));
        };
        let snapshots = self.store.list_snapshots(id).await?;
        let lineage = Lineage::new(&snapshots);
        let version = record.current_version + 1;
        let nanos = nanos_of(OffsetDateTime::now_utc());
        let snapshot_name = system_snapshot_name(&lineage, version);
        let mut change = ImageChangeOperation {
            snapshot_key: format!("{id}-snapshot-{nanos}-{snapshot_name}"),
            snapshot_name,
            parent: lineage.with_key(&layer_parent).map(|snapshot| snapshot.name.clone()).unwrap_or(layer_parent),
            old_key: record.snapshot_key.clone(),
            new_key: format!("{id}-active-{nanos}"),
            old_image: record.spec.image.clone(),
            old_image_digest: record.image_digest.clone(),
            new_image: image.name.clone(),
            new_image_digest: image.digest.clone(),
            prepared: false,
            version,
            create_time_nanos: nanos,
        };
        self.store.begin_snapshot_operation(id, &Operation::ImageChange(change.clone()).to_json()?).await?;
        crate::failpoint::hit("image-change.journaled");
        let was_running = self.stop_for_switch(&mut record, IMAGE_CHANGE_RESTART).await?;
        let outcome = async {
            self.runtime.prepare_snapshot(id.as_str(), &change.new_key, &image.chain_id).await?;
            self.carry_data(&record.snapshot_key, &change.new_key, id).await?;
            crate::failpoint::hit("image-change.carried");
            change.prepared = true;
            self.store.update_snapshot_operation(id, &Operation::ImageChange(change.clone()).to_json()?).await?;
            self.complete_image_change(id, &change, image).await
        }
        .await;
        if let Err(err) = outcome {
            self.recover_from(id, was_running, &err).await?;
        }
        if was_running {
            let mut after = self.record(id).await?;
            self.start_after_switch(&mut after, &format!("the workspace moved to image {}", image.name)).await?;
        }
        info!(workspace_id = %id, image = %image.name, digest = %image.digest, version, was_running, "image changed");
        self.event_detail(
            id,
            "image_changed",
            &format!(
                "moved to image {} (version {version}); the previous state is snapshot {}",
                image.name, change.snapshot_name
            ),
            serde_json::json!({
                "image": image.name,
                "image_digest": image.digest,
                "previous_image": change.old_image,
                "previous_image_digest": change.old_image_digest,
                "snapshot_name": change.snapshot_name,
                "version": version,
            }),
        )
        .await;
        let version = self
            .store
            .get_version(id, version)
            .await?
            .ok_or_else(|| Error::internal(format!("version {version} of {id} vanished after the image change")))?;
        Ok(Some((was_running, version)))
    }

    /// Copies /data of the writable layer `from_key` into the writable layer `to_key` (its /data
    /// replaced), both mounted on the host at once; no task may run on either.
    async fn carry_data(&self, from_key: &str, to_key: &str, id: &WorkspaceId) -> Result<()> {
        let from_mounts = self.runtime.snapshot_mounts(from_key).await?;
        let to_mounts = self.runtime.snapshot_mounts(to_key).await?;
        let stamp = OffsetDateTime::now_utc().unix_timestamp_nanos();
        let from_target = self.mount_dir().join(format!("{id}-{stamp}-from"));
        let to_target = self.mount_dir().join(format!("{id}-{stamp}-to"));
        let summary = tokio::task::spawn_blocking(move || {
            let from = MountedRootfs::mount(&from_mounts, &from_target)?;
            let to = MountedRootfs::mount(&to_mounts, &to_target)?;
            crate::data::carry_data_dir(from.path(), to.path())
        })
        .await
        .map_err(|err| Error::internal(format!("the /data copy worker failed: {err}")))??;
        info!(workspace_id = %id, entries = summary.entries, bytes = summary.content_bytes, "/data copied to the new image's layer");
        Ok(())
    }

    /// The steps of an image change after /data was copied (see [`ImageChangeOperation`]);
    /// each can be repeated.
    async fn complete_image_change(
        &self,
        id: &WorkspaceId,
        change: &ImageChangeOperation,
        image: &PulledImage,
    ) -> Result<()> {
        let mut switched = self.record(id).await?;
        switched.spec.image = change.new_image.clone();
        switched.image_digest = change.new_image_digest.clone();
        switched.snapshot_key = change.new_key.clone();
        switched.current_version = change.version;
        switched.update_time = OffsetDateTime::now_utc();
        self.recreate_container(&switched, image).await?;
        crate::failpoint::hit("image-change.container");
        if self.runtime.snapshot_exists(&change.old_key).await? {
            self.runtime
                .commit_snapshot(id.as_str(), &change.old_key, &change.snapshot_key, &change.snapshot_name)
                .await?;
        }
        crate::failpoint::hit("image-change.committed");
        let committed = self.runtime.snapshot_exists(&change.snapshot_key).await?;
        if !committed {
            warn!(workspace_id = %id, key = %change.old_key, "the previous writable layer vanished before its commit; the image change keeps no snapshot of it");
        }
        let snapshot = change.snapshot(id);
        let kept = if committed { change.snapshot_name.as_str() } else { "" };
        let version = version_of(&switched, change.version, VersionReason::ImageChange, kept, change.create_time_nanos);
        self.store
            .record_lineage_change(LineageChange {
                record: &switched,
                snapshot: committed.then_some(&snapshot),
                version: &version,
                operation: None,
            })
            .await?;
        crate::failpoint::hit("image-change.recorded");
        Ok(())
    }

    /// Finishes or undoes an interrupted image change (see [`ImageChangeOperation`]).
    pub(super) async fn settle_image_change(&self, id: &WorkspaceId, change: &ImageChangeOperation) -> Result<Settled> {
        if !change.prepared {
            self.runtime.remove_snapshot(&change.new_key).await?;
            self.store.end_snapshot_operation(id).await?;
            return Ok(Settled::RolledBack);
        }
        let image = self.image_at(&change.new_image, &change.new_image_digest).await?;
        self.complete_image_change(id, change, &image).await?;
        Ok(Settled::Completed)
    }

    /// Deletes the workspace's container (its task is stopped) and creates it again from
    /// `record` on `image`: what an image switch changes is the container's spec.
    pub(crate) async fn recreate_container(&self, record: &WorkspaceRecord, image: &PulledImage) -> Result<()> {
        match self.runtime.container_owner(record.id.as_str()).await? {
            ContainerOwner::Foreign => return Err(foreign_container(record)),
            ContainerOwner::Berth => self.runtime.delete_container(record.id.as_str()).await?,
            ContainerOwner::Absent => {}
        }
        self.create_container_for(record, image, None).await
    }

    /// The image `name` at manifest `digest`, present and unpacked: the image containerd
    /// knows by that name when it is that build, else that build by digest (a reference whose
    /// tag moved on since the workspace ran on it).
    pub(crate) async fn image_at(&self, name: &str, digest: &str) -> Result<PulledImage> {
        let (progress, _) = tokio::sync::mpsc::channel(1);
        let image = self.runtime.pull_image(name, PullPolicy::IfNotPresent, &progress).await?;
        if digest.is_empty() || image.digest == digest {
            return Ok(image);
        }
        let pinned = pinned_reference(name, digest);
        let mut image = self.runtime.pull_image(&pinned, PullPolicy::IfNotPresent, &progress).await.map_err(|err| {
            Error::new(
                err.reason(),
                format!(
                    "image {name} now names another build than {digest}, and {pinned} cannot be pulled: {}; \
                     make that build available to containerd again (pull it by digest), then retry",
                    err.message()
                ),
            )
        })?;
        image.name = name.to_owned();
        Ok(image)
    }
}

/// `reference` pinned to `digest`: its tag (and any digest) replaced by the digest.
fn pinned_reference(reference: &str, digest: &str) -> String {
    let without_digest = reference.split_once('@').map_or(reference, |(name, _)| name);
    let name_start = without_digest.rfind('/').map_or(0, |slash| slash + 1);
    let repository = match without_digest[name_start..].rfind(':') {
        Some(colon) => &without_digest[..name_start + colon],
        None => without_digest,
    };
    format!("{repository}@{digest}")
}

/// The name of the SYSTEM snapshot an image change to `version` keeps: `before-image-change-vN`,
/// with a number appended if a caller took that name already.
fn system_snapshot_name(lineage: &Lineage<'_>, version: i64) -> String {
    let base = format!("before-image-change-v{version}");
    if lineage.named(&base).is_none() {
        return base;
    }
    (2..).map(|n| format!("{base}-{n}")).find(|name| lineage.named(name).is_none()).expect("a free name")
}

#[cfg(test)]
mod tests {
    use super::pinned_reference;

    #[test]
    fn a_reference_is_pinned_by_replacing_its_tag_or_digest() {
        let digest = "sha256:abc";
        assert_eq!(
            pinned_reference("docker.io/library/debian:bookworm", digest),
            "docker.io/library/debian@sha256:abc"
        );
        assert_eq!(pinned_reference("127.0.0.1:5000/team/app:v1", digest), "127.0.0.1:5000/team/app@sha256:abc");
        assert_eq!(pinned_reference("127.0.0.1:5000/team/app", digest), "127.0.0.1:5000/team/app@sha256:abc");
        assert_eq!(pinned_reference("registry/app:v1@sha256:old", digest), "registry/app@sha256:abc");
    }
}
