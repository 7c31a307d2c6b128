//! The `metrics` section: GetMetrics latency (target p50 ≤ 5 ms), what Memoh's way of answering
//! it costs (two `Tasks.Metrics` readings 200 ms apart per request, here with `ctr tasks
//! metrics`), and the server's and containerd's CPU while 100 WatchMetrics streams on each of
//! 20 workspaces receive a sample a second for 60 s (target ≤ 2 % of one core for berth).

use std::time::{Duration, Instant};

use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{GetMetricsRequest, PullPolicy, WatchMetricsRequest};
use berth_e2e::{BerthServer, Testbed};
use tokio_stream::StreamExt as _;

use super::{Client, cpu_time, create, delete, ms, percentile, report_latency, report_value};

const WORKSPACES: usize = 20;
const STREAMS_PER_WORKSPACE: usize = 100;
const WATCH_FOR: Duration = Duration::from_secs(60);

/// The host pid of the testbed's containerd (the one listening on its socket).
fn containerd_pid(testbed: &Testbed) -> Option<u32> {
    let config = testbed.containerd_socket.parent()?.join("config.toml");
    let output = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(format!("containerd --config {}", config.display()))
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).lines().next()?.trim().parse().ok()
}

pub async fn bench_metrics(testbed: &Testbed, server: &BerthServer, client: &mut Client, image: &str) {
    let ids: Vec<String> = (0..WORKSPACES).map(|index| format!("bench-metrics-{index}")).collect();
    for id in &ids {
        create(client, id, image, PullPolicy::IfNotPresent).await;
    }

    // GetMetrics: the first call reads; the rest answer from the sampler's latest reading or
    // one fresh read plus the previous one, never a wait.
    let mut samples = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let metrics = client
            .get_metrics(GetMetricsRequest { workspace_id: ids[0].clone() })
            .await
            .expect("GetMetrics")
            .into_inner()
            .metrics
            .expect("a sample");
        samples.push(started.elapsed());
        assert!(metrics.cpu.is_some() && metrics.memory.is_some(), "a running workspace has cpu and memory");
    }
    report_latency("GetMetrics (200 calls, one workspace)", &mut samples, "", "p50 <= 5 ms");

    // Memoh answers each request with two readings 200 ms apart.
    let mut memoh = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        testbed.ctr(&server.namespace, &["tasks", "metrics", &ids[0]]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        testbed.ctr(&server.namespace, &["tasks", "metrics", &ids[0]]);
        memoh.push(started.elapsed());
    }
    let memoh_p50 = percentile(&mut memoh, 0.5);
    println!(
        "{:<34} memoh {:>8.1} ms      two `ctr tasks metrics` 200 ms apart per request, vs berth's p50 {:.2} ms",
        "Memoh-style metrics request",
        ms(memoh_p50),
        ms(percentile(&mut samples, 0.5))
    );

    // 2,000 streams at one sample a second: one channel (one HTTP/2 connection) per workspace.
    let mut channels = Vec::new();
    for _ in 0..WORKSPACES {
        channels.push(server.channel().await);
    }
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut streams = Vec::new();
    for (id, channel) in ids.iter().zip(&channels) {
        for _ in 0..STREAMS_PER_WORKSPACE {
            let mut watcher = WorkspaceServiceClient::new(channel.clone());
            let request = WatchMetricsRequest {
                workspace_id: id.clone(),
                interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            };
            let mut stream = watcher.watch_metrics(request).await.expect("WatchMetrics").into_inner();
            let received = received.clone();
            streams.push(tokio::spawn(async move {
                while let Some(Ok(_)) = stream.next().await {
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
    }
    // Let every stream get its first sample before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let containerd = containerd_pid(testbed);
    let (berth_before, containerd_before) = (cpu_time(server.pid()), containerd.map(cpu_time));
    let received_before = received.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(WATCH_FOR).await;
    let elapsed = started.elapsed();
    let berth_cpu = cpu_time(server.pid()) - berth_before;
    let containerd_cpu = containerd.zip(containerd_before).map(|(pid, before)| cpu_time(pid) - before);
    let samples_received = received.load(std::sync::atomic::Ordering::Relaxed) - received_before;
    for stream in streams {
        stream.abort();
    }
    let percent = |cpu: Duration| cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let expected = (WORKSPACES * STREAMS_PER_WORKSPACE) as f64 * elapsed.as_secs_f64();
    report_value(
        "WatchMetrics 100 x 20 at 1 s, CPU",
        "berth",
        percent(berth_cpu),
        "% core",
        &format!(
            "  over {:.0} s; {samples_received} samples received ({:.0}% of one per stream per second)",
            elapsed.as_secs_f64(),
            samples_received as f64 / expected * 100.0
        ),
        "<= 2 % of a core",
    );
    if let Some(cpu) = containerd_cpu {
        report_value(
            "  containerd meanwhile",
            "ctrd",
            percent(cpu),
            "% core",
            &format!(
                "  (one Tasks.Metrics per workspace per second; Memoh's way would be {} a second)",
                2 * WORKSPACES * STREAMS_PER_WORKSPACE
            ),
            "(informational)",
        );
    }
    for id in &ids {
        delete(client, id).await;
    }
}
