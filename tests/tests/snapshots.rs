//! Snapshots and versions on the real containerd: installed software and /data come back with a
//! restore (by name and by version), snapshots others are built on cannot be deleted, `ctr`
//! lists exactly the image, the listed snapshots and one writable layer after a long mixed
//! sequence, a running workspace runs again (its processes told why they ended), and a kill -9
//! at each step of a create, restore or delete leaves the old or the new state and nothing else.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_api::v1::process_event::Event as ProcessEvent;
use berth_api::v1::process_service_client::ProcessServiceClient;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    ProcessConfig, SnapshotSource, StartRequest, StartWorkspaceRequest, StopWorkspaceRequest, VersionReason,
    WorkspaceState, restore_snapshot_request::Target,
};
use berth_e2e::snapshots::*;
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use tokio_stream::StreamExt as _;
use tonic::Code;

#[tokio::test]
async fn software_and_data_come_back_with_a_restore_by_name_and_by_version() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let ns = server.namespace.clone();
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let id = "snap-restore";
    create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;

    write_state(&testbed, &ns, id, "one");
    let first = snapshot(&mut client, id, "one").await.unwrap();
    assert_eq!((first.name.as_str(), first.version, first.source()), ("one", 2, SnapshotSource::User));
    assert!(first.parent.starts_with("sha256:"), "the first snapshot sits on the image's top layer: {first:?}");
    assert!(first.size_bytes > 0 && first.create_time.is_some(), "{first:?}");
    assert_eq!(get(&mut client, id).await.state(), WorkspaceState::Running);
    expect_state(&testbed, &ns, id, "one", "one.only");

    write_state(&testbed, &ns, id, "two");
    let second = snapshot(&mut client, id, "").await.unwrap();
    assert_eq!((second.name.as_str(), second.version, second.parent.as_str()), ("v3", 3, "one"));
    write_state(&testbed, &ns, id, "three");
    expect_state(&testbed, &ns, id, "three", "one.only three.only two.only");

    let (workspace, version) = restore(&mut client, id, Target::SnapshotName("one".to_owned())).await.unwrap();
    assert_eq!((version.version, version.reason(), version.snapshot_name.as_str()), (4, VersionReason::Restore, "one"));
    assert_eq!((workspace.current_version, workspace.state()), (4, WorkspaceState::Running));
    expect_state(&testbed, &ns, id, "one", "one.only");

    let (_, version) = restore(&mut client, id, Target::Version(3)).await.unwrap();
    assert_eq!((version.version, version.snapshot_name.as_str()), (5, "v3"));
    expect_state(&testbed, &ns, id, "two", "one.only two.only");

    let (current, history) = versions(&mut client, id).await;
    assert_eq!(current, 5);
    let reasons: Vec<_> =
        history.iter().map(|version| (version.version, version.reason(), version.snapshot_name.clone())).collect();
    assert_eq!(
        reasons,
        [
            (1, VersionReason::Create, String::new()),
            (2, VersionReason::Snapshot, "one".to_owned()),
            (3, VersionReason::Snapshot, "v3".to_owned()),
            (4, VersionReason::Restore, "one".to_owned()),
            (5, VersionReason::Restore, "v3".to_owned()),
        ]
    );
    assert!(
        history
            .iter()
            .all(|version| version.image == testbed.image("BUSYBOX") && version.image_digest.starts_with("sha256:"))
    );

    // A stopped workspace restores and snapshots without starting.
    let stop = StopWorkspaceRequest { workspace_id: id.to_owned(), timeout: None };
    client.stop_workspace(stop).await.unwrap();
    let (workspace, _) = restore(&mut client, id, Target::SnapshotName("one".to_owned())).await.unwrap();
    assert_eq!(workspace.state(), WorkspaceState::Stopped);
    snapshot(&mut client, id, "cold").await.unwrap();
    assert_eq!(get(&mut client, id).await.state(), WorkspaceState::Stopped);
    client.start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap();
    expect_state(&testbed, &ns, id, "one", "one.only");

    for (target, code, reason) in [
        (Target::Version(1), Code::NotFound, "VERSION_NOT_FOUND"),
        (Target::Version(42), Code::NotFound, "VERSION_NOT_FOUND"),
        (Target::SnapshotName("nope".to_owned()), Code::NotFound, "SNAPSHOT_NOT_FOUND"),
    ] {
        let status = restore(&mut client, id, target.clone()).await.unwrap_err();
        assert_eq!((status.code(), error_reason(&status).as_deref()), (code, Some(reason)), "{target:?}: {status:?}");
    }
    assert_exact(&testbed, &server, &mut client, &[id]).await;
    delete_workspace(&mut client, id).await;
    assert!(
        ctr_snapshots(&testbed, &ns).iter().all(|row| row.kind == "Committed" && row.key.starts_with("sha256:")),
        "the deleted workspace left no snapshot"
    );
}

#[tokio::test]
async fn snapshots_others_are_built_on_are_snapshot_in_use_naming_what_depends_on_them() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let id = "snap-in-use";
    create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
    snapshot(&mut client, id, "base").await.unwrap();
    snapshot(&mut client, id, "top").await.unwrap();

    let status = delete_snapshot(&mut client, id, "base").await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status).as_deref()), (Code::FailedPrecondition, Some("SNAPSHOT_IN_USE")));
    assert!(status.message().contains("snapshot top"), "{}", status.message());
    let status = delete_snapshot(&mut client, id, "top").await.unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("SNAPSHOT_IN_USE"));
    assert!(status.message().contains("current filesystem"), "{}", status.message());
    let image_layer = lineage(&mut client, id, 1).await.remove(0);
    assert_eq!(image_layer.source(), SnapshotSource::Image);
    let status = delete_snapshot(&mut client, id, &image_layer.name).await.unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("SNAPSHOT_IN_USE"), "{status:?}");
    let status = delete_snapshot(&mut client, id, "ghost").await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status).as_deref()), (Code::NotFound, Some("SNAPSHOT_NOT_FOUND")));
    let status = snapshot(&mut client, id, "top").await.unwrap_err();
    assert_eq!(
        (status.code(), error_reason(&status).as_deref()),
        (Code::AlreadyExists, Some("SNAPSHOT_ALREADY_EXISTS"))
    );
    let status = snapshot(&mut client, id, "Bad/Name").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    restore(&mut client, id, Target::SnapshotName("base".to_owned())).await.unwrap();
    delete_snapshot(&mut client, id, "top").await.unwrap();
    assert_eq!(user_names(&lineage(&mut client, id, 1000).await), ["base"]);
    assert_exact(&testbed, &server, &mut client, &[id]).await;
    delete_workspace(&mut client, id).await;
}

#[tokio::test]
async fn ctr_holds_exactly_the_image_the_listed_snapshots_and_one_layer_after_mixed_operations() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let ids = ["mix-a", "mix-b"];
    for id in ids {
        create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
    }
    // A fixed pseudo-random walk (xorshift) over creates, restores, deletes and stop/starts of
    // two workspaces sharing one image.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    let mut operations = BTreeMap::<&str, u32>::new();
    for step in 0..24 {
        let id = ids[next(ids.len())];
        let names =
            user_names(&lineage(&mut client, id, 1000).await).iter().map(|name| (*name).to_owned()).collect::<Vec<_>>();
        let choice = if names.is_empty() { 0 } else { next(10) };
        match choice {
            0..=3 => {
                testbed.exec(&server.namespace, id, &["sh", "-c", &format!("echo {step} >/data/step-{step}")]);
                snapshot(&mut client, id, &format!("s{step}")).await.unwrap();
                *operations.entry("create").or_default() += 1;
            }
            4..=5 => {
                restore(&mut client, id, Target::SnapshotName(names[next(names.len())].clone())).await.unwrap();
                *operations.entry("restore").or_default() += 1;
            }
            6..=8 => {
                // A leaf (nothing taken on top of it); if the writable layer is built on it, the
                // delete must be refused, and succeed once another snapshot is restored.
                let snapshots = lineage(&mut client, id, 1000).await;
                let leaves: Vec<&str> = user_names(&snapshots)
                    .into_iter()
                    .filter(|name| !snapshots.iter().any(|snapshot| snapshot.parent == *name))
                    .collect();
                let leaf = leaves[next(leaves.len())].to_owned();
                if let Err(status) = delete_snapshot(&mut client, id, &leaf).await {
                    assert_eq!(error_reason(&status).as_deref(), Some("SNAPSHOT_IN_USE"), "{status:?}");
                    assert!(status.message().contains("current filesystem"), "{}", status.message());
                    *operations.entry("delete refused").or_default() += 1;
                    let Some(other) = names.iter().find(|name| **name != leaf) else {
                        continue;
                    };
                    restore(&mut client, id, Target::SnapshotName(other.clone())).await.unwrap();
                    delete_snapshot(&mut client, id, &leaf).await.unwrap();
                }
                *operations.entry("delete").or_default() += 1;
            }
            _ => {
                let stop = StopWorkspaceRequest { workspace_id: id.to_owned(), timeout: None };
                client.stop_workspace(stop).await.unwrap();
                snapshot(&mut client, id, &format!("stopped{step}")).await.unwrap();
                client.start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap();
                *operations.entry("stopped create").or_default() += 1;
            }
        }
        if step % 6 == 5 {
            assert_exact(&testbed, &server, &mut client, &ids).await;
        }
    }
    eprintln!("operations: {operations:?}");
    for kind in ["create", "restore", "delete"] {
        assert!(operations.get(kind).copied().unwrap_or(0) >= 2, "the walk exercised {kind}: {operations:?}");
    }
    assert_exact(&testbed, &server, &mut client, &ids).await;
    // Paging with one entry per page lists the same lineage.
    for id in ids {
        let whole: Vec<_> = lineage(&mut client, id, 1000).await.into_iter().map(|snapshot| snapshot.name).collect();
        let paged: Vec<_> = lineage(&mut client, id, 1).await.into_iter().map(|snapshot| snapshot.name).collect();
        assert_eq!(paged, whole);
    }
    for id in ids {
        delete_workspace(&mut client, id).await;
    }
    assert!(
        ctr_snapshots(&testbed, &server.namespace).iter().all(|row| row.key.starts_with("sha256:")),
        "only the image is left"
    );
}

#[tokio::test]
async fn a_snapshot_of_a_running_workspace_leaves_it_running_and_tells_processes_why_they_ended() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let mut processes = ProcessServiceClient::new(server.channel().await);
    let id = "snap-running";
    let before = create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
    let start = StartRequest {
        workspace_id: id.to_owned(),
        process: Some(ProcessConfig { cmd: "sleep".to_owned(), args: vec!["600".to_owned()], ..Default::default() }),
        ..Default::default()
    };
    let mut stream = processes.start(start).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first.event.and_then(|event| event.event), Some(ProcessEvent::Start(_))));

    let started = std::time::Instant::now();
    snapshot(&mut client, id, "live").await.unwrap();
    let took = started.elapsed();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = stream.next().await {
            if let Some(ProcessEvent::End(end)) = item.unwrap().event.and_then(|event| event.event) {
                return end;
            }
        }
        panic!("the stream ended without end");
    })
    .await
    .expect("the process stream ends with the snapshot");
    assert!(end.error.contains("snapshot restarted the workspace"), "{end:?}");

    let after = get(&mut client, id).await;
    assert_eq!(after.state(), WorkspaceState::Running);
    assert_ne!(after.init_pid, before.init_pid, "the task was restarted");
    assert_ne!(after.host_data_path, before.host_data_path, "on a new writable layer");
    assert_eq!(testbed.exec(&server.namespace, id, &["echo", "alive"]).trim(), "alive");
    eprintln!("snapshot of a running workspace took {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    delete_workspace(&mut client, id).await;
}

/// Where a kill -9 hits, and whether the operation must then be found done.
const CRASH_POINTS: [(&str, Operation, bool); 10] = [
    ("snapshot.journaled", Operation::Create, false),
    ("snapshot.committed", Operation::Create, true),
    ("snapshot.prepared", Operation::Create, true),
    ("snapshot.switched", Operation::Create, true),
    ("snapshot.recorded", Operation::Create, true),
    ("restore.prepared", Operation::Restore, false),
    ("restore.switched", Operation::Restore, false),
    ("restore.recorded", Operation::Restore, true),
    ("restore.removed", Operation::Restore, true),
    ("snapshot-delete.forgotten", Operation::Delete, true),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Create,
    Restore,
    Delete,
}

#[tokio::test]
async fn a_kill_at_any_step_of_create_restore_or_delete_leaves_the_old_or_the_new_state_and_no_leak() {
    let testbed = Testbed::from_env();
    for (point, operation, done) in CRASH_POINTS {
        let options =
            ServerOptions { env: vec![("BERTH_FAILPOINT".to_owned(), point.to_owned())], ..ServerOptions::default() };
        let server = BerthServer::start_with(&testbed, options);
        let ns = server.namespace.clone();
        let mut client = WorkspaceServiceClient::new(server.channel().await);
        let id = "crash";
        create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
        write_state(&testbed, &ns, id, "old");
        let crashed = match operation {
            Operation::Create => snapshot(&mut client, id, "taken").await.map(|_| ()),
            Operation::Restore | Operation::Delete => {
                snapshot(&mut client, id, "taken").await.unwrap();
                write_state(&testbed, &ns, id, "new");
                if operation == Operation::Restore {
                    restore(&mut client, id, Target::SnapshotName("taken".to_owned())).await.map(|_| ())
                } else {
                    snapshot(&mut client, id, "second").await.unwrap();
                    restore(&mut client, id, Target::SnapshotName("taken".to_owned())).await.unwrap();
                    delete_snapshot(&mut client, id, "second").await
                }
            }
        };
        let status = crashed.expect_err("berth was killed during the call");
        assert!(matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal), "{point}: {status:?}");
        let server = server.restart(&testbed, true);
        server.wait_serving(Duration::from_secs(60)).await;
        let mut client = WorkspaceServiceClient::new(server.channel().await);

        let workspace = get(&mut client, id).await;
        assert_eq!(workspace.state(), WorkspaceState::Running, "{point}: running again after the boot");
        let names =
            user_names(&lineage(&mut client, id, 1000).await).iter().map(|name| (*name).to_owned()).collect::<Vec<_>>();
        let (current, history) = versions(&mut client, id).await;
        assert_eq!(workspace.current_version, current);
        assert_eq!(history.last().unwrap().version, current, "{point}: the history ends at the current version");
        match (operation, done) {
            (Operation::Create, false) => {
                assert!(names.is_empty(), "{point}: {names:?}");
                assert_eq!(current, 1, "{point}");
            }
            (Operation::Create, true) => {
                assert_eq!(names, ["taken"], "{point}");
                assert_eq!(current, 2, "{point}");
            }
            (Operation::Restore, false) => {
                assert_eq!(current, 2, "{point}");
                expect_state(&testbed, &ns, id, "new", "new.only old.only");
            }
            (Operation::Restore, true) => {
                assert_eq!((current, history.last().unwrap().reason()), (3, VersionReason::Restore), "{point}");
                expect_state(&testbed, &ns, id, "old", "old.only");
            }
            (Operation::Delete, _) => assert_eq!(names, ["taken"], "{point}: the deletion is finished"),
        }
        if operation == Operation::Create {
            expect_state(&testbed, &ns, id, "old", "old.only");
        }
        assert_exact(&testbed, &server, &mut client, &[id]).await;
        // The workspace goes on working: another snapshot and a restore.
        snapshot(&mut client, id, "after").await.unwrap();
        restore(&mut client, id, Target::SnapshotName("after".to_owned())).await.unwrap();
        assert_exact(&testbed, &server, &mut client, &[id]).await;
        delete_workspace(&mut client, id).await;
    }
}
