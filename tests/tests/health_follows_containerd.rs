//! Health turns NOT_SERVING while the testbed's containerd is stopped and SERVING after it
//! restarts. Its own test binary: stopping containerd must not disturb other tests.

use std::time::Duration;

use berth_e2e::{BerthServer, Testbed, eventually};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn status(health: &mut HealthClient<tonic::transport::Channel>) -> ServingStatus {
    health
        .check(HealthCheckRequest { service: "berth.workspace.v1.WorkspaceService".to_owned() })
        .await
        .expect("health answers even while containerd is down")
        .into_inner()
        .status()
}

#[tokio::test]
async fn health_follows_containerd_down_and_up() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut health = HealthClient::new(server.channel().await);
    server.wait_serving(Duration::from_secs(10)).await;
    assert_eq!(status(&mut health).await, ServingStatus::Serving);

    testbed.containerd_ctl("stop");
    let not_serving = eventually(Duration::from_secs(15), || {
        let mut health = health.clone();
        async move { status(&mut health).await == ServingStatus::NotServing }
    })
    .await;
    testbed.containerd_ctl("start");
    assert!(not_serving, "health stayed SERVING while containerd was stopped; log:\n{}", server.log_text());

    let serving = eventually(Duration::from_secs(20), || {
        let mut health = health.clone();
        async move { status(&mut health).await == ServingStatus::Serving }
    })
    .await;
    assert!(serving, "health did not return to SERVING after containerd restarted; log:\n{}", server.log_text());
}
