//! UpdateWorkspace: a workspace changed in place. Labels and resource limits apply to the
//! running task at once (no restart) and persist in the container's stored spec and the record;
//! a new environment or device set needs a new spec, so the container is re-created and its
//! task restarted (once for both); a new network policy applies live (network/);
//! an image change is `snapshot/image_change.rs`'s. Fields are applied in that order, each to
//! containerd before the record, so a retry after a failure applies what is still missing.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tracing::info;

use super::manager::{Manager, ensure_settled};
use super::snapshot::SnapshotAnswer;
use super::validate;
use crate::error::{Error, Reason, Result};
use crate::model::{
    NetworkPolicy, Resources, VersionRecord, WorkspaceId, WorkspaceInfo, WorkspaceRecord, WorkspaceSpec,
};
use crate::runtime::{PullPolicy, TaskMetrics};

/// What processes started through ProcessService read in their `end.error` after an
/// environment change.
const SPEC_RESTART: &str = "a change of the workspace's environment or devices restarted it";

/// The fields an UpdateWorkspace changes; `None` leaves one as it is.
#[derive(Clone, Default)]
pub struct WorkspaceUpdate {
    /// The image reference (empty: the default image) and when to pull it.
    pub image: Option<(String, PullPolicy)>,
    pub resources: Option<Resources>,
    /// Replaces every caller label.
    pub labels: Option<BTreeMap<String, String>>,
    /// Replaces every caller variable.
    pub env: Option<BTreeMap<String, String>>,
    /// Replaces the CDI devices (names as callers write them).
    pub cdi_devices: Option<Vec<String>>,
    /// Replaces the egress policy, live.
    pub network_policy: Option<validate::RequestedPolicy>,
}

impl WorkspaceUpdate {
    /// Identifies an update in flight, so a retry joins it; a digest, because env values are
    /// secrets that must not sit in a key that may be logged.
    fn key(&self, id: &WorkspaceId) -> String {
        let mut digest = Sha256::new();
        digest.update(format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            self.image, self.resources, self.labels, self.cdi_devices, self.network_policy
        ));
        for (name, value) in self.env.iter().flatten() {
            digest.update([0]);
            digest.update(name);
            digest.update([0]);
            digest.update(value);
        }
        format!("{id}/{}", hex::encode(digest.finalize()))
    }
}

/// What UpdateWorkspace answers.
#[derive(Clone, Debug)]
pub struct Updated {
    pub workspace: WorkspaceInfo,
    /// Whether the task was stopped and started again.
    pub restarted: bool,
    /// The version an image change created.
    pub version: Option<VersionRecord>,
}

impl Manager {
    /// Applies `update` to the workspace (see the module doc).
    pub async fn update(self: &Arc<Self>, workspace_id: &str, update: WorkspaceUpdate) -> Result<Updated> {
        let id = WorkspaceId::parse(workspace_id)?;
        if let Some(resources) = update.resources {
            validate::check_resources(resources)?;
        }
        if let Some(labels) = &update.labels {
            validate::check_labels(labels)?;
        }
        if let Some(env) = &update.env {
            validate::check_env(env)?;
        }
        let network_policy = match &update.network_policy {
            Some(requested) => {
                let policy = validate::network_policy(requested, self.network.default_policy().mode)?;
                self.network.check(&policy)?;
                Some(policy)
            }
            None => None,
        };
        let image_name = match &update.image {
            Some((reference, _)) => {
                let reference = if reference.is_empty() { self.config.default_image.as_str() } else { reference };
                Some(self.runtime.normalize_image(reference)?)
            }
            None => None,
        };
        let key = update.key(&id);
        let answer = self
            .detached_snapshot("update", key, move |manager| async move {
                manager
                    .update_now(&id, update, image_name, network_policy)
                    .await
                    .map(|updated| SnapshotAnswer::Updated(Box::new(updated)))
            })
            .await?;
        match answer {
            SnapshotAnswer::Updated(updated) => Ok(*updated),
            other => Err(Error::internal(format!("update answered {other:?}"))),
        }
    }

    async fn update_now(
        &self,
        id: &WorkspaceId,
        update: WorkspaceUpdate,
        image_name: Option<String>,
        network_policy: Option<NetworkPolicy>,
    ) -> Result<Updated> {
        // A pull may take minutes and changes nothing: it happens before the workspace is
        // locked, and one that fails leaves the workspace as it was.
        ensure_settled(&self.record(id).await?, "updating it")?;
        let image = match (&image_name, &update.image) {
            (Some(name), Some((_, policy))) => {
                let (progress, _) = tokio::sync::mpsc::channel(1);
                Some(self.runtime.pull_image(name, *policy, &progress).await?)
            }
            _ => None,
        };

        let devices = match &update.cdi_devices {
            Some(names) => Some(self.resolve_devices(names).await?),
            None => None,
        };

        let _guard = self.lock(id).await;
        let mut record = self.settled_record(id, "updating it").await?;
        let running = self.runtime.task(id.as_str()).await?.is_some_and(|task| task.running);
        if let Some(resources) = update.resources {
            self.check_memory_limit(&record, resources, running).await?;
        }
        let mut changed = Vec::new();
        if let Some(labels) = update.labels.filter(|labels| *labels != record.spec.labels) {
            self.runtime.set_container_labels(id.as_str(), &labels).await?;
            record.spec.labels = labels;
            self.store.update_workspace_and_labels(&record).await?;
            changed.push("labels");
        }
        if let Some(resources) = update.resources.filter(|resources| *resources != record.spec.resources) {
            self.runtime.update_resources(id.as_str(), resources, running).await?;
            record.spec.resources = resources;
            self.save(&mut record).await?;
            changed.push("resources");
        }
        if let Some(policy) = network_policy.filter(|policy| *policy != record.spec.network) {
            self.network.set_policy(id, &policy).await?;
            record.spec.network = policy;
            self.save(&mut record).await?;
            changed.push("network_policy");
        }
        // A new environment and new devices need a new spec: one re-creation for both.
        let mut spec = record.spec.clone();
        if let Some(env) = update.env.filter(|env| *env != record.spec.env) {
            spec.env = env;
            changed.push("env");
        }
        if let Some(devices) = devices.filter(|devices| *devices != record.spec.cdi_devices) {
            spec.cdi_devices = devices;
            changed.push("cdi_devices");
        }
        let restarted_for_spec = spec != record.spec && self.recreate_for_spec(&mut record, spec, running).await?;
        let mut restarted = restarted_for_spec;
        let mut version = None;
        if let Some(image) = image
            && let Some((image_restarted, image_version)) = self.change_image_locked(record, &image).await?
        {
            restarted |= image_restarted;
            version = Some(image_version);
            changed.push("image");
        }
        if !changed.is_empty() {
            info!(workspace_id = %id, ?changed, restarted, "workspace updated");
            let message = format!("updated {}{}", changed.join(", "), if restarted { " (restarted)" } else { "" });
            self.event_detail(
                id,
                "updated",
                &message,
                serde_json::json!({ "fields": changed, "restarted": restarted }),
            )
            .await;
        }
        Ok(Updated { workspace: self.info(self.record(id).await?).await, restarted, version })
    }

    /// Refuses a memory limit below what the running task uses now: the kernel would reclaim
    /// or kill until it fits.
    async fn check_memory_limit(&self, record: &WorkspaceRecord, resources: Resources, running: bool) -> Result<()> {
        if resources.memory_bytes <= 0 || !running {
            return Ok(());
        }
        let used = match self.runtime.task_metrics(record.id.as_str()).await? {
            TaskMetrics::Cgroup(stats) => stats.memory.map(|memory| memory.working_set_bytes),
            TaskMetrics::NoTask | TaskMetrics::Undecodable(_) => None,
        };
        let Some(used) = used else {
            return Ok(());
        };
        if used <= resources.memory_bytes as u64 {
            return Ok(());
        }
        Err(Error::new(
            Reason::MemoryLimitBelowUsage,
            format!(
                "workspace {} uses {used} bytes of memory (its working set), more than the {} bytes asked for; \
                 free memory inside the workspace or choose a limit of at least {used} bytes",
                record.id, resources.memory_bytes
            ),
        )
        .with_metadata("used_bytes", used.to_string()))
    }

    /// Re-creates the container with `spec` (a new environment or device set) and saves it in the
    /// record; the task is stopped for it and started again when it ran. Returns whether it was
    /// restarted. On failure the record keeps its old spec (and the task runs again on the old
    /// container if it is still there); a crash between the deletion and the creation is
    /// repaired by the next start, which rebuilds a missing container from the record.
    async fn recreate_for_spec(
        &self,
        record: &mut WorkspaceRecord,
        spec: WorkspaceSpec,
        running: bool,
    ) -> Result<bool> {
        let image = self.image_at(&record.spec.image, &record.image_digest).await?;
        let was_running = running && self.stop_for_switch(record, SPEC_RESTART).await?;
        let next = WorkspaceRecord { spec, ..record.clone() };
        if let Err(err) = self.recreate_container(&next, &image).await {
            if was_running {
                let _ = self.runtime.start_task(record.id.as_str(), &record.snapshot_key).await;
            }
            return Err(err);
        }
        *record = next;
        self.save(record).await?;
        if was_running {
            self.start_after_switch(record, "the environment or devices were changed").await?;
        }
        Ok(was_running)
    }
}
