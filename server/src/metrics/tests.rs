//! The sampler over the fake runtime: shared readings, pacing, stopped and deleted workspaces.
//! `tests/tests/metrics.rs` runs the same against containerd.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;

use super::*;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{CgroupStats, CpuStats, PidsStats};
use crate::store::Store;
use crate::workspace::{CreateRequest, ManagerConfig};

struct Harness {
    manager: Arc<Manager>,
    runtime: Arc<FakeRuntime>,
    metrics: Metrics,
    _state_dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let state_dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/berth.db", state_dir.path().display())).await.unwrap();
    let runtime = Arc::new(FakeRuntime::new());
    let config = ManagerConfig {
        namespace: "test".to_owned(),
        state_dir: state_dir.path().to_path_buf(),
        default_image: "fake/image:latest".to_owned(),
        snapshotter: "overlayfs".to_owned(),
        runtime_name: "fake".to_owned(),
        import_limits: crate::data::ExtractLimits { max_bytes: 1 << 30, max_entries: 1000 },
        max_snapshot_depth: 100,
        devices: Arc::new(crate::devices::Devices::new(vec![state_dir.path().join("cdi")])),
        network: Arc::new(crate::network::Network::disabled()),
        event_retention_count: 100_000,
        event_retention_age: Duration::from_secs(30 * 24 * 3600),
    };
    let manager = Arc::new(Manager::new(config, store, runtime.clone()));
    let metrics = Metrics::new(manager.clone(), Duration::from_millis(200));
    Harness { manager, runtime, metrics, _state_dir: state_dir }
}

/// Creates a running workspace whose cgroup reports CPU and pids figures.
async fn running_workspace(harness: &Harness, id: &str) {
    let request = CreateRequest {
        workspace_id: id.to_owned(),
        image: "fake/image:latest".to_owned(),
        ..CreateRequest::default()
    };
    let mut events = harness.manager.create(request).await.unwrap();
    while let Some(event) = events.next().await {
        event.unwrap();
    }
    let stats = CgroupStats {
        cpu: Some(CpuStats { usage_nanos: 1_000_000, ..CpuStats::default() }),
        pids: Some(PidsStats { current: 1, limit: 0 }),
        ..CgroupStats::default()
    };
    harness.runtime.state.lock().unwrap().cgroups.insert(id.to_owned(), stats);
}

fn calls(harness: &Harness) -> u32 {
    harness.runtime.metrics_calls.load(Ordering::SeqCst)
}

#[test]
fn watch_intervals_default_to_a_second_and_are_bounded() {
    assert_eq!(check_watch_interval(None).unwrap(), Duration::from_secs(1));
    for ok in [Duration::from_millis(100), Duration::from_secs(5), Duration::from_secs(3600)] {
        assert_eq!(check_watch_interval(Some(ok)).unwrap(), ok);
    }
    for bad in [Duration::ZERO, Duration::from_millis(99), Duration::from_secs(3601)] {
        let err = check_watch_interval(Some(bad)).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidArgument);
        assert!(err.message().contains("100ms to 1h"), "{}", err.message());
    }
}

#[tokio::test]
async fn twenty_streams_cost_the_readings_of_one() {
    let harness = harness().await;
    running_workspace(&harness, "bot").await;
    let interval = Duration::from_millis(100);

    let before = calls(&harness);
    let one: Vec<_> = harness.metrics.watch("bot", interval).await.unwrap().take(8).collect().await;
    let one_stream = calls(&harness) - before;
    assert!(one.iter().all(|sample| sample.as_ref().unwrap().cpu.is_some()));

    let before = calls(&harness);
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(harness.metrics.watch("bot", interval).await.unwrap().take(8).collect::<Vec<_>>());
    }
    let samples = futures::future::join_all(streams).await;
    let twenty_streams = calls(&harness) - before;
    assert!(samples.iter().all(|stream| stream.len() == 8 && stream.iter().all(|sample| sample.is_ok())));
    assert!(
        twenty_streams <= one_stream + 1,
        "20 streams made {twenty_streams} containerd calls, one stream {one_stream}"
    );
}

#[tokio::test]
async fn streams_with_longer_intervals_share_the_shortest_ones_readings() {
    let harness = harness().await;
    running_workspace(&harness, "bot").await;
    let fast = harness.metrics.watch("bot", Duration::from_millis(100)).await.unwrap();
    let slow = harness.metrics.watch("bot", Duration::from_millis(300)).await.unwrap();
    let before = calls(&harness);
    let started = tokio::time::Instant::now();
    let (fast, slow) = tokio::join!(fast.take(10).collect::<Vec<_>>(), slow.take(4).collect::<Vec<_>>());
    let elapsed = started.elapsed();
    let made = calls(&harness) - before;
    assert_eq!((fast.len(), slow.len()), (10, 4));
    // The slow stream's samples are 300 ms apart (give or take a tick), not 100.
    let times: Vec<_> = slow.iter().map(|sample| sample.as_ref().unwrap().sample_time).collect();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= time::Duration::milliseconds(200), "slow stream gap {gap}");
    }
    // One reading per 100 ms tick, whatever the second stream asks for.
    let ticks = (elapsed.as_millis() / 100) as u32 + 2;
    assert!(made <= ticks, "{made} calls in {elapsed:?}");
}

#[tokio::test]
async fn get_answers_from_a_recent_reading_without_a_new_call() {
    let harness = harness().await;
    running_workspace(&harness, "bot").await;
    let before = calls(&harness);
    let first = harness.metrics.get("bot").await.unwrap();
    let second = harness.metrics.get("bot").await.unwrap();
    assert_eq!(calls(&harness) - before, 1);
    assert_eq!(first.sample_time, second.sample_time);
    let storage = first.storage.expect("the first get waits for the first storage measurement");
    assert!(storage.rootfs_inodes > 0, "{storage:?}");
}

#[tokio::test]
async fn a_stopped_workspace_streams_storage_without_task_figures_and_a_deleted_one_ends_the_stream() {
    let harness = harness().await;
    running_workspace(&harness, "bot").await;
    let mut stream = Box::pin(harness.metrics.watch("bot", Duration::from_millis(100)).await.unwrap());
    let running = stream.next().await.unwrap().unwrap();
    assert!(running.cpu.is_some() && running.pids.is_some());

    harness.manager.stop("bot", Some(Duration::ZERO)).await.unwrap();
    let stopped = loop {
        let sample = stream.next().await.unwrap().unwrap();
        if sample.cpu.is_none() {
            break sample;
        }
    };
    assert!(stopped.memory.is_none() && stopped.pids.is_none() && stopped.unsupported.is_none());
    assert!(stopped.storage.is_some(), "storage is reported while stopped");
    // It keeps streaming.
    assert!(stream.next().await.unwrap().unwrap().cpu.is_none());

    harness.manager.delete("bot", false).await.unwrap();
    let ended = loop {
        match stream.next().await.unwrap() {
            Ok(_) => continue,
            Err(err) => break err,
        }
    };
    assert_eq!(ended.reason(), Reason::WorkspaceNotFound);
    assert!(stream.next().await.is_none(), "the stream ends after the error");
    let err = harness.metrics.watch("bot", Duration::from_secs(1)).await.err().unwrap();
    assert_eq!(err.reason(), Reason::WorkspaceNotFound);
    assert_eq!(harness.metrics.get("bot").await.unwrap_err().reason(), Reason::WorkspaceNotFound);
}

#[tokio::test]
async fn the_sampler_stops_reading_when_the_last_stream_goes() {
    let harness = harness().await;
    running_workspace(&harness, "bot").await;
    let samples: Vec<_> =
        harness.metrics.watch("bot", Duration::from_millis(100)).await.unwrap().take(2).collect().await;
    assert_eq!(samples.len(), 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after_stop = calls(&harness);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls(&harness), after_stop, "nobody watches, so nothing is read");
}

#[tokio::test]
async fn get_right_after_a_stop_reads_again_instead_of_answering_with_the_running_figures() {
    let harness = harness().await;
    running_workspace(&harness, "bot").await;
    assert!(harness.metrics.get("bot").await.unwrap().cpu.is_some());
    harness.manager.stop("bot", Some(Duration::ZERO)).await.unwrap();
    let before = calls(&harness);
    let stopped = harness.metrics.get("bot").await.unwrap();
    assert!(stopped.cpu.is_none() && stopped.pids.is_none(), "{stopped:?}");
    assert_eq!(calls(&harness) - before, 1, "the stop made the cached reading stale");
}
