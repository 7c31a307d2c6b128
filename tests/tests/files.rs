//! FilesystemService end to end, on the real containerd: every RPC on a running and on a stopped
//! workspace, ownership, ListDir depth and paging, byte ranges, a 200 MiB round trip with flat
//! server memory, atomic replace under a reader inside the workspace, revisions that follow
//! writes made inside, unary chunked uploads, and WatchDir.

use std::time::{Duration, Instant};

use berth_api::v1::watch_dir_response::Event as WatchEvent;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    FileType, FilesystemEventKind, GetWorkspaceRequest, ListDirRequest, MakeDirRequest, MoveRequest, RemoveRequest,
    WatchDirRequest, WriteFileChunkRequest,
};
use berth_e2e::files::{
    Files, create_workspace, header, read, read_range, start_workspace, stat, stop_workspace, write, write_with,
};
use berth_e2e::{BerthServer, Testbed, error_reason};
use sha2::Digest as _;
use tokio_stream::StreamExt as _;
use tonic::Code;

fn list_request(id: &str, path: &str, depth: u32, page_size: i32, page_token: &str) -> ListDirRequest {
    ListDirRequest {
        workspace_id: id.to_owned(),
        path: path.to_owned(),
        depth,
        page_size,
        page_token: page_token.to_owned(),
    }
}

/// Every page of a listing, with the number of pages.
async fn list_all(files: &mut Files, id: &str, path: &str, depth: u32, page_size: i32) -> (Vec<String>, usize) {
    let mut paths = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = files.list_dir(list_request(id, path, depth, page_size, &token)).await.unwrap().into_inner();
        pages += 1;
        assert!(page.entries.len() <= page_size as usize);
        paths.extend(page.entries.into_iter().map(|entry| entry.path));
        if page.next_page_token.is_empty() {
            return (paths, pages);
        }
        token = page.next_page_token;
    }
}

/// The same operations on a running and on a stopped workspace of the image whose user is
/// `bot` (uid 1000): what the API creates belongs to the bot.
#[tokio::test]
async fn every_rpc_on_a_running_and_a_stopped_workspace() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "files", &testbed.image("USER_BOT")).await;
    let mut files = Files::new(server.channel().await);

    for (round, running) in [("run", true), ("stop", false)] {
        if !running {
            stop_workspace(&server, "files").await;
        }
        let dir = format!("/data/{round}/nested");
        let made = files
            .make_dir(MakeDirRequest { workspace_id: "files".into(), path: dir.clone(), parents: true, mode: 0 })
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap();
        assert_eq!((made.r#type(), made.mode, made.uid, made.gid), (FileType::Directory, 0o755, 1000, 1000));
        let again = files
            .make_dir(MakeDirRequest { workspace_id: "files".into(), path: dir.clone(), parents: false, mode: 0 })
            .await
            .unwrap_err();
        assert_eq!((again.code(), error_reason(&again).as_deref()), (Code::AlreadyExists, Some("PATH_ALREADY_EXISTS")));

        let file = format!("{dir}/notes.txt");
        let written = write(&mut files, "files", &file, b"hello from the API\n").await.unwrap();
        assert_eq!((written.size_bytes, written.mode, written.uid, written.gid), (19, 0o644, 1000, 1000));
        assert!(!written.revision.is_empty());
        let described = stat(&mut files, "files", &file, false).await.unwrap();
        assert_eq!(described.revision, written.revision, "{round}: the revision of an unchanged file is stable");
        assert_eq!((described.name.as_str(), described.path.as_str()), ("notes.txt", file.as_str()));

        let (entry, range) = read_range(&mut files, "files", &file, 6, 4).await.unwrap();
        assert_eq!((entry.size_bytes, range.as_slice()), (19, b"from".as_slice()));
        let (_, past_end) = read_range(&mut files, "files", &file, 100, 0).await.unwrap();
        assert!(past_end.is_empty());

        let mut mode = header("files", &format!("{dir}/run.sh"));
        mode.mode = 0o750;
        let script = write_with(&mut files, mode, b"#!/bin/sh\necho ran\n".to_vec(), 4).await.unwrap();
        assert_eq!(script.mode, 0o750);

        let moved = files
            .r#move(MoveRequest {
                workspace_id: "files".into(),
                source_path: format!("{dir}/run.sh"),
                destination_path: format!("/data/{round}/run.sh"),
                overwrite: false,
            })
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap();
        assert_eq!(moved.path, format!("/data/{round}/run.sh"));
        let (listed, _) = list_all(&mut files, "files", &format!("/data/{round}"), 2, 100).await;
        assert_eq!(
            listed,
            [format!("/data/{round}/nested"), format!("{dir}/notes.txt"), format!("/data/{round}/run.sh")]
        );
        files
            .remove(RemoveRequest {
                workspace_id: "files".into(),
                path: format!("/data/{round}/run.sh"),
                recursive: false,
            })
            .await
            .unwrap();
        let gone = stat(&mut files, "files", &format!("/data/{round}/run.sh"), false).await.unwrap_err();
        assert_eq!((gone.code(), error_reason(&gone).as_deref()), (Code::NotFound, Some("PATH_NOT_FOUND")));
    }
    // Stopped-workspace changes are in the workspace once it runs; the bot may edit them.
    start_workspace(&server, "files").await;
    let ns = &server.namespace;
    assert_eq!(testbed.exec(ns, "files", &["cat", "/data/stop/nested/notes.txt"]), "hello from the API\n");
    let owner =
        testbed.exec(ns, "files", &["stat", "-c", "%u:%g %a", "/data/stop/nested", "/data/run/nested/notes.txt"]);
    assert_eq!(owner, "1000:1000 755\n1000:1000 644\n");
    let edited =
        testbed.exec_output(ns, "files", Some("1000:1000"), &["sh", "-c", "echo bot >> /data/run/nested/notes.txt"]);
    assert!(edited.success, "the bot cannot edit what the API wrote: {}", edited.stderr);
    // The data paths of the workspace: /data inside, its upper directory on the host.
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);
    let workspace =
        workspaces.get_workspace(GetWorkspaceRequest { workspace_id: "files".into() }).await.unwrap().into_inner();
    let workspace = workspace.workspace.unwrap();
    assert_eq!(workspace.data_path, "/data");
    let on_host = std::path::Path::new(&workspace.host_data_path).join("stop/nested/notes.txt");
    assert_eq!(std::fs::read_to_string(&on_host).unwrap(), "hello from the API\n", "{}", on_host.display());
}

/// ListDir over 2,500 entries: depth limits, depth-first order with sorted siblings, and pages
/// that together give exactly the single-page listing.
#[tokio::test]
async fn list_dir_depth_and_paging_over_2500_entries() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "tree", &testbed.image("BUSYBOX")).await;
    let script = "mkdir -p /data/t && cd /data/t && for d in $(seq 10 59); do mkdir d$d; \
                  for f in $(seq 100 148); do : > d$d/f$f; done; done; echo ok";
    assert_eq!(testbed.exec(&server.namespace, "tree", &["sh", "-c", script]), "ok\n");
    let mut files = Files::new(server.channel().await);

    let (top, _) = list_all(&mut files, "tree", "/data/t", 1, 1000).await;
    assert_eq!(top.len(), 50);
    let (whole, pages) = list_all(&mut files, "tree", "/data/t", 2, 10_000).await;
    assert_eq!((whole.len(), pages), (50 + 50 * 49, 1));
    assert_eq!(&whole[..3], ["/data/t/d10", "/data/t/d10/f100", "/data/t/d10/f101"], "depth first, sorted");
    assert_eq!(whole[50], "/data/t/d11", "a directory comes right after its parent's last entry");
    for page_size in [1, 7, 100, 999] {
        let (paged, pages) = list_all(&mut files, "tree", "/data/t", 2, page_size).await;
        assert_eq!(paged, whole, "page size {page_size}");
        assert_eq!(pages, whole.len().div_ceil(page_size as usize), "page size {page_size}");
    }
    let (default_page, _) = {
        let page = files.list_dir(list_request("tree", "/data/t", 2, 0, "")).await.unwrap().into_inner();
        (page.entries.len(), page.next_page_token)
    };
    assert_eq!(default_page, 1000, "page_size 0 means 1000");
    // A token is bound to its listing.
    let page = files.list_dir(list_request("tree", "/data/t", 2, 10, "")).await.unwrap().into_inner();
    let other = files.list_dir(list_request("tree", "/data", 2, 10, &page.next_page_token)).await.unwrap_err();
    assert_eq!((other.code(), error_reason(&other).as_deref()), (Code::InvalidArgument, Some("INVALID_ARGUMENT")));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A 200 MiB file written through WriteFile and read back through ReadFile is byte-identical
/// (sha256 computed inside the workspace too), and the server's memory stays flat.
#[tokio::test]
async fn a_200_mib_file_round_trip_with_flat_server_memory() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "big", &testbed.image("BUSYBOX")).await;
    let mut files = Files::new(server.channel().await);
    let size = 200 << 20;
    let mut content = vec![0u8; size];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for byte in &mut content {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let expected = hex::encode(sha2::Sha256::digest(&content));

    let pid = server.pid();
    let baseline = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let written = write(&mut files, "big", "/data/big.bin", &content).await.unwrap();
    assert_eq!(written.size_bytes, size as i64);
    let inside = testbed.exec(&server.namespace, "big", &["sha256sum", "/data/big.bin"]);
    assert_eq!(inside.split_whitespace().next(), Some(expected.as_str()), "sha256 inside the workspace");
    let back = read(&mut files, "big", "/data/big.bin").await.unwrap();
    assert!(back == content, "the 200 MiB read back differ");
    sampler.abort();
    let growth_mib = (peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(baseline)) / 1024;
    assert!(growth_mib < 32, "server RSS grew by {growth_mib} MiB during a 200 MiB round trip");
}

/// A reader looping inside the workspace never sees a partial file while WriteFile replaces it
/// again and again; then a change made inside makes an old revision fail with
/// REVISION_MISMATCH, and the file keeps that change.
#[tokio::test]
async fn atomic_replace_and_revisions_follow_writes_inside() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "atomic", &testbed.image("BUSYBOX")).await;
    let mut files = Files::new(server.channel().await);
    let size = 1 << 20;
    write(&mut files, "atomic", "/data/f", &vec![b'a'; size]).await.unwrap();

    // Each read counts the bytes that are not `a`: 0 (all a) or the whole size (all b) are the
    // only answers a reader of complete files can get.
    let reader = {
        let (testbed, ns) = (Testbed::from_env(), server.namespace.clone());
        tokio::task::spawn_blocking(move || {
            let script = "for i in $(seq 300); do tr -d a < /data/f | wc -c; done";
            testbed.exec(&ns, "atomic", &["sh", "-c", script])
        })
    };
    let started = Instant::now();
    let mut writes = 0;
    while !reader.is_finished() && started.elapsed() < Duration::from_secs(60) {
        let byte = if writes % 2 == 0 { b'b' } else { b'a' };
        write_with(&mut files, header("atomic", "/data/f"), vec![byte; size], 64 << 10).await.unwrap();
        writes += 1;
    }
    let counts = reader.await.unwrap();
    let complete = [0.to_string(), size.to_string()];
    let partial: Vec<&str> =
        counts.lines().map(str::trim).filter(|count| !complete.contains(&count.to_string())).collect();
    assert!(writes >= 5, "only {writes} writes happened while the reader ran");
    assert!(
        partial.is_empty(),
        "the reader saw partial files ({} of 300): {:?}",
        partial.len(),
        &partial[..partial.len().min(5)]
    );

    let before = stat(&mut files, "atomic", "/data/f", false).await.unwrap();
    // Safe to run twice (Testbed::exec retries an exec whose output ctr lost): one append only.
    let append = "[ \"$(tail -c 2 /data/f)\" = x ] || echo x >> /data/f";
    testbed.exec(&server.namespace, "atomic", &["sh", "-c", append]);
    let after = stat(&mut files, "atomic", "/data/f", false).await.unwrap();
    assert_ne!(before.revision, after.revision, "an append inside changes the revision");
    let mut stale = header("atomic", "/data/f");
    stale.expected_revision = before.revision.clone();
    let refused = write_with(&mut files, stale, b"lost update".to_vec(), 1024).await.unwrap_err();
    assert_eq!((refused.code(), error_reason(&refused).as_deref()), (Code::Aborted, Some("REVISION_MISMATCH")));
    let kept = read(&mut files, "atomic", "/data/f").await.unwrap();
    assert_eq!((kept.len(), kept.last()), (size + 2, Some(&b'\n')), "the change made inside is kept");
    let mut fresh = header("atomic", "/data/f");
    fresh.expected_revision = after.revision;
    write_with(&mut files, fresh, b"merged\n".to_vec(), 1024).await.unwrap();
    assert_eq!(testbed.exec(&server.namespace, "atomic", &["cat", "/data/f"]), "merged\n");
    let leftovers = testbed.exec(&server.namespace, "atomic", &["ls", "-A", "/data"]);
    assert_eq!(leftovers, "f\n", "no temporary files stay behind");
}

fn chunk(upload: &str, offset: i64, data: &[u8], last: bool) -> WriteFileChunkRequest {
    WriteFileChunkRequest {
        workspace_id: "upload".into(),
        upload_id: upload.into(),
        offset,
        data: data.to_vec().into(),
        last,
        path: "/data/up/file.bin".into(),
        create_parents: true,
        ..Default::default()
    }
}

/// WriteFileChunk: chunks in order, a retried chunk acknowledged without effect, a wrong offset
/// and an unknown upload refused, the last chunk writes the file (and a retry of it gets the
/// same answer); a failed last chunk leaves the file as it was.
#[tokio::test]
async fn unary_chunked_uploads() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "upload", &testbed.image("BUSYBOX")).await;
    let mut files = Files::new(server.channel().await);
    let content: Vec<u8> = (0..(7 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let parts: Vec<&[u8]> = content.chunks(3 << 20).collect();

    let first = files.write_file_chunk(chunk("u1", 0, parts[0], false)).await.unwrap().into_inner();
    assert_eq!((first.received_bytes, first.done), (3 << 20, false));
    let retried = files.write_file_chunk(chunk("u1", 0, parts[0], false)).await.unwrap().into_inner();
    assert_eq!(retried.received_bytes, 3 << 20, "a retried chunk changes nothing");
    let skipped = files.write_file_chunk(chunk("u1", 5, parts[1], false)).await.unwrap_err();
    assert_eq!(
        (skipped.code(), error_reason(&skipped).as_deref()),
        (Code::FailedPrecondition, Some("UPLOAD_OFFSET_MISMATCH"))
    );
    let unknown = files.write_file_chunk(chunk("nope", 10, b"x", false)).await.unwrap_err();
    assert_eq!((unknown.code(), error_reason(&unknown).as_deref()), (Code::NotFound, Some("UPLOAD_NOT_FOUND")));
    let oversized = files.write_file_chunk(chunk("u2", 0, &vec![0; (3 << 20) + 1], false)).await.unwrap_err();
    assert_eq!(oversized.code(), Code::InvalidArgument);
    let early = testbed.exec_output(&server.namespace, "upload", None, &["test", "-e", "/data/up/file.bin"]);
    assert!(!early.success, "nothing shows in the workspace before the last chunk");
    files.write_file_chunk(chunk("u1", 3 << 20, parts[1], false)).await.unwrap();
    let last = files.write_file_chunk(chunk("u1", 6 << 20, parts[2], true)).await.unwrap().into_inner();
    assert!(last.done);
    assert_eq!(last.entry.as_ref().unwrap().size_bytes, 7 << 20);
    let again = files.write_file_chunk(chunk("u1", 6 << 20, parts[2], true)).await.unwrap().into_inner();
    assert_eq!((again.done, again.entry), (true, last.entry.clone()), "a retried last chunk gets the same answer");
    assert!(read(&mut files, "upload", "/data/up/file.bin").await.unwrap() == content);

    // A stale revision fails on the last chunk; the file stays.
    let mut stale = chunk("u3", 0, b"new", true);
    stale.expected_revision = "0123".into();
    let refused = files.write_file_chunk(stale).await.unwrap_err();
    assert_eq!((refused.code(), error_reason(&refused).as_deref()), (Code::Aborted, Some("REVISION_MISMATCH")));
    assert!(read(&mut files, "upload", "/data/up/file.bin").await.unwrap() == content);
}

/// WatchDir (recursive) sees creates, writes, renames and removes made by processes inside,
/// and files in a subdirectory created after the watch began; it ends when the workspace
/// stops.
#[tokio::test]
async fn watch_dir_sees_changes_made_inside() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "watch", &testbed.image("BUSYBOX")).await;
    testbed.exec(&server.namespace, "watch", &["mkdir", "-p", "/data/w"]);
    let mut files = Files::new(server.channel().await);
    let request = WatchDirRequest { workspace_id: "watch".into(), path: "/data/w".into(), recursive: true };
    let mut stream = files.watch_dir(request).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(WatchEvent::Start(_))), "{first:?}");

    let script = "cd /data/w && echo one > a && echo two >> a && mv a b && rm b && mkdir sub && echo deep > sub/f";
    testbed.exec(&server.namespace, "watch", &["sh", "-c", script]);
    let wanted = [
        (FilesystemEventKind::Create, "/data/w/a"),
        (FilesystemEventKind::Write, "/data/w/a"),
        (FilesystemEventKind::Rename, "/data/w/a"),
        (FilesystemEventKind::Create, "/data/w/b"),
        (FilesystemEventKind::Remove, "/data/w/b"),
        (FilesystemEventKind::Create, "/data/w/sub"),
        (FilesystemEventKind::Create, "/data/w/sub/f"),
    ];
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wanted.iter().all(|want| seen.contains(&(want.0, want.1.to_owned()))) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, stream.next()).await.unwrap_or_else(|_| panic!("saw only {seen:?}"));
        if let Some(WatchEvent::Change(change)) = message.unwrap().unwrap().event {
            seen.push((change.kind(), change.path));
        }
    }
    let position = |want: (FilesystemEventKind, &str)| seen.iter().position(|got| got.0 == want.0 && got.1 == want.1);
    assert!(position(wanted[0]) < position(wanted[2]) && position(wanted[2]) < position(wanted[4]), "{seen:?}");

    stop_workspace(&server, "watch").await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch did not end when the workspace stopped");
    let status = end.expect("the stream ended without a status").unwrap_err();
    assert_eq!(
        (status.code(), error_reason(&status).as_deref()),
        (Code::FailedPrecondition, Some("WORKSPACE_NOT_RUNNING"))
    );
    let stopped = files
        .watch_dir(WatchDirRequest { workspace_id: "watch".into(), path: "/data".into(), recursive: false })
        .await
        .unwrap_err();
    assert_eq!(error_reason(&stopped).as_deref(), Some("WORKSPACE_NOT_RUNNING"));
}

/// A stop ends a read in flight on the running workspace (its stream fails with
/// WORKSPACE_NOT_RUNNING) instead of waiting for it; a start waits for a read of the stopped
/// workspace (its snapshot is mounted for the read) and no mount outlives it.
#[tokio::test]
async fn stop_and_start_are_serialized_with_file_operations() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "serial", &testbed.image("BUSYBOX")).await;
    testbed.exec(&server.namespace, "serial", &["sh", "-c", "head -c 67108864 /dev/zero > /data/big"]);
    let mut files = Files::new(server.channel().await);
    let request = berth_api::v1::ReadFileRequest {
        workspace_id: "serial".into(),
        path: "/data/big".into(),
        offset: 0,
        length: 0,
    };

    let mut running = files.read_file(request.clone()).await.unwrap().into_inner();
    running.next().await.unwrap().unwrap();
    let stopped_in = Instant::now();
    stop_workspace(&server, "serial").await;
    assert!(stopped_in.elapsed() < Duration::from_secs(15), "the stop waited for the client");
    let end = loop {
        match running.next().await {
            Some(Ok(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect("the read ended without a status").unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("WORKSPACE_NOT_RUNNING"), "{status:?}");

    let mut reading = files.read_file(request).await.unwrap().into_inner();
    reading.next().await.unwrap().unwrap();
    let mount_dir = server.state_dir.join("mnt").display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts.contains(&mount_dir), "the read holds no mount under {mount_dir}:\n{mounts}");
    let start = tokio::spawn({
        let channel = server.channel().await;
        async move {
            let mut workspaces = WorkspaceServiceClient::new(channel);
            let request = berth_api::v1::StartWorkspaceRequest { workspace_id: "serial".into() };
            workspaces.start_workspace(request).await.map(|_| Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!start.is_finished(), "the start did not wait for the read of the stopped workspace");
    let mut total = 0;
    while let Some(message) = reading.next().await {
        if let Some(berth_api::v1::read_file_response::Event::Chunk(chunk)) = message.unwrap().event {
            total += chunk.len();
        }
    }
    assert_eq!(total, 64 << 20, "the read of the stopped workspace completes");
    let read_done = Instant::now();
    let started = start.await.unwrap().unwrap();
    assert!(started >= read_done, "the start finished before the read");
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&mount_dir),
        "a mount outlived the read"
    );
    assert_eq!(testbed.exec(&server.namespace, "serial", &["sh", "-c", "wc -c < /data/big"]).trim(), "67108864");
}
