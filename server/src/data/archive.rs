//! Writing a directory's contents as tar+gzip or tar+zstd: the export and preserve side.
//!
//! The walk is fd-relative and never follows a symlink (see `fd.rs`): directories are opened
//! with `O_NOFOLLOW|O_DIRECTORY` from their parent's fd, files with `O_NOFOLLOW`, and symlinks are
//! archived as symlinks, so neither a symlink in /data nor one swapped in mid-walk can make the
//! archive read a file outside the directory.
//!
//! A file's header (size, mode, owner, mtime) comes from `fstat` of the OPENED file, and its data
//! is copied up to exactly that size: a file that grows while it is read is archived at the size
//! it had when opened (the growth is left out), and one that shrinks is padded with zeros up to
//! that size and counted in [`ArchiveSummary::shrunk`] — the archive is well formed either way
//! (Memoh's "write too long" came from a cached stat on overlayfs and an uncapped copy).
//!
//! Limits, by choice: mtimes are whole seconds (ustar/GNU headers), owners are numeric (no
//! user/group names), hard links are stored as separate copies, xattrs and ACLs are not kept.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, fstat};
use tar::{Builder, EntryType, Header};

use super::fd::{self, Kind};
use crate::error::{Error, Reason, Result};

/// How an archive is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    TarGzip,
    TarZstd,
}

/// What an archive run wrote or extracted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Directories, regular files, symlinks (and, when extracting, hard links).
    pub entries: u64,
    /// Bytes of regular-file content.
    pub content_bytes: u64,
    /// Sockets, fifos and device nodes (and, when extracting, unsupported entry types), left out.
    pub skipped: u64,
    /// Files that shrank while being archived; their tail is zeros up to the size they had when
    /// opened. Always 0 when extracting.
    pub shrunk: u64,
}

/// Writes the contents of `src_dir` (entry names relative to it, sorted, directories included)
/// as a `format` archive to `out`, and flushes `out`. `progress` gets the running total of
/// content bytes archived.
pub fn write_archive(
    src_dir: &Path,
    out: impl Write,
    format: ArchiveFormat,
    progress: &mut dyn FnMut(u64),
) -> Result<ArchiveSummary> {
    let root = fd::open_dir(src_dir).map_err(|err| {
        archive_error(format!(
            "opening {} to archive it failed: {err}; check that it is a directory",
            src_dir.display()
        ))
    })?;
    let mut archiver = Archiver { summary: ArchiveSummary::default(), progress };
    let mut out = match format {
        ArchiveFormat::TarGzip => {
            let encoder = GzEncoder::new(out, Compression::default());
            archiver.write_tar(root.as_fd(), encoder)?.finish().map_err(write_error)?
        }
        ArchiveFormat::TarZstd => {
            let encoder = zstd::Encoder::new(out, zstd::DEFAULT_COMPRESSION_LEVEL).map_err(write_error)?;
            archiver.write_tar(root.as_fd(), encoder)?.finish().map_err(write_error)?
        }
    };
    out.flush().map_err(write_error)?;
    Ok(archiver.summary)
}

/// Archives `src_dir` as tar+gzip to `dest_file` atomically: the archive is written to
/// `<dest_file>.tmp`, synced, and renamed over `dest_file`, so a failure never leaves a partial
/// archive at `dest_file` (nor an old one replaced).
pub fn preserve_to_file(src_dir: &Path, dest_file: &Path, progress: &mut dyn FnMut(u64)) -> Result<ArchiveSummary> {
    let tmp = tmp_path(dest_file);
    let result = write_synced(src_dir, dest_file, &tmp, progress);
    if result.is_err() {
        // The error being returned is the one worth reporting; a leftover temp file is harmless.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_synced(src_dir: &Path, dest_file: &Path, tmp: &Path, progress: &mut dyn FnMut(u64)) -> Result<ArchiveSummary> {
    let parent = dest_file.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|err| host_file_error(parent, &err))?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(tmp)
        .map_err(|err| host_file_error(tmp, &err))?;
    let summary = write_archive(src_dir, BufWriter::new(&file), ArchiveFormat::TarGzip, progress)?;
    file.sync_all().map_err(|err| host_file_error(tmp, &err))?;
    fs::rename(tmp, dest_file).map_err(|err| host_file_error(dest_file, &err))?;
    File::open(parent).and_then(|dir| dir.sync_all()).map_err(|err| host_file_error(parent, &err))?;
    Ok(summary)
}

fn tmp_path(dest_file: &Path) -> PathBuf {
    let mut name = dest_file.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

struct Archiver<'p> {
    summary: ArchiveSummary,
    progress: &'p mut dyn FnMut(u64),
}

impl Archiver<'_> {
    fn write_tar<W: Write>(&mut self, root: BorrowedFd<'_>, out: W) -> Result<W> {
        let mut builder = Builder::new(out);
        self.walk(&mut builder, root, Path::new(""))?;
        builder.into_inner().map_err(write_error)
    }

    fn walk<W: Write>(&mut self, builder: &mut Builder<W>, dir: BorrowedFd<'_>, rel_dir: &Path) -> Result<()> {
        let names = fd::list_names(dir).map_err(|err| read_error(rel_dir, &err))?;
        for name in names {
            let rel = rel_dir.join(&name);
            let stat = match fd::lstat_at(dir, &name) {
                Ok(stat) => stat,
                Err(err) if is_vanished(&err) => continue,
                Err(err) => return Err(read_error(&rel, &err)),
            };
            match Kind::of(&stat) {
                Kind::Directory => self.append_dir(builder, dir, &name, &rel)?,
                Kind::Regular => self.append_file(builder, dir, &name, &rel)?,
                Kind::Symlink => self.append_symlink(builder, dir, &name, &rel, &stat)?,
                Kind::Special => self.summary.skipped += 1,
            }
        }
        Ok(())
    }

    fn append_dir<W: Write>(
        &mut self,
        builder: &mut Builder<W>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
    ) -> Result<()> {
        let dir = match fd::open_subdir(parent, name) {
            Ok(dir) => dir,
            Err(err) if is_vanished(&err) => return Ok(()),
            Err(err) => return Err(read_error(rel, &err)),
        };
        let stat = fstat(&dir).map_err(|err| read_error(rel, &err.into()))?;
        let mut header = header_from(&stat, EntryType::Directory, 0);
        builder.append_data(&mut header, rel, io::empty()).map_err(|err| entry_error(rel, &err))?;
        self.summary.entries += 1;
        self.walk(builder, dir.as_fd(), rel)
    }

    fn append_file<W: Write>(
        &mut self,
        builder: &mut Builder<W>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
    ) -> Result<()> {
        // O_NONBLOCK: if a fifo replaced the file since the lstat, opening it must not hang.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let file = match openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT | Errno::ELOOP) => return Ok(()), // gone, or replaced by a symlink
            Err(err) => return Err(read_error(rel, &err.into())),
        };
        let stat = fstat(&file).map_err(|err| read_error(rel, &err.into()))?;
        if Kind::of(&stat) != Kind::Regular {
            self.summary.skipped += 1;
            return Ok(());
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let mut header = header_from(&stat, EntryType::Regular, size);
        let mut reader = CappedReader {
            file: &file,
            remaining: size,
            padding: false,
            done: self.summary.content_bytes,
            progress: &mut *self.progress,
        };
        builder.append_data(&mut header, rel, &mut reader).map_err(|err| entry_error(rel, &err))?;
        let shrunk = reader.padding;
        self.summary.content_bytes += size;
        self.summary.entries += 1;
        if shrunk {
            self.summary.shrunk += 1;
            tracing::warn!(path = %rel.display(), size, "file shrank while being archived; padded with zeros");
        }
        Ok(())
    }

    fn append_symlink<W: Write>(
        &mut self,
        builder: &mut Builder<W>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        stat: &FileStat,
    ) -> Result<()> {
        let target = match readlinkat(parent, name) {
            Ok(target) => target,
            Err(Errno::ENOENT | Errno::EINVAL) => return Ok(()), // gone, or no longer a symlink
            Err(err) => return Err(read_error(rel, &err.into())),
        };
        let mut header = header_from(stat, EntryType::Symlink, 0);
        append_symlink_entry(builder, &mut header, rel, &target).map_err(|err| entry_error(rel, &err))?;
        self.summary.entries += 1;
        Ok(())
    }
}

/// Stores the target byte for byte when it fits the header (`append_link` would normalize
/// `a//b` or a trailing `/`), and as a GNU long link otherwise.
fn append_symlink_entry<W: Write>(
    builder: &mut Builder<W>,
    header: &mut Header,
    rel: &Path,
    target: &OsString,
) -> io::Result<()> {
    let bytes = target.as_bytes();
    if bytes.len() <= header.as_old().linkname.len() {
        header.set_link_name_literal(bytes)?;
        return builder.append_data(header, rel, io::empty());
    }
    builder.append_link(header, rel, target)
}

fn header_from(stat: &FileStat, kind: EntryType, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(u64::from(stat.st_uid));
    header.set_gid(u64::from(stat.st_gid));
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header
}

/// Reads exactly `remaining` bytes from `file`: stops there if the file grew, pads with zeros if
/// it shrank, and reports the running content total.
struct CappedReader<'a> {
    file: &'a File,
    remaining: u64,
    padding: bool,
    done: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl Read for CappedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = if self.padding {
            0
        } else {
            let mut file = self.file;
            file.read(&mut buf[..want])?
        };
        let count = if read == 0 {
            self.padding = true;
            buf[..want].fill(0);
            want
        } else {
            read
        };
        self.remaining -= count as u64;
        self.done += count as u64;
        (self.progress)(self.done);
        Ok(count)
    }
}

fn is_vanished(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::ENOENT as i32)
}

fn archive_error(message: String) -> Error {
    Error::new(Reason::DataArchiveFailed, message)
}

fn read_error(rel: &Path, err: &io::Error) -> Error {
    archive_error(format!(
        "reading {:?} to archive it failed: {err}; check the workspace's file system",
        display_rel(rel)
    ))
}

fn entry_error(rel: &Path, err: &io::Error) -> Error {
    archive_error(format!(
        "archiving {:?} failed: {err}; check that the destination has free space and the file is readable",
        display_rel(rel)
    ))
}

fn write_error(err: io::Error) -> Error {
    archive_error(format!("writing the archive failed: {err}; check that the destination has free space"))
}

fn host_file_error(path: &Path, err: &io::Error) -> Error {
    archive_error(format!(
        "writing the archive file {} failed: {err}; check the free space and permissions of the server's state directory",
        path.display()
    ))
}

fn display_rel(rel: &Path) -> String {
    if rel.as_os_str().is_empty() { ".".to_owned() } else { rel.display().to_string() }
}
