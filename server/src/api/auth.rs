//! The authentication layer: every call but health and reflection must carry a token of the
//! tokens file (unless `--auth none`). The caller's [`Principal`] and the [`Access`] its method
//! needs travel to the handler as a [`Grant`] in the request's extensions; the handler checks
//! the workspace (`authorize.rs`).
//!
//! It sits inside the grpc-web layer, so browsers' calls arrive here as gRPC with the same
//! `authorization` header, and inside the request log, so refused calls are logged with their
//! code like any other.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf as _;

use futures::future::Either;
use tonic::Status;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use crate::auth::{Access, Authenticator, Principal, Rejection};
use crate::error::{Error, Reason};

/// What an authenticated call carries to its handler.
#[derive(Clone, Debug)]
pub struct Grant {
    pub principal: Arc<Principal>,
    /// What the method needs on the workspaces it touches.
    pub access: Access,
    /// The method's name (`WorkspaceService/GetWorkspace`), for messages and logs.
    pub method: &'static str,
}

/// Services anyone may call: health (load balancers, orchestrators) and reflection (it
/// describes the API, which is public anyway).
const OPEN_SERVICES: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// The access every method of berth's services needs. A unit test holds this list against the
/// service descriptors, so a new RPC cannot be served without an entry.
pub(super) const METHODS: &[(&str, Access)] = &[
    ("WorkspaceService/CreateWorkspace", Access::Write),
    ("WorkspaceService/GetWorkspace", Access::Read),
    ("WorkspaceService/ListWorkspaces", Access::Read),
    ("WorkspaceService/StartWorkspace", Access::Write),
    ("WorkspaceService/StopWorkspace", Access::Write),
    ("WorkspaceService/DeleteWorkspace", Access::Write),
    ("WorkspaceService/RestoreData", Access::Write),
    ("WorkspaceService/ResetData", Access::Write),
    ("WorkspaceService/UpdateWorkspace", Access::Write),
    ("WorkspaceService/GetMetrics", Access::Read),
    ("WorkspaceService/WatchMetrics", Access::Read),
    ("WorkspaceService/CreateSnapshot", Access::Write),
    ("WorkspaceService/ListSnapshots", Access::Read),
    ("WorkspaceService/DeleteSnapshot", Access::Write),
    ("WorkspaceService/RestoreSnapshot", Access::Write),
    ("WorkspaceService/ListVersions", Access::Read),
    ("WorkspaceService/ExportData", Access::Read),
    ("WorkspaceService/ImportData", Access::Write),
    ("WorkspaceService/ImportDataChunk", Access::Write),
    ("WorkspaceService/WatchEvents", Access::Read),
    // The host's device catalog: any valid token (creating with devices needs their names).
    ("WorkspaceService/ListDevices", Access::Read),
    ("FilesystemService/Stat", Access::Read),
    ("FilesystemService/ListDir", Access::Read),
    ("FilesystemService/ReadFile", Access::Read),
    ("FilesystemService/WriteFile", Access::Write),
    ("FilesystemService/WriteFileChunk", Access::Write),
    ("FilesystemService/MakeDir", Access::Write),
    ("FilesystemService/Remove", Access::Write),
    ("FilesystemService/Move", Access::Write),
    ("FilesystemService/WatchDir", Access::Read),
    ("ProcessService/Start", Access::Write),
    // Attaching to a process's output only watches it (its input needs SendInput).
    ("ProcessService/Connect", Access::Read),
    ("ProcessService/SendInput", Access::Write),
    ("ProcessService/StreamInput", Access::Write),
    ("ProcessService/CloseStdin", Access::Write),
    ("ProcessService/SendSignal", Access::Write),
    ("ProcessService/ResizePty", Access::Write),
    ("ProcessService/List", Access::Read),
];

/// What a refused call's request body is read of before the answer, at most: an HTTP/1.1 client
/// (grpc-web) still sending it would otherwise get a broken pipe instead of the answer.
const DRAIN_LIMIT_BYTES: usize = 1 << 20;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The package prefix of berth's service paths.
const PACKAGE_PREFIX: &str = "/berth.workspace.v1.";

static BY_PATH: LazyLock<HashMap<String, (&'static str, Access)>> = LazyLock::new(|| {
    METHODS.iter().map(|(name, access)| (format!("{PACKAGE_PREFIX}{name}"), (*name, *access))).collect()
});

/// The method name and access of a request path; an unknown path needs write access (tonic
/// then answers UNIMPLEMENTED to whoever holds a valid token).
fn method_of(path: &str) -> (&'static str, Access) {
    BY_PATH.get(path).copied().unwrap_or(("(unknown method)", Access::Write))
}

/// The layer.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// Authenticates calls with `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate { inner, authenticator: self.authenticator.clone() }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

type Refusal<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authenticate<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Send + 'static,
    ReqBody: http_body::Body + Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Refusal<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if OPEN_SERVICES.iter().any(|prefix| path.starts_with(prefix)) {
            return Either::Left(self.inner.call(request));
        }
        let (method, access) = method_of(path);
        let mut values = request.headers().get_all(http::header::AUTHORIZATION).iter();
        let authorization = match (values.next(), values.next()) {
            (None, _) => None,
            // Two tokens, or one that is not text, are malformed (the empty value is).
            (Some(value), None) => Some(value.to_str().unwrap_or_default()),
            (Some(_), Some(_)) => Some(""),
        };
        let peer = request.extensions().get::<TcpConnectInfo>().and_then(|info| info.remote_addr);
        match self.authenticator.authenticate(authorization, peer, method) {
            Ok(principal) => {
                request.extensions_mut().insert(Grant { principal, access, method });
                Either::Left(self.inner.call(request))
            }
            Err(rejection) => {
                let response = Status::from(refusal(&rejection)).into_http();
                let body = request.into_body();
                Either::Right(Box::pin(async move {
                    drain(body).await;
                    Ok(response)
                }))
            }
        }
    }
}

/// Reads and drops (a bounded part of) a request body.
async fn drain<B: http_body::Body>(body: B) {
    let mut body = std::pin::pin!(body);
    let mut read = 0;
    let reading = async {
        while read < DRAIN_LIMIT_BYTES {
            match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.remaining()),
                Some(Err(_)) | None => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, reading).await;
}

fn refusal(rejection: &Rejection) -> Error {
    let reason = match rejection {
        Rejection::TooManyFailures { .. } => Reason::ResourceLimitExceeded,
        Rejection::Missing | Rejection::Malformed | Rejection::Unknown => Reason::Unauthenticated,
    };
    Error::new(reason, rejection.message())
}

/// The grant of a request that passed the layer. Its absence means the layer was not wired,
/// which must refuse rather than allow.
pub(super) fn grant<T>(request: &tonic::Request<T>) -> Result<Grant, Error> {
    request
        .extensions()
        .get::<Grant>()
        .cloned()
        .ok_or_else(|| Error::internal("the call reached its handler without passing authentication"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of the three services, from the descriptor set berth serves for reflection.
    fn described_methods() -> Vec<String> {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(berth_api::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = Vec::new();
        for file in set.file.iter().filter(|file| file.package() == "berth.workspace.v1") {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!("{}/{}", service.name(), method.name()));
                }
            }
        }
        methods
    }

    #[test]
    fn every_described_method_has_an_access_and_every_entry_is_a_method() {
        let described = described_methods();
        assert!(described.len() > 30, "{described:?}");
        for method in &described {
            assert!(BY_PATH.contains_key(&format!("{PACKAGE_PREFIX}{method}")), "{method} has no entry in METHODS");
        }
        for (name, _) in METHODS {
            assert!(described.iter().any(|method| method == name), "{name} is in METHODS but not in the protos");
        }
    }

    #[test]
    fn unknown_paths_need_write_access() {
        assert_eq!(
            method_of("/berth.workspace.v1.WorkspaceService/GetWorkspace"),
            ("WorkspaceService/GetWorkspace", Access::Read)
        );
        assert_eq!(method_of("/berth.workspace.v1.WorkspaceService/NoSuchThing").1, Access::Write);
        assert_eq!(method_of("/other.Service/GetWorkspace").1, Access::Write);
    }

    #[test]
    fn refusals_map_to_unauthenticated_and_resource_exhausted() {
        use tonic_types::StatusExt as _;
        for rejection in [Rejection::Missing, Rejection::Malformed, Rejection::Unknown] {
            let status = Status::from(refusal(&rejection));
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert_eq!(status.get_details_error_info().unwrap().reason, "UNAUTHENTICATED");
        }
        let status =
            Status::from(refusal(&Rejection::TooManyFailures { retry_after: std::time::Duration::from_secs(30) }));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("30 s"), "{}", status.message());
    }
}
