//! A workspace's /data on the host: archiving it (export, preserve), extracting archives into it
//! (import, restore) without ever writing outside it, and mounting a stopped workspace's snapshot
//! to reach it. Everything here blocks; callers run it in `spawn_blocking`.

mod archive;
mod carry;
mod executable;
mod extract;
mod fd;
pub mod in_root;
pub mod merge;
mod mount;
mod replace;
mod tar_read;
mod usage;
mod users;

#[cfg(test)]
mod tests;

/// The workspace's data directory, as a path inside the workspace.
pub const DATA_PATH: &str = "/data";

/// The longest path below the archived directory, in bytes, that an archive holds and an
/// extraction accepts: Linux's PATH_MAX. A program inside the workspace cannot open a longer
/// path by name anyway, and the bound keeps a hostile tree cheap: a tar entry stores its whole
/// path, so without it an archive would grow with the square of a tree's depth. It also bounds
/// the depth of what is archived or extracted to 2048 levels. (Emptying a directory has no
/// bound: it walks any depth.)
pub(crate) const MAX_PATH_BYTES: usize = 4096;

/// The most data regions (runs of data between holes, plus the end of the file) that a sparse
/// file may have in an archive: its map is held in memory (16 bytes a region) before its data is
/// read or written. Files with holes are rare; files with tens of thousands of them rarer still.
pub(crate) const MAX_SPARSE_REGIONS: usize = 65536;

pub use archive::{ArchiveFormat, ArchiveSummary, preserve_to_file, write_archive, write_archive_of};
pub use carry::carry_data_dir;
pub use executable::{check_directory, find_executable};
pub use extract::{
    ExtractLimits, ExtractOptions, Extraction, empty_dir, extract_archive, extract_archive_at, restore_from_file,
};
pub use in_root::{InRoot, Owner};
pub use mount::{MountSpec, MountedRootfs, clear_stale_mounts, data_dir, prepare_data_dir};
pub use replace::{WritableLayer, replace_data_dir};
pub use usage::disk_usage;
pub use users::{ResolvedUser, resolve_user};
