//! The Manager's side of FilesystemService: how a file operation reaches a workspace's files.
//!
//! A RUNNING workspace is reached through `/proc/<init pid>/root`, opened once per task and kept
//! with a pidfd of that init (so a reused pid is never mistaken for it). The operation holds a read
//! guard of the workspace's file gate; a stop (every path that ends the task goes through
//! `ending_processes`) first cancels the operations in flight, then takes the write guard, so no
//! fd on the old root outlives the task (such an fd would keep the old overlay alive on the
//! same upper directory the next start mounts).
//!
//! A STOPPED workspace is reached through a private mount of its writable snapshot, made for one
//! operation and held with the workspace's lock, so a start waits for it and the upper dir is
//! never mounted twice. The mount ends with the operation; a crash leaves it to
//! `clear_stale_mounts` at the next boot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tokio_util::sync::CancellationToken;

use super::locks::WorkspaceGuard;
use super::manager::{Manager, ensure_settled};
use crate::data::{InRoot, MountedRootfs, Owner};
use crate::error::{Error, Reason, Result};
use crate::model::WorkspaceId;

/// A workspace's root, held open for one file operation.
pub struct FileAccess {
    /// Declared first, so it closes before the mount it may point into is released.
    pub root: InRoot,
    /// Cancelled when the workspace stops while the operation runs.
    pub cancel: CancellationToken,
    /// The workspace's init while it runs; None for a stopped workspace.
    init: Option<Arc<RunningRoot>>,
    _hold: Hold,
}

impl FileAccess {
    /// Whether this access is to a running workspace (through its init's root).
    pub fn is_running(&self) -> bool {
        self.init.is_some()
    }

    /// Whether the init the running root was opened through has exited since (a task that ends
    /// on its own is not stopped through berth, so no cancellation comes). False for a
    /// stopped workspace.
    pub fn init_exited(&self) -> bool {
        self.init.as_ref().is_some_and(|init| !init.alive())
    }
}

enum Hold {
    Running {
        _read: OwnedRwLockReadGuard<()>,
    },
    Stopped {
        /// Declared before the guard: the mount ends before a waiting start may proceed.
        _mount: MountedRootfs,
        _guard: WorkspaceGuard,
    },
}

/// Per workspace: the gate running-workspace operations pass, and the token that ends them.
#[derive(Default)]
pub struct FileGates {
    gates: Mutex<HashMap<WorkspaceId, Arc<Gate>>>,
}

#[derive(Default)]
struct Gate {
    lock: Arc<RwLock<()>>,
    cancel: Mutex<CancellationToken>,
    /// The running root, opened once per task: most calls (a Stat, a small read) then cost no
    /// containerd round trip. Dropped by `quiesce`; a task that ended on its own is noticed
    /// through its init's pidfd.
    running: Mutex<Option<Arc<RunningRoot>>>,
}

struct RunningRoot {
    /// Refers to exactly the init process the root was opened through (no pid reuse).
    pidfd: std::os::fd::OwnedFd,
    root: InRoot,
}

impl RunningRoot {
    fn alive(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(&self.pidfd, rustix::event::PollFlags::IN)];
        // A pidfd polls readable once its process exited.
        matches!(rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(0))
    }
}

/// Held while a workspace's task is being stopped: no file operation on the running root is in
/// flight, and new ones wait.
pub struct QuiescedFiles {
    _guard: OwnedRwLockWriteGuard<()>,
}

impl FileGates {
    fn gate(&self, id: &WorkspaceId) -> Arc<Gate> {
        self.gates.lock().expect("file gates").entry(id.clone()).or_default().clone()
    }

    /// Ends the workspace's running-root operations and waits until they have let go.
    pub async fn quiesce(&self, id: &WorkspaceId) -> QuiescedFiles {
        let gate = self.gate(id);
        let token = std::mem::take(&mut *gate.cancel.lock().expect("file gate token"));
        token.cancel();
        let guard = gate.lock.clone().write_owned().await;
        gate.running.lock().expect("file gate root").take();
        QuiescedFiles { _guard: guard }
    }

    /// Drops the cached running root of a task that is gone, once no operation uses it.
    pub async fn forget_root(&self, id: &WorkspaceId) {
        drop(self.quiesce(id).await);
    }

    /// Forgets a deleted workspace's gate.
    pub fn forget(&self, id: &WorkspaceId) {
        self.gates.lock().expect("file gates").remove(id);
    }
}

impl Manager {
    /// Opens the workspace's root for one file operation (see the module doc).
    pub async fn file_access(&self, workspace_id: &str) -> Result<FileAccess> {
        let id = WorkspaceId::parse(workspace_id)?;
        let record = self.record(&id).await?;
        ensure_settled(&record, "reaching its files")?;
        let gate = self.file_gates.gate(&id);
        let read = gate.lock.clone().read_owned().await;
        let cancel = gate.cancel.lock().expect("file gate token").child_token();
        let cached = gate.running.lock().expect("file gate root").clone().filter(|running| running.alive());
        let running = match cached {
            Some(running) => Some(running),
            None => self.open_running(&id).await?.inspect(|running| {
                *gate.running.lock().expect("file gate root") = Some(running.clone());
            }),
        };
        if let Some(running) = running {
            let root = running
                .root
                .try_clone()
                .map_err(|err| Error::internal(format!("duplicating the root fd failed: {err}")))?;
            return Ok(FileAccess { root, cancel, init: Some(running), _hold: Hold::Running { _read: read } });
        }
        drop(read);
        self.stopped_file_access(&id).await
    }

    /// Opens the root of the workspace's running task; None when no task runs.
    async fn open_running(&self, id: &WorkspaceId) -> Result<Option<Arc<RunningRoot>>> {
        let Some(pid) = self.running_pid(id).await? else {
            return Ok(None);
        };
        let owner = self.workspace_owner(id).await?;
        let opened = tokio::task::spawn_blocking(move || {
            let init = rustix::process::Pid::from_raw(pid as i32).ok_or(rustix::io::Errno::SRCH)?;
            let pidfd = rustix::process::pidfd_open(init, rustix::process::PidfdFlags::empty())?;
            let root = InRoot::open(&PathBuf::from(format!("/proc/{pid}/root")), owner)?;
            Ok::<_, std::io::Error>((pidfd, root))
        })
        .await
        .map_err(|err| Error::internal(format!("the root worker failed: {err}")))?;
        let Ok((pidfd, root)) = opened else {
            return Ok(None); // the task ended meanwhile
        };
        // The pid was read before the pidfd was opened: if the task ended in between, the pid
        // may name another process. A task still running with the same pid proves it did not.
        if self.running_pid(id).await? != Some(pid) {
            return Ok(None);
        }
        Ok(Some(Arc::new(RunningRoot { pidfd, root })))
    }

    async fn stopped_file_access(&self, id: &WorkspaceId) -> Result<FileAccess> {
        let guard = self.lock(id).await;
        let record = self.record(id).await?;
        ensure_settled(&record, "reaching its files")?;
        if self.running_pid(id).await?.is_some() {
            // Started meanwhile: the lock is not needed on the running root.
            drop(guard);
            return Box::pin(self.file_access(id.as_str())).await;
        }
        if !self.runtime.snapshot_exists(&record.snapshot_key).await? {
            return Err(Error::new(
                Reason::WorkspaceNotRunning,
                format!(
                    "workspace {id} has no filesystem snapshot (it vanished from containerd); start it to rebuild it"
                ),
            ));
        }
        let owner = self.workspace_owner(id).await?;
        let mounts = self.runtime.snapshot_mounts(&record.snapshot_key).await?;
        let target = self.mount_dir().join(format!("{id}-files-{}", OffsetDateTime::now_utc().unix_timestamp_nanos()));
        let (mount, root) = tokio::task::spawn_blocking(move || {
            let mount = MountedRootfs::mount(&mounts, &target)?;
            let root = InRoot::open(mount.path(), owner).map_err(|err| {
                Error::internal(format!("opening the mounted workspace root {} failed: {err}", target.display()))
            })?;
            Ok::<_, Error>((mount, root))
        })
        .await
        .map_err(|err| Error::internal(format!("the mount worker failed: {err}")))??;
        Ok(FileAccess {
            root,
            cancel: CancellationToken::new(),
            init: None,
            _hold: Hold::Stopped { _mount: mount, _guard: guard },
        })
    }

    async fn running_pid(&self, id: &WorkspaceId) -> Result<Option<u32>> {
        Ok(self.runtime.task(id.as_str()).await?.filter(|task| task.running).map(|task| task.pid))
    }

    /// The workspace's user, as the container's process runs.
    async fn workspace_owner(&self, id: &WorkspaceId) -> Result<Owner> {
        let base = self.runtime.process_base(id.as_str()).await?;
        Ok(Owner { uid: base.uid, gid: base.gid })
    }

    /// Where WriteFileChunk stages uploads of a workspace.
    pub fn upload_dir(&self) -> PathBuf {
        self.config.state_dir.join("uploads")
    }

    /// What one ImportData may extract.
    pub fn import_limits(&self) -> crate::data::ExtractLimits {
        self.config.import_limits
    }

    /// Records that an archive was imported into a directory of the workspace.
    pub async fn record_data_imported(&self, workspace_id: &str, message: &str) {
        match WorkspaceId::parse(workspace_id) {
            Ok(id) => self.event(&id, "data_imported", message).await,
            Err(err) => {
                tracing::warn!(workspace_id, error = %err, "cannot record an import of an invalid workspace id")
            }
        }
    }
}
