//! berth's CNI runner: the `loopback` and `bridge` (with `host-local` IPAM) plugins invoked the
//! way the CNI spec describes (environment plus the network config on stdin, the result on
//! stdout). No well-kept Rust crate does this (see ../shared/notes/network.md: `rust-cni` is a
//! one-author sync crate with string errors); the protocol a runtime needs is this small.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::error::{Error, Reason, Result};

/// The CNI version berth speaks (Debian's plugins 1.1.1 support 0.1.0 to 1.0.0).
const CNI_VERSION: &str = "1.0.0";

/// The workspace's interface on the bridge.
pub const INTERFACE: &str = "eth0";

/// How to run the plugins and the one network they make.
#[derive(Clone, Debug)]
pub struct Cni {
    pub bin_dir: PathBuf,
    /// host-local's `dataDir`: one file per allocated address.
    pub ipam_dir: PathBuf,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// What the bridge plugin made for a workspace, read from its result.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub address: Ipv4Addr,
    pub prefix_length: u8,
    pub gateway: Ipv4Addr,
    pub mac_address: String,
    /// The host end of the workspace's veth pair (on the bridge).
    pub host_veth: String,
}

impl Cni {
    /// Checks that the plugins berth runs are there, so a missing package fails the start, not
    /// every create.
    pub fn check_plugins(&self) -> std::result::Result<(), String> {
        for plugin in ["loopback", "bridge", "host-local"] {
            let path = self.bin_dir.join(plugin);
            if !path.is_file() {
                return Err(format!(
                    "CNI plugin {} is missing: install containernetworking-plugins, pass --cni-bin-dir, or run with --network none",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    /// `lo` up inside the namespace.
    pub async fn add_loopback(&self, id: &str, netns: &Path) -> Result<()> {
        let config = json!({"cniVersion": CNI_VERSION, "name": "lo", "type": "loopback"});
        self.invoke("ADD", id, Some(netns), "lo", "", &config).await.map(drop)
    }

    /// `eth0` on the bridge with an address from host-local (`address` when given: the one the
    /// workspace had before a host reboot); returns the raw result (kept for the DEL) and what
    /// it says.
    pub async fn add_bridge(&self, id: &str, netns: &Path, address: Option<Ipv4Addr>) -> Result<(Value, Attachment)> {
        // host-local takes a wanted address from CNI_ARGS (`IP=`).
        let args = address.map(|address| format!("IgnoreUnknown=1;IP={address}")).unwrap_or_default();
        let result = self.invoke("ADD", id, Some(netns), INTERFACE, &args, &self.bridge_config(None)).await?;
        let attachment = parse_result(&result).map_err(|why| {
            failed(format!("the bridge plugin's result for workspace {id} is not usable ({why}): {result}"))
        })?;
        Ok((result, attachment))
    }

    /// Removes `eth0` and releases its address. `prev_result` is the cached ADD result (the
    /// plugins learn what to undo from it); the namespace may be gone, the address is released
    /// all the same.
    pub async fn del_bridge(&self, id: &str, netns: Option<&Path>, prev_result: Option<&Value>) -> Result<()> {
        self.invoke("DEL", id, netns, INTERFACE, "", &self.bridge_config(prev_result)).await.map(drop)
    }

    fn bridge_config(&self, prev_result: Option<&Value>) -> Value {
        let mut config = json!({
            "cniVersion": CNI_VERSION,
            "name": self.bridge,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            // berth's nftables table masquerades the whole subnet with one rule (per-workspace
            // chains cost ~40 ms per ADD/DEL and leak when a DEL meets a dead netns).
            "ipMasq": false,
            "mtu": self.mtu,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet.to_string(), "gateway": self.gateway.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.ipam_dir,
            },
        });
        if let Some(prev) = prev_result {
            config["prevResult"] = prev.clone();
        }
        config
    }

    async fn invoke(
        &self,
        command: &str,
        id: &str,
        netns: Option<&Path>,
        ifname: &str,
        args: &str,
        config: &Value,
    ) -> Result<Value> {
        let plugin = config["type"].as_str().unwrap_or_default().to_owned();
        let program = self.bin_dir.join(&plugin);
        let mut child = tokio::process::Command::new(&program)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns.map(Path::as_os_str).unwrap_or_default())
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", &self.bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| failed(format!("cannot run CNI plugin {}: {err}", program.display())))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = config.to_string();
        let write = async move {
            let written = stdin.write_all(input.as_bytes()).await;
            drop(stdin);
            written
        };
        let (written, output) = tokio::join!(write, child.wait_with_output());
        let output = output.map_err(|err| failed(format!("CNI plugin {plugin} {command} failed to run: {err}")))?;
        if !output.status.success() {
            return Err(plugin_error(&plugin, command, id, &output));
        }
        written.map_err(|err| failed(format!("cannot send CNI plugin {plugin} its config: {err}")))?;
        if output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&output.stdout).map_err(|err| {
            failed(format!(
                "CNI plugin {plugin} {command} printed no JSON result ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            ))
        })
    }
}

/// A plugin's error (`{"code", "msg", "details"}` on stdout); an exhausted range is the caller's
/// limit, anything else the host's problem.
fn plugin_error(plugin: &str, command: &str, id: &str, output: &std::process::Output) -> Error {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (msg, details) = match serde_json::from_str::<Value>(&stdout) {
        Ok(error) => (
            error["msg"].as_str().unwrap_or_default().to_owned(),
            error["details"].as_str().unwrap_or_default().to_owned(),
        ),
        Err(_) => (stdout.trim().to_owned(), String::new()),
    };
    let text = [msg.as_str(), details.as_str(), stderr.trim()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if text.contains("no IP addresses available") {
        return Error::new(
            Reason::ResourceLimitExceeded,
            format!(
                "no address is left in berth's workspace subnet for workspace {id} ({text}); delete workspaces or give the server a larger --network-subnet"
            ),
        );
    }
    failed(format!("CNI plugin {plugin} {command} for workspace {id} failed ({}): {text}", output.status))
}

/// Reads the workspace's address, gateway, MAC and host veth from a CNI 1.0 result.
fn parse_result(result: &Value) -> std::result::Result<Attachment, &'static str> {
    let interfaces = result["interfaces"].as_array().ok_or("no interfaces")?;
    let inside = interfaces
        .iter()
        .position(|interface| {
            interface["name"] == INTERFACE && interface["sandbox"].as_str().is_some_and(|s| !s.is_empty())
        })
        .ok_or("no eth0 in the namespace")?;
    let ip = result["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter().find(|ip| {
                ip["interface"].as_u64() == Some(inside as u64)
                    && ip["address"].as_str().is_some_and(|a| !a.contains(':'))
            })
        })
        .ok_or("no IPv4 address on eth0")?;
    let address: Ipv4Net = ip["address"].as_str().unwrap_or_default().parse().map_err(|_| "a malformed address")?;
    let gateway: Ipv4Addr = ip["gateway"].as_str().unwrap_or_default().parse().map_err(|_| "a malformed gateway")?;
    // The bridge plugin lists the bridge, then the host veth (no sandbox), then eth0.
    let host_veth = interfaces
        .iter()
        .take(inside)
        .filter(|interface| interface["sandbox"].as_str().is_none_or(str::is_empty))
        .filter_map(|interface| interface["name"].as_str())
        .next_back()
        .filter(|name| !name.is_empty())
        .ok_or("no host veth")?;
    Ok(Attachment {
        address: address.addr(),
        prefix_length: address.prefix_len(),
        gateway,
        mac_address: interfaces[inside]["mac"].as_str().unwrap_or_default().to_owned(),
        host_veth: host_veth.to_owned(),
    })
}

fn failed(message: String) -> Error {
    Error::new(Reason::NetworkSetupFailed, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_result_gives_the_address_gateway_mac_and_host_veth() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "berth0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1a2b3c4d", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/var/lib/berth/network/netns/bot"}
            ],
            "ips": [{"interface": 2, "address": "10.231.0.5/16", "gateway": "10.231.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}]
        });
        let attachment = parse_result(&result).unwrap();
        assert_eq!(
            attachment,
            Attachment {
                address: "10.231.0.5".parse().unwrap(),
                prefix_length: 16,
                gateway: "10.231.0.1".parse().unwrap(),
                mac_address: "cc:cc:cc:cc:cc:cc".to_owned(),
                host_veth: "veth1a2b3c4d".to_owned(),
            }
        );
    }

    #[test]
    fn a_result_without_eth0_or_an_ipv4_address_is_refused() {
        let no_eth0 = json!({"interfaces": [{"name": "berth0"}], "ips": []});
        assert_eq!(parse_result(&no_eth0), Err("no eth0 in the namespace"));
        let v6_only = json!({
            "interfaces": [{"name": "berth0"}, {"name": "veth0"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"interface": 2, "address": "fd00::2/64", "gateway": "fd00::1"}]
        });
        assert_eq!(parse_result(&v6_only), Err("no IPv4 address on eth0"));
    }

    #[test]
    fn a_plugin_out_of_addresses_is_resource_exhausted() {
        let output = std::process::Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(256),
            stdout: br#"{"code": 999, "msg": "failed to allocate for range 0: no IP addresses available in range set: 10.231.0.1-10.231.0.6"}"#.to_vec(),
            stderr: Vec::new(),
        };
        let err = plugin_error("bridge", "ADD", "bot", &output);
        assert_eq!(err.reason(), Reason::ResourceLimitExceeded);
        assert!(err.message().contains("--network-subnet"), "{err}");
        let other = std::process::Output { stdout: br#"{"code": 11, "msg": "boom"}"#.to_vec(), ..output };
        let err = plugin_error("bridge", "ADD", "bot", &other);
        assert_eq!(err.reason(), Reason::NetworkSetupFailed);
        assert!(err.message().contains("boom") && err.message().contains("bridge ADD"), "{err}");
    }
}
