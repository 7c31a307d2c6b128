//! Conversions between domain records and `berth.workspace.v1` messages.

use berth_api::v1 as pb;
use time::OffsetDateTime;

use crate::model::{DesiredState, Resources, WorkspaceInfo, WorkspaceState};

/// A `google.protobuf.Timestamp` for a domain time.
pub fn timestamp(time: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: time.unix_timestamp(), nanos: time.nanosecond() as i32 }
}

fn state(state: WorkspaceState) -> pb::WorkspaceState {
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
    pb::Workspace {
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
    }
}
