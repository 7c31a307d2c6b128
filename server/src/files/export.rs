//! ExportData: a directory of a workspace as a tar stream (gzip or zstd), with no downtime: a
//! running workspace is read through its root, a stopped one through a private mount. The
//! archive writer (`data::write_archive_of`, fd-based: symlinks kept as links and never
//! followed, hard links stored once, sizes from fstat of the opened file) writes into chunks of
//! 1 MiB handed to the stream one at a time, so memory stays flat and a slow client slows the
//! archiver down. The trailer carries the size, the SHA-256 and the entry count.

use std::io::{self, Write};
use std::os::fd::AsFd as _;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::data::ArchiveFormat;
use crate::error::{Error, Result};

/// Largest chunk of an export, as the proto promises.
pub const CHUNK_BYTES: usize = 1 << 20;

/// One message of an export.
#[derive(Debug)]
pub enum ExportEvent {
    Chunk(Bytes),
    /// The end of a complete archive.
    Trailer {
        size_bytes: i64,
        sha256: String,
        entry_count: u64,
    },
}

/// Archives the directory `path` of `root` into `emit` (false: nobody listens any more).
pub fn export(
    root: &crate::data::InRoot,
    path: &str,
    format: ArchiveFormat,
    emit: &mut dyn FnMut(ExportEvent) -> Result<bool>,
) -> Result<()> {
    let dir = root.open_dir(path).map_err(|err| super::fs_error(&err, "export", path))?;
    let mut out =
        Chunks { buffer: Vec::with_capacity(CHUNK_BYTES), digest: Sha256::new(), size: 0, emit, failure: None };
    let archived = crate::data::write_archive_of(dir.as_fd(), &mut out, format, &mut |_| {});
    if let Some(failure) = out.failure.take() {
        return Err(failure);
    }
    let summary = archived?;
    if summary.shrunk > 0 || summary.skipped > 0 {
        tracing::info!(
            path,
            shrunk = summary.shrunk,
            skipped = summary.skipped,
            "exported while files changed (shrunk files are padded with zeros) or with special files left out"
        );
    }
    out.send_buffer()?;
    let trailer = ExportEvent::Trailer {
        size_bytes: out.size as i64,
        sha256: hex::encode(out.digest.finalize_reset()),
        entry_count: summary.entries,
    };
    (out.emit)(trailer)?;
    Ok(())
}

/// The archive's bytes, cut into chunks and hashed on the way.
struct Chunks<'e> {
    buffer: Vec<u8>,
    digest: Sha256,
    size: u64,
    emit: &'e mut dyn FnMut(ExportEvent) -> Result<bool>,
    /// Why the stream stopped taking chunks; reported instead of the writer's I/O error.
    failure: Option<Error>,
}

impl Chunks<'_> {
    fn send_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.digest.update(&chunk);
        self.size += chunk.len() as u64;
        if (self.emit)(ExportEvent::Chunk(Bytes::from(chunk)))? {
            Ok(())
        } else {
            Err(Error::new(crate::error::Reason::InvalidArgument, "the client went away during the export"))
        }
    }
}

impl Write for Chunks<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK_BYTES
            && let Err(err) = self.send_buffer()
        {
            let message = err.message().to_owned();
            self.failure = Some(err);
            return Err(io::Error::other(message));
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
