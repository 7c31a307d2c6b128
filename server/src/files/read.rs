//! ReadFile: the entry first, then the requested byte range in chunks of at most 1 MiB, read on
//! a blocking thread and handed on one chunk at a time (into a small bounded channel, see
//! [`super::Files::read_file`]), so memory stays flat for any file size and a slow client only
//! slows the reader down.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt as _;

use bytes::Bytes;

use super::entry::{Entry, EntryKind};
use super::{fs_error, not_regular};
use crate::data::InRoot;
use crate::data::in_root;
use crate::error::{Error, Reason, Result};

/// Largest chunk of a ReadFile stream, as the proto promises.
pub const CHUNK_BYTES: usize = 1 << 20;

/// One message of a read.
#[derive(Debug)]
pub enum ReadEvent {
    Entry(Entry),
    Chunk(Bytes),
}

/// Reads `length` bytes (0: to the end) of the regular file at `path` from `offset`, handing the
/// entry and then the chunks to `emit`, which answers false once nobody listens any more.
pub fn read_file(
    root: &InRoot,
    path: &str,
    offset: i64,
    length: i64,
    emit: &mut dyn FnMut(ReadEvent) -> Result<bool>,
) -> Result<()> {
    if offset < 0 || length < 0 {
        return Err(Error::new(
            Reason::InvalidArgument,
            format!("offset ({offset}) and length ({length}) must not be negative"),
        ));
    }
    let fd = root.resolve(path, true).map_err(|err| fs_error(&err, "read", path))?;
    let entry = super::ops::describe(&fd, path)?;
    match entry.kind {
        EntryKind::File => {}
        EntryKind::Directory => {
            return Err(Error::new(Reason::IsADirectory, format!("{path} is a directory; list it with ListDir")));
        }
        _ => return Err(not_regular(path)),
    }
    let file = in_root::reopen_for_reading(fd.as_fd()).map_err(|err| fs_error(&err, "read", path))?;
    if !emit(ReadEvent::Entry(entry))? {
        return Ok(());
    }
    let mut position = offset as u64;
    let end = if length == 0 { u64::MAX } else { position.saturating_add(length as u64) };
    while position < end {
        let want = usize::try_from((end - position).min(CHUNK_BYTES as u64)).expect("a chunk fits in memory");
        let mut buffer = vec![0; want];
        let mut filled = 0;
        while filled < want {
            match file.read_at(&mut buffer[filled..], position + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(fs_error(&err, "read", path)),
            }
        }
        if filled == 0 {
            break;
        }
        buffer.truncate(filled);
        position += filled as u64;
        if !emit(ReadEvent::Chunk(Bytes::from(buffer)))? {
            return Ok(());
        }
        if filled < want {
            break;
        }
    }
    Ok(())
}
