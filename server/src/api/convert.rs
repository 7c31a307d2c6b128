//! Conversions between domain records and `berth.workspace.v1` messages.

use berth_api::v1 as pb;
use time::OffsetDateTime;

use crate::error::{Error, Reason};
use crate::model::{
    DesiredState, NetworkMode, NetworkPolicy, Resources, VersionReason, VersionRecord, WorkspaceInfo, WorkspaceState,
};
use crate::runtime::{LayerState, PullEvent, PullPolicy};
use crate::workspace::{
    CreateEvent, CreateRequest, RequestedPolicy, RestoreTarget, SnapshotOrigin, SnapshotView, WorkspaceUpdate,
};

/// A `google.protobuf.Timestamp` for a domain time.
pub fn timestamp(time: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: time.unix_timestamp(), nanos: time.nanosecond() as i32 }
}

pub(super) fn state(state: WorkspaceState) -> pb::WorkspaceState {
    match state {
        WorkspaceState::Creating => pb::WorkspaceState::Creating,
        WorkspaceState::Running => pb::WorkspaceState::Running,
        WorkspaceState::Stopped => pb::WorkspaceState::Stopped,
        WorkspaceState::Failed => pb::WorkspaceState::Failed,
        WorkspaceState::Deleting => pb::WorkspaceState::Deleting,
    }
}

fn desired_state(state: DesiredState) -> pb::DesiredState {
    match state {
        DesiredState::Running => pb::DesiredState::Running,
        DesiredState::Stopped => pb::DesiredState::Stopped,
    }
}

/// The proto form of resource limits.
pub fn resources(resources: Resources) -> pb::Resources {
    pb::Resources {
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        pids_limit: resources.pids_limit,
    }
}

/// The proto form of a workspace.
pub fn workspace(info: WorkspaceInfo) -> pb::Workspace {
    let record = info.record;
    let attachment = info.network.as_ref();
    let network = pb::WorkspaceNetwork {
        policy: Some(network_policy(&record.spec.network)),
        address: attachment.map(|a| a.address.to_string()).unwrap_or_default(),
        prefix_length: attachment.map_or(0, |a| u32::from(a.prefix_length)),
        gateway: attachment.map(|a| a.gateway.to_string()).unwrap_or_default(),
        mac_address: attachment.map(|a| a.mac_address.clone()).unwrap_or_default(),
        dns_servers: info.dns_servers.iter().map(ToString::to_string).collect(),
    };
    pb::Workspace {
        network: Some(network),
        workspace_id: record.id.as_str().to_owned(),
        state: state(record.state).into(),
        desired_state: desired_state(record.desired_state).into(),
        image: record.spec.image,
        image_digest: record.image_digest,
        container_id: record.id.as_str().to_owned(),
        namespace: info.namespace,
        snapshotter: info.snapshotter,
        runtime: info.runtime,
        init_pid: info.init_pid,
        process_count: info.process_count,
        cdi_devices: record.spec.cdi_devices,
        resources: Some(resources(record.spec.resources)),
        labels: record.spec.labels.into_iter().collect(),
        env: record.spec.env.into_iter().collect(),
        has_preserved_data: info.has_preserved_data,
        current_version: record.current_version,
        create_time: Some(timestamp(record.create_time)),
        update_time: Some(timestamp(record.update_time)),
        last_start_time: record.last_start_time.map(timestamp),
        last_stop_time: record.last_stop_time.map(timestamp),
        failure_reason: record.failure_reason,
        failure_message: record.failure_message,
        data_path: crate::data::DATA_PATH.to_owned(),
        host_data_path: info.host_data_path.map(|path| path.display().to_string()).unwrap_or_default(),
        restart_status: info.restart_status.map(|status| pb::RestartStatus {
            restart_count: status.restart_count,
            next_restart_time: status.next_restart_time.map(timestamp),
            last_exit_code: status.last_exit_code,
            last_exit_time: Some(timestamp(status.last_exit_time)),
        }),
    }
}

/// The proto form of the host's CDI devices.
pub fn devices(catalog: crate::devices::Catalog) -> pb::ListDevicesResponse {
    let path = |path: std::path::PathBuf| path.display().to_string();
    pb::ListDevicesResponse {
        devices: catalog
            .devices
            .into_iter()
            .map(|device| pb::CdiDevice {
                name: device.name,
                vendor: device.vendor,
                device_class: device.class,
                spec_path: path(device.spec_path),
            })
            .collect(),
        spec_file_errors: catalog
            .spec_file_errors
            .into_iter()
            .map(|failed| pb::CdiSpecFileError { path: path(failed.path), error: failed.error })
            .collect(),
        spec_dirs: catalog.spec_dirs.into_iter().map(path).collect(),
    }
}

fn pull_policy(policy: pb::PullPolicy) -> PullPolicy {
    match policy {
        pb::PullPolicy::Unspecified | pb::PullPolicy::IfNotPresent => PullPolicy::IfNotPresent,
        pb::PullPolicy::Always => PullPolicy::Always,
        pb::PullPolicy::Never => PullPolicy::Never,
    }
}

/// The fields of UpdateWorkspaceRequest its `update_mask` may name.
const UPDATE_PATHS: [&str; 6] = ["image", "resources", "labels", "env", "cdi_devices", "network_policy"];

/// The domain form of an UpdateWorkspaceRequest: the fields its mask names.
pub fn workspace_update(request: pb::UpdateWorkspaceRequest) -> Result<WorkspaceUpdate, Error> {
    let paths = request.update_mask.as_ref().map(|mask| mask.paths.clone()).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::new(
            Reason::InvalidArgument,
            format!("update_mask is empty; name the fields to change, among {}", UPDATE_PATHS.join(", ")),
        ));
    }
    if let Some(unknown) = paths.iter().find(|path| !UPDATE_PATHS.contains(&path.as_str())) {
        return Err(Error::new(
            Reason::InvalidArgument,
            format!(
                "update_mask names {unknown:?}, which UpdateWorkspace cannot change; use {}",
                UPDATE_PATHS.join(", ")
            ),
        )
        .with_metadata("path", unknown.clone()));
    }
    let named = |field: &str| paths.iter().any(|path| path == field);
    let policy = pull_policy(request.pull_policy());
    Ok(WorkspaceUpdate {
        image: named("image").then(|| (request.image.clone(), policy)),
        resources: named("resources").then(|| resources_of(request.resources.unwrap_or_default())),
        labels: named("labels").then(|| request.labels.clone().into_iter().collect()),
        env: named("env").then(|| request.env.clone().into_iter().collect()),
        cdi_devices: named("cdi_devices").then(|| request.cdi_devices.clone()),
        network_policy: named("network_policy").then(|| requested_policy(request.network_policy.unwrap_or_default())),
    })
}

/// A policy as the caller sent it (validated by the domain).
fn requested_policy(policy: pb::NetworkPolicy) -> RequestedPolicy {
    let mode = match policy.mode() {
        pb::NetworkMode::Unspecified => None,
        pb::NetworkMode::Open => Some(NetworkMode::Open),
        pb::NetworkMode::None => Some(NetworkMode::None),
        pb::NetworkMode::Allowlist => Some(NetworkMode::Allowlist),
        pb::NetworkMode::Denylist => Some(NetworkMode::Denylist),
    };
    RequestedPolicy { mode, cidrs: policy.cidrs }
}

fn network_policy(policy: &NetworkPolicy) -> pb::NetworkPolicy {
    let mode = match policy.mode {
        NetworkMode::Open => pb::NetworkMode::Open,
        NetworkMode::None => pb::NetworkMode::None,
        NetworkMode::Allowlist => pb::NetworkMode::Allowlist,
        NetworkMode::Denylist => pb::NetworkMode::Denylist,
    };
    pb::NetworkPolicy { mode: mode.into(), cidrs: policy.cidrs.iter().map(ToString::to_string).collect() }
}

fn resources_of(resources: pb::Resources) -> Resources {
    Resources {
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        pids_limit: resources.pids_limit,
    }
}

/// The domain form of a create request.
pub fn create_request(request: pb::CreateWorkspaceRequest) -> CreateRequest {
    let resources = request.resources.unwrap_or_default();
    let pull_policy = pull_policy(request.pull_policy());
    CreateRequest {
        workspace_id: request.workspace_id,
        image: request.image,
        labels: request.labels.into_iter().collect(),
        env: request.env.into_iter().collect(),
        resources: resources_of(resources),
        cdi_devices: request.cdi_devices,
        restore_data: request.restore_data,
        request_id: request.request_id,
        pull_policy,
        network_policy: request.network_policy.map(requested_policy).unwrap_or_default(),
    }
}

fn layer_state(state: LayerState) -> pb::LayerState {
    match state {
        LayerState::Waiting => pb::LayerState::Waiting,
        LayerState::Downloading => pb::LayerState::Downloading,
        LayerState::Verifying => pb::LayerState::Verifying,
        LayerState::Exists => pb::LayerState::Exists,
        LayerState::Done => pb::LayerState::Done,
    }
}

/// The proto form of a create event.
pub fn create_event(event: CreateEvent) -> pb::CreateWorkspaceResponse {
    use pb::create_workspace_response as response;
    let event = match event {
        CreateEvent::Pull(PullEvent::Pulling { image, digest, total_layers, total_bytes }) => {
            response::Event::Pulling(response::Pulling { image, digest, total_layers, total_bytes })
        }
        CreateEvent::Pull(PullEvent::Progress { layers, offset_bytes, total_bytes }) => {
            response::Event::PullProgress(response::PullProgress {
                layers: layers
                    .into_iter()
                    .map(|layer| pb::LayerProgress {
                        digest: layer.digest,
                        offset: layer.offset,
                        total: layer.total,
                        state: layer_state(layer.state).into(),
                    })
                    .collect(),
                offset_bytes,
                total_bytes,
            })
        }
        CreateEvent::Pull(PullEvent::Unpacking { layers_done, total_layers }) => {
            response::Event::Unpacking(response::Unpacking { layers_done, total_layers })
        }
        CreateEvent::Creating => response::Event::Creating(response::Creating {}),
        CreateEvent::Restoring { bytes_done, total_bytes } => {
            response::Event::Restoring(response::Restoring { bytes_done, total_bytes })
        }
        CreateEvent::Ready(info) => response::Event::Ready(response::Ready { workspace: Some(workspace(*info)) }),
    };
    pb::CreateWorkspaceResponse { event: Some(event) }
}

/// A `google.protobuf.Duration` as a std duration; negative ones are INVALID_ARGUMENT.
pub fn duration(duration: prost_types::Duration) -> Result<std::time::Duration, Error> {
    std::time::Duration::try_from(duration).map_err(|_| {
        Error::new(Reason::InvalidArgument, "timeout must not be negative; pass a positive duration or leave it unset")
    })
}

/// The proto form of a lineage entry.
pub fn snapshot(view: SnapshotView) -> pb::Snapshot {
    let source = match view.origin {
        SnapshotOrigin::Image => pb::SnapshotSource::Image,
        SnapshotOrigin::User => pb::SnapshotSource::User,
        SnapshotOrigin::System => pb::SnapshotSource::System,
    };
    pb::Snapshot {
        name: view.name,
        workspace_id: view.workspace_id,
        parent: view.parent,
        source: source.into(),
        version: view.version,
        labels: view.labels.into_iter().collect(),
        size_bytes: i64::try_from(view.size_bytes).unwrap_or(i64::MAX),
        create_time: view.create_time.map(timestamp),
    }
}

/// The proto form of a version.
pub fn version(version: VersionRecord) -> pb::Version {
    let reason = match version.reason {
        VersionReason::Create => pb::VersionReason::Create,
        VersionReason::Snapshot => pb::VersionReason::Snapshot,
        VersionReason::Restore => pb::VersionReason::Restore,
        VersionReason::ImageChange => pb::VersionReason::ImageChange,
    };
    pb::Version {
        version: version.version,
        reason: reason.into(),
        snapshot_name: version.snapshot_name,
        create_time: Some(timestamp(version.create_time)),
        image: version.image,
        image_digest: version.image_digest,
    }
}

/// The domain form of RestoreSnapshot's target; a missing one is INVALID_ARGUMENT.
pub fn restore_target(target: Option<pb::restore_snapshot_request::Target>) -> Result<RestoreTarget, Error> {
    use pb::restore_snapshot_request::Target;
    match target {
        Some(Target::SnapshotName(name)) => Ok(RestoreTarget::Name(name)),
        Some(Target::Version(version)) => Ok(RestoreTarget::Version(version)),
        None => {
            Err(Error::new(Reason::InvalidArgument, "the snapshot to restore is missing; set snapshot_name or version"))
        }
    }
}

/// The proto form of a metrics sample.
pub fn workspace_metrics(sample: crate::metrics::Sample) -> pb::WorkspaceMetrics {
    pb::WorkspaceMetrics {
        sample_time: Some(timestamp(sample.sample_time)),
        supported: sample.unsupported.is_none(),
        unsupported_reason: sample.unsupported.unwrap_or_default(),
        cpu: sample.cpu.map(|cpu| pb::CpuMetrics {
            percent_of_one_core: cpu.percent_of_one_core,
            usage_nanos: cpu.stats.usage_nanos,
            user_nanos: cpu.stats.user_nanos,
            system_nanos: cpu.stats.system_nanos,
            limit_millis: cpu.limit_millis,
            throttled_nanos: cpu.stats.throttled_nanos,
        }),
        memory: sample.memory.map(|memory| pb::MemoryMetrics {
            usage_bytes: memory.usage_bytes,
            working_set_bytes: memory.working_set_bytes,
            limit_bytes: memory.limit_bytes,
            percent: crate::metrics::memory_percent(&memory),
            oom_kill_count: memory.oom_kills,
        }),
        pids: sample.pids.map(|pids| pb::PidsMetrics { current: pids.current, limit: pids.limit }),
        storage: sample.storage.map(|storage| pb::StorageMetrics {
            rootfs_bytes: storage.rootfs_bytes,
            rootfs_inodes: storage.rootfs_inodes,
            data_bytes: storage.data_bytes,
            sample_time: Some(timestamp(storage.sample_time)),
        }),
    }
}

/// WatchMetrics' `interval`: unset means the default; negative or out of the documented range
/// is INVALID_ARGUMENT.
pub fn watch_interval(interval: Option<prost_types::Duration>) -> Result<std::time::Duration, Error> {
    let interval = interval
        .map(|interval| {
            std::time::Duration::try_from(interval).map_err(|_| {
                Error::new(
                    Reason::InvalidArgument,
                    "interval must not be negative; pass 100ms to 1h, or leave it unset for 1s",
                )
            })
        })
        .transpose()?;
    crate::metrics::check_watch_interval(interval)
}
