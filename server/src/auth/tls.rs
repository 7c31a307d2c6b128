//! The server's TLS certificate (`--tls-cert`, `--tls-key`, PEM), swappable while serving: a
//! reload (SIGHUP or a changed file) replaces it for new connections; open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The PEM files of the server's certificate chain and private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificate new connections get.
#[derive(Debug)]
pub struct ServerCertificate {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

/// The crypto berth's TLS uses on both ends (rustls' aws-lc-rs provider, which the registry
/// client already links), named explicitly so no process-wide default is needed.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl ServerCertificate {
    /// Loads the certificate; the error is one line naming the file and what is wrong.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        let key = read_certified_key(&files)?;
        Ok(Arc::new(Self { files, current: RwLock::new(Arc::new(key)) }))
    }

    /// Reads the files again; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let key = read_certified_key(&self.files)?;
        *self.current.write().expect("certificate lock") = Arc::new(key);
        Ok(())
    }

    /// The files it was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// A rustls server configuration resolving to this certificate, offering HTTP/2 (gRPC) and
    /// HTTP/1.1 (grpc-web from browsers) through ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("cannot set up TLS: {err}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

fn read_certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| {
        format!("tls key {}: {err}; pass a PEM file with a PKCS#8, PKCS#1 or SEC1 private key", files.key.display())
    })?;
    CertifiedKey::from_der(chain, key, &crypto_provider()).map_err(|err| {
        format!(
            "tls key {} does not fit certificate {}: {err}; pass the key the certificate was issued for",
            files.key.display(),
            files.cert.display()
        )
    })
}

/// Reads a PEM certificate chain, the server's own certificate first.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("tls certificate {}: {err}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls certificate {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}
