//! WriteFile (and the last chunk of WriteFileChunk): atomic replace. The content goes into a
//! new temporary file in the target's own directory, which then replaces the target with one
//! rename(2): readers see the old or the new file, never a mix, and a failed write leaves the
//! old file as it was. A final symlink is followed in-root first, so the link stays and its
//! target is replaced.
//!
//! No fsync: ext4 (`auto_da_alloc`) and overlayfs on it flush a file replaced by rename before
//! the rename commits, and an fsync per write would cost more than the write itself.

use std::io::Write as _;
use std::os::fd::AsFd;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::entry::{Entry, EntryKind, revision};
use super::{fs_error, not_regular, stopped_meanwhile};
use crate::data::InRoot;
use crate::data::in_root::{self, split_parent};
use crate::error::{Error, Reason, Result};

/// Mode of a new file when the caller gives none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// What to write and how (WriteFile's header).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Normalized absolute path.
    pub path: String,
    /// 0: the replaced file's mode, or 0644.
    pub mode: u32,
    /// Non-empty: the revision the file must still have.
    pub expected_revision: String,
    pub create_parents: bool,
}

/// Writes the chunks `next_chunk` yields (None: the end) to `options.path`, atomically.
pub fn write_file(
    root: &InRoot,
    options: &WriteOptions,
    cancel: &CancellationToken,
    next_chunk: &mut dyn FnMut() -> Result<Option<Bytes>>,
) -> Result<Entry> {
    let path = options.path.as_str();
    let target = root.follow_final_symlinks(path).map_err(|err| fs_error(&err, "write", path))?;
    if target == "/" {
        return Err(is_a_directory(path));
    }
    let (parent, name) = split_parent(&target);
    if options.create_parents {
        super::ops::make_dirs(root, parent, super::ops::DEFAULT_DIR_MODE)?;
    }
    let dir = root.resolve_dir(parent).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => Error::new(
            Reason::PathNotFound,
            format!("the parent directory {parent} of {path} does not exist; create it, or pass create_parents"),
        ),
        _ => fs_error(&err, "write", path),
    })?;
    let existing = current(dir.as_fd(), name, path)?;
    check_revision(existing.as_ref(), &options.expected_revision, path)?;

    let temporary = temporary_name(name);
    let mut file = in_root::create_file(dir.as_fd(), &temporary, 0o600).map_err(|err| fs_error(&err, "write", path))?;
    let written = (|| {
        while let Some(chunk) = next_chunk()? {
            if cancel.is_cancelled() {
                return Err(stopped_meanwhile(path));
            }
            file.write_all(&chunk).map_err(|err| fs_error(&err, "write", path))?;
        }
        let (owner, mode) = match &existing {
            Some(stat) => (in_root::Owner { uid: stat.st_uid, gid: stat.st_gid }, stat.st_mode & 0o7777),
            None => (root.owner(), DEFAULT_FILE_MODE),
        };
        let mode = if options.mode == 0 { mode } else { options.mode & 0o7777 };
        in_root::set_owner_and_mode(file.as_fd(), owner, mode).map_err(|err| fs_error(&err, "write", path))?;
        // Checked again right before the rename: a change made while the content streamed in
        // must not be overwritten (a change between this check and the rename cannot be
        // excluded without a lock the workspace's own programs would not take).
        check_revision(current(dir.as_fd(), name, path)?.as_ref(), &options.expected_revision, path)?;
        in_root::rename(dir.as_fd(), &temporary, dir.as_fd(), name, false).map_err(|err| fs_error(&err, "write", path))
    })();
    if let Err(err) = written {
        let _ = in_root::unlink(dir.as_fd(), &temporary, false);
        return Err(err);
    }
    let stat = in_root::lstat_at(dir.as_fd(), name).map_err(|err| fs_error(&err, "describe", path))?;
    Ok(Entry::from_stat(path, &stat, String::new()))
}

/// The regular file at `name` in `dir`, if any; a directory or special file there is an error.
fn current(dir: std::os::fd::BorrowedFd<'_>, name: &str, path: &str) -> Result<Option<rustix::fs::Stat>> {
    match in_root::lstat_at(dir, name) {
        Ok(stat) => match EntryKind::of(&stat) {
            EntryKind::File => Ok(Some(stat)),
            EntryKind::Directory => Err(is_a_directory(path)),
            // A symlink here points outside what the in-root walk could follow (a loop was
            // cut short, or it was swapped in meanwhile): never write through it.
            EntryKind::Symlink => Err(Error::new(
                Reason::InvalidPath,
                format!("{path} is a symlink that changed while it was followed; retry"),
            )),
            EntryKind::Other => Err(not_regular(path)),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(fs_error(&err, "write", path)),
    }
}

fn check_revision(existing: Option<&rustix::fs::Stat>, expected: &str, path: &str) -> Result<()> {
    if expected.is_empty() {
        return Ok(());
    }
    match existing {
        Some(stat) if revision(stat) == expected => Ok(()),
        Some(_) => Err(Error::new(
            Reason::RevisionMismatch,
            format!(
                "{path} changed since revision {expected} was read; read it again, merge, and retry with the new revision"
            ),
        )),
        None => Err(Error::new(
            Reason::RevisionMismatch,
            format!("{path} no longer exists (expected revision {expected}); read the directory again"),
        )),
    }
}

/// A name for the temporary file beside `name`, unique and within NAME_MAX.
fn temporary_name(name: &str) -> String {
    let stamp = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let prefix: String = name.chars().take(200).collect();
    format!(".{prefix}.berth-{stamp:x}")
}

fn is_a_directory(path: &str) -> Error {
    Error::new(Reason::IsADirectory, format!("{path} is a directory; write to a file path inside it"))
}
