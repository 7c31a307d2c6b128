//! What a token may do: everything (`admin`), or read or write a set of workspaces named by id
//! or by a label selector.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The access a call needs on a workspace. Write includes read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Looking: Get, List, metrics, events, reading files, snapshots and versions, exports,
    /// attaching to a process's output.
    Read,
    /// Everything else: creating, changing, starting and stopping, deleting, writing files,
    /// running processes and sending them input.
    Write,
}

impl Access {
    /// `read` or `write`, as the tokens file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scope of one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every call on every workspace, and the host-wide ones.
    Admin,
    /// `access` on the workspaces whose id is listed or whose labels carry every pair of
    /// `labels` (an empty selector matches nothing: a scope names its workspaces).
    Workspaces { access: Access, ids: BTreeSet<String>, labels: BTreeMap<String, String> },
}

impl Scope {
    /// Whether the scope grants `needed` at all, on some workspace.
    pub fn grants(&self, needed: Access) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Workspaces { access, .. } => *access >= needed,
        }
    }

    /// Whether the id alone decides that the scope holds the workspace (admin, or a listed id).
    pub fn holds_id(&self, workspace_id: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Workspaces { ids, .. } => ids.contains(workspace_id),
        }
    }

    /// Whether deciding about a workspace whose id is not listed needs its labels.
    pub fn selects_by_labels(&self) -> bool {
        matches!(self, Scope::Workspaces { labels, .. } if !labels.is_empty())
    }

    /// Whether the scope holds a workspace with this id and these labels (`None`: the
    /// workspace does not exist, so only its id can put it in scope).
    pub fn holds(&self, workspace_id: &str, workspace_labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.holds_id(workspace_id) {
            return true;
        }
        match (self, workspace_labels) {
            (Scope::Workspaces { labels, .. }, Some(workspace_labels)) if !labels.is_empty() => {
                labels.iter().all(|(key, value)| workspace_labels.get(key) == Some(value))
            }
            _ => false,
        }
    }
}

/// A token's identity as a call carries it: its name (for logs and messages) and scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scope: Scope,
}

impl Principal {
    /// The caller when authentication is off (`--auth none`): everything is allowed.
    pub fn unauthenticated() -> Self {
        Self { name: "(auth off)".to_owned(), scope: Scope::Admin }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
    }

    fn scoped(access: Access, ids: &[&str], selector: &[(&str, &str)]) -> Scope {
        Scope::Workspaces { access, ids: ids.iter().map(|id| (*id).to_owned()).collect(), labels: labels(selector) }
    }

    #[test]
    fn write_includes_read_and_read_grants_no_write() {
        let read = scoped(Access::Read, &["a"], &[]);
        let write = scoped(Access::Write, &["a"], &[]);
        assert!(read.grants(Access::Read) && !read.grants(Access::Write));
        assert!(write.grants(Access::Read) && write.grants(Access::Write));
        assert!(Scope::Admin.grants(Access::Write));
    }

    #[test]
    fn ids_and_labels_each_put_a_workspace_in_scope() {
        let scope = scoped(Access::Read, &["bot-1"], &[("team", "red"), ("tier", "dev")]);
        assert!(scope.holds("bot-1", None), "a listed id needs no labels, existing or not");
        assert!(scope.holds("other", Some(&labels(&[("team", "red"), ("tier", "dev"), ("x", "y")]))));
        assert!(!scope.holds("other", Some(&labels(&[("team", "red")]))), "every pair must match");
        assert!(!scope.holds("other", Some(&labels(&[("team", "blue"), ("tier", "dev")]))));
        assert!(!scope.holds("other", None), "an unknown id is outside a label selector");
        assert!(scope.selects_by_labels());
        assert!(!scoped(Access::Read, &["bot-1"], &[]).selects_by_labels());
        assert!(!scoped(Access::Read, &[], &[]).holds("x", Some(&labels(&[]))), "an empty selector matches nothing");
        assert!(Scope::Admin.holds("anything", None));
    }
}
