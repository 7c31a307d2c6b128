//! Workspace networks: a pinned network namespace per workspace (independent of its task), `lo`
//! and `eth0` on berth's bridge through Debian's CNI plugins, berth's nftables table (NAT, host
//! protection, anti-spoofing, isolation, egress policy) and a generated resolv.conf.
//!
//! Files under `{state_dir}/network/`: `netns/<id>` (the pinned namespace), `attachments/<id>.json`
//! (the CNI ADD result, needed by the DEL) and `ipam/` (host-local's address files).

mod cni;
mod dns;
mod firewall;
mod netns;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use tracing::{info, warn};

pub use cni::Attachment;
use cni::Cni;
use dns::Resolver;
use firewall::{Egress, Firewall, FirewallConfig, Port};

use crate::error::{Error, Reason, Result};
use crate::model::{NetworkMode, NetworkPolicy, WorkspaceId};

/// Whether workspaces get a network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetworkBackend {
    /// `eth0` on berth's bridge, NAT to the outside.
    #[default]
    Bridge,
    /// Loopback only, for every workspace.
    None,
}

/// The network settings of a server.
#[derive(Clone, Debug)]
pub struct NetworkSettings {
    pub backend: NetworkBackend,
    pub subnet: Ipv4Net,
    pub bridge: String,
    pub cni_bin_dir: PathBuf,
    /// `--dns`; empty means the host's upstream servers.
    pub dns: Vec<IpAddr>,
    pub allow_inter_workspace: bool,
    /// berth's files (`{state_dir}/network`).
    pub dir: PathBuf,
}

/// What the boot reconcile did to networks.
#[derive(Debug, Default)]
pub struct NetworkReport {
    /// Workspaces whose namespace or interface had to be made again (after a host reboot).
    pub restored: u32,
    /// Namespaces, addresses and rules no workspace owned, removed.
    pub removed: u32,
}

/// The networks of a server's workspaces.
pub struct Network {
    bridge: Option<Bridge>,
    resolver: Resolver,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("bridge", &self.bridge.as_ref().map(|bridge| &bridge.cni))
            .field("dns", &self.resolver.servers)
            .finish()
    }
}

struct Bridge {
    cni: Cni,
    firewall: Firewall,
    dir: PathBuf,
    /// The attachments on disk, by workspace id.
    attachments: Mutex<HashMap<String, Attachment>>,
}

/// An attachment as cached on disk: what the DEL needs and what the API shows.
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedAttachment {
    result: Value,
    attachment: Attachment,
}

impl Network {
    /// Networking as configured; fails when the bridge backend cannot work on this host.
    pub async fn new(settings: &NetworkSettings) -> std::result::Result<Self, String> {
        let resolver = Resolver::new(&settings.dns);
        if settings.backend == NetworkBackend::None {
            return Ok(Self { bridge: None, resolver });
        }
        let gateway = settings.subnet.hosts().next().ok_or_else(|| {
            format!("network subnet {} has no room for workspaces; use a /16 to /29", settings.subnet)
        })?;
        let cni = Cni {
            bin_dir: settings.cni_bin_dir.clone(),
            ipam_dir: settings.dir.join("ipam"),
            bridge: settings.bridge.clone(),
            subnet: settings.subnet,
            gateway,
            mtu: uplink_mtu().await,
        };
        cni.check_plugins()?;
        let firewall = Firewall::new(FirewallConfig {
            table: settings.bridge.clone(),
            bridge: settings.bridge.clone(),
            subnet: settings.subnet,
            gateway,
            allow_inter_workspace: settings.allow_inter_workspace,
            dns_servers: resolver.servers.clone(),
            nft: vec!["nft".to_owned()],
        })
        .map_err(|err| err.message().to_owned())?;
        info!(bridge = %settings.bridge, subnet = %settings.subnet, mtu = cni.mtu, dns = ?resolver.servers, "workspace networking on");
        Ok(Self {
            bridge: Some(Bridge { cni, firewall, dir: settings.dir.clone(), attachments: Mutex::new(HashMap::new()) }),
            resolver,
        })
    }

    /// No networking (unit tests and `--network none`).
    pub fn disabled() -> Self {
        Self { bridge: None, resolver: Resolver::new(&[]) }
    }

    /// Whether workspaces can have more than loopback.
    pub fn enabled(&self) -> bool {
        self.bridge.is_some()
    }

    /// The policy a create gets when it names none.
    pub fn default_policy(&self) -> NetworkPolicy {
        let mode = if self.enabled() { NetworkMode::Open } else { NetworkMode::None };
        NetworkPolicy { mode, cidrs: Vec::new() }
    }

    /// Refuses a policy this server cannot give.
    pub fn check(&self, policy: &NetworkPolicy) -> Result<()> {
        if !self.enabled() && policy.mode != NetworkMode::None {
            return Err(Error::new(
                Reason::NetworkDisabled,
                "this server runs with --network none, so workspaces have loopback only; ask for network mode NONE (or none at all), or run the server with --network bridge",
            ));
        }
        Ok(())
    }

    /// The content of every workspace's /etc/resolv.conf.
    pub fn resolv_conf(&self) -> &str {
        &self.resolver.resolv_conf
    }

    /// The DNS servers in it.
    pub fn dns_servers(&self) -> &[IpAddr] {
        &self.resolver.servers
    }

    /// The namespace file the workspace's container joins, attached first when it is missing (a
    /// workspace from before berth had networks, re-created); None without networking (the
    /// container then gets a fresh loopback-only namespace of its own).
    pub async fn namespace_for(&self, id: &WorkspaceId, policy: &NetworkPolicy) -> Result<Option<PathBuf>> {
        let Some(bridge) = &self.bridge else { return Ok(None) };
        let path = bridge.netns_path(id.as_str());
        if !netns::is_pinned(&path) {
            self.attach(id, policy).await?;
        }
        Ok(Some(path))
    }

    /// The workspace's interface, if it has one.
    pub fn attachment(&self, id: &WorkspaceId) -> Option<Attachment> {
        let bridge = self.bridge.as_ref()?;
        bridge.attachments.lock().expect("attachments").get(id.as_str()).cloned()
    }

    /// Gives a workspace its namespace and, unless the policy is NONE, its interface and rules
    /// (before its task starts: the firewall drops what unregistered ports send). Idempotent;
    /// on failure nothing of it is left.
    pub async fn attach(&self, id: &WorkspaceId, policy: &NetworkPolicy) -> Result<()> {
        let Some(bridge) = &self.bridge else { return Ok(()) };
        let made = bridge.attach(id.as_str(), policy, None).await;
        if made.is_err()
            && let Err(err) = bridge.detach(id.as_str()).await
        {
            warn!(workspace_id = %id, error = %err, "cannot undo a failed network attach");
        }
        made
    }

    /// Applies a new policy to a workspace, running or not, without a restart.
    pub async fn set_policy(&self, id: &WorkspaceId, policy: &NetworkPolicy) -> Result<()> {
        let Some(bridge) = &self.bridge else { return Ok(()) };
        if policy.mode == NetworkMode::None {
            return bridge.disconnect(id.as_str()).await;
        }
        let netns = bridge.netns_path(id.as_str());
        if !netns::is_pinned(&netns) {
            return Err(Error::new(
                Reason::InvalidStateTransition,
                format!(
                    "workspace {id} has no network namespace of its own (it was created before berth gave workspaces networks); change its env or image once to re-create its container in one, then set the policy"
                ),
            ));
        }
        bridge.connect(id.as_str(), &netns, policy, None).await
    }

    /// Removes the workspace's interface, address, rules and namespace (its task is gone).
    /// Idempotent.
    pub async fn detach(&self, id: &WorkspaceId) -> Result<()> {
        match &self.bridge {
            Some(bridge) => bridge.detach(id.as_str()).await,
            None => Ok(()),
        }
    }

    /// At boot, before any task starts: brings back the namespaces, interfaces (same address)
    /// and rules of `owned` workspaces (a host reboot loses the mounts, the bridge and the
    /// table), and removes whatever else berth's files or table hold.
    pub async fn reconcile(&self, owned: &[(WorkspaceId, NetworkPolicy)]) -> Result<NetworkReport> {
        match &self.bridge {
            Some(bridge) => bridge.reconcile(owned).await,
            None => Ok(NetworkReport::default()),
        }
    }

    /// `berth serve --cleanup-network`: removes berth's nftables tables and its bridge.
    pub async fn cleanup(&self) -> Result<()> {
        let Some(bridge) = &self.bridge else { return Ok(()) };
        bridge.firewall.remove_tables().await?;
        let output = tokio::process::Command::new("ip")
            .args(["link", "delete", &bridge.cni.bridge])
            .output()
            .await
            .map_err(|err| failed(format!("cannot run ip to delete the bridge: {err}")))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && !stderr.contains("Cannot find device") {
            return Err(failed(format!("cannot delete bridge {}: {}", bridge.cni.bridge, stderr.trim())));
        }
        Ok(())
    }
}

impl Bridge {
    fn netns_path(&self, id: &str) -> PathBuf {
        self.dir.join("netns").join(id)
    }

    fn cache_path(&self, id: &str) -> PathBuf {
        self.dir.join("attachments").join(format!("{id}.json"))
    }

    async fn attach(&self, id: &str, policy: &NetworkPolicy, address: Option<Ipv4Addr>) -> Result<()> {
        let netns = self.netns_path(id);
        if !netns::is_pinned(&netns) {
            netns::create(netns.clone()).await?;
        }
        self.cni.add_loopback(id, &netns).await?;
        if policy.mode == NetworkMode::None {
            return Ok(());
        }
        self.connect(id, &netns, policy, address).await
    }

    /// `eth0` and the rules, or just the new rules when the interface exists.
    async fn connect(&self, id: &str, netns: &Path, policy: &NetworkPolicy, address: Option<Ipv4Addr>) -> Result<()> {
        let egress = egress(policy);
        let known = self.attachments.lock().expect("attachments").get(id).cloned();
        if let Some(attachment) = known {
            return self.firewall.set_egress(&port(id, &attachment)?, &egress).await;
        }
        let (result, attachment) = self.cni.add_bridge(id, netns, address).await?;
        let cached = CachedAttachment { result, attachment: attachment.clone() };
        let registered = async {
            write_cache(&self.cache_path(id), &cached).await?;
            self.firewall.attach(&port(id, &attachment)?, &egress).await
        };
        if let Err(err) = registered.await {
            self.undo_add(id, netns, &cached.result).await;
            return Err(err);
        }
        self.attachments.lock().expect("attachments").insert(id.to_owned(), attachment);
        Ok(())
    }

    async fn undo_add(&self, id: &str, netns: &Path, result: &Value) {
        if let Err(err) = self.cni.del_bridge(id, Some(netns), Some(result)).await {
            warn!(workspace_id = id, error = %err, "cannot undo a CNI ADD");
        }
        let _ = tokio::fs::remove_file(self.cache_path(id)).await;
    }

    /// Removes `eth0`, its address and rules; the namespace stays. Idempotent.
    async fn disconnect(&self, id: &str) -> Result<()> {
        let cached = read_cache(&self.cache_path(id)).await;
        let holds_address = self.ipam_ids().await.contains(id);
        if cached.is_none() && !holds_address {
            return Ok(());
        }
        if let Some(cached) = &cached {
            self.firewall.detach(&port(id, &cached.attachment)?).await?;
        }
        let netns = self.netns_path(id);
        let live = netns::is_pinned(&netns).then_some(netns.as_path());
        self.cni.del_bridge(id, live, cached.as_ref().map(|cached| &cached.result)).await?;
        remove_if_present(&self.cache_path(id)).await?;
        self.attachments.lock().expect("attachments").remove(id);
        Ok(())
    }

    async fn detach(&self, id: &str) -> Result<()> {
        self.disconnect(id).await?;
        let netns = self.netns_path(id);
        tokio::task::spawn_blocking(move || netns::remove(&netns))
            .await
            .map_err(|err| failed(format!("removing a network namespace panicked: {err}")))?
    }

    async fn reconcile(&self, owned: &[(WorkspaceId, NetworkPolicy)]) -> Result<NetworkReport> {
        let mut report = NetworkReport::default();
        // The tables first (a reboot flushed them): the steps below register ports in them.
        // Meanwhile every workspace is unregistered, which the firewall drops, never opens.
        self.firewall.sync(&[]).await?;
        let owned_ids: HashSet<&str> = owned.iter().map(|(id, _)| id.as_str()).collect();
        let mut leftovers: HashSet<String> = self.ipam_ids().await;
        leftovers.extend(file_stems(&self.dir.join("netns"), "").await);
        leftovers.extend(file_stems(&self.dir.join("attachments"), ".json").await);
        for id in leftovers.iter().filter(|id| !owned_ids.contains(id.as_str())) {
            warn!(workspace_id = %id, "removing the network of a workspace berth does not have");
            self.detach(id).await?;
            report.removed += 1;
        }
        let mut ports = Vec::new();
        for (id, policy) in owned {
            let id = id.as_str();
            let netns = self.netns_path(id);
            let cached = read_cache(&self.cache_path(id)).await;
            let pinned = netns::is_pinned(&netns);
            match (&cached, pinned) {
                (Some(cached), true) if policy.mode != NetworkMode::None => {
                    self.attachments.lock().expect("attachments").insert(id.to_owned(), cached.attachment.clone());
                }
                (None, true) if policy.mode == NetworkMode::None => {}
                _ => {
                    // A reboot (the namespace is an empty file), or a crash between steps: make
                    // it again, on the address it had.
                    let address = cached.as_ref().map(|cached| cached.attachment.address);
                    self.disconnect(id).await?;
                    self.attach(id, policy, address).await?;
                    report.restored += 1;
                }
            }
            let attachment = self.attachments.lock().expect("attachments").get(id).cloned();
            if let Some(attachment) = attachment {
                ports.push((port(id, &attachment)?, egress(policy)));
            }
        }
        self.firewall.sync(&ports).await?;
        Ok(report)
    }

    /// The workspace ids host-local holds addresses for (its files are named after the address
    /// and hold the container id on their first line).
    async fn ipam_ids(&self) -> HashSet<String> {
        let dir = self.cni.ipam_dir.join(&self.cni.bridge);
        let mut ids = HashSet::new();
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else { return ids };
        while let Ok(Some(entry)) = entries.next_entry().await {
            if entry.file_name().to_string_lossy().parse::<IpAddr>().is_err() {
                continue; // `lock`, `last_reserved_ip.0`
            }
            if let Ok(text) = tokio::fs::read_to_string(entry.path()).await
                && let Some(id) = text.lines().next().map(str::trim).filter(|id| !id.is_empty())
            {
                ids.insert(id.to_owned());
            }
        }
        ids
    }
}

fn port(id: &str, attachment: &Attachment) -> Result<Port> {
    let mac = attachment.mac_address.parse().map_err(|_| {
        failed(format!("the CNI result of workspace {id} has no usable MAC address ({:?})", attachment.mac_address))
    })?;
    Ok(Port { workspace_id: id.to_owned(), address: attachment.address, host_veth: attachment.host_veth.clone(), mac })
}

fn egress(policy: &NetworkPolicy) -> Egress {
    let cidrs = || policy.cidrs.iter().copied().map(IpNet::V4).collect();
    match policy.mode {
        NetworkMode::Open => Egress::Open,
        NetworkMode::Allowlist => Egress::Allowlist(cidrs()),
        NetworkMode::Denylist => Egress::Denylist(cidrs()),
        NetworkMode::None => Egress::Blocked,
    }
}

/// The MTU of the interface the default route leaves by (the bridge must not exceed it, or large
/// downloads stall on PMTU discovery); 1500 without a default route.
async fn uplink_mtu() -> u32 {
    async fn ip_json(args: &[&str]) -> Option<Value> {
        let output = tokio::process::Command::new("ip").arg("-j").args(args).output().await.ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }
    let device = ip_json(&["route", "show", "default"]).await;
    let Some(device) = device.as_ref().and_then(|routes| routes[0]["dev"].as_str()) else {
        return 1500;
    };
    let link = ip_json(&["link", "show", "dev", device]).await;
    link.and_then(|links| links[0]["mtu"].as_u64()).and_then(|mtu| u32::try_from(mtu).ok()).unwrap_or(1500)
}

async fn write_cache(path: &Path, cached: &CachedAttachment) -> Result<()> {
    let fail = |err: std::io::Error| failed(format!("cannot write {}: {err}", path.display()));
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(fail)?;
    }
    let text =
        serde_json::to_vec(cached).map_err(|err| Error::internal(format!("cannot encode a CNI result: {err}")))?;
    let partial = path.with_extension("json.partial");
    tokio::fs::write(&partial, text).await.map_err(fail)?;
    tokio::fs::rename(&partial, path).await.map_err(fail)
}

async fn read_cache(path: &Path) -> Option<CachedAttachment> {
    let text = tokio::fs::read(path).await.ok()?;
    match serde_json::from_slice(&text) {
        Ok(cached) => Some(cached),
        Err(err) => {
            warn!(path = %path.display(), error = %err, "ignoring an unreadable CNI result");
            None
        }
    }
}

async fn remove_if_present(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(failed(format!("cannot remove {}: {err}", path.display())))
        }
        _ => Ok(()),
    }
}

/// The names in `dir` ending in `suffix`, without it (workspace ids).
async fn file_stems(dir: &Path, suffix: &str) -> Vec<String> {
    let mut stems = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return stems };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(suffix).filter(|stem| WorkspaceId::parse(stem).is_ok()) {
            stems.push(stem.to_owned());
        }
    }
    stems
}

fn failed(message: String) -> Error {
    Error::new(Reason::NetworkSetupFailed, message)
}
