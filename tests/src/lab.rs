//! The network lab of `tests/testbed/lab.sh`: a "lab" network namespace where the network tests
//! run berth (its bridge, NAT and nft rules stay in there, never in the host's namespace) and a
//! "remote" one playing the internet, joined by a veth pair.
//!
//! The remote namespace answers only the lab's subnet, so a workspace reaches it only through
//! berth's masquerade. Its web server (both addresses, port 80) serves what the constants below
//! describe. The lab has its own 127.0.0.1 with a read-only instance of the testbed registry at
//! the same port, so `Testbed::image` refs work from inside it.
//!
//! A test moves its thread into the lab with [`Lab::enter`]; `#[tokio::test]` runs on one thread,
//! so the berth it starts, its gRPC channel and the `ctr` calls all run in the lab.

use std::fs::File;
use std::marker::PhantomData;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::sched::{CloneFlags, setns};

use crate::required_env;

/// `/hello.txt` on the remote web server.
pub const HELLO_TXT: &str = "hello from the remote namespace\n";
/// `/blob-100m`: this many deterministic, incompressible bytes (for a download benchmark).
pub const BLOB_SIZE: u64 = 100 * 1024 * 1024;
/// The package of the remote apt repository (see [`Lab::apt_source`]); it installs
/// `/usr/bin/berth-test-hello`, which prints [`APT_PACKAGE_OUTPUT`].
pub const APT_PACKAGE: &str = "berth-test-hello";
pub const APT_PACKAGE_OUTPUT: &str = "hello from the remote repo\n";
/// The project of the remote pip index (see [`Lab::pip_index_url`]): a pure wheel with the
/// module `berth_test_wheel`, whose `GREETING` is [`PIP_GREETING`].
pub const PIP_PACKAGE: &str = "berth-test-wheel";
pub const PIP_MODULE: &str = "berth_test_wheel";
pub const PIP_GREETING: &str = "hello from the remote index";

/// The lab's namespaces and addresses, read from the environment `tests/testbed/up.sh` writes.
#[derive(Clone, Debug)]
pub struct Lab {
    netns: PathBuf,
    remote_netns: PathBuf,
    lab_addr: Ipv4Addr,
    remote_addr: Ipv4Addr,
    remote_addr2: Ipv4Addr,
}

fn required_addr(name: &str) -> Ipv4Addr {
    let value = required_env(name);
    value.parse().unwrap_or_else(|err| panic!("{name}={value} is not an IPv4 address: {err}"))
}

/// (device, inode) of a namespace file: equal pairs are the same namespace.
fn namespace_id(path: &Path) -> std::io::Result<(u64, u64)> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// Panics unless `path` is a bind mount of a network namespace (an unmounted file is a plain
/// file on another filesystem than nsfs).
fn assert_is_netns(name: &str, path: &Path) {
    let (nsfs, _) = namespace_id(Path::new("/proc/self/ns/net")).expect("stat /proc/self/ns/net");
    match namespace_id(path) {
        Ok((device, _)) if device == nsfs => {}
        Ok(_) => {
            panic!("{name}={} is not a network namespace: the lab is down (tests/testbed/lab.sh start)", path.display())
        }
        Err(err) => panic!("{name}={}: {err}: the lab is down (tests/testbed/lab.sh start)", path.display()),
    }
}

impl Lab {
    /// Reads the lab from the environment; panics (fails the test) when it is missing or down.
    pub fn from_env() -> Self {
        let lab = Self {
            netns: PathBuf::from(required_env("BERTH_TEST_LAB_NETNS")),
            remote_netns: PathBuf::from(required_env("BERTH_TEST_REMOTE_NETNS")),
            lab_addr: required_addr("BERTH_TEST_LAB_ADDR"),
            remote_addr: required_addr("BERTH_TEST_REMOTE_ADDR"),
            remote_addr2: required_addr("BERTH_TEST_REMOTE_ADDR2"),
        };
        assert_is_netns("BERTH_TEST_LAB_NETNS", &lab.netns);
        assert_is_netns("BERTH_TEST_REMOTE_NETNS", &lab.remote_netns);
        lab
    }

    /// The lab namespace's file (for `nsenter --net=`).
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// The remote namespace's file.
    pub fn remote_netns(&self) -> &Path {
        &self.remote_netns
    }

    /// The lab's own address on the link to the remote (its default route's source).
    pub fn lab_addr(&self) -> Ipv4Addr {
        self.lab_addr
    }

    /// The remote's address on the link (198.51.100.10).
    pub fn remote_addr(&self) -> Ipv4Addr {
        self.remote_addr
    }

    /// The remote's second address, on its loopback and in another network (203.0.113.10): a
    /// second destination for egress policies.
    pub fn remote_addr2(&self) -> Ipv4Addr {
        self.remote_addr2
    }

    /// `http://REMOTE_ADDR/PATH` on the remote web server (`path` starts with `/`).
    pub fn remote_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.remote_addr)
    }

    /// The sources.list line of the remote apt repository.
    pub fn apt_source(&self) -> String {
        format!("deb [trusted=yes] http://{}/apt ./", self.remote_addr)
    }

    /// The `--index-url` of the remote pip index (plain HTTP: pip also needs
    /// `--trusted-host` [`remote_addr`](Self::remote_addr)).
    pub fn pip_index_url(&self) -> String {
        format!("http://{}/simple/", self.remote_addr)
    }

    /// Whether the calling thread is in the lab namespace.
    pub fn current_thread_is_inside(&self) -> bool {
        let current = namespace_id(Path::new("/proc/thread-self/ns/net")).expect("stat /proc/thread-self/ns/net");
        current == namespace_id(&self.netns).expect("stat the lab namespace")
    }

    /// Moves the calling thread into the lab namespace until the guard drops (it must drop on
    /// this thread: it is neither `Send` nor `Sync`). Processes the thread spawns and sockets it
    /// opens meanwhile belong to the lab; sockets keep their namespace after the guard is gone.
    pub fn enter(&self) -> LabGuard {
        let previous = File::open("/proc/thread-self/ns/net").expect("open /proc/thread-self/ns/net");
        let lab = File::open(&self.netns).unwrap_or_else(|err| panic!("open {}: {err}", self.netns.display()));
        setns(&lab, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|err| panic!("setns into {}: {err} (needs root)", self.netns.display()));
        LabGuard { previous, _same_thread: PhantomData }
    }

    /// `program` run in the lab namespace (through `nsenter`), to add arguments to and spawn.
    pub fn command(&self, program: &str) -> Command {
        nsenter(&self.netns, program)
    }

    /// `program` run in the remote namespace.
    pub fn remote_command(&self, program: &str) -> Command {
        nsenter(&self.remote_netns, program)
    }

    /// Runs a command in the lab namespace; asserts it succeeded and returns its stdout.
    pub fn run(&self, command: &[&str]) -> String {
        checked_stdout("lab", command, self.run_output(command))
    }

    /// Runs a command in the lab namespace, whatever its exit status.
    pub fn run_output(&self, command: &[&str]) -> Output {
        output_of(self.command(command[0]), command)
    }

    /// Runs a command in the remote namespace; asserts it succeeded and returns its stdout.
    pub fn run_in_remote(&self, command: &[&str]) -> String {
        checked_stdout("remote", command, self.run_in_remote_output(command))
    }

    /// Runs a command in the remote namespace, whatever its exit status.
    pub fn run_in_remote_output(&self, command: &[&str]) -> Output {
        output_of(self.remote_command(command[0]), command)
    }
}

fn nsenter(netns: &Path, program: &str) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net={}", netns.display())).arg("--").arg(program);
    command
}

fn output_of(mut command: Command, argv: &[&str]) -> Output {
    command.args(&argv[1..]).stdin(Stdio::null()).output().unwrap_or_else(|err| panic!("run nsenter {argv:?}: {err}"))
}

fn checked_stdout(namespace: &str, command: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "{command:?} in the {namespace} namespace failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The calling thread's stay in the lab namespace (see [`Lab::enter`]): dropping it moves the
/// thread back to the namespace it came from.
#[must_use = "the thread leaves the lab when the guard drops"]
pub struct LabGuard {
    previous: File,
    /// setns acts on one thread: the guard must drop on the thread that entered.
    _same_thread: PhantomData<*const ()>,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        // Staying in the lab would run the rest of this thread's work there: panic instead (an
        // abort when already unwinding).
        setns(&self.previous, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|err| panic!("setns back out of the lab: {err}"));
    }
}
