//! `FilesystemService`: its behaviour arrives with the file manager; until then every RPC
//! answers UNIMPLEMENTED naming what is missing.

use std::pin::Pin;

use berth_api::v1 as pb;
use berth_api::v1::filesystem_service_server::FilesystemService;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{not_built, record_workspace_id};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The FilesystemService implementation.
pub struct FilesystemApi;

#[tonic::async_trait]
impl FilesystemService for FilesystemApi {
    type ReadFileStream = ResponseStream<pb::ReadFileResponse>;
    type WatchDirStream = ResponseStream<pb::WatchDirResponse>;

    async fn stat(&self, request: Request<pb::StatRequest>) -> Result<Response<pb::StatResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("Stat (file metadata inside a workspace)")
    }

    async fn list_dir(&self, request: Request<pb::ListDirRequest>) -> Result<Response<pb::ListDirResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("ListDir (directory listing inside a workspace)")
    }

    async fn read_file(&self, request: Request<pb::ReadFileRequest>) -> Result<Response<Self::ReadFileStream>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("ReadFile (streamed file reads)")
    }

    async fn write_file(
        &self,
        _request: Request<Streaming<pb::WriteFileRequest>>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        not_built("WriteFile (atomic file writes)")
    }

    async fn write_file_chunk(
        &self,
        request: Request<pb::WriteFileChunkRequest>,
    ) -> Result<Response<pb::WriteFileChunkResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("WriteFileChunk (unary file uploads)")
    }

    async fn make_dir(&self, request: Request<pb::MakeDirRequest>) -> Result<Response<pb::MakeDirResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("MakeDir (directory creation)")
    }

    async fn remove(&self, request: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("Remove (file and directory removal)")
    }

    async fn r#move(&self, request: Request<pb::MoveRequest>) -> Result<Response<pb::MoveResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("Move (renaming files)")
    }

    async fn watch_dir(&self, request: Request<pb::WatchDirRequest>) -> Result<Response<Self::WatchDirStream>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("WatchDir (filesystem change events)")
    }
}
