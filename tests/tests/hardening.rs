//! The hardening issue end to end, on the real containerd and registry: image users, /data
//! ownership, many-layer images, atomic RestoreData, crashes inside a create, foreign
//! containers across a reboot, racing stop and delete, and the SIGKILL path of a stop.

use std::time::{Duration, Instant};

use berth_api::v1::create_workspace_response::Event;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateWorkspaceRequest, CreateWorkspaceResponse, DeleteWorkspaceRequest, GetWorkspaceRequest, RestoreDataRequest,
    StartWorkspaceRequest, StopWorkspaceRequest, Workspace, WorkspaceState,
};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

type Client = WorkspaceServiceClient<Channel>;

fn create_request(id: &str, image: &str) -> CreateWorkspaceRequest {
    CreateWorkspaceRequest { workspace_id: id.to_owned(), image: image.to_owned(), ..Default::default() }
}

async fn create(client: &mut Client, request: CreateWorkspaceRequest) -> Result<Workspace, tonic::Status> {
    let mut stream = client.create_workspace(request).await?.into_inner();
    let mut last = None;
    while let Some(item) = stream.next().await {
        let CreateWorkspaceResponse { event } = item?;
        last = event;
    }
    match last {
        Some(Event::Ready(ready)) => Ok(ready.workspace.expect("ready carries the workspace")),
        other => panic!("the create ended without ready: {other:?}"),
    }
}

async fn stop(client: &mut Client, id: &str, seconds: i64) -> Result<Workspace, tonic::Status> {
    let request = StopWorkspaceRequest {
        workspace_id: id.to_owned(),
        timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
    };
    Ok(client.stop_workspace(request).await?.into_inner().workspace.expect("stop answers with the workspace"))
}

async fn delete(client: &mut Client, id: &str, preserve_data: bool) {
    client.delete_workspace(DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data }).await.unwrap();
}

/// `stat -c FORMAT PATH` inside the workspace.
fn stat(testbed: &Testbed, namespace: &str, id: &str, format: &str, path: &str) -> String {
    testbed.exec(namespace, id, &["stat", "-c", format, path]).trim().to_owned()
}

/// The active (writable) snapshots of the namespace.
fn active_snapshots(testbed: &Testbed, namespace: &str) -> Vec<String> {
    testbed
        .ctr(namespace, &["snapshots", "ls"])
        .lines()
        .filter(|line| line.contains("Active"))
        .map(str::to_owned)
        .collect()
}

/// What containerd and the host must not keep after a workspace is gone.
fn assert_nothing_left(testbed: &Testbed, server: &BerthServer) {
    let containers = testbed.ctr(&server.namespace, &["containers", "ls", "-q"]);
    assert!(containers.trim().is_empty(), "containers left: {containers}");
    assert!(active_snapshots(testbed, &server.namespace).is_empty(), "writable snapshots left");
    let leases = testbed.ctr(&server.namespace, &["leases", "ls", "-q"]);
    assert!(!leases.lines().any(|lease| lease.starts_with("berth-")), "leases left: {leases}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state_dir = server.state_dir.display().to_string();
    assert!(!mounts.contains(&state_dir), "mounts left under {state_dir}");
}

#[tokio::test]
async fn named_image_users_run_pid_1_and_own_data() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let ns = &server.namespace;

    create(&mut client, create_request("bot-user", &testbed.image("USER_BOT"))).await.unwrap();
    let id = testbed.exec(ns, "bot-user", &["id"]);
    assert!(id.starts_with("uid=1000(bot) gid=1000(bot)"), "{id}");
    assert!(id.contains("29(audio)") && id.contains("50(staff)"), "supplementary groups: {id}");
    let init_status = testbed.exec(ns, "bot-user", &["cat", "/proc/1/status"]);
    assert!(init_status.lines().any(|line| line.starts_with("Uid:") && line.contains("1000")), "{init_status}");
    // The image's /data is root's; the workspace's user owns it now and can write it.
    assert_eq!(stat(&testbed, ns, "bot-user", "%u:%g", "/data"), "1000:1000");
    testbed.exec(ns, "bot-user", &["sh", "-c", "echo mine > /data/note && cat /data/note"]);

    create(&mut client, create_request("staff-user", &testbed.image("USER_STAFF"))).await.unwrap();
    let id = testbed.exec(ns, "staff-user", &["id"]);
    assert!(id.starts_with("uid=1000(bot) gid=50(staff)"), "{id}");
    create(&mut client, create_request("uid-user", &testbed.image("USER_UID"))).await.unwrap();
    assert!(testbed.exec(ns, "uid-user", &["id"]).starts_with("uid=1000(bot) gid=50(staff)"));

    let status = create(&mut client, create_request("ghost-user", &testbed.image("USER_GHOST"))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some("USER_NOT_FOUND"));
    assert!(status.message().contains("\"ghost\""), "{}", status.message());
    let get = client.get_workspace(GetWorkspaceRequest { workspace_id: "ghost-user".to_owned() }).await.unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    assert!(!testbed.ctr(ns, &["containers", "ls", "-q"]).contains("ghost-user"));

    for id in ["bot-user", "staff-user", "uid-user"] {
        delete(&mut client, id, false).await;
    }
    assert_nothing_left(&testbed, &server);
}

#[tokio::test]
async fn an_image_with_64_layers_is_created_preserved_and_restored() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let ns = &server.namespace;
    let image = testbed.image("MANYLAYERS");

    let workspace = create(&mut client, create_request("layers", &image)).await.unwrap();
    assert_eq!(workspace.state(), WorkspaceState::Running);
    assert_eq!(testbed.exec(ns, "layers", &["cat", "/layers/01", "/layers/63"]), "layer 1\nlayer 63\n");
    testbed.exec(ns, "layers", &["sh", "-c", "echo kept > /data/kept"]);
    // Preserving mounts the stopped workspace's 64-layer overlay on the host.
    delete(&mut client, "layers", true).await;
    let restored = CreateWorkspaceRequest { restore_data: true, ..create_request("layers", &image) };
    create(&mut client, restored).await.unwrap();
    assert_eq!(testbed.exec(ns, "layers", &["cat", "/data/kept"]), "kept\n");
    delete(&mut client, "layers", false).await;
    assert_nothing_left(&testbed, &server);
}

/// RestoreData on a workspace whose /data comes from an image layer (busybox-based user image)
/// or only from the writable layer (Debian has no /data), stopped and running: the old /data is
/// replaced whole, its owner and mode are kept, and nothing is left next to it.
#[tokio::test]
async fn restore_data_replaces_data_whole_whichever_layer_it_comes_from() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let ns = &server.namespace;
    for (id, image, stopped) in [
        ("restore-layer", testbed.image("USER_BOT"), true),
        ("restore-running", testbed.image("USER_BOT"), false),
        ("restore-debian", testbed.image("DEBIAN"), true),
    ] {
        create(&mut client, create_request(id, &image)).await.unwrap();
        testbed.exec(ns, id, &["sh", "-c", "mkdir -p /data/dir && echo before > /data/dir/file && chmod 0750 /data"]);
        delete(&mut client, id, true).await;
        create(&mut client, create_request(id, &image)).await.unwrap();
        testbed.exec(ns, id, &["sh", "-c", "echo new > /data/new && chmod 0750 /data"]);
        let owner = stat(&testbed, ns, id, "%u:%g %a", "/data");
        if stopped {
            assert_eq!(stop(&mut client, id, 5).await.unwrap().state(), WorkspaceState::Stopped);
        }
        let restored = client.restore_data(RestoreDataRequest { workspace_id: id.to_owned() }).await.unwrap();
        let expected = if stopped { WorkspaceState::Stopped } else { WorkspaceState::Running };
        assert_eq!(restored.into_inner().workspace.unwrap().state(), expected, "{id}");
        if stopped {
            client.start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap();
        }
        assert_eq!(testbed.exec(ns, id, &["cat", "/data/dir/file"]), "before\n", "{id}");
        let listing = testbed.exec(ns, id, &["ls", "-a", "/data", "/"]);
        assert!(!listing.contains("new") && !listing.contains(".berth-"), "{id}: {listing}");
        assert_eq!(stat(&testbed, ns, id, "%u:%g %a", "/data"), owner, "{id}: owner and mode kept");
        delete(&mut client, id, false).await;
    }
}

/// kill -9 inside container creation and inside the /data preparation (with the snapshot mounted
/// on the host): the next boot removes the container, the snapshot, the lease and the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_a_create_leaves_nothing_after_the_next_boot() {
    let testbed = Testbed::from_env();
    for point in ["create.container", "create.data"] {
        let options =
            ServerOptions { env: vec![("BERTH_FAILPOINT".to_owned(), point.to_owned())], ..ServerOptions::default() };
        let mut server = BerthServer::start_with(&testbed, options);
        let mut client = Client::new(server.channel().await);
        let id = format!("crash-{}", point.replace('.', "-"));
        let outcome = create(&mut client, create_request(&id, &testbed.image("BUSYBOX"))).await;
        assert!(outcome.is_err(), "{point}: the server died mid-create");
        let status = server.wait_exit(Duration::from_secs(20));
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{point}: {status}");
        if point == "create.container" {
            assert!(
                testbed.ctr(&server.namespace, &["containers", "ls", "-q"]).contains(&id),
                "{point}: the container exists at the crash"
            );
        } else {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(
                mounts.contains(&server.state_dir.display().to_string()),
                "{point}: the rootfs is mounted at the crash"
            );
        }

        let options = ServerOptions {
            reuse: Some((server.state_dir.clone(), server.namespace.clone())),
            ..ServerOptions::default()
        };
        drop(server);
        let server = BerthServer::start_with(&testbed, options);
        server.wait_serving(Duration::from_secs(30)).await;
        let mut client = Client::new(server.channel().await);
        let get = client.get_workspace(GetWorkspaceRequest { workspace_id: id.clone() }).await.unwrap_err();
        assert_eq!(get.code(), Code::NotFound, "{point}");
        assert_nothing_left(&testbed, &server);
        // The id is free again.
        create(&mut client, create_request(&id, &testbed.image("BUSYBOX"))).await.unwrap();
        delete(&mut client, &id, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_container_survives_a_failed_create_and_a_reboot() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let ns = server.namespace.clone();
    let image = testbed.image("BUSYBOX");
    testbed.ctr(&ns, &["images", "pull", "--plain-http", &image]);
    testbed.ctr(&ns, &["containers", "create", &image, "foreign"]);
    let mut client = Client::new(server.channel().await);
    let status = create(&mut client, create_request("foreign", &image)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(error_reason(&status).as_deref(), Some("WORKSPACE_ALREADY_EXISTS"));

    let server = server.restart(&testbed, false);
    server.wait_serving(Duration::from_secs(30)).await;
    assert_eq!(testbed.ctr(&ns, &["containers", "ls", "-q"]).trim(), "foreign", "the foreign container is still there");
    let mut client = Client::new(server.channel().await);
    let get = client.get_workspace(GetWorkspaceRequest { workspace_id: "foreign".to_owned() }).await.unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    testbed.ctr(&ns, &["containers", "rm", "foreign"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stop_and_delete_of_one_workspace_end_with_it_gone() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    for round in 0..3 {
        let id = format!("racer-{round}");
        create(&mut client, create_request(&id, &testbed.image("BUSYBOX"))).await.unwrap();
        let mut stopper = client.clone();
        let mut deleter = client.clone();
        let stop_id = id.clone();
        let delete_id = id.clone();
        let (stopped, deleted) = tokio::join!(async move { stop(&mut stopper, &stop_id, 5).await }, async move {
            deleter.delete_workspace(DeleteWorkspaceRequest { workspace_id: delete_id, preserve_data: false }).await
        });
        deleted.unwrap();
        match stopped {
            Ok(workspace) => assert_eq!(workspace.state(), WorkspaceState::Stopped),
            Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        }
        let get = client.get_workspace(GetWorkspaceRequest { workspace_id: id.clone() }).await.unwrap_err();
        assert_eq!(get.code(), Code::NotFound);
    }
    assert_nothing_left(&testbed, &server);
}

#[tokio::test]
async fn stop_sigkills_a_process_that_ignores_sigterm_after_the_timeout() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let ns = &server.namespace;
    create(&mut client, create_request("stubborn", &testbed.image("BUSYBOX"))).await.unwrap();
    let script = "trap '' TERM; while true; do sleep 1; done";
    testbed.ctr(ns, &["task", "exec", "--detach", "--exec-id", "stubborn-loop", "stubborn", "sh", "-c", script]);
    let counted = berth_e2e::eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            let request = GetWorkspaceRequest { workspace_id: "stubborn".to_owned() };
            client.get_workspace(request).await.unwrap().into_inner().workspace.unwrap().process_count >= 1
        }
    })
    .await;
    assert!(counted, "the stubborn process runs");
    let started = Instant::now();
    let stopped = stop(&mut client, "stubborn", 1).await.unwrap();
    let took = started.elapsed();
    assert_eq!(stopped.state(), WorkspaceState::Stopped);
    assert!(took >= Duration::from_secs(1), "the process got its full timeout: {took:?}");
    assert!(took < Duration::from_secs(6), "SIGKILL follows the timeout: {took:?}");
    let tasks = testbed.ctr(ns, &["tasks", "ls"]);
    assert!(!tasks.contains("stubborn"), "the task is gone: {tasks}");
    delete(&mut client, "stubborn", false).await;
}
