//! GetMetrics and WatchMetrics on the real containerd (this host's cgroups, v1 or v2): a busy
//! workspace reads more than half a core, memory follows a process that allocates, pids count a
//! started process, storage follows 50 MiB written into /data, 20 concurrent streams cost no more
//! containerd calls than one, a stopped workspace keeps streaming without task figures, a deletion
//! ends the stream with NOT_FOUND, and bad intervals and ids fail with their codes and reasons.

use std::time::{Duration, Instant};

use berth_api::v1::create_workspace_response::Event as CreateEvent;
use berth_api::v1::process_event::Event as ProcessEvent;
use berth_api::v1::process_event::data::Output;
use berth_api::v1::process_service_client::ProcessServiceClient;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateWorkspaceRequest, DeleteWorkspaceRequest, GetMetricsRequest, ProcessConfig, Resources, StartRequest,
    StopWorkspaceRequest, WatchMetricsRequest, WorkspaceMetrics,
};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

type Client = WorkspaceServiceClient<Channel>;

const MIB: u64 = 1 << 20;

/// A server measuring storage every second, logging each containerd metrics call.
fn start_server(testbed: &Testbed) -> BerthServer {
    BerthServer::start_with(
        testbed,
        ServerOptions {
            extra_args: vec!["--storage-sample-interval".to_owned(), "1".to_owned()],
            env: vec![("BERTH_LOG".to_owned(), "info,berth::runtime::containerd::metrics=debug".to_owned())],
            ..Default::default()
        },
    )
}

async fn create_workspace(client: &mut Client, id: &str, image: &str, resources: Resources) {
    let request = CreateWorkspaceRequest {
        workspace_id: id.to_owned(),
        image: image.to_owned(),
        resources: Some(resources),
        ..Default::default()
    };
    let mut stream = client.create_workspace(request).await.unwrap().into_inner();
    let mut ready = false;
    while let Some(item) = stream.next().await {
        ready = matches!(item.unwrap().event, Some(CreateEvent::Ready(_)));
    }
    assert!(ready, "the create of {id} ended without ready");
}

async fn get_metrics(client: &mut Client, id: &str) -> Result<WorkspaceMetrics, tonic::Status> {
    let request = GetMetricsRequest { workspace_id: id.to_owned() };
    Ok(client.get_metrics(request).await?.into_inner().metrics.expect("a sample"))
}

fn interval(millis: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: (millis / 1000) as i64, nanos: ((millis % 1000) * 1_000_000) as i32 })
}

async fn watch(
    client: &mut Client,
    id: &str,
    millis: u64,
) -> impl tokio_stream::Stream<Item = Result<WorkspaceMetrics, tonic::Status>> + Unpin + use<> {
    let request = WatchMetricsRequest { workspace_id: id.to_owned(), interval: interval(millis) };
    client
        .watch_metrics(request)
        .await
        .unwrap()
        .into_inner()
        .map(|item| item.map(|response| response.metrics.expect("a sample")))
}

/// Starts `sh -c script` through ProcessService and waits until its stdout holds `ready` (its
/// start event when `ready` is empty); the process keeps running after the stream is dropped.
async fn start_process(server: &BerthServer, id: &str, script: &str, ready: &str) {
    let mut processes = ProcessServiceClient::new(server.channel().await);
    let request = StartRequest {
        workspace_id: id.to_owned(),
        process: Some(ProcessConfig {
            cmd: "sh".to_owned(),
            args: vec!["-c".to_owned(), script.to_owned()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut stream = processes.start(request).await.unwrap().into_inner();
    let mut stdout = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(item) = tokio::time::timeout_at(deadline.into(), stream.next()).await.expect("the process got ready")
    {
        match item.unwrap().event.and_then(|event| event.event) {
            Some(ProcessEvent::Start(_)) if ready.is_empty() => return,
            Some(ProcessEvent::Data(data)) => {
                if let Some(Output::Stdout(bytes)) = data.output {
                    stdout.extend_from_slice(&bytes);
                }
                if String::from_utf8_lossy(&stdout).contains(ready) {
                    return;
                }
            }
            Some(ProcessEvent::End(end)) => panic!("{script:?} ended before it was ready: {end:?}"),
            _ => {}
        }
    }
    panic!("{script:?} ended before it was ready");
}

/// Polls GetMetrics until `check` accepts a sample (every 250 ms, up to `timeout`); returns it.
async fn metrics_until<F>(client: &mut Client, id: &str, timeout: Duration, what: &str, check: F) -> WorkspaceMetrics
where
    F: Fn(&WorkspaceMetrics) -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        let metrics = get_metrics(client, id).await.unwrap();
        if check(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}; last sample {metrics:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How many containerd `Tasks.Metrics` calls the server made for `id` (one debug line each).
fn containerd_metrics_calls(server: &BerthServer, id: &str) -> usize {
    let quoted = format!("\"{id}\"");
    server
        .log_text()
        .lines()
        .filter(|line| line.contains("containerd task metrics read") && line.contains(&quoted))
        .count()
}

async fn delete_workspace(client: &mut Client, id: &str) {
    client
        .delete_workspace(DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data: false })
        .await
        .unwrap();
}

#[tokio::test]
async fn figures_follow_cpu_memory_processes_and_storage_of_a_running_workspace() {
    let testbed = Testbed::from_env();
    let server = start_server(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let id = "metrics-busy";
    let resources = Resources { cpu_millis: 1500, memory_bytes: (512 * MIB) as i64, pids_limit: 64 };
    create_workspace(&mut client, id, &testbed.image("BUSYBOX"), resources).await;

    let idle = get_metrics(&mut client, id).await.unwrap();
    assert!(idle.supported && idle.unsupported_reason.is_empty(), "{idle:#?}");
    let cpu = idle.cpu.expect("cpu figures of a running workspace");
    assert_eq!(cpu.limit_millis, 1500);
    assert!(cpu.usage_nanos > 0 && cpu.percent_of_one_core < 50.0, "an idle workspace: {cpu:?}");
    let memory = idle.memory.expect("memory figures");
    assert_eq!(memory.limit_bytes, 512 * MIB, "the cgroup's limit as created");
    assert!(memory.usage_bytes > 0 && memory.working_set_bytes <= memory.usage_bytes, "{memory:?}");
    assert_eq!(memory.oom_kill_count, 0);
    let pids = idle.pids.expect("pids figures");
    assert_eq!((pids.current, pids.limit), (1, 64), "only PID 1 runs");
    let storage = idle.storage.expect("storage figures, measured once before the first answer");
    assert!(storage.rootfs_inodes > 0 && storage.sample_time.is_some(), "{storage:?}");
    let idle_data_bytes = storage.data_bytes;

    // pids count a started process, and the process agent that is its parent.
    start_process(&server, id, "exec sleep 600", "").await;
    metrics_until(&mut client, id, Duration::from_secs(10), "pids count the agent and the sleeper", |m| {
        m.pids.is_some_and(|pids| pids.current == 3)
    })
    .await;

    // Memory grows after a process allocates 64 MiB: a shell variable of 64 Mi characters, kept
    // while the shell sleeps (the sleep is not its last command, which ash would exec instead).
    let before = get_metrics(&mut client, id).await.unwrap().memory.unwrap();
    let allocate = "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo allocated; sleep 600; echo ${#x}";
    start_process(&server, id, allocate, "allocated").await;
    let grown = metrics_until(&mut client, id, Duration::from_secs(10), "memory grows by 60 MiB", |m| {
        m.memory.is_some_and(|memory| memory.usage_bytes >= before.usage_bytes + 60 * MIB)
    })
    .await
    .memory
    .unwrap();
    assert!(grown.working_set_bytes >= before.working_set_bytes + 60 * MIB, "{before:?} -> {grown:?}");
    let expected_percent = grown.working_set_bytes as f64 / (512 * MIB) as f64 * 100.0;
    assert!((grown.percent - expected_percent).abs() < 0.01, "{grown:?}");

    // Two busy loops read more than half a core on a stream (the limit is 1.5 cores).
    for _ in 0..2 {
        start_process(&server, id, "while :; do :; done", "").await;
    }
    let mut stream = watch(&mut client, id, 1000).await;
    let mut seen = Vec::new();
    while seen.len() < 15 {
        let sample = stream.next().await.unwrap().unwrap();
        let percent = sample.cpu.unwrap().percent_of_one_core;
        seen.push(percent);
        if seen.len() >= 2 && percent > 50.0 {
            break;
        }
    }
    // The first sample may reach back before the loops started; a later one measures them.
    assert!(seen.len() >= 2 && *seen.last().unwrap() > 50.0, "cpu percent of one core per second: {seen:?}");
    drop(stream);

    // Storage follows 50 MiB written into /data (measured every second by this server).
    start_process(
        &server,
        id,
        "dd if=/dev/urandom of=/data/blob bs=1M count=50 2>/dev/null && sync && echo written",
        "written",
    )
    .await;
    let written = metrics_until(&mut client, id, Duration::from_secs(20), "data_bytes grows by 50 MiB", |m| {
        m.storage.is_some_and(|storage| storage.data_bytes >= idle_data_bytes + 50 * MIB)
    })
    .await
    .storage
    .unwrap();
    assert!(written.rootfs_bytes >= written.data_bytes, "/data is part of the writable layer: {written:?}");
    assert!(written.rootfs_inodes > storage.rootfs_inodes, "{storage:?} -> {written:?}");
    let time = |stamp: Option<prost_types::Timestamp>| stamp.map(|stamp| (stamp.seconds, stamp.nanos));
    assert!(time(written.sample_time) > time(storage.sample_time), "a newer measurement");

    delete_workspace(&mut client, id).await;
}

#[tokio::test]
async fn twenty_streams_cost_no_more_containerd_calls_than_one() {
    let testbed = Testbed::from_env();
    let server = start_server(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let id = "metrics-shared";
    create_workspace(&mut client, id, &testbed.image("BUSYBOX"), Resources::default()).await;
    const SAMPLES: usize = 10;

    let before = containerd_metrics_calls(&server, id);
    let one: Vec<_> = watch(&mut client, id, 200).await.take(SAMPLES).collect().await;
    assert!(one.iter().all(|sample| sample.as_ref().is_ok_and(|sample| sample.cpu.is_some())), "{one:?}");
    let one_stream = containerd_metrics_calls(&server, id) - before;
    assert!(
        (SAMPLES - 1..=SAMPLES + 2).contains(&one_stream),
        "one stream of {SAMPLES} samples made {one_stream} calls"
    );

    let before = containerd_metrics_calls(&server, id);
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(watch(&mut client, id, 200).await.take(SAMPLES).collect::<Vec<_>>());
    }
    let twenty: Vec<Vec<_>> = futures::future::join_all(streams).await;
    for samples in &twenty {
        assert_eq!(samples.len(), SAMPLES);
        assert!(samples.iter().all(|sample| sample.as_ref().is_ok_and(|sample| sample.cpu.is_some())), "{samples:?}");
    }
    let twenty_streams = containerd_metrics_calls(&server, id) - before;
    assert!(
        twenty_streams <= one_stream + 2,
        "20 streams of {SAMPLES} samples made {twenty_streams} containerd calls, one stream {one_stream}"
    );

    // Once nobody watches, nothing is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = containerd_metrics_calls(&server, id);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(containerd_metrics_calls(&server, id), idle, "no stream, no reading");
    delete_workspace(&mut client, id).await;
}

#[tokio::test]
async fn a_stopped_workspace_keeps_streaming_and_its_deletion_ends_the_stream_with_not_found() {
    let testbed = Testbed::from_env();
    let server = start_server(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let id = "metrics-stop";
    create_workspace(&mut client, id, &testbed.image("BUSYBOX"), Resources::default()).await;

    let mut stream = watch(&mut client, id, 200).await;
    let running = stream.next().await.unwrap().unwrap();
    assert!(running.cpu.is_some() && running.memory.is_some() && running.pids.is_some(), "{running:#?}");

    client.stop_workspace(StopWorkspaceRequest { workspace_id: id.to_owned(), timeout: None }).await.unwrap();
    let mut stopped = Vec::new();
    while stopped.len() < 3 {
        let sample = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        if sample.cpu.is_none() {
            stopped.push(sample);
        }
    }
    for sample in &stopped {
        assert!(sample.memory.is_none() && sample.pids.is_none(), "{sample:#?}");
        assert!(sample.supported && sample.storage.is_some(), "storage while stopped: {sample:#?}");
    }
    let times: Vec<_> = stopped.iter().map(|sample| sample.sample_time.unwrap()).collect();
    assert!(
        times.windows(2).all(|pair| (pair[1].seconds, pair[1].nanos) > (pair[0].seconds, pair[0].nanos)),
        "{times:?}"
    );
    let get = get_metrics(&mut client, id).await.unwrap();
    assert!(get.cpu.is_none() && get.storage.is_some(), "GetMetrics of a stopped workspace: {get:#?}");

    delete_workspace(&mut client, id).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return status,
                None => panic!("the stream ended without an error"),
            }
        }
    })
    .await
    .expect("the stream ends soon after the deletion");
    assert_eq!(
        (ended.code(), error_reason(&ended).as_deref()),
        (Code::NotFound, Some("WORKSPACE_NOT_FOUND")),
        "{ended:?}"
    );
    assert!(stream.next().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn bad_intervals_and_unknown_workspaces_fail_with_their_reasons() {
    let testbed = Testbed::from_env();
    let server = start_server(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let id = "metrics-args";
    create_workspace(&mut client, id, &testbed.image("BUSYBOX"), Resources::default()).await;

    for bad in [
        prost_types::Duration { seconds: 0, nanos: 50_000_000 },
        prost_types::Duration { seconds: 0, nanos: 0 },
        prost_types::Duration { seconds: -1, nanos: 0 },
        prost_types::Duration { seconds: 3601, nanos: 0 },
    ] {
        let request = WatchMetricsRequest { workspace_id: id.to_owned(), interval: Some(bad) };
        let status = client.watch_metrics(request).await.expect_err("refused");
        assert_eq!(
            (status.code(), error_reason(&status).as_deref()),
            (Code::InvalidArgument, Some("INVALID_ARGUMENT")),
            "{bad:?}: {status:?}"
        );
        assert!(status.message().contains("100ms to 1h"), "{}", status.message());
    }
    let status = get_metrics(&mut client, "no-such-bot").await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status).as_deref()), (Code::NotFound, Some("WORKSPACE_NOT_FOUND")));
    let request = WatchMetricsRequest { workspace_id: "no-such-bot".to_owned(), interval: None };
    let status = client.watch_metrics(request).await.expect_err("refused");
    assert_eq!((status.code(), error_reason(&status).as_deref()), (Code::NotFound, Some("WORKSPACE_NOT_FOUND")));
    let status = get_metrics(&mut client, "Bad_Id").await.unwrap_err();
    assert_eq!(
        (status.code(), error_reason(&status).as_deref()),
        (Code::InvalidArgument, Some("INVALID_WORKSPACE_ID"))
    );
    delete_workspace(&mut client, id).await;
}

#[tokio::test]
async fn a_busy_loop_limited_to_half_a_core_reads_40_to_60_percent() {
    let testbed = Testbed::from_env();
    let server = start_server(&testbed);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let id = "metrics-half-core";
    let limits = Resources { cpu_millis: 500, ..Default::default() };
    create_workspace(&mut client, id, &testbed.image("BUSYBOX"), limits).await;
    // Two loops: the limit, not a single thread, is what holds them to half a core.
    for _ in 0..2 {
        start_process(&server, id, "while :; do :; done", "").await;
    }
    let mut stream = watch(&mut client, id, 1000).await;
    let mut seen = Vec::new();
    // The first sample may reach back before the loops started; the next ones measure them.
    while seen.len() < 6 {
        seen.push(stream.next().await.unwrap().unwrap().cpu.unwrap().percent_of_one_core);
    }
    // The median of four one-second samples: a sample's window may straddle a CFS period.
    let mut measured = seen[2..].to_vec();
    measured.sort_by(f64::total_cmp);
    let median = (measured[1] + measured[2]) / 2.0;
    assert!((40.0..=60.0).contains(&median), "median {median:.1} of one-second samples {seen:?}");
    drop(stream);
    delete_workspace(&mut client, id).await;
}
