//! The Manager: the only owner of workspace state transitions. Operations on one workspace are
//! serialized by a per-workspace async mutex; different workspaces proceed in parallel.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tracing::warn;

use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use super::create::CreateOperation;
use super::events::EventBus;
use super::files::FileGates;
use super::locks::{InFlight, WorkspaceGuard, WorkspaceLocks};
use super::monitor::Restarts;
use super::selector::{decode_page_token, encode_page_token, parse_label_selector};
use crate::data::WritableLayer;
use crate::error::{Error, Reason, Result};
use crate::model::{WorkspaceId, WorkspaceInfo, WorkspaceRecord, WorkspaceState};
use crate::process::Processes;
use crate::runtime::Runtime;
use crate::store::Store;

/// Default and maximum page sizes of ListWorkspaces.
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 500;

/// How long StopWorkspace waits after SIGTERM when the caller gives no timeout.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings the Manager needs from the server configuration.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub namespace: String,
    pub state_dir: PathBuf,
    pub default_image: String,
    pub snapshotter: String,
    pub runtime_name: String,
    /// What one ImportData may extract.
    pub import_limits: crate::data::ExtractLimits,
    /// How many snapshots may stack on top of a workspace's image before CreateSnapshot refuses
    /// (each is an overlayfs lower layer; the kernel stacks about 500).
    pub max_snapshot_depth: u32,
    /// How many events the events table keeps (the newest).
    pub event_retention_count: u64,
    /// How old an event may get before it is pruned.
    pub event_retention_age: Duration,
    /// The host's CDI devices (the runtime applies them from the same spec directories).
    pub devices: Arc<crate::devices::Devices>,
    /// Workspace networks (bridge, firewall, DNS), or loopback only.
    pub network: Arc<crate::network::Network>,
}

/// One page of ListWorkspaces.
#[derive(Debug)]
pub struct WorkspaceList {
    pub workspaces: Vec<WorkspaceInfo>,
    pub next_page_token: String,
}

/// Orchestrates workspaces over the runtime and the store.
pub struct Manager {
    pub(super) config: ManagerConfig,
    pub(super) store: Store,
    pub(super) runtime: Arc<dyn Runtime>,
    pub(super) locks: WorkspaceLocks,
    /// Start, stop, delete and data operations in flight, so a retry attaches to the first.
    pub(super) in_flight: InFlight<Option<WorkspaceInfo>>,
    /// Snapshot operations in flight, keyed by what they do (kind, workspace and target), so a
    /// retry attaches to the first.
    pub(super) snapshot_ops: InFlight<super::snapshot::SnapshotAnswer>,
    /// Creates in flight, so a second create of the same id attaches to the first.
    pub(super) creating: Mutex<HashMap<WorkspaceId, Arc<CreateOperation>>>,
    /// Every detached task (creates, lifecycle and data operations, the boot reconcile), so a
    /// shutdown can let them finish before the store closes.
    pub(super) tasks: TaskTracker,
    /// True once the boot reconcile has gone through every workspace.
    pub(super) reconciled: watch::Sender<bool>,
    /// Workspaces the boot reconcile has not reached yet: reads of them wait (their stored
    /// state may be stale), as mutating calls wait on their lock.
    pub(super) reconciling: Mutex<HashSet<WorkspaceId>>,
    pub(super) reconcile_progress: Notify,
    /// Processes started through ProcessService, per workspace.
    pub(super) processes: Processes,
    /// Writable snapshot key → its own directory on the host (the overlay upper dir), for
    /// `host_data_path`; a key's directory never changes, so it is asked once.
    pub(super) snapshot_dirs: Mutex<HashMap<String, PathBuf>>,
    /// File operations on running workspaces, so a stop can end them first.
    pub(super) file_gates: FileGates,
    /// Stores events and broadcasts them to WatchEvents streams.
    pub(super) events: EventBus,
    /// Automatic restarts of workspaces whose init exited on its own.
    pub(super) restarts: Restarts,
    /// Workspace networks (the same as `config.network`).
    pub(super) network: Arc<crate::network::Network>,
}

impl Manager {
    /// Creates a Manager over an opened store and a runtime.
    pub fn new(config: ManagerConfig, store: Store, runtime: Arc<dyn Runtime>) -> Self {
        let processes = Processes::new(runtime.clone(), config.state_dir.join("workspaces"));
        Self {
            processes,
            network: config.network.clone(),
            config,
            store,
            runtime,
            locks: WorkspaceLocks::default(),
            in_flight: InFlight::default(),
            snapshot_ops: InFlight::default(),
            creating: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            reconciled: watch::channel(false).0,
            reconciling: Mutex::new(HashSet::new()),
            reconcile_progress: Notify::new(),
            snapshot_dirs: Mutex::new(HashMap::new()),
            file_gates: FileGates::default(),
            events: EventBus::default(),
            restarts: Restarts::default(),
        }
    }

    /// Checks that the runtime answers; returns its version.
    pub async fn check_runtime(&self) -> Result<String> {
        self.runtime.ping().await
    }

    /// Whether the boot reconcile has finished; health reports NOT_SERVING until it has.
    pub fn is_reconciled(&self) -> bool {
        *self.reconciled.borrow()
    }

    /// Marks the boot reconcile done when it could not even read the store, so health follows
    /// containerd alone instead of staying NOT_SERVING forever.
    pub fn reconciled_without_store(&self) {
        self.reconciled.send_replace(true);
    }

    /// Resolves once the boot reconcile has finished.
    pub async fn wait_reconciled(&self) {
        let mut reconciled = self.reconciled.subscribe();
        let _ = reconciled.wait_for(|done| *done).await;
    }

    /// Stops taking new detached work and waits up to `within` for what runs (creates, stops,
    /// deletes, data operations) to finish; false if some were still running.
    pub async fn drain(&self, within: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait()).await.is_ok()
    }

    /// Waits until the boot reconcile has dealt with `id` (all workspaces when `None`); returns
    /// at once when no reconcile runs.
    pub(super) async fn wait_for_reconcile(&self, id: Option<&WorkspaceId>) {
        loop {
            let progress = self.reconcile_progress.notified();
            tokio::pin!(progress);
            // Register before looking, so a removal between the look and the wait is not lost.
            progress.as_mut().enable();
            {
                let reconciling = self.reconciling.lock().expect("reconciling set");
                let waiting = match id {
                    Some(id) => reconciling.contains(id),
                    None => !reconciling.is_empty(),
                };
                if !waiting {
                    return;
                }
            }
            progress.await;
        }
    }

    /// Waits for the lock serializing operations on one workspace.
    pub(super) async fn lock(&self, id: &WorkspaceId) -> WorkspaceGuard {
        self.locks.lock(id).await
    }

    /// The stored record, or WORKSPACE_NOT_FOUND.
    pub(super) async fn record(&self, id: &WorkspaceId) -> Result<WorkspaceRecord> {
        self.store.get_workspace(id).await?.ok_or_else(|| Error::workspace_not_found(id.as_str()))
    }

    /// The workspace with this id.
    pub async fn get(&self, workspace_id: &str) -> Result<WorkspaceInfo> {
        let id = WorkspaceId::parse(workspace_id)?;
        self.wait_for_reconcile(Some(&id)).await;
        let record = self.record(&id).await?;
        Ok(self.info(record).await)
    }

    /// A page of workspaces in id order, filtered by a `k=v,...` label selector.
    pub async fn list(&self, page_size: i32, page_token: &str, label_selector: &str) -> Result<WorkspaceList> {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size < 0 => {
                return Err(Error::new(
                    Reason::InvalidArgument,
                    format!(
                        "page_size {size} is negative; pass 0 for the default of {DEFAULT_PAGE_SIZE} or up to {MAX_PAGE_SIZE}"
                    ),
                ));
            }
            size => (size as u32).min(MAX_PAGE_SIZE),
        };
        let after = decode_page_token(page_token)?;
        let selector = parse_label_selector(label_selector)?;
        self.wait_for_reconcile(None).await;
        let page = self.store.list_workspaces(after.as_deref(), limit, &selector).await?;
        // The runtime is asked about every workspace of the page at once, not one after another.
        let workspaces = futures::future::join_all(page.workspaces.into_iter().map(|record| self.info(record))).await;
        Ok(WorkspaceList {
            workspaces,
            next_page_token: page.next_after.as_deref().map(encode_page_token).unwrap_or_default(),
        })
    }

    /// The record plus what the runtime reports now. The observed state of a settled workspace
    /// follows its task; when containerd cannot be asked, the stored state stands.
    pub(super) async fn info(&self, mut record: WorkspaceRecord) -> WorkspaceInfo {
        let mut init_pid = 0;
        let mut process_count = 0;
        // A workspace that failed after it was created (a rebuild that could not finish) is
        // still asked: its task may run again, and callers should see that.
        let settled = matches!(record.state, WorkspaceState::Running | WorkspaceState::Stopped)
            || (record.state == WorkspaceState::Failed && record.current_version > 0);
        if settled {
            match self.runtime.task(record.id.as_str()).await {
                Ok(Some(task)) if task.running => {
                    record.state = WorkspaceState::Running;
                    init_pid = task.pid;
                    process_count = self.runtime.process_count(record.id.as_str()).await.unwrap_or(0);
                }
                Ok(_) if record.state != WorkspaceState::Failed => record.state = WorkspaceState::Stopped,
                Ok(_) => {}
                Err(err) => warn!(workspace_id = %record.id, error = %err, "cannot read the task state"),
            }
        }
        let has_preserved_data = tokio::fs::try_exists(self.preserved_archive(&record.id)).await.unwrap_or(false);
        let host_data_path = if record.current_version > 0 {
            self.snapshot_dir(&record.snapshot_key).await.map(|dir| dir.join("data"))
        } else {
            None
        };
        let restart_status = self.restarts.status(&record.id);
        WorkspaceInfo {
            restart_status,
            network: self.network.attachment(&record.id),
            dns_servers: self.network.dns_servers().to_vec(),
            record,
            namespace: self.config.namespace.clone(),
            snapshotter: self.config.snapshotter.clone(),
            runtime: self.config.runtime_name.clone(),
            init_pid,
            process_count,
            has_preserved_data,
            host_data_path,
        }
    }

    /// The writable snapshot's own directory on the host; None when the snapshot is missing or
    /// is neither an overlay nor a bind mount.
    pub(super) async fn snapshot_dir(&self, snapshot_key: &str) -> Option<PathBuf> {
        if let Some(dir) = self.snapshot_dirs.lock().expect("snapshot dirs").get(snapshot_key) {
            return Some(dir.clone());
        }
        let mounts = self.runtime.snapshot_mounts(snapshot_key).await.ok()?;
        let upper = WritableLayer::from_mounts(&mounts).ok()?.upper;
        let mut dirs = self.snapshot_dirs.lock().expect("snapshot dirs");
        // Bounded by the number of workspaces: keys of deleted workspaces are dropped lazily.
        if dirs.len() > 10_000 {
            dirs.clear();
        }
        dirs.insert(snapshot_key.to_owned(), upper.clone());
        Some(upper)
    }

    /// Where DeleteWorkspace(preserve_data) keeps a workspace's /data archive.
    pub(super) fn preserved_archive(&self, id: &WorkspaceId) -> PathBuf {
        self.config.state_dir.join("preserved").join(format!("{id}.tar.gz"))
    }

    /// Where stopped workspaces' root filesystems are mounted for /data operations.
    pub(super) fn mount_dir(&self) -> PathBuf {
        self.config.state_dir.join("mnt")
    }

    /// The host directory of a workspace's own files (hosts, resolv.conf).
    pub(super) fn workspace_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.config.state_dir.join("workspaces").join(id.as_str())
    }

    /// Persists a record after stamping its update time.
    pub(super) async fn save(&self, record: &mut WorkspaceRecord) -> Result<()> {
        record.update_time = OffsetDateTime::now_utc();
        self.store.update_workspace(record).await
    }

    /// Appends a lifecycle event with structured detail (a snapshot's name and version) and
    /// broadcasts it; failures are logged, never fatal. The detail gets the workspace's stored
    /// state when it names none, so every event says the state it left the workspace in.
    pub(super) async fn event_detail(
        &self,
        id: &WorkspaceId,
        kind: &str,
        message: &str,
        mut detail: serde_json::Value,
    ) {
        if detail.get("state").is_none()
            && let Ok(Some(record)) = self.store.get_workspace(id).await
            && let Some(fields) = detail.as_object_mut()
        {
            fields.insert("state".to_owned(), record.state.as_str().into());
        }
        if let Err(err) = self.events.publish(&self.store, id.as_str(), kind, message, &detail).await {
            warn!(workspace_id = %id, kind, error = %err, "cannot record an event");
        }
    }

    /// Appends a lifecycle event; failures are logged, never fatal.
    pub(super) async fn event(&self, id: &WorkspaceId, kind: &str, message: &str) {
        self.event_detail(id, kind, message, serde_json::json!({})).await;
    }

    /// Records a change of the observed state, from what to what.
    pub(super) async fn state_changed(
        &self,
        id: &WorkspaceId,
        previous: WorkspaceState,
        state: WorkspaceState,
        failure_reason: &str,
        message: &str,
    ) {
        let mut detail = serde_json::json!({ "previous_state": previous.as_str(), "state": state.as_str() });
        if !failure_reason.is_empty() {
            detail["failure_reason"] = failure_reason.into();
        }
        self.event_detail(id, "state_changed", message, detail).await;
    }

    /// Streams stored and live events; see [`EventBus::watch`].
    pub fn watch_events(
        &self,
        query: crate::store::EventQuery,
        replay: bool,
        heartbeat: Duration,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<super::events::WatchItem>> {
        self.events.watch(self.store.clone(), query, replay, heartbeat)
    }
}

/// Rejects operations on a workspace that is being deleted or created.
pub(super) fn ensure_settled(record: &WorkspaceRecord, operation: &str) -> Result<()> {
    match record.state {
        WorkspaceState::Deleting => Err(Error::new(
            Reason::WorkspaceDeleting,
            format!(
                "workspace {} is being deleted; {operation} is not possible; wait for the deletion to finish or retry DeleteWorkspace",
                record.id
            ),
        )),
        WorkspaceState::Creating => Err(Error::new(
            Reason::InvalidStateTransition,
            format!("workspace {} is still being created; wait for its ready event before {operation}", record.id),
        )),
        WorkspaceState::Failed if record.current_version == 0 => Err(super::create::failed_create(record)),
        _ => Ok(()),
    }
}
