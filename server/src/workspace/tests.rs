//! The Manager's decisions over the fake runtime: rollback, ownership, users, idempotency,
//! coalescing, reconcile and shutdown. The end-to-end suite covers the same paths on containerd.

use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;
use time::OffsetDateTime;

use super::{CreateEvent, CreateRequest, Manager, ManagerConfig};
use crate::error::{Error, Reason, Result};
use crate::model::{DesiredState, WorkspaceId, WorkspaceRecord, WorkspaceSpec, WorkspaceState};
use crate::runtime::ContainerOwner;
use crate::runtime::fake::{FakeRuntime, unavailable};
use crate::store::Store;

pub(super) struct Harness {
    pub manager: Arc<Manager>,
    pub runtime: Arc<FakeRuntime>,
    pub store: Store,
    _state_dir: tempfile::TempDir,
}

pub(super) async fn harness() -> Harness {
    harness_with(100).await
}

/// A harness whose Manager allows `max_snapshot_depth` snapshots on an image.
pub(super) async fn harness_with(max_snapshot_depth: u32) -> Harness {
    let state_dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/berth.db", state_dir.path().display())).await.unwrap();
    let runtime = Arc::new(FakeRuntime::new());
    let config = ManagerConfig {
        namespace: "test".to_owned(),
        state_dir: state_dir.path().to_path_buf(),
        default_image: "fake/image:latest".to_owned(),
        snapshotter: "overlayfs".to_owned(),
        runtime_name: "fake".to_owned(),
        import_limits: crate::data::ExtractLimits { max_bytes: 1 << 30, max_entries: 1000 },
        max_snapshot_depth,
        event_retention_count: 100_000,
        event_retention_age: std::time::Duration::from_secs(30 * 24 * 3600),
        devices: Arc::new(crate::devices::Devices::new(vec![state_dir.path().join("cdi")])),
        network: Arc::new(crate::network::Network::disabled()),
    };
    let manager = Arc::new(Manager::new(config, store.clone(), runtime.clone()));
    Harness { manager, runtime, store, _state_dir: state_dir }
}

pub(super) fn request(id: &str) -> CreateRequest {
    CreateRequest { workspace_id: id.to_owned(), image: "fake/image:latest".to_owned(), ..CreateRequest::default() }
}

/// Runs a create to its end: the events, or the error that ended it.
pub(super) async fn create(manager: &Arc<Manager>, request: CreateRequest) -> Result<Vec<CreateEvent>> {
    let mut stream = manager.create(request).await?;
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        events.push(item?);
    }
    Ok(events)
}

fn nothing_left(harness: &Harness) {
    let state = harness.runtime.state.lock().unwrap();
    assert!(state.containers.values().all(|owner| *owner == ContainerOwner::Foreign), "{:?}", state.containers);
    assert!(state.snapshots.is_empty(), "{:?}", state.snapshots);
    assert!(state.tasks.is_empty(), "{:?}", state.tasks);
}

#[tokio::test]
async fn a_create_that_fails_late_removes_everything_it_made() {
    let harness = harness().await;
    harness.runtime.fail("start_task", Error::new(Reason::RuntimeError, "no shim (fake)"), 0);
    let err = create(&harness.manager, request("bot-1")).await.unwrap_err();
    assert_eq!(err.reason(), Reason::RuntimeError);
    nothing_left(&harness);
    assert!(harness.store.get_workspace(&WorkspaceId::parse("bot-1").unwrap()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_foreign_container_survives_a_failed_create_and_the_next_reconcile() {
    let harness = harness().await;
    harness.runtime.add_foreign_container("bot-1");
    let err = create(&harness.manager, request("bot-1")).await.unwrap_err();
    assert_eq!(err.reason(), Reason::WorkspaceAlreadyExists);
    assert!(err.message().contains("does not manage"), "{err}");
    // Even a record left FAILED (cleanup impossible at the time) must not remove it at boot.
    let now = OffsetDateTime::now_utc();
    let spec = WorkspaceSpec { image: "fake/image:latest".to_owned(), ..WorkspaceSpec::default() };
    harness
        .store
        .insert_workspace(&WorkspaceRecord {
            state: WorkspaceState::Failed,
            desired_state: DesiredState::Stopped,
            failure_reason: "RUNTIME_ERROR".to_owned(),
            failure_message: "cleanup failed".to_owned(),
            ..WorkspaceRecord::creating(WorkspaceId::parse("bot-1").unwrap(), spec, now)
        })
        .await
        .unwrap();
    let report = harness.manager.reconcile().await.unwrap();
    assert_eq!(report.rolled_back, 1);
    let state = harness.runtime.state.lock().unwrap();
    assert_eq!(state.containers.get("bot-1"), Some(&ContainerOwner::Foreign));
}

#[tokio::test]
async fn a_named_image_user_is_resolved_and_owns_data() {
    let harness = harness().await;
    *harness.runtime.image_user.lock().unwrap() = "bot:staff".to_owned();
    let events = create(&harness.manager, request("bot-1")).await.unwrap();
    assert!(matches!(events.last(), Some(CreateEvent::Ready(_))));
    let state = harness.runtime.state.lock().unwrap();
    let user = &state.users["bot-1"];
    assert_eq!((user.uid, user.gid), (1000, 50));
    let key = state.snapshots.iter().next().unwrap().clone();
    drop(state);
    let data = std::fs::metadata(harness.runtime.snapshot_dir(&key).join("data")).unwrap();
    assert_eq!((data.uid(), data.gid()), (1000, 50));
}

#[tokio::test]
async fn an_image_user_missing_from_passwd_fails_the_create_and_leaves_nothing() {
    let harness = harness().await;
    *harness.runtime.image_user.lock().unwrap() = "ghost".to_owned();
    let err = create(&harness.manager, request("bot-1")).await.unwrap_err();
    assert_eq!(err.reason(), Reason::UserNotFound);
    assert!(err.message().contains("ghost"), "{err}");
    nothing_left(&harness);
}

#[tokio::test]
async fn the_same_create_again_answers_with_one_ready_and_another_spec_is_already_exists() {
    let harness = harness().await;
    create(&harness.manager, request("bot-1")).await.unwrap();
    let again = create(&harness.manager, request("bot-1")).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(matches!(again[0], CreateEvent::Ready(_)));
    let mut other = request("bot-1");
    other.env.insert("A".to_owned(), "b".to_owned());
    assert_eq!(create(&harness.manager, other).await.unwrap_err().reason(), Reason::WorkspaceAlreadyExists);
}

#[tokio::test]
async fn retried_stops_in_flight_cost_one_stop() {
    let harness = harness().await;
    create(&harness.manager, request("bot-1")).await.unwrap();
    *harness.runtime.stop_delay.lock().unwrap() = Duration::from_millis(200);
    let stops: Vec<_> = (0..10).map(|_| harness.manager.stop("bot-1", None)).collect();
    let answers = futures::future::join_all(stops).await;
    for answer in answers {
        assert_eq!(answer.unwrap().record.state, WorkspaceState::Stopped);
    }
    assert_eq!(harness.runtime.stop_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn operations_on_unknown_ids_leave_no_lock_entries() {
    let harness = harness().await;
    for index in 0..50 {
        let err = harness.manager.start(&format!("random-{index}")).await.unwrap_err();
        assert_eq!(err.reason(), Reason::WorkspaceNotFound);
    }
    assert_eq!(harness.manager.locks.len(), 0);
}

#[tokio::test]
async fn reconcile_retries_containerd_hiccups_instead_of_failing_the_workspace() {
    let harness = harness().await;
    create(&harness.manager, request("bot-1")).await.unwrap();
    // The task died while berth was down; containerd answers only on the second try.
    harness.runtime.state.lock().unwrap().tasks.clear();
    harness.runtime.fail("task", unavailable(), 1);
    let report = harness.manager.reconcile().await.unwrap();
    assert_eq!((report.started, report.failed), (1, 0));
    let info = harness.manager.get("bot-1").await.unwrap();
    assert_eq!(info.record.state, WorkspaceState::Running);
    assert!(harness.manager.is_reconciled());
}

#[tokio::test]
async fn reconcile_removes_what_an_interrupted_create_made() {
    let harness = harness().await;
    create(&harness.manager, request("bot-1")).await.unwrap();
    let id = WorkspaceId::parse("bot-1").unwrap();
    let mut record = harness.store.get_workspace(&id).await.unwrap().unwrap();
    record.state = WorkspaceState::Creating;
    harness.store.update_workspace(&record).await.unwrap();
    let report = harness.manager.reconcile().await.unwrap();
    assert_eq!(report.rolled_back, 1);
    nothing_left(&harness);
    assert!(harness.store.get_workspace(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn shutdown_drains_running_operations_then_refuses_new_ones() {
    let harness = harness().await;
    create(&harness.manager, request("bot-1")).await.unwrap();
    *harness.runtime.stop_delay.lock().unwrap() = Duration::from_millis(300);
    let stop = {
        let manager = harness.manager.clone();
        tokio::spawn(async move { manager.stop("bot-1", None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(harness.manager.drain(Duration::from_secs(5)).await, "the stop finishes within the drain");
    assert_eq!(stop.await.unwrap().unwrap().record.state, WorkspaceState::Stopped);
    let refused = harness.manager.start("bot-1").await.unwrap_err();
    assert_eq!(refused.reason(), Reason::ServerShuttingDown);
    let refused_create = create(&harness.manager, request("bot-2")).await.unwrap_err();
    assert_eq!(refused_create.reason(), Reason::ServerShuttingDown);
}
