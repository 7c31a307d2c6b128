//! Reloads the tokens file and the TLS certificate without a restart: on SIGHUP, and when one
//! of their files changes. Changes are found by comparing each file's device, inode, size and
//! modification time once a second: one stat per file, and it notices edits in place, a new file
//! renamed over the old one and Kubernetes' symlink-swapped secret volumes alike (inotify
//! watches the inode and misses the last two unless the directory is watched too). A file
//! that cannot be used is logged and the old tokens or certificate stay.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::authenticator::Authenticator;
use super::tls::ServerCertificate;

/// How often the files are compared with what was loaded.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a file looked like when it was last loaded; `None` when it could not be read.
type Identity = Option<(u64, u64, u64, i64, i64)>;

async fn identity(path: &Path) -> Identity {
    let metadata = tokio::fs::metadata(path).await.ok()?;
    Some((metadata.dev(), metadata.ino(), metadata.len(), metadata.mtime(), metadata.mtime_nsec()))
}

/// Reloads until `shutdown`; returns at once when there is nothing to reload (SIGHUP is then
/// still caught, so it never ends the server).
pub async fn run(
    authenticator: Arc<Authenticator>,
    certificate: Option<Arc<ServerCertificate>>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(err) => {
            warn!(error = %err, "cannot catch SIGHUP; token and certificate files are still reloaded when they change");
            None
        }
    };
    let tokens_file = authenticator.tokens_file().map(Path::to_owned);
    let tls_files: Vec<PathBuf> = certificate
        .iter()
        .flat_map(|certificate| [certificate.files().cert.clone(), certificate.files().key.clone()])
        .collect();
    let mut tokens_seen = match &tokens_file {
        Some(path) => identity(path).await,
        None => None,
    };
    let mut tls_seen = identities(&tls_files).await;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hung_up = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = async { hangup.as_mut()?.recv().await } => true,
            _ = poll.tick() => false,
        };
        if hung_up {
            info!("SIGHUP: reloading the tokens file and TLS certificate");
            if tokens_file.is_none() && certificate.is_none() {
                info!("nothing to reload: berth runs without a tokens file and without TLS");
            }
        }
        if let Some(path) = &tokens_file {
            let now = identity(path).await;
            if hung_up || now != tokens_seen {
                tokens_seen = now;
                reload_tokens(&authenticator, path).await;
            }
        }
        if let Some(certificate) = &certificate {
            let now = identities(&tls_files).await;
            if hung_up || now != tls_seen {
                tls_seen = now;
                reload_certificate(certificate).await;
            }
        }
    }
}

async fn identities(paths: &[PathBuf]) -> Vec<Identity> {
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        out.push(identity(path).await);
    }
    out
}

async fn reload_tokens(authenticator: &Arc<Authenticator>, path: &Path) {
    let authenticator = authenticator.clone();
    match tokio::task::spawn_blocking(move || authenticator.reload()).await {
        Ok(Ok(count)) => info!(tokens_file = %path.display(), tokens = count, "tokens file reloaded"),
        Ok(Err(err)) => warn!(error = %err, "tokens file not reloaded; the previous tokens stay in force"),
        Err(err) => warn!(error = %err, "tokens file reload failed"),
    }
}

async fn reload_certificate(certificate: &Arc<ServerCertificate>) {
    let certificate = certificate.clone();
    match tokio::task::spawn_blocking(move || certificate.reload()).await {
        Ok(Ok(())) => info!("tls certificate reloaded; new connections use it"),
        Ok(Err(err)) => warn!(error = %err, "tls certificate not reloaded; the previous one stays in use"),
        Err(err) => warn!(error = %err, "tls certificate reload failed"),
    }
}
