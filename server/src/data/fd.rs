//! Directory-fd helpers shared by the archive writer, the extractor and `empty_dir`.
//!
//! Every lookup here names ONE path component relative to an already opened directory and never
//! follows a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `unlinkat`), so a walk that starts at a
//! trusted directory fd stays inside that directory's tree whatever the tree holds, and a symlink
//! swapped in after a check cannot redirect it: the next call fails instead of following.
//!
//! The one lookup of another kind is `..`, by which walks come back up ([`open_parent`]): it
//! only ever returns to a directory the walk came down from, checked by device and inode, so
//! walks hold one directory fd whatever the depth.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
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

/// A directory's identity: its device and inode numbers.
pub(crate) type DirId = (u64, u64);

pub(crate) fn id_of(stat: &FileStat) -> DirId {
    (stat.st_dev, stat.st_ino)
}

/// Opens the parent of `dir` through its `..` and checks that it is the directory `expected`.
/// A walk that went down from a trusted fd comes back up this way, so it holds one directory fd
/// whatever the depth; the check makes `..` as good as an fd kept open: if the directory was
/// moved elsewhere in the meantime, the walk fails instead of continuing in another directory.
pub(crate) fn open_parent(dir: BorrowedFd<'_>, expected: DirId) -> io::Result<OwnedFd> {
    let parent = openat(dir, OsStr::new(".."), dir_flags(), Mode::empty())?;
    if id_of(&fstat(&parent)?) != expected {
        return Err(io::Error::other(
            "the directory was moved while berth was walking it; retry when nothing changes it",
        ));
    }
    Ok(parent)
}

/// An iterative depth-first walk below a root directory fd. It keeps the names still to visit
/// at every level (listed when the walk entered the level) but only ONE open directory fd, the
/// current one: going down opens a child from it, going up re-opens the parent through
/// [`open_parent`]. So no depth exhausts berth's fds or stack; the caller decides how deep it
/// goes.
pub(crate) struct Walk<'r> {
    root: BorrowedFd<'r>,
    /// The current directory; `None` at the root.
    current: Option<OwnedFd>,
    /// Names of the current directory not visited yet.
    names: std::vec::IntoIter<OsString>,
    /// One level per directory entered below the root, outermost first.
    levels: Vec<Level>,
}

struct Level {
    /// The directory's name in its parent.
    name: OsString,
    /// The identity of its parent, checked when the walk comes back up.
    parent: DirId,
    /// The parent's names not visited yet.
    parent_names: std::vec::IntoIter<OsString>,
}

impl<'r> Walk<'r> {
    /// Starts at `root`, listing its names.
    pub(crate) fn new(root: BorrowedFd<'r>) -> io::Result<Self> {
        Ok(Self { root, current: None, names: list_names(root)?.into_iter(), levels: Vec::new() })
    }

    /// The current directory.
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.current.as_ref().map_or(self.root, |fd| fd.as_fd())
    }

    /// The next name of the current directory still to visit.
    pub(crate) fn next_name(&mut self) -> Option<OsString> {
        self.names.next()
    }

    /// Makes `child`, the directory `name` of the current one, opened by the caller, the
    /// current directory and lists it.
    pub(crate) fn descend(&mut self, name: OsString, child: OwnedFd) -> io::Result<()> {
        let parent = id_of(&fstat(self.dir())?);
        let names = list_names(child.as_fd())?.into_iter();
        let parent_names = std::mem::replace(&mut self.names, names);
        self.levels.push(Level { name, parent, parent_names });
        self.current = Some(child);
        Ok(())
    }

    /// Goes back up to the parent of the current directory and returns the name of the
    /// directory it left; `None` when the current directory is the root (the walk is over).
    pub(crate) fn ascend(&mut self) -> io::Result<Option<OsString>> {
        let Some(level) = self.levels.pop() else {
            return Ok(None);
        };
        let current = self.current.take().expect("a level below the root has an fd");
        self.current = if self.levels.is_empty() { None } else { Some(open_parent(current.as_fd(), level.parent)?) };
        self.names = level.parent_names;
        Ok(Some(level.name))
    }
}

/// Removes everything inside `dir`, depth first and iteratively (any depth), without following
/// symlinks; returns the number of entries removed. An entry that vanishes meanwhile counts as
/// removed by someone else.
pub(crate) fn remove_contents(dir: BorrowedFd<'_>) -> io::Result<u64> {
    let mut walk = Walk::new(dir)?;
    let mut removed = 0;
    loop {
        let Some(name) = walk.next_name() else {
            let Some(left) = walk.ascend()? else {
                return Ok(removed);
            };
            unlinkat(walk.dir(), left.as_os_str(), UnlinkatFlags::RemoveDir)?;
            removed += 1;
            continue;
        };
        let stat = match lstat_at(walk.dir(), &name) {
            Ok(stat) => stat,
            Err(err) if err.raw_os_error() == Some(Errno::ENOENT as i32) => continue,
            Err(err) => return Err(err),
        };
        if Kind::of(&stat) != Kind::Directory {
            unlinkat(walk.dir(), name.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
            removed += 1;
            continue;
        }
        let child = open_subdir(walk.dir(), &name)?;
        walk.descend(name, child)?;
    }
}
