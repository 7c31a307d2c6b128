//! A process keeps running, and its stream still ends with its exit status from containerd, when
//! containerd restarts while it runs. Its own test binary: stopping containerd must not disturb
//! other tests.

use std::time::Duration;

use berth_api::v1::create_workspace_response::Event as CreateEvent;
use berth_api::v1::process_event::Event;
use berth_api::v1::process_event::data::Output;
use berth_api::v1::process_service_client::ProcessServiceClient;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateWorkspaceRequest, ProcessConfig, ProcessInput, ProcessSelector, SendInputRequest, StartRequest,
    process_input, process_selector,
};
use berth_e2e::{BerthServer, Testbed};
use tokio_stream::StreamExt as _;

#[tokio::test]
async fn a_process_outlives_a_containerd_restart() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);
    let request = CreateWorkspaceRequest {
        workspace_id: "steady".to_owned(),
        image: testbed.image("BUSYBOX"),
        ..Default::default()
    };
    let mut stream = workspaces.create_workspace(request).await.unwrap().into_inner();
    let mut ready = false;
    while let Some(item) = stream.next().await {
        ready = matches!(item.unwrap().event, Some(CreateEvent::Ready(_)));
    }
    assert!(ready);

    let mut processes = ProcessServiceClient::new(server.channel().await);
    let request = StartRequest {
        workspace_id: "steady".to_owned(),
        process: Some(ProcessConfig {
            cmd: "sh".to_owned(),
            args: vec!["-c".to_owned(), "read x; echo \"got $x\"; exit 4".to_owned()],
            ..Default::default()
        }),
        stdin: true,
        tag: "waiter".to_owned(),
        ..Default::default()
    };
    let mut events = processes.start(request).await.unwrap().into_inner();
    let first = events.next().await.unwrap().unwrap();
    assert!(matches!(first.event.unwrap().event, Some(Event::Start(_))));

    testbed.containerd_ctl("stop");
    testbed.containerd_ctl("start");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let input = ProcessInput { input: Some(process_input::Input::Stdin(b"y\n".to_vec().into())) };
    processes
        .send_input(SendInputRequest {
            workspace_id: "steady".to_owned(),
            process: Some(ProcessSelector { selector: Some(process_selector::Selector::Tag("waiter".to_owned())) }),
            input: Some(input),
        })
        .await
        .unwrap();
    let mut stdout = Vec::new();
    let mut end = None;
    let collected = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(item) = events.next().await {
            match item.unwrap().event.unwrap().event {
                Some(Event::Data(data)) => {
                    if let Some(Output::Stdout(bytes)) = data.output {
                        stdout.extend(bytes);
                    }
                }
                Some(Event::End(ended)) => end = Some(ended),
                _ => {}
            }
        }
    })
    .await;
    assert!(collected.is_ok(), "the stream did not end; log:\n{}", server.log_text());
    assert_eq!(String::from_utf8_lossy(&stdout), "got y\n");
    let end = end.expect("end");
    assert_eq!(end.exit_code, 4, "{end:?}; log:\n{}", server.log_text());
    assert!(end.error.is_empty(), "{end:?}");
}
