//! Processes in a workspace: the registry of processes started through ProcessService, each
//! with one reader of its pipes (or PTY) that fans its output out to every attached client (with
//! a replay ring), its stdin, its PTY and its exit status. Processes are detached from the
//! caller: the reader runs in its own task, and ended processes stay known for [`KEEP_ENDED`] so no
//! exit status is lost.
//!
//! A process is a child of the workspace's agent (`berth-agent`, see `agent.rs`), which hands
//! berth its pipe or PTY descriptors and reports its exit; where a workspace has no agent it is
//! a containerd exec whose FIFOs berth reads ([`Control`] tells the two apart).

mod agent;
mod agents;
mod grace;
mod launch;
mod output;
mod recover;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::agents::AGENT_DIR_NAME;
use self::launch::Control;
pub use self::output::{Chunk, Event, Exit, MAX_REPLAY_BYTES, Stream, Subscription};
use self::output::{Output, RING_BYTES, SUBSCRIBER_BACKLOG};
use crate::error::{Error, Reason, Result};
use crate::runtime::{PtySize, Runtime};

/// How long an ended process still answers Connect.
pub const KEEP_ENDED: Duration = Duration::from_secs(5 * 60);
/// The longest tag.
pub const MAX_TAG_CHARS: usize = 128;

/// What to run and how, as the caller gave it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessConfig {
    pub cmd: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    pub user: String,
}

/// A process to start.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    pub config: ProcessConfig,
    pub pty: Option<PtySize>,
    pub tag: String,
    pub stdin: bool,
    pub timeout: Option<Duration>,
}

/// How a caller names a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Pid(u32),
    Tag(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Pid(pid) => write!(f, "pid {pid}"),
            Selector::Tag(tag) => write!(f, "tag {tag:?}"),
        }
    }
}

/// Bytes for a process.
#[derive(Clone, Debug)]
pub enum Input {
    Stdin(Bytes),
    Pty(Bytes),
}

/// A process as List reports it.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tag: String,
    pub config: ProcessConfig,
    pub pty: Option<PtySize>,
    pub stdin: bool,
    pub start_time: OffsetDateTime,
}

/// One process started through ProcessService.
pub struct Process {
    runtime: Arc<dyn Runtime>,
    workspace_id: String,
    /// Names its record (and, for a containerd exec, the exec and its FIFOs).
    exec_id: String,
    control: Control,
    /// Its pid inside the workspace.
    pub pid: u32,
    pgid: u32,
    pub tag: String,
    config: ProcessConfig,
    pty: Mutex<Option<PtySize>>,
    /// Open until CloseStdin or the end; never for a process started without stdin (a PTY
    /// process always has one).
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    start_time: OffsetDateTime,
    output: Output,
    /// Why berth ends the process (timeout, workspace stop), for its `end`.
    ending: Mutex<Option<String>>,
    /// Cancelled when the workspace is gone and the reader must stop whatever it waits for.
    abandoned: CancellationToken,
}

impl Process {
    /// Attaches to the output: the last `replay` bytes first.
    pub fn subscribe(&self, replay: usize) -> Subscription {
        self.output.subscribe(replay.min(MAX_REPLAY_BYTES))
    }

    pub fn exit(&self) -> Option<Exit> {
        self.output.exit()
    }

    fn is_running(&self) -> bool {
        self.output.exit().is_none()
    }

    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            pid: self.pid,
            tag: self.tag.clone(),
            config: self.config.clone(),
            pty: *self.pty.lock().expect("pty size"),
            // Held only while stdin is open (dropped by CloseStdin); a writer holding the lock
            // means it is open.
            stdin: self.stdin.try_lock().map_or(true, |stdin| stdin.is_some()),
            start_time: self.start_time,
        }
    }

    fn has_pty(&self) -> bool {
        self.pty.lock().expect("pty size").is_some()
    }

    fn exited(&self, what: &str) -> Error {
        Error::new(
            Reason::ProcessExited,
            format!(
                "process {} in workspace {} has already ended; {what} is not possible",
                self.pid, self.workspace_id
            ),
        )
    }

    fn stdin_not_open(&self) -> Error {
        Error::new(
            Reason::StdinNotOpen,
            format!(
                "process {} in workspace {} has no open stdin; start it with stdin (and without a pty) to send input",
                self.pid, self.workspace_id
            ),
        )
    }

    fn no_pty(&self) -> Error {
        Error::new(
            Reason::PtyNotAllocated,
            format!(
                "process {} in workspace {} runs without a pseudo-terminal; start it with pty set",
                self.pid, self.workspace_id
            ),
        )
    }

    /// Writes bytes to stdin or the PTY.
    pub async fn send_input(&self, input: Input) -> Result<()> {
        let bytes = match input {
            Input::Stdin(bytes) if !self.has_pty() => bytes,
            Input::Stdin(_) => return Err(self.stdin_not_open()),
            Input::Pty(bytes) if self.has_pty() => bytes,
            Input::Pty(_) => return Err(self.no_pty()),
        };
        if !self.is_running() {
            return Err(self.exited("sending input"));
        }
        let mut stdin = self.stdin.lock().await;
        let Some(sender) = stdin.as_mut() else {
            return Err(self.stdin_not_open());
        };
        sender.write_all(&bytes).await.map_err(|err| {
            Error::new(
                Reason::StdinNotOpen,
                format!("writing to the stdin of process {} failed: {err}; the process may have closed it", self.pid),
            )
        })
    }

    /// Closes stdin, so the process reads end-of-file.
    pub async fn close_stdin(&self) -> Result<()> {
        if self.has_pty() {
            return Err(self.stdin_not_open());
        }
        if !self.is_running() {
            return Err(self.exited("closing stdin"));
        }
        let Some(sender) = self.stdin.lock().await.take() else {
            return Err(self.stdin_not_open());
        };
        drop(sender);
        match &self.control {
            Control::Exec => self.runtime.close_exec_stdin(&self.workspace_id, &self.exec_id).await,
            Control::Agent(agent) => {
                let client = agent.client().await.map_err(|err| self.agent_failed(&err))?;
                client.close_stdin(self.pid).await.map_err(|err| self.agent_failed(&err))
            }
            Control::Gone => Err(self.exited("closing stdin")),
        }
    }

    /// Sends a signal to the process.
    pub async fn signal(&self, signal: u32) -> Result<()> {
        if !self.is_running() {
            return Err(self.exited("signalling it"));
        }
        match &self.control {
            Control::Exec => self.runtime.signal_exec(&self.workspace_id, &self.exec_id, signal).await,
            Control::Agent(agent) => {
                let signal = i32::try_from(signal)
                    .map_err(|_| Error::new(Reason::InvalidArgument, format!("signal {signal} is out of range")))?;
                let client = agent.client().await.map_err(|err| self.agent_failed(&err))?;
                client.signal(self.pid, signal, false).await.map_err(|err| self.agent_failed(&err))
            }
            Control::Gone => Err(self.exited("signalling it")),
        }
    }

    /// Resizes the PTY.
    pub async fn resize(&self, size: PtySize) -> Result<()> {
        if !self.has_pty() {
            return Err(self.no_pty());
        }
        if !self.is_running() {
            return Err(self.exited("resizing its terminal"));
        }
        match &self.control {
            Control::Exec => self.runtime.resize_exec(&self.workspace_id, &self.exec_id, size).await?,
            Control::Agent(agent) => agent.resize(size).map_err(|err| {
                Error::new(Reason::RuntimeError, format!("cannot resize the terminal of process {}: {err}", self.pid))
            })?,
            Control::Gone => return Err(self.exited("resizing its terminal")),
        }
        *self.pty.lock().expect("pty size") = Some(size);
        Ok(())
    }

    /// Ends the process's whole process group with SIGKILL, saying why in its `end`.
    async fn kill_group(&self, why: String) {
        self.ending.lock().expect("ending").get_or_insert(why);
        match &self.control {
            Control::Exec => {
                let _ = self.runtime.signal_group(&self.workspace_id, self.pgid, SIGKILL).await;
                let _ = self.runtime.signal_exec(&self.workspace_id, &self.exec_id, SIGKILL).await;
            }
            Control::Agent(agent) => {
                if let Ok(client) = agent.client().await {
                    let _ = client.signal(self.pid, SIGKILL as i32, true).await;
                }
            }
            Control::Gone => {}
        }
    }

    fn agent_failed(&self, err: &agent::CallError) -> Error {
        Error::new(
            Reason::RuntimeError,
            format!("process {} in workspace {}: the process agent failed: {err}", self.pid, self.workspace_id),
        )
    }
}

const SIGKILL: u32 = 9;

/// Every workspace's processes.
pub struct Processes {
    runtime: Arc<dyn Runtime>,
    /// `{state_dir}/workspaces`: each workspace's FIFOs live in its own `exec/` below.
    workspaces_dir: PathBuf,
    by_workspace: Mutex<HashMap<String, Vec<Arc<Process>>>>,
    next_exec: AtomicU64,
    /// Workspaces whose processes from before a restart were read back (see `recover`).
    recovered: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
    agents: Arc<agents::Agents>,
}

impl Processes {
    pub fn new(runtime: Arc<dyn Runtime>, workspaces_dir: PathBuf) -> Self {
        Self {
            agents: Arc::new(agents::Agents::new(runtime.clone(), workspaces_dir.clone())),
            runtime,
            workspaces_dir,
            by_workspace: Mutex::new(HashMap::new()),
            next_exec: AtomicU64::new(1),
            recovered: Mutex::new(HashMap::new()),
        }
    }

    fn register(&self, workspace_id: &str, process: Arc<Process>) {
        self.by_workspace.lock().expect("process registry").entry(workspace_id.to_owned()).or_default().push(process);
    }

    fn fifo_dir(&self, workspace_id: &str) -> PathBuf {
        self.workspaces_dir.join(workspace_id).join("exec")
    }

    /// The workspace's known processes, after forgetting those that ended long ago.
    fn of(&self, workspace_id: &str) -> Vec<Arc<Process>> {
        let mut all = self.by_workspace.lock().expect("process registry");
        let Some(processes) = all.get_mut(workspace_id) else {
            return Vec::new();
        };
        let now = OffsetDateTime::now_utc();
        processes.retain(|process| process.exit().is_none_or(|exit| now - exit.time < KEEP_ENDED));
        processes.clone()
    }

    /// Starts a process in a running workspace whose PID 1 has host pid `init_pid`; the
    /// subscription sees all of its output. The caller serializes starts of one workspace.
    pub async fn start(
        &self,
        workspace_id: &str,
        init_pid: u32,
        options: StartOptions,
    ) -> Result<(Arc<Process>, Subscription)> {
        validate(&options)?;
        self.recover(workspace_id).await;
        if !options.tag.is_empty()
            && self.of(workspace_id).iter().any(|process| process.is_running() && process.tag == options.tag)
        {
            return Err(Error::new(
                Reason::ProcessTagInUse,
                format!(
                    "a running process of workspace {workspace_id} already has tag {:?}; choose another tag or wait for it to end",
                    options.tag
                ),
            ));
        }
        let base = self.runtime.process_base(workspace_id).await?;
        let mut env = merge_env(&base.env, &options.config.env);
        if options.pty.is_some() && !options.config.env.contains_key("TERM") {
            env.retain(|entry| !entry.starts_with("TERM="));
            env.push("TERM=xterm-256color".to_owned());
        }
        let path = env.iter().find_map(|entry| entry.strip_prefix("PATH=")).unwrap_or_default().to_owned();
        let cwd = if options.config.cwd.is_empty() { base.cwd.clone() } else { options.config.cwd.clone() };
        let rootfs = PathBuf::from(format!("/proc/{init_pid}/root"));
        let (cmd, user_text) = (options.config.cmd.clone(), options.config.user.clone());
        let id_text = workspace_id.to_owned();
        let resolved_cwd = cwd.clone();
        let (executable, user) = tokio::task::spawn_blocking(move || {
            crate::data::check_directory(&rootfs, &cwd)?;
            let executable = crate::data::find_executable(&rootfs, &cmd, &path, &cwd)?;
            let user = if user_text.is_empty() {
                None
            } else {
                Some(crate::data::resolve_user(&rootfs, &user_text).map_err(|err| {
                    Error::new(
                        Reason::UserNotFound,
                        format!(
                            "cannot run the process as user {user_text:?} in workspace {id_text}: {}",
                            err.message().replace("the image's User", "the process's user")
                        ),
                    )
                })?)
            };
            Ok::<_, Error>((executable, user))
        })
        .await
        .map_err(|err| Error::internal(format!("the process lookup worker failed: {err}")))??;

        let cwd = resolved_cwd;
        let mut args = vec![executable];
        args.extend(options.config.args.iter().cloned());
        // Unique across berth restarts too: FIFOs and records of running execs are kept.
        let exec_id = format!(
            "berth-{}-{}",
            OffsetDateTime::now_utc().unix_timestamp_nanos(),
            self.next_exec.fetch_add(1, Ordering::Relaxed)
        );
        let fifo_dir = self.fifo_dir(workspace_id);
        let launched = self
            .launch(
                workspace_id,
                init_pid,
                &launch::Plan {
                    exec_id: &exec_id,
                    args: &args,
                    env: &env,
                    requested_cwd: &options.config.cwd,
                    cwd: &cwd,
                    user: user.as_ref(),
                    base: &base,
                    pty: options.pty,
                    stdin: options.stdin,
                    fifo_dir: &fifo_dir,
                },
            )
            .await?;
        let process = Arc::new(Process {
            runtime: self.runtime.clone(),
            workspace_id: workspace_id.to_owned(),
            exec_id,
            control: launched.control,
            pid: launched.pid,
            pgid: launched.pgid,
            tag: options.tag.clone(),
            config: options.config.clone(),
            pty: Mutex::new(options.pty),
            stdin: tokio::sync::Mutex::new(launched.stdin),
            start_time: OffsetDateTime::now_utc(),
            output: Output::new(RING_BYTES, SUBSCRIBER_BACKLOG),
            ending: Mutex::new(None),
            abandoned: CancellationToken::new(),
        });
        let record = recover::ExecRecord {
            exec_id: process.exec_id.clone(),
            agent: matches!(process.control, Control::Agent(_)),
            pid: process.pid,
            pgid: process.pgid,
            tag: process.tag.clone(),
            cmd: options.config.cmd.clone(),
            args: options.config.args.clone(),
            env: options.config.env.clone(),
            cwd: options.config.cwd.clone(),
            user: options.config.user.clone(),
            pty: options.pty.map(|size| (size.cols, size.rows)),
            stdin: options.stdin,
            start_unix_nanos: process.start_time.unix_timestamp_nanos(),
            deadline_unix_nanos: options.timeout.map(|timeout| (process.start_time + timeout).unix_timestamp_nanos()),
        };
        if let Err(err) = recover::save(&fifo_dir, &record).await {
            warn!(workspace_id, exec_id = %process.exec_id, error = %err, "cannot save the exec record; a restart forgets this process");
        }
        let subscription = process.subscribe(0);
        info!(workspace_id, pid = process.pid, exec_id = %process.exec_id, "process started");
        self.by_workspace
            .lock()
            .expect("process registry")
            .entry(workspace_id.to_owned())
            .or_default()
            .push(process.clone());
        tokio::spawn(run::run(process.clone(), launched.stdout, launched.stderr, options.timeout, fifo_dir));
        Ok((process, subscription))
    }

    /// The process a selector names: a running one first, else the latest that ended.
    pub async fn find(&self, workspace_id: &str, selector: &Selector) -> Option<Arc<Process>> {
        self.recover(workspace_id).await;
        let processes = self.of(workspace_id);
        let matches = |process: &&Arc<Process>| match selector {
            Selector::Pid(pid) => process.pid == *pid,
            Selector::Tag(tag) => &process.tag == tag,
        };
        processes
            .iter()
            .filter(matches)
            .find(|process| process.is_running())
            .or_else(|| processes.iter().rev().find(matches))
            .cloned()
    }

    /// The workspace's running processes, oldest first.
    pub async fn list(&self, workspace_id: &str) -> Vec<ProcessInfo> {
        self.recover(workspace_id).await;
        let mut running: Vec<ProcessInfo> =
            self.of(workspace_id).iter().filter(|process| process.is_running()).map(|process| process.info()).collect();
        // Processes read back after a restart come in directory order.
        running.sort_by_key(|info| info.start_time);
        running
    }

    /// Called before the workspace's task stops: every running process's `end` will say why.
    pub fn workspace_ending(&self, workspace_id: &str, why: &str) {
        for process in self.of(workspace_id) {
            process.ending.lock().expect("ending").get_or_insert_with(|| why.to_owned());
        }
    }

    /// Called when a stop failed and the processes run on: their `end` no longer says `why`.
    pub fn workspace_not_ending(&self, workspace_id: &str, why: &str) {
        for process in self.of(workspace_id) {
            let mut ending = process.ending.lock().expect("ending");
            if ending.as_deref() == Some(why) {
                *ending = None;
            }
        }
    }

    /// Called after the workspace's task stopped (or is gone): readers still waiting stop, so
    /// every stream ends; with `forget` the workspace's processes are dropped (it was deleted).
    pub fn workspace_ended(&self, workspace_id: &str, forget: bool) {
        for process in self.of(workspace_id) {
            process.abandoned.cancel();
        }
        if forget {
            self.by_workspace.lock().expect("process registry").remove(workspace_id);
            self.recovered.lock().expect("recovered").remove(workspace_id);
            self.agents.forget(workspace_id);
        }
    }
}

fn validate(options: &StartOptions) -> Result<()> {
    let invalid = |message: String| Err(Error::new(Reason::InvalidArgument, message));
    if options.config.cmd.is_empty() {
        return invalid("process.cmd is empty; name the executable to run".to_owned());
    }
    if options.tag.chars().count() > MAX_TAG_CHARS {
        return invalid(format!("tag is longer than {MAX_TAG_CHARS} characters; choose a shorter one"));
    }
    if !options.config.cwd.is_empty() && !options.config.cwd.starts_with('/') {
        return invalid(format!("process.cwd {:?} is not absolute; pass a path starting with /", options.config.cwd));
    }
    if let Some(key) = options.config.env.keys().find(|key| key.is_empty() || key.contains('=') || key.contains('\0')) {
        return invalid(format!("process.env has an invalid name {key:?}; names are non-empty and contain no '='"));
    }
    Ok(())
}

/// The base environment, then the process's variables replacing those with the same name.
fn merge_env(base: &[String], overrides: &BTreeMap<String, String>) -> Vec<String> {
    let mut env: Vec<String> = base
        .iter()
        .filter(|entry| !overrides.contains_key(entry.split_once('=').map_or(entry.as_str(), |(key, _)| key)))
        .cloned()
        .collect();
    env.extend(overrides.iter().map(|(key, value)| format!("{key}={value}")));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_env_overrides_the_workspace_env() {
        let base = ["PATH=/bin".to_owned(), "LANG=C".to_owned(), "TOKEN=a".to_owned()];
        let env = merge_env(&base, &BTreeMap::from([("TOKEN".to_owned(), "b".to_owned())]));
        assert_eq!(env, ["PATH=/bin", "LANG=C", "TOKEN=b"]);
    }

    #[test]
    fn start_options_are_validated() {
        let options = |cmd: &str, cwd: &str, tag: &str| StartOptions {
            config: ProcessConfig { cmd: cmd.to_owned(), cwd: cwd.to_owned(), ..ProcessConfig::default() },
            tag: tag.to_owned(),
            ..StartOptions::default()
        };
        assert!(validate(&options("sh", "/", "web")).is_ok());
        for bad in [options("", "", ""), options("sh", "tmp", ""), options("sh", "", &"t".repeat(129))] {
            assert_eq!(validate(&bad).unwrap_err().reason(), Reason::InvalidArgument, "{bad:?}");
        }
    }
}
