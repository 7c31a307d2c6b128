//! `WorkspaceService`: validate, call the Manager, convert back.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_api::v1 as pb;
use berth_api::v1::workspace_service_server::WorkspaceService;
use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::auth::grant;
use super::authorize::Authorizer;
use super::{convert, record_workspace_id};
use crate::error::{Error, Reason};
use crate::files::Files;
use crate::metrics::Metrics;
use crate::workspace::Manager;

pub(super) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The longest StopWorkspace timeout, as workspace_service.proto documents it: a stop holds the
/// workspace (and the caller) that long.
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The WorkspaceService implementation.
pub struct WorkspaceApi {
    manager: Arc<Manager>,
    /// /data (or any directory) in and out as archives: ExportData and ImportData.
    files: Arc<Files>,
    /// The shared samplers behind GetMetrics and WatchMetrics.
    metrics: Arc<Metrics>,
    /// The token scope checks.
    authorizer: Authorizer,
}

impl WorkspaceApi {
    /// Serves WorkspaceService over the Manager, the file manager and the metrics samplers.
    pub fn new(manager: Arc<Manager>, files: Arc<Files>, metrics: Arc<Metrics>, authorizer: Authorizer) -> Self {
        Self { manager, files, metrics, authorizer }
    }
}

#[tonic::async_trait]
impl WorkspaceService for WorkspaceApi {
    type CreateWorkspaceStream = ResponseStream<pb::CreateWorkspaceResponse>;
    type WatchMetricsStream = ResponseStream<pb::WatchMetricsResponse>;
    type ExportDataStream = ResponseStream<pb::ExportDataResponse>;
    type WatchEventsStream = ResponseStream<pb::WatchEventsResponse>;

    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Result<Response<Self::CreateWorkspaceStream>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.create(&grant, &request.workspace_id, &request.labels.clone().into_iter().collect()).await?;
        let events = self.manager.create(convert::create_request(request)).await?;
        let responses = events.map(|event| event.map(convert::create_event).map_err(Status::from));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Result<Response<pb::GetWorkspaceResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let info = self.manager.get(&request.workspace_id).await?;
        Ok(Response::new(pb::GetWorkspaceResponse { workspace: Some(convert::workspace(info)) }))
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Result<Response<pb::ListWorkspacesResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        let list = self.authorizer.list(&grant, &request).await?;
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces: list.workspaces.into_iter().map(convert::workspace).collect(),
            next_page_token: list.next_page_token,
        }))
    }

    async fn start_workspace(
        &self,
        request: Request<pb::StartWorkspaceRequest>,
    ) -> Result<Response<pb::StartWorkspaceResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let info = self.manager.start(&request.workspace_id).await?;
        Ok(Response::new(pb::StartWorkspaceResponse { workspace: Some(convert::workspace(info)) }))
    }

    async fn stop_workspace(
        &self,
        request: Request<pb::StopWorkspaceRequest>,
    ) -> Result<Response<pb::StopWorkspaceResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let timeout = request.timeout.map(convert::duration).transpose()?;
        if let Some(timeout) = timeout {
            check_stop_timeout(timeout)?;
        }
        let info = self.manager.stop(&request.workspace_id, timeout).await?;
        Ok(Response::new(pb::StopWorkspaceResponse { workspace: Some(convert::workspace(info)) }))
    }

    async fn delete_workspace(
        &self,
        request: Request<pb::DeleteWorkspaceRequest>,
    ) -> Result<Response<pb::DeleteWorkspaceResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        self.manager.delete(&request.workspace_id, request.preserve_data).await?;
        Ok(Response::new(pb::DeleteWorkspaceResponse {}))
    }

    async fn restore_data(
        &self,
        request: Request<pb::RestoreDataRequest>,
    ) -> Result<Response<pb::RestoreDataResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let info = self.manager.restore_data(&request.workspace_id).await?;
        Ok(Response::new(pb::RestoreDataResponse { workspace: Some(convert::workspace(info)) }))
    }

    async fn reset_data(
        &self,
        request: Request<pb::ResetDataRequest>,
    ) -> Result<Response<pb::ResetDataResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let info = self.manager.reset_data(&request.workspace_id).await?;
        Ok(Response::new(pb::ResetDataResponse { workspace: Some(convert::workspace(info)) }))
    }

    async fn update_workspace(
        &self,
        request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Result<Response<pb::UpdateWorkspaceResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let masked =
            |name: &str| request.update_mask.as_ref().is_some_and(|mask| mask.paths.iter().any(|path| path == name));
        if masked("labels") {
            let labels = request.labels.clone().into_iter().collect();
            self.authorizer.keeps_in_scope(&grant, &request.workspace_id, &labels)?;
        }
        if masked("network_policy") {
            self.authorizer.admin_only(&grant, "changing a workspace's network policy")?;
        }
        let workspace_id = request.workspace_id.clone();
        let changed = self.manager.update(&workspace_id, convert::workspace_update(request)?).await?;
        Ok(Response::new(pb::UpdateWorkspaceResponse {
            workspace: Some(convert::workspace(changed.workspace)),
            restarted: changed.restarted,
            version: changed.version.map(convert::version),
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let sample = self.metrics.get(&request.workspace_id).await?;
        Ok(Response::new(pb::GetMetricsResponse { metrics: Some(convert::workspace_metrics(sample)) }))
    }

    async fn watch_metrics(
        &self,
        request: Request<pb::WatchMetricsRequest>,
    ) -> Result<Response<Self::WatchMetricsStream>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let interval = convert::watch_interval(request.interval)?;
        let samples = self.metrics.watch(&request.workspace_id, interval).await?;
        let responses = samples.map(|sample| {
            sample
                .map(|sample| pb::WatchMetricsResponse { metrics: Some(convert::workspace_metrics(sample)) })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let labels = request.labels.into_iter().collect();
        let snapshot = self.manager.create_snapshot(&request.workspace_id, &request.name, labels).await?;
        Ok(Response::new(pb::CreateSnapshotResponse { snapshot: Some(convert::snapshot(snapshot)) }))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let list = self.manager.list_snapshots(&request.workspace_id, request.page_size, &request.page_token).await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: list.snapshots.into_iter().map(convert::snapshot).collect(),
            next_page_token: list.next_page_token,
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        self.manager.delete_snapshot(&request.workspace_id, &request.name).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn restore_snapshot(
        &self,
        request: Request<pb::RestoreSnapshotRequest>,
    ) -> Result<Response<pb::RestoreSnapshotResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let target = convert::restore_target(request.target)?;
        let restored = self.manager.restore_snapshot(&request.workspace_id, target).await?;
        Ok(Response::new(pb::RestoreSnapshotResponse {
            workspace: Some(convert::workspace(restored.workspace)),
            version: Some(convert::version(restored.version)),
        }))
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let list = self.manager.list_versions(&request.workspace_id, request.page_size, &request.page_token).await?;
        Ok(Response::new(pb::ListVersionsResponse {
            current_version: list.current_version,
            versions: list.versions.into_iter().map(convert::version).collect(),
            next_page_token: list.next_page_token,
        }))
    }

    async fn export_data(
        &self,
        request: Request<pb::ExportDataRequest>,
    ) -> Result<Response<Self::ExportDataStream>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        super::export::export_data(&self.files, request).await
    }

    async fn import_data(
        &self,
        request: Request<Streaming<pb::ImportDataRequest>>,
    ) -> Result<Response<pb::ImportDataResponse>, Status> {
        let grant = grant(&request)?;
        super::import::import_data(&self.files, &self.authorizer, &grant, request.into_inner()).await
    }

    async fn import_data_chunk(
        &self,
        request: Request<pb::ImportDataChunkRequest>,
    ) -> Result<Response<pb::ImportDataChunkResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        super::import::import_data_chunk(&self.files, request).await
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        // Every workspace's events when no id is given, filtered below.
        if !request.workspace_id.is_empty() {
            self.authorizer.workspace(&grant, &request.workspace_id).await?;
        }
        let events = super::events::watch_events(&self.manager, request)?;
        Ok(Response::new(self.authorizer.filter_events(&grant, events)))
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        // Any valid token: the catalog names host devices, not workspaces.
        grant(&request)?;
        let catalog = self.manager.list_devices().await?;
        Ok(Response::new(convert::devices(catalog)))
    }
}

fn check_stop_timeout(timeout: Duration) -> Result<(), Error> {
    if timeout <= MAX_STOP_TIMEOUT {
        return Ok(());
    }
    Err(Error::new(
        Reason::InvalidArgument,
        format!(
            "timeout {timeout:?} is longer than the maximum of 5 minutes; pass at most 300s, or 0 to send SIGKILL at once"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_timeouts_up_to_five_minutes_pass() {
        for seconds in [0, 10, 300] {
            assert!(check_stop_timeout(Duration::from_secs(seconds)).is_ok(), "{seconds}s");
        }
        let err = check_stop_timeout(Duration::from_secs(300) + Duration::from_nanos(1)).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidArgument);
        assert!(err.message().contains("5 minutes"), "{}", err.message());
        assert!(Status::from(check_stop_timeout(Duration::MAX).unwrap_err()).code() == tonic::Code::InvalidArgument);
    }
}
