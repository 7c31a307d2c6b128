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
//! A hostile /data costs no more than its real contents:
//! - a file with holes (`truncate -s 10T`) is found by `st_blocks` and mapped with
//!   `SEEK_DATA`/`SEEK_HOLE`, then written as a GNU sparse entry (type `S`, the map in its
//!   header and extension blocks) holding only its data regions, so a 10 TiB hole costs two
//!   `lseek`s. The map is held in memory, so a file of more than [`MAX_SPARSE_REGIONS`] regions
//!   fails the archive, naming it. GNU tar and the tar crate read these entries.
//! - a regular file with more than one link is stored once; its other paths become hard-link
//!   entries to the first. Only such files are remembered, each until all its links are seen,
//!   up to [`LINKED_PATH_BYTES`] of paths; past that, further links are stored as copies
//!   (correct, only bigger).
//! - the walk is iterative and holds one directory fd whatever the depth ([`fd::Walk`]); a
//!   path longer than [`MAX_PATH_BYTES`] fails the archive with a message naming it.
//!
//! Limits, by choice: mtimes are whole seconds (ustar/GNU headers), owners are numeric (no
//! user/group names), xattrs and ACLs are not kept.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, fstat};
use nix::unistd::{Whence, lseek};
use tar::{Builder, EntryType, GnuExtSparseHeader, Header};

use super::fd::{self, Kind, Walk};
use super::tar_read::{Region, shown};
use super::{MAX_PATH_BYTES, MAX_SPARSE_REGIONS};
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
    /// Bytes of regular-file content stored (a sparse file counts its data, not its holes; a
    /// hard link counts nothing).
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
    write_archive_of(root.as_fd(), out, format, progress)
}

/// [`write_archive`] of a directory the caller opened (for instance resolved inside a
/// workspace's root).
pub fn write_archive_of(
    root: BorrowedFd<'_>,
    out: impl Write,
    format: ArchiveFormat,
    progress: &mut dyn FnMut(u64),
) -> Result<ArchiveSummary> {
    let mut archiver = Archiver { summary: ArchiveSummary::default(), progress, links: Links::default() };
    let mut out = match format {
        ArchiveFormat::TarGzip => {
            let encoder = GzEncoder::new(out, Compression::default());
            archiver.write_tar(root, encoder)?.finish().map_err(write_error)?
        }
        ArchiveFormat::TarZstd => {
            let encoder = zstd::Encoder::new(out, zstd::DEFAULT_COMPRESSION_LEVEL).map_err(write_error)?;
            archiver.write_tar(root, encoder)?.finish().map_err(write_error)?
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

/// The most bytes of paths remembered for hard links not all seen yet (see the module comment).
const LINKED_PATH_BYTES: usize = 16 << 20;

struct Archiver<'p> {
    summary: ArchiveSummary,
    progress: &'p mut dyn FnMut(u64),
    links: Links,
}

impl Archiver<'_> {
    fn write_tar<W: Write>(&mut self, root: BorrowedFd<'_>, out: W) -> Result<W> {
        let mut builder = Builder::new(out);
        let mut walk = Walk::new(root).map_err(|err| read_error(Path::new(""), &err))?;
        // The path of the walk's current directory, then of the entry being archived.
        let mut rel = PathBuf::new();
        loop {
            let Some(name) = walk.next_name() else {
                match walk.ascend().map_err(|err| read_error(&rel, &err))? {
                    Some(_) => {
                        rel.pop();
                        continue;
                    }
                    None => break,
                }
            };
            rel.push(&name);
            if !self.append_entry(&mut builder, &mut walk, name, &rel)? {
                rel.pop();
            }
        }
        builder.into_inner().map_err(write_error)
    }

    /// Archives `name` of the walk's current directory; returns whether the walk went into it.
    fn append_entry<W: Write>(
        &mut self,
        builder: &mut Builder<W>,
        walk: &mut Walk<'_>,
        name: OsString,
        rel: &Path,
    ) -> Result<bool> {
        if rel.as_os_str().len() > MAX_PATH_BYTES {
            return Err(archive_error(format!(
                "the path {} is longer than {MAX_PATH_BYTES} bytes (Linux's PATH_MAX), the most berth archives; remove or shorten that tree inside the workspace and retry",
                shown(rel.as_os_str().as_bytes())
            )));
        }
        let stat = match fd::lstat_at(walk.dir(), &name) {
            Ok(stat) => stat,
            Err(err) if is_vanished(&err) => return Ok(false),
            Err(err) => return Err(read_error(rel, &err)),
        };
        match Kind::of(&stat) {
            Kind::Directory => return self.append_dir(builder, walk, name, rel),
            Kind::Regular => self.append_file(builder, walk.dir(), &name, rel)?,
            Kind::Symlink => self.append_symlink(builder, walk.dir(), &name, rel, &stat)?,
            Kind::Special => self.summary.skipped += 1,
        }
        Ok(false)
    }

    fn append_dir<W: Write>(
        &mut self,
        builder: &mut Builder<W>,
        walk: &mut Walk<'_>,
        name: OsString,
        rel: &Path,
    ) -> Result<bool> {
        let dir = match fd::open_subdir(walk.dir(), &name) {
            Ok(dir) => dir,
            Err(err) if is_vanished(&err) => return Ok(false),
            Err(err) => return Err(read_error(rel, &err)),
        };
        let stat = fstat(&dir).map_err(|err| read_error(rel, &err.into()))?;
        let mut header = header_from(&stat, EntryType::Directory, 0);
        builder.append_data(&mut header, rel, io::empty()).map_err(|err| entry_error(rel, &err))?;
        self.summary.entries += 1;
        walk.descend(name, dir).map_err(|err| read_error(rel, &err))?;
        Ok(true)
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
        if let Some(target) = self.links.archived(&stat) {
            let mut header = header_from(&stat, EntryType::Link, 0);
            builder.append_link(&mut header, rel, &target).map_err(|err| entry_error(rel, &err))?;
            self.summary.entries += 1;
            return Ok(());
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let layout = layout_of(&file, &stat, size).map_err(|err| read_error(rel, &err))?;
        let dense = [Region { offset: 0, len: size }];
        let regions = match &layout {
            Layout::Dense => &dense[..],
            Layout::Sparse(regions) => &regions[..],
            Layout::TooManyRegions => {
                return Err(archive_error(format!(
                    "{} has more than {MAX_SPARSE_REGIONS} data regions separated by holes, more than berth archives in one file; remove it, or rewrite it with fewer holes (cp --sparse=never), and retry",
                    shown(rel.as_os_str().as_bytes())
                )));
            }
        };
        let stored = regions.iter().map(|region| region.len).sum::<u64>();
        let mut reader = RegionReader {
            file: &file,
            regions,
            at: 0,
            padding: false,
            done: self.summary.content_bytes,
            progress: &mut *self.progress,
        };
        let appended = match layout {
            Layout::Dense => {
                let mut header = header_from(&stat, EntryType::Regular, size);
                builder.append_data(&mut header, rel, &mut reader)
            }
            _ => append_sparse(
                builder,
                header_from(&stat, EntryType::GNUSparse, stored),
                rel,
                size,
                regions,
                &mut reader,
            ),
        };
        appended.map_err(|err| entry_error(rel, &err))?;
        let shrunk = reader.padding;
        self.summary.content_bytes += stored;
        self.summary.entries += 1;
        if shrunk {
            self.summary.shrunk += 1;
            tracing::warn!(path = %rel.display(), size, "file shrank while being archived; padded with zeros");
        }
        self.links.remember(&stat, rel);
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

/// Regular files with more than one link archived so far, by (device, inode), with the path
/// they were stored under and how many of their links are still to come.
#[derive(Default)]
struct Links {
    first: HashMap<(u64, u64), (PathBuf, u64)>,
    path_bytes: usize,
    full_warned: bool,
}

impl Links {
    /// The path the file was stored under, if it was.
    fn archived(&mut self, stat: &FileStat) -> Option<PathBuf> {
        if stat.st_nlink < 2 {
            return None;
        }
        let key = (stat.st_dev, stat.st_ino);
        let (path, left) = self.first.get_mut(&key)?;
        *left = left.saturating_sub(1);
        if *left > 0 {
            return Some(path.clone());
        }
        let (path, _) = self.first.remove(&key).expect("present above");
        self.path_bytes -= path.as_os_str().len();
        Some(path)
    }

    /// Remembers a file just stored under `rel` if it has other links.
    fn remember(&mut self, stat: &FileStat, rel: &Path) {
        if stat.st_nlink < 2 {
            return;
        }
        let len = rel.as_os_str().len();
        if self.path_bytes + len > LINKED_PATH_BYTES {
            if !self.full_warned {
                self.full_warned = true;
                tracing::warn!(path = %rel.display(), "too many hard-linked files to remember; further links are stored as copies");
            }
            return;
        }
        self.path_bytes += len;
        // `nlink_t` is u64 on x86_64 but u32 on aarch64.
        #[allow(clippy::useless_conversion)]
        let links = u64::from(stat.st_nlink);
        self.first.insert((stat.st_dev, stat.st_ino), (rel.to_path_buf(), links - 1));
    }
}

/// How a regular file's bytes are stored.
enum Layout {
    Dense,
    /// The data regions of a file with holes, ending at its size.
    Sparse(Vec<Region>),
    TooManyRegions,
}

/// Maps a file's holes when it has any (fewer blocks allocated than its size needs). The map
/// ends with a zero-length region at `size` when the file ends in a hole: the tar crate and
/// GNU tar expect a map to reach the file's size. A file system that cannot tell holes reports
/// one region, and the file is stored densely.
fn layout_of(file: &File, stat: &FileStat, size: u64) -> io::Result<Layout> {
    let allocated = u64::try_from(stat.st_blocks).unwrap_or(u64::MAX).saturating_mul(512);
    if size == 0 || allocated >= size {
        return Ok(Layout::Dense);
    }
    let mut regions = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match lseek(file, to_off(pos), Whence::SeekData) {
            Ok(start) => u64::try_from(start).unwrap_or(u64::MAX),
            Err(Errno::ENXIO) => break, // a hole up to the end
            Err(err) => return Err(err.into()),
        };
        if start >= size {
            break;
        }
        let end = match lseek(file, to_off(start), Whence::SeekHole) {
            Ok(end) => u64::try_from(end).unwrap_or(u64::MAX).min(size),
            Err(Errno::ENXIO) => size, // it shrank meanwhile: the rest reads as zeros
            Err(err) => return Err(err.into()),
        };
        if regions.len() == MAX_SPARSE_REGIONS {
            return Ok(Layout::TooManyRegions);
        }
        regions.push(Region { offset: start, len: end - start });
        pos = end;
    }
    if regions == [Region { offset: 0, len: size }] {
        return Ok(Layout::Dense);
    }
    if pos < size || regions.is_empty() {
        if regions.len() == MAX_SPARSE_REGIONS {
            return Ok(Layout::TooManyRegions);
        }
        regions.push(Region { offset: size, len: 0 });
    }
    Ok(Layout::Sparse(regions))
}

fn to_off(pos: u64) -> i64 {
    i64::try_from(pos).unwrap_or(i64::MAX)
}

/// Writes an old-GNU sparse entry: the header with the first four regions and the file's real
/// size, extension blocks of 21 regions for the rest, then the regions' data back to back. The
/// tar crate's builder only writes these from a path it opens itself, so this writes the blocks.
fn append_sparse<W: Write>(
    builder: &mut Builder<W>,
    mut header: Header,
    rel: &Path,
    size: u64,
    regions: &[Region],
    data: &mut dyn Read,
) -> io::Result<()> {
    let stored = regions.iter().map(|region| region.len).sum::<u64>();
    let gnu = header.as_gnu_mut().expect("header_from makes GNU headers");
    gnu.set_real_size(size);
    let in_header = regions.len().min(gnu.sparse.len());
    for (slot, region) in gnu.sparse.iter_mut().zip(regions) {
        slot.set_offset(region.offset);
        slot.set_length(region.len);
    }
    gnu.set_is_extended(regions.len() > in_header);
    set_path_or_long_name(builder, &mut header, rel)?;
    header.set_cksum();
    let out = builder.get_mut();
    out.write_all(header.as_bytes())?;
    let rest = &regions[in_header..];
    let blocks = rest.len().div_ceil(21);
    for (index, chunk) in rest.chunks(21).enumerate() {
        let mut block = GnuExtSparseHeader::new();
        for (slot, region) in block.sparse_mut().iter_mut().zip(chunk) {
            slot.set_offset(region.offset);
            slot.set_length(region.len);
        }
        block.set_is_extended(index + 1 < blocks);
        out.write_all(block.as_bytes())?;
    }
    let copied = io::copy(data, out)?;
    if copied != stored {
        return Err(io::Error::other(format!("{copied} bytes of data were read instead of {stored}")));
    }
    let padding = (512 - stored % 512) % 512;
    out.write_all(&[0; 512][..padding as usize])
}

/// Puts `rel` in the header's name field, preceded by a GNU long-name entry when it does not fit
/// (what the tar crate's `append_data` does for the entries it writes itself).
fn set_path_or_long_name<W: Write>(builder: &mut Builder<W>, header: &mut Header, rel: &Path) -> io::Result<()> {
    let bytes = rel.as_os_str().as_bytes();
    let field = &mut header.as_old_mut().name;
    if bytes.len() <= field.len() {
        field.fill(0);
        field[..bytes.len()].copy_from_slice(bytes);
        return Ok(());
    }
    let field_len = field.len();
    field.copy_from_slice(&bytes[..field_len]);
    let mut long = Header::new_gnu();
    let marker = b"././@LongLink";
    long.as_old_mut().name[..marker.len()].copy_from_slice(marker);
    long.set_entry_type(EntryType::GNULongName);
    long.set_mode(0o644);
    long.set_uid(0);
    long.set_gid(0);
    long.set_mtime(0);
    long.set_size(bytes.len() as u64 + 1);
    long.set_cksum();
    builder.append(&long, bytes.chain(&[0u8][..]))
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

/// Reads the regions of `file` back to back, exactly their lengths: stops at a region's end if
/// the file grew, pads with zeros if it shrank, and reports the running content total.
struct RegionReader<'a> {
    file: &'a File,
    regions: &'a [Region],
    /// How far into `regions[0]` the reader is.
    at: u64,
    /// Whether the file ended early (from then on, only zeros).
    padding: bool,
    done: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl Read for RegionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(region) = self.regions.first()
            && self.at == region.len
        {
            self.regions = &self.regions[1..];
            self.at = 0;
        }
        let Some(region) = self.regions.first() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(region.len - self.at).unwrap_or(usize::MAX));
        let read = if self.padding { 0 } else { self.file.read_at(&mut buf[..want], region.offset + self.at)? };
        let count = if read == 0 {
            self.padding = true;
            buf[..want].fill(0);
            want
        } else {
            read
        };
        self.at += count as u64;
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
