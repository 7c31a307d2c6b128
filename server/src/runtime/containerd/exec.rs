//! Exec processes in a running task: FIFOs, `Tasks.Exec` / `Start` / `Wait` / `Kill` /
//! `ResizePty` / `CloseIO` / `DeleteProcess`. The process spec is the container's own process
//! (capabilities, rlimits, AppArmor, no_new_privileges, the image's user) with the caller's
//! argv, environment, working directory, user and terminal; seccomp is container-wide.

use std::path::{Path, PathBuf};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, GetRequest, KillRequest,
    ListPidsRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as ProcessStatus;
use tokio::net::unix::pipe;
use tonic::Code;
use tracing::warn;

use super::Containerd;
use super::client::{request, streaming_request};
use super::spec::{AGENT_DIR, AGENT_PATH};
use crate::error::{Error, Reason, Result};
use crate::runtime::{ExecIo, ExecSpec, ExecState, ProcessBase, PtySize, StartedExec};

/// The exec id of a workspace's process agent.
const AGENT_EXEC_ID: &str = "berth-agent";

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// The FIFO paths of one exec.
fn fifo_paths(dir: &Path, exec_id: &str) -> [PathBuf; 3] {
    ["stdin", "stdout", "stderr"].map(|name| dir.join(format!("{exec_id}.{name}")))
}

fn mkfifo(path: &Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|err| {
        Error::new(Reason::RuntimeError, format!("cannot create the exec fifo {}: {err}", path.display()))
    })
}

fn fifo_error(path: &Path, err: &std::io::Error) -> Error {
    Error::new(Reason::RuntimeError, format!("cannot open the exec fifo {}: {err}", path.display()))
}

/// How much a FIFO may hold: with the default 64 KiB, a process writing fast wakes berth for a
/// few KiB at a time; a larger pipe lets each read take more (heavy output costs per message).
const FIFO_BYTES: i32 = 1 << 20;

/// Grows a FIFO to [`FIFO_BYTES`]; a kernel that refuses (a lower `pipe-max-size` for
/// unprivileged users) keeps its default, which only costs speed.
fn widen(receiver: &pipe::Receiver) {
    use std::os::fd::AsFd as _;
    let _ = nix::fcntl::fcntl(receiver.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(FIFO_BYTES));
}

/// Opens berth's ends of an exec's FIFOs. Readers are opened before the exec (a non-blocking
/// open of a FIFO's read end needs no writer); the stdin end read-write, so its open never waits
/// for the shim. After a restart the same opens re-attach: the shim keeps its ends open.
pub(super) fn open_fifos(fifo_dir: &Path, exec_id: &str, pty: bool, stdin: bool) -> Result<ExecIo> {
    let [stdin_path, stdout_path, stderr_path] = fifo_paths(fifo_dir, exec_id);
    let stdout = pipe::OpenOptions::new().open_receiver(&stdout_path).map_err(|err| fifo_error(&stdout_path, &err))?;
    widen(&stdout);
    let stderr = if pty {
        None
    } else {
        let stderr =
            pipe::OpenOptions::new().open_receiver(&stderr_path).map_err(|err| fifo_error(&stderr_path, &err))?;
        widen(&stderr);
        Some(stderr)
    };
    let stdin = if stdin || pty {
        Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(&stdin_path)
                .map_err(|err| fifo_error(&stdin_path, &err))?,
        )
    } else {
        None
    };
    Ok(ExecIo { stdin, stdout, stderr })
}

impl Containerd {
    pub(super) async fn exec_state_of(&self, id: &str, exec_id: &str) -> Result<ExecState> {
        let get = GetRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() };
        match self.exec_tasks().get(request(&self.namespace, get)).await {
            Ok(response) => Ok(match response.into_inner().process {
                Some(process) if process.status == ProcessStatus::Stopped as i32 => {
                    ExecState::Exited(process.exit_status)
                }
                Some(_) => ExecState::Running,
                None => ExecState::Missing,
            }),
            Err(status) if status.code() == Code::NotFound => Ok(ExecState::Missing),
            Err(status) => Err(self.map_status("task get", status)),
        }
    }

    fn exec_tasks(&self) -> TasksClient<tonic::transport::Channel> {
        TasksClient::new(self.channel.clone())
    }

    /// The container's process spec as JSON.
    async fn container_process(&self, id: &str) -> Result<serde_json::Value> {
        let response = ContainersClient::new(self.channel.clone())
            .get(request(&self.namespace, GetContainerRequest { id: id.to_owned() }))
            .await
            .map_err(|status| self.map_status("container get", status))?;
        let spec = response.into_inner().container.and_then(|container| container.spec).ok_or_else(|| {
            Error::new(
                Reason::RuntimeError,
                format!("the container of {id} has no runtime spec; recreate the workspace"),
            )
        })?;
        let mut spec: serde_json::Value = serde_json::from_slice(&spec.value)
            .map_err(|err| Error::internal(format!("cannot decode the runtime spec of {id}: {err}")))?;
        Ok(spec.get_mut("process").map(serde_json::Value::take).unwrap_or_default())
    }

    pub(super) async fn process_base_of(&self, id: &str) -> Result<ProcessBase> {
        let process = self.container_process(id).await?;
        let env = process["env"]
            .as_array()
            .map(|entries| entries.iter().filter_map(|entry| entry.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let cwd = process["cwd"].as_str().unwrap_or("/").to_owned();
        let id_of = |key: &str| process["user"][key].as_u64().and_then(|id| u32::try_from(id).ok()).unwrap_or(0);
        let additional_gids = process["user"]["additionalGids"]
            .as_array()
            .map(|gids| gids.iter().filter_map(|gid| gid.as_u64().and_then(|gid| u32::try_from(gid).ok())).collect())
            .unwrap_or_default();
        Ok(ProcessBase { env, cwd, uid: id_of("uid"), gid: id_of("gid"), additional_gids })
    }

    /// Execs berth-agent as root with the container's confinement (capabilities, seccomp,
    /// AppArmor, rlimits: its children inherit them, as an exec would get them) and no stdio.
    /// An earlier agent's exec is killed (it no longer answers) and deleted first.
    pub(super) async fn start_agent_exec(&self, id: &str) -> Result<()> {
        if self.agent_binary.is_none() {
            return Err(Error::new(
                Reason::RuntimeError,
                "berth-agent is not installed next to berth; build it with scripts/build-agent.sh",
            ));
        }
        self.remove_agent_exec(id).await?;
        let mut process = self.container_process(id).await?;
        process["args"] = serde_json::json!([AGENT_PATH, format!("{AGENT_DIR}/{}", berth_agent::SOCKET_NAME)]);
        process["env"] = serde_json::json!(["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
        process["cwd"] = serde_json::json!("/");
        process["user"] = serde_json::json!({"uid": 0, "gid": 0});
        process["terminal"] = serde_json::json!(false);
        if let Some(object) = process.as_object_mut() {
            object.remove("consoleSize");
        }
        let value = serde_json::to_vec(&process)
            .map_err(|err| Error::internal(format!("cannot encode the process spec: {err}")))?;
        let exec = ExecProcessRequest {
            container_id: id.to_owned(),
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            terminal: false,
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.to_owned(), value }),
            exec_id: AGENT_EXEC_ID.to_owned(),
        };
        self.exec_tasks()
            .exec(request(&self.namespace, exec))
            .await
            .map_err(|status| self.map_status("task exec", status))?;
        let start = StartRequest { container_id: id.to_owned(), exec_id: AGENT_EXEC_ID.to_owned() };
        if let Err(status) = self.exec_tasks().start(request(&self.namespace, start)).await {
            let _ = self.remove_agent_exec(id).await;
            return Err(self.map_status("task start (berth-agent)", status));
        }
        Ok(())
    }

    async fn remove_agent_exec(&self, id: &str) -> Result<()> {
        for _ in 0..100 {
            match self.exec_state_of(id, AGENT_EXEC_ID).await? {
                ExecState::Missing => return Ok(()),
                ExecState::Running => self.signal_exec_process(id, AGENT_EXEC_ID, 9).await?,
                ExecState::Exited(_) => {
                    let delete =
                        DeleteProcessRequest { container_id: id.to_owned(), exec_id: AGENT_EXEC_ID.to_owned() };
                    match self.exec_tasks().delete_process(request(&self.namespace, delete)).await {
                        Ok(_) => return Ok(()),
                        Err(status) if status.code() == Code::NotFound => return Ok(()),
                        Err(status) => return Err(self.map_status("task delete process (berth-agent)", status)),
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(Error::new(Reason::RuntimeError, format!("the old berth-agent of {id} does not end after SIGKILL")))
    }

    pub(super) async fn exec_process(&self, spec: &ExecSpec<'_>) -> Result<StartedExec> {
        let mut process = self.container_process(spec.id).await?;
        process["args"] = serde_json::json!(spec.args);
        process["env"] = serde_json::json!(spec.env);
        if !spec.cwd.is_empty() {
            process["cwd"] = serde_json::json!(spec.cwd);
        }
        if let Some(user) = spec.user {
            let mut value = serde_json::json!({"uid": user.uid, "gid": user.gid});
            if !user.additional_gids.is_empty() {
                value["additionalGids"] = serde_json::json!(user.additional_gids);
            }
            process["user"] = value;
        }
        process["terminal"] = serde_json::json!(spec.pty.is_some());
        match spec.pty {
            Some(size) => process["consoleSize"] = serde_json::json!({"height": size.rows, "width": size.cols}),
            None => {
                if let Some(object) = process.as_object_mut() {
                    object.remove("consoleSize");
                }
            }
        }
        let value = serde_json::to_vec(&process)
            .map_err(|err| Error::internal(format!("cannot encode the process spec: {err}")))?;

        tokio::fs::create_dir_all(spec.fifo_dir).await.map_err(|err| {
            Error::new(Reason::RuntimeError, format!("cannot create {}: {err}", spec.fifo_dir.display()))
        })?;
        let [stdin_path, stdout_path, stderr_path] = fifo_paths(spec.fifo_dir, spec.exec_id);
        let with_stdin = spec.stdin || spec.pty.is_some();
        if with_stdin {
            mkfifo(&stdin_path)?;
        }
        mkfifo(&stdout_path)?;
        if spec.pty.is_none() {
            mkfifo(&stderr_path)?;
        }
        let ExecIo { stdin, stdout, stderr } = open_fifos(spec.fifo_dir, spec.exec_id, spec.pty.is_some(), spec.stdin)?;
        let path_text = |path: &Path| path.display().to_string();
        let exec = ExecProcessRequest {
            container_id: spec.id.to_owned(),
            stdin: if with_stdin { path_text(&stdin_path) } else { String::new() },
            stdout: path_text(&stdout_path),
            stderr: if spec.pty.is_some() { String::new() } else { path_text(&stderr_path) },
            terminal: spec.pty.is_some(),
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.to_owned(), value }),
            exec_id: spec.exec_id.to_owned(),
        };
        if let Err(status) = self.exec_tasks().exec(request(&self.namespace, exec)).await {
            let _ = self.delete_exec_process(spec.id, spec.exec_id, spec.fifo_dir).await;
            return Err(self.map_status("task exec", status));
        }
        let start = StartRequest { container_id: spec.id.to_owned(), exec_id: spec.exec_id.to_owned() };
        let host_pid = match self.exec_tasks().start(request(&self.namespace, start)).await {
            Ok(response) => response.into_inner().pid,
            Err(status) => {
                let _ = self.delete_exec_process(spec.id, spec.exec_id, spec.fifo_dir).await;
                return Err(Error::new(
                    Reason::RuntimeError,
                    format!(
                        "the process could not be started in workspace {}: {}; check its cwd and user",
                        spec.id,
                        status.message()
                    ),
                ));
            }
        };
        let (pid, pgid) = namespace_pid_and_group(host_pid);
        Ok(StartedExec { host_pid, pid, pgid, stdin, stdout, stderr })
    }

    pub(super) async fn wait_exec_process(&self, id: &str, exec_id: &str) -> Result<u32> {
        let wait = WaitRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() };
        // No deadline: a process may run for days.
        let response = self
            .exec_tasks()
            .wait(streaming_request(&self.namespace, wait))
            .await
            .map_err(|status| self.map_status("task wait", status))?;
        Ok(response.into_inner().exit_status)
    }

    pub(super) async fn signal_exec_process(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        let kill = KillRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned(), signal, all: false };
        match self.exec_tasks().kill(request(&self.namespace, kill)).await {
            Ok(_) => Ok(()),
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(status) => Err(self.map_status("task kill", status)),
        }
    }

    /// Signals the task's processes of one process group through pidfds: a pid from ListPids
    /// is pinned by its pidfd, then checked to still be the task's and in the group, so nothing
    /// outside the workspace is ever signalled.
    pub(super) async fn signal_process_group(&self, id: &str, pgid: u32, signal: u32) -> Result<()> {
        if pgid == 0 {
            return Ok(());
        }
        let Some(signal) = i32::try_from(signal).ok().and_then(rustix::process::Signal::from_named_raw) else {
            return Err(Error::new(Reason::InvalidArgument, format!("signal {signal} is not a signal of this host")));
        };
        let listed = match self
            .exec_tasks()
            .list_pids(request(&self.namespace, ListPidsRequest { container_id: id.to_owned() }))
            .await
        {
            Ok(response) => response.into_inner().processes,
            Err(status) if status.code() == Code::NotFound => return Ok(()),
            Err(status) => return Err(self.map_status("task pids", status)),
        };
        // The first process listed is the task's init; it is never in an exec's group, but
        // skipping it keeps that true even if runc changes.
        let init_pid = listed.first().map(|process| process.pid);
        for process in listed {
            if Some(process.pid) == init_pid {
                continue;
            }
            let Some(raw) = i32::try_from(process.pid).ok().and_then(rustix::process::Pid::from_raw) else {
                continue;
            };
            let Ok(pidfd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) else {
                continue;
            };
            if process_group(process.pid) == Some(pgid) {
                // ESRCH: it exited meanwhile.
                let _ = rustix::process::pidfd_send_signal(&pidfd, signal);
            }
        }
        Ok(())
    }

    pub(super) async fn resize_exec_pty(&self, id: &str, exec_id: &str, size: PtySize) -> Result<()> {
        let resize = ResizePtyRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            width: u32::from(size.cols),
            height: u32::from(size.rows),
        };
        self.exec_tasks()
            .resize_pty(request(&self.namespace, resize))
            .await
            .map(|_| ())
            .map_err(|status| self.map_status("task resize pty", status))
    }

    pub(super) async fn close_exec_stdin_of(&self, id: &str, exec_id: &str) -> Result<()> {
        let close = CloseIoRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned(), stdin: true };
        self.exec_tasks()
            .close_io(request(&self.namespace, close))
            .await
            .map(|_| ())
            .map_err(|status| self.map_status("task close io", status))
    }

    pub(super) async fn delete_exec_process(&self, id: &str, exec_id: &str, fifo_dir: &Path) -> Result<()> {
        let delete = DeleteProcessRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() };
        let result = match self.exec_tasks().delete_process(request(&self.namespace, delete)).await {
            Ok(_) => Ok(()),
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(status) => Err(self.map_status("task delete process", status)),
        };
        for path in fifo_paths(fifo_dir, exec_id) {
            if let Err(err) = tokio::fs::remove_file(&path).await
                && err.kind() != std::io::ErrorKind::NotFound
            {
                warn!(path = %path.display(), error = %err, "cannot remove an exec fifo");
            }
        }
        result
    }
}

/// The pid inside the process's PID namespace (the last `NSpid` entry) and its process group,
/// from procfs; zeros when the process is already gone.
fn namespace_pid_and_group(host_pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap_or_default();
    let pid = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|pids| pids.split_whitespace().last())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or(0);
    (pid, process_group(host_pid).unwrap_or(0))
}

/// The process group of a host process (field 5 of /proc/<pid>/stat).
fn process_group(host_pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{host_pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields follow its last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}
