//! The network flags of `berth create` and `berth update` (`--network none|open`, `--allow CIDR`,
//! `--deny CIDR`) and how `berth get` shows a workspace's network.

use berth_api::v1 as pb;
use clap::{Args, ValueEnum};

/// `--network`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Everything outside the host (the server's default)
    Open,
    /// Loopback only
    None,
}

/// The flags; none given leaves the policy to the server (create) or as it is (update).
#[derive(Args, Debug, Default)]
pub struct NetworkArgs {
    /// Egress: `open` (everything outside the host) or `none` (loopback only)
    #[arg(long, value_enum, conflicts_with_all = ["allow", "deny"])]
    pub network: Option<ModeArg>,
    /// Reach only this IPv4 network, ADDRESS[/PREFIX] (repeatable; DNS stays allowed)
    #[arg(long, value_name = "CIDR", conflicts_with = "deny")]
    pub allow: Vec<String>,
    /// Reach everything but this IPv4 network, ADDRESS[/PREFIX] (repeatable)
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<String>,
}

impl NetworkArgs {
    /// The policy the flags ask for; None when no flag was given.
    pub fn policy(&self) -> Option<pb::NetworkPolicy> {
        let (mode, cidrs) = match (self.network, self.allow.is_empty(), self.deny.is_empty()) {
            (Some(ModeArg::Open), _, _) => (pb::NetworkMode::Open, Vec::new()),
            (Some(ModeArg::None), _, _) => (pb::NetworkMode::None, Vec::new()),
            (None, false, _) => (pb::NetworkMode::Allowlist, self.allow.clone()),
            (None, true, false) => (pb::NetworkMode::Denylist, self.deny.clone()),
            (None, true, true) => return None,
        };
        Some(pb::NetworkPolicy { mode: mode.into(), cidrs })
    }
}

/// `ALLOWLIST 203.0.113.0/24,198.51.100.7/32`, `OPEN`, `NONE`.
pub fn policy_text(policy: Option<&pb::NetworkPolicy>) -> String {
    let Some(policy) = policy else { return String::new() };
    let mode = policy.mode().as_str_name().trim_start_matches("NETWORK_MODE_");
    if policy.cidrs.is_empty() { mode.to_owned() } else { format!("{mode} {}", policy.cidrs.join(",")) }
}

/// `10.231.0.5/16 via 10.231.0.1`, or `none`.
pub fn address_text(network: Option<&pb::WorkspaceNetwork>) -> String {
    match network {
        Some(network) if !network.address.is_empty() => {
            format!("{}/{} via {}", network.address, network.prefix_length, network.gateway)
        }
        _ => "none (loopback only)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        network: NetworkArgs,
    }

    fn policy(args: &[&str]) -> Option<pb::NetworkPolicy> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap().network.policy()
    }

    #[test]
    fn flags_become_the_policy_and_conflicting_ones_are_refused() {
        assert_eq!(policy(&[]), None);
        assert_eq!(policy(&["--network", "none"]).unwrap().mode(), pb::NetworkMode::None);
        assert_eq!(policy(&["--network", "open"]).unwrap().mode(), pb::NetworkMode::Open);
        let allow = policy(&["--allow", "203.0.113.0/24", "--allow", "198.51.100.7"]).unwrap();
        assert_eq!((allow.mode(), allow.cidrs.len()), (pb::NetworkMode::Allowlist, 2));
        let deny = policy(&["--deny", "203.0.113.0/24"]).unwrap();
        assert_eq!(policy_text(Some(&deny)), "DENYLIST 203.0.113.0/24");
        for bad in [&["--allow", "a", "--deny", "b"][..], &["--network", "none", "--allow", "a"]] {
            assert!(Cli::try_parse_from(std::iter::once("t").chain(bad.iter().copied())).is_err(), "{bad:?}");
        }
    }
}
