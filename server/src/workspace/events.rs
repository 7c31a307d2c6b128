//! The event bus: every event is stored first (the store assigns its id), then broadcast to live
//! watchers. A watch subscribes before it replays stored events, then follows the broadcast;
//! ids tell it what it has sent, so the hand-over has neither duplicates nor gaps, and a watcher
//! that fell behind the broadcast reads what it missed from the store.

use std::time::Duration;

use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::error::Result;
use crate::store::{EventQuery, Store, StoredEvent};

/// How many live events a watcher may fall behind before it re-reads from the store.
const BROADCAST_CAPACITY: usize = 1024;
/// Stored events read per page while replaying (bounds a watcher's memory).
const REPLAY_PAGE: u32 = 256;

/// What a watch yields.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    Event(StoredEvent),
    /// Nothing was sent for a heartbeat interval.
    Heartbeat,
}

/// Stores events and broadcasts them to watchers, in id order.
pub struct EventBus {
    sender: broadcast::Sender<StoredEvent>,
    /// Held from the insert to the broadcast, so events are broadcast in the order of their ids:
    /// a watcher may then skip every id up to the last it sent without losing one.
    publishing: Mutex<()>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self { sender: broadcast::channel(BROADCAST_CAPACITY).0, publishing: Mutex::new(()) }
    }
}

impl EventBus {
    /// Stores the event, then broadcasts it; returns it with its id.
    pub async fn publish(
        &self,
        store: &Store,
        workspace_id: &str,
        kind: &str,
        message: &str,
        detail: &serde_json::Value,
    ) -> Result<StoredEvent> {
        let _order = self.publishing.lock().await;
        let event = store.insert_event(workspace_id, kind, message, detail).await?;
        // No receiver is fine: nobody watches.
        let _ = self.sender.send(event.clone());
        Ok(event)
    }

    /// Streams the events matching `query.workspace_id` and `query.kinds`: with `replay`, the
    /// stored ones after `query.after_id` first, then live ones; without, live ones only. A
    /// heartbeat follows every `heartbeat` without an event. The stream ends when the receiver
    /// goes away; an error (the store failing) is its last item.
    pub fn watch(
        &self,
        store: Store,
        mut query: EventQuery,
        replay: bool,
        heartbeat: Duration,
    ) -> ReceiverStream<Result<WatchItem>> {
        // Subscribe before anything is read: an event stored after the subscription is either
        // read from the store or received here, and ids sort out which.
        let mut live = self.sender.subscribe();
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(async move {
            let outcome = async {
                if !replay {
                    query.after_id = store.last_event_id().await?;
                }
                if !catch_up(&store, &mut query, &sender).await {
                    return Ok(());
                }
                let sleep = tokio::time::sleep(heartbeat);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        received = live.recv() => match received {
                            Ok(event) => {
                                if event.id <= query.after_id {
                                    continue;
                                }
                                query.after_id = event.id;
                                if !query.matches(&event) {
                                    continue;
                                }
                                if sender.send(Ok(WatchItem::Event(event))).await.is_err() {
                                    return Ok(());
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(missed)) => {
                                debug!(missed, "an event watcher fell behind; reading what it missed from the store");
                                if !catch_up(&store, &mut query, &sender).await {
                                    return Ok(());
                                }
                            }
                            // The bus went away with the Manager: the server is stopping.
                            Err(broadcast::error::RecvError::Closed) => return Ok(()),
                        },
                        () = &mut sleep => {
                            if sender.send(Ok(WatchItem::Heartbeat)).await.is_err() {
                                return Ok(());
                            }
                        }
                        () = sender.closed() => return Ok(()),
                    }
                    sleep.as_mut().reset(tokio::time::Instant::now() + heartbeat);
                }
            }
            .await;
            if let Err(err) = outcome {
                let _ = sender.send(Err(err)).await;
            }
        });
        ReceiverStream::new(receiver)
    }
}

/// Sends every stored event matching `query` after its id, page by page, advancing the id;
/// false when the receiver went away. A store error is sent as the last item (also false).
async fn catch_up(store: &Store, query: &mut EventQuery, sender: &mpsc::Sender<Result<WatchItem>>) -> bool {
    loop {
        let page = match store.events_after(query, REPLAY_PAGE).await {
            Ok(page) => page,
            Err(err) => {
                let _ = sender.send(Err(err)).await;
                return false;
            }
        };
        let full = page.len() == REPLAY_PAGE as usize;
        for event in page {
            query.after_id = event.id;
            if sender.send(Ok(WatchItem::Event(event))).await.is_err() {
                return false;
            }
        }
        if !full {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt as _;

    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/berth.db?mode=rwc", dir.path().display())).await.unwrap();
        (store, dir)
    }

    async fn publish(bus: &EventBus, store: &Store, workspace: &str, message: &str) -> StoredEvent {
        bus.publish(store, workspace, "created", message, &serde_json::json!({})).await.unwrap()
    }

    async fn next_event(stream: &mut ReceiverStream<Result<WatchItem>>) -> StoredEvent {
        loop {
            let item = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("an item").unwrap();
            if let WatchItem::Event(event) = item.unwrap() {
                return event;
            }
        }
    }

    #[tokio::test]
    async fn replay_hands_over_to_live_without_duplicates_or_gaps() {
        let (store, _dir) = store().await;
        let bus = Arc::new(EventBus::default());
        let first = publish(&bus, &store, "a", "0").await;
        for n in 1..600 {
            publish(&bus, &store, "a", &n.to_string()).await;
        }
        // Events keep coming while the watcher replays (more than a page and more than fits).
        let writer = {
            let (bus, store) = (bus.clone(), store.clone());
            tokio::spawn(async move {
                for n in 600..1800 {
                    publish(&bus, &store, "a", &n.to_string()).await;
                }
            })
        };
        let query = EventQuery { after_id: first.id, ..Default::default() };
        let mut stream = bus.watch(store.clone(), query, true, Duration::from_secs(60));
        let mut previous = first.id;
        for n in 1..1800 {
            let event = next_event(&mut stream).await;
            assert_eq!(event.id, previous + 1, "ids follow each other");
            assert_eq!(event.message, n.to_string());
            previous = event.id;
        }
        writer.await.unwrap();
        let late = publish(&bus, &store, "a", "late").await;
        assert_eq!(next_event(&mut stream).await, late);
    }

    #[tokio::test]
    async fn a_live_watch_skips_history_and_filters() {
        let (store, _dir) = store().await;
        let bus = EventBus::default();
        publish(&bus, &store, "a", "old").await;
        let query = EventQuery { workspace_id: Some("b".to_owned()), ..Default::default() };
        let mut stream = bus.watch(store.clone(), query, false, Duration::from_secs(60));
        // Let the watcher read where the history ends before anything new arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        publish(&bus, &store, "a", "other workspace").await;
        let mine = publish(&bus, &store, "b", "mine").await;
        assert_eq!(next_event(&mut stream).await, mine);
    }

    #[tokio::test]
    async fn heartbeats_come_while_nothing_happens() {
        let (store, _dir) = store().await;
        let bus = EventBus::default();
        let mut stream = bus.watch(store, EventQuery::default(), false, Duration::from_millis(50));
        let item = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(item, WatchItem::Heartbeat);
    }
}
