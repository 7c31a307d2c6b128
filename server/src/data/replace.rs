//! RestoreData's swap of a whole /data, atomic whatever layer /data comes from.
//!
//! Through the merged overlay view, a /data that exists in an image layer (or was copied up from
//! one) cannot be renamed: overlayfs answers EXDEV. So the swap works on the stopped workspace's
//! writable layer itself (the overlay's upper directory, not mounted while the task is stopped):
//! the archive is extracted into a staging directory there, given /data's owner and mode and
//! marked opaque (so the image's /data content stays hidden below it), and exchanged with
//! `upper/data` in one `renameat2(RENAME_EXCHANGE)`. A failed extraction leaves /data untouched.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{Gid, Uid};
use rustix::fs::{RenameFlags, XattrFlags};

use super::fd::{self, Kind};
use super::mount::MountSpec;
use crate::error::{Error, Reason, Result};

/// The directories of a writable snapshot, from containerd's mounts for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritableLayer {
    /// Where the snapshot's own files live (the overlay upper dir, or the bind-mounted dir).
    pub upper: PathBuf,
    /// The read-only layers below, top first (empty for a bind mount).
    pub lowers: Vec<PathBuf>,
    /// The xattr that makes an upper directory opaque; None when the layer is not an overlay.
    opaque_xattr: Option<&'static str>,
}

impl WritableLayer {
    /// Reads the layer's directories from the snapshot's mounts.
    pub fn from_mounts(mounts: &[MountSpec]) -> Result<Self> {
        let unsupported = || {
            Error::internal(format!(
                "the workspace snapshot's mounts ({mounts:?}) are neither one overlay nor one bind mount; this is a bug in berth"
            ))
        };
        let [mount] = mounts else {
            return Err(unsupported());
        };
        let option = |key: &str| mount.options.iter().find_map(|option| option.strip_prefix(key));
        match mount.kind.as_str() {
            "overlay" => {
                let upper = option("upperdir=").ok_or_else(unsupported)?;
                let lowers = option("lowerdir=").map(|list| list.split(':').map(PathBuf::from).collect()).unwrap_or_default();
                let opaque_xattr = if mount.options.iter().any(|option| option == "userxattr") {
                    "user.overlay.opaque"
                } else {
                    "trusted.overlay.opaque"
                };
                Ok(Self { upper: PathBuf::from(upper), lowers, opaque_xattr: Some(opaque_xattr) })
            }
            "bind" => Ok(Self { upper: PathBuf::from(&mount.source), lowers: Vec::new(), opaque_xattr: None }),
            _ => Err(unsupported()),
        }
    }
}

/// Replaces the workspace's /data with the archive's content, keeping /data's owner and mode.
/// The workspace's task must be stopped and its snapshot not mounted anywhere.
pub fn replace_data_dir(layer: &WritableLayer, archive: &Path) -> Result<()> {
    let upper = fd::open_dir(&layer.upper).map_err(|err| failed("open the writable layer", &err))?;
    let (uid, gid, mode) = data_owner(layer)?;
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let staging_name = format!(".berth-restore-{stamp}");
    let staging = OsStr::new(&staging_name);
    mkdirat(upper.as_fd(), staging, Mode::from_bits_truncate(0o700))
        .map_err(|err| failed("create the staging directory", &err.into()))?;
    let staging_path = layer.upper.join(staging);
    let discard = |path: &Path| {
        let _ = super::empty_dir(path);
        let _ = std::fs::remove_dir(path);
    };
    let prepared = super::restore_from_file(archive, &staging_path, &mut |_| {})
        .and_then(|_| finish_staging(upper.as_fd(), staging, uid, gid, mode, layer.opaque_xattr));
    if let Err(err) = prepared {
        discard(&staging_path);
        return Err(err);
    }
    let data = OsStr::new("data");
    let exchange = match fd::lstat_at(upper.as_fd(), data) {
        Ok(_) => RenameFlags::EXCHANGE,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => RenameFlags::NOREPLACE,
        Err(err) => {
            discard(&staging_path);
            return Err(failed("read the current /data", &err));
        }
    };
    if let Err(err) = rustix::fs::renameat_with(&upper, staging, &upper, data, exchange) {
        discard(&staging_path);
        return Err(failed("swap the restored /data in", &err.into()));
    }
    if exchange == RenameFlags::EXCHANGE {
        // The staging name now holds the old /data (a directory, or a whiteout of a deleted one).
        if fd::remove_entry(upper.as_fd(), staging).is_err() {
            discard(&staging_path);
        }
    }
    Ok(())
}

/// Gives the staging directory /data's owner and mode and hides lower layers' /data below it.
fn finish_staging(
    upper: std::os::fd::BorrowedFd<'_>,
    staging: &OsStr,
    uid: u32,
    gid: u32,
    mode: u32,
    opaque_xattr: Option<&str>,
) -> Result<()> {
    let dir = fd::open_subdir(upper, staging).map_err(|err| failed("open the staging directory", &err))?;
    nix::unistd::fchown(&dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|err| failed("set the owner of /data", &err.into()))?;
    nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(mode))
        .map_err(|err| failed("set the mode of /data", &err.into()))?;
    if let Some(name) = opaque_xattr {
        rustix::fs::fsetxattr(&dir, name, b"y", XattrFlags::empty())
            .map_err(|err| failed("mark the restored /data opaque", &err.into()))?;
    }
    Ok(())
}

/// The owner and mode of /data as the workspace sees it: the writable layer's copy, else the
/// topmost image layer's, else root's 0755 (a /data that does not exist yet).
fn data_owner(layer: &WritableLayer) -> Result<(u32, u32, u32)> {
    let data = OsStr::new("data");
    for dir in std::iter::once(&layer.upper).chain(&layer.lowers) {
        let root = fd::open_dir(dir).map_err(|err| failed("open a layer of the snapshot", &err))?;
        match fd::lstat_at(root.as_fd(), data) {
            Ok(stat) if Kind::of(&stat) == Kind::Directory => return Ok((stat.st_uid, stat.st_gid, stat.st_mode & 0o7777)),
            // Anything else (a whiteout, a file) hides the layers below.
            Ok(_) => break,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(failed("read /data's owner", &err)),
        }
    }
    Ok((0, 0, 0o755))
}

fn failed(what: &str, err: &std::io::Error) -> Error {
    Error::new(
        Reason::DataArchiveFailed,
        format!("cannot {what} while restoring /data: {err}; /data is unchanged, check the server's disk and log"),
    )
}
