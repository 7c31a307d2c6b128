//! WatchEvents: request validation, and stored events in their proto form.

use std::time::Duration;

use berth_api::v1 as pb;
use futures::StreamExt as _;
use tonic::Status;

use super::convert::timestamp;
use super::workspace::ResponseStream;
use crate::error::{Error, Reason};
use crate::model::{WorkspaceId, WorkspaceState};
use crate::store::{EventQuery, StoredEvent};
use crate::workspace::{Manager, WatchItem};

/// Heartbeat interval when the request sets none, and its bounds, as the proto documents them.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
const MAX_HEARTBEAT: Duration = Duration::from_secs(5 * 60);

/// Stored kind names and the proto kinds they map to; one table both ways.
const KINDS: [(&str, pb::WorkspaceEventKind); 17] = [
    ("created", pb::WorkspaceEventKind::Created),
    ("state_changed", pb::WorkspaceEventKind::StateChanged),
    ("deleted", pb::WorkspaceEventKind::Deleted),
    ("task_exited", pb::WorkspaceEventKind::TaskExited),
    ("oom", pb::WorkspaceEventKind::Oom),
    ("snapshot_created", pb::WorkspaceEventKind::SnapshotCreated),
    ("snapshot_deleted", pb::WorkspaceEventKind::SnapshotDeleted),
    ("snapshot_restored", pb::WorkspaceEventKind::SnapshotRestored),
    ("data_preserved", pb::WorkspaceEventKind::DataPreserved),
    ("data_restored", pb::WorkspaceEventKind::DataRestored),
    ("data_reset", pb::WorkspaceEventKind::DataReset),
    ("data_imported", pb::WorkspaceEventKind::DataImported),
    ("orphan_detected", pb::WorkspaceEventKind::OrphanDetected),
    ("image_changed", pb::WorkspaceEventKind::ImageChanged),
    ("updated", pb::WorkspaceEventKind::Updated),
    ("rebuilt", pb::WorkspaceEventKind::Rebuilt),
    // Never stored: listed so a request naming it passes (heartbeats are sent regardless).
    ("heartbeat", pb::WorkspaceEventKind::Heartbeat),
];

fn kind_of(stored: &str) -> Option<pb::WorkspaceEventKind> {
    KINDS.iter().find(|(name, _)| *name == stored).map(|(_, kind)| *kind)
}

fn stored_kind(kind: pb::WorkspaceEventKind) -> Option<&'static str> {
    KINDS.iter().find(|(_, known)| *known == kind).map(|(name, _)| *name)
}

/// Serves one WatchEvents call.
pub(super) fn watch_events(
    manager: &Manager,
    request: pb::WatchEventsRequest,
) -> Result<ResponseStream<pb::WatchEventsResponse>, Status> {
    let query = event_query(&request)?;
    let heartbeat = heartbeat_interval(request.heartbeat_interval);
    let items = manager.watch_events(query, request.after_event_id > 0, heartbeat);
    let responses = items.filter_map(|item| async move {
        match item {
            Ok(WatchItem::Heartbeat) => Some(Ok(response(heartbeat_event()))),
            // A kind this server cannot name is skipped rather than sent as UNSPECIFIED.
            Ok(WatchItem::Event(event)) => workspace_event(&event).map(|event| Ok(response(event))),
            Err(err) => Some(Err(Status::from(err))),
        }
    });
    Ok(Box::pin(responses))
}

fn response(event: pb::WorkspaceEvent) -> pb::WatchEventsResponse {
    pb::WatchEventsResponse { event: Some(event) }
}

/// The store query a request asks for.
fn event_query(request: &pb::WatchEventsRequest) -> Result<EventQuery, Error> {
    let workspace_id = if request.workspace_id.is_empty() {
        None
    } else {
        Some(WorkspaceId::parse(&request.workspace_id)?.as_str().to_owned())
    };
    if request.after_event_id < 0 {
        return Err(Error::new(
            Reason::InvalidArgument,
            format!(
                "after_event_id {} is negative; pass 0 for live events only or the last event_id seen",
                request.after_event_id
            ),
        ));
    }
    let mut kinds = Vec::new();
    for &value in &request.kinds {
        let kind = pb::WorkspaceEventKind::try_from(value)
            .ok()
            .filter(|kind| *kind != pb::WorkspaceEventKind::Unspecified)
            .ok_or_else(|| {
                Error::new(
                    Reason::InvalidArgument,
                    format!("kinds holds {value}, which is not a WorkspaceEventKind; leave kinds empty for every kind"),
                )
            })?;
        if kind != pb::WorkspaceEventKind::Heartbeat {
            kinds.push(stored_kind(kind).expect("every kind but UNSPECIFIED has a stored name").to_owned());
        }
    }
    // Only heartbeats asked for: no event matches, which an impossible kind expresses.
    if kinds.is_empty() && !request.kinds.is_empty() {
        kinds.push("heartbeat".to_owned());
    }
    Ok(EventQuery { after_id: request.after_event_id, workspace_id, kinds })
}

/// The requested heartbeat interval: 15 s when unset, clamped to 1 s ..= 5 min.
fn heartbeat_interval(requested: Option<prost_types::Duration>) -> Duration {
    let Some(requested) = requested else {
        return DEFAULT_HEARTBEAT;
    };
    // Negative durations do not convert: they are below the minimum.
    Duration::try_from(requested).unwrap_or(Duration::ZERO).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT)
}

fn heartbeat_event() -> pb::WorkspaceEvent {
    pb::WorkspaceEvent {
        event_time: Some(timestamp(time::OffsetDateTime::now_utc())),
        kind: pb::WorkspaceEventKind::Heartbeat.into(),
        ..Default::default()
    }
}

/// The proto form of a stored event; None for a kind this server has no proto kind for.
pub(super) fn workspace_event(event: &StoredEvent) -> Option<pb::WorkspaceEvent> {
    let kind = kind_of(&event.kind).filter(|kind| *kind != pb::WorkspaceEventKind::Heartbeat)?;
    let detail = &event.detail;
    let text = |key: &str| detail.get(key).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    let state_of = |key: &str| {
        detail
            .get(key)
            .and_then(serde_json::Value::as_str)
            .and_then(|state| state.parse::<WorkspaceState>().ok())
            .map_or(pb::WorkspaceState::Unspecified, super::convert::state)
    };
    let previous_state = if kind == pb::WorkspaceEventKind::StateChanged {
        state_of("previous_state")
    } else {
        pb::WorkspaceState::Unspecified
    };
    let snapshot_event = matches!(
        kind,
        pb::WorkspaceEventKind::SnapshotCreated
            | pb::WorkspaceEventKind::SnapshotDeleted
            | pb::WorkspaceEventKind::SnapshotRestored
            | pb::WorkspaceEventKind::ImageChanged
    );
    let exit_code = if kind == pb::WorkspaceEventKind::TaskExited {
        detail.get("exit_code").and_then(serde_json::Value::as_i64).and_then(|code| i32::try_from(code).ok())
    } else {
        None
    };
    Some(pb::WorkspaceEvent {
        event_id: event.id,
        event_time: Some(timestamp(event.event_time)),
        workspace_id: event.workspace_id.clone(),
        kind: kind.into(),
        state: state_of("state").into(),
        previous_state: previous_state.into(),
        message: event.message.clone(),
        exit_code: exit_code.unwrap_or(0),
        snapshot_name: if snapshot_event { text("snapshot_name") } else { String::new() },
        version: if snapshot_event {
            detail.get("version").and_then(serde_json::Value::as_i64).unwrap_or(0)
        } else {
            0
        },
        failure_reason: text("failure_reason"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(kind: &str, detail: serde_json::Value) -> StoredEvent {
        StoredEvent {
            id: 7,
            workspace_id: "bot".to_owned(),
            kind: kind.to_owned(),
            message: "m".to_owned(),
            detail,
            event_time: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn every_proto_kind_but_unspecified_has_a_stored_name() {
        for value in 1..=17 {
            let kind = pb::WorkspaceEventKind::try_from(value).unwrap();
            assert!(stored_kind(kind).is_some(), "{kind:?}");
        }
    }

    #[test]
    fn state_changes_carry_both_states_and_exits_their_code() {
        let event = stored(
            "state_changed",
            serde_json::json!({ "previous_state": "running", "state": "failed", "failure_reason": "RUNTIME_ERROR" }),
        );
        let event = workspace_event(&event).unwrap();
        assert_eq!(event.kind(), pb::WorkspaceEventKind::StateChanged);
        assert_eq!(event.previous_state(), pb::WorkspaceState::Running);
        assert_eq!(event.state(), pb::WorkspaceState::Failed);
        assert_eq!(event.failure_reason, "RUNTIME_ERROR");

        let exited = workspace_event(&stored("task_exited", serde_json::json!({ "exit_code": 137 }))).unwrap();
        assert_eq!(exited.exit_code, 137);
        assert_eq!(exited.previous_state(), pb::WorkspaceState::Unspecified);

        let snapshot = workspace_event(&stored(
            "snapshot_created",
            serde_json::json!({ "snapshot_name": "s1", "version": 2, "state": "running" }),
        ))
        .unwrap();
        assert_eq!((snapshot.snapshot_name.as_str(), snapshot.version), ("s1", 2));
        assert_eq!(snapshot.state(), pb::WorkspaceState::Running);
        assert!(workspace_event(&stored("something_new", serde_json::json!({}))).is_none());
    }

    #[test]
    fn heartbeat_intervals_are_clamped() {
        let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        assert_eq!(heartbeat_interval(None), Duration::from_secs(15));
        assert_eq!(heartbeat_interval(secs(0)), Duration::from_secs(1));
        assert_eq!(heartbeat_interval(secs(-5)), Duration::from_secs(1));
        assert_eq!(heartbeat_interval(secs(42)), Duration::from_secs(42));
        assert_eq!(heartbeat_interval(secs(3600)), Duration::from_secs(300));
    }

    #[test]
    fn kinds_filter_maps_to_stored_names_and_rejects_unknown_values() {
        let request = pb::WatchEventsRequest {
            kinds: vec![pb::WorkspaceEventKind::TaskExited.into(), pb::WorkspaceEventKind::Heartbeat.into()],
            ..Default::default()
        };
        assert_eq!(event_query(&request).unwrap().kinds, ["task_exited"]);
        for bad in [0, 99] {
            let request = pb::WatchEventsRequest { kinds: vec![bad], ..Default::default() };
            assert_eq!(event_query(&request).unwrap_err().reason(), Reason::InvalidArgument);
        }
        let request = pb::WatchEventsRequest { workspace_id: "Not Valid".to_owned(), ..Default::default() };
        assert!(event_query(&request).is_err());
    }
}
