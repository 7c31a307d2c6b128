//! ExportData: a directory of a workspace as an archive stream, then its trailer.

use berth_api::v1 as pb;
use tonic::{Response, Status};

use super::record_workspace_id;
use crate::files::Files;

type ExportStream = super::workspace::ResponseStream<pb::ExportDataResponse>;

/// Serves one ExportData call.
pub async fn export_data(files: &Files, request: pb::ExportDataRequest) -> Result<Response<ExportStream>, Status> {
    record_workspace_id(&request.workspace_id);
    let _ = files;
    super::not_built("ExportData (streamed /data archives)")
}
