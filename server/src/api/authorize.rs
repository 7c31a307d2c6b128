//! The per-RPC half of the check: once a handler knows which workspace a call is about, the
//! token's scope must hold it. A workspace outside the scope and one that does not exist
//! answer with the same PERMISSION_DENIED (message included), so a scoped token learns nothing
//! about other workspaces; only ids its scope lists can answer NOT_FOUND.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use berth_api::v1 as pb;
use futures::StreamExt as _;
use tracing::warn;

use super::auth::Grant;
use super::workspace::ResponseStream;
use crate::auth::{Access, Scope};
use crate::error::{Error, Reason, Result};
use crate::workspace::{Manager, WorkspaceList};

/// Workspaces whose visibility a WatchEvents stream remembers, for events of workspaces that
/// are gone (a `deleted` event comes after the record): beyond this the memory starts over.
const REMEMBERED_WORKSPACES: usize = 10_000;

/// Checks calls against their token's scope, reading workspaces' labels from the Manager for
/// scopes that select by labels.
#[derive(Clone)]
pub struct Authorizer {
    manager: Arc<Manager>,
}

impl Authorizer {
    /// Checks against the workspaces `manager` holds.
    pub fn new(manager: Arc<Manager>) -> Self {
        Self { manager }
    }

    /// Allows the call on `workspace_id` when the token's access and scope hold it.
    pub async fn workspace(&self, grant: &Grant, workspace_id: &str) -> Result<()> {
        let scope = &grant.principal.scope;
        check_access(grant)?;
        if scope.holds_id(workspace_id) {
            return Ok(());
        }
        if !scope.selects_by_labels() {
            return Err(outside_scope(grant, workspace_id));
        }
        let labels = self.manager.labels(workspace_id).await?;
        if scope.holds(workspace_id, labels.as_ref()) { Ok(()) } else { Err(outside_scope(grant, workspace_id)) }
    }

    /// CreateWorkspace: a write token may create a workspace its scope will hold (an id it
    /// lists, or labels carrying its selector); an id taken by a workspace outside the scope is
    /// refused like any workspace outside it.
    pub async fn create(&self, grant: &Grant, workspace_id: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let scope = &grant.principal.scope;
        check_access(grant)?;
        if scope.holds_id(workspace_id) {
            return Ok(());
        }
        if !scope.holds(workspace_id, Some(labels)) {
            return Err(outside_scope(grant, workspace_id));
        }
        match self.manager.labels(workspace_id).await? {
            Some(existing) if !scope.holds(workspace_id, Some(&existing)) => Err(outside_scope(grant, workspace_id)),
            _ => Ok(()),
        }
    }

    /// UpdateWorkspace replacing the labels: the workspace must stay inside the token's scope
    /// (a label-scoped token cannot give its workspaces away, or take others in by labels).
    pub fn keeps_in_scope(&self, grant: &Grant, workspace_id: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        if grant.principal.scope.holds(workspace_id, Some(labels)) {
            return Ok(());
        }
        Err(outside_scope(grant, workspace_id))
    }

    /// What only an admin token may do to a workspace its token may otherwise change: lifting
    /// the egress policy an operator set would let a bot holding a write token for its own
    /// workspace out of it.
    pub fn admin_only(&self, grant: &Grant, what: &str) -> Result<()> {
        if grant.principal.scope == Scope::Admin {
            return Ok(());
        }
        warn!(token = %grant.principal.name, method = grant.method, what, "call refused: it needs an admin token");
        Err(Error::new(
            Reason::PermissionDenied,
            format!("{what} needs an admin token; token {:?} is scoped to workspaces", grant.principal.name),
        ))
    }

    /// ListWorkspaces: the page holds only workspaces the token may read.
    pub async fn list(&self, grant: &Grant, request: &pb::ListWorkspacesRequest) -> Result<WorkspaceList> {
        let scope = &grant.principal.scope;
        if *scope == Scope::Admin {
            return self.manager.list(request.page_size, &request.page_token, &request.label_selector).await;
        }
        self.manager
            .list_where(request.page_size, &request.page_token, &request.label_selector, |id, labels| {
                scope.holds(id, Some(labels))
            })
            .await
    }

    /// WatchEvents: only events of workspaces the token may read (heartbeats always).
    pub fn filter_events(
        &self,
        grant: &Grant,
        events: ResponseStream<pb::WatchEventsResponse>,
    ) -> ResponseStream<pb::WatchEventsResponse> {
        let scope = grant.principal.scope.clone();
        if scope == Scope::Admin {
            return events;
        }
        let manager = self.manager.clone();
        let remembered: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
        Box::pin(events.filter_map(move |item| {
            let manager = manager.clone();
            let scope = scope.clone();
            let remembered = remembered.clone();
            async move {
                let workspace_id = match &item {
                    Ok(pb::WatchEventsResponse { event: Some(event) }) if !event.workspace_id.is_empty() => {
                        event.workspace_id.clone()
                    }
                    _ => return Some(item),
                };
                let visible = visible(&manager, &scope, &workspace_id, &remembered).await;
                visible.then_some(item)
            }
        }))
    }
}

/// Whether `scope` holds the workspace now; for one that is gone, whether it did when this
/// stream last saw it.
async fn visible(
    manager: &Manager,
    scope: &Scope,
    workspace_id: &str,
    remembered: &Mutex<HashMap<String, bool>>,
) -> bool {
    if scope.holds_id(workspace_id) {
        return true;
    }
    if !scope.selects_by_labels() {
        return false;
    }
    match manager.labels(workspace_id).await {
        Ok(Some(labels)) => {
            let holds = scope.holds(workspace_id, Some(&labels));
            let mut remembered = remembered.lock().expect("visibility memory");
            if remembered.len() >= REMEMBERED_WORKSPACES {
                remembered.clear();
            }
            remembered.insert(workspace_id.to_owned(), holds);
            holds
        }
        Ok(None) => remembered.lock().expect("visibility memory").get(workspace_id).copied().unwrap_or(false),
        Err(err) => {
            warn!(workspace_id, error = %err, "cannot read a workspace's labels; its event is not sent to a label-scoped watcher");
            false
        }
    }
}

/// A read token calling a method that changes workspaces; the answer does not depend on the
/// workspace, so it reveals nothing about it.
fn check_access(grant: &Grant) -> Result<()> {
    if grant.principal.scope.grants(grant.access) {
        return Ok(());
    }
    warn!(token = %grant.principal.name, method = grant.method, "call refused: a read token called a method that changes workspaces");
    Err(Error::new(
        Reason::PermissionDenied,
        format!(
            "token {:?} may only read; {} changes workspaces; use a write token for it",
            grant.principal.name, grant.method
        ),
    ))
}

fn outside_scope(grant: &Grant, workspace_id: &str) -> Error {
    warn!(
        token = %grant.principal.name,
        method = grant.method,
        workspace_id,
        "call refused: the workspace is outside the token's scope or does not exist"
    );
    let verb = match grant.access {
        Access::Read => "read",
        Access::Write => "change",
    };
    Error::new(
        Reason::PermissionDenied,
        format!(
            "token {:?} may not {verb} workspace {workspace_id:?}: it is outside the token's scope or does not exist; use a token whose scope holds it",
            grant.principal.name
        ),
    )
    .with_metadata("workspace_id", workspace_id)
}
