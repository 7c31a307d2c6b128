//! Unit tests of the data module on temporary directories (the mount tests need root, as berth).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use tar::{EntryType, Header};
use tempfile::TempDir;

use super::*;
use crate::error::Reason;

// ---------- helpers ----------

fn no_progress() -> impl FnMut(u64) {
    |_| {}
}

fn write(path: &Path, content: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(path: &Path, seconds: i64) {
    let time = TimeSpec::new(seconds, 0);
    utimensat(nix::fcntl::AT_FDCWD, path, &time, &time, UtimensatFlags::NoFollowSymlink).unwrap();
}

/// What a round trip must keep of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    /// A file's content or a symlink's target.
    content: Vec<u8>,
}

/// Every entry below `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut map = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        let (kind, content) = if meta.file_type().is_symlink() {
            ("symlink", fs::read_link(entry.path()).unwrap().into_os_string().into_encoded_bytes())
        } else if meta.is_dir() {
            ("dir", Vec::new())
        } else {
            ("file", fs::read(entry.path()).unwrap())
        };
        let mode = if meta.file_type().is_symlink() { 0 } else { meta.mode() & 0o7777 };
        let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
        map.insert(rel, Node { kind, mode, uid: meta.uid(), gid: meta.gid(), mtime: meta.mtime(), content });
    }
    map
}

/// A tree with every kind of entry the archive keeps.
fn sample_tree(root: &Path) {
    write(&root.join("notes.txt"), b"hello\n", 0o644);
    write(&root.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&root.join("secret/key"), b"k", 0o600);
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    write(&root.join("sub/dir/deep/file"), &vec![7u8; 200_000], 0o640);
    fs::create_dir_all(root.join("empty/inner-empty")).unwrap();
    let long_dir = root.join("x".repeat(90)).join("y".repeat(90));
    write(&long_dir.join("z".repeat(120)), b"long name", 0o644);
    symlink("notes.txt", root.join("link-rel")).unwrap();
    symlink("/etc/passwd", root.join("link-abs")).unwrap();
    symlink("does/not/exist", root.join("link-dangling")).unwrap();
    symlink("t".repeat(150), root.join("link-long")).unwrap();
    symlink("bin", root.join("link-dir")).unwrap();
    write(&root.join("owned"), b"bot file", 0o664);
    chown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    for (index, path) in
        ["notes.txt", "bin/run.sh", "sub/dir/deep/file", "owned", "link-rel", "sub/dir", "empty"].iter().enumerate()
    {
        set_mtime(&root.join(path), 1_600_000_000 + index as i64 * 1000);
    }
}

fn round_trip(format: ArchiveFormat) {
    let src = TempDir::new().unwrap();
    let dest = TempDir::new().unwrap();
    sample_tree(src.path());
    let mut archive = Vec::new();
    let mut last_progress = 0;
    let written = write_archive(src.path(), &mut archive, format, &mut |done| last_progress = done).unwrap();
    let read = extract_archive(archive.as_slice(), format, dest.path(), &mut no_progress()).unwrap();

    assert_eq!(snapshot(src.path()), snapshot(dest.path()));
    assert_eq!(written.entries, read.entries);
    assert_eq!(written.entries, snapshot(src.path()).len() as u64);
    assert_eq!(written.content_bytes, read.content_bytes);
    assert_eq!(last_progress, written.content_bytes);
    assert_eq!((written.skipped, written.shrunk), (0, 0));
}

fn entry_names(archive: &[u8]) -> Vec<String> {
    let decoder = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(decoder);
    tar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// One tar entry written with raw header fields, bypassing the tar crate's own path checks.
struct Raw<'a> {
    name: &'a [u8],
    kind: EntryType,
    link: &'a [u8],
    data: &'a [u8],
    mode: u32,
}

fn raw(name: &str, kind: EntryType) -> Raw<'_> {
    Raw { name: name.as_bytes(), kind, link: b"", data: b"", mode: 0o644 }
}

fn raw_archive(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..entry.name.len()].copy_from_slice(entry.name);
        header.set_entry_type(entry.kind);
        header.set_size(entry.data.len() as u64);
        header.set_mode(entry.mode);
        header.set_mtime(1_700_000_000);
        header.set_uid(1000);
        header.set_gid(1000);
        header.set_link_name_literal(entry.link).unwrap();
        header.set_cksum();
        builder.append(&header, entry.data).unwrap();
    }
    gzip(&builder.into_inner().unwrap())
}

/// A scratch layout: `base/box/dest` to extract into, and `base/outside`, which must stay empty.
struct Jail {
    base: TempDir,
}

impl Jail {
    fn new() -> Self {
        let base = TempDir::new().unwrap();
        fs::create_dir_all(base.path().join("box/dest")).unwrap();
        fs::create_dir(base.path().join("outside")).unwrap();
        Self { base }
    }
    fn dest(&self) -> PathBuf {
        self.base.path().join("box/dest")
    }
    fn outside(&self) -> PathBuf {
        self.base.path().join("outside")
    }
    fn extract(&self, archive: &[u8]) -> crate::error::Result<ArchiveSummary> {
        extract_archive(archive, ArchiveFormat::TarGzip, &self.dest(), &mut no_progress())
    }
    /// Nothing exists outside `dest` but the layout itself.
    fn assert_contained(&self) {
        let mut found: Vec<_> = walkdir::WalkDir::new(self.base.path())
            .min_depth(1)
            .follow_links(false)
            .into_iter()
            .map(|e| e.unwrap().path().strip_prefix(self.base.path()).unwrap().to_path_buf())
            .filter(|rel| !rel.starts_with("box/dest") || rel == Path::new("box/dest"))
            .collect();
        found.sort();
        let expected: Vec<PathBuf> = ["box", "box/dest", "outside"].iter().map(PathBuf::from).collect();
        assert_eq!(found, expected, "something was written outside the destination");
    }
}

fn assert_rejected(result: crate::error::Result<ArchiveSummary>, entry: &str, why: &str) {
    let err = result.expect_err("the archive must be rejected");
    assert_eq!(err.reason(), Reason::DataArchiveFailed, "{}", err.message());
    assert!(err.message().contains(&format!("{entry:?}")), "message must name {entry:?}: {}", err.message());
    assert!(err.message().contains(why), "message must say {why:?}: {}", err.message());
}

// ---------- archive + extract round trips ----------

#[test]
fn gzip_round_trip_keeps_files_dirs_symlinks_modes_owners_and_mtimes() {
    round_trip(ArchiveFormat::TarGzip);
}

#[test]
fn zstd_round_trip_keeps_everything() {
    round_trip(ArchiveFormat::TarZstd);
}

#[test]
fn archive_names_are_relative_sorted_and_include_directories() {
    let src = TempDir::new().unwrap();
    write(&src.path().join("b.txt"), b"b", 0o644);
    write(&src.path().join("a/z"), b"z", 0o644);
    write(&src.path().join("a/c/d"), b"d", 0o644);
    fs::create_dir(src.path().join("e")).unwrap();
    let mut archive = Vec::new();
    write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut no_progress()).unwrap();
    assert_eq!(entry_names(&archive), ["a", "a/c", "a/c/d", "a/z", "b.txt", "e"]);
}

#[test]
fn archive_skips_fifos_and_sockets_and_never_follows_symlinks_out() {
    let base = TempDir::new().unwrap();
    let src = base.path().join("src");
    write(&base.path().join("outside/secret"), b"host secret", 0o644);
    write(&src.join("file"), b"x", 0o644);
    nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    symlink(base.path().join("outside"), src.join("escape")).unwrap();
    symlink("../outside/secret", src.join("escape-file")).unwrap();

    let mut archive = Vec::new();
    let summary = write_archive(&src, &mut archive, ArchiveFormat::TarGzip, &mut no_progress()).unwrap();
    assert_eq!(summary.skipped, 2);
    assert_eq!(summary.entries, 3);
    assert_eq!(summary.content_bytes, 1);
    assert_eq!(entry_names(&archive), ["escape", "escape-file", "file"]);
    let decoder = flate2::read::GzDecoder::new(archive.as_slice());
    let mut tar = tar::Archive::new(decoder);
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert!(!content.windows(11).any(|w| w == b"host secret"));
    }
}

#[test]
fn file_growing_while_archived_is_cut_at_its_opened_size() {
    let src = TempDir::new().unwrap();
    let big = src.path().join("big");
    let original: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    write(&big, &original, 0o644);
    write(&src.path().join("z-after"), b"still intact", 0o644);
    let mut grown = false;
    let mut archive = Vec::new();
    let summary = write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut |_| {
        // The first progress call comes after big's header (sized by fstat) and first chunk.
        if !grown {
            grown = true;
            fs::OpenOptions::new().append(true).open(&big).unwrap().write_all(&vec![1u8; 500_000]).unwrap();
        }
    })
    .unwrap();
    assert!(grown);
    assert_eq!(summary.shrunk, 0);
    let dest = TempDir::new().unwrap();
    extract_archive(archive.as_slice(), ArchiveFormat::TarGzip, dest.path(), &mut no_progress()).unwrap();
    assert_eq!(fs::read(dest.path().join("big")).unwrap(), original);
    assert_eq!(fs::read(dest.path().join("z-after")).unwrap(), b"still intact");
}

#[test]
fn file_shrinking_while_archived_is_padded_with_zeros_and_counted() {
    let src = TempDir::new().unwrap();
    let big = src.path().join("big");
    write(&big, &vec![9u8; 1_000_000], 0o644);
    write(&src.path().join("z-after"), b"still intact", 0o644);
    let mut cut = false;
    let mut archive = Vec::new();
    let summary = write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut |_| {
        if !cut {
            cut = true;
            fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(10).unwrap();
        }
    })
    .unwrap();
    assert_eq!(summary.shrunk, 1);
    let dest = TempDir::new().unwrap();
    extract_archive(archive.as_slice(), ArchiveFormat::TarGzip, dest.path(), &mut no_progress()).unwrap();
    let restored = fs::read(dest.path().join("big")).unwrap();
    assert_eq!(restored.len(), 1_000_000);
    assert!(restored.ends_with(&[0u8; 1000]));
    assert_eq!(fs::read(dest.path().join("z-after")).unwrap(), b"still intact");
}

// ---------- preserve / restore files ----------

#[test]
fn preserve_then_restore_round_trips_and_reports_compressed_progress() {
    let src = TempDir::new().unwrap();
    let state = TempDir::new().unwrap();
    let dest = TempDir::new().unwrap();
    sample_tree(src.path());
    let archive = state.path().join("preserved/ws.tar.gz");
    let written = preserve_to_file(src.path(), &archive, &mut no_progress()).unwrap();
    assert!(!state.path().join("preserved/ws.tar.gz.tmp").exists());
    assert_eq!(fs::metadata(&archive).unwrap().mode() & 0o777, 0o600);

    let mut last = 0;
    let read = restore_from_file(&archive, dest.path(), &mut |done| last = done).unwrap();
    assert_eq!(last, fs::metadata(&archive).unwrap().len());
    assert_eq!(written.entries, read.entries);
    assert_eq!(snapshot(src.path()), snapshot(dest.path()));
}

#[test]
fn failed_preserve_leaves_no_archive_and_keeps_the_previous_one() {
    let state = TempDir::new().unwrap();
    let archive = state.path().join("ws.tar.gz");
    let missing = state.path().join("no-such-dir");
    let err = preserve_to_file(&missing, &archive, &mut no_progress()).unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed);
    assert!(!archive.exists());
    assert!(!state.path().join("ws.tar.gz.tmp").exists());

    fs::write(&archive, b"previous").unwrap();
    preserve_to_file(&missing, &archive, &mut no_progress()).unwrap_err();
    assert_eq!(fs::read(&archive).unwrap(), b"previous");
}

#[test]
fn restore_of_a_missing_archive_is_preserved_data_not_found() {
    let dest = TempDir::new().unwrap();
    let err = restore_from_file(&dest.path().join("none.tar.gz"), dest.path(), &mut no_progress()).unwrap_err();
    assert_eq!(err.reason(), Reason::PreservedDataNotFound);
}

#[test]
fn truncated_archive_is_data_archive_failed() {
    let src = TempDir::new().unwrap();
    write(&src.path().join("f"), &vec![3u8; 100_000], 0o644);
    let mut archive = Vec::new();
    write_archive(src.path(), &mut archive, ArchiveFormat::TarZstd, &mut no_progress()).unwrap();
    archive.truncate(archive.len() / 2);
    let dest = TempDir::new().unwrap();
    let err = extract_archive(archive.as_slice(), ArchiveFormat::TarZstd, dest.path(), &mut no_progress()).unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed);
}

// ---------- hostile archives ----------

#[test]
fn parent_dir_entry_is_rejected() {
    let jail = Jail::new();
    let archive = raw_archive(&[Raw { data: b"evil", ..raw("../evil", EntryType::Regular) }]);
    assert_rejected(jail.extract(&archive), "../evil", "`..`");
    jail.assert_contained();
}

#[test]
fn nested_parent_dir_entry_is_rejected() {
    let jail = Jail::new();
    let archive = raw_archive(&[Raw { data: b"evil", ..raw("a/../../evil", EntryType::Regular) }]);
    assert_rejected(jail.extract(&archive), "a/../../evil", "`..`");
    jail.assert_contained();
}

#[test]
fn absolute_entry_is_rejected() {
    let jail = Jail::new();
    let name = format!("{}/abs", jail.outside().display());
    let archive = raw_archive(&[Raw { data: b"evil", ..raw(&name, EntryType::Regular) }]);
    assert_rejected(jail.extract(&archive), &name, "absolute");
    jail.assert_contained();
}

#[test]
fn write_through_absolute_symlink_is_rejected() {
    let jail = Jail::new();
    let outside = jail.outside().to_string_lossy().into_owned();
    let archive = raw_archive(&[
        Raw { link: outside.as_bytes(), ..raw("link", EntryType::Symlink) },
        Raw { data: b"evil", ..raw("link/file", EntryType::Regular) },
    ]);
    assert_rejected(jail.extract(&archive), "link/file", "symlink");
    jail.assert_contained();
    assert!(fs::symlink_metadata(jail.dest().join("link")).unwrap().file_type().is_symlink());
}

#[test]
fn write_through_relative_symlink_is_rejected() {
    let jail = Jail::new();
    let archive = raw_archive(&[
        Raw { link: b"../..", ..raw("link", EntryType::Symlink) },
        Raw { data: b"evil", ..raw("link/x", EntryType::Regular) },
    ]);
    assert_rejected(jail.extract(&archive), "link/x", "symlink");
    jail.assert_contained();
}

#[test]
fn directory_through_symlink_is_rejected() {
    let jail = Jail::new();
    let outside = jail.outside().to_string_lossy().into_owned();
    let archive = raw_archive(&[
        Raw { link: outside.as_bytes(), ..raw("link", EntryType::Symlink) },
        Raw { mode: 0o777, ..raw("link/newdir/", EntryType::Directory) },
    ]);
    assert_rejected(jail.extract(&archive), "link/newdir/", "symlink");
    jail.assert_contained();
}

#[test]
fn hard_link_to_absolute_path_is_rejected() {
    let jail = Jail::new();
    let archive = raw_archive(&[Raw { link: b"/etc/passwd", ..raw("pw", EntryType::Link) }]);
    assert_rejected(jail.extract(&archive), "pw", "absolute");
    jail.assert_contained();
    assert!(!jail.dest().join("pw").exists());
}

#[test]
fn hard_link_with_parent_dir_target_is_rejected() {
    let jail = Jail::new();
    let archive = raw_archive(&[Raw { link: b"../../outside/x", ..raw("h", EntryType::Link) }]);
    assert_rejected(jail.extract(&archive), "h", "`..`");
    jail.assert_contained();
}

#[test]
fn hard_link_through_symlink_is_rejected() {
    let jail = Jail::new();
    let secret = jail.outside().join("secret");
    fs::write(&secret, b"host").unwrap();
    let outside = jail.outside().to_string_lossy().into_owned();
    let archive = raw_archive(&[
        Raw { link: outside.as_bytes(), ..raw("link", EntryType::Symlink) },
        Raw { link: b"link/secret", ..raw("h", EntryType::Link) },
    ]);
    assert_rejected(jail.extract(&archive), "h", "symlink");
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
    assert!(!jail.dest().join("h").exists());
}

#[test]
fn file_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let jail = Jail::new();
    let target = jail.outside().join("target");
    fs::write(&target, b"host").unwrap();
    symlink(&target, jail.dest().join("f")).unwrap();
    let outside = jail.outside().to_string_lossy().into_owned();
    let archive = raw_archive(&[
        Raw { link: format!("{outside}/target").as_bytes(), ..raw("g", EntryType::Symlink) },
        Raw { data: b"mine", ..raw("f", EntryType::Regular) },
        Raw { data: b"mine too", ..raw("g", EntryType::Regular) },
    ]);
    jail.extract(&archive).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"host");
    assert_eq!(fs::read(jail.dest().join("f")).unwrap(), b"mine");
    assert_eq!(fs::read(jail.dest().join("g")).unwrap(), b"mine too");
    assert!(fs::symlink_metadata(jail.dest().join("g")).unwrap().is_file());
}

#[test]
fn setuid_and_setgid_bits_are_stripped_and_sticky_kept() {
    let jail = Jail::new();
    let archive = raw_archive(&[
        Raw { data: b"#!/bin/sh\n", mode: 0o4755, ..raw("suid", EntryType::Regular) },
        Raw { data: b"x", mode: 0o2750, ..raw("sgid", EntryType::Regular) },
        Raw { mode: 0o2775, ..raw("shared/", EntryType::Directory) },
        Raw { mode: 0o1777, ..raw("tmp/", EntryType::Directory) },
    ]);
    let summary = jail.extract(&archive).unwrap();
    assert_eq!(summary.entries, 4);
    let mode = |name: &str| fs::metadata(jail.dest().join(name)).unwrap().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sgid"), 0o750);
    assert_eq!(mode("shared"), 0o775);
    assert_eq!(mode("tmp"), 0o1777);
    let suid = fs::metadata(jail.dest().join("suid")).unwrap();
    assert_eq!((suid.mtime(), suid.uid(), suid.gid()), (1_700_000_000, 1000, 1000));
}

#[test]
fn device_and_fifo_entries_are_skipped() {
    let jail = Jail::new();
    let archive = raw_archive(&[
        raw("fifo", EntryType::Fifo),
        raw("null", EntryType::Char),
        raw("disk", EntryType::Block),
        Raw { data: b"ok", ..raw("file", EntryType::Regular) },
    ]);
    let summary = jail.extract(&archive).unwrap();
    assert_eq!((summary.entries, summary.skipped), (1, 3));
    let names: Vec<_> = fs::read_dir(jail.dest()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["file"]);
    jail.assert_contained();
}

#[test]
fn pax_global_header_with_an_absolute_name_is_not_an_entry() {
    let jail = Jail::new();
    let archive = raw_archive(&[
        Raw { data: b"18 comment=berth\n", ..raw("/tmp/GlobalHead.1.1", EntryType::XGlobalHeader) },
        Raw { data: b"ok", ..raw("file", EntryType::Regular) },
    ]);
    let summary = jail.extract(&archive).unwrap();
    assert_eq!((summary.entries, summary.skipped), (1, 0));
    jail.assert_contained();
}

#[test]
fn extracts_an_archive_made_by_gnu_tar() {
    let src = TempDir::new().unwrap();
    sample_tree(src.path());
    let dest = TempDir::new().unwrap();
    let output = std::process::Command::new("tar")
        .args(["--format=pax", "--numeric-owner", "-czf", "-", "-C"])
        .arg(src.path())
        .arg(".")
        .output()
        .expect("GNU tar is installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    extract_archive(output.stdout.as_slice(), ArchiveFormat::TarGzip, dest.path(), &mut no_progress()).unwrap();
    assert_eq!(snapshot(src.path()), snapshot(dest.path()));
}

#[test]
fn gnu_tar_reads_our_archives() {
    let src = TempDir::new().unwrap();
    sample_tree(src.path());
    let dest = TempDir::new().unwrap();
    let mut archive = Vec::new();
    write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut no_progress()).unwrap();
    let mut child = std::process::Command::new("tar")
        .args(["--numeric-owner", "--same-owner", "-xzpf", "-", "-C"])
        .arg(dest.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("GNU tar is installed");
    child.stdin.take().unwrap().write_all(&archive).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(snapshot(src.path()), snapshot(dest.path()));
}

#[test]
fn hard_links_inside_the_archive_are_restored() {
    let jail = Jail::new();
    let archive = raw_archive(&[
        Raw { data: b"shared", ..raw("dir/a", EntryType::Regular) },
        Raw { link: b"dir/a", ..raw("b", EntryType::Link) },
    ]);
    jail.extract(&archive).unwrap();
    let a = fs::metadata(jail.dest().join("dir/a")).unwrap();
    let b = fs::metadata(jail.dest().join("b")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

// ---------- sparse files ----------

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;

/// A file of `size` bytes that is all hole except the `pieces` written at their offsets.
fn sparse_file(path: &Path, size: u64, pieces: &[(u64, &[u8])]) {
    let file = fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (offset, bytes) in pieces {
        file.write_all_at(bytes, *offset).unwrap();
    }
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    fs::File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// The file holds `pieces` at their offsets, has `size` bytes, and allocates little.
fn assert_sparse_copy(path: &Path, size: u64, pieces: &[(u64, &[u8])]) {
    let meta = fs::metadata(path).unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() < 2048,
        "{} allocates {} blocks of 512 bytes: it is not sparse",
        path.display(),
        meta.blocks()
    );
    for (offset, bytes) in pieces {
        assert_eq!(&read_at(path, *offset, bytes.len()), bytes, "content at {offset}");
        if *offset >= 4096 {
            assert_eq!(read_at(path, offset - 4096, 4096), vec![0u8; 4096], "a hole before {offset} reads as zeros");
        }
    }
}

#[test]
fn ten_tib_sparse_file_is_preserved_and_restored_in_well_under_a_second_and_stays_sparse() {
    let src = TempDir::new().unwrap();
    let state = TempDir::new().unwrap();
    let dest = TempDir::new().unwrap();
    let pieces: [(u64, &[u8]); 3] = [(0, b"head"), (5 * TIB, b"middle"), (10 * TIB - 4, b"tail")];
    sparse_file(&src.path().join("huge"), 10 * TIB, &pieces);
    write(&src.path().join("small"), b"dense", 0o644);
    let archive = state.path().join("ws.tar.gz");

    let started = Instant::now();
    let written = preserve_to_file(src.path(), &archive, &mut no_progress()).unwrap();
    let read = restore_from_file(&archive, dest.path(), &mut no_progress()).unwrap();
    let elapsed = started.elapsed();

    assert!(elapsed < Duration::from_secs(1), "preserve + restore took {elapsed:?}");
    let archive_len = fs::metadata(&archive).unwrap().len();
    assert!(archive_len < 16 * 1024, "the archive is {archive_len} bytes");
    assert_sparse_copy(&dest.path().join("huge"), 10 * TIB, &pieces);
    assert_eq!(fs::read(dest.path().join("small")).unwrap(), b"dense");
    assert_eq!((written.entries, read.entries), (2, 2));
    assert_eq!(written.content_bytes, read.content_bytes);
    assert!(written.content_bytes < 64 * 1024, "{} content bytes stored", written.content_bytes);
}

#[test]
fn sparse_entries_are_gnu_sparse_and_the_tar_crate_reads_them() {
    let src = TempDir::new().unwrap();
    let pieces: [(u64, &[u8]); 2] = [(1 << 20, b"one"), (3 << 20, b"three")];
    sparse_file(&src.path().join("f"), 8 << 20, &pieces);
    let mut archive = Vec::new();
    write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut no_progress()).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
    let mut entries = tar.entries().unwrap();
    let mut entry = entries.next().unwrap().unwrap();
    assert_eq!(entry.header().entry_type(), EntryType::GNUSparse);
    let mut content = Vec::new();
    entry.read_to_end(&mut content).unwrap();
    assert_eq!(content.len(), 8 << 20);
    assert_eq!(&content[1 << 20..(1 << 20) + 3], b"one");
    assert_eq!(&content[3 << 20..(3 << 20) + 5], b"three");
    assert_eq!(content.iter().map(|b| u64::from(*b != 0)).sum::<u64>(), 8);
}

#[test]
fn gnu_tar_extracts_our_sparse_archives_sparsely() {
    let src = TempDir::new().unwrap();
    let dest = TempDir::new().unwrap();
    let pieces: [(u64, &[u8]); 3] = [(0, b"start"), (TIB / 2, b"half"), (TIB - 3, b"end")];
    sparse_file(&src.path().join("big"), TIB, &pieces);
    let mut archive = Vec::new();
    write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut no_progress()).unwrap();
    let mut child = std::process::Command::new("tar")
        .args(["--numeric-owner", "-xzf", "-", "-C"])
        .arg(dest.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("GNU tar is installed");
    child.stdin.take().unwrap().write_all(&archive).unwrap();
    assert!(child.wait().unwrap().success());
    assert_sparse_copy(&dest.path().join("big"), TIB, &pieces);
}

#[test]
fn sparse_archives_made_by_gnu_tar_in_gnu_and_pax_formats_extract_sparsely() {
    let src = TempDir::new().unwrap();
    let pieces: [(u64, &[u8]); 3] = [(4096, b"early"), (GIB / 2, b"mid"), (GIB - 2, b"zz")];
    sparse_file(&src.path().join("disk.img"), GIB, &pieces);
    for format in ["gnu", "pax"] {
        let dest = TempDir::new().unwrap();
        let output = std::process::Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "--numeric-owner", "-czf", "-", "-C"])
            .arg(src.path())
            .arg("disk.img")
            .output()
            .expect("GNU tar is installed");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary =
            extract_archive(output.stdout.as_slice(), ArchiveFormat::TarGzip, dest.path(), &mut no_progress()).unwrap();
        assert_eq!(summary.entries, 1, "{format}");
        let names: Vec<_> = fs::read_dir(dest.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["disk.img"], "{format}: the real name, not GNU's placeholder");
        assert_sparse_copy(&dest.path().join("disk.img"), GIB, &pieces);
    }
}

/// A raw, uncompressed GNU sparse ('S') entry: the map as given (extension headers when it has
/// more than four regions), then `data` bytes; `complete` adds the data and the end blocks.
fn sparse_tar(name: &str, real_size: u64, regions: &[(u64, u64)], stored: u64, complete: bool) -> Vec<u8> {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(EntryType::GNUSparse);
    header.set_size(stored);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    let gnu = header.as_gnu_mut().unwrap();
    gnu.set_real_size(real_size);
    for (slot, (offset, len)) in gnu.sparse.iter_mut().zip(regions) {
        slot.set_offset(*offset);
        slot.set_length(*len);
    }
    gnu.set_is_extended(regions.len() > 4);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    let rest: Vec<_> = regions.iter().skip(4).collect();
    let chunks: Vec<_> = rest.chunks(21).collect();
    for (index, chunk) in chunks.iter().enumerate() {
        let mut ext = tar::GnuExtSparseHeader::new();
        for (slot, (offset, len)) in ext.sparse_mut().iter_mut().zip(chunk.iter()) {
            slot.set_offset(*offset);
            slot.set_length(*len);
        }
        ext.set_is_extended(index + 1 < chunks.len());
        out.extend_from_slice(ext.as_bytes());
    }
    if complete {
        out.extend(std::iter::repeat_n(b'x', stored as usize));
        out.resize(out.len().next_multiple_of(512) + 1024, 0);
    }
    out
}

#[test]
fn malformed_sparse_maps_are_rejected_naming_the_entry() {
    /// Name, real size, regions, stored bytes, and what the message must say.
    type Case = (&'static str, u64, &'static [(u64, u64)], u64, &'static str);
    let cases: [Case; 4] = [
        ("overlap", 4096, &[(0, 1024), (512, 1024)], 2048, "overlap"),
        ("backwards", 8192, &[(4096, 512), (0, 512)], 1024, "overlap"),
        ("past-the-end", 1024, &[(0, 512), (4096, 512)], 1024, "beyond"),
        ("short", 8192, &[(0, 512)], 1024, "stores"),
    ];
    for (name, real_size, regions, stored, why) in cases {
        let jail = Jail::new();
        let archive = gzip(&sparse_tar(name, real_size, regions, stored, true));
        assert_rejected(jail.extract(&archive), name, why);
        assert!(!jail.dest().join(name).exists(), "{name} was not written");
        jail.assert_contained();
    }
}

#[test]
fn a_sparse_map_with_more_regions_than_the_limit_is_rejected_before_its_data() {
    let regions: Vec<(u64, u64)> = (0..65_537u64).map(|i| (i * 1024, 512)).collect();
    let jail = Jail::new();
    let archive = gzip(&sparse_tar("many", 65_537 * 1024, &regions, 65_537 * 512, false));
    assert_rejected(jail.extract(&archive), "many", "65536");
    jail.assert_contained();
}

#[test]
fn archiving_a_file_with_more_data_regions_than_the_limit_fails_naming_it() {
    let src = TempDir::new().unwrap();
    let path = src.path().join("fragmented");
    let file = fs::File::create(&path).unwrap();
    // One byte every 8 KiB: 65,537 data blocks separated by holes.
    for index in 0..65_537u64 {
        file.write_all_at(b"x", index * 8192).unwrap();
    }
    let mut archive = Vec::new();
    let err = write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut no_progress()).unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed);
    assert!(err.message().contains("\"fragmented\""), "{}", err.message());
    assert!(err.message().contains("65536"), "{}", err.message());
}

#[test]
fn gnu_pax_sparse_formats_older_than_1_0_are_refused_clearly() {
    let src = TempDir::new().unwrap();
    sparse_file(&src.path().join("old.img"), 64 << 20, &[(1 << 20, b"x")]);
    let output = std::process::Command::new("tar")
        .args(["--sparse", "--format=pax", "--sparse-version=0.1", "-czf", "-", "-C"])
        .arg(src.path())
        .arg("old.img")
        .output()
        .expect("GNU tar is installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let jail = Jail::new();
    let err = jail.extract(&output.stdout).unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed);
    assert!(err.message().contains("pax formats 0.x"), "{}", err.message());
    assert_eq!(fs::read_dir(jail.dest()).unwrap().count(), 0, "no placeholder file is left");
}

#[test]
fn an_oversized_long_name_is_rejected_without_reading_it() {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(EntryType::GNULongName);
    header.set_size(1 << 30);
    header.set_mode(0o644);
    header.set_cksum();
    let jail = Jail::new();
    let err = jail.extract(&gzip(header.as_bytes())).unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed);
    assert!(err.message().contains("GNU long name"), "{}", err.message());
    assert!(err.message().contains("more than the 65536"), "{}", err.message());
}

#[test]
fn an_entry_claiming_an_absurd_size_fails_cleanly() {
    for kind in [EntryType::Fifo, EntryType::Regular, EntryType::XGlobalHeader] {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..4].copy_from_slice(b"huge");
        header.set_entry_type(kind);
        header.set_size(u64::MAX);
        header.set_mode(0o644);
        header.set_cksum();
        let jail = Jail::new();
        let err = jail.extract(&gzip(header.as_bytes())).unwrap_err();
        assert_eq!(err.reason(), Reason::DataArchiveFailed, "{kind:?}");
        assert!(err.message().contains("ends in the middle"), "{kind:?}: {}", err.message());
    }
}

// ---------- hard links ----------

/// Bytes gzip cannot shrink, so an archive's size shows how often they are stored.
fn incompressible(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn hard_linked_files_are_stored_once_and_restored_as_one_inode() {
    let src = TempDir::new().unwrap();
    let dest = TempDir::new().unwrap();
    let content = incompressible(1 << 20);
    write(&src.path().join("a"), &content, 0o640);
    fs::create_dir(src.path().join("sub")).unwrap();
    fs::hard_link(src.path().join("a"), src.path().join("b")).unwrap();
    fs::hard_link(src.path().join("a"), src.path().join("sub/c")).unwrap();
    write(&src.path().join("single"), b"one link", 0o644);

    let mut archive = Vec::new();
    let written = write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut no_progress()).unwrap();
    assert_eq!(written.content_bytes, (1 << 20) + 8, "the linked bytes are stored once");
    assert!(archive.len() < (1 << 20) + (256 << 10), "the archive is {} bytes", archive.len());
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
    let links: Vec<_> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.header().entry_type() == EntryType::Link)
        .map(|e| (e.path().unwrap().into_owned(), e.link_name().unwrap().unwrap().into_owned()))
        .collect();
    assert_eq!(links, [(PathBuf::from("b"), PathBuf::from("a")), (PathBuf::from("sub/c"), PathBuf::from("a"))]);

    let read = extract_archive(archive.as_slice(), ArchiveFormat::TarGzip, dest.path(), &mut no_progress()).unwrap();
    assert_eq!(read.entries, written.entries);
    let a = fs::metadata(dest.path().join("a")).unwrap();
    assert_eq!(a.nlink(), 3);
    for other in ["b", "sub/c"] {
        assert_eq!(fs::metadata(dest.path().join(other)).unwrap().ino(), a.ino(), "{other}");
    }
    assert_eq!(fs::read(dest.path().join("sub/c")).unwrap(), content);
    assert_eq!(fs::metadata(dest.path().join("single")).unwrap().nlink(), 1);
    assert_eq!(snapshot(src.path()), snapshot(dest.path()));
}

#[test]
fn hard_link_to_a_file_not_in_the_archive_is_rejected_clearly() {
    let jail = Jail::new();
    let archive = raw_archive(&[
        Raw { data: b"x", ..raw("present", EntryType::Regular) },
        Raw { link: b"missing", ..raw("h", EntryType::Link) },
    ]);
    assert_rejected(jail.extract(&archive), "h", "hard link to \"missing\", which the archive does not hold before it");
    assert!(!jail.dest().join("h").exists());
    jail.assert_contained();
}

// ---------- deep trees ----------

/// Makes `depth` nested directories named `name` below `root` with fd-relative calls (their
/// paths outgrow PATH_MAX); returns the deepest one.
fn deep_chain(root: &Path, name: &str, depth: usize) -> OwnedFd {
    let mut dir = nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..depth {
        nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755)).unwrap();
        dir = nix::fcntl::openat(&dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    }
    dir
}

/// Opens the directory `depth` levels of `name` below `root`.
fn open_chain(root: &Path, name: &str, depth: usize) -> OwnedFd {
    let mut dir = nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    for level in 0..depth {
        dir = nix::fcntl::openat(&dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .unwrap_or_else(|err| panic!("level {level}: {err}"));
    }
    dir
}

fn write_in(dir: &OwnedFd, name: &str, content: &[u8]) {
    let fd = nix::fcntl::openat(dir, name, OFlag::O_WRONLY | OFlag::O_CREAT, Mode::from_bits_truncate(0o644)).unwrap();
    fs::File::from(fd).write_all(content).unwrap();
}

fn read_in(dir: &OwnedFd, name: &str) -> Vec<u8> {
    let fd = nix::fcntl::openat(dir, name, OFlag::O_RDONLY, Mode::empty()).unwrap();
    let mut content = Vec::new();
    fs::File::from(fd).read_to_end(&mut content).unwrap();
    content
}

#[test]
fn archiving_a_tree_10000_deep_fails_cleanly_naming_the_path_and_the_limit() {
    let src = TempDir::new().unwrap();
    write(&src.path().join("a-first"), b"x", 0o644);
    let bottom = deep_chain(src.path(), "d", 10_000);
    write_in(&bottom, "f", b"deep");
    let state = TempDir::new().unwrap();
    let archive = state.path().join("ws.tar.gz");
    let err = preserve_to_file(src.path(), &archive, &mut no_progress()).unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed);
    assert!(err.message().contains("\"d/d/d/d/d/d/d/d/d/d/"), "names the path: {}", err.message());
    assert!(err.message().contains("4096 bytes"), "names the limit: {}", err.message());
    assert!(err.message().contains("remove"), "says what to do: {}", err.message());
    assert!(err.message().len() < 1024, "the message stays short: {} bytes", err.message().len());
    assert!(!archive.exists());
}

#[test]
fn a_tree_just_under_the_path_limit_round_trips() {
    let src = TempDir::new().unwrap();
    let dest = TempDir::new().unwrap();
    // 2047 levels of "d" and a file "ff": "d/d/.../d/ff" is 4096 bytes, the limit.
    let bottom = deep_chain(src.path(), "d", 2047);
    write_in(&bottom, "ff", b"at the bottom");
    write(&src.path().join("e"), b"beside", 0o644);
    let mut archive = Vec::new();
    let started = Instant::now();
    let written = write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut no_progress()).unwrap();
    let read = extract_archive(archive.as_slice(), ArchiveFormat::TarGzip, dest.path(), &mut no_progress()).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(written.entries, 2049);
    assert_eq!(read.entries, 2049);
    assert_eq!(read_in(&open_chain(dest.path(), "d", 2047), "ff"), b"at the bottom");
    assert_eq!(fs::read(dest.path().join("e")).unwrap(), b"beside");
    assert!(elapsed < Duration::from_secs(10), "archive + extract took {elapsed:?}");
}

#[test]
fn extracting_a_path_over_the_limit_is_rejected_naming_the_limit() {
    let jail = Jail::new();
    let long = format!("{}f", "d/".repeat(2048));
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    builder.append_data(&mut header, &long, &b"deep"[..]).unwrap();
    let archive = gzip(&builder.into_inner().unwrap());
    let err = jail.extract(&archive).unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed);
    assert!(err.message().contains("\"d/d/d/d/"), "names the path: {}", err.message());
    assert!(err.message().contains("4096 bytes"), "names the limit: {}", err.message());
    assert!(!jail.dest().join("d").exists(), "nothing of it was created");
    jail.assert_contained();
}

#[test]
fn a_directory_moved_while_archived_fails_the_archive_instead_of_mixing_directories() {
    let src = TempDir::new().unwrap();
    write(&src.path().join("a/b/big"), &vec![1u8; 1 << 20], 0o644);
    write(&src.path().join("a/z"), b"a's own", 0o644);
    write(&src.path().join("c/z"), b"c's own", 0o644);
    let mut moved = false;
    let mut archive = Vec::new();
    let result = write_archive(src.path(), &mut archive, ArchiveFormat::TarGzip, &mut |_| {
        if !moved {
            moved = true;
            fs::rename(src.path().join("a/b"), src.path().join("c/b")).unwrap();
        }
    });
    assert!(moved);
    let err = result.unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed);
    assert!(err.message().contains("moved"), "{}", err.message());
}

// ---------- empty_dir ----------

#[test]
fn empty_dir_removes_everything_without_following_symlinks() {
    let jail = Jail::new();
    let dest = jail.dest();
    fs::write(jail.outside().join("keep"), b"host").unwrap();
    write(&dest.join("a/b/c"), b"x", 0o644);
    write(&dest.join("top"), b"y", 0o444);
    fs::set_permissions(dest.join("a/b"), fs::Permissions::from_mode(0o500)).unwrap();
    symlink(jail.outside(), dest.join("out-link")).unwrap();
    symlink(jail.outside().join("keep"), dest.join("file-link")).unwrap();
    assert_eq!(empty_dir(&dest).unwrap(), 6);
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
    assert_eq!(fs::read(jail.outside().join("keep")).unwrap(), b"host");
}

#[test]
fn empty_dir_removes_a_tree_10000_deep() {
    let jail = Jail::new();
    let dest = jail.dest();
    write(&dest.join("top"), b"y", 0o644);
    let bottom = deep_chain(&dest, "d", 10_000);
    write_in(&bottom, "f", b"deep");
    drop(bottom);
    let middle = open_chain(&dest, "d", 5_000);
    write_in(&middle, "g", b"middle");
    nix::unistd::symlinkat(jail.outside().as_os_str(), &middle, "out").unwrap();
    drop(middle);
    assert_eq!(empty_dir(&dest).unwrap(), 10_004);
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
    jail.assert_contained();
}

// ---------- mounts ----------

fn is_mountpoint(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_string_lossy();
    mountinfo.lines().any(|line| line.split(' ').nth(4) == Some(&wanted))
}

#[test]
fn overlay_mount_writes_land_in_the_upper_dir_and_drop_unmounts() {
    let base = TempDir::new().unwrap();
    let dir = |name: &str| {
        let path = base.path().join(name);
        fs::create_dir_all(&path).unwrap();
        path
    };
    let (lower1, lower2, upper, work) = (dir("l1"), dir("l2"), dir("upper"), dir("work"));
    write(&lower1.join("etc/os-release"), b"top layer", 0o644);
    write(&lower2.join("data/old.txt"), b"from the image", 0o644);
    let target = base.path().join("mnt");
    let spec = MountSpec {
        kind: "overlay".to_owned(),
        source: "overlay".to_owned(),
        options: vec![
            "index=off".to_owned(),
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={}:{}", lower1.display(), lower2.display()),
        ],
    };
    let rootfs = MountedRootfs::mount(&[spec], &target).unwrap();
    assert!(is_mountpoint(&target));
    assert_eq!(fs::read(rootfs.path().join("etc/os-release")).unwrap(), b"top layer");
    let data = data_dir(rootfs.path()).unwrap();
    assert_eq!(data, target.join("data"));
    assert_eq!(fs::read(data.join("old.txt")).unwrap(), b"from the image");
    fs::write(data.join("new.txt"), b"written on the host").unwrap();
    drop(rootfs);

    assert!(!is_mountpoint(&target));
    assert!(!target.exists());
    assert_eq!(fs::read(upper.join("data/new.txt")).unwrap(), b"written on the host");
    assert!(!lower2.join("data/new.txt").exists());
}

#[test]
fn bind_mount_is_writable_and_read_only_when_asked() {
    let base = TempDir::new().unwrap();
    let source = base.path().join("snapshot");
    fs::create_dir(&source).unwrap();
    let spec = |options: &[&str]| MountSpec {
        kind: "bind".to_owned(),
        source: source.to_string_lossy().into_owned(),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    };

    let target = base.path().join("rw");
    let rootfs = MountedRootfs::mount(&[spec(&["rbind", "rw"])], &target).unwrap();
    let data = data_dir(rootfs.path()).unwrap();
    assert_eq!(fs::metadata(&data).unwrap().mode() & 0o7777, 0o755);
    fs::write(data.join("f"), b"through the bind").unwrap();
    rootfs.unmount().unwrap();
    assert!(!target.exists());
    assert_eq!(fs::read(source.join("data/f")).unwrap(), b"through the bind");

    let target = base.path().join("ro");
    let rootfs = MountedRootfs::mount(&[spec(&["rbind", "ro"])], &target).unwrap();
    let err = fs::write(rootfs.path().join("data/g"), b"no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EROFS as i32));
    assert_eq!(fs::read(rootfs.path().join("data/f")).unwrap(), b"through the bind");
    drop(rootfs);
    assert!(!is_mountpoint(&target));
    assert!(!target.exists());
}

#[test]
fn failed_mount_cleans_up_its_mountpoint() {
    let base = TempDir::new().unwrap();
    let target = base.path().join("mnt");
    let spec = MountSpec {
        kind: "bind".to_owned(),
        source: base.path().join("missing").to_string_lossy().into_owned(),
        options: vec!["rbind".to_owned()],
    };
    let err = MountedRootfs::mount(&[spec], &target).unwrap_err();
    assert_eq!(err.reason(), Reason::RuntimeError);
    assert!(!is_mountpoint(&target));
    assert!(!target.exists());
}

#[test]
fn data_dir_refuses_symlinks_and_files() {
    let base = TempDir::new().unwrap();
    let rootfs = base.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    symlink("/etc", rootfs.join("data")).unwrap();
    let err = data_dir(&rootfs).unwrap_err();
    assert_eq!(err.reason(), Reason::DataArchiveFailed);
    assert!(err.message().contains("symlink"), "{}", err.message());

    fs::remove_file(rootfs.join("data")).unwrap();
    fs::write(rootfs.join("data"), b"file").unwrap();
    assert_eq!(data_dir(&rootfs).unwrap_err().reason(), Reason::DataArchiveFailed);
}
