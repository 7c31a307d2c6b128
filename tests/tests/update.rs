//! UpdateWorkspace's live paths on the real containerd: new limits are in the kernel's cgroup
//! files at once without the init pid changing and survive a stop/start, lifting a limit lifts
//! it, a memory limit below what the workspace uses is refused, labels reach the selector index
//! and the container, a new environment restarts the workspace with it, and an unknown device is
//! refused (tests/tests/devices.rs attaches real ones).

use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    ListWorkspacesRequest, Resources, StartWorkspaceRequest, StopWorkspaceRequest, UpdateWorkspaceRequest,
    WorkspaceState,
};
use berth_e2e::snapshots::{create_workspace, delete_workspace, get};
use berth_e2e::{BerthServer, CgroupLimits, Testbed, error_reason};
use tonic::Code;

fn with_mask(id: &str, paths: &[&str]) -> UpdateWorkspaceRequest {
    UpdateWorkspaceRequest {
        workspace_id: id.to_owned(),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|path| (*path).to_owned()).collect() }),
        ..Default::default()
    }
}

fn container_labels(testbed: &Testbed, namespace: &str, id: &str) -> serde_json::Value {
    let info: serde_json::Value = serde_json::from_str(&testbed.ctr(namespace, &["containers", "info", id])).unwrap();
    info["Labels"].clone()
}

#[tokio::test]
async fn limits_and_labels_apply_live_and_persist_and_env_restarts_once() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let ns = server.namespace.clone();
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let id = "live-update";
    let created = create_workspace(&mut client, id, &testbed.image("BUSYBOX")).await;
    let cgroup = format!("{ns}/{id}");
    assert_eq!(CgroupLimits::read(&cgroup).pids, "max", "created without limits");

    let mut request = with_mask(id, &["resources", "labels"]);
    request.resources = Some(Resources { cpu_millis: 500, memory_bytes: 256 << 20, pids_limit: 77 });
    request.labels = [("team".to_owned(), "red".to_owned())].into();
    let updated = client.update_workspace(request).await.unwrap().into_inner();
    assert!(!updated.restarted && updated.version.is_none());
    let workspace = updated.workspace.unwrap();
    assert_eq!(workspace.init_pid, created.init_pid, "the task was not restarted");
    assert_eq!(workspace.resources.unwrap().memory_bytes, 256 << 20);
    let limits = CgroupLimits::read(&cgroup);
    assert_eq!(
        (
            limits.memory_bytes.as_str(),
            limits.cpu_quota_micros.as_str(),
            limits.cpu_period_micros.as_str(),
            limits.pids.as_str()
        ),
        ("268435456", "50000", "100000", "77"),
        "the kernel holds the new limits"
    );
    assert_eq!(container_labels(&testbed, &ns, id)["team"], "red");
    let selected = client
        .list_workspaces(ListWorkspacesRequest { label_selector: "team=red".to_owned(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(selected.workspaces.iter().map(|w| w.workspace_id.as_str()).collect::<Vec<_>>(), [id]);

    // A stop and start keep them (they are in the stored spec).
    client.stop_workspace(StopWorkspaceRequest { workspace_id: id.to_owned(), timeout: None }).await.unwrap();
    client.start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap();
    assert_eq!(CgroupLimits::read(&cgroup).pids, "77");
    assert_eq!(CgroupLimits::read(&cgroup).memory_bytes, "268435456");

    // Below what the workspace uses: refused, nothing changes.
    testbed.exec(&ns, id, &["sh", "-c", "head -c 40000000 /dev/zero > /dev/shm/ballast"]);
    let mut request = with_mask(id, &["resources"]);
    request.resources = Some(Resources { memory_bytes: 8 << 20, ..Default::default() });
    let status = client.update_workspace(request).await.unwrap_err();
    assert_eq!(
        (status.code(), error_reason(&status).as_deref()),
        (Code::FailedPrecondition, Some("MEMORY_LIMIT_BELOW_USAGE")),
        "{status:?}"
    );
    assert!(status.message().contains("bytes of memory"), "{status:?}");
    assert_eq!(CgroupLimits::read(&cgroup).memory_bytes, "268435456");
    testbed.exec(&ns, id, &["rm", "-f", "/dev/shm/ballast"]);

    // Lifting the limits lifts them in the kernel.
    let mut request = with_mask(id, &["resources"]);
    request.resources = Some(Resources::default());
    client.update_workspace(request).await.unwrap();
    let limits = CgroupLimits::read(&cgroup);
    assert_eq!(limits.pids, "max");
    assert!(limits.cpu_quota_micros == "max" || limits.cpu_quota_micros == "-1", "{limits:?}");
    assert!(limits.memory_bytes == "max" || limits.memory_bytes.len() >= 16, "{limits:?}");

    // A new environment: one restart, every process sees it.
    let before = get(&mut client, id).await.init_pid;
    let mut request = with_mask(id, &["env"]);
    request.env = [("GREETING".to_owned(), "hello from update".to_owned())].into();
    let updated = client.update_workspace(request).await.unwrap().into_inner();
    assert!(updated.restarted);
    let workspace = updated.workspace.unwrap();
    assert_eq!(workspace.state(), WorkspaceState::Running);
    assert_ne!(workspace.init_pid, before);
    assert_eq!(testbed.exec(&ns, id, &["sh", "-c", "echo $GREETING"]), "hello from update\n");
    assert_eq!(container_labels(&testbed, &ns, id)["team"], "red", "the re-created container keeps its labels");
    assert_eq!(CgroupLimits::read(&cgroup).pids, "max");

    let mut request = with_mask(id, &["cdi_devices"]);
    request.cdi_devices = vec!["berth.test/none=0".to_owned()];
    let status = client.update_workspace(request).await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status).as_deref()), (Code::NotFound, Some("CDI_DEVICE_NOT_FOUND")));
    delete_workspace(&mut client, id).await;
}
