//! WriteFileChunk: a file uploaded with unary calls (browsers cannot stream requests over
//! grpc-web). Chunks are appended to a staging file on the host, under berth's state dir, so an
//! unfinished upload never shows in the workspace; the last chunk writes the file with the same
//! atomic replace as WriteFile. Retry-safe: a chunk already received is acknowledged again, and
//! the answer to the last chunk is kept for a while so a retried last chunk gets it too.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::entry::Entry;
use super::write::WriteOptions;
use super::{Files, blocking};
use crate::error::{Error, Reason, Result};

/// Largest chunk, as the proto documents it.
pub const MAX_CHUNK_BYTES: usize = 3 << 20;
/// Unfinished uploads a workspace may have at once.
const MAX_UPLOADS_PER_WORKSPACE: usize = 16;
/// How long an upload lives without a chunk, and how long a finished one answers retries.
const UPLOAD_IDLE: Duration = Duration::from_secs(10 * 60);
const MAX_UPLOAD_ID_BYTES: usize = 128;

/// One WriteFileChunk request, validated by the caller except for the upload's own rules.
#[derive(Debug)]
pub struct UploadChunk {
    pub workspace_id: String,
    pub upload_id: String,
    pub offset: i64,
    pub data: bytes::Bytes,
    pub last: bool,
    /// The first chunk's write options (path still unparsed: only the first chunk's counts).
    pub path: String,
    pub mode: u32,
    pub expected_revision: String,
    pub create_parents: bool,
}

/// The answer to a chunk.
#[derive(Clone, Debug)]
pub struct ChunkAck {
    pub received_bytes: i64,
    /// Set by the last chunk.
    pub entry: Option<Entry>,
}

type Key = (String, String);

struct Upload {
    options: WriteOptions,
    staged: PathBuf,
    received: i64,
    touched: Instant,
    /// The last chunk's answer, once the file is written.
    done: Option<ChunkAck>,
}

/// The uploads in progress (and recently finished).
pub struct Uploads {
    dir: PathBuf,
    uploads: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Upload>>>>,
}

impl Uploads {
    /// Uploads staged under `dir`; what a previous run left there is removed.
    pub fn new(dir: PathBuf) -> Self {
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot remove unfinished uploads of an earlier run");
        }
        Self { dir, uploads: Mutex::new(HashMap::new()) }
    }

    /// Handles one chunk.
    pub async fn chunk(&self, files: &Files, chunk: UploadChunk) -> Result<ChunkAck> {
        check_upload_id(&chunk.upload_id)?;
        if chunk.data.len() > MAX_CHUNK_BYTES {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!("the chunk has {} bytes; chunks are at most {MAX_CHUNK_BYTES} bytes (3 MiB)", chunk.data.len()),
            ));
        }
        let expired = self.expire();
        blocking(move || {
            for staged in expired {
                let _ = std::fs::remove_file(staged);
            }
            Ok(())
        })
        .await?;
        let key = (chunk.workspace_id.clone(), chunk.upload_id.clone());
        let upload = match self.find(&key) {
            Some(upload) => upload,
            None => self.begin(files, &chunk).await?,
        };
        let mut upload = upload.lock().await;
        upload.touched = Instant::now();
        if let Some(done) = &upload.done {
            return Ok(done.clone());
        }
        let length = chunk.data.len() as i64;
        if chunk.offset < upload.received && chunk.offset + length <= upload.received {
            // A retry of a chunk already appended.
            return Ok(ChunkAck { received_bytes: upload.received, entry: None });
        }
        if chunk.offset != upload.received {
            return Err(Error::new(
                Reason::UploadOffsetMismatch,
                format!(
                    "upload {} has {} bytes so far, but the chunk starts at offset {}; send the chunk at offset {}",
                    chunk.upload_id, upload.received, chunk.offset, upload.received
                ),
            ));
        }
        let staged = upload.staged.clone();
        let data = chunk.data;
        blocking(move || append(&staged, &data)).await?;
        upload.received += length;
        if !chunk.last {
            return Ok(ChunkAck { received_bytes: upload.received, entry: None });
        }
        let written = files.write_staged(&chunk.workspace_id, upload.options.clone(), upload.staged.clone()).await;
        let staged = upload.staged.clone();
        let _ = blocking(move || Ok(std::fs::remove_file(staged))).await;
        match written {
            Ok(entry) => {
                let ack = ChunkAck { received_bytes: upload.received, entry: Some(entry) };
                upload.done = Some(ack.clone());
                Ok(ack)
            }
            Err(err) => {
                // Discarded: the file stays as it was, and a retry must start over.
                self.uploads.lock().expect("uploads").remove(&key);
                Err(err)
            }
        }
    }

    fn find(&self, key: &Key) -> Option<Arc<tokio::sync::Mutex<Upload>>> {
        self.uploads.lock().expect("uploads").get(key).cloned()
    }

    /// Starts an upload with its first chunk.
    async fn begin(&self, files: &Files, chunk: &UploadChunk) -> Result<Arc<tokio::sync::Mutex<Upload>>> {
        if chunk.offset != 0 {
            return Err(Error::new(
                Reason::UploadNotFound,
                format!(
                    "workspace {} has no upload {} (unknown, finished, failed or discarded after 10 idle minutes); \
                     start it again at offset 0",
                    chunk.workspace_id, chunk.upload_id
                ),
            ));
        }
        let path = super::parse_path(&chunk.path, "path")?;
        // The workspace must exist before anything is staged for it.
        files.manager.get(&chunk.workspace_id).await?;
        let options = WriteOptions {
            path,
            mode: chunk.mode,
            expected_revision: chunk.expected_revision.clone(),
            create_parents: chunk.create_parents,
        };
        let dir = self.dir.join(&chunk.workspace_id);
        let staged = dir.join(&chunk.upload_id);
        let create = staged.clone();
        blocking(move || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .and_then(|()| std::fs::File::create(&create).map(drop))
                .map_err(|err| Error::internal(format!("staging the upload in {} failed: {err}", dir.display())))
        })
        .await?;
        let key = (chunk.workspace_id.clone(), chunk.upload_id.clone());
        let mut uploads = self.uploads.lock().expect("uploads");
        let open = uploads.iter().filter(|((workspace, _), upload)| {
            workspace == &chunk.workspace_id && upload.try_lock().map_or(true, |upload| upload.done.is_none())
        });
        if open.count() >= MAX_UPLOADS_PER_WORKSPACE {
            let _ = std::fs::remove_file(&staged);
            return Err(Error::new(
                Reason::ResourceLimitExceeded,
                format!(
                    "workspace {} has {MAX_UPLOADS_PER_WORKSPACE} unfinished uploads; finish them, or wait 10 minutes for idle ones to be discarded",
                    chunk.workspace_id
                ),
            ));
        }
        let upload = Arc::new(tokio::sync::Mutex::new(Upload {
            options,
            staged,
            received: 0,
            touched: Instant::now(),
            done: None,
        }));
        Ok(uploads.entry(key).or_insert(upload).clone())
    }

    /// Drops uploads idle for too long; returns their staging files to remove.
    fn expire(&self) -> Vec<PathBuf> {
        let mut expired = Vec::new();
        self.uploads.lock().expect("uploads").retain(|_, upload| {
            let Ok(upload) = upload.try_lock() else {
                return true; // a chunk is being handled right now
            };
            let keep = upload.touched.elapsed() < UPLOAD_IDLE;
            if !keep && upload.done.is_none() {
                expired.push(upload.staged.clone());
            }
            keep
        });
        expired
    }
}

use std::os::unix::fs::DirBuilderExt as _;

fn append(staged: &std::path::Path, data: &[u8]) -> Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(staged)
        .and_then(|mut file| file.write_all(data))
        .map_err(|err| Error::internal(format!("staging the upload chunk in {} failed: {err}", staged.display())))
}

fn check_upload_id(upload_id: &str) -> Result<()> {
    let valid = !upload_id.is_empty()
        && upload_id.len() <= MAX_UPLOAD_ID_BYTES
        && upload_id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        && upload_id != "."
        && upload_id != "..";
    if valid {
        Ok(())
    } else {
        Err(Error::new(
            Reason::InvalidArgument,
            format!("upload_id {upload_id:?} is invalid; use 1 to 128 characters of A-Z a-z 0-9 . _ - (a UUID works)"),
        ))
    }
}
