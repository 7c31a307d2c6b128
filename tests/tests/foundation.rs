//! The foundation against the real testbed: health, reflection, grpc-web + CORS, error details,
//! start-up failures and shutdown.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{GetWorkspaceRequest, ListWorkspacesRequest};
use berth_e2e::{BerthServer, Testbed, error_reason, free_port, run_berth_to_exit};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckRequest as WatchRequest};

const SERVICES: [&str; 3] = [
    "berth.workspace.v1.WorkspaceService",
    "berth.workspace.v1.FilesystemService",
    "berth.workspace.v1.ProcessService",
];

#[tokio::test]
async fn health_is_serving_for_every_service() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut health = HealthClient::new(server.channel().await);
    // Right after start every service is registered (NOT_SERVING until the boot reconcile is
    // done), then SERVING.
    for service in std::iter::once("").chain(SERVICES) {
        let response = health.check(HealthCheckRequest { service: service.to_owned() }).await;
        assert!(response.is_ok(), "health knows {service:?} from the start: {response:?}");
    }
    server.wait_serving(Duration::from_secs(10)).await;
    for service in std::iter::once("").chain(SERVICES) {
        let response = health
            .check(HealthCheckRequest { service: service.to_owned() })
            .await
            .unwrap_or_else(|status| panic!("health check of {service:?}: {status}"));
        assert_eq!(response.into_inner().status(), ServingStatus::Serving, "service {service:?}");
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_three_services() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);

    use tonic_reflection::pb::v1 as r1;
    let mut v1 = r1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = v1.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1 reflection did not answer with a service list");
    };
    let names: BTreeSet<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in SERVICES {
        assert!(names.contains(service), "v1 reflection lacks {service}: {names:?}");
    }

    use tonic_reflection::pb::v1alpha as ra;
    let mut alpha = ra::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = ra::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(ra::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = alpha.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(ra::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha reflection did not answer with a service list");
    };
    let names: BTreeSet<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in SERVICES {
        assert!(names.contains(service), "v1alpha reflection lacks {service}: {names:?}");
    }

    // The descriptors are complete: a client can resolve a request message by symbol.
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "berth.workspace.v1.CreateWorkspaceRequest".to_owned(),
        )),
    };
    let mut responses = v1.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(r1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1 reflection did not return the file of CreateWorkspaceRequest");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn unknown_and_invalid_workspace_ids_have_precise_statuses() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);

    let status =
        client.get_workspace(GetWorkspaceRequest { workspace_id: "no-such-bot".to_owned() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some("WORKSPACE_NOT_FOUND"));
    assert!(status.message().contains("no-such-bot"), "{}", status.message());

    for bad in ["Bad_ID", "-leading", "has/slash", ""] {
        let status = client.get_workspace(GetWorkspaceRequest { workspace_id: bad.to_owned() }).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
        assert_eq!(error_reason(&status).as_deref(), Some("INVALID_WORKSPACE_ID"), "{bad:?}");
    }

    let listed = client.list_workspaces(ListWorkspacesRequest::default()).await.unwrap().into_inner();
    assert!(listed.workspaces.is_empty());
    assert!(listed.next_page_token.is_empty());

    let status = client
        .list_workspaces(ListWorkspacesRequest { page_token: "garbage".to_owned(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_reason(&status).as_deref(), Some("INVALID_ARGUMENT"));
}

/// Sends one HTTP/1.1 request and returns the raw response bytes (the server closes).
async fn http1(addr: SocketAddr, head: &str, body: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                // A server closing after `Connection: close` may reset instead of FIN once the
                // response is out; what arrived before is the whole response.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset && !response.is_empty() => return Ok(()),
                Err(err) => return Err(err),
            }
        }
    })
    .await
    .expect("http/1.1 response within 10 s");
    read.expect("read the http/1.1 response");
    response
}

fn header_block(response: &[u8]) -> String {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    String::from_utf8_lossy(&response[..end]).to_ascii_lowercase()
}

/// The response headers of a browser's CORS preflight for a grpc-web call from `origin`.
async fn preflight(addr: SocketAddr, origin: &str) -> String {
    let path = "/berth.workspace.v1.WorkspaceService/DeleteWorkspace";
    let response = http1(
        addr,
        &format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent\r\nConnection: close\r\n\r\n"
        ),
        b"",
    )
    .await;
    header_block(&response)
}

/// The value of the preflight's `access-control-allow-origin`, if it has one.
fn allowed_origin(headers: &str) -> Option<&str> {
    headers.lines().find_map(|line| line.strip_prefix("access-control-allow-origin:")).map(str::trim)
}

/// A child process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server_allowing(testbed: &Testbed, origins: &[&str]) -> BerthServer {
    let extra_args = origins.iter().flat_map(|origin| ["--cors-origin".to_owned(), (*origin).to_owned()]).collect();
    BerthServer::start_with(testbed, berth_e2e::ServerOptions { extra_args, ..Default::default() })
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let testbed = Testbed::from_env();

    // By default no web page may call: the preflight carries no allow-origin, so the browser
    // never sends the DeleteWorkspace.
    let closed = BerthServer::start(&testbed);
    let headers = preflight(closed.addr, "http://page.example").await;
    assert_eq!(allowed_origin(&headers), None, "{headers}");

    let server = server_allowing(&testbed, &["http://page.example", "http://127.0.0.1:8080"]);
    for unlisted in ["http://evil.example", "http://page.example:8080", "https://page.example", "null"] {
        let headers = preflight(server.addr, unlisted).await;
        assert_eq!(allowed_origin(&headers), None, "{unlisted} must be refused: {headers}");
    }
    for listed in ["http://page.example", "http://127.0.0.1:8080"] {
        let headers = preflight(server.addr, listed).await;
        assert!(headers.starts_with("http/1.1 200"), "{headers}");
        assert_eq!(allowed_origin(&headers), Some(listed), "{headers}");
    }

    // BERTH_CORS_ORIGIN takes a comma-separated list.
    let state = testbed.dir.join("e2e").join(testbed.unique_namespace());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let from_env = std::process::Command::new(&testbed.berth_bin)
        .args(["serve", "--network", "none", "--listen", &addr.to_string(), "--namespace", &testbed.unique_namespace()])
        .arg("--containerd-socket")
        .arg(&testbed.containerd_socket)
        .arg("--state-dir")
        .arg(&state)
        .env("BERTH_CORS_ORIGIN", "http://one.example,http://two.example")
        .env_remove("BERTH_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut from_env = KillOnDrop(from_env);
    let listening =
        berth_e2e::eventually(Duration::from_secs(20), || async { std::net::TcpStream::connect(addr).is_ok() }).await;
    assert!(listening, "berth with BERTH_CORS_ORIGIN did not listen");
    for origin in ["http://one.example", "http://two.example"] {
        let headers = preflight(addr, origin).await;
        assert_eq!(allowed_origin(&headers), Some(origin), "{headers}");
    }
    from_env.0.kill().unwrap();
    from_env.0.wait().unwrap();

    // A malformed origin stops berth at start with one line saying why.
    let (status, stderr, _) = run_berth_to_exit(
        &testbed,
        &["serve", "--cors-origin", "http://page.example/", "--state-dir", state.to_str().unwrap()],
        Duration::from_secs(15),
    );
    assert!(!status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cors origin") && stderr.contains("no path"), "{stderr}");
}

#[tokio::test]
async fn grpc_web_over_http1_works_and_cors_exposes_grpc_headers() {
    let testbed = Testbed::from_env();
    let server = server_allowing(&testbed, &["http://page.example"]);
    let path = "/berth.workspace.v1.WorkspaceService/GetWorkspace";

    let headers = preflight(server.addr, "http://page.example").await;
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert_eq!(allowed_origin(&headers), Some("http://page.example"), "{headers}");
    assert!(headers.contains("x-grpc-web"), "preflight must allow x-grpc-web: {headers}");

    let message = GetWorkspaceRequest { workspace_id: "web-missing".to_owned() }.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let response = http1(
        server.addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nOrigin: http://page.example\r\n\
             Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            server.addr,
            body.len()
        ),
        &body,
    )
    .await;
    let headers = header_block(&response);
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(headers.contains("content-type: application/grpc-web"), "{headers}");
    let exposed = headers
        .lines()
        .find(|line| line.starts_with("access-control-expose-headers:"))
        .unwrap_or_else(|| panic!("no access-control-expose-headers: {headers}"));
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    // NOT_FOUND arrives as grpc-status 5, either as a header (trailers-only) or in the
    // grpc-web trailer frame of the body.
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.contains("grpc-status: 5") || text.contains("grpc-status:5"), "{text}");
    assert!(text.contains("grpc-status-details-bin"), "ErrorInfo travels over grpc-web: {text}");
}

#[test]
fn start_against_a_missing_socket_exits_with_one_line_within_10s() {
    let testbed = Testbed::from_env();
    let state = testbed.dir.join("e2e").join(testbed.unique_namespace());
    let socket = state.join("no-such-containerd.sock");
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, stderr, elapsed) = run_berth_to_exit(
        &testbed,
        &[
            "serve",
            "--listen",
            &listen,
            "--containerd-socket",
            socket.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        Duration::from_secs(15),
    );
    assert!(!status.success());
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let lines: Vec<_> = stderr.lines().filter(|line| line.starts_with("berth:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {stderr}");
    assert!(lines[0].contains(socket.to_str().unwrap()), "names the socket: {}", lines[0]);
    assert!(lines[0].contains("--containerd-socket"), "says how to fix it: {}", lines[0]);
}

#[test]
fn port_in_use_and_malformed_config_give_one_line() {
    let testbed = Testbed::from_env();
    let state = testbed.dir.join("e2e").join(testbed.unique_namespace());
    std::fs::create_dir_all(&state).unwrap();
    let socket = testbed.containerd_socket.to_str().unwrap().to_owned();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let (status, stderr, _) = run_berth_to_exit(
        &testbed,
        &["serve", "--listen", &listen, "--containerd-socket", &socket, "--state-dir", state.to_str().unwrap()],
        Duration::from_secs(15),
    );
    assert!(!status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&listen) && stderr.contains("in use"), "{stderr}");

    let config = state.join("berth.toml");
    std::fs::write(&config, "namespace = \"ok\"\nlisten = 50051\n").unwrap();
    let (status, stderr, _) = run_berth_to_exit(
        &testbed,
        &["serve", "--config", config.to_str().unwrap(), "--state-dir", state.to_str().unwrap()],
        Duration::from_secs(15),
    );
    assert!(!status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("line 2") && stderr.contains(config.to_str().unwrap()), "{stderr}");
}

#[tokio::test]
async fn sigterm_ends_open_streams_with_unavailable_and_exits_zero() {
    let testbed = Testbed::from_env();
    let mut server = BerthServer::start(&testbed);
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health.watch(WatchRequest { service: String::new() }).await.unwrap().into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    server.signal("TERM");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(update)) => assert_ne!(update.status(), ServingStatus::Serving, "no SERVING after SIGTERM"),
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the watch stream ends within 10 s of SIGTERM");
    let status = ended.expect("the stream ends with a status, not silently");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let exit = tokio::task::spawn_blocking(move || {
        let exit = server.wait_exit(Duration::from_secs(15));
        (exit, server.log_text())
    })
    .await
    .unwrap();
    assert!(exit.0.success(), "exit {:?}; log:\n{}", exit.0, exit.1);
    assert!(exit.1.contains("berth stopped"), "{}", exit.1);
}

#[tokio::test]
async fn request_logs_carry_method_workspace_id_and_status() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let _ = client.get_workspace(GetWorkspaceRequest { workspace_id: "logged-bot".to_owned() }).await;
    let found = berth_e2e::eventually(Duration::from_secs(5), || async {
        server.log_text().lines().any(|line| {
            line.contains("rpc finished")
                && line.contains("GetWorkspace")
                && line.contains("logged-bot")
                && line.contains("NotFound")
                && line.contains("duration_ms")
        })
    })
    .await;
    assert!(found, "no request log line; log:\n{}", server.log_text());
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_rpc_span() {
    let testbed = Testbed::from_env();
    let options = berth_e2e::ServerOptions {
        extra_args: vec!["--log-format".to_owned(), "json".to_owned()],
        ..Default::default()
    };
    let server = BerthServer::start_with(&testbed, options);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let _ = client.get_workspace(GetWorkspaceRequest { workspace_id: "json-bot".to_owned() }).await;
    let found = berth_e2e::eventually(Duration::from_secs(5), || async {
        server.log_text().lines().any(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("every log line is JSON");
            value["fields"]["message"] == "rpc finished"
                && value["span"]["workspace_id"] == "json-bot"
                && value["span"]["method"].as_str().is_some_and(|m| m.ends_with("/GetWorkspace"))
                && value["fields"]["grpc_code"] == 5
        })
    })
    .await;
    assert!(found, "no JSON rpc line; log:\n{}", server.log_text());
}

/// The `duration_ms` of the JSON "rpc finished" line of `method` for `workspace_id`.
fn logged_duration_ms(log: &str, method: &str, workspace_id: &str) -> Option<f64> {
    log.lines().find_map(|line| {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let matches = value["fields"]["message"] == "rpc finished"
            && value["span"]["workspace_id"] == workspace_id
            && value["span"]["method"].as_str().is_some_and(|m| m.ends_with(method));
        if matches { value["fields"]["duration_ms"].as_f64() } else { None }
    })
}

#[tokio::test]
async fn a_slow_unary_call_logs_its_whole_latency() {
    use berth_api::v1::{CreateWorkspaceRequest, DeleteWorkspaceRequest, StopWorkspaceRequest};
    let testbed = Testbed::from_env();
    let options = berth_e2e::ServerOptions {
        extra_args: vec!["--log-format".to_owned(), "json".to_owned()],
        ..Default::default()
    };
    let server = BerthServer::start_with(&testbed, options);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let request = CreateWorkspaceRequest {
        workspace_id: "slow-stop".to_owned(),
        image: testbed.image("BUSYBOX"),
        ..Default::default()
    };
    let mut events = client.create_workspace(request).await.unwrap().into_inner();
    while let Some(event) = events.next().await {
        event.unwrap();
    }
    // A process that ignores SIGTERM makes the stop wait for its whole timeout, then SIGKILL.
    let script = "trap '' TERM; while true; do sleep 0.1; done";
    testbed.ctr(
        &server.namespace,
        &["task", "exec", "--detach", "--exec-id", "stubborn", "slow-stop", "sh", "-c", script],
    );

    let started = std::time::Instant::now();
    let stop = StopWorkspaceRequest {
        workspace_id: "slow-stop".to_owned(),
        timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
    };
    client.stop_workspace(stop).await.unwrap();
    let client_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(client_ms >= 1000.0, "the stop waited for its timeout: {client_ms} ms");

    let mut logged = None;
    for _ in 0..50 {
        logged = logged_duration_ms(&server.log_text(), "/StopWorkspace", "slow-stop");
        if logged.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged = logged.unwrap_or_else(|| panic!("no StopWorkspace log line; log:\n{}", server.log_text()));
    // The server's clock starts after the request arrived and stops before the client sees the
    // trailers, so it may be a little shorter than what the client measured, never much.
    assert!(logged >= client_ms - 50.0, "logged {logged} ms for a call the client measured at {client_ms} ms");
    assert!(logged <= client_ms + 1.0, "logged {logged} ms, more than the client's {client_ms} ms");

    client
        .delete_workspace(DeleteWorkspaceRequest { workspace_id: "slow-stop".to_owned(), preserve_data: false })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stream_the_client_abandons_is_logged_as_cancelled() {
    let testbed = Testbed::from_env();
    let options = berth_e2e::ServerOptions {
        extra_args: vec!["--log-format".to_owned(), "json".to_owned()],
        ..Default::default()
    };
    let server = BerthServer::start_with(&testbed, options);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health.watch(WatchRequest { service: String::new() }).await.unwrap().into_inner();
    watch.next().await.unwrap().unwrap();
    drop(watch);
    let found = berth_e2e::eventually(Duration::from_secs(5), || async {
        server.log_text().lines().any(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("every log line is JSON");
            value["fields"]["message"] == "rpc finished"
                && value["span"]["method"] == "/grpc.health.v1.Health/Watch"
                && value["fields"]["grpc_code"] == 1
                && value["fields"]["grpc_status"] == "Cancelled"
        })
    })
    .await;
    assert!(found, "no CANCELLED line for the abandoned watch; log:\n{}", server.log_text());
}

#[tokio::test]
async fn the_state_dir_and_the_database_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let testbed = Testbed::from_env();
    // The harness made the state dir 0755, as an older berth would have: berth tightens it.
    let server = BerthServer::start(&testbed);
    let mut health = HealthClient::new(server.channel().await);
    health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    let mode = |path: std::path::PathBuf| {
        let meta = std::fs::metadata(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        meta.permissions().mode() & 0o7777
    };
    assert_eq!(mode(server.state_dir.clone()), 0o700);
    for dir in ["preserved", "mnt", "workspaces"] {
        assert_eq!(mode(server.state_dir.join(dir)), 0o700, "{dir}");
    }
    for file in ["berth.db", "berth.db-wal", "berth.db-shm"] {
        assert_eq!(mode(server.state_dir.join(file)), 0o600, "{file}");
    }
}
