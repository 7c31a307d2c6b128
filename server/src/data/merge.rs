//! Putting an import's extracted tree in place: an archive is extracted into a staging directory
//! beside its target first (so a hostile, truncated or oversized archive changes nothing), and
//! only a complete extraction is moved over the target.
//!
//! - [`exchange`] swaps the staging directory with the target in one `renameat2(RENAME_EXCHANGE)`
//!   (a replacing import): readers see the old or the new tree, never a mix.
//! - [`merge_into`] moves the staging tree's entries into the target (a merging import, or a
//!   replacing one where the exchange is impossible): an entry the target lacks is renamed in
//!   whole (a directory with everything below it, in one rename), a directory both have is merged
//!   level by level, anything else replaces the target's entry with one rename. A first pass
//!   checks every level both trees share and moves nothing if an entry would replace a non-empty
//!   directory, so the moves cannot fail on the archive's content, only on the disk.
//!
//! overlayfs refuses to rename a directory that comes from an image layer (or was copied up from
//! one) unless the mount has `redirect_dir`, which containerd does not set: EXDEV. That is why a
//! replacing import of an image's `/data` through the merged view cannot swap it, and empties it
//! and merges into it instead. Entries the extraction created are new in the writable layer, so
//! they always move. Each rename is atomic, the merge as a whole is not.
//!
//! Like the extractor, every step names one component relative to an open directory and never
//! follows a symlink; the walk holds one fd per tree whatever the depth (see `fd::open_parent`).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::stat::{FileStat, Mode, fchmod, fstat, futimens};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use rustix::fs::RenameFlags;

use super::fd::{self, DirId, Kind};
use crate::error::{Error, Reason, Result};

/// Swaps the directories `a` and `b` of `parent` in one step. EXDEV (a directory overlayfs
/// cannot move) and EINVAL (a file system without exchange) say that it cannot be done here.
pub fn exchange(parent: BorrowedFd<'_>, a: &OsStr, b: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(parent, a, parent, b, RenameFlags::EXCHANGE)?)
}

/// Whether [`exchange`]'s error means the file system cannot swap these directories.
pub fn cannot_exchange(err: &io::Error) -> bool {
    matches!(err.raw_os_error().map(Errno::from_raw), Some(Errno::EXDEV | Errno::EINVAL))
}

/// Renames `from` of `parent` to `to`, failing with EEXIST when `to` exists.
pub fn rename_new(parent: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(parent, from, parent, to, RenameFlags::NOREPLACE)?)
}

/// Removes `name` of `parent` and everything below it, without following symlinks.
pub fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let stat = fd::lstat_at(parent, name)?;
    if Kind::of(&stat) != Kind::Directory {
        return Ok(unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?);
    }
    let dir = fd::open_subdir(parent, name)?;
    fd::remove_contents(dir.as_fd())?;
    drop(dir);
    Ok(unlinkat(parent, name, UnlinkatFlags::RemoveDir)?)
}

/// Moves everything in `staging` into `target` (see the module doc), leaving `staging` empty.
/// Directories both trees have get the staged one's owner, mode and mtime, unless the
/// extraction only implied it (`implied`: device and inode). `target_path` names the target in
/// messages.
pub fn merge_into(
    staging: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    implied: &HashSet<DirId>,
    target_path: &str,
) -> Result<()> {
    walk(staging, target, implied, Pass::Check, target_path)?;
    walk(staging, target, implied, Pass::Move, target_path)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Finds entries that would replace a non-empty directory; changes nothing.
    Check,
    Move,
}

fn walk(
    staging: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    implied: &HashSet<DirId>,
    pass: Pass,
    target_path: &str,
) -> Result<()> {
    let failed =
        |walk: &PairWalk<'_>, name: &OsStr, err: io::Error| move_failed(pass, target_path, &walk.path(name), &err);
    let mut walk = PairWalk::new(staging, target).map_err(|err| move_failed(pass, target_path, "", &err))?;
    loop {
        let Some(name) = walk.next_name() else {
            let Some((left, staged)) = walk.ascend().map_err(|err| move_failed(pass, target_path, "", &err))? else {
                return Ok(());
            };
            if pass == Pass::Move {
                let (staging_dir, target_dir) = walk.dirs();
                finish_dir(staging_dir, target_dir, &left, &staged, implied)
                    .map_err(|err| failed(&walk, &left, err))?;
            }
            continue;
        };
        let (staging_dir, target_dir) = walk.dirs();
        let staged = fd::lstat_at(staging_dir, &name).map_err(|err| failed(&walk, &name, err))?;
        let existing = match fd::lstat_at(target_dir, &name) {
            Ok(stat) => Some(Kind::of(&stat)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(failed(&walk, &name, err)),
        };
        let staged_is_dir = Kind::of(&staged) == Kind::Directory;
        match existing {
            Some(Kind::Directory) if staged_is_dir => {
                let children = fd::open_subdir(staging_dir, &name)
                    .and_then(|staged_child| Ok((staged_child, fd::open_subdir(target_dir, &name)?)))
                    .map_err(|err| failed(&walk, &name, err))?;
                walk.descend(name.clone(), children, staged).map_err(|err| failed(&walk, &name, err))?;
            }
            Some(Kind::Directory) => {
                let child = fd::open_subdir(target_dir, &name).map_err(|err| failed(&walk, &name, err))?;
                if !fd::list_names(child.as_fd()).map_err(|err| failed(&walk, &name, err))?.is_empty() {
                    return Err(replaces_directory(target_path, &walk.path(&name)));
                }
                if pass == Pass::Move {
                    unlinkat(target_dir, name.as_os_str(), UnlinkatFlags::RemoveDir)
                        .map_err(|err| failed(&walk, &name, err.into()))?;
                    move_entry(staging_dir, target_dir, &name).map_err(|err| failed(&walk, &name, err))?;
                }
            }
            Some(_) if pass == Pass::Move && staged_is_dir => {
                // rename(2) cannot put a directory over a file or symlink.
                unlinkat(target_dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(|err| failed(&walk, &name, err.into()))?;
                move_entry(staging_dir, target_dir, &name).map_err(|err| failed(&walk, &name, err))?;
            }
            _ if pass == Pass::Move => {
                move_entry(staging_dir, target_dir, &name).map_err(|err| failed(&walk, &name, err))?;
            }
            _ => {}
        }
    }
}

/// Renames `name` from `staging` to `target`, replacing a file or symlink there.
fn move_entry(staging: BorrowedFd<'_>, target: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::renameat(staging, name, target, name)?)
}

/// After a staged directory was merged into the target's `name`: gives the target the archive's
/// metadata and removes the (now empty) staged directory.
fn finish_dir(
    staging: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    name: &OsStr,
    staged: &FileStat,
    implied: &HashSet<DirId>,
) -> io::Result<()> {
    if !implied.contains(&fd::id_of(staged)) {
        let dir = fd::open_subdir(target, name)?;
        match fchown(&dir, Some(Uid::from_raw(staged.st_uid)), Some(Gid::from_raw(staged.st_gid))) {
            Ok(()) | Err(Errno::EPERM) => {}
            Err(err) => return Err(err.into()),
        }
        fchmod(&dir, Mode::from_bits_truncate(staged.st_mode & 0o7777))?;
        let mtime = TimeSpec::new(staged.st_mtime, staged.st_mtime_nsec);
        futimens(&dir, &mtime, &mtime)?;
    }
    Ok(unlinkat(staging, name, UnlinkatFlags::RemoveDir)?)
}

/// A walk of the staging tree and, in lockstep, the same directories of the target: it only
/// goes down where both have a directory.
struct PairWalk<'r> {
    roots: (BorrowedFd<'r>, BorrowedFd<'r>),
    /// The current directories (staging, target); `None` at the roots.
    current: Option<(OwnedFd, OwnedFd)>,
    /// Names of the current staging directory not visited yet.
    names: std::vec::IntoIter<OsString>,
    levels: Vec<PairLevel>,
}

struct PairLevel {
    name: OsString,
    /// The staged directory's own stat, applied to the target's when the walk leaves it.
    staged: FileStat,
    /// The identities of the parents (staging, target), checked when the walk comes back up.
    parents: (DirId, DirId),
    parent_names: std::vec::IntoIter<OsString>,
}

impl<'r> PairWalk<'r> {
    fn new(staging: BorrowedFd<'r>, target: BorrowedFd<'r>) -> io::Result<Self> {
        Ok(Self {
            roots: (staging, target),
            current: None,
            names: fd::list_names(staging)?.into_iter(),
            levels: Vec::new(),
        })
    }

    fn dirs(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        match &self.current {
            Some((staging, target)) => (staging.as_fd(), target.as_fd()),
            None => self.roots,
        }
    }

    fn next_name(&mut self) -> Option<OsString> {
        self.names.next()
    }

    fn descend(&mut self, name: OsString, children: (OwnedFd, OwnedFd), staged: FileStat) -> io::Result<()> {
        let (staging, target) = self.dirs();
        let parents = (fd::id_of(&fstat(staging)?), fd::id_of(&fstat(target)?));
        let names = fd::list_names(children.0.as_fd())?.into_iter();
        let parent_names = std::mem::replace(&mut self.names, names);
        self.levels.push(PairLevel { name, staged, parents, parent_names });
        self.current = Some(children);
        Ok(())
    }

    /// Goes back up both trees; the name and staged stat of the directory left, or `None` at the
    /// roots.
    fn ascend(&mut self) -> io::Result<Option<(OsString, FileStat)>> {
        let Some(level) = self.levels.pop() else {
            return Ok(None);
        };
        let (staging, target) = self.current.take().expect("a level below the roots has fds");
        self.current = if self.levels.is_empty() {
            None
        } else {
            Some((
                fd::open_parent(staging.as_fd(), level.parents.0)?,
                fd::open_parent(target.as_fd(), level.parents.1)?,
            ))
        };
        self.names = level.parent_names;
        Ok(Some((level.name, level.staged)))
    }

    /// The path of `name` in the current directory, relative to the roots.
    fn path(&self, name: &OsStr) -> String {
        let mut parts: Vec<&OsStr> = self.levels.iter().map(|level| level.name.as_os_str()).collect();
        parts.push(name);
        parts.join(OsStr::new("/")).to_string_lossy().into_owned()
    }
}

fn joined(target_path: &str, relative: &str) -> String {
    match (target_path, relative) {
        (_, "") => target_path.to_owned(),
        ("/", _) => format!("/{relative}"),
        _ => format!("{target_path}/{relative}"),
    }
}

fn replaces_directory(target_path: &str, relative: &str) -> Error {
    Error::new(
        Reason::DirectoryNotEmpty,
        format!(
            "archive entry {relative:?} is not a directory, but {} is a non-empty one; nothing was imported: remove \
             the directory first, or import with replace",
            joined(target_path, relative)
        ),
    )
}

fn move_failed(pass: Pass, target_path: &str, relative: &str, err: &io::Error) -> Error {
    let path = joined(target_path, relative);
    let (reason, state) = match pass {
        Pass::Check => (Reason::DataArchiveFailed, "nothing was imported"),
        Pass::Move => (
            Reason::DataArchiveFailed,
            "the import is partly applied (entries moved so far replaced their old versions)",
        ),
    };
    let reason = match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOSPC | Errno::EDQUOT) => Reason::ResourceLimitExceeded,
        _ => reason,
    };
    Error::new(
        reason,
        format!("moving the imported entries into {path} failed: {err}; {state}: check the workspace's disk and retry"),
    )
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
    use std::path::Path;

    use super::*;

    fn open(path: &Path) -> OwnedFd {
        fd::open_dir(path).unwrap()
    }

    fn names(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(path)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn merge_replaces_same_paths_keeps_other_files_and_merges_shared_directories() {
        let base = tempfile::tempdir().unwrap();
        let (staging, target) = (base.path().join("staging"), base.path().join("target"));
        fs::create_dir_all(staging.join("shared/new-dir/deep")).unwrap();
        fs::write(staging.join("shared/new-dir/deep/file"), "new deep").unwrap();
        fs::write(staging.join("shared/same.txt"), "from archive").unwrap();
        fs::write(staging.join("was-a-link"), "file now").unwrap();
        fs::create_dir(staging.join("was-a-file")).unwrap();
        fs::set_permissions(staging.join("shared"), fs::Permissions::from_mode(0o750)).unwrap();

        fs::create_dir_all(target.join("shared")).unwrap();
        fs::write(target.join("shared/same.txt"), "old").unwrap();
        fs::write(target.join("shared/kept.txt"), "kept").unwrap();
        fs::write(target.join("kept-top"), "kept too").unwrap();
        fs::write(target.join("was-a-file"), "old file").unwrap();
        symlink("/etc/passwd", target.join("was-a-link")).unwrap();

        let (staging_fd, target_fd) = (open(&staging), open(&target));
        merge_into(staging_fd.as_fd(), target_fd.as_fd(), &HashSet::new(), "/data").unwrap();

        assert!(names(&staging).is_empty(), "the staging directory is emptied");
        assert_eq!(names(&target), ["kept-top", "shared", "was-a-file", "was-a-link"]);
        assert_eq!(names(&target.join("shared")), ["kept.txt", "new-dir", "same.txt"]);
        assert_eq!(fs::read_to_string(target.join("shared/same.txt")).unwrap(), "from archive");
        assert_eq!(fs::read_to_string(target.join("shared/kept.txt")).unwrap(), "kept");
        assert_eq!(fs::read_to_string(target.join("shared/new-dir/deep/file")).unwrap(), "new deep");
        assert_eq!(fs::read_to_string(target.join("was-a-link")).unwrap(), "file now");
        assert!(!target.join("was-a-link").symlink_metadata().unwrap().file_type().is_symlink());
        assert!(target.join("was-a-file").is_dir());
        assert_eq!(fs::metadata(target.join("shared")).unwrap().mode() & 0o7777, 0o750, "the archive's mode");
    }

    #[test]
    fn an_implied_directory_keeps_the_targets_metadata() {
        let base = tempfile::tempdir().unwrap();
        let (staging, target) = (base.path().join("staging"), base.path().join("target"));
        fs::create_dir_all(staging.join("shared")).unwrap();
        fs::write(staging.join("shared/file"), "x").unwrap();
        fs::create_dir_all(target.join("shared")).unwrap();
        fs::set_permissions(target.join("shared"), fs::Permissions::from_mode(0o700)).unwrap();
        let implied = HashSet::from([fd::id_of(&nix::sys::stat::stat(&staging.join("shared")).unwrap())]);
        let (staging_fd, target_fd) = (open(&staging), open(&target));
        merge_into(staging_fd.as_fd(), target_fd.as_fd(), &implied, "/data").unwrap();
        assert_eq!(fs::metadata(target.join("shared")).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(fs::read_to_string(target.join("shared/file")).unwrap(), "x");
    }

    #[test]
    fn a_file_over_a_non_empty_directory_moves_nothing() {
        let base = tempfile::tempdir().unwrap();
        let (staging, target) = (base.path().join("staging"), base.path().join("target"));
        fs::create_dir_all(staging.join("a")).unwrap();
        fs::write(staging.join("a/first"), "new").unwrap();
        fs::write(staging.join("b"), "a file").unwrap();
        fs::create_dir_all(target.join("a")).unwrap();
        fs::write(target.join("a/first"), "old").unwrap();
        fs::create_dir_all(target.join("b")).unwrap();
        fs::write(target.join("b/inside"), "data").unwrap();
        let (staging_fd, target_fd) = (open(&staging), open(&target));
        let err = merge_into(staging_fd.as_fd(), target_fd.as_fd(), &HashSet::new(), "/data").unwrap_err();
        assert_eq!(err.reason(), Reason::DirectoryNotEmpty);
        assert!(err.message().contains("/data/b"), "{}", err.message());
        assert_eq!(fs::read_to_string(target.join("a/first")).unwrap(), "old", "nothing moved");
        assert_eq!(names(&staging), ["a", "b"]);
    }

    #[test]
    fn a_file_over_an_empty_directory_replaces_it() {
        let base = tempfile::tempdir().unwrap();
        let (staging, target) = (base.path().join("staging"), base.path().join("target"));
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("b"), "a file").unwrap();
        fs::create_dir_all(target.join("b")).unwrap();
        let (staging_fd, target_fd) = (open(&staging), open(&target));
        merge_into(staging_fd.as_fd(), target_fd.as_fd(), &HashSet::new(), "/data").unwrap();
        assert_eq!(fs::read_to_string(target.join("b")).unwrap(), "a file");
    }

    #[test]
    fn exchange_swaps_two_directories_and_remove_tree_removes_one() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("a/sub")).unwrap();
        fs::write(base.path().join("a/sub/file"), "a").unwrap();
        symlink("/etc", base.path().join("a/link")).unwrap();
        fs::create_dir_all(base.path().join("b")).unwrap();
        fs::write(base.path().join("b/file"), "b").unwrap();
        let parent = open(base.path());
        exchange(parent.as_fd(), OsStr::new("a"), OsStr::new("b")).unwrap();
        assert_eq!(fs::read_to_string(base.path().join("a/file")).unwrap(), "b");
        assert_eq!(fs::read_to_string(base.path().join("b/sub/file")).unwrap(), "a");
        remove_tree(parent.as_fd(), OsStr::new("b")).unwrap();
        assert_eq!(names(base.path()), ["a"]);
        assert!(Path::new("/etc").is_dir(), "the symlink was removed, not followed");
    }
}
