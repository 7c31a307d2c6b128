//! `ProcessService`: its behaviour arrives with processes and terminals; until then every RPC
//! answers UNIMPLEMENTED naming what is missing.

use std::pin::Pin;

use berth_api::v1 as pb;
use berth_api::v1::process_service_server::ProcessService;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{not_built, record_workspace_id};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The ProcessService implementation.
pub struct ProcessApi;

#[tonic::async_trait]
impl ProcessService for ProcessApi {
    type StartStream = ResponseStream<pb::StartResponse>;
    type ConnectStream = ResponseStream<pb::ConnectResponse>;

    async fn start(&self, request: Request<pb::StartRequest>) -> Result<Response<Self::StartStream>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("Start (running processes in a workspace)")
    }

    async fn connect(&self, request: Request<pb::ConnectRequest>) -> Result<Response<Self::ConnectStream>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("Connect (re-attaching to a process)")
    }

    async fn send_input(
        &self,
        request: Request<pb::SendInputRequest>,
    ) -> Result<Response<pb::SendInputResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("SendInput (process stdin)")
    }

    async fn stream_input(
        &self,
        _request: Request<Streaming<pb::StreamInputRequest>>,
    ) -> Result<Response<pb::StreamInputResponse>, Status> {
        not_built("StreamInput (streamed process stdin)")
    }

    async fn close_stdin(
        &self,
        request: Request<pb::CloseStdinRequest>,
    ) -> Result<Response<pb::CloseStdinResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("CloseStdin (closing process stdin)")
    }

    async fn send_signal(
        &self,
        request: Request<pb::SendSignalRequest>,
    ) -> Result<Response<pb::SendSignalResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("SendSignal (signalling processes)")
    }

    async fn resize_pty(
        &self,
        request: Request<pb::ResizePtyRequest>,
    ) -> Result<Response<pb::ResizePtyResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("ResizePty (terminal resizing)")
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        record_workspace_id(&request.get_ref().workspace_id);
        not_built("List (listing processes)")
    }
}
