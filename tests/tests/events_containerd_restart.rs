//! The task-exit monitor outlives a containerd restart: it subscribes again, an init that
//! exited while containerd was away is found and restarted, and later exits are seen live. Its
//! own test binary: stopping containerd must not disturb other tests.

use std::time::Duration;

use berth_api::v1::{WorkspaceEventKind as Kind, WorkspaceState as State};
use berth_e2e::events::{Watch, kill_9};
use berth_e2e::snapshots::{Client, create_workspace, get};
use berth_e2e::{BerthServer, Testbed};

#[tokio::test]
async fn exits_are_noticed_across_a_containerd_restart() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let id = "evcontainerd";
    let workspace = create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
    let mut watch = Watch::open(&mut client, id, 0, &[]).await;

    // Killed while containerd is away: no event can reach berth then.
    testbed.containerd_ctl("stop");
    kill_9(workspace.init_pid);
    testbed.containerd_ctl("start");
    let exited = watch.until(Kind::TaskExited, Duration::from_secs(30)).await.pop().unwrap();
    assert_eq!(exited.exit_code, 137, "{exited:?}; log:\n{}", server.log_text());
    let restarted = watch.until(Kind::StateChanged, Duration::from_secs(10)).await;
    assert_eq!(restarted.last().unwrap().state(), State::Failed);
    let running = watch.next_event(Duration::from_secs(10)).await;
    assert_eq!((running.kind(), running.state()), (Kind::StateChanged, State::Running), "log:\n{}", server.log_text());
    let after = get(&mut client, id).await;
    assert_ne!(after.init_pid, workspace.init_pid);

    // And live again on the new subscription.
    kill_9(after.init_pid);
    let exited = watch.next_event(Duration::from_secs(3)).await;
    assert_eq!((exited.kind(), exited.exit_code), (Kind::TaskExited, 137), "log:\n{}", server.log_text());
    let status = get(&mut client, id).await.restart_status.expect("restart status");
    assert_eq!(status.restart_count, 2, "{status:?}");
}
