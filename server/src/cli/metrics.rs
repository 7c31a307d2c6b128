//! `berth metrics ID [--watch]`: a workspace's CPU, memory, pids and storage, once (GetMetrics)
//! or one line per sample as they come (WatchMetrics).

use std::io::IsTerminal as _;

use berth_api::v1 as pb;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

use super::connect::Channel;
use super::{OutputFormat, describe};

/// What `berth metrics` was asked.
#[derive(Debug)]
pub struct MetricsOptions {
    pub workspace_id: String,
    /// Stream samples instead of printing one.
    pub watch: bool,
    /// Seconds between streamed samples (0.1 to 3600).
    pub interval: f64,
    pub output: OutputFormat,
    /// `berth top`: on a terminal, each sample redraws the table in place.
    pub in_place: bool,
}

/// Runs `berth metrics` and `berth top`.
pub async fn run(channel: Channel, options: MetricsOptions) -> Result<(), String> {
    let mut client = WorkspaceServiceClient::new(channel);
    if !options.watch {
        let request = pb::GetMetricsRequest { workspace_id: options.workspace_id };
        let metrics = client.get_metrics(request).await.map_err(describe)?.into_inner().metrics.unwrap_or_default();
        match options.output {
            OutputFormat::Json => write_line(&format!("{:#}", metrics_json(&metrics)))?,
            OutputFormat::Table => write_line(&table(&metrics))?,
        };
        return Ok(());
    }
    let interval = std::time::Duration::try_from_secs_f64(options.interval)
        .map_err(|_| format!("--interval {} is not a number of seconds", options.interval))?;
    let interval = prost_types::Duration::try_from(interval).map_err(|err| format!("--interval: {err}"))?;
    let id = options.workspace_id.clone();
    let request = pb::WatchMetricsRequest { workspace_id: options.workspace_id, interval: Some(interval) };
    let mut samples = client.watch_metrics(request).await.map_err(describe)?.into_inner();
    let redraw = options.in_place && options.output == OutputFormat::Table && std::io::stdout().is_terminal();
    if redraw {
        while let Some(sample) = samples.next().await {
            let metrics = sample.map_err(describe)?.metrics.unwrap_or_default();
            // Home, clear the screen, then the table: a `top` that refreshes in place.
            if !write_line(&format!("\x1b[H\x1b[2J{}\n{}", title(&id, &metrics), table(&metrics)))? {
                return Ok(());
            }
        }
        return Ok(());
    }
    if options.output == OutputFormat::Table && !write_line(&line_header())? {
        return Ok(());
    }
    while let Some(sample) = samples.next().await {
        let metrics = sample.map_err(describe)?.metrics.unwrap_or_default();
        let text = match options.output {
            // One JSON object per line, so a script can read the stream line by line.
            OutputFormat::Json => metrics_json(&metrics).to_string(),
            OutputFormat::Table => line(&metrics),
        };
        if !write_line(&text)? {
            return Ok(());
        }
    }
    Ok(())
}

fn title(workspace_id: &str, metrics: &pb::WorkspaceMetrics) -> String {
    format!("berth top {workspace_id}   {}   (Ctrl-C to quit)", time_text(metrics.sample_time.as_ref()))
}

/// Writes a line to stdout at once; false when the reader went away (`berth metrics -w | head`
/// ends quietly instead of panicking on the broken pipe).
fn write_line(text: &str) -> Result<bool, String> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(format!("cannot write to stdout: {err}")),
    }
}

/// `berth metrics ID`: one row per figure.
fn table(metrics: &pb::WorkspaceMetrics) -> String {
    let mut rows = vec![("SAMPLED", time_text(metrics.sample_time.as_ref()))];
    rows.push(("CPU", metrics.cpu.as_ref().map_or_else(not_running, cpu_text)));
    rows.push(("MEMORY", metrics.memory.as_ref().map_or_else(not_running, memory_text)));
    rows.push(("PIDS", metrics.pids.as_ref().map_or_else(not_running, pids_text)));
    match &metrics.storage {
        Some(storage) => {
            rows.push(("ROOTFS", format!("{} in {} inodes", size_text(storage.rootfs_bytes), storage.rootfs_inodes)));
            rows.push(("DATA", size_text(storage.data_bytes)));
            rows.push(("STORAGE AT", time_text(storage.sample_time.as_ref())));
        }
        None => rows.push(("ROOTFS", "- (not measured yet)".to_owned())),
    }
    if !metrics.supported {
        rows.push(("UNSUPPORTED", metrics.unsupported_reason.clone()));
    }
    rows.iter().map(|(name, value)| format!("{name:<15}{value}")).collect::<Vec<_>>().join("\n")
}

fn not_running() -> String {
    "- (not running)".to_owned()
}

fn cpu_text(cpu: &pb::CpuMetrics) -> String {
    let limit = if cpu.limit_millis == 0 { "unlimited".to_owned() } else { format!("limit {}m", cpu.limit_millis) };
    format!(
        "{:.1}% of one core ({limit}), {:.2} s used, {:.2} s throttled",
        cpu.percent_of_one_core,
        cpu.usage_nanos as f64 / 1e9,
        cpu.throttled_nanos as f64 / 1e9
    )
}

fn memory_text(memory: &pb::MemoryMetrics) -> String {
    let limit = if memory.limit_bytes == 0 {
        "unlimited".to_owned()
    } else {
        format!("{:.1}% of {}", memory.percent, size_text(memory.limit_bytes))
    };
    format!(
        "{} working set ({limit}), {} used, {} OOM kills",
        size_text(memory.working_set_bytes),
        size_text(memory.usage_bytes),
        memory.oom_kill_count
    )
}

fn pids_text(pids: &pb::PidsMetrics) -> String {
    if pids.limit == 0 {
        format!("{} (unlimited)", pids.current)
    } else {
        format!("{} of {}", pids.current, pids.limit)
    }
}

fn line_header() -> String {
    format!("{:<20} {:>7} {:>11} {:>6} {:>5} {:>11} {:>11}", "TIME", "CPU%", "MEMORY", "MEM%", "PIDS", "ROOTFS", "DATA")
}

/// One sample on one line: `-` for what a stopped workspace does not have.
fn line(metrics: &pb::WorkspaceMetrics) -> String {
    let dash = || "-".to_owned();
    let cpu = metrics.cpu.as_ref().map_or_else(dash, |cpu| format!("{:.1}", cpu.percent_of_one_core));
    let memory = metrics.memory.as_ref().map_or_else(dash, |memory| size_text(memory.working_set_bytes));
    let memory_percent = metrics.memory.as_ref().map_or_else(dash, |memory| format!("{:.1}", memory.percent));
    let pids = metrics.pids.as_ref().map_or_else(dash, |pids| pids.current.to_string());
    let rootfs = metrics.storage.as_ref().map_or_else(dash, |storage| size_text(storage.rootfs_bytes));
    let data = metrics.storage.as_ref().map_or_else(dash, |storage| size_text(storage.data_bytes));
    format!(
        "{:<20} {cpu:>7} {memory:>11} {memory_percent:>6} {pids:>5} {rootfs:>11} {data:>11}",
        short_time(metrics.sample_time.as_ref())
    )
}

fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn rfc3339(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    let timestamp = timestamp?;
    let time = time::OffsetDateTime::from_unix_timestamp(timestamp.seconds).ok()?
        + time::Duration::nanoseconds(i64::from(timestamp.nanos));
    time.format(&time::format_description::well_known::Rfc3339).ok()
}

fn time_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    rfc3339(timestamp).unwrap_or_else(|| "-".to_owned())
}

/// Seconds-precision UTC time for the one-line form.
fn short_time(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(time) = timestamp.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()) else {
        return "-".to_owned();
    };
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time.format(&format).unwrap_or_default()
}

/// The proto3 JSON form of a sample (64-bit integers as strings, unset messages as null).
fn metrics_json(metrics: &pb::WorkspaceMetrics) -> Value {
    json!({
        "sampleTime": rfc3339(metrics.sample_time.as_ref()),
        "supported": metrics.supported,
        "unsupportedReason": metrics.unsupported_reason,
        "cpu": metrics.cpu.as_ref().map(|cpu| json!({
            "percentOfOneCore": cpu.percent_of_one_core,
            "usageNanos": cpu.usage_nanos.to_string(),
            "userNanos": cpu.user_nanos.to_string(),
            "systemNanos": cpu.system_nanos.to_string(),
            "limitMillis": cpu.limit_millis.to_string(),
            "throttledNanos": cpu.throttled_nanos.to_string(),
        })),
        "memory": metrics.memory.as_ref().map(|memory| json!({
            "usageBytes": memory.usage_bytes.to_string(),
            "workingSetBytes": memory.working_set_bytes.to_string(),
            "limitBytes": memory.limit_bytes.to_string(),
            "percent": memory.percent,
            "oomKillCount": memory.oom_kill_count.to_string(),
        })),
        "pids": metrics.pids.as_ref().map(|pids| json!({
            "current": pids.current.to_string(),
            "limit": pids.limit.to_string(),
        })),
        "storage": metrics.storage.as_ref().map(|storage| json!({
            "rootfsBytes": storage.rootfs_bytes.to_string(),
            "rootfsInodes": storage.rootfs_inodes.to_string(),
            "dataBytes": storage.data_bytes.to_string(),
            "sampleTime": rfc3339(storage.sample_time.as_ref()),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> pb::WorkspaceMetrics {
        pb::WorkspaceMetrics {
            sample_time: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
            supported: true,
            cpu: Some(pb::CpuMetrics { percent_of_one_core: 52.26, limit_millis: 1500, ..Default::default() }),
            memory: Some(pb::MemoryMetrics {
                usage_bytes: 70 << 20,
                working_set_bytes: 64 << 20,
                limit_bytes: 512 << 20,
                percent: 12.5,
                oom_kill_count: 0,
            }),
            pids: Some(pb::PidsMetrics { current: 3, limit: 64 }),
            storage: Some(pb::StorageMetrics {
                rootfs_bytes: 51 << 20,
                rootfs_inodes: 9,
                data_bytes: 50 << 20,
                sample_time: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_sample_reads_on_one_line_with_dashes_for_a_stopped_workspace() {
        assert_eq!(line(&running()), "1970-01-01T00:00:00Z    52.3    64.0 MiB   12.5     3    51.0 MiB    50.0 MiB");
        let stopped = pb::WorkspaceMetrics { cpu: None, memory: None, pids: None, ..running() };
        assert_eq!(line(&stopped), "1970-01-01T00:00:00Z       -           -      -     -    51.0 MiB    50.0 MiB");
        assert_eq!(
            line_header().split_whitespace().collect::<Vec<_>>(),
            ["TIME", "CPU%", "MEMORY", "MEM%", "PIDS", "ROOTFS", "DATA"]
        );
    }

    #[test]
    fn figures_read_with_their_limits_and_json_uses_proto3_names() {
        let metrics = running();
        assert_eq!(
            cpu_text(metrics.cpu.as_ref().unwrap()),
            "52.3% of one core (limit 1500m), 0.00 s used, 0.00 s throttled"
        );
        assert_eq!(
            memory_text(metrics.memory.as_ref().unwrap()),
            "64.0 MiB working set (12.5% of 512.0 MiB), 70.0 MiB used, 0 OOM kills"
        );
        assert_eq!(pids_text(&pb::PidsMetrics { current: 2, limit: 0 }), "2 (unlimited)");
        let value = metrics_json(&metrics);
        assert_eq!(value["cpu"]["limitMillis"], "1500");
        assert_eq!(value["storage"]["dataBytes"], (50u64 << 20).to_string());
        assert_eq!(metrics_json(&pb::WorkspaceMetrics::default())["cpu"], Value::Null);
    }
}
