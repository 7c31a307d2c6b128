//! Typed configuration: defaults < TOML file (`--config`) < `BERTH_*` environment < flags.
//!
//! clap resolves flag-over-environment for every setting; the file fills in what neither gave.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// The default gRPC / grpc-web listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// The default containerd socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The default containerd namespace.
pub const DEFAULT_NAMESPACE: &str = "berth";
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";
/// The image used when CreateWorkspace names none.
pub const DEFAULT_IMAGE: &str = "docker.io/library/debian:bookworm";
/// The AppArmor profile of workspaces: the one containerd's CRI plugin loads for its containers.
pub const DEFAULT_APPARMOR_PROFILE: &str = "cri-containerd.apparmor.d";
/// How many snapshots may stack on a workspace's image by default.
pub const DEFAULT_MAX_SNAPSHOT_DEPTH: u32 = 100;
/// The most snapshots a server may allow on an image: overlayfs stacks about 500 lower layers
/// (a 505-deep chain killed the shim), and an image brings up to 127 of its own.
pub const MAX_SNAPSHOT_DEPTH_LIMIT: u32 = 350;
/// How long one containerd call may take.
pub const DEFAULT_CONTAINERD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The most bytes of file content one import may extract: 20 GiB.
pub const DEFAULT_IMPORT_MAX_BYTES: u64 = 20 << 30;
/// The most entries one import may extract.
pub const DEFAULT_IMPORT_MAX_ENTRIES: u64 = 1_000_000;
/// How many events the events table keeps by default.
pub const DEFAULT_EVENT_RETENTION_COUNT: u64 = 100_000;
/// How many days events are kept by default.
pub const DEFAULT_EVENT_RETENTION_DAYS: u64 = 30;

/// How often a watched workspace's storage is measured by default: a measurement walks the
/// writable layer (~5 µs per file, so 10,000 files cost ~50 ms).
pub const DEFAULT_STORAGE_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest storage measurement interval: a day.
pub const MAX_STORAGE_SAMPLE_INTERVAL_SECS: u64 = 86_400;

/// The subnet workspaces get addresses from by default: inside 10.0.0.0/8 but away from the
/// ranges Docker (172.17.0.0/16 and up), podman (10.88.0.0/16) and most VPNs and clouds use.
pub const DEFAULT_NETWORK_SUBNET: &str = "10.231.0.0/16";
/// berth's bridge (and the name of its nftables tables).
pub const DEFAULT_BRIDGE_NAME: &str = "berth0";
/// Where Debian's containernetworking-plugins put the CNI plugins.
pub const DEFAULT_CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Log output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of `berth serve`, as flags and `BERTH_*` environment variables.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys in snake_case)
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC and grpc-web on [default: 127.0.0.1:50051]
    #[arg(long, env = "BERTH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// containerd's gRPC socket [default: /run/containerd/containerd.sock]
    #[arg(long, env = "BERTH_CONTAINERD_SOCKET")]
    pub containerd_socket: Option<PathBuf>,
    /// containerd namespace that holds the workspaces [default: berth]
    #[arg(long, env = "BERTH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Directory for the database, preserved data and other state [default: /var/lib/berth]
    #[arg(long, env = "BERTH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Database URL [default: a SQLite file in the state directory]
    #[arg(long, env = "BERTH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Registry reached over plain HTTP, as HOST:PORT (repeatable; comma-separated in the env)
    #[arg(long = "insecure-registry", env = "BERTH_INSECURE_REGISTRY", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// Docker config.json with registry credentials (`auths`)
    #[arg(long, env = "BERTH_REGISTRY_AUTH_FILE")]
    pub registry_auth_file: Option<PathBuf>,
    /// Image used when a create names none [default: docker.io/library/debian:bookworm]
    #[arg(long, env = "BERTH_DEFAULT_IMAGE")]
    pub default_image: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Wait for containerd to answer instead of exiting when it does not
    #[arg(long, env = "BERTH_WAIT_FOR_CONTAINERD")]
    pub wait_for_containerd: bool,
    /// Seconds one containerd call may take before it fails with UNAVAILABLE (layer applies and
    /// content streams have their own bounds) [default: 30]
    #[arg(long, env = "BERTH_CONTAINERD_TIMEOUT")]
    pub containerd_timeout: Option<u64>,
    /// AppArmor profile of workspaces when the host has AppArmor and the profile is loaded;
    /// "unconfined" for none [default: cri-containerd.apparmor.d]
    #[arg(long, env = "BERTH_APPARMOR_PROFILE")]
    pub apparmor_profile: Option<String>,
    /// Web page origin allowed to call over grpc-web, as SCHEME://HOST[:PORT] (repeatable;
    /// comma-separated in the env) [default: none]
    #[arg(long = "cors-origin", env = "BERTH_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Most bytes of file content one ImportData may extract (sparse files count their full
    /// size); a larger archive fails with RESOURCE_EXHAUSTED [default: 21474836480, 20 GiB]
    #[arg(long, env = "BERTH_IMPORT_MAX_BYTES")]
    pub import_max_bytes: Option<u64>,
    /// Most entries (files, directories, links) one ImportData may extract [default: 1000000]
    #[arg(long, env = "BERTH_IMPORT_MAX_ENTRIES")]
    pub import_max_entries: Option<u64>,
    /// How many snapshots may stack on a workspace's image before CreateSnapshot refuses (each
    /// is an overlayfs layer), 1 to 350 [default: 100]
    #[arg(long, env = "BERTH_MAX_SNAPSHOT_DEPTH")]
    pub max_snapshot_depth: Option<u32>,
    /// How many events (the newest) the event history keeps for WatchEvents replays; pruned at
    /// start and hourly [default: 100000]
    #[arg(long, env = "BERTH_EVENT_RETENTION_COUNT")]
    pub event_retention_count: Option<u64>,
    /// How many days events are kept for WatchEvents replays [default: 30]
    #[arg(long, env = "BERTH_EVENT_RETENTION_DAYS")]
    pub event_retention_days: Option<u64>,
    /// Seconds between measurements of a watched workspace's storage (a walk of its writable
    /// layer and /data), 1 to 86400 [default: 30]
    #[arg(long, env = "BERTH_STORAGE_SAMPLE_INTERVAL")]
    pub storage_sample_interval: Option<u64>,
    /// Directory of CDI spec files (`.json`, `.yaml`) defining the devices workspaces may attach,
    /// in increasing priority (repeatable; comma-separated in the env) [default: /etc/cdi,
    /// /var/run/cdi]
    #[arg(long = "cdi-spec-dir", env = "BERTH_CDI_SPEC_DIR", value_delimiter = ',')]
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Workspace networking: `bridge` (eth0 on berth's bridge, NAT to the outside, the host kept
    /// out) or `none` (loopback only) [default: bridge]
    #[arg(long, env = "BERTH_NETWORK", value_enum)]
    pub network: Option<crate::network::NetworkBackend>,
    /// IPv4 subnet workspaces get addresses from, /8 to /29; the first address is the bridge's
    /// [default: 10.231.0.0/16]
    #[arg(long, env = "BERTH_NETWORK_SUBNET")]
    pub network_subnet: Option<ipnet::Ipv4Net>,
    /// Name of berth's bridge, which also names its nftables tables [default: berth0]
    #[arg(long, env = "BERTH_BRIDGE_NAME")]
    pub bridge_name: Option<String>,
    /// Directory of the CNI plugins `bridge`, `host-local` and `loopback` [default: /usr/lib/cni]
    #[arg(long, env = "BERTH_CNI_BIN_DIR")]
    pub cni_bin_dir: Option<PathBuf>,
    /// DNS server for workspaces' /etc/resolv.conf (repeatable; comma-separated in the env)
    /// [default: the host's, without loopback addresses]
    #[arg(long = "dns", env = "BERTH_DNS", value_delimiter = ',')]
    pub dns: Vec<std::net::IpAddr>,
    /// Let workspaces reach each other over the bridge (they are isolated by default)
    #[arg(long, env = "BERTH_ALLOW_INTER_WORKSPACE")]
    pub allow_inter_workspace: bool,
    /// Remove berth's nftables tables and bridge, then exit (workspaces lose their network until
    /// berth starts again)
    #[arg(long)]
    pub cleanup_network: bool,
}

/// The keys a `--config` file may hold; unknown keys are errors so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    containerd_socket: Option<PathBuf>,
    namespace: Option<String>,
    state_dir: Option<PathBuf>,
    database_url: Option<String>,
    insecure_registries: Option<Vec<String>>,
    registry_auth_file: Option<PathBuf>,
    default_image: Option<String>,
    log_format: Option<LogFormat>,
    wait_for_containerd: Option<bool>,
    containerd_timeout: Option<u64>,
    apparmor_profile: Option<String>,
    cors_origins: Option<Vec<String>>,
    import_max_bytes: Option<u64>,
    import_max_entries: Option<u64>,
    max_snapshot_depth: Option<u32>,
    event_retention_count: Option<u64>,
    event_retention_days: Option<u64>,
    storage_sample_interval: Option<u64>,
    cdi_spec_dirs: Option<Vec<PathBuf>>,
    network: Option<crate::network::NetworkBackend>,
    network_subnet: Option<String>,
    bridge_name: Option<String>,
    cni_bin_dir: Option<PathBuf>,
    dns: Option<Vec<std::net::IpAddr>>,
    allow_inter_workspace: Option<bool>,
}

/// The resolved configuration of a running server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// containerd namespace of the workspaces.
    pub namespace: String,
    /// Directory for berth's own state.
    pub state_dir: PathBuf,
    /// Database URL (`sqlite://…`).
    pub database_url: String,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Docker config.json with registry credentials.
    pub registry_auth_file: Option<PathBuf>,
    /// Image used when a create names none.
    pub default_image: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether to wait for containerd at start instead of exiting.
    pub wait_for_containerd: bool,
    /// How long one unary containerd call may take.
    pub containerd_timeout: std::time::Duration,
    /// AppArmor profile of workspaces (applied only where loaded), or "unconfined".
    pub apparmor_profile: String,
    /// Origins (`scheme://host[:port]`) whose pages may call berth from a browser; empty
    /// allows none.
    pub cors_origins: Vec<String>,
    /// Most bytes of file content one import may extract.
    pub import_max_bytes: u64,
    /// Most entries one import may extract.
    pub import_max_entries: u64,
    /// How many snapshots may stack on a workspace's image.
    pub max_snapshot_depth: u32,
    /// How many events the event history keeps.
    pub event_retention_count: u64,
    /// How long events are kept.
    pub event_retention_age: std::time::Duration,
    /// How often a watched workspace's storage is measured.
    pub storage_sample_interval: std::time::Duration,
    /// CDI spec directories (absolute), in increasing priority.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Workspace networking.
    pub network: crate::network::NetworkSettings,
    /// Remove berth's network (tables, bridge) and exit.
    pub cleanup_network: bool,
}

/// A configuration that cannot be used; its message is one line naming the cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Resolves the configuration from flags/environment and the optional config file.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let state_dir = args.state_dir.or(file.state_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        // Paths under the state dir go into container specs (bind-mount sources) that runc
        // resolves from the task's own directory: a relative one would name the wrong files.
        let state_dir = std::path::absolute(&state_dir)
            .map_err(|err| ConfigError(format!("state_dir {} cannot be made absolute: {err}", state_dir.display())))?;
        let database_url = args
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", state_dir.join("berth.db").display()));
        let insecure_registries = if args.insecure_registries.is_empty() {
            file.insecure_registries.unwrap_or_default()
        } else {
            args.insecure_registries
        };
        let cors_origins =
            if args.cors_origins.is_empty() { file.cors_origins.unwrap_or_default() } else { args.cors_origins };
        let cors_origins = cors_origins.iter().map(|origin| parse_origin(origin)).collect::<Result<Vec<_>, _>>()?;
        let namespace = args.namespace.or(file.namespace).unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        if namespace.is_empty() {
            return Err(ConfigError("namespace must not be empty".to_owned()));
        }
        let apparmor_profile =
            args.apparmor_profile.or(file.apparmor_profile).unwrap_or_else(|| DEFAULT_APPARMOR_PROFILE.to_owned());
        if apparmor_profile.trim().is_empty() {
            return Err(ConfigError(
                "apparmor_profile must not be empty; pass \"unconfined\" to run workspaces without apparmor".to_owned(),
            ));
        }
        let containerd_timeout = match args.containerd_timeout.or(file.containerd_timeout) {
            None => DEFAULT_CONTAINERD_TIMEOUT,
            Some(0) => {
                return Err(ConfigError("containerd_timeout must be at least 1 second; the default is 30".to_owned()));
            }
            Some(seconds) => std::time::Duration::from_secs(seconds),
        };
        let import_max_bytes = at_least_one(
            "import_max_bytes",
            args.import_max_bytes.or(file.import_max_bytes).unwrap_or(DEFAULT_IMPORT_MAX_BYTES),
        )?;
        let import_max_entries = at_least_one(
            "import_max_entries",
            args.import_max_entries.or(file.import_max_entries).unwrap_or(DEFAULT_IMPORT_MAX_ENTRIES),
        )?;
        let max_snapshot_depth =
            args.max_snapshot_depth.or(file.max_snapshot_depth).unwrap_or(DEFAULT_MAX_SNAPSHOT_DEPTH);
        if !(1..=MAX_SNAPSHOT_DEPTH_LIMIT).contains(&max_snapshot_depth) {
            return Err(ConfigError(format!(
                "max_snapshot_depth {max_snapshot_depth} is out of range; pass 1 to {MAX_SNAPSHOT_DEPTH_LIMIT} (overlayfs stacks about 500 layers, images bring their own); the default is {DEFAULT_MAX_SNAPSHOT_DEPTH}"
            )));
        }
        let event_retention_count = at_least_one(
            "event_retention_count",
            args.event_retention_count.or(file.event_retention_count).unwrap_or(DEFAULT_EVENT_RETENTION_COUNT),
        )?;
        let event_retention_days = at_least_one(
            "event_retention_days",
            args.event_retention_days.or(file.event_retention_days).unwrap_or(DEFAULT_EVENT_RETENTION_DAYS),
        )?;
        // Beyond this the cutoff would precede any date berth can have written.
        let event_retention_days = event_retention_days.min(100 * 365);
        let storage_sample_interval = match args.storage_sample_interval.or(file.storage_sample_interval) {
            None => DEFAULT_STORAGE_SAMPLE_INTERVAL,
            Some(seconds @ 1..=MAX_STORAGE_SAMPLE_INTERVAL_SECS) => std::time::Duration::from_secs(seconds),
            Some(seconds) => {
                return Err(ConfigError(format!(
                    "storage_sample_interval {seconds} is out of range; pass 1 to {MAX_STORAGE_SAMPLE_INTERVAL_SECS} seconds; the default is 30"
                )));
            }
        };
        let cdi_spec_dirs = if args.cdi_spec_dirs.is_empty() {
            file.cdi_spec_dirs.unwrap_or_else(|| crate::devices::DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect())
        } else {
            args.cdi_spec_dirs
        };
        // Absolute, so error messages and ListDevices name the files an operator can open.
        let cdi_spec_dirs = cdi_spec_dirs
            .iter()
            .map(|dir| {
                std::path::absolute(dir).map_err(|err| {
                    ConfigError(format!("cdi spec dir {} cannot be made absolute: {err}", dir.display()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let network_subnet = match (args.network_subnet, file.network_subnet) {
            (Some(subnet), _) => subnet,
            (None, Some(text)) => text.parse().map_err(|_| {
                ConfigError(format!("network_subnet {text:?} is not an IPv4 network such as 10.231.0.0/16"))
            })?,
            (None, None) => DEFAULT_NETWORK_SUBNET.parse().expect("default subnet parses"),
        };
        if !(8..=29).contains(&network_subnet.prefix_len()) {
            return Err(ConfigError(format!(
                "network_subnet {network_subnet} is out of range; pass a /8 to /29 network; the default is {DEFAULT_NETWORK_SUBNET}"
            )));
        }
        let bridge_name = args.bridge_name.or(file.bridge_name).unwrap_or_else(|| DEFAULT_BRIDGE_NAME.to_owned());
        check_bridge_name(&bridge_name)?;
        let dns = if args.dns.is_empty() { file.dns.unwrap_or_default() } else { args.dns };
        let network = crate::network::NetworkSettings {
            backend: args.network.or(file.network).unwrap_or_default(),
            subnet: network_subnet.trunc(),
            bridge: bridge_name,
            cni_bin_dir: args.cni_bin_dir.or(file.cni_bin_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_CNI_BIN_DIR)),
            dns,
            allow_inter_workspace: args.allow_inter_workspace || file.allow_inter_workspace.unwrap_or(false),
            dir: state_dir.join("network"),
        };
        Ok(Self {
            network,
            cleanup_network: args.cleanup_network,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default listen address parses")),
            containerd_socket: args
                .containerd_socket
                .or(file.containerd_socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_SOCKET)),
            namespace,
            state_dir,
            database_url,
            insecure_registries,
            registry_auth_file: args.registry_auth_file.or(file.registry_auth_file),
            default_image: args.default_image.or(file.default_image).unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            wait_for_containerd: args.wait_for_containerd || file.wait_for_containerd.unwrap_or(false),
            containerd_timeout,
            apparmor_profile,
            cors_origins,
            import_max_bytes,
            import_max_entries,
            max_snapshot_depth,
            event_retention_count,
            event_retention_age: std::time::Duration::from_secs(event_retention_days * 24 * 60 * 60),
            storage_sample_interval,
            cdi_spec_dirs,
        })
    }
}

/// A bridge name is a Linux interface name (at most 15 bytes) and an nftables table name; `veth`
/// names are what the bridge plugin gives the workspaces' ports.
fn check_bridge_name(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("veth");
    if !valid {
        return Err(ConfigError(format!(
            "bridge_name {name:?} is invalid; use 1 to 15 letters, digits or '_', starting with a letter and not with \"veth\"; the default is {DEFAULT_BRIDGE_NAME}"
        )));
    }
    Ok(())
}

/// A limit of 0 would refuse every import: refused as a setting instead.
fn at_least_one(key: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError(format!("{key} must be at least 1; leave it unset for the default")));
    }
    Ok(value)
}

/// Checks that `text` is an origin as browsers send it in the `Origin` header
/// (`http://127.0.0.1:8080`): the comparison is exact, so anything else would never match.
fn parse_origin(text: &str) -> Result<String, ConfigError> {
    let invalid = |why: &str| {
        ConfigError(format!(
            "cors origin {text:?} is invalid: {why}; write it as a browser sends it, e.g. http://127.0.0.1:8080"
        ))
    };
    let host = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(|| invalid("it must start with http:// or https://"))?;
    if host.is_empty() {
        return Err(invalid("the host is missing"));
    }
    if host.contains(['/', '?', '#']) {
        return Err(invalid("an origin has no path, not even a trailing '/'"));
    }
    if host.contains('@') || host.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || !c.is_ascii()) {
        return Err(invalid("the host may only hold a name or address and a port"));
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid("browsers send origins in lowercase"));
    }
    Ok(text.to_owned())
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError(format!("cannot read config file {}: {err}", path.display())))?;
    parse_file(&text).map_err(|err| ConfigError(format!("config file {}: {err}", path.display())))
}

/// Parses config text; the error is one line with the line number and toml's own message.
fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|err| {
        let message = err.message().trim().replace('\n', "; ");
        match err.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {message}")
            }
            None => message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("berth-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("berth.toml");
        std::fs::write(&path, "namespace = \"from-file\"\nstate_dir = \"/srv/berth\"\n").unwrap();
        let args = ServeArgs { config: Some(path), namespace: Some("from-flag".to_owned()), ..ServeArgs::default() };
        let config = Config::resolve(args).unwrap();
        assert_eq!(config.namespace, "from-flag");
        assert_eq!(config.state_dir, PathBuf::from("/srv/berth"));
        assert_eq!(config.database_url, "sqlite:///srv/berth/berth.db?mode=rwc");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_relative_state_dir_becomes_absolute() {
        let args = ServeArgs { state_dir: Some(PathBuf::from(".testbed/state")), ..ServeArgs::default() };
        let config = Config::resolve(args).unwrap();
        assert!(config.state_dir.is_absolute(), "{}", config.state_dir.display());
        assert_eq!(config.state_dir, std::env::current_dir().unwrap().join(".testbed/state"));
    }

    #[test]
    fn apparmor_profile_defaults_to_containerds_and_the_flag_wins() {
        let defaults = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(defaults.apparmor_profile, "cri-containerd.apparmor.d");
        let file = parse_file("apparmor_profile = \"from-file\"\n").unwrap();
        assert_eq!(file.apparmor_profile.as_deref(), Some("from-file"));
        let flag = ServeArgs { apparmor_profile: Some("unconfined".to_owned()), ..ServeArgs::default() };
        assert_eq!(Config::resolve(flag).unwrap().apparmor_profile, "unconfined");
        let empty = ServeArgs { apparmor_profile: Some(" ".to_owned()), ..ServeArgs::default() };
        let err = Config::resolve(empty).err().unwrap().to_string();
        assert!(err.contains("unconfined"), "{err}");
    }

    #[test]
    fn event_retention_defaults_and_refuses_zero() {
        let defaults = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(defaults.event_retention_count, 100_000);
        assert_eq!(defaults.event_retention_age, std::time::Duration::from_secs(30 * 86_400));
        let file = parse_file("event_retention_count = 10\nevent_retention_days = 2\n").unwrap();
        assert_eq!((file.event_retention_count, file.event_retention_days), (Some(10), Some(2)));
        let zero = ServeArgs { event_retention_days: Some(0), ..ServeArgs::default() };
        let err = Config::resolve(zero).err().unwrap().to_string();
        assert!(err.contains("event_retention_days"), "{err}");
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let err = parse_file("namespace = \"a\"\nlisten_addr = \"x\"\n").err().unwrap();
        assert!(err.starts_with("line 2: "), "{err}");
        assert!(err.contains("listen_addr"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn the_example_config_in_deploy_parses() {
        let config = parse_file(include_str!("../../deploy/berth.toml")).unwrap();
        assert_eq!(config.namespace.as_deref(), Some("berth"));
        assert_eq!(config.log_format, Some(LogFormat::Json));
        assert_eq!(config.cors_origins, Some(Vec::new()), "the example allows no web page");
    }

    #[test]
    fn cors_origins_come_from_flags_or_the_file_and_default_to_none() {
        assert!(Config::resolve(ServeArgs::default()).unwrap().cors_origins.is_empty());

        let dir = std::env::temp_dir().join(format!("berth-config-cors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("berth.toml");
        std::fs::write(&path, "cors_origins = [\"https://bots.example\", \"http://127.0.0.1:8080\"]\n").unwrap();
        let from_file = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        assert_eq!(Config::resolve(from_file).unwrap().cors_origins, ["https://bots.example", "http://127.0.0.1:8080"]);
        let flags = ServeArgs {
            config: Some(path),
            cors_origins: vec!["http://localhost:3000".to_owned()],
            ..ServeArgs::default()
        };
        assert_eq!(Config::resolve(flags).unwrap().cors_origins, ["http://localhost:3000"], "flags replace the file");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cors_origin_flag_repeats_and_splits_on_commas_like_the_env() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        use clap::Parser as _;
        let cli =
            Cli::try_parse_from(["berth", "--cors-origin", "http://a.example", "--cors-origin", "http://b.example"])
                .unwrap();
        assert_eq!(cli.serve.cors_origins, ["http://a.example", "http://b.example"]);
        let cli = Cli::try_parse_from(["berth", "--cors-origin", "http://a.example,https://b.example:8443"]).unwrap();
        assert_eq!(cli.serve.cors_origins, ["http://a.example", "https://b.example:8443"]);
    }

    #[test]
    fn malformed_cors_origins_are_refused_with_the_reason() {
        for (origin, why) in [
            ("127.0.0.1:8080", "http://"),
            ("http://127.0.0.1:8080/", "no path"),
            ("https://bots.example/app", "no path"),
            ("http://", "host is missing"),
            ("http://Bots.example", "lowercase"),
            ("http://user@bots.example", "name or address"),
            ("*", "http://"),
        ] {
            let args = ServeArgs { cors_origins: vec![origin.to_owned()], ..ServeArgs::default() };
            let err = Config::resolve(args).err().unwrap().to_string();
            assert!(err.contains(why) && err.contains(origin), "{origin}: {err}");
        }
    }

    #[test]
    fn import_limits_default_to_20_gib_and_a_million_entries_and_flags_win_over_the_file() {
        let defaults = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!((defaults.import_max_bytes, defaults.import_max_entries), (21_474_836_480, 1_000_000));
        let file = parse_file("import_max_bytes = 1048576\nimport_max_entries = 10\n").unwrap();
        assert_eq!((file.import_max_bytes, file.import_max_entries), (Some(1 << 20), Some(10)));

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["berth", "--import-max-bytes", "4096", "--import-max-entries", "7"]).unwrap();
        let config = Config::resolve(cli.serve).unwrap();
        assert_eq!((config.import_max_bytes, config.import_max_entries), (4096, 7));
        let zero = ServeArgs { import_max_entries: Some(0), ..ServeArgs::default() };
        let err = Config::resolve(zero).err().unwrap().to_string();
        assert!(err.contains("import_max_entries must be at least 1"), "{err}");
    }

    #[test]
    fn max_snapshot_depth_defaults_to_100_and_is_bounded() {
        assert_eq!(Config::resolve(ServeArgs::default()).unwrap().max_snapshot_depth, 100);
        let file = parse_file("max_snapshot_depth = 20\n").unwrap();
        assert_eq!(file.max_snapshot_depth, Some(20));
        let flag = ServeArgs { max_snapshot_depth: Some(350), ..ServeArgs::default() };
        assert_eq!(Config::resolve(flag).unwrap().max_snapshot_depth, 350);
        for bad in [0, 351] {
            let args = ServeArgs { max_snapshot_depth: Some(bad), ..ServeArgs::default() };
            let err = Config::resolve(args).err().unwrap().to_string();
            assert!(err.contains("1 to 350") && err.contains(&bad.to_string()), "{err}");
        }
    }

    #[test]
    fn storage_sample_interval_defaults_to_30_seconds_and_is_bounded() {
        let defaults = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(defaults.storage_sample_interval, std::time::Duration::from_secs(30));
        assert_eq!(parse_file("storage_sample_interval = 5\n").unwrap().storage_sample_interval, Some(5));
        let flag = ServeArgs { storage_sample_interval: Some(1), ..ServeArgs::default() };
        assert_eq!(Config::resolve(flag).unwrap().storage_sample_interval, std::time::Duration::from_secs(1));
        for bad in [0, 86_401] {
            let args = ServeArgs { storage_sample_interval: Some(bad), ..ServeArgs::default() };
            let err = Config::resolve(args).err().unwrap().to_string();
            assert!(err.contains("1 to 86400") && err.contains(&bad.to_string()), "{err}");
        }
    }

    #[test]
    fn cdi_spec_dirs_default_to_etc_and_run_and_flags_replace_the_file() {
        let defaults = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(defaults.cdi_spec_dirs, [PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]);
        let file = parse_file("cdi_spec_dirs = [\"/opt/cdi\"]\n").unwrap();
        assert_eq!(file.cdi_spec_dirs, Some(vec![PathBuf::from("/opt/cdi")]));

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["berth", "--cdi-spec-dir", "/a", "--cdi-spec-dir", "relative"]).unwrap();
        let config = Config::resolve(cli.serve).unwrap();
        assert_eq!(config.cdi_spec_dirs, [PathBuf::from("/a"), std::env::current_dir().unwrap().join("relative")]);
    }

    #[test]
    fn network_defaults_to_a_bridge_on_10_231_and_checks_its_settings() {
        let defaults = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(defaults.network.backend, crate::network::NetworkBackend::Bridge);
        assert_eq!(defaults.network.subnet.to_string(), "10.231.0.0/16");
        assert_eq!(defaults.network.bridge, "berth0");
        assert_eq!(defaults.network.cni_bin_dir, PathBuf::from("/usr/lib/cni"));
        assert!(defaults.network.dns.is_empty() && !defaults.network.allow_inter_workspace);
        assert_eq!(defaults.network.dir, defaults.state_dir.join("network"));

        let file =
            parse_file("network = \"none\"\nnetwork_subnet = \"10.9.8.7/24\"\ndns = [\"198.51.100.53\"]\n").unwrap();
        assert_eq!(file.network, Some(crate::network::NetworkBackend::None));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, "network_subnet = \"10.9.8.7/24\"\n").unwrap();
        let config = Config::resolve(ServeArgs { config: Some(path), ..ServeArgs::default() }).unwrap();
        assert_eq!(config.network.subnet.to_string(), "10.9.8.0/24", "host bits are cleared");

        for bad in ["10.0.0.0/30", "10.0.0.0/7"] {
            let args = ServeArgs { network_subnet: Some(bad.parse().unwrap()), ..ServeArgs::default() };
            let err = Config::resolve(args).err().unwrap().to_string();
            assert!(err.contains("/8 to /29"), "{err}");
        }
        for bad in ["", "vethx", "averylongbridge0", "br 0", "br-0", "0br"] {
            let args = ServeArgs { bridge_name: Some(bad.to_owned()), ..ServeArgs::default() };
            let err = Config::resolve(args).err().unwrap().to_string();
            assert!(err.contains("bridge_name"), "{bad}: {err}");
        }
    }

    #[test]
    fn malformed_value_names_the_line() {
        let err = parse_file("\n\nlisten = \"not an address\"\n").err().unwrap();
        assert!(err.starts_with("line 3: "), "{err}");
    }
}
