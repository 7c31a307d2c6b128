//! The `auth` section: what token checks add to a unary call. GetWorkspace of a running
//! workspace against the bench's server (`--auth none`) and against a second server with a
//! tokens file, called with an admin token, a token scoped by id and a token scoped by label
//! (which reads the workspace's labels from the store on each call), calls interleaved round
//! by round (each round starting with another one) so drift hits all alike (target: ≤ 5 % over
//! `--auth none`). The same for a GetWorkspace of an id that does not exist (one store read, no
//! containerd call: the auth check is a larger part of it; informational). A third server adds
//! TLS (informational: the handshake is once per connection, the record layer per call).

use std::time::{Duration, Instant};

use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{GetWorkspaceRequest, PullPolicy};
use berth_e2e::auth::{AuthChannel, TestCa, create_token, tls_channel, with_token};
use berth_e2e::{BerthServer, ServerOptions, Testbed};

use super::{Client, delete, ms, percentile};

const CALLS: usize = 2000;
const WORKSPACE: &str = "bench-auth";
/// An id no server has, which the id-scoped token lists (so it answers NOT_FOUND, as admin).
const MISSING: &str = "bench-auth-missing";

fn tokens_server(testbed: &Testbed, tokens: &std::path::Path, tls: Option<&TestCa>) -> BerthServer {
    let mut extra_args = vec!["--tokens-file".to_owned(), tokens.display().to_string()];
    if let Some(ca) = tls {
        extra_args.extend(ca.server_args());
    }
    BerthServer::start_with(testbed, ServerOptions { extra_args, ..Default::default() })
}

async fn get(client: &mut WorkspaceServiceClient<AuthChannel>) -> Duration {
    let started = Instant::now();
    client.get_workspace(GetWorkspaceRequest { workspace_id: WORKSPACE.to_owned() }).await.expect("GetWorkspace");
    started.elapsed()
}

async fn get_missing(client: &mut WorkspaceServiceClient<AuthChannel>) -> Duration {
    let started = Instant::now();
    let status = client.get_workspace(GetWorkspaceRequest { workspace_id: MISSING.to_owned() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    started.elapsed()
}

/// p50 and p99 rows of `samples` (the first is the baseline the others are compared with).
fn report(title: &str, rows: &mut [(&str, Vec<Duration>, &str)]) {
    let baseline = percentile(&mut rows[0].1, 0.5);
    for (index, (name, samples, target)) in rows.iter_mut().enumerate() {
        let p50 = percentile(samples, 0.5);
        let name = if index == 0 { format!("{title}, {name}") } else { format!("  {name}") };
        let ratio = if index == 0 {
            "(the baseline)".to_owned()
        } else {
            format!("ratio {:.3}x   (target {target})", p50.as_secs_f64() / baseline.as_secs_f64())
        };
        println!(
            "{name:<40} berth {:>8.3} ms p50   p99 {:.3} ms over {} calls   {ratio}",
            ms(p50),
            ms(percentile(samples, 0.99)),
            samples.len()
        );
    }
}

pub async fn bench_auth(testbed: &Testbed, server: &BerthServer, client: &mut Client, image: &str) {
    let dir = server.state_dir.join("bench-auth");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let (admin, admin_entry) = create_token(testbed, "bench-admin", &["--admin"]);
    let (by_id, id_entry) =
        create_token(testbed, "bench-id", &["--read", "--workspace", WORKSPACE, "--workspace", MISSING]);
    let (by_label, label_entry) = create_token(testbed, "bench-label", &["--read", "--label", "bench=auth"]);
    let tokens = dir.join("tokens.toml");
    std::fs::write(&tokens, [admin_entry, id_entry, label_entry].concat()).expect("write the tokens file");
    let ca = TestCa::new(&dir, "bench");
    let checked = tokens_server(testbed, &tokens, None);
    let tls = tokens_server(testbed, &tokens, Some(&ca));

    // The same workspace (busybox, label bench=auth) on each server.
    let mut open = WorkspaceServiceClient::new(with_token(server.channel().await, None));
    let mut admin_client = WorkspaceServiceClient::new(with_token(checked.channel().await, Some(&admin)));
    let tls_channel = tls_channel(tls.addr, &ca.ca_pem).await.expect("TLS channel");
    let mut tls_admin = WorkspaceServiceClient::new(with_token(tls_channel, Some(&admin)));
    for target in [&mut open, &mut admin_client, &mut tls_admin] {
        let request = berth_api::v1::CreateWorkspaceRequest {
            workspace_id: WORKSPACE.to_owned(),
            image: image.to_owned(),
            labels: [("bench".to_owned(), "auth".to_owned())].into(),
            pull_policy: PullPolicy::IfNotPresent.into(),
            ..Default::default()
        };
        let mut events = target.create_workspace(request).await.expect("create").into_inner();
        while let Some(event) = tokio_stream::StreamExt::next(&mut events).await {
            event.expect("create event");
        }
    }
    let id_client = WorkspaceServiceClient::new(with_token(checked.channel().await, Some(&by_id)));
    let label_client = WorkspaceServiceClient::new(with_token(checked.channel().await, Some(&by_label)));

    // none, admin, by id, by label, TLS.
    let mut clients = [open, admin_client, id_client, label_client, tls_admin];
    let mut existing: [Vec<Duration>; 5] = Default::default();
    let mut missing: [Vec<Duration>; 3] = Default::default();
    for round in 0..CALLS + 100 {
        // Each round starts with another client, so none always goes first.
        let mut times = [Duration::ZERO; 5];
        for step in 0..5 {
            let which = (round + step) % 5;
            times[which] = get(&mut clients[which]).await;
        }
        let mut times_missing = [Duration::ZERO; 3];
        for step in 0..3 {
            let which = (round + step) % 3;
            times_missing[which] = get_missing(&mut clients[which]).await;
        }
        // The first calls warm connections and caches.
        if round >= 100 {
            for (sample, time) in existing.iter_mut().zip(times) {
                sample.push(time);
            }
            for (sample, time) in missing.iter_mut().zip(times_missing) {
                sample.push(time);
            }
        }
    }
    let [none, admin_times, id_times, label_times, tls_times] = existing;
    report(
        "GetWorkspace",
        &mut [
            ("--auth none", none, ""),
            ("tokens, admin token", admin_times, "<= 1.05x"),
            ("tokens, token scoped by id", id_times, "<= 1.05x"),
            ("tokens, token scoped by label", label_times, "<= 1.05x"),
            ("tokens + TLS, admin token", tls_times, "informational"),
        ],
    );
    let [none, admin_times, id_times] = missing;
    report(
        "GetWorkspace, unknown id",
        &mut [
            ("--auth none", none, ""),
            ("tokens, admin token", admin_times, "informational"),
            ("tokens, token scoped by id", id_times, "informational"),
        ],
    );

    delete(client, WORKSPACE).await;
    let delete_request =
        || berth_api::v1::DeleteWorkspaceRequest { workspace_id: WORKSPACE.to_owned(), preserve_data: false };
    let [_, admin_client, _, _, tls_admin] = &mut clients;
    admin_client.delete_workspace(delete_request()).await.expect("delete");
    tls_admin.delete_workspace(delete_request()).await.expect("delete");
    for server in [checked, tls] {
        let namespace = server.namespace.clone();
        drop(server);
        super::purge_namespaces(testbed, &[&namespace]);
    }
}
