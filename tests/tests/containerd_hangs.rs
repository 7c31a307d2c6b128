//! A containerd that stops answering (SIGSTOP: the socket accepts, nothing replies) fails calls
//! with UNAVAILABLE within `--containerd-timeout` instead of wedging the workspace, and the
//! workspace works again once containerd resumes. Its own test binary: freezing containerd must
//! not disturb other tests.

use std::time::{Duration, Instant};

use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{CreateWorkspaceRequest, DeleteWorkspaceRequest, StopWorkspaceRequest, WorkspaceState};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use tokio_stream::StreamExt as _;
use tonic::Code;

/// Sends `signal` to the testbed's containerd.
fn signal_containerd(testbed: &Testbed, signal: &str) {
    let pid = std::fs::read_to_string(testbed.dir.join("containerd/containerd.pid")).expect("containerd pid file");
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.trim()).status().unwrap();
    assert!(status.success(), "kill -{signal} containerd");
}

/// Resumes containerd even when an assertion fails.
struct Resume<'a>(&'a Testbed);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        signal_containerd(self.0, "CONT");
    }
}

#[tokio::test]
async fn a_hung_containerd_fails_calls_with_unavailable_within_the_timeout() {
    let testbed = Testbed::from_env();
    let options =
        ServerOptions { extra_args: vec!["--containerd-timeout".to_owned(), "2".to_owned()], ..Default::default() };
    let server = BerthServer::start_with(&testbed, options);
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let request = CreateWorkspaceRequest {
        workspace_id: "frozen".to_owned(),
        image: testbed.image("BUSYBOX"),
        ..Default::default()
    };
    let mut stream = client.create_workspace(request).await.unwrap().into_inner();
    while let Some(item) = stream.next().await {
        item.unwrap();
    }

    let stop = || StopWorkspaceRequest {
        workspace_id: "frozen".to_owned(),
        timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
    };
    {
        signal_containerd(&testbed, "STOP");
        let _resume = Resume(&testbed);
        let started = Instant::now();
        let status = client.stop_workspace(stop()).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(error_reason(&status).as_deref(), Some("CONTAINERD_UNAVAILABLE"));
        assert!(took < Duration::from_secs(10), "the call failed after {took:?}, not within the 2 s timeout");
    }
    // containerd answers again: the workspace is not wedged.
    let stopped = client.stop_workspace(stop()).await.unwrap().into_inner().workspace.unwrap();
    assert_eq!(stopped.state(), WorkspaceState::Stopped);
    client
        .delete_workspace(DeleteWorkspaceRequest { workspace_id: "frozen".to_owned(), preserve_data: false })
        .await
        .unwrap();
}
