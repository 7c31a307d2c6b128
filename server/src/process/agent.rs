//! berth's side of `berth-agent`, the process agent inside a workspace (the protocol is in the
//! `berth-agent` crate). One connection per workspace: requests are answered in order, so each
//! waits in a queue for its reply; [`Reply::Exited`] messages in between go to the waiter the
//! spawn (or attach) registered for that pid. A connection that breaks, or an agent that does
//! not answer within [`REPLY_TIMEOUT`], is unusable: its pending requests fail and its
//! processes' exit waiters end, so that their readers ask the agent again on a new connection
//! (`launch::AgentControl::wait`).
//!
//! Everything the agent sends is untrusted (root inside the workspace can replace it): messages
//! are bounded, descriptors are counted, and the socket is opened without following symlinks.

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::{MAX_FDS, MAX_MESSAGE_BYTES, Reply, Request, SOCKET_NAME, Spawn, VERSION};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tracing::debug;

/// How long a request may wait for its reply before the agent counts as hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Exits of pids nobody waits for (processes berth has not re-attached yet), at most.
const MAX_UNCLAIMED: usize = berth_agent::MAX_PENDING_EXITS;
/// The largest reply berth accepts; the agent's replies are a few hundred bytes.
const MAX_REPLY_BYTES: usize = 64 << 10;

/// A process the agent started, or gave back after a restart.
pub struct AgentProcess {
    pub pid: u32,
    pub pty: bool,
    /// With a PTY, its master alone; otherwise stdout, stderr and, when open, stdin.
    pub fds: Vec<OwnedFd>,
    pub stdin_open: bool,
    /// Its exit status (code, or 128+n), once the agent reaped it; an error when the
    /// connection broke first.
    pub exit: oneshot::Receiver<u32>,
}

/// Why a call did not do what it asked.
#[derive(Debug)]
pub enum CallError {
    /// The agent answered that it failed; `errno` is the OS error, 0 for none.
    Refused { error: String, errno: i32 },
    /// The agent is gone, hung, or said something berth does not accept, and the request was
    /// not sent: nothing happened.
    Unusable(String),
    /// The request was sent but no answer came: it may have been carried out.
    Lost(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused { error, .. } => f.write_str(error),
            CallError::Unusable(why) => write!(f, "the workspace's process agent is unusable: {why}"),
            CallError::Lost(why) => write!(f, "the workspace's process agent did not answer: {why}"),
        }
    }
}

enum Answer {
    Hello { version: u32 },
    Process(AgentProcess),
    Done,
}

type Waiter = oneshot::Sender<Result<Answer, CallError>>;

#[derive(Default)]
struct Shared {
    broken: Option<String>,
    pending: VecDeque<Waiter>,
    exits: HashMap<u32, oneshot::Sender<u32>>,
    unclaimed: HashMap<u32, u32>,
}

/// A connection to one workspace's agent.
pub struct AgentClient {
    socket: Arc<AsyncFd<OwnedFd>>,
    shared: Arc<Mutex<Shared>>,
    /// Sending and queueing the waiter happen together, so replies match requests.
    send_order: tokio::sync::Mutex<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl AgentClient {
    /// Connects to the agent listening in `dir` and says hello. Fails when none listens there.
    pub async fn connect(dir: &Path) -> Result<Arc<Self>, CallError> {
        let dir = dir.to_path_buf();
        let socket = tokio::task::spawn_blocking(move || open_socket(&dir))
            .await
            .map_err(|err| CallError::Unusable(format!("the connect worker failed: {err}")))?
            .map_err(|err| CallError::Unusable(format!("cannot connect: {err}")))?;
        // Sound here, whatever the deprecation says (tokio#8587): AsyncFd owns the OwnedFd, so
        // nothing closes or reuses the descriptor while it is registered.
        #[allow(deprecated)]
        let socket = AsyncFd::new(socket);
        let socket = Arc::new(socket.map_err(|err| CallError::Unusable(format!("cannot register the socket: {err}")))?);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let reader = tokio::spawn(read_replies(socket.clone(), shared.clone()));
        let client = Arc::new(Self { socket, shared, send_order: tokio::sync::Mutex::new(()), reader });
        match client.call(&Request::Hello { version: VERSION }).await? {
            Answer::Hello { version } if version == VERSION => Ok(client),
            Answer::Hello { version } => {
                Err(CallError::Unusable(format!("it speaks protocol version {version}, berth speaks {VERSION}")))
            }
            _ => Err(CallError::Unusable("it answered hello with something else".to_owned())),
        }
    }

    /// Whether the connection still works, as far as berth knows.
    pub fn is_usable(&self) -> bool {
        self.shared.lock().expect("agent state").broken.is_none()
    }

    /// Starts a process.
    pub async fn spawn(&self, spawn: Spawn) -> Result<AgentProcess, CallError> {
        match self.call(&Request::Spawn(spawn)).await? {
            Answer::Process(process) => Ok(process),
            _ => Err(self.protocol_error("it answered spawn with something else")),
        }
    }

    /// The descriptors of a running child again; `Refused` with ESRCH when it is not running.
    pub async fn attach(&self, pid: u32) -> Result<AgentProcess, CallError> {
        match self.call(&Request::Attach { pid }).await? {
            Answer::Process(process) if process.pid == pid => Ok(process),
            _ => Err(self.protocol_error("it answered attach with something else")),
        }
    }

    pub async fn close_stdin(&self, pid: u32) -> Result<(), CallError> {
        self.done(Request::CloseStdin { pid }).await
    }

    pub async fn signal(&self, pid: u32, signal: i32, group: bool) -> Result<(), CallError> {
        self.done(Request::Signal { pid, signal, group }).await
    }

    /// The exit the agent reported for a pid nobody waited for (it ended while berth was down).
    pub fn take_unclaimed_exit(&self, pid: u32) -> Option<u32> {
        self.shared.lock().expect("agent state").unclaimed.remove(&pid)
    }

    async fn done(&self, request: Request) -> Result<(), CallError> {
        match self.call(&request).await? {
            Answer::Done => Ok(()),
            _ => Err(self.protocol_error("it answered with something else than done")),
        }
    }

    /// The answer to a request that was sent makes no sense: the connection is not used again,
    /// and the request may have been carried out.
    fn protocol_error(&self, why: &str) -> CallError {
        let why = why.to_owned();
        breaks(&self.shared, &self.socket, why.clone());
        CallError::Lost(why)
    }

    async fn call(&self, request: &Request) -> Result<Answer, CallError> {
        let bytes = serde_json::to_vec(request)
            .map_err(|err| CallError::Unusable(format!("cannot encode the request: {err}")))?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(CallError::Unusable(format!(
                "the request is {} bytes, more than the agent accepts ({MAX_MESSAGE_BYTES})",
                bytes.len()
            )));
        }
        let (waiter, reply) = oneshot::channel();
        {
            let _order = self.send_order.lock().await;
            {
                let mut shared = self.shared.lock().expect("agent state");
                if let Some(why) = &shared.broken {
                    return Err(CallError::Unusable(why.clone()));
                }
                shared.pending.push_back(waiter);
            }
            let unsent = Unsent { shared: &self.shared };
            let sent = tokio::time::timeout(REPLY_TIMEOUT, send(&self.socket, &bytes)).await;
            std::mem::forget(unsent);
            if let Err(why) = sent.unwrap_or_else(|_| Err("the agent does not take requests".to_owned())) {
                breaks(&self.shared, &self.socket, why.clone());
                return Err(CallError::Unusable(why));
            }
        }
        match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
            Ok(Ok(Err(CallError::Unusable(why)))) => Err(CallError::Lost(why)),
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(CallError::Lost("the connection closed".to_owned())),
            Err(_) => {
                let why = format!("no reply within {REPLY_TIMEOUT:?}");
                breaks(&self.shared, &self.socket, why.clone());
                Err(CallError::Lost(why))
            }
        }
    }
}

/// Dropped only when a call is cancelled while waiting to send (a `SOCK_SEQPACKET` message goes
/// out whole or not at all): its waiter, the last queued (the send order lock is held), leaves
/// the queue, so the next reply reaches the next request.
struct Unsent<'a> {
    shared: &'a Mutex<Shared>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.shared.lock().expect("agent state").pending.pop_back();
    }
}

/// Opens `dir/agent.sock` without following a symlink (root inside the workspace owns the
/// directory's contents) and connects through /proc/self/fd, which also keeps the address short.
fn open_socket(dir: &Path) -> std::io::Result<OwnedFd> {
    let dir = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let node = rustix::fs::openat(&dir, SOCKET_NAME, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    if FileType::from_raw_mode(rustix::fs::fstat(&node)?.st_mode) != FileType::Socket {
        return Err(std::io::Error::other(format!("{SOCKET_NAME} is not a socket")));
    }
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let address = SocketAddrUnix::new(format!("/proc/self/fd/{}", node.as_raw_fd()))?;
    rustix::net::connect(&socket, &address)?;
    Ok(socket)
}

async fn send(socket: &AsyncFd<OwnedFd>, bytes: &[u8]) -> Result<(), String> {
    loop {
        let mut ready = socket.writable().await.map_err(|err| format!("the socket failed: {err}"))?;
        match ready.try_io(|socket| {
            rustix::net::sendmsg(
                socket.get_ref(),
                &[IoSlice::new(bytes)],
                &mut SendAncillaryBuffer::default(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            )
            .map_err(std::io::Error::from)
        }) {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => return Err(format!("cannot send to the agent: {err}")),
            Err(_would_block) => {}
        }
    }
}

/// Marks the connection unusable and shuts the socket, so the reader stops and fails the rest.
fn breaks(shared: &Mutex<Shared>, socket: &AsyncFd<OwnedFd>, why: String) {
    shared.lock().expect("agent state").broken.get_or_insert(why);
    let _ = rustix::net::shutdown(socket.get_ref(), rustix::net::Shutdown::Both);
}

/// One message and its descriptors; `None` at end of file.
fn receive(socket: impl AsFd, buffer: &mut [u8]) -> std::io::Result<Option<(Reply, Vec<OwnedFd>)>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buffer)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.bytes == 0 {
        return Ok(None);
    }
    if received.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) {
        return Err(std::io::Error::other("the agent sent a message larger than berth accepts"));
    }
    let reply = serde_json::from_slice(&buffer[..received.bytes])
        .map_err(|err| std::io::Error::other(format!("the agent sent an undecodable message: {err}")))?;
    Ok(Some((reply, fds)))
}

async fn read_replies(socket: Arc<AsyncFd<OwnedFd>>, shared: Arc<Mutex<Shared>>) {
    let mut buffer = vec![0u8; MAX_REPLY_BYTES];
    let why = loop {
        let mut ready = match socket.readable().await {
            Ok(ready) => ready,
            Err(err) => break format!("the socket failed: {err}"),
        };
        let (reply, fds) = match ready.try_io(|socket| receive(socket.get_ref(), &mut buffer)) {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => break "the agent closed the connection (it ended)".to_owned(),
            Ok(Err(err)) => break err.to_string(),
            Err(_would_block) => continue,
        };
        if let Err(why) = dispatch(&shared, reply, fds) {
            break why;
        }
    };
    debug!(why, "agent connection ends");
    let mut shared = shared.lock().expect("agent state");
    let why = shared.broken.get_or_insert(why).clone();
    for waiter in shared.pending.drain(..) {
        let _ = waiter.send(Err(CallError::Unusable(why.clone())));
    }
    // Dropping the senders tells every process's waiter its exit is lost.
    shared.exits.clear();
}

fn dispatch(shared: &Mutex<Shared>, reply: Reply, fds: Vec<OwnedFd>) -> Result<(), String> {
    let mut shared = shared.lock().expect("agent state");
    let answer = match reply {
        Reply::Exited { pid, status } => {
            match shared.exits.remove(&pid) {
                Some(waiter) => {
                    let _ = waiter.send(status);
                }
                None => {
                    if shared.unclaimed.len() >= MAX_UNCLAIMED {
                        shared.unclaimed.clear();
                    }
                    shared.unclaimed.insert(pid, status);
                }
            }
            return Ok(());
        }
        Reply::Hello { version, .. } => Ok(Answer::Hello { version }),
        Reply::Done => Ok(Answer::Done),
        Reply::Failed { error, errno } => Err(CallError::Refused { error, errno }),
        Reply::Process { pid, pty, stdin } => {
            let expected = if pty { 1 } else { 2 + usize::from(stdin) };
            if fds.len() != expected || pid == 0 {
                return Err(format!("the agent sent {} descriptors for pid {pid}, not {expected}", fds.len()));
            }
            let (waiter, exit) = oneshot::channel();
            shared.exits.insert(pid, waiter);
            Ok(Answer::Process(AgentProcess { pid, pty, fds, stdin_open: stdin && !pty, exit }))
        }
    };
    let Some(waiter) = shared.pending.pop_front() else {
        return Err("the agent sent a reply nobody asked for".to_owned());
    };
    // Only a call that timed out (the connection then breaks) or a re-attach whose caller went
    // away (the next re-attach asks again) drops its receiver: Starts are not cancelled.
    let _ = waiter.send(answer);
    Ok(())
}
