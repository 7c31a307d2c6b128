//! The container runtime seen by the domain: no tonic and no containerd types cross this trait.

pub mod containerd;

use async_trait::async_trait;

use crate::error::Result;

/// What the Manager needs from a container runtime.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Checks that the runtime answers and returns its version string.
    async fn ping(&self) -> Result<String>;
}
