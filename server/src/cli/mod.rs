//! Client subcommands: `berth ls | create | get | start | stop | rm | exec | ps | cp | fs | export |
//! import | snapshot | versions | update | metrics | devices | events` over the generated Rust
//! clients. A failed call
//! prints one line (status code, ErrorInfo reason, message) and exits 1; `exec` exits with the
//! process's own code.

mod cp;
mod data;
mod devices;
mod events;
mod exec;
mod fs;
mod host;
mod metrics;
mod network;
mod output;
mod paths;
mod progress;
mod remote;
mod snapshot;
mod update;

use std::process::ExitCode;

use berth_api::v1 as pb;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use clap::{Args, Subcommand, ValueEnum};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

/// Where the server is.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// berth server URL
    #[arg(long, global = true, env = "BERTH_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
}

/// Output format of `get` and `ls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A readable table.
    #[default]
    Table,
    /// JSON (proto3 JSON field names), for scripts.
    Json,
}

/// A client subcommand.
/// When to contact the registry for an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PullPolicyArg {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

impl From<PullPolicyArg> for pb::PullPolicy {
    fn from(policy: PullPolicyArg) -> Self {
        match policy {
            PullPolicyArg::IfNotPresent => pb::PullPolicy::IfNotPresent,
            PullPolicyArg::Always => pb::PullPolicy::Always,
            PullPolicyArg::Never => pb::PullPolicy::Never,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// List workspaces
    Ls {
        /// Only workspaces with these labels (k=v,k2=v2)
        #[arg(long, short = 'l')]
        selector: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Create a workspace, showing pull progress
    Create {
        /// Workspace id (e.g. the bot id)
        id: String,
        /// Image reference [default: the server's default image]
        #[arg(long)]
        image: Option<String>,
        /// Label as key=value (repeatable)
        #[arg(long = "label", value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        /// Environment variable as NAME=value (repeatable)
        #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
        env: Vec<(String, String)>,
        /// CDI device to attach, as VENDOR/CLASS=NAME (repeatable; `berth devices` lists them)
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Put the /data archive preserved at deletion back
        #[arg(long)]
        restore_data: bool,
        #[command(flatten)]
        network: network::NetworkArgs,
    },
    /// Show a workspace
    Get {
        id: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Start a workspace
    Start { id: String },
    /// Stop a workspace (SIGTERM, then SIGKILL after the timeout)
    Stop {
        id: String,
        /// Seconds to wait after SIGTERM
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Delete a workspace
    Rm {
        id: String,
        /// Archive /data first, for a later create --restore-data
        #[arg(long)]
        preserve_data: bool,
    },
    /// Run a command in a running workspace; exits with its exit code (128+n for a signal)
    Exec {
        id: String,
        /// Keep the process's stdin open and forward ours (EOF closes it)
        #[arg(long, short = 'i')]
        interactive: bool,
        /// Run on a pseudo-terminal sized like ours, ours in raw mode
        #[arg(long, short = 't')]
        tty: bool,
        /// User as name, uid or uid:gid [default: the image's user]
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// Working directory inside the workspace
        #[arg(long, short = 'w')]
        cwd: Option<String>,
        /// Environment variable as NAME=value (repeatable)
        #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
        env: Vec<(String, String)>,
        /// Name for the process, for `berth ps` and reconnecting
        #[arg(long)]
        tag: Option<String>,
        /// Seconds after which the process gets SIGKILL
        #[arg(long)]
        timeout: Option<u64>,
        /// The command and its arguments, after --
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List the processes running in a workspace
    Ps {
        id: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Copy files and directories between this host and a workspace, like docker cp
    ///
    /// One of SRC and DST is ID:/path. An existing directory as DST receives the source inside
    /// it (DIR/. copies a directory's content); otherwise DST becomes the copy. `-` as DST writes
    /// a workspace file to stdout, as SRC reads stdin into one. Modes are kept (setuid and setgid
    /// are dropped on this host). Symlinks in the workspace are copied as symlinks and never
    /// followed; symlinks in a host directory are skipped (the API cannot create them).
    #[command(verbatim_doc_comment)]
    Cp {
        /// ID:/path, a host path, or - (stdin)
        #[arg(value_name = "SRC")]
        source: String,
        /// ID:/path, a host path, or - (stdout)
        #[arg(value_name = "DST")]
        destination: String,
    },
    /// Read and change a workspace's files (ls, cat, stat, mkdir, rm, mv)
    Fs {
        #[command(subcommand)]
        command: fs::FsCommand,
    },
    /// Archive a workspace directory (/data by default) to stdout or a file; no downtime
    Export {
        id: String,
        /// Directory inside the workspace [default: /data]
        #[arg(long)]
        path: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: data::Format,
        /// Write the archive here instead of stdout (renamed into place when complete)
        #[arg(long, short = 'o')]
        output: Option<std::path::PathBuf>,
    },
    /// Extract an archive (a file, or - for stdin) into a workspace directory (/data by default)
    Import {
        id: String,
        /// The archive: .tar.gz or .tar.zst (sniffed), or - for stdin
        #[arg(value_name = "FILE")]
        input: String,
        /// Directory inside the workspace [default: /data]
        #[arg(long)]
        path: Option<String>,
        /// Archive format [default: sniffed from the archive]
        #[arg(long, value_enum)]
        format: Option<data::Format>,
        /// Empty the directory first, so it holds exactly the archive's contents
        #[arg(long)]
        replace: bool,
        /// Expected SHA-256 of the archive; the import fails if it differs
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Change a workspace in place: limits and labels apply live; a new environment restarts it;
    /// --image moves it onto another image keeping /data (the previous state stays as a SYSTEM
    /// snapshot: `berth snapshot restore ID NAME` goes back)
    Update {
        id: String,
        /// Move onto this image ("" for the server's --default-image)
        #[arg(long)]
        image: Option<String>,
        /// When to contact the registry for --image: `always` picks up a newer build of the same tag
        #[arg(long, value_enum, default_value_t)]
        pull: PullPolicyArg,
        /// CPU limit in cores (1.5) or millicores (500m); 0 lifts it
        #[arg(long, value_parser = update::parse_cpus)]
        cpus: Option<i64>,
        /// Memory limit: bytes or with a unit (512Mi, 2G); 0 lifts it
        #[arg(long, value_parser = update::parse_bytes)]
        memory: Option<i64>,
        /// Process limit; 0 lifts it
        #[arg(long)]
        pids: Option<i64>,
        /// Set a label, KEY=VALUE (repeatable; the others stay)
        #[arg(long = "label", value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        /// Remove a label (repeatable)
        #[arg(long = "unset-label", value_name = "KEY")]
        unset_labels: Vec<String>,
        /// Set an environment variable, KEY=VALUE (repeatable; restarts a running workspace)
        #[arg(long = "env", value_parser = parse_key_value)]
        env: Vec<(String, String)>,
        /// Remove an environment variable (repeatable)
        #[arg(long = "unset-env", value_name = "KEY")]
        unset_env: Vec<String>,
        /// Attach a CDI device, VENDOR/CLASS=NAME (repeatable; restarts a running workspace)
        #[arg(long = "device", value_name = "NAME")]
        devices: Vec<String>,
        /// Detach a CDI device (repeatable)
        #[arg(long = "unset-device", value_name = "NAME")]
        unset_devices: Vec<String>,
        /// New egress policy (replaces the current one, live)
        #[command(flatten)]
        network: network::NetworkArgs,
    },
    /// Take, list, delete and restore snapshots of a workspace's filesystem
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Show a workspace's CPU, memory, processes and disk use; --watch prints a line per sample
    Metrics {
        id: String,
        /// Keep printing samples until interrupted
        #[arg(long, short = 'w')]
        watch: bool,
        /// Seconds between samples with --watch (0.1 to 3600)
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Live CPU, memory, processes and disk use of a workspace, redrawn in place on a terminal
    /// (one line per sample otherwise)
    Top {
        id: String,
        /// Seconds between samples (0.1 to 3600)
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Show a workspace's version history (* marks the current version)
    Versions {
        id: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Follow workspace events, one line each (until interrupted): ID TIME WORKSPACE KIND ...
    Events {
        /// Only this workspace's events [default: every workspace]
        id: Option<String>,
        /// Replay the stored events after this event id first (0: live events only)
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Only events of this kind, e.g. task_exited or STATE_CHANGED (repeatable)
        #[arg(long = "kind", value_parser = events::parse_kind)]
        kinds: Vec<i32>,
        /// Also print a line for every heartbeat
        #[arg(long)]
        heartbeats: bool,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// List the CDI devices the server's host offers (spec files it could not use go to stderr)
    Devices {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// Runs a client subcommand; returns the process exit code.
pub async fn run(server: ServerArgs, command: ClientCommand) -> ExitCode {
    match execute(&server.server, command).await {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("berth: {failure}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(server: &str, command: ClientCommand) -> Result<ExitCode, String> {
    let channel = Channel::from_shared(server.to_owned())
        .map_err(|err| format!("invalid --server {server:?}: {err}"))?
        .connect()
        .await
        .map_err(|err| format!("UNAVAILABLE cannot reach berth at {server}: {err}; start it or pass --server"))?;
    let mut client = WorkspaceServiceClient::new(channel.clone());
    match command {
        ClientCommand::Ls { selector, output } => {
            let mut workspaces = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListWorkspacesRequest {
                    page_size: 500,
                    page_token,
                    label_selector: selector.clone().unwrap_or_default(),
                };
                let page = client.list_workspaces(request).await.map_err(describe)?.into_inner();
                workspaces.extend(page.workspaces);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            output::print_list(&workspaces, output);
        }
        ClientCommand::Create { id, image, labels, env, devices, restore_data, network } => {
            let request = pb::CreateWorkspaceRequest {
                workspace_id: id,
                image: image.unwrap_or_default(),
                labels: labels.into_iter().collect(),
                env: env.into_iter().collect(),
                cdi_devices: devices,
                restore_data,
                network_policy: network.policy(),
                ..Default::default()
            };
            let mut events = client.create_workspace(request).await.map_err(describe)?.into_inner();
            let mut view = progress::CreateProgress::new();
            while let Some(event) = events.next().await {
                let event = event.map_err(|status| {
                    view.abandon();
                    describe(status)
                })?;
                if let Some(event) = event.event {
                    view.show(event);
                }
            }
        }
        ClientCommand::Get { id, output } => {
            let request = pb::GetWorkspaceRequest { workspace_id: id };
            let workspace = client.get_workspace(request).await.map_err(describe)?.into_inner().workspace;
            output::print_workspace(&workspace.unwrap_or_default(), output);
        }
        ClientCommand::Start { id } => {
            let request = pb::StartWorkspaceRequest { workspace_id: id };
            let workspace = client.start_workspace(request).await.map_err(describe)?.into_inner().workspace;
            output::print_state_line(&workspace.unwrap_or_default());
        }
        ClientCommand::Stop { id, timeout } => {
            let timeout = prost_types::Duration { seconds: timeout as i64, nanos: 0 };
            let request = pb::StopWorkspaceRequest { workspace_id: id, timeout: Some(timeout) };
            let workspace = client.stop_workspace(request).await.map_err(describe)?.into_inner().workspace;
            output::print_state_line(&workspace.unwrap_or_default());
        }
        ClientCommand::Rm { id, preserve_data } => {
            let request = pb::DeleteWorkspaceRequest { workspace_id: id.clone(), preserve_data };
            client.delete_workspace(request).await.map_err(describe)?;
            println!("{id} deleted{}", if preserve_data { " (/data preserved)" } else { "" });
        }
        ClientCommand::Exec { id, interactive, tty, user, cwd, env, tag, timeout, command } => {
            let options =
                exec::ExecOptions { workspace_id: id, command, stdin: interactive, tty, user, cwd, env, tag, timeout };
            return exec::exec(channel, options).await;
        }
        ClientCommand::Ps { id, output } => exec::ps(channel, id, output == OutputFormat::Json).await?,
        ClientCommand::Cp { source, destination } => return cp::copy(channel, &source, &destination).await,
        ClientCommand::Fs { command } => return fs::run(channel, command).await,
        ClientCommand::Update {
            id,
            image,
            pull,
            cpus,
            memory,
            pids,
            labels,
            unset_labels,
            env,
            unset_env,
            devices,
            unset_devices,
            network,
        } => {
            let changes = update::Changes {
                network_policy: network.policy(),
                image,
                pull,
                cpus,
                memory,
                pids,
                labels,
                unset_labels,
                env,
                unset_env,
                devices,
                unset_devices,
            };
            update::run(&mut client, id, changes).await?;
        }
        ClientCommand::Snapshot { command } => snapshot::run(channel, command).await?,
        ClientCommand::Versions { id, output } => snapshot::versions(channel, id, output).await?,
        ClientCommand::Events { id, after, kinds, heartbeats, output } => {
            let request = pb::WatchEventsRequest {
                workspace_id: id.unwrap_or_default(),
                after_event_id: after,
                heartbeat_interval: None,
                kinds,
            };
            events::follow(&mut client, request, heartbeats, output).await?;
        }
        ClientCommand::Top { id, interval } => {
            let options = metrics::MetricsOptions {
                workspace_id: id,
                watch: true,
                interval,
                output: OutputFormat::Table,
                in_place: true,
            };
            metrics::run(channel, options).await?;
        }
        ClientCommand::Metrics { id, watch, interval, output } => {
            let options = metrics::MetricsOptions { workspace_id: id, watch, interval, output, in_place: false };
            metrics::run(channel, options).await?;
        }
        ClientCommand::Devices { output } => devices::list(channel, output).await?,
        ClientCommand::Export { id, path, format, output } => {
            return data::export(channel, id, path, format, output).await;
        }
        ClientCommand::Import { id, input, path, format, replace, sha256 } => {
            let options = data::ImportOptions { id, input, path, format, replace, sha256 };
            return data::import(channel, options).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line: `CODE REASON: message`.
fn describe(status: tonic::Status) -> String {
    let code = screaming_snake(&format!("{:?}", status.code()));
    match status.get_details_error_info() {
        Some(info) => format!("{code} {}: {}", info.reason, status.message()),
        None => format!("{code}: {}", status.message()),
    }
}

fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (index, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_code_reason_and_message() {
        let status = tonic::Status::from(crate::error::Error::workspace_not_found("bot"));
        let line = describe(status);
        assert!(line.starts_with("NOT_FOUND WORKSPACE_NOT_FOUND: workspace \"bot\""), "{line}");
        assert_eq!(screaming_snake("FailedPrecondition"), "FAILED_PRECONDITION");
        assert_eq!(parse_key_value("a=b=c").unwrap(), ("a".to_owned(), "b=c".to_owned()));
        assert!(parse_key_value("novalue").is_err());
    }
}
