//! berth-agent end to end: the binary on a socket in a temporary directory, spoken to the way
//! berth does (SOCK_SEQPACKET, JSON, descriptors by SCM_RIGHTS). Runs as root (user switch).
//! Build: `RUSTFLAGS="-C target-feature=+crt-static" cargo test -p berth-agent --features static
//! --target x86_64-unknown-linux-gnu`.
#![cfg(feature = "static")]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_agent::{MAX_MESSAGE_BYTES, Reply, Request, Spawn, VERSION, Winsize};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::FlockOperation;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketType,
};
use rustix::process::{Pid, PidfdFlags, Resource, Rlimit};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A berth-agent process on its own socket; killed (and its directory removed) on drop.
struct Agent {
    process: std::process::Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Agent {
    fn start() -> Agent {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("berth-agent-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join(berth_agent::SOCKET_NAME);
        std::fs::write(&socket, b"stale").unwrap();
        let process = Command::new(env!("CARGO_BIN_EXE_berth-agent"))
            .arg("--any-peer")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent { process, dir, socket }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Connects (waiting for the agent to listen) without saying Hello.
    fn connect_raw(&self) -> Conn {
        let start = Instant::now();
        loop {
            let fd = unix_socket();
            let addr = SocketAddrUnix::new(&self.socket).unwrap();
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => return Conn { fd, exits: Vec::new() },
                Err(error) if start.elapsed() > TIMEOUT => panic!("connect: {error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Connects and says Hello.
    fn connect(&self) -> Conn {
        let mut conn = self.connect_raw();
        let (reply, fds) = conn.call(&Request::Hello { version: VERSION });
        assert_eq!(reply, Reply::Hello { version: VERSION, pid: self.pid() });
        assert!(fds.is_empty());
        conn
    }

    /// The agent's children (from /proc), zombies included.
    fn children(&self) -> usize {
        let path = format!("/proc/{0}/task/{0}/children", self.pid());
        std::fs::read_to_string(path).unwrap().split_whitespace().count()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap().count()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One connection, as berth holds it: exits that arrive between replies are kept aside.
struct Conn {
    fd: OwnedFd,
    exits: Vec<(u32, u32)>,
}

impl Conn {
    fn send_bytes(&self, bytes: &[u8]) {
        let mut control = SendAncillaryBuffer::default();
        rustix::net::sendmsg(&self.fd, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL).unwrap();
    }

    fn send(&self, request: &Request) {
        self.send_bytes(&serde_json::to_vec(request).unwrap());
    }

    /// The next message, with its descriptors; None when the agent closed the connection.
    fn recv_any(&self) -> Option<(Reply, Vec<OwnedFd>)> {
        assert!(wait_readable(&self.fd, TIMEOUT), "no message from the agent in {TIMEOUT:?}");
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(berth_agent::MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let message =
            rustix::net::recvmsg(&self.fd, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC)
                .unwrap();
        if message.bytes == 0 {
            return None;
        }
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        Some((serde_json::from_slice(&buf[..message.bytes]).unwrap(), fds))
    }

    /// The next message that is not an `Exited`.
    fn recv(&mut self) -> (Reply, Vec<OwnedFd>) {
        loop {
            match self.recv_any().expect("the agent closed the connection") {
                (Reply::Exited { pid, status }, fds) => {
                    assert!(fds.is_empty());
                    self.exits.push((pid, status));
                }
                reply => return reply,
            }
        }
    }

    fn call(&mut self, request: &Request) -> (Reply, Vec<OwnedFd>) {
        self.send(request);
        self.recv()
    }

    fn spawn(&mut self, spawn: Spawn) -> (u32, Vec<OwnedFd>) {
        let stdin = spawn.stdin && spawn.pty.is_none();
        let pty = spawn.pty.is_some();
        match self.call(&Request::Spawn(spawn)) {
            (Reply::Process { pid, pty: p, stdin: s }, fds) => {
                assert_eq!((p, s), (pty, stdin));
                assert_eq!(fds.len(), if pty { 1 } else { 2 + stdin as usize });
                (pid, fds)
            }
            other => panic!("spawn: {other:?}"),
        }
    }

    fn spawn_failure(&mut self, spawn: Spawn) -> (String, i32) {
        match self.call(&Request::Spawn(spawn)) {
            (Reply::Failed { error, errno }, fds) => {
                assert!(fds.is_empty());
                (error, errno)
            }
            other => panic!("spawn should fail: {other:?}"),
        }
    }

    fn exit_status(&mut self, pid: u32) -> u32 {
        loop {
            if let Some(i) = self.exits.iter().position(|(p, _)| *p == pid) {
                return self.exits.remove(i).1;
            }
            match self.recv_any().expect("the agent closed the connection") {
                (Reply::Exited { pid, status }, _) => self.exits.push((pid, status)),
                other => panic!("expected an exit, got {other:?}"),
            }
        }
    }

    fn done(&mut self, request: Request) {
        assert_eq!(self.call(&request).0, Reply::Done, "{request:?}");
    }

    fn errno(&mut self, request: Request) -> i32 {
        match self.call(&request) {
            (Reply::Failed { errno, .. }, _) => errno,
            other => panic!("{request:?} should fail: {other:?}"),
        }
    }
}

fn wait_readable(fd: &impl AsFd, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let timeout = Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: timeout.subsec_nanos() as i64 };
    rustix::event::poll(&mut fds, Some(&timeout)).unwrap() == 1
}

/// Everything until EOF (or EIO: a PTY whose other side is closed).
fn read_all(fd: OwnedFd) -> String {
    let mut file = File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(error) if error.raw_os_error() == Some(libc::EIO) => break,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => panic!("read: {error}"),
        }
    }
    String::from_utf8(out).unwrap()
}

/// Reads up to and including the first newline.
fn read_line(fd: &OwnedFd) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.last() != Some(&b'\n') {
        assert_eq!(rustix::io::read(fd, &mut byte).unwrap(), 1, "EOF before a newline");
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// `sleep 100`, without a shell (that could outlive a killed child as an orphan).
/// Close-on-exec: a copy inherited by an agent another test spawns would keep the connection
/// open after the test closed it.
fn unix_socket() -> OwnedFd {
    rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, rustix::net::SocketFlags::CLOEXEC, None)
        .unwrap()
}

fn sleep() -> Spawn {
    Spawn { argv: vec!["/bin/sleep".into(), "100".into()], cwd: "/".into(), ..Spawn::default() }
}

fn sh(script: &str) -> Spawn {
    Spawn {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into(), "LC_ALL=C".into()],
        cwd: "/".into(),
        ..Spawn::default()
    }
}

/// Waits for a process that is not our child to end (its pidfd becomes readable on exit).
fn ends_within(pid: u32, timeout: Duration) -> bool {
    match rustix::process::pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty()) {
        Ok(pidfd) => wait_readable(&pidfd, timeout),
        Err(rustix::io::Errno::SRCH) => true,
        Err(error) => panic!("pidfd_open {pid}: {error}"),
    }
}

#[test]
fn hello_first_and_socket_mode() {
    let agent = Agent::start();
    let mut conn = agent.connect_raw();
    let mode = std::fs::metadata(&agent.socket).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&mode.file_type()), "the stale file is replaced");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    assert_eq!(conn.errno(Request::Spawn(sh("exit 0"))), libc::EPROTO);
    assert_eq!(conn.errno(Request::Attach { pid: 1 }), libc::EPROTO);
    let (reply, _) = conn.call(&Request::Hello { version: VERSION });
    assert_eq!(reply, Reply::Hello { version: VERSION, pid: agent.pid() });
}

#[test]
fn usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_berth-agent")).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn pipes_and_exit_status() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let (pid, mut fds) = conn.spawn(sh("echo out; echo err >&2; exit 3"));
    let stderr = fds.pop().unwrap();
    let stdout = fds.pop().unwrap();
    assert_eq!(rustix::pipe::fcntl_getpipe_size(&stdout).unwrap(), 1 << 20);
    assert_eq!(read_all(stdout), "out\n");
    assert_eq!(read_all(stderr), "err\n");
    assert_eq!(conn.exit_status(pid), 3);
    // Gone from the table once it exited.
    assert_eq!(conn.errno(Request::Attach { pid }), libc::ESRCH);
    assert_eq!(conn.errno(Request::Signal { pid, signal: libc::SIGTERM, group: false }), libc::ESRCH);
}

#[test]
fn environment_argv0_and_cwd() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let mut spawn = sh("echo \"$0|$FOO|$BAR|$HOME|$(pwd)\"; env | wc -l");
    spawn.env = vec!["FOO=a=b".into(), "BAR=".into()];
    spawn.cwd = "/tmp".into();
    let (pid, mut fds) = conn.spawn(spawn);
    drop(fds.pop());
    let out = read_all(fds.pop().unwrap());
    // sh adds PWD (and maybe SHLVL, _) to the two it was given; nothing from the agent's.
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("/bin/sh|a=b|||/tmp"));
    let count: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(count <= 5, "{out}");
    assert_eq!(conn.exit_status(pid), 0);
}

#[test]
fn pty() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let mut spawn = sh("tty; stty size; test -t 0 && test -t 2 && echo ttys");
    spawn.pty = Some(Winsize { rows: 30, cols: 100 });
    let (pid, mut fds) = conn.spawn(spawn);
    let out = read_all(fds.pop().unwrap());
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{out:?}");
    assert_eq!(lines[1..], ["30 100", "ttys"], "{out:?}");
    assert_eq!(conn.exit_status(pid), 0);
}

#[test]
fn pty_is_controlling_terminal() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    // Its own session, with the PTY as the controlling terminal: /dev/tty opens, and the
    // session, process group and terminal's foreground group are the child's pid.
    let mut spawn = sh("echo ok > /dev/tty; cat /proc/$$/stat");
    spawn.pty = Some(Winsize { rows: 24, cols: 80 });
    let (pid, mut fds) = conn.spawn(spawn);
    let out = read_all(fds.pop().unwrap());
    let mut lines = out.lines();
    assert_eq!(lines.next().map(str::trim_end), Some("ok"), "{out:?}");
    // pid (comm) state ppid pgrp session tty_nr tpgid ...
    let stat = lines.next().unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
    assert_eq!(fields[1], agent.pid().to_string(), "{stat}");
    assert_eq!([fields[2], fields[3], fields[5]], [pid.to_string().as_str(); 3], "{stat}");
    assert_eq!(conn.exit_status(pid), 0);
}

#[test]
fn stdin_pipe_and_close_stdin() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let spawn = Spawn { argv: vec!["/bin/cat".into()], cwd: "/".into(), stdin: true, ..Spawn::default() };
    let (pid, mut fds) = conn.spawn(spawn);
    let stdin = fds.pop().unwrap();
    let stdout = fds.remove(0);
    File::from(stdin).write_all(b"hello\n").unwrap();
    assert_eq!(read_line(&stdout), "hello\n");
    // berth closed its copy; cat still has no EOF until the agent closes its own.
    assert!(!wait_readable(&stdout, Duration::from_millis(200)));
    conn.done(Request::CloseStdin { pid });
    assert_eq!(read_all(stdout), "");
    assert_eq!(conn.exit_status(pid), 0);
}

#[test]
fn close_stdin_failures() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let (pid, _fds) = conn.spawn(sleep());
    assert_eq!(conn.errno(Request::CloseStdin { pid }), libc::EBADF);
    assert_eq!(conn.errno(Request::CloseStdin { pid: 999_999_999 }), libc::ESRCH);
    // It keeps running after its stdin's EOF, so the second close meets a running child.
    let mut spawn = sh("cat; exec sleep 100");
    spawn.stdin = true;
    let (cat, mut fds) = conn.spawn(spawn);
    drop(fds.pop()); // berth's copy of stdin
    conn.done(Request::CloseStdin { pid: cat });
    assert_eq!(conn.errno(Request::CloseStdin { pid: cat }), libc::EBADF);
    for pid in [pid, cat] {
        conn.done(Request::Signal { pid, signal: libc::SIGKILL, group: false });
        assert_eq!(conn.exit_status(pid), 128 + 9);
    }
}

#[test]
fn signal() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let (pid, _fds) = conn.spawn(sleep());
    assert_eq!(conn.errno(Request::Signal { pid, signal: 0, group: false }), libc::EINVAL);
    assert_eq!(conn.errno(Request::Signal { pid, signal: 999, group: false }), libc::EINVAL);
    assert_eq!(conn.errno(Request::Signal { pid: 999_999_999, signal: libc::SIGTERM, group: false }), libc::ESRCH);
    conn.done(Request::Signal { pid, signal: libc::SIGTERM, group: false });
    assert_eq!(conn.exit_status(pid), 143);
}

#[test]
fn group_signal_reaches_grandchildren() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let (pid, fds) = conn.spawn(sh("sleep 100 & echo $!; wait"));
    let sleep: u32 = read_line(&fds[0]).trim().parse().unwrap();
    conn.done(Request::Signal { pid, signal: libc::SIGTERM, group: true });
    assert_eq!(conn.exit_status(pid), 143);
    assert!(ends_within(sleep, TIMEOUT), "the background sleep survived a group SIGTERM");
}

#[test]
fn user_switch() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let mut spawn = sh("id -u; id -g; id -G");
    (spawn.uid, spawn.gid, spawn.groups) = (65534, 65534, vec![65534, 4242]);
    let (pid, mut fds) = conn.spawn(spawn);
    drop(fds.pop());
    let out = read_all(fds.pop().unwrap());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["65534", "65534"], "{out}");
    let groups: BTreeSet<&str> = lines[2].split_whitespace().collect();
    assert_eq!(groups, BTreeSet::from(["65534", "4242"]), "{out}");
    assert_eq!(conn.exit_status(pid), 0);

    // Empty groups: none inherited from the agent (root's 0).
    let mut spawn = sh("id -G");
    (spawn.uid, spawn.gid) = (65534, 65534);
    let (pid, mut fds) = conn.spawn(spawn);
    drop(fds.pop());
    assert_eq!(read_all(fds.pop().unwrap()).trim(), "65534");
    assert_eq!(conn.exit_status(pid), 0);

    // The directory is entered as the user.
    let private = agent.dir.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut spawn = sh("true");
    (spawn.uid, spawn.gid, spawn.cwd) = (65534, 65534, private.to_str().unwrap().into());
    assert_eq!(conn.spawn_failure(spawn).1, libc::EACCES);
}

#[test]
fn spawn_failures() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let fds_before = agent.open_fds();
    let missing = Spawn { argv: vec!["/nonexistent/program".into()], cwd: "/".into(), ..Spawn::default() };
    let (error, errno) = conn.spawn_failure(missing);
    assert_eq!(errno, libc::ENOENT, "{error}");
    assert!(error.contains("/nonexistent/program"), "{error}");

    let mut bad_cwd = sh("true");
    bad_cwd.cwd = "/nonexistent/dir".into();
    assert_eq!(conn.spawn_failure(bad_cwd).1, libc::ENOENT);

    let not_executable = Spawn { argv: vec!["/etc/passwd".into()], cwd: "/".into(), ..Spawn::default() };
    assert_eq!(conn.spawn_failure(not_executable).1, libc::EACCES);

    let mut pty_failure = Spawn { argv: vec!["/nonexistent".into()], cwd: "/".into(), ..Spawn::default() };
    pty_failure.pty = Some(Winsize { rows: 1, cols: 1 });
    assert_eq!(conn.spawn_failure(pty_failure).1, libc::ENOENT);

    for invalid in [
        Spawn { cwd: "/".into(), ..Spawn::default() },
        Spawn { argv: vec!["sh".into()], cwd: "/".into(), ..Spawn::default() },
        Spawn { cwd: "relative".into(), ..sh("true") },
        Spawn { env: vec!["NOEQUALS".into()], ..sh("true") },
        Spawn { argv: vec!["/bin/sh".into(), "a\0b".into()], ..sh("true") },
        Spawn { cwd: "/\0".into(), ..sh("true") },
    ] {
        assert_eq!(conn.spawn_failure(invalid.clone()).1, libc::EINVAL, "{invalid:?}");
    }
    // Nothing of the failed spawns stays open in the agent.
    assert_eq!(agent.open_fds(), fds_before);
    let (pid, _fds) = conn.spawn(sh("exit 5"));
    assert_eq!(conn.exit_status(pid), 5);
}

#[test]
fn hostile_messages() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    let fds_before = agent.open_fds();
    let bad = |conn: &mut Conn, bytes: &[u8]| match conn.recv_after(bytes) {
        Reply::Failed { errno, .. } => errno,
        other => panic!("{other:?}"),
    };
    assert_eq!(bad(&mut conn, b"\xff\x00garbage"), libc::EINVAL);
    assert_eq!(bad(&mut conn, b"{\"op\":\"spawn\"}"), libc::EINVAL);
    assert_eq!(bad(&mut conn, b"{\"op\":\"attach\",\"pid\":-1}"), libc::EINVAL);
    assert_eq!(bad(&mut conn, b"{\"op\":\"reboot\"}"), libc::EINVAL);
    assert_eq!(bad(&mut conn, &vec![b' '; MAX_MESSAGE_BYTES + 100]), libc::EMSGSIZE);
    assert_eq!(bad(&mut conn, &vec![b' '; MAX_MESSAGE_BYTES + 1]), libc::EMSGSIZE);
    // Descriptors sent to the agent are refused, and not kept.
    let (read, _write) = rustix::pipe::pipe().unwrap();
    let fds = [read.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    let hello = serde_json::to_vec(&Request::Hello { version: VERSION }).unwrap();
    rustix::net::sendmsg(&conn.fd, &[IoSlice::new(&hello)], &mut control, SendFlags::NOSIGNAL).unwrap();
    assert!(matches!(conn.recv().0, Reply::Failed { errno: libc::EINVAL, .. }));
    assert_eq!(agent.open_fds(), fds_before);
    // Still works, on the same connection.
    let (pid, _fds) = conn.spawn(sh("exit 4"));
    assert_eq!(conn.exit_status(pid), 4);
}

impl Conn {
    fn recv_after(&mut self, bytes: &[u8]) -> Reply {
        self.send_bytes(bytes);
        let (reply, fds) = self.recv();
        assert!(fds.is_empty());
        reply
    }
}

#[test]
fn new_connection_replaces_old() {
    let agent = Agent::start();
    let first = agent.connect();
    let mut second = agent.connect();
    assert!(first.recv_any().is_none(), "the first connection is closed");
    let (pid, _fds) = second.spawn(sh("exit 0"));
    assert_eq!(second.exit_status(pid), 0);
}

#[test]
fn reconnect_attach_and_pending_exits() {
    let agent = Agent::start();
    let mut first = agent.connect();
    let mut spawn = sh("cat; echo stderr >&2");
    spawn.stdin = true;
    let (cat, fds) = first.spawn(spawn);
    let (quick, quick_fds) = first.spawn(sh("sleep 0.2; exit 7"));
    drop(fds);
    drop(quick_fds);
    drop(first);
    std::thread::sleep(Duration::from_millis(600));

    // Before Hello, nothing: the exit waits for it.
    let mut second = agent.connect_raw();
    assert!(!wait_readable(&second.fd, Duration::from_millis(200)));
    let (reply, _) = second.call(&Request::Hello { version: VERSION });
    assert!(matches!(reply, Reply::Hello { .. }));
    assert_eq!(second.exit_status(quick), 7);

    let (reply, mut fds) = second.call(&Request::Attach { pid: cat });
    assert_eq!(reply, Reply::Process { pid: cat, pty: false, stdin: true });
    assert_eq!(fds.len(), 3);
    let stdin = fds.pop().unwrap();
    let stderr = fds.pop().unwrap();
    let stdout = fds.pop().unwrap();
    File::from(stdin).write_all(b"again\n").unwrap();
    assert_eq!(read_line(&stdout), "again\n");
    second.done(Request::CloseStdin { pid: cat });
    // Attach after CloseStdin: no stdin any more.
    let (reply, fds) = second.call(&Request::Attach { pid: cat });
    assert!(matches!(reply, Reply::Process { stdin: false, .. } | Reply::Failed { errno: libc::ESRCH, .. }));
    assert!(fds.len() == 2 || fds.is_empty());
    drop(fds);
    assert_eq!(read_all(stdout), "");
    assert_eq!(read_all(stderr), "stderr\n");
    assert_eq!(second.exit_status(cat), 0);
}

#[test]
fn many_pending_exits_all_arrive() {
    // More exits than fit in the socket's buffer at once: none is lost or breaks the connection.
    let agent = Agent::start();
    let pid = Pid::from_raw(agent.pid() as i32);
    // Three descriptors a child in the agent: more than a soft limit of 1024.
    let nofile = rustix::process::getrlimit(Resource::Nofile);
    rustix::process::prlimit(pid, Resource::Nofile, Rlimit { current: nofile.maximum, ..nofile }).unwrap();
    // The children wait for the gate's lock, which the test holds until it disconnected.
    let gate_path = agent.dir.join("gate");
    let gate = File::create(&gate_path).unwrap();
    rustix::fs::flock(&gate, FlockOperation::LockExclusive).unwrap();
    let mut first = agent.connect();
    let mut pids = BTreeSet::new();
    for _ in 0..600 {
        let spawn = Spawn {
            argv: vec!["/usr/bin/flock".into(), "-s".into(), gate_path.to_str().unwrap().into(), "/bin/true".into()],
            cwd: "/".into(),
            ..Spawn::default()
        };
        pids.insert(first.spawn(spawn).0);
    }
    assert!(first.exits.is_empty());
    drop(first);
    drop(gate);
    let start = Instant::now();
    while agent.children() > 0 {
        assert!(start.elapsed() < TIMEOUT, "the gated children did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = agent.connect();
    // A request queued behind the exits is still answered, after them.
    second.send(&Request::Attach { pid: 999_999_999 });
    let mut exited = BTreeSet::new();
    loop {
        match second.recv_any().expect("the agent closed the connection") {
            (Reply::Exited { pid, status: 0 }, _) => assert!(exited.insert(pid)),
            (Reply::Failed { errno: libc::ESRCH, .. }, _) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(exited, pids);
}

#[test]
fn killed_agent_takes_its_children() {
    let mut agent = Agent::start();
    let mut conn = agent.connect();
    let (pty_child, _fds) = conn.spawn(Spawn { pty: Some(Winsize { rows: 24, cols: 80 }), ..sleep() });
    let (nobody, _fds) = conn.spawn(Spawn { uid: 65534, gid: 65534, ..sleep() });
    assert!(!ends_within(nobody, Duration::from_millis(100)));
    agent.process.kill().unwrap();
    agent.process.wait().unwrap();
    assert!(ends_within(pty_child, TIMEOUT), "the PTY child outlived the agent");
    assert!(ends_within(nobody, TIMEOUT), "the child running as nobody outlived the agent");
}

#[test]
fn peers_inside_its_pid_namespace_are_refused_by_default() {
    // Without --any-peer only a peer outside the agent's PID namespace (berth, whose pid the
    // namespace sees as 0) is served; this test shares the agent's namespace.
    let agent = Agent::start();
    let socket = agent.dir.join("strict.sock");
    let mut strict = Command::new(env!("CARGO_BIN_EXE_berth-agent"))
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let fd = loop {
        let fd = unix_socket();
        match rustix::net::connect(&fd, &SocketAddrUnix::new(&socket).unwrap()) {
            Ok(()) => break fd,
            Err(error) if start.elapsed() > TIMEOUT => panic!("connect: {error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    // The agent may close it before the hello is even sent.
    let hello = serde_json::to_vec(&Request::Hello { version: VERSION }).unwrap();
    let _ = rustix::net::send(&fd, &hello, SendFlags::NOSIGNAL);
    assert!(wait_readable(&fd, TIMEOUT), "no answer in {TIMEOUT:?}");
    let mut buf = [0u8; 256];
    let received = rustix::net::recv(&fd, &mut buf, rustix::net::RecvFlags::empty());
    assert!(
        matches!(received, Ok((0, _)) | Err(rustix::io::Errno::CONNRESET)),
        "the agent closes a connection from inside its PID namespace: {received:?}"
    );
    let _ = strict.kill();
    let _ = strict.wait();
}
