//! Helpers for authentication tests: tokens made with `berth token create`, a test CA and server
//! certificate made with the openssl CLI, gRPC channels over TLS carrying a token, calls of any
//! method by its path with pre-encoded messages, and grpc-web over TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Testbed;

/// A channel that sends a bearer token (or none) with every call.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// Sets `authorization: Bearer <token>`, or nothing.
#[derive(Clone, Debug)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// A bearer token header, or none.
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(|token| format!("Bearer {token}").parse().expect("a token is header text")))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// `channel` with `token` on every call.
pub fn with_token(channel: Channel, token: Option<&str>) -> AuthChannel {
    InterceptedService::new(channel, Bearer::new(token))
}

/// A token made by `berth token create` with `scope_args` (`--admin`, `--read --workspace a`, ...)
/// and its tokens file entry.
pub fn create_token(testbed: &Testbed, name: &str, scope_args: &[&str]) -> (String, String) {
    let output = Command::new(&testbed.berth_bin)
        .args(["token", "create", "--name", name])
        .args(scope_args)
        .output()
        .expect("run berth token create");
    assert!(output.status.success(), "berth token create failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let (token, entry) = stdout.split_once('\n').expect("the token on the first line, then the entry");
    assert!(token.starts_with("berth_") && token.len() == 49, "{token:?}");
    (token.to_owned(), entry.to_owned())
}

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1, made with openssl.
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestCa {
    /// Makes them in `dir` (files named after `name`).
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create the CA directory");
        let ca_key = dir.join(format!("{name}-ca.key"));
        let ca_pem = dir.join(format!("{name}-ca.pem"));
        let key_pem = dir.join(format!("{name}-server.key"));
        let csr = dir.join(format!("{name}-server.csr"));
        let cert_pem = dir.join(format!("{name}-server.pem"));
        let extensions = dir.join(format!("{name}-ext.cnf"));
        std::fs::write(&extensions, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write the extensions");
        let path = |path: &Path| path.to_str().expect("utf-8 path").to_owned();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=berth test CA {name}"),
            "-keyout",
            &path(&ca_key),
            "-out",
            &path(&ca_pem),
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &path(&key_pem),
            "-out",
            &path(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path(&csr),
            "-CA",
            &path(&ca_pem),
            "-CAkey",
            &path(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path(&extensions),
            "-out",
            &path(&cert_pem),
        ]);
        Self { ca_pem, cert_pem, key_pem }
    }

    /// `--tls-cert CERT --tls-key KEY`.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_owned(),
            self.cert_pem.display().to_string(),
            "--tls-key".to_owned(),
            self.key_pem.display().to_string(),
        ]
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl").args(args).output().expect("run openssl (the testbed installs it)");
    assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// A rustls client configuration trusting only the CA in `ca_pem`, offering `alpn`.
pub fn client_config(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_pem).expect("read the CA") {
        roots.add(certificate.expect("a PEM certificate")).expect("a usable CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr`, verified as `host`.
pub async fn tls_connect(
    addr: SocketAddr,
    host: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    // As tonic's own connector does: without it a request's last segment waits for a delayed ACK.
    stream.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).expect("a server name");
    tokio_rustls::TlsConnector::from(config).connect(name, stream).await
}

/// A gRPC channel over TLS to `addr` (as `https://localhost:PORT`), trusting `ca_pem`.
pub async fn tls_channel(addr: SocketAddr, ca_pem: &Path) -> Result<Channel, tonic::transport::Error> {
    let config = client_config(ca_pem, &[b"h2"]);
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move {
            let host = uri.host().unwrap_or("localhost").to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            tls_connect(addr, &host, config).await.map(TokioIo::new)
        }
    });
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .expect("uri")
        .connect_with_connector(connector)
        .await
}

/// One grpc-web call over HTTP/1.1 and TLS: returns the `grpc-status` of the answer (from its
/// headers or its trailer frame) and the whole response text.
pub async fn grpc_web_over_tls(
    addr: SocketAddr,
    ca_pem: &Path,
    path: &str,
    message: &[u8],
    token: Option<&str>,
) -> (Option<u32>, String) {
    let mut stream = tls_connect(addr, "localhost", client_config(ca_pem, &[b"http/1.1"])).await.expect("tls to berth");
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         {authorization}Content-Length: {}\r\nConnection: close\r\n\r\n",
        addr.port(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send the request");
    stream.write_all(&body).await.expect("send the body");
    let mut response = Vec::new();
    // A peer closing without close_notify ends the read with an error after the data.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    let status = text
        .split("grpc-status:")
        .nth(1)
        .and_then(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok());
    (status, text)
}

/// A codec that sends pre-encoded messages and receives raw ones, so any method can be called
/// by its path.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

/// The encoder and decoder of [`RawCodec`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawCoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCoder
    }
}

impl Encoder for RawCoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The shape of a method, from its descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub client_streaming: bool,
    pub server_streaming: bool,
}

/// Calls `path` with `message` (the only message of a client stream) and returns the final
/// status: a server stream is read to its end, or until it has been open for `linger` (then
/// OK: the call was accepted and is streaming).
pub async fn call_raw(
    channel: AuthChannel,
    path: &str,
    shape: Shape,
    message: Bytes,
    linger: Duration,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|err| tonic::Status::unavailable(err.to_string()))?;
    let path: http::uri::PathAndQuery = path.parse().expect("a method path");
    match (shape.client_streaming, shape.server_streaming) {
        (false, false) => grpc.unary(tonic::Request::new(message), path, RawCodec).await.map(drop),
        (true, false) => {
            let messages = tokio_stream::once(message);
            grpc.client_streaming(tonic::Request::new(messages), path, RawCodec).await.map(drop)
        }
        (false, true) => {
            let mut stream = grpc.server_streaming(tonic::Request::new(message), path, RawCodec).await?.into_inner();
            read_until_end(&mut stream, linger).await
        }
        (true, true) => {
            let messages = tokio_stream::once(message);
            let mut stream = grpc.streaming(tonic::Request::new(messages), path, RawCodec).await?.into_inner();
            read_until_end(&mut stream, linger).await
        }
    }
}

async fn read_until_end(stream: &mut tonic::Streaming<Bytes>, linger: Duration) -> Result<(), tonic::Status> {
    let read = async {
        while let Some(message) = stream.next().await {
            message?;
        }
        Ok(())
    };
    tokio::time::timeout(linger, read).await.unwrap_or(Ok(()))
}
