//! The content store side of a pull: `Content.Write` ingests that resume where an interrupted
//! pull stopped, reads of small blobs, and label updates.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    AbortRequest, AddResourceRequest, Info, InfoRequest, ReadContentRequest, Resource, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use super::client::{Namespace, map_status, request, streaming_request};
use super::registry::BlobStream;
use crate::error::{Error, Reason, Result};
use crate::runtime::LayerState;

/// Size of one `Content.Write` message.
const CHUNK_BYTES: usize = 1 << 20;
/// A partly filled chunk is sent after this long, so progress moves on slow links too.
const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// How long to wait for another writer of the same blob (a concurrent pull) to finish.
const LOCKED_WAIT: Duration = Duration::from_secs(600);

/// What a blob write reports while it runs: the bytes containerd holds and the state.
pub(super) type Report<'a> = &'a (dyn Fn(u64, LayerState) + Send + Sync);

/// A blob to put into the content store.
#[derive(Clone, Debug)]
pub(super) struct Blob {
    pub digest: String,
    pub size: u64,
}

/// The content service of one namespace.
#[derive(Clone, Debug)]
pub(super) struct Content {
    channel: Channel,
    socket: PathBuf,
    namespace: Namespace,
}

enum Attempt {
    Done(LayerState),
    Locked,
}

impl Content {
    pub fn new(channel: Channel, socket: PathBuf, namespace: Namespace) -> Self {
        Self { channel, socket, namespace }
    }

    fn client(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }

    fn status_error(&self, what: &str, status: tonic::Status) -> Error {
        map_status(&self.socket, what, status)
    }

    /// Writes a blob through the ingest `berth-pull-<digest>`, so an interrupted pull leaves an
    /// ingest the next one continues. `open(offset)` gives the bytes from `offset` on; it is
    /// only called when bytes are missing. Returns `Exists` when containerd already had the
    /// blob, `Done` when it was written; `labels` are set either way.
    ///
    /// The blob is added to `lease` before it is written, so it is protected from the moment it
    /// is committed. The write itself carries no lease: containerd collects a leased ingest
    /// together with its lease, while an unleased one survives collections for 24 hours — long
    /// enough for the retry of a failed pull (whose lease is gone) to resume it.
    pub async fn write<F, Fut>(
        &self,
        lease: &str,
        blob: &Blob,
        labels: &HashMap<String, String>,
        open: F,
        report: Report<'_>,
    ) -> Result<LayerState>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<BlobStream>>,
    {
        self.lease_blob(lease, &blob.digest).await?;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let state = loop {
            match self.attempt(blob, labels, &open, report).await? {
                Attempt::Done(state) => break state,
                Attempt::Locked if started.elapsed() < LOCKED_WAIT => {
                    tracing::debug!(digest = %blob.digest, ?backoff, "blob is being written by another pull; waiting");
                    report(0, LayerState::Waiting);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Attempt::Locked => {
                    // Someone else's write, not this image: a later pull succeeds.
                    return Err(Error::new(
                        Reason::RuntimeError,
                        format!(
                            "blob {} stayed locked by another writer for {}s; retry the pull later",
                            blob.digest,
                            LOCKED_WAIT.as_secs()
                        ),
                    ));
                }
            }
        };
        tracing::debug!(digest = %blob.digest, ?state, elapsed_ms = started.elapsed().as_millis(), "blob stored");
        if state == LayerState::Exists && !labels.is_empty() {
            self.set_labels(&blob.digest, labels).await?;
        }
        report(blob.size, state);
        Ok(state)
    }

    /// Writes `bytes` (already in memory) as a blob.
    pub async fn write_bytes(
        &self,
        lease: &str,
        digest: &str,
        bytes: Bytes,
        labels: &HashMap<String, String>,
    ) -> Result<LayerState> {
        let blob = Blob { digest: digest.to_owned(), size: bytes.len() as u64 };
        let open = |offset: u64| {
            let rest = bytes.slice(usize::try_from(offset).unwrap_or(bytes.len()).min(bytes.len())..);
            async move { Ok(futures::stream::once(async move { Ok(rest) }).boxed()) }
        };
        self.write(lease, &blob, labels, open, &|_, _| {}).await
    }

    async fn attempt<F, Fut>(
        &self,
        blob: &Blob,
        labels: &HashMap<String, String>,
        open: &F,
        report: Report<'_>,
    ) -> Result<Attempt>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<BlobStream>>,
    {
        let ingest = format!("berth-pull-{}", blob.digest);
        let total = i64::try_from(blob.size).map_err(|_| Error::internal("blob size exceeds i64"))?;
        let (sender, receiver) = mpsc::channel::<WriteContentRequest>(4);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: ingest.clone(),
            total,
            expected: blob.digest.clone(),
            ..Default::default()
        };
        sender
            .send(stat)
            .await
            .map_err(|_| Error::internal("content write channel closed before the first message"))?;

        let mut replies =
            match self.client().write(streaming_request(&self.namespace, ReceiverStream::new(receiver))).await {
                Ok(response) => response.into_inner(),
                Err(status) => return self.early_outcome(blob, status),
            };
        let status_reply = match replies.message().await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(Error::internal("containerd closed the content write without answering stat")),
            Err(status) => return self.early_outcome(blob, status),
        };
        let mut offset = u64::try_from(status_reply.offset).unwrap_or(0);
        if offset > blob.size {
            // A corrupt or foreign ingest: start over.
            self.abort(&ingest).await;
            offset = 0;
        }
        let downloaded = offset < blob.size;
        report(offset, if downloaded { LayerState::Downloading } else { LayerState::Verifying });

        let send = async {
            // Owned here so the request stream ends once the commit is sent.
            let sender = sender;
            let mut position = offset;
            if downloaded {
                let mut stream = open(offset).await?;
                let mut buffer = BytesMut::with_capacity(CHUNK_BYTES);
                let mut last_flush = Instant::now();
                while let Some(chunk) = stream.next().await {
                    buffer.extend_from_slice(&chunk?);
                    if buffer.len() >= CHUNK_BYTES || last_flush.elapsed() >= FLUSH_AFTER {
                        if !send_write(&sender, &ingest, position, &buffer).await {
                            return Ok(());
                        }
                        position += buffer.len() as u64;
                        buffer.clear();
                        last_flush = Instant::now();
                    }
                }
                if !buffer.is_empty() {
                    if !send_write(&sender, &ingest, position, &buffer).await {
                        return Ok(());
                    }
                    position += buffer.len() as u64;
                }
                if position < blob.size {
                    // The download broke off; what arrived stays in the ingest and the next pull
                    // resumes from there.
                    return Err(Error::new(
                        Reason::RegistryUnavailable,
                        format!(
                            "the registry ended blob {} after {position} of {} bytes; check the registry and retry the pull (it resumes)",
                            blob.digest, blob.size
                        ),
                    ));
                }
                if position > blob.size {
                    return Err(Error::new(
                        Reason::ImagePullFailed,
                        format!(
                            "the registry sent {position} bytes of blob {}, whose manifest says {}; the image is broken in the registry",
                            blob.digest, blob.size
                        ),
                    ));
                }
            }
            let commit = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: ingest.clone(),
                total,
                expected: blob.digest.clone(),
                // The offset must be the current one: offset 0 would truncate the ingest.
                offset: i64::try_from(position).unwrap_or(total),
                labels: labels.clone(),
                ..Default::default()
            };
            // A closed channel means the call ended; the reply side says why.
            let _ = sender.send(commit).await;
            Ok::<(), Error>(())
        };
        let drain = async {
            loop {
                match replies.message().await {
                    Ok(Some(reply)) if is_commit(&reply) => return Ok(Attempt::Done(LayerState::Done)),
                    Ok(Some(reply)) => {
                        let written = u64::try_from(reply.offset).unwrap_or(0);
                        let state = if written >= blob.size { LayerState::Verifying } else { LayerState::Downloading };
                        report(written, state);
                    }
                    Ok(None) => {
                        return Err(Error::internal(format!(
                            "containerd ended the write of {} before the commit",
                            blob.digest
                        )));
                    }
                    Err(status) if status.code() == Code::AlreadyExists => {
                        return Ok(Attempt::Done(LayerState::Exists));
                    }
                    Err(status) if is_digest_mismatch(&status) => {
                        // What the ingest holds is wrong (a corrupt resume): drop it so the next
                        // pull starts from zero.
                        self.abort(&ingest).await;
                        // Transient: the retry downloads from zero, verified as it arrives, and a
                        // registry that serves corrupt bytes then fails as IMAGE_PULL_FAILED.
                        return Err(Error::new(
                            Reason::RuntimeError,
                            format!(
                                "blob {} failed verification in containerd ({}); the broken download was discarded, retry the pull",
                                blob.digest,
                                status.message()
                            ),
                        ));
                    }
                    Err(status) => return Err(self.status_error("content write", status)),
                }
            }
        };
        let ((), outcome) = tokio::try_join!(send, drain)?;
        Ok(match outcome {
            Attempt::Done(LayerState::Done) if !downloaded => Attempt::Done(LayerState::Exists),
            other => other,
        })
    }

    /// Adds the blob (present or not yet) to the lease.
    async fn lease_blob(&self, lease: &str, digest: &str) -> Result<()> {
        let add = AddResourceRequest {
            id: lease.to_owned(),
            resource: Some(Resource { id: digest.to_owned(), r#type: "content".to_owned() }),
        };
        LeasesClient::new(self.channel.clone())
            .add_resource(request(&self.namespace, add))
            .await
            .map_err(|status| self.status_error(&format!("adding blob {digest} to the pull lease"), status))?;
        Ok(())
    }

    /// Interprets a failure before any data moved: the blob exists, or another writer holds it.
    fn early_outcome(&self, blob: &Blob, status: tonic::Status) -> Result<Attempt> {
        match status.code() {
            Code::AlreadyExists => Ok(Attempt::Done(LayerState::Exists)),
            Code::Unavailable if status.message().contains("locked") => Ok(Attempt::Locked),
            _ => Err(self.status_error(&format!("content write of {}", blob.digest), status)),
        }
    }

    async fn abort(&self, ingest: &str) {
        let request = request(&self.namespace, AbortRequest { r#ref: ingest.to_owned() });
        if let Err(status) = self.client().abort(request).await {
            tracing::debug!(ingest, error = %status.message(), "aborting an ingest failed");
        }
    }

    /// Reads a whole blob; `None` when this namespace does not have it.
    pub async fn read(&self, digest: &str) -> Result<Option<Bytes>> {
        let read = ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 };
        let mut stream = match self.client().read(streaming_request(&self.namespace, read)).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(self.status_error("content read", status)),
        };
        let mut bytes = BytesMut::new();
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk.data),
                Ok(None) => return Ok(Some(bytes.freeze())),
                Err(status) if status.code() == Code::NotFound => return Ok(None),
                Err(status) => return Err(self.status_error("content read", status)),
            }
        }
    }

    /// Whether this namespace has the blob.
    pub async fn exists(&self, digest: &str) -> Result<bool> {
        match self.client().info(request(&self.namespace, InfoRequest { digest: digest.to_owned() })).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(self.status_error("content info", status)),
        }
    }

    /// Sets `labels` on a blob, leaving its other labels alone.
    pub async fn set_labels(&self, digest: &str, labels: &HashMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|key| format!("labels.{key}")).collect();
        let update = UpdateRequest {
            info: Some(Info { digest: digest.to_owned(), labels: labels.clone(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        self.client()
            .update(request(&self.namespace, update))
            .await
            .map_err(|status| self.status_error(&format!("labelling blob {digest}"), status))?;
        Ok(())
    }
}

/// Sends the buffer as a WRITE at `position`; false when the call has already ended.
async fn send_write(sender: &mpsc::Sender<WriteContentRequest>, ingest: &str, position: u64, buffer: &[u8]) -> bool {
    let write = WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: ingest.to_owned(),
        offset: i64::try_from(position).unwrap_or(i64::MAX),
        data: buffer.to_vec(),
        ..Default::default()
    };
    sender.send(write).await.is_ok()
}

fn is_commit(reply: &WriteContentResponse) -> bool {
    reply.action == WriteAction::Commit as i32
}

/// containerd refuses a commit whose bytes do not hash to `expected` (or have the wrong size).
fn is_digest_mismatch(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::InvalidArgument)
        && (status.message().contains("unexpected commit digest")
            || status.message().contains("unexpected commit size"))
}
