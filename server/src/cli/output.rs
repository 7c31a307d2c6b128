//! Human tables and JSON (proto3 JSON names: lowerCamelCase keys, enum value names, RFC 3339
//! times) for workspaces and filesystem entries.

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
        "dataPath": workspace.data_path,
        "hostDataPath": workspace.host_data_path,
        "network": workspace.network.as_ref().map(|network| json!({
            "policy": network.policy.as_ref().map(|policy| json!({
                "mode": policy.mode().as_str_name(),
                "cidrs": policy.cidrs,
            })),
            "address": network.address,
            "prefixLength": network.prefix_length,
            "gateway": network.gateway,
            "macAddress": network.mac_address,
            "dnsServers": network.dns_servers,
        })),
        "restartStatus": workspace.restart_status.as_ref().map(|status| json!({
            "restartCount": status.restart_count,
            "nextRestartTime": time_text(status.next_restart_time.as_ref()),
            "lastExitCode": status.last_exit_code,
            "lastExitTime": time_text(status.last_exit_time.as_ref()),
        })),
    })
}

/// `3 (last exit 137 at ...; next at ...)` for `berth get`; empty when it never restarted.
fn restarts_text(workspace: &pb::Workspace) -> String {
    let Some(status) = &workspace.restart_status else {
        return String::new();
    };
    let next = match time_text(status.next_restart_time.as_ref()) {
        Some(next) => format!("; next at {next}"),
        None => String::new(),
    };
    format!(
        "{} (last exit {} at {}{next})",
        status.restart_count,
        status.last_exit_code,
        time_text(status.last_exit_time.as_ref()).unwrap_or_default()
    )
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
        ("DEVICES", workspace.cdi_devices.join(",")),
        ("NETWORK", super::network::policy_text(workspace.network.as_ref().and_then(|n| n.policy.as_ref()))),
        ("ADDRESS", super::network::address_text(workspace.network.as_ref())),
        ("DNS", workspace.network.as_ref().map(|n| n.dns_servers.join(",")).unwrap_or_default()),
        ("LABELS", labels.join(",")),
        ("PRESERVED DATA", if workspace.has_preserved_data { "yes" } else { "no" }.to_owned()),
        ("VERSION", workspace.current_version.to_string()),
        ("NAMESPACE", workspace.namespace.clone()),
        ("DATA PATH", workspace.data_path.clone()),
        ("HOST DATA PATH", workspace.host_data_path.clone()),
        ("CREATED", time_text(workspace.create_time.as_ref()).unwrap_or_default()),
        ("LAST STARTED", time_text(workspace.last_start_time.as_ref()).unwrap_or_default()),
        ("LAST STOPPED", time_text(workspace.last_stop_time.as_ref()).unwrap_or_default()),
        ("FAILURE", format!("{} {}", workspace.failure_reason, workspace.failure_message).trim().to_owned()),
        ("RESTARTS", restarts_text(workspace)),
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

/// The proto3 JSON form of a filesystem entry.
pub fn entry_json(entry: &pb::EntryInfo) -> Value {
    json!({
        "name": entry.name,
        "path": entry.path,
        "type": entry.r#type().as_str_name(),
        "sizeBytes": entry.size_bytes.to_string(),
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "modifyTime": time_text(entry.modify_time.as_ref()),
        "symlinkTarget": entry.symlink_target,
        "revision": entry.revision,
    })
}

/// `drwxr-xr-x`, as `ls -l` writes it (`?` for a device, FIFO or socket: the API does not say
/// which).
pub fn mode_text(entry: &pb::EntryInfo) -> String {
    let kind = match entry.r#type() {
        pb::FileType::File => '-',
        pb::FileType::Directory => 'd',
        pb::FileType::Symlink => 'l',
        pb::FileType::Other | pb::FileType::Unspecified => '?',
    };
    let mode = entry.mode;
    let mut text = String::with_capacity(10);
    text.push(kind);
    // (read bit, write bit, execute bit, special bit, special letter) per class.
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = mode >> shift;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => letter,
            (false, true) => letter.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    text
}

/// Seconds-precision UTC time for tables: `2024-05-01T12:00:00Z`.
fn short_time(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(time) = timestamp.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()) else {
        return "-".to_owned();
    };
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time.format(&format).unwrap_or_default()
}

/// The header of `berth fs ls`.
pub fn entry_header() -> String {
    format!("{:<10} {:>11} {:>12} {:<20} NAME", "MODE", "UID:GID", "SIZE", "MODIFIED")
}

/// One row of `berth fs ls`: `name` is the entry's path relative to the listed directory.
pub fn entry_row(name: &str, entry: &pb::EntryInfo) -> String {
    let target =
        if entry.r#type() == pb::FileType::Symlink { format!(" -> {}", entry.symlink_target) } else { String::new() };
    format!(
        "{:<10} {:>11} {:>12} {:<20} {name}{target}",
        mode_text(entry),
        format!("{}:{}", entry.uid, entry.gid),
        entry.size_bytes,
        short_time(entry.modify_time.as_ref()),
    )
}

/// `berth fs stat`.
pub fn print_entry(entry: &pb::EntryInfo, format: OutputFormat) {
    if format == OutputFormat::Json {
        println!("{:#}", entry_json(entry));
        return;
    }
    let mut rows = vec![
        ("PATH", entry.path.clone()),
        ("TYPE", entry.r#type().as_str_name().trim_start_matches("FILE_TYPE_").to_owned()),
        ("SIZE", entry.size_bytes.to_string()),
        ("MODE", format!("{:04o} ({})", entry.mode, mode_text(entry))),
        ("OWNER", format!("{}:{}", entry.uid, entry.gid)),
        ("MODIFIED", time_text(entry.modify_time.as_ref()).unwrap_or_default()),
    ];
    if entry.r#type() == pb::FileType::Symlink {
        rows.push(("TARGET", entry.symlink_target.clone()));
    }
    if !entry.revision.is_empty() {
        rows.push(("REVISION", entry.revision.clone()));
    }
    for (name, value) in rows {
        println!("{name:<15}{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: pb::FileType, mode: u32) -> pb::EntryInfo {
        pb::EntryInfo { r#type: kind as i32, mode, ..Default::default() }
    }

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_text(&entry(pb::FileType::File, 0o644)), "-rw-r--r--");
        assert_eq!(mode_text(&entry(pb::FileType::Directory, 0o1777)), "drwxrwxrwt");
        assert_eq!(mode_text(&entry(pb::FileType::File, 0o4755)), "-rwsr-xr-x");
        assert_eq!(mode_text(&entry(pb::FileType::File, 0o2640)), "-rw-r-S---");
        assert_eq!(mode_text(&entry(pb::FileType::Symlink, 0o777)), "lrwxrwxrwx");
        assert_eq!(mode_text(&entry(pb::FileType::Other, 0o600)), "?rw-------");
    }

    #[test]
    fn entries_and_workspaces_use_proto3_json_names() {
        let mut file = entry(pb::FileType::File, 0o644);
        file.size_bytes = 5;
        file.modify_time = Some(prost_types::Timestamp { seconds: 0, nanos: 0 });
        let value = entry_json(&file);
        assert_eq!(value["type"], "FILE_TYPE_FILE");
        assert_eq!(value["sizeBytes"], "5");
        assert_eq!(value["mode"], 420);
        assert_eq!(value["modifyTime"], "1970-01-01T00:00:00Z");
        assert_eq!(short_time(file.modify_time.as_ref()), "1970-01-01T00:00:00Z");
        let workspace = pb::Workspace {
            data_path: "/data".to_owned(),
            host_data_path: "/var/lib/snap/fs/data".to_owned(),
            ..Default::default()
        };
        let value = workspace_json(&workspace);
        assert_eq!(value["dataPath"], "/data");
        assert_eq!(value["hostDataPath"], "/var/lib/snap/fs/data");
    }
}
