//! The protocol between berth and `berth-agent`, the process agent it runs inside each
//! workspace. berth connects to the agent's Unix socket (`SOCK_SEQPACKET`, so each message
//! arrives whole, with its file descriptors); every message is one JSON object.
//!
//! berth sends [`Request`]s and the agent answers each, in order, with one [`Reply`]; besides
//! the replies the agent sends [`Reply::Exited`] whenever a child ends. The agent is the parent
//! of every process it spawns: it reaps them (exit statuses come from `waitpid`) and it keeps its
//! ends of their pipes or PTY, so a berth that restarts reconnects and gets them again with
//! [`Request::Attach`]. Exits that happen while no berth is connected are kept and sent after
//! the next `Hello`.

use serde::{Deserialize, Serialize};

/// The protocol version; an agent answering another one is not used.
pub const VERSION: u32 = 1;
/// The largest message either side sends; berth runs larger requests (huge environments) the
/// slow way, through containerd.
pub const MAX_MESSAGE_BYTES: usize = 128 << 10;
/// The most file descriptors one message carries.
pub const MAX_FDS: usize = 3;
/// The socket's file name in the directory berth shares with the workspace.
pub const SOCKET_NAME: &str = "agent.sock";
/// Exits kept for a berth that is not connected; older ones are dropped first.
pub const MAX_PENDING_EXITS: usize = 1024;

/// berth to agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The first request of every connection. A new connection replaces the previous one.
    Hello { version: u32 },
    /// Starts a process; answered with [`Reply::Process`] and its descriptors.
    Spawn(Spawn),
    /// The descriptors of a running child again (after a berth restart); [`Reply::Process`].
    Attach { pid: u32 },
    /// Closes the agent's copy of the child's stdin (berth closes its own), so it reads EOF.
    CloseStdin { pid: u32 },
    /// Signals a running child; with `group`, its whole process group (it is a session
    /// leader, so its pgid is its pid) and then the child itself.
    Signal { pid: u32, signal: i32, group: bool },
}

/// A process to start. berth has resolved everything against the workspace already: the
/// executable's path, the user's ids and groups, the whole environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawn {
    /// `argv[0]` is the absolute path executed.
    pub argv: Vec<String>,
    /// The whole environment, `KEY=value`.
    pub env: Vec<String>,
    /// Absolute; entered after the user is switched, so it needs the user's permission.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (set even when empty, so none are inherited from the agent).
    pub groups: Vec<u32>,
    /// A pseudo-terminal of this size for stdin, stdout and stderr; otherwise pipes.
    pub pty: Option<Winsize>,
    /// Without a PTY: whether stdin is a pipe berth writes to (else /dev/null).
    pub stdin: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Winsize {
    pub rows: u16,
    pub cols: u16,
}

/// Agent to berth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Answers `Hello`. `pid` is the agent's own, inside the workspace.
    Hello { version: u32, pid: u32 },
    /// Answers `Spawn` and `Attach`. Descriptors, in order: with `pty`, the PTY's master alone;
    /// otherwise stdout's and stderr's read ends, then stdin's write end when `stdin` (it is
    /// open: not closed by CloseStdin).
    Process { pid: u32, pty: bool, stdin: bool },
    /// Answers `CloseStdin` and `Signal`.
    Done,
    /// Answers any request that failed. `errno` is the OS error when there is one (ENOENT or
    /// EACCES from the exec, ESRCH for a pid that is not a running child), else 0.
    Failed { error: String, errno: i32 },
    /// Not an answer: a child ended. `status` is its exit code, or 128+n for signal n.
    Exited { pid: u32, status: u32 },
}

impl Reply {
    pub fn failed(error: impl Into<String>, errno: i32) -> Self {
        Reply::Failed { error: error.into(), errno }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json() {
        let request = Request::Signal { pid: 7, signal: 15, group: true };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"op":"signal","pid":7,"signal":15,"group":true}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let reply: Reply = serde_json::from_str(r#"{"kind":"exited","pid":9,"status":137}"#).unwrap();
        assert_eq!(reply, Reply::Exited { pid: 9, status: 137 });
    }
}
