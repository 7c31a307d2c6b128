//! A workspace's /data on the host: archiving it (export, preserve), extracting archives into it
//! (import, restore) without ever writing outside it, and mounting a stopped workspace's snapshot
//! to reach it. Everything here blocks; callers run it in `spawn_blocking`.

mod archive;
mod extract;
mod fd;
mod mount;
mod replace;
mod users;

#[cfg(test)]
mod tests;

pub use archive::{ArchiveFormat, ArchiveSummary, preserve_to_file, write_archive};
pub use extract::{empty_dir, extract_archive, restore_from_file};
pub use mount::{MountSpec, MountedRootfs, clear_stale_mounts, data_dir, prepare_data_dir};
pub use replace::{WritableLayer, replace_data_dir};
pub use users::{ResolvedUser, resolve_user};
