//! `berth token create`: a new token for the tokens file. It runs locally (no server call): the
//! token is printed once and only its SHA-256 goes into the file.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use clap::{ArgGroup, Subcommand};

use crate::auth::scope::{Access, Scope};
use crate::auth::token::{self, TokenDigest};
use crate::auth::tokens_file;

/// `berth token …`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token: prints it alone on the first line, then the [[token]] entry for the
    /// tokens file (`berth token create ... | tail -n +2 >> tokens.toml` appends the entry)
    #[command(group(ArgGroup::new("access").required(true).args(["admin", "read", "write"])))]
    Create {
        /// Name of the token, shown in the server's logs and messages
        #[arg(long)]
        name: String,
        /// Everything, on every workspace
        #[arg(long)]
        admin: bool,
        /// Read the workspaces named by --workspace and --label
        #[arg(long)]
        read: bool,
        /// Read and change (and create) the workspaces named by --workspace and --label
        #[arg(long)]
        write: bool,
        /// A workspace id the token may use (repeatable)
        #[arg(long = "workspace", value_name = "ID", conflicts_with = "admin")]
        workspaces: Vec<String>,
        /// Workspaces whose labels hold KEY=VALUE (repeatable; every pair must match)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = super::parse_key_value, conflicts_with = "admin")]
        labels: Vec<(String, String)>,
    },
}

/// Runs a token subcommand.
pub fn run(command: TokenCommand) -> ExitCode {
    match create(command) {
        Ok((token, entry)) => {
            println!("{token}");
            print!("{entry}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("berth: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The new token and its tokens file entry.
fn create(command: TokenCommand) -> Result<(String, String), String> {
    let TokenCommand::Create { name, admin, read, write, workspaces, labels } = command;
    let scope = if admin {
        Scope::Admin
    } else {
        let access = match (read, write) {
            (true, false) => Access::Read,
            (false, true) => Access::Write,
            _ => return Err("pass exactly one of --admin, --read and --write".to_owned()),
        };
        if workspaces.is_empty() && labels.is_empty() {
            return Err(format!(
                "a {access} token needs --workspace ID or --label KEY=VALUE naming what it may {access}"
            ));
        }
        Scope::Workspaces {
            access,
            ids: workspaces.into_iter().collect::<BTreeSet<_>>(),
            labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
        }
    };
    let token = token::generate().map_err(|err| format!("cannot make a token: {err}"))?;
    let entry = tokens_file::entry_toml(&name, TokenDigest::of(&token), &scope);
    // The entry is checked as the server will read it, so what is printed is sure to load.
    let parsed = tokens_file::parse(&entry)?;
    debug_assert!(parsed.find(&token).is_some());
    Ok((token, entry))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: TokenCommand,
    }

    fn parse(args: &[&str]) -> Result<TokenCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("token").chain(args.iter().copied())).map(|cli| cli.command)
    }

    #[test]
    fn create_prints_a_token_whose_entry_finds_it() {
        let command =
            parse(&["create", "--name", "red", "--write", "--workspace", "bot-1", "--label", "team=red"]).unwrap();
        let (token, entry) = create(command).unwrap();
        assert!(token::is_well_formed(&token), "{token}");
        assert!(!entry.contains(&token), "the entry never holds the token");
        let principal = tokens_file::parse(&entry).unwrap().find(&token).unwrap();
        assert_eq!(principal.name, "red");
        assert!(matches!(&principal.scope, Scope::Workspaces { access: Access::Write, ids, labels }
            if ids.contains("bot-1") && labels.get("team").map(String::as_str) == Some("red")));
        let (_, admin) = create(parse(&["create", "--name", "ops", "--admin"]).unwrap()).unwrap();
        assert!(admin.contains("admin = true"), "{admin}");
    }

    #[test]
    fn create_refuses_what_the_server_would_refuse() {
        assert!(parse(&["create", "--name", "x"]).is_err(), "one of --admin, --read, --write");
        assert!(parse(&["create", "--name", "x", "--read", "--write", "--workspace", "a"]).is_err());
        assert!(parse(&["create", "--name", "x", "--admin", "--workspace", "a"]).is_err());
        let err = create(parse(&["create", "--name", "x", "--read"]).unwrap()).unwrap_err();
        assert!(err.contains("--workspace"), "{err}");
        let err = create(parse(&["create", "--name", "x", "--read", "--workspace", "Not Valid"]).unwrap()).unwrap_err();
        assert!(err.contains("Not Valid"), "{err}");
    }
}
