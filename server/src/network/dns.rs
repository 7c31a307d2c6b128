//! The resolv.conf every workspace gets: the servers from `--dns`, or the host's upstream servers
//! without loopback entries (a workspace cannot reach the host's 127.0.0.53; systemd-resolved
//! keeps its real upstreams in /run/systemd/resolve/resolv.conf).

use std::net::IpAddr;
use std::path::Path;

/// Where the host keeps its resolver configuration, in the order they are read.
const HOST_FILES: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// The servers and the file content for workspaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolver {
    pub servers: Vec<IpAddr>,
    pub resolv_conf: String,
}

impl Resolver {
    /// From `--dns` when given, else from the host's files.
    pub fn new(configured: &[IpAddr]) -> Self {
        if !configured.is_empty() {
            return Self::from_parts(configured.to_vec(), &[]);
        }
        let mut fallback = None;
        for file in HOST_FILES {
            let Ok(text) = std::fs::read_to_string(Path::new(file)) else { continue };
            let (servers, other_lines) = parse(&text);
            let resolver = Self::from_parts(servers, &other_lines);
            if !resolver.servers.is_empty() {
                return resolver;
            }
            fallback.get_or_insert(resolver);
        }
        fallback.unwrap_or_else(|| Self::from_parts(Vec::new(), &[]))
    }

    fn from_parts(servers: Vec<IpAddr>, other_lines: &[String]) -> Self {
        let servers: Vec<IpAddr> = servers.into_iter().filter(|server| !server.is_loopback()).collect();
        let mut resolv_conf = String::from("# Written by berth for this workspace.\n");
        if servers.is_empty() {
            resolv_conf.push_str("# The host has no DNS server a workspace can reach: start berth with --dns.\n");
        }
        for server in &servers {
            resolv_conf.push_str(&format!("nameserver {server}\n"));
        }
        for line in other_lines {
            resolv_conf.push_str(line);
            resolv_conf.push('\n');
        }
        Self { servers, resolv_conf }
    }
}

/// The `nameserver` addresses and the `search` / `options` lines of a resolv.conf.
fn parse(text: &str) -> (Vec<IpAddr>, Vec<String>) {
    let mut servers = Vec::new();
    let mut other = Vec::new();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // A scoped IPv6 address (fe80::1%eth0) names a host interface: useless inside.
                if let Some(Ok(server)) = words.next().map(str::parse::<IpAddr>) {
                    servers.push(server);
                }
            }
            Some("search" | "domain" | "options") => other.push(line.to_owned()),
            _ => {}
        }
    }
    (servers, other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_are_dropped_and_search_and_options_kept() {
        let (servers, other) = parse(
            "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\noptions edns0 trust-ad\nsearch corp.example\nnameserver ::1\nnameserver fe80::1%eth0\n",
        );
        let resolver = Resolver::from_parts(servers, &other);
        assert_eq!(resolver.servers, ["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            resolver.resolv_conf,
            "# Written by berth for this workspace.\nnameserver 10.0.0.2\noptions edns0 trust-ad\nsearch corp.example\n"
        );
    }

    #[test]
    fn configured_servers_win_and_no_server_at_all_says_what_to_do() {
        let resolver = Resolver::new(&["198.51.100.53".parse().unwrap()]);
        assert_eq!(resolver.resolv_conf, "# Written by berth for this workspace.\nnameserver 198.51.100.53\n");
        let none = Resolver::from_parts(vec!["127.0.0.53".parse().unwrap()], &[]);
        assert!(none.servers.is_empty());
        assert!(none.resolv_conf.contains("--dns"), "{}", none.resolv_conf);
    }
}
