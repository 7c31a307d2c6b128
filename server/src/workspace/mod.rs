//! The domain: the [`Manager`] orchestrates workspaces over the runtime and the store.

mod create;
mod devices;
#[cfg(test)]
mod devices_tests;
mod events;
mod files;
mod lifecycle;
mod locks;
mod manager;
mod metrics;
mod monitor;
mod operation;
mod processes;
mod reconcile;
mod selector;
mod snapshot;
#[cfg(test)]
mod tests;
mod update;
#[cfg(test)]
mod update_tests;
mod validate;

pub use create::{CreateEvent, CreateRequest, CreateStream};
pub use events::WatchItem;
pub use files::FileAccess;
pub use manager::{DEFAULT_STOP_TIMEOUT, Manager, ManagerConfig, WorkspaceList};
pub use metrics::{StorageUsage, TaskReading};
pub use monitor::RestartStatus;
pub use reconcile::ReconcileReport;
pub use snapshot::{RestoreTarget, Restored, SnapshotList, SnapshotOrigin, SnapshotView, VersionList};
pub use update::{Updated, WorkspaceUpdate};
pub use validate::RequestedPolicy;
