//! The domain: the [`Manager`] orchestrates workspaces over the runtime and the store.

mod manager;
mod selector;

pub use manager::{Manager, ManagerConfig, WorkspaceList};
pub use selector::parse_label_selector;
