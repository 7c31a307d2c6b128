//! A metrics sample as GetMetrics and WatchMetrics report it, and the CPU percentage between two
//! readings.

use time::OffsetDateTime;

use crate::runtime::{CpuStats, MemoryStats, PidsStats, TaskMetrics};
use crate::workspace::{StorageUsage, TaskReading};

/// One sample of a workspace's resource usage.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// When the CPU, memory and pids figures were read.
    pub sample_time: OffsetDateTime,
    /// Unset while the workspace is not running (or when its cgroup gives no CPU figures).
    pub cpu: Option<CpuSample>,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    /// Why figures of a running workspace are missing; None when every figure was read or the
    /// workspace is not running.
    pub unsupported: Option<String>,
    /// None until the layer has been measured once (or while the workspace has no layer).
    pub storage: Option<StorageUsage>,
}

/// The CPU figures of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuSample {
    /// CPU time per wall-clock time since the previous reading, in percent of one core.
    pub percent_of_one_core: f64,
    pub stats: CpuStats,
    /// Thousandths of a core; 0 when unlimited.
    pub limit_millis: i64,
}

/// The working set as a percentage of the memory limit (0 to 100); 0 when unlimited.
pub fn memory_percent(memory: &MemoryStats) -> f64 {
    if memory.limit_bytes == 0 {
        return 0.0;
    }
    (memory.working_set_bytes as f64 / memory.limit_bytes as f64 * 100.0).min(100.0)
}

/// The CPU counter of a reading and when it was read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct CpuPoint {
    pub usage_nanos: u64,
    pub time: OffsetDateTime,
}

impl CpuPoint {
    pub fn of(reading: &TaskReading) -> Option<Self> {
        let TaskMetrics::Cgroup(stats) = &reading.metrics else {
            return None;
        };
        Some(Self { usage_nanos: stats.cpu?.usage_nanos, time: reading.read_time })
    }
}

/// CPU time used between two readings per wall-clock time between them, as a percentage of one
/// core. A counter that went backwards belongs to a task started since the earlier reading: all
/// of its time was used within the window. No time between them reads as 0.
pub(super) fn cpu_percent(earlier: CpuPoint, later: CpuPoint) -> f64 {
    let wall_nanos = (later.time - earlier.time).whole_nanoseconds();
    if wall_nanos <= 0 {
        return 0.0;
    }
    let used_nanos = later.usage_nanos.checked_sub(earlier.usage_nanos).unwrap_or(later.usage_nanos);
    used_nanos as f64 / wall_nanos as f64 * 100.0
}

/// The sample of a reading, with the CPU percentage the caller measured and the latest storage.
pub(super) fn sample(reading: &TaskReading, percent: f64, storage: Option<StorageUsage>) -> Sample {
    let mut sample =
        Sample { sample_time: reading.read_time, cpu: None, memory: None, pids: None, unsupported: None, storage };
    match &reading.metrics {
        TaskMetrics::NoTask => {}
        TaskMetrics::Undecodable(why) => sample.unsupported = Some(why.clone()),
        TaskMetrics::Cgroup(stats) => {
            sample.cpu = stats.cpu.map(|cpu| CpuSample {
                percent_of_one_core: percent,
                stats: cpu,
                limit_millis: reading.cpu_limit_millis,
            });
            sample.memory = stats.memory;
            sample.pids = stats.pids;
            let missing: Vec<&str> =
                [("cpu", stats.cpu.is_none()), ("memory", stats.memory.is_none()), ("pids", stats.pids.is_none())]
                    .into_iter()
                    .filter_map(|(name, missing)| missing.then_some(name))
                    .collect();
            if !missing.is_empty() {
                sample.unsupported = Some(format!(
                    "containerd reports no {} figures for this workspace's cgroup; the host does not account them (is the controller mounted?)",
                    missing.join(", ")
                ));
            }
        }
    }
    sample
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CgroupStats;

    fn at(seconds: f64) -> OffsetDateTime {
        let millis = (seconds * 1000.0).round() as i64;
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_700_000_000) + time::Duration::milliseconds(millis)
    }

    fn point(usage_nanos: u64, seconds: f64) -> CpuPoint {
        CpuPoint { usage_nanos, time: at(seconds) }
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time_of_one_core() {
        // Half a core for two seconds.
        assert_eq!(cpu_percent(point(5_000_000_000, 10.0), point(6_000_000_000, 12.0)), 50.0);
        // Two and a half cores for 100 ms: not divided by the number of cores.
        let percent = cpu_percent(point(0, 0.0), point(250_000_000, 0.1));
        assert!((percent - 250.0).abs() < 1e-6, "{percent}");
        // Idle.
        assert_eq!(cpu_percent(point(7, 1.0), point(7, 2.0)), 0.0);
    }

    #[test]
    fn cpu_percent_of_a_restarted_task_counts_its_own_time_and_no_window_reads_zero() {
        // The counter fell from 9 s to 0.3 s: a new task used 0.3 s within the 1 s window.
        let percent = cpu_percent(point(9_000_000_000, 5.0), point(300_000_000, 6.0));
        assert!((percent - 30.0).abs() < 1e-6, "{percent}");
        assert_eq!(cpu_percent(point(0, 5.0), point(1_000, 5.0)), 0.0);
        assert_eq!(cpu_percent(point(0, 6.0), point(1_000, 5.0)), 0.0, "clock went back");
    }

    #[test]
    fn memory_percent_is_the_working_set_over_the_limit() {
        let memory = MemoryStats { usage_bytes: 80, working_set_bytes: 32 << 20, limit_bytes: 64 << 20, oom_kills: 0 };
        assert_eq!(memory_percent(&memory), 50.0);
        assert_eq!(memory_percent(&MemoryStats { limit_bytes: 0, ..memory }), 0.0, "unlimited");
        assert_eq!(memory_percent(&MemoryStats { working_set_bytes: 65 << 20, ..memory }), 100.0);
    }

    #[test]
    fn a_sample_of_a_running_task_has_every_figure_and_of_a_stopped_one_none() {
        let stats = CgroupStats {
            read_time: None,
            cpu: Some(CpuStats { usage_nanos: 10, user_nanos: 6, system_nanos: 4, throttled_nanos: 1 }),
            memory: Some(MemoryStats { usage_bytes: 100, working_set_bytes: 80, limit_bytes: 0, oom_kills: 0 }),
            pids: Some(PidsStats { current: 2, limit: 64 }),
        };
        let running = TaskReading { metrics: TaskMetrics::Cgroup(stats), read_time: at(0.0), cpu_limit_millis: 500 };
        let sample = sample(&running, 42.0, None);
        let cpu = sample.cpu.unwrap();
        assert_eq!((cpu.percent_of_one_core, cpu.limit_millis, cpu.stats.user_nanos), (42.0, 500, 6));
        assert_eq!(sample.pids, Some(PidsStats { current: 2, limit: 64 }));
        assert_eq!(sample.unsupported, None);

        let stopped = TaskReading { metrics: TaskMetrics::NoTask, read_time: at(1.0), cpu_limit_millis: 500 };
        let sample = super::sample(&stopped, 0.0, None);
        assert!(sample.cpu.is_none() && sample.memory.is_none() && sample.pids.is_none());
        assert_eq!((sample.unsupported, sample.sample_time), (None, at(1.0)));
    }

    #[test]
    fn figures_that_cannot_be_read_are_named() {
        let stats = CgroupStats { pids: Some(PidsStats { current: 1, limit: 0 }), ..CgroupStats::default() };
        let reading = TaskReading { metrics: TaskMetrics::Cgroup(stats), read_time: at(0.0), cpu_limit_millis: 0 };
        let why = sample(&reading, 0.0, None).unsupported.unwrap();
        assert!(why.contains("no cpu, memory figures"), "{why}");
        let undecodable = TaskReading {
            metrics: TaskMetrics::Undecodable("containerd reports task metrics as \"x\"".to_owned()),
            read_time: at(0.0),
            cpu_limit_millis: 0,
        };
        let sample = sample(&undecodable, 0.0, None);
        assert!(sample.cpu.is_none() && sample.unsupported.unwrap().contains("\"x\""));
    }
}
