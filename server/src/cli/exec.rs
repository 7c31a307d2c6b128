//! `berth exec` and `berth ps`: run a command in a workspace as if it ran here, and list what
//! runs there.
//!
//! `exec` streams the process's stdout and stderr to ours as they come and exits with the
//! process's exit code (128+n when a signal ended it). `-i` forwards our stdin (EOF closes the
//! process's stdin); `-t` runs it on a pseudo-terminal sized like ours, puts our terminal in raw
//! mode (restored on every exit path, also on SIGTERM/SIGHUP) and forwards window size changes.

use std::io::{IsTerminal as _, Read as _};
use std::os::fd::AsFd as _;
use std::process::ExitCode;

use berth_api::v1 as pb;
use berth_api::v1::process_service_client::ProcessServiceClient;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::connect::Channel;
use super::describe;

/// What `berth exec` runs.
#[derive(Debug)]
pub struct ExecOptions {
    pub workspace_id: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
    pub user: Option<String>,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub tag: Option<String>,
    pub timeout: Option<u64>,
}

/// Runs the command and returns the exit code to leave with.
pub async fn exec(channel: Channel, options: ExecOptions) -> Result<ExitCode, String> {
    let mut client = ProcessServiceClient::new(channel);
    let Some((cmd, args)) = options.command.split_first() else {
        return Err("INVALID_ARGUMENT: no command given; pass it after --, e.g. berth exec ID -- ls -l".to_owned());
    };
    let terminal = options.tty.then(LocalTerminal::size).flatten();
    if options.tty && terminal.is_none() {
        return Err("-t needs a terminal on stdin and stdout; run without -t in scripts".to_owned());
    }
    let request = pb::StartRequest {
        workspace_id: options.workspace_id.clone(),
        process: Some(pb::ProcessConfig {
            cmd: cmd.clone(),
            args: args.to_vec(),
            env: options.env.iter().cloned().collect(),
            cwd: options.cwd.clone().unwrap_or_default(),
            user: options.user.clone().unwrap_or_default(),
        }),
        pty: terminal.map(|(cols, rows)| pb::PtyConfig { cols, rows }),
        tag: options.tag.clone().unwrap_or_default(),
        stdin: options.stdin,
        timeout: options.timeout.map(|seconds| prost_types::Duration { seconds: seconds as i64, nanos: 0 }),
        keepalive_interval: None,
    };
    let mut events = client.start(request).await.map_err(describe)?.into_inner();
    // Raw mode only once the process runs, and restored when this guard drops (every return).
    let mut raw: Option<RawMode> = None;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(item) = events.next().await {
        let Some(event) = item.map_err(describe)?.event.and_then(|event| event.event) else {
            continue;
        };
        match event {
            pb::process_event::Event::Start(start) => {
                let process = pb::ProcessSelector { selector: Some(pb::process_selector::Selector::Pid(start.pid)) };
                if options.tty {
                    raw = Some(RawMode::enter()?);
                    tokio::spawn(forward_resizes(client.clone(), options.workspace_id.clone(), process.clone()));
                }
                if options.stdin || options.tty {
                    tokio::spawn(forward_stdin(client.clone(), options.workspace_id.clone(), process, options.tty));
                }
            }
            pb::process_event::Event::Data(data) => {
                let written = match data.output {
                    Some(
                        pb::process_event::data::Output::Stdout(bytes) | pb::process_event::data::Output::Pty(bytes),
                    ) => stdout.write_all(&bytes).await.and(stdout.flush().await),
                    Some(pb::process_event::data::Output::Stderr(bytes)) => {
                        stderr.write_all(&bytes).await.and(stderr.flush().await)
                    }
                    None => Ok(()),
                };
                // Our reader went away (`| head`): the process keeps running, we stop.
                if written.is_err() {
                    return Ok(ExitCode::FAILURE);
                }
            }
            pb::process_event::Event::End(end) => {
                drop(raw.take());
                if !end.error.is_empty() {
                    eprintln!("berth: the process was ended: {}", end.error);
                }
                return Ok(exit_code(end.exit_code));
            }
            pb::process_event::Event::Keepalive(_) => {}
        }
    }
    drop(raw);
    Err("UNAVAILABLE: the stream ended before the process did; it still runs: berth ps shows it".to_owned())
}

/// The process's exit status as ours: 0-255 as is, anything else (unknown: -1) as 1.
fn exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}

/// Copies our stdin to the process (through its terminal with `-t`); EOF closes its stdin.
async fn forward_stdin(
    mut client: ProcessServiceClient<Channel>,
    workspace_id: String,
    process: pb::ProcessSelector,
    tty: bool,
) {
    let (sender, receiver) = mpsc::channel::<Vec<u8>>(16);
    // Reading stdin blocks: a thread of its own, bounded by the channel.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    if sender.blocking_send(buffer[..read].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let start = pb::StreamInputRequest {
        event: Some(pb::stream_input_request::Event::Start(pb::stream_input_request::Start {
            workspace_id: workspace_id.clone(),
            process: Some(process.clone()),
        })),
    };
    let chunks = tokio_stream::wrappers::ReceiverStream::new(receiver).map(move |chunk| {
        let input = if tty {
            pb::process_input::Input::Pty(chunk.into())
        } else {
            pb::process_input::Input::Stdin(chunk.into())
        };
        pb::StreamInputRequest {
            event: Some(pb::stream_input_request::Event::Data(pb::ProcessInput { input: Some(input) })),
        }
    });
    let messages = tokio_stream::iter([start]).chain(chunks);
    if client.stream_input(messages).await.is_err() {
        return;
    }
    if !tty {
        let _ = client.close_stdin(pb::CloseStdinRequest { workspace_id, process: Some(process) }).await;
    }
}

/// Sends our terminal's size to the process's whenever it changes (SIGWINCH).
async fn forward_resizes(
    mut client: ProcessServiceClient<Channel>,
    workspace_id: String,
    process: pb::ProcessSelector,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut changes) = signal(SignalKind::window_change()) else {
        return;
    };
    while changes.recv().await.is_some() {
        let Some((cols, rows)) = LocalTerminal::size() else {
            continue;
        };
        let request =
            pb::ResizePtyRequest { workspace_id: workspace_id.clone(), process: Some(process.clone()), cols, rows };
        if client.resize_pty(request).await.is_err() {
            return;
        }
    }
}

/// Facts about the terminal berth runs in.
struct LocalTerminal;

impl LocalTerminal {
    /// Columns and rows of our terminal, when stdin and stdout are one; 80x24 when the terminal
    /// does not know its size (a pty whose creator never set it, as `script` without a terminal).
    fn size() -> Option<(u32, u32)> {
        if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
            return None;
        }
        let size = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
        if size.ws_col == 0 || size.ws_row == 0 {
            return Some((80, 24));
        }
        Some((u32::from(size.ws_col), u32::from(size.ws_row)))
    }
}

/// Our terminal in raw mode (keys go to the remote terminal as typed, Ctrl-C included); the
/// previous mode comes back when this drops, and on SIGTERM or SIGHUP.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Result<Self, String> {
        let stdin = std::io::stdin();
        let saved =
            rustix::termios::tcgetattr(stdin.as_fd()).map_err(|err| format!("cannot read the terminal mode: {err}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .map_err(|err| format!("cannot put the terminal in raw mode: {err}"))?;
        let restore = saved.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut hangup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = hangup.recv() => {}
            }
            let _ =
                rustix::termios::tcsetattr(std::io::stdin().as_fd(), rustix::termios::OptionalActions::Now, &restore);
            std::process::exit(129);
        });
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            rustix::termios::tcsetattr(std::io::stdin().as_fd(), rustix::termios::OptionalActions::Now, &self.saved);
    }
}

/// `berth ps`: the workspace's running processes.
pub async fn ps(channel: Channel, workspace_id: String, json: bool) -> Result<(), String> {
    let mut client = ProcessServiceClient::new(channel);
    let processes = client.list(pb::ListRequest { workspace_id }).await.map_err(describe)?.into_inner().processes;
    if json {
        let rows: Vec<serde_json::Value> = processes
            .iter()
            .map(|process| {
                let config = process.config.clone().unwrap_or_default();
                serde_json::json!({
                    "pid": process.pid,
                    "tag": process.tag,
                    "cmd": config.cmd,
                    "args": config.args,
                    "user": config.user,
                    "pty": process.pty.is_some(),
                    "stdin": process.stdin,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("{:<8} {:<16} {:<4} COMMAND", "PID", "TAG", "TTY");
    for process in processes {
        let config = process.config.unwrap_or_default();
        let command = std::iter::once(config.cmd).chain(config.args).collect::<Vec<_>>().join(" ");
        println!(
            "{:<8} {:<16} {:<4} {command}",
            process.pid,
            process.tag,
            if process.pty.is_some() { "yes" } else { "no" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_pass_through_and_unknown_ones_fail() {
        assert_eq!(format!("{:?}", exit_code(0)), format!("{:?}", ExitCode::SUCCESS));
        assert_eq!(format!("{:?}", exit_code(143)), format!("{:?}", ExitCode::from(143)));
        assert_eq!(format!("{:?}", exit_code(-1)), format!("{:?}", ExitCode::FAILURE));
    }
}
