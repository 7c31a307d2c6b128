//! berth-agent: the process agent berth runs inside each workspace (see the protocol in
//! `protocol.rs`). `berth-agent SOCKET_PATH` listens on a `SOCK_SEQPACKET` Unix socket, spawns
//! processes on request and hands berth their pipe or PTY descriptors; it is their parent, so
//! it reaps them and reports their exits, and it keeps its copies of their descriptors for a
//! berth that reconnects.
//!
//! One thread, one `poll` loop: the listener, the one connection, a pidfd per running child.
//! The peer may be hostile code in the workspace, so nothing it sends may stop or block the
//! loop; after startup the agent writes nothing to stdout or stderr (nobody reads them).

mod spawn;

use std::collections::{BTreeMap, VecDeque};
use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use berth_agent::{MAX_FDS, MAX_MESSAGE_BYTES, MAX_PENDING_EXITS, Reply, Request, VERSION};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use rustix::process::{Pid, Signal, WaitOptions};

use crate::spawn::Child;

/// Error texts are cut to this, so that a reply stays far below `MAX_MESSAGE_BYTES`.
const MAX_ERROR_BYTES: usize = 1024;
/// How long an answer waits for room in a full socket before the peer counts as gone.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() {
    let mut args: Vec<_> = std::env::args_os().skip(1).collect();
    // Tests run the agent on the host, in their own PID namespace.
    let any_peer = args.first().is_some_and(|arg| arg == "--any-peer");
    if any_peer {
        args.remove(0);
    }
    if args.len() != 1 || args[0].is_empty() {
        let _ = writeln!(std::io::stderr(), "usage: berth-agent [--any-peer] SOCKET_PATH");
        std::process::exit(2);
    }
    let path = Path::new(&args[0]);
    let listener = match listen(path) {
        Ok(listener) => listener,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "berth-agent: {}: {error}", path.display());
            std::process::exit(1);
        }
    };
    reset_sigchld();
    let spare = spare_descriptor();
    Agent { listener, conn: None, spare, children: BTreeMap::new(), exits: VecDeque::new(), any_peer }.run()
}

/// A descriptor held in reserve for accepting a connection when the table is full.
fn spare_descriptor() -> Option<OwnedFd> {
    rustix::fs::open("/", rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty()).ok()
}

/// The pid of a connected peer as this PID namespace sees it: 0 for a process outside it (berth
/// on the host), which nothing inside the workspace can be (creating PID namespaces needs
/// CAP_SYS_ADMIN, and seccomp refuses unshare and setns).
fn peer_pid(fd: &OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd as _;
    let mut credentials = libc::ucred { pid: -1, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the ucred it points to, which lives on
    // this stack frame; rustix's socket_peercred cannot be used, its Pid cannot be 0.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut credentials).cast(), &mut len)
    };
    (result == 0).then_some(credentials.pid)
}

/// Binds and listens on `path` (replacing a stale file there), accessible to root only.
fn listen(path: &Path) -> std::io::Result<OwnedFd> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let listener = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None)?;
    let addr = SocketAddrUnix::new(path)?;
    // Born 0600: no moment in which another user could connect.
    let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = rustix::net::bind(&listener, &addr);
    rustix::process::umask(umask);
    bound?;
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o600))?;
    rustix::net::listen(&listener, 16)?;
    Ok(listener)
}

/// An agent started with SIGCHLD ignored (dispositions survive exec) would have its children
/// reaped by the kernel, their statuses lost; the default disposition brings waitpid back.
fn reset_sigchld() {
    // SAFETY: called before any child exists, in a single-threaded process; SIG_DFL installs
    // no handler.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
}

struct Conn {
    fd: OwnedFd,
    /// Whether this connection said Hello (before that, every request fails).
    hello: bool,
}

struct Agent {
    listener: OwnedFd,
    /// At most one; a new connection replaces it.
    conn: Option<Conn>,
    /// See [`spare_descriptor`].
    spare: Option<OwnedFd>,
    children: BTreeMap<u32, Child>,
    /// Exits not delivered yet, oldest first, at most `MAX_PENDING_EXITS`.
    exits: VecDeque<Reply>,
    /// Accept peers inside the agent's PID namespace too (otherwise only berth, outside it: root
    /// in the workspace could otherwise replace berth's connection).
    any_peer: bool,
}

impl Agent {
    fn run(mut self) -> ! {
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
        loop {
            let (accept, conn_events, exited) = self.wait();
            for pid in exited {
                self.reap(pid);
            }
            if let Some(events) = conn_events {
                if events.contains(PollFlags::IN) {
                    self.receive(&mut buf);
                } else if events.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                    self.conn = None;
                } else if events.contains(PollFlags::OUT) {
                    self.flush_exits();
                }
            }
            if accept {
                self.accept();
            }
        }
    }

    /// Polls everything; returns whether the listener is readable, the connection's events,
    /// and the children whose pidfd says they ended.
    fn wait(&self) -> (bool, Option<PollFlags>, Vec<u32>) {
        let mut fds = Vec::with_capacity(2 + self.children.len());
        fds.push(PollFd::new(&self.listener, PollFlags::IN));
        if let Some(conn) = &self.conn {
            // Exits that did not fit in the socket wait for room; requests wait behind them, so
            // that their replies find room too.
            let events = if conn.hello && !self.exits.is_empty() { PollFlags::OUT } else { PollFlags::IN };
            fds.push(PollFd::new(&conn.fd, events));
        }
        let first_child = fds.len();
        fds.extend(self.children.values().map(|child| PollFd::new(&child.pidfd, PollFlags::IN)));
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => return (false, None, Vec::new()),
            Err(_) => {
                // Cannot happen (ENOMEM at worst); do not spin on it.
                std::thread::sleep(std::time::Duration::from_millis(100));
                return (false, None, Vec::new());
            }
        }
        let accept = !fds[0].revents().is_empty();
        let conn = self.conn.as_ref().map(|_| fds[1].revents()).filter(|events| !events.is_empty());
        let exited = self
            .children
            .keys()
            .zip(&fds[first_child..])
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(pid, _)| *pid)
            .collect();
        (accept, conn, exited)
    }

    fn accept(&mut self) {
        let mut result = rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC);
        if let Err(Errno::MFILE | Errno::NFILE) = result {
            // Out of descriptors (the children's hold them): the spare one makes room to take
            // the peer off the backlog, which poll would otherwise report forever.
            self.spare = None;
            result = rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC);
        }
        if let Ok(fd) = result
            && (self.any_peer || peer_pid(&fd) == Some(0))
        {
            self.conn = Some(Conn { fd, hello: false });
        }
        if self.spare.is_none() {
            self.spare = spare_descriptor();
        }
    }

    /// A child's pidfd is readable: reaps it and queues (and sends) its exit.
    fn reap(&mut self, pid: u32) {
        let Some(raw) = Pid::from_raw(pid as i32) else { return };
        let status = match rustix::process::waitpid(Some(raw), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => code as u32,
                (None, Some(signal)) => 128 + signal as u32,
                (None, None) => return, // stopped or continued: still running
            },
            Ok(None) | Err(Errno::INTR) => return,
            // ECHILD: not ours to wait for any more; drop it rather than poll it forever.
            Err(_) => 255,
        };
        self.children.remove(&pid);
        if self.exits.len() == MAX_PENDING_EXITS {
            self.exits.pop_front();
        }
        self.exits.push_back(Reply::Exited { pid, status });
        self.flush_exits();
    }

    /// Sends the queued exits to a connection that said Hello, until the socket is full.
    fn flush_exits(&mut self) {
        let Some(conn) = self.conn.as_ref().filter(|conn| conn.hello) else { return };
        while let Some(exit) = self.exits.front() {
            match send(&conn.fd, exit, &[]) {
                Ok(()) => {
                    self.exits.pop_front();
                }
                // Full: the rest goes when poll says there is room.
                Err(Errno::AGAIN) => return,
                Err(_) => {
                    self.conn = None;
                    return;
                }
            }
        }
    }

    /// Receives one message from the connection and answers it.
    fn receive(&mut self, buf: &mut [u8]) {
        let Some(conn) = &self.conn else { return };
        let mut iov = [IoSliceMut::new(buf)];
        // No room for descriptors: the kernel closes any the peer sends, and says MSG_CTRUNC.
        let mut control = RecvAncillaryBuffer::default();
        let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC;
        let message = match rustix::net::recvmsg(&conn.fd, &mut iov, &mut control, flags) {
            Ok(message) => message,
            Err(Errno::AGAIN | Errno::INTR) => return,
            Err(_) => {
                self.conn = None;
                return;
            }
        };
        if message.bytes == 0 {
            self.conn = None; // hung up
            return;
        }
        let reply = if message.flags.contains(ReturnFlags::TRUNC) || message.bytes > MAX_MESSAGE_BYTES {
            failed(&format!("message longer than {MAX_MESSAGE_BYTES} bytes"), libc::EMSGSIZE)
        } else if message.flags.contains(ReturnFlags::CTRUNC) {
            failed("unexpected file descriptors", libc::EINVAL)
        } else {
            match serde_json::from_slice::<Request>(&buf[..message.bytes]) {
                Ok(request) => return self.handle(request),
                Err(error) => failed(&format!("bad request: {error}"), libc::EINVAL),
            }
        };
        self.reply(&reply);
    }

    fn handle(&mut self, request: Request) {
        let hello = self.conn.as_ref().is_some_and(|conn| conn.hello);
        match request {
            Request::Hello { .. } => {
                self.reply(&Reply::Hello { version: VERSION, pid: std::process::id() });
                if let Some(conn) = &mut self.conn {
                    conn.hello = true;
                }
                self.flush_exits();
            }
            _ if !hello => self.reply(&failed("the first request must be hello", libc::EPROTO)),
            Request::Spawn(request) => match spawn::spawn(&request) {
                Ok((pid, child)) => {
                    self.children.insert(pid, child);
                    if !self.reply_process(pid) {
                        // berth never learnt of it (and reports the start as failed): nobody
                        // would read its output or see it end.
                        let _ = kill(pid, Signal::KILL, true);
                    }
                }
                Err(error) => {
                    let errno = error.raw_os_error().unwrap_or(match error.kind() {
                        std::io::ErrorKind::InvalidInput => libc::EINVAL,
                        _ => 0,
                    });
                    let program = request.argv.first().map_or("", String::as_str);
                    self.reply(&failed(&format!("spawn {program}: {error}"), errno));
                }
            },
            Request::Attach { pid } => {
                self.reply_process(pid);
            }
            Request::CloseStdin { pid } => {
                let reply = match self.children.get_mut(&pid).map(Child::close_stdin) {
                    None => not_a_child(pid),
                    Some(true) => Reply::Done,
                    Some(false) => failed(&format!("process {pid} has no open stdin"), libc::EBADF),
                };
                self.reply(&reply);
            }
            Request::Signal { pid, signal, group } => {
                let reply = match (self.children.contains_key(&pid), Signal::from_named_raw(signal)) {
                    (false, _) => not_a_child(pid),
                    (true, None) => failed(&format!("invalid signal {signal}"), libc::EINVAL),
                    (true, Some(signal)) => kill(pid, signal, group),
                };
                self.reply(&reply);
            }
        }
    }

    /// Answers with a child's `Process` and its descriptors, or ESRCH; false when the
    /// `Process` could not be sent.
    fn reply_process(&mut self, pid: u32) -> bool {
        match self.children.get(&pid) {
            Some(child) => {
                let reply = Reply::Process { pid, pty: child.pty(), stdin: child.has_stdin() };
                let sent = self.conn.as_ref().is_some_and(|conn| send_answer(&conn.fd, &reply, &child.fds()).is_ok());
                if !sent {
                    self.conn = None;
                }
                sent
            }
            None => {
                self.reply(&not_a_child(pid));
                true
            }
        }
    }

    /// Sends an answer; a peer that does not take it (gone, or not reading for
    /// [`ANSWER_TIMEOUT`]) is dropped.
    fn reply(&mut self, reply: &Reply) {
        if let Some(conn) = &self.conn
            && send_answer(&conn.fd, reply, &[]).is_err()
        {
            self.conn = None;
        }
    }
}

/// Signals a running child (its process group first with `group`).
fn kill(pid: u32, signal: Signal, group: bool) -> Reply {
    let Some(raw) = Pid::from_raw(pid as i32) else { return not_a_child(pid) };
    if group {
        match rustix::process::kill_process_group(raw, signal) {
            Ok(()) | Err(Errno::SRCH) => {}
            Err(error) => return failed(&format!("kill -{pid}: {error}"), error.raw_os_error()),
        }
    }
    match rustix::process::kill_process(raw, signal) {
        Ok(()) => Reply::Done,
        Err(error) => failed(&format!("kill {pid}: {error}"), error.raw_os_error()),
    }
}

fn not_a_child(pid: u32) -> Reply {
    failed(&format!("process {pid} is not a running child"), libc::ESRCH)
}

fn failed(error: &str, errno: i32) -> Reply {
    let mut end = error.len().min(MAX_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    Reply::failed(&error[..end], errno)
}

/// Sends the answer to a request, waiting up to [`ANSWER_TIMEOUT`] for room: exits queued
/// before it may have filled the socket, and berth, which reads all the time, makes room soon.
/// Dropping the connection instead would cost berth every process's exit on it.
fn send_answer(conn: &OwnedFd, reply: &Reply, fds: &[BorrowedFd<'_>]) -> rustix::io::Result<()> {
    let deadline = std::time::Instant::now() + ANSWER_TIMEOUT;
    loop {
        match send(conn, reply, fds) {
            Err(Errno::AGAIN) => {}
            sent => return sent,
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(Errno::AGAIN);
        }
        let timeout = rustix::event::Timespec::try_from(left).map_err(|_| Errno::INVAL)?;
        match rustix::event::poll(&mut [PollFd::new(conn, PollFlags::OUT)], Some(&timeout)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(error) => return Err(error),
        }
    }
}

/// Sends one message, never blocking and never raising SIGPIPE.
fn send(conn: &OwnedFd, reply: &Reply, fds: &[BorrowedFd<'_>]) -> rustix::io::Result<()> {
    let bytes = serde_json::to_vec(reply).map_err(|_| Errno::INVAL)?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::INVAL);
    }
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    let sent = rustix::net::sendmsg(conn, &[IoSlice::new(&bytes)], &mut control, flags)?;
    if sent != bytes.len() { Err(Errno::MSGSIZE) } else { Ok(()) }
}
