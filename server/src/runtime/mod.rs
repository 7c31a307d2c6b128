//! The container runtime seen by the domain: no tonic and no containerd types cross this trait.

pub mod containerd;
#[cfg(test)]
pub mod fake;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::data::{MountSpec, ResolvedUser};
use crate::error::Result;
use crate::model::Resources;

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

/// A snapshot as the runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's key (active) or name (committed).
    pub name: String,
    /// The committed snapshot it is built on; empty for an image's base layer.
    pub parent: String,
    /// Committed (read-only), rather than active (a writable layer).
    pub committed: bool,
    pub labels: BTreeMap<String, String>,
    pub create_time: Option<time::OffsetDateTime>,
}

/// A sender of pull events; a closed receiver never fails the pull.
pub type PullProgress = mpsc::Sender<PullEvent>;

/// What a workspace container is made of. Its Debug output leaves out environment values.
#[derive(Clone, Copy)]
pub struct ContainerSpec<'a> {
    pub id: &'a str,
    pub image: &'a PulledImage,
    /// Caller variables, over the image's.
    pub env: &'a BTreeMap<String, String>,
    pub resources: Resources,
    /// Qualified CDI device names whose container edits the spec gets.
    pub cdi_devices: &'a [String],
    /// Caller labels, stored on the container next to berth's own.
    pub labels: &'a BTreeMap<String, String>,
    /// Key of the writable snapshot, prepared before (see [`Runtime::prepare_snapshot`]).
    pub snapshot_key: &'a str,
    /// Who PID 1 and the processes exec'd later run as (the image's `User`, resolved).
    pub user: &'a ResolvedUser,
    /// Host directory holding the workspace's hosts, hostname and resolv.conf.
    pub etc_dir: &'a Path,
    /// Host directory shared with the workspace's process agent (its socket).
    pub agent_dir: &'a Path,
    /// The pinned network namespace the container joins; None gives it a fresh one (loopback
    /// only).
    pub network_namespace: Option<&'a Path>,
}

/// Who a container with a workspace's id belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerOwner {
    /// No container has the id.
    Absent,
    /// berth made it for this workspace (its berth labels name the id).
    Berth,
    /// Someone else's container: berth never stops or deletes it.
    Foreign,
}

/// The init process of a workspace as the runtime sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskState {
    /// Host pid of PID 1.
    pub pid: u32,
    pub running: bool,
    /// How PID 1 exited (128+n for a signal) once it has; 0 while it runs.
    pub exit_status: u32,
}

/// What the runtime reports about workspace tasks as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskNotice {
    /// The init process of the container `id` exited (128+n for a signal).
    Exited { id: String, exit_status: u32 },
    /// The kernel's OOM killer killed a process in the container `id`.
    Oom { id: String },
}

/// Task notices until the runtime's connection breaks: then the stream yields an error or ends.
pub type TaskNotices = futures::stream::BoxStream<'static, Result<TaskNotice>>;

impl std::fmt::Debug for ContainerSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerSpec")
            .field("id", &self.id)
            .field("image", &self.image)
            .field("env", &crate::model::RedactedEnv(self.env))
            .field("resources", &self.resources)
            .field("cdi_devices", &self.cdi_devices)
            .field("labels", &self.labels)
            .field("snapshot_key", &self.snapshot_key)
            .field("user", &self.user)
            .field("etc_dir", &self.etc_dir)
            .field("agent_dir", &self.agent_dir)
            .field("network_namespace", &self.network_namespace)
            .finish()
    }
}

/// The disk use of one snapshot's own layer (not its parents), as the snapshotter measures it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// One reading of a task's cgroup, as containerd's `Tasks.Metrics` reports it. Counters are
/// cumulative since the task started; a figure is `None` when the cgroup did not report it (a
/// controller the host does not mount).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupStats {
    /// When the shim read the cgroup.
    pub read_time: Option<time::OffsetDateTime>,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
}

/// CPU time of a cgroup, in nanoseconds since the task started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub usage_nanos: u64,
    pub user_nanos: u64,
    pub system_nanos: u64,
    /// Time the CFS quota held the cgroup back.
    pub throttled_nanos: u64,
}

/// Memory of a cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Charged to the cgroup, page cache included.
    pub usage_bytes: u64,
    /// Usage minus inactive file-backed pages: what the OOM killer weighs.
    pub working_set_bytes: u64,
    /// 0 when unlimited.
    pub limit_bytes: u64,
    /// Processes the OOM killer killed in the cgroup.
    pub oom_kills: u64,
}

/// Tasks (processes and threads) of a cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidsStats {
    pub current: u64,
    /// 0 when unlimited.
    pub limit: u64,
}

/// What `Tasks.Metrics` says about a workspace's task.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskMetrics {
    /// No task runs.
    NoTask,
    /// The task's cgroup figures.
    Cgroup(CgroupStats),
    /// containerd sent figures berth cannot decode; the text says what they were.
    Undecodable(String),
}

/// The size of a pseudo-terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

/// What every process of a workspace starts from: the container's process (PID 1's environment,
/// which is the image's plus the workspace's `env`, working directory and user).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessBase {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub cwd: String,
    /// The user and primary group the container's process runs as (the image's `User`).
    pub uid: u32,
    pub gid: u32,
    /// The supplementary groups of that user.
    pub additional_gids: Vec<u32>,
}

/// A process to exec in a workspace's running task. Its Debug output leaves out the environment.
pub struct ExecSpec<'a> {
    pub id: &'a str,
    /// Unique among the task's exec processes.
    pub exec_id: &'a str,
    /// argv; argv[0] is the executable's path inside the workspace.
    pub args: &'a [String],
    /// The whole environment, `KEY=value`.
    pub env: &'a [String],
    /// Empty: the container's working directory.
    pub cwd: &'a str,
    /// `None`: the container's user (the image's `User`).
    pub user: Option<&'a ResolvedUser>,
    /// `Some`: one pseudo-terminal for stdin, stdout and stderr.
    pub pty: Option<PtySize>,
    /// Whether stdin is a FIFO berth writes to (always with a PTY); otherwise empty.
    pub stdin: bool,
    /// Host directory for the exec's FIFOs.
    pub fifo_dir: &'a Path,
}

impl std::fmt::Debug for ExecSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSpec")
            .field("id", &self.id)
            .field("exec_id", &self.exec_id)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("user", &self.user)
            .field("pty", &self.pty)
            .field("stdin", &self.stdin)
            .finish_non_exhaustive()
    }
}

/// A started exec process: its host pid, process group and the FIFO ends berth holds (opened
/// non-blocking, so reads and writes wait on the async runtime, never in a syscall).
#[derive(Debug)]
pub struct StartedExec {
    pub host_pid: u32,
    /// Its pid inside the workspace's PID namespace; 0 when it exited before berth could read it.
    pub pid: u32,
    /// Its process group (host numbering); 0 when unknown.
    pub pgid: u32,
    pub stdin: Option<pipe::Sender>,
    /// stdout, or the PTY's merged output.
    pub stdout: pipe::Receiver,
    /// `None` with a PTY.
    pub stderr: Option<pipe::Receiver>,
}

/// Where an exec process is, as the runtime sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecState {
    /// The task has no exec with the id.
    Missing,
    Running,
    /// Exited with this status (128+n for a signal), not deleted yet.
    Exited(u32),
}

/// The FIFO ends of an exec, as berth holds them.
#[derive(Debug)]
pub struct ExecIo {
    pub stdin: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: Option<pipe::Receiver>,
}

/// What the Manager needs from a container runtime. Every call is idempotent where the
/// doc says "missing is fine", so rollbacks and reconciles can repeat them.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Checks that the runtime answers and returns its version string.
    async fn ping(&self) -> Result<String>;

    /// Normalizes an image reference the way docker does (`debian` → `docker.io/library/debian:latest`).
    fn normalize_image(&self, reference: &str) -> Result<String>;

    /// Makes the image present and unpacked, reporting progress.
    async fn pull_image(&self, reference: &str, policy: PullPolicy, progress: &PullProgress) -> Result<PulledImage>;

    /// Prepares the writable snapshot `key` on top of `parent` (a GC root labelled with the
    /// workspace id); an existing one is kept.
    async fn prepare_snapshot(&self, id: &str, key: &str, parent: &str) -> Result<()>;

    /// Creates the container on its prepared snapshot. An existing container with the id is
    /// WORKSPACE_ALREADY_EXISTS.
    async fn create_container(&self, spec: &ContainerSpec<'_>) -> Result<()>;

    /// Whether a container with this id exists and whether berth made it (its labels say so).
    async fn container_owner(&self, id: &str) -> Result<ContainerOwner>;

    /// Ids of every container in the namespace.
    async fn list_containers(&self) -> Result<Vec<String>>;

    /// Deletes the task and the container; missing is fine.
    async fn delete_container(&self, id: &str) -> Result<()>;

    /// Whether a snapshot exists.
    async fn snapshot_exists(&self, key: &str) -> Result<bool>;

    /// How to mount a snapshot on the host.
    async fn snapshot_mounts(&self, key: &str) -> Result<Vec<MountSpec>>;

    /// Removes a snapshot; missing is fine. One that others are built on is an error.
    async fn remove_snapshot(&self, key: &str) -> Result<()>;

    /// The snapshot `key`, if it exists.
    async fn snapshot_info(&self, key: &str) -> Result<Option<SnapshotInfo>>;

    /// Commits the writable snapshot `active_key` (no task may run on it) as the read-only
    /// snapshot `name`, consuming `active_key`. The commit is a GC root labelled with the
    /// workspace id and berth's `snapshot_name`. A retry after a commit that happened is fine.
    async fn commit_snapshot(&self, id: &str, active_key: &str, name: &str, snapshot_name: &str) -> Result<()>;

    /// Bytes of disk the snapshot's own layer uses, not counting its parents.
    async fn snapshot_usage(&self, key: &str) -> Result<u64>;

    /// Bytes and inodes the snapshot's own layer uses (for overlayfs, a walk of its upper
    /// directory: its cost grows with the number of files).
    async fn layer_usage(&self, key: &str) -> Result<LayerUsage>;

    /// Every snapshot labelled with the workspace id (its writable layer and its commits).
    async fn workspace_snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>>;

    /// Points the container at another writable snapshot (what its task mounts and what keeps
    /// the snapshot referenced); a missing container is fine.
    async fn set_container_snapshot(&self, id: &str, key: &str) -> Result<()>;

    /// Applies `resources` to the container: written into its stored spec (so every later start
    /// has them) and, when `running`, to its task's cgroup at once. A missing container is fine.
    async fn update_resources(&self, id: &str, resources: Resources, running: bool) -> Result<()>;

    /// Replaces the caller labels stored on the container (berth's own stay); a missing
    /// container is fine.
    async fn set_container_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<()>;

    /// Starts PID 1 (idempotent); returns its host pid.
    async fn start_task(&self, id: &str, snapshot_key: &str) -> Result<u32>;

    /// SIGTERM, SIGKILL to all after `timeout`, then deletes the task; missing is fine. Returns
    /// whether a running task was stopped.
    async fn stop_task(&self, id: &str, timeout: Duration) -> Result<bool>;

    /// The task, if one exists.
    async fn task(&self, id: &str) -> Result<Option<TaskState>>;

    /// Subscribes to init exits and OOM kills of the namespace's tasks. The subscription does
    /// not survive a runtime restart: subscribe again, and look for exits missed meanwhile.
    async fn task_notices(&self) -> Result<TaskNotices>;

    /// Processes running in the workspace besides PID 1.
    async fn process_count(&self, id: &str) -> Result<u32>;

    /// Reads the task's cgroup figures once (one containerd call).
    async fn task_metrics(&self, id: &str) -> Result<TaskMetrics>;

    /// Removes leases a crash left behind; returns how many.
    async fn remove_stale_leases(&self) -> Result<u32>;

    /// The environment and working directory exec'd processes start from.
    async fn process_base(&self, id: &str) -> Result<ProcessBase>;

    /// Creates the exec's FIFOs, execs it in the running task and starts it.
    async fn exec(&self, spec: &ExecSpec<'_>) -> Result<StartedExec>;

    /// Starts the workspace's process agent (`berth-agent`, as root, without stdio) in its
    /// running task, replacing an earlier one that ended or hangs. Fails when the container
    /// has no agent (created before berth had one, or berth-agent is not installed).
    async fn start_agent(&self, id: &str) -> Result<()>;

    /// Waits for the exec to exit; returns its exit status as containerd reports it (128+n
    /// for a signal).
    async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<u32>;

    /// Sends `signal` to the exec's main process; an exited one is fine.
    async fn signal_exec(&self, id: &str, exec_id: &str, signal: u32) -> Result<()>;

    /// Sends `signal` to every process of the task in process group `pgid` (never PID 1).
    async fn signal_group(&self, id: &str, pgid: u32, signal: u32) -> Result<()>;

    /// Resizes the exec's pseudo-terminal.
    async fn resize_exec(&self, id: &str, exec_id: &str, size: PtySize) -> Result<()>;

    /// Closes the exec's stdin, so it reads end-of-file.
    async fn close_exec_stdin(&self, id: &str, exec_id: &str) -> Result<()>;

    /// Where the exec is (after a berth restart: whether it still runs).
    async fn exec_state(&self, id: &str, exec_id: &str) -> Result<ExecState>;

    /// Opens again the FIFOs of an exec started by an earlier berth process.
    async fn reopen_exec(&self, exec_id: &str, fifo_dir: &Path, pty: bool, stdin: bool) -> Result<ExecIo>;

    /// Deletes the exited exec from the task and removes its FIFOs; missing is fine.
    async fn delete_exec(&self, id: &str, exec_id: &str, fifo_dir: &Path) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_container_spec_hides_env_values() {
        let image = PulledImage {
            name: "docker.io/library/busybox:latest".to_owned(),
            digest: "sha256:0".to_owned(),
            config: ImageConfig::default(),
            chain_id: "sha256:1".to_owned(),
        };
        let env = BTreeMap::from([("API_TOKEN".to_owned(), "s3cret-value".to_owned())]);
        let labels = BTreeMap::new();
        let spec = ContainerSpec {
            id: "bot",
            image: &image,
            env: &env,
            resources: Resources::default(),
            cdi_devices: &[],
            labels: &labels,
            snapshot_key: "bot-active-1",
            user: &ResolvedUser::default(),
            etc_dir: Path::new("/var/lib/berth/workspaces/bot/etc"),
            agent_dir: Path::new("/var/lib/berth/workspaces/bot/agent"),
            network_namespace: None,
        };
        let text = format!("{spec:?}");
        assert!(text.contains("API_TOKEN") && text.contains("bot-active-1"), "{text}");
        assert!(!text.contains("s3cret-value"), "{text}");
    }
}
