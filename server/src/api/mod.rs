//! The gRPC surface: tonic services (thin: validate, convert, call the Manager, convert back),
//! grpc-web with CORS, reflection, health, request tracing and shutdown handling.

mod auth;
mod authorize;
mod convert;
mod events;
mod export;
mod filesystem;
mod import;
mod listen;
mod process;
mod request_log;
mod shutdown;
mod status;
mod workspace;

use std::sync::Arc;
use std::time::Duration;

use berth_api::v1::filesystem_service_server::FilesystemServiceServer;
use berth_api::v1::process_service_server::ProcessServiceServer;
use berth_api::v1::workspace_service_server::WorkspaceServiceServer;
use http::header::{HeaderName, HeaderValue};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{Span, info, warn};

use crate::auth::Authenticator;
use crate::auth::tls::ServerCertificate;
use crate::metrics::Metrics;
use crate::workspace::Manager;

/// How often health re-checks that containerd answers.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// HTTP/2 flow-control windows the server grants its clients.
const STREAM_WINDOW_BYTES: u32 = 2 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 4 << 20;
const MAX_FRAME_BYTES: u32 = 1 << 20;
/// How long open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The services names health reports on, besides the overall "" entry.
const SERVICE_NAMES: [&str; 3] = [
    "berth.workspace.v1.WorkspaceService",
    "berth.workspace.v1.FilesystemService",
    "berth.workspace.v1.ProcessService",
];

/// Who may connect and call: the token check of every call and the TLS certificate (none for
/// plaintext).
pub struct Protection {
    pub authenticator: Arc<Authenticator>,
    pub certificate: Option<Arc<ServerCertificate>>,
}

/// Serves every service on `listener` until `shutdown` is cancelled; then ends open streams with
/// UNAVAILABLE and returns once connections closed (or after a grace period). Browsers may call
/// from pages of `cors_origins` only.
pub async fn serve(
    listener: TcpListener,
    manager: Arc<Manager>,
    metrics: Arc<Metrics>,
    cors_origins: &[String],
    protection: Protection,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Every service is known to health before the first connection is accepted (NOT_SERVING
    // until containerd answers and the boot reconcile is done), so a check never gets
    // "service not registered".
    set_all(&health_reporter, ServingStatus::NotServing).await;
    let health_task = tokio::spawn(report_health(manager.clone(), health_reporter, shutdown.clone()));

    let files = Arc::new(crate::files::Files::new(manager.clone()));
    let authorizer = authorize::Authorizer::new(manager.clone());
    let tls = protection
        .certificate
        .as_ref()
        .map(ServerCertificate::server_config)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let router = Server::builder()
        .accept_http1(true)
        // Room for a few 1 MiB file chunks in flight per stream (hyper grants 1 MiB per stream
        // and per connection by default), so one transfer is not paced by round trips.
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        // Clients may send DATA frames of up to 1 MiB instead of h2's 16 KiB: a 1 MiB file chunk
        // is then one frame, not 64.
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .layer(cors_layer(cors_origins)?)
        .layer(tonic_web::GrpcWebLayer::new())
        // Outside the shutdown layer, so streams it ends are logged with their UNAVAILABLE.
        .layer(request_log::RequestLogLayer)
        .layer(shutdown::EndStreamsOnShutdownLayer::new(shutdown.clone()))
        // Innermost: it sees gRPC (grpc-web already translated) and refuses before any handler.
        .layer(auth::AuthLayer::new(protection.authenticator))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(WorkspaceServiceServer::new(workspace::WorkspaceApi::new(
            manager.clone(),
            files.clone(),
            metrics,
            authorizer.clone(),
        )))
        .add_service(FilesystemServiceServer::new(filesystem::FilesystemApi::new(files, authorizer.clone())))
        .add_service(ProcessServiceServer::new(process::ProcessApi::new(manager.clone(), authorizer)));

    let stopped = shutdown.clone();
    // TCP_NODELAY is set on every accepted connection there (tonic applies its own default
    // only to listeners it binds itself).
    let incoming = listen::incoming(listener, tls);
    let server = router.serve_with_incoming_shutdown(incoming, stopped.cancelled_owned());
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "connections still open after the grace period; closing them"),
    }
    health_task.abort();
    Ok(())
}

/// Reflection over berth's protos, health, and google.rpc's error details, so grpcurl and
/// buf curl can decode the ErrorInfo of failed calls.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(berth_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Reports SERVING only while containerd answers and the boot reconcile has finished;
/// NOT_SERVING from the start of shutdown.
async fn report_health(manager: Arc<Manager>, reporter: HealthReporter, shutdown: CancellationToken) {
    let mut last: Option<ServingStatus> = None;
    loop {
        let status = match manager.check_runtime().await {
            Ok(_) if !manager.is_reconciled() => ServingStatus::NotServing,
            Ok(_) => ServingStatus::Serving,
            Err(err) => {
                if last != Some(ServingStatus::NotServing) {
                    warn!(error = %err, "containerd is not answering; health is NOT_SERVING");
                }
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            if status == ServingStatus::Serving && last.is_some() {
                info!("containerd answers again; health is SERVING");
            }
            set_all(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => {}
            // Report SERVING as soon as the reconcile ends, not at the next tick.
            () = manager.wait_reconciled(), if !manager.is_reconciled() => {}
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// CORS for browsers calling over grpc-web from the listed origins only: any page the operator
/// opens could otherwise drive the API (DeleteWorkspace included) on loopback. A preflight from
/// another origin gets no `Access-Control-Allow-Origin`, so the browser never sends the call.
/// The grpc headers must be exposed, or errors reach the page as "missing trailer".
fn cors_layer(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let header = HeaderName::from_static;
    let origins = origins
        .iter()
        .map(|origin| HeaderValue::from_str(origin))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow::anyhow!("invalid cors origin: {err}"))?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers([
            header("content-type"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header("authorization"),
        ])
        .expose_headers([header("grpc-status"), header("grpc-message"), header("grpc-status-details-bin")])
        .max_age(Duration::from_secs(24 * 3600)))
}

/// Records the workspace id on the current RPC span.
fn record_workspace_id(workspace_id: &str) {
    Span::current().record("workspace_id", workspace_id);
}
