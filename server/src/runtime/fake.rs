//! An in-memory [`Runtime`] for fast unit tests of the Manager's decisions (rollback,
//! reconcile, idempotency, coalescing). Snapshots are plain directories under a temp dir,
//! mounted with bind mounts, so the Manager's /data code runs for real. Never the only test of a
//! feature: the end-to-end suite runs the same paths against containerd.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    CgroupStats, ContainerOwner, ContainerSpec, ExecIo, ExecSpec, ExecState, ImageConfig, LayerUsage, ProcessBase,
    PtySize, PullEvent, PullPolicy, PullProgress, PulledImage, Runtime, SnapshotInfo, StartedExec, TaskMetrics,
    TaskState,
};
use crate::data::{MountSpec, ResolvedUser};
use crate::error::{Error, Reason, Result};
use crate::model::Resources;

/// The fake's whole state, public to the tests that inspect it.
#[derive(Default)]
pub struct FakeState {
    /// Container id → who made it.
    pub containers: HashMap<String, ContainerOwner>,
    /// The user each container was created with.
    pub users: HashMap<String, ResolvedUser>,
    pub snapshots: HashSet<String>,
    /// Snapshot → the snapshot it is built on.
    pub parents: HashMap<String, String>,
    /// Snapshots that were committed (read-only).
    pub committed: HashSet<String>,
    /// Snapshot → the workspace its labels name.
    pub owners: HashMap<String, String>,
    /// Container id → the writable snapshot it points at.
    pub container_keys: HashMap<String, String>,
    /// Container id → the image (reference) its spec was made from.
    pub container_images: HashMap<String, String>,
    /// Container id → the limits its stored spec holds.
    pub container_resources: HashMap<String, Resources>,
    /// Container id → the limits its running task has (set at start and by live updates).
    pub task_resources: HashMap<String, Resources>,
    /// Container id → the environment overrides its spec was made with.
    pub container_env: HashMap<String, BTreeMap<String, String>>,
    /// Container id → its caller labels.
    pub container_labels: HashMap<String, BTreeMap<String, String>>,
    /// Container id → the CDI devices its spec was made with.
    pub container_devices: HashMap<String, Vec<String>>,
    /// Container id → running.
    pub tasks: HashMap<String, bool>,
    /// Container id → how its init exited (set by [`FakeRuntime::crash`]).
    pub exit_statuses: HashMap<String, u32>,
    /// Where task notices go: the stream of the latest `task_notices` call.
    pub notices: Option<tokio::sync::mpsc::UnboundedSender<Result<crate::runtime::TaskNotice>>>,
    /// How many times `task_notices` was called.
    pub subscriptions: u32,
    /// Container id → the cgroup figures its running task reports.
    pub cgroups: HashMap<String, CgroupStats>,
    /// Operation name → the error its next calls return (until cleared).
    pub failures: HashMap<&'static str, Error>,
    /// Operation name → how many times it answered with the injected failure before clearing
    /// itself (0: never clears).
    pub fail_times: HashMap<&'static str, u32>,
}

/// The fake runtime.
pub struct FakeRuntime {
    pub state: Mutex<FakeState>,
    root: tempfile::TempDir,
    /// The image's `User`.
    pub image_user: Mutex<String>,
    pub stop_calls: AtomicU32,
    /// How many times `task_metrics` was called.
    pub metrics_calls: AtomicU32,
    /// How long a stop takes.
    pub stop_delay: Mutex<Duration>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            root: tempfile::tempdir().expect("a temp dir for fake snapshots"),
            image_user: Mutex::new(String::new()),
            stop_calls: AtomicU32::new(0),
            metrics_calls: AtomicU32::new(0),
            stop_delay: Mutex::new(Duration::ZERO),
        }
    }

    /// Makes `operation` fail with `error` the next `times` calls (0: until cleared).
    pub fn fail(&self, operation: &'static str, error: Error, times: u32) {
        let mut state = self.state.lock().unwrap();
        state.failures.insert(operation, error);
        state.fail_times.insert(operation, times);
    }

    /// Ends the init of `id` on its own with `exit_status`, as a crash would, and reports it.
    pub fn crash(&self, id: &str, exit_status: u32) {
        let mut state = self.state.lock().unwrap();
        state.tasks.insert(id.to_owned(), false);
        state.exit_statuses.insert(id.to_owned(), exit_status);
        if let Some(notices) = &state.notices {
            let _ = notices.send(Ok(crate::runtime::TaskNotice::Exited { id: id.to_owned(), exit_status }));
        }
    }

    /// Ends the notice stream with an error, as a containerd restart does.
    pub fn break_notices(&self) {
        if let Some(notices) = self.state.lock().unwrap().notices.take() {
            let _ = notices.send(Err(unavailable()));
        }
    }

    /// Puts a container berth did not make under `id`.
    pub fn add_foreign_container(&self, id: &str) {
        self.state.lock().unwrap().containers.insert(id.to_owned(), ContainerOwner::Foreign);
    }

    /// The host directory of a snapshot.
    pub fn snapshot_dir(&self, key: &str) -> PathBuf {
        self.root.path().join(key)
    }

    fn check(&self, operation: &'static str) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        let Some(error) = state.failures.get(operation).cloned() else {
            return Ok(());
        };
        if let Some(times) = state.fail_times.get_mut(operation)
            && *times > 0
        {
            *times -= 1;
            if *times == 0 {
                state.failures.remove(operation);
            }
        }
        Err(error)
    }
}

/// The fake image's layers, base first: chain ids as the real runtime names them.
pub const IMAGE_CHAIN: [&str; 2] = ["image-base", "image"];

/// A reference ending in this tag is a second image (for image changes): its top layer is
/// [`NEXT_IMAGE_TOP`] on the same base, its digest `sha256:fake-next`, and its /etc/os-release
/// says `next`.
pub const NEXT_IMAGE_TAG: &str = ":next";
pub const NEXT_IMAGE_TOP: &str = "image-next";

/// Copies a directory tree (what an overlay on top of `from` shows at first).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
            let mode = std::fs::metadata(entry.path()).unwrap().permissions();
            std::fs::set_permissions(&target, mode).unwrap();
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Bytes of regular files under a directory.
fn tree_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_size(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map(|meta| meta.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// containerd not answering, as the real runtime reports it.
pub fn unavailable() -> Error {
    Error::new(Reason::ContainerdUnavailable, "containerd is not answering (fake)")
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn ping(&self) -> Result<String> {
        self.check("ping")?;
        Ok("fake".to_owned())
    }

    fn normalize_image(&self, reference: &str) -> Result<String> {
        Ok(reference.to_owned())
    }

    async fn pull_image(&self, reference: &str, _policy: PullPolicy, progress: &PullProgress) -> Result<PulledImage> {
        self.check("pull_image")?;
        let _ = progress
            .send(PullEvent::Pulling {
                image: reference.to_owned(),
                digest: "sha256:fake".to_owned(),
                total_layers: 1,
                total_bytes: 1,
            })
            .await;
        let next = reference.ends_with(NEXT_IMAGE_TAG);
        let (top, digest) = if next { (NEXT_IMAGE_TOP, "sha256:fake-next") } else { ("image", "sha256:fake") };
        let image_dir = self.root.path().join(top);
        std::fs::create_dir_all(image_dir.join("etc")).unwrap();
        std::fs::write(image_dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nbot:x:1000:1000::/home/bot:/bin/sh\n")
            .unwrap();
        std::fs::write(image_dir.join("etc/group"), "root:x:0:\nbot:x:1000:\nstaff:x:50:bot\n").unwrap();
        std::fs::write(image_dir.join("etc/os-release"), if next { "next" } else { "first" }).unwrap();
        Ok(PulledImage {
            name: reference.to_owned(),
            digest: digest.to_owned(),
            config: ImageConfig { user: self.image_user.lock().unwrap().clone(), ..ImageConfig::default() },
            chain_id: top.to_owned(),
        })
    }

    async fn prepare_snapshot(&self, id: &str, key: &str, parent: &str) -> Result<()> {
        self.check("prepare_snapshot")?;
        let mut state = self.state.lock().unwrap();
        if state.snapshots.insert(key.to_owned()) {
            // A copy of the parent, as an overlay would show it.
            copy_tree(&self.root.path().join(parent), &self.snapshot_dir(key));
            state.parents.insert(key.to_owned(), parent.to_owned());
            state.owners.insert(key.to_owned(), id.to_owned());
        }
        Ok(())
    }

    async fn create_container(&self, spec: &ContainerSpec<'_>) -> Result<()> {
        self.check("create_container")?;
        let mut state = self.state.lock().unwrap();
        if state.containers.contains_key(spec.id) {
            return Err(Error::new(Reason::WorkspaceAlreadyExists, "container exists (fake)"));
        }
        state.containers.insert(spec.id.to_owned(), ContainerOwner::Berth);
        state.container_keys.insert(spec.id.to_owned(), spec.snapshot_key.to_owned());
        state.container_images.insert(spec.id.to_owned(), spec.image.name.clone());
        state.container_resources.insert(spec.id.to_owned(), spec.resources);
        state.container_env.insert(spec.id.to_owned(), spec.env.clone());
        state.container_labels.insert(spec.id.to_owned(), spec.labels.clone());
        state.container_devices.insert(spec.id.to_owned(), spec.cdi_devices.to_vec());
        state.users.insert(spec.id.to_owned(), spec.user.clone());
        Ok(())
    }

    async fn container_owner(&self, id: &str) -> Result<ContainerOwner> {
        self.check("container_owner")?;
        Ok(self.state.lock().unwrap().containers.get(id).copied().unwrap_or(ContainerOwner::Absent))
    }

    async fn list_containers(&self) -> Result<Vec<String>> {
        Ok(self.state.lock().unwrap().containers.keys().cloned().collect())
    }

    async fn delete_container(&self, id: &str) -> Result<()> {
        self.check("delete_container")?;
        let mut state = self.state.lock().unwrap();
        state.tasks.remove(id);
        state.containers.remove(id);
        state.container_keys.remove(id);
        state.container_images.remove(id);
        Ok(())
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        Ok(self.state.lock().unwrap().snapshots.contains(key))
    }

    async fn snapshot_mounts(&self, key: &str) -> Result<Vec<MountSpec>> {
        Ok(vec![MountSpec {
            kind: "bind".to_owned(),
            source: self.snapshot_dir(key).display().to_string(),
            options: vec!["rbind".to_owned(), "rw".to_owned()],
        }])
    }

    async fn remove_snapshot(&self, key: &str) -> Result<()> {
        self.check("remove_snapshot")?;
        let mut state = self.state.lock().unwrap();
        if !state.snapshots.contains(key) {
            return Ok(());
        }
        let children: Vec<_> = state
            .parents
            .iter()
            .filter(|(child, parent)| *parent == key && state.snapshots.contains(*child))
            .map(|(child, _)| child.clone())
            .collect();
        if !children.is_empty() {
            return Err(Error::new(Reason::RuntimeError, format!("snapshot {key} has children {children:?} (fake)")));
        }
        state.snapshots.remove(key);
        state.parents.remove(key);
        state.committed.remove(key);
        state.owners.remove(key);
        let _ = std::fs::remove_dir_all(self.snapshot_dir(key));
        Ok(())
    }

    async fn snapshot_info(&self, key: &str) -> Result<Option<SnapshotInfo>> {
        self.check("snapshot_info")?;
        if key == NEXT_IMAGE_TOP {
            return Ok(Some(SnapshotInfo {
                name: key.to_owned(),
                parent: IMAGE_CHAIN[0].to_owned(),
                committed: true,
                labels: Default::default(),
                create_time: None,
            }));
        }
        if let Some(index) = IMAGE_CHAIN.iter().position(|layer| *layer == key) {
            return Ok(Some(SnapshotInfo {
                name: key.to_owned(),
                parent: index.checked_sub(1).map(|below| IMAGE_CHAIN[below].to_owned()).unwrap_or_default(),
                committed: true,
                labels: Default::default(),
                create_time: None,
            }));
        }
        let state = self.state.lock().unwrap();
        if !state.snapshots.contains(key) {
            return Ok(None);
        }
        let labels =
            state.owners.get(key).map(|id| ("berth.workspace.id".to_owned(), id.clone())).into_iter().collect();
        Ok(Some(SnapshotInfo {
            name: key.to_owned(),
            parent: state.parents.get(key).cloned().unwrap_or_default(),
            committed: state.committed.contains(key),
            labels,
            create_time: None,
        }))
    }

    async fn commit_snapshot(&self, id: &str, active_key: &str, name: &str, _snapshot_name: &str) -> Result<()> {
        self.check("commit_snapshot")?;
        let mut state = self.state.lock().unwrap();
        if !state.snapshots.contains(active_key) {
            if state.committed.contains(name) {
                return Ok(());
            }
            return Err(Error::new(Reason::RuntimeError, format!("snapshot {active_key} does not exist (fake)")));
        }
        std::fs::rename(self.snapshot_dir(active_key), self.snapshot_dir(name)).unwrap();
        state.snapshots.remove(active_key);
        state.snapshots.insert(name.to_owned());
        state.committed.insert(name.to_owned());
        let parent = state.parents.remove(active_key).unwrap_or_default();
        state.parents.insert(name.to_owned(), parent);
        state.owners.remove(active_key);
        state.owners.insert(name.to_owned(), id.to_owned());
        Ok(())
    }

    async fn snapshot_usage(&self, key: &str) -> Result<u64> {
        Ok(tree_size(&self.snapshot_dir(key)))
    }

    async fn layer_usage(&self, key: &str) -> Result<LayerUsage> {
        self.check("layer_usage")?;
        let dir = self.snapshot_dir(key);
        let inodes = walkdir::WalkDir::new(&dir).into_iter().flatten().count() as u64;
        Ok(LayerUsage { bytes: tree_size(&dir), inodes })
    }

    async fn workspace_snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>> {
        self.check("workspace_snapshots")?;
        let keys: Vec<String> = {
            let state = self.state.lock().unwrap();
            state
                .owners
                .iter()
                .filter(|(key, owner)| *owner == id && state.snapshots.contains(*key))
                .map(|(key, _)| key.clone())
                .collect()
        };
        let mut infos = Vec::new();
        for key in keys {
            infos.extend(self.snapshot_info(&key).await?);
        }
        Ok(infos)
    }

    async fn set_container_snapshot(&self, id: &str, key: &str) -> Result<()> {
        self.check("set_container_snapshot")?;
        let mut state = self.state.lock().unwrap();
        if state.containers.get(id) == Some(&ContainerOwner::Berth) {
            state.container_keys.insert(id.to_owned(), key.to_owned());
        }
        Ok(())
    }

    async fn update_resources(&self, id: &str, resources: Resources, running: bool) -> Result<()> {
        self.check("update_resources")?;
        let mut state = self.state.lock().unwrap();
        if state.containers.contains_key(id) {
            state.container_resources.insert(id.to_owned(), resources);
        }
        if running && state.tasks.get(id) == Some(&true) {
            state.task_resources.insert(id.to_owned(), resources);
        }
        Ok(())
    }

    async fn set_container_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        self.check("set_container_labels")?;
        let mut state = self.state.lock().unwrap();
        if state.containers.contains_key(id) {
            state.container_labels.insert(id.to_owned(), labels.clone());
        }
        Ok(())
    }

    async fn start_task(&self, id: &str, _snapshot_key: &str) -> Result<u32> {
        self.check("start_task")?;
        let mut state = self.state.lock().unwrap();
        state.tasks.insert(id.to_owned(), true);
        let stored = state.container_resources.get(id).copied().unwrap_or_default();
        state.task_resources.insert(id.to_owned(), stored);
        Ok(4242)
    }

    async fn stop_task(&self, id: &str, _timeout: Duration) -> Result<bool> {
        self.check("stop_task")?;
        self.stop_calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.stop_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        Ok(self.state.lock().unwrap().tasks.remove(id).unwrap_or(false))
    }

    async fn task(&self, id: &str) -> Result<Option<TaskState>> {
        self.check("task")?;
        let state = self.state.lock().unwrap();
        Ok(state.tasks.get(id).map(|running| TaskState {
            pid: 4242,
            running: *running,
            exit_status: if *running { 0 } else { state.exit_statuses.get(id).copied().unwrap_or(0) },
        }))
    }

    async fn task_notices(&self) -> Result<crate::runtime::TaskNotices> {
        self.check("task_notices")?;
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut state = self.state.lock().unwrap();
        state.notices = Some(sender);
        state.subscriptions += 1;
        Ok(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(receiver)))
    }

    async fn process_count(&self, _id: &str) -> Result<u32> {
        Ok(0)
    }

    async fn task_metrics(&self, id: &str) -> Result<TaskMetrics> {
        self.metrics_calls.fetch_add(1, Ordering::SeqCst);
        self.check("task_metrics")?;
        let state = self.state.lock().unwrap();
        if state.tasks.get(id) != Some(&true) {
            return Ok(TaskMetrics::NoTask);
        }
        Ok(TaskMetrics::Cgroup(state.cgroups.get(id).cloned().unwrap_or_default()))
    }

    async fn remove_stale_leases(&self) -> Result<u32> {
        Ok(0)
    }

    async fn process_base(&self, _id: &str) -> Result<ProcessBase> {
        Ok(ProcessBase::default())
    }

    // Processes are tested end to end against containerd only: the fake has no task to exec in.
    async fn exec(&self, spec: &ExecSpec<'_>) -> Result<StartedExec> {
        Err(Error::not_implemented(&format!("exec in the fake runtime ({})", spec.exec_id)))
    }

    async fn start_agent(&self, id: &str) -> Result<()> {
        Err(Error::not_implemented(&format!("the process agent in the fake runtime ({id})")))
    }

    async fn wait_exec(&self, _id: &str, _exec_id: &str) -> Result<u32> {
        Err(Error::not_implemented("exec in the fake runtime"))
    }

    async fn signal_exec(&self, _id: &str, _exec_id: &str, _signal: u32) -> Result<()> {
        Ok(())
    }

    async fn signal_group(&self, _id: &str, _pgid: u32, _signal: u32) -> Result<()> {
        Ok(())
    }

    async fn resize_exec(&self, _id: &str, _exec_id: &str, _size: PtySize) -> Result<()> {
        Ok(())
    }

    async fn close_exec_stdin(&self, _id: &str, _exec_id: &str) -> Result<()> {
        Ok(())
    }

    async fn exec_state(&self, _id: &str, _exec_id: &str) -> Result<ExecState> {
        Ok(ExecState::Missing)
    }

    async fn reopen_exec(
        &self,
        exec_id: &str,
        _fifo_dir: &std::path::Path,
        _pty: bool,
        _stdin: bool,
    ) -> Result<ExecIo> {
        Err(Error::not_implemented(&format!("exec in the fake runtime ({exec_id})")))
    }

    async fn delete_exec(&self, _id: &str, _exec_id: &str, _fifo_dir: &std::path::Path) -> Result<()> {
        Ok(())
    }
}
