//! Per-workspace serialization with bounded memory, and coalescing of identical operations.
//!
//! Every mutating operation on a workspace holds its [`WorkspaceLocks`] guard. The map holds an
//! entry only while someone holds or waits for it: a StartWorkspace of a random id must not leave
//! an entry behind. [`InFlight`] makes a retried StopWorkspace (or any other operation) attach to
//! the one already running for the same workspace instead of queueing behind it, so N retries
//! cost one operation.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio::sync::OwnedMutexGuard;

use crate::error::Result;
use crate::model::WorkspaceId;

type LockMap = HashMap<WorkspaceId, Arc<tokio::sync::Mutex<()>>>;

/// The per-workspace mutexes.
#[derive(Default)]
pub struct WorkspaceLocks {
    map: Arc<Mutex<LockMap>>,
}

/// Holds one workspace's lock; dropping it releases the lock and, when nobody else holds or
/// waits for it, removes the map entry.
pub struct WorkspaceGuard {
    guard: Option<OwnedMutexGuard<()>>,
    id: WorkspaceId,
    map: Arc<Mutex<LockMap>>,
}

impl WorkspaceLocks {
    /// Waits for the workspace's lock.
    pub async fn lock(&self, id: &WorkspaceId) -> WorkspaceGuard {
        // Clones happen only under the map lock, so the count the guard's drop reads is exact.
        let mutex = self.map.lock().expect("workspace locks").entry(id.clone()).or_default().clone();
        let guard = mutex.lock_owned().await;
        WorkspaceGuard { guard: Some(guard), id: id.clone(), map: self.map.clone() }
    }

    /// How many workspaces have an entry (held or awaited locks).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().expect("workspace locks").len()
    }
}

impl Drop for WorkspaceGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.map.lock().expect("workspace locks");
        if map.get(&self.id).is_some_and(|mutex| Arc::strong_count(mutex) == 1) {
            map.remove(&self.id);
        }
    }
}

/// What a coalesced operation answers; cloned to every caller that attached.
pub type Outcome<T> = Shared<BoxFuture<'static, Result<T>>>;

/// An operation's kind and workspace id.
type OperationKey = (&'static str, String);

/// Operations in flight, keyed by what they do and to which workspace.
pub struct InFlight<T> {
    operations: Arc<Mutex<HashMap<OperationKey, Outcome<T>>>>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        Self { operations: Arc::default() }
    }
}

impl<T: Clone + Send + Sync + 'static> InFlight<T> {
    /// Runs `start()`'s future in its own task unless the same operation on the same workspace
    /// is already running, in which case the caller gets that one's outcome. `spawn` runs the
    /// task (the Manager's tracker, so shutdown can wait for it).
    pub fn run<Fut>(
        &self,
        kind: &'static str,
        workspace_id: &str,
        start: impl FnOnce() -> Fut,
        spawn: impl FnOnce(BoxFuture<'static, ()>),
    ) -> Outcome<T>
    where
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let key = (kind, workspace_id.to_owned());
        let mut operations = self.operations.lock().expect("in-flight operations");
        if let Some(outcome) = operations.get(&key) {
            return outcome.clone();
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let outcome: Outcome<T> = async move {
            receiver.await.unwrap_or_else(|_| {
                Err(crate::error::Error::internal("the workspace operation task ended without an answer"))
            })
        }
        .boxed()
        .shared();
        operations.insert(key.clone(), outcome.clone());
        drop(operations);
        let work = start();
        let entry = Entry { operations: self.operations.clone(), key };
        spawn(
            async move {
                let result = work.await;
                // Forget the entry before answering, so a call after this one starts afresh.
                drop(entry);
                let _ = sender.send(result);
            }
            .boxed(),
        );
        outcome
    }
}

/// An operation's place in the in-flight map, given up when the operation ends, also when its
/// task panics (a stale entry would answer every later call with that failure).
struct Entry<T> {
    operations: Arc<Mutex<HashMap<OperationKey, Outcome<T>>>>,
    key: OperationKey,
}

impl<T> Drop for Entry<T> {
    fn drop(&mut self) {
        if let Ok(mut operations) = self.operations.lock() {
            operations.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn lock_entries_are_removed_once_nobody_holds_or_waits() {
        let locks = Arc::new(WorkspaceLocks::default());
        for index in 0..100 {
            let id = WorkspaceId::parse(&format!("random-{index}")).unwrap();
            drop(locks.lock(&id).await);
        }
        assert_eq!(locks.len(), 0);

        let id = WorkspaceId::parse("busy").unwrap();
        let first = locks.lock(&id).await;
        let waiter = {
            let locks = locks.clone();
            let id = id.clone();
            tokio::spawn(async move { drop(locks.lock(&id).await) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert_eq!(locks.len(), 1, "the waiter keeps the entry");
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn identical_operations_in_flight_run_once_and_all_callers_get_the_outcome() {
        let in_flight: InFlight<u32> = InFlight::default();
        let runs = Arc::new(AtomicU32::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let outcomes: Vec<_> = (0..10)
            .map(|_| {
                let runs = runs.clone();
                let mut gate = gate.clone();
                in_flight.run(
                    "stop",
                    "bot-1",
                    move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        Ok(7)
                    },
                    |task| drop(tokio::spawn(task)),
                )
            })
            .collect();
        release.send(true).unwrap();
        for outcome in outcomes {
            assert_eq!(outcome.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Once finished, the same operation runs again.
        let again = in_flight.run("stop", "bot-1", || async { Ok(8) }, |task| drop(tokio::spawn(task)));
        assert_eq!(again.await.unwrap(), 8);
        // An operation whose task panics answers with an error, and the next call runs again.
        let panicked = in_flight.run(
            "stop",
            "bot-2",
            || async {
                panic!("boom");
                #[allow(unreachable_code)]
                Ok(0)
            },
            |task| drop(tokio::spawn(task)),
        );
        assert!(panicked.await.is_err());
        let after = in_flight.run("stop", "bot-2", || async { Ok(5) }, |task| drop(tokio::spawn(task)));
        assert_eq!(after.await.unwrap(), 5);
        // Another kind or workspace never attaches.
        let other = in_flight.run("start", "bot-1", || async { Ok(9) }, |task| drop(tokio::spawn(task)));
        assert_eq!(other.await.unwrap(), 9);
    }
}
