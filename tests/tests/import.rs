//! ImportData and ImportDataChunk end to end, on the real containerd: archives made with the
//! host's `tar` (gzip and zstd), and ExportData's, reproduce their tree byte for byte in a
//! running and a stopped workspace; replace vs merge (an image's /data, which overlayfs cannot swap, and a directory of
//! the writable layer, which it can); hostile archives each fail with their exact code and reason
//! and leave the target untouched; chunked uploads are retry-safe.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_api::v1::{
    ArchiveFormat, ExportDataRequest, FileType, ImportDataChunkRequest, ImportDataRequest, ListDirRequest,
    WriteFileChunkRequest, import_data_request,
};
use berth_e2e::files::{Files, create_workspace, start_workspace, stat, stop_workspace, write};
use berth_e2e::import::{
    Node, RawEntry, Workspaces, compress, header, host_tar, host_tree, import, import_chunk, imported_events, raw_tar,
    sha256_hex, workspace_tree,
};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use tonic::Code;

/// Deterministic bytes that do not compress (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn write_file(path: &Path, content: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets the mtime of `path` itself (not a symlink's target).
fn set_mtime(path: &Path, seconds: i64) {
    let status = Command::new("touch").arg("-h").arg("-d").arg(format!("@{seconds}")).arg(path).status().unwrap();
    assert!(status.success(), "touch {}", path.display());
}

/// A fresh host directory below the server's state directory.
fn host_dir(server: &BerthServer, name: &str) -> PathBuf {
    let dir = server.state_dir.join("host").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every kind of entry an import keeps: files with their modes, an owner, nested and empty
/// directories, relative, absolute, dangling and directory symlinks, hard links, odd names, and
/// mtimes on all of them.
fn sample_tree(root: &Path) {
    write_file(&root.join("notes.txt"), b"hello\n", 0o644);
    write_file(&root.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&root.join("secret/key"), b"k", 0o600);
    write_file(&root.join("deep/a/b/c/data.bin"), &noise(200_000, 7), 0o640);
    write_file(&root.join("space name \u{fc}.txt"), b"unicode", 0o644);
    write_file(&root.join("owned.txt"), b"someone else's", 0o664);
    std::os::unix::fs::chown(root.join("owned.txt"), Some(1234), Some(5678)).unwrap();
    write_file(&root.join("hard/one"), b"linked twice", 0o644);
    std::fs::hard_link(root.join("hard/one"), root.join("hard/two")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("notes.txt", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("missing/target", root.join("link-dangling")).unwrap();
    std::os::unix::fs::symlink("bin", root.join("link-dir")).unwrap();
    let files = ["notes.txt", "bin/run.sh", "secret/key", "deep/a/b/c/data.bin", "owned.txt", "hard/one"];
    let links = ["link-rel", "link-abs", "link-dangling", "link-dir"];
    for (index, path) in files.iter().chain(&links).enumerate() {
        set_mtime(&root.join(path), 1_600_000_000 + index as i64 * 1000);
    }
    // Directories last, deepest first: their entries' changes moved their mtimes.
    let dirs = ["deep/a/b/c", "deep/a/b", "deep/a", "deep", "bin", "secret", "hard", "empty"];
    for (index, dir) in dirs.iter().enumerate() {
        set_mtime(&root.join(dir), 1_500_000_000 + index as i64 * 1000);
    }
    std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o750)).unwrap();
}

fn with_sha256(mut header: import_data_request::Header, archive: &[u8]) -> import_data_request::Header {
    header.sha256 = sha256_hex(archive);
    header
}

/// The inode and link count of each path, from inside a running workspace.
fn inodes(testbed: &Testbed, server: &BerthServer, id: &str, paths: &[&str]) -> Vec<String> {
    let mut command = vec!["stat", "-c", "%i %h"];
    command.extend_from_slice(paths);
    testbed.exec(&server.namespace, id, &command).lines().map(str::to_owned).collect()
}

fn assert_hard_linked(testbed: &Testbed, server: &BerthServer, id: &str, dir: &str) {
    let (one, two) = (format!("{dir}/hard/one"), format!("{dir}/hard/two"));
    let found = inodes(testbed, server, id, &[&one, &two]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0], found[1], "hard/one and hard/two are one inode: {found:?}");
    assert!(found[0].ends_with(" 2"), "two links: {found:?}");
}

/// The archive ExportData streams of `path`, its trailer checked.
async fn export(workspaces: &mut Workspaces, id: &str, path: &str, format: ArchiveFormat) -> Vec<u8> {
    use berth_api::v1::export_data_response::Event;
    let request = ExportDataRequest { workspace_id: id.to_owned(), format: format.into(), path: path.to_owned() };
    let mut stream = workspaces.export_data(request).await.unwrap().into_inner();
    let mut archive = Vec::new();
    let mut trailer = None;
    while let Some(message) = stream.message().await.unwrap() {
        match message.event {
            Some(Event::Chunk(chunk)) => archive.extend_from_slice(&chunk),
            Some(Event::Trailer(end)) => trailer = Some(end),
            None => panic!("an empty ExportData message"),
        }
    }
    assert_eq!(trailer.expect("a trailer").sha256, sha256_hex(&archive));
    archive
}

/// Writes a file, creating its parents.
async fn write_parents(files: &mut Files, id: &str, path: &str, content: &[u8]) {
    let header =
        berth_api::v1::write_file_request::Header { create_parents: true, ..berth_e2e::files::header(id, path) };
    berth_e2e::files::write_with(files, header, content.to_vec(), 1 << 20).await.unwrap();
}

/// Names in a workspace directory (one level).
async fn names(files: &mut Files, id: &str, dir: &str) -> Vec<String> {
    let request = ListDirRequest { workspace_id: id.to_owned(), path: dir.to_owned(), depth: 1, ..Default::default() };
    files.list_dir(request).await.unwrap().into_inner().entries.into_iter().map(|entry| entry.name).collect()
}

/// No staging directory of an import is left beside `/data`.
async fn assert_no_staging_left(files: &mut Files, id: &str) {
    let leftovers: Vec<_> =
        names(files, id, "/").await.into_iter().filter(|name| name.contains("berth-import")).collect();
    assert!(leftovers.is_empty(), "staging directories left in /: {leftovers:?}");
}

#[tokio::test]
async fn host_tar_archives_import_byte_for_byte_into_a_running_and_a_stopped_workspace() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let id = "import-tree";
    // The image's user is `bot` (uid 1000): a directory the import creates is the bot's.
    create_workspace(&server, id, &testbed.image("USER_BOT")).await;
    let mut workspaces = Workspaces::new(server.channel().await);
    let mut files = Files::new(server.channel().await);

    let src = host_dir(&server, "sample");
    sample_tree(&src);
    let expected = host_tree(&src);
    assert_eq!(expected.len(), 20, "the sample tree: {:?}", expected.keys());
    let gzip = host_tar(&src, ArchiveFormat::TarGzip, false);
    let zstd = host_tar(&src, ArchiveFormat::TarZstd, false);
    assert_eq!(&zstd[..4], b"\x28\xb5\x2f\xfd", "tar --zstd wrote zstd");

    let imported =
        import(&mut workspaces, with_sha256(header(id, "/data/gz", ArchiveFormat::TarGzip, false), &gzip), &gzip)
            .await
            .unwrap();
    assert_eq!(imported.size_bytes, gzip.len() as i64);
    assert_eq!(imported.sha256, sha256_hex(&gzip));
    assert_eq!(imported.entry_count, expected.len() as u64);
    assert_eq!(workspace_tree(&mut files, id, "/data/gz").await, expected);
    let target = stat(&mut files, id, "/data/gz", false).await.unwrap();
    assert_eq!((target.r#type(), target.uid, target.gid, target.mode), (FileType::Directory, 1000, 1000, 0o755));
    assert_hard_linked(&testbed, &server, id, "/data/gz");
    assert_eq!(testbed.exec(&server.namespace, id, &["cat", "/data/gz/link-rel"]), "hello\n");

    stop_workspace(&server, id).await;
    let imported =
        import(&mut workspaces, header(id, "/data/zst", ArchiveFormat::TarZstd, false), &zstd).await.unwrap();
    assert_eq!((imported.size_bytes, imported.entry_count), (zstd.len() as i64, expected.len() as u64));
    assert_eq!(imported.sha256, sha256_hex(&zstd), "the sha256 is reported without being asked for");
    assert_eq!(workspace_tree(&mut files, id, "/data/zst").await, expected, "imported into the stopped workspace");
    start_workspace(&server, id).await;
    assert_hard_linked(&testbed, &server, id, "/data/zst");
    assert_eq!(workspace_tree(&mut files, id, "/data/gz").await, expected, "the first import survived the restart");
    assert_no_staging_left(&mut files, id).await;

    // An export imports back byte for byte, in both formats.
    for (format, dir) in [(ArchiveFormat::TarGzip, "/data/again-gz"), (ArchiveFormat::TarZstd, "/data/again-zst")] {
        let exported = export(&mut workspaces, id, "/data/gz", format).await;
        let imported = import(&mut workspaces, header(id, dir, format, false), &exported).await.unwrap();
        assert_eq!((imported.size_bytes, imported.entry_count), (exported.len() as i64, expected.len() as u64));
        assert_eq!(workspace_tree(&mut files, id, dir).await, expected, "{dir}");
        assert_hard_linked(&testbed, &server, id, dir);
    }

    let events = imported_events(&server.state_dir, id);
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events[0].contains("/data/gz") && events[0].contains(&sha256_hex(&gzip)), "{events:?}");
    assert!(events[1].contains("into /data/zst") && events[1].contains("20 entries"), "{events:?}");
}

/// A tree of three entries for the merge and replace tests.
fn archive_of(server: &BerthServer, name: &str, files: &[(&str, &[u8])]) -> (Vec<u8>, BTreeMap<String, Node>) {
    let dir = host_dir(server, name);
    for (path, content) in files {
        write_file(&dir.join(path), content, 0o644);
    }
    (host_tar(&dir, ArchiveFormat::TarGzip, false), host_tree(&dir))
}

fn contents(tree: &BTreeMap<String, Node>) -> Vec<(String, &'static str)> {
    tree.iter().map(|(path, node)| (path.clone(), node.kind)).collect()
}

#[tokio::test]
async fn merge_keeps_other_files_and_replace_leaves_exactly_the_archive_running_and_stopped() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let id = "import-modes";
    create_workspace(&server, id, &testbed.image("BUSYBOX")).await;
    let mut workspaces = Workspaces::new(server.channel().await);
    let mut files = Files::new(server.channel().await);
    let (archive, archived) = archive_of(
        &server,
        "modes",
        &[("same.txt", b"from the archive"), ("shared/new.txt", b"new shared"), ("fresh/file", b"fresh")],
    );
    // busybox's /data comes from the image (tests/testbed/images.sh makes it in the layer), so
    // overlayfs cannot rename it: a replace of /data cannot be a swap.

    for running in [true, false] {
        if !running {
            stop_workspace(&server, id).await;
        }
        let state = if running { "running" } else { "stopped" };
        write(&mut files, id, "/data/keep.txt", b"keep").await.unwrap();
        write(&mut files, id, "/data/same.txt", b"old").await.unwrap();
        write_parents(&mut files, id, "/data/shared/old.txt", b"old shared").await;

        // Merge into /data (the default path): same paths replaced, everything else stays.
        import(&mut workspaces, header(id, "", ArchiveFormat::TarGzip, false), &archive).await.unwrap();
        let merged = workspace_tree(&mut files, id, "/data").await;
        let paths: Vec<&str> = merged.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            ["fresh", "fresh/file", "keep.txt", "same.txt", "shared", "shared/new.txt", "shared/old.txt"],
            "{state}"
        );
        assert_eq!(merged["same.txt"], archived["same.txt"], "{state}");
        assert_eq!(merged["shared/new.txt"], archived["shared/new.txt"], "{state}");

        // A file over a non-empty directory: refused before anything moved.
        let (conflict, _) = archive_of(&server, "conflict", &[("aaa-first.txt", b"first"), ("shared", b"a file")]);
        let err =
            import(&mut workspaces, header(id, "/data", ArchiveFormat::TarGzip, false), &conflict).await.unwrap_err();
        assert_eq!(
            (err.code(), error_reason(&err).as_deref()),
            (Code::FailedPrecondition, Some("DIRECTORY_NOT_EMPTY"))
        );
        assert!(err.message().contains("/data/shared"), "{}", err.message());
        assert_eq!(workspace_tree(&mut files, id, "/data").await, merged, "nothing moved ({state})");

        // Replace /data, which comes from the image: exactly the archive afterwards.
        import(&mut workspaces, header(id, "/data", ArchiveFormat::TarGzip, true), &archive).await.unwrap();
        assert_eq!(contents(&workspace_tree(&mut files, id, "/data").await), contents(&archived), "{state}");
        assert_eq!(workspace_tree(&mut files, id, "/data").await, archived, "{state}");

        // Replace a directory of the writable layer (swapped in one exchange).
        write_parents(&mut files, id, "/data/layer/old.txt", b"old").await;
        import(&mut workspaces, header(id, "/data/layer", ArchiveFormat::TarGzip, true), &archive).await.unwrap();
        assert_eq!(workspace_tree(&mut files, id, "/data/layer").await, archived, "{state}");

        // A missing target is created with its parents; a file is not a directory.
        import(&mut workspaces, header(id, "/srv/new/deeper", ArchiveFormat::TarGzip, false), &archive).await.unwrap();
        assert_eq!(workspace_tree(&mut files, id, "/srv/new/deeper").await, archived, "{state}");
        let err = import(&mut workspaces, header(id, "/data/same.txt", ArchiveFormat::TarGzip, false), &archive)
            .await
            .unwrap_err();
        assert_eq!((err.code(), error_reason(&err).as_deref()), (Code::FailedPrecondition, Some("NOT_A_DIRECTORY")));
        assert_no_staging_left(&mut files, id).await;
        assert!(!names(&mut files, id, "/srv/new").await.iter().any(|name| name.contains("berth-import")));

        // Start the next round from a /data without the archive's directories.
        for path in ["/data/shared", "/data/fresh", "/data/layer", "/srv"] {
            let request =
                berth_api::v1::RemoveRequest { workspace_id: id.to_owned(), path: path.to_owned(), recursive: true };
            files.remove(request).await.unwrap();
        }
    }
    start_workspace(&server, id).await;
    assert_eq!(testbed.exec(&server.namespace, id, &["cat", "/data/same.txt"]), "from the archive");
}

/// A hostile archive, how it is sent, and how it must fail.
struct Hostile {
    name: &'static str,
    archive: Vec<u8>,
    format: ArchiveFormat,
    sha256: String,
    code: Code,
    reason: &'static str,
    /// Said by the message (the entry's name, the limit).
    says: &'static [&'static str],
}

fn hostile(
    name: &'static str,
    archive: Vec<u8>,
    code: Code,
    reason: &'static str,
    says: &'static [&'static str],
) -> Hostile {
    Hostile { name, archive, format: ArchiveFormat::TarGzip, sha256: String::new(), code, reason, says }
}

fn gz(entries: &[RawEntry]) -> Vec<u8> {
    compress(&raw_tar(entries), ArchiveFormat::TarGzip)
}

/// The server's import limits in this test, lowered so a bomb is cheap.
const MAX_BYTES: u64 = 16 << 20;
const MAX_ENTRIES: u64 = 1000;

fn hostile_archives(server: &BerthServer) -> Vec<Hostile> {
    const FAILED: Code = Code::FailedPrecondition;
    const ARCHIVE: &str = "DATA_ARCHIVE_FAILED";
    let ok = RawEntry::file("aaa-fine.txt", b"a harmless first entry");
    let zeros = RawEntry { claimed_size: Some(10_000_000_000), ..RawEntry::file("zeros", &vec![0; 32 << 20]) };
    let many: Vec<RawEntry> = (0..=MAX_ENTRIES).map(|index| RawEntry::file(&format!("f{index}"), b"x")).collect();
    let sparse_dir = host_dir(server, "sparse");
    std::fs::File::create(sparse_dir.join("huge")).unwrap().set_len(10_000_000_000).unwrap();
    let (valid, _) = archive_of(server, "valid", &[("a.txt", b"a"), ("big.bin", &noise(2 << 20, 3))]);
    let zstd_valid = {
        let dir = host_dir(server, "valid-zstd");
        write_file(&dir.join("a.txt"), b"a", 0o644);
        host_tar(&dir, ArchiveFormat::TarZstd, false)
    };
    vec![
        hostile(
            "tar-slip",
            gz(&[ok.clone(), RawEntry::file("../escape.txt", b"x")]),
            FAILED,
            ARCHIVE,
            &["\"../escape.txt\"", "`..`"],
        ),
        hostile("nested tar-slip", gz(&[RawEntry::file("ok/../../escape.txt", b"x")]), FAILED, ARCHIVE, &["`..`"]),
        hostile(
            "absolute name",
            gz(&[ok.clone(), RawEntry::file("/etc/abs-evil", b"x")]),
            FAILED,
            ARCHIVE,
            &["\"/etc/abs-evil\"", "absolute"],
        ),
        hostile(
            "a symlink, then a file through it",
            gz(&[RawEntry::link("link", b'2', "/etc"), RawEntry::file("link/evil", b"x")]),
            FAILED,
            ARCHIVE,
            &["\"link/evil\"", "symlink"],
        ),
        hostile(
            "a hard link to /etc/shadow",
            gz(&[ok.clone(), RawEntry::link("shadow", b'1', "/etc/shadow")]),
            FAILED,
            ARCHIVE,
            &["\"shadow\"", "hard link", "absolute"],
        ),
        hostile(
            "a hard link up and out",
            gz(&[RawEntry::link("passwd", b'1', "../etc/passwd")]),
            FAILED,
            ARCHIVE,
            &["\"passwd\"", "`..`"],
        ),
        hostile(
            "a device node",
            gz(&[ok.clone(), RawEntry::new("null", b'3')]),
            FAILED,
            ARCHIVE,
            &["\"null\"", "device node"],
        ),
        hostile("a FIFO", gz(&[RawEntry::new("fifo", b'6')]), FAILED, ARCHIVE, &["\"fifo\"", "FIFO"]),
        hostile(
            "an entry claiming 10 GB of compressible zeros",
            gz(&[ok.clone(), zeros]),
            Code::ResourceExhausted,
            "RESOURCE_LIMIT_EXCEEDED",
            &["16777216 bytes", "import_max_bytes"],
        ),
        hostile(
            "a 10 GB sparse file",
            host_tar(&sparse_dir, ArchiveFormat::TarGzip, true),
            Code::ResourceExhausted,
            "RESOURCE_LIMIT_EXCEEDED",
            &["16777216 bytes"],
        ),
        hostile(
            "one entry too many",
            gz(&many),
            Code::ResourceExhausted,
            "RESOURCE_LIMIT_EXCEEDED",
            &["more than 1000 entries"],
        ),
        hostile(
            "a truncated gzip",
            valid[..valid.len() / 2].to_vec(),
            FAILED,
            ARCHIVE,
            &["reading the archive failed"],
        ),
        Hostile {
            sha256: "0".repeat(64),
            ..hostile("a checksum mismatch", valid.clone(), Code::InvalidArgument, "CHECKSUM_MISMATCH", &["0000000000"])
        },
        hostile("zstd sent as gzip", zstd_valid, FAILED, ARCHIVE, &["reading the archive failed"]),
    ]
}

#[tokio::test]
async fn hostile_archives_fail_with_their_reason_and_leave_the_target_untouched() {
    let testbed = Testbed::from_env();
    let options = ServerOptions {
        extra_args: vec![
            "--import-max-bytes".to_owned(),
            MAX_BYTES.to_string(),
            "--import-max-entries".to_owned(),
            MAX_ENTRIES.to_string(),
        ],
        ..Default::default()
    };
    let server = BerthServer::start_with(&testbed, options);
    let id = "import-hostile";
    create_workspace(&server, id, &testbed.image("BUSYBOX")).await;
    let mut workspaces = Workspaces::new(server.channel().await);
    let mut files = Files::new(server.channel().await);
    write(&mut files, id, "/data/keep.txt", b"the bot's file").await.unwrap();
    write(&mut files, id, "/data/aaa-fine.txt", b"the bot's version").await.unwrap();
    write_parents(&mut files, id, "/data/sub/deep.txt", b"deep").await;
    let before = workspace_tree(&mut files, id, "/data").await;

    for case in hostile_archives(&server) {
        for replace in [false, true] {
            let what = format!("{} (replace: {replace})", case.name);
            let mut header = header(id, "/data", case.format, replace);
            header.sha256.clone_from(&case.sha256);
            let err = import(&mut workspaces, header, &case.archive).await.expect_err(&what);
            assert_eq!(
                (err.code(), error_reason(&err).as_deref()),
                (case.code, Some(case.reason)),
                "{what}: {}",
                err.message()
            );
            for said in case.says {
                assert!(err.message().contains(said), "{what}: the message must say {said:?}: {}", err.message());
            }
            assert_eq!(workspace_tree(&mut files, id, "/data").await, before, "{what}: /data changed");
            assert_no_staging_left(&mut files, id).await;
        }
    }
    let outside = ["/escape.txt", "/etc/abs-evil", "/etc/evil", "/null", "/fifo"];
    for path in outside {
        let found = testbed.exec_output(&server.namespace, id, None, &["test", "-e", path]);
        assert!(!found.success, "{path} was written outside /data");
    }
    // The same archives through the chunked upload fail the same way (two of them suffice: the
    // last chunk goes through the same import).
    let cases = hostile_archives(&server);
    for case in cases.iter().filter(|case| matches!(case.name, "tar-slip" | "a checksum mismatch")) {
        let request = ImportDataChunkRequest {
            workspace_id: id.to_owned(),
            upload_id: format!("hostile-{}", case.name.len()),
            format: case.format.into(),
            path: "/data".to_owned(),
            replace: true,
            sha256: case.sha256.clone(),
            ..Default::default()
        };
        let err = import_chunk(&mut workspaces, &request, 0, &case.archive, true).await.unwrap_err();
        assert_eq!((err.code(), error_reason(&err).as_deref()), (case.code, Some(case.reason)), "{}", case.name);
        assert_eq!(workspace_tree(&mut files, id, "/data").await, before, "{}: /data changed", case.name);
    }
    assert!(imported_events(&server.state_dir, id).is_empty(), "no import was recorded");
}

#[tokio::test]
async fn chunked_imports_are_retry_safe_and_requests_are_validated() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let id = "import-chunks";
    create_workspace(&server, id, &testbed.image("BUSYBOX")).await;
    let mut workspaces = Workspaces::new(server.channel().await);
    let mut files = Files::new(server.channel().await);
    let src = host_dir(&server, "chunked");
    sample_tree(&src);
    write_file(&src.join("noise.bin"), &noise(400_000, 11), 0o644);
    let expected = host_tree(&src);
    let archive = host_tar(&src, ArchiveFormat::TarGzip, false);
    const CHUNK: usize = 100_000;
    assert!(archive.len() > 4 * CHUNK, "{} bytes", archive.len());
    let chunks: Vec<&[u8]> = archive.chunks(CHUNK).collect();
    let request = ImportDataChunkRequest {
        workspace_id: id.to_owned(),
        upload_id: "0b1c8a52-5d1b-4b7a-9a77-6c1e2f3a4b5c".to_owned(),
        format: ArchiveFormat::TarGzip.into(),
        path: "/data/chunked".to_owned(),
        replace: false,
        sha256: sha256_hex(&archive),
        ..Default::default()
    };

    let err = import_chunk(&mut workspaces, &request, CHUNK, chunks[1], false).await.unwrap_err();
    assert_eq!((err.code(), error_reason(&err).as_deref()), (Code::NotFound, Some("UPLOAD_NOT_FOUND")));
    let first = import_chunk(&mut workspaces, &request, 0, chunks[0], false).await.unwrap();
    assert_eq!((first.received_bytes, first.done), (CHUNK as i64, false));
    let repeated = import_chunk(&mut workspaces, &request, 0, chunks[0], false).await.unwrap();
    assert_eq!((repeated.received_bytes, repeated.done), (CHUNK as i64, false), "a repeated chunk changes nothing");
    let err = import_chunk(&mut workspaces, &request, 2 * CHUNK, chunks[2], false).await.unwrap_err();
    assert_eq!((err.code(), error_reason(&err).as_deref()), (Code::FailedPrecondition, Some("UPLOAD_OFFSET_MISMATCH")));
    assert!(err.message().contains(&format!("offset {CHUNK}")), "{}", err.message());
    {
        use tonic_types::StatusExt as _;
        let info = err.get_details_error_info().unwrap();
        assert_eq!(info.metadata.get("received_bytes").map(String::as_str), Some(CHUNK.to_string().as_str()));
    }
    let last_index = chunks.len() - 1;
    for (index, chunk) in chunks.iter().enumerate().take(last_index).skip(1) {
        let ack = import_chunk(&mut workspaces, &request, index * CHUNK, chunk, false).await.unwrap();
        assert_eq!((ack.received_bytes, ack.done), (((index + 1) * CHUNK) as i64, false));
    }
    let err = stat(&mut files, id, "/data/chunked", false).await.unwrap_err();
    assert_eq!(error_reason(&err).as_deref(), Some("PATH_NOT_FOUND"), "nothing shows before the last chunk");
    let done = import_chunk(&mut workspaces, &request, last_index * CHUNK, chunks[last_index], true).await.unwrap();
    assert_eq!(
        (done.received_bytes, done.done, done.sha256.as_str(), done.entry_count),
        (archive.len() as i64, true, sha256_hex(&archive).as_str(), expected.len() as u64)
    );
    let retried = import_chunk(&mut workspaces, &request, last_index * CHUNK, chunks[last_index], true).await.unwrap();
    assert_eq!(retried, done, "a retried last chunk gets the same answer");
    let late = import_chunk(&mut workspaces, &request, 0, chunks[0], false).await.unwrap();
    assert_eq!(late, done, "any chunk of a finished upload gets its answer");
    assert_eq!(workspace_tree(&mut files, id, "/data/chunked").await, expected);
    assert_eq!(imported_events(&server.state_dir, id).len(), 1, "one import, one event");

    // A checksum mismatch discards the upload: its retry must start over.
    let wrong = ImportDataChunkRequest {
        upload_id: "wrong-sum".to_owned(),
        path: "/data/wrong".to_owned(),
        sha256: "f".repeat(64),
        ..request.clone()
    };
    import_chunk(&mut workspaces, &wrong, 0, chunks[0], false).await.unwrap();
    let rest = &archive[CHUNK..];
    let err = import_chunk(&mut workspaces, &wrong, CHUNK, &rest[..rest.len().min(3 << 20)], true).await.unwrap_err();
    assert_eq!((err.code(), error_reason(&err).as_deref()), (Code::InvalidArgument, Some("CHECKSUM_MISMATCH")));
    let err = import_chunk(&mut workspaces, &wrong, CHUNK, &rest[..rest.len().min(3 << 20)], true).await.unwrap_err();
    assert_eq!((err.code(), error_reason(&err).as_deref()), (Code::NotFound, Some("UPLOAD_NOT_FOUND")));
    assert!(!names(&mut files, id, "/data").await.contains(&"wrong".to_owned()));

    // WriteFileChunk and ImportDataChunk uploads are apart, even under the same id.
    let shared_id = "same-id".to_owned();
    let (small, small_tree) = archive_of(&server, "small", &[("one.txt", b"one")]);
    let write_chunk = WriteFileChunkRequest {
        workspace_id: id.to_owned(),
        upload_id: shared_id.clone(),
        offset: 0,
        data: b"written".to_vec().into(),
        last: false,
        path: "/data/written.txt".to_owned(),
        ..Default::default()
    };
    files.write_file_chunk(write_chunk.clone()).await.unwrap();
    let small_request = ImportDataChunkRequest {
        upload_id: shared_id,
        path: "/data/small".to_owned(),
        sha256: String::new(),
        ..request.clone()
    };
    let imported = import_chunk(&mut workspaces, &small_request, 0, &small, true).await.unwrap();
    assert!(imported.done);
    files
        .write_file_chunk(WriteFileChunkRequest { offset: 7, data: b" too".to_vec().into(), last: true, ..write_chunk })
        .await
        .unwrap();
    assert_eq!(berth_e2e::files::read(&mut files, id, "/data/written.txt").await.unwrap(), b"written too");
    assert_eq!(workspace_tree(&mut files, id, "/data/small").await, small_tree);

    // Requests that cannot be served are refused before anything is staged.
    let oversized = import_chunk(
        &mut workspaces,
        &ImportDataChunkRequest { upload_id: "big".to_owned(), ..request.clone() },
        0,
        &vec![0; (3 << 20) + 1],
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (oversized.code(), error_reason(&oversized).as_deref()),
        (Code::InvalidArgument, Some("INVALID_ARGUMENT"))
    );
    let no_header = workspaces
        .import_data(tokio_stream::iter([ImportDataRequest {
            event: Some(import_data_request::Event::Chunk(small.clone().into())),
        }]))
        .await
        .unwrap_err();
    assert_eq!(
        (no_header.code(), error_reason(&no_header).as_deref()),
        (Code::InvalidArgument, Some("INVALID_ARGUMENT"))
    );
    for (path, sha256, workspace, code, reason) in [
        ("data/relative", "", id, Code::InvalidArgument, "INVALID_PATH"),
        ("/", "", id, Code::InvalidArgument, "INVALID_PATH"),
        ("/data/x", "not-a-sha", id, Code::InvalidArgument, "INVALID_ARGUMENT"),
        ("/data/x", "", "no-such-workspace", Code::NotFound, "WORKSPACE_NOT_FOUND"),
    ] {
        let mut header = header(workspace, path, ArchiveFormat::TarGzip, false);
        header.sha256 = sha256.to_owned();
        let err = import(&mut workspaces, header, &small).await.unwrap_err();
        assert_eq!((err.code(), error_reason(&err).as_deref()), (code, Some(reason)), "{path} {sha256} {workspace}");
    }
}
