//! Client-side image pull against the testbed's containerd and registry (tests/testbed/up.sh).
//! Every test uses its own containerd namespace and purges it at the end. Without the testbed
//! the tests fail; they never skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth::error::Reason;
use berth::runtime::containerd::pull::{Puller, RegistryOptions, normalize_reference};
use berth::runtime::{LayerState, PullEvent, PullPolicy, PulledImage};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest, StatusRequest, WriteAction,
    WriteContentRequest,
};
use hyper_util::rt::TokioIo;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageIndex};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

/// The testbed, from the environment `tests/testbed/up.sh` writes to `$TESTBED_DIR/env`.
#[derive(Clone, Debug)]
struct Testbed {
    socket: PathBuf,
    registry: String,
    namespace: String,
    multilayer: String,
    multilayer_digest: String,
    multilayer_amd64_digest: String,
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the pull tests need the testbed; run `make test`, or start it with \
             tests/testbed/up.sh and `source .testbed/env` (or $TESTBED_DIR/env) before cargo test"
        )
    })
}

impl Testbed {
    fn from_env() -> Self {
        required_env("TESTBED_DIR");
        let testbed = Self {
            socket: PathBuf::from(required_env("BERTH_TEST_CONTAINERD_SOCKET")),
            registry: required_env("BERTH_TEST_REGISTRY"),
            namespace: required_env("BERTH_TEST_NAMESPACE"),
            multilayer: required_env("BERTH_TEST_IMAGE_MULTILAYER"),
            multilayer_digest: required_env("BERTH_TEST_IMAGE_MULTILAYER_DIGEST"),
            multilayer_amd64_digest: required_env("BERTH_TEST_IMAGE_MULTILAYER_AMD64_DIGEST"),
        };
        assert!(
            testbed.socket.exists(),
            "containerd socket {} is missing: the testbed is down, start it with tests/testbed/up.sh",
            testbed.socket.display()
        );
        testbed
    }

    /// A fresh namespace for one test, purged when the guard drops.
    fn namespace(&self, suffix: &str) -> Namespace {
        let namespace = Namespace { name: format!("{}-pull-{suffix}", self.namespace) };
        // Leftovers of an earlier run of the same test in this testbed session.
        namespace.purge();
        namespace
    }

    fn channel(&self) -> Channel {
        let path = self.socket.clone();
        Endpoint::from_static("http://containerd.invalid").connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
    }

    fn puller(&self, namespace: &Namespace, insecure: &[&str]) -> Puller {
        let options = RegistryOptions {
            insecure_registries: insecure.iter().map(|host| (*host).to_owned()).collect(),
            auth_file: None,
        };
        let scope = berth::runtime::containerd::Namespace::new(&namespace.name, std::time::Duration::from_secs(30));
        Puller::new(self.channel(), self.socket.clone(), scope, options).expect("puller builds")
    }

    /// Runs `ctr -n NAMESPACE args…` against the testbed and returns stdout; fails the test if
    /// ctr fails.
    fn ctr(&self, namespace: &Namespace, args: &[&str]) -> String {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", &namespace.name])
            .args(args)
            .output()
            .expect("ctr runs");
        assert!(
            output.status.success(),
            "ctr {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Asserts that `ctr images check` sees the image complete and unpacked.
    fn assert_complete_and_unpacked(&self, namespace: &Namespace, name: &str) {
        let check = self.ctr(namespace, &["images", "check", &format!("name=={name}")]);
        let line =
            check.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("{name} not in\n{check}"));
        assert!(line.contains("complete"), "not complete: {line}");
        assert!(line.trim_end().ends_with("true"), "not unpacked: {line}");
    }

    fn assert_no_leases(&self, namespace: &Namespace) {
        let leases = self.ctr(namespace, &["leases", "ls", "-q"]);
        assert!(leases.trim().is_empty(), "leases left behind: {leases}");
    }
}

struct Namespace {
    name: String,
}

impl Namespace {
    fn purge(&self) -> bool {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/testbed/containerd.sh");
        Command::new(script).args(["purge", &self.name]).status().is_ok_and(|status| status.success())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if !self.purge() && !std::thread::panicking() {
            panic!("could not purge containerd namespace {}", self.name);
        }
    }
}

/// A request carrying the containerd namespace (and lease) headers.
fn with_namespace<T>(namespace: &Namespace, lease: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("containerd-namespace", namespace.name.parse().expect("header"));
    if let Some(lease) = lease {
        request.metadata_mut().insert("containerd-lease", lease.parse().expect("header"));
    }
    request
}

struct Pulled {
    result: berth::error::Result<PulledImage>,
    events: Vec<PullEvent>,
    elapsed: Duration,
}

async fn pull(puller: &Puller, reference: &str, policy: PullPolicy) -> Pulled {
    let (sender, mut receiver) = mpsc::channel(16);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = receiver.recv().await {
            events.push(event);
        }
        events
    });
    let started = Instant::now();
    let result = puller.pull(reference, policy, &sender).await;
    let elapsed = started.elapsed();
    drop(sender);
    let events = collector.await.expect("collector");
    Pulled { result, events, elapsed }
}

/// Checks the event contract of a pull from the registry and returns the final per-layer view.
fn check_events(events: &[PullEvent], total_layers: u32) -> Vec<berth::runtime::LayerProgress> {
    let phase = |event: &PullEvent| match event {
        PullEvent::Pulling { .. } => 0,
        PullEvent::Progress { .. } => 1,
        PullEvent::Unpacking { .. } => 2,
    };
    assert!(matches!(events.first(), Some(PullEvent::Pulling { .. })), "first event is not Pulling: {events:?}");
    assert!(events.windows(2).all(|pair| phase(&pair[0]) <= phase(&pair[1])), "events out of order: {events:?}");
    assert_eq!(events.iter().filter(|event| phase(event) == 0).count(), 1, "one Pulling: {events:?}");
    let PullEvent::Pulling { total_bytes: pulling_total, total_layers: pulling_layers, .. } = &events[0] else {
        unreachable!()
    };
    assert_eq!(*pulling_layers, total_layers);

    let mut offsets: HashMap<String, u64> = HashMap::new();
    let mut last = None;
    for event in events {
        let PullEvent::Progress { layers, offset_bytes, total_bytes } = event else { continue };
        assert_eq!(total_bytes, pulling_total, "totals agree");
        assert_eq!(*offset_bytes, layers.iter().map(|layer| layer.offset).sum::<u64>());
        assert_eq!(*total_bytes, layers.iter().map(|layer| layer.total).sum::<u64>());
        for layer in layers {
            assert!(layer.offset <= layer.total, "offset beyond total: {layer:?}");
            let previous = offsets.insert(layer.digest.clone(), layer.offset).unwrap_or(0);
            assert!(layer.offset >= previous, "offset went back from {previous}: {layer:?}");
        }
        last = Some(layers.clone());
    }
    let last = last.expect("at least one Progress event");
    for layer in &last {
        assert_eq!(layer.offset, layer.total, "layer not complete at the end: {layer:?}");
        assert!(matches!(layer.state, LayerState::Done | LayerState::Exists), "final state: {layer:?}");
    }
    let unpacking: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|event| match event {
            PullEvent::Unpacking { layers_done, total_layers } => Some((*layers_done, *total_layers)),
            _ => None,
        })
        .collect();
    let expected: Vec<(u32, u32)> = (1..=total_layers).map(|done| (done, total_layers)).collect();
    assert_eq!(unpacking, expected);
    last
}

/// Forces a synchronous garbage collection, as containerd does when a lease is deleted with sync.
async fn collect_garbage(testbed: &Testbed, namespace: &Namespace) {
    let mut leases = LeasesClient::new(testbed.channel());
    let id = format!("gc-{}", unique());
    leases
        .create(with_namespace(namespace, None, CreateLeaseRequest { id: id.clone(), labels: HashMap::new() }))
        .await
        .expect("lease create");
    leases.delete(with_namespace(namespace, None, DeleteLeaseRequest { id, sync: true })).await.expect("lease delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_a_multilayer_index_that_runs_with_whiteouts() {
    let testbed = Testbed::from_env();
    let namespace = testbed.namespace("multilayer");
    let puller = testbed.puller(&namespace, &[&testbed.registry]);

    let pulled = pull(&puller, &testbed.multilayer, PullPolicy::IfNotPresent).await;
    let image = pulled.result.expect("pull succeeds");
    println!("pulled {} in {:?}", testbed.multilayer, pulled.elapsed);

    let PullEvent::Pulling { image: name, digest, .. } = &pulled.events[0] else { panic!("no Pulling event") };
    assert_eq!(name, &testbed.multilayer);
    assert_eq!(digest, &testbed.multilayer_amd64_digest);
    let layers = check_events(&pulled.events, 3);
    assert_eq!(layers.len(), 3);

    assert_eq!(image.name, testbed.multilayer);
    assert_eq!(image.digest, testbed.multilayer_amd64_digest);
    assert_eq!(image.config.env, vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_owned()]);
    assert_eq!(image.config.cmd, vec!["sh".to_owned()]);
    assert!(image.config.entrypoint.is_empty());
    assert_eq!(image.config.working_dir, "/");

    // The image record points at the index, like `ctr images pull` makes it.
    let images = testbed.ctr(&namespace, &["images", "ls"]);
    let record = images.lines().find(|line| line.starts_with(&testbed.multilayer)).expect("image listed");
    assert!(record.contains(&testbed.multilayer_digest), "target is not the index: {record}");
    assert!(record.contains(OCI_IMAGE_INDEX_MEDIA_TYPE), "{record}");

    let snapshots = testbed.ctr(&namespace, &["snapshots", "--snapshotter", "overlayfs", "ls"]);
    let top = snapshots.lines().find(|line| line.starts_with(&image.chain_id)).expect("top chain id snapshot exists");
    assert!(top.contains("Committed"), "{top}");
    testbed.assert_complete_and_unpacked(&namespace, &testbed.multilayer);

    // The GC labels ctr would write: without them a collection would drop the image's parts.
    let content = testbed.ctr(&namespace, &["content", "ls"]);
    let labels_of = |digest: &str| -> String {
        content
            .lines()
            .find(|line| line.starts_with(digest))
            .unwrap_or_else(|| panic!("{digest} not in\n{content}"))
            .to_owned()
    };
    let index_line = labels_of(&testbed.multilayer_digest);
    assert!(
        index_line.contains("containerd.io/gc.ref.content.m.0=")
            && index_line.contains("containerd.io/gc.ref.content.m.1="),
        "{index_line}"
    );
    let manifest_line = labels_of(&testbed.multilayer_amd64_digest);
    for label in [
        "containerd.io/gc.ref.content.config=",
        "containerd.io/gc.ref.content.l.0=",
        "containerd.io/gc.ref.content.l.2=",
    ] {
        assert!(manifest_line.contains(label), "{label} missing: {manifest_line}");
    }
    for layer in &layers {
        assert!(
            labels_of(&layer.digest).contains("containerd.io/uncompressed=sha256:"),
            "layer {} unlabelled",
            layer.digest
        );
    }
    assert!(
        content.contains(&format!("containerd.io/gc.ref.snapshot.overlayfs={}", image.chain_id)),
        "config does not reference the snapshot:\n{content}"
    );
    testbed.assert_no_leases(&namespace);

    collect_garbage(&testbed, &namespace).await;
    testbed.assert_complete_and_unpacked(&namespace, &testbed.multilayer);

    let layer2 =
        testbed.ctr(&namespace, &["run", "--rm", &testbed.multilayer, "cat-layer2", "cat", "/etc/berth-layer2"]);
    assert!(!layer2.trim().is_empty(), "/etc/berth-layer2 is empty");
    let removed = testbed.ctr(
        &namespace,
        &[
            "run",
            "--rm",
            &testbed.multilayer,
            "whiteout",
            "sh",
            "-c",
            "test -e /opt/removed && echo present || echo absent; test -e /etc/berth-layer3 && echo layer3",
        ],
    );
    assert_eq!(removed.split_whitespace().collect::<Vec<_>>(), ["absent", "layer3"], "whiteout not applied");
}

#[tokio::test(flavor = "multi_thread")]
async fn if_not_present_stays_local_and_always_resolves_again() {
    let testbed = Testbed::from_env();
    let namespace = testbed.namespace("policy");
    let proxy = Proxy::start(&testbed.registry).await;
    let puller = testbed.puller(&namespace, &[&proxy.host]);
    let reference = format!("{}/berth-test/multilayer:latest", proxy.host);

    let first = pull(&puller, &reference, PullPolicy::IfNotPresent).await;
    let first_image = first.result.expect("first pull");
    check_events(&first.events, 3);
    assert!(
        proxy.requests().contains("GET /v2/berth-test/multilayer/manifests/latest"),
        "the first pull asks the registry"
    );

    proxy.clear();
    let again = pull(&puller, &reference, PullPolicy::IfNotPresent).await;
    let again_image = again.result.expect("second pull");
    println!("if_not_present on a present image took {:?}", again.elapsed);
    assert_eq!(again_image, first_image);
    assert!(again.events.is_empty(), "a present image sends no events: {:?}", again.events);
    assert!(proxy.requests().is_empty(), "if_not_present contacted the registry:\n{}", proxy.requests());
    assert!(again.elapsed < Duration::from_millis(500), "took {:?}", again.elapsed);

    let never = pull(&puller, &reference, PullPolicy::Never).await;
    assert_eq!(never.result.expect("never finds the present image"), first_image);
    assert!(proxy.requests().is_empty());

    let always = pull(&puller, &reference, PullPolicy::Always).await;
    assert_eq!(always.result.expect("always pull"), first_image);
    assert!(proxy.requests().contains("GET /v2/berth-test/multilayer/manifests/latest"), "always resolves again");
    let layers = check_events(&always.events, 3);
    assert!(layers.iter().all(|layer| layer.state == LayerState::Exists), "nothing to download: {layers:?}");
    assert!(!proxy.requests().contains("/blobs/sha256:3a6141"), "always downloaded a present layer");
    testbed.assert_complete_and_unpacked(&namespace, &reference);
    testbed.assert_no_leases(&namespace);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_references_and_registries_fail_with_reasons() {
    let testbed = Testbed::from_env();
    let namespace = testbed.namespace("errors");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let unauthorized = start_unauthorized_registry().await;
    let arm64_only = push_arm64_only_index(&testbed.registry).await;
    let puller = testbed.puller(&namespace, &[&testbed.registry, &closed, &unauthorized]);
    let registry = &testbed.registry;

    let cases = [
        (
            format!("{registry}/berth-test/multilayer:no-such-tag"),
            PullPolicy::Always,
            Reason::ImageNotFound,
            "no-such-tag".to_owned(),
        ),
        (
            format!("{registry}/berth-test/no-such-repo:latest"),
            PullPolicy::IfNotPresent,
            Reason::ImageNotFound,
            "check the repository".to_owned(),
        ),
        (format!("{closed}/x/y:latest"), PullPolicy::Always, Reason::RegistryUnavailable, closed.clone()),
        ("UPPER/Case::".to_owned(), PullPolicy::Always, Reason::InvalidImageReference, "UPPER/Case::".to_owned()),
        (
            format!("{registry}/berth-test/busybox:latest"),
            PullPolicy::Never,
            Reason::ImageNotFound,
            "pull it first".to_owned(),
        ),
        (format!("{unauthorized}/private/app:1"), PullPolicy::Always, Reason::RegistryAuthFailed, unauthorized.clone()),
        (arm64_only.clone(), PullPolicy::Always, Reason::NoMatchingPlatform, "linux/arm64".to_owned()),
    ];
    for (reference, policy, reason, mention) in cases {
        let pulled = pull(&puller, &reference, policy).await;
        let err = pulled.result.expect_err(&reference);
        assert_eq!(err.reason(), reason, "{reference}: {}", err.message());
        assert!(err.message().contains(&mention), "{reference}: message lacks {mention:?}: {}", err.message());
        assert!(!pulled.events.iter().any(|event| matches!(event, PullEvent::Progress { .. })), "{reference}");
    }
    assert!(testbed.ctr(&namespace, &["images", "ls", "-q"]).trim().is_empty());
    testbed.assert_no_leases(&namespace);
    assert_eq!(normalize_reference("debian").expect("valid"), "docker.io/library/debian:latest");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_ingest_resumes_with_a_range_request() {
    let testbed = Testbed::from_env();
    let namespace = testbed.namespace("resume");
    let image = push_unique_image(&testbed.registry, "resume", "amd64").await;
    let half = image.layer.len() / 2;

    // What a pull that failed half-way leaves behind: berth writes ingests without a lease (the
    // blob, not the ingest, is leased), and its lease is deleted when the pull fails.
    let channel = testbed.channel();
    let ingest = format!("berth-pull-{}", image.layer_digest);
    let (sender, receiver) = mpsc::channel(4);
    let messages = [
        WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: ingest.clone(),
            total: image.layer.len() as i64,
            expected: image.layer_digest.clone(),
            ..Default::default()
        },
        WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: ingest.clone(),
            offset: 0,
            data: image.layer[..half].to_vec(),
            ..Default::default()
        },
    ];
    for message in messages {
        sender.send(message).await.expect("queued");
    }
    let mut content = ContentClient::new(channel.clone());
    let mut replies = content
        .write(with_namespace(&namespace, None, ReceiverStream::new(receiver)))
        .await
        .expect("write")
        .into_inner();
    replies.message().await.expect("stat reply");
    let written = replies.message().await.expect("write reply").expect("a reply");
    assert_eq!(written.offset, half as i64);
    drop(sender);
    drop(replies);
    // The ingest must survive a garbage collection (the one deleting the failed pull's lease
    // triggers) to be resumable.
    collect_garbage(&testbed, &namespace).await;
    let status = content
        .status(with_namespace(&namespace, None, StatusRequest { r#ref: ingest.clone() }))
        .await
        .expect("ingest status")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.offset, half as i64, "the partial ingest is there");

    let proxy = Proxy::start(&testbed.registry).await;
    let puller = testbed.puller(&namespace, &[&proxy.host]);
    let reference = format!("{}/{}", proxy.host, image.repository_and_tag);
    let pulled = pull(&puller, &reference, PullPolicy::IfNotPresent).await;
    let pulled_image = pulled.result.expect("resumed pull");
    let layers = check_events(&pulled.events, 1);
    assert_eq!(layers[0].state, LayerState::Done);
    let first_seen = pulled
        .events
        .iter()
        .find_map(|event| match event {
            PullEvent::Progress { layers, .. } if layers[0].state != LayerState::Waiting => Some(layers[0].offset),
            _ => None,
        })
        .expect("progress for the layer");
    assert!(first_seen >= half as u64, "the layer restarted below the resume point: {first_seen} < {half}");
    let requests = proxy.requests().to_ascii_lowercase();
    assert!(requests.contains(&format!("range: bytes={half}-")), "no range request for the rest:\n{requests}");
    assert_eq!(pulled_image.config.env, vec!["BERTH_TEST=resume".to_owned()]);
    testbed.assert_complete_and_unpacked(&namespace, &reference);
    testbed.assert_no_leases(&namespace);
    let ingests = testbed.ctr(&namespace, &["content", "active"]);
    assert!(!ingests.contains(&ingest), "the resumed ingest is still active: {ingests}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_one_image_both_succeed() {
    let testbed = Testbed::from_env();
    let namespace = testbed.namespace("concurrent");
    let image = push_unique_image(&testbed.registry, "concurrent", "amd64").await;
    let puller = testbed.puller(&namespace, &[&testbed.registry]);
    let reference = format!("{}/{}", testbed.registry, image.repository_and_tag);

    let other = puller.clone();
    let (one, two) =
        tokio::join!(pull(&puller, &reference, PullPolicy::Always), pull(&other, &reference, PullPolicy::Always));
    let first = one.result.as_ref().expect("first concurrent pull");
    let second = two.result.as_ref().expect("second concurrent pull");
    assert_eq!(first, second);
    let mut states: Vec<LayerState> =
        [&one.events, &two.events].into_iter().map(|events| check_events(events, 1)[0].state).collect();
    states.sort_by_key(|state| *state == LayerState::Exists);
    // The same ingest ref serializes the writers: one downloads, the other waits and finds it.
    assert_eq!(states, [LayerState::Done, LayerState::Exists]);
    testbed.assert_complete_and_unpacked(&namespace, &reference);
    testbed.assert_no_leases(&namespace);
    let ingests = testbed.ctr(&namespace, &["content", "active"]);
    assert!(!ingests.contains("berth-pull-"), "ingests left behind: {ingests}");
}

fn unique() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    format!("{nanos:x}{:x}", std::process::id())
}

/// An image pushed for one test run, so its blobs are in no content store yet.
struct UniqueImage {
    repository_and_tag: String,
    layer: Vec<u8>,
    layer_digest: String,
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A gzip layer holding 4 MiB of fresh pseudo-random bytes (incompressible, so the download is
/// real) and its diff id.
fn random_layer() -> (Vec<u8>, String) {
    let mut state = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as u64 | 1;
    let mut data = Vec::with_capacity(4 << 20);
    while data.len() < 4 << 20 {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    tar.append_data(&mut header, "random.bin", data.as_slice()).expect("tar entry");
    let tar = tar.into_inner().expect("tar");
    let diff_id = sha256_digest(&tar);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &tar).expect("gzip");
    (gzip.finish().expect("gzip"), diff_id)
}

fn push_client() -> Client {
    Client::new(ClientConfig { protocol: ClientProtocol::Http, ..ClientConfig::default() })
}

async fn push_unique_image(registry: &str, purpose: &str, architecture: &str) -> UniqueImage {
    let (layer, diff_id) = random_layer();
    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": {"Env": [format!("BERTH_TEST={purpose}")], "Cmd": ["/random.bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let repository_and_tag = format!("berth-test/pull-{purpose}-{}:v1", unique());
    let reference: Reference = format!("{registry}/{repository_and_tag}").parse().expect("reference");
    push_client()
        .push(
            &reference,
            &[ImageLayer::oci_v1_gzip(layer.clone(), None)],
            Config::oci_v1(serde_json::to_vec(&config).expect("json"), None),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("push test image");
    let layer_digest = sha256_digest(&layer);
    UniqueImage { repository_and_tag, layer, layer_digest }
}

/// Pushes an index whose only entry is linux/arm64/v8 and returns its reference.
async fn push_arm64_only_index(registry: &str) -> String {
    let image = push_unique_image(registry, "arm64", "arm64").await;
    let client = push_client();
    let image_ref: Reference = format!("{registry}/{}", image.repository_and_tag).parse().expect("reference");
    let (manifest, digest) = client
        .pull_manifest_raw(&image_ref, &RegistryAuth::Anonymous, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .expect("pushed manifest");
    let index: OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "digest": digest,
            "size": manifest.len(),
            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        }],
    }))
    .expect("index");
    let index_ref = format!("{registry}/{}", image.repository_and_tag.replace(":v1", ":index"));
    client
        .push_manifest_list(&index_ref.parse().expect("reference"), &RegistryAuth::Anonymous, index)
        .await
        .expect("push index");
    index_ref
}

/// A TCP proxy in front of the registry that records what clients send (request lines and
/// headers), to see which requests a pull makes.
struct Proxy {
    host: String,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let host = listener.local_addr().expect("addr").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_owned();
        let shared = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let log = Arc::clone(&shared);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else { return };
                    let (mut client_read, mut client_write) = inbound.split();
                    let (mut server_read, mut server_write) = outbound.split();
                    let requests = async {
                        let mut buffer = vec![0u8; 64 << 10];
                        loop {
                            let read = client_read.read(&mut buffer).await?;
                            if read == 0 {
                                return server_write.shutdown().await;
                            }
                            log.lock().expect("log").extend_from_slice(&buffer[..read]);
                            server_write.write_all(&buffer[..read]).await?;
                        }
                    };
                    let responses = tokio::io::copy(&mut server_read, &mut client_write);
                    let _ = tokio::try_join!(requests, responses);
                });
            }
        });
        Self { host, log }
    }

    fn requests(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().expect("log")).into_owned()
    }

    fn clear(&self) {
        self.log.lock().expect("log").clear();
    }
}

/// A registry that refuses everyone, as one that needs credentials does.
async fn start_unauthorized_registry() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let mut request = Vec::new();
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                let response = format!(
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWWW-Authenticate: Basic realm=\"berth-test\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    host
}
