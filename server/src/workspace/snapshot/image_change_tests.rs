//! Image changes over the fake runtime (whose `:next` references are a second image): /data
//! carried over, the old state kept as a SYSTEM snapshot that restores the old image, and what a
//! failure or a crash on either side of `prepared` leaves. `tests/tests/image_change.rs` runs the
//! same paths against containerd.

use super::RestoreTarget;
use super::SnapshotOrigin;
use super::image_change::ImageChangeOperation;
use super::journal::Operation;
use super::tests::{ID, assert_exact, created, id, listed_names, read_files, record, running, write_files};
use crate::error::{Error, Reason};
use crate::model::{VersionReason, WorkspaceState};
use crate::runtime::PullPolicy;
use crate::workspace::tests::harness;

const NEXT: &str = "fake/image:next";

async fn change_image(
    harness: &crate::workspace::tests::Harness,
    image: &str,
) -> crate::error::Result<crate::workspace::Updated> {
    let update = crate::workspace::WorkspaceUpdate {
        image: Some((image.to_owned(), PullPolicy::IfNotPresent)),
        ..Default::default()
    };
    harness.manager.update(ID, update).await
}

fn container_image(harness: &crate::workspace::tests::Harness) -> String {
    harness.runtime.state.lock().unwrap().container_images.get(ID).cloned().unwrap_or_default()
}

async fn os_release(harness: &crate::workspace::tests::Harness) -> String {
    let dir = harness.runtime.snapshot_dir(&record(harness).await.snapshot_key);
    std::fs::read_to_string(dir.join("etc/os-release")).unwrap_or_default()
}

#[tokio::test]
async fn an_image_change_carries_data_over_keeps_the_old_state_and_restores_it() {
    let harness = harness().await;
    created(&harness).await;
    let first_image = record(&harness).await.spec.image;
    write_files(&harness, "tool on first", "data v1").await;

    let changed = change_image(&harness, NEXT).await.unwrap();
    assert!(changed.restarted);
    let version = changed.version.expect("a version");
    assert_eq!((version.version, version.reason), (2, VersionReason::ImageChange));
    assert_eq!((version.image.as_str(), version.image_digest.as_str()), (NEXT, "sha256:fake-next"));
    assert_eq!(version.snapshot_name, "before-image-change-v2");
    assert_eq!(changed.workspace.record.spec.image, NEXT);
    assert_eq!(changed.workspace.record.state, WorkspaceState::Running);
    assert!(running(&harness));
    assert_eq!(container_image(&harness), NEXT, "the container was made from the new image");
    assert_eq!(read_files(&harness).await, ("<missing>".to_owned(), "data v1".to_owned()), "/data only");
    assert_eq!(os_release(&harness).await, "next");
    assert_eq!(listed_names(&harness).await, ["image-base", "image", "image-next", "before-image-change-v2"]);
    let list = harness.manager.list_snapshots(ID, 0, "").await.unwrap();
    let kept = list.snapshots.last().unwrap();
    assert_eq!((kept.origin, kept.parent.as_str(), kept.version), (SnapshotOrigin::System, "image", 2));
    assert_eq!(kept.labels.get("berth.image").map(String::as_str), Some(format!("{first_image}@sha256:fake").as_str()));
    assert_exact(&harness).await;

    // Going back: the old image, and everything installed on it.
    write_files(&harness, "tool on next", "data v2").await;
    let restored =
        harness.manager.restore_snapshot(ID, RestoreTarget::Name("before-image-change-v2".to_owned())).await.unwrap();
    assert_eq!(restored.workspace.record.spec.image, first_image);
    assert_eq!(restored.workspace.record.image_digest, "sha256:fake");
    assert_eq!(
        (restored.version.image.as_str(), restored.version.reason),
        (first_image.as_str(), VersionReason::Restore)
    );
    assert_eq!(container_image(&harness), first_image);
    assert_eq!(read_files(&harness).await, ("tool on first".to_owned(), "data v1".to_owned()));
    assert_eq!(os_release(&harness).await, "first");
    assert!(running(&harness));
    assert_exact(&harness).await;

    // Restoring by the image change's version means the same snapshot.
    change_image(&harness, NEXT).await.unwrap();
    let restored = harness.manager.restore_snapshot(ID, RestoreTarget::Version(2)).await.unwrap();
    assert_eq!(restored.workspace.record.spec.image, first_image);
    assert_exact(&harness).await;
}

#[tokio::test]
async fn the_same_image_changes_nothing_and_a_stopped_workspace_stays_stopped() {
    let harness = harness().await;
    created(&harness).await;
    let image = record(&harness).await.spec.image;
    let same = change_image(&harness, &image).await.unwrap();
    assert!(!same.restarted && same.version.is_none());
    assert_eq!(record(&harness).await.current_version, 1);
    assert_eq!(harness.runtime.stop_calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    harness.manager.stop(ID, None).await.unwrap();
    let changed = change_image(&harness, NEXT).await.unwrap();
    assert!(!changed.restarted);
    assert_eq!(changed.workspace.record.state, WorkspaceState::Stopped);
    assert!(!running(&harness));
    assert_eq!(container_image(&harness), NEXT);
    assert_exact(&harness).await;
}

#[tokio::test]
async fn a_failed_pull_or_copy_leaves_the_workspace_as_it_was() {
    let harness = harness().await;
    created(&harness).await;
    write_files(&harness, "tool", "data").await;
    let before = record(&harness).await;

    harness.runtime.fail("pull_image", Error::new(Reason::ImagePullFailed, "no such image (fake)"), 1);
    let err = change_image(&harness, NEXT).await.unwrap_err();
    assert_eq!(err.reason(), Reason::ImagePullFailed);
    assert_eq!(harness.runtime.stop_calls.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was stopped");

    // /data cannot be copied: a symlink there is never followed.
    let layer = harness.runtime.snapshot_dir(&before.snapshot_key);
    std::fs::rename(layer.join("data"), layer.join("real-data")).unwrap();
    std::os::unix::fs::symlink("/etc", layer.join("data")).unwrap();
    let err = change_image(&harness, NEXT).await.unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed, "{err}");
    let after = record(&harness).await;
    assert_eq!(
        (after.spec.image, after.snapshot_key, after.current_version),
        (before.spec.image, before.snapshot_key, 1)
    );
    assert!(running(&harness), "started again on its old layer");
    assert_eq!(container_image(&harness), after_image(&harness).await);
    assert_exact(&harness).await;
}

async fn after_image(harness: &crate::workspace::tests::Harness) -> String {
    record(harness).await.spec.image
}

#[tokio::test]
async fn a_container_step_that_fails_once_is_finished_by_the_settle() {
    let harness = harness().await;
    created(&harness).await;
    write_files(&harness, "tool", "kept").await;
    harness.runtime.fail("create_container", crate::runtime::fake::unavailable(), 1);
    let changed = change_image(&harness, NEXT).await.unwrap();
    assert_eq!(changed.workspace.record.spec.image, NEXT);
    assert_eq!(read_files(&harness).await.1, "kept");
    assert!(running(&harness));
    assert_exact(&harness).await;
}

#[tokio::test]
async fn a_crash_before_the_copy_is_journalled_is_undone_and_one_after_it_finished() {
    use crate::runtime::Runtime as _;
    for prepared in [false, true] {
        let harness = harness().await;
        created(&harness).await;
        write_files(&harness, "tool", "data before the crash").await;
        let before = record(&harness).await;
        let change = ImageChangeOperation {
            version: 2,
            snapshot_name: "before-image-change-v2".to_owned(),
            snapshot_key: "bot-1-snapshot-9-before-image-change-v2".to_owned(),
            parent: "image".to_owned(),
            old_key: before.snapshot_key.clone(),
            new_key: "bot-1-active-9".to_owned(),
            old_image: before.spec.image.clone(),
            old_image_digest: before.image_digest.clone(),
            new_image: NEXT.to_owned(),
            new_image_digest: "sha256:fake-next".to_owned(),
            prepared,
            create_time_nanos: 9,
        };
        harness
            .store
            .begin_snapshot_operation(&id(), &Operation::ImageChange(change.clone()).to_json().unwrap())
            .await
            .unwrap();
        // The crash hit with the task stopped and the new layer prepared (and, when prepared,
        // holding the copy of /data).
        harness.runtime.state.lock().unwrap().tasks.clear();
        let (progress, _) = tokio::sync::mpsc::channel(1);
        let next = harness.runtime.pull_image(NEXT, PullPolicy::IfNotPresent, &progress).await.unwrap();
        harness.runtime.prepare_snapshot(ID, &change.new_key, &next.chain_id).await.unwrap();
        if prepared {
            let data = harness.runtime.snapshot_dir(&change.new_key).join("data");
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("notes.txt"), "data before the crash").unwrap();
        }
        let report = harness.manager.reconcile().await.unwrap();
        assert_eq!((report.started, report.failed), (1, 0), "prepared {prepared}");
        let after = record(&harness).await;
        assert!(running(&harness));
        if prepared {
            assert_eq!((after.spec.image.as_str(), after.snapshot_key.as_str()), (NEXT, change.new_key.as_str()));
            assert_eq!(after.current_version, 2);
            assert_eq!(container_image(&harness), NEXT);
            assert_eq!(listed_names(&harness).await.last().map(String::as_str), Some("before-image-change-v2"));
        } else {
            assert_eq!(
                (after.spec.image, after.snapshot_key.clone()),
                (before.spec.image.clone(), before.snapshot_key)
            );
            assert_eq!(after.current_version, 1);
            assert_eq!(container_image(&harness), before.spec.image);
            assert_eq!(listed_names(&harness).await, ["image-base", "image"]);
        }
        assert_eq!(read_files(&harness).await.1, "data before the crash");
        assert_exact(&harness).await;
    }
}
