//! `FilesystemService`: validate, convert, call the file manager, convert back.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::v1 as pb;
use berth_api::v1::filesystem_service_server::FilesystemService;
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::auth::grant;
use super::authorize::Authorizer;
use super::convert::timestamp;
use super::record_workspace_id;
use crate::error::{Error, Reason};
use crate::files::{self, Entry, EntryKind, Files, ReadEvent, UploadChunk, WatchEvent, WatchKind, WriteOptions};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// WriteFile chunks queued between the client stream and the writer.
const WRITE_QUEUE: usize = 4;

/// The FilesystemService implementation.
pub struct FilesystemApi {
    files: Arc<Files>,
    authorizer: Authorizer,
}

impl FilesystemApi {
    /// Serves FilesystemService over the file manager.
    pub fn new(files: Arc<Files>, authorizer: Authorizer) -> Self {
        Self { files, authorizer }
    }
}

fn entry(entry: Entry) -> pb::EntryInfo {
    let kind = match entry.kind {
        EntryKind::File => pb::FileType::File,
        EntryKind::Directory => pb::FileType::Directory,
        EntryKind::Symlink => pb::FileType::Symlink,
        EntryKind::Other => pb::FileType::Other,
    };
    pb::EntryInfo {
        name: entry.name,
        path: entry.path,
        r#type: kind.into(),
        size_bytes: entry.size,
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        modify_time: Some(timestamp(entry.modify_time)),
        symlink_target: entry.symlink_target,
        revision: entry.revision,
    }
}

fn watch_kind(kind: WatchKind) -> pb::FilesystemEventKind {
    match kind {
        WatchKind::Create => pb::FilesystemEventKind::Create,
        WatchKind::Write => pb::FilesystemEventKind::Write,
        WatchKind::Remove => pb::FilesystemEventKind::Remove,
        WatchKind::Rename => pb::FilesystemEventKind::Rename,
        WatchKind::Chmod => pb::FilesystemEventKind::Chmod,
        WatchKind::Overflow => pb::FilesystemEventKind::Overflow,
    }
}

#[tonic::async_trait]
impl FilesystemService for FilesystemApi {
    type ReadFileStream = ResponseStream<pb::ReadFileResponse>;
    type WatchDirStream = ResponseStream<pb::WatchDirResponse>;

    async fn stat(&self, request: Request<pb::StatRequest>) -> Result<Response<pb::StatResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let path = files::parse_path(&request.path, "path")?;
        let found = self.files.stat(&request.workspace_id, path, request.follow_symlinks).await?;
        Ok(Response::new(pb::StatResponse { entry: Some(entry(found)) }))
    }

    async fn list_dir(&self, request: Request<pb::ListDirRequest>) -> Result<Response<pb::ListDirResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let path = files::parse_path(&request.path, "path")?;
        let page = self
            .files
            .list_dir(&request.workspace_id, path, request.depth, request.page_size, request.page_token)
            .await?;
        Ok(Response::new(pb::ListDirResponse {
            entries: page.entries.into_iter().map(entry).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn read_file(&self, request: Request<pb::ReadFileRequest>) -> Result<Response<Self::ReadFileStream>, Status> {
        use pb::read_file_response::Event;
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let path = files::parse_path(&request.path, "path")?;
        if request.offset < 0 || request.length < 0 {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!("offset ({}) and length ({}) must not be negative", request.offset, request.length),
            )
            .into());
        }
        let events = self.files.read_file(&request.workspace_id, path, request.offset, request.length).await?;
        let stream = events.map(|event| {
            let event = match event? {
                ReadEvent::Entry(found) => Event::Entry(entry(found)),
                ReadEvent::Chunk(bytes) => Event::Chunk(bytes),
            };
            Ok(pb::ReadFileResponse { event: Some(event) })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<pb::WriteFileRequest>>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        use pb::write_file_request::Event;
        let grant = grant(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::WriteFileRequest { event: Some(Event::Header(header)) }) => header,
            _ => {
                return Err(Error::new(
                    Reason::InvalidArgument,
                    "the first message of WriteFile must be its header (workspace_id, path, ...); send it first",
                )
                .into());
            }
        };
        record_workspace_id(&header.workspace_id);
        self.authorizer.workspace(&grant, &header.workspace_id).await?;
        let options = WriteOptions {
            path: files::parse_path(&header.path, "path")?,
            mode: header.mode,
            expected_revision: header.expected_revision,
            create_parents: header.create_parents,
        };
        let (chunks, receiver) = mpsc::channel(WRITE_QUEUE);
        // Feeds the writer; a client that goes away mid-stream makes the write fail, so the old
        // file stays.
        tokio::spawn(async move {
            loop {
                let next = match stream.message().await {
                    Ok(Some(pb::WriteFileRequest { event: Some(Event::Chunk(chunk)) })) => Some(Ok(chunk)),
                    Ok(Some(_)) => Some(Err(Error::new(
                        Reason::InvalidArgument,
                        "only the first message of WriteFile is a header; the others carry chunks",
                    ))),
                    Ok(None) => None,
                    Err(status) => Some(Err(Error::new(
                        Reason::InvalidArgument,
                        format!("the WriteFile stream broke off ({}); the file was not changed", status.message()),
                    ))),
                };
                let end = !matches!(next, Some(Ok(_)));
                if let Some(next) = next
                    && chunks.send(next).await.is_err()
                {
                    break;
                }
                if end {
                    break;
                }
            }
        });
        let written = self.files.write_file(&header.workspace_id, options, receiver).await?;
        Ok(Response::new(pb::WriteFileResponse { entry: Some(entry(written)) }))
    }

    async fn write_file_chunk(
        &self,
        request: Request<pb::WriteFileChunkRequest>,
    ) -> Result<Response<pb::WriteFileChunkResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        crate::model::WorkspaceId::parse(&request.workspace_id)?;
        let ack = self
            .files
            .write_chunk(UploadChunk {
                workspace_id: request.workspace_id,
                upload_id: request.upload_id,
                offset: request.offset,
                data: request.data,
                last: request.last,
                path: request.path,
                mode: request.mode,
                expected_revision: request.expected_revision,
                create_parents: request.create_parents,
            })
            .await?;
        Ok(Response::new(pb::WriteFileChunkResponse {
            received_bytes: ack.received_bytes,
            done: ack.entry.is_some(),
            entry: ack.entry.map(entry),
        }))
    }

    async fn make_dir(&self, request: Request<pb::MakeDirRequest>) -> Result<Response<pb::MakeDirResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let path = files::parse_path(&request.path, "path")?;
        let made = self.files.make_dir(&request.workspace_id, path, request.parents, request.mode).await?;
        Ok(Response::new(pb::MakeDirResponse { entry: Some(entry(made)) }))
    }

    async fn remove(&self, request: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let path = files::parse_path(&request.path, "path")?;
        self.files.remove(&request.workspace_id, path, request.recursive).await?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn r#move(&self, request: Request<pb::MoveRequest>) -> Result<Response<pb::MoveResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let source = files::parse_path(&request.source_path, "source_path")?;
        let destination = files::parse_path(&request.destination_path, "destination_path")?;
        let moved = self.files.rename(&request.workspace_id, source, destination, request.overwrite).await?;
        Ok(Response::new(pb::MoveResponse { entry: Some(entry(moved)) }))
    }

    async fn watch_dir(&self, request: Request<pb::WatchDirRequest>) -> Result<Response<Self::WatchDirStream>, Status> {
        use pb::watch_dir_response::{Event, Keepalive, Start};
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let path = files::parse_path(&request.path, "path")?;
        let events = self.files.watch_dir(&request.workspace_id, path, request.recursive).await?;
        let stream = events.map(|event| {
            let event = match event? {
                WatchEvent::Started => Event::Start(Start {}),
                WatchEvent::Keepalive => Event::Keepalive(Keepalive {}),
                WatchEvent::Change { kind, path, time } => Event::Change(pb::FilesystemEvent {
                    kind: watch_kind(kind).into(),
                    path,
                    event_time: Some(timestamp(time)),
                }),
            };
            Ok(pb::WatchDirResponse { event: Some(event) })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
