//! Small helpers shared by every containerd call: namespace and lease headers, status mapping.

use std::path::Path;
use std::time::Duration;

use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::error::{Error, Reason};

/// The containerd namespace berth's calls address, with the deadline of its unary calls
/// (`--containerd-timeout`). containerd answers these in milliseconds; a call that hangs (a
/// wedged shim, a stuck snapshotter) must not wedge the workspace's lock forever, so it fails
/// with CONTAINERD_UNAVAILABLE instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub call_timeout: Duration,
}

impl Namespace {
    pub fn new(name: &str, call_timeout: Duration) -> Self {
        Self { name: name.to_owned(), call_timeout }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Wraps `message` in a request carrying the `containerd-namespace` header and the namespace's
/// call deadline (tonic enforces `grpc-timeout` on the client side too).
pub fn request<T>(namespace: &Namespace, message: T) -> Request<T> {
    request_within(namespace, message, namespace.call_timeout)
}

/// Like [`request`] with its own deadline, for calls whose work grows with their input (a layer
/// apply) or that wait on purpose (a task wait).
pub fn request_within<T>(namespace: &Namespace, message: T, deadline: Duration) -> Request<T> {
    let mut request = streaming_request(namespace, message);
    request.set_timeout(deadline);
    request
}

/// A request without a deadline, for streams whose length is the caller's to bound (content
/// reads and writes move whole layers and have their own progress checks).
pub fn streaming_request<T>(namespace: &Namespace, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(namespace.name.as_str()).expect("namespace is a valid header value");
    request.metadata_mut().insert("containerd-namespace", value);
    request
}

/// Like [`request_within`], also carrying the `containerd-lease` header so what the call creates
/// is protected from GC until the lease ends.
pub fn leased_request<T>(namespace: &Namespace, lease: &str, message: T, deadline: Duration) -> Request<T> {
    let mut request = request_within(namespace, message, deadline);
    let value = MetadataValue::try_from(lease).expect("lease id is a valid header value");
    request.metadata_mut().insert("containerd-lease", value);
    request
}

/// Maps a containerd status to a domain error; `what` says which operation failed.
pub fn map_status(socket: &Path, what: &str, status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Error::new(
            Reason::ContainerdUnavailable,
            format!(
                "containerd did not answer in time at {} ({what}: {}); check that containerd and its shims are healthy, then retry",
                socket.display(),
                status.message()
            ),
        ),
        tonic::Code::Unavailable => Error::new(
            Reason::ContainerdUnavailable,
            format!(
                "containerd is not answering at {} ({what}: {}); start containerd or fix --containerd-socket",
                socket.display(),
                status.message()
            ),
        ),
        _ => Error::new(Reason::RuntimeError, format!("containerd {what} failed: {}", status.message())),
    }
}
