//! ExportData end to end: what a user gets is a valid tar+gzip or tar+zstd stream that the
//! system tools decode, whose trailer matches the bytes received, with symlinks kept as links,
//! hard links, modes and content intact; a running workspace keeps running meanwhile, and a
//! stopped one exports the same tree.

use std::path::Path;
use std::process::Command;

use berth_api::v1::export_data_response::Event;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{ArchiveFormat, ExportDataRequest};
use berth_e2e::files::{create_workspace, stop_workspace};
use berth_e2e::{BerthServer, Testbed, error_reason};
use sha2::Digest as _;
use tokio_stream::StreamExt as _;
use tonic::Code;

/// The archive bytes and the trailer's (size, sha256, entries).
async fn export(
    server: &BerthServer,
    id: &str,
    path: &str,
    format: ArchiveFormat,
) -> Result<(Vec<u8>, (i64, String, u64)), tonic::Status> {
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);
    let request = ExportDataRequest { workspace_id: id.into(), format: format.into(), path: path.into() };
    let mut stream = workspaces.export_data(request).await?.into_inner();
    let mut archive = Vec::new();
    let mut trailer = None;
    while let Some(message) = stream.next().await {
        match message?.event {
            Some(Event::Chunk(chunk)) => {
                assert!(trailer.is_none(), "a chunk after the trailer");
                assert!(!chunk.is_empty() && chunk.len() <= 1 << 20, "a chunk of {} bytes", chunk.len());
                archive.extend_from_slice(&chunk);
            }
            Some(Event::Trailer(t)) => trailer = Some((t.size_bytes, t.sha256, t.entry_count)),
            None => panic!("an empty message"),
        }
    }
    Ok((archive, trailer.expect("the export ended without a trailer")))
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run a system tool");
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn exports_decode_with_the_system_tools_and_keep_links_and_modes() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "exp", &testbed.image("BUSYBOX")).await;
    let ns = server.namespace.clone();
    let setup = "mkdir -p /data/sub/deeper && echo hello > /data/sub/hello.txt && \
                 head -c 3000000 /dev/urandom > /data/big.bin && chmod 750 /data/big.bin && \
                 ln -s /etc/passwd /data/abs-link && ln -s sub/hello.txt /data/rel-link && \
                 ln /data/sub/hello.txt /data/hard && mkfifo /data/fifo && \
                 sha256sum /data/big.bin | cut -d' ' -f1";
    let big_sha = testbed.exec(&ns, "exp", &["sh", "-c", setup]).trim().to_owned();
    let dir = server.state_dir.join("export-check");
    std::fs::create_dir_all(&dir).unwrap();

    for (format, name, decompress) in
        [(ArchiveFormat::TarGzip, "data.tar.gz", "gzip"), (ArchiveFormat::TarZstd, "data.tar.zst", "zstd")]
    {
        let (archive, (size, sha256, entries)) = export(&server, "exp", "", format).await.unwrap();
        assert_eq!(size as usize, archive.len(), "{name}: the trailer's size");
        assert_eq!(sha256, hex::encode(sha2::Sha256::digest(&archive)), "{name}: the trailer's sha256");
        // /data itself is not an entry: sub, sub/deeper, sub/hello.txt, big.bin, abs-link,
        // rel-link, hard (the FIFO is left out).
        assert_eq!(entries, 7, "{name}: entries");
        let file = dir.join(name);
        std::fs::write(&file, &archive).unwrap();
        run(Command::new(decompress).arg("-t").arg(&file));
        let listing =
            run(Command::new("tar").arg("-tvf").arg(&file).arg(format!("--use-compress-program={decompress}")));
        assert!(listing.contains("abs-link -> /etc/passwd"), "{name}: {listing}");
        assert!(listing.contains("rel-link -> sub/hello.txt"), "{name}: {listing}");
        assert!(listing.contains("link to"), "{name}: the hard link is a link: {listing}");
        assert!(!listing.contains("fifo"), "{name}: {listing}");
        let out = dir.join(format!("{name}.d"));
        std::fs::create_dir_all(&out).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&file)
            .arg(format!("--use-compress-program={decompress}"))
            .arg("-C")
            .arg(&out));
        let big = std::fs::read(out.join("big.bin")).unwrap();
        assert_eq!(hex::encode(sha2::Sha256::digest(&big)), big_sha, "{name}: big.bin");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(out.join("big.bin")).unwrap().permissions().mode() & 0o7777, 0o750);
        assert_eq!(std::fs::read_link(out.join("abs-link")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(std::fs::read_to_string(out.join("hard")).unwrap(), "hello\n");
    }
    // No downtime: the workspace ran throughout.
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);
    let request = berth_api::v1::GetWorkspaceRequest { workspace_id: "exp".into() };
    let state = workspaces.get_workspace(request).await.unwrap().into_inner().workspace.unwrap().state();
    assert_eq!(state, berth_api::v1::WorkspaceState::Running);

    // A subdirectory, and the same tree from a stopped workspace.
    let (_, (_, _, sub_entries)) = export(&server, "exp", "/data/sub", ArchiveFormat::TarGzip).await.unwrap();
    assert_eq!(sub_entries, 2, "deeper and hello.txt");
    let (running, _) = export(&server, "exp", "/data/sub", ArchiveFormat::TarZstd).await.unwrap();
    stop_workspace(&server, "exp").await;
    let (stopped, (_, sha, _)) = export(&server, "exp", "/data/sub", ArchiveFormat::TarZstd).await.unwrap();
    assert_eq!(sha, hex::encode(sha2::Sha256::digest(&stopped)));
    let names = |archive: &[u8], label: &str| {
        let file = dir.join(label);
        std::fs::write(&file, archive).unwrap();
        run(Command::new("tar").arg("-tf").arg(&file).arg("--use-compress-program=zstd"))
    };
    assert_eq!(names(&running, "running.tar.zst"), names(&stopped, "stopped.tar.zst"));

    // Errors: a file, a missing path, a relative path.
    let file = export(&server, "exp", "/data/big.bin", ArchiveFormat::TarGzip).await.unwrap_err();
    assert_eq!((file.code(), error_reason(&file).as_deref()), (Code::FailedPrecondition, Some("NOT_A_DIRECTORY")));
    let missing = export(&server, "exp", "/data/nope", ArchiveFormat::TarGzip).await.unwrap_err();
    assert_eq!((missing.code(), error_reason(&missing).as_deref()), (Code::NotFound, Some("PATH_NOT_FOUND")));
    let relative = export(&server, "exp", "data", ArchiveFormat::TarGzip).await.unwrap_err();
    assert_eq!((relative.code(), error_reason(&relative).as_deref()), (Code::InvalidArgument, Some("INVALID_PATH")));
}
