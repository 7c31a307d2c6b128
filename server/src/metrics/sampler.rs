//! One workspace's sampler: the single reader of its task's cgroup figures and of its disk use,
//! shared by every GetMetrics call and WatchMetrics stream on it.
//!
//! While at least one stream watches, a task reads the cgroup once per tick, the tick being the
//! shortest interval any stream asked for, and publishes the reading on a watch channel; each
//! stream picks the readings that fall due at its own interval and computes its CPU percentage
//! from the reading it sent before. GetMetrics answers from the latest reading when it is recent,
//! otherwise reads once (a read in flight is joined, never repeated). Storage is measured in the
//! background at its own, slower pace, whenever a reading finds the last measurement due.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::sample::{CpuPoint, Sample, cpu_percent, sample};
use crate::error::{Error, Reason, Result};
use crate::model::WorkspaceId;
use crate::workspace::{Manager, StorageUsage, TaskReading};

/// How long a first sample waits for the first storage measurement before it goes out without.
const FIRST_STORAGE_WAIT: Duration = Duration::from_secs(1);

/// A reading of the task as the sampler keeps it.
#[derive(Debug)]
pub(super) struct Reading {
    /// When berth asked (for pacing: a monotonic clock).
    pub taken: Instant,
    /// The same on the wall clock, to compare with the record's update time.
    pub asked_at: time::OffsetDateTime,
    pub task: TaskReading,
    /// CPU percentage since the sampler's previous reading (or since the task started).
    pub percent: f64,
}

/// What the sampler last published.
#[derive(Clone, Debug)]
enum Frame {
    Empty,
    Reading(Arc<Reading>),
    /// The read failed; streams end with this error.
    Failed(Error),
}

/// The latest storage measurement; `measured` once an attempt finished, whatever it found.
#[derive(Clone, Copy, Debug, Default)]
struct StorageCell {
    measured: bool,
    usage: Option<StorageUsage>,
}

#[derive(Default)]
struct State {
    /// The interval of every stream watching, one entry per stream.
    intervals: Vec<Duration>,
    /// Whether the tick task runs.
    ticking: bool,
    /// A storage measurement in flight, and when the last one started.
    storage_busy: bool,
    storage_started: Option<Instant>,
    /// The latest successful reading: the base of the next CPU percentage.
    last: Option<Arc<Reading>>,
}

pub(super) struct Sampler {
    id: WorkspaceId,
    manager: Arc<Manager>,
    storage_interval: Duration,
    frames: watch::Sender<Frame>,
    storage: watch::Sender<StorageCell>,
    state: Mutex<State>,
    /// Held while a reading is taken, so concurrent callers share one containerd call.
    reading: tokio::sync::Mutex<()>,
    /// Wakes the tick task when streams come or go (its tick may change).
    watchers_changed: Notify,
    /// Set once the workspace is found deleted: the registry then makes a fresh sampler.
    gone: AtomicBool,
}

impl Sampler {
    pub fn new(id: WorkspaceId, manager: Arc<Manager>, storage_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            id,
            manager,
            storage_interval,
            frames: watch::channel(Frame::Empty).0,
            storage: watch::channel(StorageCell::default()).0,
            state: Mutex::new(State::default()),
            reading: tokio::sync::Mutex::new(()),
            watchers_changed: Notify::new(),
            gone: AtomicBool::new(false),
        })
    }

    /// Whether the workspace was found deleted.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("sampler state")
    }

    /// One sample for GetMetrics: from the latest reading when it is at most `max_age` old,
    /// otherwise from a fresh one.
    pub async fn get(self: &Arc<Self>, max_age: Duration) -> Result<Sample> {
        let reading = self.read(max_age).await?;
        let storage = self.first_storage().await;
        Ok(sample(&reading.task, reading.percent, storage))
    }

    /// The latest reading if it is at most `max_age` old and the workspace did not change
    /// since (a stop must not answer with the running task's figures), or a new one (published
    /// to the streams). Callers arriving while a reading is taken wait for it and share it.
    async fn read(self: &Arc<Self>, max_age: Duration) -> Result<Arc<Reading>> {
        let _turn = self.reading.lock().await;
        let last = self.state().last.clone();
        if let Some(last) = last.filter(|last| last.taken.elapsed() <= max_age) {
            match self.manager.changed_since(&self.id, last.asked_at).await {
                Ok(false) => return Ok(last),
                Ok(true) => {}
                Err(err) => return Err(self.failed(err)),
            }
        }
        self.refresh_storage_if_due();
        let taken = Instant::now();
        let asked_at = time::OffsetDateTime::now_utc();
        let task = match self.manager.read_task_metrics(&self.id).await {
            Ok(task) => task,
            Err(err) => return Err(self.failed(err)),
        };
        let previous = self.state().last.as_ref().and_then(|last| CpuPoint::of(&last.task));
        let percent = match (previous, CpuPoint::of(&task)) {
            (Some(previous), Some(current)) => cpu_percent(previous, current),
            (None, Some(current)) => self.percent_since_start(current).await,
            (_, None) => 0.0,
        };
        let reading = Arc::new(Reading { taken, asked_at, task, percent });
        self.state().last = Some(reading.clone());
        self.frames.send_replace(Frame::Reading(reading.clone()));
        Ok(reading)
    }

    /// Publishes a failed reading (the streams end with it) and returns its error.
    fn failed(&self, err: Error) -> Error {
        if err.reason() == Reason::WorkspaceNotFound {
            self.gone.store(true, Ordering::Relaxed);
        }
        self.frames.send_replace(Frame::Failed(err.clone()));
        err
    }

    /// With no earlier reading of the task, the CPU percentage over its whole life: its
    /// counter was zero when its init started.
    async fn percent_since_start(&self, current: CpuPoint) -> f64 {
        match self.manager.task_start_time(&self.id).await {
            Ok(Some(started)) => cpu_percent(CpuPoint { usage_nanos: 0, time: started }, current),
            Ok(None) => 0.0,
            Err(err) => {
                debug!(workspace_id = %self.id, error = %err, "cannot read the task's start time; cpu percent reads 0");
                0.0
            }
        }
    }

    /// Starts a storage measurement in the background when the last one is older than the
    /// storage interval (and none runs).
    fn refresh_storage_if_due(self: &Arc<Self>) {
        {
            let mut state = self.state();
            let recent = state.storage_started.is_some_and(|started| started.elapsed() < self.storage_interval);
            if state.storage_busy || recent {
                return;
            }
            state.storage_busy = true;
            state.storage_started = Some(Instant::now());
        }
        let sampler = self.clone();
        tokio::spawn(async move {
            let previous = sampler.storage.borrow().usage;
            let usage = match sampler.manager.read_storage(&sampler.id).await {
                Ok(usage) => usage,
                Err(err) => {
                    if err.reason() != Reason::WorkspaceNotFound {
                        warn!(workspace_id = %sampler.id, error = %err, "cannot measure the workspace's storage; keeping the last figures");
                    }
                    previous
                }
            };
            sampler.storage.send_replace(StorageCell { measured: true, usage });
            sampler.state().storage_busy = false;
        });
    }

    /// The latest storage figures; before the first measurement has finished, waits for it
    /// (at most [`FIRST_STORAGE_WAIT`]).
    async fn first_storage(&self) -> Option<StorageUsage> {
        let mut cell = self.storage.subscribe();
        let _ = tokio::time::timeout(FIRST_STORAGE_WAIT, cell.wait_for(|cell| cell.measured)).await;
        cell.borrow().usage
    }

    /// Subscribes a stream sending one sample per `interval`.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> impl Stream<Item = Result<Sample>> + Send + use<> {
        let start_ticking = {
            let mut state = self.state();
            state.intervals.push(interval);
            !std::mem::replace(&mut state.ticking, true)
        };
        if start_ticking {
            tokio::spawn(self.clone().tick());
        } else {
            self.watchers_changed.notify_one();
        }
        let watcher = Watcher {
            subscription: Subscription { sampler: self.clone(), interval },
            frames: self.frames.subscribe(),
            last_sent: None,
            due: None,
            done: false,
        };
        futures::stream::unfold(watcher, |mut watcher| async move {
            let item = watcher.next().await?;
            Some((item, watcher))
        })
    }

    /// The shortest interval watched, or None (and the tick task stops) when nobody watches.
    fn tick_or_stop(&self) -> Option<Duration> {
        let mut state = self.state();
        let tick = state.intervals.iter().min().copied();
        if tick.is_none() {
            state.ticking = false;
        }
        tick
    }

    /// The tick task: reads the task once per tick while streams watch.
    async fn tick(self: Arc<Self>) {
        let mut last_tick: Option<Instant> = None;
        loop {
            let Some(tick) = self.tick_or_stop() else {
                return;
            };
            let due = last_tick.map_or_else(Instant::now, |last| last + tick);
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                // Streams came or went: the tick may have changed.
                () = self.watchers_changed.notified() => continue,
            }
            // A reading someone took within half a tick is this tick's.
            let result = self.read(tick / 2).await;
            // Ticks stay on their schedule unless a slow read pushed them a whole tick back.
            let now = Instant::now();
            last_tick = Some(if now.saturating_duration_since(due) > tick { now } else { due });
            if let Err(err) = result {
                debug!(workspace_id = %self.id, error = %err, "metrics reading failed; the streams end with it");
                if self.is_gone() {
                    self.state().ticking = false;
                    return;
                }
            }
        }
    }

    /// The shortest interval watched now (the tick), for the streams' tolerance.
    fn current_tick(&self) -> Option<Duration> {
        self.state().intervals.iter().min().copied()
    }
}

/// A stream's place among the watchers; leaving (the stream is dropped) may lengthen the tick
/// or stop it.
struct Subscription {
    sampler: Arc<Sampler>,
    interval: Duration,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.sampler.state();
        if let Some(at) = state.intervals.iter().position(|interval| *interval == self.interval) {
            state.intervals.swap_remove(at);
        }
        drop(state);
        self.sampler.watchers_changed.notify_one();
    }
}

/// One WatchMetrics stream.
struct Watcher {
    subscription: Subscription,
    frames: watch::Receiver<Frame>,
    /// The reading this stream sent last: the base of its next CPU percentage.
    last_sent: Option<Arc<Reading>>,
    /// When the next sample is due.
    due: Option<Instant>,
    done: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<Sample>> {
        if self.done {
            return None;
        }
        let interval = self.subscription.interval;
        if self.last_sent.is_none() {
            // A reading younger than this stream's interval is good for its first sample; an
            // older one (or a failure) is not: the next reading is waited for.
            let current = self.frames.borrow_and_update().clone();
            if let Frame::Reading(reading) = current
                && reading.taken.elapsed() < interval
            {
                return Some(Ok(self.send(reading).await));
            }
        }
        loop {
            if self.frames.changed().await.is_err() {
                return None; // the sampler is gone, which the subscription prevents
            }
            let frame = self.frames.borrow_and_update().clone();
            match frame {
                Frame::Empty => {}
                Frame::Failed(err) => {
                    self.done = true;
                    return Some(Err(err));
                }
                Frame::Reading(reading) => {
                    // Readings come once per tick (the shortest interval watched): one within
                    // half a tick of this stream's due time is the one for it.
                    let tolerance = self.subscription.sampler.current_tick().unwrap_or(interval).min(interval) / 2;
                    if self.due.is_some_and(|due| reading.taken + tolerance < due) {
                        continue;
                    }
                    return Some(Ok(self.send(reading).await));
                }
            }
        }
    }

    /// The sample of `reading` for this stream: its CPU percentage since the reading this
    /// stream sent before (the sampler's own for the first).
    async fn send(&mut self, reading: Arc<Reading>) -> Sample {
        let interval = self.subscription.interval;
        let previous = self.last_sent.as_ref().and_then(|sent| CpuPoint::of(&sent.task));
        let percent = match (previous, CpuPoint::of(&reading.task)) {
            (Some(previous), Some(current)) => cpu_percent(previous, current),
            _ => reading.percent,
        };
        let first = self.last_sent.is_none();
        self.due = Some(match self.due {
            Some(due) if reading.taken < due + interval => due + interval,
            _ => reading.taken + interval,
        });
        let storage = if first {
            self.subscription.sampler.first_storage().await
        } else {
            self.subscription.sampler.storage.borrow().usage
        };
        let sample = sample(&reading.task, percent, storage);
        self.last_sent = Some(reading);
        sample
    }
}
