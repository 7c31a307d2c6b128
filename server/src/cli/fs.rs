//! `berth fs ls | cat | stat | mkdir | rm | mv`: a workspace's files, named `ID:/path`.

use std::io::Write as _;
use std::process::ExitCode;

use berth_api::v1 as pb;
use berth_api::v1::filesystem_service_client::FilesystemServiceClient;
use clap::Subcommand;
use tokio::io::AsyncWriteExt as _;

use super::connect::Channel;
use super::paths::{self, WorkspacePath};
use super::remote::RemoteWalk;
use super::{OutputFormat, cp, describe, output};

type Client = FilesystemServiceClient<Channel>;

/// A `berth fs` subcommand; paths are `ID:/path`.
#[derive(Subcommand, Debug)]
pub enum FsCommand {
    /// List a directory
    ///
    /// One row per entry: mode, owner (uid:gid inside the workspace), size, modification time
    /// (UTC) and name, `-> target` for a symlink. A file or symlink shows itself.
    Ls {
        /// ID:/path of a directory (end it with / to list the directory a symlink points at)
        path: String,
        /// Also list every subdirectory, to any depth
        #[arg(long, short = 'R')]
        recursive: bool,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Print files' content
    Cat {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Describe a file, directory or symlink
    Stat {
        path: String,
        /// Describe a symlink's target instead of the symlink
        #[arg(long, short = 'L')]
        dereference: bool,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Create directories
    Mkdir {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
        /// Create missing parents too; an existing directory is fine
        #[arg(long, short = 'p')]
        parents: bool,
        /// Permission bits in octal [default: 755]
        #[arg(long, short = 'm', value_parser = parse_mode)]
        mode: Option<u32>,
    },
    /// Remove files, symlinks (not their targets) and empty directories
    Rm {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
        /// Remove directories with everything below them
        #[arg(long, short = 'r', short_alias = 'R')]
        recursive: bool,
    },
    /// Move or rename a file, symlink or directory within a workspace
    Mv {
        source: String,
        destination: String,
        /// Replace an existing destination (a directory only if it is empty)
        #[arg(long, short = 'f')]
        force: bool,
    },
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mode| *mode <= 0o7777)
        .ok_or_else(|| format!("{text:?} is not an octal mode like 755"))
}

/// Runs a `berth fs` subcommand.
pub async fn run(channel: Channel, command: FsCommand) -> Result<ExitCode, String> {
    let mut client = FilesystemServiceClient::new(channel);
    match command {
        FsCommand::Ls { path, recursive, output } => {
            return ls(&mut client, &paths::parse_workspace_path(&path)?, recursive, output).await;
        }
        FsCommand::Cat { paths } => {
            let targets = parse_all(&paths)?;
            for target in &targets {
                let code = cat(&mut client, target).await?;
                if code != ExitCode::SUCCESS {
                    return Ok(code);
                }
            }
        }
        FsCommand::Stat { path, dereference, output } => {
            let entry = cp::stat(&mut client, &paths::parse_workspace_path(&path)?, dereference).await?;
            output::print_entry(&entry, output);
        }
        FsCommand::Mkdir { paths, parents, mode } => {
            return for_each(&mut client, &parse_all(&paths)?, async |client, target| {
                let request = pb::MakeDirRequest {
                    workspace_id: target.workspace_id.clone(),
                    path: target.path.clone(),
                    parents,
                    mode: mode.unwrap_or(0),
                };
                client.make_dir(request).await.map(drop)
            })
            .await;
        }
        FsCommand::Rm { paths, recursive } => {
            return for_each(&mut client, &parse_all(&paths)?, async |client, target| {
                let request = pb::RemoveRequest {
                    workspace_id: target.workspace_id.clone(),
                    path: target.path.clone(),
                    recursive,
                };
                client.remove(request).await.map(drop)
            })
            .await;
        }
        FsCommand::Mv { source, destination, force } => {
            let source = paths::parse_workspace_path(&source)?;
            let destination = paths::parse_workspace_path(&destination)?;
            if source.workspace_id != destination.workspace_id {
                return Err("INVALID_ARGUMENT: mv works within one workspace; use berth cp between them".to_owned());
            }
            let request = pb::MoveRequest {
                workspace_id: source.workspace_id,
                source_path: source.path,
                destination_path: destination.path,
                overwrite: force,
            };
            client.r#move(request).await.map_err(describe)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_all(arguments: &[String]) -> Result<Vec<WorkspacePath>, String> {
    arguments.iter().map(|argument| paths::parse_workspace_path(argument)).collect()
}

/// Runs `call` on every path, like `rm a b`: a failure is reported and the others still run;
/// the exit code is 1 if any failed.
async fn for_each(
    client: &mut Client,
    targets: &[WorkspacePath],
    call: impl AsyncFn(&mut Client, &WorkspacePath) -> Result<(), tonic::Status>,
) -> Result<ExitCode, String> {
    let mut code = ExitCode::SUCCESS;
    for target in targets {
        if let Err(status) = call(client, target).await {
            // The server's message names the path.
            eprintln!("berth: {}", describe(status));
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

/// `berth fs cat` (and `berth cp ID:/path -`): the file's bytes on stdout, as they arrive.
pub async fn cat(client: &mut Client, target: &WorkspacePath) -> Result<ExitCode, String> {
    let request = pb::ReadFileRequest {
        workspace_id: target.workspace_id.clone(),
        path: target.path.clone(),
        offset: 0,
        length: 0,
    };
    let mut stream = client.read_file(request).await.map_err(describe)?.into_inner();
    let mut stdout = tokio::io::stdout();
    while let Some(message) = stream.message().await.map_err(describe)? {
        if let Some(pb::read_file_response::Event::Chunk(bytes)) = message.event {
            // Our reader went away (`| head`): stop quietly, as a failure.
            if stdout.write_all(&bytes).await.is_err() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    if stdout.flush().await.is_err() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth fs ls`: a directory's entries (all of them with `-R`) as rows or a JSON array, printed
/// page by page; anything else as one row.
async fn ls(
    client: &mut Client,
    target: &WorkspacePath,
    recursive: bool,
    format: OutputFormat,
) -> Result<ExitCode, String> {
    let entry = cp::stat(client, target, target.path.ends_with('/')).await?;
    let mut rows = Rows { json: format == OutputFormat::Json, held: None };
    let listed = async {
        rows.start()?;
        if entry.r#type() == pb::FileType::Directory {
            let mut walk = RemoteWalk::new(client.clone(), target.workspace_id.clone(), entry.path.clone(), recursive);
            while let Some(listed) = walk.next().await.map_err(Listing::Failed)? {
                rows.print(&listed.relative, &listed.entry)?;
            }
        } else {
            rows.print(&entry.path, &entry)?;
        }
        rows.end()?;
        Ok::<(), Listing>(())
    };
    match listed.await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Listing::Failed(message)) => Err(message),
        // Our reader went away (`| head`): stop quietly, as a failure.
        Err(Listing::Closed) => Ok(ExitCode::FAILURE),
    }
}

enum Listing {
    Failed(String),
    Closed,
}

impl From<std::io::Error> for Listing {
    fn from(_: std::io::Error) -> Self {
        Self::Closed
    }
}

/// The rows of `berth fs ls` on stdout: a table, or a JSON array with one entry per line (each
/// held back until the next one shows whether a comma follows).
struct Rows {
    json: bool,
    held: Option<String>,
}

impl Rows {
    fn start(&mut self) -> std::io::Result<()> {
        let first = if self.json { "[".to_owned() } else { output::entry_header() };
        writeln!(std::io::stdout(), "{first}")
    }

    fn print(&mut self, name: &str, entry: &pb::EntryInfo) -> std::io::Result<()> {
        if !self.json {
            return writeln!(std::io::stdout(), "{}", output::entry_row(name, entry));
        }
        if let Some(previous) = self.held.replace(output::entry_json(entry).to_string()) {
            writeln!(std::io::stdout(), "  {previous},")?;
        }
        Ok(())
    }

    fn end(&mut self) -> std::io::Result<()> {
        if !self.json {
            return Ok(());
        }
        if let Some(last) = self.held.take() {
            writeln!(std::io::stdout(), "  {last}")?;
        }
        writeln!(std::io::stdout(), "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("1777"), Ok(0o1777));
        assert!(parse_mode("888").is_err());
        assert!(parse_mode("17777").is_err());
    }
}
