//! Helpers for ImportData tests: archives made with the host's `tar`, hand-made hostile ones,
//! both import RPCs, and trees compared as a user sees them (through FilesystemService).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    ArchiveFormat, FileType, ImportDataChunkRequest, ImportDataChunkResponse, ImportDataRequest, ImportDataResponse,
    ListDirRequest, import_data_request,
};
use sha2::Digest as _;
use tonic::transport::Channel;

use crate::files::{Files, read};

pub type Workspaces = WorkspaceServiceClient<Channel>;

/// The archive format's compressor on the host.
pub fn compressor(format: ArchiveFormat) -> &'static str {
    match format {
        ArchiveFormat::TarZstd => "zstd",
        _ => "gzip",
    }
}

/// `tar -C dir -c .` compressed in `format` by the host's tar (GNU tar: `-S` keeps holes).
pub fn host_tar(dir: &Path, format: ArchiveFormat, sparse: bool) -> Vec<u8> {
    let mut command = Command::new("tar");
    command.arg("-C").arg(dir).arg("-c").arg(format!("--use-compress-program={}", compressor(format)));
    if sparse {
        command.arg("-S");
    }
    let output = command.args(["-f", "-", "."]).stderr(Stdio::inherit()).output().expect("run tar");
    assert!(output.status.success(), "tar failed: {}", output.status);
    output.stdout
}

/// `data` compressed by the host's gzip or zstd.
pub fn compress(data: &[u8], format: ArchiveFormat) -> Vec<u8> {
    let mut child = Command::new(compressor(format))
        .args(["-c", "-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the compressor");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).expect("feed the compressor"));
    let output = child.wait_with_output().expect("compressor output");
    writer.join().expect("writer");
    assert!(output.status.success(), "the compressor failed");
    output.stdout
}

/// One tar entry written with raw fields: what `tar` itself refuses to write (`..`, absolute
/// names, links out), device nodes, or a size the data does not have.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: String,
    /// The ustar type flag: b'0' file, b'1' hard link, b'2' symlink, b'3' char device,
    /// b'5' directory, b'6' FIFO.
    pub kind: u8,
    pub link: String,
    pub data: Vec<u8>,
    /// The size the header claims; the data's length when `None`.
    pub claimed_size: Option<u64>,
}

impl RawEntry {
    pub fn new(name: &str, kind: u8) -> Self {
        Self { name: name.to_owned(), kind, link: String::new(), data: Vec::new(), claimed_size: None }
    }

    pub fn file(name: &str, data: &[u8]) -> Self {
        Self { data: data.to_vec(), ..Self::new(name, b'0') }
    }

    pub fn link(name: &str, kind: u8, target: &str) -> Self {
        Self { link: target.to_owned(), ..Self::new(name, kind) }
    }
}

/// A ustar archive of `entries`. An entry whose claimed size exceeds its data ends the archive
/// right after its data, as a truncated or bomb archive would.
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut tar = Vec::new();
    for entry in entries {
        let size = entry.claimed_size.unwrap_or(entry.data.len() as u64);
        tar.extend_from_slice(&raw_header(entry, size));
        tar.extend_from_slice(&entry.data);
        if size > entry.data.len() as u64 {
            return tar;
        }
        tar.resize(tar.len().next_multiple_of(512), 0);
    }
    tar.resize(tar.len() + 1024, 0);
    tar
}

fn raw_header(entry: &RawEntry, size: u64) -> [u8; 512] {
    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    }
    let mut header = [0u8; 512];
    assert!(entry.name.len() <= 100 && entry.link.len() <= 100, "raw names are at most 100 bytes");
    header[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    if size < 1 << 33 {
        octal(&mut header[124..136], size);
    } else {
        // GNU's base-256 form, for sizes of 8 GiB and more.
        header[124] = 0x80;
        header[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut header[136..148], 1_700_000_000);
    header[148..156].fill(b' ');
    header[156] = entry.kind;
    header[157..157 + entry.link.len()].copy_from_slice(entry.link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    if entry.kind == b'3' {
        octal(&mut header[329..337], 1);
        octal(&mut header[337..345], 3);
    }
    let sum: u32 = header.iter().map(|byte| u32::from(*byte)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    header
}

/// An ImportData header.
pub fn header(id: &str, path: &str, format: ArchiveFormat, replace: bool) -> import_data_request::Header {
    import_data_request::Header {
        workspace_id: id.to_owned(),
        format: format.into(),
        path: path.to_owned(),
        replace,
        sha256: String::new(),
    }
}

/// Imports `archive` with ImportData in 1 MiB chunks.
pub async fn import(
    workspaces: &mut Workspaces,
    header: import_data_request::Header,
    archive: &[u8],
) -> Result<ImportDataResponse, tonic::Status> {
    let mut messages = vec![ImportDataRequest { event: Some(import_data_request::Event::Header(header)) }];
    messages.extend(
        archive
            .chunks(1 << 20)
            .map(|chunk| ImportDataRequest { event: Some(import_data_request::Event::Chunk(chunk.to_vec().into())) }),
    );
    workspaces.import_data(tokio_stream::iter(messages)).await.map(tonic::Response::into_inner)
}

/// One ImportDataChunk call.
pub async fn import_chunk(
    workspaces: &mut Workspaces,
    request: &ImportDataChunkRequest,
    offset: usize,
    data: &[u8],
    last: bool,
) -> Result<ImportDataChunkResponse, tonic::Status> {
    let request = ImportDataChunkRequest { offset: offset as i64, data: data.to_vec().into(), last, ..request.clone() };
    workspaces.import_data_chunk(request).await.map(tonic::Response::into_inner)
}

/// SHA-256 in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// What a byte-for-byte comparison keeps of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    /// Permission bits (0 for symlinks, whose mode means nothing).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds: what a GNU tar archive keeps.
    pub mtime: i64,
    /// A file's SHA-256, or a symlink's target.
    pub content: String,
}

/// Every entry below the host directory `root`, by relative path.
pub fn host_tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, tree: &mut BTreeMap<String, Node>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = path.symlink_metadata().expect("lstat");
            let relative = path.strip_prefix(root).expect("below root").to_string_lossy().into_owned();
            let (kind, content) = if meta.file_type().is_symlink() {
                ("symlink", std::fs::read_link(&path).expect("readlink").to_string_lossy().into_owned())
            } else if meta.is_dir() {
                walk(root, &path, tree);
                ("dir", String::new())
            } else {
                ("file", sha256_hex(&std::fs::read(&path).expect("read")))
            };
            let mode = if kind == "symlink" { 0 } else { meta.mode() & 0o7777 };
            tree.insert(relative, Node { kind, mode, uid: meta.uid(), gid: meta.gid(), mtime: meta.mtime(), content });
        }
    }
    let mut tree = BTreeMap::new();
    walk(root, root, &mut tree);
    tree
}

/// Every entry below `dir` of a workspace (running or stopped), by relative path, as
/// ListDir and ReadFile show it.
pub async fn workspace_tree(files: &mut Files, id: &str, dir: &str) -> BTreeMap<String, Node> {
    let mut tree = BTreeMap::new();
    let mut token = String::new();
    loop {
        let request = ListDirRequest {
            workspace_id: id.to_owned(),
            path: dir.to_owned(),
            depth: 32,
            page_size: 10_000,
            page_token: token.clone(),
        };
        let page = files.list_dir(request).await.expect("list_dir").into_inner();
        for entry in page.entries {
            let relative = entry.path.strip_prefix(&format!("{}/", dir.trim_end_matches('/'))).expect("below dir");
            let (kind, content) = match entry.r#type() {
                FileType::Symlink => ("symlink", entry.symlink_target.clone()),
                FileType::Directory => ("dir", String::new()),
                FileType::File => ("file", sha256_hex(&read(files, id, &entry.path).await.expect("read"))),
                other => panic!("{} is a {other:?}", entry.path),
            };
            let mode = if kind == "symlink" { 0 } else { entry.mode };
            let mtime = entry.modify_time.as_ref().map_or(0, |time| time.seconds);
            tree.insert(relative.to_owned(), Node { kind, mode, uid: entry.uid, gid: entry.gid, mtime, content });
        }
        if page.next_page_token.is_empty() {
            return tree;
        }
        token = page.next_page_token;
    }
}

/// The `data_imported` events of a workspace in the server's store (messages, oldest first),
/// read with Python's sqlite3 (the tests' toolchain has Python; the server API has no event
/// replay yet).
pub fn imported_events(state_dir: &Path, workspace_id: &str) -> Vec<String> {
    let script = "import sqlite3, sys\n\
        db = sqlite3.connect(sys.argv[1])\n\
        for (message,) in db.execute(\"SELECT message FROM events WHERE workspace_id = ? AND kind = 'data_imported' ORDER BY seq\", (sys.argv[2],)):\n\
        \x20   print(message)\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(state_dir.join("berth.db"))
        .arg(workspace_id)
        .output()
        .expect("run python3");
    assert!(output.status.success(), "reading the events failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}
