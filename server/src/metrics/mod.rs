//! Metrics of workspaces behind GetMetrics and WatchMetrics: one shared sampler per workspace
//! ([`sampler`]), so any number of streams on a workspace cost the containerd calls of one, and
//! no request ever sleeps to measure CPU: percentages come from the difference of two successive
//! cgroup readings.

mod sample;
mod sampler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;

pub use sample::{CpuSample, Sample, memory_percent};
use sampler::Sampler;

use crate::error::{Error, Reason, Result};
use crate::model::WorkspaceId;
use crate::workspace::Manager;

/// The interval of a WatchMetrics stream that names none.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest interval a stream may ask for: a reading costs a containerd call (~1.5 ms).
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// The longest interval a stream may ask for.
pub const MAX_WATCH_INTERVAL: Duration = Duration::from_secs(3600);
/// GetMetrics answers from a reading at most this old; an older one is replaced by a fresh read.
const GET_MAX_AGE: Duration = Duration::from_secs(1);

/// The samplers of every workspace someone asked about.
pub struct Metrics {
    manager: Arc<Manager>,
    storage_interval: Duration,
    samplers: Mutex<HashMap<WorkspaceId, Arc<Sampler>>>,
}

impl Metrics {
    /// Metrics over the Manager's workspaces, measuring storage every `storage_interval`.
    pub fn new(manager: Arc<Manager>, storage_interval: Duration) -> Self {
        Self { manager, storage_interval, samplers: Mutex::new(HashMap::new()) }
    }

    /// The workspace's sampler; a deleted workspace's is replaced by a fresh one (the id may
    /// have been created again).
    fn sampler(&self, id: &WorkspaceId) -> Arc<Sampler> {
        let mut samplers = self.samplers.lock().expect("samplers");
        // Workspaces found deleted are dropped here, so the map holds at most the live ones.
        samplers.retain(|_, sampler| !sampler.is_gone());
        samplers
            .entry(id.clone())
            .or_insert_with(|| Sampler::new(id.clone(), self.manager.clone(), self.storage_interval))
            .clone()
    }

    /// One sample of a workspace: from its sampler's latest reading if it is at most a second
    /// old, otherwise from one fresh reading (its CPU percentage since the previous reading).
    pub async fn get(&self, workspace_id: &str) -> Result<Sample> {
        let id = WorkspaceId::parse(workspace_id)?;
        self.sampler(&id).get(GET_MAX_AGE).await
    }

    /// Streams samples of a workspace, one per `interval` (checked with
    /// [`check_watch_interval`]), until the stream is dropped; it ends with WORKSPACE_NOT_FOUND
    /// when the workspace is deleted, and with the error of a reading that fails.
    pub async fn watch(
        &self,
        workspace_id: &str,
        interval: Duration,
    ) -> Result<impl Stream<Item = Result<Sample>> + Send + use<>> {
        let id = WorkspaceId::parse(workspace_id)?;
        self.manager.ensure_exists(&id).await?;
        Ok(self.sampler(&id).watch(interval))
    }
}

/// The interval of a WatchMetrics stream: unset means 1 second; 100 milliseconds to 1 hour are
/// accepted.
pub fn check_watch_interval(interval: Option<Duration>) -> Result<Duration> {
    let Some(interval) = interval else {
        return Ok(DEFAULT_WATCH_INTERVAL);
    };
    if (MIN_WATCH_INTERVAL..=MAX_WATCH_INTERVAL).contains(&interval) {
        return Ok(interval);
    }
    Err(Error::new(
        Reason::InvalidArgument,
        format!("interval {interval:?} is out of range; pass 100ms to 1h, or leave it unset for 1s"),
    ))
}

#[cfg(test)]
mod tests;
