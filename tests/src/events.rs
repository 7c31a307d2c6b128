//! Helpers for event tests: a WatchEvents stream read with deadlines, and killing a workspace's
//! init from the host.

use std::time::Duration;

use berth_api::v1::{WatchEventsRequest, WorkspaceEvent, WorkspaceEventKind};
use tokio_stream::StreamExt as _;

use crate::snapshots::Client;

/// A WatchEvents stream.
pub struct Watch {
    stream: tonic::Streaming<berth_api::v1::WatchEventsResponse>,
}

impl Watch {
    /// Opens a stream with a 1-second heartbeat.
    pub async fn open(
        client: &mut Client,
        workspace_id: &str,
        after_event_id: i64,
        kinds: &[WorkspaceEventKind],
    ) -> Self {
        let request = WatchEventsRequest {
            workspace_id: workspace_id.to_owned(),
            after_event_id,
            heartbeat_interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            kinds: kinds.iter().map(|kind| i32::from(*kind)).collect(),
        };
        Self { stream: client.watch_events(request).await.expect("WatchEvents answers").into_inner() }
    }

    /// The next item, heartbeats included; panics after `within`.
    pub async fn next_item(&mut self, within: Duration) -> WorkspaceEvent {
        let item = tokio::time::timeout(within, self.stream.next())
            .await
            .unwrap_or_else(|_| panic!("no event or heartbeat within {within:?}"))
            .expect("the stream ended")
            .expect("the stream failed");
        item.event.expect("every response holds an event")
    }

    /// The next event that is not a heartbeat; panics after `within`.
    pub async fn next_event(&mut self, within: Duration) -> WorkspaceEvent {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_item(left).await;
            if event.kind() != WorkspaceEventKind::Heartbeat {
                return event;
            }
        }
    }

    /// Events until one of `kind` (returned last); panics after `within`.
    pub async fn until(&mut self, kind: WorkspaceEventKind, within: Duration) -> Vec<WorkspaceEvent> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = tokio::time::timeout(left, self.next_event(within))
                .await
                .unwrap_or_else(|_| panic!("no {kind:?} within {within:?}; saw {seen:?}"));
            let done = event.kind() == kind;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }

    /// Asserts nothing but heartbeats arrives for `during`.
    pub async fn expect_quiet(&mut self, during: Duration) {
        let deadline = tokio::time::Instant::now() + during;
        while tokio::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => return,
                Ok(item) => {
                    let event = item.expect("the stream ended").expect("the stream failed").event.unwrap();
                    assert_eq!(event.kind(), WorkspaceEventKind::Heartbeat, "unexpected event {event:?}");
                }
            }
        }
    }
}

/// SIGKILL to a host pid, as an operator (or the OOM killer) would end a workspace's init.
pub fn kill_9(pid: u32) {
    assert!(pid > 1, "no init pid to kill");
    let status = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -9 {pid} failed");
}
