//! Reads for scope checks of tokens: a workspace's labels, and ListWorkspaces restricted to
//! the workspaces a token may see.

use std::collections::BTreeMap;

use super::selector::encode_page_token;
use super::{Manager, WorkspaceList};
use crate::error::Result;
use crate::model::WorkspaceId;

impl Manager {
    /// The labels of the workspace with this id; `None` when there is none (or the id is not a
    /// valid one). One store read, no runtime call, and no wait for the boot reconcile: it
    /// decides who may ask, the call itself then waits as usual.
    pub async fn labels(&self, workspace_id: &str) -> Result<Option<BTreeMap<String, String>>> {
        let Ok(id) = WorkspaceId::parse(workspace_id) else {
            return Ok(None);
        };
        Ok(self.store.get_workspace(&id).await?.map(|record| record.spec.labels))
    }

    /// Like [`list`](Self::list), keeping only the workspaces `keep` accepts (by id and labels).
    /// Pages stay full: more are read until the page has its size or the workspaces end, and
    /// the page token continues after the last workspace returned.
    pub async fn list_where(
        &self,
        page_size: i32,
        page_token: &str,
        label_selector: &str,
        keep: impl Fn(&str, &BTreeMap<String, String>) -> bool,
    ) -> Result<WorkspaceList> {
        let first = self.list(page_size, page_token, label_selector).await?;
        // A first page followed by more has exactly the effective page size (the default for 0,
        // capped at the maximum).
        let wanted = first.workspaces.len();
        let mut next_page_token = first.next_page_token;
        let mut workspaces: Vec<_> = first
            .workspaces
            .into_iter()
            .filter(|info| keep(info.record.id.as_str(), &info.record.spec.labels))
            .collect();
        while workspaces.len() < wanted && !next_page_token.is_empty() {
            let page = self.list(wanted as i32, &next_page_token, label_selector).await?;
            next_page_token = page.next_page_token;
            for info in page.workspaces {
                if workspaces.len() == wanted {
                    // Workspaces read past a full page are read again by the next one.
                    let last = workspaces.last().map(|kept: &crate::model::WorkspaceInfo| kept.record.id.as_str());
                    next_page_token = last.map(encode_page_token).unwrap_or_default();
                    break;
                }
                if keep(info.record.id.as_str(), &info.record.spec.labels) {
                    workspaces.push(info);
                }
            }
        }
        Ok(WorkspaceList { workspaces, next_page_token })
    }
}
