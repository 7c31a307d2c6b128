//! Helpers for FilesystemService tests: whole-file writes and reads, and workspace setup.

use berth_api::v1::filesystem_service_client::FilesystemServiceClient;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateWorkspaceRequest, EntryInfo, ReadFileRequest, StartWorkspaceRequest, StatRequest, StopWorkspaceRequest,
    WriteFileRequest, create_workspace_response, read_file_response, write_file_request,
};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::BerthServer;

pub type Files = FilesystemServiceClient<Channel>;

/// Creates a workspace and waits for its `ready`.
pub async fn create_workspace(server: &BerthServer, id: &str, image: &str) {
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);
    let request = CreateWorkspaceRequest { workspace_id: id.to_owned(), image: image.to_owned(), ..Default::default() };
    let mut stream = workspaces.create_workspace(request).await.unwrap().into_inner();
    let mut ready = false;
    while let Some(item) = stream.next().await {
        ready = matches!(item.unwrap().event, Some(create_workspace_response::Event::Ready(_)));
    }
    assert!(ready, "the create of {id} ended without ready");
}

/// Stops a workspace.
pub async fn stop_workspace(server: &BerthServer, id: &str) {
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);
    workspaces
        .stop_workspace(StopWorkspaceRequest { workspace_id: id.to_owned(), ..Default::default() })
        .await
        .unwrap();
}

/// Starts a workspace.
pub async fn start_workspace(server: &BerthServer, id: &str) {
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);
    workspaces.start_workspace(StartWorkspaceRequest { workspace_id: id.to_owned() }).await.unwrap();
}

/// The header of a WriteFile stream.
pub fn header(id: &str, path: &str) -> write_file_request::Header {
    write_file_request::Header { workspace_id: id.to_owned(), path: path.to_owned(), ..Default::default() }
}

/// Writes `content` with WriteFile in chunks of `chunk` bytes.
pub async fn write_with(
    files: &mut Files,
    header: write_file_request::Header,
    content: Vec<u8>,
    chunk: usize,
) -> Result<EntryInfo, tonic::Status> {
    let mut messages = vec![WriteFileRequest { event: Some(write_file_request::Event::Header(header)) }];
    messages.extend(
        content
            .chunks(chunk.max(1))
            .map(|part| WriteFileRequest { event: Some(write_file_request::Event::Chunk(part.to_vec().into())) }),
    );
    files.write_file(tokio_stream::iter(messages)).await.map(|response| response.into_inner().entry.unwrap())
}

/// Writes a whole file.
pub async fn write(files: &mut Files, id: &str, path: &str, content: &[u8]) -> Result<EntryInfo, tonic::Status> {
    write_with(files, header(id, path), content.to_vec(), 1 << 20).await
}

/// Reads a byte range (0, 0: everything) and returns the entry and the bytes.
pub async fn read_range(
    files: &mut Files,
    id: &str,
    path: &str,
    offset: i64,
    length: i64,
) -> Result<(EntryInfo, Vec<u8>), tonic::Status> {
    let request = ReadFileRequest { workspace_id: id.to_owned(), path: path.to_owned(), offset, length };
    let mut stream = files.read_file(request).await?.into_inner();
    let mut entry = None;
    let mut content = Vec::new();
    while let Some(message) = stream.next().await {
        match message?.event {
            Some(read_file_response::Event::Entry(info)) => {
                assert!(entry.is_none(), "ReadFile sent two entries");
                entry = Some(info);
            }
            Some(read_file_response::Event::Chunk(chunk)) => {
                assert!(entry.is_some(), "ReadFile sent a chunk before the entry");
                assert!(chunk.len() <= 1 << 20, "a chunk of {} bytes is over 1 MiB", chunk.len());
                content.extend_from_slice(&chunk);
            }
            None => panic!("ReadFile sent an empty message"),
        }
    }
    Ok((entry.expect("ReadFile sent no entry"), content))
}

/// Reads a whole file.
pub async fn read(files: &mut Files, id: &str, path: &str) -> Result<Vec<u8>, tonic::Status> {
    read_range(files, id, path, 0, 0).await.map(|(_, content)| content)
}

/// Stat of a path.
pub async fn stat(files: &mut Files, id: &str, path: &str, follow: bool) -> Result<EntryInfo, tonic::Status> {
    let request = StatRequest { workspace_id: id.to_owned(), path: path.to_owned(), follow_symlinks: follow };
    files.stat(request).await.map(|response| response.into_inner().entry.unwrap())
}
