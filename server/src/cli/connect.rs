//! The connection every client subcommand uses: `http://` (h2c) or `https://` (TLS, checked
//! against `--ca-file` or the system's roots), with the bearer token of `--token` / BERTH_TOKEN
//! on every call.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Endpoint, Uri};

use super::ServerArgs;

/// The channel of the client subcommands: a tonic channel adding the token to each call.
pub type Channel = InterceptedService<tonic::transport::Channel, BearerToken>;

/// Sets `authorization: Bearer <token>` on every call (nothing without a token).
#[derive(Clone, Debug)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects to the server `args` names.
pub async fn connect(args: &ServerArgs) -> Result<Channel, String> {
    let server = &args.server;
    let token = match args.token.as_deref().map(str::trim).filter(|token| !token.is_empty()) {
        Some(token) => Some(MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            "the token holds characters a header cannot carry; pass it as berth token create printed it".to_owned()
        })?),
        None => None,
    };
    let endpoint =
        Endpoint::from_shared(server.clone()).map_err(|err| format!("invalid --server {server:?}: {err}"))?;
    let unreachable = |err: tonic::transport::Error| {
        format!("UNAVAILABLE cannot reach berth at {server}: {}; start it or pass --server", chain(&err))
    };
    let channel = match endpoint.uri().scheme_str() {
        Some("https") => {
            let tls = client_config(args)?;
            endpoint.connect_with_connector(tls_connector(tls)).await.map_err(unreachable)?
        }
        Some("http") => {
            if args.ca_file.is_some() {
                return Err(format!("--ca-file is for https:// servers; {server} is plain http"));
            }
            endpoint.connect().await.map_err(unreachable)?
        }
        _ => return Err(format!("invalid --server {server:?}: use http://HOST:PORT or https://HOST:PORT")),
    };
    Ok(InterceptedService::new(channel, BearerToken(token)))
}

/// The error and its causes on one line (a TLS failure is in the causes).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // tonic's errors already print their cause; it is not repeated.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn client_config(args: &ServerArgs) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &args.ca_file {
        Some(path) => {
            for certificate in crate::auth::tls::read_chain(path)? {
                roots.add(certificate).map_err(|err| format!("--ca-file {}: {err}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for certificate in native.certs {
                // Certificates the system ships that rustls cannot use are skipped, like curl does.
                let _ = roots.add(certificate);
            }
            if roots.is_empty() {
                return Err("no trusted CA certificates on this system; pass --ca-file with the server's CA".to_owned());
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::auth::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("cannot set up TLS: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// TCP (with TCP_NODELAY) then a TLS handshake checking the certificate against the URL's host.
#[derive(Clone)]
struct TlsConnector(tokio_rustls::TlsConnector);

fn tls_connector(config: Arc<rustls::ClientConfig>) -> TlsConnector {
    TlsConnector(tokio_rustls::TlsConnector::from(config))
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.0.clone();
        Box::pin(async move {
            let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned());
            let host = uri.host().ok_or_else(|| invalid("the server URL has no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            let name = ServerName::try_from(host).map_err(|_| invalid("the server URL's host is not a valid name"))?;
            let tls = connector.connect(name, stream).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
