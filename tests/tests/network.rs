//! Workspace networks on the real containerd, inside the testbed's lab namespace (berth, its
//! bridge, NAT and nft tables live there; the "internet" is the remote namespace): apt and pip
//! installs through NAT, the host kept out (IPv4 and IPv6), workspaces kept apart, allow and
//! deny lists applied live, spoofed sources dropped, the address stable across stop/start and a
//! berth restart, nothing left after a delete or a crash followed by a "reboot", and `--network
//! none` with loopback only. No packet of these tests leaves the lab's namespaces.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use berth_api::v1::create_workspace_response::Event as CreateEvent;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateWorkspaceRequest, DeleteWorkspaceRequest, NetworkMode, NetworkPolicy, StartWorkspaceRequest,
    StopWorkspaceRequest, UpdateWorkspaceRequest, Workspace,
};
use berth_e2e::lab::{self, Lab, LabGuard};
use berth_e2e::snapshots::{Client, get};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use tokio_stream::StreamExt as _;
use tonic::Code;

/// A berth with networking in the lab, on a bridge and subnet of its own (tests run in parallel
/// in the one lab namespace).
struct NetLab {
    testbed: Testbed,
    lab: Lab,
    /// Always Some between calls (restarts replace it).
    server: Option<BerthServer>,
    /// The settings every (re)start of it gets.
    server_args: Vec<String>,
    client: Client,
    bridge: String,
    /// `10.232.N.0/24`.
    subnet_prefix: String,
    // Last: the thread leaves the lab only after the server is gone.
    _inside: LabGuard,
}

impl NetLab {
    async fn start(number: u8, extra: &[&str]) -> Self {
        let testbed = Testbed::from_env();
        let lab = Lab::from_env();
        let inside = lab.enter();
        let bridge = format!("bnet{number}");
        let subnet_prefix = format!("10.232.{number}");
        let mut extra_args: Vec<String> = [
            "--bridge-name",
            &bridge,
            "--network-subnet",
            &format!("{subnet_prefix}.0/24"),
            "--dns",
            &lab.remote_addr().to_string(),
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        extra_args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let options = ServerOptions { network: true, extra_args: extra_args.clone(), ..Default::default() };
        let server = BerthServer::start_with(&testbed, options);
        let client = WorkspaceServiceClient::new(server.channel().await);
        Self {
            testbed,
            lab,
            server: Some(server),
            server_args: extra_args,
            client,
            bridge,
            subnet_prefix,
            _inside: inside,
        }
    }

    fn server(&self) -> &BerthServer {
        self.server.as_ref().expect("a server")
    }

    /// Stops berth (SIGTERM, or SIGKILL when `kill`) and starts it again on the same state.
    async fn restart(&mut self, kill: bool) {
        let server = self.server.take().expect("a server");
        let server = server.restart_with_args(&self.testbed, kill, self.server_args.clone());
        server.wait_serving(Duration::from_secs(60)).await;
        self.client = WorkspaceServiceClient::new(server.channel().await);
        self.server = Some(server);
    }

    /// A server on the same state with `env` (a failpoint), started once the first has exited.
    fn start_again_with_env(&mut self, env: Vec<(String, String)>) -> BerthServer {
        let server = self.server.as_ref().expect("a server");
        let options = ServerOptions {
            network: true,
            reuse: Some((server.state_dir.clone(), server.namespace.clone())),
            extra_args: self.server_args.clone(),
            env,
            ..Default::default()
        };
        BerthServer::start_with(&self.testbed, options)
    }

    fn gateway(&self) -> String {
        format!("{}.1", self.subnet_prefix)
    }

    /// Runs a shell command in the workspace (safe to run twice: Testbed::exec may retry).
    fn sh(&self, id: &str, script: &str) -> berth_e2e::ExecOutput {
        self.testbed.exec_output(&self.server().namespace, id, None, &["sh", "-c", script])
    }

    fn sh_ok(&self, id: &str, script: &str) -> String {
        let output = self.sh(id, script);
        assert!(output.success, "{script:?} failed in {id}: {}{}", output.stdout, output.stderr);
        output.stdout
    }

    /// Whether a TCP connection from the workspace to `host`:`port` is established within 3 s
    /// (python3 from the Debian image; `host` may be an IPv6 literal with a zone).
    fn connects(&self, id: &str, host: &str, port: u16) -> Result<(), String> {
        let script = format!(
            "python3 -c 'import socket,sys\ntry:\n    socket.create_connection((\"{host}\", {port}), 3).close(); print(\"connected\")\nexcept Exception as e:\n    print(type(e).__name__, e)'"
        );
        let output = self.sh_ok(id, &script);
        if output.trim() == "connected" { Ok(()) } else { Err(output.trim().to_owned()) }
    }

    /// Whether an HTTP GET of `url` from the workspace succeeds (curl, 5 s).
    fn fetch(&self, id: &str, url: &str) -> Result<String, String> {
        let output = self.sh(id, &format!("curl -sS --max-time 5 {url}"));
        if output.success { Ok(output.stdout) } else { Err(format!("{}{}", output.stdout, output.stderr)) }
    }

    async fn create(
        &mut self,
        id: &str,
        image: &str,
        policy: Option<NetworkPolicy>,
    ) -> Result<Workspace, tonic::Status> {
        let request = CreateWorkspaceRequest {
            workspace_id: id.to_owned(),
            image: self.testbed.image(image),
            network_policy: policy,
            ..Default::default()
        };
        let mut stream = self.client.create_workspace(request).await?.into_inner();
        while let Some(item) = stream.next().await {
            if let Some(CreateEvent::Ready(ready)) = item?.event {
                return Ok(ready.workspace.unwrap());
            }
        }
        panic!("the create of {id} ended without ready");
    }

    async fn set_policy(&mut self, id: &str, policy: NetworkPolicy) -> Result<Workspace, tonic::Status> {
        let request = UpdateWorkspaceRequest {
            workspace_id: id.to_owned(),
            update_mask: Some(prost_types::FieldMask { paths: vec!["network_policy".to_owned()] }),
            network_policy: Some(policy),
            ..Default::default()
        };
        Ok(self.client.update_workspace(request).await?.into_inner().workspace.unwrap())
    }

    async fn delete(&mut self, id: &str) {
        let request = DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data: false };
        self.client.delete_workspace(request).await.unwrap();
    }

    fn netns_dir(&self) -> PathBuf {
        self.server().state_dir.join("network/netns")
    }

    /// The addresses host-local holds, by file name.
    fn ipam_entries(&self) -> Vec<String> {
        let dir = self.server().state_dir.join("network/ipam").join(&self.bridge);
        let mut entries: Vec<String> = std::fs::read_dir(dir)
            .map(|dir| dir.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        entries.retain(|name| name.parse::<std::net::IpAddr>().is_ok());
        entries.sort();
        entries
    }

    /// The elements of berth's nft sets and maps and its per-workspace chains, as `nft -j`
    /// lists them in the lab.
    fn nft_state(&self) -> NftState {
        let ruleset: serde_json::Value =
            serde_json::from_str(&self.lab.run(&["nft", "-j", "list", "ruleset"])).unwrap();
        let mut state = NftState::default();
        for object in ruleset["nftables"].as_array().unwrap() {
            let table = |item: &serde_json::Value| item["table"].as_str().unwrap_or_default().to_owned();
            if let Some(set) = object.get("set").or_else(|| object.get("map"))
                && table(set).starts_with(&self.bridge)
            {
                state.elements += set["elem"].as_array().map_or(0, Vec::len);
            }
            if let Some(chain) = object.get("chain")
                && table(chain).starts_with(&self.bridge)
            {
                state.chains.push(chain["name"].as_str().unwrap_or_default().to_owned());
            }
            if let Some(table_object) = object.get("table")
                && table_object["name"].as_str().is_some_and(|name| name.starts_with(&self.bridge))
            {
                state.tables += 1;
            }
        }
        state
    }

    /// (family, name) of this server's nft tables in the lab.
    fn nft_tables(&self) -> Vec<(String, String)> {
        let listed: serde_json::Value = serde_json::from_str(&self.lab.run(&["nft", "-j", "list", "tables"])).unwrap();
        listed["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|object| object.get("table"))
            .filter(|table| table["name"].as_str().is_some_and(|name| name.starts_with(&self.bridge)))
            .map(|table| (table["family"].as_str().unwrap().to_owned(), table["name"].as_str().unwrap().to_owned()))
            .collect()
    }

    fn netns_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.netns_dir())
            .map(|dir| dir.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

#[derive(Debug, Default)]
struct NftState {
    tables: usize,
    elements: usize,
    chains: Vec<String>,
}

fn policy(mode: NetworkMode, cidrs: &[&str]) -> NetworkPolicy {
    NetworkPolicy { mode: mode.into(), cidrs: cidrs.iter().map(|cidr| (*cidr).to_owned()).collect() }
}

fn address(workspace: &Workspace) -> String {
    workspace.network.as_ref().map(|network| network.address.clone()).unwrap_or_default()
}

/// A listener in the lab (berth's "host") on `[::]:port`, IPv4 and IPv6; killed on drop.
struct HostListener(Child);

impl HostListener {
    fn start(lab: &Lab, port: u16) -> Self {
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_INET6)\ns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('::', {port}))\ns.listen(16)\nprint('listening', flush=True)\nwhile True:\n    s.accept()[0].close()\n"
        );
        let mut child = lab
            .command("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the host listener");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "listening");
        Self(child)
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn apt_and_pip_install_through_nat_while_the_host_stays_out_and_the_address_stays() {
    let mut net = NetLab::start(1, &[]).await;
    let id = "installer";
    let workspace = net.create(id, "DEBIAN", None).await.unwrap();
    let network = workspace.network.clone().unwrap();
    assert_eq!(network.policy.as_ref().unwrap().mode(), NetworkMode::Open, "the default policy");
    assert!(network.address.starts_with(&format!("{}.", net.subnet_prefix)), "{network:?}");
    assert_eq!((network.gateway.as_str(), network.prefix_length), (net.gateway().as_str(), 24));
    assert_eq!(network.dns_servers, [net.lab.remote_addr().to_string()]);
    assert_eq!(
        net.sh_ok(id, "cat /etc/resolv.conf"),
        format!("# Written by berth for this workspace.\nnameserver {}\n", net.lab.remote_addr())
    );
    assert!(!net.sh(id, "echo nameserver 1.1.1.1 > /etc/resolv.conf").success, "resolv.conf is read-only");
    let inside = net.sh_ok(id, "ip -4 -o addr show dev eth0");
    assert!(inside.contains(&format!("{}/24", network.address)), "{inside}");

    // The package managers, through NAT from the remote namespace.
    let apt = format!(
        "rm -f /etc/apt/sources.list.d/*; echo '{}' > /etc/apt/sources.list && apt-get update -q && apt-get install -y -q {} && {}",
        net.lab.apt_source(),
        lab::APT_PACKAGE,
        lab::APT_PACKAGE
    );
    assert!(net.sh_ok(id, &apt).ends_with(lab::APT_PACKAGE_OUTPUT));
    let pip = format!(
        "pip install -q --break-system-packages --index-url {} --trusted-host {} {} && python3 -c 'import {m}; print({m}.GREETING)'",
        net.lab.pip_index_url(),
        net.lab.remote_addr(),
        lab::PIP_PACKAGE,
        m = lab::PIP_MODULE
    );
    assert_eq!(net.sh_ok(id, &pip).trim(), lab::PIP_GREETING);
    assert_eq!(net.fetch(id, &net.lab.remote_url("/hello.txt")).unwrap(), lab::HELLO_TXT);

    // A host service on every address, IPv4 and IPv6: the lab itself reaches it, a workspace
    // reaches it on none of them.
    let _listener = HostListener::start(&net.lab, 9999);
    let lab_addr = net.lab.lab_addr().to_string();
    net.lab.run(&["python3", "-c", &format!("import socket; socket.create_connection(('{lab_addr}', 9999), 3)")]);
    let links: serde_json::Value =
        serde_json::from_str(&net.lab.run(&["ip", "-j", "-6", "addr", "show", "dev", &net.bridge])).unwrap();
    let bridge_v6 = links[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|info| info["scope"] == "link")
        .map(|info| info["local"].as_str().unwrap().to_owned())
        .expect("the bridge has an IPv6 link-local address");
    for host in [net.gateway(), lab_addr.clone(), "127.0.0.1".to_owned(), format!("{bridge_v6}%eth0")] {
        let refused = net.connects(id, &host, 9999).expect_err(&format!("{host}:9999 must be unreachable"));
        assert!(
            refused.contains("Refused") || refused.contains("timeout") || refused.contains("Unreachable"),
            "{host}: {refused}"
        );
    }

    // The address survives a stop/start and a berth restart, and so does the egress.
    net.client.stop_workspace(StopWorkspaceRequest { workspace_id: id.to_owned(), timeout: None }).await.unwrap();
    let started =
        net.client.start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap().into_inner();
    assert_eq!(address(&started.workspace.unwrap()), network.address);
    net.restart(false).await;
    assert_eq!(address(&get(&mut net.client, id).await), network.address);
    assert_eq!(net.fetch(id, &net.lab.remote_url("/hello.txt")).unwrap(), lab::HELLO_TXT);
    assert!(net.connects(id, &net.gateway(), 9999).is_err(), "the rules came back with the restart");

    // Delete leaves no namespace file, address or nft element behind.
    net.delete(id).await;
    assert!(net.netns_files().is_empty(), "{:?}", net.netns_files());
    assert!(net.ipam_entries().is_empty(), "{:?}", net.ipam_entries());
    let nft = net.nft_state();
    assert_eq!(nft.elements, 0, "{nft:?}");
    assert!(!nft.chains.iter().any(|chain| chain.contains(id)), "{nft:?}");
}

/// A UDP datagram from inside `netns` with source `source`, sent through a raw socket (as a
/// workspace process with NET_RAW could), carrying `payload`.
fn send_raw_udp(netns: &Path, source: &str, destination: &str, port: u16, payload: &str) {
    let script = format!(
        r#"import socket, struct
src, dst = socket.inet_aton("{source}"), socket.inet_aton("{destination}")
data = b"{payload}"
udp = struct.pack("!HHHH", 40000, {port}, 8 + len(data), 0) + data
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(3):
    s.sendto(ip + udp, ("{destination}", 0))
"#
    );
    let status = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["python3", "-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "sending from {source} failed");
}

#[tokio::test]
async fn workspaces_are_kept_apart_policies_apply_live_and_spoofed_sources_are_dropped() {
    let mut net = NetLab::start(2, &[]).await;
    let near = net.lab.remote_addr().to_string();
    let far = net.lab.remote_addr2().to_string();
    let allow_far = policy(NetworkMode::Allowlist, &[&far]);
    let a = net.create("alpha", "DEBIAN", Some(allow_far)).await.unwrap();
    let b = net.create("beta", "DEBIAN", None).await.unwrap();
    assert_eq!(a.network.as_ref().unwrap().policy.as_ref().unwrap().cidrs, [format!("{far}/32")], "stored normalized");

    // Workspaces cannot reach each other; the lab (the host) can reach them, so the server is up.
    net.sh_ok("alpha", "nohup python3 -m http.server 8000 >/dev/null 2>&1 & sleep 1; true");
    net.lab.run(&["python3", "-c", &format!("import socket; socket.create_connection(('{}', 8000), 3)", address(&a))]);
    assert!(net.connects("beta", &address(&a), 8000).is_err(), "beta reached alpha");

    // ALLOWLIST: the listed address only (refused at once, not after a timeout).
    let url = |host: &str| format!("http://{host}/hello.txt");
    assert_eq!(net.fetch("alpha", &url(&far)).unwrap(), lab::HELLO_TXT);
    let refused = net.fetch("alpha", &url(&near)).unwrap_err();
    assert!(!refused.contains("timed out"), "refused at once: {refused}");
    // DENYLIST, applied to the running workspace without a restart: the reverse.
    let updated = net.set_policy("alpha", policy(NetworkMode::Denylist, &[&far])).await.unwrap();
    assert_eq!(updated.init_pid, a.init_pid, "no restart");
    assert_eq!(net.fetch("alpha", &url(&near)).unwrap(), lab::HELLO_TXT);
    assert!(net.fetch("alpha", &url(&far)).is_err());
    // NONE takes eth0 away; OPEN gives it back.
    net.set_policy("alpha", policy(NetworkMode::None, &[])).await.unwrap();
    assert_eq!(net.sh_ok("alpha", "ls /sys/class/net | sort | tr '\\n' ' '").trim(), "lo");
    let reopened = net.set_policy("alpha", policy(NetworkMode::Open, &[])).await.unwrap();
    assert_eq!(net.fetch("alpha", &url(&far)).unwrap(), lab::HELLO_TXT);
    assert_eq!(net.fetch("alpha", &url(&near)).unwrap(), lab::HELLO_TXT);
    assert!(!address(&reopened).is_empty());

    // Spoofing: raw packets from beta's namespace with a forged source (another workspace's
    // address, an outside one) are dropped; its own source passes (and is masqueraded).
    let received = std::env::temp_dir().join(format!("berth-spoof-{}", std::process::id()));
    let listener_script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 9000))\ns.settimeout(4)\nout = open('{}', 'w')\ntry:\n    while True:\n        data, peer = s.recvfrom(100)\n        out.write(data.decode() + ' ' + peer[0] + '\\n'); out.flush()\nexcept socket.timeout:\n    pass\n",
        received.display()
    );
    let mut listener = net.lab.remote_command("python3").args(["-c", &listener_script]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let beta_netns = net.netns_dir().join("beta");
    send_raw_udp(&beta_netns, &address(&reopened), &near, 9000, "forged-workspace");
    send_raw_udp(&beta_netns, "198.51.100.77", &near, 9000, "forged-outside");
    send_raw_udp(&beta_netns, &address(&b), &near, 9000, "genuine");
    listener.wait().unwrap();
    let got = std::fs::read_to_string(&received).unwrap_or_default();
    let _ = std::fs::remove_file(&received);
    assert!(
        got.contains(&format!("genuine {}", net.lab.lab_addr())),
        "the genuine datagram arrives masqueraded: {got:?}"
    );
    assert!(!got.contains("forged"), "forged datagrams passed: {got:?}");

    // Bad policies change nothing.
    for (bad, needle) in [
        (policy(NetworkMode::Allowlist, &[]), "at least one"),
        (policy(NetworkMode::Denylist, &["fd00::/8"]), "IPv6"),
        (policy(NetworkMode::Denylist, &["300.1.1.1/8"]), "300.1.1.1/8"),
        (policy(NetworkMode::Open, &["10.0.0.0/8"]), "takes no CIDRs"),
    ] {
        let status = net.set_policy("beta", bad).await.unwrap_err();
        assert_eq!(
            (status.code(), error_reason(&status).as_deref()),
            (Code::InvalidArgument, Some("INVALID_NETWORK_POLICY"))
        );
        assert!(status.message().contains(needle), "{}", status.message());
    }
    assert_eq!(net.fetch("beta", &url(&near)).unwrap(), lab::HELLO_TXT);

    net.delete("alpha").await;
    net.delete("beta").await;
    assert_eq!((net.netns_files().len(), net.ipam_entries().len(), net.nft_state().elements), (0, 0, 0));
}

#[tokio::test]
async fn a_crash_mid_create_and_a_reboot_leave_nothing_behind_and_survivors_keep_their_address() {
    let mut net = NetLab::start(3, &[]).await;
    let survivor = net.create("survivor", "BUSYBOX", None).await.unwrap();

    // berth dies between the container and its task.
    let namespace = net.server().namespace.clone();
    let mut first = net.server.take().unwrap();
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(20));
    net.server = Some(first);
    let mut crashing = net.start_again_with_env(vec![("BERTH_FAILPOINT".into(), "create.container".into())]);
    let mut client = WorkspaceServiceClient::new(crashing.channel().await);
    let request = CreateWorkspaceRequest {
        workspace_id: "doomed".to_owned(),
        image: net.testbed.image("BUSYBOX"),
        ..Default::default()
    };
    let mut stream = client.create_workspace(request).await.unwrap().into_inner();
    while let Some(Ok(_)) = stream.next().await {}
    crashing.wait_exit(Duration::from_secs(30));
    assert!(net.netns_files().contains(&"doomed".to_owned()), "the crash left the namespace: {:?}", net.netns_files());

    // A "reboot": tasks, namespaces, the bridge and the tables are gone; the state dir stays.
    net.testbed.ctr(&namespace, &["tasks", "kill", "--signal", "SIGKILL", "survivor"]);
    std::thread::sleep(Duration::from_millis(500));
    net.testbed.ctr(&namespace, &["tasks", "delete", "survivor"]);
    for name in net.netns_files() {
        let status = std::process::Command::new("umount").arg(net.netns_dir().join(name)).status().unwrap();
        assert!(status.success());
    }
    net.lab.run(&["ip", "link", "delete", &net.bridge]);
    for (family, table) in net.nft_tables() {
        net.lab.run(&["nft", "delete", "table", &family, &table]);
    }
    assert_eq!(net.nft_state().tables, 0);

    // berth starts after the reboot.
    let server = net.start_again_with_env(Vec::new());
    server.wait_serving(Duration::from_secs(60)).await;
    net.client = WorkspaceServiceClient::new(server.channel().await);
    net.server = Some(server);
    let back = get(&mut net.client, "survivor").await;
    assert_eq!(address(&back), address(&survivor), "the same address after the reboot");
    assert!(back.init_pid > 0);
    assert_eq!(net.netns_files(), ["survivor"]);
    assert_eq!(net.ipam_entries(), [address(&survivor)]);
    let nft = net.nft_state();
    assert_eq!((nft.tables, nft.elements > 0), (2, true), "the tables are back with the survivor's elements: {nft:?}");
    let reached = net.sh(
        "survivor",
        &format!("printf 'GET /hello.txt HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} 80", net.lab.remote_addr()),
    );
    assert!(reached.stdout.contains(lab::HELLO_TXT.trim()), "{reached:?}");
    let status = net.client.get_workspace(berth_api::v1::GetWorkspaceRequest { workspace_id: "doomed".into() }).await;
    assert_eq!(status.unwrap_err().code(), Code::NotFound, "the interrupted create was rolled back");
    net.delete("survivor").await;
    assert_eq!((net.netns_files().len(), net.ipam_entries().len(), net.nft_state().elements), (0, 0, 0));
}

#[tokio::test]
async fn network_none_gives_loopback_only_and_refuses_other_policies() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed); // the harness passes --network none
    let mut client = WorkspaceServiceClient::new(server.channel().await);
    let ws = berth_e2e::snapshots::create_workspace(&mut client, "offline", &testbed.image("BUSYBOX")).await;
    let network = ws.network.unwrap();
    assert_eq!(network.policy.unwrap().mode(), NetworkMode::None);
    assert!(network.address.is_empty() && network.gateway.is_empty());
    let links = testbed.exec(&server.namespace, "offline", &["ls", "/sys/class/net"]);
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["lo"]);

    let request = CreateWorkspaceRequest {
        workspace_id: "online".to_owned(),
        image: testbed.image("BUSYBOX"),
        network_policy: Some(policy(NetworkMode::Open, &[])),
        ..Default::default()
    };
    let status = client.create_workspace(request).await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status).as_deref()), (Code::FailedPrecondition, Some("NETWORK_DISABLED")));
    assert!(status.message().contains("--network bridge"), "{}", status.message());
}
