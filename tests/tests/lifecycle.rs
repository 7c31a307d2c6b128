//! Workspace lifecycle over the real containerd and registry: create with streamed pull
//! progress, get/list, start, stop, delete, preserve and restore data, restarts, bad input.

use std::collections::HashMap;
use std::time::Duration;

use berth_api::v1::create_workspace_response::Event;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateWorkspaceRequest, CreateWorkspaceResponse, DeleteWorkspaceRequest, GetWorkspaceRequest, LayerState,
    ListWorkspacesRequest, ResetDataRequest, Resources, RestoreDataRequest, StartWorkspaceRequest,
    StopWorkspaceRequest, Workspace, WorkspaceState,
};
use berth_e2e::{BerthServer, Testbed, error_reason};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

type Client = WorkspaceServiceClient<Channel>;

fn create_request(id: &str, image: &str) -> CreateWorkspaceRequest {
    CreateWorkspaceRequest { workspace_id: id.to_owned(), image: image.to_owned(), ..Default::default() }
}

/// Runs a create to its end; returns every event, or the status that ended the stream.
async fn create(client: &mut Client, request: CreateWorkspaceRequest) -> Result<Vec<Event>, tonic::Status> {
    let mut stream = client.create_workspace(request).await?.into_inner();
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        let CreateWorkspaceResponse { event } = item?;
        events.push(event.expect("every response carries an event"));
    }
    Ok(events)
}

fn ready(events: &[Event]) -> Workspace {
    match events.last() {
        Some(Event::Ready(ready)) => ready.workspace.clone().expect("ready carries the workspace"),
        other => panic!("the last event is not ready: {other:?}"),
    }
}

fn phase(event: &Event) -> usize {
    match event {
        Event::Pulling(_) => 0,
        Event::PullProgress(_) => 1,
        Event::Unpacking(_) => 2,
        Event::Creating(_) => 3,
        Event::Restoring(_) => 4,
        Event::Ready(_) => 5,
    }
}

async fn get(client: &mut Client, id: &str) -> Workspace {
    client
        .get_workspace(GetWorkspaceRequest { workspace_id: id.to_owned() })
        .await
        .unwrap_or_else(|status| panic!("get {id}: {status:?}"))
        .into_inner()
        .workspace
        .unwrap()
}

async fn stop(client: &mut Client, id: &str) -> Workspace {
    let request = StopWorkspaceRequest {
        workspace_id: id.to_owned(),
        timeout: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
    };
    client.stop_workspace(request).await.unwrap().into_inner().workspace.unwrap()
}

async fn start(client: &mut Client, id: &str) -> Workspace {
    client
        .start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap()
}

async fn delete(client: &mut Client, id: &str, preserve_data: bool) {
    client.delete_workspace(DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data }).await.unwrap();
}

#[tokio::test]
async fn create_streams_ordered_progress_and_runs_catatonit_as_pid_1() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let mut request = create_request("multi", &testbed.image("MULTILAYER"));
    request.labels.insert("team".to_owned(), "red".to_owned());
    request.env.insert("GREETING".to_owned(), "hello".to_owned());
    let events = create(&mut client, request).await.unwrap();

    let phases: Vec<_> = events.iter().map(phase).collect();
    assert!(phases.windows(2).all(|pair| pair[0] <= pair[1]), "phases out of order: {phases:?}");
    assert_eq!(phases.first(), Some(&0), "starts with pulling");
    assert!(phases.contains(&1) && phases.contains(&2) && phases.contains(&3), "{phases:?}");

    // Per-layer offsets only grow and reach each layer's size.
    let mut offsets: HashMap<String, (u64, u64)> = HashMap::new();
    for event in &events {
        if let Event::PullProgress(progress) = event {
            for layer in &progress.layers {
                let (last, _) = offsets.get(&layer.digest).copied().unwrap_or((0, layer.total));
                assert!(layer.offset >= last, "layer {} went back from {last} to {}", layer.digest, layer.offset);
                assert!(layer.offset <= layer.total);
                offsets.insert(layer.digest.clone(), (layer.offset, layer.total));
            }
        }
    }
    assert!(offsets.len() >= 3, "the multi-layer image has at least 3 layers: {offsets:?}");
    for (digest, (offset, total)) in &offsets {
        assert_eq!(offset, total, "layer {digest} did not reach its size");
    }
    let last_progress =
        events.iter().rev().find_map(|e| if let Event::PullProgress(p) = e { Some(p) } else { None }).unwrap();
    assert!(last_progress.layers.iter().all(|l| matches!(l.state(), LayerState::Done | LayerState::Exists)));

    let workspace = ready(&events);
    assert_eq!(workspace.state(), WorkspaceState::Running);
    assert_eq!(workspace.namespace, server.namespace);
    assert!(workspace.image_digest.starts_with("sha256:"));
    assert!(workspace.init_pid > 0);
    assert_eq!(workspace.current_version, 1);
    assert!(workspace.create_time.is_some() && workspace.last_start_time.is_some());

    // PID 1 is the host's catatonit in pause mode.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", workspace.init_pid)).unwrap();
    assert_eq!(cmdline, b"/run/berth-init\0-P\0");
    let init = std::fs::read(format!("/proc/{}/exe", workspace.init_pid)).unwrap();
    assert_eq!(init, std::fs::read("/usr/bin/catatonit").unwrap(), "PID 1 runs catatonit");

    // ctr agrees with GetWorkspace.
    let containers = testbed.ctr(&server.namespace, &["containers", "ls", "-q"]);
    assert_eq!(containers.trim(), "multi");
    let tasks = testbed.ctr(&server.namespace, &["tasks", "ls"]);
    let line = tasks.lines().find(|line| line.starts_with("multi")).expect("task listed");
    assert!(line.contains(&workspace.init_pid.to_string()) && line.contains("RUNNING"), "{line}");

    // Inside: hostname, the image's layers and whiteout, env from caller and image.
    assert_eq!(testbed.exec(&server.namespace, "multi", &["hostname"]).trim(), "multi");
    assert!(!testbed.exec(&server.namespace, "multi", &["cat", "/etc/berth-layer2"]).is_empty());
    let removed =
        testbed.exec(&server.namespace, "multi", &["sh", "-c", "test -e /opt/removed && echo present || echo absent"]);
    assert_eq!(removed.trim(), "absent", "the whiteout layer removed /opt/removed");
    let env = testbed.exec(&server.namespace, "multi", &["sh", "-c", "echo $GREETING:$PATH"]);
    assert!(env.starts_with("hello:") && env.contains("/bin"), "{env}");
    assert!(testbed.exec(&server.namespace, "multi", &["cat", "/etc/hosts"]).contains("multi"));

    let got = get(&mut client, "multi").await;
    assert_eq!(got.state(), WorkspaceState::Running);
    assert_eq!(got.labels.get("team").map(String::as_str), Some("red"));
    assert_eq!(got.init_pid, workspace.init_pid);
}

#[tokio::test]
async fn data_survives_stop_start_and_delete_preserve_then_create_restore() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let image = testbed.image("BUSYBOX");
    ready(&create(&mut client, create_request("keeper", &image)).await.unwrap());
    testbed.exec(
        &server.namespace,
        "keeper",
        &["sh", "-c", "mkdir -p /data/notes && echo remember-me > /data/notes/a.txt && ln -s notes/a.txt /data/link"],
    );

    let stopped = stop(&mut client, "keeper").await;
    assert_eq!(stopped.state(), WorkspaceState::Stopped);
    assert_eq!(stopped.init_pid, 0);
    assert!(stopped.last_stop_time.is_some());
    assert!(!testbed.ctr(&server.namespace, &["tasks", "ls"]).contains("keeper"), "task deleted on stop");
    assert_eq!(stop(&mut client, "keeper").await.state(), WorkspaceState::Stopped, "stop is idempotent");

    let started = start(&mut client, "keeper").await;
    assert_eq!(started.state(), WorkspaceState::Running);
    assert_eq!(start(&mut client, "keeper").await.init_pid, started.init_pid, "start is idempotent");
    assert_eq!(testbed.exec(&server.namespace, "keeper", &["cat", "/data/notes/a.txt"]).trim(), "remember-me");

    delete(&mut client, "keeper", true).await;
    let status = client.get_workspace(GetWorkspaceRequest { workspace_id: "keeper".to_owned() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(testbed.ctr(&server.namespace, &["containers", "ls", "-q"]).trim().is_empty());
    assert!(server.state_dir.join("preserved/keeper.tar.gz").exists());

    let mut request = create_request("keeper", &image);
    request.restore_data = true;
    let events = create(&mut client, request).await.unwrap();
    assert!(events.iter().any(|e| matches!(e, Event::Restoring(_))), "restoring events are sent");
    let workspace = ready(&events);
    assert!(!workspace.has_preserved_data, "the archive is consumed");
    assert_eq!(testbed.exec(&server.namespace, "keeper", &["cat", "/data/notes/a.txt"]).trim(), "remember-me");
    assert_eq!(testbed.exec(&server.namespace, "keeper", &["readlink", "/data/link"]).trim(), "notes/a.txt");

    // RestoreData / ResetData on an existing workspace.
    delete(&mut client, "keeper", true).await;
    ready(&create(&mut client, create_request("keeper", &image)).await.unwrap());
    assert!(get(&mut client, "keeper").await.has_preserved_data);
    let restored =
        client.restore_data(RestoreDataRequest { workspace_id: "keeper".to_owned() }).await.unwrap().into_inner();
    assert_eq!(restored.workspace.unwrap().state(), WorkspaceState::Running, "a running workspace runs again");
    assert_eq!(testbed.exec(&server.namespace, "keeper", &["cat", "/data/notes/a.txt"]).trim(), "remember-me");
    client.reset_data(ResetDataRequest { workspace_id: "keeper".to_owned() }).await.unwrap();
    assert_eq!(testbed.exec(&server.namespace, "keeper", &["ls", "-A", "/data"]).trim(), "");
    let status = client.restore_data(RestoreDataRequest { workspace_id: "keeper".to_owned() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(error_reason(&status).as_deref(), Some("PRESERVED_DATA_NOT_FOUND"));

    // A corrupt archive fails the restore and leaves /data as it was, the workspace running.
    testbed.exec(&server.namespace, "keeper", &["sh", "-c", "echo still-here > /data/current"]);
    let mut corrupt = vec![0x1f, 0x8b, 0x08, 0x00];
    corrupt.extend_from_slice(&[0x42; 512]);
    std::fs::write(server.state_dir.join("preserved/keeper.tar.gz"), corrupt).unwrap();
    let status = client.restore_data(RestoreDataRequest { workspace_id: "keeper".to_owned() }).await.unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("DATA_ARCHIVE_FAILED"), "{status:?}");
    assert_eq!(status.code(), Code::FailedPrecondition, "a broken archive is not berth's fault: {status:?}");
    assert_eq!(get(&mut client, "keeper").await.state(), WorkspaceState::Running);
    assert_eq!(testbed.exec(&server.namespace, "keeper", &["cat", "/data/current"]).trim(), "still-here");
    assert_eq!(testbed.exec(&server.namespace, "keeper", &["ls", "-A", "/data"]).trim(), "current");
}

// Multi-threaded: BerthServer::restart blocks this thread while the client connection must
// keep answering the server's shutdown pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_survives_restarts_and_killed_tasks_come_back() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let image = testbed.image("BUSYBOX");
    ready(&create(&mut client, create_request("sleeper", &image)).await.unwrap());
    let runner = ready(&create(&mut client, create_request("runner", &image)).await.unwrap());
    stop(&mut client, "sleeper").await;

    // Kill the runner's task behind berth's back.
    testbed.ctr(&server.namespace, &["tasks", "kill", "--signal", "SIGKILL", "runner"]);
    let died = berth_e2e::eventually(Duration::from_secs(10), || async {
        testbed
            .ctr(&server.namespace, &["tasks", "ls"])
            .lines()
            .any(|line| line.starts_with("runner") && line.contains("STOPPED"))
    })
    .await;
    assert!(died, "the killed task stops");

    let server = server.restart(&testbed, false);
    let mut client = Client::new(server.channel().await);
    let sleeper = get(&mut client, "sleeper").await;
    assert_eq!(sleeper.state(), WorkspaceState::Stopped, "a stopped workspace stays stopped across a restart");
    let runner_again = get(&mut client, "runner").await;
    assert_eq!(runner_again.state(), WorkspaceState::Running, "log:\n{}", server.log_text());
    assert_ne!(runner_again.init_pid, runner.init_pid);
    assert!(
        !testbed
            .ctr(&server.namespace, &["tasks", "ls"])
            .lines()
            .any(|l| l.starts_with("sleeper") && l.contains("RUNNING"))
    );

    // A container removed behind berth's back is rebuilt on start, keeping its snapshot.
    testbed.exec(&server.namespace, "runner", &["sh", "-c", "echo kept > /data/kept"]);
    stop(&mut client, "runner").await;
    testbed.ctr(&server.namespace, &["containers", "rm", "--keep-snapshot", "runner"]);
    let rebuilt = start(&mut client, "runner").await;
    assert_eq!(rebuilt.state(), WorkspaceState::Running);
    assert_eq!(testbed.exec(&server.namespace, "runner", &["cat", "/data/kept"]).trim(), "kept");

    // Container and snapshot both gone: rebuilt from the image, with an empty filesystem.
    stop(&mut client, "runner").await;
    testbed.ctr(&server.namespace, &["containers", "rm", "runner"]);
    let fresh = start(&mut client, "runner").await;
    assert_eq!(fresh.state(), WorkspaceState::Running);
    assert_eq!(testbed.exec(&server.namespace, "runner", &["ls", "-A", "/data"]).trim(), "");
}

#[tokio::test]
async fn create_is_idempotent_detached_and_concurrent() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let image = testbed.image("BUSYBOX");

    // The client hangs up after the first event; creation still completes.
    let mut stream = client.create_workspace(create_request("detached", &image)).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let running = berth_e2e::eventually(Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            client
                .get_workspace(GetWorkspaceRequest { workspace_id: "detached".to_owned() })
                .await
                .is_ok_and(|r| r.into_inner().workspace.unwrap().state() == WorkspaceState::Running)
        }
    })
    .await;
    assert!(running, "a create whose client left reaches RUNNING; log:\n{}", server.log_text());

    // Same spec: one ready event. Other spec: ALREADY_EXISTS.
    let again = create(&mut client, create_request("detached", &image)).await.unwrap();
    assert_eq!(again.len(), 1, "{again:?}");
    ready(&again);
    let mut other = create_request("detached", &image);
    other.labels.insert("x".to_owned(), "y".to_owned());
    let status = create(&mut client, other).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(error_reason(&status).as_deref(), Some("WORKSPACE_ALREADY_EXISTS"));

    // Ten at once.
    let creates = (0..10).map(|n| {
        let mut client = client.clone();
        let mut request = create_request(&format!("crowd-{n}"), &image);
        request.labels.insert("crowd".to_owned(), "yes".to_owned());
        async move { create(&mut client, request).await }
    });
    for outcome in futures::future::join_all(creates).await {
        assert_eq!(ready(&outcome.unwrap()).state(), WorkspaceState::Running);
    }
    let running = testbed.ctr(&server.namespace, &["tasks", "ls"]);
    assert_eq!(running.lines().filter(|l| l.starts_with("crowd-") && l.contains("RUNNING")).count(), 10);

    // Listing: label selector and pages.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_workspaces(ListWorkspacesRequest {
                page_size: 4,
                page_token: token,
                label_selector: "crowd=yes".to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.workspaces.len() <= 4);
        seen.extend(page.workspaces.into_iter().map(|w| w.workspace_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<_> = (0..10).map(|n| format!("crowd-{n}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn resources_become_cgroup_limits() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let mut request = create_request("limited", &testbed.image("BUSYBOX"));
    request.resources = Some(Resources { cpu_millis: 500, memory_bytes: 64 << 20, pids_limit: 64 });
    let workspace = ready(&create(&mut client, request).await.unwrap());
    assert_eq!(workspace.resources.unwrap().memory_bytes, 64 << 20);
    let limits = berth_e2e::CgroupLimits::read(&format!("{}/limited", server.namespace));
    assert_eq!(limits.memory_bytes, (64u64 << 20).to_string());
    assert_eq!(limits.cpu_quota_micros, "50000");
    assert_eq!(limits.cpu_period_micros, "100000");
    assert_eq!(limits.pids, "64");
}

#[tokio::test]
async fn debian_image_runs_bash() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    ready(&create(&mut client, create_request("deb", &testbed.image("DEBIAN"))).await.unwrap());
    let out = testbed.exec(
        &server.namespace,
        "deb",
        &["bash", "-c", "echo $BASH_VERSION; cat /etc/debian_version; command -v apt-get"],
    );
    assert!(out.contains("/usr/bin/apt-get"), "{out}");
    assert!(out.lines().nth(1).is_some_and(|v| v.starts_with("12")), "{out}");
}

#[tokio::test]
async fn bad_input_gets_precise_statuses_and_leaves_nothing_behind() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let busybox = testbed.image("BUSYBOX");
    let registry = &testbed.registry;

    let cases: Vec<(CreateWorkspaceRequest, Code, &str)> = vec![
        (create_request("Bad!", &busybox), Code::InvalidArgument, "INVALID_WORKSPACE_ID"),
        (create_request("bad-ref", "UPPER/Case::"), Code::InvalidArgument, "INVALID_IMAGE_REFERENCE"),
        (
            create_request("no-tag", &format!("{registry}/berth-test/busybox:no-such-tag")),
            Code::NotFound,
            "IMAGE_NOT_FOUND",
        ),
        (
            create_request("no-repo", &format!("{registry}/berth-test/nothing:latest")),
            Code::NotFound,
            "IMAGE_NOT_FOUND",
        ),
        (create_request("closed", "127.0.0.1:1/berth-test/busybox:latest"), Code::Unavailable, "REGISTRY_UNAVAILABLE"),
        (
            CreateWorkspaceRequest {
                resources: Some(Resources { cpu_millis: -1, ..Default::default() }),
                ..create_request("negative", &busybox)
            },
            Code::InvalidArgument,
            "INVALID_RESOURCES",
        ),
    ];
    // Checked before any pull: the image's registry is closed, so a request that got as far as
    // pulling would fail with REGISTRY_UNAVAILABLE instead.
    let unpullable = "127.0.0.1:1/berth-test/busybox:latest";
    let with = |id: &str, change: &dyn Fn(&mut CreateWorkspaceRequest)| {
        let mut request = create_request(id, unpullable);
        change(&mut request);
        request
    };
    let limits = |cpu_millis, pids_limit| Some(Resources { cpu_millis, memory_bytes: 0, pids_limit });
    let label = |key: String, value: String| {
        move |request: &mut CreateWorkspaceRequest| {
            request.labels.insert(key.clone(), value.clone());
        }
    };
    let validated: Vec<(CreateWorkspaceRequest, Code, &str, &str)> = vec![
        (
            with("tiny-cpu", &|r| r.resources = limits(5, 0)),
            Code::InvalidArgument,
            "INVALID_RESOURCES",
            "minimum of 10",
        ),
        (
            with("huge-cpu", &|r| r.resources = limits(i64::MAX, 0)),
            Code::InvalidArgument,
            "INVALID_RESOURCES",
            "maximum of 8192000",
        ),
        (
            with("huge-pids", &|r| r.resources = limits(0, 1 << 40)),
            Code::InvalidArgument,
            "INVALID_RESOURCES",
            "maximum of 4194304",
        ),
        (
            with("spoof-berth", &label("berth.workspace".to_owned(), "v1".to_owned())),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "reserved",
        ),
        (
            with("spoof-ctrd", &label("containerd.io/gc.ref.snapshot.overlayfs".to_owned(), "x".to_owned())),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "reserved",
        ),
        (
            with("long-key", &label("k".repeat(254), String::new())),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "254 bytes",
        ),
        (
            with("long-value", &label("note".to_owned(), "v".repeat(1025))),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "1025 bytes",
        ),
        (
            with("long-request-id", &|r| r.request_id = "r".repeat(129)),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "request_id",
        ),
        (
            with("odd-request-id", &|r| r.request_id = "not ascii ü".to_owned()),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "printable ASCII",
        ),
        (
            with("gpu", &|r| r.cdi_devices = vec!["berth.invalid/gpu=0".to_owned()]),
            Code::NotFound,
            "CDI_DEVICE_NOT_FOUND",
            "CDI devices \"berth.invalid/gpu=0\" do not resolve to a device of this host",
        ),
        (
            with("blank-device", &|r| r.cdi_devices = vec![" ".to_owned()]),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "empty name",
        ),
    ];
    let cases = cases.into_iter().map(|(request, code, reason)| (request, code, reason, "")).chain(validated);
    for (request, code, reason, says) in cases {
        let id = request.workspace_id.clone();
        let status = create(&mut client, request).await.unwrap_err();
        assert_eq!(status.code(), code, "{id}: {status:?}");
        assert_eq!(error_reason(&status).as_deref(), Some(reason), "{id}: {status:?}");
        assert!(!status.message().is_empty());
        assert!(status.message().contains(says), "{id}: {:?} lacks {says:?}", status.message());
        if code == Code::Unavailable {
            assert!(status.message().contains("127.0.0.1:1"), "names the registry: {}", status.message());
        }
    }
    // Failed creates leave no workspace, container or snapshot behind.
    let listed = client.list_workspaces(ListWorkspacesRequest::default()).await.unwrap().into_inner();
    assert!(listed.workspaces.is_empty(), "{:?}", listed.workspaces);
    assert!(testbed.ctr(&server.namespace, &["containers", "ls", "-q"]).trim().is_empty());
    let snapshots = testbed.ctr(&server.namespace, &["snapshots", "ls"]);
    assert!(!snapshots.contains("-active-"), "{snapshots}");

    // StopWorkspace's timeout is at most 5 minutes, checked before the workspace is looked up.
    let stop_after = |seconds| StopWorkspaceRequest {
        workspace_id: "ghost".to_owned(),
        timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
    };
    let status = client.stop_workspace(stop_after(301)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some("INVALID_ARGUMENT"));
    assert!(status.message().contains("5 minutes"), "{}", status.message());
    let status = client.stop_workspace(stop_after(300)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "5 minutes is allowed: {status:?}");

    for status in [
        client.start_workspace(StartWorkspaceRequest { workspace_id: "ghost".to_owned() }).await.unwrap_err(),
        client
            .stop_workspace(StopWorkspaceRequest { workspace_id: "ghost".to_owned(), timeout: None })
            .await
            .unwrap_err(),
        client
            .delete_workspace(DeleteWorkspaceRequest { workspace_id: "ghost".to_owned(), preserve_data: false })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(error_reason(&status).as_deref(), Some("WORKSPACE_NOT_FOUND"));
    }
    // A container berth does not manage blocks the id, and survives the failed create.
    testbed.ctr(&server.namespace, &["images", "pull", "--plain-http", &busybox]);
    testbed.ctr(&server.namespace, &["containers", "create", &busybox, "foreign"]);
    let status = create(&mut client, create_request("foreign", &busybox)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some("WORKSPACE_ALREADY_EXISTS"));
    assert!(status.message().contains("does not manage"), "{}", status.message());
    assert_eq!(testbed.ctr(&server.namespace, &["containers", "ls", "-q"]).trim(), "foreign", "left alone");
    testbed.ctr(&server.namespace, &["containers", "rm", "foreign"]);
    let status = client.get_workspace(GetWorkspaceRequest { workspace_id: "foreign".to_owned() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "the failed create left no record");

    // A request_id identifies one create: reusing it for another is refused.
    let mut first = create_request("with-request-id", &busybox);
    first.request_id = "req-1".to_owned();
    ready(&create(&mut client, first.clone()).await.unwrap());
    assert_eq!(create(&mut client, first).await.unwrap().len(), 1, "a retried create answers with ready");
    let mut reused = create_request("another-id", &busybox);
    reused.request_id = "req-1".to_owned();
    let status = create(&mut client, reused).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_reason(&status).as_deref(), Some("REQUEST_ID_REUSED"));
    delete(&mut client, "with-request-id", false).await;

    let mut restore = create_request("nothing-preserved", &busybox);
    restore.restore_data = true;
    let status = create(&mut client, restore).await.unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("PRESERVED_DATA_NOT_FOUND"));
}

// Multi-threaded: BerthServer::restart blocks this thread while the client connection must
// keep answering the server's shutdown pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_create_leaves_no_orphans_after_the_next_boot() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let mut stream =
        client.create_workspace(create_request("crashy", &testbed.image("DEBIAN"))).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    let server = server.restart(&testbed, true);
    let mut client = Client::new(server.channel().await);

    let status = client.get_workspace(GetWorkspaceRequest { workspace_id: "crashy".to_owned() }).await;
    match status {
        Err(status) => assert_eq!(status.code(), Code::NotFound),
        // The create finished before the kill landed: then it must be a complete workspace.
        Ok(response) => assert_eq!(response.into_inner().workspace.unwrap().state(), WorkspaceState::Running),
    }
    let exists = client.get_workspace(GetWorkspaceRequest { workspace_id: "crashy".to_owned() }).await.is_ok();
    if !exists {
        assert!(testbed.ctr(&server.namespace, &["containers", "ls", "-q"]).trim().is_empty());
        assert!(!testbed.ctr(&server.namespace, &["snapshots", "ls"]).contains("crashy-active-"));
    }
    let leases = testbed.ctr(&server.namespace, &["leases", "ls", "-q"]);
    assert!(!leases.lines().any(|l| l.starts_with("berth-")), "leases left: {leases}");
}

#[tokio::test]
async fn stop_gives_the_bots_processes_sigterm_before_pid_1_exits() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    ready(&create(&mut client, create_request("graceful", &testbed.image("BUSYBOX"))).await.unwrap());
    let script = "trap 'echo flushed > /data/bye; exit 0' TERM; while true; do sleep 0.1; done";
    testbed
        .ctr(&server.namespace, &["task", "exec", "--detach", "--exec-id", "bot-loop", "graceful", "sh", "-c", script]);
    let counted = berth_e2e::eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move { get(&mut client, "graceful").await.process_count >= 1 }
    })
    .await;
    assert!(counted, "process_count counts the bot's process");

    let stopped = stop(&mut client, "graceful").await;
    assert_eq!(stopped.state(), WorkspaceState::Stopped);
    start(&mut client, "graceful").await;
    let bye = testbed.exec(&server.namespace, "graceful", &["cat", "/data/bye"]);
    assert_eq!(bye.trim(), "flushed", "the bot's process ran its SIGTERM handler before the stop completed");
}
