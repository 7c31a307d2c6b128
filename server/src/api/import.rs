//! ImportData and ImportDataChunk: an archive extracted into a directory of a workspace.

use berth_api::v1 as pb;
use tonic::{Response, Status, Streaming};

use super::record_workspace_id;
use crate::files::Files;

/// Serves one ImportData call.
pub async fn import_data(
    files: &Files,
    request: Streaming<pb::ImportDataRequest>,
) -> Result<Response<pb::ImportDataResponse>, Status> {
    let _ = (files, request);
    super::not_built("ImportData (streamed /data import)")
}

/// Serves one ImportDataChunk call.
pub async fn import_data_chunk(
    files: &Files,
    request: pb::ImportDataChunkRequest,
) -> Result<Response<pb::ImportDataChunkResponse>, Status> {
    record_workspace_id(&request.workspace_id);
    let _ = files;
    super::not_built("ImportDataChunk (chunked /data import)")
}
