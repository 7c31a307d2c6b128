//! Containers, their writable snapshots and their tasks (PID 1 = catatonit).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest, StatSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest,
    ListContainersRequest, ListPidsRequest, ListRequest as ListLeasesRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as ProcessStatus;
use tokio::time::Instant;
use tonic::Code;
use tracing::{debug, warn};

use super::client::{leased_request, request, request_within};
use super::{Containerd, PING_TIMEOUT, SNAPSHOTTER, pull, spec};
use crate::data::MountSpec;
use crate::error::{Error, Reason, Result};
use crate::model::Resources;
use crate::runtime::{
    ContainerOwner, ContainerSpec, ExecIo, ExecSpec, ExecState, LayerUsage, ProcessBase, PtySize, PullPolicy,
    PullProgress, PulledImage, Runtime, SnapshotInfo, StartedExec, TaskMetrics, TaskState,
};

/// The shim every workspace runs under.
pub const RUNTIME_NAME: &str = "io.containerd.runc.v2";
/// Labels that mark what berth created.
pub const LABEL_MANAGED: &str = "berth.workspace";
pub const LABEL_ID: &str = "berth.workspace.id";
/// Prefix of every lease berth creates; leases left by a crash are removed at boot.
pub const LEASE_PREFIX: &str = "berth-";

/// How long PID 1 gets after SIGTERM when the caller's timeout is already used up.
const INIT_GRACE: Duration = Duration::from_millis(500);
/// How long a task may take to exit after SIGKILL before the stop fails.
const KILL_WAIT: Duration = Duration::from_secs(10);

const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

fn is(status: &tonic::Status, code: Code) -> bool {
    status.code() == code
}

impl Containerd {
    fn containers(&self) -> ContainersClient<tonic::transport::Channel> {
        ContainersClient::new(self.channel.clone())
    }

    fn tasks(&self) -> TasksClient<tonic::transport::Channel> {
        TasksClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> SnapshotsClient<tonic::transport::Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    /// Runs `work` under a short-lived lease (what it creates is safe from GC until it is
    /// referenced), then ends the lease.
    async fn leased<T, F, Fut>(&self, purpose: &str, id: &str, work: F) -> Result<T>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let lease = format!("{LEASE_PREFIX}{purpose}-{id}");
        let expire = time::OffsetDateTime::now_utc() + Duration::from_secs(600);
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), rfc3339(expire))]);
        let mut leases = LeasesClient::new(self.channel.clone());
        match leases.create(request(&self.namespace, CreateLeaseRequest { id: lease.clone(), labels })).await {
            Ok(_) => {}
            Err(status) if is(&status, Code::AlreadyExists) => {}
            Err(status) => return Err(self.map_status("lease create", status)),
        }
        let result = work(lease.clone()).await;
        let delete = DeleteLeaseRequest { id: lease, sync: false };
        if let Err(status) = leases.delete(request(&self.namespace, delete)).await {
            warn!(error = %status.message(), "cannot delete a lease; it expires by itself");
        }
        result
    }

    async fn prepare_snapshot_leased(&self, id: &str, key: &str, parent: &str, lease: &str) -> Result<()> {
        let prepare = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: key.to_owned(),
            parent: parent.to_owned(),
            // A GC root: the workspace's filesystem outlives its container (a container
            // removed behind berth's back is rebuilt on the same snapshot); berth removes it
            // explicitly on delete.
            labels: HashMap::from([
                (LABEL_ID.to_owned(), id.to_owned()),
                ("containerd.io/gc.root".to_owned(), rfc3339_now()),
            ]),
        };
        match self
            .snapshots()
            .prepare(leased_request(&self.namespace, lease, prepare, self.namespace.call_timeout))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if is(&status, Code::AlreadyExists) => Ok(()),
            Err(status) => Err(self.map_status("snapshot prepare", status)),
        }
    }

    async fn create_container_leased(&self, spec: &ContainerSpec<'_>, lease: &str) -> Result<()> {
        let oci_spec = spec::build(
            &spec::SpecInput {
                id: spec.id,
                namespace: &self.namespace.name,
                image: &spec.image.config,
                user: spec.user,
                env: spec.env,
                resources: spec.resources,
                init_binary: &self.init_binary,
                agent: self.agent_binary.as_deref().map(|binary| (binary, spec.agent_dir)),
                etc_dir: spec.etc_dir,
                network_namespace: spec.network_namespace,
            },
            &self.confinement,
        )?;
        // The devices' nodes, cgroup rules, env, mounts and hooks become part of the stored
        // spec, so every later task of the container has them.
        let oci_spec = self.devices.inject(oci_spec, spec.cdi_devices).await?;
        let spec_json = serde_json::to_vec(&oci_spec)
            .map_err(|err| Error::internal(format!("cannot encode the runtime spec: {err}")))?;
        let mut labels: HashMap<String, String> =
            spec.labels.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
        labels.insert(LABEL_MANAGED.to_owned(), "v1".to_owned());
        labels.insert(LABEL_ID.to_owned(), spec.id.to_owned());
        let container = Container {
            id: spec.id.to_owned(),
            labels,
            image: spec.image.name.clone(),
            runtime: Some(ContainerRuntime { name: RUNTIME_NAME.to_owned(), options: None }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".to_owned(),
                value: spec_json,
            }),
            snapshotter: SNAPSHOTTER.to_owned(),
            snapshot_key: spec.snapshot_key.to_owned(),
            ..Default::default()
        };
        match self
            .containers()
            .create(leased_request(
                &self.namespace,
                lease,
                CreateContainerRequest { container: Some(container) },
                self.namespace.call_timeout,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if is(&status, Code::AlreadyExists) => Err(Error::new(
                Reason::WorkspaceAlreadyExists,
                format!(
                    "a container named {id} already exists in containerd namespace {ns} but berth does not manage it; \
                     remove it (ctr -n {ns} containers rm {id}) or choose another workspace id",
                    id = spec.id,
                    ns = self.namespace
                ),
            )),
            Err(status) => Err(self.map_status("container create", status)),
        }
    }

    /// SIGTERM to every process but PID 1, then waits (until `deadline`) for them to exit.
    /// catatonit, PID 1, exits at once on SIGTERM and the kernel then SIGKILLs everything left
    /// in the PID namespace, so the bot's processes must get their SIGTERM first.
    ///
    /// The signals go through pidfds: a pid read from ListPids may exit and be reused by an
    /// unrelated host process before the signal is sent. A pidfd pins the process it was opened
    /// for, and a second ListPids after opening confirms that this process is still the task's,
    /// so berth never signals anything outside the workspace.
    async fn terminate_processes(&self, id: &str, init_pid: u32, deadline: Instant) -> Result<()> {
        let mut others = self.other_pids(id, init_pid).await?;
        // Rounds: processes forked after a listing are found by the next one.
        while !others.is_empty() && Instant::now() < deadline {
            let pidfds: Vec<(u32, std::os::fd::OwnedFd)> = others
                .iter()
                .filter_map(|pid| {
                    let raw = rustix::process::Pid::from_raw(i32::try_from(*pid).ok()?)?;
                    // ESRCH: it exited meanwhile; nothing to signal.
                    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
                    Some((*pid, pidfd))
                })
                .collect();
            let confirmed = self.other_pids(id, init_pid).await?;
            let mut signalled = Vec::new();
            for (pid, pidfd) in pidfds {
                if confirmed.contains(&pid) {
                    // ESRCH: it exited after the second listing.
                    let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::TERM);
                    signalled.push(pidfd);
                }
            }
            // A pidfd turns readable when its process exits: no polling interval adds to a stop.
            let until = deadline.into_std();
            let _ = tokio::task::spawn_blocking(move || wait_for_exits(signalled, until)).await;
            others = self.other_pids(id, init_pid).await?;
            if !others.is_empty() && Instant::now() < deadline {
                // Exited but not yet reaped, or new: give them a moment before the next round.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// Host pids of the task's processes besides PID 1.
    async fn other_pids(&self, id: &str, init_pid: u32) -> Result<Vec<u32>> {
        Ok(self.pids(id).await?.into_iter().filter(|pid| *pid != init_pid).collect())
    }

    /// Host pids of every process of the task; none when there is no task.
    async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        match self.tasks().list_pids(request(&self.namespace, ListPidsRequest { container_id: id.to_owned() })).await {
            Ok(response) => Ok(response.into_inner().processes.into_iter().map(|process| process.pid).collect()),
            Err(status) if is(&status, Code::NotFound) => Ok(Vec::new()),
            Err(status) => Err(self.map_status("task pids", status)),
        }
    }

    /// Waits up to `within` for PID 1 to exit; true once it has. Every call is a fresh Wait
    /// (containerd answers at once for a task that already exited, so nothing signalled before
    /// the call is missed), and a Wait that fails is answered by asking for the task's state.
    async fn wait_for_exit(&self, id: &str, within: Duration) -> Result<bool> {
        let wait = WaitRequest { container_id: id.to_owned(), exec_id: String::new() };
        // The deadline is ours: containerd gets a little longer so that it never ends the call
        // before the timeout below does.
        let mut tasks = self.tasks();
        let call = tasks.wait(request_within(&self.namespace, wait, within + Duration::from_secs(1)));
        match tokio::time::timeout(within, call).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(status)) if is(&status, Code::NotFound) => Ok(true),
            Ok(Err(status)) => {
                warn!(workspace_id = id, error = %status.message(), "task wait failed; reading the task state instead");
                Ok(!self.task(id).await?.is_some_and(|task| task.running))
            }
            Err(_) => Ok(false),
        }
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let kill = KillRequest { container_id: id.to_owned(), exec_id: String::new(), signal, all };
        match self.tasks().kill(request(&self.namespace, kill)).await {
            Ok(_) => Ok(()),
            // The process already finished: nothing to signal.
            Err(status) if is(&status, Code::NotFound) => Ok(()),
            Err(status) => Err(self.map_status("task kill", status)),
        }
    }

    async fn delete_task(&self, id: &str) -> Result<()> {
        match self.tasks().delete(request(&self.namespace, DeleteTaskRequest { container_id: id.to_owned() })).await {
            Ok(_) => Ok(()),
            Err(status) if is(&status, Code::NotFound) => Ok(()),
            Err(status) => Err(self.map_status("task delete", status)),
        }
    }
}

#[async_trait]
impl Runtime for Containerd {
    async fn ping(&self) -> Result<String> {
        let mut client = VersionClient::new(self.channel.clone());
        let call = client.version(());
        let response = match tokio::time::timeout(PING_TIMEOUT, call).await {
            Ok(response) => response.map_err(|status| self.map_status("version", status))?,
            Err(_) => return Err(self.map_status("version", tonic::Status::deadline_exceeded("no answer within 3 s"))),
        };
        Ok(response.into_inner().version)
    }

    fn normalize_image(&self, reference: &str) -> Result<String> {
        pull::normalize_reference(reference)
    }

    async fn pull_image(&self, reference: &str, policy: PullPolicy, progress: &PullProgress) -> Result<PulledImage> {
        self.puller.pull(reference, policy, progress).await
    }

    async fn prepare_snapshot(&self, id: &str, key: &str, parent: &str) -> Result<()> {
        if self.snapshot_exists(key).await? {
            return Ok(());
        }
        self.leased("snapshot", id, |lease| async move { self.prepare_snapshot_leased(id, key, parent, &lease).await })
            .await
    }

    async fn create_container(&self, spec: &ContainerSpec<'_>) -> Result<()> {
        self.leased("create", spec.id, |lease| async move { self.create_container_leased(spec, &lease).await }).await
    }

    async fn container_owner(&self, id: &str) -> Result<ContainerOwner> {
        match self.containers().get(request(&self.namespace, GetContainerRequest { id: id.to_owned() })).await {
            Ok(response) => {
                let labels = response.into_inner().container.map(|container| container.labels).unwrap_or_default();
                let ours = labels.contains_key(LABEL_MANAGED) && labels.get(LABEL_ID).is_some_and(|owner| owner == id);
                Ok(if ours { ContainerOwner::Berth } else { ContainerOwner::Foreign })
            }
            Err(status) if is(&status, Code::NotFound) => Ok(ContainerOwner::Absent),
            Err(status) => Err(self.map_status("container get", status)),
        }
    }

    async fn list_containers(&self) -> Result<Vec<String>> {
        let response = self
            .containers()
            .list(request(&self.namespace, ListContainersRequest { filters: Vec::new() }))
            .await
            .map_err(|status| self.map_status("container list", status))?;
        Ok(response.into_inner().containers.into_iter().map(|container| container.id).collect())
    }

    async fn delete_container(&self, id: &str) -> Result<()> {
        self.stop_task(id, Duration::ZERO).await?;
        match self.containers().delete(request(&self.namespace, DeleteContainerRequest { id: id.to_owned() })).await {
            Ok(_) => Ok(()),
            Err(status) if is(&status, Code::NotFound) => Ok(()),
            Err(status) => Err(self.map_status("container delete", status)),
        }
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let stat = StatSnapshotRequest { snapshotter: SNAPSHOTTER.to_owned(), key: key.to_owned() };
        match self.snapshots().stat(request(&self.namespace, stat)).await {
            Ok(_) => Ok(true),
            Err(status) if is(&status, Code::NotFound) => Ok(false),
            Err(status) => Err(self.map_status("snapshot stat", status)),
        }
    }

    async fn snapshot_mounts(&self, key: &str) -> Result<Vec<MountSpec>> {
        let mounts = MountsRequest { snapshotter: SNAPSHOTTER.to_owned(), key: key.to_owned() };
        let response = self
            .snapshots()
            .mounts(request(&self.namespace, mounts))
            .await
            .map_err(|status| self.map_status("snapshot mounts", status))?;
        Ok(response
            .into_inner()
            .mounts
            .into_iter()
            .map(|mount| MountSpec { kind: mount.r#type, source: mount.source, options: mount.options })
            .collect())
    }

    async fn remove_snapshot(&self, key: &str) -> Result<()> {
        self.remove_snapshot_of(key).await
    }

    async fn snapshot_info(&self, key: &str) -> Result<Option<SnapshotInfo>> {
        self.snapshot_info_of(key).await
    }

    async fn commit_snapshot(&self, id: &str, active_key: &str, name: &str, snapshot_name: &str) -> Result<()> {
        self.commit_snapshot_of(id, active_key, name, snapshot_name).await
    }

    async fn snapshot_usage(&self, key: &str) -> Result<u64> {
        Ok(self.snapshot_usage_of(key).await?.bytes)
    }

    async fn layer_usage(&self, key: &str) -> Result<LayerUsage> {
        self.snapshot_usage_of(key).await
    }

    async fn workspace_snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>> {
        self.workspace_snapshots_of(id).await
    }

    async fn set_container_snapshot(&self, id: &str, key: &str) -> Result<()> {
        self.set_container_snapshot_of(id, key).await
    }

    async fn update_resources(&self, id: &str, resources: Resources, running: bool) -> Result<()> {
        self.update_resources_of(id, resources, running).await
    }

    async fn set_container_labels(&self, id: &str, labels: &std::collections::BTreeMap<String, String>) -> Result<()> {
        self.set_container_labels_of(id, labels).await
    }

    async fn start_task(&self, id: &str, snapshot_key: &str) -> Result<u32> {
        if let Some(task) = self.task(id).await? {
            if task.running {
                return Ok(task.pid);
            }
            self.delete_task(id).await?;
        }
        let rootfs = self
            .snapshot_mounts(snapshot_key)
            .await?
            .into_iter()
            .map(|mount| containerd_client::types::Mount {
                r#type: mount.kind,
                source: mount.source,
                options: mount.options,
                ..Default::default()
            })
            .collect();
        let create = CreateTaskRequest { container_id: id.to_owned(), rootfs, ..Default::default() };
        self.tasks()
            .create(request(&self.namespace, create))
            .await
            .map_err(|status| self.map_status("task create", status))?;
        let start = StartRequest { container_id: id.to_owned(), exec_id: String::new() };
        let response = self
            .tasks()
            .start(request(&self.namespace, start))
            .await
            .map_err(|status| self.map_status("task start", status))?;
        Ok(response.into_inner().pid)
    }

    async fn stop_task(&self, id: &str, timeout: Duration) -> Result<bool> {
        let Some(task) = self.task(id).await? else {
            return Ok(false);
        };
        if task.running {
            let deadline = Instant::now() + timeout;
            let exited_on_term = if timeout.is_zero() {
                false
            } else {
                self.terminate_processes(id, task.pid, deadline).await?;
                self.kill(id, SIGTERM, false).await?;
                let grace = deadline.saturating_duration_since(Instant::now()).max(INIT_GRACE);
                self.wait_for_exit(id, grace).await?
            };
            if !exited_on_term {
                debug!(workspace_id = id, "sending SIGKILL to every process of the task");
                self.kill(id, SIGKILL, true).await?;
                if !self.wait_for_exit(id, KILL_WAIT).await? {
                    return Err(Error::new(
                        Reason::RuntimeError,
                        format!(
                            "the task of {id} did not exit within {KILL_WAIT:?} of SIGKILL; check the containerd shim"
                        ),
                    ));
                }
            }
        }
        self.delete_task(id).await?;
        Ok(task.running)
    }

    async fn task(&self, id: &str) -> Result<Option<TaskState>> {
        let get = GetRequest { container_id: id.to_owned(), exec_id: String::new() };
        match self.tasks().get(request(&self.namespace, get)).await {
            Ok(response) => Ok(response.into_inner().process.map(|process| TaskState {
                pid: process.pid,
                running: process.status == ProcessStatus::Running as i32,
                exit_status: process.exit_status,
            })),
            Err(status) if is(&status, Code::NotFound) => Ok(None),
            Err(status) => Err(self.map_status("task get", status)),
        }
    }

    async fn task_notices(&self) -> Result<crate::runtime::TaskNotices> {
        self.subscribe_task_notices().await
    }

    async fn process_count(&self, id: &str) -> Result<u32> {
        Ok(u32::try_from(self.pids(id).await?.len()).unwrap_or(u32::MAX).saturating_sub(1))
    }

    async fn task_metrics(&self, id: &str) -> Result<TaskMetrics> {
        self.task_metrics_of(id).await
    }

    async fn remove_stale_leases(&self) -> Result<u32> {
        let mut leases = LeasesClient::new(self.channel.clone());
        let response = leases
            .list(request(&self.namespace, ListLeasesRequest { filters: Vec::new() }))
            .await
            .map_err(|status| self.map_status("lease list", status))?;
        let mut removed = 0;
        for lease in response.into_inner().leases {
            if !lease.id.starts_with(LEASE_PREFIX) {
                continue;
            }
            let delete = DeleteLeaseRequest { id: lease.id, sync: false };
            leases
                .delete(request(&self.namespace, delete))
                .await
                .map_err(|status| self.map_status("lease delete", status))?;
            removed += 1;
        }
        Ok(removed)
    }

    async fn process_base(&self, id: &str) -> Result<ProcessBase> {
        self.process_base_of(id).await
    }

    async fn exec(&self, spec: &ExecSpec<'_>) -> Result<StartedExec> {
        self.exec_process(spec).await
    }

    async fn start_agent(&self, id: &str) -> Result<()> {
        self.start_agent_exec(id).await
    }

    async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.wait_exec_process(id, exec_id).await
    }

    async fn signal_exec(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        self.signal_exec_process(id, exec_id, signal).await
    }

    async fn signal_group(&self, id: &str, pgid: u32, signal: u32) -> Result<()> {
        self.signal_process_group(id, pgid, signal).await
    }

    async fn resize_exec(&self, id: &str, exec_id: &str, size: PtySize) -> Result<()> {
        self.resize_exec_pty(id, exec_id, size).await
    }

    async fn close_exec_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.close_exec_stdin_of(id, exec_id).await
    }

    async fn exec_state(&self, id: &str, exec_id: &str) -> Result<ExecState> {
        self.exec_state_of(id, exec_id).await
    }

    async fn reopen_exec(&self, exec_id: &str, fifo_dir: &std::path::Path, pty: bool, stdin: bool) -> Result<ExecIo> {
        super::exec::open_fifos(fifo_dir, exec_id, pty, stdin)
    }

    async fn delete_exec(&self, id: &str, exec_id: &str, fifo_dir: &std::path::Path) -> Result<()> {
        self.delete_exec_process(id, exec_id, fifo_dir).await
    }
}

fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339).expect("a UTC time formats as RFC 3339")
}

pub(super) fn rfc3339_now() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// Blocks until every process of `pidfds` has exited or `until` passes.
fn wait_for_exits(mut pidfds: Vec<std::os::fd::OwnedFd>, until: std::time::Instant) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    while !pidfds.is_empty() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let timeout = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
        let mut fds: Vec<PollFd<'_>> = pidfds.iter().map(|pidfd| PollFd::new(pidfd, PollFlags::IN)).collect();
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        let exited: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        let mut exited = exited.into_iter();
        pidfds.retain(|_| !exited.next().unwrap_or(true));
    }
}
