//! The reader of one process: its pipes (or PTY) to the fan-out, its exit (from its agent or
//! containerd), its timeout, then `end` once every byte read was published, then the cleanup.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::pipe;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::grace::{HARD_CAP, drain_deadline};
use super::launch::Control;
use super::output::{Chunk, Exit, Output, Stream};
use super::{Process, SIGKILL};
use crate::runtime::ExecState;

/// Bytes read from stdout (or the PTY) at once: heavy output comes in chunks this large.
const READ_BYTES: usize = 256 << 10;
/// Bytes read from stderr at once; it rarely carries much.
const ERR_READ_BYTES: usize = 64 << 10;
/// How long a process's wait survives containerd not answering: about 5 minutes.
const WAIT_RETRIES: u32 = 1500;
const WAIT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// How long berth waits before reading a pipe again after a read that emptied it: a process
/// writing continuously then fills the pipe meanwhile, so each read (and gRPC message) carries
/// up to [`READ_BYTES`] instead of the few KiB of one write. Output after a quiet moment is read
/// at once; continuous output is delayed by at most this.
const COALESCE: Duration = Duration::from_millis(1);

/// Reads one pipe once the output accepts more; `None` stands for a stream that does not exist.
/// After the read that woke it, it takes what else the pipe holds without waiting, so a process
/// writing fast costs one chunk per wake-up, not one per write. `not_before` paces the reads
/// (see [`COALESCE`]).
async fn read(
    output: &Output,
    receiver: Option<&mut pipe::Receiver>,
    buffer: &mut [u8],
    not_before: &mut Option<Instant>,
) -> std::io::Result<usize> {
    let Some(receiver) = receiver else {
        return std::future::pending().await;
    };
    if let Some(due) = *not_before {
        tokio::time::sleep_until(due).await;
    }
    output.ready().await;
    let mut filled = receiver.read(buffer).await?;
    while filled > 0 && filled < buffer.len() {
        match receiver.try_read(&mut buffer[filled..]) {
            // End of file or nothing more for now: what was read goes out; the next read sees it.
            Ok(0) | Err(_) => break,
            Ok(more) => filled += more,
        }
    }
    // A full buffer means more is waiting: read again at once.
    *not_before = (filled > 0 && filled < buffer.len()).then(|| Instant::now() + COALESCE);
    Ok(filled)
}

pub(super) async fn run(
    process: Arc<Process>,
    mut stdout: pipe::Receiver,
    mut stderr: Option<pipe::Receiver>,
    timeout: Option<Duration>,
    fifo_dir: PathBuf,
) {
    let out_stream = if process.has_pty() { Stream::Pty } else { Stream::Stdout };
    let wait = wait_exit(&process);
    tokio::pin!(wait);
    let mut status: Option<crate::error::Result<u32>> = None;
    let mut exited_at: Option<Instant> = None;
    let mut first_exit: Option<Instant> = None;
    let mut last_output = Instant::now();
    let mut out_open = true;
    let mut err_open = stderr.is_some();
    let mut out_buffer = vec![0u8; READ_BYTES];
    let mut err_buffer = vec![0u8; ERR_READ_BYTES];
    let (mut out_pacing, mut err_pacing) = (None, None);
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let mut timed_out = false;
    loop {
        if status.is_some() && !out_open && !err_open {
            break;
        }
        let drained = exited_at.map(|exited_at| drain_deadline(exited_at, last_output));
        tokio::select! {
            read_out = read(&process.output, Some(&mut stdout), &mut out_buffer, &mut out_pacing), if out_open => match read_out {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    process.output.publish(Chunk { stream: out_stream, bytes: Bytes::copy_from_slice(&out_buffer[..n]) });
                    last_output = Instant::now();
                }
            },
            read_err = read(&process.output, stderr.as_mut(), &mut err_buffer, &mut err_pacing), if err_open => match read_err {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    process.output.publish(Chunk { stream: Stream::Stderr, bytes: Bytes::copy_from_slice(&err_buffer[..n]) });
                    last_output = Instant::now();
                }
            },
            exit = &mut wait, if status.is_none() => {
                status = Some(exit);
                exited_at = Some(Instant::now());
                first_exit = exited_at;
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !timed_out && status.is_none() => {
                timed_out = true;
                let timeout = timeout.unwrap_or_default();
                process.kill_group(format!("the process ran longer than its timeout of {timeout:?} and was killed with SIGKILL")).await;
            }
            () = tokio::time::sleep_until(drained.unwrap_or_else(Instant::now)), if drained.is_some() => {
                let exit_time = first_exit.unwrap_or_else(Instant::now);
                if !process.output.accepts_more() && exit_time.elapsed() < HARD_CAP {
                    // The reader was paused for slow clients, not idle: wait for them, then
                    // give the pipe a fresh grace.
                    tokio::select! {
                        () = process.output.ready() => {}
                        () = process.abandoned.cancelled() => break,
                    }
                    exited_at = Some(Instant::now());
                    last_output = Instant::now();
                    continue;
                }
                debug!(pid = process.pid, "output still open after the exit; ending without waiting for end-of-file");
                break;
            }
            () = process.abandoned.cancelled() => break,
        }
    }
    let ending = process.ending.lock().expect("ending").clone();
    let exit = match status {
        Some(Ok(status)) => Exit::from_status(status, ending.unwrap_or_default()),
        Some(Err(err)) => {
            let why = ending.unwrap_or_else(|| format!("berth lost track of the process: {err}"));
            Exit { code: -1, ..Exit::from_status(0, why) }
        }
        None => {
            Exit { code: -1, ..Exit::from_status(0, ending.unwrap_or_else(|| "the workspace's task ended".to_owned())) }
        }
    };
    drop(stdout);
    drop(stderr);
    process.stdin.lock().await.take();
    process.output.finish(exit);
    // The exec's resources in the shim; a process still running (abandoned) is killed first.
    if process.abandoned.is_cancelled() {
        match &process.control {
            Control::Exec => {
                let _ = process.runtime.signal_exec(&process.workspace_id, &process.exec_id, SIGKILL).await;
            }
            Control::Agent(agent) => {
                if let Ok(client) = agent.client().await {
                    let _ = client.signal(process.pid, SIGKILL as i32, true).await;
                }
            }
            Control::Gone => {}
        }
    }
    clean_up(&process, &fifo_dir).await;
}

/// The process's exit status: from its agent, which reaps it, or from containerd.
async fn wait_exit(process: &Process) -> crate::error::Result<u32> {
    let Control::Agent(agent) = &process.control else {
        return wait_exec(process).await;
    };
    agent.wait(process.pid).await.map_err(|err| {
        crate::error::Error::new(
            crate::error::Reason::RuntimeError,
            format!("{err}; if the agent was killed inside the workspace, the process ended with it"),
        )
    })
}

/// The exec's exit status from containerd. A wait that breaks (containerd restarting or not
/// answering for a while) is followed by asking where the process is: it runs on in its shim
/// meanwhile, so berth waits again.
async fn wait_exec(process: &Process) -> crate::error::Result<u32> {
    let mut tries = 0;
    loop {
        let err = match process.runtime.wait_exec(&process.workspace_id, &process.exec_id).await {
            Ok(status) => return Ok(status),
            Err(err) => err,
        };
        tries += 1;
        if tries > WAIT_RETRIES {
            return Err(err);
        }
        warn!(workspace_id = %process.workspace_id, pid = process.pid, error = %err, "waiting for a process failed; asking containerd again");
        tokio::time::sleep(WAIT_RETRY_DELAY).await;
        match process.runtime.exec_state(&process.workspace_id, &process.exec_id).await {
            Ok(ExecState::Running) | Err(_) => {}
            Ok(ExecState::Exited(status)) => return Ok(status),
            Ok(ExecState::Missing) => return Err(err),
        }
    }
}

/// Deletes the ended exec from the task (with its FIFOs), and the process's record.
pub(super) async fn clean_up(process: &Process, fifo_dir: &Path) {
    if matches!(process.control, Control::Exec)
        && let Err(err) = process.runtime.delete_exec(&process.workspace_id, &process.exec_id, fifo_dir).await
    {
        warn!(workspace_id = %process.workspace_id, exec_id = %process.exec_id, error = %err, "cannot delete the exec");
    }
    let _ = tokio::fs::remove_file(super::recover::record_path(fifo_dir, &process.exec_id)).await;
}
