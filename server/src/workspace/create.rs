//! CreateWorkspace: validation, idempotency, and the detached creation task that pulls the
//! image, creates the container, prepares (and optionally restores) /data and starts PID 1.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, Stream};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::manager::Manager;
use super::operation::OperationLog;
use super::validate;
use crate::error::{Error, Reason, Result};
use crate::model::{
    DesiredState, Resources, WorkspaceId, WorkspaceInfo, WorkspaceRecord, WorkspaceSpec, WorkspaceState,
};
use crate::runtime::{ContainerOwner, ContainerSpec, PullEvent, PullPolicy, PulledImage};

/// What a caller asks for (its Debug, in validate.rs, leaves out environment values).
#[derive(Clone, Default)]
pub struct CreateRequest {
    pub workspace_id: String,
    /// Empty means the server's default image.
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub cdi_devices: Vec<String>,
    pub restore_data: bool,
    pub request_id: String,
    pub pull_policy: PullPolicy,
    pub network_policy: super::validate::RequestedPolicy,
}

/// What a create reports, in order.
#[derive(Clone, Debug)]
pub enum CreateEvent {
    Pull(PullEvent),
    Creating,
    Restoring { bytes_done: u64, total_bytes: u64 },
    Ready(Box<WorkspaceInfo>),
}

impl super::operation::Phased for CreateEvent {
    fn phase(&self) -> u8 {
        match self {
            CreateEvent::Pull(PullEvent::Pulling { .. }) => 0,
            CreateEvent::Pull(PullEvent::Progress { .. }) => 1,
            CreateEvent::Pull(PullEvent::Unpacking { .. }) => 2,
            CreateEvent::Creating => 3,
            CreateEvent::Restoring { .. } => 4,
            CreateEvent::Ready(_) => 5,
        }
    }
}

/// A stream of create events ending with `Ready` or an error.
pub type CreateStream = Pin<Box<dyn Stream<Item = Result<CreateEvent>> + Send>>;

/// A create in flight.
pub struct CreateOperation {
    spec: WorkspaceSpec,
    log: OperationLog<CreateEvent>,
}

/// How often restore progress is reported.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

impl Manager {
    /// Starts (or attaches to, or answers from an existing workspace) a create. Validation
    /// errors come back here; failures during creation end the stream.
    pub async fn create(self: &Arc<Self>, request: CreateRequest) -> Result<CreateStream> {
        if self.tasks.is_closed() {
            return Err(super::lifecycle::shutting_down());
        }
        let id = WorkspaceId::parse(&request.workspace_id)?;
        let spec = validate::validated_spec(
            &request,
            &self.config.default_image,
            self.network.default_policy().mode,
            |image| self.runtime.normalize_image(image),
        )?;
        self.network.check(&spec.network)?;
        if !request.request_id.is_empty()
            && let Some((known_id, known_spec)) = self.store.get_request(&request.request_id).await?
            && (known_id != id.as_str() || known_spec != spec)
        {
            return Err(Error::new(
                Reason::RequestIdReused,
                format!(
                    "request_id {:?} was used for another create (workspace {known_id:?}); use a new request_id for a different create",
                    request.request_id
                ),
            ));
        }
        if let Some(operation) = self.creating.lock().expect("creating map").get(&id).cloned() {
            return attach(&id, &operation, &spec);
        }
        if let Some(existing) = self.store.get_workspace(&id).await? {
            return self.answer_existing(existing, &spec).await;
        }
        // After the idempotency answers (they compare stored names, not the host), before
        // anything is pulled or made.
        self.config.devices.check(&spec.cdi_devices).await?;
        if request.restore_data && !self.preserved_archive(&id).exists() {
            return Err(Error::new(
                Reason::PreservedDataNotFound,
                format!("no preserved data exists for workspace {id}; create it without restore_data"),
            ));
        }

        let operation = Arc::new(CreateOperation { spec: spec.clone(), log: OperationLog::new() });
        {
            let mut creating = self.creating.lock().expect("creating map");
            if let Some(other) = creating.get(&id).cloned() {
                return attach(&id, &other, &spec);
            }
            creating.insert(id.clone(), operation.clone());
        }
        let now = OffsetDateTime::now_utc();
        let record = WorkspaceRecord::creating(id.clone(), spec, now);
        let stream = operation.log.subscribe();
        let manager = self.clone();
        // Everything from here runs in its own task: a caller that goes away mid-way cannot
        // leave the in-flight entry (or a half-written record) behind; shutdown waits for it.
        self.tasks.spawn(async move {
            let create = async {
                let _guard = manager.lock(&id).await;
                if !request.request_id.is_empty() {
                    manager.store.insert_request(&request.request_id, &id, &record.spec).await?;
                }
                manager.store.insert_workspace(&record).await?;
                manager.run_create(record, request.pull_policy, request.restore_data, &operation.log).await
            };
            let outcome = AssertUnwindSafe(create)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(Error::internal("the create task panicked; see the server log")));
            manager.creating.lock().expect("creating map").remove(&id);
            operation.log.finish(outcome);
        });
        Ok(stream)
    }

    /// An existing workspace: the same spec answers with one `Ready`, another is ALREADY_EXISTS.
    async fn answer_existing(&self, existing: WorkspaceRecord, spec: &WorkspaceSpec) -> Result<CreateStream> {
        if existing.state == WorkspaceState::Deleting {
            return Err(Error::new(
                Reason::WorkspaceDeleting,
                format!(
                    "workspace {} is being deleted; wait for the deletion to finish, then create it again",
                    existing.id
                ),
            ));
        }
        if existing.state == WorkspaceState::Failed && existing.current_version == 0 {
            return Err(failed_create(&existing));
        }
        if existing.spec != *spec {
            return Err(Error::new(
                Reason::WorkspaceAlreadyExists,
                format!(
                    "workspace {} already exists with a different spec (image {}); delete it first or create another id",
                    existing.id, existing.spec.image
                ),
            ));
        }
        let info = self.info(existing).await;
        Ok(Box::pin(futures::stream::once(async move { Ok(CreateEvent::Ready(Box::new(info))) })))
    }

    /// The creation itself; on failure everything it made is removed again.
    async fn run_create(
        &self,
        mut record: WorkspaceRecord,
        pull_policy: PullPolicy,
        restore_data: bool,
        log: &OperationLog<CreateEvent>,
    ) -> Result<()> {
        let id = record.id.clone();
        match self.build_workspace(&mut record, pull_policy, restore_data, log).await {
            Ok(()) => {
                let info = self.info(record).await;
                info!(workspace_id = %id, image = %info.record.spec.image, "workspace created");
                log.push(CreateEvent::Ready(Box::new(info)));
                Ok(())
            }
            Err(err) => {
                warn!(workspace_id = %id, error = %err, "create failed; rolling back");
                self.roll_back(&mut record, &err).await;
                Err(err)
            }
        }
    }

    async fn build_workspace(
        &self,
        record: &mut WorkspaceRecord,
        pull_policy: PullPolicy,
        restore_data: bool,
        log: &OperationLog<CreateEvent>,
    ) -> Result<()> {
        // A container that already holds the id is not this create's, whoever made it: fail
        // before pulling, and the rollback leaves it alone.
        if self.runtime.container_owner(record.id.as_str()).await? != ContainerOwner::Absent {
            return Err(super::lifecycle::foreign_container(record));
        }
        let (sender, mut receiver) = mpsc::channel(64);
        let forward = {
            let log = log.clone();
            tokio::spawn(async move {
                while let Some(event) = receiver.recv().await {
                    log.push(CreateEvent::Pull(event));
                }
            })
        };
        let pulled = self.runtime.pull_image(&record.spec.image, pull_policy, &sender).await;
        drop(sender);
        let _ = forward.await;
        let image = pulled?;

        log.push(CreateEvent::Creating);
        record.image_digest = image.digest.clone();
        self.save(record).await?;
        let restore = restore_data.then(|| {
            let archive = self.preserved_archive(&record.id);
            let restoring_log = log.clone();
            Box::new(move |data_dir: &Path| restore_with_progress(&archive, data_dir, &restoring_log)) as DataWork
        });
        self.network.attach(&record.id, &record.spec.network).await?;
        crate::failpoint::hit("create.network");
        self.create_container_for(record, &image, restore).await?;
        crate::failpoint::hit("create.container");

        self.runtime.start_task(record.id.as_str(), &record.snapshot_key).await?;
        let now = OffsetDateTime::now_utc();
        record.state = WorkspaceState::Running;
        record.last_start_time = Some(now);
        record.current_version = 1;
        self.save(record).await?;
        self.store.insert_version(&record.id, 1, "create", &record.spec.image, &record.image_digest).await?;
        if restore_data {
            let archive = self.preserved_archive(&record.id);
            if let Err(err) = tokio::fs::remove_file(&archive).await {
                warn!(workspace_id = %record.id, error = %err, "cannot remove the restored archive");
            }
            self.event(&record.id, "data_restored", "preserved /data restored at create").await;
        }
        self.event(&record.id, "created", &format!("created from {}", record.spec.image)).await;
        Ok(())
    }

    /// Makes the workspace's container from the stored spec: prepares its writable snapshot (kept
    /// when it exists), then, through one host mount of it, resolves the image's `User` from the
    /// image's own /etc/passwd and /etc/group, gives /data to that user and runs `data_work` on
    /// /data (a restore), and finally creates the container with fresh /etc files. Used by create
    /// and by the rebuild of a vanished container.
    pub(super) async fn create_container_for(
        &self,
        record: &WorkspaceRecord,
        image: &PulledImage,
        data_work: Option<DataWork>,
    ) -> Result<()> {
        self.runtime.prepare_snapshot(record.id.as_str(), &record.snapshot_key, &image.chain_id).await?;
        let image_user = image.config.user.clone();
        let user = self
            .with_rootfs(record, move |rootfs| {
                let user = crate::data::resolve_user(rootfs, &image_user)?;
                let data_dir = crate::data::prepare_data_dir(rootfs, user.uid, user.gid)?;
                crate::failpoint::hit("create.data");
                if let Some(work) = data_work {
                    work(&data_dir)?;
                }
                Ok(user)
            })
            .await?;
        let etc_dir = self.write_etc_files(&record.id).await?;
        let agent_dir = self.workspace_dir(&record.id).join(crate::process::AGENT_DIR_NAME);
        create_private_dir(&agent_dir).await?;
        let network_namespace = self.network.namespace_for(&record.id, &record.spec.network).await?;
        self.runtime
            .create_container(&ContainerSpec {
                id: record.id.as_str(),
                image,
                env: &record.spec.env,
                resources: record.spec.resources,
                cdi_devices: &record.spec.cdi_devices,
                labels: &record.spec.labels,
                snapshot_key: &record.snapshot_key,
                user: &user,
                etc_dir: &etc_dir,
                agent_dir: &agent_dir,
                network_namespace: network_namespace.as_deref(),
            })
            .await
    }

    /// Writes /etc/hosts, /etc/hostname and /etc/resolv.conf sources for the container (the
    /// latter from the network's resolvers: the host's own may be loopback addresses).
    async fn write_etc_files(&self, id: &WorkspaceId) -> Result<std::path::PathBuf> {
        let etc_dir = self.workspace_dir(id).join("etc");
        let write_failed = |err: std::io::Error| {
            Error::internal(format!("cannot write the workspace's etc files under {}: {err}", etc_dir.display()))
        };
        tokio::fs::create_dir_all(&etc_dir).await.map_err(write_failed)?;
        tokio::fs::write(etc_dir.join("hosts"), hosts_file(id)).await.map_err(write_failed)?;
        tokio::fs::write(etc_dir.join("hostname"), format!("{id}\n")).await.map_err(write_failed)?;
        tokio::fs::write(etc_dir.join("resolv.conf"), self.network.resolv_conf()).await.map_err(write_failed)?;
        Ok(etc_dir)
    }

    /// Removes the workspace's container (only when berth made it: a container with the same
    /// id and without berth's labels is someone else's and stays), its snapshots (the writable
    /// layer and every commit), its files and,
    /// once those are gone, its record (rollback, delete, and reconcile of interrupted creates
    /// and deletes).
    pub(super) async fn remove_everything(&self, record: &WorkspaceRecord) -> Result<()> {
        match self.runtime.container_owner(record.id.as_str()).await? {
            ContainerOwner::Berth => self.runtime.delete_container(record.id.as_str()).await?,
            ContainerOwner::Foreign => {
                warn!(workspace_id = %record.id, "a container with this id is not berth's; leaving it alone");
            }
            ContainerOwner::Absent => {}
        }
        // After the task is gone: the CNI DEL then meets the pinned namespace, never a dead one.
        self.network.detach(&record.id).await?;
        self.remove_workspace_snapshots(record).await?;
        if let Err(err) = tokio::fs::remove_dir_all(self.workspace_dir(&record.id)).await
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(workspace_id = %record.id, error = %err, "cannot remove the workspace directory");
        }
        self.store.delete_workspace(&record.id).await
    }

    /// Rolls a failed create back; if containerd cannot clean up now, the workspace stays as
    /// FAILED so DeleteWorkspace or the next boot can finish the job.
    async fn roll_back(&self, record: &mut WorkspaceRecord, cause: &Error) {
        let Err(err) = self.remove_everything(record).await else {
            return;
        };
        warn!(workspace_id = %record.id, error = %err, "rollback incomplete; marking the workspace failed");
        record.state = WorkspaceState::Failed;
        // Never brought up again by a boot: a failed create is only ever deleted.
        record.desired_state = DesiredState::Stopped;
        record.failure_reason = cause.reason().as_str().to_owned();
        record.failure_message = format!("{cause}; cleaning up also failed: {err}; delete the workspace");
        if let Err(err) = self.save(record).await {
            warn!(workspace_id = %record.id, error = %err, "cannot mark the workspace failed");
        }
    }
}

/// Work on a workspace's /data (host path) while its snapshot is mounted; runs in a blocking thread.
pub(super) type DataWork = Box<dyn FnOnce(&Path) -> Result<()> + Send>;

/// Extracts the preserved archive into /data, reporting progress at most every
/// [`PROGRESS_INTERVAL`].
fn restore_with_progress(archive: &Path, data_dir: &Path, log: &OperationLog<CreateEvent>) -> Result<()> {
    let total_bytes = std::fs::metadata(archive).map(|meta| meta.len()).unwrap_or(0);
    log.push(CreateEvent::Restoring { bytes_done: 0, total_bytes });
    let mut last = Instant::now();
    let mut done = 0;
    crate::data::restore_from_file(archive, data_dir, &mut |bytes| {
        done = bytes;
        if last.elapsed() >= PROGRESS_INTERVAL {
            last = Instant::now();
            log.push(CreateEvent::Restoring { bytes_done: bytes, total_bytes });
        }
    })?;
    log.push(CreateEvent::Restoring { bytes_done: done.max(total_bytes), total_bytes });
    Ok(())
}

/// The content of /etc/hosts of a workspace.
fn hosts_file(id: &WorkspaceId) -> String {
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{id}\n")
}

/// The error for operations on a workspace whose create failed and could not be rolled back.
pub(super) fn failed_create(record: &WorkspaceRecord) -> Error {
    Error::new(
        Reason::InvalidStateTransition,
        format!(
            "workspace {} failed to be created ({}); delete it, then create it again",
            record.id, record.failure_message
        ),
    )
}

fn attach(id: &WorkspaceId, operation: &CreateOperation, spec: &WorkspaceSpec) -> Result<CreateStream> {
    if operation.spec != *spec {
        return Err(Error::new(
            Reason::WorkspaceAlreadyExists,
            format!(
                "workspace {id} is being created with a different spec; wait for it and delete it, or use another id"
            ),
        ));
    }
    Ok(operation.log.subscribe())
}

/// A directory only root may enter (inside the workspace too: the agent's socket is in it).
async fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    let failed = |err: std::io::Error| Error::internal(format!("cannot create {}: {err}", dir.display()));
    tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    tokio::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).await.map_err(failed)
}
