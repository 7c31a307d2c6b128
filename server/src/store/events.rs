//! The events table: lifecycle history with ids assigned here (`seq`), read back in pages for
//! WatchEvents' replay and pruned by count and age.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use time::OffsetDateTime;

use super::{Store, map_err};
use crate::error::Result;

/// One stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// Assigned by the store, increasing in insertion order.
    pub id: i64,
    pub workspace_id: String,
    /// snake_case kind, such as `state_changed`.
    pub kind: String,
    pub message: String,
    /// Structured detail (state, previous_state, snapshot_name, version, exit_code, ...).
    pub detail: serde_json::Value,
    pub event_time: OffsetDateTime,
}

/// Which stored events a read returns: ids after `after_id`, optionally of one workspace and of
/// some kinds only (empty: every kind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub after_id: i64,
    pub workspace_id: Option<String>,
    pub kinds: Vec<String>,
}

impl EventQuery {
    /// Whether `event` passes the workspace and kind filters (the id is the caller's to check).
    pub fn matches(&self, event: &StoredEvent) -> bool {
        self.workspace_id.as_ref().is_none_or(|id| *id == event.workspace_id)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

impl Store {
    /// Appends an event and returns it with the id the database assigned.
    pub async fn insert_event(
        &self,
        workspace_id: &str,
        kind: &str,
        message: &str,
        detail: &serde_json::Value,
    ) -> Result<StoredEvent> {
        let event_time = OffsetDateTime::now_utc();
        let row = sqlx::query(
            "INSERT INTO events (workspace_id, kind, message, detail, event_time) VALUES (?, ?, ?, ?, ?) RETURNING seq",
        )
        .bind(workspace_id)
        .bind(kind)
        .bind(message)
        .bind(detail.to_string())
        .bind(event_time)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(StoredEvent {
            id: row.try_get("seq").map_err(map_err)?,
            workspace_id: workspace_id.to_owned(),
            kind: kind.to_owned(),
            message: message.to_owned(),
            detail: detail.clone(),
            event_time,
        })
    }

    /// Up to `limit` events matching `query`, oldest first.
    pub async fn events_after(&self, query: &EventQuery, limit: u32) -> Result<Vec<StoredEvent>> {
        let mut sql: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT seq, workspace_id, kind, message, detail, event_time FROM events WHERE seq > ");
        sql.push_bind(query.after_id);
        if let Some(id) = &query.workspace_id {
            sql.push(" AND workspace_id = ").push_bind(id.clone());
        }
        if !query.kinds.is_empty() {
            sql.push(" AND kind IN (");
            let mut kinds = sql.separated(", ");
            for kind in &query.kinds {
                kinds.push_bind(kind.clone());
            }
            sql.push(")");
        }
        sql.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
        let rows = sql.build().fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(stored_event).collect()
    }

    /// The id of the newest stored event; 0 when there is none.
    pub async fn last_event_id(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        row.try_get("last").map_err(map_err)
    }

    /// Deletes events beyond the newest `keep` and those older than `older_than`; returns how
    /// many went.
    pub async fn prune_events(&self, keep: u64, older_than: OffsetDateTime) -> Result<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let by_count =
            sqlx::query("DELETE FROM events WHERE seq <= (SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?)")
                .bind(keep)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        // event_time is stored in UTC in one fixed format, so text order is time order.
        let by_age = sqlx::query("DELETE FROM events WHERE event_time < ?")
            .bind(older_than)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(by_count.rows_affected() + by_age.rows_affected())
    }
}

fn stored_event(row: &SqliteRow) -> Result<StoredEvent> {
    let detail: String = row.try_get("detail").map_err(map_err)?;
    Ok(StoredEvent {
        id: row.try_get("seq").map_err(map_err)?,
        workspace_id: row.try_get("workspace_id").map_err(map_err)?,
        kind: row.try_get("kind").map_err(map_err)?,
        message: row.try_get("message").map_err(map_err)?,
        // A detail that does not parse (written by hand) is treated as empty, not as a failure.
        detail: serde_json::from_str(&detail).unwrap_or_else(|_| serde_json::json!({})),
        event_time: row.try_get("event_time").map_err(map_err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/berth.db?mode=rwc", dir.path().display())).await.unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn ids_increase_and_reads_page_with_filters() {
        let (store, _dir) = store().await;
        let detail = serde_json::json!({});
        let a = store.insert_event("a", "created", "one", &detail).await.unwrap();
        let b = store.insert_event("b", "created", "two", &detail).await.unwrap();
        let c = store.insert_event("a", "state_changed", "three", &detail).await.unwrap();
        assert!(a.id < b.id && b.id < c.id);
        assert_eq!(store.last_event_id().await.unwrap(), c.id);

        let all = store.events_after(&EventQuery::default(), 2).await.unwrap();
        assert_eq!(all.iter().map(|event| event.id).collect::<Vec<_>>(), [a.id, b.id]);
        let rest = store.events_after(&EventQuery { after_id: b.id, ..Default::default() }, 2).await.unwrap();
        assert_eq!(rest, std::slice::from_ref(&c));
        let of_a = EventQuery { workspace_id: Some("a".to_owned()), ..Default::default() };
        assert_eq!(store.events_after(&of_a, 10).await.unwrap().len(), 2);
        let kinds = EventQuery { kinds: vec!["state_changed".to_owned()], ..Default::default() };
        assert_eq!(store.events_after(&kinds, 10).await.unwrap(), [c]);
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_count_and_drops_old_ones() {
        let (store, _dir) = store().await;
        let detail = serde_json::json!({});
        for n in 0..5 {
            store.insert_event("a", "created", &n.to_string(), &detail).await.unwrap();
        }
        let long_ago = OffsetDateTime::now_utc() - time::Duration::days(30);
        assert_eq!(store.prune_events(3, long_ago).await.unwrap(), 2);
        let left = store.events_after(&EventQuery::default(), 10).await.unwrap();
        assert_eq!(left.iter().map(|event| event.message.as_str()).collect::<Vec<_>>(), ["2", "3", "4"]);
        let future = OffsetDateTime::now_utc() + time::Duration::seconds(1);
        assert_eq!(store.prune_events(100, future).await.unwrap(), 3);
        assert_eq!(store.events_after(&EventQuery::default(), 10).await.unwrap(), []);
    }
}
