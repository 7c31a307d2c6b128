//! `make bench`: berth's lifecycle against ctr on the same containerd, in one run. Prints the
//! median of each measurement over ROUNDS rounds and the ratio berth / ctr.
//!
//! - create → ready of an already pulled small image vs `ctr run -d` of the same image;
//! - create of the multi-layer image with nothing in the content store (pull + unpack + create
//!   + start) vs `ctr images pull --plain-http` alone (pull + unpack);
//! - stop of an idle workspace (target ≤ 100 ms);
//! - exec round trip of `true` through ProcessService.Start (request sent → `end` received) vs
//!   `ctr tasks exec` of the same in the same workspace's container (target ≤ 0.6x);
//! - output throughput of 256 MiB of `/dev/zero` through Start to a client draining the stream
//!   (target ≥ 300 MiB/s), and the server's RSS growth meanwhile (target ≤ 32 MiB).

use std::time::{Duration, Instant};

use berth_api::v1::create_workspace_response::Event;
use berth_api::v1::process_event::Event as ProcessEvent;
use berth_api::v1::process_event::data::Output;
use berth_api::v1::process_service_client::ProcessServiceClient;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateWorkspaceRequest, DeleteWorkspaceRequest, LayerState, ProcessConfig, PullPolicy, StartRequest,
    StopWorkspaceRequest,
};
use berth_e2e::{BerthServer, Testbed};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

const ROUNDS: usize = 10;
/// Rounds of the process measurements (issue 8 asks for medians of at least 20).
const PROCESS_ROUNDS: usize = 20;
/// Bytes of the throughput run: `head -c 268435456 /dev/zero` (256 MiB).
const THROUGHPUT_BYTES: u64 = 256 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

type Client = WorkspaceServiceClient<Channel>;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn report(name: &str, berth: Duration, baseline: Option<(&str, Duration)>, target: &str) {
    match baseline {
        Some((what, baseline)) => println!(
            "{name:<34} berth {:>8.1} ms   {what} {:>8.1} ms   ratio {:.2}x   (target {target})",
            ms(berth),
            ms(baseline),
            berth.as_secs_f64() / baseline.as_secs_f64()
        ),
        None => println!("{name:<34} berth {:>8.1} ms   (target {target})", ms(berth)),
    }
}

/// Prints a measurement that is not a duration (throughput, memory), in report()'s columns.
fn report_value(name: &str, who: &str, value: f64, unit: &str, detail: &str, target: &str) {
    println!("{name:<34} {who:<5} {value:>8.1} {unit:<6}{detail}   (target {target})");
}

/// What one Start stream delivered.
struct Run {
    elapsed: Duration,
    stdout_bytes: u64,
    /// Data events received.
    messages: u64,
    exit_code: i32,
}

/// Starts `cmd args` in `workspace` and drains its stream to `end`; the time runs from the request
/// being sent to `end` being received.
async fn run_process(processes: &mut ProcessServiceClient<Channel>, workspace: &str, cmd: &str, args: &[&str]) -> Run {
    let request = StartRequest {
        workspace_id: workspace.to_owned(),
        process: Some(ProcessConfig {
            cmd: cmd.to_owned(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let started = Instant::now();
    let mut stream = processes.start(request).await.expect("start").into_inner();
    let mut stdout_bytes = 0;
    let mut messages = 0;
    while let Some(item) = stream.next().await {
        match item.expect("process event").event.and_then(|event| event.event) {
            Some(ProcessEvent::Data(data)) => {
                if let Some(Output::Stdout(bytes)) = data.output {
                    stdout_bytes += bytes.len() as u64;
                    messages += 1;
                }
            }
            Some(ProcessEvent::End(end)) => {
                let elapsed = started.elapsed();
                assert!(end.error.is_empty(), "{cmd} ended with an error: {end:?}");
                return Run { elapsed, stdout_bytes, messages, exit_code: end.exit_code };
            }
            _ => {}
        }
    }
    panic!("the stream of {cmd} ended without end");
}

/// A `Vm*` field of /proc/PID/status, in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|line| line.starts_with(field)).unwrap_or_else(|| panic!("no {field} in status"));
    let kib: u64 = line.split_whitespace().nth(1).and_then(|value| value.parse().ok()).expect("a kB value");
    kib * 1024
}

/// CPU time (user + system) `pid` has used so far, from /proc/PID/stat (clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a command name") + 1..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Runs `ctr tasks exec` of `args` with its output to /dev/null, as `ctr ... > /dev/null` would.
fn timed_ctr_exec_to_null(testbed: &Testbed, namespace: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    let status = std::process::Command::new("ctr")
        .arg("--address")
        .arg(&testbed.containerd_socket)
        .args(["--namespace", namespace, "tasks", "exec"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run ctr");
    assert!(status.success(), "ctr tasks exec {args:?} failed: {status}");
    started.elapsed()
}

/// Resets the peak RSS (VmHWM) of `pid` to its current RSS (Linux ≥ 4.0), so the peak read after
/// a run is the run's own; returns false when the kernel refuses.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The exec round trip of `true` and the output throughput, in a workspace of their own.
async fn bench_processes(testbed: &Testbed, server: &BerthServer, client: &mut Client, image: &str) {
    const WORKSPACE: &str = "process-bench";
    println!("process bench: {PROCESS_ROUNDS} rounds each, medians");
    create(client, WORKSPACE, image, PullPolicy::IfNotPresent).await;
    let mut processes = ProcessServiceClient::new(server.channel().await);

    // Exec round trip of `true`: Start → end vs `ctr tasks exec`, which includes ctr's own start
    // (as a user runs it). The two alternate so that drift on the shared machine hits both alike.
    for _ in 0..3 {
        run_process(&mut processes, WORKSPACE, "true", &[]).await;
    }
    let _ = testbed.ctr(&server.namespace, &["tasks", "exec", "--exec-id", "bench-warmup", WORKSPACE, "true"]);
    let mut berth_exec = Vec::new();
    let mut ctr_exec = Vec::new();
    let mut ctr_alone = Vec::new();
    for round in 0..PROCESS_ROUNDS {
        let run = run_process(&mut processes, WORKSPACE, "true", &[]).await;
        assert_eq!(run.exit_code, 0, "true exited {}", run.exit_code);
        berth_exec.push(run.elapsed);
        let exec_id = format!("bench-true-{round}");
        ctr_exec.push(timed_ctr(
            testbed,
            &server.namespace,
            &["tasks", "exec", "--exec-id", &exec_id, WORKSPACE, "true"],
        ));
        ctr_alone.push(timed_ctr(testbed, &server.namespace, &["version"]));
    }
    let (berth_exec, ctr_exec, ctr_alone) = (median(berth_exec), median(ctr_exec), median(ctr_alone));
    report("exec round trip of true", berth_exec, Some(("ctr tasks exec", ctr_exec)), "<= 0.6x");
    // What ctr spends before containerd's exec (its own start and connect, `ctr version`): the
    // rest is containerd's Exec + Start + Wait, which berth pays too.
    report(
        "  same, vs ctr minus its own start",
        berth_exec,
        Some(("ctr exec - ctr version", ctr_exec.saturating_sub(ctr_alone))),
        "informational",
    );

    // Output throughput of 256 MiB, and the server's resident memory meanwhile: the growth is the
    // run's peak (VmHWM, reset before each round) over the RSS at its start.
    let pid = server.pid();
    let count = THROUGHPUT_BYTES.to_string();
    run_process(&mut processes, WORKSPACE, "head", &["-c", "1048576", "/dev/zero"]).await;
    let rss_start = proc_status_bytes(pid, "VmRSS:");
    let mut throughputs = Vec::new();
    let mut growths = Vec::new();
    let mut cpu_shares = Vec::new();
    let mut client_cpu_shares = Vec::new();
    let mut message_counts = Vec::new();
    let mut ctr_throughputs = Vec::new();
    for round in 0..PROCESS_ROUNDS {
        let before = proc_status_bytes(pid, "VmRSS:");
        assert!(reset_peak_rss(pid), "cannot reset the peak RSS of berth (pid {pid}) through clear_refs");
        let (cpu_before, client_cpu_before) = (cpu_time(pid), cpu_time(std::process::id()));
        let run = run_process(&mut processes, WORKSPACE, "head", &["-c", &count, "/dev/zero"]).await;
        cpu_shares.push((cpu_time(pid) - cpu_before).as_secs_f64() / run.elapsed.as_secs_f64() * 100.0);
        client_cpu_shares
            .push((cpu_time(std::process::id()) - client_cpu_before).as_secs_f64() / run.elapsed.as_secs_f64() * 100.0);
        let peak = proc_status_bytes(pid, "VmHWM:");
        assert_eq!(run.exit_code, 0, "head exited {}", run.exit_code);
        assert_eq!(run.stdout_bytes, THROUGHPUT_BYTES, "head's output arrived incomplete");
        message_counts.push(run.messages as f64);
        throughputs.push(THROUGHPUT_BYTES as f64 / MIB / run.elapsed.as_secs_f64());
        growths.push(peak.saturating_sub(before) as f64 / MIB);
        // The same through `ctr tasks exec` (the shim's copy into a FIFO, then ctr's), every
        // fourth round: what the runtime's own path delivers on this machine.
        if round % 4 == 0 {
            let exec_id = format!("bench-head-{round}");
            let args = ["--exec-id", &exec_id, WORKSPACE, "head", "-c", &count, "/dev/zero"];
            let elapsed = timed_ctr_exec_to_null(testbed, &server.namespace, &args);
            ctr_throughputs.push(THROUGHPUT_BYTES as f64 / MIB / elapsed.as_secs_f64());
        }
    }
    let rss_end = proc_status_bytes(pid, "VmRSS:");
    let median_of = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    // How busy berth itself was: well under 100% means the time goes elsewhere (the shim's copy
    // into the FIFO, the client, the machine's other load).
    let cpu_share = median_of(cpu_shares);
    let client_cpu_share = median_of(client_cpu_shares);
    // The size of the chunks berth reads from the FIFO (one message each): per-message costs
    // (wake-ups, framing, syscalls) weigh more the smaller they are.
    let chunk_kib = THROUGHPUT_BYTES as f64 / median_of(message_counts) / 1024.0;
    let slowest = throughputs.iter().copied().fold(f64::INFINITY, f64::min);
    let largest = growths.iter().copied().fold(0.0, f64::max);
    report_value(
        "output throughput (256 MiB)",
        "berth",
        median_of(throughputs),
        "MiB/s",
        &format!(
            "   slowest {slowest:.1} MiB/s; CPU: berth {cpu_share:.0}%, client {client_cpu_share:.0}%; {chunk_kib:.1} KiB a message"
        ),
        ">= 300 MiB/s",
    );
    let ctr_rounds = ctr_throughputs.len();
    report_value(
        "  same through ctr tasks exec",
        "ctr",
        median_of(ctr_throughputs),
        "MiB/s",
        &format!("   ({ctr_rounds} rounds, output to /dev/null)"),
        "informational",
    );
    report_value(
        "  server RSS growth during it",
        "berth",
        median_of(growths),
        "MiB",
        &format!("   largest {largest:.1} MiB; RSS {:.1} -> {:.1} MiB", rss_start as f64 / MIB, rss_end as f64 / MIB),
        "<= 32 MiB",
    );
    delete(client, WORKSPACE).await;
}

/// Runs a create to ready; returns its duration and the bytes it downloaded.
async fn create(client: &mut Client, id: &str, image: &str, policy: PullPolicy) -> (Duration, u64) {
    let started = Instant::now();
    let request = CreateWorkspaceRequest {
        workspace_id: id.to_owned(),
        image: image.to_owned(),
        pull_policy: policy.into(),
        ..Default::default()
    };
    let mut stream = client.create_workspace(request).await.expect("create").into_inner();
    let mut downloaded = 0;
    while let Some(event) = stream.next().await {
        if let Some(Event::PullProgress(progress)) = event.expect("create event").event {
            downloaded = progress.layers.iter().filter(|l| l.state() == LayerState::Done).map(|l| l.offset).sum();
        }
    }
    (started.elapsed(), downloaded)
}

async fn delete(client: &mut Client, id: &str) {
    client
        .delete_workspace(DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data: false })
        .await
        .expect("delete");
}

fn timed_ctr(testbed: &Testbed, namespace: &str, args: &[&str]) -> Duration {
    let started = Instant::now();
    testbed.ctr(namespace, args);
    started.elapsed()
}

/// Removes an image and collects its content and snapshots, so the next pull starts cold.
fn forget_image(testbed: &Testbed, namespace: &str, image: &str) {
    let _ = testbed.ctr_output(namespace, &["images", "rm", "--sync", image]);
}

#[tokio::main]
async fn main() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let busybox = testbed.image("BUSYBOX");
    let multilayer = testbed.image("MULTILAYER");
    let ctr_namespace = format!("{}-ctr", server.namespace);
    // Other namespaces would keep image content alive and make the "cold" pulls warm.
    let namespaces = testbed.ctr(&server.namespace, &["namespaces", "ls", "-q"]);
    let others: Vec<&str> =
        namespaces.lines().filter(|ns| ns.starts_with("berth-test-") && *ns != server.namespace).collect();
    if !others.is_empty() {
        let status = std::process::Command::new(testbed.repo_root().join("tests/testbed/containerd.sh"))
            .arg("purge")
            .args(&others)
            .status()
            .expect("purge namespaces");
        assert!(status.success(), "purging {others:?} failed");
    }
    println!("berth bench: {ROUNDS} rounds each, medians; containerd {}", testbed.containerd_socket.display());

    // Create of an already pulled small image vs `ctr run -d`.
    create(&mut client, "warmup", &busybox, PullPolicy::IfNotPresent).await;
    delete(&mut client, "warmup").await;
    testbed.ctr(&ctr_namespace, &["images", "pull", "--plain-http", &busybox]);
    let mut berth_create = Vec::new();
    let mut ctr_run = Vec::new();
    let mut ctr_run_seccomp = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("create-{round}");
        berth_create.push(create(&mut client, &id, &busybox, PullPolicy::IfNotPresent).await.0);
        ctr_run.push(timed_ctr(&testbed, &ctr_namespace, &["run", "-d", &busybox, &id, "sleep", "3600"]));
        let confined = format!("confined-{round}");
        ctr_run_seccomp.push(timed_ctr(
            &testbed,
            &ctr_namespace,
            &["run", "-d", "--seccomp", &busybox, &confined, "sleep", "3600"],
        ));
    }
    // berth confines every workspace with the default seccomp profile (runc compiles it into a
    // BPF filter at each start, ~20 ms here); `ctr run` applies none unless asked, so the
    // like-for-like baseline is `ctr run --seccomp`.
    let berth_create = median(berth_create);
    report(
        "create -> ready (image present)",
        berth_create,
        Some(("ctr run -d --seccomp", median(ctr_run_seccomp))),
        "<= 1.0x",
    );
    report("  same, vs unconfined ctr", berth_create, Some(("ctr run -d", median(ctr_run))), "informational");

    // Stop of an idle workspace.
    let mut stops = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        let request = StopWorkspaceRequest { workspace_id: format!("create-{round}"), timeout: None };
        client.stop_workspace(request).await.expect("stop");
        stops.push(started.elapsed());
    }
    report("stop (idle workspace)", median(stops), None, "<= 100 ms");
    let ctr_ids: Vec<String> =
        (0..ROUNDS).flat_map(|round| [format!("create-{round}"), format!("confined-{round}")]).collect();
    for round in 0..ROUNDS {
        delete(&mut client, &format!("create-{round}")).await;
    }
    for id in &ctr_ids {
        let _ = testbed.ctr_output(&ctr_namespace, &["tasks", "kill", "--signal", "SIGKILL", id]);
    }
    std::thread::sleep(Duration::from_millis(300));
    for id in &ctr_ids {
        let _ = testbed.ctr_output(&ctr_namespace, &["tasks", "rm", id]);
        let _ = testbed.ctr_output(&ctr_namespace, &["containers", "rm", id]);
    }
    forget_image(&testbed, &ctr_namespace, &busybox);

    bench_processes(&testbed, &server, &mut client, &busybox).await;

    // Cold pull of the multi-layer image: berth create (pull + unpack + create + start) vs
    // ctr pull (pull + unpack). Both namespaces forget the image between rounds.
    let mut berth_pull = Vec::new();
    let mut ctr_pull = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("pull-{round}");
        let (elapsed, downloaded) = create(&mut client, &id, &multilayer, PullPolicy::Always).await;
        assert!(downloaded > 0, "round {round} downloaded nothing: the content store was not cold");
        berth_pull.push(elapsed);
        delete(&mut client, &id).await;
        forget_image(&testbed, &server.namespace, &multilayer);
        ctr_pull.push(timed_ctr(&testbed, &ctr_namespace, &["images", "pull", "--plain-http", &multilayer]));
        forget_image(&testbed, &ctr_namespace, &multilayer);
    }
    report(
        "cold pull of the multi-layer image",
        median(berth_pull),
        Some(("ctr images pull", median(ctr_pull))),
        "<= 1.0x",
    );
    let _ = testbed.ctr_output(&ctr_namespace, &["namespaces", "rm", &ctr_namespace]);
}
