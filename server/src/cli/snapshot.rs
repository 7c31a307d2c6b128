//! `berth snapshot create | ls | rm | restore` and `berth versions`: a workspace's snapshot
//! lineage and version history.

use berth_api::v1 as pb;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use clap::Subcommand;
use serde_json::{Value, json};

use super::connect::Channel;
use super::{OutputFormat, describe, parse_key_value};

/// A `berth snapshot` subcommand.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Commit the workspace's filesystem (installed software and /data) as a snapshot; a running
    /// workspace is restarted, which ends its processes
    Create {
        id: String,
        /// Snapshot name [default: v<new version>]
        name: Option<String>,
        /// Label as key=value (repeatable)
        #[arg(long = "label", value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
    },
    /// List the lineage: the image's layers, then the snapshots, oldest first
    Ls {
        id: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Delete a snapshot nothing is built on
    Rm { id: String, name: String },
    /// Roll the workspace back to a snapshot, by name or by version; changes since are discarded
    Restore {
        id: String,
        /// Snapshot name
        #[arg(required_unless_present = "version", conflicts_with = "version")]
        name: Option<String>,
        /// The version whose snapshot to restore
        #[arg(long)]
        version: Option<i64>,
    },
}

/// Runs a `berth snapshot` subcommand.
pub async fn run(channel: Channel, command: SnapshotCommand) -> Result<(), String> {
    let mut client = WorkspaceServiceClient::new(channel);
    match command {
        SnapshotCommand::Create { id, name, labels } => {
            let request = pb::CreateSnapshotRequest {
                workspace_id: id.clone(),
                name: name.unwrap_or_default(),
                labels: labels.into_iter().collect(),
            };
            let snapshot = client.create_snapshot(request).await.map_err(describe)?.into_inner().snapshot;
            let snapshot = snapshot.unwrap_or_default();
            println!("snapshot {} of {id} taken (version {})", snapshot.name, snapshot.version);
        }
        SnapshotCommand::Ls { id, output } => {
            let mut snapshots = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListSnapshotsRequest { workspace_id: id.clone(), page_size: 1000, page_token };
                let page = client.list_snapshots(request).await.map_err(describe)?.into_inner();
                snapshots.extend(page.snapshots);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print_snapshots(&snapshots, output);
        }
        SnapshotCommand::Rm { id, name } => {
            let request = pb::DeleteSnapshotRequest { workspace_id: id.clone(), name: name.clone() };
            client.delete_snapshot(request).await.map_err(describe)?;
            println!("snapshot {name} of {id} deleted");
        }
        SnapshotCommand::Restore { id, name, version } => {
            use pb::restore_snapshot_request::Target;
            let target = match (name, version) {
                (Some(name), _) => Target::SnapshotName(name),
                (None, Some(version)) => Target::Version(version),
                (None, None) => return Err("name a snapshot or pass --version".to_owned()),
            };
            let request = pb::RestoreSnapshotRequest { workspace_id: id.clone(), target: Some(target) };
            let restored = client.restore_snapshot(request).await.map_err(describe)?.into_inner();
            let version = restored.version.unwrap_or_default();
            let state =
                restored.workspace.unwrap_or_default().state().as_str_name().trim_start_matches("WORKSPACE_STATE_");
            println!("{id} restored to snapshot {} (version {}, {state})", version.snapshot_name, version.version);
        }
    }
    Ok(())
}

/// `berth versions`: the history, oldest first; `*` marks the current version.
pub async fn versions(channel: Channel, id: String, output: OutputFormat) -> Result<(), String> {
    let mut client = WorkspaceServiceClient::new(channel);
    let mut versions = Vec::new();
    let mut page_token = String::new();
    let current = loop {
        let request = pb::ListVersionsRequest { workspace_id: id.clone(), page_size: 1000, page_token };
        let page = client.list_versions(request).await.map_err(describe)?.into_inner();
        versions.extend(page.versions);
        if page.next_page_token.is_empty() {
            break page.current_version;
        }
        page_token = page.next_page_token;
    };
    if output == OutputFormat::Json {
        let versions: Vec<Value> = versions.iter().map(version_json).collect();
        println!("{:#}", json!({ "currentVersion": current.to_string(), "versions": versions }));
        return Ok(());
    }
    println!("  {:<8} {:<13} {:<24} {:<20} IMAGE", "VERSION", "REASON", "SNAPSHOT", "CREATED");
    for version in &versions {
        println!(
            "{} {:<8} {:<13} {:<24} {:<20} {}",
            if version.version == current { '*' } else { ' ' },
            version.version,
            version.reason().as_str_name().trim_start_matches("VERSION_REASON_"),
            dash_if_empty(&version.snapshot_name),
            short_time(version.create_time.as_ref()),
            version.image,
        );
    }
    Ok(())
}

fn print_snapshots(snapshots: &[pb::Snapshot], output: OutputFormat) {
    if output == OutputFormat::Json {
        let snapshots: Vec<Value> = snapshots.iter().map(snapshot_json).collect();
        println!("{:#}", Value::Array(snapshots));
        return;
    }
    println!(
        "{:<24} {:<6} {:<7} {:<24} {:>10} {:<20} LABELS",
        "NAME", "SOURCE", "VERSION", "PARENT", "SIZE", "CREATED"
    );
    for snapshot in snapshots {
        let mut labels: Vec<_> = snapshot.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
        labels.sort();
        println!(
            "{:<24} {:<6} {:<7} {:<24} {:>10} {:<20} {}",
            short_name(&snapshot.name),
            snapshot.source().as_str_name().trim_start_matches("SNAPSHOT_SOURCE_"),
            if snapshot.version == 0 { "-".to_owned() } else { snapshot.version.to_string() },
            dash_if_empty(short_name(&snapshot.parent)),
            size_text(snapshot.size_bytes),
            short_time(snapshot.create_time.as_ref()),
            labels.join(","),
        );
    }
}

/// Image layers are named by their chain ids: the first 12 hex digits tell them apart in a table.
fn short_name(name: &str) -> &str {
    match name.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => &name[..7 + 12],
        _ => name,
    }
}

fn dash_if_empty(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

fn size_text(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn rfc3339(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    let timestamp = timestamp?;
    let time = time::OffsetDateTime::from_unix_timestamp(timestamp.seconds).ok()?
        + time::Duration::nanoseconds(i64::from(timestamp.nanos));
    time.format(&time::format_description::well_known::Rfc3339).ok()
}

/// Seconds-precision UTC time for tables.
fn short_time(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(time) = timestamp.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()) else {
        return "-".to_owned();
    };
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time.format(&format).unwrap_or_default()
}

/// The proto3 JSON form of a snapshot.
fn snapshot_json(snapshot: &pb::Snapshot) -> Value {
    json!({
        "name": snapshot.name,
        "workspaceId": snapshot.workspace_id,
        "parent": snapshot.parent,
        "source": snapshot.source().as_str_name(),
        "version": snapshot.version.to_string(),
        "labels": snapshot.labels,
        "sizeBytes": snapshot.size_bytes.to_string(),
        "createTime": rfc3339(snapshot.create_time.as_ref()),
    })
}

/// The proto3 JSON form of a version.
fn version_json(version: &pb::Version) -> Value {
    json!({
        "version": version.version.to_string(),
        "reason": version.reason().as_str_name(),
        "snapshotName": version.snapshot_name,
        "createTime": rfc3339(version.create_time.as_ref()),
        "image": version.image,
        "imageDigest": version.image_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_shorten_chain_ids_and_sizes() {
        let chain = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_name(&chain), "sha256:abababababab");
        assert_eq!(short_name("v2"), "v2");
        assert_eq!(size_text(512), "512 B");
        assert_eq!(size_text(16384), "16.0 KiB");
        assert_eq!(size_text(3 << 30), "3.0 GiB");
    }

    #[test]
    fn snapshots_and_versions_use_proto3_json_names() {
        let snapshot = pb::Snapshot {
            name: "v2".to_owned(),
            source: pb::SnapshotSource::User.into(),
            version: 2,
            size_bytes: 10,
            ..Default::default()
        };
        let value = snapshot_json(&snapshot);
        assert_eq!(value["source"], "SNAPSHOT_SOURCE_USER");
        assert_eq!(value["version"], "2");
        assert_eq!(value["sizeBytes"], "10");
        let version = pb::Version { version: 3, reason: pb::VersionReason::Restore.into(), ..Default::default() };
        assert_eq!(version_json(&version)["reason"], "VERSION_REASON_RESTORE");
    }
}
