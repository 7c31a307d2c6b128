//! Carrying /data from one root file system to another (an image change): the old tree is
//! archived into a pipe by one thread and extracted from it by another.
//!
//! Why an archive stream rather than a file-by-file copy: the archiver and the extractor are the
//! code that already treats a workspace's tree as hostile (symlinks kept as links and never
//! followed, hard links, sparse files, path bounds, no writes through symlinks), so the copy
//! inherits all of it; the pipe keeps memory flat and writes nothing to the host's disk.

use std::io::{self, BufReader};
use std::path::Path;
use std::thread;

use super::{ArchiveFormat, ArchiveSummary, data_dir, empty_dir, extract_archive, write_archive};
use crate::error::{Error, Reason, Result};

/// Replaces the content of /data under `to_rootfs` with the content of /data under
/// `from_rootfs` (modes, owners, mtimes, links kept); `/data` itself is created when missing.
/// Returns what was copied.
pub fn carry_data_dir(from_rootfs: &Path, to_rootfs: &Path) -> Result<ArchiveSummary> {
    let from = data_dir(from_rootfs)?;
    let to = data_dir(to_rootfs)?;
    empty_dir(&to)?;
    let (reader, writer) = io::pipe().map_err(|err| {
        Error::new(
            Reason::DataArchiveFailed,
            format!("cannot create a pipe to copy /data: {err}; check the server's limits"),
        )
    })?;
    let archived = thread::scope(|scope| {
        let archiver = scope.spawn(move || {
            // The writer is dropped at the end of the archive, which ends the extractor's input.
            write_archive(&from, writer, ArchiveFormat::TarZstd, &mut |_| {})
        });
        let extracted = extract_archive(BufReader::new(reader), ArchiveFormat::TarZstd, &to, &mut |_| {});
        let archived = archiver.join().unwrap_or_else(|_| Err(Error::internal("the /data archiver panicked")));
        // An archiver failure explains an extractor's "unexpected end" better than the reverse.
        archived.and_then(|summary| extracted.map(|_| summary))
    });
    archived.map_err(|err| {
        let mut wrapped = Error::new(err.reason(), format!("copying /data to the new image failed: {}", err.message()));
        for (key, value) in err.metadata() {
            wrapped = wrapped.with_metadata(key, value.clone());
        }
        wrapped
    })
}
