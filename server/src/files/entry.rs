//! What the file manager reports about an entry: its lstat, as the proto's EntryInfo has it.

use rustix::fs::{FileType, Stat};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

/// The type of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    /// Device nodes, FIFOs and sockets.
    Other,
}

/// One file, directory or symlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Last component; `/` for the root.
    pub name: String,
    /// Normalized absolute path inside the workspace.
    pub path: String,
    pub kind: EntryKind,
    pub size: i64,
    /// The low 12 bits of `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub modify_time: OffsetDateTime,
    /// A symlink's stored target; empty otherwise.
    pub symlink_target: String,
    /// Changes whenever a regular file's content changes; empty for other kinds.
    pub revision: String,
}

impl EntryKind {
    pub fn of(stat: &Stat) -> Self {
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Self::File,
            FileType::Directory => Self::Directory,
            FileType::Symlink => Self::Symlink,
            _ => Self::Other,
        }
    }
}

impl Entry {
    /// The entry at `path` described by `stat`; `symlink_target` is read by the caller for
    /// symlinks.
    pub fn from_stat(path: &str, stat: &Stat, symlink_target: String) -> Self {
        let kind = EntryKind::of(stat);
        let name = if path == "/" { "/".to_owned() } else { path.rsplit('/').next().unwrap_or_default().to_owned() };
        let modify_time = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(stat.st_mtime) * 1_000_000_000 + i128::from(stat.st_mtime_nsec),
        )
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self {
            name,
            path: path.to_owned(),
            kind,
            size: stat.st_size,
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
            modify_time,
            symlink_target,
            revision: if kind == EntryKind::File { revision(stat) } else { String::new() },
        }
    }
}

/// A regular file's revision: a digest of its inode, size, mtime and ctime (nanoseconds). A
/// write in place changes mtime and ctime, an atomic replace changes the inode; hashing the
/// content instead would cost a read of the whole file per Stat. The device is left out: the
/// same file has another st_dev through a stopped workspace's mount than through the running
/// root.
pub fn revision(stat: &Stat) -> String {
    let mut digest = Sha256::new();
    for value in [
        stat.st_ino as i128,
        i128::from(stat.st_size),
        i128::from(stat.st_mtime),
        i128::from(stat.st_mtime_nsec),
        i128::from(stat.st_ctime),
        i128::from(stat.st_ctime_nsec),
    ] {
        digest.update(value.to_le_bytes());
    }
    hex::encode(&digest.finalize()[..12])
}
