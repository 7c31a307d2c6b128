//! `Tasks.Metrics`: one call per reading, and the decoding of the cgroup figures in it.
//!
//! containerd wraps a task's figures in an `Any` whose type is `io.containerd.cgroups.v1.Metrics`
//! on cgroup v1 hosts and `io.containerd.cgroups.v2.Metrics` on cgroup v2 hosts (no leading `/`,
//! so `Any::to_msg` refuses them: the bytes are decoded by type name here). Neither message is in
//! containerd-client; the structs below declare the fields berth reads with the field numbers of
//! containerd/cgroups' `stats/v1/metrics.proto` (= `cgroup1/stats`) and `cgroup2/stats/metrics.proto`,
//! and prost skips the rest (hugetlb, blkio, rdma, network, io).

use containerd_client::services::v1::MetricsRequest;
use containerd_client::services::v1::tasks_client::TasksClient;
use prost::Message as _;
use tracing::debug;

use super::Containerd;
use super::client::request;
use crate::error::Result;
use crate::runtime::{CgroupStats, CpuStats, MemoryStats, PidsStats, TaskMetrics};

const V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
const V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// Limits at or above this mean "unlimited": cgroup v1 reports an unlimited memory limit as
/// 9223372036854771712 (the largest page-aligned i64), v2 and the pids controller as u64::MAX or
/// 0 depending on the containerd version.
const UNLIMITED_FROM: u64 = 1 << 62;

impl Containerd {
    pub(super) async fn task_metrics_of(&self, id: &str) -> Result<TaskMetrics> {
        let filter = MetricsRequest { filters: vec![format!("id=={id}")] };
        let response = TasksClient::new(self.channel.clone())
            .metrics(request(&self.namespace, filter))
            .await
            .map_err(|status| self.map_status("task metrics", status))?;
        // One line per containerd call, so a test (or an operator at debug level) can count them.
        debug!(workspace_id = id, "containerd task metrics read");
        // containerd skips tasks whose shim cannot be asked (not running, or gone).
        let Some(metric) = response.into_inner().metrics.into_iter().find(|metric| metric.id == id) else {
            return Ok(TaskMetrics::NoTask);
        };
        let read_time = metric.timestamp.and_then(|stamp| {
            time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(stamp.seconds) * 1_000_000_000 + i128::from(stamp.nanos),
            )
            .ok()
        });
        let Some(data) = metric.data else {
            return Ok(TaskMetrics::Undecodable("containerd sent task metrics without figures".to_owned()));
        };
        Ok(match decode(&data.type_url, &data.value) {
            Ok(stats) => TaskMetrics::Cgroup(CgroupStats { read_time, ..stats }),
            Err(why) => TaskMetrics::Undecodable(why),
        })
    }
}

/// Decodes the figures of one task by their `Any` type (with or without a `type.googleapis.com/`
/// style prefix).
pub(super) fn decode(type_url: &str, bytes: &[u8]) -> std::result::Result<CgroupStats, String> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let undecodable = |err: prost::DecodeError| format!("containerd's {name} figures do not decode: {err}");
    match name {
        V1_TYPE => v1::Metrics::decode(bytes).map(v1::stats).map_err(undecodable),
        V2_TYPE => v2::Metrics::decode(bytes).map(v2::stats).map_err(undecodable),
        other => Err(format!(
            "containerd reports task metrics as {other:?}, which berth cannot decode (it decodes cgroup v1 and v2 figures)"
        )),
    }
}

/// A limit as berth reports it: 0 for unlimited.
fn limit(value: u64) -> u64 {
    if value >= UNLIMITED_FROM { 0 } else { value }
}

/// cgroup v1 (`io.containerd.cgroups.v1`), one hierarchy per controller.
mod v1 {
    use super::{CgroupStats, CpuStats, MemoryStats, PidsStats, limit};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "2")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "3")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
        #[prost(message, optional, tag = "9")]
        pub memory_oom_control: Option<MemoryOomControl>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub limit: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(message, optional, tag = "1")]
        pub usage: Option<CpuUsage>,
        #[prost(message, optional, tag = "2")]
        pub throttling: Option<Throttle>,
    }

    /// Nanoseconds.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuUsage {
        #[prost(uint64, tag = "1")]
        pub total: u64,
        #[prost(uint64, tag = "2")]
        pub kernel: u64,
        #[prost(uint64, tag = "3")]
        pub user: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Throttle {
        #[prost(uint64, tag = "3")]
        pub throttled_time: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "30")]
        pub total_inactive_file: u64,
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryOomControl {
        #[prost(uint64, tag = "3")]
        pub oom_kill: u64,
    }

    pub fn stats(metrics: Metrics) -> CgroupStats {
        let oom_kills = metrics.memory_oom_control.map_or(0, |control| control.oom_kill);
        CgroupStats {
            read_time: None,
            cpu: metrics.cpu.and_then(|cpu| {
                let usage = cpu.usage?;
                Some(CpuStats {
                    usage_nanos: usage.total,
                    user_nanos: usage.user,
                    system_nanos: usage.kernel,
                    throttled_nanos: cpu.throttling.map_or(0, |throttle| throttle.throttled_time),
                })
            }),
            memory: metrics.memory.and_then(|memory| {
                let usage = memory.usage?;
                Some(MemoryStats {
                    usage_bytes: usage.usage,
                    // As cAdvisor and the kubelet compute it on v1.
                    working_set_bytes: usage.usage.saturating_sub(memory.total_inactive_file),
                    limit_bytes: limit(usage.limit),
                    oom_kills,
                })
            }),
            pids: metrics.pids.map(|pids| PidsStats { current: pids.current, limit: limit(pids.limit) }),
        }
    }
}

/// cgroup v2 (`io.containerd.cgroups.v2`), the unified hierarchy.
mod v2 {
    use super::{CgroupStats, CpuStats, MemoryStats, PidsStats, limit};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "1")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "2")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
        #[prost(message, optional, tag = "8")]
        pub memory_events: Option<MemoryEvents>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub limit: u64,
    }

    /// Microseconds.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(uint64, tag = "1")]
        pub usage_usec: u64,
        #[prost(uint64, tag = "2")]
        pub user_usec: u64,
        #[prost(uint64, tag = "3")]
        pub system_usec: u64,
        #[prost(uint64, tag = "6")]
        pub throttled_usec: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "13")]
        pub inactive_file: u64,
        #[prost(uint64, tag = "32")]
        pub usage: u64,
        #[prost(uint64, tag = "33")]
        pub usage_limit: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEvents {
        #[prost(uint64, tag = "5")]
        pub oom_kill: u64,
    }

    pub fn stats(metrics: Metrics) -> CgroupStats {
        let micros = |value: u64| value.saturating_mul(1000);
        let oom_kills = metrics.memory_events.map_or(0, |events| events.oom_kill);
        CgroupStats {
            read_time: None,
            cpu: metrics.cpu.map(|cpu| CpuStats {
                usage_nanos: micros(cpu.usage_usec),
                user_nanos: micros(cpu.user_usec),
                system_nanos: micros(cpu.system_usec),
                throttled_nanos: micros(cpu.throttled_usec),
            }),
            memory: metrics.memory.map(|memory| MemoryStats {
                usage_bytes: memory.usage,
                working_set_bytes: memory.usage.saturating_sub(memory.inactive_file),
                limit_bytes: limit(memory.usage_limit),
                oom_kills,
            }),
            pids: metrics.pids.map(|pids| PidsStats { current: pids.current, limit: limit(pids.limit) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 message shaped like what containerd 1.6.20 sends on this project's cgroup v1 host
    /// (`ctr tasks metrics --format json` shows it), here with a memory limit of 64 MiB and a
    /// pids limit of 64, and with fields berth does not read (hugetlb, per-CPU usage, cache,
    /// rss, swap, blkio) in between, so skipping them is tested too.
    fn v1_bytes() -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint, uint64};
        fn message(tag: u32, body: &[u8], out: &mut Vec<u8>) {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(body.len() as u64, out);
            out.extend_from_slice(body);
        }
        let mut hugetlb = Vec::new();
        uint64::encode(1, &4096, &mut hugetlb);
        prost::encoding::string::encode(4, &"2MB".to_owned(), &mut hugetlb);
        let mut pids = Vec::new();
        uint64::encode(1, &3, &mut pids);
        uint64::encode(2, &64, &mut pids);
        let mut usage = Vec::new();
        uint64::encode(1, &26_064_633, &mut usage);
        uint64::encode(2, &10_000_000, &mut usage);
        uint64::encode(3, &10_000_000, &mut usage);
        uint64::encode_packed(4, &[25_931_495, 133_138], &mut usage);
        let mut throttle = Vec::new();
        uint64::encode(1, &40, &mut throttle);
        uint64::encode(2, &12, &mut throttle);
        uint64::encode(3, &350_000_000, &mut throttle);
        let mut cpu = Vec::new();
        message(1, &usage, &mut cpu);
        message(2, &throttle, &mut cpu);
        let mut entry = Vec::new();
        uint64::encode(1, &67_108_864, &mut entry);
        uint64::encode(2, &3_559_424, &mut entry);
        uint64::encode(3, &4_000_000, &mut entry);
        let mut swap = Vec::new();
        uint64::encode(1, &9_223_372_036_854_771_712, &mut swap);
        let mut memory = Vec::new();
        uint64::encode(1, &8192, &mut memory); // cache
        uint64::encode(2, &49_152, &mut memory); // rss
        uint64::encode(16, &67_108_864, &mut memory); // hierarchical_memory_limit
        uint64::encode(30, &1_048_576, &mut memory); // total_inactive_file
        message(33, &entry, &mut memory);
        message(34, &swap, &mut memory);
        let mut blkio_entry = Vec::new();
        prost::encoding::string::encode(1, &"Read".to_owned(), &mut blkio_entry);
        uint64::encode(5, &512, &mut blkio_entry);
        let mut blkio = Vec::new();
        message(1, &blkio_entry, &mut blkio);
        let mut oom = Vec::new();
        uint64::encode(3, &2, &mut oom);
        let mut metrics = Vec::new();
        message(1, &hugetlb, &mut metrics);
        message(2, &pids, &mut metrics);
        message(3, &cpu, &mut metrics);
        message(4, &memory, &mut metrics);
        message(5, &blkio, &mut metrics);
        message(9, &oom, &mut metrics);
        metrics
    }

    #[test]
    fn cgroup_v1_figures_decode_with_the_fields_berth_does_not_read_skipped() {
        let stats = decode(V1_TYPE, &v1_bytes()).unwrap();
        assert_eq!(
            stats.cpu,
            Some(CpuStats {
                usage_nanos: 26_064_633,
                user_nanos: 10_000_000,
                system_nanos: 10_000_000,
                throttled_nanos: 350_000_000
            })
        );
        assert_eq!(
            stats.memory,
            Some(MemoryStats {
                usage_bytes: 3_559_424,
                working_set_bytes: 3_559_424 - 1_048_576,
                limit_bytes: 67_108_864,
                oom_kills: 2
            })
        );
        assert_eq!(stats.pids, Some(PidsStats { current: 3, limit: 64 }));
    }

    #[test]
    fn unlimited_v1_limits_read_as_zero() {
        let metrics = v1::Metrics {
            pids: Some(v1::PidsStat { current: 1, limit: 0 }),
            cpu: None,
            memory: Some(v1::MemoryStat {
                total_inactive_file: 0,
                usage: Some(v1::MemoryEntry { limit: 9_223_372_036_854_771_712, usage: 524_288 }),
            }),
            memory_oom_control: None,
        };
        let stats = decode(&format!("/{V1_TYPE}"), &metrics.encode_to_vec()).unwrap();
        let memory = stats.memory.unwrap();
        assert_eq!((memory.limit_bytes, memory.usage_bytes, memory.oom_kills), (0, 524_288, 0));
        assert_eq!(stats.pids, Some(PidsStats { current: 1, limit: 0 }));
        assert_eq!(stats.cpu, None, "a v1 host without cpuacct reports no cpu figures");
    }

    #[test]
    fn cgroup_v2_figures_decode_from_microseconds() {
        use prost::encoding::{WireType, encode_key, encode_varint, uint64};
        let mut pids = Vec::new();
        uint64::encode(1, &5, &mut pids);
        uint64::encode(2, &u64::MAX, &mut pids);
        let mut cpu = Vec::new();
        for (tag, value) in [(1, 1_500_000u64), (2, 1_000_000), (3, 500_000), (4, 10), (5, 3), (6, 250_000)] {
            uint64::encode(tag, &value, &mut cpu);
        }
        let mut memory = Vec::new();
        for (tag, value) in [(1, 7u64), (2, 9), (13, 2_000_000), (32, 70_000_000), (33, 134_217_728), (34, 0)] {
            uint64::encode(tag, &value, &mut memory);
        }
        let mut events = Vec::new();
        uint64::encode(4, &1, &mut events);
        uint64::encode(5, &1, &mut events);
        let mut bytes = Vec::new();
        for (tag, body) in [(1u32, pids), (2, cpu), (4, memory), (8, events)] {
            encode_key(tag, WireType::LengthDelimited, &mut bytes);
            encode_varint(body.len() as u64, &mut bytes);
            bytes.extend_from_slice(&body);
        }
        let stats = decode(V2_TYPE, &bytes).unwrap();
        assert_eq!(
            stats.cpu,
            Some(CpuStats {
                usage_nanos: 1_500_000_000,
                user_nanos: 1_000_000_000,
                system_nanos: 500_000_000,
                throttled_nanos: 250_000_000
            })
        );
        assert_eq!(
            stats.memory,
            Some(MemoryStats {
                usage_bytes: 70_000_000,
                working_set_bytes: 68_000_000,
                limit_bytes: 134_217_728,
                oom_kills: 1
            })
        );
        assert_eq!(stats.pids, Some(PidsStats { current: 5, limit: 0 }), "max reads as unlimited");
    }

    #[test]
    fn unknown_metric_types_and_corrupt_bytes_say_why() {
        let err = decode("io.containerd.windows.v1.Metrics", b"").unwrap_err();
        assert!(err.contains("io.containerd.windows.v1.Metrics") && err.contains("cgroup v1 and v2"), "{err}");
        let err = decode(V2_TYPE, &[0x0a, 0xff]).unwrap_err();
        assert!(err.contains("do not decode"), "{err}");
    }
}
