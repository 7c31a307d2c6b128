//! Authentication and authorization against a real berth: every method of the three services,
//! enumerated from the descriptor set berth serves for reflection, called with no token, a
//! wrong token, a read token, a write token for another workspace, a label-scoped token and an
//! admin token, each answer checked against a table (a method without an entry fails the test);
//! an unknown and a forbidden workspace answering alike; ListWorkspaces and WatchEvents
//! filtered; label-scoped creates and label updates, network policy changes for admins only; the
//! tokens file reloaded without a restart; TLS from a test CA over gRPC and grpc-web, with the
//! certificate reloaded on SIGHUP; the per-peer failure limit; and `--auth none` refused on
//! 0.0.0.0.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_api::v1 as pb;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_e2e::auth::{self, AuthChannel, Shape, TestCa, create_token, with_token};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason, run_berth_to_exit};
use bytes::Bytes;
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic::Code;

/// The workspace every probe is about: labels team=red, running busybox.
const TARGET: &str = "auth-a";

/// The tokens of the table test.
struct Tokens {
    admin: String,
    /// Read on TARGET by id.
    read_target: String,
    /// Write on another workspace, by id.
    write_other: String,
    /// Write on workspaces labelled team=red.
    red_team: String,
}

fn tokens_file(dir: &Path, entries: &[String]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("tokens.toml");
    std::fs::write(&path, entries.concat()).unwrap();
    path
}

/// A server checking the tokens of `path`, with `extra` settings.
fn server_with_tokens(testbed: &Testbed, path: &Path, extra: &[String]) -> BerthServer {
    let mut extra_args = vec![
        "--tokens-file".to_owned(),
        path.display().to_string(),
        "--default-image".to_owned(),
        testbed.image("BUSYBOX"),
    ];
    extra_args.extend_from_slice(extra);
    BerthServer::start_with(testbed, ServerOptions { extra_args, ..Default::default() })
}

fn table_tokens(testbed: &Testbed, dir: &Path) -> (Tokens, PathBuf) {
    let (admin, admin_entry) = create_token(testbed, "admin", &["--admin"]);
    let (read_target, read_entry) = create_token(testbed, "reader", &["--read", "--workspace", TARGET]);
    let (write_other, other_entry) = create_token(testbed, "other", &["--write", "--workspace", "auth-other"]);
    let (red_team, red_entry) = create_token(testbed, "red-team", &["--write", "--label", "team=red"]);
    let path = tokens_file(dir, &[admin_entry, read_entry, other_entry, red_entry]);
    (Tokens { admin, read_target, write_other, red_team }, path)
}

async fn client(server: &BerthServer, token: Option<&str>) -> WorkspaceServiceClient<AuthChannel> {
    WorkspaceServiceClient::new(with_token(server.channel().await, token))
}

async fn create(
    client: &mut WorkspaceServiceClient<AuthChannel>,
    id: &str,
    labels: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    let request = pb::CreateWorkspaceRequest {
        workspace_id: id.to_owned(),
        labels: labels.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
        ..Default::default()
    };
    let mut events = client.create_workspace(request).await?.into_inner();
    while let Some(event) = events.next().await {
        event?;
    }
    Ok(())
}

/// Which tokens a method accepts for TARGET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    /// Read access on TARGET.
    Read,
    /// Write access on TARGET.
    Write,
    /// Any valid token (the answer is filtered or host-wide).
    AnyToken,
}

/// One row of the table: the request sent (for TARGET), what it needs, and what an allowed
/// token gets (the probes are chosen to be harmless: most fail validation after the check).
struct Probe {
    message: Bytes,
    needs: Needs,
    allowed: Code,
}

fn probe(message: impl prost::Message, needs: Needs, allowed: Code) -> Probe {
    Probe { message: message.encode_to_vec().into(), needs, allowed }
}

fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn pid(pid: u32) -> Option<pb::ProcessSelector> {
    Some(pb::ProcessSelector { selector: Some(pb::process_selector::Selector::Pid(pid)) })
}

/// The table, keyed `Service/Method`.
fn probes() -> HashMap<&'static str, Probe> {
    use Needs::{AnyToken, Read, Write};
    let id = || TARGET.to_owned();
    HashMap::from([
        (
            "WorkspaceService/CreateWorkspace",
            probe(
                pb::CreateWorkspaceRequest {
                    workspace_id: id(),
                    labels: [("team".to_owned(), "red".to_owned())].into(),
                    // Below the kernel's minimum CFS quota: refused after the check, nothing made.
                    resources: Some(pb::Resources { cpu_millis: 5, ..Default::default() }),
                    ..Default::default()
                },
                Write,
                Code::InvalidArgument,
            ),
        ),
        ("WorkspaceService/GetWorkspace", probe(pb::GetWorkspaceRequest { workspace_id: id() }, Read, Code::Ok)),
        ("WorkspaceService/ListWorkspaces", probe(pb::ListWorkspacesRequest::default(), AnyToken, Code::Ok)),
        ("WorkspaceService/StartWorkspace", probe(pb::StartWorkspaceRequest { workspace_id: id() }, Write, Code::Ok)),
        (
            "WorkspaceService/StopWorkspace",
            probe(pb::StopWorkspaceRequest { workspace_id: id(), timeout: secs(301) }, Write, Code::InvalidArgument),
        ),
        // Deletes TARGET; the test creates it again after each allowed call.
        (
            "WorkspaceService/DeleteWorkspace",
            probe(pb::DeleteWorkspaceRequest { workspace_id: id(), preserve_data: false }, Write, Code::Ok),
        ),
        ("WorkspaceService/RestoreData", probe(pb::RestoreDataRequest { workspace_id: id() }, Write, Code::NotFound)),
        ("WorkspaceService/ResetData", probe(pb::ResetDataRequest { workspace_id: id() }, Write, Code::Ok)),
        (
            "WorkspaceService/UpdateWorkspace",
            probe(
                pb::UpdateWorkspaceRequest { workspace_id: id(), ..Default::default() },
                Write,
                Code::InvalidArgument,
            ),
        ),
        ("WorkspaceService/GetMetrics", probe(pb::GetMetricsRequest { workspace_id: id() }, Read, Code::Ok)),
        (
            "WorkspaceService/WatchMetrics",
            probe(pb::WatchMetricsRequest { workspace_id: id(), interval: secs(7200) }, Read, Code::InvalidArgument),
        ),
        (
            "WorkspaceService/CreateSnapshot",
            probe(
                pb::CreateSnapshotRequest { workspace_id: id(), name: "no/slash".to_owned(), ..Default::default() },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "WorkspaceService/ListSnapshots",
            probe(pb::ListSnapshotsRequest { workspace_id: id(), ..Default::default() }, Read, Code::Ok),
        ),
        (
            "WorkspaceService/DeleteSnapshot",
            probe(pb::DeleteSnapshotRequest { workspace_id: id(), name: "none".to_owned() }, Write, Code::NotFound),
        ),
        (
            "WorkspaceService/RestoreSnapshot",
            probe(pb::RestoreSnapshotRequest { workspace_id: id(), target: None }, Write, Code::InvalidArgument),
        ),
        (
            "WorkspaceService/ListVersions",
            probe(pb::ListVersionsRequest { workspace_id: id(), ..Default::default() }, Read, Code::Ok),
        ),
        (
            "WorkspaceService/ExportData",
            probe(
                pb::ExportDataRequest { workspace_id: id(), path: "relative".to_owned(), ..Default::default() },
                Read,
                Code::InvalidArgument,
            ),
        ),
        (
            "WorkspaceService/ImportData",
            probe(
                pb::ImportDataRequest {
                    event: Some(pb::import_data_request::Event::Header(pb::import_data_request::Header {
                        workspace_id: id(),
                        format: 99,
                        ..Default::default()
                    })),
                },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "WorkspaceService/ImportDataChunk",
            probe(
                pb::ImportDataChunkRequest { workspace_id: id(), format: 99, ..Default::default() },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "WorkspaceService/WatchEvents",
            probe(
                pb::WatchEventsRequest { workspace_id: id(), kinds: vec![99], ..Default::default() },
                Read,
                Code::InvalidArgument,
            ),
        ),
        ("WorkspaceService/ListDevices", probe(pb::ListDevicesRequest {}, AnyToken, Code::Ok)),
        (
            "FilesystemService/Stat",
            probe(pb::StatRequest { workspace_id: id(), path: "/".to_owned(), ..Default::default() }, Read, Code::Ok),
        ),
        (
            "FilesystemService/ListDir",
            probe(
                pb::ListDirRequest { workspace_id: id(), path: "/".to_owned(), depth: 1, ..Default::default() },
                Read,
                Code::Ok,
            ),
        ),
        (
            "FilesystemService/ReadFile",
            probe(
                pb::ReadFileRequest { workspace_id: id(), path: "/etc/hostname".to_owned(), ..Default::default() },
                Read,
                Code::Ok,
            ),
        ),
        (
            "FilesystemService/WriteFile",
            probe(
                pb::WriteFileRequest {
                    event: Some(pb::write_file_request::Event::Header(pb::write_file_request::Header {
                        workspace_id: id(),
                        path: "relative".to_owned(),
                        ..Default::default()
                    })),
                },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "FilesystemService/WriteFileChunk",
            probe(
                pb::WriteFileChunkRequest {
                    workspace_id: id(),
                    path: "relative".to_owned(),
                    last: true,
                    ..Default::default()
                },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "FilesystemService/MakeDir",
            probe(
                pb::MakeDirRequest { workspace_id: id(), path: "relative".to_owned(), ..Default::default() },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "FilesystemService/Remove",
            probe(
                pb::RemoveRequest { workspace_id: id(), path: "relative".to_owned(), ..Default::default() },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "FilesystemService/Move",
            probe(
                pb::MoveRequest {
                    workspace_id: id(),
                    source_path: "relative".to_owned(),
                    destination_path: "/x".to_owned(),
                    ..Default::default()
                },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "FilesystemService/WatchDir",
            probe(
                pb::WatchDirRequest { workspace_id: id(), path: "relative".to_owned(), ..Default::default() },
                Read,
                Code::InvalidArgument,
            ),
        ),
        (
            "ProcessService/Start",
            probe(pb::StartRequest { workspace_id: id(), ..Default::default() }, Write, Code::InvalidArgument),
        ),
        (
            "ProcessService/Connect",
            probe(
                pb::ConnectRequest { workspace_id: id(), process: pid(0), ..Default::default() },
                Read,
                Code::InvalidArgument,
            ),
        ),
        (
            "ProcessService/SendInput",
            probe(
                pb::SendInputRequest { workspace_id: id(), process: pid(0), input: None },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "ProcessService/StreamInput",
            probe(
                pb::StreamInputRequest {
                    event: Some(pb::stream_input_request::Event::Start(pb::stream_input_request::Start {
                        workspace_id: id(),
                        process: pid(0),
                    })),
                },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "ProcessService/CloseStdin",
            probe(pb::CloseStdinRequest { workspace_id: id(), process: pid(0) }, Write, Code::InvalidArgument),
        ),
        (
            "ProcessService/SendSignal",
            probe(
                pb::SendSignalRequest { workspace_id: id(), process: pid(0), signal: 0 },
                Write,
                Code::InvalidArgument,
            ),
        ),
        (
            "ProcessService/ResizePty",
            probe(
                pb::ResizePtyRequest { workspace_id: id(), process: pid(0), cols: 80, rows: 24 },
                Write,
                Code::InvalidArgument,
            ),
        ),
        ("ProcessService/List", probe(pb::ListRequest { workspace_id: id() }, Read, Code::Ok)),
    ])
}

/// Every method of berth's services with its shape, from the descriptor set the server serves
/// for reflection.
fn described_methods() -> Vec<(String, Shape)> {
    let set = prost_types::FileDescriptorSet::decode(berth_api::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut methods = Vec::new();
    for file in set.file.iter().filter(|file| file.package() == "berth.workspace.v1") {
        for service in &file.service {
            for method in &service.method {
                let shape =
                    Shape { client_streaming: method.client_streaming(), server_streaming: method.server_streaming() };
                methods.push((format!("{}/{}", service.name(), method.name()), shape));
            }
        }
    }
    methods
}

/// What a token should get from a probe.
fn expected(token: &str, probe: &Probe) -> (Code, Option<&'static str>) {
    let denied = (Code::PermissionDenied, Some("PERMISSION_DENIED"));
    let allowed = (probe.allowed, None);
    match (token, probe.needs) {
        ("none" | "wrong", _) => (Code::Unauthenticated, Some("UNAUTHENTICATED")),
        (_, Needs::AnyToken) => allowed,
        ("admin" | "red-team", _) => allowed,
        ("reader", Needs::Read) => allowed,
        ("reader", Needs::Write) => denied,
        ("other", _) => denied,
        _ => unreachable!("{token}"),
    }
}

#[tokio::test]
async fn every_method_answers_each_token_as_its_scope_says() {
    let testbed = Testbed::from_env();
    let dir = testbed.dir.join("e2e").join(testbed.unique_namespace());
    let (tokens, path) = table_tokens(&testbed, &dir);
    // No failure limit: the table makes dozens of unauthenticated calls from one address.
    let server = server_with_tokens(&testbed, &path, &["--auth-failure-limit".to_owned(), "0".to_owned()]);
    server.wait_serving(Duration::from_secs(30)).await;
    let mut admin = client(&server, Some(&tokens.admin)).await;
    create(&mut admin, TARGET, &[("team", "red")]).await.expect("admin creates the target");

    let probes = probes();
    let methods = described_methods();
    assert!(methods.len() >= 38, "{methods:?}");
    let missing: Vec<_> =
        methods.iter().filter(|(name, _)| !probes.contains_key(name.as_str())).map(|(name, _)| name).collect();
    assert!(missing.is_empty(), "methods without an entry in the table: {missing:?}");
    let (wrong, _) = create_token(&testbed, "never-added", &["--admin"]);
    let callers: [(&str, Option<&str>); 6] = [
        ("none", None),
        ("wrong", Some(&wrong)),
        ("reader", Some(&tokens.read_target)),
        ("other", Some(&tokens.write_other)),
        ("red-team", Some(&tokens.red_team)),
        ("admin", Some(&tokens.admin)),
    ];
    let channel = server.channel().await;
    let mut failures = Vec::new();
    for (method, shape) in &methods {
        let probe = &probes[method.as_str()];
        let path = format!("/berth.workspace.v1.{method}");
        for (name, token) in callers {
            let result = auth::call_raw(
                with_token(channel.clone(), token),
                &path,
                *shape,
                probe.message.clone(),
                Duration::from_secs(2),
            )
            .await;
            let (code, reason) = match &result {
                Ok(()) => (Code::Ok, None),
                Err(status) => (status.code(), error_reason(status)),
            };
            let (want_code, want_reason) = expected(name, probe);
            if code != want_code || (want_reason.is_some() && reason.as_deref() != want_reason) {
                failures.push(format!(
                    "{method} with {name}: {code:?} {reason:?} ({}), expected {want_code:?} {want_reason:?}",
                    result.err().map(|status| status.message().to_owned()).unwrap_or_default()
                ));
            }
            if method == "WorkspaceService/DeleteWorkspace" && code == Code::Ok {
                create(&mut admin, TARGET, &[("team", "red")]).await.expect("the target is created again");
            }
        }
    }
    assert!(failures.is_empty(), "{} answers differ from the table:\n{}", failures.len(), failures.join("\n"));

    // Health and reflection stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health.check(tonic_health::pb::HealthCheckRequest::default()).await.expect("health needs no token");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
        ..Default::default()
    };
    let mut answers =
        reflection.server_reflection_info(tokio_stream::once(request)).await.expect("reflection").into_inner();
    assert!(answers.next().await.expect("an answer").is_ok(), "reflection needs no token");
}

#[tokio::test]
async fn unknown_and_forbidden_workspaces_answer_alike_and_scopes_hold_on_create_and_update() {
    let testbed = Testbed::from_env();
    let dir = testbed.dir.join("e2e").join(testbed.unique_namespace());
    let (tokens, path) = table_tokens(&testbed, &dir);
    let server = server_with_tokens(&testbed, &path, &[]);
    server.wait_serving(Duration::from_secs(30)).await;
    let mut admin = client(&server, Some(&tokens.admin)).await;
    create(&mut admin, "auth-blue", &[("team", "blue")]).await.unwrap();

    // The same answer, message included (but the id), for a workspace that exists outside the
    // scope and for one that does not exist.
    for token in [&tokens.red_team, &tokens.write_other, &tokens.read_target] {
        let mut scoped = client(&server, Some(token)).await;
        let exists =
            scoped.get_workspace(pb::GetWorkspaceRequest { workspace_id: "auth-blue".to_owned() }).await.unwrap_err();
        let missing =
            scoped.get_workspace(pb::GetWorkspaceRequest { workspace_id: "auth-nope".to_owned() }).await.unwrap_err();
        assert_eq!((exists.code(), missing.code()), (Code::PermissionDenied, Code::PermissionDenied));
        assert_eq!(error_reason(&exists).as_deref(), Some("PERMISSION_DENIED"));
        assert_eq!(exists.message().replace("auth-blue", "ID"), missing.message().replace("auth-nope", "ID"));
        let stop = pb::StopWorkspaceRequest { workspace_id: "auth-blue".to_owned(), timeout: None };
        assert_eq!(scoped.stop_workspace(stop).await.unwrap_err().code(), Code::PermissionDenied);
    }
    // An id the token names answers NOT_FOUND: it reveals nothing the token did not know.
    let mut other = client(&server, Some(&tokens.write_other)).await;
    let missing =
        other.get_workspace(pb::GetWorkspaceRequest { workspace_id: "auth-other".to_owned() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A label-scoped token creates only workspaces carrying its labels, and keeps them there.
    let mut red = client(&server, Some(&tokens.red_team)).await;
    let refused = create(&mut red, "auth-red-2", &[("team", "blue")]).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(create(&mut red, "auth-red-2", &[]).await.unwrap_err().code(), Code::PermissionDenied);
    create(&mut red, "auth-red-2", &[("team", "red"), ("extra", "x")]).await.expect("its own labels");
    let taken = create(&mut red, "auth-blue", &[("team", "red")]).await.unwrap_err();
    assert_eq!(taken.code(), Code::PermissionDenied, "an id taken outside the scope: {taken:?}");
    let relabel = |labels: &[(&str, &str)]| pb::UpdateWorkspaceRequest {
        workspace_id: "auth-red-2".to_owned(),
        update_mask: Some(prost_types::FieldMask { paths: vec!["labels".to_owned()] }),
        labels: labels.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
        ..Default::default()
    };
    let escape = red.update_workspace(relabel(&[("team", "blue")])).await.unwrap_err();
    assert_eq!(escape.code(), Code::PermissionDenied, "{escape:?}");
    red.update_workspace(relabel(&[("team", "red")])).await.expect("labels that keep it in scope");
    // The egress policy is the operator's: only an admin token changes it.
    let open_policy = || pb::UpdateWorkspaceRequest {
        workspace_id: "auth-red-2".to_owned(),
        update_mask: Some(prost_types::FieldMask { paths: vec!["network_policy".to_owned()] }),
        network_policy: Some(pb::NetworkPolicy { mode: pb::NetworkMode::Open.into(), cidrs: vec![] }),
        ..Default::default()
    };
    let lifted = red.update_workspace(open_policy()).await.unwrap_err();
    assert_eq!(lifted.code(), Code::PermissionDenied, "{lifted:?}");
    assert!(lifted.message().contains("needs an admin token"), "{}", lifted.message());
    if let Err(status) = admin.update_workspace(open_policy()).await {
        assert_ne!(status.code(), Code::PermissionDenied, "an admin token may: {status:?}");
    }
    // An id-scoped write token creates the ids it names, nothing else; a read token nothing.
    assert_eq!(create(&mut other, "auth-elsewhere", &[]).await.unwrap_err().code(), Code::PermissionDenied);
    let mut reader = client(&server, Some(&tokens.read_target)).await;
    let read_only = create(&mut reader, TARGET, &[]).await.unwrap_err();
    assert_eq!(read_only.code(), Code::PermissionDenied);
    assert!(read_only.message().contains("may only read"), "{}", read_only.message());
    create(&mut other, "auth-other", &[]).await.expect("the id it names");
}

async fn listed(server: &BerthServer, token: &str, page_size: i32) -> Vec<String> {
    let mut client = client(server, Some(token)).await;
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListWorkspacesRequest { page_size, page_token, label_selector: String::new() };
        let page = client.list_workspaces(request).await.expect("ListWorkspaces").into_inner();
        if page_size > 0 {
            assert!(page.workspaces.len() <= page_size as usize);
        }
        if page_size > 0 && !page.next_page_token.is_empty() {
            assert_eq!(page.workspaces.len(), page_size as usize, "a page before the last is full");
        }
        ids.extend(page.workspaces.into_iter().map(|workspace| workspace.workspace_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

/// The workspace ids of the events a token's WatchEvents replays from the start (for 3 s).
async fn watched(server: &BerthServer, token: &str) -> BTreeSet<String> {
    let mut client = client(server, Some(token)).await;
    // after_event_id 0 is live only; replays begin after the given id.
    let request = pb::WatchEventsRequest { after_event_id: 1, heartbeat_interval: secs(1), ..Default::default() };
    let mut stream = client.watch_events(request).await.expect("WatchEvents").into_inner();
    let mut ids = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let event = item.expect("the stream answers").event.expect("an event");
        if !event.workspace_id.is_empty() {
            ids.insert(event.workspace_id);
        }
    }
    ids
}

#[tokio::test]
async fn list_workspaces_and_watch_events_show_only_what_the_token_may_read() {
    let testbed = Testbed::from_env();
    let dir = testbed.dir.join("e2e").join(testbed.unique_namespace());
    let (tokens, path) = table_tokens(&testbed, &dir);
    let server = server_with_tokens(&testbed, &path, &[]);
    server.wait_serving(Duration::from_secs(30)).await;
    let mut admin = client(&server, Some(&tokens.admin)).await;
    // Replays start after an event id, so the first event (auth-0's create) is never replayed;
    // the rest of auth-0 (its delete) is.
    create(&mut admin, "auth-0", &[]).await.unwrap();
    admin
        .delete_workspace(pb::DeleteWorkspaceRequest { workspace_id: "auth-0".to_owned(), preserve_data: false })
        .await
        .unwrap();
    // Ids sorted so that the red ones are spread over the pages.
    for (id, team) in [("auth-a", "red"), ("auth-b", "blue"), ("auth-c", "red"), ("auth-d", ""), ("auth-e", "red")] {
        let labels: Vec<(&str, &str)> = if team.is_empty() { vec![] } else { vec![("team", team)] };
        create(&mut admin, id, &labels).await.unwrap();
    }
    create(&mut admin, "auth-other", &[]).await.unwrap();
    // The first event of auth-e, then it is deleted: the red watcher saw it, so sees the delete.
    admin
        .delete_workspace(pb::DeleteWorkspaceRequest { workspace_id: "auth-e".to_owned(), preserve_data: false })
        .await
        .unwrap();

    for page_size in [0, 1, 2] {
        assert_eq!(listed(&server, &tokens.red_team, page_size).await, ["auth-a", "auth-c"], "page size {page_size}");
        assert_eq!(listed(&server, &tokens.read_target, page_size).await, ["auth-a"]);
        assert_eq!(listed(&server, &tokens.write_other, page_size).await, ["auth-other"]);
    }
    assert_eq!(listed(&server, &tokens.admin, 0).await, ["auth-a", "auth-b", "auth-c", "auth-d", "auth-other"]);

    let all: BTreeSet<String> =
        ["auth-0", "auth-a", "auth-b", "auth-c", "auth-d", "auth-e", "auth-other"].map(String::from).into();
    assert_eq!(watched(&server, &tokens.admin).await, all);
    // auth-e is gone: its events before the delete reach the red watcher only while it can
    // still read the workspace's labels, so replays of a deleted workspace show nothing to it.
    let red = watched(&server, &tokens.red_team).await;
    assert!(red == ["auth-a", "auth-c"].map(String::from).into(), "{red:?}");
    assert_eq!(watched(&server, &tokens.read_target).await, ["auth-a".to_owned()].into());
    assert_eq!(watched(&server, &tokens.write_other).await, ["auth-other".to_owned()].into());

    // Live: a red watcher sees a red workspace's delete (it saw it exist first), not others'.
    let mut red_client = client(&server, Some(&tokens.red_team)).await;
    let request = pb::WatchEventsRequest { heartbeat_interval: secs(1), ..Default::default() };
    let mut live = red_client.watch_events(request).await.unwrap().into_inner();
    admin
        .stop_workspace(pb::StopWorkspaceRequest { workspace_id: "auth-b".to_owned(), timeout: secs(0) })
        .await
        .unwrap();
    admin
        .stop_workspace(pb::StopWorkspaceRequest { workspace_id: "auth-c".to_owned(), timeout: secs(0) })
        .await
        .unwrap();
    admin
        .delete_workspace(pb::DeleteWorkspaceRequest { workspace_id: "auth-c".to_owned(), preserve_data: false })
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, live.next()).await {
        let event = item.unwrap().event.unwrap();
        if !event.workspace_id.is_empty() {
            seen.push((event.workspace_id.clone(), event.kind()));
        }
        if event.kind() == pb::WorkspaceEventKind::Deleted {
            break;
        }
    }
    assert!(seen.iter().all(|(id, _)| id == "auth-c"), "{seen:?}");
    assert!(seen.contains(&("auth-c".to_owned(), pb::WorkspaceEventKind::Deleted)), "the delete reaches it: {seen:?}");
}

#[tokio::test]
async fn the_tokens_file_reloads_without_a_restart_and_a_broken_one_keeps_the_old_tokens() {
    let testbed = Testbed::from_env();
    let dir = testbed.dir.join("e2e").join(testbed.unique_namespace());
    let (first, first_entry) = create_token(&testbed, "first", &["--admin"]);
    let path = tokens_file(&dir, std::slice::from_ref(&first_entry));
    let server = server_with_tokens(&testbed, &path, &[]);
    server.wait_serving(Duration::from_secs(30)).await;
    let list = |token: String| {
        let server = &server;
        async move {
            let mut client = client(server, Some(&token)).await;
            client.list_workspaces(pb::ListWorkspacesRequest::default()).await.map(drop).map_err(|status| status.code())
        }
    };
    assert_eq!(list(first.clone()).await, Ok(()));
    let (second, second_entry) = create_token(&testbed, "second", &["--admin"]);
    assert_eq!(list(second.clone()).await, Err(Code::Unauthenticated));

    // A changed file is picked up by itself (berth compares it once a second).
    std::fs::write(&path, format!("{first_entry}{second_entry}")).unwrap();
    assert!(
        berth_e2e::eventually(Duration::from_secs(10), || async { list(second.clone()).await.is_ok() }).await,
        "the new token"
    );
    // Revoked: the file without the first token.
    std::fs::write(&path, &second_entry).unwrap();
    assert!(
        berth_e2e::eventually(Duration::from_secs(10), || async {
            list(first.clone()).await == Err(Code::Unauthenticated)
        })
        .await
    );
    // A broken file keeps the tokens in force and says why in the log.
    std::fs::write(&path, "[[token]\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(list(second.clone()).await, Ok(()), "a broken file keeps the old tokens");
    assert!(server.log_text().contains("tokens file not reloaded"), "{}", server.log_text());

    // A change the comparison cannot see (same inode, size and modification time) waits for
    // SIGHUP, which reloads whatever the file holds.
    let (third, third_entry) = create_token(&testbed, "third", &["--admin"]);
    std::fs::write(&path, &third_entry).unwrap();
    assert!(berth_e2e::eventually(Duration::from_secs(10), || async { list(third.clone()).await.is_ok() }).await);
    let (fourth, fourth_entry) = create_token(&testbed, "forth", &["--admin"]);
    assert_eq!(fourth_entry.len(), third_entry.len());
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut &file, fourth_entry.as_bytes()).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(list(fourth.clone()).await, Err(Code::Unauthenticated), "not noticed without SIGHUP");
    server.signal("HUP");
    assert!(berth_e2e::eventually(Duration::from_secs(5), || async { list(fourth.clone()).await.is_ok() }).await);
    assert_eq!(list(third).await, Err(Code::Unauthenticated));
    assert_eq!(list(second).await, Err(Code::Unauthenticated));
    assert!(server.log_text().contains("SIGHUP"), "{}", server.log_text());
}

#[tokio::test]
async fn tls_from_a_test_ca_serves_grpc_and_grpc_web_and_reloads_its_certificate() {
    let testbed = Testbed::from_env();
    let dir = testbed.dir.join("e2e").join(testbed.unique_namespace());
    let first_ca = TestCa::new(&dir, "first");
    let (admin, entry) = create_token(&testbed, "admin", &["--admin"]);
    let path = tokens_file(&dir, &[entry]);
    let server = server_with_tokens(&testbed, &path, &first_ca.server_args());

    // gRPC over TLS with the token.
    let channel = auth::tls_channel(server.addr, &first_ca.ca_pem).await.expect("a TLS channel");
    let mut tls_client = WorkspaceServiceClient::new(with_token(channel.clone(), Some(&admin)));
    tls_client.list_workspaces(pb::ListWorkspacesRequest::default()).await.expect("ListWorkspaces over TLS");
    let mut anonymous = WorkspaceServiceClient::new(with_token(channel, None));
    let refused = anonymous.list_workspaces(pb::ListWorkspacesRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Plaintext gets nowhere on a TLS port.
    let plain = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await;
    if let Ok(plain) = plain {
        let mut plain = WorkspaceServiceClient::new(with_token(plain, Some(&admin)));
        assert!(plain.list_workspaces(pb::ListWorkspacesRequest::default()).await.is_err(), "h2c on the TLS port");
    }

    // grpc-web over HTTP/1.1 and TLS: the token travels as a header.
    let path_list = "/berth.workspace.v1.WorkspaceService/ListWorkspaces";
    let message = pb::ListWorkspacesRequest::default().encode_to_vec();
    let (status, text) =
        auth::grpc_web_over_tls(server.addr, &first_ca.ca_pem, path_list, &message, Some(&admin)).await;
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert_eq!(status, Some(0), "{text}");
    let (status, text) = auth::grpc_web_over_tls(server.addr, &first_ca.ca_pem, path_list, &message, None).await;
    assert_eq!(status, Some(16), "UNAUTHENTICATED over grpc-web: {text}");

    // A new certificate from another CA, then SIGHUP: new connections get it.
    let second_ca = TestCa::new(&dir, "second");
    std::fs::copy(&second_ca.cert_pem, &first_ca.cert_pem).unwrap();
    std::fs::copy(&second_ca.key_pem, &first_ca.key_pem).unwrap();
    server.signal("HUP");
    let reloaded = berth_e2e::eventually(Duration::from_secs(10), || async {
        auth::tls_channel(server.addr, &second_ca.ca_pem).await.is_ok()
    })
    .await;
    assert!(reloaded, "the reloaded certificate is served; log:\n{}", server.log_text());
    assert!(auth::tls_channel(server.addr, &second_ca.ca_pem.with_file_name("first-ca.pem")).await.is_err());
}

#[tokio::test]
async fn failed_calls_from_one_address_are_limited_and_health_stays_open() {
    let testbed = Testbed::from_env();
    let dir = testbed.dir.join("e2e").join(testbed.unique_namespace());
    let (admin, entry) = create_token(&testbed, "admin", &["--admin"]);
    let path = tokens_file(&dir, &[entry]);
    let server = server_with_tokens(&testbed, &path, &["--auth-failure-limit".to_owned(), "3".to_owned()]);
    let mut anonymous = client(&server, None).await;
    for _ in 0..3 {
        let status = anonymous.list_workspaces(pb::ListWorkspacesRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let mut valid = client(&server, Some(&admin)).await;
    let limited = valid.list_workspaces(pb::ListWorkspacesRequest::default()).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert_eq!(error_reason(&limited).as_deref(), Some("RESOURCE_LIMIT_EXCEEDED"));
    assert!(limited.message().contains("retry in"), "{}", limited.message());
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health.check(tonic_health::pb::HealthCheckRequest::default()).await.expect("health is not limited");
    let log = server.log_text();
    assert!(log.contains("reached the failure limit"), "{log}");
    assert!(!log.contains(&admin), "the token never reaches the log");
}

#[test]
fn berth_refuses_to_serve_the_network_without_tokens_or_tls() {
    let testbed = Testbed::from_env();
    let state = testbed.dir.join("e2e").join(testbed.unique_namespace());
    let state = state.to_str().unwrap();
    for args in [
        vec!["serve", "--listen", "0.0.0.0:50999", "--state-dir", state],
        vec!["serve", "--listen", "0.0.0.0:50999", "--auth", "none", "--state-dir", state],
        vec!["serve", "--listen", "[::]:50999", "--auth", "none", "--state-dir", state],
    ] {
        let (status, stderr, _) = run_berth_to_exit(&testbed, &args, Duration::from_secs(15));
        assert!(!status.success(), "{args:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("without authentication"), "{args:?}: {stderr}");
    }
    let (status, stderr, _) = run_berth_to_exit(
        &testbed,
        &["serve", "--listen", "0.0.0.0:50999", "--tokens-file", "/nonexistent/tokens.toml", "--state-dir", state],
        Duration::from_secs(15),
    );
    assert!(!status.success());
    assert!(stderr.contains("without TLS") && stderr.contains("--insecure-listen"), "{stderr}");
    let (status, stderr, _) =
        run_berth_to_exit(&testbed, &["serve", "--auth", "jwt", "--state-dir", state], Duration::from_secs(15));
    assert!(!status.success() && stderr.contains("not supported yet"), "{stderr}");
    let (status, stderr, _) = run_berth_to_exit(
        &testbed,
        &["serve", "--tokens-file", "/nonexistent/tokens.toml", "--state-dir", state],
        Duration::from_secs(15),
    );
    assert!(!status.success() && stderr.contains("cannot read tokens file"), "{stderr}");
}
