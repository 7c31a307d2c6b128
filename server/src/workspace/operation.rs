//! A replayable event log of one long operation (a create): the operation runs in its own task
//! and appends events; any number of callers subscribe, each receiving every event from the
//! first, then the outcome. A caller that goes away does not affect the operation.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::Notify;

use crate::error::{Error, Result};

struct LogState<E> {
    events: Vec<E>,
    outcome: Option<Result<(), Error>>,
}

/// The shared log; cheap to clone.
pub struct OperationLog<E> {
    state: Arc<Mutex<LogState<E>>>,
    changed: Arc<Notify>,
}

impl<E> Clone for OperationLog<E> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), changed: self.changed.clone() }
    }
}

impl<E: Clone + Send + 'static> OperationLog<E> {
    /// An empty, unfinished log.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(LogState { events: Vec::new(), outcome: None })),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Appends an event (callable from blocking threads too).
    pub fn push(&self, event: E) {
        self.state.lock().expect("operation log lock").events.push(event);
        self.changed.notify_waiters();
    }

    /// Records the outcome; subscribers end after the events so far.
    pub fn finish(&self, outcome: Result<()>) {
        self.state.lock().expect("operation log lock").outcome = Some(outcome);
        self.changed.notify_waiters();
    }

    /// Every event from the first, then the error if the operation failed.
    pub fn subscribe(&self) -> Pin<Box<dyn Stream<Item = Result<E>> + Send>> {
        let log = self.clone();
        Box::pin(futures::stream::unfold(Some((log, 0usize)), |position| async move {
            let (log, cursor) = position?;
            match log.next(cursor).await {
                Next::Event(event) => Some((Ok(event), Some((log, cursor + 1)))),
                Next::Failed(err) => Some((Err(err), None)),
                Next::Done => None,
            }
        }))
    }

    /// Waits for the event at `cursor` or the outcome.
    async fn next(&self, cursor: usize) -> Next<E> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a push between the look and the wait is not lost.
            changed.as_mut().enable();
            {
                let state = self.state.lock().expect("operation log lock");
                if let Some(event) = state.events.get(cursor) {
                    return Next::Event(event.clone());
                }
                match &state.outcome {
                    Some(Ok(())) => return Next::Done,
                    Some(Err(err)) => return Next::Failed(err.clone()),
                    None => {}
                }
            }
            changed.await;
        }
    }
}

enum Next<E> {
    Event(E),
    Failed(Error),
    Done,
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;
    use crate::error::Reason;

    #[tokio::test]
    async fn late_subscribers_replay_everything_then_see_the_outcome() {
        let log = OperationLog::new();
        log.push(1);
        let early = log.subscribe();
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for event in 2..=5 {
                    tokio::task::yield_now().await;
                    log.push(event);
                }
                log.finish(Err(Error::new(Reason::Internal, "boom")));
            })
        };
        writer.await.unwrap();
        let late = log.subscribe();
        for stream in [early, late] {
            let items: Vec<_> = stream.collect().await;
            let events: Vec<_> = items.iter().filter_map(|item| item.as_ref().ok().copied()).collect();
            assert_eq!(events, [1, 2, 3, 4, 5]);
            assert_eq!(items.last().unwrap().as_ref().unwrap_err().reason(), Reason::Internal);
        }
    }

    #[tokio::test]
    async fn success_ends_the_stream_after_the_last_event() {
        let log = OperationLog::new();
        let stream = log.subscribe();
        log.push("a");
        log.finish(Ok(()));
        let items: Vec<_> = stream.collect().await;
        assert_eq!(items.len(), 1);
        assert_eq!(*items[0].as_ref().unwrap(), "a");
    }
}
