//! WatchDir: inotify on directories of a running workspace. Every watched directory is resolved
//! in-root and watched through its own fd (`/proc/self/fd/N`), so the watch is on exactly that
//! inode and no symlink leads it to the host. A recursive watch adds each subdirectory created
//! (or moved in) while watching, and reports what that directory already holds when its watch
//! was added, so files made right after a `mkdir` are not missed. The stream ends when the
//! workspace stops (the stop cancels it) or its init exits (noticed through the pidfd its root was opened with).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches as InotifyWatches};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::entry::EntryKind;
use super::{blocking, fs_error};
use crate::data::in_root;
use crate::error::{Error, Reason, Result};
use crate::workspace::FileAccess;

/// WatchDir streams open at once, server-wide: each holds an inotify instance, and the kernel
/// allows 128 per user (`fs.inotify.max_user_instances`) for all of berth.
const MAX_WATCH_STREAMS: usize = 64;
/// Directories one stream watches at most (the kernel's budget, `max_user_watches`, is shared).
const MAX_WATCHED_DIRS: usize = 8192;
/// How often a quiet stream says it is alive.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often a stream checks that the workspace's init still runs (a task that ends on its own
/// is not stopped through berth, so no cancellation comes).
const INIT_CHECK: Duration = Duration::from_secs(1);
const EVENT_BUFFER_BYTES: usize = 64 * 1024;
const STREAM_QUEUE: usize = 256;

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchKind {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
    Overflow,
}

/// One message of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The watch is in place.
    Started,
    Change {
        kind: WatchKind,
        path: String,
        time: OffsetDateTime,
    },
    Keepalive,
}

/// The server-wide budget of watch streams.
pub struct Watches {
    streams: Arc<Semaphore>,
}

impl Default for Watches {
    fn default() -> Self {
        Self { streams: Arc::new(Semaphore::new(MAX_WATCH_STREAMS)) }
    }
}

/// What a watch reports. No DONT_FOLLOW: watches are added through `/proc/self/fd/N`, a magic
/// link that must be followed to reach the directory the fd was resolved to (in-root).
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::ONLYDIR
}

impl Watches {
    /// Starts watching; the stream's first event is `Started`.
    pub async fn watch(
        &self,
        access: FileAccess,
        workspace_id: &str,
        path: String,
        recursive: bool,
    ) -> Result<impl Stream<Item = Result<WatchEvent>> + Send + 'static> {
        if !access.is_running() {
            return Err(Error::new(
                Reason::WorkspaceNotRunning,
                format!("workspace {workspace_id} is not running; WatchDir needs a running workspace (start it first)"),
            ));
        }
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Error::new(
                Reason::ResourceLimitExceeded,
                format!("{MAX_WATCH_STREAMS} WatchDir streams are open on this server; close one and retry"),
            )
        })?;
        let inotify = Inotify::init().map_err(|err| {
            Error::new(
                Reason::ResourceLimitExceeded,
                format!("cannot create an inotify instance: {err}; close other watches and retry"),
            )
        })?;
        let watches = inotify.watches();
        let (access, dirs) = {
            let root_path = path.clone();
            let mut watches = watches.clone();
            blocking(move || {
                let fd = access.root.resolve_dir(&root_path).map_err(|err| fs_error(&err, "watch", &root_path))?;
                let mut dirs = HashMap::new();
                add_tree(&mut watches, &mut dirs, fd, &root_path, recursive, &mut |_| {})?;
                Ok((access, dirs))
            })
            .await?
        };
        let stream = inotify
            .into_event_stream(vec![0u8; EVENT_BUFFER_BYTES])
            .map_err(|err| Error::internal(format!("watching the inotify fd failed: {err}")))?;
        let (sender, receiver) = mpsc::channel(STREAM_QUEUE);
        let _ = sender.try_send(Ok(WatchEvent::Started));
        let watcher = Watcher { access, watches, dirs, root: path, recursive, sender };
        tokio::spawn(async move {
            let _permit = permit;
            watcher.run(stream).await;
        });
        Ok(ReceiverStream::new(receiver))
    }
}

struct Watcher {
    access: FileAccess,
    watches: InotifyWatches,
    /// Watched directories by descriptor.
    dirs: HashMap<WatchDescriptor, String>,
    root: String,
    recursive: bool,
    sender: mpsc::Sender<Result<WatchEvent>>,
}

impl Watcher {
    async fn run(mut self, mut stream: inotify::EventStream<Vec<u8>>) {
        let cancel = self.access.cancel.clone();
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        let mut liveness = tokio::time::interval(INIT_CHECK);
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                () = cancel.cancelled() => return self.end_stopped().await,
                _ = liveness.tick() => {
                    if self.access.init_exited() {
                        return self.end_stopped().await;
                    }
                    continue;
                }
                () = self.sender.closed() => return,
                _ = keepalive.tick() => {
                    if self.sender.send(Ok(WatchEvent::Keepalive)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(err)) => {
                    let _ =
                        self.sender.send(Err(Error::internal(format!("reading inotify events failed: {err}")))).await;
                    return;
                }
                None => return,
            };
            keepalive.reset();
            if !self.handle(event).await {
                return;
            }
        }
    }

    /// Turns one inotify event into changes; false ends the stream.
    async fn handle(&mut self, event: inotify::Event<std::ffi::OsString>) -> bool {
        let now = OffsetDateTime::now_utc();
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            return self.send(WatchKind::Overflow, self.root.clone(), now).await;
        }
        let Some(dir) = self.dirs.get(&event.wd).cloned() else {
            return true;
        };
        if event.mask.contains(EventMask::IGNORED) || event.mask.contains(EventMask::DELETE_SELF) {
            self.dirs.remove(&event.wd);
            if dir == self.root {
                // The watched directory itself is gone: nothing more can come.
                let _ = self.send(WatchKind::Remove, dir, now).await;
                return false;
            }
            return true;
        }
        let Some(name) = event.name.as_ref() else {
            return true;
        };
        let name = name.to_string_lossy();
        let path = if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") };
        let is_dir = event.mask.contains(EventMask::ISDIR);
        let kind = if event.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            WatchKind::Create
        } else if event.mask.contains(EventMask::MODIFY) {
            WatchKind::Write
        } else if event.mask.contains(EventMask::DELETE) {
            WatchKind::Remove
        } else if event.mask.contains(EventMask::MOVED_FROM) {
            WatchKind::Rename
        } else if event.mask.contains(EventMask::ATTRIB) {
            WatchKind::Chmod
        } else {
            return true;
        };
        if is_dir && kind == WatchKind::Rename {
            self.forget_below(&path);
        }
        if !self.send(kind, path.clone(), now).await {
            return false;
        }
        if is_dir && kind == WatchKind::Create && self.recursive {
            return self.add_new_dir(path).await;
        }
        true
    }

    /// Watches a directory created (or moved in) while watching, and reports what it holds.
    async fn add_new_dir(&mut self, path: String) -> bool {
        let mut watches = self.watches.clone();
        let mut dirs = std::mem::take(&mut self.dirs);
        // The blocking work needs the root too: a duplicate of its fd.
        let root = match self.access.root.try_clone() {
            Ok(root) => root,
            Err(_) => return true,
        };
        let outcome = blocking(move || {
            let mut found = Vec::new();
            let added = match root.resolve_dir(&path) {
                Ok(fd) => add_tree(&mut watches, &mut dirs, fd, &path, true, &mut |child| found.push(child)),
                // Gone again, or replaced by a symlink: nothing to watch.
                Err(_) => Ok(()),
            };
            Ok((dirs, found, added))
        })
        .await;
        let Ok((dirs, found, added)) = outcome else {
            return true;
        };
        self.dirs = dirs;
        let now = OffsetDateTime::now_utc();
        for child in found {
            if !self.send(WatchKind::Create, child, now).await {
                return false;
            }
        }
        if let Err(err) = added {
            let _ = self.sender.send(Err(err)).await;
            return false;
        }
        true
    }

    /// Stops watching the directories below `path`, which moved away.
    fn forget_below(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, dir)| dir.as_str() == path || dir.starts_with(&prefix))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            let _ = self.watches.remove(wd.clone());
            self.dirs.remove(&wd);
        }
    }

    async fn send(&self, kind: WatchKind, path: String, time: OffsetDateTime) -> bool {
        self.sender.send(Ok(WatchEvent::Change { kind, path, time })).await.is_ok()
    }

    async fn end_stopped(self) {
        let _ = self
            .sender
            .send(Err(Error::new(
                Reason::WorkspaceNotRunning,
                format!("the workspace stopped; the watch of {} ended (watch again once it runs)", self.root),
            )))
            .await;
    }
}

/// Watches the directory `fd` (at `path`) and, with `recursive`, every directory below it;
/// `found` gets the path of every entry below `path` met on the way. The walk stays on the
/// directory's file system: /proc, /sys or /dev mounted below it are not descended into.
fn add_tree(
    watches: &mut InotifyWatches,
    dirs: &mut HashMap<WatchDescriptor, String>,
    fd: OwnedFd,
    path: &str,
    recursive: bool,
    found: &mut dyn FnMut(String),
) -> Result<()> {
    let stat = in_root::stat_fd(fd.as_fd()).map_err(|err| fs_error(&err, "watch", path))?;
    if EntryKind::of(&stat) != EntryKind::Directory {
        return Err(Error::new(Reason::NotADirectory, format!("{path} is not a directory; watch a directory")));
    }
    let device = stat.st_dev;
    let mut pending = vec![(fd, path.to_owned())];
    while let Some((fd, dir_path)) = pending.pop() {
        if dirs.len() >= MAX_WATCHED_DIRS {
            return Err(Error::new(
                Reason::ResourceLimitExceeded,
                format!(
                    "{path} has more than {MAX_WATCHED_DIRS} directories to watch; watch a smaller subtree or without recursive"
                ),
            ));
        }
        let wd = watches
            .add(format!("/proc/self/fd/{}", fd.as_raw_fd()), mask())
            .map_err(|err| fs_error(&err, "watch", &dir_path))?;
        dirs.insert(wd, dir_path.clone());
        if !recursive {
            continue;
        }
        let Ok(listing) = rustix::fs::openat(
            &fd,
            ".",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            continue;
        };
        let Ok(mut entries) = rustix::fs::Dir::read_from(&listing) else {
            continue;
        };
        while let Some(Ok(entry)) = entries.next() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let child_path = if dir_path == "/" { format!("/{name}") } else { format!("{dir_path}/{name}") };
            found(child_path.clone());
            if entry.file_type() == rustix::fs::FileType::Directory
                && let Ok(child) = in_root::open_subdir(listing.as_fd(), name.as_ref())
                && in_root::stat_fd(child.as_fd()).is_ok_and(|stat| stat.st_dev == device)
            {
                pending.push((child, child_path));
            }
        }
    }
    Ok(())
}
