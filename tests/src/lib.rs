//! Harness for berth's end-to-end tests: the testbed started by `tests/testbed/up.sh` (a private
//! containerd and a local registry) and berth servers started as real processes against it.
//!
//! Under `make test` every variable below is set; a test that cannot reach the testbed fails
//! with a message saying how to start it. It never skips.

pub mod auth;
pub mod events;
pub mod files;
pub mod import;
pub mod lab;
pub mod snapshots;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

/// Facts about the running testbed, read from the environment `tests/testbed/up.sh` writes.
#[derive(Clone, Debug)]
pub struct Testbed {
    /// The berth binary under test.
    pub berth_bin: PathBuf,
    /// The testbed directory (`.testbed`).
    pub dir: PathBuf,
    /// The private containerd's socket.
    pub containerd_socket: PathBuf,
    /// The containerd namespace prefix of this run.
    pub namespace: String,
    /// `127.0.0.1:PORT` of the local registry.
    pub registry: String,
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: end-to-end tests need the testbed; run them with `make test`, or \
             start it with tests/testbed/up.sh, `source .testbed/env` and set BERTH_BIN"
        )
    })
}

impl Testbed {
    /// Reads the testbed from the environment; panics (fails the test) when it is not there.
    pub fn from_env() -> Self {
        let testbed = Self {
            berth_bin: PathBuf::from(required_env("BERTH_BIN")),
            dir: PathBuf::from(required_env("TESTBED_DIR")),
            containerd_socket: PathBuf::from(required_env("BERTH_TEST_CONTAINERD_SOCKET")),
            namespace: required_env("BERTH_TEST_NAMESPACE"),
            registry: required_env("BERTH_TEST_REGISTRY"),
        };
        assert!(testbed.berth_bin.exists(), "berth binary {} missing: run cargo build", testbed.berth_bin.display());
        assert!(
            testbed.containerd_socket.exists(),
            "containerd socket {} missing: the testbed is down (tests/testbed/up.sh)",
            testbed.containerd_socket.display()
        );
        testbed
    }

    /// The repository root.
    pub fn repo_root(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Runs `tests/testbed/containerd.sh <action>` and asserts it succeeded.
    pub fn containerd_ctl(&self, action: &str) {
        let script = self.repo_root().join("tests/testbed/containerd.sh");
        let status = Command::new(&script).arg(action).status().expect("run containerd.sh");
        assert!(status.success(), "{} {action} failed: {status}", script.display());
    }

    /// Runs `ctr` against the testbed's containerd in `namespace`; returns stdout, panics on failure.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> String {
        let output = self.ctr_output(namespace, args);
        assert!(output.status.success(), "ctr {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `ctr` and returns its raw output.
    pub fn ctr_output(&self, namespace: &str, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd_socket)
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs a command inside a workspace with `ctr task exec`, asserts it succeeded, and returns
    /// its stdout.
    pub fn exec(&self, namespace: &str, workspace_id: &str, command: &[&str]) -> String {
        let output = self.exec_output(namespace, workspace_id, None, command);
        assert!(output.success, "{command:?} failed in {workspace_id}: {}{}", output.stdout, output.stderr);
        output.stdout
    }

    /// Runs a command inside a workspace with `ctr task exec` (as `user` when given, uid[:gid]),
    /// whatever its exit status.
    ///
    /// containerd 1.6's `ctr task exec` sometimes loses a process's whole output (its deferred
    /// delete of the exec cancels the output copy still in flight, fixed upstream in
    /// containerd#13931; seen about once in 40 execs here). The command runs under `sh`, which
    /// prints a marker with the exit status after it; an output without the marker is retried,
    /// so commands passed here must be safe to run twice (reads, idempotent writes).
    pub fn exec_output(&self, namespace: &str, workspace_id: &str, user: Option<&str>, command: &[&str]) -> ExecOutput {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        const WRAPPER: &str = "\"$@\"; rc=$?; printf '\\n%s%s\\n' __berth_exec_rc= \"$rc\"; exit $rc";
        const MARKER: &str = "\n__berth_exec_rc=";
        for _ in 0..3 {
            let exec_id = format!("e2e-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let mut args = vec!["task", "exec"];
            if let Some(user) = user {
                args.extend(["--user", user]);
            }
            args.extend(["--exec-id", &exec_id, workspace_id, "sh", "-c", WRAPPER, "sh"]);
            args.extend_from_slice(command);
            let output = self.ctr_output(namespace, &args);
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let Some(at) = stdout.rfind(MARKER) else {
                continue;
            };
            let status = stdout[at + MARKER.len()..].trim_end();
            if status.parse::<i32>().is_err() {
                continue;
            }
            return ExecOutput {
                success: output.status.success() && status == "0",
                stdout: stdout[..at].to_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            };
        }
        panic!("ctr task exec {command:?} in {workspace_id} lost its output three times");
    }

    /// An image reference from the environment `up.sh` writes (e.g. `BUSYBOX`).
    pub fn image(&self, name: &str) -> String {
        required_env(&format!("BERTH_TEST_IMAGE_{name}"))
    }

    /// A namespace unique to this test process and call.
    pub fn unique_namespace(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!("{}-{}-{}", self.namespace, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What a command run with [`Testbed::exec_output`] produced.
#[derive(Clone, Debug)]
pub struct ExecOutput {
    /// Whether it exited with status 0.
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Picks a free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().expect("local addr").port()
}

/// A `berth serve` process; killed (SIGKILL) on drop if still running.
pub struct BerthServer {
    child: Option<Child>,
    /// The address it serves on.
    pub addr: SocketAddr,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its log file (stderr).
    pub log: PathBuf,
    /// Its containerd namespace.
    pub namespace: String,
    /// Started with [`ServerOptions::network`] (a restart keeps it).
    network: bool,
}

/// Options of a test server.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// The containerd socket; the testbed's when `None`.
    pub containerd_socket: Option<PathBuf>,
    /// Extra arguments after `serve`.
    pub extra_args: Vec<String>,
    /// Reuse this state directory and namespace (a restart); fresh ones when `None`.
    pub reuse: Option<(PathBuf, String)>,
    /// Extra environment variables (e.g. `BERTH_FAILPOINT`).
    pub env: Vec<(String, String)>,
    /// Workspace networking. false (the default): `--network none`, because berth then runs in
    /// the host's network namespace, where no test may create a bridge or NAT. true: the
    /// calling thread must be in the lab ([`lab::Lab::enter`]; checked), and berth gets its
    /// network settings from `extra_args` only (`--network` is left at its default, bridge).
    pub network: bool,
    /// Without berth-agent: berth runs from a hard link of its binary in a directory that has
    /// no berth-agent, so every process is a containerd exec (as in workspaces without an agent).
    pub without_agent: bool,
}

impl BerthServer {
    /// Starts berth against the testbed with a fresh state dir and namespace, and waits until it
    /// accepts connections.
    pub fn start(testbed: &Testbed) -> Self {
        Self::start_with(testbed, ServerOptions::default())
    }

    /// Starts berth with options.
    pub fn start_with(testbed: &Testbed, options: ServerOptions) -> Self {
        let (state_dir, namespace) = options.reuse.clone().unwrap_or_else(|| {
            let namespace = testbed.unique_namespace();
            (testbed.dir.join("e2e").join(&namespace), namespace)
        });
        std::fs::create_dir_all(&state_dir).expect("create state dir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = state_dir.join(format!("berth-{}.log", addr.port()));
        let child = spawn_berth(testbed, &state_dir, addr, &namespace, &log, &options);
        let mut server = Self { child: Some(child), addr, state_dir, log, namespace, network: options.network };
        server.wait_until_listening(Duration::from_secs(30));
        server
    }

    /// Stops this server (SIGTERM, or SIGKILL when `kill`) and starts a new one on the same
    /// state directory and namespace, like an operator restarting berth.
    pub fn restart(self, testbed: &Testbed, kill: bool) -> Self {
        self.restart_with_args(testbed, kill, Vec::new())
    }

    /// Like [`restart`](Self::restart), with `extra_args` after `serve` (such as the settings
    /// the first server was started with).
    pub fn restart_with_args(mut self, testbed: &Testbed, kill: bool, extra_args: Vec<String>) -> Self {
        self.signal(if kill { "KILL" } else { "TERM" });
        let status = self.wait_exit(Duration::from_secs(20));
        assert!(kill || status.success(), "berth exited with {status} on SIGTERM; log:\n{}", self.log_text());
        let options = ServerOptions {
            reuse: Some((self.state_dir.clone(), self.namespace.clone())),
            extra_args,
            network: self.network,
            ..Default::default()
        };
        Self::start_with(testbed, options)
    }

    fn wait_until_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                panic!("berth exited early with {status}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("berth did not listen on {} within {timeout:?}; log:\n{}", self.addr, self.log_text());
    }

    /// Waits (up to `timeout`) until the server's health reports SERVING: containerd answers and
    /// the boot reconcile has finished.
    pub async fn wait_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel().await);
        loop {
            let serving = health
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .is_ok_and(|response| {
                    response.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                });
            if serving {
                return;
            }
            assert!(Instant::now() < deadline, "berth was not SERVING within {timeout:?}; log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).expect("uri").connect().await.expect("connect to berth")
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of the server process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "berth did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BerthServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A hard link to berth in a directory of its own (berth looks for berth-agent next to the
/// path it was started as).
fn binary_without_agent(testbed: &Testbed, state_dir: &Path) -> PathBuf {
    let dir = state_dir.join("no-agent");
    std::fs::create_dir_all(&dir).expect("create the no-agent dir");
    let link = dir.join("berth");
    let _ = std::fs::remove_file(&link);
    if std::fs::hard_link(&testbed.berth_bin, &link).is_err() {
        std::fs::copy(&testbed.berth_bin, &link).expect("copy berth");
    }
    assert!(!dir.join("berth-agent").exists());
    link
}

fn spawn_berth(
    testbed: &Testbed,
    state_dir: &Path,
    addr: SocketAddr,
    namespace: &str,
    log: &Path,
    options: &ServerOptions,
) -> Child {
    let socket = options.containerd_socket.clone().unwrap_or_else(|| testbed.containerd_socket.clone());
    let network_args: &[&str] = if options.network {
        let lab = lab::Lab::from_env();
        assert!(
            lab.current_thread_is_inside(),
            "ServerOptions::network needs the calling thread in the lab namespace (Lab::enter): berth must \
             never set up workspace networking in the host's namespace"
        );
        &[]
    } else {
        &["--network", "none"]
    };
    let log_file = std::fs::File::create(log).expect("create log");
    let binary =
        if options.without_agent { binary_without_agent(testbed, state_dir) } else { testbed.berth_bin.clone() };
    Command::new(binary)
        .arg("serve")
        .args(network_args)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--containerd-socket")
        .arg(socket)
        .arg("--namespace")
        .arg(namespace)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--insecure-registry")
        .arg(&testbed.registry)
        .args(&options.extra_args)
        .envs(options.env.iter().map(|(key, value)| (key, value)))
        .env_remove("BERTH_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn berth")
}

/// Runs `berth serve` to completion (for start-up failures) and returns status, stderr and time.
/// `serve` without a `--network` of its own gets `--network none`, as in
/// [`ServerOptions::network`]: one that got far enough must not set up networking on the host.
pub fn run_berth_to_exit(testbed: &Testbed, args: &[&str], timeout: Duration) -> (ExitStatus, String, Duration) {
    let mut args = args.to_vec();
    if args.first() == Some(&"serve") && !args.iter().any(|arg| *arg == "--network" || arg.starts_with("--network=")) {
        args.splice(1..1, ["--network", "none"]);
    }
    let started = Instant::now();
    let mut child = Command::new(&testbed.berth_bin)
        .args(&args)
        .env_remove("BERTH_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let output = child.wait_with_output().expect("output");
            return (status, String::from_utf8_lossy(&output.stderr).into_owned(), started.elapsed());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("berth {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `google.rpc.ErrorInfo` reason of a failed call, if it carries one.
pub fn error_reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt as _;
    status.get_details_error_info().map(|info| {
        assert_eq!(info.domain, "berth.dev", "ErrorInfo domain");
        info.reason
    })
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it succeeded.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A container's cgroup limits as the kernel holds them, read from cgroup v2 (the unified
/// hierarchy) or v1 (one hierarchy per controller), whichever the host mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `max` when unlimited (v1 reports a huge number instead).
    pub memory_bytes: String,
    /// `max` when unlimited (v1: `-1`).
    pub cpu_quota_micros: String,
    pub cpu_period_micros: String,
    pub pids: String,
}

impl CgroupLimits {
    /// Reads the limits of the cgroup at `path` (relative to the hierarchy root, e.g.
    /// `NAMESPACE/ID` for a berth workspace).
    pub fn read(path: &str) -> Self {
        let read = |file: String| {
            std::fs::read_to_string(&file).unwrap_or_else(|err| panic!("{file}: {err}")).trim().to_owned()
        };
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let cpu_max = read(format!("/sys/fs/cgroup/{path}/cpu.max"));
            let (quota, period) = cpu_max.split_once(' ').expect("cpu.max is QUOTA PERIOD");
            return Self {
                memory_bytes: read(format!("/sys/fs/cgroup/{path}/memory.max")),
                cpu_quota_micros: quota.to_owned(),
                cpu_period_micros: period.to_owned(),
                pids: read(format!("/sys/fs/cgroup/{path}/pids.max")),
            };
        }
        Self {
            memory_bytes: read(format!("/sys/fs/cgroup/memory/{path}/memory.limit_in_bytes")),
            cpu_quota_micros: read(format!("/sys/fs/cgroup/cpu/{path}/cpu.cfs_quota_us")),
            cpu_period_micros: read(format!("/sys/fs/cgroup/cpu/{path}/cpu.cfs_period_us")),
            pids: read(format!("/sys/fs/cgroup/pids/{path}/pids.max")),
        }
    }
}
