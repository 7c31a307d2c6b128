//! Unary uploads (browsers cannot stream requests over grpc-web): WriteFileChunk's files and
//! ImportDataChunk's archives. Chunks are appended to a staging file on the host, under berth's
//! state dir, so an unfinished upload never shows in the workspace; the last chunk hands the
//! staged file on: WriteFileChunk writes it with the same atomic replace as WriteFile,
//! ImportDataChunk imports it like ImportData (its SHA-256 computed while the chunks arrived).
//! Retry-safe: a chunk already received is acknowledged again, and the answer to the last chunk
//! is kept for a while so a retried last chunk gets it too. ImportData's streams are staged in
//! the same directory (see [`Uploads::stream_path`]).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::entry::Entry;
use super::import::{ImportOptions, Imported, StagedArchive, check_archive_size, import_staged};
use super::write::WriteOptions;
use super::{Files, blocking};
use crate::data::ArchiveFormat;
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

/// The answer to a WriteFileChunk chunk.
#[derive(Clone, Debug)]
pub struct ChunkAck {
    pub received_bytes: i64,
    /// Set by the last chunk.
    pub entry: Option<Entry>,
}

/// One ImportDataChunk request; like [`UploadChunk`], only the first chunk's options count.
#[derive(Debug)]
pub struct ImportChunk {
    pub workspace_id: String,
    pub upload_id: String,
    pub offset: i64,
    pub data: bytes::Bytes,
    pub last: bool,
    /// Unparsed: only the first chunk's count.
    pub path: String,
    /// `None` when the request's value is unknown (an error for the first chunk only).
    pub format: Option<ArchiveFormat>,
    pub replace: bool,
    pub sha256: String,
}

/// The answer to an ImportDataChunk chunk.
#[derive(Clone, Debug)]
pub struct ImportChunkAck {
    pub received_bytes: i64,
    /// Set by the last chunk.
    pub imported: Option<Imported>,
}

/// The two kinds of upload have separate upload ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    File,
    Import,
}

impl Kind {
    fn staging_prefix(self) -> &'static str {
        match self {
            Kind::File => "file-",
            Kind::Import => "import-",
        }
    }
}

/// What an upload becomes once complete.
#[derive(Clone, Debug)]
enum Purpose {
    File(WriteOptions),
    Import(ImportOptions),
}

/// The answer of an upload's last chunk, kept for retries.
#[derive(Clone, Debug)]
enum Done {
    File(ChunkAck),
    Import(ImportChunkAck),
}

/// A chunk, apart from what its kind of upload adds.
struct Received {
    workspace_id: String,
    upload_id: String,
    offset: i64,
    data: bytes::Bytes,
    last: bool,
}

type Key = (String, Kind, String);

struct Upload {
    key: Key,
    purpose: Purpose,
    staged: PathBuf,
    received: i64,
    /// The SHA-256 of what was received so far (imports only).
    hasher: Option<Sha256>,
    /// The most bytes the upload may reach (imports only).
    bound: Option<u64>,
    touched: Instant,
    /// The last chunk's answer, once it was handled.
    done: Option<Done>,
}

type UploadMap = Arc<Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Upload>>>>>;

/// The uploads in progress (and recently finished).
pub struct Uploads {
    dir: PathBuf,
    uploads: UploadMap,
}

/// Where a chunk leaves its upload.
enum Step {
    /// The answer, without anything else to do (a retry, or a chunk that is not the last).
    Answer(Answer),
    /// The last chunk arrived: the upload, locked, for the caller to finish.
    Complete(tokio::sync::OwnedMutexGuard<Upload>),
}

enum Answer {
    Received(i64),
    Done(Done),
}

impl Uploads {
    /// Uploads staged under `dir`; what a previous run left there is removed.
    pub fn new(dir: PathBuf) -> Self {
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot remove unfinished uploads of an earlier run");
        }
        Self { dir, uploads: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// A new path to stage one ImportData stream of a workspace at.
    pub fn stream_path(&self, workspace_id: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.dir.join(workspace_id).join(format!("stream-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    /// Handles one WriteFileChunk chunk.
    pub async fn chunk(&self, files: &Files, chunk: UploadChunk) -> Result<ChunkAck> {
        let UploadChunk { workspace_id, upload_id, offset, data, last, path, mode, expected_revision, create_parents } =
            chunk;
        let received = Received { workspace_id, upload_id, offset, data, last };
        let purpose = || {
            let path = super::parse_path(&path, "path")?;
            Ok(Purpose::File(WriteOptions { path, mode, expected_revision, create_parents }))
        };
        let mut upload = match self.receive(files, Kind::File, received, purpose).await? {
            Step::Answer(Answer::Received(received_bytes)) => return Ok(ChunkAck { received_bytes, entry: None }),
            Step::Answer(Answer::Done(Done::File(ack))) => return Ok(ack),
            Step::Answer(Answer::Done(Done::Import(_))) => unreachable!("file uploads are keyed apart from imports"),
            Step::Complete(upload) => upload,
        };
        let Purpose::File(options) = upload.purpose.clone() else {
            unreachable!("file uploads are keyed apart from imports")
        };
        let written = files.write_staged(&upload.key.0, options, upload.staged.clone()).await;
        let staged = upload.staged.clone();
        let _ = blocking(move || Ok(std::fs::remove_file(staged))).await;
        match written {
            Ok(entry) => {
                let ack = ChunkAck { received_bytes: upload.received, entry: Some(entry) };
                upload.done = Some(Done::File(ack.clone()));
                Ok(ack)
            }
            Err(err) => {
                // Discarded: the file stays as it was, and a retry must start over.
                self.discard(&upload);
                Err(err)
            }
        }
    }

    /// Handles one ImportDataChunk chunk; the last one imports the archive, in a task that
    /// finishes (and keeps its answer for a retry) even if the caller goes away.
    pub async fn import_chunk(&self, files: &Files, chunk: ImportChunk) -> Result<ImportChunkAck> {
        let ImportChunk { workspace_id, upload_id, offset, data, last, path, format, replace, sha256 } = chunk;
        let received = Received { workspace_id: workspace_id.clone(), upload_id, offset, data, last };
        let purpose = || {
            let format = format.ok_or_else(|| {
                Error::new(
                    Reason::InvalidArgument,
                    "format is not an ArchiveFormat this server knows; pass TAR_GZIP or TAR_ZSTD",
                )
            })?;
            Ok(Purpose::Import(ImportOptions::parse(&path, format, replace, &sha256)?))
        };
        let mut upload = match self.receive(files, Kind::Import, received, purpose).await? {
            Step::Answer(Answer::Received(received_bytes)) => {
                return Ok(ImportChunkAck { received_bytes, imported: None });
            }
            Step::Answer(Answer::Done(Done::Import(ack))) => return Ok(ack),
            Step::Answer(Answer::Done(Done::File(_))) => unreachable!("imports are keyed apart from file uploads"),
            Step::Complete(upload) => upload,
        };
        let Purpose::Import(options) = upload.purpose.clone() else {
            unreachable!("imports are keyed apart from file uploads")
        };
        let staged = StagedArchive {
            path: upload.staged.clone(),
            size: upload.received as u64,
            sha256: hex::encode(upload.hasher.take().unwrap_or_default().finalize()),
        };
        let manager = files.manager.clone();
        let uploads = self.uploads.clone();
        let task = tokio::spawn(async move {
            let imported = import_staged(manager, workspace_id, options, staged).await;
            match imported {
                Ok(imported) => {
                    let ack = ImportChunkAck { received_bytes: upload.received, imported: Some(imported) };
                    upload.done = Some(Done::Import(ack.clone()));
                    Ok(ack)
                }
                Err(err) => {
                    // Discarded: the target stays as it was, and a retry must start over.
                    remove_upload(&uploads, &upload);
                    Err(err)
                }
            }
        });
        task.await.map_err(|err| Error::internal(format!("the import task failed: {err}")))?
    }

    /// Applies a chunk to its upload (starting it with `purpose` at offset 0).
    async fn receive(
        &self,
        files: &Files,
        kind: Kind,
        chunk: Received,
        purpose: impl FnOnce() -> Result<Purpose>,
    ) -> Result<Step> {
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
        let key = (chunk.workspace_id.clone(), kind, chunk.upload_id.clone());
        let upload = match self.find(&key) {
            Some(upload) => upload,
            None => self.begin(files, key, &chunk, purpose).await?,
        };
        let mut upload = upload.lock_owned().await;
        upload.touched = Instant::now();
        if let Some(done) = &upload.done {
            return Ok(Step::Answer(Answer::Done(done.clone())));
        }
        let length = chunk.data.len() as i64;
        if chunk.offset < upload.received && chunk.offset + length <= upload.received {
            // A retry of a chunk already appended.
            return Ok(Step::Answer(Answer::Received(upload.received)));
        }
        if chunk.offset != upload.received {
            return Err(Error::new(
                Reason::UploadOffsetMismatch,
                format!(
                    "upload {} has {} bytes so far, but the chunk starts at offset {}; send the chunk at offset {}",
                    chunk.upload_id, upload.received, chunk.offset, upload.received
                ),
            )
            .with_metadata("received_bytes", upload.received.to_string()));
        }
        if let Some(bound) = upload.bound
            && let Err(err) = check_archive_size((upload.received + length) as u64, bound)
        {
            self.discard(&upload);
            let staged = upload.staged.clone();
            let _ = blocking(move || Ok(std::fs::remove_file(staged))).await;
            return Err(err);
        }
        let staged = upload.staged.clone();
        let data = chunk.data;
        let hasher = upload.hasher.take();
        upload.hasher = blocking(move || {
            append(&staged, &data)?;
            Ok(hasher.map(|mut hasher| {
                hasher.update(&data);
                hasher
            }))
        })
        .await?;
        upload.received += length;
        if !chunk.last {
            return Ok(Step::Answer(Answer::Received(upload.received)));
        }
        Ok(Step::Complete(upload))
    }

    fn find(&self, key: &Key) -> Option<Arc<tokio::sync::Mutex<Upload>>> {
        self.uploads.lock().expect("uploads").get(key).cloned()
    }

    /// Forgets an upload (its staging file is the caller's to remove).
    fn discard(&self, upload: &Upload) {
        remove_upload(&self.uploads, upload);
    }

    /// Starts an upload with its first chunk.
    async fn begin(
        &self,
        files: &Files,
        key: Key,
        chunk: &Received,
        purpose: impl FnOnce() -> Result<Purpose>,
    ) -> Result<Arc<tokio::sync::Mutex<Upload>>> {
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
        let purpose = purpose()?;
        // The workspace must exist before anything is staged for it.
        files.manager.get(&chunk.workspace_id).await?;
        let (hasher, bound) = match purpose {
            Purpose::File(_) => (None, None),
            Purpose::Import(_) => (Some(Sha256::new()), Some(files.manager.import_limits().archive_bytes())),
        };
        let staged = self.dir.join(&chunk.workspace_id).join(format!("{}{}", key.1.staging_prefix(), chunk.upload_id));
        let create = staged.clone();
        blocking(move || super::import::create_staging_file(&create).map(drop)).await?;
        let mut uploads = self.uploads.lock().expect("uploads");
        let open = uploads.iter().filter(|((workspace, _, _), upload)| {
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
            key: key.clone(),
            purpose,
            staged,
            received: 0,
            hasher,
            bound,
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

/// Forgets an upload (its staging file is the caller's to remove).
fn remove_upload(uploads: &UploadMap, upload: &Upload) {
    uploads.lock().expect("uploads").remove(&upload.key);
}

fn append(staged: &std::path::Path, data: &[u8]) -> Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(staged)
        .and_then(|mut file| file.write_all(data))
        .map_err(|err| super::import::staging_error(staged, &err))
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
