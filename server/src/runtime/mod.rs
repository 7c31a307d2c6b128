//! The container runtime seen by the domain: no tonic and no containerd types cross this trait.

pub mod containerd;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::Result;

/// When to fetch an image from its registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only when the image is not in containerd yet (the default).
    #[default]
    IfNotPresent,
    /// Always resolve the reference again and fetch what is missing.
    Always,
    /// Never contact the registry; a missing image is an error.
    Never,
}

/// The state of one layer during a pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerState {
    Waiting,
    Downloading,
    Verifying,
    /// Already in the content store; nothing to download.
    Exists,
    Done,
}

/// Progress of one layer; `offset` and `total` are compressed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerProgress {
    pub digest: String,
    pub offset: u64,
    pub total: u64,
    pub state: LayerState,
}

/// What a pull reports while it runs, in this order: one `Pulling`, `Progress` at least every
/// 250 ms while bytes move (and once at the end), then `Unpacking` per layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullEvent {
    /// The reference resolved to a manifest.
    Pulling { image: String, digest: String, total_layers: u32, total_bytes: u64 },
    /// Bytes moved.
    Progress { layers: Vec<LayerProgress>, offset_bytes: u64, total_bytes: u64 },
    /// Layers unpacked into snapshots so far.
    Unpacking { layers_done: u32, total_layers: u32 },
}

/// The parts of an OCI image config a workspace uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; empty means root.
    pub user: String,
}

/// An image present in containerd and unpacked for the overlayfs snapshotter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledImage {
    /// The normalized reference, e.g. `docker.io/library/debian:latest`.
    pub name: String,
    /// Digest of the platform manifest the workspace uses.
    pub digest: String,
    pub config: ImageConfig,
    /// Name of the committed snapshot holding the unpacked top layer (its chain id).
    pub chain_id: String,
}

/// A sender of pull events; a closed receiver never fails the pull.
pub type PullProgress = mpsc::Sender<PullEvent>;

/// What the Manager needs from a container runtime.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Checks that the runtime answers and returns its version string.
    async fn ping(&self) -> Result<String>;
}
