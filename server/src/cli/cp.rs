//! `berth cp SRC DST`: files and directory trees between this host and a workspace, like
//! `docker cp` (one side is `ID:/path`; `-` is stdin or stdout).
//!
//! - Upload (host → workspace): directories with MakeDir, files with WriteFile in 1 MiB chunks
//!   (each file replaced atomically by the server), modes kept. WriteFile cannot create symlinks:
//!   a symlink inside a copied directory is skipped with a line on stderr; a symlink named as SRC
//!   is followed, as `cp` does with its arguments.
//! - Download (workspace → host): the tree paged through ListDir, files through ReadFile, modes
//!   (without setuid/setgid) and modification times kept; symlinks are recreated with their
//!   target as stored and never followed, on either side (see `host.rs`).

use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_api::v1 as pb;
use berth_api::v1::filesystem_service_client::FilesystemServiceClient;
use tokio::sync::mpsc;
use tonic_types::StatusExt as _;

use super::connect::Channel;
use super::describe;
use super::host::HostTree;
use super::paths::{self, Existing, Location, SourceShape, WorkspacePath};
use super::progress::TransferProgress;
use super::remote::{self, RemoteWalk};

type Client = FilesystemServiceClient<Channel>;

/// Runs `berth cp`.
pub async fn copy(channel: Channel, source: &str, destination: &str) -> Result<ExitCode, String> {
    let mut client = FilesystemServiceClient::new(channel);
    match (paths::parse_location(source), paths::parse_location(destination)) {
        (Location::Workspace(from), Location::Host(to)) => download(&mut client, &from, &to).await?,
        (Location::Workspace(from), Location::Stdio) => return to_stdout(&mut client, &from).await,
        (Location::Host(from), Location::Workspace(to)) => upload(&mut client, &from, &to).await?,
        (Location::Stdio, Location::Workspace(to)) => upload_stdin(&mut client, &to).await?,
        (Location::Workspace(_), Location::Workspace(_)) => {
            return Err("INVALID_ARGUMENT: copying between workspaces is not supported; copy to this host first".into());
        }
        _ => {
            return Err(format!(
                "INVALID_ARGUMENT: one of {source:?} and {destination:?} must be ID:/path, the other a host path or -"
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Stats a workspace path.
pub async fn stat(client: &mut Client, target: &WorkspacePath, follow_symlinks: bool) -> Result<pb::EntryInfo, String> {
    stat_status(client, target, follow_symlinks).await.map_err(describe)
}

async fn stat_status(
    client: &mut Client,
    target: &WorkspacePath,
    follow_symlinks: bool,
) -> Result<pb::EntryInfo, tonic::Status> {
    let request =
        pb::StatRequest { workspace_id: target.workspace_id.clone(), path: target.path.clone(), follow_symlinks };
    Ok(client.stat(request).await?.into_inner().entry.unwrap_or_default())
}

/// What a workspace path is now, following a symlink there as `cp` does with its destination.
async fn remote_existing(client: &mut Client, target: &WorkspacePath) -> Result<Existing, String> {
    match stat_status(client, target, true).await {
        Ok(entry) if entry.r#type() == pb::FileType::Directory => Ok(Existing::Directory),
        Ok(_) => Ok(Existing::NotDirectory),
        Err(status) if status.get_details_error_info().is_some_and(|info| info.reason == "PATH_NOT_FOUND") => {
            Ok(Existing::Missing)
        }
        Err(status) => Err(describe(status)),
    }
}

/// What a host path is now, following a symlink there (the user named it).
fn host_existing(path: &str) -> Result<Existing, String> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => Ok(Existing::Directory),
        Ok(_) => Ok(Existing::NotDirectory),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Existing::Missing),
        Err(err) => Err(format!("cannot stat {path}: {err}")),
    }
}

async fn download(client: &mut Client, from: &WorkspacePath, to: &str) -> Result<(), String> {
    // The source itself, not a symlink's target: a symlink is copied as a symlink.
    let source = stat(client, from, false).await?;
    let kind = source.r#type();
    if !matches!(kind, pb::FileType::File | pb::FileType::Directory | pb::FileType::Symlink) {
        return Err(format!(
            "FAILED_PRECONDITION: {from} is a device, FIFO or socket; only files, directories and symlinks are copied"
        ));
    }
    let shape = SourceShape {
        name: source.name.clone(),
        is_directory: kind == pb::FileType::Directory,
        contents_only: paths::is_contents_only(&from.path),
    };
    let placement = paths::place(to, host_existing(to)?, &shape)?;
    let mut host = HostTree::open(Path::new(&placement.parent))?;
    // Host paths below `placement.parent`; the top one is empty when a directory's content goes
    // straight into it.
    let top = placement.leaf.unwrap_or_default();
    match kind {
        pb::FileType::File => {
            let mut progress = TransferProgress::file(u64::try_from(source.size_bytes).unwrap_or(0));
            let copied = download_file(client, &from.workspace_id, &source, &host, &top, &mut progress).await;
            finish(&progress, copied)
        }
        pb::FileType::Symlink => host.symlink(&top, &source.symlink_target),
        _ => {
            let mut progress = TransferProgress::tree();
            let copied = download_tree(client, &from.workspace_id, &source, &mut host, &top, &mut progress).await;
            finish(&progress, copied.and_then(|()| host.finish()))
        }
    }
}

fn finish(progress: &TransferProgress, result: Result<(), String>) -> Result<(), String> {
    match &result {
        Ok(()) => progress.finish(),
        Err(_) => progress.abandon(),
    }
    result
}

async fn download_tree(
    client: &mut Client,
    workspace_id: &str,
    source: &pb::EntryInfo,
    host: &mut HostTree,
    top: &str,
    progress: &mut TransferProgress,
) -> Result<(), String> {
    if !top.is_empty() {
        host.make_dir(top, source.mode, source.modify_time)?;
    }
    let mut walk = RemoteWalk::new(client.clone(), workspace_id.to_owned(), source.path.clone(), true);
    while let Some(listed) = walk.next().await? {
        let relative = paths::join(top, &listed.relative);
        let entry = &listed.entry;
        match entry.r#type() {
            pb::FileType::Directory => host.make_dir(&relative, entry.mode, entry.modify_time)?,
            pb::FileType::File => download_file(client, workspace_id, entry, host, &relative, progress).await?,
            pb::FileType::Symlink => host.symlink(&relative, &entry.symlink_target)?,
            _ => progress.warn(&format!("berth: skipped {}: a device, FIFO or socket", entry.path)),
        }
    }
    Ok(())
}

/// Downloads one file to `relative` below the host directory; it appears there complete or not
/// at all.
async fn download_file(
    client: &mut Client,
    workspace_id: &str,
    listed: &pb::EntryInfo,
    host: &HostTree,
    relative: &str,
    progress: &mut TransferProgress,
) -> Result<(), String> {
    progress.start_file(&listed.name);
    let request =
        pb::ReadFileRequest { workspace_id: workspace_id.to_owned(), path: listed.path.clone(), offset: 0, length: 0 };
    let mut stream = client.read_file(request).await.map_err(describe)?.into_inner();
    let mut file = host.create_file(relative)?;
    // The file as it was opened; the listing may be older.
    let mut opened = None;
    while let Some(message) = stream.message().await.map_err(describe)? {
        match message.event {
            Some(pb::read_file_response::Event::Entry(entry)) => opened = Some(entry),
            Some(pb::read_file_response::Event::Chunk(bytes)) => {
                file.write(&bytes).await?;
                progress.advance(bytes.len() as u64);
            }
            None => {}
        }
    }
    let described = opened.as_ref().unwrap_or(listed);
    file.commit(described.mode, described.modify_time.as_ref()).await
}

/// `berth cp ID:/path -`: the file's bytes on stdout.
async fn to_stdout(client: &mut Client, from: &WorkspacePath) -> Result<ExitCode, String> {
    super::fs::cat(client, from).await
}

/// A host entry to upload, found by the walk.
struct LocalEntry {
    path: PathBuf,
    /// Slash-separated path below the copied directory.
    relative: String,
    kind: LocalKind,
    mode: u32,
}

enum LocalKind {
    Directory,
    File,
    Symlink(PathBuf),
    Other,
}

async fn upload(client: &mut Client, from: &str, to: &WorkspacePath) -> Result<(), String> {
    // A symlink named as SRC is followed, like `cp`'s arguments.
    let metadata = std::fs::metadata(from).map_err(|err| format!("cannot read {from}: {err}"))?;
    if !metadata.is_dir() && !metadata.is_file() {
        return Err(format!("{from} is a device, FIFO or socket; only files and directories are copied"));
    }
    let name = match Path::new(from).file_name() {
        Some(name) => name.to_str().ok_or_else(|| format!("{from}: only UTF-8 names can be copied"))?.to_owned(),
        None => String::new(),
    };
    let shape = SourceShape { name, is_directory: metadata.is_dir(), contents_only: paths::is_contents_only(from) };
    let existing = remote_existing(client, to).await?;
    let placement = paths::place(&to.path, existing, &shape)?;
    let top = match &placement.leaf {
        Some(leaf) => paths::join(&placement.parent, leaf),
        None => placement.parent.clone(),
    };
    let mode = metadata.mode() & 0o7777;
    if metadata.is_file() {
        let mut progress = TransferProgress::file(metadata.len());
        let file = tokio::fs::File::open(from).await.map_err(|err| format!("cannot read {from}: {err}"))?;
        let copied = upload_file(client, &to.workspace_id, file, from, &top, mode, &mut progress).await;
        return finish(&progress, copied);
    }
    let mut progress = TransferProgress::tree();
    // Into an existing directory, a same-named one merges (MakeDir `parents` accepts it);
    // otherwise the destination's parent must exist, as with `cp`.
    let make_top = placement.leaf.is_some().then_some((existing == Existing::Directory, mode));
    let copied = upload_tree(client, &to.workspace_id, Path::new(from), &top, make_top, &mut progress).await;
    finish(&progress, copied)
}

/// Uploads the tree below `from` to `top`, first creating `top` when `make_top` says so (with
/// MakeDir's `parents`, and the mode).
async fn upload_tree(
    client: &mut Client,
    workspace_id: &str,
    from: &Path,
    top: &str,
    make_top: Option<(bool, u32)>,
    progress: &mut TransferProgress,
) -> Result<(), String> {
    if let Some((parents, mode)) = make_top {
        make_dir(client, workspace_id, top, parents, mode).await?;
    }
    let mut entries = walk_host(from.to_owned());
    while let Some(entry) = entries.recv().await {
        let entry = entry?;
        let remote_path = paths::join(top, &entry.relative);
        match entry.kind {
            LocalKind::Directory => make_dir(client, workspace_id, &remote_path, true, entry.mode).await?,
            LocalKind::File => {
                let shown = entry.path.display().to_string();
                // Not through a symlink swapped in since the walk saw a file.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
                    .open(&entry.path)
                    .and_then(|file| {
                        if file.metadata()?.is_file() {
                            Ok(file)
                        } else {
                            Err(std::io::Error::other("it is no longer a regular file"))
                        }
                    })
                    .map_err(|err| format!("cannot read {shown}: {err}"))?;
                let file = tokio::fs::File::from_std(file);
                upload_file(client, workspace_id, file, &shown, &remote_path, entry.mode, progress).await?;
            }
            LocalKind::Symlink(target) => progress.warn(&format!(
                "berth: skipped symlink {} -> {}: WriteFile cannot create symlinks",
                entry.path.display(),
                target.display()
            )),
            LocalKind::Other => progress
                .warn(&format!("berth: skipped {}: a device, FIFO or socket is not copied", entry.path.display())),
        }
    }
    Ok(())
}

async fn make_dir(client: &mut Client, workspace_id: &str, path: &str, parents: bool, mode: u32) -> Result<(), String> {
    let request = pb::MakeDirRequest { workspace_id: workspace_id.to_owned(), path: path.to_owned(), parents, mode };
    client.make_dir(request).await.map_err(describe)?;
    Ok(())
}

async fn upload_file(
    client: &mut Client,
    workspace_id: &str,
    file: tokio::fs::File,
    shown: &str,
    remote_path: &str,
    mode: u32,
    progress: &mut TransferProgress,
) -> Result<(), String> {
    progress.start_file(Path::new(shown).file_name().and_then(|name| name.to_str()).unwrap_or(shown));
    let header = pb::write_file_request::Header {
        workspace_id: workspace_id.to_owned(),
        path: remote_path.to_owned(),
        mode,
        expected_revision: String::new(),
        create_parents: false,
    };
    remote::write_file(client, header, file, shown, |bytes| progress.advance(bytes)).await?;
    Ok(())
}

/// `berth cp - ID:/path`: stdin into one workspace file (a new file gets mode 0644).
async fn upload_stdin(client: &mut Client, to: &WorkspacePath) -> Result<(), String> {
    if remote_existing(client, to).await? == Existing::Directory {
        return Err(format!("{to} is a directory; name the file to write stdin to"));
    }
    let header = pb::write_file_request::Header {
        workspace_id: to.workspace_id.clone(),
        path: to.path.clone(),
        ..Default::default()
    };
    let mut progress = TransferProgress::tree();
    let copied = remote::write_file(client, header, tokio::io::stdin(), "stdin", |bytes| progress.advance(bytes)).await;
    finish(&progress, copied.map(drop))
}

/// Walks a host directory on a blocking thread (readdir blocks), sorted by name, not following
/// symlinks; entries come through a bounded channel, the first error ends the walk.
fn walk_host(root: PathBuf) -> mpsc::Receiver<Result<LocalEntry, String>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::task::spawn_blocking(move || {
        for item in walkdir::WalkDir::new(&root).min_depth(1).follow_links(false).sort_by_file_name() {
            let entry = item.and_then(|entry| Ok((entry.metadata()?, entry))).map_err(|err| {
                let path = err.path().unwrap_or(&root).display().to_string();
                format!("cannot read {path}: {}", err.io_error().map_or(err.to_string(), ToString::to_string))
            });
            let entry = entry.and_then(|(metadata, entry)| local_entry(&root, entry.into_path(), &metadata));
            let failed = entry.is_err();
            if sender.blocking_send(entry).is_err() || failed {
                return;
            }
        }
    });
    receiver
}

fn local_entry(root: &Path, path: PathBuf, metadata: &std::fs::Metadata) -> Result<LocalEntry, String> {
    let relative =
        path.strip_prefix(root).map_err(|_| format!("{} is not below {}", path.display(), root.display()))?;
    let relative = relative
        .components()
        .map(|component| component.as_os_str().to_str())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("{}: only UTF-8 names can be copied", path.display()))?
        .join("/");
    let file_type = metadata.file_type();
    let kind = if file_type.is_dir() {
        LocalKind::Directory
    } else if file_type.is_file() {
        LocalKind::File
    } else if file_type.is_symlink() {
        LocalKind::Symlink(std::fs::read_link(&path).unwrap_or_default())
    } else {
        LocalKind::Other
    };
    Ok(LocalEntry { path, relative, kind, mode: metadata.mode() & 0o7777 })
}
