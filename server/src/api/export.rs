//! ExportData: a directory of a workspace as an archive stream, then its trailer.

use berth_api::v1 as pb;
use futures::StreamExt as _;
use tonic::{Response, Status};

use super::record_workspace_id;
use crate::data::ArchiveFormat;
use crate::files::{self, ExportEvent, Files};

type ExportStream = super::workspace::ResponseStream<pb::ExportDataResponse>;

/// The domain form of an archive format (unset means tar+gzip).
pub fn archive_format(format: pb::ArchiveFormat) -> ArchiveFormat {
    match format {
        pb::ArchiveFormat::TarZstd => ArchiveFormat::TarZstd,
        pb::ArchiveFormat::Unspecified | pb::ArchiveFormat::TarGzip => ArchiveFormat::TarGzip,
    }
}

/// Serves one ExportData call.
pub async fn export_data(files: &Files, request: pb::ExportDataRequest) -> Result<Response<ExportStream>, Status> {
    use pb::export_data_response::{Event, Trailer};
    record_workspace_id(&request.workspace_id);
    let path = if request.path.is_empty() { crate::data::DATA_PATH } else { request.path.as_str() };
    let path = files::parse_path(path, "path")?;
    let format = archive_format(request.format());
    let events = files.export(&request.workspace_id, path, format).await?;
    let stream = events.map(|event| {
        let event = match event? {
            ExportEvent::Chunk(chunk) => Event::Chunk(chunk),
            ExportEvent::Trailer { size_bytes, sha256, entry_count } => {
                Event::Trailer(Trailer { size_bytes, sha256, entry_count })
            }
        };
        Ok(pb::ExportDataResponse { event: Some(event) })
    });
    Ok(Response::new(Box::pin(stream)))
}
