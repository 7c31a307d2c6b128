//! The Manager's side of ProcessService: a process starts only in a running workspace (under the
//! workspace's lock, so it cannot race a stop), and a process that cannot be found is told apart
//! from a workspace that is missing or stopped.

use std::sync::Arc;

use super::manager::Manager;
use crate::error::{Error, Reason, Result};
use crate::model::WorkspaceId;
use crate::process::{Process, ProcessInfo, Selector, StartOptions, Subscription};

impl Manager {
    /// Starts a process in a running workspace; the subscription sees all its output. The start
    /// runs detached from the caller: one that goes away once the process runs would otherwise
    /// leave it without a reader (nobody would see its output or its end).
    pub async fn start_process(
        self: &Arc<Self>,
        workspace_id: &str,
        options: StartOptions,
    ) -> Result<(Arc<Process>, Subscription)> {
        let id = WorkspaceId::parse(workspace_id)?;
        let manager = self.clone();
        tokio::spawn(async move {
            let _guard = manager.lock(&id).await;
            let init_pid = manager.running_init_pid(&id).await?;
            manager.processes.start(id.as_str(), init_pid, options).await
        })
        .await
        .map_err(|err| Error::internal(format!("the process start worker failed: {err}")))?
    }

    /// The process `selector` names: a running one, or one that ended in the last minutes.
    pub async fn process(&self, workspace_id: &str, selector: &Selector) -> Result<Arc<Process>> {
        let id = WorkspaceId::parse(workspace_id)?;
        if let Some(process) = self.processes.find(id.as_str(), selector).await {
            return Ok(process);
        }
        self.running_init_pid(&id).await?;
        Err(Error::new(
            Reason::ProcessNotFound,
            format!(
                "workspace {id} has no process with {selector} started through berth (or it ended more than 5 minutes ago); \
                 list processes with List"
            ),
        ))
    }

    /// The workspace's running processes, oldest first.
    pub async fn list_processes(&self, workspace_id: &str) -> Result<Vec<ProcessInfo>> {
        let id = WorkspaceId::parse(workspace_id)?;
        self.running_init_pid(&id).await?;
        Ok(self.processes.list(id.as_str()).await)
    }

    /// The host pid of the workspace's PID 1, or WORKSPACE_NOT_FOUND / WORKSPACE_NOT_RUNNING.
    async fn running_init_pid(&self, id: &WorkspaceId) -> Result<u32> {
        self.record(id).await?;
        match self.runtime.task(id.as_str()).await? {
            Some(task) if task.running => Ok(task.pid),
            _ => Err(Error::new(
                Reason::WorkspaceNotRunning,
                format!("workspace {id} is not running; start it with StartWorkspace first"),
            )),
        }
    }
}
