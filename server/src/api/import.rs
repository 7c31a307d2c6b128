//! ImportData and ImportDataChunk: an archive extracted into a directory of a workspace.

use berth_api::v1 as pb;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tonic::{Response, Status, Streaming};

use super::auth::Grant;
use super::authorize::Authorizer;
use super::record_workspace_id;
use crate::data::ArchiveFormat;
use crate::error::{Error, Reason};
use crate::files::{Files, ImportChunk, ImportOptions};

/// Archive chunks queued between the client stream and the staging writer.
const IMPORT_QUEUE: usize = 4;

/// Serves one ImportData call.
pub async fn import_data(
    files: &Files,
    authorizer: &Authorizer,
    grant: &Grant,
    mut request: Streaming<pb::ImportDataRequest>,
) -> Result<Response<pb::ImportDataResponse>, Status> {
    use pb::import_data_request::Event;
    let header = match request.message().await? {
        Some(pb::ImportDataRequest { event: Some(Event::Header(header)) }) => header,
        _ => {
            return Err(Error::new(
                Reason::InvalidArgument,
                "the first ImportData message must be the header; send the header, then the archive's chunks",
            )
            .into());
        }
    };
    record_workspace_id(&header.workspace_id);
    authorizer.workspace(grant, &header.workspace_id).await?;
    crate::model::WorkspaceId::parse(&header.workspace_id)?;
    let format = archive_format(header.format)?;
    let options = ImportOptions::parse(&header.path, format, header.replace, &header.sha256)?;
    let (chunks, receiver) = mpsc::channel(IMPORT_QUEUE);
    tokio::spawn(async move {
        while let Some(message) = request.next().await {
            let next = match message {
                Ok(pb::ImportDataRequest { event: Some(Event::Chunk(chunk)) }) => Ok(chunk),
                Ok(_) => Err(Error::new(
                    Reason::InvalidArgument,
                    "an ImportData message after the first is not a chunk; send the header once, then only chunks",
                )),
                Err(status) => Err(Error::new(
                    Reason::InvalidArgument,
                    format!("the ImportData stream broke off ({}); nothing was imported", status.message()),
                )),
            };
            let failed = next.is_err();
            if chunks.send(next).await.is_err() || failed {
                break;
            }
        }
    });
    let imported = files.import_data(&header.workspace_id, options, receiver).await?;
    Ok(Response::new(pb::ImportDataResponse {
        size_bytes: imported.size_bytes as i64,
        sha256: imported.sha256,
        entry_count: imported.entries,
    }))
}

/// Serves one ImportDataChunk call.
pub async fn import_data_chunk(
    files: &Files,
    request: pb::ImportDataChunkRequest,
) -> Result<Response<pb::ImportDataChunkResponse>, Status> {
    record_workspace_id(&request.workspace_id);
    crate::model::WorkspaceId::parse(&request.workspace_id)?;
    let ack = files
        .import_chunk(ImportChunk {
            workspace_id: request.workspace_id,
            upload_id: request.upload_id,
            offset: request.offset,
            data: request.data,
            last: request.last,
            path: request.path,
            // Only the first chunk's format counts, and is checked then.
            format: archive_format(request.format).ok(),
            replace: request.replace,
            sha256: request.sha256,
        })
        .await?;
    let (sha256, entry_count) = match &ack.imported {
        Some(imported) => (imported.sha256.clone(), imported.entries),
        None => (String::new(), 0),
    };
    Ok(Response::new(pb::ImportDataChunkResponse {
        received_bytes: ack.received_bytes,
        done: ack.imported.is_some(),
        sha256,
        entry_count,
    }))
}

/// The archive format of a request (unset: tar+gzip).
fn archive_format(value: i32) -> Result<ArchiveFormat, Error> {
    match pb::ArchiveFormat::try_from(value) {
        Ok(pb::ArchiveFormat::Unspecified | pb::ArchiveFormat::TarGzip) => Ok(ArchiveFormat::TarGzip),
        Ok(pb::ArchiveFormat::TarZstd) => Ok(ArchiveFormat::TarZstd),
        Err(_) => Err(Error::new(
            Reason::InvalidArgument,
            format!("format {value} is not an ArchiveFormat; pass ARCHIVE_FORMAT_TAR_GZIP or ARCHIVE_FORMAT_TAR_ZSTD"),
        )),
    }
}
