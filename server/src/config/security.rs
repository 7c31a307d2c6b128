//! The security settings: how calls are authenticated and whether the listener speaks TLS,
//! checked against the listen address so berth never serves an open API to the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::Deserialize;

use super::ConfigError;
use crate::auth::failures::DEFAULT_FAILURE_LIMIT;
use crate::auth::tls::TlsFiles;

/// How calls are authenticated.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No checks: every caller may do everything (loopback listen addresses only).
    None,
    /// Bearer tokens declared in --tokens-file.
    Tokens,
    /// JWTs verified against an issuer's keys: not supported yet.
    Jwt,
}

/// The resolved security settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Security {
    /// The tokens file; `None` when authentication is off.
    pub tokens_file: Option<PathBuf>,
    /// Failed authentications per peer address and minute before it is refused; 0: no limit.
    pub auth_failure_limit: u32,
    /// The certificate and key to serve TLS with; `None` for plaintext (h2c and HTTP/1.1).
    pub tls: Option<TlsFiles>,
}

/// The settings as flags and the file gave them, before they are checked.
pub(super) struct SecurityInput {
    pub auth: Option<AuthMode>,
    pub tokens_file: Option<PathBuf>,
    pub auth_failure_limit: Option<u32>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure_listen: bool,
}

/// Checks the settings against each other and against the listen address.
pub(super) fn resolve(listen: SocketAddr, input: SecurityInput) -> Result<Security, ConfigError> {
    let fail = |message: String| Err(ConfigError(message));
    let tokens_file = match (input.auth, input.tokens_file) {
        (Some(AuthMode::Jwt), _) => {
            return fail(
                "--auth jwt is not supported yet; use --auth tokens with a --tokens-file (berth token create makes its entries)"
                    .to_owned(),
            );
        }
        (Some(AuthMode::None), Some(file)) => {
            return fail(format!("--auth none contradicts --tokens-file {}; drop one of them", file.display()));
        }
        (Some(AuthMode::Tokens), None) => {
            return fail("--auth tokens needs --tokens-file FILE; berth token create makes its entries".to_owned());
        }
        (_, file) => file.map(|file| absolute(&file, "tokens_file")).transpose()?,
    };
    let tls = match (input.tls_cert, input.tls_key) {
        (Some(cert), Some(key)) => {
            Some(TlsFiles { cert: absolute(&cert, "tls_cert")?, key: absolute(&key, "tls_key")? })
        }
        (None, None) => None,
        (Some(_), None) => return fail("--tls-cert needs --tls-key, the certificate's private key".to_owned()),
        (None, Some(_)) => return fail("--tls-key needs --tls-cert, the certificate chain it belongs to".to_owned()),
    };
    let loopback = listen.ip().to_canonical().is_loopback();
    if !loopback && tokens_file.is_none() {
        return fail(format!(
            "berth refuses to listen on {listen} without authentication: anyone reaching it would control every workspace; \
             pass --tokens-file (berth token create makes tokens) or listen on 127.0.0.1"
        ));
    }
    if !loopback && tls.is_none() && !input.insecure_listen {
        return fail(format!(
            "berth refuses to listen on {listen} without TLS: tokens would cross the network in clear; pass --tls-cert \
             and --tls-key, or --insecure-listen when a TLS proxy or a private network protects the traffic"
        ));
    }
    Ok(Security { tokens_file, auth_failure_limit: input.auth_failure_limit.unwrap_or(DEFAULT_FAILURE_LIMIT), tls })
}

fn absolute(path: &Path, key: &str) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path)
        .map_err(|err| ConfigError(format!("{key} {} cannot be made absolute: {err}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SecurityInput {
        SecurityInput {
            auth: None,
            tokens_file: None,
            auth_failure_limit: None,
            tls_cert: None,
            tls_key: None,
            insecure_listen: false,
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_without_tokens_is_auth_off_and_a_tokens_file_turns_it_on() {
        let off = resolve(addr("127.0.0.1:50051"), input()).unwrap();
        assert_eq!((off.tokens_file, off.tls, off.auth_failure_limit), (None, None, 20));
        let on = resolve(
            addr("[::1]:50051"),
            SecurityInput { tokens_file: Some("/etc/berth/tokens.toml".into()), ..input() },
        )
        .unwrap();
        assert_eq!(on.tokens_file, Some(PathBuf::from("/etc/berth/tokens.toml")));
        let explicit = SecurityInput { auth: Some(AuthMode::Tokens), tokens_file: Some("t.toml".into()), ..input() };
        assert!(resolve(addr("127.0.0.1:1"), explicit).unwrap().tokens_file.unwrap().is_absolute());
    }

    #[test]
    fn the_network_needs_tokens_and_tls_or_insecure_listen() {
        let err = resolve(addr("0.0.0.0:50051"), input()).unwrap_err().to_string();
        assert!(err.contains("without authentication") && err.contains("0.0.0.0:50051"), "{err}");
        let none = SecurityInput { auth: Some(AuthMode::None), ..input() };
        let err = resolve(addr("192.0.2.1:50051"), none).unwrap_err().to_string();
        assert!(err.contains("without authentication"), "{err}");
        let insecure_but_open = SecurityInput { insecure_listen: true, ..input() };
        assert!(resolve(addr("0.0.0.0:1"), insecure_but_open).is_err(), "--insecure-listen never allows auth off");

        let tokens = || SecurityInput { tokens_file: Some("/t.toml".into()), ..input() };
        let err = resolve(addr("0.0.0.0:50051"), tokens()).unwrap_err().to_string();
        assert!(err.contains("without TLS") && err.contains("--insecure-listen"), "{err}");
        assert!(resolve(addr("0.0.0.0:1"), SecurityInput { insecure_listen: true, ..tokens() }).is_ok());
        let tls = SecurityInput { tls_cert: Some("/c.pem".into()), tls_key: Some("/k.pem".into()), ..tokens() };
        let resolved = resolve(addr("[::]:1"), tls).unwrap();
        assert_eq!(resolved.tls, Some(TlsFiles { cert: "/c.pem".into(), key: "/k.pem".into() }));
        assert!(resolve(addr("[::ffff:127.0.0.1]:1"), input()).is_ok(), "v4-mapped loopback is loopback");
    }

    #[test]
    fn contradictions_and_halves_are_refused() {
        for (bad, why) in [
            (SecurityInput { auth: Some(AuthMode::Jwt), ..input() }, "not supported yet"),
            (SecurityInput { auth: Some(AuthMode::Tokens), ..input() }, "needs --tokens-file"),
            (SecurityInput { auth: Some(AuthMode::None), tokens_file: Some("/t".into()), ..input() }, "contradicts"),
            (SecurityInput { tls_cert: Some("/c".into()), ..input() }, "needs --tls-key"),
            (SecurityInput { tls_key: Some("/k".into()), ..input() }, "needs --tls-cert"),
        ] {
            let err = resolve(addr("127.0.0.1:1"), bad).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
