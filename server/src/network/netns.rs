//! Pinned network namespaces: a new netns bind-mounted onto a file berth owns (what `ip netns
//! add` does under /run/netns), so it outlives any task and a CNI DEL never meets a dead one.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{Error, Reason, Result};

/// The filesystem type of namespace files (`NSFS_MAGIC`): a pinned netns file has it, the empty
/// file left behind by a host reboot does not.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Creates a network namespace pinned at `path` (created, empty, if missing). Runs in a thread
/// of its own: `unshare` moves the calling thread into the new namespace, and that thread must
/// never run anything else (a blocking-pool thread would carry the namespace into later work).
pub async fn create(path: PathBuf) -> Result<()> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-netns".to_owned())
        .spawn(move || {
            let _ = done.send(create_in_this_thread(&path));
        })
        .map_err(|err| failed(format!("cannot start a thread to create a network namespace: {err}")))?;
    result.await.map_err(|_| failed("the thread creating a network namespace died".to_owned()))?
}

fn create_in_this_thread(path: &Path) -> Result<()> {
    let fail = |what: &str, err: &dyn std::fmt::Display| failed(format!("cannot {what} {}: {err}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|err| fail("create the directory of", &err))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|err| fail("create", &err))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|err| fail("make a network namespace for", &err))?;
    nix::mount::mount(Some("/proc/thread-self/ns/net"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|err| fail("pin a network namespace at", &err))
}

/// Whether `path` holds a pinned namespace (not just the empty file a reboot leaves).
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|stat| stat.filesystem_type().0 == NSFS_MAGIC)
}

/// Unpins and removes the namespace file; nothing there is fine. The namespace itself ends with
/// its last user (the workspace's processes are gone by now).
pub fn remove(path: &Path) -> Result<()> {
    while is_pinned(path) {
        nix::mount::umount2(path, MntFlags::MNT_DETACH)
            .map_err(|err| failed(format!("cannot unpin the network namespace {}: {err}", path.display())))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(failed(format!("cannot remove the network namespace file {}: {err}", path.display()))),
    }
}

fn failed(message: String) -> Error {
    Error::new(Reason::NetworkSetupFailed, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pinned_namespace_is_a_different_netns_and_removal_unpins_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns/ws");
        create(path.clone()).await.unwrap();
        assert!(is_pinned(&path));
        let ours = std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
        let pinned = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
        assert_ne!(ours, pinned, "the pinned namespace is not berth's own");
        // This thread stayed where it was.
        let still = std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_eq!(still.unwrap(), ours);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }

    #[test]
    fn an_empty_file_is_not_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws");
        std::fs::write(&path, b"").unwrap();
        assert!(!is_pinned(&path));
        remove(&path).unwrap();
        assert!(!path.exists());
    }
}
