//! Snapshot decisions over the fake runtime: lineage and versions, what depends on what, the
//! depth limit, paging, and what a failure or a crash at each step leaves after the reconcile.
//! `tests/tests/snapshots.rs` runs the same paths against containerd.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{RestoreTarget, SnapshotOrigin};
use crate::error::{Error, Reason};
use crate::model::{VersionReason, WorkspaceId, WorkspaceRecord, WorkspaceState};
use crate::runtime::fake::unavailable;
use crate::workspace::tests::{Harness, create, harness, harness_with, request};

pub(super) const ID: &str = "bot-1";

pub(super) fn id() -> WorkspaceId {
    WorkspaceId::parse(ID).unwrap()
}

pub(super) async fn created(harness: &Harness) {
    create(&harness.manager, request(ID)).await.unwrap();
}

pub(super) async fn record(harness: &Harness) -> WorkspaceRecord {
    harness.store.get_workspace(&id()).await.unwrap().unwrap()
}

/// The host directory of the workspace's current writable layer.
pub(super) async fn layer_dir(harness: &Harness) -> PathBuf {
    harness.runtime.snapshot_dir(&record(harness).await.snapshot_key)
}

/// Installs a "program" and writes /data in the current layer, as a bot would.
pub(super) async fn write_files(harness: &Harness, tool: &str, data: &str) {
    let dir = layer_dir(harness).await;
    std::fs::create_dir_all(dir.join("usr/local/bin")).unwrap();
    std::fs::write(dir.join("usr/local/bin/tool"), tool).unwrap();
    std::fs::write(dir.join("data/notes.txt"), data).unwrap();
}

pub(super) async fn read_files(harness: &Harness) -> (String, String) {
    let dir = layer_dir(harness).await;
    let read = |path: &str| std::fs::read_to_string(dir.join(path)).unwrap_or_else(|_| "<missing>".to_owned());
    (read("usr/local/bin/tool"), read("data/notes.txt"))
}

async fn snapshot(harness: &Harness, name: &str) -> super::SnapshotView {
    harness.manager.create_snapshot(ID, name, BTreeMap::new()).await.unwrap()
}

pub(super) async fn listed_names(harness: &Harness) -> Vec<String> {
    let list = harness.manager.list_snapshots(ID, 0, "").await.unwrap();
    list.snapshots.into_iter().map(|view| view.name).collect()
}

/// What the fake runtime holds for the workspace must be exactly its listed snapshots plus one
/// writable layer, which the container points at.
pub(super) async fn assert_exact(harness: &Harness) {
    let record = record(harness).await;
    let rows = harness.store.list_snapshots(&id()).await.unwrap();
    let mut expected: BTreeSet<String> = rows.iter().map(|row| row.snapshot_key.clone()).collect();
    expected.insert(record.snapshot_key.clone());
    {
        let state = harness.runtime.state.lock().unwrap();
        let held: BTreeSet<String> = state.snapshots.iter().cloned().collect();
        assert_eq!(held, expected, "the runtime holds exactly the listed snapshots and one writable layer");
        assert_eq!(state.container_keys.get(ID), Some(&record.snapshot_key), "the container points at the layer");
        assert!(!state.committed.contains(&record.snapshot_key), "the layer is writable");
    }
    assert!(harness.store.snapshot_operation(&id()).await.unwrap().is_none(), "no operation is left in flight");
}

pub(super) fn running(harness: &Harness) -> bool {
    harness.runtime.state.lock().unwrap().tasks.get(ID).copied().unwrap_or(false)
}

#[tokio::test]
async fn a_snapshot_keeps_the_files_starts_a_version_and_keeps_the_workspace_running() {
    let harness = harness().await;
    created(&harness).await;
    write_files(&harness, "tool v1", "data v1").await;
    let old_key = record(&harness).await.snapshot_key;

    let view =
        harness.manager.create_snapshot(ID, "", BTreeMap::from([("why".to_owned(), "test".to_owned())])).await.unwrap();
    assert_eq!(view.name, "v2", "an unnamed snapshot is named after its version");
    assert_eq!((view.version, view.origin, view.parent.as_str()), (2, SnapshotOrigin::User, "image"));
    assert_eq!(view.labels["why"], "test");
    assert!(view.size_bytes > 0 && view.create_time.is_some(), "{view:?}");

    let after = record(&harness).await;
    assert_ne!(after.snapshot_key, old_key, "a new writable layer");
    assert_eq!(after.current_version, 2);
    assert!(running(&harness), "a running workspace runs again");
    assert_eq!(
        read_files(&harness).await,
        ("tool v1".to_owned(), "data v1".to_owned()),
        "the new layer shows the files"
    );
    assert_exact(&harness).await;

    let list = harness.manager.list_snapshots(ID, 0, "").await.unwrap();
    let origins: Vec<_> =
        list.snapshots.iter().map(|view| (view.name.as_str(), view.origin, view.parent.as_str())).collect();
    assert_eq!(
        origins,
        [
            ("image-base", SnapshotOrigin::Image, ""),
            ("image", SnapshotOrigin::Image, "image-base"),
            ("v2", SnapshotOrigin::User, "image")
        ]
    );
    let versions = harness.manager.list_versions(ID, 0, "").await.unwrap();
    assert_eq!(versions.current_version, 2);
    let history: Vec<_> = versions
        .versions
        .iter()
        .map(|version| (version.version, version.reason, version.snapshot_name.as_str()))
        .collect();
    assert_eq!(history, [(1, VersionReason::Create, ""), (2, VersionReason::Snapshot, "v2")]);
    assert_eq!(versions.versions[1].image, "fake/image:latest");
    assert_eq!(versions.versions[1].image_digest, "sha256:fake");

    let events = harness.store.events_of(&id()).await.unwrap();
    let (kind, message, detail) = events.last().unwrap();
    assert_eq!(kind, "snapshot_created");
    assert!(message.contains("v2"), "{message}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(detail).unwrap(),
        serde_json::json!({"snapshot_name": "v2", "version": 2})
    );
}

#[tokio::test]
async fn a_snapshot_of_a_stopped_workspace_leaves_it_stopped() {
    let harness = harness().await;
    created(&harness).await;
    harness.manager.stop(ID, None).await.unwrap();
    snapshot(&harness, "cold").await;
    assert!(!running(&harness));
    assert_eq!(harness.manager.get(ID).await.unwrap().record.state, WorkspaceState::Stopped);
    assert_exact(&harness).await;
}

#[tokio::test]
async fn restoring_brings_back_installed_software_and_data_and_removes_the_old_layer() {
    let harness = harness().await;
    created(&harness).await;
    write_files(&harness, "tool v1", "data v1").await;
    snapshot(&harness, "good").await;
    write_files(&harness, "tool v2", "data v2").await;
    snapshot(&harness, "newer").await;
    write_files(&harness, "tool v3", "data v3").await;

    let restored = harness.manager.restore_snapshot(ID, RestoreTarget::Name("good".to_owned())).await.unwrap();
    assert_eq!((restored.version.version, restored.version.reason), (4, VersionReason::Restore));
    assert_eq!(restored.version.snapshot_name, "good");
    assert_eq!(restored.workspace.record.current_version, 4);
    assert_eq!(restored.workspace.record.state, WorkspaceState::Running);
    assert_eq!(read_files(&harness).await, ("tool v1".to_owned(), "data v1".to_owned()));
    assert_exact(&harness).await;

    // By version: version 3 took "newer".
    let restored = harness.manager.restore_snapshot(ID, RestoreTarget::Version(3)).await.unwrap();
    assert_eq!((restored.version.version, restored.version.snapshot_name.as_str()), (5, "newer"));
    assert_eq!(read_files(&harness).await, ("tool v2".to_owned(), "data v2".to_owned()));
    // Version 4 restored "good": restoring it restores "good" again.
    harness.manager.restore_snapshot(ID, RestoreTarget::Version(4)).await.unwrap();
    assert_eq!(read_files(&harness).await, ("tool v1".to_owned(), "data v1".to_owned()));
    assert_exact(&harness).await;

    for (version, needle) in [(1, "no snapshot"), (99, "no version 99"), (0, "no version 0")] {
        let err = harness.manager.restore_snapshot(ID, RestoreTarget::Version(version)).await.unwrap_err();
        assert_eq!(err.reason(), Reason::VersionNotFound, "{version}: {err}");
        assert!(err.message().contains(needle), "{err}");
    }
    let err = harness.manager.restore_snapshot(ID, RestoreTarget::Name("nope".to_owned())).await.unwrap_err();
    assert_eq!(err.reason(), Reason::SnapshotNotFound);
    let err = harness.manager.restore_snapshot(ID, RestoreTarget::Name("image".to_owned())).await.unwrap_err();
    assert_eq!(err.reason(), Reason::InvalidArgument, "an image layer is not restored directly: {err}");
    assert_eq!(
        harness.manager.list_versions(ID, 0, "").await.unwrap().current_version,
        6,
        "failed restores add no version"
    );
}

#[tokio::test]
async fn a_deleted_snapshots_version_cannot_be_restored() {
    let harness = harness().await;
    created(&harness).await;
    snapshot(&harness, "a").await;
    snapshot(&harness, "b").await;
    harness.manager.restore_snapshot(ID, RestoreTarget::Name("a".to_owned())).await.unwrap();
    harness.manager.delete_snapshot(ID, "b").await.unwrap();
    let err = harness.manager.restore_snapshot(ID, RestoreTarget::Version(3)).await.unwrap_err();
    assert_eq!(err.reason(), Reason::VersionNotFound);
    assert!(err.message().contains("was deleted"), "{err}");
}

#[tokio::test]
async fn snapshots_that_others_are_built_on_cannot_be_deleted_and_say_what_depends_on_them() {
    let harness = harness().await;
    created(&harness).await;
    snapshot(&harness, "a").await;
    snapshot(&harness, "b").await;

    let err = harness.manager.delete_snapshot(ID, "a").await.unwrap_err();
    assert_eq!(err.reason(), Reason::SnapshotInUse);
    assert!(err.message().contains("snapshot b"), "{err}");
    assert!(!err.message().contains("current filesystem"), "{err}");
    let err = harness.manager.delete_snapshot(ID, "b").await.unwrap_err();
    assert_eq!(err.reason(), Reason::SnapshotInUse);
    assert!(
        err.message().contains("current filesystem is built") && err.message().contains("restore another"),
        "{err}"
    );
    let err = harness.manager.delete_snapshot(ID, "image").await.unwrap_err();
    assert_eq!(err.reason(), Reason::SnapshotInUse, "image layers cannot be deleted: {err}");
    assert_eq!(harness.manager.delete_snapshot(ID, "ghost").await.unwrap_err().reason(), Reason::SnapshotNotFound);

    // Back on "a": "b" depends on nothing and goes; "a" is the current layer's base.
    harness.manager.restore_snapshot(ID, RestoreTarget::Name("a".to_owned())).await.unwrap();
    harness.manager.delete_snapshot(ID, "b").await.unwrap();
    assert_eq!(listed_names(&harness).await, ["image-base", "image", "a"]);
    assert_exact(&harness).await;
    let err = harness.manager.delete_snapshot(ID, "a").await.unwrap_err();
    assert!(err.message().contains("current filesystem"), "{err}");
    let events = harness.store.events_of(&id()).await.unwrap();
    assert!(events.iter().any(|(kind, message, _)| kind == "snapshot_deleted" && message.contains('b')), "{events:?}");
    assert!(events.iter().any(|(kind, _, _)| kind == "snapshot_restored"), "{events:?}");
}

#[tokio::test]
async fn names_and_labels_are_checked_and_a_taken_name_is_already_exists() {
    let harness = harness().await;
    created(&harness).await;
    snapshot(&harness, "one").await;
    let err = harness.manager.create_snapshot(ID, "one", BTreeMap::new()).await.unwrap_err();
    assert_eq!(err.reason(), Reason::SnapshotAlreadyExists);
    for bad in ["One", "-x", "a/b", &"x".repeat(64)] {
        let err = harness.manager.create_snapshot(ID, bad, BTreeMap::new()).await.unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidArgument, "{bad}");
    }
    let reserved = BTreeMap::from([("berth.snapshot".to_owned(), "x".to_owned())]);
    let err = harness.manager.create_snapshot(ID, "two", reserved).await.unwrap_err();
    assert_eq!(err.reason(), Reason::InvalidArgument);
    // A user name that an unnamed snapshot would take later: the unnamed one fails, nothing breaks.
    snapshot(&harness, "v4").await;
    assert_eq!(
        harness.manager.create_snapshot(ID, "", BTreeMap::new()).await.unwrap_err().reason(),
        Reason::SnapshotAlreadyExists
    );
    let err = harness.manager.create_snapshot("nobody", "", BTreeMap::new()).await.unwrap_err();
    assert_eq!(err.reason(), Reason::WorkspaceNotFound);
    assert_exact(&harness).await;
}

#[tokio::test]
async fn the_depth_limit_refuses_with_failed_precondition_until_an_older_snapshot_is_restored() {
    let harness = harness_with(3).await;
    created(&harness).await;
    for name in ["s1", "s2", "s3"] {
        snapshot(&harness, name).await;
    }
    let err = harness.manager.create_snapshot(ID, "s4", BTreeMap::new()).await.unwrap_err();
    assert_eq!(err.reason(), Reason::InvalidStateTransition, "FAILED_PRECONDITION: {err}");
    assert!(err.message().contains("restore an older snapshot") && err.message().contains('3'), "{err}");
    assert_exact(&harness).await;
    harness.manager.restore_snapshot(ID, RestoreTarget::Name("s1".to_owned())).await.unwrap();
    snapshot(&harness, "s2b").await;
    snapshot(&harness, "s3b").await;
    assert!(harness.manager.create_snapshot(ID, "s4b", BTreeMap::new()).await.is_err(), "s1 → s2b → s3b is 3 deep");
}

#[tokio::test]
async fn listings_page_through_image_layers_then_snapshots_without_skipping_after_a_delete() {
    let harness = harness().await;
    created(&harness).await;
    for name in ["s1", "s2", "s3", "s4", "s5"] {
        snapshot(&harness, name).await;
    }
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = harness.manager.list_snapshots(ID, 2, &token).await.unwrap();
        pages.push(page.snapshots.iter().map(|view| view.name.clone()).collect::<Vec<_>>());
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, [vec!["image-base", "image"], vec!["s1", "s2"], vec!["s3", "s4"], vec!["s5"]]);

    // A page ends at s2; s3 is deleted meanwhile (after going back to s2): the next page
    // starts at s4.
    harness.manager.restore_snapshot(ID, RestoreTarget::Name("s2".to_owned())).await.unwrap();
    let first = harness.manager.list_snapshots(ID, 4, "").await.unwrap();
    assert_eq!(first.snapshots.last().unwrap().name, "s2");
    // s5 and s4 sit on s3: out of the way first.
    harness.manager.delete_snapshot(ID, "s5").await.unwrap();
    harness.manager.delete_snapshot(ID, "s4").await.unwrap();
    harness.manager.delete_snapshot(ID, "s3").await.unwrap();
    snapshot(&harness, "s6").await;
    let next = harness.manager.list_snapshots(ID, 4, &first.next_page_token).await.unwrap();
    assert_eq!(next.snapshots.iter().map(|view| view.name.as_str()).collect::<Vec<_>>(), ["s6"]);

    let versions = harness.manager.list_versions(ID, 3, "").await.unwrap();
    assert_eq!(versions.versions.iter().map(|version| version.version).collect::<Vec<_>>(), [1, 2, 3]);
    let rest = harness.manager.list_versions(ID, 1000, &versions.next_page_token).await.unwrap();
    assert_eq!(rest.versions.first().unwrap().version, 4);
    assert_eq!(rest.versions.last().unwrap().version, rest.current_version);
    assert!(rest.next_page_token.is_empty());
    for bad_token in ["garbage", &first.next_page_token] {
        let err = harness.manager.list_versions(ID, 0, bad_token).await.unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidArgument, "{bad_token}");
    }
    assert_eq!(harness.manager.list_snapshots(ID, -1, "").await.unwrap_err().reason(), Reason::InvalidArgument);
}

#[tokio::test]
async fn a_step_that_fails_once_after_the_commit_is_retried_and_the_snapshot_taken() {
    let harness = harness().await;
    created(&harness).await;
    harness.runtime.fail("prepare_snapshot", unavailable(), 1);
    let view = harness.manager.create_snapshot(ID, "flaky", BTreeMap::new()).await.unwrap();
    assert_eq!(view.name, "flaky");
    assert!(running(&harness));
    assert_exact(&harness).await;
}

#[tokio::test]
async fn a_failed_commit_changes_nothing_and_the_workspace_runs_on() {
    let harness = harness().await;
    created(&harness).await;
    let before = record(&harness).await;
    harness.runtime.fail("commit_snapshot", Error::new(Reason::RuntimeError, "no space (fake)"), 1);
    let err = harness.manager.create_snapshot(ID, "x", BTreeMap::new()).await.unwrap_err();
    assert_eq!(err.reason(), Reason::RuntimeError);
    let after = record(&harness).await;
    assert_eq!((after.snapshot_key, after.current_version), (before.snapshot_key, before.current_version));
    assert!(running(&harness), "started again on its old layer");
    assert_eq!(listed_names(&harness).await, ["image-base", "image"]);
    assert_exact(&harness).await;
}

#[tokio::test]
async fn containerd_going_away_after_the_commit_is_finished_by_the_next_start_or_boot() {
    for finish_by_boot in [false, true] {
        let harness = harness().await;
        created(&harness).await;
        write_files(&harness, "tool", "data").await;
        harness.runtime.fail("prepare_snapshot", unavailable(), 0);
        let err = harness.manager.create_snapshot(ID, "late", BTreeMap::new()).await.unwrap_err();
        assert_eq!(err.reason(), Reason::ContainerdUnavailable);
        assert!(harness.store.snapshot_operation(&id()).await.unwrap().is_some(), "the journal keeps the operation");
        harness.runtime.state.lock().unwrap().failures.clear();
        if finish_by_boot {
            harness.manager.reconcile().await.unwrap();
        } else {
            harness.manager.start(ID).await.unwrap();
        }
        assert!(running(&harness), "finish_by_boot {finish_by_boot}");
        assert_eq!(listed_names(&harness).await, ["image-base", "image", "late"]);
        assert_eq!(record(&harness).await.current_version, 2);
        assert_eq!(read_files(&harness).await, ("tool".to_owned(), "data".to_owned()));
        assert_exact(&harness).await;
    }
}

#[tokio::test]
async fn a_restore_that_cannot_switch_the_container_is_undone_by_the_next_boot() {
    let harness = harness().await;
    created(&harness).await;
    snapshot(&harness, "base").await;
    write_files(&harness, "mine", "mine").await;
    let before = record(&harness).await;
    harness.runtime.fail("set_container_snapshot", unavailable(), 0);
    let err = harness.manager.restore_snapshot(ID, RestoreTarget::Name("base".to_owned())).await.unwrap_err();
    assert_eq!(err.reason(), Reason::ContainerdUnavailable);
    harness.runtime.state.lock().unwrap().failures.clear();
    harness.manager.reconcile().await.unwrap();
    let after = record(&harness).await;
    assert_eq!((after.snapshot_key, after.current_version), (before.snapshot_key, before.current_version));
    assert_eq!(read_files(&harness).await, ("mine".to_owned(), "mine".to_owned()), "nothing was discarded");
    assert!(running(&harness));
    assert_exact(&harness).await;
}

#[tokio::test]
async fn a_restore_whose_old_layer_cannot_be_removed_yet_succeeds_and_the_removal_happens_later() {
    let harness = harness().await;
    created(&harness).await;
    snapshot(&harness, "base").await;
    harness.runtime.fail("remove_snapshot", unavailable(), 0);
    let restored = harness.manager.restore_snapshot(ID, RestoreTarget::Name("base".to_owned())).await.unwrap();
    assert_eq!(restored.version.version, 3);
    harness.runtime.state.lock().unwrap().failures.clear();
    harness.manager.list_versions(ID, 0, "").await.unwrap();
    // The next snapshot operation settles the journal first.
    snapshot(&harness, "next").await;
    assert_exact(&harness).await;
}

#[tokio::test]
async fn a_crash_before_the_commit_is_rolled_back_and_one_after_it_rolled_forward() {
    use super::journal::{CreateOperation, Operation};
    for committed in [false, true] {
        let harness = harness().await;
        created(&harness).await;
        let before = record(&harness).await;
        let create = CreateOperation {
            name: "crashed".to_owned(),
            labels: BTreeMap::new(),
            parent: "image".to_owned(),
            version: 2,
            snapshot_key: "bot-1-snapshot-1-crashed".to_owned(),
            old_key: before.snapshot_key.clone(),
            new_key: "bot-1-active-2".to_owned(),
            create_time_nanos: 1,
            image: before.spec.image.clone(),
            image_digest: before.image_digest.clone(),
        };
        harness
            .store
            .begin_snapshot_operation(&id(), &Operation::Create(create.clone()).to_json().unwrap())
            .await
            .unwrap();
        // The crash hit while the task was stopped for the commit.
        harness.runtime.state.lock().unwrap().tasks.clear();
        if committed {
            use crate::runtime::Runtime as _;
            harness.runtime.commit_snapshot(ID, &create.old_key, &create.snapshot_key, "crashed").await.unwrap();
        }
        let report = harness.manager.reconcile().await.unwrap();
        assert_eq!((report.started, report.failed), (1, 0), "committed {committed}");
        let after = record(&harness).await;
        let names = listed_names(&harness).await;
        if committed {
            assert_eq!(after.snapshot_key, create.new_key);
            assert_eq!(names, ["image-base", "image", "crashed"]);
        } else {
            assert_eq!(after.snapshot_key, before.snapshot_key);
            assert_eq!(names, ["image-base", "image"]);
        }
        assert_exact(&harness).await;
    }
}

#[tokio::test]
async fn the_boot_sweep_removes_snapshots_of_the_workspace_that_the_store_does_not_list() {
    use crate::runtime::Runtime as _;
    let harness = harness().await;
    created(&harness).await;
    snapshot(&harness, "kept").await;
    let kept_key = harness.store.list_snapshots(&id()).await.unwrap()[0].snapshot_key.clone();
    // A leftover commit with a writable layer on it (children go first).
    harness.runtime.prepare_snapshot(ID, "bot-1-stray-active", &kept_key).await.unwrap();
    harness.runtime.commit_snapshot(ID, "bot-1-stray-active", "bot-1-stray", "stray").await.unwrap();
    harness.runtime.prepare_snapshot(ID, "bot-1-stray-child", "bot-1-stray").await.unwrap();
    harness.manager.reconcile().await.unwrap();
    assert_exact(&harness).await;
}

#[tokio::test]
async fn deleting_a_workspace_removes_every_snapshot_children_first() {
    let harness = harness().await;
    created(&harness).await;
    snapshot(&harness, "a").await;
    snapshot(&harness, "b").await;
    harness.manager.restore_snapshot(ID, RestoreTarget::Name("a".to_owned())).await.unwrap();
    snapshot(&harness, "c").await;
    harness.manager.delete(ID, false).await.unwrap();
    let state = harness.runtime.state.lock().unwrap();
    assert!(state.snapshots.is_empty(), "{:?}", state.snapshots);
}

#[tokio::test]
async fn retried_creates_in_flight_take_one_snapshot() {
    let harness = harness().await;
    created(&harness).await;
    *harness.runtime.stop_delay.lock().unwrap() = std::time::Duration::from_millis(200);
    let creates: Vec<_> = (0..5).map(|_| harness.manager.create_snapshot(ID, "once", BTreeMap::new())).collect();
    for outcome in futures::future::join_all(creates).await {
        assert_eq!(outcome.unwrap().name, "once");
    }
    assert_eq!(harness.runtime.stop_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(record(&harness).await.current_version, 2);
}
