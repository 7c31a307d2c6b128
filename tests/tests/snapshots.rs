//! Snapshots and versions on the real containerd: installed software and /data come back with a
//! restore (by name and by version), snapshots others are built on cannot be deleted, `ctr`
//! lists exactly the image, the listed snapshots and one writable layer after a long mixed
//! sequence, a running workspace runs again (its processes told why they ended), and a kill -9
//! at each step of a create, restore or delete leaves the old or the new state and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth_api::v1::create_workspace_response::Event as CreateEvent;
use berth_api::v1::process_event::Event as ProcessEvent;
use berth_api::v1::process_service_client::ProcessServiceClient;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateSnapshotRequest, CreateWorkspaceRequest, DeleteSnapshotRequest, DeleteWorkspaceRequest, GetWorkspaceRequest,
    ListSnapshotsRequest, ListVersionsRequest, ProcessConfig, RestoreSnapshotRequest, Snapshot, SnapshotSource,
    StartRequest, StartWorkspaceRequest, StopWorkspaceRequest, Version, VersionReason, Workspace, WorkspaceState,
    restore_snapshot_request::Target,
};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

type Client = WorkspaceServiceClient<Channel>;

async fn create_workspace(client: &mut Client, id: &str, image: &str) -> Workspace {
    let request = CreateWorkspaceRequest { workspace_id: id.to_owned(), image: image.to_owned(), ..Default::default() };
    let mut stream = client.create_workspace(request).await.unwrap().into_inner();
    let mut ready = None;
    while let Some(item) = stream.next().await {
        if let Some(CreateEvent::Ready(event)) = item.unwrap().event {
            ready = event.workspace;
        }
    }
    ready.unwrap_or_else(|| panic!("the create of {id} ended without ready"))
}

async fn get(client: &mut Client, id: &str) -> Workspace {
    let request = GetWorkspaceRequest { workspace_id: id.to_owned() };
    client.get_workspace(request).await.unwrap().into_inner().workspace.unwrap()
}

async fn snapshot(client: &mut Client, id: &str, name: &str) -> Result<Snapshot, tonic::Status> {
    let request = CreateSnapshotRequest { workspace_id: id.to_owned(), name: name.to_owned(), ..Default::default() };
    Ok(client.create_snapshot(request).await?.into_inner().snapshot.unwrap())
}

async fn restore(client: &mut Client, id: &str, target: Target) -> Result<(Workspace, Version), tonic::Status> {
    let request = RestoreSnapshotRequest { workspace_id: id.to_owned(), target: Some(target) };
    let response = client.restore_snapshot(request).await?.into_inner();
    Ok((response.workspace.unwrap(), response.version.unwrap()))
}

async fn delete_snapshot(client: &mut Client, id: &str, name: &str) -> Result<(), tonic::Status> {
    let request = DeleteSnapshotRequest { workspace_id: id.to_owned(), name: name.to_owned() };
    client.delete_snapshot(request).await.map(|_| ())
}

/// The whole lineage, through pages of `page_size`.
async fn lineage(client: &mut Client, id: &str, page_size: i32) -> Vec<Snapshot> {
    let mut snapshots = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListSnapshotsRequest { workspace_id: id.to_owned(), page_size, page_token };
        let page = client.list_snapshots(request).await.unwrap().into_inner();
        assert!(page.snapshots.len() <= page_size as usize, "a page holds at most page_size entries");
        snapshots.extend(page.snapshots);
        if page.next_page_token.is_empty() {
            return snapshots;
        }
        page_token = page.next_page_token;
    }
}

fn user_names(snapshots: &[Snapshot]) -> Vec<&str> {
    snapshots
        .iter()
        .filter(|snapshot| snapshot.source() == SnapshotSource::User)
        .map(|snapshot| snapshot.name.as_str())
        .collect()
}

async fn versions(client: &mut Client, id: &str) -> (i64, Vec<Version>) {
    let request = ListVersionsRequest { workspace_id: id.to_owned(), page_size: 2, page_token: String::new() };
    let mut page = client.list_versions(request).await.unwrap().into_inner();
    let mut versions = std::mem::take(&mut page.versions);
    while !page.next_page_token.is_empty() {
        let request =
            ListVersionsRequest { workspace_id: id.to_owned(), page_size: 2, page_token: page.next_page_token };
        page = client.list_versions(request).await.unwrap().into_inner();
        versions.append(&mut page.versions);
    }
    (page.current_version, versions)
}

/// Installs `hello` under /usr/local/bin printing `tag`, and writes `tag` into /data/notes.txt.
fn write_state(testbed: &Testbed, namespace: &str, id: &str, tag: &str) {
    let script = format!(
        "mkdir -p /usr/local/bin && printf '#!/bin/sh\\necho hello {tag}\\n' >/usr/local/bin/hello && \
         chmod +x /usr/local/bin/hello && echo {tag} >/data/notes.txt && echo {tag} >/data/{tag}.only"
    );
    testbed.exec(namespace, id, &["sh", "-c", &script]);
}

/// What the installed program prints and /data holds: (hello's output, notes.txt, *.only files).
fn read_state(testbed: &Testbed, namespace: &str, id: &str) -> (String, String, String) {
    let hello = testbed.exec_output(namespace, id, None, &["/usr/local/bin/hello"]).stdout.trim().to_owned();
    let notes = testbed.exec(namespace, id, &["sh", "-c", "cat /data/notes.txt 2>/dev/null || true"]).trim().to_owned();
    let only = testbed.exec(namespace, id, &["sh", "-c", "cd /data && ls *.only 2>/dev/null | tr '\\n' ' '"]);
    (hello, notes, only.trim().to_owned())
}

fn expect_state(testbed: &Testbed, namespace: &str, id: &str, tag: &str, only: &str) {
    assert_eq!(
        read_state(testbed, namespace, id),
        (format!("hello {tag}"), tag.to_owned(), only.to_owned()),
        "software and /data of {id} are those of {tag}"
    );
}

/// One row of `ctr snapshots ls`.
#[derive(Debug)]
struct CtrSnapshot {
    key: String,
    parent: String,
    kind: String,
}

fn ctr_snapshots(testbed: &Testbed, namespace: &str) -> Vec<CtrSnapshot> {
    testbed
        .ctr(namespace, &["snapshots", "ls"])
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [key, parent, kind] => {
                    CtrSnapshot { key: (*key).to_owned(), parent: (*parent).to_owned(), kind: (*kind).to_owned() }
                }
                [key, kind] => CtrSnapshot { key: (*key).to_owned(), parent: String::new(), kind: (*kind).to_owned() },
                _ => panic!("unexpected ctr snapshots ls line {line:?}"),
            }
        })
        .collect()
}

fn ctr_labels(testbed: &Testbed, namespace: &str, key: &str) -> BTreeMap<String, String> {
    let info: serde_json::Value = serde_json::from_str(&testbed.ctr(namespace, &["snapshots", "info", key])).unwrap();
    info["Labels"]
        .as_object()
        .map(|labels| labels.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

/// `ctr snapshots ls` of the namespace holds exactly the image chain, the snapshots berth lists
/// and one writable layer per workspace, built on the snapshot (or image layer) berth says.
async fn assert_exact(testbed: &Testbed, server: &BerthServer, client: &mut Client, ids: &[&str]) {
    let rows = ctr_snapshots(testbed, &server.namespace);
    let mut image_layers = BTreeSet::new();
    let mut expected_user = BTreeSet::new();
    for id in ids {
        for snapshot in lineage(client, id, 1000).await {
            match snapshot.source() {
                SnapshotSource::Image => {
                    image_layers.insert(snapshot.name);
                }
                _ => assert!(expected_user.insert((id.to_string(), snapshot.name)), "listed twice"),
            }
        }
    }
    let mut found_user = BTreeSet::new();
    let mut layers = BTreeMap::new();
    for row in &rows {
        match row.kind.as_str() {
            "Committed" if image_layers.contains(&row.key) => {}
            "Committed" => {
                let labels = ctr_labels(testbed, &server.namespace, &row.key);
                let owner = labels.get("berth.workspace.id").cloned().unwrap_or_default();
                let name = labels.get("berth.snapshot").cloned().unwrap_or_default();
                assert!(found_user.insert((owner, name)), "{row:?} duplicates a snapshot; rows: {rows:?}");
                assert!(labels.contains_key("containerd.io/gc.root"), "{row:?} is protected from GC: {labels:?}");
            }
            "Active" => {
                let labels = ctr_labels(testbed, &server.namespace, &row.key);
                let owner = labels.get("berth.workspace.id").cloned().unwrap_or_default();
                assert!(layers.insert(owner, row).is_none(), "one writable layer per workspace: {rows:?}");
            }
            other => panic!("unexpected {other} snapshot {row:?}"),
        }
    }
    assert_eq!(found_user, expected_user, "committed snapshots in containerd = listed snapshots; rows {rows:?}");
    let committed_images: BTreeSet<_> =
        rows.iter().filter(|row| image_layers.contains(&row.key)).map(|row| row.key.clone()).collect();
    assert_eq!(committed_images, image_layers, "every listed image layer is in containerd");
    assert_eq!(layers.keys().map(String::as_str).collect::<Vec<_>>(), ids, "one writable layer per workspace");
    for id in ids {
        let layer = layers[*id];
        let base_labels = if image_layers.contains(&layer.parent) {
            BTreeMap::new()
        } else {
            ctr_labels(testbed, &server.namespace, &layer.parent)
        };
        assert_eq!(
            base_labels.get("berth.workspace.id").map(String::as_str).unwrap_or(id),
            *id,
            "the layer of {id} is built on its own snapshot"
        );
    }
    let leases = testbed.ctr(&server.namespace, &["leases", "ls", "-q"]);
    assert!(!leases.lines().any(|lease| lease.starts_with("berth-")), "no berth lease is left: {leases}");
}

async fn delete_workspace(client: &mut Client, id: &str) {
    let request = DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data: false };
    client.delete_workspace(request).await.unwrap();
}

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
