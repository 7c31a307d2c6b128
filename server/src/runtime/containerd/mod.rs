//! The containerd implementation of [`Runtime`](super::Runtime), over containerd's gRPC API.

mod client;
mod container;
mod content;
mod events;
mod exec;
mod metrics;
pub mod pull;
mod registry;
mod sandbox;
mod snapshots;
mod spec;
mod unpack;
mod update;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

pub use self::client::Namespace;
pub use self::container::RUNTIME_NAME;
pub use self::pull::RegistryOptions;
use crate::error::{Error, Reason, Result};

/// The snapshotter every workspace uses.
pub const SNAPSHOTTER: &str = "overlayfs";

/// How long a health ping may take before containerd counts as "not answering".
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Where catatonit is looked for when it is not on PATH.
const INIT_CANDIDATES: [&str; 3] =
    ["/usr/bin/catatonit", "/usr/libexec/catatonit/catatonit", "/usr/local/bin/catatonit"];

/// A containerd client bound to one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
    namespace: Namespace,
    init_binary: PathBuf,
    /// berth-agent, next to berth's own executable; None runs every process through exec.
    agent_binary: Option<PathBuf>,
    puller: pull::Puller,
    /// Seccomp, AppArmor and masked paths of every workspace on this host.
    confinement: Arc<sandbox::Confinement>,
    /// The host's CDI devices, whose edits a container's spec gets.
    devices: Arc<crate::devices::Devices>,
}

impl Containerd {
    /// Creates a client for the socket. The connection is lazy and re-established after
    /// containerd restarts, so a missing socket shows up on the first call, not here.
    ///
    /// Also decides the confinement of this host's workspaces, applying `apparmor_profile` where
    /// the host has AppArmor and the profile is loaded, and takes CDI devices from `devices`.
    pub fn new(
        socket: &Path,
        namespace: Namespace,
        registry: RegistryOptions,
        apparmor_profile: &str,
        devices: Arc<crate::devices::Devices>,
    ) -> Result<Self> {
        let confinement = Arc::new(sandbox::detect(apparmor_profile));
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector dials the unix socket.
        let channel = Endpoint::from_static("http://containerd.invalid")
            .connect_timeout(PING_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }));
        let puller = pull::Puller::new(channel.clone(), socket.to_path_buf(), namespace.clone(), registry)?;
        Ok(Self {
            channel,
            socket: socket.to_path_buf(),
            namespace,
            init_binary: find_init()?,
            agent_binary: find_agent(),
            puller,
            confinement,
            devices,
        })
    }

    fn map_status(&self, what: &str, status: tonic::Status) -> Error {
        client::map_status(&self.socket, what, status)
    }
}

/// Finds berth-agent next to berth's executable (where `make build` and the install put it).
fn find_agent() -> Option<PathBuf> {
    let agent = std::env::current_exe().ok()?.with_file_name("berth-agent");
    if agent.is_file() {
        return Some(agent);
    }
    tracing::warn!(
        path = %agent.display(),
        "berth-agent is not installed next to berth: processes start through containerd exec (~50 ms each, \
         output through the shim); build it with scripts/build-agent.sh"
    );
    None
}

/// Finds the host's catatonit, which every workspace runs as PID 1.
fn find_init() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("catatonit")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(INIT_CANDIDATES.iter().map(PathBuf::from))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            Error::new(
                Reason::RuntimeError,
                "catatonit is not installed; berth runs it as PID 1 of every workspace: apt-get install catatonit",
            )
        })
}
