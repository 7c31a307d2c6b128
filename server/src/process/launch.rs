//! Starting a process: as a child of the workspace's agent, or, where there is none (or it
//! cannot take this one), as a containerd exec. Either way berth ends up holding the process's
//! stdout and stderr (or PTY) and stdin as non-blocking pipes.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use berth_agent::{Spawn, Winsize};
use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tracing::warn;

use super::Processes;
use super::agent::{AgentClient, AgentProcess, CallError};
use super::agents::Agents;
use crate::data::ResolvedUser;
use crate::error::{Error, Reason, Result};
use crate::runtime::{ExecSpec, ProcessBase, PtySize};

/// How berth controls a process.
pub(super) enum Control {
    /// A containerd exec: signals, resizes, stdin and its exit go through containerd.
    Exec,
    /// A child of the workspace's agent.
    Agent(AgentControl),
    /// Ended before berth (restarted) found it again: nothing is left to control.
    Gone,
}

pub(super) struct AgentControl {
    agents: Arc<Agents>,
    workspace_id: String,
    /// The PTY's master, for resizing; None on pipes.
    master: Option<OwnedFd>,
    /// Taken by the process's reader.
    exit: tokio::sync::Mutex<Option<oneshot::Receiver<u32>>>,
}

/// How often a process's exit is looked for again through a new connection, at most.
const MAX_REATTACHES: u32 = 3;

impl AgentControl {
    /// The connection to the workspace's agent: the one the process started on, or a new one
    /// when that broke.
    pub async fn client(&self) -> Result<Arc<AgentClient>, CallError> {
        self.agents
            .get(&self.workspace_id, None)
            .await
            .ok_or_else(|| CallError::Unusable("the workspace's process agent is gone".to_owned()))
    }

    /// The process's exit status. When the connection breaks first, the agent (if it still
    /// runs) is asked on a new one: it hands the process over again, or has reported its exit.
    pub async fn wait(&self, pid: u32) -> Result<u32, CallError> {
        let Some(mut exit) = self.exit.lock().await.take() else {
            return std::future::pending().await;
        };
        for _ in 0..MAX_REATTACHES {
            if let Ok(status) = exit.await {
                return Ok(status);
            }
            let client = self.client().await?;
            match client.attach(pid).await {
                // Berth holds the process's descriptors already; the new copies are closed.
                Ok(process) => exit = process.exit,
                Err(CallError::Refused { errno, .. }) if errno == Errno::SRCH.raw_os_error() => {
                    return client.take_unclaimed_exit(pid).ok_or_else(|| {
                        CallError::Lost("the process ended while berth's connection to the agent was down".to_owned())
                    });
                }
                Err(err) => return Err(err),
            }
        }
        exit.await.map_err(|_| CallError::Lost("the connection to the agent keeps breaking".to_owned()))
    }

    pub fn resize(&self, size: PtySize) -> std::io::Result<()> {
        let master = self.master.as_ref().ok_or_else(|| std::io::Error::other("no terminal"))?;
        let size = rustix::termios::Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
        rustix::termios::tcsetwinsize(master, size).map_err(std::io::Error::from)
    }
}

/// A started process's ends, as berth holds them.
pub(super) struct Launched {
    /// Its pid inside the workspace.
    pub pid: u32,
    /// Its process group in host numbering (containerd execs only; 0 otherwise).
    pub pgid: u32,
    pub stdin: Option<pipe::Sender>,
    /// stdout, or the PTY.
    pub stdout: pipe::Receiver,
    pub stderr: Option<pipe::Receiver>,
    pub control: Control,
}

/// What to start, resolved against the workspace.
pub(super) struct Plan<'a> {
    pub exec_id: &'a str,
    pub args: &'a [String],
    pub env: &'a [String],
    /// As the caller gave it (empty: the container's); `cwd` resolved.
    pub requested_cwd: &'a str,
    pub cwd: &'a str,
    pub user: Option<&'a ResolvedUser>,
    pub base: &'a ProcessBase,
    pub pty: Option<PtySize>,
    pub stdin: bool,
    pub fifo_dir: &'a Path,
}

impl Processes {
    pub(super) async fn launch(&self, workspace_id: &str, init_pid: u32, plan: &Plan<'_>) -> Result<Launched> {
        if let Some(client) = self.agents.get(workspace_id, Some(init_pid)).await {
            let failed = |why: String| {
                Error::new(
                    Reason::RuntimeError,
                    format!("the process could not be started in workspace {workspace_id}: {why}"),
                )
            };
            match spawn_with_agent(&self.agents, workspace_id, &client, plan).await {
                Ok(launched) => return Ok(launched),
                // Nothing ran: containerd exec may still manage.
                Err(CallError::Refused { errno, error }) if is_resource_shortage(errno) => {
                    warn!(workspace_id, error, "the process agent is out of resources; using containerd exec");
                }
                Err(err @ CallError::Unusable(_)) => {
                    warn!(workspace_id, error = %err, "the process agent cannot take the process; using containerd exec");
                }
                Err(CallError::Refused { error, .. }) => {
                    return Err(failed(format!("{error}; check its cwd and user")));
                }
                // It may have started (and died with the agent): running it again could run it twice.
                Err(err) => {
                    return Err(failed(format!(
                        "{err}; it may have started and ended with the agent, so berth does not retry it: check, then start it again"
                    )));
                }
            }
        }
        let started = self
            .runtime
            .exec(&ExecSpec {
                id: workspace_id,
                exec_id: plan.exec_id,
                args: plan.args,
                env: plan.env,
                cwd: plan.requested_cwd,
                user: plan.user,
                pty: plan.pty,
                stdin: plan.stdin,
                fifo_dir: plan.fifo_dir,
            })
            .await?;
        Ok(Launched {
            pid: started.pid,
            pgid: started.pgid,
            stdin: started.stdin,
            stdout: started.stdout,
            stderr: started.stderr,
            control: Control::Exec,
        })
    }
}

/// The agent's limits (descriptors, processes) are the workspace's; containerd exec may still
/// manage.
fn is_resource_shortage(errno: i32) -> bool {
    [Errno::MFILE, Errno::NFILE, Errno::AGAIN, Errno::NOMEM].iter().any(|shortage| shortage.raw_os_error() == errno)
}

async fn spawn_with_agent(
    agents: &Arc<Agents>,
    workspace_id: &str,
    client: &Arc<AgentClient>,
    plan: &Plan<'_>,
) -> std::result::Result<Launched, CallError> {
    let (uid, gid, groups) = match plan.user {
        Some(user) => (user.uid, user.gid, user.additional_gids.clone()),
        None => (plan.base.uid, plan.base.gid, plan.base.additional_gids.clone()),
    };
    let process = client
        .spawn(Spawn {
            argv: plan.args.to_vec(),
            env: plan.env.to_vec(),
            cwd: plan.cwd.to_owned(),
            uid,
            gid,
            groups,
            pty: plan.pty.map(|size| Winsize { rows: size.rows, cols: size.cols }),
            stdin: plan.stdin,
        })
        .await?;
    let pid = process.pid;
    agent_ends(agents.clone(), workspace_id, process).map_err(|err| {
        // berth cannot read it, so nobody could: end it rather than leave it blocked on output.
        let client = client.clone();
        tokio::spawn(async move { client.signal(pid, 9, true).await });
        CallError::Lost(format!("the descriptors of process {pid} are unusable: {err}"))
    })
}

/// Turns the descriptors the agent sent into berth's ends of the process.
pub(super) fn agent_ends(agents: Arc<Agents>, workspace_id: &str, process: AgentProcess) -> std::io::Result<Launched> {
    let AgentProcess { pid, pty, fds, stdin_open, exit } = process;
    let mut fds = fds.into_iter();
    let mut next = || fds.next().ok_or_else(|| std::io::Error::other("a descriptor is missing"));
    let (stdin, stdout, stderr, master) = if pty {
        let master = next()?;
        let stat = rustix::fs::fstat(&master)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::CharacterDevice {
            return Err(std::io::Error::other("the terminal is not a character device"));
        }
        let flags = rustix::fs::fcntl_getfl(&master)?;
        rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK)?;
        // tokio's pipe types poll any descriptor; the master reads and writes like a pipe (and
        // reads EIO once the terminal's last process is gone, which ends the output).
        let reader = pipe::Receiver::from_owned_fd_unchecked(master.try_clone()?)?;
        let writer = pipe::Sender::from_owned_fd_unchecked(master.try_clone()?)?;
        (Some(writer), reader, None, Some(master))
    } else {
        let stdout = pipe::Receiver::from_owned_fd(next()?)?;
        let stderr = pipe::Receiver::from_owned_fd(next()?)?;
        let stdin = if stdin_open { Some(pipe::Sender::from_owned_fd(next()?)?) } else { None };
        (stdin, stdout, Some(stderr), None)
    };
    Ok(Launched {
        pid,
        pgid: 0,
        stdin,
        stdout,
        stderr,
        control: Control::Agent(AgentControl {
            agents,
            workspace_id: workspace_id.to_owned(),
            master,
            exit: tokio::sync::Mutex::new(Some(exit)),
        }),
    })
}
