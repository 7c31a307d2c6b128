//! The Manager's side of GetMetrics and WatchMetrics: single readings of a workspace's task
//! cgroup and of its disk use. Pacing, sharing between subscribers and CPU percentages are the
//! sampler's business (`crate::metrics`).

use std::path::Path;

use time::OffsetDateTime;

use super::manager::Manager;
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::runtime::TaskMetrics;

/// One reading of a workspace's task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskReading {
    pub metrics: TaskMetrics,
    /// When the figures were read: the shim's clock when it says, berth's otherwise.
    pub read_time: OffsetDateTime,
    /// The workspace's CPU limit in thousandths of a core; 0 when unlimited.
    pub cpu_limit_millis: i64,
}

/// The disk use of a workspace's writable layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageUsage {
    /// Bytes and inodes of the writable layer (everything written since the image or the last
    /// snapshot, /data included).
    pub rootfs_bytes: u64,
    pub rootfs_inodes: u64,
    /// Disk used by the regular files of /data in that layer.
    pub data_bytes: u64,
    pub sample_time: OffsetDateTime,
}

impl Manager {
    /// WORKSPACE_NOT_FOUND unless the workspace exists; asks the store only.
    pub async fn ensure_exists(&self, id: &WorkspaceId) -> Result<()> {
        self.wait_for_reconcile(Some(id)).await;
        self.record(id).await.map(drop)
    }

    /// Whether the workspace's record changed (a start, a stop, new limits) after `since`, so a
    /// reading taken before may no longer hold; asks the store only. WORKSPACE_NOT_FOUND once
    /// the workspace is deleted.
    pub async fn changed_since(&self, id: &WorkspaceId, since: OffsetDateTime) -> Result<bool> {
        Ok(self.record(id).await?.update_time >= since)
    }

    /// Reads the cgroup figures of the workspace's task once: one containerd call.
    /// WORKSPACE_NOT_FOUND once the workspace is deleted.
    pub async fn read_task_metrics(&self, id: &WorkspaceId) -> Result<TaskReading> {
        self.wait_for_reconcile(Some(id)).await;
        let record = self.record(id).await?;
        let metrics = self.runtime.task_metrics(id.as_str()).await?;
        let read_time = match &metrics {
            TaskMetrics::Cgroup(stats) => stats.read_time,
            TaskMetrics::NoTask | TaskMetrics::Undecodable(_) => None,
        };
        Ok(TaskReading {
            metrics,
            read_time: read_time.unwrap_or_else(OffsetDateTime::now_utc),
            cpu_limit_millis: record.spec.resources.cpu_millis,
        })
    }

    /// Measures the workspace's writable layer (containerd's `Snapshots.Usage`, a walk of the
    /// layer) and its /data (a walk on the host). None while the workspace has no layer yet (it
    /// is being created).
    pub async fn read_storage(&self, id: &WorkspaceId) -> Result<Option<StorageUsage>> {
        self.wait_for_reconcile(Some(id)).await;
        let record = self.record(id).await?;
        if record.current_version == 0 || !self.runtime.snapshot_exists(&record.snapshot_key).await? {
            return Ok(None);
        }
        let layer = self.runtime.layer_usage(&record.snapshot_key).await?;
        let data_bytes = match self.snapshot_dir(&record.snapshot_key).await {
            Some(upper) => {
                let data = upper.join(crate::data::DATA_PATH.trim_start_matches('/'));
                tokio::task::spawn_blocking(move || crate::data::disk_usage(&data))
                    .await
                    .map_err(|err| Error::internal(format!("the /data usage walk failed: {err}")))?
                    .map_err(|err| Error::internal(format!("measuring /data of {id} failed: {err}")))?
            }
            None => 0,
        };
        Ok(Some(StorageUsage {
            rootfs_bytes: layer.bytes,
            rootfs_inodes: layer.inodes,
            data_bytes,
            sample_time: OffsetDateTime::now_utc(),
        }))
    }

    /// When the workspace's running task started (its init's start time on the host): the
    /// moment its CPU counters were zero. None when no task runs.
    pub async fn task_start_time(&self, id: &WorkspaceId) -> Result<Option<OffsetDateTime>> {
        let Some(task) = self.runtime.task(id.as_str()).await?.filter(|task| task.running) else {
            return Ok(None);
        };
        let pid = task.pid;
        tokio::task::spawn_blocking(move || process_start_time(pid))
            .await
            .map_err(|err| Error::internal(format!("reading the task's start time failed: {err}")))
    }
}

/// The kernel's clock tick for /proc times (USER_HZ): 100 on every architecture berth runs on.
const USER_HZ: f64 = 100.0;

/// When a host process started, from its `/proc/<pid>/stat` start time (ticks since boot) and
/// `/proc/uptime`. None when the process is gone.
fn process_start_time(pid: u32) -> Option<OffsetDateTime> {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let now = OffsetDateTime::now_utc();
    let started_ticks = start_ticks(&stat)?;
    let uptime_seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let age = (uptime_seconds - started_ticks as f64 / USER_HZ).max(0.0);
    Some(now - time::Duration::seconds_f64(age))
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted after the last
/// `)`.
fn start_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name, so field 22 is the 20th from there.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_are_read_after_the_command_name_whatever_it_holds() {
        let stat =
            "4242 (we ir) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(start_ticks(stat), Some(987_654));
        assert_eq!(start_ticks("4242 (truncated) S 1"), None);
    }

    #[test]
    fn this_process_started_in_the_past() {
        let started = process_start_time(std::process::id()).unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(started <= now && now - started < time::Duration::hours(24), "{started} vs {now}");
    }
}
