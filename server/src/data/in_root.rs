//! In-root path resolution for the file manager: every path inside a workspace is resolved by
//! the kernel with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against an fd of the
//! workspace's root, so `..`, absolute symlinks and symlinks swapped in while an operation runs
//! are resolved as if that fd were `/`: nothing reaches the host. Mutations never name a path:
//! they resolve the parent directory in-root and act on ONE name relative to its fd (`*at`
//! calls), which no symlink can redirect.
//!
//! Plain `openat2` rather than the `pathrs` crate: the kernel enforces the containment either
//! way, the errno of each step stays visible for precise errors, and pathrs' own fallbacks are
//! for kernels older than openat2 (5.6), which berth does not support.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};

/// The identity files and directories the file manager creates get: the workspace's user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// An open workspace root: an `O_PATH` fd every path is resolved against.
#[derive(Debug)]
pub struct InRoot {
    root: OwnedFd,
    owner: Owner,
}

/// How many symlinks a chain may have, as the kernel allows (`MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;

impl InRoot {
    /// Opens a root directory given by berth itself (`/proc/<pid>/root`, a magic link that
    /// must be followed, or a host mount of a stopped workspace).
    pub fn open(root: &Path, owner: Owner) -> io::Result<Self> {
        let root = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Self { root, owner })
    }

    /// Another handle on the same root.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { root: self.root.try_clone()?, owner: self.owner })
    }

    /// Who created files belong to.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Resolves `path` (absolute inside the workspace) to an `O_PATH` fd; a symlink at its end is
    /// followed (in-root) only with `follow`.
    pub fn resolve(&self, path: &str, follow: bool) -> io::Result<OwnedFd> {
        let mut flags = OFlags::PATH | OFlags::CLOEXEC;
        if !follow {
            flags |= OFlags::NOFOLLOW;
        }
        self.open_flags(path, flags)
    }

    /// Opens the directory at `path` for listing (symlinks along it followed in-root).
    pub fn open_dir(&self, path: &str) -> io::Result<OwnedFd> {
        self.open_flags(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC)
    }

    /// Resolves the directory `path` to an `O_PATH` fd usable as the base of `*at` calls.
    pub fn resolve_dir(&self, path: &str) -> io::Result<OwnedFd> {
        self.open_flags(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC)
    }

    fn open_flags(&self, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let relative = relative(path);
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        loop {
            match rustix::fs::openat2(&self.root, relative, flags, Mode::empty(), resolve) {
                // openat2 asks for a retry when a rename elsewhere raced the resolution.
                Err(rustix::io::Errno::AGAIN) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    /// Whether the directory `dir` is `ancestor` (device, inode) or lies below it: walks up
    /// through `..` until the workspace's root, never above it.
    pub fn is_within(&self, dir: BorrowedFd<'_>, ancestor: (u64, u64)) -> io::Result<bool> {
        let id = |stat: &Stat| (stat.st_dev, stat.st_ino);
        let root = id(&stat_fd(self.root.as_fd())?);
        let mut current =
            rustix::fs::openat(dir, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        // PATH_MAX bounds the depth of any directory a path can name.
        for _ in 0..4096 {
            let here = id(&stat_fd(current.as_fd())?);
            if here == ancestor {
                return Ok(true);
            }
            if here == root {
                return Ok(false);
            }
            let parent =
                rustix::fs::openat(&current, "..", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
            if id(&stat_fd(parent.as_fd())?) == here {
                return Ok(false);
            }
            current = parent;
        }
        Ok(false)
    }

    /// Follows the symlinks at the end of `path` (in-root) to the path of the entry they lead
    /// to, which may not exist yet; a path that is not a symlink is returned as it is. A
    /// relative target is joined to the link's parent path lexically: when that parent path
    /// itself goes through a symlink, `..` in the target climbs the path as written, not the
    /// directory the kernel found (still inside the workspace either way).
    pub fn follow_final_symlinks(&self, path: &str) -> io::Result<String> {
        let mut current = path.to_owned();
        for _ in 0..MAX_SYMLINK_HOPS {
            let (parent, name) = split_parent(&current);
            let parent_fd = match self.resolve_dir(parent) {
                Ok(fd) => fd,
                // A missing parent holds no symlink: the caller finds it missing too (or
                // creates it).
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(current),
                Err(err) => return Err(err),
            };
            match rustix::fs::readlinkat(&parent_fd, name, Vec::new()) {
                Ok(target) => {
                    let target = target.to_string_lossy().into_owned();
                    current = if target.starts_with('/') { target } else { format!("{parent}/{target}") };
                    current = normalize_path(&current);
                }
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => return Ok(current),
                Err(err) => return Err(err.into()),
            }
        }
        Err(io::Error::from_raw_os_error(libc_eloop()))
    }
}

/// `path` made absolute and lexical: repeated slashes and `.` dropped, `..` climbing one
/// component (never above `/`).
pub fn normalize_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

fn libc_eloop() -> i32 {
    rustix::io::Errno::LOOP.raw_os_error()
}

/// `path` without its leading slashes, as openat2 wants it relative to the root fd (`.` for
/// the root itself).
fn relative(path: &str) -> &str {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() { "." } else { trimmed }
}

/// Splits a normalized absolute path into its parent and last component (`/` has none: its
/// "name" is `.`).
pub fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) if path.len() == 1 => ("/", "."),
        Some(0) => ("/", &path[1..]),
        Some(index) => (&path[..index], &path[index + 1..]),
        None => ("/", path),
    }
}

/// `lstat` of `name` in `dir`.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// `fstat` of any fd, `O_PATH` ones included.
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// The target stored in the symlink `fd` refers to (an `O_PATH | O_NOFOLLOW` fd).
pub fn read_link_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(fd, "", Vec::new())?.into_bytes())
}

/// Opens the regular file an `O_PATH` fd refers to for reading. The caller checked its type:
/// re-opening through `/proc/self/fd` reaches the same inode, never a path.
pub fn reopen_for_reading(fd: BorrowedFd<'_>) -> io::Result<File> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = rustix::fs::open(link, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty())?;
    Ok(File::from(file))
}

/// Creates `name` in `dir` as a new regular file (never following or replacing anything).
pub fn create_file(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?;
    Ok(File::from(file))
}

/// Creates the directory `name` in `dir`, owned by `owner`, with exactly `mode` (no umask).
pub fn make_dir(dir: BorrowedFd<'_>, name: &str, mode: u32, owner: Owner) -> io::Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?;
    let created = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    set_owner_and_mode(created.as_fd(), owner, mode)
}

/// `fchown` + `fchmod` of an open file or directory.
pub fn set_owner_and_mode(fd: BorrowedFd<'_>, owner: Owner, mode: u32) -> io::Result<()> {
    rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(owner.uid)), Some(rustix::fs::Gid::from_raw(owner.gid)))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?;
    Ok(())
}

/// Renames `from` in `from_dir` to `to` in `to_dir`; with `no_replace` an existing `to` fails
/// with EEXIST.
pub fn rename(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
    no_replace: bool,
) -> io::Result<()> {
    let flags = if no_replace { rustix::fs::RenameFlags::NOREPLACE } else { rustix::fs::RenameFlags::empty() };
    Ok(rustix::fs::renameat_with(from_dir, from, to_dir, to, flags)?)
}

/// Removes the file or symlink `name` from `dir` (`is_dir`: the empty directory).
pub fn unlink(dir: BorrowedFd<'_>, name: &str, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    Ok(rustix::fs::unlinkat(dir, name, flags)?)
}

/// The names in a directory (without `.` and `..`), sorted bytewise.
pub fn list_names(dir: BorrowedFd<'_>) -> io::Result<Vec<std::ffi::OsString>> {
    super::fd::list_names(dir)
}

/// Removes everything inside the directory `dir` without following symlinks.
pub fn remove_contents(dir: BorrowedFd<'_>) -> io::Result<u64> {
    super::fd::remove_contents(dir)
}

/// Opens the directory `name` in `dir` without following a symlink.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    super::fd::open_subdir(dir, name)
}

/// Whether `name` is one path component a directory can hold.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_lexically_and_never_climb_above_the_root() {
        assert_eq!(normalize_path("/data//notes/./a.txt"), "/data/notes/a.txt");
        assert_eq!(normalize_path("/data/../../../etc"), "/etc");
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("/a/b/.."), "/a");
    }

    #[test]
    fn a_path_splits_into_parent_and_name() {
        assert_eq!(split_parent("/"), ("/", "."));
        assert_eq!(split_parent("/data"), ("/", "data"));
        assert_eq!(split_parent("/data/a.txt"), ("/data", "a.txt"));
    }
}
