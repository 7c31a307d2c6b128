//! A workspace's lineage as the store and containerd hold it: which snapshot the writable layer
//! is built on, how deep the stack is, what depends on a snapshot, the image's layers below, and
//! the order in which snapshots can be removed.

use std::collections::{HashMap, HashSet};

use super::super::manager::Manager;
use crate::error::Result;
use crate::model::{SnapshotRecord, WorkspaceRecord};
use crate::runtime::SnapshotInfo;

/// A workspace's snapshots, indexed.
pub(super) struct Lineage<'a> {
    by_name: HashMap<&'a str, &'a SnapshotRecord>,
    by_key: HashMap<&'a str, &'a SnapshotRecord>,
    snapshots: &'a [SnapshotRecord],
}

impl<'a> Lineage<'a> {
    pub fn new(snapshots: &'a [SnapshotRecord]) -> Self {
        Self {
            by_name: snapshots.iter().map(|snapshot| (snapshot.name.as_str(), snapshot)).collect(),
            by_key: snapshots.iter().map(|snapshot| (snapshot.snapshot_key.as_str(), snapshot)).collect(),
            snapshots,
        }
    }

    pub fn named(&self, name: &str) -> Option<&'a SnapshotRecord> {
        self.by_name.get(name).copied()
    }

    /// The snapshot whose containerd name is `key`; None for an image layer.
    pub fn with_key(&self, key: &str) -> Option<&'a SnapshotRecord> {
        self.by_key.get(key).copied()
    }

    /// How many of the workspace's snapshots are stacked under a layer built on the containerd
    /// snapshot `parent_key` (0 when it is built on the image).
    pub fn depth_on(&self, parent_key: &str) -> usize {
        let mut depth = 0;
        let mut next = self.with_key(parent_key);
        // Bounded by the number of snapshots, even if the store held a cycle.
        while let Some(snapshot) = next.filter(|_| depth <= self.snapshots.len()) {
            depth += 1;
            next = self.named(&snapshot.parent);
        }
        depth
    }

    /// Names of the snapshots taken on top of `name`, oldest first.
    pub fn children_of(&self, name: &str) -> Vec<&'a str> {
        self.snapshots
            .iter()
            .filter(|snapshot| snapshot.parent == name)
            .map(|snapshot| snapshot.name.as_str())
            .collect()
    }

    /// The snapshots' parents that are not snapshots of the workspace: the image's top layers
    /// they were taken on.
    pub fn image_tops(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.snapshots
            .iter()
            .map(|snapshot| snapshot.parent.as_str())
            .filter(|parent| !self.by_name.contains_key(parent))
    }
}

impl Manager {
    /// The containerd snapshot the workspace's writable layer is built on; None when the layer
    /// is missing.
    pub(super) async fn writable_layer_parent(&self, record: &WorkspaceRecord) -> Result<Option<String>> {
        Ok(self.runtime.snapshot_info(&record.snapshot_key).await?.map(|info| info.parent))
    }

    /// The image layers under the workspace's lineage, base first: the chains below every image
    /// top the snapshots or the writable layer are built on (one image, unless the workspace
    /// changed images).
    pub(super) async fn image_layers(
        &self,
        lineage: &Lineage<'_>,
        layer_parent: Option<&str>,
    ) -> Result<Vec<SnapshotInfo>> {
        let mut tops: Vec<&str> = Vec::new();
        let layer_top = layer_parent.filter(|parent| !parent.is_empty() && lineage.with_key(parent).is_none());
        for top in lineage.image_tops().chain(layer_top) {
            if !tops.contains(&top) {
                tops.push(top);
            }
        }
        let mut seen = HashSet::new();
        let mut layers = Vec::new();
        for top in tops {
            let mut chain = Vec::new();
            let mut next = Some(top.to_owned());
            while let Some(name) = next.take().filter(|name| !name.is_empty() && seen.insert(name.clone())) {
                let Some(info) = self.runtime.snapshot_info(&name).await? else {
                    break;
                };
                next = Some(info.parent.clone());
                chain.push(info);
            }
            chain.reverse();
            layers.extend(chain);
        }
        Ok(layers)
    }
}

/// Names of `snapshots` in an order that removes children before their parents (containerd
/// refuses to remove a snapshot that others are built on).
pub(super) fn leaf_first(snapshots: &[SnapshotInfo]) -> Vec<String> {
    let mut left: Vec<&SnapshotInfo> = snapshots.iter().collect();
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let parents: HashSet<&str> = left.iter().map(|info| info.parent.as_str()).collect();
        let (leaves, rest): (Vec<_>, Vec<_>) = left.into_iter().partition(|info| !parents.contains(info.name.as_str()));
        if leaves.is_empty() {
            // A cycle cannot happen in containerd; removing in any order then reports it.
            order.extend(rest.iter().map(|info| info.name.clone()));
            break;
        }
        order.extend(leaves.iter().map(|info| info.name.clone()));
        left = rest;
    }
    order
}
