//! Snapshots, versions and the journal of snapshot operations in flight.
//!
//! A change of a workspace's lineage (a snapshot taken, a snapshot restored) is one transaction:
//! the workspace's writable layer and version, the new snapshot and version rows, and the end of
//! the journal entry that made containerd's side of it recoverable.

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::{Store, map_err, update_workspace_in};
use crate::error::{Error, Result};
use crate::model::{SnapshotRecord, VersionRecord, WorkspaceId, WorkspaceRecord};

/// One change of a workspace's lineage, written at once.
#[derive(Debug)]
pub struct LineageChange<'a> {
    /// The workspace as it is after the change (its writable layer and current version).
    pub record: &'a WorkspaceRecord,
    /// The snapshot the change took, if any.
    pub snapshot: Option<&'a SnapshotRecord>,
    /// The version the change created.
    pub version: &'a VersionRecord,
    /// The workspace's journal entry afterwards: `None` ends it, `Some` replaces it (an
    /// operation with work left after the change, such as removing the old writable layer).
    pub operation: Option<&'a str>,
}

impl Store {
    /// Every snapshot of a workspace in the order they were taken (by the version each
    /// created), so a parent always precedes its children.
    pub async fn list_snapshots(&self, workspace_id: &WorkspaceId) -> Result<Vec<SnapshotRecord>> {
        let rows = sqlx::query("SELECT * FROM snapshots WHERE workspace_id = ? ORDER BY version, rowid")
            .bind(workspace_id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(|row| snapshot_from_row(workspace_id, row)).collect()
    }

    /// Up to `limit` versions of a workspace after version `after`, oldest first.
    pub async fn list_versions(
        &self,
        workspace_id: &WorkspaceId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<VersionRecord>> {
        let rows =
            sqlx::query("SELECT * FROM versions WHERE workspace_id = ? AND version > ? ORDER BY version LIMIT ?")
                .bind(workspace_id.as_str())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        rows.iter().map(version_from_row).collect()
    }

    /// One version of a workspace, if it exists.
    pub async fn get_version(&self, workspace_id: &WorkspaceId, version: i64) -> Result<Option<VersionRecord>> {
        let row = sqlx::query("SELECT * FROM versions WHERE workspace_id = ? AND version = ?")
            .bind(workspace_id.as_str())
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// The workspace's snapshot operation in flight (its JSON), if any.
    pub async fn snapshot_operation(&self, workspace_id: &WorkspaceId) -> Result<Option<String>> {
        let row = sqlx::query("SELECT detail FROM snapshot_operations WHERE workspace_id = ?")
            .bind(workspace_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|row| row.try_get("detail").map_err(map_err)).transpose()
    }

    /// Journals a snapshot operation before it touches containerd. One is in flight at most: a
    /// second is berth's bug (the caller settles the first under the workspace's lock).
    pub async fn begin_snapshot_operation(&self, workspace_id: &WorkspaceId, detail: &str) -> Result<()> {
        sqlx::query("INSERT INTO snapshot_operations (workspace_id, detail, create_time) VALUES (?, ?, ?)")
            .bind(workspace_id.as_str())
            .bind(detail)
            .bind(OffsetDateTime::now_utc())
            .execute(&self.pool)
            .await
            .map_err(|err| {
                if super::is_unique_violation(&err) {
                    return Error::internal(format!(
                        "workspace {workspace_id} already has a snapshot operation in flight; restart berth to settle it"
                    ));
                }
                map_err(err)
            })?;
        Ok(())
    }

    /// Replaces the workspace's journalled snapshot operation with a later step of it.
    pub async fn update_snapshot_operation(&self, workspace_id: &WorkspaceId, detail: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        set_operation(&mut tx, workspace_id, Some(detail)).await?;
        tx.commit().await.map_err(map_err)
    }

    /// Ends the workspace's journalled snapshot operation; none is fine.
    pub async fn end_snapshot_operation(&self, workspace_id: &WorkspaceId) -> Result<()> {
        sqlx::query("DELETE FROM snapshot_operations WHERE workspace_id = ?")
            .bind(workspace_id.as_str())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Writes a lineage change in one transaction (see [`LineageChange`]).
    pub async fn record_lineage_change(&self, change: LineageChange<'_>) -> Result<()> {
        let id = &change.record.id;
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        update_workspace_in(&mut tx, change.record).await?;
        if let Some(snapshot) = change.snapshot {
            insert_snapshot(&mut tx, snapshot).await?;
        }
        insert_version(&mut tx, id, change.version).await?;
        set_operation(&mut tx, id, change.operation).await?;
        tx.commit().await.map_err(map_err)
    }

    /// Forgets a snapshot and journals `operation` (the removal of its containerd snapshot) in
    /// one transaction, so the snapshot is either still listed or sure to be removed.
    pub async fn forget_snapshot(&self, workspace_id: &WorkspaceId, name: &str, operation: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("DELETE FROM snapshots WHERE workspace_id = ? AND name = ?")
            .bind(workspace_id.as_str())
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        set_operation(&mut tx, workspace_id, Some(operation)).await?;
        tx.commit().await.map_err(map_err)
    }

    /// Appends a lifecycle event with structured detail (JSON), such as a snapshot's name and
    /// version.
    pub async fn append_event_detail(
        &self,
        workspace_id: &WorkspaceId,
        kind: &str,
        message: &str,
        detail: &serde_json::Value,
    ) -> Result<()> {
        sqlx::query("INSERT INTO events (workspace_id, kind, message, detail, event_time) VALUES (?, ?, ?, ?, ?)")
            .bind(workspace_id.as_str())
            .bind(kind)
            .bind(message)
            .bind(detail.to_string())
            .bind(OffsetDateTime::now_utc())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

async fn insert_snapshot(tx: &mut Transaction<'_, Sqlite>, snapshot: &SnapshotRecord) -> Result<()> {
    let labels = serde_json::to_string(&snapshot.labels)
        .map_err(|err| Error::internal(format!("cannot encode snapshot labels: {err}")))?;
    sqlx::query(
        "INSERT INTO snapshots (workspace_id, name, parent, version, source, labels, create_time, snapshot_key, image) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(snapshot.workspace_id.as_str())
    .bind(&snapshot.name)
    .bind(&snapshot.parent)
    .bind(snapshot.version)
    .bind(snapshot.source.as_str())
    .bind(labels)
    .bind(snapshot.create_time)
    .bind(&snapshot.snapshot_key)
    .bind(image_column_of(&snapshot.image, &snapshot.image_digest))
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// The image column of a snapshot: empty when the image is unknown.
fn image_column_of(image: &str, image_digest: &str) -> String {
    if image.is_empty() { String::new() } else { super::image_column(image, image_digest) }
}

async fn insert_version(tx: &mut Transaction<'_, Sqlite>, id: &WorkspaceId, version: &VersionRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO versions (workspace_id, version, reason, snapshot_name, image, create_time) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(version.version)
    .bind(version.reason.as_str())
    .bind(&version.snapshot_name)
    .bind(super::image_column(&version.image, &version.image_digest))
    .bind(version.create_time)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn set_operation(tx: &mut Transaction<'_, Sqlite>, id: &WorkspaceId, operation: Option<&str>) -> Result<()> {
    let query = match operation {
        None => sqlx::query("DELETE FROM snapshot_operations WHERE workspace_id = ?").bind(id.as_str()),
        Some(detail) => sqlx::query(
            "INSERT INTO snapshot_operations (workspace_id, detail, create_time) VALUES (?, ?, ?) \
             ON CONFLICT (workspace_id) DO UPDATE SET detail = excluded.detail",
        )
        .bind(id.as_str())
        .bind(detail)
        .bind(OffsetDateTime::now_utc()),
    };
    query.execute(&mut **tx).await.map_err(map_err)?;
    Ok(())
}

fn snapshot_from_row(workspace_id: &WorkspaceId, row: &SqliteRow) -> Result<SnapshotRecord> {
    let name: String = row.try_get("name").map_err(map_err)?;
    let labels: String = row.try_get("labels").map_err(map_err)?;
    let source: String = row.try_get("source").map_err(map_err)?;
    let image: String = row.try_get("image").map_err(map_err)?;
    let (image, image_digest) = super::split_image_column(&image);
    let labels: BTreeMap<String, String> = serde_json::from_str(&labels).map_err(|err| {
        Error::internal(format!("stored labels of snapshot {name:?} of {workspace_id} are unreadable: {err}"))
    })?;
    Ok(SnapshotRecord {
        workspace_id: workspace_id.clone(),
        parent: row.try_get("parent").map_err(map_err)?,
        version: row.try_get("version").map_err(map_err)?,
        source: source.parse()?,
        labels,
        snapshot_key: row.try_get("snapshot_key").map_err(map_err)?,
        image,
        image_digest,
        create_time: row.try_get("create_time").map_err(map_err)?,
        name,
    })
}

fn version_from_row(row: &SqliteRow) -> Result<VersionRecord> {
    let reason: String = row.try_get("reason").map_err(map_err)?;
    let image: String = row.try_get("image").map_err(map_err)?;
    let (image, image_digest) = super::split_image_column(&image);
    Ok(VersionRecord {
        version: row.try_get("version").map_err(map_err)?,
        reason: reason.parse()?,
        snapshot_name: row.try_get("snapshot_name").map_err(map_err)?,
        image,
        image_digest,
        create_time: row.try_get("create_time").map_err(map_err)?,
    })
}

#[cfg(test)]
impl Store {
    /// A workspace's events as (kind, message, detail JSON), oldest first.
    pub async fn events_of(&self, workspace_id: &WorkspaceId) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT kind, message, detail FROM events WHERE workspace_id = ? ORDER BY seq")
            .bind(workspace_id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("kind").map_err(map_err)?,
                    row.try_get("message").map_err(map_err)?,
                    row.try_get("detail").map_err(map_err)?,
                ))
            })
            .collect()
    }
}
