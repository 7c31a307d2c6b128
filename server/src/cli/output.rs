//! Human tables and JSON (proto3 JSON names: lowerCamelCase keys, enum value names, RFC 3339
//! times) for workspaces.

use berth_api::v1 as pb;
use serde_json::{Value, json};

use super::OutputFormat;

fn time_text(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    let timestamp = timestamp?;
    let time = time::OffsetDateTime::from_unix_timestamp(timestamp.seconds).ok()?
        + time::Duration::nanoseconds(i64::from(timestamp.nanos));
    time.format(&time::format_description::well_known::Rfc3339).ok()
}

fn state_name(workspace: &pb::Workspace) -> &'static str {
    workspace.state().as_str_name().trim_start_matches("WORKSPACE_STATE_")
}

/// The proto3 JSON form of a workspace.
pub fn workspace_json(workspace: &pb::Workspace) -> Value {
    let resources = workspace.resources.unwrap_or_default();
    json!({
        "workspaceId": workspace.workspace_id,
        "state": workspace.state().as_str_name(),
        "desiredState": workspace.desired_state().as_str_name(),
        "image": workspace.image,
        "imageDigest": workspace.image_digest,
        "containerId": workspace.container_id,
        "namespace": workspace.namespace,
        "snapshotter": workspace.snapshotter,
        "runtime": workspace.runtime,
        "initPid": workspace.init_pid,
        "processCount": workspace.process_count,
        "cdiDevices": workspace.cdi_devices,
        "resources": {
            "cpuMillis": resources.cpu_millis.to_string(),
            "memoryBytes": resources.memory_bytes.to_string(),
            "pidsLimit": resources.pids_limit.to_string(),
        },
        "labels": workspace.labels,
        "env": workspace.env,
        "hasPreservedData": workspace.has_preserved_data,
        "currentVersion": workspace.current_version.to_string(),
        "createTime": time_text(workspace.create_time.as_ref()),
        "updateTime": time_text(workspace.update_time.as_ref()),
        "lastStartTime": time_text(workspace.last_start_time.as_ref()),
        "lastStopTime": time_text(workspace.last_stop_time.as_ref()),
        "failureReason": workspace.failure_reason,
        "failureMessage": workspace.failure_message,
    })
}

/// `berth get`.
pub fn print_workspace(workspace: &pb::Workspace, format: OutputFormat) {
    if format == OutputFormat::Json {
        println!("{:#}", workspace_json(workspace));
        return;
    }
    let resources = workspace.resources.unwrap_or_default();
    let limit = |value: i64, unit: &str| if value == 0 { "unlimited".to_owned() } else { format!("{value}{unit}") };
    let mut labels: Vec<_> = workspace.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let rows = [
        ("ID", workspace.workspace_id.clone()),
        ("STATE", state_name(workspace).to_owned()),
        ("DESIRED", workspace.desired_state().as_str_name().trim_start_matches("DESIRED_STATE_").to_owned()),
        ("IMAGE", workspace.image.clone()),
        ("DIGEST", workspace.image_digest.clone()),
        ("INIT PID", workspace.init_pid.to_string()),
        ("PROCESSES", workspace.process_count.to_string()),
        ("CPU", limit(resources.cpu_millis, "m")),
        ("MEMORY", limit(resources.memory_bytes, " bytes")),
        ("PIDS", limit(resources.pids_limit, "")),
        ("LABELS", labels.join(",")),
        ("PRESERVED DATA", if workspace.has_preserved_data { "yes" } else { "no" }.to_owned()),
        ("VERSION", workspace.current_version.to_string()),
        ("NAMESPACE", workspace.namespace.clone()),
        ("CREATED", time_text(workspace.create_time.as_ref()).unwrap_or_default()),
        ("LAST STARTED", time_text(workspace.last_start_time.as_ref()).unwrap_or_default()),
        ("LAST STOPPED", time_text(workspace.last_stop_time.as_ref()).unwrap_or_default()),
        ("FAILURE", format!("{} {}", workspace.failure_reason, workspace.failure_message).trim().to_owned()),
    ];
    for (name, value) in rows {
        println!("{name:<15}{value}");
    }
}

/// `berth ls`.
pub fn print_list(workspaces: &[pb::Workspace], format: OutputFormat) {
    if format == OutputFormat::Json {
        println!("{:#}", Value::Array(workspaces.iter().map(workspace_json).collect()));
        return;
    }
    println!("{:<24} {:<9} {:<8} {:<10} IMAGE", "ID", "STATE", "PID", "PROCESSES");
    for workspace in workspaces {
        println!(
            "{:<24} {:<9} {:<8} {:<10} {}",
            workspace.workspace_id,
            state_name(workspace),
            workspace.init_pid,
            workspace.process_count,
            workspace.image
        );
    }
}

/// `berth start` / `berth stop`.
pub fn print_state_line(workspace: &pb::Workspace) {
    println!("{} {}", workspace.workspace_id, state_name(workspace));
}
