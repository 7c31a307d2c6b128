//! Extracting a tar+gzip or tar+zstd archive into a directory without ever writing outside it.
//!
//! `dest_dir` is typically `/data` of a container rootfs mounted on the host, so the archive's
//! symlinks are the container's: an absolute target like `/etc` would name the HOST's /etc if
//! anything followed it here. The tar crate's `unpack_in` is not enough for that: it strips a
//! leading `/` and silently skips `..` entries instead of rejecting them, and it keeps writes
//! inside the destination by canonicalizing path strings and then writing by path, which a
//! symlink swapped in between the check and the write defeats; it also keeps setuid bits when
//! asked to preserve permissions.
//!
//! So entries are unpacked by hand, read with berth's own bounded tar reader (`tar_read.rs`),
//! with fd-relative syscalls only:
//! - an entry's path must be relative, free of `..` and at most [`MAX_PATH_BYTES`] long (else
//!   the whole extraction fails, naming the entry); `.` and empty components are ignored;
//! - its parent is reached from the `dest_dir` fd one component at a time with
//!   `openat(O_DIRECTORY|O_NOFOLLOW)`, creating missing directories with `mkdirat`; a component
//!   that is a symlink (even one this archive created a moment ago) or not a directory fails the
//!   extraction — nothing is ever written through a symlink;
//! - the extraction stays in the last parent it reached and moves from there to the next
//!   entry's: up through `..`, checked to be the very directory it came down from (see
//!   `fd::open_parent`), then down as above. So it holds one directory fd whatever the depth,
//!   and consecutive entries of a directory cost no lookups;
//! - the entry itself is created in that parent fd with calls that do not follow a symlink in
//!   the last component either: `openat(O_CREAT|O_EXCL|O_NOFOLLOW)` (an existing entry is first
//!   unlinked, never opened), `mkdirat`, `symlinkat`, and `linkat` without `AT_SYMLINK_FOLLOW`;
//! - a hard link's target is resolved the same way from `dest_dir` (relative, no `..`, no
//!   symlinked parents), so it can only link a file already inside `dest_dir`; a target that is
//!   not there (the archive did not hold it before the link) fails the extraction, naming both.
//!
//! Every resolution therefore starts at `dest_dir` and moves only through real directories
//! below it, which is exactly "inside dest_dir" without depending on string comparison or on
//! the tree not changing. Symlinks are created verbatim (any target): they mean something only
//! inside the container, and nothing here follows them.
//!
//! A sparse entry is written by seeking over its holes and setting the file's length at the
//! end, so the extracted file is as sparse as the archived one; its map was checked by the
//! reader (in order, inside the file, adding up to the stored bytes, bounded in length).
//!
//! Modes are restored without the setuid and setgid bits; owners (numeric) and mtimes are
//! restored; a directory gets its mode and mtime when the extraction leaves it (as GNU tar
//! does: an archive lists a directory's contents right after it), so its contents are in place.
//! Fifos, device nodes and unknown entry types are skipped and counted in
//! [`ArchiveSummary::skipped`] (berth's own archives never hold them), or, for an archive from a
//! client ([`extract_archive_at`] with `reject_special`), fail the extraction: a device node in a
//! workspace is never what a bot needs. Extraction is not transactional: on error the entries
//! before the failing one stay in place (import extracts into a staging directory for that).
//!
//! [`ExtractLimits`] bound what a client's archive may cost, checked while it is read: file
//! content is counted as it is written (a sparse file's holes when its map is read), so an entry
//! claiming 10 GB fails as soon as the limit is passed, not after writing it; entries are
//! counted as they come; and the decompressed stream as a whole is bounded too, so data that is
//! never written (skipped entries, extension headers) cannot make a bomb either.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, fstat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

use super::MAX_PATH_BYTES;
use super::archive::{ArchiveFormat, ArchiveSummary};
use super::fd::{self, DirId, Kind};
use super::in_root::Owner;
use super::tar_read::{ReadError, SparseMap, TarEntry, TarReader, shown};
use crate::error::{Error, Reason, Result};

/// Mode bits restored from an archive: permissions and sticky, never setuid or setgid.
const MODE_MASK: u32 = 0o1777;

/// Bounds on what one extraction may create, checked while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Bytes of file content: what regular files hold, a sparse file's holes included.
    pub max_bytes: u64,
    /// Archive entries (directories, files, symlinks, hard links, and any other header).
    pub max_entries: u64,
}

impl ExtractLimits {
    /// The most bytes a decompressed tar stream within these limits can hold: the content, and
    /// per entry a header, padding and extension headers with a path of up to PATH_MAX (twice:
    /// a link has two), rounded up generously.
    pub fn stream_bytes(&self) -> u64 {
        const PER_ENTRY: u64 = 16 << 10;
        const END: u64 = 1 << 20;
        self.max_bytes.saturating_add(self.max_entries.saturating_mul(PER_ENTRY)).saturating_add(END)
    }

    /// The most bytes a compressed archive within these limits can hold: its stream plus what
    /// gzip or zstd add to data they cannot compress (well under 1%).
    pub fn archive_bytes(&self) -> u64 {
        let stream = self.stream_bytes();
        stream.saturating_add(stream / 100)
    }
}

/// How [`extract_archive_at`] treats what the archive itself does not settle.
pub struct ExtractOptions<'a> {
    /// Bounds of a client's archive; `None` for berth's own archives.
    pub limits: Option<ExtractLimits>,
    /// Whether device nodes, FIFOs and unknown entry types fail the extraction (a client's
    /// archive) instead of being skipped.
    pub reject_special: bool,
    /// Owner of the directories the extraction creates for entries below them that the archive
    /// does not list itself; `None` leaves them to the extracting user.
    pub implied_dir_owner: Option<Owner>,
    /// Called before each entry and each read of entry data; an error ends the extraction with
    /// it (e.g. the workspace stopped).
    pub interrupt: &'a dyn Fn() -> Result<()>,
}

impl Default for ExtractOptions<'_> {
    fn default() -> Self {
        Self { limits: None, reject_special: false, implied_dir_owner: None, interrupt: &|| Ok(()) }
    }
}

/// What [`extract_archive_at`] did.
#[derive(Debug, Default)]
pub struct Extraction {
    pub summary: ArchiveSummary,
    /// Directories (device, inode) created for entries below them that the archive does not
    /// list: they carry no metadata of the archive's.
    pub implied_dirs: HashSet<(u64, u64)>,
}

/// Extracts a `format` archive read from `input` into `dest_dir` (which must exist), replacing
/// entries of the same name. `progress` gets the running total of bytes read from `input`.
pub fn extract_archive(
    input: impl Read,
    format: ArchiveFormat,
    dest_dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<ArchiveSummary> {
    let root = fd::open_dir(dest_dir).map_err(|err| {
        archive_error(format!(
            "opening {} to extract into it failed: {err}; check that it is a directory",
            dest_dir.display()
        ))
    })?;
    let counted = CountingReader { inner: input, done: 0, progress };
    extract_in(counted, format, root.as_fd(), &ExtractOptions::default()).map(|extraction| extraction.summary)
}

/// Extracts a `format` archive read from `input` into the open directory `dest`, as
/// [`extract_archive`] does, with `options` (an import: limits, no special files, the
/// workspace's user for implied directories).
pub fn extract_archive_at(
    input: impl Read,
    format: ArchiveFormat,
    dest: BorrowedFd<'_>,
    options: &ExtractOptions<'_>,
) -> Result<Extraction> {
    extract_in(input, format, dest, options)
}

fn extract_in(
    input: impl Read,
    format: ArchiveFormat,
    root: BorrowedFd<'_>,
    options: &ExtractOptions<'_>,
) -> Result<Extraction> {
    match format {
        ArchiveFormat::TarGzip => extract_tar(flate2::read::MultiGzDecoder::new(input), root, options),
        ArchiveFormat::TarZstd => {
            let decoder = zstd::Decoder::new(input).map_err(|err| malformed(&err))?;
            extract_tar(decoder, root, options)
        }
    }
}

/// Extracts the tar+gzip archive file `archive` into `dest_dir`. `progress` gets the running
/// total of compressed bytes read; the file's size is the total.
pub fn restore_from_file(archive: &Path, dest_dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<ArchiveSummary> {
    let file = File::open(archive).map_err(|err| {
        if err.kind() == io::ErrorKind::NotFound {
            return Error::new(
                Reason::PreservedDataNotFound,
                format!(
                    "no preserved data archive at {}; create the workspace without restore_data",
                    archive.display()
                ),
            );
        }
        archive_error(format!(
            "opening the archive {} failed: {err}; check the permissions of the server's state directory",
            archive.display()
        ))
    })?;
    extract_archive(BufReader::new(file), ArchiveFormat::TarGzip, dest_dir, progress)
}

/// Removes everything inside `dir` (not `dir` itself) without following symlinks; returns the
/// number of entries removed.
pub fn empty_dir(dir: &Path) -> Result<u64> {
    let root = fd::open_dir(dir).map_err(|err| empty_error(dir, &err))?;
    fd::remove_contents(root.as_fd()).map_err(|err| empty_error(dir, &err))
}

fn empty_error(dir: &Path, err: &io::Error) -> Error {
    archive_error(format!("emptying {} failed: {err}; check the workspace's file system", dir.display()))
}

fn extract_tar<R: Read>(decoder: R, root: BorrowedFd<'_>, options: &ExtractOptions<'_>) -> Result<Extraction> {
    let mut meter = Meter { options, content: 0, entries: 0, failure: None };
    let stream_bound = options.limits.map_or(u64::MAX, |limits| limits.stream_bytes());
    let stream_failure = std::cell::RefCell::new(None);
    let stream = BoundedStream { inner: decoder, left: stream_bound, limits: options.limits, failure: &stream_failure };
    let mut tar = TarReader::new(stream);
    let mut extractor = Extractor {
        root,
        summary: ArchiveSummary::default(),
        reject_special: options.reject_special,
        cursor: Cursor {
            root,
            current: None,
            levels: Vec::new(),
            implied_owner: options.implied_dir_owner,
            implied: HashSet::new(),
        },
    };
    // A failure of the bounded stream surfaces as an I/O error wherever it was read; its own
    // error says why.
    let or_stream = |err: Error| stream_failure.borrow_mut().take().unwrap_or(err);
    loop {
        let entry = match tar.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(err) => return Err(or_stream(read_failed(err))),
        };
        meter.start_entry(&entry)?;
        let extracted = {
            let mut data = Metered { inner: tar.data(), meter: &mut meter };
            extractor.extract(&entry, &mut data)
        };
        if let Err(err) = extracted {
            return Err(or_stream(meter.failure.take().unwrap_or(err)));
        }
    }
    extractor.cursor.leave_all()?;
    // Reading to the end checks the compression trailer (gzip CRC) and lets progress reach the
    // input's size.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(|err| or_stream(malformed(&err)))?;
    Ok(Extraction { summary: extractor.summary, implied_dirs: extractor.cursor.implied })
}

/// Counts what an extraction creates against its limits, and asks whether to go on.
struct Meter<'o> {
    options: &'o ExtractOptions<'o>,
    content: u64,
    entries: u64,
    /// Why a read of entry data failed (the meter's limits, or the archive itself): the
    /// extraction's error then says that rather than blaming the write.
    failure: Option<Error>,
}

impl Meter<'_> {
    fn start_entry(&mut self, entry: &TarEntry) -> Result<()> {
        (self.options.interrupt)()?;
        let Some(limits) = self.options.limits else {
            return Ok(());
        };
        self.entries += 1;
        if self.entries > limits.max_entries {
            return Err(entries_exceeded(limits));
        }
        if let Some(map) = &entry.sparse {
            let stored: u64 = map.regions.iter().map(|region| region.len).sum();
            self.add_content(map.real_size.saturating_sub(stored))?;
        }
        Ok(())
    }

    fn add_content(&mut self, bytes: u64) -> Result<()> {
        let Some(limits) = self.options.limits else {
            return Ok(());
        };
        self.content = self.content.saturating_add(bytes);
        if self.content > limits.max_bytes {
            return Err(bytes_exceeded(limits));
        }
        Ok(())
    }

    /// Before `bytes` of entry data are handed on to be written.
    fn read(&mut self, bytes: usize) -> io::Result<()> {
        let checked = (self.options.interrupt)().and_then(|()| self.add_content(bytes as u64));
        checked.map_err(|err| {
            let message = err.message().to_owned();
            self.failure = Some(err);
            io::Error::other(message)
        })
    }
}

/// An entry's data, metered (see [`Meter::read`]).
struct Metered<'m, 'o, R> {
    inner: R,
    meter: &'m mut Meter<'o>,
}

impl<R: Read> Read for Metered<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf).inspect_err(|err| {
            // The archive failed (truncated, corrupt), not the write of the entry.
            self.meter.failure = Some(malformed(err));
        })?;
        if read > 0 {
            self.meter.read(read)?;
        }
        Ok(read)
    }
}

/// The decompressed tar stream, failing once it passes what the limits allow in total.
struct BoundedStream<'f, R> {
    inner: R,
    left: u64,
    limits: Option<ExtractLimits>,
    failure: &'f std::cell::RefCell<Option<Error>>,
}

impl<R: Read> Read for BoundedStream<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        match self.left.checked_sub(read as u64) {
            Some(left) => {
                self.left = left;
                Ok(read)
            }
            None => {
                let limits = self.limits.expect("only a bounded stream runs out");
                let err = Error::new(
                    Reason::ResourceLimitExceeded,
                    format!(
                        "the archive expands to more than {} bytes of tar data, more than an archive within the import limits \
                         ({} bytes of content, {} entries) can hold; nothing was imported: split the archive, or ask the \
                         operator to raise the limits (import_max_bytes, import_max_entries)",
                        limits.stream_bytes(),
                        limits.max_bytes,
                        limits.max_entries
                    ),
                );
                *self.failure.borrow_mut() = Some(err);
                Err(io::Error::other("the archive expands past the import limits"))
            }
        }
    }
}

fn bytes_exceeded(limits: ExtractLimits) -> Error {
    Error::new(
        Reason::ResourceLimitExceeded,
        format!(
            "the archive holds more than {} bytes of file content, the server's import limit; nothing was imported: \
             split the archive, or ask the operator to raise import_max_bytes",
            limits.max_bytes
        ),
    )
}

fn entries_exceeded(limits: ExtractLimits) -> Error {
    Error::new(
        Reason::ResourceLimitExceeded,
        format!(
            "the archive holds more than {} entries, the server's import limit; nothing was imported: split the \
             archive, or ask the operator to raise import_max_entries",
            limits.max_entries
        ),
    )
}

/// An archive entry's metadata.
struct Meta {
    mode: u32,
    uid: Option<Uid>,
    gid: Option<Gid>,
    mtime: TimeSpec,
}

impl Meta {
    fn of(entry: &TarEntry) -> Self {
        Self {
            mode: entry.mode & MODE_MASK,
            uid: entry.uid.map(Uid::from_raw),
            gid: entry.gid.map(Gid::from_raw),
            mtime: TimeSpec::new(entry.mtime, 0),
        }
    }
}

struct Extractor<'r> {
    root: BorrowedFd<'r>,
    summary: ArchiveSummary,
    reject_special: bool,
    cursor: Cursor<'r>,
}

impl Extractor<'_> {
    fn extract<R: Read>(&mut self, entry: &TarEntry, data: &mut R) -> Result<()> {
        let kind = entry.kind;
        let name = String::from_utf8_lossy(&entry.path).into_owned();
        let Some(components) = relative_components(&entry.path).map_err(|why| rejected_entry(&name, why))? else {
            return Ok(()); // the archive's root (`.` or `./`): dest_dir itself is not changed
        };
        check_length(&components, &name)?;
        let is_dir = kind == EntryType::Directory || (kind.is_file() && entry.path.ends_with(b"/"));
        let meta = Meta::of(entry);
        let (leaf, parent_path) = components.split_last().expect("relative_components is never empty");
        match kind {
            _ if is_dir => {
                self.cursor.go_to(parent_path, &name)?;
                make_dir(self.cursor.dir(), leaf).map_err(|err| write_error(&name, err))?;
                let dir = fd::open_subdir(self.cursor.dir(), leaf).map_err(|err| {
                    resolve_error(&name, &components, ResolveError::Component(parent_path.len(), err))
                })?;
                let id = self.cursor.enter(leaf, dir, Some(meta)).map_err(|err| write_error(&name, err))?;
                // Listed after entries below it: it has the archive's metadata after all.
                self.cursor.implied.remove(&id);
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.cursor.go_to(parent_path, &name)?;
                let written = write_file(self.cursor.dir(), leaf, data, entry.sparse.as_ref(), &meta)
                    .map_err(|err| write_error(&name, err))?;
                self.summary.content_bytes += written;
            }
            EntryType::Symlink => {
                if entry.link.is_empty() {
                    return Err(rejected_entry(&name, "is a symlink without a target"));
                }
                self.cursor.go_to(parent_path, &name)?;
                make_symlink(self.cursor.dir(), leaf, OsStr::from_bytes(&entry.link), &meta)
                    .map_err(|err| write_error(&name, err))?;
            }
            EntryType::Link => self.extract_hard_link(entry, &name, leaf, parent_path)?,
            _ if self.reject_special => {
                let what = match kind {
                    EntryType::Char | EntryType::Block => "is a device node",
                    EntryType::Fifo => "is a FIFO",
                    _ => "has an entry type berth does not extract",
                };
                return Err(archive_error(format!(
                    "archive entry {} {what}; imports hold only directories, regular files, symlinks and hard links, \
                     remove it from the archive and retry",
                    shown(name.as_bytes())
                )));
            }
            _ => {
                // Fifos, devices, and types we do not know.
                self.summary.skipped += 1;
                return Ok(());
            }
        }
        self.summary.entries += 1;
        Ok(())
    }

    fn extract_hard_link(
        &mut self,
        entry: &TarEntry,
        name: &str,
        leaf: &OsString,
        parent_path: &[OsString],
    ) -> Result<()> {
        let target = relative_components(&entry.link)
            .map_err(|why| rejected_entry(name, &format!("is a hard link whose target {why}")))?
            .ok_or_else(|| rejected_entry(name, "is a hard link to the archive's root"))?;
        check_length(&target, name)?;
        let not_held = || {
            archive_error(format!(
                "archive entry {} is a hard link to {}, which the archive does not hold before it; fix the archive and retry",
                shown(name.as_bytes()),
                shown(&entry.link)
            ))
        };
        let (target_leaf, target_parent_path) = target.split_last().expect("never empty");
        let target_parent = match walk_down(self.root, target_parent_path) {
            Ok(fd) => fd,
            Err(ResolveError::Component(_, err)) if errno(&err) == Some(Errno::ENOENT) => return Err(not_held()),
            Err(err) => return Err(resolve_error(name, target_parent_path, err)),
        };
        self.cursor.go_to(parent_path, name)?;
        match make_hard_link(target_parent.as_fd(), target_leaf, self.cursor.dir(), leaf) {
            Err(err) if errno(&err) == Some(Errno::ENOENT) => Err(not_held()),
            other => other.map_err(|err| write_error(name, err)),
        }
    }
}

/// Where the extraction is: a directory below the root and the directories on the way down,
/// whose archived metadata is applied when the extraction leaves them (see the module comment).
struct Cursor<'r> {
    root: BorrowedFd<'r>,
    /// The deepest level's directory; `None` at the root.
    current: Option<OwnedFd>,
    levels: Vec<Level>,
    /// Who directories created on the way to an entry belong to.
    implied_owner: Option<Owner>,
    /// The directories created on the way to an entry that the archive has not listed (yet).
    implied: HashSet<DirId>,
}

struct Level {
    name: OsString,
    id: DirId,
    /// The directory's own entry's metadata, when the archive had one.
    meta: Option<Meta>,
}

impl Cursor<'_> {
    fn dir(&self) -> BorrowedFd<'_> {
        self.current.as_ref().map_or(self.root, |fd| fd.as_fd())
    }

    /// Moves to the directory `path` below the root, creating missing directories.
    fn go_to(&mut self, path: &[OsString], name: &str) -> Result<()> {
        let common = self.levels.iter().zip(path).take_while(|(level, component)| &level.name == *component).count();
        while self.levels.len() > common {
            self.leave()?;
        }
        for (index, component) in path.iter().enumerate().skip(common) {
            let (dir, created) = open_or_create_dir(self.dir(), component)
                .map_err(|err| resolve_error(name, path, ResolveError::Component(index, err)))?;
            if created && let Some(owner) = self.implied_owner {
                fchown(&dir, Some(Uid::from_raw(owner.uid)), Some(Gid::from_raw(owner.gid)))
                    .map_err(|err| write_error(name, err.into()))?;
            }
            let id = self.enter(component, dir, None).map_err(|err| write_error(name, err))?;
            if created {
                self.implied.insert(id);
            }
        }
        Ok(())
    }

    /// Makes `dir`, the directory `name` of the current one, current; returns its identity.
    fn enter(&mut self, name: &OsStr, dir: OwnedFd, meta: Option<Meta>) -> io::Result<DirId> {
        let id = fd::id_of(&fstat(&dir)?);
        self.levels.push(Level { name: name.to_owned(), id, meta });
        self.current = Some(dir);
        Ok(id)
    }

    /// Goes up to the parent of the current directory, applying the directory's metadata. The
    /// parent is opened first: the metadata may take away the permission to look up `..`.
    fn leave(&mut self) -> Result<()> {
        let level = self.levels.pop().expect("leave is only called below the root");
        let dir = self.current.take().expect("a level below the root has an fd");
        let path = || {
            let mut names: Vec<&OsStr> = self.levels.iter().map(|l| l.name.as_os_str()).collect();
            names.push(&level.name);
            names.join(OsStr::new("/")).to_string_lossy().into_owned()
        };
        let parent = match self.levels.last() {
            None => None,
            Some(parent) => Some(fd::open_parent(dir.as_fd(), parent.id).map_err(|err| write_error(&path(), err))?),
        };
        if let Some(meta) = &level.meta {
            set_fd_meta(dir.as_fd(), meta).map_err(|err| write_error(&path(), err))?;
        }
        self.current = parent;
        Ok(())
    }

    fn leave_all(&mut self) -> Result<()> {
        while !self.levels.is_empty() {
            self.leave()?;
        }
        Ok(())
    }
}

/// Opens the directory `name` in `parent`, creating it when missing; says whether it did.
fn open_or_create_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<(OwnedFd, bool)> {
    match fd::open_subdir(parent, name) {
        Err(err) if errno(&err) == Some(Errno::ENOENT) => {
            let created = match create_dir(parent, name) {
                Err(err) if errno(&err) != Some(Errno::EEXIST) => return Err(err),
                Err(_) => false,
                Ok(()) => true,
            };
            Ok((fd::open_subdir(parent, name)?, created))
        }
        other => other.map(|dir| (dir, false)),
    }
}

/// Rejects a path longer than [`MAX_PATH_BYTES`] (its components joined by `/`).
fn check_length(components: &[OsString], name: &str) -> Result<()> {
    let len = components.iter().map(|c| c.len()).sum::<usize>() + components.len() - 1;
    if len <= MAX_PATH_BYTES {
        return Ok(());
    }
    Err(archive_error(format!(
        "archive entry {} has a path of {len} bytes, more than the {MAX_PATH_BYTES} bytes berth extracts (Linux's PATH_MAX); shorten it in the archive and retry",
        shown(name.as_bytes())
    )))
}

/// Why a walk down from the root stopped.
enum ResolveError {
    /// At this component index.
    Component(usize, io::Error),
    Other(io::Error),
}

/// Walks `path` down from `root` through real directories only (see the module comment for
/// why this cannot leave `root`'s tree); used for hard-link targets.
fn walk_down(root: BorrowedFd<'_>, path: &[OsString]) -> std::result::Result<OwnedFd, ResolveError> {
    let mut current: Option<OwnedFd> = None;
    for (index, component) in path.iter().enumerate() {
        let dir = current.as_ref().map_or(root, |fd| fd.as_fd());
        current = Some(fd::open_subdir(dir, component).map_err(|err| ResolveError::Component(index, err))?);
    }
    match current {
        Some(fd) => Ok(fd),
        None => root.try_clone_to_owned().map_err(ResolveError::Other),
    }
}

fn is_replaced(err: &io::Error) -> bool {
    matches!(errno(err), Some(Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT))
}

fn resolve_error(name: &str, path: &[OsString], err: ResolveError) -> Error {
    match err {
        ResolveError::Component(index, err) if is_replaced(&err) => {
            let through = path[..=index].join(OsStr::new("/")).to_string_lossy().into_owned();
            if errno(&err) == Some(Errno::ENOENT) {
                rejected_entry(name, &format!("refers to {through:?}, which does not exist"))
            } else {
                rejected_entry(name, &format!("goes through {through:?}, which is a symlink or not a directory"))
            }
        }
        ResolveError::Component(_, err) | ResolveError::Other(err) => write_error(name, err),
    }
}

fn write_error(name: &str, err: io::Error) -> Error {
    archive_error(format!(
        "extracting archive entry {} failed: {err}; check the workspace's free space, or fix the archive",
        shown(name.as_bytes())
    ))
}

/// The normal components of an archive path, or `None` for the root; an absolute path or a `..`
/// component is an error saying why.
fn relative_components(raw: &[u8]) -> std::result::Result<Option<Vec<OsString>>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("has an absolute path");
    }
    let mut components = Vec::new();
    for part in raw.split(|byte| *byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("has a `..` component"),
            _ => components.push(OsStr::from_bytes(part).to_owned()),
        }
    }
    Ok(if components.is_empty() { None } else { Some(components) })
}

fn write_file<R: Read>(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    data: &mut R,
    sparse: Option<&SparseMap>,
    meta: &Meta,
) -> io::Result<u64> {
    // O_EXCL never follows (or truncates) whatever is in the way; it is unlinked first instead.
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let create = || openat(parent, name, flags, Mode::from_bits_truncate(0o600));
    let fd = match create() {
        Err(Errno::EEXIST) => {
            remove_existing(parent, name)?;
            create()?
        }
        other => other?,
    };
    let mut file = File::from(fd);
    let written = match sparse {
        None => io::copy(data, &mut file)?,
        Some(map) => write_sparse(&mut file, data, map)?,
    };
    set_fd_meta(file.as_fd(), meta)?;
    Ok(written)
}

/// Writes each region at its offset, seeking over the holes between them (the new file has no
/// blocks there), then sets the file's full length.
fn write_sparse<R: Read>(file: &mut File, data: &mut R, map: &SparseMap) -> io::Result<u64> {
    let mut written = 0;
    for region in map.regions.iter().filter(|region| region.len > 0) {
        file.seek(SeekFrom::Start(region.offset))?;
        let copied = io::copy(&mut data.by_ref().take(region.len), file)?;
        if copied != region.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends in the middle of an entry's data",
            ));
        }
        written += copied;
    }
    file.set_len(map.real_size)?;
    Ok(written)
}

fn make_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match create_dir(parent, name) {
        Err(err) if errno(&err) == Some(Errno::EEXIST) => {
            if Kind::of(&fd::lstat_at(parent, name)?) == Kind::Directory {
                return Ok(());
            }
            remove_existing(parent, name)?;
            create_dir(parent, name)
        }
        other => other,
    }
}

fn create_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(mkdirat(parent, name, Mode::from_bits_truncate(0o755))?)
}

fn make_symlink(parent: BorrowedFd<'_>, name: &OsStr, target: &OsStr, meta: &Meta) -> io::Result<()> {
    match symlinkat(target, parent, name) {
        Err(Errno::EEXIST) => {
            remove_existing(parent, name)?;
            symlinkat(target, parent, name)?;
        }
        other => other?,
    }
    ignore_eperm(fchownat(parent, name, meta.uid, meta.gid, AtFlags::AT_SYMLINK_NOFOLLOW))?;
    utimensat(parent, name, &meta.mtime, &meta.mtime, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

fn make_hard_link(
    target_parent: BorrowedFd<'_>,
    target: &OsStr,
    parent: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    // No AT_SYMLINK_FOLLOW: if the target is a symlink, the link is to the symlink itself.
    let link = || linkat(target_parent, target, parent, name, AtFlags::empty());
    match link() {
        Err(Errno::EEXIST) => {
            remove_existing(parent, name)?;
            Ok(link()?)
        }
        other => Ok(other?),
    }
}

/// Makes room for an entry: unlinks a file or symlink, removes an empty directory; a non-empty
/// directory is an error (replacing it would silently delete data).
fn remove_existing(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let flag = match Kind::of(&fd::lstat_at(parent, name)?) {
        Kind::Directory => UnlinkatFlags::RemoveDir,
        _ => UnlinkatFlags::NoRemoveDir,
    };
    Ok(unlinkat(parent, name, flag)?)
}

/// Owner first: changing it clears setuid/setgid, and the mode after it is the final one.
fn set_fd_meta(fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    ignore_eperm(fchown(fd, meta.uid, meta.gid))?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode))?;
    futimens(fd, &meta.mtime, &meta.mtime)?;
    Ok(())
}

/// Owners are restored only when berth runs with the privilege to set them.
fn ignore_eperm(result: nix::Result<()>) -> io::Result<()> {
    match result {
        Err(Errno::EPERM) => Ok(()),
        other => Ok(other?),
    }
}

fn errno(err: &io::Error) -> Option<Errno> {
    err.raw_os_error().map(Errno::from_raw)
}

/// Counts the bytes read from the archive's (compressed) input.
struct CountingReader<'p, R> {
    inner: R,
    done: u64,
    progress: &'p mut dyn FnMut(u64),
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read > 0 {
            self.done += read as u64;
            (self.progress)(self.done);
        }
        Ok(read)
    }
}

fn archive_error(message: String) -> Error {
    Error::new(Reason::DataArchiveFailed, message)
}

fn rejected_entry(name: &str, why: &str) -> Error {
    archive_error(format!(
        "archive entry {} {why}; archives may only hold relative paths inside /data that do not go through symlinks, fix the archive and retry",
        shown(name.as_bytes())
    ))
}

fn read_failed(err: ReadError) -> Error {
    match err {
        ReadError::Input(err) => malformed(&err),
        ReadError::Malformed(why) => archive_error(format!("{why}; fix the archive and retry")),
    }
}

fn malformed(err: &io::Error) -> Error {
    archive_error(format!(
        "reading the archive failed: {err}; check that it is a complete tar archive in the stated compression"
    ))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;

    use tar::{EntryType, Header};

    use super::*;

    fn header(name: &str, kind: EntryType, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        header
    }

    fn gzip(tar: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(tar).unwrap();
        encoder.finish().unwrap()
    }

    /// A gzip'd archive whose one entry claims `claimed` bytes and holds `present` zeros, then ends.
    fn claiming(claimed: u64, present: usize) -> Vec<u8> {
        let mut tar = header("bomb", EntryType::Regular, claimed).as_bytes().to_vec();
        tar.extend(std::iter::repeat_n(0u8, present));
        gzip(&tar)
    }

    fn files(count: usize) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for index in 0..count {
            builder.append(&header(&format!("f{index}"), EntryType::Regular, 1), &b"x"[..]).unwrap();
        }
        gzip(&builder.into_inner().unwrap())
    }

    fn import(archive: &[u8], dest: &Path, limits: ExtractLimits) -> Result<Extraction> {
        let dir = fd::open_dir(dest).unwrap();
        let options = ExtractOptions { limits: Some(limits), reject_special: true, ..ExtractOptions::default() };
        extract_archive_at(archive, ArchiveFormat::TarGzip, dir.as_fd(), &options)
    }

    const ROOMY: ExtractLimits = ExtractLimits { max_bytes: 1 << 30, max_entries: 1000 };

    #[test]
    fn an_entry_claiming_10_gb_fails_once_the_byte_limit_is_passed_having_written_no_more() {
        let dest = tempfile::tempdir().unwrap();
        let limits = ExtractLimits { max_bytes: 1 << 20, max_entries: 1000 };
        let err = import(&claiming(10 << 30, 4 << 20), dest.path(), limits).unwrap_err();
        assert_eq!(err.reason(), Reason::ResourceLimitExceeded, "{}", err.message());
        assert!(err.message().contains("1048576 bytes"), "{}", err.message());
        let written = std::fs::metadata(dest.path().join("bomb")).map_or(0, |meta| meta.len());
        assert!(written <= 1 << 20, "wrote {written} bytes past the limit");
    }

    #[test]
    fn a_sparse_entry_counts_its_holes() {
        let dest = tempfile::tempdir().unwrap();
        let mut tar = Vec::new();
        let mut builder = tar::Builder::new(&mut tar);
        let source = tempfile::tempdir().unwrap();
        let sparse = source.path().join("sparse");
        let file = File::create(&sparse).unwrap();
        file.set_len(8 << 20).unwrap();
        drop(file);
        builder.sparse(true);
        builder.append_path_with_name(&sparse, "sparse").unwrap();
        builder.finish().unwrap();
        drop(builder);
        let limits = ExtractLimits { max_bytes: 1 << 20, max_entries: 1000 };
        let err = import(&gzip(&tar), dest.path(), limits).unwrap_err();
        assert_eq!(err.reason(), Reason::ResourceLimitExceeded, "{}", err.message());
        let within = ExtractLimits { max_bytes: 8 << 20, max_entries: 1000 };
        let dest = tempfile::tempdir().unwrap();
        import(&gzip(&tar), dest.path(), within).unwrap();
        assert_eq!(std::fs::metadata(dest.path().join("sparse")).unwrap().len(), 8 << 20);
    }

    #[test]
    fn the_entry_limit_counts_every_entry() {
        let dest = tempfile::tempdir().unwrap();
        let limits = ExtractLimits { max_bytes: 1 << 30, max_entries: 10 };
        import(&files(10), dest.path(), limits).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let err = import(&files(11), dest.path(), limits).unwrap_err();
        assert_eq!(err.reason(), Reason::ResourceLimitExceeded);
        assert!(err.message().contains("more than 10 entries"), "{}", err.message());
    }

    #[test]
    fn data_that_is_never_written_is_bounded_too() {
        // The archive's root entry as a "file" of 64 MiB: skipped, but decompressed all the same.
        let mut tar = header("./", EntryType::Regular, 64 << 20).as_bytes().to_vec();
        tar.extend(std::iter::repeat_n(0u8, 64 << 20));
        let limits = ExtractLimits { max_bytes: 1 << 20, max_entries: 10 };
        let dest = tempfile::tempdir().unwrap();
        let err = import(&gzip(&tar), dest.path(), limits).unwrap_err();
        assert_eq!(err.reason(), Reason::ResourceLimitExceeded, "{}", err.message());
        assert!(err.message().contains("tar data"), "{}", err.message());
    }

    #[test]
    fn device_nodes_and_fifos_are_rejected_naming_the_entry() {
        for (kind, why) in
            [(EntryType::Char, "device node"), (EntryType::Block, "device node"), (EntryType::Fifo, "FIFO")]
        {
            let mut builder = tar::Builder::new(Vec::new());
            builder.append(&header("node", kind, 0), std::io::empty()).unwrap();
            let dest = tempfile::tempdir().unwrap();
            let err = import(&gzip(&builder.into_inner().unwrap()), dest.path(), ROOMY).unwrap_err();
            assert_eq!(err.reason(), Reason::DataArchiveFailed);
            assert!(err.message().contains("\"node\"") && err.message().contains(why), "{}", err.message());
        }
    }

    #[test]
    fn implied_directories_get_the_owner_and_are_reported_until_listed() {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header("implied/file", EntryType::Regular, 1), &b"x"[..]).unwrap();
        builder.append(&header("listed/file", EntryType::Regular, 1), &b"y"[..]).unwrap();
        let mut listed = header("listed/", EntryType::Directory, 0);
        listed.set_mode(0o700);
        listed.set_cksum();
        builder.append(&listed, std::io::empty()).unwrap();
        let archive = gzip(&builder.into_inner().unwrap());
        let dest = tempfile::tempdir().unwrap();
        let dir = fd::open_dir(dest.path()).unwrap();
        let options = ExtractOptions {
            limits: Some(ROOMY),
            implied_dir_owner: Some(Owner { uid: 4321, gid: 8765 }),
            ..ExtractOptions::default()
        };
        let extraction = extract_archive_at(archive.as_slice(), ArchiveFormat::TarGzip, dir.as_fd(), &options).unwrap();
        let implied = std::fs::metadata(dest.path().join("implied")).unwrap();
        assert_eq!((implied.uid(), implied.gid()), (4321, 8765));
        let listed = std::fs::metadata(dest.path().join("listed")).unwrap();
        assert_eq!(listed.mode() & 0o7777, 0o700);
        assert_eq!(extraction.implied_dirs, HashSet::from([(implied.dev(), implied.ino())]));
        assert_eq!(extraction.summary.entries, 3);
    }

    #[test]
    fn an_interrupt_ends_the_extraction_with_its_error() {
        let dest = tempfile::tempdir().unwrap();
        let dir = fd::open_dir(dest.path()).unwrap();
        let stop = || Err(Error::new(Reason::WorkspaceNotRunning, "stopped"));
        let options = ExtractOptions { interrupt: &stop, ..ExtractOptions::default() };
        let err = extract_archive_at(files(3).as_slice(), ArchiveFormat::TarGzip, dir.as_fd(), &options).unwrap_err();
        assert_eq!(err.reason(), Reason::WorkspaceNotRunning);
    }

    #[test]
    fn archive_bounds_grow_with_both_limits() {
        let limits = ExtractLimits { max_bytes: 20 << 30, max_entries: 1_000_000 };
        assert!(limits.stream_bytes() > limits.max_bytes + limits.max_entries * 1024);
        assert!(limits.archive_bytes() > limits.stream_bytes());
    }
}
