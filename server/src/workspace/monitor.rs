//! The task-exit monitor: containerd's exit and OOM events become TASK_EXITED and OOM events, a
//! workspace whose init ended on its own is marked STOPPED or FAILED, and one meant to run is
//! started again after a backoff (1 s doubling to 5 min, reset after 10 min up) so a crash loop
//! cannot spin. Also the hourly pruning of the events table.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::manager::Manager;
use crate::error::Reason;
use crate::model::{DesiredState, WorkspaceId, WorkspaceState};
use crate::runtime::TaskNotice;

/// The first restart delay, doubled with every exit in a row.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// The longest restart delay.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5 * 60);
/// An init that ran this long before it exited starts the backoff afresh.
const RESET_AFTER_UP: Duration = Duration::from_secs(10 * 60);
/// The longest wait between attempts to subscribe to containerd's events again.
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(5);
/// How often the events table is pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// A workspace's automatic restarts, as GetWorkspace shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartStatus {
    /// Restarts scheduled since the backoff last started afresh.
    pub restart_count: u32,
    pub next_restart_time: Option<OffsetDateTime>,
    pub last_exit_code: i32,
    pub last_exit_time: OffsetDateTime,
}

/// The delay before the `restart`th restart in a row (1-based): 1 s, 2 s, 4 s ... 5 min.
pub fn restart_delay(restart: u32) -> Duration {
    let doublings = restart.saturating_sub(1).min(31);
    FIRST_RESTART_DELAY.saturating_mul(1 << doublings).min(MAX_RESTART_DELAY)
}

/// The backoff after an exit at `now` of an init that started at `started` (None: unknown):
/// the new status and the delay of the restart it schedules.
pub fn after_exit(
    previous: Option<&RestartStatus>,
    started: Option<OffsetDateTime>,
    now: OffsetDateTime,
    exit_code: i32,
) -> (RestartStatus, Duration) {
    let ran_long = started.is_some_and(|started| now - started >= RESET_AFTER_UP);
    let count = match previous {
        Some(previous) if !ran_long => previous.restart_count + 1,
        _ => 1,
    };
    let delay = restart_delay(count);
    let status = RestartStatus {
        restart_count: count,
        next_restart_time: Some(now + delay),
        last_exit_code: exit_code,
        last_exit_time: now,
    };
    (status, delay)
}

/// Restart state per workspace; a generation per entry lets a newer exit supersede the timer of
/// an older one.
#[derive(Default)]
pub(super) struct Restarts {
    entries: Mutex<HashMap<WorkspaceId, (RestartStatus, u64)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Restarts {
    pub(super) fn status(&self, id: &WorkspaceId) -> Option<RestartStatus> {
        self.entries.lock().expect("restarts").get(id).map(|(status, _)| status.clone())
    }

    pub(super) fn forget(&self, id: &WorkspaceId) {
        self.entries.lock().expect("restarts").remove(id);
    }

    /// Records an exit; returns the generation of the restart it schedules.
    fn record(&self, id: &WorkspaceId, status: RestartStatus) -> u64 {
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.entries.lock().expect("restarts").insert(id.clone(), (status, generation));
        generation
    }

    /// Marks the scheduled restart of `generation` as due; false when a newer exit or a
    /// delete superseded it.
    fn take_due(&self, id: &WorkspaceId, generation: u64) -> bool {
        let mut entries = self.entries.lock().expect("restarts");
        match entries.get_mut(id) {
            Some((status, current)) if *current == generation => {
                status.next_restart_time = None;
                true
            }
            _ => false,
        }
    }

    /// No restart is scheduled any more (the desired state is STOPPED).
    fn cancel(&self, id: &WorkspaceId) {
        if let Some((status, _)) = self.entries.lock().expect("restarts").get_mut(id) {
            status.next_restart_time = None;
        }
    }
}

impl Manager {
    /// Runs the exit monitor and the event pruning until `shutdown`.
    pub fn start_background(self: &Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(self.clone().monitor_tasks(shutdown.clone()));
        tokio::spawn(self.clone().prune_events_hourly(shutdown));
    }

    /// Follows containerd's task events; subscribes again whenever the stream breaks (it does
    /// when containerd restarts) and then looks at every workspace for an exit it missed.
    async fn monitor_tasks(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry = Duration::from_millis(250);
        let mut warned = false;
        loop {
            let subscribed = tokio::select! {
                () = shutdown.cancelled() => return,
                subscribed = self.runtime.task_notices() => subscribed,
            };
            let mut notices = match subscribed {
                Ok(notices) => notices,
                Err(err) => {
                    if !warned {
                        warn!(error = %err, "cannot subscribe to containerd's task events; retrying");
                        warned = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RESUBSCRIBE_DELAY);
                    continue;
                }
            };
            info!("following containerd's task events");
            retry = Duration::from_millis(250);
            warned = false;
            // Exits while no subscription existed (before the first, or while containerd was
            // away) arrive as no event: look for them.
            let manager = self.clone();
            tokio::spawn(async move {
                manager.wait_reconciled().await;
                manager.check_missed_exits().await;
            });
            loop {
                let notice = tokio::select! {
                    () = shutdown.cancelled() => return,
                    notice = notices.next() => notice,
                };
                match notice {
                    Some(Ok(TaskNotice::Exited { id, exit_status })) => {
                        let manager = self.clone();
                        tokio::spawn(async move { manager.task_exited(&id, exit_status).await });
                    }
                    Some(Ok(TaskNotice::Oom { id })) => {
                        let manager = self.clone();
                        tokio::spawn(async move { manager.oom_killed(&id).await });
                    }
                    Some(Err(err)) => {
                        warn!(error = %err, "containerd's task event stream broke; subscribing again");
                        break;
                    }
                    None => {
                        warn!("containerd's task event stream ended; subscribing again");
                        break;
                    }
                }
            }
        }
    }

    /// Looks at every workspace meant to be running for an init that exited unnoticed.
    async fn check_missed_exits(self: &Arc<Self>) {
        let mut after: Option<String> = None;
        loop {
            let page = match self.store.list_workspaces(after.as_deref(), 200, &BTreeMap::new()).await {
                Ok(page) => page,
                Err(err) => {
                    warn!(error = %err, "cannot list workspaces to look for missed task exits");
                    return;
                }
            };
            for record in page.workspaces {
                if record.state != WorkspaceState::Running {
                    continue;
                }
                if let Ok(Some(task)) = self.runtime.task(record.id.as_str()).await
                    && !task.running
                {
                    self.task_exited(record.id.as_str(), task.exit_status).await;
                }
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return,
            }
        }
    }

    /// Handles the exit of a workspace's init. Under the workspace's lock it looks first: when
    /// berth stopped the task itself, the task is deleted or running again, and nothing is done.
    pub(super) async fn task_exited(self: &Arc<Self>, container_id: &str, reported_status: u32) {
        let Ok(id) = WorkspaceId::parse(container_id) else {
            return;
        };
        let _guard = self.lock(&id).await;
        let Ok(mut record) = self.record(&id).await else {
            return;
        };
        if record.state != WorkspaceState::Running {
            return;
        }
        let exit_status = match self.runtime.task(id.as_str()).await {
            Ok(Some(task)) if !task.running => task.exit_status,
            Ok(_) => return,
            Err(err) => {
                // The next subscription's check looks again.
                warn!(workspace_id = %id, error = %err, reported_status, "cannot read the task after its exit");
                return;
            }
        };
        let exit_code = i32::try_from(exit_status).unwrap_or(i32::MAX);
        let now = OffsetDateTime::now_utc();
        let restart = (record.desired_state == DesiredState::Running)
            .then(|| after_exit(self.restarts.status(&id).as_ref(), record.last_start_time, now, exit_code));
        let outcome = match &restart {
            Some((_, delay)) => format!("berth starts it again in {delay:?}"),
            None => "start it with StartWorkspace".to_owned(),
        };
        warn!(workspace_id = %id, exit_status, "the workspace's init exited without a StopWorkspace");
        let deleted = self
            .ending_processes(
                &id,
                "the workspace's init exited",
                false,
                self.runtime.stop_task(id.as_str(), Duration::ZERO),
            )
            .await;
        if let Err(err) = deleted {
            warn!(workspace_id = %id, error = %err, "cannot delete the exited task");
        }
        record.last_stop_time = Some(now);
        if exit_code == 0 {
            record.state = WorkspaceState::Stopped;
        } else {
            record.state = WorkspaceState::Failed;
            record.failure_reason = Reason::RuntimeError.as_str().to_owned();
            record.failure_message = format!(
                "the workspace's init exited with status {exit_code}{} without a StopWorkspace; {outcome}",
                signal_note(exit_code)
            );
        }
        if let Err(err) = self.save(&mut record).await {
            warn!(workspace_id = %id, error = %err, "cannot record the task's exit");
        }
        // Recorded before the events go out, so a watcher reading the workspace sees it.
        let scheduled = match restart {
            Some((status, delay)) => Some((self.restarts.record(&id, status), delay)),
            None => {
                self.restarts.cancel(&id);
                None
            }
        };
        self.event_detail(
            &id,
            "task_exited",
            &format!("init exited with status {exit_code}{}; {outcome}", signal_note(exit_code)),
            serde_json::json!({ "exit_code": exit_code }),
        )
        .await;
        let reason = record.failure_reason.clone();
        self.state_changed(&id, WorkspaceState::Running, record.state, &reason, "the init exited").await;
        if let Some((generation, delay)) = scheduled {
            self.schedule_restart(id.clone(), delay, generation);
        }
    }

    /// Runs [`Self::restart_after_exit`] after `delay`, in its own task (not tracked by the
    /// shutdown drain: it may sleep for minutes).
    fn schedule_restart(self: &Arc<Self>, id: WorkspaceId, delay: Duration, generation: u64) {
        let manager = self.clone();
        // Boxed as Send: the restart may schedule another, and the compiler cannot prove a
        // recursive future Send on its own.
        let restart: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(async move {
            tokio::time::sleep(delay).await;
            manager.restart_after_exit(&id, generation).await;
        });
        tokio::spawn(restart);
    }

    /// The scheduled restart after an exit: starts the workspace when it is still meant to run
    /// and nothing newer superseded this restart.
    async fn restart_after_exit(self: &Arc<Self>, id: &WorkspaceId, generation: u64) {
        if self.tasks.is_closed() {
            return;
        }
        let _guard = self.lock(id).await;
        if !self.restarts.take_due(id, generation) {
            return;
        }
        let Ok(mut record) = self.record(id).await else {
            self.restarts.forget(id);
            return;
        };
        let stopped = matches!(record.state, WorkspaceState::Stopped | WorkspaceState::Failed);
        if record.desired_state != DesiredState::Running || !stopped {
            return;
        }
        match self.bring_up(&mut record).await {
            Ok(()) => info!(workspace_id = %id, "workspace started again after its init exited"),
            Err(err) => {
                warn!(workspace_id = %id, error = %err, "cannot start the workspace again after its init exited");
                record.state = WorkspaceState::Failed;
                record.failure_reason = err.reason().as_str().to_owned();
                record.failure_message = err.message().to_owned();
                let _ = self.save(&mut record).await;
                // Tried again later, spaced like another exit.
                let now = OffsetDateTime::now_utc();
                let previous = self.restarts.status(id);
                let exit_code = previous.as_ref().map_or(0, |status| status.last_exit_code);
                let (mut status, delay) = after_exit(previous.as_ref(), None, now, exit_code);
                if let Some(previous) = previous {
                    status.last_exit_time = previous.last_exit_time;
                }
                let generation = self.restarts.record(id, status);
                self.schedule_restart(id.clone(), delay, generation);
            }
        }
    }

    /// Records an OOM kill in a workspace berth knows.
    async fn oom_killed(&self, container_id: &str) {
        let Ok(id) = WorkspaceId::parse(container_id) else {
            return;
        };
        if !matches!(self.store.get_workspace(&id).await, Ok(Some(_))) {
            return;
        }
        warn!(workspace_id = %id, "the out-of-memory killer killed a process of the workspace");
        self.event(&id, "oom", "the kernel's out-of-memory killer killed a process of the workspace").await;
    }

    /// Prunes the events table now and every hour.
    async fn prune_events_hourly(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            self.prune_events().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PRUNE_INTERVAL) => {}
            }
        }
    }

    /// Deletes events beyond the configured count and age.
    pub(super) async fn prune_events(&self) {
        let older_than = OffsetDateTime::now_utc() - self.config.event_retention_age;
        match self.store.prune_events(self.config.event_retention_count, older_than).await {
            Ok(0) => {}
            Ok(pruned) => info!(pruned, "old events pruned"),
            Err(err) => warn!(error = %err, "cannot prune old events"),
        }
    }
}

/// " (killed by signal N)" for statuses above 128.
fn signal_note(exit_code: i32) -> String {
    if exit_code > 128 && exit_code < 128 + 65 {
        format!(" (killed by signal {})", exit_code - 128)
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_second_to_five_minutes() {
        let delays: Vec<u64> = (1..=11).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(restart_delay(u32::MAX), MAX_RESTART_DELAY);
    }

    #[test]
    fn exits_in_a_row_back_off_and_ten_minutes_up_start_afresh() {
        let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let (first, delay) = after_exit(None, Some(t0), t0 + time::Duration::seconds(1), 137);
        assert_eq!((first.restart_count, delay), (1, Duration::from_secs(1)));
        assert_eq!(first.next_restart_time, Some(t0 + time::Duration::seconds(2)));
        assert_eq!(first.last_exit_code, 137);
        let (second, delay) =
            after_exit(Some(&first), Some(t0 + time::Duration::seconds(2)), t0 + time::Duration::seconds(3), 1);
        assert_eq!((second.restart_count, delay, second.last_exit_code), (2, Duration::from_secs(2), 1));
        let (third, delay) = after_exit(Some(&second), Some(t0), t0 + time::Duration::minutes(9), 1);
        assert_eq!((third.restart_count, delay), (3, Duration::from_secs(4)));
        let started = t0 + time::Duration::minutes(10);
        let (fresh, delay) = after_exit(Some(&third), Some(started), started + time::Duration::minutes(10), 1);
        assert_eq!((fresh.restart_count, delay), (1, Duration::from_secs(1)));
    }

    #[test]
    fn a_newer_exit_supersedes_an_older_restart() {
        let restarts = Restarts::default();
        let id = WorkspaceId::parse("bot").unwrap();
        let now = OffsetDateTime::now_utc();
        let (status, _) = after_exit(None, None, now, 1);
        let old = restarts.record(&id, status.clone());
        let new = restarts.record(&id, status);
        assert!(!restarts.take_due(&id, old));
        assert!(restarts.take_due(&id, new));
        assert_eq!(restarts.status(&id).unwrap().next_restart_time, None);
        restarts.forget(&id);
        assert!(!restarts.take_due(&id, new));
    }
}

#[cfg(test)]
mod manager_tests {
    use std::time::Duration;

    use futures::StreamExt as _;
    use tokio_util::sync::CancellationToken;

    use crate::model::{WorkspaceId, WorkspaceState};
    use crate::store::EventQuery;
    use crate::workspace::WatchItem;
    use crate::workspace::tests::{create, harness, request};

    async fn kinds_until(
        stream: &mut tokio_stream::wrappers::ReceiverStream<crate::error::Result<WatchItem>>,
        last: &str,
    ) -> Vec<(String, serde_json::Value)> {
        let mut kinds = Vec::new();
        loop {
            let item = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("an event").unwrap();
            if let WatchItem::Event(event) = item.unwrap() {
                let done = event.kind == last;
                kinds.push((event.kind, event.detail));
                if done {
                    return kinds;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_crash_is_recorded_and_restarted_and_a_broken_subscription_is_renewed() {
        let harness = harness().await;
        create(&harness.manager, request("bot")).await.unwrap();
        // Missed exits are looked for once the boot reconcile is done.
        harness.manager.reconcile().await.unwrap();
        let shutdown = CancellationToken::new();
        harness.manager.start_background(shutdown.clone());
        let mut events = harness.manager.watch_events(EventQuery::default(), false, Duration::from_secs(60));
        let subscribed = || harness.runtime.state.lock().unwrap().notices.is_some();
        while !subscribed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        harness.runtime.crash("bot", 137);
        let seen = kinds_until(&mut events, "state_changed").await;
        assert_eq!(seen[0].0, "task_exited");
        assert_eq!(seen[0].1["exit_code"], 137);
        assert_eq!(seen[1].1["previous_state"], "running");
        assert_eq!(seen[1].1["state"], "failed");
        let id = WorkspaceId::parse("bot").unwrap();
        let status = harness.manager.restarts.status(&id).unwrap();
        assert_eq!((status.restart_count, status.last_exit_code), (1, 137));
        assert!(!harness.runtime.state.lock().unwrap().tasks.contains_key("bot"), "the exited task is deleted");

        let restarted = kinds_until(&mut events, "state_changed").await;
        assert_eq!(restarted.last().unwrap().1["state"], "running");
        assert_eq!(harness.manager.get("bot").await.unwrap().record.state, WorkspaceState::Running);

        // containerd goes away: the monitor subscribes again and finds the exit it missed.
        harness.runtime.state.lock().unwrap().tasks.insert("bot".to_owned(), false);
        harness.runtime.state.lock().unwrap().exit_statuses.insert("bot".to_owned(), 1);
        harness.runtime.break_notices();
        let seen = kinds_until(&mut events, "task_exited").await;
        assert_eq!(seen.last().unwrap().1["exit_code"], 1);
        assert_eq!(harness.runtime.state.lock().unwrap().subscriptions, 2);
        assert_eq!(harness.manager.restarts.status(&id).unwrap().restart_count, 2);

        // A stop on request is no exit: nothing is restarted after it.
        let _ = kinds_until(&mut events, "state_changed").await;
        let _ = kinds_until(&mut events, "state_changed").await;
        harness.manager.stop("bot", Some(Duration::ZERO)).await.unwrap();
        harness.manager.task_exited("bot", 0).await;
        assert_eq!(harness.manager.get("bot").await.unwrap().record.state, WorkspaceState::Stopped);
        shutdown.cancel();
    }
}
