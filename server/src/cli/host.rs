//! The host side of a download: a directory this host's user named, and everything `berth cp`
//! writes below it.
//!
//! The names and symlinks below the destination come from the workspace, which is the bot's: a
//! symlink the copy recreated (`evil -> /etc`), or one left by an earlier copy, must never be
//! followed by a later write (`evil/shadow`). So every path below the named directory is resolved
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a descriptor of that directory, and
//! entries are replaced by renaming a new one over them (which replaces a symlink instead of
//! writing through it), never opened for writing in place.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;
use tokio::io::AsyncWriteExt as _;

use super::paths::{self, Existing};

/// Permission bits a download keeps: setuid and setgid are dropped, because the copy belongs to
/// the local user (root, often), not to the workspace's owner.
pub const KEPT_MODE_BITS: u32 = 0o1777;

/// A host directory that receives a download.
pub struct HostTree {
    base: OwnedFd,
    base_path: PathBuf,
    /// Directories this copy created, in creation order (parents first), with the mode and
    /// modification time they get once their content is written.
    created_directories: Vec<(String, u32, Option<prost_types::Timestamp>)>,
}

impl HostTree {
    /// Opens the directory named on the command line; a symlink there is followed, as the user
    /// chose it.
    pub fn open(base_path: &Path) -> Result<Self, String> {
        let base = rustix::fs::open(base_path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|errno| format!("cannot open directory {}: {}", base_path.display(), describe_errno(errno)))?;
        Ok(Self { base, base_path: base_path.to_owned(), created_directories: Vec::new() })
    }

    fn display(&self, relative: &str) -> String {
        self.base_path.join(relative).display().to_string()
    }

    /// The directory holding `relative` (opened without following any symlink) and the last
    /// component.
    fn parent_of(&self, relative: &str) -> Result<(OwnedFd, String), String> {
        let (parent, leaf) = paths::split_last(relative);
        let directory = self.open_below(&parent, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok((directory, leaf))
    }

    fn open_below(&self, relative: &str, flags: OFlags) -> Result<OwnedFd, String> {
        rustix::fs::openat2(
            &self.base,
            relative,
            // RESOLVE_NO_SYMLINKS refuses a symlink anywhere, the last component included.
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(|errno| match errno {
            Errno::LOOP | Errno::XDEV => format!(
                "cannot write below {}: a symlink is in the way, and berth never writes through one",
                self.display(relative)
            ),
            errno => format!("cannot open {}: {}", self.display(relative), describe_errno(errno)),
        })
    }

    /// What `relative` is now, not following a symlink there.
    pub fn existing(&self, relative: &str) -> Result<Existing, String> {
        let (directory, leaf) = self.parent_of(relative)?;
        Ok(match rustix::fs::statat(&directory, leaf.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => Existing::Directory,
            Ok(_) => Existing::NotDirectory,
            Err(Errno::NOENT) => Existing::Missing,
            Err(errno) => return Err(format!("cannot stat {}: {}", self.display(relative), describe_errno(errno))),
        })
    }

    /// Creates a directory (or keeps an existing one: copies merge into it); a directory this
    /// call creates gets `mode` and `modify_time` in [`HostTree::finish`], once its content is in.
    pub fn make_dir(
        &mut self,
        relative: &str,
        mode: u32,
        modify_time: Option<prost_types::Timestamp>,
    ) -> Result<(), String> {
        let (directory, leaf) = self.parent_of(relative)?;
        // Owner-only until finished, so nobody else sees it half-filled and a read-only source
        // directory can still be filled.
        match rustix::fs::mkdirat(&directory, leaf.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                self.created_directories.push((relative.to_owned(), mode & KEPT_MODE_BITS, modify_time));
                Ok(())
            }
            Err(Errno::EXIST) if self.existing(relative)? == Existing::Directory => Ok(()),
            Err(Errno::EXIST) => {
                Err(format!("cannot overwrite {}, which is not a directory, with a directory", self.display(relative)))
            }
            Err(errno) => Err(format!("cannot create directory {}: {}", self.display(relative), describe_errno(errno))),
        }
    }

    /// Starts writing a file at `relative`; the file appears there when committed.
    pub fn create_file(&self, relative: &str) -> Result<PendingFile, String> {
        let (directory, leaf) = self.parent_of(relative)?;
        self.refuse_directory(&directory, &leaf, relative)?;
        let (temporary, fd) = create_temporary(|name| {
            rustix::fs::openat(
                &directory,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        })
        .map_err(|errno| {
            format!("cannot create a file next to {}: {}", self.display(relative), describe_errno(errno))
        })?;
        let file = tokio::fs::File::from_std(std::fs::File::from(fd));
        Ok(PendingFile { directory: Some(directory), temporary, leaf, shown: self.display(relative), file: Some(file) })
    }

    /// Creates (or replaces) a symlink at `relative` pointing at `target`, which is stored as
    /// is and never followed.
    pub fn symlink(&self, relative: &str, target: &str) -> Result<(), String> {
        let (directory, leaf) = self.parent_of(relative)?;
        self.refuse_directory(&directory, &leaf, relative)?;
        let (temporary, _) = create_temporary(|name| rustix::fs::symlinkat(target, &directory, name))
            .map_err(|errno| format!("cannot create symlink {}: {}", self.display(relative), describe_errno(errno)))?;
        rustix::fs::renameat(&directory, temporary.as_str(), &directory, leaf.as_str()).map_err(|errno| {
            let _ = rustix::fs::unlinkat(&directory, temporary.as_str(), AtFlags::empty());
            format!("cannot create symlink {}: {}", self.display(relative), describe_errno(errno))
        })
    }

    fn refuse_directory(&self, directory: &OwnedFd, leaf: &str, relative: &str) -> Result<(), String> {
        match rustix::fs::statat(directory, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                Err(format!("cannot overwrite directory {} with a non-directory", self.display(relative)))
            }
            _ => Ok(()),
        }
    }

    /// Gives the directories this copy created their modes and times, deepest first (so a
    /// read-only parent does not block its children).
    pub fn finish(self) -> Result<(), String> {
        for (relative, mode, modify_time) in self.created_directories.iter().rev() {
            let directory = self.open_below(relative, OFlags::RDONLY | OFlags::DIRECTORY)?;
            set_mode_and_time(&directory, *mode, modify_time.as_ref()).map_err(|errno| {
                format!("cannot set the mode of {}: {}", self.display(relative), describe_errno(errno))
            })?;
        }
        Ok(())
    }
}

/// A file being downloaded: a temporary file next to its final name, renamed over it when
/// committed and removed when dropped uncommitted (a failed or interrupted copy leaves the
/// destination as it was).
pub struct PendingFile {
    directory: Option<OwnedFd>,
    temporary: String,
    leaf: String,
    shown: String,
    file: Option<tokio::fs::File>,
}

impl PendingFile {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let file = self.file.as_mut().expect("written before commit");
        file.write_all(bytes).await.map_err(|err| format!("cannot write {}: {err}", self.shown))
    }

    /// Sets the file's mode and modification time and puts it in place.
    pub async fn commit(mut self, mode: u32, modify_time: Option<&prost_types::Timestamp>) -> Result<(), String> {
        let mut file = self.file.take().expect("committed once");
        file.flush().await.map_err(|err| format!("cannot write {}: {err}", self.shown))?;
        let file = file.into_std().await;
        set_mode_and_time(&file, mode & KEPT_MODE_BITS, modify_time)
            .map_err(|errno| format!("cannot set the mode of {}: {}", self.shown, describe_errno(errno)))?;
        drop(file);
        let directory = self.directory.take().expect("committed once");
        let renamed = rustix::fs::renameat(&directory, self.temporary.as_str(), &directory, self.leaf.as_str());
        if let Err(errno) = renamed {
            let _ = rustix::fs::unlinkat(&directory, self.temporary.as_str(), AtFlags::empty());
            return Err(format!("cannot put {} in place: {}", self.shown, describe_errno(errno)));
        }
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if let Some(directory) = &self.directory {
            let _ = rustix::fs::unlinkat(directory, self.temporary.as_str(), AtFlags::empty());
        }
    }
}

fn set_mode_and_time(
    fd: impl std::os::fd::AsFd,
    mode: u32,
    modify_time: Option<&prost_types::Timestamp>,
) -> Result<(), Errno> {
    rustix::fs::fchmod(fd.as_fd(), Mode::from_raw_mode(mode))?;
    if let Some(time) = modify_time {
        let time = rustix::fs::Timespec { tv_sec: time.seconds, tv_nsec: i64::from(time.nanos) };
        rustix::fs::futimens(fd.as_fd(), &Timestamps { last_access: time, last_modification: time })?;
    }
    Ok(())
}

/// Creates an entry under a fresh hidden name with `create` (which fails with EEXIST when the
/// name is taken) and returns the name.
fn create_temporary<T>(mut create: impl FnMut(&str) -> Result<T, Errno>) -> Result<(String, T), Errno> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let name = format!(".berth-cp.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        match create(&name) {
            Ok(created) => return Ok((name, created)),
            Err(Errno::EXIST) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

fn describe_errno(errno: Errno) -> std::io::Error {
    std::io::Error::from(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) -> HostTree {
        HostTree::open(dir).unwrap()
    }

    #[tokio::test]
    async fn files_land_by_rename_with_their_mode_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut host = tree(dir.path());
        host.make_dir("top", 0o755, None).unwrap();
        let mut file = host.create_file("top/a.txt").unwrap();
        file.write(b"hello").await.unwrap();
        let time = prost_types::Timestamp { seconds: 1_000_000_000, nanos: 0 };
        file.commit(0o4640, Some(&time)).await.unwrap();
        let written = dir.path().join("top/a.txt");
        assert_eq!(std::fs::read(&written).unwrap(), b"hello");
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let metadata = std::fs::metadata(&written).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o640, "setuid is dropped");
        assert_eq!(metadata.mtime(), 1_000_000_000);

        // A symlink to a host directory, then entries "below" it: never written through.
        host.symlink("top/evil", outside.path().to_str().unwrap()).unwrap();
        assert_eq!(std::fs::read_link(dir.path().join("top/evil")).unwrap(), outside.path());
        let error = host.create_file("top/evil/shadow").err().unwrap();
        assert!(error.contains("symlink is in the way"), "{error}");
        assert!(host.make_dir("top/evil/sub", 0o755, None).unwrap_err().contains("symlink is in the way"));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        // A file replaces the symlink itself; a directory refuses to.
        let mut file = host.create_file("top/evil").unwrap();
        file.write(b"plain").await.unwrap();
        file.commit(0o644, None).await.unwrap();
        assert!(!std::fs::symlink_metadata(dir.path().join("top/evil")).unwrap().file_type().is_symlink());
        assert!(host.make_dir("top/evil", 0o755, None).unwrap_err().contains("not a directory"));
        assert!(host.create_file("top").err().unwrap().contains("cannot overwrite directory"));

        host.make_dir("top", 0o700, None).unwrap();
        host.finish().unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("top")).unwrap().permissions().mode() & 0o7777, 0o755);
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("top")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
    }

    #[tokio::test]
    async fn an_uncommitted_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kept"), b"old").unwrap();
        let host = tree(dir.path());
        let mut file = host.create_file("kept").unwrap();
        file.write(b"new, partial").await.unwrap();
        drop(file);
        assert_eq!(std::fs::read(dir.path().join("kept")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(host.existing("kept").unwrap(), Existing::NotDirectory);
        assert_eq!(host.existing("missing").unwrap(), Existing::Missing);
        assert_eq!(host.existing(".").unwrap(), Existing::Directory);
    }
}
