//! ImportData and ImportDataChunk: an archive extracted into a directory of a workspace.
//!
//! The archive is staged on the host first (under berth's state dir, hashed as it arrives, and
//! bounded by what an archive within the import limits can weigh), so its SHA-256 is checked
//! before anything changes, and a client that stalls or breaks off never holds the workspace.
//! Then, on the workspace's root (running: no downtime; stopped: a private mount), it is
//! extracted with the path-safe, bounded extractor into a staging directory beside the target
//! (same parent, so it is on the same file system and in-root), and only a complete extraction
//! is put in place (`data::merge`):
//! - a target that does not exist yet is the staging directory renamed (its missing parents are
//!   created first, owned by the workspace's user, and stay even if the import fails);
//! - `replace` swaps the staging directory with the target in one RENAME_EXCHANGE, then removes
//!   the old tree; where overlayfs cannot swap (a directory from the image, such as an image's
//!   /data), the target is emptied and the staging tree moved in;
//! - otherwise the staging tree is merged into the target: archive entries replace the entries
//!   of the same path (a directory is merged, not replaced), everything else stays.
//!
//! So a failure of the archive (a hostile entry, a limit, a truncated stream, a checksum) leaves
//! the target untouched; only a disk failure while entries are moved can leave part of them.
//! The extraction and placement run in a task of their own: a client that goes away after
//! sending the last byte does not cut an import in half.

use std::ffi::OsStr;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CLIENT_STALL, Files, blocking, fs_error, stopped_meanwhile};
use crate::data::in_root::{self, split_parent};
use crate::data::{ArchiveFormat, ArchiveSummary, ExtractLimits, ExtractOptions, InRoot, merge};
use crate::error::{Error, Reason, Result};
use crate::workspace::Manager;

/// The directory an import goes to when the request names none.
pub const DEFAULT_IMPORT_PATH: &str = crate::data::DATA_PATH;

/// Where and how to import (ImportData's header, ImportDataChunk's first chunk), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportOptions {
    /// Normalized absolute path of the target directory.
    pub path: String,
    pub format: ArchiveFormat,
    /// Whether the target ends up holding exactly the archive's content.
    pub replace: bool,
    /// Expected SHA-256 in lowercase hex; empty skips the check.
    pub sha256: String,
}

impl ImportOptions {
    /// Checks a request's fields: `path` empty means /data; `sha256` is empty or 64 hex digits.
    pub fn parse(path: &str, format: ArchiveFormat, replace: bool, sha256: &str) -> Result<Self> {
        let path = if path.is_empty() { DEFAULT_IMPORT_PATH.to_owned() } else { super::parse_path(path, "path")? };
        if path == "/" {
            return Err(Error::new(
                Reason::InvalidPath,
                "an import cannot go to / (it is extracted beside its target first); name a directory such as /data",
            ));
        }
        let valid = sha256.is_empty() || (sha256.len() == 64 && sha256.bytes().all(|byte| byte.is_ascii_hexdigit()));
        if !valid {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!(
                    "sha256 {sha256:?} is not a SHA-256; pass 64 hexadecimal characters (`sha256sum FILE`), or nothing to skip the check"
                ),
            ));
        }
        Ok(Self { path, format, replace, sha256: sha256.to_ascii_lowercase() })
    }
}

/// A completed import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// Size of the received archive.
    pub size_bytes: u64,
    /// SHA-256 of the received archive, lowercase hex.
    pub sha256: String,
    /// Entries extracted.
    pub entries: u64,
}

/// An archive received in full on the host.
#[derive(Debug)]
pub(super) struct StagedArchive {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl Files {
    /// Imports the archive `chunks` delivers (ended by None or an error) into a directory of
    /// the workspace.
    pub async fn import_data(
        &self,
        workspace_id: &str,
        options: ImportOptions,
        mut chunks: mpsc::Receiver<Result<Bytes>>,
    ) -> Result<Imported> {
        // The workspace must exist before anything is staged for it.
        self.manager.get(workspace_id).await?;
        let staged_path = self.uploads.stream_path(workspace_id);
        let bound = self.manager.import_limits().archive_bytes();
        let runtime = tokio::runtime::Handle::current();
        let staged = blocking(move || {
            let mut next = || {
                runtime.block_on(async {
                    tokio::select! {
                        chunk = chunks.recv() => chunk.transpose(),
                        () = tokio::time::sleep(CLIENT_STALL) => Err(stalled()),
                    }
                })
            };
            stage(&staged_path, bound, &mut next)
        })
        .await?;
        let manager = self.manager.clone();
        let workspace_id = workspace_id.to_owned();
        tokio::spawn(import_staged(manager, workspace_id, options, staged))
            .await
            .map_err(|err| Error::internal(format!("the import task failed: {err}")))?
    }
}

/// Writes an archive's chunks to `path`, hashing them; at most `bound` bytes.
fn stage(path: &Path, bound: u64, next_chunk: &mut dyn FnMut() -> Result<Option<Bytes>>) -> Result<StagedArchive> {
    let mut file = create_staging_file(path)?;
    let staged = (|| {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = next_chunk()? {
            size += chunk.len() as u64;
            check_archive_size(size, bound)?;
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(|err| staging_error(path, &err))?;
        }
        Ok(StagedArchive { path: path.to_owned(), size, sha256: hex::encode(hasher.finalize()) })
    })();
    if staged.is_err() {
        let _ = std::fs::remove_file(path);
    }
    staged
}

/// Creates a staging file (and its directory, readable by berth only).
pub(super) fn create_staging_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = path.parent().expect("staging files live in a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::File::create(path))
        .map_err(|err| staging_error(path, &err))
}

/// Fails once an archive being received passes `bound` bytes.
pub(super) fn check_archive_size(size: u64, bound: u64) -> Result<()> {
    if size <= bound {
        return Ok(());
    }
    Err(Error::new(
        Reason::ResourceLimitExceeded,
        format!(
            "the archive is over {bound} bytes, more than any archive within the server's import limits \
             (import_max_bytes, import_max_entries) can be; nothing was imported: split it, or ask the operator to raise the limits"
        ),
    ))
}

pub(super) fn staging_error(path: &Path, err: &std::io::Error) -> Error {
    let reason = match err.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
        Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT) => Reason::ResourceLimitExceeded,
        _ => Reason::Internal,
    };
    Error::new(
        reason,
        format!(
            "staging the upload in {} on the server failed: {err}; nothing in the workspace changed, check the server's disk and retry",
            path.display()
        ),
    )
}

fn stalled() -> Error {
    Error::new(
        Reason::ResourceLimitExceeded,
        format!(
            "the client sent no archive data for {} s; nothing was imported, retry with a client that keeps sending",
            CLIENT_STALL.as_secs()
        ),
    )
}

/// Checks a staged archive's SHA-256, extracts it into place and records the import; the
/// staged file is removed in any case. Callers run it in a task of its own.
pub(super) async fn import_staged(
    manager: Arc<Manager>,
    workspace_id: String,
    options: ImportOptions,
    staged: StagedArchive,
) -> Result<Imported> {
    let imported = extract_staged(&manager, &workspace_id, &options, &staged).await;
    let staged_path = staged.path.clone();
    let _ = blocking(move || Ok(std::fs::remove_file(staged_path))).await;
    let summary = imported?;
    let how = if options.replace { "replacing its content" } else { "merged into its content" };
    let message = format!(
        "imported {} entries ({} bytes of archive, sha256 {}) into {}, {how}",
        summary.entries, staged.size, staged.sha256, options.path
    );
    tracing::info!(workspace_id, path = %options.path, entries = summary.entries, size_bytes = staged.size, replace = options.replace, "data imported");
    manager.record_data_imported(&workspace_id, &message).await;
    Ok(Imported { size_bytes: staged.size, sha256: staged.sha256, entries: summary.entries })
}

async fn extract_staged(
    manager: &Manager,
    workspace_id: &str,
    options: &ImportOptions,
    staged: &StagedArchive,
) -> Result<ArchiveSummary> {
    if !options.sha256.is_empty() && options.sha256 != staged.sha256 {
        return Err(Error::new(
            Reason::ChecksumMismatch,
            format!(
                "the received archive's SHA-256 is {}, not the expected {}; nothing was imported: upload it again, \
                 and check the expected checksum",
                staged.sha256, options.sha256
            ),
        ));
    }
    let limits = manager.import_limits();
    let access = manager.file_access(workspace_id).await?;
    let options = options.clone();
    let archive = staged.path.clone();
    blocking(move || {
        // The whole access moves in, so the mount or gate it holds lasts as long as the work.
        let access = access;
        let placed = import_into(&access.root, &access.cancel, &options, &archive, limits);
        drop(access);
        placed
    })
    .await
}

/// Extracts the archive file `archive` into a staging directory beside the target and puts it
/// in place (see the module doc).
fn import_into(
    root: &InRoot,
    cancel: &CancellationToken,
    options: &ImportOptions,
    archive: &Path,
    limits: ExtractLimits,
) -> Result<ArchiveSummary> {
    let path = options.path.as_str();
    let target = root.follow_final_symlinks(path).map_err(|err| fs_error(&err, "import into", path))?;
    if target == "/" {
        return Err(Error::new(
            Reason::InvalidPath,
            format!("{path} leads to /, which an import cannot replace; name a directory below it"),
        ));
    }
    let (parent, name) = split_parent(&target);
    super::ops::make_dirs(root, parent, super::ops::DEFAULT_DIR_MODE)?;
    let parent_dir = root.open_dir(parent).map_err(|err| fs_error(&err, "import into", path))?;
    let existing = match in_root::lstat_at(parent_dir.as_fd(), name) {
        Ok(stat) if super::EntryKind::of(&stat) == super::EntryKind::Directory => Some(stat),
        Ok(_) => {
            return Err(Error::new(
                Reason::NotADirectory,
                format!("{path} exists and is not a directory; import into a directory, or remove it first"),
            ));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(fs_error(&err, "import into", path)),
    };
    remove_leftovers(parent_dir.as_fd(), name);
    let staging_name = staging_name(name);
    let staging_name = OsStr::new(&staging_name);
    rustix::fs::mkdirat(&parent_dir, staging_name, rustix::fs::Mode::from_raw_mode(0o700))
        .map_err(|err| fs_error(&std::io::Error::from(err), "stage the import beside", path))?;
    let placed = (|| {
        let staging = in_root::open_subdir(parent_dir.as_fd(), staging_name)
            .map_err(|err| fs_error(&err, "stage the import beside", path))?;
        let interrupt = || if cancel.is_cancelled() { Err(stopped_meanwhile(path)) } else { Ok(()) };
        let file = std::fs::File::open(archive).map_err(|err| staging_error(archive, &err))?;
        let extraction = crate::data::extract_archive_at(
            std::io::BufReader::with_capacity(256 << 10, file),
            options.format,
            staging.as_fd(),
            &ExtractOptions {
                limits: Some(limits),
                reject_special: true,
                implied_dir_owner: Some(root.owner()),
                interrupt: &interrupt,
            },
        )?;
        interrupt()?;
        let (owner, mode) = match &existing {
            Some(stat) => (in_root::Owner { uid: stat.st_uid, gid: stat.st_gid }, stat.st_mode & 0o7777),
            None => (root.owner(), super::ops::DEFAULT_DIR_MODE),
        };
        in_root::set_owner_and_mode(staging.as_fd(), owner, mode)
            .map_err(|err| fs_error(&err, "stage the import beside", path))?;
        let name = OsStr::new(name);
        let parent = parent_dir.as_fd();
        match existing {
            None => merge::rename_new(parent, staging_name, name).map_err(|err| fs_error(&err, "import into", path))?,
            Some(_) if options.replace => match merge::exchange(parent, staging_name, name) {
                Ok(()) => {
                    // The staging name now holds the old tree.
                    if let Err(err) = merge::remove_tree(parent, staging_name) {
                        tracing::warn!(path, error = %err, "cannot remove the tree a replacing import swapped out");
                    }
                }
                Err(err) if merge::cannot_exchange(&err) => {
                    tracing::info!(path, error = %err, "the import's target cannot be swapped (on overlayfs: it comes from the image); emptying it and moving the archive's entries in");
                    let target_dir =
                        in_root::open_subdir(parent, name).map_err(|err| fs_error(&err, "import into", path))?;
                    in_root::remove_contents(target_dir.as_fd()).map_err(|err| fs_error(&err, "empty", path))?;
                    merge::merge_into(staging.as_fd(), target_dir.as_fd(), &extraction.implied_dirs, path)?;
                    let _ = merge::remove_tree(parent, staging_name);
                }
                Err(err) => return Err(fs_error(&err, "import into", path)),
            },
            Some(_) => {
                let target_dir =
                    in_root::open_subdir(parent, name).map_err(|err| fs_error(&err, "import into", path))?;
                merge::merge_into(staging.as_fd(), target_dir.as_fd(), &extraction.implied_dirs, path)?;
                let _ = merge::remove_tree(parent, staging_name);
            }
        }
        Ok(extraction.summary)
    })();
    if placed.is_err()
        && let Err(err) = merge::remove_tree(parent_dir.as_fd(), staging_name)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path, error = %err, "cannot remove the staging directory of a failed import");
    }
    placed
}

const STAGING_MARK: &str = ".berth-import-";

/// This server's runs are told apart in staging names, so an import removes the leftovers of a
/// crashed earlier run but never the staging directory of another import in flight.
fn run_id() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| format!("{:x}", time::OffsetDateTime::now_utc().unix_timestamp_nanos()))
}

/// A hidden name beside `name`, unique in this run and within NAME_MAX.
fn staging_name(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix: String = name.chars().take(180).collect();
    format!(".{prefix}{STAGING_MARK}{}-{}", run_id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Removes staging directories an earlier run of berth left beside `name` (it crashed during an
/// import).
fn remove_leftovers(parent: std::os::fd::BorrowedFd<'_>, name: &str) {
    let prefix: String = name.chars().take(180).collect();
    let ours = format!(".{prefix}{STAGING_MARK}");
    let current = format!("{ours}{}-", run_id());
    let Ok(names) = list_names(parent) else {
        return;
    };
    for leftover in names.iter().filter(|entry| entry.starts_with(&ours) && !entry.starts_with(&current)) {
        match merge::remove_tree(parent, OsStr::new(leftover)) {
            Ok(()) => tracing::info!(name = %leftover, "removed the staging directory of an interrupted import"),
            Err(err) => {
                tracing::warn!(name = %leftover, error = %err, "cannot remove the staging directory of an interrupted import")
            }
        }
    }
}

fn list_names(dir: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<String>> {
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir));
    std::fs::read_dir(link)?.map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_to_data_and_check_the_checksum_format() {
        let options = ImportOptions::parse("", ArchiveFormat::TarGzip, false, "").unwrap();
        assert_eq!(options.path, "/data");
        let upper = "AB".repeat(32);
        let options = ImportOptions::parse("/srv//x/", ArchiveFormat::TarZstd, true, &upper).unwrap();
        assert_eq!((options.path.as_str(), options.sha256.as_str()), ("/srv/x", "ab".repeat(32).as_str()));
        for bad in ["abc", &"g".repeat(64), &"a".repeat(65)] {
            let err = ImportOptions::parse("/data", ArchiveFormat::TarGzip, false, bad).unwrap_err();
            assert_eq!(err.reason(), Reason::InvalidArgument, "{bad}");
        }
        assert_eq!(
            ImportOptions::parse("/", ArchiveFormat::TarGzip, false, "").unwrap_err().reason(),
            Reason::InvalidPath
        );
        assert_eq!(
            ImportOptions::parse("data", ArchiveFormat::TarGzip, false, "").unwrap_err().reason(),
            Reason::InvalidPath
        );
    }

    #[test]
    fn staging_hashes_and_bounds_the_archive_and_removes_a_failed_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws/stream-1");
        let mut chunks = vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")].into_iter();
        let staged = stage(&path, 100, &mut || Ok(chunks.next())).unwrap();
        assert_eq!(staged.size, 11);
        assert_eq!(staged.sha256, hex::encode(Sha256::digest(b"hello world")));
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");

        let mut chunks = vec![Bytes::from(vec![0; 60]), Bytes::from(vec![0; 60])].into_iter();
        let err = stage(&path, 100, &mut || Ok(chunks.next())).unwrap_err();
        assert_eq!(err.reason(), Reason::ResourceLimitExceeded);
        assert!(!path.exists(), "a failed staging leaves no file");
    }

    #[test]
    fn staging_names_are_hidden_unique_and_fit_name_max() {
        let long = "n".repeat(255);
        let (first, second) = (staging_name(&long), staging_name(&long));
        assert_ne!(first, second);
        assert!(first.starts_with('.') && first.len() <= 255, "{first}");
        assert!(first.contains(run_id()));
    }
}
