//! The firewall against a real kernel: every test makes its own network namespaces (bound to
//! files under /tmp, removed afterwards) and runs nft inside them, so nothing touches the host's
//! own network. Needs root, iproute2, util-linux (unshare, nsenter) and nftables.
//!
//! Expected rulesets are written in nft's own syntax, loaded into a scratch namespace and compared
//! with what the firewall made as nft lists both in JSON, so the comparison is by meaning, not by
//! nft's text formatting.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// A network namespace bound to a file; unbound and removed on drop.
struct Netns {
    path: PathBuf,
}

impl Netns {
    fn new(name: &str) -> Self {
        let file = tempfile::Builder::new().prefix(&format!("berth-fw-test-{name}-")).tempfile().expect("temp file");
        let (_, path) = file.keep().expect("keep the temp file");
        let netns = Netns { path };
        run_ok(Command::new("unshare").arg(format!("--net={}", netns.path.display())).arg("true"));
        netns
    }

    fn nft_command(&self) -> Vec<String> {
        vec!["nsenter".into(), format!("--net={}", self.path.display()), "nft".into()]
    }

    /// Runs a command inside the namespace; panics unless it succeeds.
    fn sh(&self, command: &str) -> String {
        let mut nsenter = Command::new("nsenter");
        nsenter.arg(format!("--net={}", self.path.display())).args(command.split_whitespace());
        run_ok(&mut nsenter)
    }

    /// Runs a shell script inside the namespace; panics unless it succeeds.
    fn shell(&self, script: &str) -> String {
        run_ok(Command::new("nsenter").arg(format!("--net={}", self.path.display())).args(["sh", "-c", script]))
    }

    fn nft_stdin(&self, input: &str) -> std::result::Result<String, String> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .args(["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nft");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write to nft");
        let output = child.wait_with_output().expect("wait for nft");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Runs `work` on a thread that joined this namespace: the sockets it opens live here.
    fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&self.path).expect("open the netns file");
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    let joined = std::fs::metadata("/proc/thread-self/ns/net").expect("stat own netns").ino();
                    let wanted = std::fs::metadata(&self.path).expect("stat the netns file").ino();
                    assert_eq!(joined, wanted, "the thread is not in {}", self.path.display());
                    work()
                })
                .join()
                .expect("thread in netns")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn run_ok(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const TABLE: &str = "berth_test";
const BRIDGE: &str = "br-test";

fn config(netns: &Netns) -> FirewallConfig {
    FirewallConfig {
        table: TABLE.into(),
        bridge: BRIDGE.into(),
        subnet: "10.77.0.0/24".parse().expect("subnet"),
        gateway: "10.77.0.1".parse().expect("gateway"),
        allow_inter_workspace: false,
        dns_servers: vec!["10.77.0.1".parse().expect("dns"), "192.0.2.53".parse().expect("dns")],
        nft: netns.nft_command(),
    }
}

fn port(number: u8) -> Port {
    Port {
        workspace_id: format!("ws{number}"),
        address: Ipv4Addr::new(10, 77, 0, number + 1),
        host_veth: format!("vw{number}"),
        mac: MacAddr([0x02, 0, 0, 0, 0, number]),
    }
}

fn cidrs(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|cidr| cidr.parse().expect("cidr")).collect()
}

/// The tables of [`config`] without any port, in nft syntax.
const BASE_RULESET: &str = r#"
table inet berth_test {
    map egress_by_ip { type ipv4_addr : verdict; }
    chain from_workspaces {
        ct state established,related accept
        ip daddr 10.77.0.1 meta l4proto { tcp, udp } th dport 53 accept
        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
        meta l4proto tcp reject with tcp reset
        drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "br-test" jump from_workspaces
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "br-test" oifname "br-test" drop
        iifname "br-test" meta nfproto ipv6 drop
        iifname "br-test" ip saddr vmap @egress_by_ip
        iifname "br-test" drop
        oifname "br-test" ct state established,related accept
        oifname "br-test" drop
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 oifname != "br-test" masquerade
    }
}
table bridge berth_test_guard {
    set ports { type ifname; }
    set port_ip { type ifname . ipv4_addr; }
    set port_mac { type ifname . ether_addr; }
    chain prerouting {
        type filter hook prerouting priority filter; policy accept;
        iifname @ports ether type != { ip, arp, ip6 } drop
        iifname @ports iifname . ether saddr != @port_mac drop
        iifname @ports iifname . ip saddr != @port_ip drop
        iifname @ports iifname . arp saddr ip != @port_ip drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname @ports oifname @ports drop
    }
}
"#;

/// nft commands registering `port` in the guard and giving it an egress chain with `rules`.
fn port_lines(port: &Port, rules: &[&str]) -> String {
    let chain = egress_chain_name(port.address);
    let mut lines = format!("add chain inet {TABLE} {chain}\n");
    for rule in rules {
        lines += &format!("add rule inet {TABLE} {chain} {rule} comment \"workspace {}\"\n", port.workspace_id);
    }
    lines += &format!("add element inet {TABLE} egress_by_ip {{ {} : jump {chain} }}\n", port.address);
    lines += &guard_lines(port);
    lines
}

fn guard_lines(port: &Port) -> String {
    let guard = format!("{TABLE}_guard");
    let veth = &port.host_veth;
    format!(
        "add element bridge {guard} ports {{ \"{veth}\" }}\n\
         add element bridge {guard} port_ip {{ \"{veth}\" . {} }}\n\
         add element bridge {guard} port_mac {{ \"{veth}\" . {} }}\n",
        port.address, port.mac
    )
}

/// `nft -j list ruleset` reduced to its meaning: objects keyed by kind, family, table and name,
/// without handles; a chain holds its rules (statements and comment) in order, a set or map its
/// elements sorted.
fn normalize(listing: &str) -> BTreeMap<String, Value> {
    let document: Value = serde_json::from_str(listing).expect("nft JSON");
    let mut objects = BTreeMap::new();
    for object in document["nftables"].as_array().expect("nftables array") {
        let (kind, body) = object.as_object().and_then(|o| o.iter().next()).expect("one key per object");
        let mut body = body.clone();
        let fields = body.as_object_mut().expect("object body");
        fields.remove("handle");
        let family = fields.get("family").and_then(Value::as_str).unwrap_or_default().to_owned();
        let table = fields.get("table").and_then(Value::as_str).unwrap_or_default().to_owned();
        match kind.as_str() {
            "metainfo" => {}
            "rule" => {
                let chain = fields["chain"].as_str().expect("rule chain");
                let key = format!("chain {family} {table} {chain}");
                let rule = serde_json::json!({ "expr": fields["expr"], "comment": fields.get("comment") });
                let chain_object = objects.get_mut(&key).unwrap_or_else(|| panic!("rule before its chain {key}"));
                let Value::Object(chain_fields) = chain_object else { unreachable!() };
                chain_fields.entry("rules").or_insert_with(|| Value::Array(Vec::new()));
                chain_fields["rules"].as_array_mut().expect("rules").push(rule);
            }
            _ => {
                if let Some(Value::Array(elements)) = fields.get_mut("elem") {
                    elements.sort_by_key(|element| element.to_string());
                }
                let name = fields["name"].as_str().expect("name").to_owned();
                objects.insert(format!("{kind} {family} {table} {name}"), body);
            }
        }
    }
    objects
}

fn list_ruleset(netns: &Netns) -> String {
    netns.sh("nft -j list ruleset")
}

/// Asserts that `netns` holds exactly the ruleset `expected` (nft syntax) describes.
fn assert_ruleset(netns: &Netns, expected: &str) {
    let reference = Netns::new("reference");
    if let Err(stderr) = reference.nft_stdin(expected) {
        panic!("the expected ruleset does not load: {stderr}\n{expected}");
    }
    let actual = normalize(&list_ruleset(netns));
    let wanted = normalize(&list_ruleset(&reference));
    if actual != wanted {
        for key in actual.keys().chain(wanted.keys()) {
            if actual.get(key) != wanted.get(key) {
                eprintln!("differs: {key}\n  actual: {:?}\n  wanted: {:?}", actual.get(key), wanted.get(key));
            }
        }
        panic!(
            "ruleset differs\n--- actual:\n{}\n--- wanted:\n{}",
            netns.sh("nft list ruleset"),
            reference.sh("nft list ruleset")
        );
    }
}

#[tokio::test]
async fn sync_creates_exactly_the_documented_ruleset() {
    let netns = Netns::new("sync");
    let firewall = Firewall::new(config(&netns)).expect("config");
    let ports = [
        (port(1), Egress::Allowlist(cidrs(&["198.51.100.0/24", "203.0.113.7/32", "198.51.100.128/25"]))),
        (port(2), Egress::Denylist(cidrs(&["203.0.113.0/24"]))),
        (port(3), Egress::Open),
        (port(4), Egress::Blocked),
    ];
    firewall.sync(&ports).await.expect("sync");
    let mut expected = BASE_RULESET.to_string();
    // The allowlist's overlapping CIDRs are merged, its DNS rule names only the IPv4 resolvers.
    expected += &port_lines(
        &port(1),
        &[
            "ip daddr { 10.77.0.1, 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept",
            "ip daddr { 198.51.100.0/24, 203.0.113.7 } accept",
            "reject with icmpx type admin-prohibited",
        ],
    );
    expected +=
        &port_lines(&port(2), &["ip daddr { 203.0.113.0/24 } reject with icmpx type admin-prohibited", "accept"]);
    expected += &port_lines(&port(3), &["accept"]);
    expected += &port_lines(&port(4), &["reject with icmpx type admin-prohibited"]);
    assert_ruleset(&netns, &expected);

    // Twice in a row changes nothing.
    firewall.sync(&ports).await.expect("sync again");
    assert_ruleset(&netns, &expected);
    let registered = firewall.list_ports().await.expect("list ports");
    let wanted: Vec<(String, Ipv4Addr)> = (1..=4).map(|n| (port(n).host_veth, port(n).address)).collect();
    assert_eq!(registered, wanted);
}

#[tokio::test]
async fn sync_variants_inter_workspace_and_no_resolver_on_the_gateway() {
    let netns = Netns::new("variants");
    let mut settings = config(&netns);
    settings.allow_inter_workspace = true;
    settings.dns_servers = vec!["192.0.2.53".parse().expect("dns"), "2001:db8::53".parse().expect("dns")];
    let firewall = Firewall::new(settings).expect("config");
    firewall.sync(&[(port(1), Egress::Allowlist(Vec::new()))]).await.expect("sync");
    let expected = BASE_RULESET
        .replace("        ip daddr 10.77.0.1 meta l4proto { tcp, udp } th dport 53 accept\n", "")
        .replace(r#"iifname "br-test" oifname "br-test" drop"#, r#"iifname "br-test" oifname "br-test" accept"#)
        .replace("        iifname @ports oifname @ports drop\n", "")
        + &port_lines(
            &port(1),
            &[
                "ip daddr { 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept",
                "reject with icmpx type admin-prohibited",
            ],
        );
    assert_ruleset(&netns, &expected);
}

#[tokio::test]
async fn attach_set_egress_and_detach_change_only_their_port() {
    let netns = Netns::new("ports");
    let firewall = Firewall::new(config(&netns)).expect("config");

    // Without the tables nothing can be attached, and the error carries nft's complaint.
    let error = firewall.attach(&port(1), &Egress::Open).await.expect_err("attach without tables");
    assert_eq!(error.reason(), Reason::NetworkSetupFailed);
    assert!(error.message().contains("No such file or directory"), "{}", error.message());
    assert!(error.message().contains("ws1"), "{}", error.message());

    firewall.sync(&[]).await.expect("sync");
    assert_ruleset(&netns, BASE_RULESET);

    let open = port_lines(&port(2), &["accept"]);
    for _ in 0..2 {
        firewall.attach(&port(1), &Egress::Denylist(cidrs(&["203.0.113.0/24"]))).await.expect("attach 1");
        firewall.attach(&port(2), &Egress::Open).await.expect("attach 2");
        let denylist =
            port_lines(&port(1), &["ip daddr { 203.0.113.0/24 } reject with icmpx type admin-prohibited", "accept"]);
        assert_ruleset(&netns, &format!("{BASE_RULESET}{denylist}{open}"));
    }

    for _ in 0..2 {
        firewall.set_egress(&port(1), &Egress::Allowlist(cidrs(&["198.51.100.0/24"]))).await.expect("set egress");
        let allowlist = port_lines(
            &port(1),
            &[
                "ip daddr { 10.77.0.1, 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept",
                "ip daddr { 198.51.100.0/24 } accept",
                "reject with icmpx type admin-prohibited",
            ],
        );
        assert_ruleset(&netns, &format!("{BASE_RULESET}{allowlist}{open}"));
    }
    firewall.set_egress(&port(1), &Egress::Blocked).await.expect("block");
    let blocked = port_lines(&port(1), &["reject with icmpx type admin-prohibited"]);
    assert_ruleset(&netns, &format!("{BASE_RULESET}{blocked}{open}"));

    // An IPv6 CIDR is refused before nft runs, and the policy stays as it was.
    let error = firewall.set_egress(&port(1), &Egress::Allowlist(cidrs(&["2001:db8::/32"]))).await.expect_err("ipv6");
    assert_eq!(error.reason(), Reason::InvalidArgument);
    assert_ruleset(&netns, &format!("{BASE_RULESET}{blocked}{open}"));

    for _ in 0..2 {
        firewall.detach(&port(1)).await.expect("detach 1");
        assert_ruleset(&netns, &format!("{BASE_RULESET}{open}"));
    }
    assert_eq!(firewall.list_ports().await.expect("list"), vec![(port(2).host_veth, port(2).address)]);

    // Detach also succeeds when a table, or both, are gone.
    netns.sh(&format!("nft delete table bridge {TABLE}_guard"));
    firewall.detach(&port(2)).await.expect("detach without the guard table");
    let inet_only = list_ruleset(&netns);
    assert!(!inet_only.contains("egress_10_77_0_3"), "{inet_only}");
    firewall.remove_tables().await.expect("remove");
    firewall.detach(&port(2)).await.expect("detach without tables");
}

#[tokio::test]
async fn sync_drops_what_no_workspace_owns_and_restores_a_flushed_table() {
    let netns = Netns::new("reconcile");
    let firewall = Firewall::new(config(&netns)).expect("config");
    firewall.sync(&[]).await.expect("sync");
    for n in 1..=3 {
        firewall.attach(&port(n), &Egress::Open).await.expect("attach");
    }
    // Leftovers of a crash and a stranger's edit.
    netns.sh(&format!("nft add element bridge {TABLE}_guard ports {{ vstale }}"));
    netns.sh(&format!("nft add rule inet {TABLE} forward accept"));

    firewall.sync(&[(port(2), Egress::Open)]).await.expect("sync with one port");
    assert_ruleset(&netns, &format!("{BASE_RULESET}{}", port_lines(&port(2), &["accept"])));

    netns.sh("nft flush ruleset");
    firewall.sync(&[(port(2), Egress::Open)]).await.expect("sync after flush");
    assert_ruleset(&netns, &format!("{BASE_RULESET}{}", port_lines(&port(2), &["accept"])));

    netns.sh(&format!("nft delete table inet {TABLE}"));
    firewall.sync(&[(port(2), Egress::Open)]).await.expect("sync after a deleted table");
    assert_ruleset(&netns, &format!("{BASE_RULESET}{}", port_lines(&port(2), &["accept"])));

    // A duplicate address is berth's bug, refused before anything changes.
    let mut twin = port(3);
    twin.address = port(2).address;
    let error = firewall.sync(&[(port(2), Egress::Open), (twin, Egress::Open)]).await.expect_err("duplicate");
    assert_eq!(error.reason(), Reason::Internal);
    assert_ruleset(&netns, &format!("{BASE_RULESET}{}", port_lines(&port(2), &["accept"])));
}

#[tokio::test]
async fn remove_tables_leaves_other_tables_alone_and_is_idempotent() {
    let netns = Netns::new("remove");
    let firewall = Firewall::new(config(&netns)).expect("config");
    netns.sh("nft add table inet someone_else");
    firewall.sync(&[(port(1), Egress::Open)]).await.expect("sync");
    for _ in 0..2 {
        firewall.remove_tables().await.expect("remove");
        assert_ruleset(&netns, "table inet someone_else {}");
    }
    let error = firewall.list_ports().await.expect_err("list without tables");
    assert_eq!(error.reason(), Reason::NetworkSetupFailed);
}

#[tokio::test]
async fn concurrent_attaches_all_land() {
    let netns = Netns::new("concurrent");
    let firewall = Firewall::new(config(&netns)).expect("config");
    firewall.sync(&[]).await.expect("sync");
    let attaches = (1..=12).map(|n| {
        let firewall = firewall.clone();
        async move { firewall.attach(&port(n), &Egress::Open).await }
    });
    for result in futures::future::join_all(attaches).await {
        result.expect("attach");
    }
    let wanted: Vec<(String, Ipv4Addr)> = {
        let mut ports: Vec<_> = (1..=12).map(|n| (port(n).host_veth, port(n).address)).collect();
        ports.sort();
        ports
    };
    assert_eq!(firewall.list_ports().await.expect("list"), wanted);
}

#[test]
fn validation_refuses_what_cannot_work() {
    let settings = || FirewallConfig {
        table: "berth".into(),
        bridge: "berth0".into(),
        subnet: "10.88.0.0/16".parse().expect("subnet"),
        gateway: "10.88.0.1".parse().expect("gateway"),
        allow_inter_workspace: false,
        dns_servers: Vec::new(),
        nft: vec!["nft".into()],
    };
    assert!(Firewall::new(settings()).is_ok());
    let refused = |change: fn(&mut FirewallConfig)| {
        let mut config = settings();
        change(&mut config);
        Firewall::new(config).expect_err("invalid config").reason()
    };
    assert_eq!(refused(|c| c.nft.clear()), Reason::InvalidArgument);
    assert_eq!(refused(|c| c.table = "berth; flush ruleset".into()), Reason::InvalidArgument);
    assert_eq!(refused(|c| c.bridge = "a-bridge-name-too-long".into()), Reason::InvalidArgument);
    assert_eq!(refused(|c| c.gateway = "10.89.0.1".parse().expect("ip")), Reason::InvalidArgument);
    assert_eq!(refused(|c| c.gateway = "10.88.0.0".parse().expect("ip")), Reason::InvalidArgument);

    let error = Egress::Denylist(cidrs(&["10.0.0.0/8", "::/0"])).validate().expect_err("ipv6");
    assert_eq!(error.reason(), Reason::InvalidArgument);
    assert!(error.message().contains("::/0"), "{}", error.message());
    assert!(Egress::Allowlist(cidrs(&["0.0.0.0/0"])).validate().is_ok());
    assert_eq!(
        Egress::Allowlist(cidrs(&["10.1.2.3/24", "10.1.3.0/24", "10.1.2.0/25"])).ipv4_cidrs().expect("ipv4"),
        vec!["10.1.2.0/23".parse::<Ipv4Net>().expect("net")]
    );

    assert_eq!("02:42:AC:11:00:0f".parse::<MacAddr>().expect("mac"), MacAddr([2, 0x42, 0xac, 0x11, 0, 0x0f]));
    assert_eq!(MacAddr([2, 0x42, 0xac, 0x11, 0, 0x0f]).to_string(), "02:42:ac:11:00:0f");
    for bad in ["", "02:42:ac:11:00", "02:42:ac:11:00:0f:00", "2:42:ac:11:00:0f", "zz:42:ac:11:00:0f"] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
    }

    let firewall = Firewall::new(settings()).expect("config");
    let mut outside = port(1);
    outside.address = "10.89.0.2".parse().expect("ip");
    assert_eq!(firewall.check_port(&outside).expect_err("outside").reason(), Reason::Internal);
    let mut gateway = port(1);
    gateway.address = "10.88.0.1".parse().expect("ip");
    assert_eq!(firewall.check_port(&gateway).expect_err("gateway").reason(), Reason::Internal);
    let mut long_veth = port(1);
    long_veth.address = "10.88.0.2".parse().expect("ip");
    long_veth.host_veth = "veth0123456789abcdef".into();
    assert_eq!(firewall.check_port(&long_veth).expect_err("veth").reason(), Reason::Internal);
}

/// A "host" namespace with the bridge (without br_netfilter) and two workspaces on it, and a "remote" one playing the
/// internet at 198.51.100.10 and 203.0.113.10, reachable only through the host's masquerade (it
/// has no route back to the workspace subnet).
struct Lab {
    host: Netns,
    workspaces: [Netns; 2],
    remote: Netns,
}

const SERVICE_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;

impl Lab {
    fn new() -> Self {
        let lab = Lab {
            host: Netns::new("host"),
            workspaces: [Netns::new("ws1"), Netns::new("ws2")],
            remote: Netns::new("remote"),
        };
        let host = &lab.host;
        host.shell("echo 1 >/proc/sys/net/ipv4/ip_forward");
        // Bridged frames skip the inet hooks, so the guard table alone must keep workspaces apart.
        host.shell("for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ ! -e $f ] || echo 0 >$f; done");
        host.sh(&format!("ip link add {BRIDGE} address 02:00:00:00:00:fe type bridge"));
        host.sh(&format!("ip addr add 10.77.0.1/24 dev {BRIDGE}"));
        host.sh(&format!("ip -6 addr add fe80::1/64 dev {BRIDGE} nodad"));
        host.sh(&format!("ip link set {BRIDGE} up"));
        for (index, workspace) in lab.workspaces.iter().enumerate() {
            let port = port(index as u8 + 1);
            host.sh(&format!(
                "ip link add {} type veth peer name eth0 netns {}",
                port.host_veth,
                workspace.path.display()
            ));
            host.sh(&format!("ip link set {} master {BRIDGE} up", port.host_veth));
            workspace.sh("ip link set lo up");
            workspace.sh(&format!("ip link set eth0 address {}", port.mac));
            workspace.sh(&format!("ip addr add {}/24 dev eth0", port.address));
            workspace.sh(&format!("ip -6 addr add fe80::{}/64 dev eth0 nodad", index + 2));
            workspace.sh("ip link set eth0 up");
            workspace.sh("ip route add default via 10.77.0.1");
            // A fixed gateway MAC, so no ARP from a forged source address is needed later.
            workspace.sh("ip neigh replace 10.77.0.1 lladdr 02:00:00:00:00:fe dev eth0 nud permanent");
        }
        host.sh(&format!("ip link add uplink type veth peer name eth0 netns {}", lab.remote.path.display()));
        host.sh("ip addr add 192.0.2.1/24 dev uplink");
        host.sh("ip link set uplink up");
        host.sh("ip route add 198.51.100.10/32 via 192.0.2.2");
        host.sh("ip route add 203.0.113.10/32 via 192.0.2.2");
        let remote = &lab.remote;
        remote.sh("ip link set lo up");
        remote.sh("ip addr add 198.51.100.10/32 dev lo");
        remote.sh("ip addr add 203.0.113.10/32 dev lo");
        remote.sh("ip addr add 192.0.2.2/24 dev eth0");
        remote.sh("ip link set eth0 up");
        lab
    }

    fn workspace(&self, number: u8) -> &Netns {
        &self.workspaces[usize::from(number) - 1]
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Connected,
    Refused,
    Unreachable,
    TimedOut,
}

/// How long a connection attempt may take before it counts as dropped, and how long a datagram
/// or an ARP entry is waited for: generous for a loaded machine, short enough for a fast test.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DROP_TIMEOUT: Duration = Duration::from_millis(500);

fn connect(from: &Netns, to: SocketAddr) -> Outcome {
    from.enter(|| match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
        Ok(_) => Outcome::Connected,
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(err) if err.kind() == ErrorKind::HostUnreachable || err.kind() == ErrorKind::NetworkUnreachable => {
            Outcome::Unreachable
        }
        Err(err) if err.kind() == ErrorKind::TimedOut || err.kind() == ErrorKind::WouldBlock => Outcome::TimedOut,
        Err(err) => panic!("connect to {to}: {err}"),
    })
}

/// Sends one datagram from `source` to `destination` and reports whether `receiver` got it.
fn datagram_arrives(
    from: &Netns,
    source: Ipv4Addr,
    destination: Ipv4Addr,
    receiver: &UdpSocket,
    payload: &[u8],
) -> bool {
    from.enter(|| {
        let socket = UdpSocket::bind((source, 0)).expect("bind the sender");
        socket.send_to(payload, (destination, UDP_PORT)).expect("send");
    });
    receiver.set_read_timeout(Some(DROP_TIMEOUT)).expect("timeout");
    let mut buffer = [0u8; 64];
    loop {
        match receiver.recv_from(&mut buffer) {
            Ok((length, _)) if &buffer[..length] == payload => return true,
            Ok(_) => continue, // a late datagram of an earlier check
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(err) => panic!("receive: {err}"),
        }
    }
}

/// Sends a datagram from workspace 1 with workspace 2's address (as NET_RAW or NET_ADMIN inside
/// could) to a destination workspace 2's policy allows.
fn spoofed_datagram_arrives(ws1: &Netns, receiver: &UdpSocket, payload: &[u8]) -> bool {
    let spoofed = port(2).address;
    ws1.sh(&format!("ip addr add {spoofed}/32 dev eth0"));
    let arrived = datagram_arrives(ws1, spoofed, ip("203.0.113.10"), receiver, payload);
    ws1.sh(&format!("ip addr del {spoofed}/32 dev eth0"));
    arrived
}

/// Makes workspace 1 ARP for the gateway with workspace 2's address as the sender and reports
/// whether the host now sends workspace 2's traffic to workspace 1's MAC.
fn spoofed_arp_poisons_the_host(lab: &Lab) -> bool {
    let (ws1, spoofed) = (lab.workspace(1), port(2).address);
    ws1.sh(&format!("ip addr add {spoofed}/32 dev eth0"));
    ws1.sh("ip neigh del 10.77.0.1 dev eth0");
    lab.host.sh(&format!("ip neigh flush dev {BRIDGE}"));
    ws1.enter(|| {
        let socket = UdpSocket::bind((spoofed, 0)).expect("bind the sender");
        socket.send_to(b"resolve the gateway", ("10.77.0.1", 9)).expect("send");
    });
    let deadline = Instant::now() + DROP_TIMEOUT;
    let mut poisoned = false;
    while !poisoned && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let entry = lab.host.sh(&format!("ip neigh show {spoofed} dev {BRIDGE}"));
        poisoned = entry.contains(&port(1).mac.to_string());
    }
    ws1.sh(&format!("ip addr del {spoofed}/32 dev eth0"));
    ws1.sh("ip neigh replace 10.77.0.1 lladdr 02:00:00:00:00:fe dev eth0 nud permanent");
    // Forget the poisoned entry, or the host's replies to workspace 2 would go to workspace 1.
    lab.host.sh(&format!("ip neigh flush dev {BRIDGE}"));
    poisoned
}

/// Connects from the remote namespace, with a route to the workspace subnet for the moment (it
/// has none otherwise, so that egress works only through masquerade).
fn connect_from_outside(lab: &Lab, to: SocketAddr) -> Outcome {
    lab.remote.sh("ip route add 10.77.0.0/24 via 192.0.2.1");
    let outcome = connect(&lab.remote, to);
    lab.remote.sh("ip route del 10.77.0.0/24 via 192.0.2.1");
    outcome
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("address")
}

#[tokio::test]
async fn packets_follow_the_rules() {
    let lab = Lab::new();
    let listen_v4 = |netns: &Netns, address: &str| {
        let address: Ipv4Addr = address.parse().expect("address");
        netns.enter(|| TcpListener::bind((address, SERVICE_PORT)).expect("listen"))
    };
    // Host services on every address, IPv4 and IPv6 (another port: [::] also takes IPv4), and a
    // resolver's TCP port on the gateway.
    let _host_v4 = listen_v4(&lab.host, "0.0.0.0");
    let _host_v6 = lab.host.enter(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, SERVICE_PORT + 1)).expect("listen v6"));
    let _host_dns = lab.host.enter(|| TcpListener::bind(("10.77.0.1", 53)).expect("listen 53"));
    let _remote = listen_v4(&lab.remote, "0.0.0.0");
    let _peer = listen_v4(lab.workspace(2), "0.0.0.0");
    let receiver = lab.remote.enter(|| UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("udp"));

    let ws1 = lab.workspace(1);
    let ws2 = lab.workspace(2);
    let scope = ws1.enter(|| nix::net::if_::if_nametoindex("eth0").expect("eth0 index"));
    let gateway = SocketAddr::from((ip("10.77.0.1"), SERVICE_PORT));
    let host_other_address = SocketAddr::from((ip("192.0.2.1"), SERVICE_PORT));
    let host_link_local = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().expect("v6"), SERVICE_PORT + 1, 0, scope));
    let peer = SocketAddr::from((port(2).address, SERVICE_PORT));
    let listed = SocketAddr::from((ip("198.51.100.10"), SERVICE_PORT));
    let unlisted = SocketAddr::from((ip("203.0.113.10"), SERVICE_PORT));

    // Without the firewall everything is reachable (so the checks below can fail), except the
    // remote, which has no route back to the workspaces without masquerade.
    for target in [gateway, host_other_address, host_link_local, peer] {
        assert_eq!(connect(ws1, target), Outcome::Connected, "{target} before the firewall");
    }
    assert_eq!(connect(ws1, listed), Outcome::TimedOut, "the remote answers unmasqueraded sources");
    assert!(spoofed_datagram_arrives(ws1, &receiver, b"spoofed, unguarded"), "spoofing needs no firewall");
    assert!(spoofed_arp_poisons_the_host(&lab), "ARP spoofing needs no firewall");
    assert_eq!(connect_from_outside(&lab, peer), Outcome::Connected, "the outside reaches workspaces unguarded");

    let firewall = Firewall::new(config(&lab.host)).expect("config");
    firewall
        .sync(&[
            (port(1), Egress::Allowlist(cidrs(&["198.51.100.0/24"]))),
            (port(2), Egress::Denylist(cidrs(&["198.51.100.0/24"]))),
        ])
        .await
        .expect("sync");

    // Host protection: no host service on any address; the resolver on the gateway is allowed.
    assert_eq!(connect(ws1, gateway), Outcome::Refused);
    assert_eq!(connect(ws1, host_other_address), Outcome::Refused);
    assert_eq!(connect(ws1, host_link_local), Outcome::Refused);
    assert_eq!(connect(ws1, SocketAddr::from((ip("10.77.0.1"), 53))), Outcome::Connected);
    // Workspaces are isolated from each other.
    assert_ne!(connect(ws1, peer), Outcome::Connected);
    // Egress through masquerade, per policy.
    assert_eq!(connect(ws1, listed), Outcome::Connected);
    assert_eq!(connect(ws1, unlisted), Outcome::Unreachable);
    assert_eq!(connect(ws2, listed), Outcome::Unreachable);
    assert_eq!(connect(ws2, unlisted), Outcome::Connected);

    // Anti-spoofing: another workspace's address or MAC is dropped; the own address passes.
    let own = port(1).address;
    let allowed = ip("198.51.100.10");
    assert!(datagram_arrives(ws1, own, allowed, &receiver, b"own address"));
    assert!(!spoofed_datagram_arrives(ws1, &receiver, b"spoofed address"));
    assert!(!spoofed_arp_poisons_the_host(&lab));
    ws1.sh(&format!("ip link set eth0 address {}", port(2).mac));
    assert!(!datagram_arrives(ws1, own, allowed, &receiver, b"spoofed mac"));
    ws1.sh(&format!("ip link set eth0 address {}", port(1).mac));
    assert!(datagram_arrives(ws1, own, allowed, &receiver, b"own mac again"));

    // A policy change applies at once.
    firewall.set_egress(&port(1), &Egress::Open).await.expect("open");
    assert_eq!(connect(ws1, listed), Outcome::Connected);
    assert_eq!(connect(ws1, unlisted), Outcome::Connected);
    firewall.set_egress(&port(1), &Egress::Blocked).await.expect("block");
    assert_eq!(connect(ws1, listed), Outcome::Unreachable);
    assert_eq!(connect(ws1, unlisted), Outcome::Unreachable);

    // Nothing from outside opens a connection to a workspace, even with a route to it.
    assert_eq!(connect_from_outside(&lab, peer), Outcome::TimedOut);

    // A detached (unregistered) source is not forwarded at all.
    firewall.detach(&port(1)).await.expect("detach");
    assert_eq!(connect(ws1, listed), Outcome::TimedOut);
    assert_eq!(connect(ws2, unlisted), Outcome::Connected);
}

/// Medians of 20 runs of attach, set_egress and detach with nft started directly (as berth does)
/// from a thread inside the namespace; prints them (`cargo test ... -- --nocapture`).
#[test]
fn timings() {
    let netns = Netns::new("timings");
    let settings = FirewallConfig { nft: vec!["nft".into()], ..config(&netns) };
    let (attach, set_egress, detach) = netns.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let firewall = Firewall::new(settings).expect("config");
            let others: Vec<(Port, Egress)> =
                (10..60).map(|n| (port(n), Egress::Denylist(cidrs(&["203.0.113.0/24"])))).collect();
            firewall.sync(&others).await.expect("sync with 50 ports");
            let allowlist = Egress::Allowlist(cidrs(&["198.51.100.0/24", "203.0.113.0/24"]));
            let (mut attach, mut set_egress, mut detach) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..20 {
                let started = Instant::now();
                firewall.attach(&port(1), &Egress::Open).await.expect("attach");
                attach.push(started.elapsed());
                let started = Instant::now();
                firewall.set_egress(&port(1), &allowlist).await.expect("set egress");
                set_egress.push(started.elapsed());
                let started = Instant::now();
                firewall.detach(&port(1)).await.expect("detach");
                detach.push(started.elapsed());
            }
            assert_eq!(firewall.list_ports().await.expect("list").len(), 50);
            (attach, set_egress, detach)
        })
    });
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    eprintln!(
        "firewall timings, median of 20 with 50 other ports: attach {:?}, set_egress {:?}, detach {:?}",
        median(attach),
        median(set_egress),
        median(detach)
    );
}

#[test]
fn netns_files_are_removed() {
    let path: PathBuf = {
        let netns = Netns::new("cleanup");
        assert!(Path::new(&netns.path).exists());
        netns.path.clone()
    };
    assert!(!path.exists(), "{} left behind", path.display());
}
