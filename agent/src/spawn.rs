//! Starting a child: its pipes or PTY, its session, user and directory, and the agent's side
//! of it that the child table keeps.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use berth_agent::Spawn;
use rustix::fs::{Mode, OFlags};
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};
use rustix::pty::OpenptFlags;

/// The size of a child's stdout pipe, so a burst of output does not stall it while berth reads.
const STDOUT_PIPE_BYTES: usize = 1 << 20;

/// The agent's side of a running child: its pidfd and the agent's copies of its descriptors,
/// which keep them open for an [`berth_agent::Request::Attach`] after a berth restart.
pub struct Child {
    pub pidfd: OwnedFd,
    pub io: Io,
}

pub enum Io {
    Pty { master: OwnedFd },
    Pipes { stdout: OwnedFd, stderr: OwnedFd, stdin: Option<OwnedFd> },
}

impl Child {
    pub fn pty(&self) -> bool {
        matches!(self.io, Io::Pty { .. })
    }

    pub fn has_stdin(&self) -> bool {
        matches!(self.io, Io::Pipes { stdin: Some(_), .. })
    }

    /// Drops the agent's copy of stdin; false when there is none (a PTY, or closed already).
    pub fn close_stdin(&mut self) -> bool {
        match &mut self.io {
            Io::Pipes { stdin, .. } => stdin.take().is_some(),
            Io::Pty { .. } => false,
        }
    }

    /// The descriptors of a `Reply::Process`, in protocol order.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match &self.io {
            Io::Pty { master } => vec![master.as_fd()],
            Io::Pipes { stdout, stderr, stdin } => {
                let mut fds = vec![stdout.as_fd(), stderr.as_fd()];
                fds.extend(stdin.as_ref().map(|fd| fd.as_fd()));
                fds
            }
        }
    }
}

fn invalid(error: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error)
}

/// Starts `request`'s process; returns its pid and the agent's side of it.
pub fn spawn(request: &Spawn) -> io::Result<(u32, Child)> {
    let Some((program, args)) = request.argv.split_first() else {
        return Err(invalid("argv is empty"));
    };
    if !program.starts_with('/') {
        return Err(invalid("argv[0] is not an absolute path"));
    }
    if !request.cwd.starts_with('/') {
        return Err(invalid("cwd is not an absolute path"));
    }
    let mut command = Command::new(program);
    command.arg0(program).args(args).env_clear();
    for entry in &request.env {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(invalid("an environment entry has no '='"));
        };
        command.env(key, value);
    }

    // The child's ends go into `command` and are closed with it when this function returns;
    // every descriptor the agent opens is close-on-exec, so the child gets only these.
    let io = match request.pty {
        Some(size) => {
            let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
            rustix::pty::grantpt(&master)?;
            rustix::pty::unlockpt(&master)?;
            let name = rustix::pty::ptsname(&master, Vec::new())?;
            let slave =
                rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())?;
            let winsize = rustix::termios::Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
            rustix::termios::tcsetwinsize(&slave, winsize)?;
            command.stdin(slave.try_clone()?).stdout(slave.try_clone()?).stderr(slave);
            Io::Pty { master }
        }
        None => {
            let (stdout, stdout_child) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
            let (stderr, stderr_child) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
            let stdin = if request.stdin {
                let (stdin_child, stdin) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
                command.stdin(stdin_child);
                Some(stdin)
            } else {
                command.stdin(Stdio::null());
                None
            };
            command.stdout(stdout_child).stderr(stderr_child);
            Io::Pipes { stdout, stderr, stdin }
        }
    };
    set_up_child(&mut command, request)?;
    let child = command.spawn()?;
    drop(command);
    let pid = child.id();
    // Not a reaper of `child`: dropping it neither waits nor kills, the event loop waits.
    drop(child);
    let raw = Pid::from_raw(pid as i32).ok_or_else(|| invalid("spawn returned pid 0"))?;
    let pidfd = match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(pidfd) => pidfd,
        Err(error) => {
            // Untrackable: do not leave it running unseen. It did run, so the error carries no
            // errno: berth must not take it for a shortage and start the command again.
            let _ = rustix::process::kill_process(raw, Signal::KILL);
            let _ = rustix::process::waitpid(Some(raw), WaitOptions::empty());
            return Err(io::Error::other(format!("started, then killed: it cannot be tracked ({error})")));
        }
    };
    if let Io::Pipes { stdout, .. } = &io {
        let _ = rustix::pipe::fcntl_setpipe_size(stdout, STDOUT_PIPE_BYTES);
    }
    Ok((pid, Child { pidfd, io }))
}

/// Installs the code the child runs between fork and exec (after std has put its stdio on
/// 0, 1 and 2): a new session (with the PTY as its controlling terminal), the user, the
/// directory, and death with the agent. Everything it needs is computed here, before the fork.
fn set_up_child(command: &mut Command, request: &Spawn) -> io::Result<()> {
    let pty = request.pty.is_some();
    let groups: Vec<libc::gid_t> = request.groups.clone();
    let (uid, gid) = (request.uid, request.gid);
    let cwd = CString::new(request.cwd.as_str()).map_err(|_| invalid("cwd contains a NUL byte"))?;
    let agent = std::process::id() as libc::pid_t;
    // SAFETY: pre_exec runs in the forked child of this single-threaded process; the closure
    // only makes raw, async-signal-safe libc calls on memory it owns (no allocation, no locks).
    // `io::Error::last_os_error` only reads errno.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            let check = |result: libc::c_int| if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
            check(libc::setsid())?;
            if pty {
                check(libc::ioctl(0, libc::TIOCSCTTY, 0 as libc::c_ulong))?;
            }
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            check(libc::chdir(cwd.as_ptr()))?;
            // After setuid, which clears it. An agent that is gone already would not kill us.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong))?;
            if libc::getppid() != agent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    Ok(())
}
