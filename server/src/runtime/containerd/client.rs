//! Small helpers shared by every containerd call: namespace and lease headers, status mapping.

use std::path::Path;

use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::error::{Error, Reason};

/// Wraps `message` in a request carrying the `containerd-namespace` header.
pub fn request<T>(namespace: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(namespace).expect("namespace is a valid header value");
    request.metadata_mut().insert("containerd-namespace", value);
    request
}

/// Like [`request`], also carrying the `containerd-lease` header so what the call creates is
/// protected from GC until the lease ends.
pub fn leased_request<T>(namespace: &str, lease: &str, message: T) -> Request<T> {
    let mut request = request(namespace, message);
    let value = MetadataValue::try_from(lease).expect("lease id is a valid header value");
    request.metadata_mut().insert("containerd-lease", value);
    request
}

/// Maps a containerd status to a domain error; `what` says which operation failed.
pub fn map_status(socket: &Path, what: &str, status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Error::new(
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
