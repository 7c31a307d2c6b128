//! Processes across a berth restart: each process's description is kept in the workspace's
//! `exec/` directory (`{exec_id}.json`, 0600 in the 0700 state directory; it holds the process's
//! env). The first call about a workspace after a restart reads them back. A process still
//! running gets a new reader: a child of the agent on the descriptors the agent kept (output
//! written while berth was down waits in its pipe, up to 1 MiB on stdout and 64 KiB on stderr,
//! or in the terminal's buffer, and the process blocks on further writes meanwhile); a
//! containerd exec on its FIFOs (the shim kept its ends open; up to 64 KiB waits). One that
//! exited answers with its exit status (kept by containerd, or by the agent until it sent it to
//! berth: an exit berth read just before it died is lost) for [`super::KEEP_ENDED`]. The replay ring does not survive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::launch::{self, Control, Launched};
use super::output::{Exit, Output, RING_BYTES, SUBSCRIBER_BACKLOG};
use super::{Process, ProcessConfig, Processes, run};
use crate::runtime::{ExecState, PtySize};

/// What berth must know of an exec to serve it again.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ExecRecord {
    pub exec_id: String,
    /// A child of the workspace's agent (else a containerd exec).
    #[serde(default)]
    pub agent: bool,
    pub pid: u32,
    pub pgid: u32,
    pub tag: String,
    pub cmd: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    pub user: String,
    /// `(cols, rows)`.
    pub pty: Option<(u16, u16)>,
    pub stdin: bool,
    pub start_unix_nanos: i128,
    /// When its timeout passes, if it has one.
    pub deadline_unix_nanos: Option<i128>,
}

pub(super) fn record_path(fifo_dir: &Path, exec_id: &str) -> PathBuf {
    fifo_dir.join(format!("{exec_id}.json"))
}

pub(super) async fn save(fifo_dir: &Path, record: &ExecRecord) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    tokio::fs::create_dir_all(fifo_dir).await?;
    let path = record_path(fifo_dir, &record.exec_id);
    tokio::fs::write(&path, bytes).await?;
    tokio::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).await
}

impl Processes {
    /// Reads back, once per workspace and berth process, the processes an earlier berth
    /// process started.
    pub(super) async fn recover(&self, workspace_id: &str) {
        let cell = self.recovered.lock().expect("recovered").entry(workspace_id.to_owned()).or_default().clone();
        cell.get_or_init(|| self.recover_now(workspace_id)).await;
    }

    async fn recover_now(&self, workspace_id: &str) {
        let fifo_dir = self.fifo_dir(workspace_id);
        let Ok(mut entries) = tokio::fs::read_dir(&fifo_dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            if path.extension().is_none_or(|extension| extension != "json") {
                continue;
            }
            let record = match tokio::fs::read(&path).await.map(|bytes| serde_json::from_slice::<ExecRecord>(&bytes)) {
                Ok(Ok(record)) => record,
                _ => {
                    warn!(path = %path.display(), "cannot read an exec record; removing it");
                    let _ = tokio::fs::remove_file(&path).await;
                    continue;
                }
            };
            self.recover_one(workspace_id, &fifo_dir, record).await;
        }
    }

    async fn recover_one(&self, workspace_id: &str, fifo_dir: &Path, record: ExecRecord) {
        let pty = record.pty.map(|(cols, rows)| PtySize { cols, rows });
        let found = if record.agent {
            self.find_agent_child(workspace_id, record.pid).await
        } else {
            self.find_exec(workspace_id, fifo_dir, &record, pty.is_some()).await
        };
        let (control, running, exit_status) = match found {
            Found::Running(launched) => {
                let Launched { control, stdin, stdout, stderr, .. } = *launched;
                (control, Some((stdin, stdout, stderr)), None)
            }
            Found::Ended(status) => (if record.agent { Control::Gone } else { Control::Exec }, None, status),
        };
        let process = Arc::new(Process {
            runtime: self.runtime.clone(),
            workspace_id: workspace_id.to_owned(),
            exec_id: record.exec_id.clone(),
            control,
            pid: record.pid,
            pgid: record.pgid,
            tag: record.tag,
            config: ProcessConfig {
                cmd: record.cmd,
                args: record.args,
                env: record.env,
                cwd: record.cwd,
                user: record.user,
            },
            pty: Mutex::new(pty),
            stdin: tokio::sync::Mutex::new(None),
            start_time: OffsetDateTime::from_unix_timestamp_nanos(record.start_unix_nanos)
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
            output: Output::new(RING_BYTES, SUBSCRIBER_BACKLOG),
            ending: Mutex::new(None),
            abandoned: CancellationToken::new(),
        });
        self.register(workspace_id, process.clone());
        match running {
            Some((stdin, stdout, stderr)) => {
                *process.stdin.lock().await = stdin;
                let timeout = record.deadline_unix_nanos.map(|deadline| {
                    let left = deadline - OffsetDateTime::now_utc().unix_timestamp_nanos();
                    Duration::from_nanos(u64::try_from(left).unwrap_or(0))
                });
                info!(workspace_id, pid = process.pid, exec_id = %process.exec_id, "re-attached to a process after a restart");
                tokio::spawn(run::run(process, stdout, stderr, timeout, fifo_dir.to_path_buf()));
            }
            None => {
                let exit = match exit_status {
                    Some(status) => Exit::from_status(status, String::new()),
                    None => Exit {
                        code: -1,
                        ..Exit::from_status(0, "the process ended while berth was not running".to_owned())
                    },
                };
                process.output.finish(exit);
                run::clean_up(&process, fifo_dir).await;
            }
        }
    }

    /// A containerd exec from the record: still running (its FIFOs reopened), or ended.
    async fn find_exec(&self, workspace_id: &str, fifo_dir: &Path, record: &ExecRecord, pty: bool) -> Found {
        match self.runtime.exec_state(workspace_id, &record.exec_id).await.unwrap_or(ExecState::Missing) {
            ExecState::Running => match self.runtime.reopen_exec(&record.exec_id, fifo_dir, pty, record.stdin).await {
                Ok(io) => Found::Running(Box::new(Launched {
                    pid: record.pid,
                    pgid: record.pgid,
                    stdin: io.stdin,
                    stdout: io.stdout,
                    stderr: io.stderr,
                    control: Control::Exec,
                })),
                Err(err) => {
                    warn!(workspace_id, exec_id = %record.exec_id, error = %err, "cannot re-attach to a process");
                    Found::Ended(None)
                }
            },
            ExecState::Exited(status) => Found::Ended(Some(status)),
            ExecState::Missing => Found::Ended(None),
        }
    }

    /// A child of the workspace's agent: still running (the agent hands its descriptors over
    /// again), or ended (the agent reported its exit after the hello, or nothing is known).
    async fn find_agent_child(&self, workspace_id: &str, pid: u32) -> Found {
        let Some(client) = self.agents.get(workspace_id, None).await else {
            return Found::Ended(None);
        };
        match client.attach(pid).await {
            Ok(process) => match launch::agent_ends(self.agents.clone(), workspace_id, process) {
                Ok(launched) => Found::Running(Box::new(launched)),
                Err(err) => {
                    warn!(workspace_id, pid, error = %err, "cannot re-attach to a process; killing it");
                    let _ = client.signal(pid, 9, true).await;
                    Found::Ended(None)
                }
            },
            Err(_) => Found::Ended(client.take_unclaimed_exit(pid)),
        }
    }
}

/// What became of a process from the record.
enum Found {
    Running(Box<Launched>),
    /// Its exit status, when known.
    Ended(Option<u32>),
}
