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
                let lowers =
                    option("lowerdir=").map(|list| list.split(':').map(PathBuf::from).collect()).unwrap_or_default();
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
        // The staging name now holds the old /data: a directory, or a whiteout of a deleted one.
        // /data is restored either way; a leftover only costs disk until the next restore.
        if let Err(err) = remove_old(upper.as_fd(), staging) {
            tracing::warn!(path = %staging_path.display(), error = %err, "cannot remove the replaced /data");
        }
    }
    Ok(())
}

/// Removes what the exchange left under `name` (the old /data, of any depth, or a whiteout).
fn remove_old(upper: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> std::io::Result<()> {
    use nix::unistd::{UnlinkatFlags, unlinkat};
    let stat = fd::lstat_at(upper, name)?;
    if Kind::of(&stat) != Kind::Directory {
        return unlinkat(upper, name, UnlinkatFlags::NoRemoveDir).map_err(std::io::Error::from);
    }
    let dir = fd::open_subdir(upper, name)?;
    fd::remove_contents(dir.as_fd())?;
    drop(dir);
    unlinkat(upper, name, UnlinkatFlags::RemoveDir).map_err(std::io::Error::from)
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
            Ok(stat) if Kind::of(&stat) == Kind::Directory => {
                return Ok((stat.st_uid, stat.st_gid, stat.st_mode & 0o7777));
            }
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;
    use crate::data::MountedRootfs;

    /// An archive of a /data holding `restored.txt`.
    fn archive(dir: &Path) -> PathBuf {
        let source = dir.join("source");
        fs::create_dir_all(source.join("sub")).unwrap();
        fs::write(source.join("restored.txt"), "restored").unwrap();
        let archive = dir.join("data.tar.gz");
        crate::data::preserve_to_file(&source, &archive, &mut |_| {}).unwrap();
        archive
    }

    /// lower/ (the image layer, with or without /data), upper/ and work/ of an overlay.
    fn overlay(dir: &Path, image_has_data: bool) -> (WritableLayer, Vec<MountSpec>) {
        for name in ["lower", "upper", "work"] {
            fs::create_dir_all(dir.join(name)).unwrap();
        }
        if image_has_data {
            fs::create_dir_all(dir.join("lower/data")).unwrap();
            fs::write(dir.join("lower/data/from-image.txt"), "image").unwrap();
        }
        let mounts = vec![MountSpec {
            kind: "overlay".to_owned(),
            source: "overlay".to_owned(),
            options: vec![
                format!("workdir={}", dir.join("work").display()),
                format!("upperdir={}", dir.join("upper").display()),
                format!("lowerdir={}", dir.join("lower").display()),
            ],
        }];
        (WritableLayer::from_mounts(&mounts).unwrap(), mounts)
    }

    /// Makes /data through the mounted overlay as a workspace would: owned by uid 1000, mode 0750,
    /// with a file of the bot's.
    fn bot_writes_data(mounts: &[MountSpec], target: &Path) {
        let rootfs = MountedRootfs::mount(mounts, target).unwrap();
        let data = crate::data::prepare_data_dir(rootfs.path(), 1000, 1000).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(data.join("bot.txt"), "bot").unwrap();
        rootfs.unmount().unwrap();
    }

    fn assert_restored(mounts: &[MountSpec], target: &Path) {
        let rootfs = MountedRootfs::mount(mounts, target).unwrap();
        let data = rootfs.path().join("data");
        assert_eq!(fs::read_to_string(data.join("restored.txt")).unwrap(), "restored");
        assert!(data.join("sub").is_dir());
        assert!(!data.join("bot.txt").exists(), "the old /data is gone");
        assert!(!data.join("from-image.txt").exists(), "the image's /data content stays hidden");
        let meta = fs::metadata(&data).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (1000, 1000, 0o750), "owner and mode kept");
        let leftovers: Vec<_> = fs::read_dir(rootfs.path()).unwrap().flatten().map(|entry| entry.file_name()).collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("data")], "no staging directory is left");
    }

    #[test]
    fn restore_swaps_data_atomically_when_data_comes_from_an_image_layer() {
        let dir = tempfile::tempdir().unwrap();
        let archive = archive(dir.path());
        let (layer, mounts) = overlay(dir.path(), true);
        let target = dir.path().join("mnt");
        bot_writes_data(&mounts, &target);
        replace_data_dir(&layer, &archive).unwrap();
        assert_restored(&mounts, &target);
    }

    #[test]
    fn restore_swaps_data_atomically_when_only_the_writable_layer_has_data() {
        let dir = tempfile::tempdir().unwrap();
        let archive = archive(dir.path());
        let (layer, mounts) = overlay(dir.path(), false);
        let target = dir.path().join("mnt");
        bot_writes_data(&mounts, &target);
        replace_data_dir(&layer, &archive).unwrap();
        assert_restored(&mounts, &target);
    }

    #[test]
    fn a_corrupt_archive_leaves_data_and_the_layer_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (layer, mounts) = overlay(dir.path(), true);
        let target = dir.path().join("mnt");
        bot_writes_data(&mounts, &target);
        let corrupt = dir.path().join("corrupt.tar.gz");
        fs::write(&corrupt, b"\x1f\x8b\x08\x00 this is not gzip").unwrap();
        let err = replace_data_dir(&layer, &corrupt).unwrap_err();
        assert_eq!(err.reason(), Reason::DataArchiveFailed);
        let upper: Vec<_> = fs::read_dir(dir.path().join("upper")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(upper, [std::ffi::OsString::from("data")], "no staging directory is left");
        let rootfs = MountedRootfs::mount(&mounts, &target).unwrap();
        assert_eq!(fs::read_to_string(rootfs.path().join("data/bot.txt")).unwrap(), "bot");
    }
}
