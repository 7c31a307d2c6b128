//! How much disk a directory tree of a workspace uses, measured from the host.
//!
//! The walk goes through [`super::fd::Walk`]: one name at a time relative to an open directory,
//! never following a symlink, so a bot that swaps a directory for a symlink to `/` mid-walk makes
//! the walk fail or skip the entry, never count the host's files.

use std::collections::HashSet;
use std::io;
use std::os::fd::AsFd as _;
use std::path::Path;

use nix::errno::Errno;

use super::fd::{self, Kind, Walk};

/// The bytes of disk (allocated blocks, as `du` counts them; so a sparse file counts what it
/// really uses) of the regular files below `dir`, each hard-linked file once. A missing `dir` uses
/// nothing. Entries that vanish while the walk runs are skipped.
pub fn disk_usage(dir: &Path) -> io::Result<u64> {
    let root = match fd::open_dir(dir) {
        Ok(root) => root,
        Err(err) if err.raw_os_error() == Some(Errno::ENOENT as i32) => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut walk = Walk::new(root.as_fd())?;
    let mut linked = HashSet::new();
    let mut bytes: u64 = 0;
    loop {
        let Some(name) = walk.next_name() else {
            if walk.ascend()?.is_none() {
                return Ok(bytes);
            }
            continue;
        };
        let stat = match fd::lstat_at(walk.dir(), &name) {
            Ok(stat) => stat,
            Err(err) if err.raw_os_error() == Some(Errno::ENOENT as i32) => continue,
            Err(err) => return Err(err),
        };
        match Kind::of(&stat) {
            Kind::Regular => {
                if stat.st_nlink > 1 && !linked.insert((stat.st_dev, stat.st_ino)) {
                    continue;
                }
                bytes = bytes.saturating_add(u64::try_from(stat.st_blocks).unwrap_or(0).saturating_mul(512));
            }
            Kind::Directory => match fd::open_subdir(walk.dir(), &name) {
                Ok(child) => walk.descend(name, child)?,
                // Removed, or replaced by something else, since the lstat.
                Err(err)
                    if matches!(
                        Errno::from_raw(err.raw_os_error().unwrap_or(0)),
                        Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR
                    ) => {}
                Err(err) => return Err(err),
            },
            Kind::Symlink | Kind::Special => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocated_bytes_of_regular_files_once_per_inode_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::write(root.join("a/one"), vec![7u8; 100_000]).unwrap();
        std::fs::write(root.join("a/b/c/two"), vec![7u8; 50_000]).unwrap();
        std::fs::hard_link(root.join("a/one"), root.join("a/b/one-again")).unwrap();
        // A symlink to a big tree outside must not be followed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![7u8; 1_000_000]).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("a/escape")).unwrap();
        // A sparse file counts its blocks, not its length.
        let sparse = std::fs::File::create(root.join("sparse")).unwrap();
        sparse.set_len(1 << 40).unwrap();

        let expected: u64 = ["a/one", "a/b/c/two", "sparse"]
            .iter()
            .map(|name| {
                use std::os::unix::fs::MetadataExt as _;
                std::fs::symlink_metadata(root.join(name)).unwrap().blocks() * 512
            })
            .sum();
        let used = disk_usage(root).unwrap();
        assert_eq!(used, expected);
        assert!((150_000..1_000_000).contains(&used), "{used}");
    }

    #[test]
    fn a_missing_directory_uses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_usage(&dir.path().join("data")).unwrap(), 0);
    }
}
