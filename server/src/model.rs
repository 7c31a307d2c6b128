//! Plain domain records shared by the Manager and the store; no behaviour beyond conversions.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::error::{Error, Reason, Result};

/// A validated workspace id: `^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkspaceId(String);

impl WorkspaceId {
    /// Validates a caller-chosen id.
    pub fn parse(raw: &str) -> Result<Self> {
        let bytes = raw.as_bytes();
        let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let inner_ok = |b: u8| edge_ok(b) || matches!(b, b'_' | b'.' | b'-');
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && edge_ok(bytes[0])
            && edge_ok(bytes[bytes.len() - 1])
            && bytes.iter().copied().all(inner_ok);
        if !valid {
            return Err(Error::new(
                Reason::InvalidWorkspaceId,
                format!(
                    "workspace id {raw:?} is invalid; use 1-63 characters of a-z, 0-9, '_', '.', '-' starting and ending with a letter or digit"
                ),
            )
            .with_metadata("workspace_id", raw));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The observed lifecycle state of a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspaceState {
    Creating,
    Running,
    Stopped,
    Failed,
    Deleting,
}

/// The state a workspace should be in; it survives server restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DesiredState {
    Running,
    Stopped,
}

macro_rules! string_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The name stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl FromStr for $ty {
            type Err = Error;
            fn from_str(text: &str) -> Result<Self> {
                match text {
                    $($text => Ok($ty::$variant),)+
                    other => Err(Error::internal(format!(
                        "unknown {} {other:?} in the store", stringify!($ty)
                    ))),
                }
            }
        }
    };
}

string_enum!(WorkspaceState {
    Creating => "creating",
    Running => "running",
    Stopped => "stopped",
    Failed => "failed",
    Deleting => "deleting",
});

string_enum!(DesiredState { Running => "running", Stopped => "stopped" });

/// Who or what made a snapshot of a workspace's writable layer (image layers are not stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotSource {
    /// CreateSnapshot.
    User,
    /// berth itself, to keep a previous state reachable (an image change).
    System,
}

string_enum!(SnapshotSource { User => "user", System => "system" });

/// Why a workspace got a new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionReason {
    Create,
    Snapshot,
    Restore,
    ImageChange,
}

string_enum!(VersionReason {
    Create => "create",
    Snapshot => "snapshot",
    Restore => "restore",
    ImageChange => "image_change",
});

/// A committed snapshot of a workspace's writable layer, as the store records it.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRecord {
    pub workspace_id: WorkspaceId,
    /// The caller's name, unique within the workspace.
    pub name: String,
    /// Name of the snapshot it was taken on top of, or the chain id of the image's top layer.
    pub parent: String,
    /// The version the snapshot created.
    pub version: i64,
    pub source: SnapshotSource,
    pub labels: BTreeMap<String, String>,
    /// Name of the committed snapshot in containerd (unique per commit, so a deleted name can be
    /// used again while containerd still removes the old one).
    pub snapshot_key: String,
    /// The image the snapshot was taken on (normalized reference); empty for snapshots stored
    /// before berth recorded it and without a version naming one.
    pub image: String,
    /// That image's manifest digest.
    pub image_digest: String,
    pub create_time: OffsetDateTime,
}

/// One entry of a workspace's version history.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionRecord {
    pub version: i64,
    pub reason: VersionReason,
    /// The snapshot taken (SNAPSHOT) or restored (RESTORE); empty otherwise.
    pub snapshot_name: String,
    /// Normalized image reference and manifest digest the workspace ran on at this version.
    pub image: String,
    pub image_digest: String,
    pub create_time: OffsetDateTime,
}

/// cgroup limits of a workspace; 0 means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub pids_limit: i64,
}

/// What the caller asked for when creating a workspace; equal specs make a create idempotent.
/// Its Debug output leaves out environment values, which are secrets.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkspaceSpec {
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub cdi_devices: Vec<String>,
    /// Stored specs from before workspaces had networks lack it: they read as OPEN.
    #[serde(default)]
    pub network: NetworkPolicy,
}

/// What a workspace may reach over the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Everything outside the host, through NAT.
    #[default]
    Open,
    /// Loopback only: no interface besides `lo`.
    None,
    /// Only the listed networks (and DNS to the server's resolvers).
    Allowlist,
    /// Everything but the listed networks.
    Denylist,
}

/// A workspace's egress policy, validated: `cidrs` normalized, sorted and deduplicated, and empty
/// unless the mode takes a list.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkPolicy {
    pub mode: NetworkMode,
    #[serde(default)]
    pub cidrs: Vec<ipnet::Ipv4Net>,
}

impl fmt::Debug for WorkspaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkspaceSpec")
            .field("image", &self.image)
            .field("labels", &self.labels)
            .field("env", &RedactedEnv(&self.env))
            .field("resources", &self.resources)
            .field("cdi_devices", &self.cdi_devices)
            .field("network", &self.network)
            .finish()
    }
}

/// Debug-formats environment variables as their names only: values are secrets (tokens, keys)
/// and must not reach a log line or an error message.
pub struct RedactedEnv<'a>(pub &'a BTreeMap<String, String>);

impl fmt::Debug for RedactedEnv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.keys().map(|key| (key, Redacted))).finish()
    }
}

/// Stands in for a secret value.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A workspace as the store records it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkspaceRecord {
    pub id: WorkspaceId,
    pub state: WorkspaceState,
    pub desired_state: DesiredState,
    pub spec: WorkspaceSpec,
    pub image_digest: String,
    pub snapshot_key: String,
    pub current_version: i64,
    pub failure_reason: String,
    pub failure_message: String,
    pub create_time: OffsetDateTime,
    pub update_time: OffsetDateTime,
    pub last_start_time: Option<OffsetDateTime>,
    pub last_stop_time: Option<OffsetDateTime>,
}

impl WorkspaceRecord {
    /// The record of a workspace a create is about to make: CREATING, meant to run, no version
    /// yet, with a fresh writable snapshot key.
    pub fn creating(id: WorkspaceId, spec: WorkspaceSpec, now: OffsetDateTime) -> Self {
        Self {
            snapshot_key: format!("{id}-active-{}", now.unix_timestamp_nanos()),
            id,
            state: WorkspaceState::Creating,
            desired_state: DesiredState::Running,
            spec,
            image_digest: String::new(),
            current_version: 0,
            failure_reason: String::new(),
            failure_message: String::new(),
            create_time: now,
            update_time: now,
            last_start_time: None,
            last_stop_time: None,
        }
    }
}

/// A workspace as callers see it: the stored record plus what the runtime reports now.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkspaceInfo {
    pub record: WorkspaceRecord,
    pub namespace: String,
    pub snapshotter: String,
    pub runtime: String,
    pub init_pid: u32,
    pub process_count: u32,
    pub has_preserved_data: bool,
    /// Where /data lives on the host (in the writable snapshot's own directory); None when the
    /// snapshotter cannot say.
    pub host_data_path: Option<std::path::PathBuf>,
    /// Automatic restarts after the init exited on its own; None when it never did.
    pub restart_status: Option<crate::workspace::RestartStatus>,
    /// Its interface on berth's bridge; None when it has none (NONE, or networking off).
    pub network: Option<crate::network::Attachment>,
    /// The DNS servers in its /etc/resolv.conf.
    pub dns_servers: Vec<std::net::IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_ids_follow_the_documented_pattern() {
        for ok in ["a", "bot-1", "a.b_c-d", "0", &"x".repeat(63)] {
            assert!(WorkspaceId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a/b", "a b", "..", &"x".repeat(64), "ü"] {
            let err = WorkspaceId::parse(bad).unwrap_err();
            assert_eq!(err.reason(), Reason::InvalidWorkspaceId, "{bad}");
        }
    }

    #[test]
    fn states_round_trip_through_their_stored_names() {
        for state in [
            WorkspaceState::Creating,
            WorkspaceState::Running,
            WorkspaceState::Stopped,
            WorkspaceState::Failed,
            WorkspaceState::Deleting,
        ] {
            assert_eq!(state.as_str().parse::<WorkspaceState>().unwrap(), state);
        }
        assert!("paused".parse::<WorkspaceState>().is_err());
    }

    #[test]
    fn debug_of_a_spec_and_its_record_names_env_variables_but_hides_their_values() {
        let spec = WorkspaceSpec {
            image: "example/image:1".to_owned(),
            env: BTreeMap::from([("API_TOKEN".to_owned(), "s3cret-value".to_owned())]),
            labels: BTreeMap::from([("team".to_owned(), "red".to_owned())]),
            ..WorkspaceSpec::default()
        };
        let text = format!("{spec:?}");
        assert!(text.contains(r#"env: {"API_TOKEN": <redacted>}"#), "{text}");
        assert!(text.contains("example/image:1") && text.contains("red"), "{text}");
        assert!(!text.contains("s3cret-value"), "{text}");

        let record = WorkspaceRecord::creating(WorkspaceId::parse("bot").unwrap(), spec, OffsetDateTime::now_utc());
        let text = format!("{record:#?}");
        assert!(text.contains("API_TOKEN") && !text.contains("s3cret-value"), "{text}");
    }
}
