//! `berth events`: a WatchEvents stream, one line (or one JSON object) per event.

use berth_api::v1 as pb;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use serde_json::json;
use tokio_stream::StreamExt as _;

use super::connect::Channel;
use super::{OutputFormat, describe};

/// Parses `task_exited`, `task-exited` or `TASK_EXITED` into a WorkspaceEventKind value.
pub fn parse_kind(text: &str) -> Result<i32, String> {
    let name = format!("WORKSPACE_EVENT_KIND_{}", text.to_ascii_uppercase().replace('-', "_"));
    match pb::WorkspaceEventKind::from_str_name(&name) {
        Some(kind) if kind != pb::WorkspaceEventKind::Unspecified => Ok(kind.into()),
        _ => {
            let known: Vec<String> = (1..)
                .map_while(|value| pb::WorkspaceEventKind::try_from(value).ok())
                .map(|kind| short_kind(kind).to_ascii_lowercase())
                .collect();
            Err(format!("{text:?} is not an event kind; one of: {}", known.join(", ")))
        }
    }
}

fn short_kind(kind: pb::WorkspaceEventKind) -> &'static str {
    kind.as_str_name().trim_start_matches("WORKSPACE_EVENT_KIND_")
}

fn short_state(state: pb::WorkspaceState) -> &'static str {
    state.as_str_name().trim_start_matches("WORKSPACE_STATE_")
}

/// Prints events until the stream ends (the server stops) or fails.
pub async fn follow(
    client: &mut WorkspaceServiceClient<Channel>,
    request: pb::WatchEventsRequest,
    heartbeats: bool,
    output: OutputFormat,
) -> Result<(), String> {
    let mut events = client.watch_events(request).await.map_err(describe)?.into_inner();
    while let Some(response) = events.next().await {
        let Some(event) = response.map_err(describe)?.event else {
            continue;
        };
        if event.kind() == pb::WorkspaceEventKind::Heartbeat && !heartbeats {
            continue;
        }
        match output {
            OutputFormat::Json => println!("{}", event_json(&event)),
            OutputFormat::Table => println!("{}", event_line(&event)),
        }
    }
    Ok(())
}

fn time_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok().map(|time| (time, t.nanos)))
        .map(|(time, nanos)| time + time::Duration::nanoseconds(i64::from(nanos)))
        .and_then(|time| time.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// `42 2024-05-01T12:00:00.1Z bot STATE_CHANGED RUNNING->STOPPED the init exited`.
fn event_line(event: &pb::WorkspaceEvent) -> String {
    let kind = event.kind();
    if kind == pb::WorkspaceEventKind::Heartbeat {
        return format!("- {} - HEARTBEAT", time_text(event.event_time.as_ref()));
    }
    let mut parts = vec![
        event.event_id.to_string(),
        time_text(event.event_time.as_ref()),
        event.workspace_id.clone(),
        short_kind(kind).to_owned(),
    ];
    if kind == pb::WorkspaceEventKind::StateChanged {
        parts.push(format!("{}->{}", short_state(event.previous_state()), short_state(event.state())));
    } else if event.state() != pb::WorkspaceState::Unspecified {
        parts.push(short_state(event.state()).to_owned());
    }
    if kind == pb::WorkspaceEventKind::TaskExited {
        parts.push(format!("exit={}", event.exit_code));
    }
    if !event.snapshot_name.is_empty() {
        parts.push(format!("snapshot={}", event.snapshot_name));
    }
    if event.version > 0 {
        parts.push(format!("version={}", event.version));
    }
    if !event.failure_reason.is_empty() {
        parts.push(event.failure_reason.clone());
    }
    if !event.message.is_empty() {
        parts.push(event.message.clone());
    }
    parts.join(" ")
}

/// The proto3 JSON form of an event.
fn event_json(event: &pb::WorkspaceEvent) -> serde_json::Value {
    json!({
        "eventId": event.event_id.to_string(),
        "eventTime": time_text(event.event_time.as_ref()),
        "workspaceId": event.workspace_id,
        "kind": event.kind().as_str_name(),
        "state": event.state().as_str_name(),
        "previousState": event.previous_state().as_str_name(),
        "message": event.message,
        "exitCode": event.exit_code,
        "snapshotName": event.snapshot_name,
        "version": event.version.to_string(),
        "failureReason": event.failure_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_in_any_case_and_unknown_ones_list_the_known() {
        assert_eq!(parse_kind("task_exited"), Ok(pb::WorkspaceEventKind::TaskExited.into()));
        assert_eq!(parse_kind("STATE-CHANGED"), Ok(pb::WorkspaceEventKind::StateChanged.into()));
        let err = parse_kind("exploded").unwrap_err();
        assert!(err.contains("task_exited") && err.contains("image_changed"), "{err}");
        assert!(parse_kind("unspecified").is_err());
    }

    #[test]
    fn a_line_shows_the_transition_and_the_exit_code() {
        let event = pb::WorkspaceEvent {
            event_id: 42,
            workspace_id: "bot".to_owned(),
            kind: pb::WorkspaceEventKind::StateChanged.into(),
            previous_state: pb::WorkspaceState::Running.into(),
            state: pb::WorkspaceState::Failed.into(),
            failure_reason: "RUNTIME_ERROR".to_owned(),
            message: "the init exited".to_owned(),
            ..Default::default()
        };
        assert_eq!(event_line(&event), "42 - bot STATE_CHANGED RUNNING->FAILED RUNTIME_ERROR the init exited");
        let exited = pb::WorkspaceEvent {
            event_id: 41,
            workspace_id: "bot".to_owned(),
            kind: pb::WorkspaceEventKind::TaskExited.into(),
            exit_code: 137,
            ..Default::default()
        };
        assert_eq!(event_line(&exited), "41 - bot TASK_EXITED exit=137");
    }
}
