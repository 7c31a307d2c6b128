//! WatchEvents against a real containerd: lifecycle events live with their states, replay after
//! a reconnect, the kinds filter, events kept across a berth restart, and the task-exit monitor
//! (an init killed from the host is reported with its exit code and restarted with a backoff).

use std::time::Duration;

use berth_api::v1::{StartWorkspaceRequest, StopWorkspaceRequest, WorkspaceEventKind as Kind, WorkspaceState as State};
use berth_e2e::events::{Watch, kill_9};
use berth_e2e::snapshots::{Client, create_workspace, get, snapshot};
use berth_e2e::{BerthServer, Testbed};

const SOON: Duration = Duration::from_secs(10);

async fn client(server: &BerthServer) -> Client {
    Client::new(server.channel().await)
}

async fn stop(client: &mut Client, id: &str) {
    let request = StopWorkspaceRequest {
        workspace_id: id.to_owned(),
        timeout: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
    };
    client.stop_workspace(request).await.unwrap();
}

async fn start(client: &mut Client, id: &str) {
    client.start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap();
}

fn seconds(timestamp: &Option<prost_types::Timestamp>) -> f64 {
    let timestamp = timestamp.as_ref().expect("a time");
    timestamp.seconds as f64 + f64::from(timestamp.nanos) / 1e9
}

#[tokio::test]
async fn lifecycle_events_stream_live_and_replay_exactly_what_was_missed() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = client(&server).await;
    let id = "evlive";
    let mut watch = Watch::open(&mut client, id, 0, &[]).await;
    create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
    let created = watch.until(Kind::Created, SOON).await.pop().unwrap();
    assert_eq!(created.workspace_id, id);
    assert_eq!(created.state(), State::Running, "{created:?}");
    assert!(created.event_id > 0);

    stop(&mut client, id).await;
    let stopped = watch.next_event(SOON).await;
    assert_eq!(stopped.kind(), Kind::StateChanged, "{stopped:?}");
    assert_eq!((stopped.previous_state(), stopped.state()), (State::Running, State::Stopped));
    assert!(stopped.event_id > created.event_id);
    start(&mut client, id).await;
    let started = watch.next_event(SOON).await;
    assert_eq!(
        (started.kind(), started.previous_state(), started.state()),
        (Kind::StateChanged, State::Stopped, State::Running)
    );
    drop(watch);

    // Missed while disconnected: a stop and a snapshot.
    stop(&mut client, id).await;
    let taken = snapshot(&mut client, id, "s1").await.unwrap();
    let mut resumed = Watch::open(&mut client, id, started.event_id, &[]).await;
    let missed_stop = resumed.next_event(SOON).await;
    assert_eq!((missed_stop.kind(), missed_stop.state()), (Kind::StateChanged, State::Stopped), "{missed_stop:?}");
    assert!(missed_stop.event_id > started.event_id);
    let missed_snapshot = resumed.next_event(SOON).await;
    assert_eq!(missed_snapshot.kind(), Kind::SnapshotCreated, "{missed_snapshot:?}");
    assert_eq!((missed_snapshot.snapshot_name.as_str(), missed_snapshot.version), ("s1", taken.version));
    assert!(missed_snapshot.event_id > missed_stop.event_id);
    resumed.expect_quiet(Duration::from_millis(2500)).await;
    // Then live again on the same stream.
    start(&mut client, id).await;
    let live = resumed.next_event(SOON).await;
    assert_eq!((live.kind(), live.state()), (Kind::StateChanged, State::Running));
    assert!(live.event_id > missed_snapshot.event_id);

    // The kinds filter: only snapshot events, replayed from the start of this workspace.
    let mut snapshots = Watch::open(&mut client, id, created.event_id, &[Kind::SnapshotCreated]).await;
    assert_eq!(snapshots.next_event(SOON).await.event_id, missed_snapshot.event_id);
    snapshots.expect_quiet(Duration::from_millis(2500)).await;
    // Another workspace's events do not reach a watch of this one.
    let mut other = Watch::open(&mut client, "evother", created.event_id, &[]).await;
    other.expect_quiet(Duration::from_millis(1500)).await;
    let heartbeat = other.next_item(Duration::from_secs(3)).await;
    assert_eq!((heartbeat.kind(), heartbeat.event_id), (Kind::Heartbeat, 0));
}

#[tokio::test]
async fn a_killed_init_is_reported_and_restarted_with_a_growing_backoff() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = client(&server).await;
    let id = "evcrash";
    let workspace = create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
    let mut watch = Watch::open(&mut client, id, 0, &[]).await;
    let mut pid = workspace.init_pid;
    let mut restart_gaps = Vec::new();
    for round in 1..=3u32 {
        kill_9(pid);
        let exited = watch.next_event(Duration::from_secs(3)).await;
        assert_eq!(exited.kind(), Kind::TaskExited, "round {round}: {exited:?}; log:\n{}", server.log_text());
        assert_eq!(exited.exit_code, 137, "{exited:?}");
        let failed = watch.next_event(SOON).await;
        assert_eq!(
            (failed.kind(), failed.previous_state(), failed.state()),
            (Kind::StateChanged, State::Running, State::Failed)
        );
        assert_eq!(failed.failure_reason, "RUNTIME_ERROR");
        let waiting = get(&mut client, id).await;
        let status = waiting.restart_status.expect("restart status after an exit");
        assert_eq!((status.restart_count, status.last_exit_code), (round, 137), "{status:?}");
        let planned = seconds(&status.next_restart_time) - seconds(&status.last_exit_time);
        let expected = f64::from(1u32 << (round - 1));
        assert!((planned - expected).abs() < 0.5, "round {round}: restart planned {planned}s after the exit");

        let restarted = watch.next_event(Duration::from_secs(15)).await;
        assert_eq!(
            (restarted.kind(), restarted.previous_state(), restarted.state()),
            (Kind::StateChanged, State::Failed, State::Running)
        );
        restart_gaps.push(seconds(&restarted.event_time) - seconds(&exited.event_time));
        let running = get(&mut client, id).await;
        assert_eq!(running.state(), State::Running);
        assert_ne!(running.init_pid, pid, "a new init");
        assert!(running.restart_status.unwrap().next_restart_time.is_none());
        pid = running.init_pid;
    }
    // 1 s, 2 s, 4 s: each restart waits about twice as long as the one before.
    for (round, gap) in restart_gaps.iter().enumerate() {
        let expected = f64::from(1u32 << round);
        assert!(*gap >= expected - 0.1 && *gap < expected + 2.0, "restart gaps {restart_gaps:?}");
    }

    // A workspace stopped on request is not restarted, and its stop is no TASK_EXITED.
    stop(&mut client, id).await;
    let stopped = watch.next_event(SOON).await;
    assert_eq!((stopped.kind(), stopped.state()), (Kind::StateChanged, State::Stopped));
    watch.expect_quiet(Duration::from_secs(3)).await;
    assert_eq!(get(&mut client, id).await.state(), State::Stopped);
}

#[tokio::test]
async fn events_survive_a_berth_restart() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = client(&server).await;
    let id = "evkept";
    let mut watch = Watch::open(&mut client, id, 0, &[]).await;
    create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
    let created = watch.until(Kind::Created, SOON).await.pop().unwrap();
    stop(&mut client, id).await;
    let stopped = watch.next_event(SOON).await;
    drop(watch);

    let server = server.restart(&testbed, false);
    let mut client = Client::new(server.channel().await);
    let mut replay = Watch::open(&mut client, id, created.event_id, &[]).await;
    let again = replay.next_event(SOON).await;
    assert_eq!(again.event_id, stopped.event_id);
    assert_eq!(
        (again.kind(), again.previous_state(), again.state()),
        (Kind::StateChanged, State::Running, State::Stopped)
    );
    // New ids continue after the old ones.
    start(&mut client, id).await;
    let started = replay.next_event(SOON).await;
    assert!(started.event_id > stopped.event_id, "{started:?}");
}

#[tokio::test]
async fn a_process_over_the_memory_limit_is_oom_killed_with_an_oom_event_and_the_count_in_metrics() {
    use berth_api::v1::{GetMetricsRequest, Resources, UpdateWorkspaceRequest};
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = client(&server).await;
    let id = "oom";
    let created = create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
    let limit = UpdateWorkspaceRequest {
        workspace_id: id.to_owned(),
        update_mask: Some(prost_types::FieldMask { paths: vec!["resources".to_owned()] }),
        resources: Some(Resources { memory_bytes: 32 << 20, ..Default::default() }),
        ..Default::default()
    };
    client.update_workspace(limit).await.unwrap();
    let mut watch = Watch::open(&mut client, id, 0, &[Kind::Oom]).await;
    // 64 MiB held in a shell variable: more than the 32 MiB limit.
    let hog = "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}";
    let filled = testbed.exec_output(&server.namespace, id, None, &["sh", "-c", hog]);
    assert!(!filled.success || !filled.stdout.contains("67108864"), "the allocation survived: {filled:?}");
    let event = watch.next_event(Duration::from_secs(10)).await;
    assert_eq!((event.kind(), event.workspace_id.as_str()), (Kind::Oom, id), "{event:?}");
    let metrics = client
        .get_metrics(GetMetricsRequest { workspace_id: id.to_owned() })
        .await
        .unwrap()
        .into_inner()
        .metrics
        .unwrap();
    assert!(metrics.memory.unwrap().oom_kill_count >= 1, "the OOM kill is counted");
    let after = get(&mut client, id).await;
    assert_eq!((after.state(), after.init_pid), (State::Running, created.init_pid), "only the hog was killed");
}
