//! Unpacking layers into overlayfs snapshots named by their chain ids, with `Diff.Apply` doing
//! decompression and whiteouts server-side.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::types::Descriptor;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

use super::client::{Namespace, leased_request, map_status, request};
use super::content::Content;
use crate::error::{Error, Reason, Result};

/// The snapshotter berth unpacks for.
pub(super) const SNAPSHOTTER: &str = "overlayfs";

/// Label on a layer blob naming its uncompressed digest (what `ctr` sets too).
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// How long containerd may take to apply one layer: the work grows with the layer (a GiB layer
/// takes seconds), so this is generous, but a wedged diff service still fails the pull.
const LAYER_APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Chain ids of a layer stack: `chain[0] = diff_id[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff_id[i])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{parent} {diff_id}")))),
        };
        chain.push(next);
    }
    chain
}

/// A layer to unpack: its compressed blob and the digest of its uncompressed tar.
#[derive(Clone, Debug)]
pub(super) struct Layer {
    pub blob: Descriptor,
    pub diff_id: String,
}

/// Snapshots and diff services of one namespace.
#[derive(Clone, Debug)]
pub(super) struct Unpacker {
    channel: Channel,
    socket: PathBuf,
    namespace: Namespace,
}

impl Unpacker {
    pub fn new(channel: Channel, socket: PathBuf, namespace: Namespace) -> Self {
        Self { channel, socket, namespace }
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    fn status_error(&self, what: &str, status: tonic::Status) -> Error {
        map_status(&self.socket, what, status)
    }

    /// Whether the committed snapshot `name` exists.
    pub async fn snapshot_exists(&self, name: &str) -> Result<bool> {
        let stat = StatSnapshotRequest { snapshotter: SNAPSHOTTER.to_owned(), key: name.to_owned() };
        match self.snapshots().stat(request(&self.namespace, stat)).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(self.status_error("snapshot stat", status)),
        }
    }

    /// Unpacks `layers` in order, each as soon as `ready` lists its blob digest (so unpacking
    /// overlaps the download of later layers), skipping chain ids that exist. Labels each layer
    /// blob with its uncompressed digest and calls `done(n)` after layer n. Returns the top
    /// chain id.
    pub async fn unpack(
        &self,
        lease: &str,
        content: &Content,
        layers: &[Layer],
        mut ready: watch::Receiver<HashSet<String>>,
        done: &(dyn Fn(u32) + Send + Sync),
    ) -> Result<String> {
        let diff_ids: Vec<String> = layers.iter().map(|layer| layer.diff_id.clone()).collect();
        let chain = chain_ids(&diff_ids);
        for (index, layer) in layers.iter().enumerate() {
            if ready.wait_for(|blobs| blobs.contains(&layer.blob.digest)).await.is_err() {
                return Err(Error::internal(format!("layer {} was never stored", layer.blob.digest)));
            }
            let started = Instant::now();
            let parent = if index == 0 { "" } else { chain[index - 1].as_str() };
            if !self.snapshot_exists(&chain[index]).await? {
                self.apply(lease, layer, parent, &chain[index]).await?;
            }
            let applied_ms = started.elapsed().as_millis();
            let label = HashMap::from([(UNCOMPRESSED_LABEL.to_owned(), layer.diff_id.clone())]);
            content.set_labels(&layer.blob.digest, &label).await?;
            tracing::debug!(layer = %layer.blob.digest, chain_id = %chain[index], applied_ms, elapsed_ms = started.elapsed().as_millis(), "layer unpacked");
            done(u32::try_from(index + 1).unwrap_or(u32::MAX));
        }
        chain.last().cloned().ok_or_else(|| {
            Error::new(Reason::ImagePullFailed, "the image has no layers; use an image with a root filesystem")
        })
    }

    /// Prepares an active snapshot on `parent`, applies the layer and commits it as `name`.
    async fn apply(&self, lease: &str, layer: &Layer, parent: &str, name: &str) -> Result<()> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
        let key = format!("extract-{nanos}-{name}");
        let started = Instant::now();
        let prepare = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: key.clone(),
            parent: parent.to_owned(),
            labels: HashMap::new(),
        };
        let mounts = self
            .snapshots()
            .prepare(leased_request(&self.namespace, lease, prepare, self.namespace.call_timeout))
            .await
            .map_err(|status| self.status_error("snapshot prepare", status))?
            .into_inner()
            .mounts;
        tracing::trace!(key, elapsed_ms = started.elapsed().as_millis(), "snapshot prepared");
        let result = self.apply_and_commit(lease, layer, &key, mounts, name).await;
        if result.is_err() {
            self.remove(&key).await;
        }
        result
    }

    async fn apply_and_commit(
        &self,
        lease: &str,
        layer: &Layer,
        key: &str,
        mounts: Vec<containerd_client::types::Mount>,
        name: &str,
    ) -> Result<()> {
        let apply = ApplyRequest { diff: Some(layer.blob.clone()), mounts, payloads: HashMap::new(), sync_fs: false };
        let applied = DiffClient::new(self.channel.clone())
            .apply(leased_request(&self.namespace, lease, apply, LAYER_APPLY_TIMEOUT))
            .await
            .map_err(|status| self.status_error(&format!("applying layer {}", layer.blob.digest), status))?
            .into_inner()
            .applied
            .unwrap_or_default();
        tracing::trace!(layer = %layer.blob.digest, "diff applied");
        if applied.digest != layer.diff_id {
            return Err(Error::new(
                Reason::ImagePullFailed,
                format!(
                    "layer {} unpacked to {}, but the image config says {}; the image is broken",
                    layer.blob.digest, applied.digest, layer.diff_id
                ),
            ));
        }
        let commit = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
            labels: HashMap::new(),
        };
        match self.snapshots().commit(leased_request(&self.namespace, lease, commit, self.namespace.call_timeout)).await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                // A concurrent unpack committed the same chain id first; its snapshot is as good.
                self.remove(key).await;
                Ok(())
            }
            Err(status) => Err(self.status_error("snapshot commit", status)),
        }
    }

    async fn remove(&self, key: &str) {
        let remove = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.to_owned(), key: key.to_owned() };
        if let Err(status) = self.snapshots().remove(request(&self.namespace, remove)).await {
            tracing::debug!(key, error = %status.message(), "removing an extraction snapshot failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned();
        let b = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".to_owned();
        let c = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc".to_owned();
        assert!(chain_ids(&[]).is_empty());
        assert_eq!(chain_ids(std::slice::from_ref(&a)), vec![a.clone()]);

        let chain = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        let second = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}"))));
        let third = format!("sha256:{}", hex::encode(Sha256::digest(format!("{second} {c}"))));
        assert_eq!(chain, vec![a, second, third]);
    }

    #[test]
    fn chain_id_matches_a_known_value() {
        // Computed independently: `printf '%s' "$diff1 $diff2" | sha256sum`.
        let diff1 = "sha256:2e4d2a4d3c0f5f1a9b1b3b6d8f1e5b6a0c3d4e5f60718293a4b5c6d7e8f90a1b".to_owned();
        let diff2 = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned();
        let chain = chain_ids(&[diff1, diff2]);
        assert_eq!(chain[1], "sha256:ce9894f8a7599ff52172f409f70fcdb8b9fb4dcf0d6ab12853d581743bc00ffe");
    }
}
