//! CDI devices from the Manager's side: what the host offers (ListDevices) and the check a
//! device list passes before a workspace is made or changed with it.

use super::manager::Manager;
use super::validate;
use crate::devices::Catalog;
use crate::error::Result;

impl Manager {
    /// The CDI devices this host offers and the spec files it could not use, read afresh.
    pub async fn list_devices(&self) -> Result<Catalog> {
        self.config.devices.catalog().await
    }

    /// Normalizes a device list (trimmed, sorted, deduplicated; INVALID_ARGUMENT for malformed
    /// names) and checks that every device resolves on this host and that its edits apply
    /// (NOT_FOUND / CDI_DEVICE_NOT_FOUND naming each unresolvable device and the devices that
    /// exist). Returns the list a workspace stores; nothing is changed.
    pub async fn resolve_devices(&self, names: &[String]) -> Result<Vec<String>> {
        let normalized = validate::normalized_devices(names)?;
        self.config.devices.check(&normalized).await?;
        Ok(normalized)
    }
}
