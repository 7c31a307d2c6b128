//! berth's firewall: two nftables tables owned by berth, written through `nft -j` (nftables' JSON
//! interface) from the `nftables` crate's typed schema.
//!
//! `table inet <table>` masquerades the workspace subnet, keeps workspaces away from every host
//! service (IPv4 and IPv6, any host address), never forwards IPv6 from the bridge, keeps the
//! outside from opening connections to workspaces, and sends what a workspace forwards to its own
//! egress chain through the verdict map `egress_by_ip`; a source address missing from the map is
//! dropped (default deny).
//!
//! `table bridge <table>_guard` pins every registered bridge port (a host veth in the set `ports`)
//! to its workspace's MAC and IPv4 address, so a workspace with NET_RAW can neither forge another
//! source nor poison the bridge's MAC table, and keeps ports from reaching each other at the
//! bridge layer, which works without br_netfilter. Only the ports in the set are touched, never
//! another bridge's veths (Docker's are named veth* too).
//!
//! Every change is one nft transaction, so it applies whole or not at all (a policy is replaced
//! without a moment where the old chain is gone and traffic is unrestricted), and every change is
//! idempotent: nft 1.0.6 has no `destroy`, so an object is `add`ed (a no-op when it exists) right
//! before it is flushed or deleted in the same transaction.
//!
//! A workspace's egress chain is named after its address (`egress_10_231_0_5`), so the map element
//! for an address always names the same chain: adding it again never conflicts with an element
//! some earlier workspace with that address left behind (a map element that exists with other
//! data makes `add element` fail with EBUSY).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use nftables::expr::{CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem, Verdict};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Match, Operator, Reject, RejectType, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Reason, Result};

#[cfg(test)]
#[path = "firewall_tests.rs"]
mod tests;

/// The verdict map from a workspace's address to a jump to its egress chain.
const EGRESS_MAP: &str = "egress_by_ip";
/// The chain every packet from the bridge to the host itself goes through.
const FROM_WORKSPACES: &str = "from_workspaces";
/// Bridge ports (host veth names) the guard pins; frames from any other port are left alone.
const PORTS: &str = "ports";
/// `ifname . ipv4_addr`: the only IPv4 source (and ARP sender) each port may use.
const PORT_IP: &str = "port_ip";
/// `ifname . ether_addr`: the only source MAC each port may use.
const PORT_MAC: &str = "port_mac";

/// nft's named priorities: `filter` is 0 for inet and -200 for bridge, `srcnat` is 100.
const PRIORITY_FILTER: i32 = 0;
const PRIORITY_SRCNAT: i32 = 100;
const PRIORITY_BRIDGE_FILTER: i32 = -200;

/// Linux interface names have at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// Where and how the firewall applies.
#[derive(Clone, Debug)]
pub struct FirewallConfig {
    /// Name of the `inet` table (berth uses "berth"); the bridge table is `<table>_guard`.
    pub table: String,
    /// The bridge the workspaces' veths are attached to.
    pub bridge: String,
    /// The workspace subnet (what is masqueraded).
    pub subnet: Ipv4Net,
    /// The bridge's address in the subnet.
    pub gateway: Ipv4Addr,
    /// Lets workspaces on the bridge reach each other; isolated otherwise.
    pub allow_inter_workspace: bool,
    /// The resolvers workspaces use: always reachable under an allowlist, and reachable on the
    /// host itself only when the gateway is one of them (a resolver runs on the bridge).
    pub dns_servers: Vec<IpAddr>,
    /// The nft program and leading arguments: `["nft"]`, or e.g. `["nsenter", "--net=FILE",
    /// "nft"]` to act on another network namespace.
    pub nft: Vec<String>,
}

/// A workspace's port on the bridge, from its CNI result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The workspace it belongs to (shown in the rules' comments and in errors).
    pub workspace_id: String,
    /// The workspace's IPv4 address (its eth0).
    pub address: Ipv4Addr,
    /// The host end of the workspace's veth, a port of the bridge.
    pub host_veth: String,
    /// The MAC address of the workspace's eth0 (the CNI result's interface with a sandbox).
    pub mac: MacAddr,
}

/// An Ethernet address, written `02:42:ac:11:00:02`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid =
            || Error::new(Reason::InvalidArgument, format!("{text:?} is not a MAC address such as 02:42:ac:11:00:02"));
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 {
                return Err(invalid());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What a workspace may reach beyond the bridge. Traffic between workspaces is governed by
/// [`FirewallConfig::allow_inter_workspace`] alone, and the host by the host protection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Egress {
    /// Everything.
    Open,
    /// Only these IPv4 CIDRs, plus DNS to the configured resolvers; the rest is rejected.
    Allowlist(Vec<IpNet>),
    /// Everything but these IPv4 CIDRs.
    Denylist(Vec<IpNet>),
    /// Nothing is forwarded at all.
    Blocked,
}

impl Egress {
    /// Checks the CIDRs: only IPv4, because a workspace has only an IPv4 address and no IPv6 is
    /// ever forwarded from the bridge, so an IPv6 entry could never match and would only mislead.
    pub fn validate(&self) -> Result<()> {
        self.ipv4_cidrs().map(drop)
    }

    /// The listed CIDRs, host bits cleared, overlaps and neighbours merged (an nft interval set
    /// rejects overlapping elements).
    fn ipv4_cidrs(&self) -> Result<Vec<Ipv4Net>> {
        let cidrs = match self {
            Egress::Open | Egress::Blocked => return Ok(Vec::new()),
            Egress::Allowlist(cidrs) | Egress::Denylist(cidrs) => cidrs,
        };
        let mut ipv4 = Vec::with_capacity(cidrs.len());
        for cidr in cidrs {
            match cidr {
                IpNet::V4(net) => ipv4.push(*net),
                IpNet::V6(net) => {
                    return Err(Error::new(
                        Reason::InvalidArgument,
                        format!(
                            "egress CIDR {net} is IPv6, but workspaces have only IPv4 addresses and never reach IPv6 destinations; list IPv4 CIDRs only"
                        ),
                    ));
                }
            }
        }
        Ok(Ipv4Net::aggregate(&ipv4))
    }
}

/// berth's nftables tables. Every method is one atomic nft transaction.
#[derive(Clone, Debug)]
pub struct Firewall {
    config: FirewallConfig,
    guard_table: String,
}

impl Firewall {
    /// Checks the configuration; touches nothing yet.
    pub fn new(config: FirewallConfig) -> Result<Self> {
        let invalid = |message: String| Err(Error::new(Reason::InvalidArgument, message));
        if config.nft.is_empty() {
            return invalid("the nft command is empty; give at least the program, e.g. nft".into());
        }
        let table_ok = config.table.len() <= 64
            && config.table.starts_with(|c: char| c.is_ascii_alphabetic())
            && config.table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !table_ok {
            return invalid(format!(
                "nftables table name {:?} is invalid; use up to 64 letters, digits and _, starting with a letter",
                config.table
            ));
        }
        if let Err(message) = check_ifname(&config.bridge) {
            return invalid(format!("bridge name {:?} {message}", config.bridge));
        }
        let subnet = config.subnet.trunc();
        let usable = subnet.contains(&config.gateway)
            && config.gateway != subnet.network()
            && config.gateway != subnet.broadcast();
        if !usable {
            return invalid(format!(
                "gateway {} is not a host address of the workspace subnet {subnet}",
                config.gateway
            ));
        }
        let guard_table = format!("{}_guard", config.table);
        Ok(Self { config: FirewallConfig { subnet, ..config }, guard_table })
    }

    /// Creates both tables from scratch with exactly these ports and policies: whatever is there
    /// now (elements no workspace owns, a flushed or edited table) is replaced. Used at start and
    /// by the boot reconcile.
    pub async fn sync(&self, ports: &[(Port, Egress)]) -> Result<()> {
        for (index, (port, egress)) in ports.iter().enumerate() {
            self.check_port(port)?;
            egress.validate()?;
            if let Some((other, _)) = ports[..index]
                .iter()
                .find(|(other, _)| other.address == port.address || other.host_veth == port.host_veth)
            {
                return Err(Error::internal(format!(
                    "workspaces {:?} ({}, {}) and {:?} ({}, {}) share an address or a veth",
                    other.workspace_id, other.address, other.host_veth, port.workspace_id, port.address, port.host_veth
                )));
            }
        }
        let mut tx = Transaction::default();
        self.recreate_inet_table(&mut tx);
        self.recreate_guard_table(&mut tx);
        for (port, egress) in ports {
            self.add_guard_elements(&mut tx, port);
            self.replace_egress(&mut tx, port, egress)?;
        }
        self.apply(tx, || format!("create the nftables tables {} and {}", self.config.table, self.guard_table)).await
    }

    /// Registers the port (pinned to its MAC and address) and its egress policy. Call it before
    /// the workspace's task starts: until then its traffic is not forwarded.
    pub async fn attach(&self, port: &Port, egress: &Egress) -> Result<()> {
        self.check_port(port)?;
        let mut tx = Transaction::default();
        self.add_guard_elements(&mut tx, port);
        self.replace_egress(&mut tx, port, egress)?;
        self.apply(tx, || {
            format!("register workspace {:?}'s network port {} ({})", port.workspace_id, port.host_veth, port.address)
        })
        .await
    }

    /// Replaces the port's egress policy live (existing connections are judged by the new one).
    pub async fn set_egress(&self, port: &Port, egress: &Egress) -> Result<()> {
        self.check_port(port)?;
        let mut tx = Transaction::default();
        self.replace_egress(&mut tx, port, egress)?;
        self.apply(tx, || format!("set workspace {:?}'s egress policy", port.workspace_id)).await
    }

    /// Removes everything [`Firewall::attach`] added for the port; succeeds when it is already
    /// gone, also when a table is missing altogether.
    pub async fn detach(&self, port: &Port) -> Result<()> {
        self.check_port(port)?;
        let what =
            || format!("remove workspace {:?}'s network port {} ({})", port.workspace_id, port.host_veth, port.address);
        let Err(error) = self.apply(self.detach_transaction(port, true, true), what).await else {
            return Ok(());
        };
        // A missing table holds nothing of the port: retry with the tables that exist.
        let (inet, guard) = self.tables_present().await?;
        if inet && guard {
            return Err(error);
        }
        if !inet && !guard {
            return Ok(());
        }
        self.apply(self.detach_transaction(port, inet, guard), what).await
    }

    /// Deletes both tables (for `berth serve --cleanup-network`); succeeds when they are gone.
    pub async fn remove_tables(&self) -> Result<()> {
        let mut tx = Transaction::default();
        for table in [self.inet_table(), self.guard_table_object()] {
            tx.add(NfListObject::Table(table.clone()));
            tx.push(NfCmd::Delete(NfListObject::Table(table)));
        }
        self.apply(tx, || format!("delete the nftables tables {} and {}", self.config.table, self.guard_table)).await
    }

    /// The registered ports as (host veth, address), sorted: the guard's `port_ip` elements.
    // Only the tests read it (what sync, attach and detach left registered).
    #[cfg(test)]
    pub async fn list_ports(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        let what = || format!("list the ports registered in nftables table bridge {}", self.guard_table);
        let output = self.run(&["-j", "list", "set", "bridge", &self.guard_table, PORT_IP], None, what).await?;
        let listing: Nftables<'_> = serde_json::from_str(&output).map_err(|err| {
            Error::new(
                Reason::NetworkSetupFailed,
                format!("cannot {}: nft printed JSON berth cannot read: {err}", what()),
            )
        })?;
        let mut ports = Vec::new();
        for object in listing.objects.iter() {
            let NfObject::ListObject(NfListObject::Set(set)) = object else { continue };
            for element in set.elem.iter().flat_map(|elements| elements.iter()) {
                ports.push(parse_port_ip(element).ok_or_else(|| {
                    Error::new(Reason::NetworkSetupFailed, format!("cannot {}: unexpected element {element:?}", what()))
                })?);
            }
        }
        ports.sort();
        Ok(ports)
    }

    fn check_port(&self, port: &Port) -> Result<()> {
        if let Err(message) = check_ifname(&port.host_veth) {
            return Err(Error::internal(format!(
                "workspace {:?}'s host veth name {:?} {message}",
                port.workspace_id, port.host_veth
            )));
        }
        if !self.config.subnet.contains(&port.address) || port.address == self.config.gateway {
            return Err(Error::internal(format!(
                "workspace {:?}'s address {} is not a workspace address of {}",
                port.workspace_id, port.address, self.config.subnet
            )));
        }
        Ok(())
    }

    fn inet_table(&self) -> Table<'static> {
        Table { family: NfFamily::INet, name: owned(&self.config.table), handle: None }
    }

    fn guard_table_object(&self) -> Table<'static> {
        Table { family: NfFamily::Bridge, name: owned(&self.guard_table), handle: None }
    }

    /// Add, delete, add: the table exists afterwards and is empty, whether or not it existed.
    fn recreate_table(tx: &mut Transaction, table: Table<'static>) {
        tx.add(NfListObject::Table(table.clone()));
        tx.push(NfCmd::Delete(NfListObject::Table(table.clone())));
        tx.add(NfListObject::Table(table));
    }

    fn recreate_inet_table(&self, tx: &mut Transaction) {
        let bridge = || string(&self.config.bridge);
        let from_bridge = || is(meta(MetaKey::Iifname), bridge());
        let to_bridge = || is(meta(MetaKey::Oifname), bridge());
        Self::recreate_table(tx, self.inet_table());
        tx.declare_verdict_map(NfFamily::INet, &self.config.table, EGRESS_MAP, "ipv4_addr");

        // Host protection: replies, DNS to a resolver on the gateway and IPv6 neighbour discovery
        // (so the resets below reach link-local senders) are all a workspace gets from the host.
        self.add_chain(tx, FROM_WORKSPACES, None);
        self.add_rule(tx, FROM_WORKSPACES, vec![ct_state_established_or_related(), accept()], None);
        if self.config.dns_servers.contains(&IpAddr::V4(self.config.gateway)) {
            let mut dns = vec![is(payload("ip", "daddr"), string(self.config.gateway.to_string()))];
            dns.extend(dns_port());
            dns.push(accept());
            self.add_rule(tx, FROM_WORKSPACES, dns, None);
        }
        let neighbour_discovery = anonymous_set(["nd-neighbor-solicit", "nd-neighbor-advert"].map(string));
        self.add_rule(tx, FROM_WORKSPACES, vec![is(payload("icmpv6", "type"), neighbour_discovery), accept()], None);
        let tcp_reset = Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None)));
        self.add_rule(tx, FROM_WORKSPACES, vec![is(meta(MetaKey::L4proto), string("tcp")), tcp_reset], None);
        self.add_rule(tx, FROM_WORKSPACES, vec![drop_verdict()], None);

        self.add_chain(tx, "input", Some((NfChainType::Filter, NfHook::Input, PRIORITY_FILTER)));
        self.add_rule(tx, "input", vec![from_bridge(), jump(FROM_WORKSPACES)], None);

        // Forwarding: the inet rules see bridged traffic only with br_netfilter, which is why the
        // guard table isolates workspaces again at the bridge layer.
        let forward = "forward";
        self.add_chain(tx, forward, Some((NfChainType::Filter, NfHook::Forward, PRIORITY_FILTER)));
        let between_workspaces = if self.config.allow_inter_workspace { accept() } else { drop_verdict() };
        self.add_rule(tx, forward, vec![from_bridge(), to_bridge(), between_workspaces], None);
        self.add_rule(
            tx,
            forward,
            vec![from_bridge(), is(meta(MetaKey::Nfproto), string("ipv6")), drop_verdict()],
            None,
        );
        let dispatch = Statement::VerdictMap(VerdictMap { key: payload("ip", "saddr"), data: set_ref(EGRESS_MAP) });
        self.add_rule(tx, forward, vec![from_bridge(), dispatch], None);
        // Reached only by sources without a map element: unregistered or forged.
        self.add_rule(tx, forward, vec![from_bridge(), drop_verdict()], None);
        self.add_rule(tx, forward, vec![to_bridge(), ct_state_established_or_related(), accept()], None);
        self.add_rule(tx, forward, vec![to_bridge(), drop_verdict()], None);

        let postrouting = "postrouting";
        self.add_chain(tx, postrouting, Some((NfChainType::NAT, NfHook::Postrouting, PRIORITY_SRCNAT)));
        let masquerade = vec![
            is(payload("ip", "saddr"), prefix(self.config.subnet)),
            is_not(payload("ip", "daddr"), prefix(self.config.subnet)),
            is_not(meta(MetaKey::Oifname), bridge()),
            Statement::Masquerade(None),
        ];
        self.add_rule(tx, postrouting, masquerade, None);
    }

    fn recreate_guard_table(&self, tx: &mut Transaction) {
        Self::recreate_table(tx, self.guard_table_object());
        let set = |name: &str, set_type: SetTypeValue<'static>| {
            NfListObject::Set(Box::new(Set {
                family: NfFamily::Bridge,
                table: owned(&self.guard_table),
                name: owned(name),
                set_type,
                ..Set::default()
            }))
        };
        tx.add(set(PORTS, SetTypeValue::Single(SetType::Ifname)));
        tx.add(set(PORT_IP, SetTypeValue::Concatenated(Cow::Owned(vec![SetType::Ifname, SetType::Ipv4Addr]))));
        tx.add(set(PORT_MAC, SetTypeValue::Concatenated(Cow::Owned(vec![SetType::Ifname, SetType::EtherAddr]))));

        let from_port = || is(meta(MetaKey::Iifname), set_ref(PORTS));
        let rule = |chain: &str, expr: Vec<Statement<'static>>| {
            NfListObject::Rule(Rule {
                family: NfFamily::Bridge,
                table: owned(&self.guard_table),
                chain: owned(chain),
                expr: Cow::Owned(expr),
                ..Rule::default()
            })
        };
        let prerouting = "prerouting";
        tx.add(self.base_chain(NfFamily::Bridge, &self.guard_table, prerouting, NfHook::Prerouting));
        let port_and = |field: Expression<'static>| concat(vec![meta(MetaKey::Iifname), field]);
        // Only IPv4, ARP and IPv6 (link-local, for neighbour discovery): no VLAN-tagged or other
        // frames that would carry an unchecked source.
        let allowed_types = anonymous_set(["ip", "arp", "ip6"].map(string));
        tx.add(rule(prerouting, vec![from_port(), is_not(payload("ether", "type"), allowed_types), drop_verdict()]));
        tx.add(rule(
            prerouting,
            vec![from_port(), is_not(port_and(payload("ether", "saddr")), set_ref(PORT_MAC)), drop_verdict()],
        ));
        tx.add(rule(
            prerouting,
            vec![from_port(), is_not(port_and(payload("ip", "saddr")), set_ref(PORT_IP)), drop_verdict()],
        ));
        tx.add(rule(
            prerouting,
            vec![from_port(), is_not(port_and(payload("arp", "saddr ip")), set_ref(PORT_IP)), drop_verdict()],
        ));

        let forward = "forward";
        tx.add(self.base_chain(NfFamily::Bridge, &self.guard_table, forward, NfHook::Forward));
        if !self.config.allow_inter_workspace {
            tx.add(rule(forward, vec![from_port(), is(meta(MetaKey::Oifname), set_ref(PORTS)), drop_verdict()]));
        }
    }

    fn base_chain(&self, family: NfFamily, table: &str, name: &str, hook: NfHook) -> NfListObject<'static> {
        let prio = if family == NfFamily::Bridge { PRIORITY_BRIDGE_FILTER } else { PRIORITY_FILTER };
        NfListObject::Chain(Chain {
            family,
            table: owned(table),
            name: owned(name),
            _type: Some(NfChainType::Filter),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        })
    }

    fn inet_chain(&self, name: &str) -> Chain<'static> {
        Chain { family: NfFamily::INet, table: owned(&self.config.table), name: owned(name), ..Chain::default() }
    }

    /// Adds an inet chain, a base chain (policy accept: other tables' traffic is not berth's
    /// business) when `hook` is given.
    fn add_chain(&self, tx: &mut Transaction, name: &str, hook: Option<(NfChainType, NfHook, i32)>) {
        let mut chain = self.inet_chain(name);
        if let Some((chain_type, hook, prio)) = hook {
            chain._type = Some(chain_type);
            chain.hook = Some(hook);
            chain.prio = Some(prio);
            chain.policy = Some(NfChainPolicy::Accept);
        }
        tx.add(NfListObject::Chain(chain));
    }

    fn add_rule(&self, tx: &mut Transaction, chain: &str, expr: Vec<Statement<'static>>, comment: Option<&str>) {
        tx.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: owned(&self.config.table),
            chain: owned(chain),
            expr: Cow::Owned(expr),
            comment: comment.map(owned),
            ..Rule::default()
        }));
    }

    fn guard_elements(&self, port: &Port) -> [NfListObject<'static>; 3] {
        let element = |name: &str, value: Expression<'static>| {
            NfListObject::Element(Element {
                family: NfFamily::Bridge,
                table: owned(&self.guard_table),
                name: owned(name),
                elem: Cow::Owned(vec![value]),
            })
        };
        let veth = || string(&port.host_veth);
        [
            element(PORTS, veth()),
            element(PORT_IP, concat(vec![veth(), string(port.address.to_string())])),
            element(PORT_MAC, concat(vec![veth(), string(port.mac.to_string())])),
        ]
    }

    fn add_guard_elements(&self, tx: &mut Transaction, port: &Port) {
        for element in self.guard_elements(port) {
            tx.add(element);
        }
    }

    fn egress_element(&self, port: &Port, with_verdict: bool) -> NfListObject<'static> {
        let address = string(port.address.to_string());
        let value = if with_verdict {
            let target = JumpTarget { target: owned(&egress_chain_name(port.address)) };
            Expression::List(vec![address, Expression::Verdict(Verdict::Jump(target))])
        } else {
            address
        };
        NfListObject::Element(Element {
            family: NfFamily::INet,
            table: owned(&self.config.table),
            name: owned(EGRESS_MAP),
            elem: Cow::Owned(vec![value]),
        })
    }

    /// Empties the port's egress chain (creating it if needed), fills it with the policy and
    /// points the port's map element at it, in the caller's transaction.
    fn replace_egress(&self, tx: &mut Transaction, port: &Port, egress: &Egress) -> Result<()> {
        let cidrs = egress.ipv4_cidrs()?;
        let chain = egress_chain_name(port.address);
        let comment = format!("workspace {}", port.workspace_id);
        tx.add(NfListObject::Chain(self.inet_chain(&chain)));
        tx.push(NfCmd::Flush(FlushObject::Chain(self.inet_chain(&chain))));
        let destinations = || anonymous_set(cidrs.iter().copied().map(prefix));
        let rules: Vec<Vec<Statement<'static>>> = match egress {
            Egress::Open => vec![vec![accept()]],
            Egress::Blocked => vec![vec![admin_prohibited()]],
            Egress::Denylist(_) => {
                let mut rules = Vec::new();
                if !cidrs.is_empty() {
                    rules.push(vec![is(payload("ip", "daddr"), destinations()), admin_prohibited()]);
                }
                rules.push(vec![accept()]);
                rules
            }
            Egress::Allowlist(_) => {
                let mut rules = Vec::new();
                let resolvers: Vec<Expression<'static>> = self
                    .config
                    .dns_servers
                    .iter()
                    .filter(|server| server.is_ipv4())
                    .map(|server| string(server.to_string()))
                    .collect();
                if !resolvers.is_empty() {
                    let mut dns = vec![is(payload("ip", "daddr"), anonymous_set(resolvers))];
                    dns.extend(dns_port());
                    dns.push(accept());
                    rules.push(dns);
                }
                if !cidrs.is_empty() {
                    rules.push(vec![is(payload("ip", "daddr"), destinations()), accept()]);
                }
                rules.push(vec![admin_prohibited()]);
                rules
            }
        };
        for rule in rules {
            self.add_rule(tx, &chain, rule, Some(&comment));
        }
        tx.add(self.egress_element(port, true));
        Ok(())
    }

    fn detach_transaction(&self, port: &Port, inet: bool, guard: bool) -> Transaction {
        let mut tx = Transaction::default();
        if guard {
            for element in self.guard_elements(port) {
                tx.add(element.clone());
                tx.push(NfCmd::Delete(element));
            }
        }
        if inet {
            // The chain is still referenced while the element exists, so the element goes first.
            let chain = egress_chain_name(port.address);
            tx.add(NfListObject::Chain(self.inet_chain(&chain)));
            tx.add(self.egress_element(port, true));
            tx.push(NfCmd::Delete(self.egress_element(port, false)));
            tx.push(NfCmd::Flush(FlushObject::Chain(self.inet_chain(&chain))));
            tx.push(NfCmd::Delete(NfListObject::Chain(self.inet_chain(&chain))));
        }
        tx
    }

    /// Whether the inet table and the guard table exist.
    async fn tables_present(&self) -> Result<(bool, bool)> {
        let what = || "list the nftables tables".to_string();
        let output = self.run(&["-j", "list", "tables"], None, what).await?;
        let listing: Nftables<'_> = serde_json::from_str(&output).map_err(|err| {
            Error::new(
                Reason::NetworkSetupFailed,
                format!("cannot {}: nft printed JSON berth cannot read: {err}", what()),
            )
        })?;
        let present = |wanted: &Table<'_>| {
            listing.objects.iter().any(|object| {
                matches!(object, NfObject::ListObject(NfListObject::Table(table))
                    if table.family == wanted.family && table.name == wanted.name)
            })
        };
        Ok((present(&self.inet_table()), present(&self.guard_table_object())))
    }

    async fn apply(&self, tx: Transaction, what: impl Fn() -> String) -> Result<()> {
        let payload = serde_json::to_string(&tx.document())
            .map_err(|err| Error::internal(format!("cannot {}: cannot encode the nft commands: {err}", what())))?;
        self.run(&["-j", "-f", "-"], Some(payload), what).await.map(drop)
    }

    /// Runs the configured nft command with `args`, feeding `stdin`; returns its stdout.
    async fn run(&self, args: &[&str], stdin: Option<String>, what: impl Fn() -> String) -> Result<String> {
        let Some((program, leading)) = self.config.nft.split_first() else {
            return Err(Error::internal("the nft command is empty"));
        };
        let command_line = || {
            let mut words = self.config.nft.clone();
            words.extend(args.iter().map(|arg| arg.to_string()));
            words.join(" ")
        };
        let failed = |detail: String| {
            Error::new(Reason::NetworkSetupFailed, format!("cannot {}: `{}` {detail}", what(), command_line()))
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(leading)
            .args(args)
            .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().map_err(|err| {
            let hint =
                if err.kind() == std::io::ErrorKind::NotFound { " (is the nftables package installed?)" } else { "" };
            failed(format!("could not start: {err}{hint}"))
        })?;
        if let Some(input) = stdin {
            let Some(mut pipe) = child.stdin.take() else {
                return Err(failed("has no stdin pipe".into()));
            };
            // nft reads all of its input before it writes anything, so this cannot deadlock.
            pipe.write_all(input.as_bytes()).await.map_err(|err| failed(format!("did not take its input: {err}")))?;
        }
        let output = child.wait_with_output().await.map_err(|err| failed(format!("failed: {err}")))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let hint = if stderr.contains("No such file or directory") {
                "; if berth's tables were removed or flushed, restarting berth recreates them"
            } else {
                ""
            };
            return Err(failed(format!("failed ({}): {}{hint}", output.status, stderr.trim())));
        }
        String::from_utf8(output.stdout).map_err(|err| failed(format!("printed non-UTF-8 output: {err}")))
    }
}

/// One nft transaction: the commands `nft -j -f -` applies atomically.
#[derive(Default)]
struct Transaction {
    commands: Vec<NftCommand>,
}

/// A command: typed by the `nftables` crate, or raw JSON where its schema has no word for it.
#[derive(Serialize)]
#[serde(untagged)]
enum NftCommand {
    Typed(NfObject<'static>),
    Raw(serde_json::Value),
}

#[derive(Serialize)]
struct Document<'a> {
    nftables: &'a [NftCommand],
}

impl Transaction {
    fn push(&mut self, command: NfCmd<'static>) {
        self.commands.push(NftCommand::Typed(NfObject::CmdObject(command)));
    }

    fn add(&mut self, object: NfListObject<'static>) {
        self.push(NfCmd::Add(object));
    }

    /// Declares a map whose values are verdicts. The crate's `Map` can only map to the data types
    /// of its `SetType` (addresses, ifnames, ...), which has no `verdict`
    /// (nftables-rs/nftables-rs#237, open), so this one object is written as nft's JSON directly.
    fn declare_verdict_map(&mut self, family: NfFamily, table: &str, name: &str, key_type: &str) {
        self.commands.push(NftCommand::Raw(serde_json::json!({
            "add": { "map": { "family": family, "table": table, "name": name, "type": key_type, "map": "verdict" } }
        })));
    }

    fn document(&self) -> Document<'_> {
        Document { nftables: &self.commands }
    }
}

/// The egress chain of a workspace address: `egress_10_231_0_5`.
fn egress_chain_name(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("egress_{a}_{b}_{c}_{d}")
}

fn check_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err("must have 1 to 15 bytes");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        return Err("must not contain /, :, spaces or control characters");
    }
    Ok(())
}

/// Reads a `port_ip` element, `{"concat": ["veth1", "10.231.0.5"]}`.
#[cfg(test)]
fn parse_port_ip(element: &Expression<'_>) -> Option<(String, Ipv4Addr)> {
    let Expression::Named(NamedExpression::Concat(parts)) = element else { return None };
    let [Expression::String(veth), Expression::String(address)] = parts.as_slice() else { return None };
    Some((veth.to_string(), address.parse().ok()?))
}

fn owned(text: &str) -> Cow<'static, str> {
    Cow::Owned(text.to_owned())
}

fn string(text: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(text.into()))
}

/// A reference to a named set or map: `@name`.
fn set_ref(name: &str) -> Expression<'static> {
    string(format!("@{name}"))
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: owned(protocol),
        field: owned(field),
    })))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

fn anonymous_set(items: impl IntoIterator<Item = Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(items.into_iter().map(SetItem::Element).collect()))
}

/// A CIDR as nft writes it: a plain address for a /32, a prefix otherwise.
fn prefix(net: Ipv4Net) -> Expression<'static> {
    if net.prefix_len() == 32 {
        return string(net.addr().to_string());
    }
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(net.network().to_string())),
        len: u32::from(net.prefix_len()),
    }))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::EQ })
}

fn is_not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::NEQ })
}

fn ct_state_established_or_related() -> Statement<'static> {
    let state = Expression::Named(NamedExpression::CT(CT { key: owned("state"), family: None, dir: None }));
    Statement::Match(Match {
        left: state,
        right: Expression::List(vec![string("established"), string("related")]),
        op: Operator::IN,
    })
}

/// `meta l4proto { tcp, udp } th dport 53`.
fn dns_port() -> [Statement<'static>; 2] {
    [
        is(meta(MetaKey::L4proto), anonymous_set(["tcp", "udp"].map(string))),
        is(payload("th", "dport"), Expression::Number(53)),
    ]
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop_verdict() -> Statement<'static> {
    Statement::Drop(None)
}

fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget { target: owned(chain) })
}

/// Rejected rather than dropped, so a client fails at once ("No route to host"), not on a timeout.
fn admin_prohibited() -> Statement<'static> {
    Statement::Reject(Some(Reject::new(Some(RejectType::ICMPX), Some(RejectCode::AdminProhibited))))
}
