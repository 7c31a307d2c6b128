//! A replayable event log of one long operation (a create): the operation runs in its own task
//! and appends events; any number of callers subscribe, each receiving the events from the
//! first, then the outcome. A caller that goes away does not affect the operation.
//!
//! Memory stays bounded however long the operation runs: the log keeps only the latest event of
//! each [`Phased::phase`] (a pull reports progress every 200 ms for minutes). A subscriber that
//! is behind skips the superseded events of a phase and gets its latest; one that keeps up sees
//! every event.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::Notify;

use crate::error::{Error, Result};

/// Events that belong to a phase; a later event of the same phase supersedes an earlier one.
pub trait Phased {
    fn phase(&self) -> u8;
}

struct LogState<E> {
    /// The latest event of each phase with its sequence number, in sequence order.
    events: Vec<(u64, E)>,
    next_sequence: u64,
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

impl<E: Phased + Clone + Send + 'static> OperationLog<E> {
    /// An empty, unfinished log.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(LogState { events: Vec::new(), next_sequence: 0, outcome: None })),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Appends an event, dropping the one of the same phase it supersedes (callable from
    /// blocking threads too).
    pub fn push(&self, event: E) {
        {
            let mut state = self.state.lock().expect("operation log lock");
            let phase = event.phase();
            state.events.retain(|(_, kept)| kept.phase() != phase);
            let sequence = state.next_sequence;
            state.next_sequence += 1;
            state.events.push((sequence, event));
        }
        self.changed.notify_waiters();
    }

    /// Records the outcome; subscribers end after the events so far.
    pub fn finish(&self, outcome: Result<()>) {
        self.state.lock().expect("operation log lock").outcome = Some(outcome);
        self.changed.notify_waiters();
    }

    /// The kept events from the first, then the error if the operation failed.
    pub fn subscribe(&self) -> Pin<Box<dyn Stream<Item = Result<E>> + Send>> {
        let log = self.clone();
        Box::pin(futures::stream::unfold(Some((log, 0u64)), |position| async move {
            let (log, cursor) = position?;
            match log.next(cursor).await {
                Next::Event(sequence, event) => Some((Ok(event), Some((log, sequence + 1)))),
                Next::Failed(err) => Some((Err(err), None)),
                Next::Done => None,
            }
        }))
    }

    /// Waits for the first kept event with a sequence number of at least `cursor`, or the outcome.
    async fn next(&self, cursor: u64) -> Next<E> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a push between the look and the wait is not lost.
            changed.as_mut().enable();
            {
                let state = self.state.lock().expect("operation log lock");
                if let Some((sequence, event)) = state.events.iter().find(|(sequence, _)| *sequence >= cursor) {
                    return Next::Event(*sequence, event.clone());
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
    Event(u64, E),
    Failed(Error),
    Done,
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;
    use crate::error::Reason;

    /// Test events: the phase is the value's tens digit.
    impl Phased for u32 {
        fn phase(&self) -> u8 {
            u8::try_from(self / 10).unwrap()
        }
    }

    impl Phased for &str {
        fn phase(&self) -> u8 {
            0
        }
    }

    #[tokio::test]
    async fn the_log_keeps_the_latest_event_of_each_phase_for_late_subscribers() {
        let log = OperationLog::new();
        let live = log.subscribe();
        for progress in 0..1000u32 {
            log.push(10 + progress % 10);
        }
        log.push(20);
        log.push(15);
        assert_eq!(log.state.lock().unwrap().events.len(), 2, "memory is bounded by the phases");
        log.finish(Ok(()));
        let late: Vec<u32> = log.subscribe().map(|item| item.unwrap()).collect().await;
        assert_eq!(late, [20, 15]);
        // A subscriber that fell behind (it never ran while the events were pushed) skips the
        // superseded events and gets the latest of each phase.
        let behind: Vec<u32> = live.map(|item| item.unwrap()).collect().await;
        assert_eq!(behind, [20, 15]);
    }

    #[tokio::test]
    async fn late_subscribers_replay_everything_then_see_the_outcome() {
        let log = OperationLog::new();
        log.push(1u32);
        let early = log.subscribe();
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for event in [12u32, 23, 34, 45] {
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
            assert_eq!(events, [1, 12, 23, 34, 45]);
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
