//! Workspace networking on the host: berth's nftables firewall.

mod firewall;

pub use firewall::{Egress, Firewall, FirewallConfig, MacAddr, Port};
