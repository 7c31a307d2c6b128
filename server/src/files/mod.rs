//! The file manager behind FilesystemService: every operation reaches the workspace's root
//! through the Manager ([`crate::workspace::FileAccess`]: the running root, or a private mount of
//! a stopped workspace), resolves paths in-root ([`crate::data::in_root`]) and does its I/O on
//! blocking threads, streaming through small bounded channels.

mod entry;
mod export;
mod import;
mod list;
mod ops;
mod path;
mod read;
mod uploads;
mod watch;
mod write;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use entry::{Entry, EntryKind};
pub use export::ExportEvent;
pub use import::{DEFAULT_IMPORT_PATH, ImportOptions, Imported};
pub use list::Page;
pub use path::parse as parse_path;
pub use read::{CHUNK_BYTES as READ_CHUNK_BYTES, ReadEvent};
pub use uploads::{ChunkAck, ImportChunk, ImportChunkAck, MAX_CHUNK_BYTES as MAX_UPLOAD_CHUNK_BYTES, UploadChunk};
pub use watch::{WatchEvent, WatchKind};
pub use write::WriteOptions;

use crate::error::{Error, Reason, Result};
use crate::workspace::{FileAccess, Manager};

/// Chunks queued between a blocking reader or writer and its stream: bounds memory per call.
const CHANNEL_CHUNKS: usize = 4;
/// How long a transfer waits for a client that neither reads nor sends: it holds a stopped
/// workspace's lock (a start waits for it) or a running workspace's gate.
const CLIENT_STALL: Duration = Duration::from_secs(60);

/// The file manager.
pub struct Files {
    manager: Arc<Manager>,
    uploads: uploads::Uploads,
    watches: watch::Watches,
}

impl Files {
    /// The file manager over the Manager's workspaces. Uploads a previous run left unfinished
    /// are discarded.
    pub fn new(manager: Arc<Manager>) -> Self {
        let uploads = uploads::Uploads::new(manager.upload_dir());
        Self { manager, uploads, watches: watch::Watches::default() }
    }

    /// Runs `work` on the workspace's root on a blocking thread; the access (and a stopped
    /// workspace's mount) ends with it.
    async fn on_root<T, F>(&self, workspace_id: &str, work: F) -> Result<T>
    where
        F: FnOnce(&FileAccess) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let access = self.manager.file_access(workspace_id).await?;
        blocking(move || work(&access)).await
    }

    /// Describes `path`.
    pub async fn stat(&self, workspace_id: &str, path: String, follow_symlinks: bool) -> Result<Entry> {
        self.on_root(workspace_id, move |access| ops::stat(&access.root, &path, follow_symlinks)).await
    }

    /// One page of the listing of `path`.
    pub async fn list_dir(
        &self,
        workspace_id: &str,
        path: String,
        depth: u32,
        page_size: i32,
        page_token: String,
    ) -> Result<Page> {
        self.on_root(workspace_id, move |access| list::list_dir(&access.root, &path, depth, page_size, &page_token))
            .await
    }

    /// Creates a directory.
    pub async fn make_dir(&self, workspace_id: &str, path: String, parents: bool, mode: u32) -> Result<Entry> {
        self.on_root(workspace_id, move |access| ops::make_dir(&access.root, &path, parents, mode)).await
    }

    /// Removes an entry.
    pub async fn remove(&self, workspace_id: &str, path: String, recursive: bool) -> Result<()> {
        self.on_root(workspace_id, move |access| ops::remove(&access.root, &path, recursive)).await
    }

    /// Moves an entry.
    pub async fn rename(
        &self,
        workspace_id: &str,
        source: String,
        destination: String,
        overwrite: bool,
    ) -> Result<Entry> {
        self.on_root(workspace_id, move |access| ops::rename(&access.root, &source, &destination, overwrite)).await
    }

    /// Streams the file's entry, then its bytes. Errors found before the first byte (a missing
    /// file, a directory) are returned here rather than in the stream.
    pub async fn read_file(
        &self,
        workspace_id: &str,
        path: String,
        offset: i64,
        length: i64,
    ) -> Result<impl Stream<Item = Result<ReadEvent>> + Send + 'static> {
        let access = self.manager.file_access(workspace_id).await?;
        let runtime = tokio::runtime::Handle::current();
        self.stream_from(move |sender| {
            let access = access;
            read::read_file(&access.root, &path, offset, length, &mut |event| {
                hand_over(&runtime, sender, event, &access.cancel, &path)
            })
        })
        .await
    }

    /// Runs `work` on a blocking thread, streaming what it sends. The work owns what it
    /// captures (a FileAccess: the mount or gate lasts exactly as long as the work). Its own
    /// outcome comes apart from the items, so an error (a stop, a client that stopped reading)
    /// ends the stream even when the channel is full; an error before the first item is
    /// returned here instead of a stream.
    async fn stream_from<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mpsc::Sender<T>) -> Result<()> + Send + 'static,
    ) -> Result<futures::stream::BoxStream<'static, Result<T>>> {
        let (sender, mut receiver) = mpsc::channel(CHANNEL_CHUNKS);
        let (outcome, last_word) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let done = work(&sender);
            let _ = outcome.send(done);
        });
        let tail = futures::stream::once(async move {
            match last_word.await {
                Ok(Err(err)) => Some(Err(err)),
                Ok(Ok(())) => None,
                Err(_) => Some(Err(Error::internal("a file worker ended without a word; see the server log"))),
            }
        })
        .filter_map(|item| async move { item });
        match receiver.recv().await {
            Some(first) => {
                Ok(futures::stream::iter([Ok(first)]).chain(ReceiverStream::new(receiver).map(Ok)).chain(tail).boxed())
            }
            None => match Box::pin(tail).next().await {
                Some(Err(err)) => Err(err),
                _ => Err(Error::internal("a file worker ended without a word; see the server log")),
            },
        }
    }

    /// Streams the directory `path` as an archive, then its trailer. Errors found before the
    /// first chunk (a missing directory) are returned here rather than in the stream.
    pub async fn export(
        &self,
        workspace_id: &str,
        path: String,
        format: crate::data::ArchiveFormat,
    ) -> Result<impl Stream<Item = Result<ExportEvent>> + Send + 'static> {
        let access = self.manager.file_access(workspace_id).await?;
        let runtime = tokio::runtime::Handle::current();
        self.stream_from(move |sender| {
            let access = access;
            export::export(&access.root, &path, format, &mut |event| {
                hand_over(&runtime, sender, event, &access.cancel, &path)
            })
        })
        .await
    }

    /// Writes the chunks `chunks` delivers (ended by None or an error) to a file, atomically.
    pub async fn write_file(
        &self,
        workspace_id: &str,
        options: WriteOptions,
        mut chunks: mpsc::Receiver<Result<Bytes>>,
    ) -> Result<Entry> {
        let runtime = tokio::runtime::Handle::current();
        self.on_root(workspace_id, move |access| {
            let path = options.path.clone();
            write::write_file(&access.root, &options, &access.cancel, &mut || {
                take_over(&runtime, &mut chunks, &access.cancel, &path)
            })
        })
        .await
    }

    /// One chunk of a unary upload; the last one writes the file.
    pub async fn write_chunk(&self, chunk: UploadChunk) -> Result<ChunkAck> {
        self.uploads.chunk(self, chunk).await
    }

    /// One chunk of a unary archive upload; the last one imports the archive.
    pub async fn import_chunk(&self, chunk: ImportChunk) -> Result<ImportChunkAck> {
        self.uploads.import_chunk(self, chunk).await
    }

    /// Watches `path` (and with `recursive` its subdirectories) of a running workspace.
    pub async fn watch_dir(
        &self,
        workspace_id: &str,
        path: String,
        recursive: bool,
    ) -> Result<impl Stream<Item = Result<WatchEvent>> + Send + 'static> {
        let access = self.manager.file_access(workspace_id).await?;
        self.watches.watch(access, workspace_id, path, recursive).await
    }

    /// Writes a staged upload's file (the last chunk of WriteFileChunk).
    async fn write_staged(
        &self,
        workspace_id: &str,
        options: WriteOptions,
        staged: std::path::PathBuf,
    ) -> Result<Entry> {
        self.on_root(workspace_id, move |access| {
            use std::io::Read as _;
            let mut file = std::fs::File::open(&staged).map_err(|err| {
                Error::internal(format!("opening the staged upload {} failed: {err}", staged.display()))
            })?;
            write::write_file(&access.root, &options, &access.cancel, &mut || {
                let mut buffer = vec![0; read::CHUNK_BYTES];
                let read = file
                    .read(&mut buffer)
                    .map_err(|err| Error::internal(format!("reading the staged upload failed: {err}")))?;
                buffer.truncate(read);
                Ok((read > 0).then(|| Bytes::from(buffer)))
            })
        })
        .await
    }
}

/// Hands one item from a blocking worker to its stream; false when the stream is gone. Waits
/// for room in the channel as long as the client reads, but not past a stop of the workspace
/// (which must not wait for a client) or a client that stopped reading altogether.
fn hand_over<T>(
    runtime: &tokio::runtime::Handle,
    sender: &mpsc::Sender<T>,
    item: T,
    cancel: &CancellationToken,
    path: &str,
) -> Result<bool> {
    runtime.block_on(async {
        tokio::select! {
            sent = sender.send(item) => Ok(sent.is_ok()),
            () = cancel.cancelled() => Err(stopped_meanwhile(path)),
            () = tokio::time::sleep(CLIENT_STALL) => Err(stalled(path)),
        }
    })
}

/// Takes the next chunk a client sends to a blocking writer (None: the end), with the same
/// bounds as [`hand_over`].
fn take_over(
    runtime: &tokio::runtime::Handle,
    chunks: &mut mpsc::Receiver<Result<Bytes>>,
    cancel: &CancellationToken,
    path: &str,
) -> Result<Option<Bytes>> {
    runtime.block_on(async {
        tokio::select! {
            chunk = chunks.recv() => chunk.transpose(),
            () = cancel.cancelled() => Err(stopped_meanwhile(path)),
            () = tokio::time::sleep(CLIENT_STALL) => Err(stalled(path)),
        }
    })
}

fn stalled(path: &str) -> Error {
    Error::new(
        Reason::ResourceLimitExceeded,
        format!(
            "the client moved no data of {path} for {} s, and the transfer holds the workspace; retry with a client that keeps up",
            CLIENT_STALL.as_secs()
        ),
    )
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|err| Error::internal(format!("a file worker failed: {err}")))?
}

/// The domain error for a failed file system call on `path` while trying to `action` it.
pub(crate) fn fs_error(err: &io::Error, action: &str, path: &str) -> Error {
    use rustix::io::Errno;
    let errno = err.raw_os_error().map(Errno::from_raw_os_error);
    let (reason, advice) = match errno {
        Some(Errno::NOENT) => (Reason::PathNotFound, "check the path, or create what is missing first"),
        Some(Errno::NOTDIR) => (Reason::NotADirectory, "a component of the path is not a directory; check the path"),
        Some(Errno::ISDIR) => (Reason::IsADirectory, "the path is a directory; name a file"),
        Some(Errno::EXIST) => (Reason::PathAlreadyExists, "choose another path, or ask to overwrite"),
        Some(Errno::NOTEMPTY) => (Reason::DirectoryNotEmpty, "remove it recursively, or empty it first"),
        Some(Errno::LOOP) => (
            Reason::InvalidPath,
            "resolving it met a symlink loop, more than 40 symlinks, or a /proc magic link; fix the symlinks",
        ),
        Some(Errno::NAMETOOLONG) => (Reason::InvalidPath, "a name or the path is too long"),
        Some(Errno::XDEV) => (
            Reason::InvalidArgument,
            "the source and destination are on different file systems (or the directory comes from the image, which \
             overlayfs cannot rename); copy it instead",
        ),
        Some(Errno::ROFS) => {
            (Reason::InvalidArgument, "it is on a read-only file system (berth mounts some files read-only)")
        }
        Some(Errno::BUSY) => (Reason::InvalidArgument, "it is a mount point or in use; choose another path"),
        Some(Errno::NOSPC | Errno::DQUOT) => (Reason::ResourceLimitExceeded, "the disk is full; free space and retry"),
        Some(Errno::INVAL) if action == "move" => {
            (Reason::InvalidArgument, "a directory cannot be moved into itself; choose a destination outside it")
        }
        _ => (Reason::Internal, "retry; if it persists, report it with the server log"),
    };
    Error::new(reason, format!("cannot {action} {path}: {err}; {advice}"))
}

/// A device node, FIFO or socket where a regular file is needed.
pub(crate) fn not_regular(path: &str) -> Error {
    Error::new(
        Reason::NotARegularFile,
        format!("{path} is a device node, FIFO or socket, which berth never opens; use a regular file"),
    )
}

/// The workspace stopped while an operation on its running root was in flight.
pub(crate) fn stopped_meanwhile(path: &str) -> Error {
    Error::new(
        Reason::WorkspaceNotRunning,
        format!(
            "the workspace stopped while {path} was being read or written; retry (a stopped workspace's files are reachable too)"
        ),
    )
}
