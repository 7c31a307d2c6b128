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
//! [`ArchiveSummary::skipped`]: our own archives never hold them, and a device node in /data is
//! never what a bot needs. Extraction is not transactional: on error the entries before the
//! failing one stay in place.

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
use super::tar_read::{ReadError, SparseMap, TarEntry, TarReader, shown};
use crate::error::{Error, Reason, Result};

/// Mode bits restored from an archive: permissions and sticky, never setuid or setgid.
const MODE_MASK: u32 = 0o1777;

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
    match format {
        ArchiveFormat::TarGzip => extract_tar(flate2::read::MultiGzDecoder::new(counted), root.as_fd()),
        ArchiveFormat::TarZstd => {
            let decoder = zstd::Decoder::new(counted).map_err(|err| malformed(&err))?;
            extract_tar(decoder, root.as_fd())
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

fn extract_tar<R: Read>(decoder: R, root: BorrowedFd<'_>) -> Result<ArchiveSummary> {
    let mut tar = TarReader::new(decoder);
    let mut extractor = Extractor {
        root,
        summary: ArchiveSummary::default(),
        cursor: Cursor { root, current: None, levels: Vec::new() },
    };
    while let Some(entry) = tar.next_entry().map_err(read_failed)? {
        extractor.extract(&entry, &mut tar.data())?;
    }
    extractor.cursor.leave_all()?;
    // Reading to the end checks the compression trailer (gzip CRC) and lets progress reach the
    // input's size.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(|err| malformed(&err))?;
    Ok(extractor.summary)
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
                self.cursor.enter(leaf, dir, Some(meta)).map_err(|err| write_error(&name, err))?;
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
            let dir = open_or_create_dir(self.dir(), component)
                .map_err(|err| resolve_error(name, path, ResolveError::Component(index, err)))?;
            self.enter(component, dir, None).map_err(|err| write_error(name, err))?;
        }
        Ok(())
    }

    /// Makes `dir`, the directory `name` of the current one, current.
    fn enter(&mut self, name: &OsStr, dir: OwnedFd, meta: Option<Meta>) -> io::Result<()> {
        let id = fd::id_of(&fstat(&dir)?);
        self.levels.push(Level { name: name.to_owned(), id, meta });
        self.current = Some(dir);
        Ok(())
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

fn open_or_create_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    match fd::open_subdir(parent, name) {
        Err(err) if errno(&err) == Some(Errno::ENOENT) => {
            match create_dir(parent, name) {
                Err(err) if errno(&err) != Some(Errno::EEXIST) => return Err(err),
                _ => {}
            }
            fd::open_subdir(parent, name)
        }
        other => other,
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
