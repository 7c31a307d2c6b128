//! The Manager: the only owner of workspace state transitions.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Reason, Result};
use crate::model::{WorkspaceId, WorkspaceInfo, WorkspaceRecord};
use crate::runtime::Runtime;
use crate::store::Store;

use super::selector::{decode_page_token, encode_page_token, parse_label_selector};

/// Default and maximum page sizes of ListWorkspaces.
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 500;

/// Settings the Manager needs from the server configuration.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub namespace: String,
    pub state_dir: PathBuf,
    pub default_image: String,
}

/// One page of ListWorkspaces.
#[derive(Debug)]
pub struct WorkspaceList {
    pub workspaces: Vec<WorkspaceInfo>,
    pub next_page_token: String,
}

/// Orchestrates workspaces over the runtime and the store.
pub struct Manager {
    config: ManagerConfig,
    store: Store,
    runtime: Arc<dyn Runtime>,
}

impl Manager {
    /// Creates a Manager over an opened store and a runtime.
    pub fn new(config: ManagerConfig, store: Store, runtime: Arc<dyn Runtime>) -> Self {
        Self { config, store, runtime }
    }

    /// Checks that the runtime answers; returns its version.
    pub async fn check_runtime(&self) -> Result<String> {
        self.runtime.ping().await
    }

    /// The workspace with this id.
    pub async fn get(&self, workspace_id: &str) -> Result<WorkspaceInfo> {
        let id = WorkspaceId::parse(workspace_id)?;
        let record = self.store.get_workspace(&id).await?.ok_or_else(|| Error::workspace_not_found(id.as_str()))?;
        Ok(self.info(record))
    }

    /// A page of workspaces in id order, filtered by a `k=v,...` label selector.
    pub async fn list(&self, page_size: i32, page_token: &str, label_selector: &str) -> Result<WorkspaceList> {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size < 0 => {
                return Err(Error::new(
                    Reason::InvalidArgument,
                    format!(
                        "page_size {size} is negative; pass 0 for the default of {DEFAULT_PAGE_SIZE} or up to {MAX_PAGE_SIZE}"
                    ),
                ));
            }
            size => (size as u32).min(MAX_PAGE_SIZE),
        };
        let after = decode_page_token(page_token)?;
        let selector = parse_label_selector(label_selector)?;
        let page = self.store.list_workspaces(after.as_deref(), limit, &selector).await?;
        Ok(WorkspaceList {
            workspaces: page.workspaces.into_iter().map(|record| self.info(record)).collect(),
            next_page_token: page.next_after.as_deref().map(encode_page_token).unwrap_or_default(),
        })
    }

    fn info(&self, record: WorkspaceRecord) -> WorkspaceInfo {
        let has_preserved_data = self.preserved_archive(&record.id).exists();
        WorkspaceInfo {
            record,
            namespace: self.config.namespace.clone(),
            snapshotter: "overlayfs".to_owned(),
            runtime: "io.containerd.runc.v2".to_owned(),
            init_pid: 0,
            process_count: 0,
            has_preserved_data,
        }
    }

    /// Where DeleteWorkspace(preserve_data) keeps a workspace's /data archive.
    fn preserved_archive(&self, id: &WorkspaceId) -> PathBuf {
        self.config.state_dir.join("preserved").join(format!("{id}.tar.gz"))
    }
}
