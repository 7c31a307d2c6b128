//! The confinement of a workspace, seen from inside it: what the default seccomp profile blocks,
//! the host files it cannot see, the capabilities it lacks, and that ordinary work (a shell,
//! dpkg, perl, threads, fork, ping) still runs under all of it.

use berth_api::v1::create_workspace_response::Event;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{CreateWorkspaceRequest, CreateWorkspaceResponse};
use berth_e2e::{BerthServer, Testbed};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

type Client = WorkspaceServiceClient<Channel>;

/// Creates a workspace and waits for its Ready event.
async fn create_ready(client: &mut Client, id: &str, image: &str) {
    let request = CreateWorkspaceRequest { workspace_id: id.to_owned(), image: image.to_owned(), ..Default::default() };
    let mut stream = client.create_workspace(request).await.expect("create starts").into_inner();
    let mut last = None;
    while let Some(item) = stream.next().await {
        let CreateWorkspaceResponse { event } = item.unwrap_or_else(|status| panic!("create {id}: {status:?}"));
        last = event;
    }
    assert!(matches!(last, Some(Event::Ready(_))), "create {id} did not end with ready: {last:?}");
}

/// What a command run inside a workspace printed, and whether it succeeded.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `sh -c SCRIPT` inside the workspace with `ctr task exec`, whatever its exit status.
fn run(testbed: &Testbed, server: &BerthServer, id: &str, script: &str) -> Run {
    run_as(testbed, server, id, "0:0", script)
}

/// Runs `sh -c SCRIPT` as `user` inside the workspace, whatever its exit status. `user` is
/// numeric `UID:GID`: given a name or a lone uid, ctr mounts the running workspace's snapshot on
/// the host to read /etc/passwd, and that second overlay mount breaks copy-up in the workspace.
fn run_as(testbed: &Testbed, server: &BerthServer, id: &str, user: &str, script: &str) -> Run {
    let output = testbed.exec_output(&server.namespace, id, Some(user), &["sh", "-c", script]);
    Run { success: output.success, stdout: output.stdout, stderr: output.stderr }
}

/// Asserts that `script` fails inside the workspace because the kernel said EPERM.
fn assert_not_permitted(testbed: &Testbed, server: &BerthServer, id: &str, script: &str) {
    let result = run(testbed, server, id, script);
    assert!(!result.success, "`{script}` succeeded inside {id}: {}{}", result.stdout, result.stderr);
    let said = format!("{}{}", result.stdout, result.stderr).to_lowercase();
    assert!(
        said.contains("operation not permitted") || said.contains("permission denied"),
        "`{script}` failed for another reason: {said}"
    );
}

/// Runs `script` inside the workspace, asserts it succeeded, and returns its stdout.
fn run_ok(testbed: &Testbed, server: &BerthServer, id: &str, script: &str) -> String {
    let result = run(testbed, server, id, script);
    assert!(result.success, "`{script}` failed inside {id}: {}{}", result.stdout, result.stderr);
    result.stdout
}

/// Syscall numbers for perl's `syscall` (the Debian image has perl-base, no keyutils or bpftool).
struct Syscalls {
    keyctl: u32,
    add_key: u32,
    bpf: u32,
    unshare: u32,
    clone3: u32,
}

fn syscalls() -> Syscalls {
    match std::env::consts::ARCH {
        "x86_64" => Syscalls { keyctl: 250, add_key: 248, bpf: 321, unshare: 272, clone3: 435 },
        "aarch64" | "riscv64" | "loongarch64" => {
            Syscalls { keyctl: 219, add_key: 217, bpf: 280, unshare: 97, clone3: 435 }
        }
        other => panic!("add this architecture's syscall numbers to tests/tests/sandbox.rs: {other}"),
    }
}

/// The errno a raw syscall returns inside the workspace ("ok" when it succeeds).
fn errno_of(testbed: &Testbed, server: &BerthServer, id: &str, call: &str) -> String {
    let script = format!("perl -e 'my $r = syscall({call}); print $r == -1 ? $!+0 : \"ok\"'");
    run_ok(testbed, server, id, &script).trim().to_owned()
}

/// Sends one ICMP echo to 127.0.0.1 over an unprivileged ICMP socket and prints the reply.
const ICMP_ECHO: &str = r#"perl -e '
    socket(my $s, 2, 2, 1) or die "socket: $!";
    my $request = pack("C C n n n a*", 8, 0, 0, 0, 1, "berth");
    send($s, $request, 0, pack("S n C4 x8", 2, 0, 127, 0, 0, 1)) or die "send: $!";
    my $ready = ""; vec($ready, fileno($s), 1) = 1;
    select($ready, undef, undef, 5) or die "no reply";
    recv($s, my $reply, 1500, 0);
    my ($type, $code, $sum, $id, $seq, $data) = unpack("C C n n n a*", $reply);
    print $type == 0 ? "reply $seq $data
" : "type $type
"'"#;

#[tokio::test]
async fn busybox_workspace_cannot_make_namespaces_or_mounts_and_sees_no_host_counters() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    create_ready(&mut client, "confined", &testbed.image("BUSYBOX")).await;

    // What containerd stores for the container: the profile and the masks are in its spec.
    let info: serde_json::Value =
        serde_json::from_str(&testbed.ctr(&server.namespace, &["containers", "info", "confined"])).unwrap();
    let spec = &info["Spec"];
    assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO", "{spec}");
    let masked = spec["linux"]["maskedPaths"].as_array().unwrap();
    assert!(masked.contains(&serde_json::json!("/sys/devices/virtual/powercap")), "{masked:?}");
    assert!(
        !spec["process"]["capabilities"]["bounding"].as_array().unwrap().contains(&serde_json::json!("CAP_NET_RAW"))
    );

    // A user namespace needs no capability, only the seccomp profile stops it; and with it the
    // mount a namespace's root could do.
    assert_not_permitted(&testbed, &server, "confined", "unshare -U true");
    assert_not_permitted(&testbed, &server, "confined", "unshare -r -m sh -c 'mount -t tmpfs none /mnt'");
    assert_not_permitted(&testbed, &server, "confined", "mount -t tmpfs none /mnt");

    // Masked: /proc/interrupts reads empty inside (it is not empty on the host); powercap shows
    // nothing whether or not the host has it.
    assert!(!std::fs::read_to_string("/proc/interrupts").unwrap().is_empty());
    assert_eq!(run_ok(&testbed, &server, "confined", "cat /proc/interrupts"), "");
    assert_eq!(run_ok(&testbed, &server, "confined", "ls -A /sys/devices/virtual/powercap 2>/dev/null; true"), "");
    assert_eq!(run_ok(&testbed, &server, "confined", "cat /proc/kcore | wc -c").trim(), "0");

    // Root has the default set minus CAP_NET_RAW; a non-root process has none at all (no
    // ambient capabilities), as under containerd's default spec.
    let caps = |user: &str| {
        let result = run_as(&testbed, &server, "confined", user, "grep -E '^Cap(Eff|Amb)' /proc/self/status");
        assert!(result.success, "{}", result.stderr);
        result.stdout.split_whitespace().filter(|word| !word.ends_with(':')).map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(caps("0:0"), ["00000000a80405fb", "0000000000000000"], "root: CapEff, CapAmb");
    assert_eq!(caps("1000:1000"), ["0000000000000000", "0000000000000000"], "uid 1000: CapEff, CapAmb");

    // Ordinary busybox work: files, background jobs, pipes, chroot (CAP_SYS_CHROOT is kept).
    let out = run_ok(
        &testbed,
        &server,
        "confined",
        "echo hello > /data/f && cat /data/f && (sleep 0.1 & wait) && seq 3 | wc -l && chroot / true && echo done",
    );
    assert_eq!(out, "hello\n3\ndone\n");
}

#[tokio::test]
async fn debian_workload_runs_and_keyrings_bpf_namespaces_and_raw_sockets_are_refused() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    create_ready(&mut client, "deb-confined", &testbed.image("DEBIAN")).await;
    let id = "deb-confined";
    let nr = syscalls();

    // The calls Docker's profile refuses, straight from perl: EPERM (1), and clone3 ENOSYS (38)
    // so that libc falls back to clone, which the profile allows without namespace flags.
    assert_eq!(errno_of(&testbed, &server, id, &format!("{}, 0, -3, 0", nr.keyctl)), "1", "keyctl");
    assert_eq!(errno_of(&testbed, &server, id, &format!("{}, 0, 0, 0, 0, -3", nr.add_key)), "1", "add_key");
    assert_eq!(errno_of(&testbed, &server, id, &format!("{}, 0, 0, 0", nr.bpf)), "1", "bpf");
    assert_eq!(errno_of(&testbed, &server, id, &format!("{}, 0x10000000", nr.unshare)), "1", "unshare(CLONE_NEWUSER)");
    assert_eq!(errno_of(&testbed, &server, id, &format!("{}, 0, 0", nr.clone3)), "38", "clone3");
    assert_not_permitted(&testbed, &server, id, "unshare --user --map-root-user true");
    // No CAP_NET_RAW: a raw socket is refused (socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)), while an
    // ICMP datagram socket (what iputils ping falls back to) echoes.
    let raw = run_ok(&testbed, &server, id, "perl -e 'socket(my $s, 2, 3, 1) ? print \"raw\" : print $!+0'");
    assert_eq!(raw, "1");
    let echo = run_ok(&testbed, &server, id, ICMP_ECHO);
    assert_eq!(echo, "reply 1 berth\n");

    // A normal workload: apt and dpkg, bash, perl, files, background jobs, threads, a package
    // built and installed locally (dpkg-deb compresses with threads, dpkg chowns and renames).
    let apt = run_ok(&testbed, &server, id, "apt-get --version | head -1");
    assert!(apt.starts_with("apt "), "{apt}");
    let installed: usize = run_ok(&testbed, &server, id, "dpkg -l | grep -c '^ii'").trim().parse().unwrap();
    assert!(installed > 50, "dpkg lists {installed} packages");
    assert_eq!(run_ok(&testbed, &server, id, "bash -c 'echo $((6 * 7))'"), "42\n");
    assert_eq!(run_ok(&testbed, &server, id, "perl -e 'print 6 * 7'"), "42");
    assert_eq!(run_ok(&testbed, &server, id, "sh -c 'sleep 0.1 & wait' && echo waited"), "waited\n");
    let forks = run_ok(
        &testbed,
        &server,
        id,
        "for i in 1 2 3 4 5 6 7 8; do (echo $i > /tmp/fork.$i) & done; wait; cat /tmp/fork.* | wc -l",
    );
    assert_eq!(forks.trim(), "8");
    let sorted = run_ok(&testbed, &server, id, "seq 1 300000 | sort --parallel=4 -S 16M -rn | head -1");
    assert_eq!(sorted, "300000\n");
    let package = "set -e; mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/share/berth-test; \
        printf 'Package: berth-test\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: berth <berth@localhost>\\nDescription: test\\n' \
        > /tmp/pkg/DEBIAN/control; echo installed > /tmp/pkg/usr/share/berth-test/marker; \
        dpkg-deb -Zxz --build /tmp/pkg /tmp/berth-test.deb >/dev/null; dpkg -i /tmp/berth-test.deb >/dev/null; \
        dpkg-query -W -f='${Status}\\n' berth-test; cat /usr/share/berth-test/marker";
    assert_eq!(run_ok(&testbed, &server, id, package), "install ok installed\ninstalled\n");
    // setuid/setgid through PAM (su writes to the audit socket: CAP_AUDIT_WRITE is kept).
    assert_eq!(run_ok(&testbed, &server, id, "su -s /bin/sh -c 'id -u' nobody"), "65534\n");
}
