//! Committed snapshots of workspaces: commit, stat, usage, listing by workspace, re-pointing a
//! container at another writable snapshot, and removal (including containerd 1.6's stale-child
//! case).

use std::collections::{BTreeMap, HashMap};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    UpdateSnapshotRequest, UsageRequest,
};
use containerd_client::services::v1::{
    Container, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest, UpdateContainerRequest,
};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tracing::warn;

use super::client::request;
use super::container::{LABEL_ID, LEASE_PREFIX};
use super::{Containerd, SNAPSHOTTER};
use crate::error::{Error, Reason, Result};
use crate::runtime::{LayerUsage, SnapshotInfo};

/// Label naming the berth snapshot a committed containerd snapshot holds (for operators reading
/// `ctr snapshots info`; berth's store is what berth reads).
pub const LABEL_SNAPSHOT: &str = "berth.snapshot";
/// containerd's GC root label: a snapshot carrying it is never collected.
const GC_ROOT: &str = "containerd.io/gc.root";

impl Containerd {
    fn snapshot_client(&self) -> SnapshotsClient<tonic::transport::Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    pub(super) async fn snapshot_info_of(&self, key: &str) -> Result<Option<SnapshotInfo>> {
        let stat = StatSnapshotRequest { snapshotter: SNAPSHOTTER.to_owned(), key: key.to_owned() };
        match self.snapshot_client().stat(request(&self.namespace, stat)).await {
            Ok(response) => Ok(response.into_inner().info.map(info_from)),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(self.map_status("snapshot stat", status)),
        }
    }

    pub(super) async fn commit_snapshot_of(
        &self,
        workspace_id: &str,
        active_key: &str,
        name: &str,
        snapshot_name: &str,
    ) -> Result<()> {
        let commit = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            name: name.to_owned(),
            key: active_key.to_owned(),
            // Labels are not inherited from the active snapshot: the commit names the workspace
            // again and is a GC root from its first moment, since it holds the only copy of the
            // workspace's files.
            labels: HashMap::from([
                (GC_ROOT.to_owned(), super::container::rfc3339_now()),
                (LABEL_ID.to_owned(), workspace_id.to_owned()),
                (LABEL_SNAPSHOT.to_owned(), snapshot_name.to_owned()),
            ]),
        };
        match self.snapshot_client().commit(request(&self.namespace, commit)).await {
            Ok(_) => Ok(()),
            // A retried commit whose first answer was lost: the active key is gone, the name is there.
            Err(status)
                if status.code() == Code::AlreadyExists && self.snapshot_info_of(active_key).await?.is_none() =>
            {
                Ok(())
            }
            Err(status) => Err(self.map_status("snapshot commit", status)),
        }
    }

    pub(super) async fn snapshot_usage_of(&self, key: &str) -> Result<LayerUsage> {
        let usage = UsageRequest { snapshotter: SNAPSHOTTER.to_owned(), key: key.to_owned() };
        let response = self
            .snapshot_client()
            .usage(request(&self.namespace, usage))
            .await
            .map_err(|status| self.map_status("snapshot usage", status))?
            .into_inner();
        Ok(LayerUsage {
            bytes: u64::try_from(response.size).unwrap_or(0),
            inodes: u64::try_from(response.inodes).unwrap_or(0),
        })
    }

    /// Every snapshot whose labels name the workspace: its writable layer and its commits.
    pub(super) async fn workspace_snapshots_of(&self, workspace_id: &str) -> Result<Vec<SnapshotInfo>> {
        let filter = format!("labels.\"{LABEL_ID}\"=={}", quoted(workspace_id));
        self.list_snapshots(vec![filter]).await.map(|infos| {
            infos.into_iter().filter(|info| info.labels.get(LABEL_ID).is_some_and(|id| id == workspace_id)).collect()
        })
    }

    async fn list_snapshots(&self, filters: Vec<String>) -> Result<Vec<SnapshotInfo>> {
        let list = ListSnapshotsRequest { snapshotter: SNAPSHOTTER.to_owned(), filters };
        let mut stream = self
            .snapshot_client()
            .list(request(&self.namespace, list))
            .await
            .map_err(|status| self.map_status("snapshot list", status))?
            .into_inner();
        let mut infos = Vec::new();
        while let Some(page) = stream.next().await {
            let page = page.map_err(|status| self.map_status("snapshot list", status))?;
            infos.extend(page.info.into_iter().map(info_from));
        }
        Ok(infos)
    }

    pub(super) async fn set_container_snapshot_of(&self, id: &str, key: &str) -> Result<()> {
        let container = Container { id: id.to_owned(), snapshot_key: key.to_owned(), ..Default::default() };
        let update = UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask { paths: vec!["snapshotkey".to_owned()] }),
        };
        match ContainersClient::new(self.channel.clone()).update(request(&self.namespace, update)).await {
            Ok(_) => Ok(()),
            // Rebuilt on the record's key at the next start.
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(self.map_status("container update", status)),
        }
    }

    /// Removes a snapshot; missing is fine. containerd 1.6 refuses to remove a parent whose
    /// children were garbage-collected (its metadata keeps them listed): such a snapshot is no
    /// longer a GC root and a synchronous collection removes it.
    pub(super) async fn remove_snapshot_of(&self, key: &str) -> Result<()> {
        let remove = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.to_owned(), key: key.to_owned() };
        let status = match self.snapshot_client().remove(request(&self.namespace, remove)).await {
            Ok(_) => return Ok(()),
            Err(status) if status.code() == Code::NotFound => return Ok(()),
            Err(status) => status,
        };
        if status.code() != Code::FailedPrecondition {
            return Err(self.map_status("snapshot remove", status));
        }
        let children = self.list_snapshots(vec![format!("parent=={}", quoted(key))]).await?;
        if !children.is_empty() {
            let names: Vec<_> = children.iter().map(|child| child.name.as_str()).collect();
            return Err(Error::new(
                Reason::RuntimeError,
                format!(
                    "containerd cannot remove snapshot {key}: snapshots {names:?} are built on it; remove them first"
                ),
            ));
        }
        warn!(snapshot = key, "containerd lists children of this snapshot that no longer exist; collecting it instead");
        self.release_to_gc(key).await?;
        self.collect_garbage().await?;
        match self.snapshot_info_of(key).await? {
            None => Ok(()),
            Some(_) => Err(Error::new(
                Reason::RuntimeError,
                format!("containerd neither removed nor collected snapshot {key}; remove it with ctr snapshots rm"),
            )),
        }
    }

    /// Drops the labels that keep a snapshot from containerd's garbage collector.
    async fn release_to_gc(&self, key: &str) -> Result<()> {
        let info = Info { name: key.to_owned(), ..Default::default() };
        let paths = [GC_ROOT, LABEL_ID, LABEL_SNAPSHOT].iter().map(|label| format!("labels.{label}")).collect();
        let update = UpdateSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            info: Some(info),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        match self.snapshot_client().update(request(&self.namespace, update)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(self.map_status("snapshot update", status)),
        }
    }

    /// Runs containerd's garbage collection now: deleting a lease with `sync` waits for it.
    async fn collect_garbage(&self) -> Result<()> {
        let mut leases = LeasesClient::new(self.channel.clone());
        let id = format!("{LEASE_PREFIX}gc-{}", time::OffsetDateTime::now_utc().unix_timestamp_nanos());
        leases
            .create(request(&self.namespace, CreateLeaseRequest { id: id.clone(), labels: HashMap::new() }))
            .await
            .map_err(|status| self.map_status("lease create", status))?;
        leases
            .delete(request(&self.namespace, DeleteLeaseRequest { id, sync: true }))
            .await
            .map_err(|status| self.map_status("garbage collection", status))?;
        Ok(())
    }
}

/// A filter value in double quotes, as containerd's filter syntax reads it.
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn info_from(info: Info) -> SnapshotInfo {
    let create_time = info.created_at.and_then(|created| {
        time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(created.seconds) * 1_000_000_000 + i128::from(created.nanos),
        )
        .ok()
    });
    SnapshotInfo {
        committed: info.kind == Kind::Committed as i32,
        name: info.name,
        parent: info.parent,
        labels: info.labels.into_iter().collect::<BTreeMap<_, _>>(),
        create_time,
    }
}
