//! Mounting a stopped workspace's snapshot on the host, so its /data can be archived or restored.
//!
//! The mounts are what containerd's `Snapshots.Mounts` returns for the container's active
//! snapshot: one `overlay` mount (workdir, upperdir, lowerdir options), or a `bind` mount of a
//! single directory. The mount lives exactly as long as the [`MountedRootfs`]: dropping it detaches
//! the mount and removes the empty mountpoint.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, mkdirat};

use super::fd::{self, Kind};
use crate::error::{Error, Reason, Result};

/// The kernel copies at most one page of mount data; a longer overlay lowerdir list (an image of
/// ~50 layers and more) is mounted through the new mount API instead, one `lowerdir+` at a time.
const MAX_MOUNT_DATA: usize = 4095;

/// Flags every host mount of a workspace gets: its files are the bot's, and nothing in them may
/// run, gain privileges or open devices on the host side.
const HOST_SAFETY: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// One mount as containerd describes it (`containerd.types.Mount`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// The file system type: `overlay`, `bind`, ...
    pub kind: String,
    pub source: String,
    /// mount(8)-style options: flags such as `ro` or `rbind`, and file-system data such as
    /// `lowerdir=a:b`.
    pub options: Vec<String>,
}

/// A snapshot mounted at a private host directory; unmounted when dropped.
#[derive(Debug)]
pub struct MountedRootfs {
    target: PathBuf,
    /// How many mounts are stacked on `target`.
    mounted: usize,
}

impl MountedRootfs {
    /// Creates `target` (mode 0700) if absent and mounts `mounts` on it in order. On failure,
    /// whatever was mounted is unmounted again.
    pub fn mount(mounts: &[MountSpec], target: &Path) -> Result<Self> {
        if mounts.is_empty() {
            return Err(Error::internal(format!(
                "the snapshot to mount at {} has no mounts; this is a bug in berth's runtime",
                target.display()
            )));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(target)
            .map_err(|err| mount_error(target, &format!("creating the mountpoint failed: {err}")))?;
        let mut rootfs = Self { target: target.to_path_buf(), mounted: 0 };
        for spec in mounts {
            mount_one(spec, target)?;
            rootfs.mounted += 1;
        }
        Ok(rootfs)
    }

    /// The host path of the mounted root file system.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts and removes the mountpoint, reporting failures that `drop` can only log.
    pub fn unmount(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        while self.mounted > 0 {
            // A plain unmount first: it ends the overlay's superblock before returning, so the
            // task that mounts the same upper dir next does not find it still in use. Only a
            // busy mount (a file still open) is detached lazily.
            match umount2(&self.target, MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => {}
                Err(Errno::EBUSY) => umount2(&self.target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                    .map_err(|err| mount_error(&self.target, &format!("unmounting failed: {err}")))?,
                Err(err) => return Err(mount_error(&self.target, &format!("unmounting failed: {err}"))),
            }
            self.mounted -= 1;
        }
        // remove_dir, never remove_dir_all: if anything is still mounted here, its files stay.
        match fs::remove_dir(&self.target) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(mount_error(&self.target, &format!("removing the mountpoint failed: {err}")))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for MountedRootfs {
    fn drop(&mut self) {
        if let Err(err) = self.release() {
            tracing::warn!(target = %self.target.display(), error = %err, "releasing a workspace mount failed");
        }
    }
}

/// Unmounts and removes every mount point a crash left under `dir` (berth mounts stopped
/// workspaces' root filesystems there for moments); returns how many it cleared. A leftover
/// overlay mount would make the workspace's next start fail with EBUSY.
pub fn clear_stale_mounts(dir: &Path) -> u32 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut cleared = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        // EINVAL: not a mount point (the crash hit between mkdir and mount).
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        if fs::remove_dir(&path).is_ok() {
            cleared += 1;
        }
    }
    cleared
}

/// Returns `rootfs/data`, creating it with mode 0755 when absent. An existing `data` that is a
/// symlink or not a directory is an error: following it could leave the rootfs.
pub fn data_dir(rootfs: &Path) -> Result<PathBuf> {
    let root = fd::open_dir(rootfs)
        .map_err(|err| data_dir_error(rootfs, &format!("opening the root file system failed: {err}")))?;
    let name = OsStr::new("data");
    let stat = match fd::lstat_at(root.as_fd(), name) {
        Ok(stat) => stat,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            match mkdirat(root.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(err) => return Err(data_dir_error(rootfs, &format!("creating /data failed: {err}"))),
            }
            // Set the mode explicitly: mkdirat honours the umask.
            let data = fd::open_subdir(root.as_fd(), name)
                .map_err(|err| data_dir_error(rootfs, &format!("/data is not a directory: {err}")))?;
            fs::File::from(data)
                .set_permissions(fs::Permissions::from_mode(0o755))
                .map_err(|err| data_dir_error(rootfs, &format!("setting the mode of /data failed: {err}")))?;
            return Ok(rootfs.join(name));
        }
        Err(err) => return Err(data_dir_error(rootfs, &format!("reading /data failed: {err}"))),
    };
    match Kind::of(&stat) {
        Kind::Directory => Ok(rootfs.join(name)),
        Kind::Symlink => Err(Error::new(
            Reason::DataArchiveFailed,
            "/data in the workspace is a symlink, and berth never follows it; replace it with a real directory",
        )),
        _ => Err(Error::new(
            Reason::DataArchiveFailed,
            "/data in the workspace is not a directory; move that file away so berth can use /data",
        )),
    }
}

/// Makes `rootfs/data` exist (see [`data_dir`]) and belong to the workspace's user, so an image
/// whose `User` is not root can write its own /data. Only /data itself changes owner; its content
/// (from the image or a restore) keeps its own.
pub fn prepare_data_dir(rootfs: &Path, uid: u32, gid: u32) -> Result<PathBuf> {
    let data = data_dir(rootfs)?;
    let root = fd::open_dir(rootfs)
        .map_err(|err| data_dir_error(rootfs, &format!("opening the root file system failed: {err}")))?;
    let dir = fd::open_subdir(root.as_fd(), OsStr::new("data"))
        .map_err(|err| data_dir_error(rootfs, &format!("opening /data failed: {err}")))?;
    nix::unistd::fchown(&dir, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
        .map_err(|err| data_dir_error(rootfs, &format!("giving /data to uid {uid} gid {gid} failed: {err}")))?;
    Ok(data)
}

fn mount_one(spec: &MountSpec, target: &Path) -> Result<()> {
    let mut options = MountOptions::parse(&spec.options);
    options.flags |= HOST_SAFETY;
    if spec.kind == "bind" || options.flags.contains(MsFlags::MS_BIND) {
        return bind_mount(spec, target, &options);
    }
    let data = options.data.join(",");
    if data.len() > MAX_MOUNT_DATA {
        if spec.kind == "overlay" {
            return mount_long_overlay(&options, target);
        }
        return Err(mount_error(
            target,
            &format!(
                "the {} mount options are {} bytes, more than the kernel's limit of {MAX_MOUNT_DATA}",
                spec.kind,
                data.len()
            ),
        ));
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(spec.source.as_str()), target, Some(spec.kind.as_str()), options.flags, data)
        .map_err(|err| mount_error(target, &format!("mounting {} {:?} failed: {err}", spec.kind, spec.source)))
}

/// Mounts an overlay whose options exceed a page through fsopen/fsconfig: every lower layer is
/// its own `lowerdir+` parameter (Linux 6.8 and later), so the layer count has no practical limit.
/// containerd itself copes by chdir-ing into the snapshot root and passing relative paths, which a
/// multi-threaded server cannot do without forking.
fn mount_long_overlay(options: &MountOptions<'_>, target: &Path) -> Result<()> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create, fsconfig_set_string, fsmount,
        fsopen, move_mount,
    };
    let failed = |step: &str, err: rustix::io::Errno| {
        let hint = if err == rustix::io::Errno::INVAL && step.starts_with("lowerdir+") {
            "; this kernel predates lowerdir+ (Linux 6.8): use an image with fewer layers or a newer kernel"
        } else {
            ""
        };
        mount_error(target, &format!("mounting the overlay failed at {step}: {err}{hint}"))
    };
    let context = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|err| failed("fsopen", err))?;
    for option in &options.data {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        if key == "lowerdir" {
            for layer in value.split(':').filter(|layer| !layer.is_empty()) {
                fsconfig_set_string(&context, "lowerdir+", layer).map_err(|err| failed("lowerdir+", err))?;
            }
        } else if value.is_empty() {
            rustix::mount::fsconfig_set_flag(&context, key).map_err(|err| failed(key, err))?;
        } else {
            fsconfig_set_string(&context, key, value).map_err(|err| failed(key, err))?;
        }
    }
    fsconfig_create(&context).map_err(|err| failed("create", err))?;
    let mut attributes =
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    if options.flags.contains(MsFlags::MS_RDONLY) {
        attributes |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    let mounted = fsmount(&context, FsMountFlags::FSMOUNT_CLOEXEC, attributes).map_err(|err| failed("fsmount", err))?;
    move_mount(&mounted, "", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .map_err(|err| failed("move_mount", err))
}

/// A bind mount ignores every flag but `MS_REC` on creation, so read-only and the other flags
/// take a second, remount call.
fn bind_mount(spec: &MountSpec, target: &Path, options: &MountOptions) -> Result<()> {
    let bind_flags = MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC);
    mount(Some(spec.source.as_str()), target, None::<&str>, bind_flags, None::<&str>)
        .map_err(|err| mount_error(target, &format!("bind-mounting {:?} failed: {err}", spec.source)))?;
    let extra = options.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
    if extra.is_empty() {
        return Ok(());
    }
    let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | extra;
    if let Err(err) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
        let _ = umount2(target, MntFlags::MNT_DETACH); // the remount error is the one to report
        return Err(mount_error(target, &format!("remounting the bind mount of {:?} failed: {err}", spec.source)));
    }
    Ok(())
}

/// mount(8) options split into mount flags and file-system data.
struct MountOptions<'a> {
    flags: MsFlags,
    data: Vec<&'a str>,
}

impl<'a> MountOptions<'a> {
    fn parse(options: &'a [String]) -> Self {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for option in options {
            let (set, clear) = match option.as_str() {
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
                "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                // Propagation is containerd's business on the container's own mounts, not ours.
                "defaults" | "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
                | "runbindable" => (MsFlags::empty(), MsFlags::empty()),
                other => {
                    data.push(other);
                    (MsFlags::empty(), MsFlags::empty())
                }
            };
            flags = (flags - clear) | set;
        }
        Self { flags, data }
    }
}

fn mount_error(target: &Path, what: &str) -> Error {
    Error::new(
        Reason::RuntimeError,
        format!(
            "{what} at {}; the workspace's files cannot be reached while it is stopped, retry once and check the server log",
            target.display()
        ),
    )
}

/// A failure on the host side of /data, which an operator has to look at.
fn data_dir_error(rootfs: &Path, what: &str) -> Error {
    Error::new(
        Reason::DataArchiveFailed,
        format!("{what} (root file system at {}); check the server's disk and log", rootfs.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An overlay of `layers` lower directories with long paths, each holding one file.
    fn long_overlay(root: &Path, layers: usize) -> Vec<MountSpec> {
        let padding = "l".repeat(80);
        let lowers: Vec<String> = (0..layers)
            .map(|index| {
                let dir = root.join(format!("{padding}-{index:03}"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join(format!("layer-{index}")), index.to_string()).unwrap();
                dir.display().to_string()
            })
            .collect();
        for dir in ["upper", "work"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        vec![MountSpec {
            kind: "overlay".to_owned(),
            source: "overlay".to_owned(),
            options: vec![
                "index=off".to_owned(),
                format!("workdir={}", root.join("work").display()),
                format!("upperdir={}", root.join("upper").display()),
                format!("lowerdir={}", lowers.join(":")),
            ],
        }]
    }

    #[test]
    fn an_overlay_with_more_layers_than_a_page_of_options_mounts_without_exec_suid_or_devices() {
        let root = tempfile::tempdir().unwrap();
        let mounts = long_overlay(root.path(), 80);
        let data_len: usize = mounts[0].options.iter().map(|option| option.len() + 1).sum();
        assert!(data_len > MAX_MOUNT_DATA, "the options must exceed a page ({data_len} bytes)");
        let target = root.path().join("mnt");
        let rootfs = MountedRootfs::mount(&mounts, &target).expect("a long overlay mounts");
        assert_eq!(fs::read_to_string(target.join("layer-0")).unwrap(), "0");
        assert_eq!(fs::read_to_string(target.join("layer-79")).unwrap(), "79");
        let flags = nix::sys::statvfs::statvfs(&target).unwrap().flags();
        use nix::sys::statvfs::FsFlags;
        assert!(flags.contains(FsFlags::ST_NOEXEC | FsFlags::ST_NOSUID | FsFlags::ST_NODEV), "{flags:?}");
        fs::write(target.join("written"), "upper").unwrap();
        rootfs.unmount().unwrap();
        assert_eq!(fs::read_to_string(root.path().join("upper/written")).unwrap(), "upper");
        assert!(!target.exists(), "the mountpoint is removed");
    }

    #[test]
    fn a_short_overlay_is_mounted_without_exec_suid_or_devices_too() {
        let root = tempfile::tempdir().unwrap();
        let mounts = long_overlay(root.path(), 2);
        let target = root.path().join("mnt");
        let _rootfs = MountedRootfs::mount(&mounts, &target).unwrap();
        let flags = nix::sys::statvfs::statvfs(&target).unwrap().flags();
        use nix::sys::statvfs::FsFlags;
        assert!(flags.contains(FsFlags::ST_NOEXEC | FsFlags::ST_NOSUID | FsFlags::ST_NODEV), "{flags:?}");
    }
}
