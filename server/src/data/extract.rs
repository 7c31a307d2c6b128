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
//! So entries are unpacked by hand, with fd-relative syscalls only:
//! - an entry's path must be relative and free of `..` (else the whole extraction fails, naming
//!   the entry); `.` and empty components are ignored;
//! - its parent is reached from the `dest_dir` fd one component at a time with
//!   `openat(O_DIRECTORY|O_NOFOLLOW)`, creating missing directories with `mkdirat`; a component
//!   that is a symlink (even one this archive created a moment ago) or not a directory fails the
//!   extraction — nothing is ever written through a symlink;
//! - the entry itself is created in that parent fd with calls that do not follow a symlink in
//!   the last component either: `openat(O_CREAT|O_EXCL|O_NOFOLLOW)` (an existing entry is first
//!   unlinked, never opened), `mkdirat`, `symlinkat`, and `linkat` without `AT_SYMLINK_FOLLOW`;
//! - a hard link's target is resolved the same way (relative, no `..`, no symlinked parents), so
//!   it can only link a file already inside `dest_dir`.
//!
//! Every resolution therefore starts at `dest_dir` and moves only down through real directories,
//! which is exactly "inside dest_dir" without depending on string comparison or on the tree not
//! changing. Symlinks are created verbatim (any target): they mean something only inside the
//! container, and nothing here follows them.
//!
//! Modes are restored without the setuid and setgid bits; owners (numeric) and mtimes are
//! restored; directories get their mode and mtime after their contents are in place. Fifos,
//! device nodes and unknown entry types are skipped and counted in [`ArchiveSummary::skipped`]:
//! our own archives never hold them, and a device node in /data is never what a bot needs.
//! Extraction is not transactional: on error the entries before the failing one stay in place.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::{Archive, Entry, EntryType};

use super::archive::{ArchiveFormat, ArchiveSummary};
use super::fd::{self, Kind};
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
    let mut archive = Archive::new(decoder);
    let mut extractor = Extractor { root, summary: ArchiveSummary::default(), dirs: Vec::new(), parent: None };
    for entry in archive.entries().map_err(|err| malformed(&err))? {
        let mut entry = entry.map_err(|err| malformed(&err))?;
        extractor.extract(&mut entry)?;
    }
    extractor.finish_dirs()?;
    // Reading to the end checks the compression trailer (gzip CRC) and lets progress reach the
    // input's size.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|err| malformed(&err))?;
    Ok(extractor.summary)
}

/// An archive entry's metadata, read once.
struct Meta {
    mode: u32,
    uid: Option<Uid>,
    gid: Option<Gid>,
    mtime: TimeSpec,
}

struct Extractor<'r> {
    root: BorrowedFd<'r>,
    summary: ArchiveSummary,
    /// Directories whose mode and mtime are set at the end (children would bump the mtime).
    dirs: Vec<(Vec<OsString>, Meta)>,
    /// The last parent directory opened, reused while entries stay in the same directory.
    parent: Option<(Vec<OsString>, OwnedFd)>,
}

impl Extractor<'_> {
    fn extract<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        // Extension headers carry no file; GNU tar names pax global headers `/tmp/GlobalHead.*`.
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let Some(components) = relative_components(&raw_path).map_err(|why| rejected_entry(&name, why))? else {
            return Ok(()); // the archive's root (`.` or `./`): dest_dir itself is not changed
        };
        let is_dir = kind == EntryType::Directory || (kind.is_file() && raw_path.ends_with(b"/"));
        let meta = read_meta(entry).map_err(|err| malformed_entry(&name, &err))?;
        let (leaf, parent_path) = components.split_last().expect("relative_components is never empty");
        match kind {
            _ if is_dir => {
                let parent = self.open_parent(parent_path, &name)?;
                make_dir(parent.as_fd(), leaf).map_err(|err| write_error(&name, err))?;
                self.dirs.push((components.clone(), meta));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let parent = self.open_parent(parent_path, &name)?;
                let written = write_file(parent.as_fd(), leaf, entry, &meta).map_err(|err| write_error(&name, err))?;
                self.summary.content_bytes += written;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                if target.is_empty() {
                    return Err(rejected_entry(&name, "is a symlink without a target"));
                }
                let parent = self.open_parent(parent_path, &name)?;
                make_symlink(parent.as_fd(), leaf, OsStr::from_bytes(&target), &meta)
                    .map_err(|err| write_error(&name, err))?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let target_components = relative_components(&target)
                    .map_err(|why| rejected_entry(&name, &format!("is a hard link whose target {why}")))?
                    .ok_or_else(|| rejected_entry(&name, "is a hard link to the archive's root"))?;
                let (target_leaf, target_parent_path) = target_components.split_last().expect("never empty");
                let target_parent = walk_down(self.root, target_parent_path, false)
                    .map_err(|err| resolve_error(&name, target_parent_path, err))?;
                let parent = self.open_parent(parent_path, &name)?;
                make_hard_link(target_parent.as_fd(), target_leaf, parent.as_fd(), leaf)
                    .map_err(|err| write_error(&name, err))?;
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

    /// The parent directory `path` below the root, created as needed; cached for the next entry.
    /// The cache stays valid: an entry only changes its own leaf, which is below its parent.
    fn open_parent(&mut self, path: &[OsString], name: &str) -> Result<BorrowedFd<'_>> {
        let cached = matches!(&self.parent, Some((cached, _)) if cached.as_slice() == path);
        if !cached {
            let fd = walk_down(self.root, path, true).map_err(|err| resolve_error(name, path, err))?;
            self.parent = Some((path.to_vec(), fd));
        }
        let (_, fd) = self.parent.as_ref().expect("set above");
        Ok(fd.as_fd())
    }

    /// Applies directory modes and mtimes deepest first, so setting one does not disturb another.
    fn finish_dirs(&mut self) -> Result<()> {
        self.parent = None;
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        for (path, meta) in dirs {
            let name = path.join(OsStr::new("/")).to_string_lossy().into_owned();
            let dir = match walk_down(self.root, &path, false) {
                Ok(dir) => dir,
                // A later entry replaced this directory (and brought its own metadata).
                Err(ResolveError::Component(_, err)) if is_replaced(&err) => continue,
                Err(err) => return Err(resolve_error(&name, &path, err)),
            };
            set_fd_meta(dir.as_fd(), &meta).map_err(|err| write_error(&name, err))?;
        }
        Ok(())
    }
}

/// Why a walk down from the root stopped.
enum ResolveError {
    /// At this component index.
    Component(usize, io::Error),
    Other(io::Error),
}

/// Walks `path` down from `root` through real directories only, creating missing ones when
/// `create` (see the module comment for why this cannot leave `root`'s tree).
fn walk_down(root: BorrowedFd<'_>, path: &[OsString], create: bool) -> std::result::Result<OwnedFd, ResolveError> {
    let mut current: Option<OwnedFd> = None;
    for (index, component) in path.iter().enumerate() {
        let dir = current.as_ref().map_or(root, |fd| fd.as_fd());
        let next = match fd::open_subdir(dir, component) {
            Err(err) if create && errno(&err) == Some(Errno::ENOENT) => match create_dir(dir, component) {
                Err(err) if errno(&err) != Some(Errno::EEXIST) => return Err(ResolveError::Other(err)),
                _ => fd::open_subdir(dir, component),
            },
            other => other,
        };
        current = Some(next.map_err(|err| ResolveError::Component(index, err))?);
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
        "extracting archive entry {name:?} failed: {err}; check the workspace's free space, or fix the archive"
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

fn read_meta<R: Read>(entry: &Entry<'_, R>) -> io::Result<Meta> {
    let header = entry.header();
    Ok(Meta {
        mode: header.mode()? & MODE_MASK,
        // Some writers leave the owner fields blank; the owner is then whoever extracts.
        uid: header.uid().ok().and_then(|uid| u32::try_from(uid).ok()).map(Uid::from_raw),
        gid: header.gid().ok().and_then(|gid| u32::try_from(gid).ok()).map(Gid::from_raw),
        mtime: TimeSpec::new(i64::try_from(header.mtime()?).unwrap_or(i64::MAX), 0),
    })
}

fn write_file<R: Read>(parent: BorrowedFd<'_>, name: &OsStr, data: &mut R, meta: &Meta) -> io::Result<u64> {
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
    let written = io::copy(data, &mut file)?;
    set_fd_meta(file.as_fd(), meta)?;
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
    if let Err(Errno::EEXIST) = symlinkat(target, parent, name) {
        remove_existing(parent, name)?;
        symlinkat(target, parent, name)?;
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
    if let Err(Errno::EEXIST) = linkat(target_parent, target, parent, name, AtFlags::empty()) {
        remove_existing(parent, name)?;
        linkat(target_parent, target, parent, name, AtFlags::empty())?;
    }
    Ok(())
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
        "archive entry {name:?} {why}; archives may only hold relative paths inside /data that do not go through symlinks, fix the archive and retry"
    ))
}

fn malformed_entry(name: &str, err: &io::Error) -> Error {
    archive_error(format!("archive entry {name:?} has a malformed header: {err}; fix the archive and retry"))
}

fn malformed(err: &io::Error) -> Error {
    archive_error(format!(
        "reading the archive failed: {err}; check that it is a complete tar archive in the stated compression"
    ))
}
