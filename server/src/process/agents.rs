//! Which agent serves a workspace's processes. The first Start in a task starts one (a single
//! containerd exec, ~50 ms) unless one already listens, e.g. from before a berth restart; later
//! Starts reuse the connection. A container without an agent (created before berth had one, or
//! berth-agent missing) is remembered per task, so its Starts go straight to containerd exec.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::agent::AgentClient;
use crate::runtime::Runtime;

/// The host directory, below a workspace's own, shared with its agent.
pub const AGENT_DIR_NAME: &str = "agent";
/// How long a started agent may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(2);
const LISTEN_POLL: Duration = Duration::from_millis(2);

/// One workspace's agent, as berth knows it.
#[derive(Default)]
struct AgentSlot {
    client: Option<Arc<AgentClient>>,
    /// The task (by its init's host pid) that has no agent.
    unavailable_for: Option<u32>,
}

/// Every workspace's agent connection. Shared with the processes it serves, so that a process
/// whose connection broke finds the agent again through a new one.
pub(super) struct Agents {
    runtime: Arc<dyn Runtime>,
    /// `{state_dir}/workspaces`.
    workspaces_dir: PathBuf,
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<AgentSlot>>>>,
}

impl Agents {
    pub fn new(runtime: Arc<dyn Runtime>, workspaces_dir: PathBuf) -> Self {
        Self { runtime, workspaces_dir, slots: std::sync::Mutex::default() }
    }

    fn agent_dir(&self, workspace_id: &str) -> PathBuf {
        self.workspaces_dir.join(workspace_id).join(AGENT_DIR_NAME)
    }

    /// The workspace's agent. With `init_pid` (a Start in that running task) one is started when
    /// none listens; without, only a listening one is used (re-attaching after a restart, or
    /// after the connection broke).
    pub async fn get(&self, workspace_id: &str, init_pid: Option<u32>) -> Option<Arc<AgentClient>> {
        let slot = self.slots.lock().expect("agent slots").entry(workspace_id.to_owned()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(client) = slot.client.as_ref().filter(|client| client.is_usable()) {
            return Some(client.clone());
        }
        slot.client = None;
        if init_pid.is_some() && slot.unavailable_for == init_pid {
            return None;
        }
        let dir = self.agent_dir(workspace_id);
        if let Ok(client) = AgentClient::connect(&dir).await {
            slot.client = Some(client.clone());
            return Some(client);
        }
        let init_pid = init_pid?;
        if let Err(err) = self.runtime.start_agent(workspace_id).await {
            warn!(workspace_id, error = %err, "the workspace has no process agent; its processes start through containerd exec");
            slot.unavailable_for = Some(init_pid);
            return None;
        }
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        let client = loop {
            match AgentClient::connect(&dir).await {
                Ok(client) => break client,
                Err(err) if Instant::now() >= deadline => {
                    warn!(workspace_id, error = %err, "the started process agent does not answer; processes start through containerd exec");
                    slot.unavailable_for = Some(init_pid);
                    return None;
                }
                Err(_) => tokio::time::sleep(LISTEN_POLL).await,
            }
        };
        info!(workspace_id, "process agent started");
        slot.client = Some(client.clone());
        Some(client)
    }

    /// Forgets a deleted workspace's agent.
    pub fn forget(&self, workspace_id: &str) {
        self.slots.lock().expect("agent slots").remove(workspace_id);
    }
}
