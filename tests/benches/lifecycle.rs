//! `make bench`: berth's lifecycle against ctr on the same containerd, in one run. Prints the
//! median of each measurement over ROUNDS rounds and the ratio berth / ctr.
//!
//! - create → ready of an already pulled small image vs `ctr run -d` of the same image;
//! - create of the multi-layer image with nothing in the content store (pull + unpack + create
//!   + start) vs `ctr images pull --plain-http` alone (pull + unpack);
//! - stop of an idle workspace (target ≤ 100 ms).

use std::time::{Duration, Instant};

use berth_api::v1::create_workspace_response::Event;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{CreateWorkspaceRequest, DeleteWorkspaceRequest, LayerState, PullPolicy, StopWorkspaceRequest};
use berth_e2e::{BerthServer, Testbed};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

const ROUNDS: usize = 10;

type Client = WorkspaceServiceClient<Channel>;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn report(name: &str, berth: Duration, baseline: Option<(&str, Duration)>, target: &str) {
    match baseline {
        Some((what, baseline)) => println!(
            "{name:<34} berth {:>8.1} ms   {what} {:>8.1} ms   ratio {:.2}x   (target {target})",
            ms(berth),
            ms(baseline),
            berth.as_secs_f64() / baseline.as_secs_f64()
        ),
        None => println!("{name:<34} berth {:>8.1} ms   (target {target})", ms(berth)),
    }
}

/// Runs a create to ready; returns its duration and the bytes it downloaded.
async fn create(client: &mut Client, id: &str, image: &str, policy: PullPolicy) -> (Duration, u64) {
    let started = Instant::now();
    let request = CreateWorkspaceRequest {
        workspace_id: id.to_owned(),
        image: image.to_owned(),
        pull_policy: policy.into(),
        ..Default::default()
    };
    let mut stream = client.create_workspace(request).await.expect("create").into_inner();
    let mut downloaded = 0;
    while let Some(event) = stream.next().await {
        if let Some(Event::PullProgress(progress)) = event.expect("create event").event {
            downloaded = progress.layers.iter().filter(|l| l.state() == LayerState::Done).map(|l| l.offset).sum();
        }
    }
    (started.elapsed(), downloaded)
}

async fn delete(client: &mut Client, id: &str) {
    client
        .delete_workspace(DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data: false })
        .await
        .expect("delete");
}

fn timed_ctr(testbed: &Testbed, namespace: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    testbed.ctr(namespace, args);
    started.elapsed()
}

/// Removes an image and collects its content and snapshots, so the next pull starts cold.
fn forget_image(testbed: &Testbed, namespace: &str, image: &str) {
    let _ = testbed.ctr_output(namespace, &["images", "rm", "--sync", image]);
}

#[tokio::main]
async fn main() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let busybox = testbed.image("BUSYBOX");
    let multilayer = testbed.image("MULTILAYER");
    let ctr_namespace = format!("{}-ctr", server.namespace);
    // Other namespaces would keep image content alive and make the "cold" pulls warm.
    let namespaces = testbed.ctr(&server.namespace, &["namespaces", "ls", "-q"]);
    let others: Vec<&str> =
        namespaces.lines().filter(|ns| ns.starts_with("berth-test-") && *ns != server.namespace).collect();
    if !others.is_empty() {
        let status = std::process::Command::new(testbed.repo_root().join("tests/testbed/containerd.sh"))
            .arg("purge")
            .args(&others)
            .status()
            .expect("purge namespaces");
        assert!(status.success(), "purging {others:?} failed");
    }
    println!("berth bench: {ROUNDS} rounds each, medians; containerd {}", testbed.containerd_socket.display());

    // Create of an already pulled small image vs `ctr run -d`.
    create(&mut client, "warmup", &busybox, PullPolicy::IfNotPresent).await;
    delete(&mut client, "warmup").await;
    testbed.ctr(&ctr_namespace, &["images", "pull", "--plain-http", &busybox]);
    let mut berth_create = Vec::new();
    let mut ctr_run = Vec::new();
    let mut ctr_run_seccomp = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("create-{round}");
        berth_create.push(create(&mut client, &id, &busybox, PullPolicy::IfNotPresent).await.0);
        ctr_run.push(timed_ctr(&testbed, &ctr_namespace, &["run", "-d", &busybox, &id, "sleep", "3600"]));
        let confined = format!("confined-{round}");
        ctr_run_seccomp.push(timed_ctr(
            &testbed,
            &ctr_namespace,
            &["run", "-d", "--seccomp", &busybox, &confined, "sleep", "3600"],
        ));
    }
    // berth confines every workspace with the default seccomp profile (runc compiles it into a
    // BPF filter at each start, ~20 ms here); `ctr run` applies none unless asked, so the
    // like-for-like baseline is `ctr run --seccomp`.
    let berth_create = median(berth_create);
    report(
        "create -> ready (image present)",
        berth_create,
        Some(("ctr run -d --seccomp", median(ctr_run_seccomp))),
        "<= 1.0x",
    );
    report("  same, vs unconfined ctr", berth_create, Some(("ctr run -d", median(ctr_run))), "informational");

    // Stop of an idle workspace.
    let mut stops = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        let request = StopWorkspaceRequest { workspace_id: format!("create-{round}"), timeout: None };
        client.stop_workspace(request).await.expect("stop");
        stops.push(started.elapsed());
    }
    report("stop (idle workspace)", median(stops), None, "<= 100 ms");
    let ctr_ids: Vec<String> =
        (0..ROUNDS).flat_map(|round| [format!("create-{round}"), format!("confined-{round}")]).collect();
    for round in 0..ROUNDS {
        delete(&mut client, &format!("create-{round}")).await;
    }
    for id in &ctr_ids {
        let _ = testbed.ctr_output(&ctr_namespace, &["tasks", "kill", "--signal", "SIGKILL", id]);
    }
    std::thread::sleep(Duration::from_millis(300));
    for id in &ctr_ids {
        let _ = testbed.ctr_output(&ctr_namespace, &["tasks", "rm", id]);
        let _ = testbed.ctr_output(&ctr_namespace, &["containers", "rm", id]);
    }
    forget_image(&testbed, &ctr_namespace, &busybox);

    // Cold pull of the multi-layer image: berth create (pull + unpack + create + start) vs
    // ctr pull (pull + unpack). Both namespaces forget the image between rounds.
    let mut berth_pull = Vec::new();
    let mut ctr_pull = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("pull-{round}");
        let (elapsed, downloaded) = create(&mut client, &id, &multilayer, PullPolicy::Always).await;
        assert!(downloaded > 0, "round {round} downloaded nothing: the content store was not cold");
        berth_pull.push(elapsed);
        delete(&mut client, &id).await;
        forget_image(&testbed, &server.namespace, &multilayer);
        ctr_pull.push(timed_ctr(&testbed, &ctr_namespace, &["images", "pull", "--plain-http", &multilayer]));
        forget_image(&testbed, &ctr_namespace, &multilayer);
    }
    report(
        "cold pull of the multi-layer image",
        median(berth_pull),
        Some(("ctr images pull", median(ctr_pull))),
        "<= 1.0x",
    );
    let _ = testbed.ctr_output(&ctr_namespace, &["namespaces", "rm", &ctr_namespace]);
}
