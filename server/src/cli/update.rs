//! `berth update ID [--image I] [--cpus C] [--memory M] [--pids N] [--label K=V] [--env K=V]
//! [--device D] ...`: the flags given are merged into the workspace's current limits, labels,
//! environment and devices (read first), and only the fields they touch go into the update mask.

use std::collections::HashMap;

use berth_api::v1 as pb;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use tonic::transport::Channel;

use super::{PullPolicyArg, describe};

/// What the flags of `berth update` ask for.
pub struct Changes {
    pub image: Option<String>,
    pub pull: PullPolicyArg,
    pub cpus: Option<i64>,
    pub memory: Option<i64>,
    pub pids: Option<i64>,
    pub labels: Vec<(String, String)>,
    pub unset_labels: Vec<String>,
    pub env: Vec<(String, String)>,
    pub unset_env: Vec<String>,
    pub devices: Vec<String>,
    pub unset_devices: Vec<String>,
    pub network_policy: Option<pb::NetworkPolicy>,
}

/// Sends the update and prints one line saying what happened.
pub async fn run(client: &mut WorkspaceServiceClient<Channel>, id: String, changes: Changes) -> Result<(), String> {
    let current = client
        .get_workspace(pb::GetWorkspaceRequest { workspace_id: id.clone() })
        .await
        .map_err(describe)?
        .into_inner()
        .workspace
        .unwrap_or_default();
    let mut request = pb::UpdateWorkspaceRequest { workspace_id: id.clone(), ..Default::default() };
    let mut paths = Vec::new();
    if let Some(image) = changes.image {
        request.image = image;
        request.pull_policy = pb::PullPolicy::from(changes.pull).into();
        paths.push("image");
    }
    if changes.cpus.is_some() || changes.memory.is_some() || changes.pids.is_some() {
        let now = current.resources.unwrap_or_default();
        request.resources = Some(pb::Resources {
            cpu_millis: changes.cpus.unwrap_or(now.cpu_millis),
            memory_bytes: changes.memory.unwrap_or(now.memory_bytes),
            pids_limit: changes.pids.unwrap_or(now.pids_limit),
        });
        paths.push("resources");
    }
    if !changes.labels.is_empty() || !changes.unset_labels.is_empty() {
        request.labels = merged(current.labels, changes.labels, &changes.unset_labels);
        paths.push("labels");
    }
    if !changes.env.is_empty() || !changes.unset_env.is_empty() {
        request.env = merged(current.env, changes.env, &changes.unset_env);
        paths.push("env");
    }
    if !changes.devices.is_empty() || !changes.unset_devices.is_empty() {
        let mut devices = current.cdi_devices;
        devices.extend(changes.devices);
        devices.retain(|device| !changes.unset_devices.contains(device));
        request.cdi_devices = devices;
        paths.push("cdi_devices");
    }
    if let Some(policy) = changes.network_policy {
        request.network_policy = Some(policy);
        paths.push("network_policy");
    }
    if paths.is_empty() {
        return Err(
            "nothing to change: pass --image, --cpus, --memory, --pids, --label, --env, --device (or their --unset-), --network, --allow or --deny"
                .to_owned(),
        );
    }
    request.update_mask = Some(prost_types::FieldMask { paths: paths.iter().map(|path| (*path).to_owned()).collect() });
    let updated = client.update_workspace(request).await.map_err(describe)?.into_inner();
    let workspace = updated.workspace.unwrap_or_default();
    let restarted = if updated.restarted { ", restarted" } else { "" };
    match updated.version {
        Some(version) => println!(
            "{id} moved to {} (version {}{restarted}); the previous state is snapshot {}",
            workspace.image, version.version, version.snapshot_name
        ),
        None if paths == ["image"] => {
            println!("{id} already runs on {} ({}); nothing changed", workspace.image, workspace.image_digest)
        }
        None => println!("{id} updated ({}{restarted})", paths.join(", ")),
    }
    Ok(())
}

fn merged(
    mut current: HashMap<String, String>,
    set: Vec<(String, String)>,
    unset: &[String],
) -> HashMap<String, String> {
    current.extend(set);
    current.retain(|key, _| !unset.contains(key));
    current
}

/// `1.5` cores or `500m` millicores, as millicores.
pub fn parse_cpus(text: &str) -> Result<i64, String> {
    let invalid = || format!("{text:?} is not a CPU amount; use cores (1.5) or millicores (500m)");
    if let Some(millis) = text.strip_suffix('m') {
        return millis.parse::<i64>().map_err(|_| invalid());
    }
    let cores: f64 = text.parse().map_err(|_| invalid())?;
    if !cores.is_finite() || cores < 0.0 {
        return Err(invalid());
    }
    Ok((cores * 1000.0).round() as i64)
}

/// Bytes, or an amount with a unit: `k`/`Ki`, `M`/`Mi`, `G`/`Gi`, `T`/`Ti` (decimal and binary).
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let invalid = || format!("{text:?} is not an amount of memory; use bytes or a unit such as 512Mi or 2G");
    let split = text.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let scale: f64 = match unit {
        "" | "B" => 1.0,
        "k" | "K" | "kB" | "KB" => 1e3,
        "Ki" | "KiB" => 1024.0,
        "M" | "MB" => 1e6,
        "Mi" | "MiB" => 1024.0 * 1024.0,
        "G" | "GB" => 1e9,
        "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TB" => 1e12,
        "Ti" | "TiB" => 1024.0_f64.powi(4),
        _ => return Err(invalid()),
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes > i64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_and_memory_read_like_docker_and_kubernetes_write_them() {
        assert_eq!(parse_cpus("1.5"), Ok(1500));
        assert_eq!(parse_cpus("500m"), Ok(500));
        assert_eq!(parse_cpus("0"), Ok(0));
        assert!(parse_cpus("-1").is_err() && parse_cpus("lots").is_err());
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("12 parsecs").is_err() && parse_bytes("Mi").is_err());
    }

    #[test]
    fn flags_merge_into_the_current_map() {
        let current = HashMap::from([("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())]);
        let merged = merged(
            current,
            vec![("b".to_owned(), "3".to_owned()), ("c".to_owned(), "4".to_owned())],
            &["a".to_owned()],
        );
        assert_eq!(merged, HashMap::from([("b".to_owned(), "3".to_owned()), ("c".to_owned(), "4".to_owned())]));
    }
}
