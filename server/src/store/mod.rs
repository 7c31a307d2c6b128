//! The store: what containerd cannot remember (desired state, spec, versions, snapshots, events,
//! request ids), in SQLite through sqlx. sqlx errors become domain errors in [`map_err`] only.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use time::OffsetDateTime;

use crate::error::{Error, Reason, Result};
use crate::model::{WorkspaceId, WorkspaceRecord, WorkspaceSpec};

pub mod private;
mod snapshots;

pub use snapshots::LineageChange;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

/// One page of a workspace listing, ordered by id.
#[derive(Debug)]
pub struct WorkspacePage {
    pub workspaces: Vec<WorkspaceRecord>,
    /// The id to continue after, when more rows exist.
    pub next_after: Option<String>,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and runs the migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| {
                Error::new(
                    Reason::StoreError,
                    format!("database url {url:?} is invalid: {err}; pass a sqlite:// url with --database-url"),
                )
            })?
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        // The database holds every workspace's env (secrets): owner-only, like the state dir.
        let file = private::is_file_url(url).then(|| options.get_filename().to_owned());
        if let Some(path) = file.clone() {
            private::run_blocking(move || private::create_private_file(&path), url, "create").await?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|err| Error::new(Reason::StoreError, format!("cannot open the database {url}: {err}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|err| Error::new(Reason::StoreError, format!("database migration failed: {err}")))?;
        if let Some(path) = file {
            // A database of an older berth may be world-readable; the WAL files exist by now.
            private::run_blocking(move || private::restrict_database_files(&path), url, "restrict").await?;
        }
        Ok(Self { pool })
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Inserts a new workspace; an existing id is `WorkspaceAlreadyExists`.
    pub async fn insert_workspace(&self, record: &WorkspaceRecord) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO workspaces (id, state, desired_state, spec, image_digest, snapshot_key, \
             current_version, failure_reason, failure_message, create_time, update_time, \
             last_start_time, last_stop_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.id.as_str())
        .bind(record.state.as_str())
        .bind(record.desired_state.as_str())
        .bind(spec_json(&record.spec)?)
        .bind(&record.image_digest)
        .bind(&record.snapshot_key)
        .bind(record.current_version)
        .bind(&record.failure_reason)
        .bind(&record.failure_message)
        .bind(record.create_time)
        .bind(record.update_time)
        .bind(record.last_start_time)
        .bind(record.last_stop_time)
        .execute(&mut *tx)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                return Error::new(
                    Reason::WorkspaceAlreadyExists,
                    format!(
                        "a workspace with id {} already exists; choose another id or delete the existing workspace",
                        record.id
                    ),
                );
            }
            map_err(err)
        })?;
        insert_labels(&mut tx, record).await?;
        tx.commit().await.map_err(map_err)
    }

    /// Writes a workspace whose labels changed: the record and the label index at once.
    pub async fn update_workspace_and_labels(&self, record: &WorkspaceRecord) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        update_workspace_in(&mut tx, record).await?;
        sqlx::query("DELETE FROM workspace_labels WHERE workspace_id = ?")
            .bind(record.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_labels(&mut tx, record).await?;
        tx.commit().await.map_err(map_err)
    }

    /// Writes the mutable columns of an existing workspace.
    pub async fn update_workspace(&self, record: &WorkspaceRecord) -> Result<()> {
        let mut connection = self.pool.acquire().await.map_err(map_err)?;
        update_workspace_in(&mut connection, record).await
    }

    /// Removes a workspace and everything that cascades from it; a missing one is not an error.
    pub async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()> {
        sqlx::query("DELETE FROM workspaces WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// The workspace with this id, if any.
    pub async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>> {
        let row = sqlx::query("SELECT * FROM workspaces WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(workspace_from_row).transpose()
    }

    /// Up to `limit` workspaces with ids after `after` that carry every label in `selector`.
    pub async fn list_workspaces(
        &self,
        after: Option<&str>,
        limit: u32,
        selector: &BTreeMap<String, String>,
    ) -> Result<WorkspacePage> {
        let mut query: QueryBuilder<'_, Sqlite> = QueryBuilder::new("SELECT * FROM workspaces w WHERE 1 = 1");
        if let Some(after) = after {
            query.push(" AND w.id > ").push_bind(after.to_owned());
        }
        for (key, value) in selector {
            query
                .push(" AND EXISTS (SELECT 1 FROM workspace_labels l WHERE l.workspace_id = w.id AND l.key = ")
                .push_bind(key.clone())
                .push(" AND l.value = ")
                .push_bind(value.clone())
                .push(")");
        }
        // One extra row tells whether another page exists.
        query.push(" ORDER BY w.id LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(&self.pool).await.map_err(map_err)?;
        let mut workspaces = rows.iter().map(workspace_from_row).collect::<Result<Vec<_>>>()?;
        let next_after = if workspaces.len() > limit as usize {
            workspaces.truncate(limit as usize);
            workspaces.last().map(|w| w.id.as_str().to_owned())
        } else {
            None
        };
        Ok(WorkspacePage { workspaces, next_after })
    }

    /// The workspace id and spec a create `request_id` was first used with.
    pub async fn get_request(&self, request_id: &str) -> Result<Option<(String, WorkspaceSpec)>> {
        let row = sqlx::query("SELECT workspace_id, spec FROM requests WHERE request_id = ?")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let workspace_id: String = row.try_get("workspace_id").map_err(map_err)?;
        let spec: String = row.try_get("spec").map_err(map_err)?;
        let spec = serde_json::from_str(&spec)
            .map_err(|err| Error::internal(format!("stored spec of request {request_id:?} is unreadable: {err}")))?;
        Ok(Some((workspace_id, spec)))
    }

    /// Remembers the create a `request_id` belongs to (a repeat is ignored).
    pub async fn insert_request(
        &self,
        request_id: &str,
        workspace_id: &WorkspaceId,
        spec: &WorkspaceSpec,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO requests (request_id, workspace_id, method, spec, create_time) VALUES (?, ?, 'create', ?, ?) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(request_id)
        .bind(workspace_id.as_str())
        .bind(spec_json(spec)?)
        .bind(OffsetDateTime::now_utc())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    /// Records a version of a workspace's filesystem lineage.
    pub async fn insert_version(
        &self,
        workspace_id: &WorkspaceId,
        version: i64,
        reason: &str,
        image: &str,
        image_digest: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO versions (workspace_id, version, reason, image, create_time) VALUES (?, ?, ?, ?, ?)")
            .bind(workspace_id.as_str())
            .bind(version)
            .bind(reason)
            .bind(image_column(image, image_digest))
            .bind(OffsetDateTime::now_utc())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Appends a lifecycle event.
    pub async fn append_event(&self, workspace_id: &WorkspaceId, kind: &str, message: &str) -> Result<()> {
        sqlx::query("INSERT INTO events (workspace_id, kind, message, event_time) VALUES (?, ?, ?, ?)")
            .bind(workspace_id.as_str())
            .bind(kind)
            .bind(message)
            .bind(OffsetDateTime::now_utc())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

/// Writes the mutable columns of an existing workspace on `connection` (a transaction's too).
/// Indexes the record's labels for ListWorkspaces' label selectors.
async fn insert_labels(tx: &mut Transaction<'_, Sqlite>, record: &WorkspaceRecord) -> Result<()> {
    for (key, value) in &record.spec.labels {
        sqlx::query("INSERT INTO workspace_labels (workspace_id, key, value) VALUES (?, ?, ?)")
            .bind(record.id.as_str())
            .bind(key)
            .bind(value)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

async fn update_workspace_in(connection: &mut sqlx::SqliteConnection, record: &WorkspaceRecord) -> Result<()> {
    let result = sqlx::query(
        "UPDATE workspaces SET state = ?, desired_state = ?, spec = ?, image_digest = ?, snapshot_key = ?, \
         current_version = ?, failure_reason = ?, failure_message = ?, update_time = ?, \
         last_start_time = ?, last_stop_time = ? WHERE id = ?",
    )
    .bind(record.state.as_str())
    .bind(record.desired_state.as_str())
    .bind(spec_json(&record.spec)?)
    .bind(&record.image_digest)
    .bind(&record.snapshot_key)
    .bind(record.current_version)
    .bind(&record.failure_reason)
    .bind(&record.failure_message)
    .bind(record.update_time)
    .bind(record.last_start_time)
    .bind(record.last_stop_time)
    .bind(record.id.as_str())
    .execute(&mut *connection)
    .await
    .map_err(map_err)?;
    if result.rows_affected() == 0 {
        return Err(Error::workspace_not_found(record.id.as_str()));
    }
    Ok(())
}

/// A version's image as its column holds it: the reference and the manifest digest.
fn image_column(image: &str, image_digest: &str) -> String {
    format!("{image}@{image_digest}")
}

/// The reference and digest of an image column; the digest never holds an `@`, a reference
/// pinned by digest may.
fn split_image_column(column: &str) -> (String, String) {
    match column.rsplit_once('@') {
        Some((image, digest)) => (image.to_owned(), digest.to_owned()),
        None => (column.to_owned(), String::new()),
    }
}

fn spec_json(spec: &WorkspaceSpec) -> Result<String> {
    serde_json::to_string(spec).map_err(|err| Error::internal(format!("cannot encode a workspace spec: {err}")))
}

fn workspace_from_row(row: &SqliteRow) -> Result<WorkspaceRecord> {
    let id: String = row.try_get("id").map_err(map_err)?;
    let spec: String = row.try_get("spec").map_err(map_err)?;
    let state: String = row.try_get("state").map_err(map_err)?;
    let desired_state: String = row.try_get("desired_state").map_err(map_err)?;
    Ok(WorkspaceRecord {
        id: WorkspaceId::parse(&id)?,
        state: state.parse()?,
        desired_state: desired_state.parse()?,
        spec: serde_json::from_str(&spec)
            .map_err(|err| Error::internal(format!("stored spec of workspace {id:?} is unreadable: {err}")))?,
        image_digest: row.try_get("image_digest").map_err(map_err)?,
        snapshot_key: row.try_get("snapshot_key").map_err(map_err)?,
        current_version: row.try_get("current_version").map_err(map_err)?,
        failure_reason: row.try_get("failure_reason").map_err(map_err)?,
        failure_message: row.try_get("failure_message").map_err(map_err)?,
        create_time: row.try_get("create_time").map_err(map_err)?,
        update_time: row.try_get("update_time").map_err(map_err)?,
        last_start_time: row.try_get("last_start_time").map_err(map_err)?,
        last_stop_time: row.try_get("last_stop_time").map_err(map_err)?,
    })
}

/// The one place where sqlx errors become domain errors. A unique violation is a STORE_ERROR
/// here: only the caller knows which conflict it means (a workspace id that exists is
/// `insert_workspace`'s to say), and a conflict nobody expected is berth's bug, not the caller's.
fn map_err(err: sqlx::Error) -> Error {
    Error::new(Reason::StoreError, format!("database error: {err}"))
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DesiredState, WorkspaceState};

    fn record(id: &str, labels: &[(&str, &str)]) -> WorkspaceRecord {
        let now = OffsetDateTime::now_utc();
        let spec = WorkspaceSpec {
            image: "example/image:1".to_owned(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..WorkspaceSpec::default()
        };
        WorkspaceRecord {
            state: WorkspaceState::Stopped,
            desired_state: DesiredState::Stopped,
            current_version: 1,
            last_stop_time: Some(now),
            ..WorkspaceRecord::creating(WorkspaceId::parse(id).unwrap(), spec, now)
        }
    }

    #[tokio::test]
    async fn the_database_and_its_wal_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("berth.db");
        let store = Store::open(&format!("sqlite://{}?mode=rwc", db.display())).await.unwrap();
        store.insert_workspace(&record("a", &[])).await.unwrap();
        let mode = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
        for name in ["berth.db", "berth.db-wal", "berth.db-shm"] {
            assert_eq!(mode(name), 0o600, "{name}");
        }
        store.close().await;

        // A database an older berth left world-readable is tightened at open.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(&format!("sqlite://{}", db.display())).await.unwrap();
        assert_eq!(mode("berth.db"), 0o600);
        assert!(store.get_workspace(&WorkspaceId::parse("a").unwrap()).await.unwrap().is_some());
        store.close().await;
    }

    #[tokio::test]
    async fn insert_get_list_and_duplicate() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        for (id, team) in [("c", "red"), ("a", "red"), ("b", "blue")] {
            store.insert_workspace(&record(id, &[("team", team)])).await.unwrap();
        }
        let got = store.get_workspace(&WorkspaceId::parse("a").unwrap()).await.unwrap().unwrap();
        assert_eq!(got.spec.labels["team"], "red");
        assert!(store.get_workspace(&WorkspaceId::parse("zz").unwrap()).await.unwrap().is_none());

        let dup = store.insert_workspace(&record("a", &[])).await.unwrap_err();
        assert_eq!(dup.reason(), Reason::WorkspaceAlreadyExists);
        // Other conflicts are not "the workspace exists": a rollback deciding from that reason
        // would leave a container of its own behind, or remove someone else's.
        let id = WorkspaceId::parse("a").unwrap();
        store.insert_version(&id, 1, "create", "img", "sha256:x").await.unwrap();
        let version_conflict = store.insert_version(&id, 1, "create", "img", "sha256:x").await.unwrap_err();
        assert_eq!(version_conflict.reason(), Reason::StoreError);

        let first = store.list_workspaces(None, 2, &BTreeMap::new()).await.unwrap();
        let ids: Vec<_> = first.workspaces.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(first.next_after.as_deref(), Some("b"));
        let second = store.list_workspaces(Some("b"), 2, &BTreeMap::new()).await.unwrap();
        assert_eq!(second.workspaces.len(), 1);
        assert!(second.next_after.is_none());

        let selector = BTreeMap::from([("team".to_owned(), "red".to_owned())]);
        let red = store.list_workspaces(None, 10, &selector).await.unwrap();
        let ids: Vec<_> = red.workspaces.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
    }
}
