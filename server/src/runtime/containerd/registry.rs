//! The registry side of a pull: credentials from a docker `config.json`, manifest resolution to
//! the host platform's image, blob downloads (with HTTP Range for resumed ingests) and the mapping of
//! registry failures to domain errors.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageIndex, OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Arch, Os};
use serde::Deserialize;

use crate::error::{Error, Reason, Result};

/// Manifest media types the resolver accepts (OCI and Docker schema 2, single and multi-platform).
const ACCEPTED_MANIFESTS: &[&str] =
    &[OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE];

/// Manifests and configs are small; anything bigger is not an image we can use.
const MAX_METADATA_BYTES: usize = 16 << 20;

/// A blob download: bytes from the requested offset on.
pub(super) type BlobStream = BoxStream<'static, Result<Bytes>>;

/// A registry client shared by all pulls of a `Puller` (cloning is cheap).
#[derive(Clone)]
pub(super) struct Registry {
    client: Client,
    auths: Arc<HashMap<String, RegistryAuth>>,
    insecure: Arc<Vec<String>>,
    pub platform: HostPlatform,
}

/// A manifest or index exactly as the registry served it.
#[derive(Clone, Debug)]
pub(super) struct RawManifest {
    pub media_type: String,
    pub digest: String,
    pub bytes: Bytes,
}

/// What a reference resolved to.
#[derive(Clone, Debug)]
pub(super) struct Resolved {
    /// The index the reference pointed at, if it pointed at one.
    pub index: Option<(RawManifest, OciImageIndex)>,
    /// The host platform's image manifest.
    pub manifest: RawManifest,
    pub parsed: OciImageManifest,
}

impl Resolved {
    /// The descriptor the reference itself points at (the index, or the manifest): the image
    /// target, as `ctr images pull` records it.
    pub fn top(&self) -> &RawManifest {
        self.index.as_ref().map_or(&self.manifest, |(raw, _)| raw)
    }
}

impl Registry {
    /// Builds the HTTP client once (loading the TLS roots costs ~100 ms) and reads credentials.
    pub fn new(insecure_registries: &[String], auth_file: Option<&Path>) -> Result<Self> {
        let auths = match auth_file {
            Some(path) => read_auth_file(path)?,
            None => HashMap::new(),
        };
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure_registries.to_vec()),
            // The platform is chosen here, not by oci-client.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config)
            .map_err(|err| Error::internal(format!("cannot build the registry http client: {}", chain(&err))))?;
        Ok(Self {
            client,
            auths: Arc::new(auths),
            insecure: Arc::new(insecure_registries.to_vec()),
            platform: HostPlatform::current(),
        })
    }

    fn auth_for(&self, reference: &Reference) -> RegistryAuth {
        [reference.resolve_registry(), reference.registry()]
            .iter()
            .find_map(|host| self.auths.get(*host))
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }

    /// Fetches the manifest the reference names and, for an index, the host platform's manifest.
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved> {
        let top = self.fetch_manifest(reference).await?;
        if !is_index(&top) {
            let parsed = parse_manifest(reference, &top)?;
            return Ok(Resolved { index: None, manifest: top, parsed });
        }
        let index: OciImageIndex = serde_json::from_slice(&top.bytes).map_err(|err| {
            Error::new(
                Reason::ImagePullFailed,
                format!(
                    "the image index of {reference} ({}) is not valid json: {err}; the image is broken in the registry",
                    top.digest
                ),
            )
        })?;
        let Some(entry) = self.platform.pick(&index.manifests) else {
            let platform = self.platform.name();
            return Err(Error::new(
                Reason::NoMatchingPlatform,
                format!(
                    "image {reference} has no {platform} manifest (available: {}); use an image built for {platform}",
                    platforms(&index.manifests)
                ),
            ));
        };
        let by_digest = reference.clone_with_digest(entry.digest.clone());
        let manifest = self.fetch_manifest(&by_digest).await?;
        if is_index(&manifest) {
            return Err(Error::new(
                Reason::ImagePullFailed,
                format!(
                    "the {} entry of {reference} is another index; nested indexes are not supported, use a platform-specific reference",
                    self.platform.name()
                ),
            ));
        }
        let parsed = parse_manifest(reference, &manifest)?;
        Ok(Resolved { index: Some((top, index)), manifest, parsed })
    }

    async fn fetch_manifest(&self, reference: &Reference) -> Result<RawManifest> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth_for(reference), ACCEPTED_MANIFESTS)
            .await
            .map_err(|err| self.error(err, reference, "fetching the manifest"))?;
        if bytes.len() > MAX_METADATA_BYTES {
            return Err(Error::new(
                Reason::ImagePullFailed,
                format!("the manifest of {reference} is {} bytes, more than berth accepts", bytes.len()),
            ));
        }
        let media_type = media_type_of(&bytes).ok_or_else(|| {
            Error::new(
                Reason::ImagePullFailed,
                format!(
                    "the manifest of {reference} ({digest}) is not a json object; the image is broken in the registry"
                ),
            )
        })?;
        Ok(RawManifest { media_type, digest, bytes })
    }

    /// Downloads a small blob (an image config) completely; oci-client verifies its digest.
    pub async fn fetch_blob(&self, reference: &Reference, blob: &OciDescriptor) -> Result<Bytes> {
        if usize::try_from(blob.size).map_or(true, |size| size > MAX_METADATA_BYTES) {
            return Err(Error::new(
                Reason::ImagePullFailed,
                format!("the config of {reference} is {} bytes, more than berth accepts", blob.size),
            ));
        }
        self.ensure_auth(reference).await;
        let stream = self
            .client
            .pull_blob_stream(reference, blob)
            .await
            .map_err(|err| self.error(err, reference, "fetching the image config"))?;
        let chunks: Vec<Bytes> =
            stream.stream.map_err(|err| self.stream_error(err, reference, &blob.digest)).try_collect().await?;
        Ok(Bytes::from(chunks.concat()))
    }

    /// Streams a blob from `offset` on. The registry may ignore the Range header and send the
    /// whole blob; then the first `offset` bytes are skipped, so the caller always gets what it
    /// asked for. Full downloads are verified by oci-client; partial ones by containerd's commit.
    pub async fn blob_stream(&self, reference: &Reference, blob: &OciDescriptor, offset: u64) -> Result<BlobStream> {
        self.ensure_auth(reference).await;
        let what = "downloading a layer";
        let (stream, skip) = if offset == 0 {
            let sized =
                self.client.pull_blob_stream(reference, blob).await.map_err(|err| self.error(err, reference, what))?;
            (sized.stream, 0)
        } else {
            match self
                .client
                .pull_blob_stream_partial(reference, blob, offset, None)
                .await
                .map_err(|err| self.error(err, reference, what))?
            {
                BlobResponse::Partial(sized) => (sized.stream, 0),
                BlobResponse::Full(sized) => (sized.stream, offset),
            }
        };
        let registry = self.clone();
        let reference = reference.clone();
        let digest = blob.digest.clone();
        let mapped = stream.map_err(move |err| registry.stream_error(err, &reference, &digest));
        Ok(skip_prefix(mapped.boxed(), skip))
    }

    /// Blob calls do not go through `pull_manifest_raw`, which is where oci-client records the
    /// credentials of a registry.
    async fn ensure_auth(&self, reference: &Reference) {
        self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth_for(reference)).await;
    }

    fn error(&self, err: OciDistributionError, reference: &Reference, what: &str) -> Error {
        map_error(&err, reference, what, self.insecure.iter().any(|host| host == reference.resolve_registry()))
    }

    fn stream_error(&self, err: std::io::Error, reference: &Reference, digest: &str) -> Error {
        let host = reference.resolve_registry();
        if let Some(digest_err) = err.get_ref().and_then(|inner| inner.downcast_ref::<DigestError>()) {
            return Error::new(
                Reason::ImagePullFailed,
                format!(
                    "blob {digest} of {reference} from {host} failed verification ({digest_err}); the registry serves corrupt data, retry or fix the image"
                ),
            );
        }
        Error::new(
            Reason::RegistryUnavailable,
            format!(
                "download of blob {digest} from registry {host} broke off: {}; check the registry and retry (the download resumes)",
                chain(&err)
            ),
        )
    }
}

/// Drops the first `skip` bytes of a stream.
fn skip_prefix(stream: BlobStream, skip: u64) -> BlobStream {
    if skip == 0 {
        return stream;
    }
    let mut left = skip;
    stream
        .try_filter_map(move |chunk| {
            let len = chunk.len() as u64;
            let kept = if left >= len {
                left -= len;
                None
            } else {
                // `left < len <= usize::MAX` here, so the cast cannot truncate.
                let kept = chunk.slice(left as usize..);
                left = 0;
                Some(kept)
            };
            futures::future::ready(Ok(kept))
        })
        .boxed()
}

pub(super) fn is_index(raw: &RawManifest) -> bool {
    raw.media_type == OCI_IMAGE_INDEX_MEDIA_TYPE || raw.media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE
}

/// The `mediaType` of a manifest; OCI allows leaving it out, then `manifests` marks an index.
pub(super) fn media_type_of(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    Some(match probe.media_type {
        Some(media_type) if !media_type.is_empty() => media_type,
        _ if probe.manifests.is_some() => OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned(),
        _ => OCI_IMAGE_MEDIA_TYPE.to_owned(),
    })
}

pub(super) fn parse_manifest(reference: &impl std::fmt::Display, raw: &RawManifest) -> Result<OciImageManifest> {
    if raw.media_type != OCI_IMAGE_MEDIA_TYPE && raw.media_type != IMAGE_MANIFEST_MEDIA_TYPE {
        return Err(Error::new(
            Reason::ImagePullFailed,
            format!("{reference} is a {:?}, not a container image manifest; use an image reference", raw.media_type),
        ));
    }
    serde_json::from_slice(&raw.bytes).map_err(|err| {
        Error::new(
            Reason::ImagePullFailed,
            format!("the manifest of {reference} ({}) cannot be parsed: {err}; the image is broken", raw.digest),
        )
    })
}

/// The platform whose images this host runs: `linux` and the OCI name of the CPU architecture
/// berth was built for (a berth binary runs natively, so its target is the host's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HostPlatform {
    pub architecture: Arch,
    /// The preferred variant (`v8` for arm64, as containerd normalizes it); None when the
    /// architecture has no variants.
    pub variant: Option<&'static str>,
}

impl HostPlatform {
    /// The platform of the running binary.
    pub fn current() -> Self {
        Self::for_rust_arch(std::env::consts::ARCH)
    }

    /// Maps Rust's `target_arch` names to OCI architectures (Go's GOARCH names).
    pub fn for_rust_arch(rust_arch: &str) -> Self {
        let (architecture, variant) = match rust_arch {
            "x86_64" => (Arch::Amd64, None),
            "aarch64" => (Arch::ARM64, Some("v8")),
            "arm" => (Arch::ARM, Some("v7")),
            "x86" => (Arch::i386, None),
            "powerpc64" if cfg!(target_endian = "little") => (Arch::PowerPC64le, None),
            "powerpc64" => (Arch::PowerPC64, None),
            "s390x" => (Arch::s390x, None),
            "riscv64" => (Arch::RISCV64, None),
            other => (Arch::Other(other.to_owned()), None),
        };
        Self { architecture, variant }
    }

    /// `linux/arm64/v8`-style name for messages.
    pub fn name(&self) -> String {
        match self.variant {
            Some(variant) => format!("linux/{}/{variant}", self.architecture),
            None => format!("linux/{}", self.architecture),
        }
    }

    /// Picks this platform's entry of an index: the preferred variant (or none) first, then an
    /// entry without a variant, then any variant of the architecture.
    pub fn pick<'a>(&self, entries: &'a [ImageIndexEntry]) -> Option<&'a ImageIndexEntry> {
        let ours = |entry: &&ImageIndexEntry| {
            entry
                .platform
                .as_ref()
                .is_some_and(|platform| platform.os == Os::Linux && platform.architecture == self.architecture)
        };
        fn variant(entry: &ImageIndexEntry) -> Option<&str> {
            entry.platform.as_ref().and_then(|platform| platform.variant.as_deref()).filter(|v| !v.is_empty())
        }
        let candidates = || entries.iter().filter(ours);
        candidates()
            .find(|entry| variant(entry) == self.variant)
            .or_else(|| candidates().find(|entry| variant(entry).is_none()))
            .or_else(|| candidates().next())
    }
}

fn platforms(entries: &[ImageIndexEntry]) -> String {
    let names: Vec<String> = entries
        .iter()
        .filter_map(|entry| entry.platform.as_ref())
        .map(|platform| match platform.variant.as_deref() {
            Some(variant) if !variant.is_empty() => format!("{}/{}/{variant}", platform.os, platform.architecture),
            _ => format!("{}/{}", platform.os, platform.architecture),
        })
        .collect();
    if names.is_empty() { "no platforms listed".to_owned() } else { names.join(", ") }
}

/// Maps an oci-client failure to a domain error naming the registry host.
fn map_error(err: &OciDistributionError, reference: &Reference, what: &str, insecure: bool) -> Error {
    let host = reference.resolve_registry();
    let not_found = || {
        Error::new(
            Reason::ImageNotFound,
            format!(
                "image {reference} was not found in registry {host} ({what}: {}); check the repository name and tag",
                chain(err)
            ),
        )
    };
    let auth_failed = || {
        Error::new(
            Reason::RegistryAuthFailed,
            format!(
                "registry {host} refused access to {reference} ({what}: {}); put credentials for {host} in the --registry-auth-file docker config.json",
                chain(err)
            ),
        )
    };
    let unavailable = || {
        let hint = if insecure {
            String::new()
        } else {
            format!(" (if it serves plain http, pass --insecure-registry {host})")
        };
        Error::new(
            Reason::RegistryUnavailable,
            format!(
                "registry {host} is unreachable while {what} for {reference}: {}; check that it runs and is reachable{hint}",
                chain(err)
            ),
        )
    };
    let failed =
        || Error::new(Reason::ImagePullFailed, format!("{what} for {reference} from {host} failed: {}", chain(err)));
    match err {
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|error| &error.code).collect();
            if codes.iter().any(|code| {
                matches!(
                    code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::ManifestBlobUnknown
                )
            }) {
                not_found()
            } else if codes.iter().any(|code| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                auth_failed()
            } else if codes.iter().any(|code| matches!(code, OciErrorCode::Toomanyrequests)) {
                unavailable()
            } else {
                failed()
            }
        }
        OciDistributionError::ServerError { code, .. } => match code {
            404 => not_found(),
            401 | 403 => auth_failed(),
            429 | 500..=599 => unavailable(),
            _ => failed(),
        },
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            auth_failed()
        }
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => unavailable(),
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        _ => failed(),
    }
}

/// An error and its sources, `: `-separated (reqwest hides the useful part in the sources).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

fn read_auth_file(path: &Path) -> Result<HashMap<String, RegistryAuth>> {
    let text = std::fs::read(path).map_err(|err| {
        Error::new(
            Reason::InvalidArgument,
            format!("cannot read the registry auth file {}: {err}; fix --registry-auth-file", path.display()),
        )
    })?;
    parse_auth_file(&text).map_err(|why| {
        Error::new(
            Reason::InvalidArgument,
            format!(
                "the registry auth file {} is not a docker config.json: {why}; fix --registry-auth-file",
                path.display()
            ),
        )
    })
}

/// Reads the `auths` of a docker `config.json` into credentials keyed by registry host.
/// `credsStore`/`credHelpers` and `identitytoken` (an OAuth refresh token) are not supported.
fn parse_auth_file(text: &[u8]) -> std::result::Result<HashMap<String, RegistryAuth>, String> {
    let config: DockerConfig = serde_json::from_slice(text).map_err(|err| err.to_string())?;
    let mut auths = HashMap::new();
    for (key, entry) in config.auths {
        let host = auth_key_host(&key);
        let auth = if let Some(encoded) = entry.auth.as_deref().filter(|value| !value.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|err| format!("auths.{key:?}.auth is not base64: {err}"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| format!("auths.{key:?}.auth is not utf-8"))?;
            let (user, password) =
                decoded.split_once(':').ok_or_else(|| format!("auths.{key:?}.auth is not base64 of user:password"))?;
            RegistryAuth::Basic(user.to_owned(), password.to_owned())
        } else if let (Some(user), Some(password)) = (entry.username, entry.password) {
            RegistryAuth::Basic(user, password)
        } else if let Some(token) = entry.registrytoken {
            RegistryAuth::Bearer(token)
        } else {
            continue;
        };
        if host == "docker.io" || host == "registry-1.docker.io" {
            auths.insert("index.docker.io".to_owned(), auth.clone());
        }
        auths.insert(host, auth);
    }
    Ok(auths)
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `127.0.0.1:5000` stays.
fn auth_key_host(key: &str) -> String {
    let without_scheme = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    without_scheme.split('/').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>, digest: &str) -> serde_json::Value {
        let mut platform = serde_json::json!({"os": os, "architecture": arch});
        if let Some(variant) = variant {
            platform["variant"] = variant.into();
        }
        serde_json::json!({"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": digest, "size": 1, "platform": platform})
    }

    fn entries(values: Vec<serde_json::Value>) -> Vec<ImageIndexEntry> {
        serde_json::from_value(serde_json::Value::Array(values)).expect("valid entries")
    }

    #[test]
    fn an_amd64_host_picks_linux_amd64_without_variant_first() {
        let amd64 = HostPlatform::for_rust_arch("x86_64");
        let list = entries(vec![
            entry("linux", "arm64", Some("v8"), "sha256:a"),
            entry("linux", "amd64", Some("v3"), "sha256:b"),
            entry("linux", "amd64", None, "sha256:c"),
        ]);
        assert_eq!(amd64.pick(&list).map(|e| e.digest.as_str()), Some("sha256:c"));
        let only_variant = entries(vec![entry("linux", "amd64", Some("v2"), "sha256:b")]);
        assert_eq!(amd64.pick(&only_variant).map(|e| e.digest.as_str()), Some("sha256:b"));
        let none =
            entries(vec![entry("linux", "arm64", Some("v8"), "sha256:a"), entry("windows", "amd64", None, "sha256:w")]);
        assert!(amd64.pick(&none).is_none());
        assert_eq!(platforms(&none), "linux/arm64/v8, windows/amd64");
    }

    #[test]
    fn an_arm64_host_picks_its_own_architecture() {
        let arm64 = HostPlatform::for_rust_arch("aarch64");
        assert_eq!(arm64.name(), "linux/arm64/v8");
        let list = entries(vec![
            entry("linux", "amd64", None, "sha256:a"),
            entry("linux", "arm", Some("v7"), "sha256:b"),
            entry("linux", "arm64", Some("v8"), "sha256:c"),
        ]);
        assert_eq!(arm64.pick(&list).map(|e| e.digest.as_str()), Some("sha256:c"));
        // Many indexes list arm64 without a variant.
        let no_variant =
            entries(vec![entry("linux", "amd64", None, "sha256:a"), entry("linux", "arm64", None, "sha256:d")]);
        assert_eq!(arm64.pick(&no_variant).map(|e| e.digest.as_str()), Some("sha256:d"));
        let amd64_only = entries(vec![entry("linux", "amd64", None, "sha256:a")]);
        assert!(arm64.pick(&amd64_only).is_none());
    }

    #[test]
    fn the_running_binary_names_a_known_platform() {
        let platform = HostPlatform::current();
        assert!(!matches!(platform.architecture, Arch::Other(_)), "unmapped architecture {platform:?}");
    }

    #[test]
    fn media_type_is_inferred_when_missing() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_IMAGE_INDEX_MEDIA_TYPE)
        );
        assert_eq!(media_type_of(br#"{"schemaVersion":2,"layers":[]}"#).as_deref(), Some(OCI_IMAGE_MEDIA_TYPE));
        assert_eq!(
            media_type_of(format!(r#"{{"mediaType":"{IMAGE_MANIFEST_MEDIA_TYPE}"}}"#).as_bytes()).as_deref(),
            Some(IMAGE_MANIFEST_MEDIA_TYPE)
        );
        assert_eq!(media_type_of(b"[1]"), None);
    }

    #[test]
    fn reads_docker_config_auths() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("bot:s3cr:et");
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{encoded}"}},
                "registry.example:5000": {{"username": "u", "password": "p"}},
                "empty.example": {{}}
            }}, "credsStore": "desktop"}}"#
        );
        let auths = parse_auth_file(text.as_bytes()).expect("parses");
        assert_eq!(auths.get("index.docker.io"), Some(&RegistryAuth::Basic("bot".into(), "s3cr:et".into())));
        assert_eq!(auths.get("registry.example:5000"), Some(&RegistryAuth::Basic("u".into(), "p".into())));
        assert!(!auths.contains_key("empty.example"));
        assert!(parse_auth_file(br#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
    }

    #[test]
    fn skips_prefix_across_chunks() {
        let chunks: Vec<Result<Bytes>> =
            vec![Ok(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"defg")), Ok(Bytes::from_static(b"h"))];
        let stream = futures::stream::iter(chunks).boxed();
        let rest: Vec<Bytes> = futures::executor::block_on(skip_prefix(stream, 5).try_collect()).expect("no errors");
        assert_eq!(rest.concat(), b"fgh");
    }
}
