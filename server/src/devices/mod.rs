//! The host's CDI (Container Device Interface) devices: the spec files of the configured
//! directories, read and checked one by one with the CNCF `container-device-interface` crate,
//! and the container edits of chosen devices (device nodes with their cgroup rules, env, mounts,
//! hooks) applied to a workspace's OCI runtime spec.
//!
//! berth reads each spec file itself instead of letting the crate's cache scan the directories:
//! that cache drops every device when one file is malformed, and its error names no file. Here a
//! malformed file costs only its own devices and is reported by path (a log line and
//! ListDevices).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use container_device_interface as cdi;
use oci_spec::runtime::Spec;
use tracing::warn;

use crate::error::{Error, Reason, Result};

/// Where CDI spec files live when no `--cdi-spec-dir` is given: static specs an operator
/// installs, then specs a driver generates at boot (the later directory wins on a name both
/// define), as the CDI specification and container runtimes use them.
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// How many offered devices an error message names before it refers to ListDevices.
const MAX_DEVICES_IN_MESSAGE: usize = 32;

/// The longest spec file error kept; a schema error can quote much of a file.
const MAX_ERROR_CHARS: usize = 1000;

/// One CDI device the host offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The fully qualified name, `VENDOR/CLASS=NAME` (e.g. `nvidia.com/gpu=0`).
    pub name: String,
    /// e.g. `nvidia.com`.
    pub vendor: String,
    /// e.g. `gpu`.
    pub class: String,
    /// The spec file that defines it.
    pub spec_path: PathBuf,
}

/// A spec file (or directory) berth could not use, entirely or in part.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecFileError {
    pub path: PathBuf,
    pub error: String,
}

/// What the spec directories held at one scan.
pub struct Catalog {
    /// Every usable device, by name.
    pub devices: Vec<DeviceInfo>,
    /// Files that failed (malformed, unreadable) and devices two files of one directory define.
    pub spec_file_errors: Vec<SpecFileError>,
    /// The directories read, in increasing priority.
    pub spec_dirs: Vec<PathBuf>,
    usable: BTreeMap<String, cdi::device::Device>,
}

/// The spec directories of this host; every call reads them afresh, so a spec installed or fixed
/// while berth runs counts at once (a scan takes a few milliseconds).
#[derive(Debug)]
pub struct Devices {
    spec_dirs: Vec<PathBuf>,
    /// The spec file errors logged so far, so a broken file is logged when it breaks, not at
    /// every scan.
    logged_errors: Mutex<BTreeSet<SpecFileError>>,
}

impl Devices {
    /// Devices from `spec_dirs`, in increasing priority.
    pub fn new(spec_dirs: Vec<PathBuf>) -> Self {
        Self { spec_dirs, logged_errors: Mutex::new(BTreeSet::new()) }
    }

    /// The spec directories, in increasing priority.
    pub fn spec_dirs(&self) -> &[PathBuf] {
        &self.spec_dirs
    }

    /// Reads the spec directories (off the async runtime: schema validation of every file);
    /// logs spec file errors not logged before.
    pub async fn catalog(&self) -> Result<Catalog> {
        let spec_dirs = self.spec_dirs.clone();
        let catalog = tokio::task::spawn_blocking(move || Catalog::scan(&spec_dirs))
            .await
            .map_err(|err| Error::internal(format!("the CDI spec scan panicked: {err}")))?;
        self.log_new_errors(&catalog.spec_file_errors);
        Ok(catalog)
    }

    /// Checks that every name (normalized, see `workspace::validate`) resolves to a device of
    /// this host whose edits apply; otherwise NOT_FOUND / CDI_DEVICE_NOT_FOUND naming each
    /// unresolvable device and the devices that exist.
    pub async fn check(&self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let catalog = self.catalog().await?;
        let names = names.to_vec();
        tokio::task::spawn_blocking(move || catalog.check(&names))
            .await
            .map_err(|err| Error::internal(format!("the CDI device check panicked: {err}")))?
    }

    /// Applies the container edits of `names` to `spec` (none: `spec` unchanged).
    pub async fn inject(&self, spec: Spec, names: &[String]) -> Result<Spec> {
        if names.is_empty() {
            return Ok(spec);
        }
        let catalog = self.catalog().await?;
        let names = names.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut spec = spec;
            catalog.apply(&mut spec, &names).map(|()| spec)
        })
        .await
        .map_err(|err| Error::internal(format!("applying CDI devices panicked: {err}")))?
    }

    fn log_new_errors(&self, errors: &[SpecFileError]) {
        let current: BTreeSet<SpecFileError> = errors.iter().cloned().collect();
        let mut logged = self.logged_errors.lock().expect("logged CDI errors");
        for error in current.difference(&logged) {
            warn!(path = %error.path.display(), error = %error.error, "CDI spec file skipped; its devices are not offered");
        }
        // A file fixed and broken again is logged again.
        *logged = current;
    }
}

impl Catalog {
    /// Reads the spec files directly in each directory (`.json` and `.yaml`, in name order,
    /// like the Go implementation: subdirectories are not scanned). A missing directory holds
    /// no devices. On a name defined in several directories the later directory wins; two files
    /// of one directory defining it make it unusable (and both are reported).
    pub fn scan(spec_dirs: &[PathBuf]) -> Self {
        let mut errors = Vec::new();
        // Name → (priority, file, device) of each definition seen.
        let mut definitions: BTreeMap<String, Vec<(usize, PathBuf, cdi::device::Device)>> = BTreeMap::new();
        for (priority, dir) in spec_dirs.iter().enumerate() {
            for path in spec_files(dir, &mut errors) {
                let spec = match cdi::spec::read_spec(&path, i32::try_from(priority).unwrap_or(i32::MAX)) {
                    Ok(spec) => spec,
                    Err(err) => {
                        errors.push(SpecFileError { path, error: bounded(format!("{err:#}")) });
                        continue;
                    }
                };
                for device in spec.get_devices().into_values() {
                    definitions.entry(device.get_qualified_name()).or_default().push((priority, path.clone(), device));
                }
            }
        }
        let mut devices = Vec::new();
        let mut usable = BTreeMap::new();
        for (name, mut found) in definitions {
            let top = found.iter().map(|(priority, _, _)| *priority).max().unwrap_or_default();
            found.retain(|(priority, _, _)| *priority == top);
            if found.len() > 1 {
                let paths: Vec<String> = found.iter().map(|(_, path, _)| path.display().to_string()).collect();
                for (_, path, _) in &found {
                    errors.push(SpecFileError {
                        path: path.clone(),
                        error: format!(
                            "device {name} is defined in {} files of one directory ({}); neither is offered until one is removed",
                            found.len(),
                            paths.join(", ")
                        ),
                    });
                }
                continue;
            }
            let Some((_, path, device)) = found.pop() else { continue };
            let spec = device.get_spec();
            devices.push(DeviceInfo {
                name: name.clone(),
                vendor: spec.get_vendor(),
                class: spec.get_class(),
                spec_path: path,
            });
            usable.insert(name, device);
        }
        errors.sort();
        Self { devices, spec_file_errors: errors, spec_dirs: spec_dirs.to_vec(), usable }
    }

    /// Checks that every name resolves and that the devices' edits apply (to an empty spec: a
    /// device node missing on the host fails here, before anything is made).
    pub fn check(&self, names: &[String]) -> Result<()> {
        self.apply(&mut Spec::default(), names)
    }

    /// Applies the edits of `names` to `spec`: each spec file's own edits once, then each
    /// device's, as `Cache::inject_devices` does (with the whole cause in the error).
    pub fn apply(&self, spec: &mut Spec, names: &[String]) -> Result<()> {
        let unresolved: Vec<&String> = names.iter().filter(|name| !self.usable.contains_key(*name)).collect();
        if !unresolved.is_empty() {
            return Err(self.not_found(&unresolved));
        }
        let mut edits = cdi::container_edits::ContainerEdits::new();
        let mut specs_seen = HashSet::new();
        let cannot_attach = |err: anyhow::Error| {
            Error::new(
                Reason::CdiDeviceNotFound,
                format!(
                    "CDI devices {} are in this host's specs but cannot be attached: {err:#}; check that the host device nodes and files their specs name exist",
                    names.join(", ")
                ),
            )
            .with_metadata("unresolvable_devices", names.join(","))
        };
        for name in names {
            let device = &self.usable[name];
            let mut device_spec = device.get_spec();
            if specs_seen.insert(device_spec.get_path())
                && let Some(spec_edits) = device_spec.edits()
            {
                edits.append(spec_edits).map_err(cannot_attach)?;
            }
            edits.append(device.edits()).map_err(cannot_attach)?;
        }
        edits.apply(spec).map_err(cannot_attach)
    }

    /// NOT_FOUND naming every unresolvable device, the devices that exist and the spec files
    /// that failed.
    fn not_found(&self, unresolved: &[&String]) -> Error {
        let described: Vec<String> = unresolved
            .iter()
            .map(|name| {
                if is_qualified(name) {
                    format!("{name:?}")
                } else {
                    format!("{name:?} (not a qualified name VENDOR/CLASS=NAME, such as nvidia.com/gpu=0)")
                }
            })
            .collect();
        let dirs = self.spec_dirs.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(", ");
        let mut message = format!("CDI devices {} do not resolve to a device of this host; ", described.join(", "));
        if self.devices.is_empty() {
            message.push_str(&format!(
                "it offers none (no usable spec file in {dirs}); install the device vendor's CDI spec there"
            ));
        } else {
            let offered: Vec<&str> =
                self.devices.iter().take(MAX_DEVICES_IN_MESSAGE).map(|device| device.name.as_str()).collect();
            let more = self.devices.len().saturating_sub(MAX_DEVICES_IN_MESSAGE);
            let more = if more > 0 { format!(" and {more} more (ListDevices lists them all)") } else { String::new() };
            message.push_str(&format!(
                "the devices it offers are {}{more}; use one of them, or install the missing device's CDI spec in {dirs}",
                offered.join(", ")
            ));
        }
        if !self.spec_file_errors.is_empty() {
            let mut paths: Vec<String> =
                self.spec_file_errors.iter().map(|error| error.path.display().to_string()).collect();
            paths.dedup();
            message.push_str(&format!(
                "; these spec files could not be used (ListDevices says why): {}",
                paths.join(", ")
            ));
        }
        let names: Vec<&str> = unresolved.iter().map(|name| name.as_str()).collect();
        Error::new(Reason::CdiDeviceNotFound, message).with_metadata("unresolvable_devices", names.join(","))
    }
}

/// The spec files directly in `dir`, by name; an unreadable directory is reported, a missing
/// one holds none.
fn spec_files(dir: &Path, errors: &mut Vec<SpecFileError>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(err) => {
            errors.push(SpecFileError { path: dir.to_path_buf(), error: format!("cannot read the directory: {err}") });
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| cdi::utils::is_cdi_spec(path))
        // Follows symlinks, as CDI spec directories often link to a driver's files.
        .filter(|path| std::fs::metadata(path).is_ok_and(|meta| meta.is_file()))
        .collect();
    files.sort();
    files
}

/// Whether `name` has the shape `VENDOR/CLASS=NAME` (the parts' characters are the spec's
/// business: such a name simply does not resolve).
fn is_qualified(name: &str) -> bool {
    let Some((kind, device)) = name.split_once('=') else { return false };
    let Some((vendor, class)) = kind.split_once('/') else { return false };
    !vendor.is_empty() && !class.is_empty() && !device.is_empty() && !class.contains('/')
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_ERROR_CHARS {
        let mut end = MAX_ERROR_CHARS;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
