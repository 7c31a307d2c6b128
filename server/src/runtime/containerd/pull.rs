//! Client-side image pull, as `ctr images pull` does it (containerd 1.6 has no Transfer service):
//! resolve with a registry client, write blobs through `Content.Write` under a lease with GC
//! labels, record the image, unpack layers with `Diff.Apply` onto overlayfs snapshots.
//!
//! Registry access lives in `registry`, content writes in `content`, snapshots in `unpack`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    CreateImageRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest, GetImageRequest,
    Image, UpdateImageRequest,
};
use containerd_client::types::Descriptor;
use oci_client::Reference;
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use oci_spec::image::ImageConfiguration;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

use super::client::{Namespace, map_status, request};
use super::content::{Blob, Content};
use super::registry::{self, RawManifest, Registry, Resolved};
use super::unpack::{self, Layer, Unpacker};
use crate::error::{Error, Reason, Result};
use crate::runtime::{ImageConfig, LayerProgress, LayerState, PullEvent, PullPolicy, PullProgress, PulledImage};

/// Layers downloaded at the same time.
const CONCURRENT_LAYERS: usize = 3;
/// How often a `Progress` snapshot goes out while bytes move (the contract says ≤ 250 ms).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// A crashed pull's lease (and what it protects) is collected after this long.
const LEASE_TTL: time::Duration = time::Duration::hours(1);

/// How berth talks to registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// `HOST:PORT` of registries spoken to over plain http.
    pub insecure_registries: Vec<String>,
    /// A docker `config.json` whose `auths` hold credentials per registry host.
    pub auth_file: Option<PathBuf>,
}

/// Pulls images into one containerd namespace. Cheap to clone: clones share the registry client.
#[derive(Clone)]
pub struct Puller {
    registry: Registry,
    content: Content,
    unpacker: Unpacker,
    channel: Channel,
    socket: PathBuf,
    namespace: Namespace,
}

impl fmt::Debug for Puller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Puller")
            .field("socket", &self.socket)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Normalizes a reference like docker does: `debian` → `docker.io/library/debian:latest`,
/// `127.0.0.1:5000/x/y` → `127.0.0.1:5000/x/y:latest`; digests are kept.
pub fn normalize_reference(raw: &str) -> Result<String> {
    parse_reference(raw).map(|reference| reference.whole())
}

fn parse_reference(raw: &str) -> Result<Reference> {
    Reference::try_from(raw).map_err(|err| {
        Error::new(
            Reason::InvalidImageReference,
            format!(
                "image reference {raw:?} is malformed ({err}); use [REGISTRY/]NAME[:TAG][@sha256:DIGEST] with a lowercase name, e.g. docker.io/library/debian:bookworm"
            ),
        )
    })
}

/// What the namespace has for a reference, without the registry.
enum Local {
    Ready(PulledImage),
    Missing(String),
}

impl Puller {
    /// Builds the registry client (once: it costs ~100 ms) and reads the auth file.
    /// `channel` must allow calls as long as unpacking a layer takes (`Diff.Apply` is unary).
    pub fn new(channel: Channel, socket: PathBuf, namespace: Namespace, options: RegistryOptions) -> Result<Self> {
        let registry = Registry::new(&options.insecure_registries, options.auth_file.as_deref())?;
        Ok(Self {
            registry,
            content: Content::new(channel.clone(), socket.clone(), namespace.clone()),
            unpacker: Unpacker::new(channel.clone(), socket.clone(), namespace.clone()),
            channel,
            socket,
            namespace,
        })
    }

    /// Makes `reference` present and unpacked according to `policy` and returns it. Events go
    /// to `progress` in the order `Pulling`, `Progress`…, `Unpacking`…; an image that is already
    /// there sends none (or only `Unpacking` when its snapshots were missing). A closed receiver
    /// does not fail the pull.
    pub async fn pull(&self, reference: &str, policy: PullPolicy, progress: &PullProgress) -> Result<PulledImage> {
        let parsed = parse_reference(reference)?;
        let name = parsed.whole();
        if policy != PullPolicy::Always {
            match self.local(&name, progress).await? {
                Local::Ready(image) => return Ok(image),
                Local::Missing(why) if policy == PullPolicy::Never => {
                    return Err(Error::new(
                        Reason::ImageNotFound,
                        format!(
                            "image {name} is not usable in containerd namespace {} ({why}) and the pull policy is never; pull it first or use pull policy if_not_present",
                            self.namespace
                        ),
                    ));
                }
                Local::Missing(why) => tracing::debug!(image = %name, why, "pulling from the registry"),
            }
        }
        self.pull_from_registry(&parsed, &name, progress).await
    }

    /// Finds the image in containerd and makes sure it is unpacked; `Missing` says what lacks.
    async fn local(&self, name: &str, progress: &PullProgress) -> Result<Local> {
        let get = GetImageRequest { name: name.to_owned() };
        let image = match ImagesClient::new(self.channel.clone()).get(request(&self.namespace, get)).await {
            Ok(response) => response.into_inner().image,
            Err(status) if status.code() == Code::NotFound => return Ok(Local::Missing("not pulled yet".into())),
            Err(status) => return Err(map_status(&self.socket, "image get", status)),
        };
        let Some(target) = image.and_then(|image| image.target) else {
            return Ok(Local::Missing("the image record has no target".into()));
        };
        let Some(top) = self.read_manifest(&target.media_type, &target.digest).await? else {
            return Ok(Local::Missing(format!("its manifest {} is not in the content store", target.digest)));
        };
        let manifest_raw = if registry::is_index(&top) {
            let index = parse_index(name, &top)?;
            let Some(entry) = self.registry.platform.pick(&index.manifests) else {
                return Ok(Local::Missing(format!("it has no {} manifest", self.registry.platform.name())));
            };
            match self.read_manifest(&entry.media_type, &entry.digest).await? {
                Some(raw) => raw,
                None => {
                    return Ok(Local::Missing(format!("its manifest {} is not in the content store", entry.digest)));
                }
            }
        } else {
            top
        };
        let manifest = registry::parse_manifest(&name, &manifest_raw)?;
        let Some(config_bytes) = self.content.read(&manifest.config.digest).await? else {
            return Ok(Local::Missing(format!("its config {} is not in the content store", manifest.config.digest)));
        };
        let (config, layers) = image_layers(name, &manifest, &config_bytes)?;
        let diff_ids: Vec<String> = layers.iter().map(|layer| layer.diff_id.clone()).collect();
        let chain_id = unpack::chain_ids(&diff_ids).pop().unwrap_or_default();
        let image = PulledImage { name: name.to_owned(), digest: manifest_raw.digest.clone(), config, chain_id };
        if self.unpacker.snapshot_exists(&image.chain_id).await? {
            return Ok(Local::Ready(image));
        }
        for layer in &layers {
            if !self.content.exists(&layer.blob.digest).await? {
                return Ok(Local::Missing(format!("layer {} is not in the content store", layer.blob.digest)));
            }
        }
        let lease = Lease::create(self).await?;
        let (_, ready) = watch::channel(layers.iter().map(|layer| layer.blob.digest.clone()).collect());
        let unpacked =
            self.unpack(&lease.id, &layers, &manifest.config.digest, ready, progress, async { Ok(()) }).await;
        lease.release().await;
        unpacked?;
        Ok(Local::Ready(image))
    }

    async fn read_manifest(&self, media_type: &str, digest: &str) -> Result<Option<RawManifest>> {
        let bytes = self.content.read(digest).await?;
        Ok(bytes.map(|bytes| {
            let media_type = if media_type.is_empty() {
                registry::media_type_of(&bytes).unwrap_or_default()
            } else {
                media_type.to_owned()
            };
            RawManifest { media_type, digest: digest.to_owned(), bytes }
        }))
    }

    async fn pull_from_registry(
        &self,
        reference: &Reference,
        name: &str,
        progress: &PullProgress,
    ) -> Result<PulledImage> {
        let started = Instant::now();
        let resolved = self.registry.resolve(reference).await?;
        tracing::debug!(image = %name, digest = %resolved.manifest.digest, elapsed_ms = started.elapsed().as_millis(), "resolved");
        let manifest = &resolved.parsed;
        let blobs = unique_blobs(&manifest.layers);
        let total_bytes = blobs.iter().map(blob_size).sum();
        let pulling = PullEvent::Pulling {
            image: name.to_owned(),
            digest: resolved.manifest.digest.clone(),
            total_layers: u32::try_from(manifest.layers.len()).unwrap_or(u32::MAX),
            total_bytes,
        };
        let _ = progress.send(pulling).await;

        let config_bytes = self.registry.fetch_blob(reference, &manifest.config).await?;
        let (config, layers) = image_layers(name, manifest, &config_bytes)?;
        let lease = Lease::create(self).await?;
        let pulled = self.store(&lease.id, reference, name, &resolved, &blobs, config_bytes, &layers, progress).await;
        lease.release().await;
        let chain_id = pulled?;
        tracing::debug!(image = %name, elapsed_ms = started.elapsed().as_millis(), "pulled");
        Ok(PulledImage { name: name.to_owned(), digest: resolved.manifest.digest.clone(), config, chain_id })
    }

    /// Everything a pull writes, under `lease`; returns the top chain id. Layers are unpacked
    /// as soon as they are stored, while later ones still download (as `ctr` does).
    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        lease: &str,
        reference: &Reference,
        name: &str,
        resolved: &Resolved,
        blobs: &[OciDescriptor],
        config_bytes: Bytes,
        layers: &[Layer],
        progress: &PullProgress,
    ) -> Result<String> {
        let started = Instant::now();
        let manifest = &resolved.parsed;
        self.content.write_bytes(lease, &manifest.config.digest, config_bytes, &HashMap::new()).await?;
        let (stored, ready) = watch::channel(HashSet::new());
        let fetch = async {
            self.download(lease, reference, blobs, progress, stored).await?;
            tracing::debug!(image = %name, elapsed_ms = started.elapsed().as_millis(), "layers stored");
            self.write_manifests(lease, resolved).await?;
            let top = resolved.top();
            let target = Descriptor {
                media_type: top.media_type.clone(),
                digest: top.digest.clone(),
                size: i64::try_from(top.bytes.len()).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            };
            self.record_image(name, target).await
        };
        let chain_id = self.unpack(lease, layers, &manifest.config.digest, ready, progress, fetch).await?;
        tracing::debug!(image = %name, elapsed_ms = started.elapsed().as_millis(), "unpacked");
        Ok(chain_id)
    }

    /// Writes the manifest, and the index it came from, with the labels that let GC follow
    /// them to their config, layers and platform manifests.
    async fn write_manifests(&self, lease: &str, resolved: &Resolved) -> Result<()> {
        let manifest = &resolved.parsed;
        let mut manifest_labels =
            HashMap::from([("containerd.io/gc.ref.content.config".to_owned(), manifest.config.digest.clone())]);
        for (index, layer) in manifest.layers.iter().enumerate() {
            manifest_labels.insert(format!("containerd.io/gc.ref.content.l.{index}"), layer.digest.clone());
        }
        let raw = &resolved.manifest;
        self.content.write_bytes(lease, &raw.digest, raw.bytes.clone(), &manifest_labels).await?;
        if let Some((raw_index, index)) = &resolved.index {
            let index_labels: HashMap<String, String> = index
                .manifests
                .iter()
                .enumerate()
                .map(|(position, entry)| (format!("containerd.io/gc.ref.content.m.{position}"), entry.digest.clone()))
                .collect();
            self.content.write_bytes(lease, &raw_index.digest, raw_index.bytes.clone(), &index_labels).await?;
        }
        Ok(())
    }

    /// Writes the layer blobs, `CONCURRENT_LAYERS` at a time, sending `Progress` snapshots and
    /// adding each stored digest to `stored`.
    async fn download(
        &self,
        lease: &str,
        reference: &Reference,
        blobs: &[OciDescriptor],
        progress: &PullProgress,
        stored: watch::Sender<HashSet<String>>,
    ) -> Result<()> {
        let tracker = Arc::new(Tracker::new(blobs));
        let permits = Arc::new(Semaphore::new(CONCURRENT_LAYERS));
        // Dropping the set (on error or when the caller gives up) aborts the other downloads;
        // their ingests stay behind for the next pull to resume.
        let mut tasks = JoinSet::new();
        for (index, blob) in blobs.iter().cloned().enumerate() {
            let registry = self.registry.clone();
            let content = self.content.clone();
            let tracker = Arc::clone(&tracker);
            let permits = Arc::clone(&permits);
            let lease = lease.to_owned();
            let reference = reference.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|_| Error::internal("download permits closed"))?;
                let target = Blob { digest: blob.digest.clone(), size: blob_size(&blob) };
                let open = |offset: u64| registry.blob_stream(&reference, &blob, offset);
                let report = |offset: u64, state: LayerState| tracker.update(index, offset, state);
                content.write(&lease, &target, &HashMap::new(), open, &report).await?;
                Ok::<String, Error>(blob.digest)
            });
        }
        // The starting point goes out at once, so even a pull faster than one tick shows its
        // bytes growing from here to the final snapshot.
        let _ = progress.send(tracker.event()).await;
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut sent = 0;
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(digest))) => {
                        stored.send_modify(|digests| {
                            digests.insert(digest);
                        });
                    }
                    Some(Ok(Err(err))) => return Err(err),
                    Some(Err(err)) => return Err(Error::internal(format!("a layer download task failed: {err}"))),
                },
                _ = ticker.tick() => {
                    if let Some(event) = tracker.event_if_changed(&mut sent) {
                        // Lossy on purpose: a slow reader gets fewer snapshots, never a stalled pull.
                        let _ = progress.try_send(event);
                    }
                }
            }
        }
        let _ = progress.send(tracker.event()).await;
        Ok(())
    }

    /// Unpacks the layers as `ready` lists them, concurrently with `before_events`; `Unpacking`
    /// events go out only once `before_events` is done, so they always follow the download's
    /// `Progress`. Then points the config at the top snapshot so GC keeps the chain.
    async fn unpack(
        &self,
        lease: &str,
        layers: &[Layer],
        config_digest: &str,
        ready: watch::Receiver<HashSet<String>>,
        progress: &PullProgress,
        before_events: impl Future<Output = Result<()>>,
    ) -> Result<String> {
        let total_layers = u32::try_from(layers.len()).unwrap_or(u32::MAX);
        let (done_sender, mut done_receiver) = mpsc::unbounded_channel();
        let events = async {
            before_events.await?;
            while let Some(layers_done) = done_receiver.recv().await {
                // A closed receiver must not fail the pull.
                let _ = progress.send(PullEvent::Unpacking { layers_done, total_layers }).await;
            }
            Ok::<(), Error>(())
        };
        let unpack = async move {
            let done = move |layers_done: u32| {
                let _ = done_sender.send(layers_done);
            };
            self.unpacker.unpack(lease, &self.content, layers, ready, &done).await
        };
        let ((), chain_id) = tokio::try_join!(events, unpack)?;
        let label =
            HashMap::from([(format!("containerd.io/gc.ref.snapshot.{}", unpack::SNAPSHOTTER), chain_id.clone())]);
        self.content.set_labels(config_digest, &label).await?;
        Ok(chain_id)
    }

    async fn record_image(&self, name: &str, target: Descriptor) -> Result<()> {
        let image = Image {
            name: name.to_owned(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let create = CreateImageRequest { image: Some(image.clone()), source_date_epoch: None };
        match images.create(request(&self.namespace, create)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["target".to_owned()] }),
                    source_date_epoch: None,
                };
                images
                    .update(request(&self.namespace, update))
                    .await
                    .map(|_| ())
                    .map_err(|status| map_status(&self.socket, "image update", status))
            }
            Err(status) => Err(map_status(&self.socket, "image create", status)),
        }
    }
}

fn parse_index(name: &str, raw: &RawManifest) -> Result<OciImageIndex> {
    serde_json::from_slice(&raw.bytes).map_err(|err| {
        Error::new(
            Reason::ImagePullFailed,
            format!("the stored image index of {name} ({}) cannot be parsed: {err}; pull the image again with pull policy always", raw.digest),
        )
    })
}

/// The workspace-relevant config and the layers (blob + diff id) of an image.
fn image_layers(name: &str, manifest: &OciImageManifest, config_bytes: &[u8]) -> Result<(ImageConfig, Vec<Layer>)> {
    let parsed: ImageConfiguration = serde_json::from_slice(config_bytes).map_err(|err| {
        Error::new(
            Reason::ImagePullFailed,
            format!(
                "the config {} of image {name} cannot be parsed: {err}; the image is broken",
                manifest.config.digest
            ),
        )
    })?;
    let diff_ids = parsed.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers.len() || diff_ids.is_empty() {
        return Err(Error::new(
            Reason::ImagePullFailed,
            format!(
                "image {name} has {} layers but its config lists {} diff ids; the image is broken or not a container image",
                manifest.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(blob, diff_id)| Layer {
            blob: Descriptor {
                media_type: blob.media_type.clone(),
                digest: blob.digest.clone(),
                size: blob.size,
                annotations: HashMap::new(),
            },
            diff_id: diff_id.clone(),
        })
        .collect();
    let config = parsed.config().as_ref().map(|config| ImageConfig {
        env: config.env().clone().unwrap_or_default(),
        entrypoint: config.entrypoint().clone().unwrap_or_default(),
        cmd: config.cmd().clone().unwrap_or_default(),
        working_dir: config.working_dir().clone().unwrap_or_default(),
        user: config.user().clone().unwrap_or_default(),
    });
    Ok((config.unwrap_or_default(), layers))
}

/// Layer blobs in manifest order, each digest once (an image may repeat a layer).
fn unique_blobs(layers: &[OciDescriptor]) -> Vec<OciDescriptor> {
    let mut seen = HashSet::new();
    layers.iter().filter(|layer| seen.insert(layer.digest.clone())).cloned().collect()
}

fn blob_size(blob: &OciDescriptor) -> u64 {
    u64::try_from(blob.size).unwrap_or(0)
}

/// Per-layer progress shared by the download tasks and the reporter.
struct Tracker {
    state: Mutex<(Vec<LayerProgress>, u64)>,
}

impl Tracker {
    fn new(blobs: &[OciDescriptor]) -> Self {
        let layers = blobs
            .iter()
            .map(|blob| LayerProgress {
                digest: blob.digest.clone(),
                offset: 0,
                total: blob_size(blob),
                state: LayerState::Waiting,
            })
            .collect();
        Self { state: Mutex::new((layers, 0)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<LayerProgress>, u64)> {
        // A panicking download task cannot leave the numbers inconsistent; keep going.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what containerd holds of a layer; offsets never go back.
    fn update(&self, index: usize, offset: u64, state: LayerState) {
        let mut guard = self.lock();
        let (layers, version) = &mut *guard;
        let Some(layer) = layers.get_mut(index) else { return };
        let offset = offset.max(layer.offset).min(layer.total);
        if layer.offset != offset || layer.state != state {
            layer.offset = offset;
            layer.state = state;
            *version += 1;
        }
    }

    fn event(&self) -> PullEvent {
        let guard = self.lock();
        let layers = guard.0.clone();
        let offset_bytes = layers.iter().map(|layer| layer.offset).sum();
        let total_bytes = layers.iter().map(|layer| layer.total).sum();
        PullEvent::Progress { layers, offset_bytes, total_bytes }
    }

    /// A snapshot when something changed since version `sent`.
    fn event_if_changed(&self, sent: &mut u64) -> Option<PullEvent> {
        let version = self.lock().1;
        if version == *sent {
            return None;
        }
        *sent = version;
        Some(self.event())
    }
}

/// A containerd lease protecting everything a pull writes until the image references it.
/// Dropped without `release` (the pull was cancelled), it is deleted in the background.
struct Lease {
    id: String,
    leases: LeasesClient<Channel>,
    namespace: Namespace,
    released: bool,
}

impl Lease {
    async fn create(puller: &Puller) -> Result<Self> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
        let id = format!("berth-pull-{nanos}-{}", SEQUENCE.fetch_add(1, Ordering::Relaxed));
        let expire = (time::OffsetDateTime::now_utc() + LEASE_TTL)
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|err| Error::internal(format!("cannot format the lease expiry: {err}")))?;
        let create = CreateLeaseRequest {
            id: id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".to_owned(), expire)]),
        };
        let mut leases = LeasesClient::new(puller.channel.clone());
        leases
            .create(request(&puller.namespace, create))
            .await
            .map_err(|status| map_status(&puller.socket, "lease create", status))?;
        Ok(Self { id, leases, namespace: puller.namespace.clone(), released: false })
    }

    /// Deletes the lease; failures only cost an expiry an hour later.
    async fn release(mut self) {
        self.released = true;
        let delete = DeleteLeaseRequest { id: self.id.clone(), sync: false };
        if let Err(status) = self.leases.delete(request(&self.namespace, delete)).await {
            tracing::warn!(lease = %self.id, error = %status.message(), "deleting the pull lease failed; it expires in an hour");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut leases = self.leases.clone();
        let delete = request(&self.namespace, DeleteLeaseRequest { id: self.id.clone(), sync: false });
        runtime.spawn(async move {
            let _ = leases.delete(delete).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalize_like_docker() {
        let cases = [
            ("debian", "docker.io/library/debian:latest"),
            ("debian:bookworm", "docker.io/library/debian:bookworm"),
            ("library/debian", "docker.io/library/debian:latest"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("docker.io/debian", "docker.io/library/debian:latest"),
            ("index.docker.io/library/debian:12", "docker.io/library/debian:12"),
            ("ghcr.io/org/app", "ghcr.io/org/app:latest"),
            ("127.0.0.1:5000/x/y", "127.0.0.1:5000/x/y:latest"),
            ("localhost/app:v1", "localhost/app:v1"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
        ];
        for (raw, normalized) in cases {
            assert_eq!(normalize_reference(raw).expect(raw), normalized, "{raw}");
        }
    }

    #[test]
    fn digest_references_keep_their_digest() {
        let digest = "sha256:0459825e287f780084eb2cb6e84eb2b29acf761b81abf63806caf50c9e0e17c2";
        assert_eq!(
            normalize_reference(&format!("127.0.0.1:5000/x/y@{digest}")).expect("valid"),
            format!("127.0.0.1:5000/x/y@{digest}")
        );
        assert_eq!(
            normalize_reference(&format!("busybox@{digest}")).expect("valid"),
            format!("docker.io/library/busybox@{digest}")
        );
        assert_eq!(
            normalize_reference(&format!("busybox:1.36@{digest}")).expect("valid"),
            format!("docker.io/library/busybox:1.36@{digest}")
        );
    }

    #[test]
    fn malformed_references_are_rejected() {
        for raw in ["", "UPPER/Case::", "Debian", "debian:", ":tag", "a//b", "x@sha256:123", "debian:bad tag", "-x/y"] {
            let err = normalize_reference(raw).expect_err(raw);
            assert_eq!(err.reason(), Reason::InvalidImageReference, "{raw}");
            assert!(err.message().contains("is malformed"), "{}", err.message());
        }
    }

    #[test]
    fn tracker_offsets_are_monotonic_and_capped() {
        let blob = |digest: &str, size: i64| OciDescriptor {
            media_type: String::new(),
            digest: digest.to_owned(),
            size,
            urls: None,
            annotations: None,
            artifact_type: None,
        };
        let tracker = Tracker::new(&[blob("sha256:a", 10), blob("sha256:b", 5)]);
        let mut sent = 0;
        assert!(tracker.event_if_changed(&mut sent).is_none());
        tracker.update(0, 6, LayerState::Downloading);
        tracker.update(0, 2, LayerState::Waiting);
        tracker.update(1, 50, LayerState::Exists);
        let Some(PullEvent::Progress { layers, offset_bytes, total_bytes }) = tracker.event_if_changed(&mut sent)
        else {
            panic!("a change must produce an event");
        };
        assert_eq!((layers[0].offset, layers[0].state), (6, LayerState::Waiting));
        assert_eq!((layers[1].offset, layers[1].state), (5, LayerState::Exists));
        assert_eq!((offset_bytes, total_bytes), (11, 15));
        assert!(tracker.event_if_changed(&mut sent).is_none());
    }

    #[test]
    fn repeated_layers_download_once() {
        let blob = |digest: &str| OciDescriptor { digest: digest.to_owned(), ..OciDescriptor::default() };
        let unique = unique_blobs(&[blob("sha256:a"), blob("sha256:b"), blob("sha256:a")]);
        let digests: Vec<&str> = unique.iter().map(|blob| blob.digest.as_str()).collect();
        assert_eq!(digests, ["sha256:a", "sha256:b"]);
    }
}
