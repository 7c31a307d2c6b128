//! The containerd implementation of [`Runtime`](super::Runtime), over containerd's gRPC API.

mod client;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1::version_client::VersionClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// How long a single containerd call may take before it counts as "not answering".
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A containerd client bound to one namespace.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
}

impl Containerd {
    /// Creates a client for the socket. The connection is lazy and re-established after
    /// containerd restarts, so a missing socket shows up on the first call, not here.
    pub fn new(socket: &Path, namespace: &str) -> Self {
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector dials the unix socket.
        let channel = Endpoint::from_static("http://containerd.invalid")
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }));
        Self { channel, socket: socket.to_path_buf(), namespace: namespace.to_owned() }
    }

    /// The namespace the workspaces live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn map_status(&self, what: &str, status: tonic::Status) -> Error {
        client::map_status(&self.socket, what, status)
    }
}

#[async_trait]
impl super::Runtime for Containerd {
    async fn ping(&self) -> Result<String> {
        let mut client = VersionClient::new(self.channel.clone());
        let response = client.version(()).await.map_err(|status| self.map_status("version", status))?;
        Ok(response.into_inner().version)
    }
}
