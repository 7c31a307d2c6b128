//! CDI devices on the real containerd, from a fake spec in a temporary `--cdi-spec-dir`: a char
//! device node with /dev/null's numbers, one with an unassigned major (whose only way in is the
//! cgroup rule CDI adds), an env var and a read-only bind mount, all visible and usable inside;
//! kept across stop/start, a berth restart and a rebuilt container. An unknown device fails the
//! create with CDI_DEVICE_NOT_FOUND and nothing made; ListDevices and `berth devices` list the
//! fake device next to a malformed spec file named by path.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_api::v1::create_workspace_response::Event as CreateEvent;
use berth_api::v1::process_event::Event as ProcessEvent;
use berth_api::v1::process_event::data::Output;
use berth_api::v1::process_service_client::ProcessServiceClient;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateWorkspaceRequest, DeleteWorkspaceRequest, GetWorkspaceRequest, ListDevicesRequest, ProcessConfig,
    StartRequest, StartWorkspaceRequest, StopWorkspaceRequest, Workspace, WorkspaceState,
};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

type Client = WorkspaceServiceClient<Channel>;

const FAKE0: &str = "berth.test/fake=fake0";
const FAKE1: &str = "berth.test/fake=fake1";
/// A major of the "local/experimental use" range (240-254) no driver of this host has: the
/// device node opens only if the cgroup allows it, and then fails with ENXIO, not EPERM.
const UNASSIGNED_MAJOR: u64 = 240;

/// A spec directory with the fake spec, a malformed spec next to it, and the directory the
/// fake device bind-mounts; removed on drop.
struct FakeSpecs {
    root: PathBuf,
    spec_dir: PathBuf,
    spec_path: PathBuf,
    broken_path: PathBuf,
}

impl FakeSpecs {
    fn install(testbed: &Testbed) -> Self {
        let root = testbed.dir.join("e2e").join(format!("cdi-{}", testbed.unique_namespace()));
        let spec_dir = root.join("cdi");
        let shared = root.join("shared");
        std::fs::create_dir_all(&spec_dir).unwrap();
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("hello.txt"), "hello from the host\n").unwrap();
        let (major, minor) = device_numbers(Path::new("/dev/null"));
        let spec = serde_json::json!({
            "cdiVersion": "0.6.0",
            "kind": "berth.test/fake",
            "devices": [
                {
                    "name": "fake0",
                    "containerEdits": {
                        "deviceNodes": [{ "path": "/dev/fake0", "type": "c", "major": major, "minor": minor, "permissions": "rw" }],
                        "env": ["FAKE_DEVICE=fake0"],
                        "mounts": [{
                            "hostPath": shared,
                            "containerPath": "/opt/fake",
                            "options": ["ro", "nosuid", "nodev", "bind"],
                        }],
                    },
                },
                {
                    "name": "fake1",
                    "containerEdits": {
                        "deviceNodes": [{ "path": "/dev/fake1", "type": "c", "major": UNASSIGNED_MAJOR, "minor": 0 }],
                    },
                },
            ],
        });
        let spec_path = spec_dir.join("fake.json");
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let broken_path = spec_dir.join("broken.yaml");
        std::fs::write(&broken_path, "cdiVersion: [").unwrap();
        Self { root, spec_dir, spec_path, broken_path }
    }

    fn server_args(&self) -> Vec<String> {
        vec!["--cdi-spec-dir".to_owned(), self.spec_dir.display().to_string()]
    }

    fn start_server(&self, testbed: &Testbed) -> BerthServer {
        BerthServer::start_with(testbed, ServerOptions { extra_args: self.server_args(), ..ServerOptions::default() })
    }
}

impl Drop for FakeSpecs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The major and minor numbers of a device node (glibc's encoding of `st_rdev`).
fn device_numbers(path: &Path) -> (u64, u64) {
    let rdev = std::fs::metadata(path).unwrap().rdev();
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

fn create_request(id: &str, image: &str, devices: &[&str]) -> CreateWorkspaceRequest {
    CreateWorkspaceRequest {
        workspace_id: id.to_owned(),
        image: image.to_owned(),
        cdi_devices: devices.iter().map(|device| (*device).to_owned()).collect(),
        ..Default::default()
    }
}

/// Runs a create to its end: the ready workspace, or the status that ended it.
async fn create(client: &mut Client, request: CreateWorkspaceRequest) -> Result<Workspace, tonic::Status> {
    let mut stream = client.create_workspace(request).await?.into_inner();
    let mut ready = None;
    while let Some(item) = stream.next().await {
        if let Some(CreateEvent::Ready(event)) = item?.event {
            ready = event.workspace;
        }
    }
    Ok(ready.expect("the create ended with ready"))
}

/// Runs `sh -c script` through ProcessService (as a bot would); returns stdout and stderr, and
/// asserts it exited 0.
async fn sh(server: &BerthServer, id: &str, script: &str) -> (String, String) {
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
    let (mut stdout, mut stderr, mut exit_code) = (Vec::new(), Vec::new(), None);
    while let Some(item) = stream.next().await {
        match item.unwrap().event.and_then(|event| event.event) {
            Some(ProcessEvent::Data(data)) => match data.output {
                Some(Output::Stdout(bytes)) => stdout.extend_from_slice(&bytes),
                Some(Output::Stderr(bytes)) => stderr.extend_from_slice(&bytes),
                _ => {}
            },
            Some(ProcessEvent::End(end)) => exit_code = Some(end.exit_code),
            _ => {}
        }
    }
    let (stdout, stderr) =
        (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned());
    assert_eq!(exit_code, Some(0), "{script} in {id}: {stdout}{stderr}");
    (stdout, stderr)
}

/// What a bot sees of both devices: the nodes, the variable, the read-only mount, a write to
/// fake0, and fake1 reaching the (absent) driver instead of being refused by the cgroup.
async fn assert_devices_inside(server: &BerthServer, id: &str, when: &str) {
    let (null_major, null_minor) = device_numbers(Path::new("/dev/null"));
    let script = "stat -c '%F %t:%T' /dev/fake0 /dev/fake1; echo \"FAKE_DEVICE=$FAKE_DEVICE\"; cat /opt/fake/hello.txt; \
                  echo ping > /dev/fake0 && echo written; \
                  if touch /opt/fake/new 2>/dev/null; then echo writable; else echo read-only; fi; \
                  cat /dev/fake1 2>&1 || true";
    let (stdout, _) = sh(server, id, script).await;
    let expected = format!(
        "character special file {null_major:x}:{null_minor:x}\ncharacter special file {UNASSIGNED_MAJOR:x}:0\n\
         FAKE_DEVICE=fake0\nhello from the host\nwritten\nread-only\n"
    );
    assert!(stdout.starts_with(&expected), "{when}: got\n{stdout}\nwanted it to start with\n{expected}");
    let fake1 = &stdout[expected.len()..];
    assert!(fake1.contains("No such device or address"), "{when}: /dev/fake1 is allowed by the cgroup: {fake1}");
}

/// The container's stored spec (what every task of it starts from) holds the nodes and their
/// cgroup allow rules.
fn assert_stored_spec_has_devices(testbed: &Testbed, namespace: &str, id: &str) {
    let info: serde_json::Value = serde_json::from_str(&testbed.ctr(namespace, &["containers", "info", id])).unwrap();
    let linux = &info["Spec"]["linux"];
    let paths: Vec<&str> =
        linux["devices"].as_array().unwrap().iter().map(|device| device["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/dev/fake0", "/dev/fake1"]);
    let (major, minor) = device_numbers(Path::new("/dev/null"));
    let rules = linux["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules[0], serde_json::json!({"allow": false, "access": "rwm"}), "deny-all stays first: {rules:?}");
    let allowed: Vec<(u64, u64, &str)> = rules
        .iter()
        .filter(|rule| rule["allow"] == true)
        .map(|rule| {
            (rule["major"].as_u64().unwrap(), rule["minor"].as_u64().unwrap(), rule["access"].as_str().unwrap())
        })
        .collect();
    assert_eq!(allowed, [(major, minor, "rw"), (UNASSIGNED_MAJOR, 0, "rwm")]);
}

async fn get(client: &mut Client, id: &str) -> Workspace {
    let request = GetWorkspaceRequest { workspace_id: id.to_owned() };
    client.get_workspace(request).await.unwrap().into_inner().workspace.unwrap()
}

async fn stop_and_start(client: &mut Client, id: &str) {
    let stop = StopWorkspaceRequest {
        workspace_id: id.to_owned(),
        timeout: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
    };
    let stopped = client.stop_workspace(stop).await.unwrap().into_inner().workspace.unwrap();
    assert_eq!(stopped.state(), WorkspaceState::Stopped);
    let started = client.start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap();
    assert_eq!(started.into_inner().workspace.unwrap().state(), WorkspaceState::Running);
}

/// `berth ARGS --server URL`: exit status, stdout, stderr.
fn cli(testbed: &Testbed, server: &BerthServer, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(&testbed.berth_bin).args(args).arg("--server").arg(server.url()).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn list_devices_offers_the_fake_devices_and_names_the_malformed_spec_file() {
    let testbed = Testbed::from_env();
    let specs = FakeSpecs::install(&testbed);
    let server = specs.start_server(&testbed);
    let mut client = Client::new(server.channel().await);

    let listed = client.list_devices(ListDevicesRequest {}).await.unwrap().into_inner();

    let devices: Vec<(&str, &str, &str, &str)> = listed
        .devices
        .iter()
        .map(|device| {
            (device.name.as_str(), device.vendor.as_str(), device.device_class.as_str(), device.spec_path.as_str())
        })
        .collect();
    let spec_path = specs.spec_path.display().to_string();
    assert_eq!(
        devices,
        [(FAKE0, "berth.test", "fake", spec_path.as_str()), (FAKE1, "berth.test", "fake", spec_path.as_str())]
    );
    assert_eq!(listed.spec_file_errors.len(), 1, "{:?}", listed.spec_file_errors);
    assert_eq!(listed.spec_file_errors[0].path, specs.broken_path.display().to_string());
    assert!(listed.spec_file_errors[0].error.contains("parse spec file failed"), "{:?}", listed.spec_file_errors);
    assert_eq!(listed.spec_dirs, [specs.spec_dir.display().to_string()]);
    let log = server.log_text();
    assert!(
        log.contains("CDI spec file skipped") && log.contains(&specs.broken_path.display().to_string()),
        "the bad file is logged by name:\n{log}"
    );

    let (ok, stdout, stderr) = cli(&testbed, &server, &["devices"]);
    assert!(ok, "{stderr}");
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(rows[0].starts_with("NAME") && rows[1].starts_with(FAKE0) && rows[2].starts_with(FAKE1), "{stdout}");
    assert!(rows[1].ends_with(&spec_path), "{stdout}");
    assert!(
        stderr.contains(&format!("CDI spec {} skipped: parse spec file failed", specs.broken_path.display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn fake_devices_are_usable_inside_and_survive_stop_start_a_restart_and_a_rebuilt_container() {
    let testbed = Testbed::from_env();
    let specs = FakeSpecs::install(&testbed);
    let server = specs.start_server(&testbed);
    let mut client = Client::new(server.channel().await);
    let id = "cdi-fake";

    let request = create_request(id, &testbed.image("BUSYBOX"), &[FAKE1, &format!(" {FAKE0}"), FAKE0]);
    let workspace = create(&mut client, request).await.unwrap();
    assert_eq!(workspace.cdi_devices, [FAKE0, FAKE1], "trimmed, sorted and deduplicated");
    assert_devices_inside(&server, id, "after create").await;
    assert_stored_spec_has_devices(&testbed, &server.namespace, id);
    let (ok, stdout, stderr) = cli(&testbed, &server, &["get", id]);
    assert!(ok && stdout.contains(&format!("DEVICES        {FAKE0},{FAKE1}")), "{stdout}{stderr}");

    stop_and_start(&mut client, id).await;
    assert_devices_inside(&server, id, "after stop and start").await;

    let server = server.restart_with_args(&testbed, false, specs.server_args());
    server.wait_serving(Duration::from_secs(30)).await;
    let mut client = Client::new(server.channel().await);
    assert_eq!(get(&mut client, id).await.cdi_devices, [FAKE0, FAKE1]);
    assert_devices_inside(&server, id, "after a berth restart").await;
    stop_and_start(&mut client, id).await;
    assert_devices_inside(&server, id, "after a stop and start by the restarted berth").await;

    // The container removed behind berth's back: StartWorkspace rebuilds it from the record.
    let stop = StopWorkspaceRequest {
        workspace_id: id.to_owned(),
        timeout: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
    };
    client.stop_workspace(stop).await.unwrap();
    testbed.ctr(&server.namespace, &["containers", "rm", id]);
    let started = client.start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap();
    assert_eq!(started.into_inner().workspace.unwrap().state(), WorkspaceState::Running);
    assert_devices_inside(&server, id, "after the container was rebuilt").await;
    assert_stored_spec_has_devices(&testbed, &server.namespace, id);

    client
        .delete_workspace(DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data: false })
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unknown_device_fails_the_create_with_cdi_device_not_found_and_nothing_made() {
    let testbed = Testbed::from_env();
    let specs = FakeSpecs::install(&testbed);
    let server = specs.start_server(&testbed);
    let mut client = Client::new(server.channel().await);
    let ns = server.namespace.clone();
    let listing = |kind: &str| testbed.ctr(&ns, &[kind, "ls"]);
    let before = (listing("containers"), listing("snapshots"), listing("images"));
    let id = "cdi-unknown";

    let request = create_request(id, &testbed.image("BUSYBOX"), &[FAKE0, "berth.test/fake=nope", "other.org/gpu=0"]);
    let status = create(&mut client, request).await.unwrap_err();

    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(error_reason(&status).as_deref(), Some("CDI_DEVICE_NOT_FOUND"));
    let message = status.message();
    assert!(
        message.starts_with("CDI devices \"berth.test/fake=nope\", \"other.org/gpu=0\" do not resolve"),
        "every unresolvable device is named, the resolvable one is not: {message}"
    );
    assert!(message.contains(&format!("the devices it offers are {FAKE0}, {FAKE1};")), "{message}");
    assert!(message.contains(&specs.broken_path.display().to_string()), "{message}");
    assert_eq!((listing("containers"), listing("snapshots"), listing("images")), before, "nothing pulled or made");
    let missing = client.get_workspace(GetWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap_err();
    assert_eq!(error_reason(&missing).as_deref(), Some("WORKSPACE_NOT_FOUND"));

    let (ok, _, stderr) =
        cli(&testbed, &server, &["create", id, "--image", &testbed.image("BUSYBOX"), "--device", "nope"]);
    assert!(!ok);
    assert!(
        stderr.starts_with("berth: NOT_FOUND CDI_DEVICE_NOT_FOUND: CDI devices \"nope\" (not a qualified name"),
        "{stderr}"
    );
    assert_eq!((listing("containers"), listing("snapshots"), listing("images")), before, "nothing pulled or made");
}

#[tokio::test]
async fn update_workspace_attaches_and_detaches_devices_with_one_restart_and_refuses_unknown_ones() {
    use berth_api::v1::UpdateWorkspaceRequest;
    let testbed = Testbed::from_env();
    let specs = FakeSpecs::install(&testbed);
    let server = specs.start_server(&testbed);
    let mut client = Client::new(server.channel().await);
    let id = "cdi-update";
    let created = create(&mut client, create_request(id, &testbed.image("BUSYBOX"), &[])).await.unwrap();
    let update = |devices: &[&str]| UpdateWorkspaceRequest {
        workspace_id: id.to_owned(),
        update_mask: Some(prost_types::FieldMask { paths: vec!["cdi_devices".to_owned()] }),
        cdi_devices: devices.iter().map(|device| (*device).to_owned()).collect(),
        ..Default::default()
    };

    let status = client.update_workspace(update(&[FAKE0, "berth.test/fake=nope"])).await.unwrap_err();
    assert_eq!(
        (status.code(), berth_e2e::error_reason(&status).as_deref()),
        (tonic::Code::NotFound, Some("CDI_DEVICE_NOT_FOUND")),
        "{status:?}"
    );
    let unchanged = get(&mut client, id).await;
    assert_eq!((unchanged.init_pid, unchanged.cdi_devices.len()), (created.init_pid, 0), "nothing changed");

    let updated = client.update_workspace(update(&[FAKE1, FAKE0])).await.unwrap().into_inner();
    assert!(updated.restarted);
    let workspace = updated.workspace.unwrap();
    assert_eq!(workspace.cdi_devices, [FAKE0, FAKE1]);
    assert_ne!(workspace.init_pid, created.init_pid);
    assert_devices_inside(&server, id, "after UpdateWorkspace attached them").await;
    assert_stored_spec_has_devices(&testbed, &server.namespace, id);

    let updated = client.update_workspace(update(&[])).await.unwrap().into_inner();
    assert!(updated.restarted && updated.workspace.unwrap().cdi_devices.is_empty());
    let (stdout, _) = sh(&server, id, "ls /dev/fake0 2>&1; echo \"[$FAKE_DEVICE]\"").await;
    assert!(stdout.contains("No such file") && stdout.contains("[]"), "detached: {stdout}");
    client
        .delete_workspace(DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data: false })
        .await
        .unwrap();
}
