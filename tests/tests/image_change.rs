//! UpdateWorkspace's image change on the real containerd: /data (links, owners, modes included)
//! is carried onto the new image while software installed elsewhere stays behind in a SYSTEM
//! snapshot, the container runs the new image, RestoreSnapshot of that snapshot (by name or by
//! the change's version) moves it back onto the old image, requests the server cannot honour
//! change nothing, and a kill -9 at each step leaves the old or the new state and no leak.

use std::time::Duration;

use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    PullPolicy, SnapshotSource, StopWorkspaceRequest, UpdateWorkspaceRequest, UpdateWorkspaceResponse, VersionReason,
    WorkspaceState, restore_snapshot_request::Target,
};
use berth_e2e::snapshots::{
    Client, assert_exact, create_workspace, delete_workspace, expect_state, get, lineage, restore, versions,
    write_state,
};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use tonic::Code;

async fn change_image(client: &mut Client, id: &str, image: &str) -> Result<UpdateWorkspaceResponse, tonic::Status> {
    let request = UpdateWorkspaceRequest {
        workspace_id: id.to_owned(),
        update_mask: Some(prost_types::FieldMask { paths: vec!["image".to_owned()] }),
        image: image.to_owned(),
        ..Default::default()
    };
    Ok(client.update_workspace(request).await?.into_inner())
}

/// The image the container's spec was made from, as `ctr containers info` shows it.
fn container_image(testbed: &Testbed, namespace: &str, id: &str) -> String {
    let info: serde_json::Value = serde_json::from_str(&testbed.ctr(namespace, &["containers", "info", id])).unwrap();
    info["Image"].as_str().unwrap_or_default().to_owned()
}

/// Files of /data a plain copy would lose: a symlink (kept as a link), a hard link, a file owned
/// by uid 1234, a mode 0751 directory. Safe to run twice, as Testbed::exec may.
const ODD_FILES: &str = "cd /data && mkdir -p -m 0751 deep/dir && echo linked >deep/dir/target && \
     ln -sfn dir/target deep/link && ln -f deep/dir/target deep/hard && echo owned >owned && chown 1234:1234 owned";

/// What ODD_FILES made, as `stat` inside the workspace shows it.
fn odd_files(testbed: &Testbed, namespace: &str, id: &str) -> String {
    let script = "cd /data && readlink deep/link && stat -c '%h %u %a' deep/dir/target owned deep/dir && cat deep/hard";
    testbed.exec(namespace, id, &["sh", "-c", script])
}

#[tokio::test]
async fn an_image_change_keeps_data_and_a_restore_of_its_snapshot_goes_back() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let ns = server.namespace.clone();
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let (busybox, multilayer) = (testbed.image("BUSYBOX"), testbed.image("MULTILAYER"));
    let id = "image-change";
    let created = create_workspace(&mut client, id, &busybox).await;
    write_state(&testbed, &ns, id, "old");
    testbed.exec(&ns, id, &["sh", "-c", ODD_FILES]);
    let odd = odd_files(&testbed, &ns, id);
    assert_eq!(odd, "dir/target\n2 0 644\n1 1234 644\n2 0 751\nlinked\n");

    let changed = change_image(&mut client, id, &multilayer).await.unwrap();
    assert!(changed.restarted, "the running workspace was restarted");
    let workspace = changed.workspace.unwrap();
    let version = changed.version.unwrap();
    assert_eq!((workspace.image.as_str(), workspace.state()), (multilayer.as_str(), WorkspaceState::Running));
    assert_ne!(workspace.image_digest, created.image_digest);
    assert_eq!((version.version, version.reason()), (2, VersionReason::ImageChange));
    assert_eq!(
        (version.image.as_str(), version.image_digest.as_str()),
        (multilayer.as_str(), workspace.image_digest.as_str())
    );
    assert_eq!(version.snapshot_name, "before-image-change-v2");
    assert_eq!(container_image(&testbed, &ns, id), multilayer);
    // /data came along, byte for byte and with its links and owners; the program did not.
    assert_eq!(odd_files(&testbed, &ns, id), odd);
    let notes = testbed.exec(&ns, id, &["sh", "-c", "cat /data/notes.txt /data/old.only"]);
    assert_eq!(notes, "old\nold\n");
    let hello = testbed.exec_output(&ns, id, None, &["/usr/local/bin/hello"]);
    assert!(!hello.success, "software outside /data stays with the old image: {hello:?}");
    assert_eq!(testbed.exec(&ns, id, &["cat", "/etc/berth-layer3"]), "berth multilayer image, layer 3\n");

    let snapshots = lineage(&mut client, id, 1000).await;
    let kept =
        snapshots.iter().find(|snapshot| snapshot.source() == SnapshotSource::System).expect("a SYSTEM snapshot");
    assert_eq!((kept.name.as_str(), kept.version), ("before-image-change-v2", 2));
    assert_eq!(kept.labels.get("berth.image"), Some(&format!("{busybox}@{}", created.image_digest)));
    let image_layers = snapshots.iter().filter(|snapshot| snapshot.source() == SnapshotSource::Image).count();
    assert!(image_layers >= 3, "both images' layers are listed: {snapshots:?}");
    assert_exact(&testbed, &server, &mut client, &[id]).await;

    // The same image again changes nothing.
    let same = change_image(&mut client, id, &multilayer).await.unwrap();
    assert!(!same.restarted && same.version.is_none(), "{same:?}");
    assert_eq!(get(&mut client, id).await.current_version, 2);

    // Back: the old image, its program and the /data of then.
    write_state(&testbed, &ns, id, "new");
    let (workspace, version) = restore(&mut client, id, Target::SnapshotName(kept.name.clone())).await.unwrap();
    assert_eq!(
        (workspace.image.as_str(), workspace.image_digest.as_str()),
        (busybox.as_str(), created.image_digest.as_str())
    );
    assert_eq!(
        (version.version, version.reason(), version.image.as_str()),
        (3, VersionReason::Restore, busybox.as_str())
    );
    assert_eq!(container_image(&testbed, &ns, id), busybox);
    expect_state(&testbed, &ns, id, "old", "old.only");
    let layer3 = testbed.exec_output(&ns, id, None, &["cat", "/etc/berth-layer3"]);
    assert!(!layer3.success, "the multilayer image's files are gone: {layer3:?}");

    // A stopped workspace changes images and stays stopped; the change's version restores the
    // state before it.
    let stop = StopWorkspaceRequest { workspace_id: id.to_owned(), timeout: None };
    client.stop_workspace(stop).await.unwrap();
    let changed = change_image(&mut client, id, &multilayer).await.unwrap();
    assert!(!changed.restarted);
    assert_eq!(changed.workspace.unwrap().state(), WorkspaceState::Stopped);
    let change_version = changed.version.unwrap().version;
    client.start_workspace(berth_api::v1::StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap();
    assert_eq!(testbed.exec(&ns, id, &["cat", "/data/notes.txt"]), "old\n");
    let (workspace, _) = restore(&mut client, id, Target::Version(change_version)).await.unwrap();
    assert_eq!(workspace.image, busybox);
    expect_state(&testbed, &ns, id, "old", "old.only");

    let (current, history) = versions(&mut client, id).await;
    let reasons: Vec<_> = history.iter().map(|version| version.reason()).collect();
    assert_eq!(current, 5);
    assert_eq!(
        reasons,
        [
            VersionReason::Create,
            VersionReason::ImageChange,
            VersionReason::Restore,
            VersionReason::ImageChange,
            VersionReason::Restore
        ]
    );
    assert_exact(&testbed, &server, &mut client, &[id]).await;
    delete_workspace(&mut client, id).await;
}

#[tokio::test]
async fn requests_the_server_cannot_honour_change_nothing() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let ns = server.namespace.clone();
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let busybox = testbed.image("BUSYBOX");
    let id = "image-refused";
    let created = create_workspace(&mut client, id, &busybox).await;
    write_state(&testbed, &ns, id, "kept");

    let with_mask = |paths: &[&str], image: &str| UpdateWorkspaceRequest {
        workspace_id: id.to_owned(),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|path| (*path).to_owned()).collect() }),
        image: image.to_owned(),
        pull_policy: PullPolicy::Never.into(),
        ..Default::default()
    };
    let missing = format!("{}/berth-test/absent:nope", testbed.registry);
    let cases = [
        (with_mask(&[], &busybox), Code::InvalidArgument, "INVALID_ARGUMENT"),
        (with_mask(&["image", "name"], &busybox), Code::InvalidArgument, "INVALID_ARGUMENT"),
        (with_mask(&["image"], "Not A Reference!"), Code::InvalidArgument, "INVALID_IMAGE_REFERENCE"),
        (with_mask(&["image"], &missing), Code::NotFound, "IMAGE_NOT_FOUND"),
    ];
    for (request, code, reason) in cases {
        let paths = request.update_mask.clone().unwrap().paths;
        let status = client.update_workspace(request).await.unwrap_err();
        assert_eq!((status.code(), error_reason(&status).as_deref()), (code, Some(reason)), "{paths:?}: {status:?}");
        assert!(!status.message().is_empty());
    }
    let mut unknown = with_mask(&["image"], &busybox);
    unknown.workspace_id = "no-such-workspace".to_owned();
    let status = client.update_workspace(unknown).await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status).as_deref()), (Code::NotFound, Some("WORKSPACE_NOT_FOUND")));

    let workspace = get(&mut client, id).await;
    assert_eq!(workspace.state(), WorkspaceState::Running);
    assert_eq!(
        (workspace.image, workspace.image_digest, workspace.current_version),
        (busybox, created.image_digest, 1)
    );
    expect_state(&testbed, &ns, id, "kept", "kept.only");
    assert_exact(&testbed, &server, &mut client, &[id]).await;
    delete_workspace(&mut client, id).await;
}

/// Where berth is killed, and whether the change had taken effect by then. Before `carried` the
/// new layer does not hold /data yet: undone. From there on: finished.
const CRASH_POINTS: [(&str, bool); 5] = [
    ("image-change.journaled", false),
    ("image-change.carried", false),
    ("image-change.container", true),
    ("image-change.committed", true),
    ("image-change.recorded", true),
];

#[tokio::test]
async fn a_kill_at_any_step_of_an_image_change_or_its_restore_leaves_the_old_or_the_new_state_and_no_leak() {
    let testbed = Testbed::from_env();
    let (busybox, multilayer) = (testbed.image("BUSYBOX"), testbed.image("MULTILAYER"));
    let restore_points = [("restore.switched", false), ("restore.recorded", true)];
    for (point, done) in CRASH_POINTS.into_iter().chain(restore_points) {
        let options =
            ServerOptions { env: vec![("BERTH_FAILPOINT".to_owned(), point.to_owned())], ..ServerOptions::default() };
        let server = BerthServer::start_with(&testbed, options);
        let ns = server.namespace.clone();
        let mut client = WorkspaceServiceClient::new(server.channel().await);
        let id = "image-crash";
        create_workspace(&mut client, id, &busybox).await;
        write_state(&testbed, &ns, id, "old");
        let restoring = point.starts_with("restore.");
        let crashed = if restoring {
            change_image(&mut client, id, &multilayer).await.unwrap();
            restore(&mut client, id, Target::Version(2)).await.map(|_| ())
        } else {
            change_image(&mut client, id, &multilayer).await.map(|_| ())
        };
        let status = crashed.expect_err("berth was killed during the call");
        assert!(matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal), "{point}: {status:?}");
        let server = server.restart(&testbed, true);
        server.wait_serving(Duration::from_secs(60)).await;
        let mut client = WorkspaceServiceClient::new(server.channel().await);

        let workspace = get(&mut client, id).await;
        assert_eq!(workspace.state(), WorkspaceState::Running, "{point}: running again after the boot");
        // On multilayer exactly when the change took effect and no restore did.
        let on_multilayer = done != restoring;
        let expected = if on_multilayer { &multilayer } else { &busybox };
        assert_eq!(&workspace.image, expected, "{point}");
        assert_eq!(&container_image(&testbed, &ns, id), expected, "{point}");
        assert_eq!(testbed.exec(&ns, id, &["cat", "/data/notes.txt"]), "old\n", "{point}: /data is intact");
        let hello = testbed.exec_output(&ns, id, None, &["/usr/local/bin/hello"]);
        assert_eq!(hello.success, !on_multilayer, "{point}: the program is there exactly on the old image");
        let (current, history) = versions(&mut client, id).await;
        assert_eq!(workspace.current_version, current, "{point}");
        let expected_reasons: &[VersionReason] = match (restoring, done) {
            (false, false) => &[VersionReason::Create],
            (false, true) => &[VersionReason::Create, VersionReason::ImageChange],
            (true, false) => &[VersionReason::Create, VersionReason::ImageChange],
            (true, true) => &[VersionReason::Create, VersionReason::ImageChange, VersionReason::Restore],
        };
        let reasons: Vec<_> = history.iter().map(|version| version.reason()).collect();
        assert_eq!(reasons, expected_reasons, "{point}");
        assert_exact(&testbed, &server, &mut client, &[id]).await;
        // The workspace goes on working: another change of image.
        let target = if on_multilayer { &busybox } else { &multilayer };
        change_image(&mut client, id, target).await.unwrap();
        assert_eq!(testbed.exec(&ns, id, &["cat", "/data/notes.txt"]), "old\n", "{point}");
        assert_exact(&testbed, &server, &mut client, &[id]).await;
        delete_workspace(&mut client, id).await;
    }
}
