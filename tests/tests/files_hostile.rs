//! FilesystemService against a hostile workspace: symlinks to host paths, `..` chains, /proc
//! magic links, loops, a symlink swapped in during a long ListDir, writes and moves through
//! symlinks, special files and malformed paths. Every case asserts the exact code and reason
//! and that nothing outside the workspace was read, created or changed: a sentinel directory
//! on the host, whose absolute path the workspace's symlinks name, is compared before and after.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_api::v1::{
    FileType, ListDirRequest, MakeDirRequest, MoveRequest, ReadFileRequest, RemoveRequest, WatchDirRequest,
};
use berth_e2e::files::{Files, create_workspace, header, read, stat, stop_workspace, write, write_with};
use berth_e2e::{BerthServer, Testbed, error_reason};
use tonic::Code;

const SECRET: &str = "host secret: never readable through berth\n";

/// A host directory with one file, and a snapshot of everything about it.
struct Sentinel {
    dir: PathBuf,
}

impl Sentinel {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("berth-sentinel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        std::fs::write(dir.join("secret2"), SECRET).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        Self { dir }
    }

    fn secret(&self) -> String {
        self.dir.join("secret").display().to_string()
    }

    /// Names, sizes, contents and mtimes of the directory's entries.
    fn snapshot(&self) -> Vec<(String, String, std::time::SystemTime)> {
        let mut entries: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let meta = std::fs::symlink_metadata(entry.path()).unwrap();
                let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
                (entry.file_name().to_string_lossy().into_owned(), content, meta.modified().unwrap())
            })
            .collect();
        entries.sort();
        entries
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn expect(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, reason: &str, case: &str) {
    match result {
        Ok(value) => panic!("{case}: expected {code:?}/{reason}, got {value:?}"),
        Err(status) => {
            assert_eq!(
                (status.code(), error_reason(&status).as_deref()),
                (code, Some(reason)),
                "{case}: {}",
                status.message()
            );
            assert!(!status.message().contains(SECRET.trim()), "{case}: the message shows the host secret");
        }
    }
}

fn list(id: &str, path: &str, depth: u32, page_size: i32, token: &str) -> ListDirRequest {
    ListDirRequest { workspace_id: id.into(), path: path.into(), depth, page_size, page_token: token.into() }
}

#[tokio::test]
async fn hostile_paths_never_reach_the_host() {
    let testbed = Testbed::from_env();
    let sentinel = Sentinel::new();
    let before = sentinel.snapshot();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "hostile", &testbed.image("BUSYBOX")).await;
    let ns = server.namespace.clone();
    let secret = sentinel.secret();
    let setup = format!(
        "mkdir -p /data/d /data/full && echo inside > /data/f && echo x > /data/full/x && \
         ln -s {secret} /data/evil && ln -s {secret} /data/evil2 && ln -s {dir} /data/evildir && ln -s ../../.. /data/up && \
         ln -s loop2 /data/loop1 && ln -s loop1 /data/loop2 && ln -s /proc/1/root /data/magic && \
         mkfifo /data/fifo && echo ok",
        dir = sentinel.dir.display()
    );
    assert_eq!(testbed.exec(&ns, "hostile", &["sh", "-c", &setup]), "ok\n");
    let mut files = Files::new(server.channel().await);
    let id = "hostile";
    let mut cases = 0;
    macro_rules! case {
        ($name:expr, $call:expr, $code:expr, $reason:expr) => {{
            expect($call, $code, $reason, $name);
            cases += 1;
        }};
    }

    // Reads through symlinks and `..` resolve inside the workspace, where the host path does
    // not exist.
    case!(
        "read a symlink to the host file",
        read(&mut files, id, "/data/evil").await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    case!(
        "stat-follow a symlink to the host file",
        stat(&mut files, id, "/data/evil", true).await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    let link = stat(&mut files, id, "/data/evil", false).await.unwrap();
    assert_eq!((link.r#type(), link.symlink_target.as_str()), (FileType::Symlink, secret.as_str()));
    case!(
        "read through a ../../.. symlink",
        read(&mut files, id, &format!("/data/up/../../..{secret}")).await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    case!(
        "read ../ above the root",
        read(&mut files, id, &format!("/../../../..{secret}")).await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    case!(
        "read through up/",
        read(&mut files, id, &format!("/data/up{secret}")).await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    case!(
        "list a symlink to the host dir",
        files.list_dir(list(id, "/data/evildir", 1, 10, "")).await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    // The /proc magic links of the workspace's own processes are refused outright. (In the
    // workspace's procfs, `self` names berth's own pid, which that PID namespace does not hold.)
    case!(
        "read /proc/self/root/...",
        read(&mut files, id, &format!("/proc/self/root{secret}")).await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    case!(
        "read /proc/1/root/etc/passwd",
        read(&mut files, id, "/proc/1/root/etc/passwd").await,
        Code::InvalidArgument,
        "INVALID_PATH"
    );
    case!(
        "read through a symlink to /proc/1/root",
        read(&mut files, id, "/data/magic/etc/passwd").await,
        Code::InvalidArgument,
        "INVALID_PATH"
    );
    case!("read a symlink loop", read(&mut files, id, "/data/loop1").await, Code::InvalidArgument, "INVALID_PATH");
    case!(
        "write a symlink loop",
        write(&mut files, id, "/data/loop1", b"x").await,
        Code::InvalidArgument,
        "INVALID_PATH"
    );

    // Writes through a symlink to a host path land inside the workspace (or nowhere).
    case!(
        "write through a symlink to the host file",
        write(&mut files, id, "/data/evil", b"pwned").await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    case!(
        "mkdir through a symlink to the host dir",
        files
            .make_dir(MakeDirRequest {
                workspace_id: id.into(),
                path: "/data/evildir/sub".into(),
                parents: false,
                mode: 0
            })
            .await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );

    let mut parents = header(id, "/data/evil");
    parents.create_parents = true;
    let written = write_with(&mut files, parents, b"pwned".to_vec(), 16).await.unwrap();
    assert_eq!(written.size_bytes, 5);
    assert_eq!(testbed.exec(&ns, "hostile", &["cat", &secret]), "pwned", "the write landed inside the workspace");
    assert_eq!(testbed.exec(&ns, "hostile", &["readlink", "/data/evil"]), format!("{secret}\n"), "the link stays");
    // The write above made the sentinel's directory inside the workspace: a write below a
    // `../../..` symlink into it lands there too.
    let through_up = format!("/data/up{}/new", sentinel.dir.display());
    write(&mut files, id, &through_up, b"x").await.unwrap();
    let inside = format!("{}/new", sentinel.dir.display());
    assert_eq!(testbed.exec(&ns, "hostile", &["cat", &inside]), "x", "the write through up/ landed inside");
    cases += 1;
    // Moves and removes act on symlinks themselves, never on their targets.
    let moved = files
        .r#move(MoveRequest {
            workspace_id: id.into(),
            source_path: "/data/f".into(),
            destination_path: "/data/evildir".into(),
            overwrite: true,
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(moved.r#type(), FileType::File, "moving onto a symlink replaces the link");
    case!(
        "move onto an existing entry without overwrite",
        files
            .r#move(MoveRequest {
                workspace_id: id.into(),
                source_path: "/data/evil".into(),
                destination_path: "/data/evildir".into(),
                overwrite: false
            })
            .await,
        Code::AlreadyExists,
        "PATH_ALREADY_EXISTS"
    );
    files.remove(RemoveRequest { workspace_id: id.into(), path: "/data/evil".into(), recursive: false }).await.unwrap();
    case!(
        "move a directory into itself",
        files
            .r#move(MoveRequest {
                workspace_id: id.into(),
                source_path: "/data/d".into(),
                destination_path: "/data/d/inner".into(),
                overwrite: false
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT"
    );
    case!(
        "move a directory into itself through a symlink",
        files
            .r#move(MoveRequest {
                workspace_id: id.into(),
                source_path: "/data".into(),
                destination_path: "/data/up/data/inner".into(),
                overwrite: false
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT"
    );
    case!(
        "remove /",
        files.remove(RemoveRequest { workspace_id: id.into(), path: "/".into(), recursive: true }).await,
        Code::InvalidArgument,
        "INVALID_PATH"
    );
    case!(
        "remove /../..",
        files.remove(RemoveRequest { workspace_id: id.into(), path: "/data/../..".into(), recursive: true }).await,
        Code::InvalidArgument,
        "INVALID_PATH"
    );
    case!(
        "remove a non-empty directory",
        files.remove(RemoveRequest { workspace_id: id.into(), path: "/data/full".into(), recursive: false }).await,
        Code::FailedPrecondition,
        "DIRECTORY_NOT_EMPTY"
    );

    // Malformed paths.
    case!("a NUL byte", read(&mut files, id, "/data/f\0/etc/passwd").await, Code::InvalidArgument, "INVALID_PATH");
    case!("a relative path", read(&mut files, id, "data/f").await, Code::InvalidArgument, "INVALID_PATH");
    case!("an empty path", stat(&mut files, id, "", false).await, Code::InvalidArgument, "INVALID_PATH");
    case!(
        "a path over 4096 bytes",
        stat(&mut files, id, &"/a".repeat(2100), false).await,
        Code::InvalidArgument,
        "INVALID_PATH"
    );
    case!(
        "a name over 255 bytes",
        write(&mut files, id, &format!("/data/{}", "n".repeat(256)), b"x").await,
        Code::InvalidArgument,
        "INVALID_PATH"
    );
    case!(
        "a negative offset",
        files
            .read_file(ReadFileRequest { workspace_id: id.into(), path: "/data/full/x".into(), offset: -1, length: 0 })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT"
    );

    // Special files are never opened: a FIFO would block forever, a device reach the host.
    let started = Instant::now();
    case!("read a FIFO", read(&mut files, id, "/data/fifo").await, Code::FailedPrecondition, "NOT_A_REGULAR_FILE");
    case!(
        "write a FIFO",
        write(&mut files, id, "/data/fifo", b"x").await,
        Code::FailedPrecondition,
        "NOT_A_REGULAR_FILE"
    );
    case!("read /dev/zero", read(&mut files, id, "/dev/zero").await, Code::FailedPrecondition, "NOT_A_REGULAR_FILE");
    case!(
        "read the workspace's /dev/tty",
        read(&mut files, id, "/dev/tty").await,
        Code::FailedPrecondition,
        "NOT_A_REGULAR_FILE"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "special files made a call wait");
    case!("read a directory", read(&mut files, id, "/data").await, Code::FailedPrecondition, "IS_A_DIRECTORY");
    case!(
        "write onto a directory",
        write(&mut files, id, "/data/full", b"x").await,
        Code::FailedPrecondition,
        "IS_A_DIRECTORY"
    );
    case!(
        "list a file",
        files.list_dir(list(id, "/data/full/x", 1, 10, "")).await,
        Code::FailedPrecondition,
        "NOT_A_DIRECTORY"
    );
    case!(
        "a file as a directory",
        stat(&mut files, id, "/data/full/x/y", false).await,
        Code::FailedPrecondition,
        "NOT_A_DIRECTORY"
    );
    case!(
        "watch a file",
        files
            .watch_dir(WatchDirRequest { workspace_id: id.into(), path: "/data/full/x".into(), recursive: false })
            .await,
        Code::FailedPrecondition,
        "NOT_A_DIRECTORY"
    );
    case!("an unknown workspace", read(&mut files, "nobody", "/data/f").await, Code::NotFound, "WORKSPACE_NOT_FOUND");

    // The same resolution on a stopped workspace, through its mounted snapshot.
    stop_workspace(&server, id).await;
    // The link's target path exists inside the workspace now (written above): reading
    // through it gives the workspace's file, never the host's.
    assert_eq!(read(&mut files, id, "/data/evil2").await.unwrap(), b"pwned", "stopped: read through a symlink");
    cases += 1;
    case!(
        "stopped: read through up/",
        read(&mut files, id, &format!("/data/up{}/secret2", sentinel.dir.display())).await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    case!(
        "stopped: write through up/",
        write(&mut files, id, &format!("/data/up{}/sub/x", sentinel.dir.display()), b"x").await,
        Code::NotFound,
        "PATH_NOT_FOUND"
    );
    case!(
        "stopped: read a FIFO",
        read(&mut files, id, "/data/fifo").await,
        Code::FailedPrecondition,
        "NOT_A_REGULAR_FILE"
    );
    case!(
        "stopped: watch",
        files.watch_dir(WatchDirRequest { workspace_id: id.into(), path: "/data".into(), recursive: false }).await,
        Code::FailedPrecondition,
        "WORKSPACE_NOT_RUNNING"
    );
    assert!(cases >= 25, "only {cases} hostile cases");
    assert_eq!(sentinel.snapshot(), before, "the host sentinel changed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&server.state_dir.join("mnt").display().to_string()), "a mount outlived its operation");
}

/// A symlink swapped in for a directory again and again while ListDir pages through the tree
/// never leads the listing out of it: every listed path is one the tree itself holds.
#[tokio::test]
async fn a_symlink_swapped_in_during_a_long_list_dir_is_never_followed() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "swap", &testbed.image("BUSYBOX")).await;
    let ns = server.namespace.clone();
    let setup = "mkdir -p /data/t && cd /data/t && for d in $(seq 10 29); do mkdir -p d$d/inner; \
                 for f in $(seq 100 139); do : > d$d/inner/f$f; done; done; echo ok";
    assert_eq!(testbed.exec(&ns, "swap", &["sh", "-c", setup]), "ok\n");
    let swapper = {
        let (testbed, ns) = (Testbed::from_env(), ns.clone());
        tokio::task::spawn_blocking(move || {
            let script = "cd /data/t && for i in $(seq 400); do mv d15 real15 && ln -s / d15 && rm d15 && mv real15 d15; done; echo done";
            testbed.exec(&ns, "swap", &["sh", "-c", script])
        })
    };
    let mut files = Files::new(server.channel().await);
    let mut listed = 0;
    while !swapper.is_finished() {
        let mut token = String::new();
        loop {
            let page = match files.list_dir(list("swap", "/data/t", 3, 50, &token)).await {
                Ok(page) => page.into_inner(),
                Err(status) => panic!("ListDir failed while the tree changed: {status:?}"),
            };
            for entry in &page.entries {
                let below = entry.path.strip_prefix("/data/t/").expect("outside the listed tree");
                let parts: Vec<&str> = below.split('/').collect();
                let known = parts[0].starts_with('d') || parts[0].starts_with("real");
                let shape = match parts.len() {
                    1 => true,
                    2 => parts[1] == "inner",
                    3 => parts[1] == "inner" && parts[2].starts_with('f'),
                    _ => false,
                };
                assert!(known && shape, "listed {} which the tree does not hold", entry.path);
            }
            listed += page.entries.len();
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    }
    assert_eq!(swapper.await.unwrap(), "done\n");
    assert!(listed > 0);
}
