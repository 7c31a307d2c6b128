//! Stat, MakeDir, Remove and Move: one in-root resolution of the parent, then one `*at` call on
//! one name. Everything here blocks; [`super::Files`] runs it on blocking threads.

use std::io;
use std::os::fd::AsFd;

use super::entry::{Entry, EntryKind};
use super::fs_error;
use crate::data::InRoot;
use crate::data::in_root::{self, split_parent};
use crate::error::{Error, Reason, Result};

/// The default mode of directories the file manager creates.
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// lstat (or stat with `follow`) of `path`.
pub fn stat(root: &InRoot, path: &str, follow: bool) -> Result<Entry> {
    let fd = root.resolve(path, follow).map_err(|err| fs_error(&err, "describe", path))?;
    describe(&fd, path)
}

/// The Entry of an opened (`O_PATH`) fd.
pub fn describe(fd: &std::os::fd::OwnedFd, path: &str) -> Result<Entry> {
    let stat = in_root::stat_fd(fd.as_fd()).map_err(|err| fs_error(&err, "describe", path))?;
    let target = if EntryKind::of(&stat) == EntryKind::Symlink {
        let bytes = in_root::read_link_fd(fd.as_fd()).map_err(|err| fs_error(&err, "read the symlink", path))?;
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        String::new()
    };
    Ok(Entry::from_stat(path, &stat, target))
}

/// Creates the directory `path` (with `parents`, its missing ancestors too, succeeding when it
/// exists), owned by the workspace's user.
pub fn make_dir(root: &InRoot, path: &str, parents: bool, mode: u32) -> Result<Entry> {
    let mode = if mode == 0 { DEFAULT_DIR_MODE } else { mode & 0o7777 };
    if path == "/" {
        return if parents { stat(root, path, true) } else { Err(exists(path)) };
    }
    if parents {
        make_dirs(root, path, mode)?;
        return stat(root, path, true).and_then(|entry| match entry.kind {
            EntryKind::Directory => Ok(entry),
            _ => Err(Error::new(
                Reason::NotADirectory,
                format!("{path} exists and is not a directory; choose another path"),
            )),
        });
    }
    let (parent, name) = split_parent(path);
    let dir = root.resolve_dir(parent).map_err(|err| fs_error(&err, "create the directory", path))?;
    in_root::make_dir(dir.as_fd(), name, mode, root.owner())
        .map_err(|err| fs_error(&err, "create the directory", path))?;
    stat(root, path, false)
}

/// `mkdir -p`: every missing component of `path` is created with `mode`, owned by the
/// workspace's user; existing ones (symlinks to directories included) are kept.
pub fn make_dirs(root: &InRoot, path: &str, mode: u32) -> Result<()> {
    let mut prefix = String::new();
    for name in path.split('/').filter(|name| !name.is_empty()) {
        let parent = if prefix.is_empty() { "/".to_owned() } else { prefix.clone() };
        prefix.push('/');
        prefix.push_str(name);
        match root.resolve_dir(&prefix) {
            Ok(_) => continue,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(fs_error(&err, "create the directory", &prefix)),
        }
        let dir = root.resolve_dir(&parent).map_err(|err| fs_error(&err, "create the directory", &prefix))?;
        match in_root::make_dir(dir.as_fd(), name, mode, root.owner()) {
            Ok(()) => {}
            // Made meanwhile by someone else: fine, as long as it is a directory (checked by
            // the next component's resolution, or by the caller for the last one).
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(fs_error(&err, "create the directory", &prefix)),
        }
    }
    Ok(())
}

/// Removes `path` (a symlink itself, never its target); a non-empty directory only with
/// `recursive`.
pub fn remove(root: &InRoot, path: &str, recursive: bool) -> Result<()> {
    if path == "/" {
        return Err(Error::new(
            Reason::InvalidPath,
            "the root directory / cannot be removed; remove the entries below it instead",
        ));
    }
    let (parent, name) = split_parent(path);
    let dir = root.resolve_dir(parent).map_err(|err| fs_error(&err, "remove", path))?;
    let stat = in_root::lstat_at(dir.as_fd(), name).map_err(|err| fs_error(&err, "remove", path))?;
    let is_dir = EntryKind::of(&stat) == EntryKind::Directory;
    if is_dir && recursive {
        let subdir = in_root::open_subdir(dir.as_fd(), name.as_ref()).map_err(|err| fs_error(&err, "remove", path))?;
        in_root::remove_contents(subdir.as_fd()).map_err(|err| fs_error(&err, "remove", path))?;
    }
    in_root::unlink(dir.as_fd(), name, is_dir).map_err(|err| fs_error(&err, "remove", path))
}

/// Moves `source` to `destination` like rename(2); `overwrite` allows replacing an existing
/// destination (a directory only when it is empty).
pub fn rename(root: &InRoot, source: &str, destination: &str, overwrite: bool) -> Result<Entry> {
    if source == "/" || destination == "/" {
        return Err(Error::new(Reason::InvalidPath, "the root directory / cannot be moved or replaced"));
    }
    let (source_parent, source_name) = split_parent(source);
    let (destination_parent, destination_name) = split_parent(destination);
    let from = root.resolve_dir(source_parent).map_err(|err| fs_error(&err, "move", source))?;
    let source_stat = in_root::lstat_at(from.as_fd(), source_name).map_err(|err| fs_error(&err, "move", source))?;
    let to = root.resolve_dir(destination_parent).map_err(|err| fs_error(&err, "move to", destination))?;
    if EntryKind::of(&source_stat) == EntryKind::Directory
        && root
            .is_within(to.as_fd(), (source_stat.st_dev, source_stat.st_ino))
            .map_err(|err| fs_error(&err, "move", source))?
    {
        return Err(Error::new(
            Reason::InvalidArgument,
            format!("cannot move the directory {source} into itself ({destination}); choose a destination outside it"),
        ));
    }
    in_root::rename(from.as_fd(), source_name, to.as_fd(), destination_name, !overwrite)
        .map_err(|err| fs_error(&err, "move", &format!("{source} to {destination}")))?;
    stat(root, destination, false)
}

fn exists(path: &str) -> Error {
    Error::new(
        Reason::PathAlreadyExists,
        format!("{path} already exists; choose another path, or pass parents to accept it"),
    )
}
