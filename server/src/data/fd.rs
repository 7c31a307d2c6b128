//! Directory-fd helpers shared by the archive writer, the extractor and `empty_dir`.
//!
//! Every lookup here names ONE path component relative to an already opened directory and never
//! follows a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `unlinkat`), so a walk that starts at a
//! trusted directory fd stays inside that directory's tree whatever the tree holds, and a symlink
//! swapped in after a check cannot redirect it: the next call fails instead of following.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// The kind of a file as `lstat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Directory,
    Regular,
    Symlink,
    /// Sockets, fifos and device nodes: never archived, never followed.
    Special,
}

impl Kind {
    pub(crate) fn of(stat: &FileStat) -> Self {
        match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFDIR => Kind::Directory,
            SFlag::S_IFREG => Kind::Regular,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

/// Opens a host directory given by the caller. Symlinks in its ancestors are the host's business
/// and are followed; its last component must be a real directory (`O_NOFOLLOW`).
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(path, dir_flags(), Mode::empty())?)
}

/// Opens the directory `name` inside `parent`; fails with `ELOOP` or `ENOTDIR` when `name` is a
/// symlink or not a directory.
pub(crate) fn open_subdir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat(parent, name, dir_flags(), Mode::empty())?)
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// `lstat` of `name` inside `parent`.
pub(crate) fn lstat_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<FileStat> {
    Ok(fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)?)
}

/// The names in a directory (without `.` and `..`), sorted bytewise so archives are deterministic.
///
/// nix's `dir` feature is not enabled, and std cannot list an fd, so the listing goes through the
/// fd's `/proc/self/fd` magic link: it re-opens the very directory the fd refers to, never a path.
pub(crate) fn list_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let link = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut names =
        std::fs::read_dir(link)?.map(|entry| entry.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>()?;
    names.sort_unstable();
    Ok(names)
}

/// Removes everything inside `dir`, depth first, without following symlinks; returns the number of
/// entries removed.
pub(crate) fn remove_contents(dir: BorrowedFd<'_>) -> io::Result<u64> {
    let mut removed = 0;
    for name in list_names(dir)? {
        removed += remove_entry(dir, &name)?;
    }
    Ok(removed)
}

/// Removes `name` inside `parent` (recursively when it is a real directory); returns the number
/// of entries removed. A missing entry counts as removed by someone else.
pub(crate) fn remove_entry(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<u64> {
    let stat = match lstat_at(parent, name) {
        Ok(stat) => stat,
        Err(err) if err.raw_os_error() == Some(Errno::ENOENT as i32) => return Ok(0),
        Err(err) => return Err(err),
    };
    if Kind::of(&stat) != Kind::Directory {
        unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?;
        return Ok(1);
    }
    let child = open_subdir(parent, name)?;
    let removed = remove_contents(child.as_fd())?;
    drop(child);
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)?;
    Ok(removed + 1)
}
