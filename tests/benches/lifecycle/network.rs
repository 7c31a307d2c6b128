//! The `network` section: create → ready and delete with networking (a pinned netns, CNI
//! loopback + bridge, berth's nft elements) vs `--network none` on the same containerd in the
//! same run (targets: ≤ +70 ms and ≤ +90 ms), and a 100 MiB HTTP download from the testbed's
//! remote namespace through berth's NAT vs the same download from the lab namespace itself
//! (target ≥ 0.9x). Everything runs inside the lab (a thread of its own enters it).

use std::time::Duration;

use berth_api::v1::PullPolicy;
use berth_e2e::lab::{self, Lab};
use berth_e2e::{BerthServer, ServerOptions, Testbed};

use super::{Client, ROUNDS, create, delete, median, report};

/// Runs the section on a thread inside the lab, with a runtime of its own.
pub fn bench_network(testbed: &Testbed) {
    let testbed = testbed.clone();
    std::thread::spawn(move || {
        let lab = Lab::from_env();
        let _inside = lab.enter();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(measure(&testbed, &lab));
    })
    .join()
    .expect("the network section panicked");
}

async fn measure(testbed: &Testbed, lab: &Lab) {
    let busybox = testbed.image("BUSYBOX");
    let networked = BerthServer::start_with(
        testbed,
        ServerOptions {
            network: true,
            extra_args: ["--bridge-name", "bbench0", "--network-subnet", "10.233.0.0/24", "--dns"]
                .iter()
                .map(|arg| (*arg).to_owned())
                .chain([lab.remote_addr().to_string()])
                .collect(),
            ..Default::default()
        },
    );
    let offline = BerthServer::start(testbed);
    let mut with_network = Client::new(networked.channel().await);
    let mut without = Client::new(offline.channel().await);
    for client in [&mut with_network, &mut without] {
        create(client, "warmup", &busybox, PullPolicy::IfNotPresent).await;
        delete(client, "warmup").await;
    }
    let (mut creates, mut deletes) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for round in 0..ROUNDS {
        let id = format!("net-{round}");
        creates.0.push(create(&mut with_network, &id, &busybox, PullPolicy::IfNotPresent).await.0);
        creates.1.push(create(&mut without, &id, &busybox, PullPolicy::IfNotPresent).await.0);
        deletes.0.push(timed_delete(&mut with_network, &id).await);
        deletes.1.push(timed_delete(&mut without, &id).await);
    }
    let added = |pair: &(Vec<Duration>, Vec<Duration>)| {
        let (with, without) = (median(pair.0.clone()), median(pair.1.clone()));
        (with, without, with.as_secs_f64() * 1000.0 - without.as_secs_f64() * 1000.0)
    };
    let (with, without_network, extra) = added(&creates);
    report("create -> ready with networking", with, Some(("--network none", without_network)), "informational");
    println!("  networking adds {extra:.1} ms to a create (target <= +70 ms)");
    let (with, without_network, extra) = added(&deletes);
    report("delete with networking", with, Some(("--network none", without_network)), "informational");
    println!("  networking adds {extra:.1} ms to a delete (target <= +90 ms)");

    // The download, with the same busybox nc on both sides.
    create(&mut with_network, "downloader", &busybox, PullPolicy::IfNotPresent).await;
    // busybox has no sub-second `date`: /proc/uptime counts centiseconds, so the blob is fetched
    // DOWNLOADS times in a row (~0.5 s or more) to keep that resolution within a few percent.
    let script = format!(
        "read s _ < /proc/uptime; for i in $(seq {DOWNLOADS}); do printf 'GET /blob-100m HTTP/1.0\\r\\n\\r\\n' | nc {} 80; done | wc -c; read e _ < /proc/uptime; echo $s $e",
        lab.remote_addr()
    );
    let mut through_nat = Vec::new();
    let mut from_lab = Vec::new();
    for _ in 0..ROUNDS {
        through_nat.push(timed_download(&testbed.exec(&networked.namespace, "downloader", &["sh", "-c", &script])));
        from_lab.push(timed_download(&lab.run(&["busybox", "sh", "-c", &script])));
    }
    let (nat, direct) = (median(through_nat), median(from_lab));
    let mib_per_s = |elapsed: Duration| (DOWNLOADS * lab::BLOB_SIZE) as f64 / (1 << 20) as f64 / elapsed.as_secs_f64();
    println!(
        "{:<44} {:>9.0} MiB/s  lab itself {:>7.0} MiB/s  {:.2}x  (target >= 0.9x)",
        "100 MiB download through NAT",
        mib_per_s(nat),
        mib_per_s(direct),
        mib_per_s(nat) / mib_per_s(direct)
    );
    delete(&mut with_network, "downloader").await;
    let namespaces = [networked.namespace.clone(), offline.namespace.clone()];
    drop((networked, offline));
    super::purge_namespaces(testbed, &namespaces.iter().map(String::as_str).collect::<Vec<_>>());
}

async fn timed_delete(client: &mut Client, id: &str) -> Duration {
    let started = std::time::Instant::now();
    delete(client, id).await;
    started.elapsed()
}

/// How many times one measurement fetches the 100 MiB blob.
const DOWNLOADS: u64 = 5;

/// The time the script measured (uptime before and after), once every byte of the downloads
/// (and their headers) arrived.
fn timed_download(output: &str) -> Duration {
    let mut lines = output.lines().map(str::trim);
    let bytes: u64 = lines.next().and_then(|line| line.parse().ok()).expect("the byte count");
    assert!(bytes > DOWNLOADS * lab::BLOB_SIZE, "the downloads were cut short: {bytes} bytes");
    let times: Vec<f64> = lines.next().expect("the uptimes").split_whitespace().map(|t| t.parse().unwrap()).collect();
    Duration::from_secs_f64(times[1] - times[0])
}
