//! Who is calling: the `authorization: Bearer <token>` metadata checked against the tokens
//! file, with failed attempts logged (the token's name when known, a fingerprint otherwise;
//! never the token) and limited per peer address.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::warn;

use super::failures::{FailureLimiter, Recorded};
use super::scope::Principal;
use super::token::{self, TokenDigest};
use super::tokens_file::{self, TokenSet};

/// Checks the bearer token of each call (or lets every call through with `--auth none`).
#[derive(Debug)]
pub struct Authenticator {
    /// `None`: authentication is off.
    tokens: Option<Tokens>,
    failures: FailureLimiter,
    unauthenticated: Arc<Principal>,
}

#[derive(Debug)]
struct Tokens {
    path: PathBuf,
    current: RwLock<Arc<TokenSet>>,
}

/// Why a call was not authenticated. The messages tell the caller what to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No `authorization` metadata.
    Missing,
    /// Not `Bearer berth_…` of the right length.
    Malformed,
    /// A well-formed token the tokens file does not hold (revoked, or never issued).
    Unknown,
    /// The peer failed too often in the last minute.
    TooManyFailures { retry_after: Duration },
}

impl Rejection {
    /// The message of the UNAUTHENTICATED (or RESOURCE_EXHAUSTED) status.
    pub fn message(&self) -> String {
        match self {
            Rejection::Missing => {
                "this call needs a token: send metadata `authorization: Bearer <token>` (berth --token, BERTH_TOKEN, or the SDKs' token option)".to_owned()
            }
            Rejection::Malformed => format!(
                "the authorization metadata is not `Bearer {}<43 characters>`; send a token as `berth token create` printed it",
                token::TOKEN_PREFIX
            ),
            Rejection::Unknown => {
                "the token is not valid on this server (unknown or revoked); ask its operator for a token".to_owned()
            }
            Rejection::TooManyFailures { retry_after } => format!(
                "too many calls with missing or invalid tokens from this address; retry in {} s with a valid token",
                retry_after.as_secs().max(1)
            ),
        }
    }
}

impl Authenticator {
    /// Authentication off: every call acts as admin.
    pub fn off() -> Self {
        Self { tokens: None, failures: FailureLimiter::new(0), unauthenticated: Arc::new(Principal::unauthenticated()) }
    }

    /// Tokens from `path`, read now (a broken file stops the start); `failure_limit` failed
    /// calls per peer and minute (0: no limit).
    pub fn from_file(path: &Path, failure_limit: u32) -> Result<Self, String> {
        let set = tokens_file::load(path)?;
        if set.is_empty() {
            warn!(tokens_file = %path.display(), "the tokens file declares no token: every call is refused until one is added");
        }
        Ok(Self {
            tokens: Some(Tokens { path: path.to_owned(), current: RwLock::new(Arc::new(set)) }),
            failures: FailureLimiter::new(failure_limit),
            unauthenticated: Arc::new(Principal::unauthenticated()),
        })
    }

    /// Whether calls need tokens.
    pub fn is_on(&self) -> bool {
        self.tokens.is_some()
    }

    /// The tokens file, when authentication is on.
    pub fn tokens_file(&self) -> Option<&Path> {
        self.tokens.as_ref().map(|tokens| tokens.path.as_path())
    }

    /// Reads the tokens file again and returns how many tokens it declares; on an error the
    /// tokens in use stay.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(tokens) = &self.tokens else {
            return Ok(0);
        };
        let set = tokens_file::load(&tokens.path)?;
        let count = set.len();
        *tokens.current.write().expect("tokens lock") = Arc::new(set);
        Ok(count)
    }

    /// The caller of a call to `method` from `peer` with this `authorization` value.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        peer: Option<SocketAddr>,
        method: &str,
    ) -> Result<Arc<Principal>, Rejection> {
        let Some(tokens) = &self.tokens else {
            return Ok(self.unauthenticated.clone());
        };
        let peer_ip = peer.map(|peer| peer.ip());
        let now = Instant::now();
        if let Some(retry_after) = peer_ip.and_then(|ip| self.failures.blocked_for(ip, now)) {
            return Err(Rejection::TooManyFailures { retry_after });
        }
        let presented = authorization.map(bearer_token);
        let result = match presented {
            None => Err(Rejection::Missing),
            Some(None) => Err(Rejection::Malformed),
            Some(Some(token)) if !token::is_well_formed(token) => Err(Rejection::Malformed),
            Some(Some(token)) => {
                let set = tokens.current.read().expect("tokens lock").clone();
                set.find(token).ok_or(Rejection::Unknown)
            }
        };
        if let Err(rejection) = &result {
            let fingerprint = presented.flatten().map(|token| TokenDigest::of(token).fingerprint());
            self.failed(peer_ip, peer, method, rejection, fingerprint.as_deref(), now);
        }
        result
    }

    fn failed(
        &self,
        peer_ip: Option<IpAddr>,
        peer: Option<SocketAddr>,
        method: &str,
        rejection: &Rejection,
        fingerprint: Option<&str>,
        now: Instant,
    ) {
        let recorded = peer_ip.map_or(Recorded::Counted, |ip| self.failures.record(ip, now));
        let why = match rejection {
            Rejection::Missing => "no token",
            Rejection::Malformed => "malformed token",
            Rejection::Unknown => "unknown token",
            Rejection::TooManyFailures { .. } => "too many failures",
        };
        let peer = peer.map(|peer| peer.to_string()).unwrap_or_default();
        match recorded {
            Recorded::Counted => {
                warn!(
                    peer,
                    method,
                    why,
                    token_sha256_prefix = fingerprint.unwrap_or(""),
                    "call refused: not authenticated"
                );
            }
            Recorded::LimitReached => warn!(
                peer,
                method,
                why,
                token_sha256_prefix = fingerprint.unwrap_or(""),
                window_secs = super::failures::FAILURE_WINDOW.as_secs(),
                "call refused: not authenticated; this address reached the failure limit and is refused (and no longer logged) until its window ends"
            ),
            Recorded::AlreadyBlocked => {}
        }
    }
}

/// The token of an `authorization` value `Bearer <token>` (the scheme in any case).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::Scope;
    use crate::auth::tokens_file::entry_toml;

    fn with_tokens(limit: u32) -> (Authenticator, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let token = token::generate().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, entry_toml("ops", TokenDigest::of(&token), &Scope::Admin)).unwrap();
        (Authenticator::from_file(&path, limit).unwrap(), token, dir)
    }

    const PEER: Option<SocketAddr> = Some(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 4000));

    #[test]
    fn a_known_bearer_token_authenticates_and_others_are_told_why_not() {
        let (auth, token, _dir) = with_tokens(0);
        let principal = auth.authenticate(Some(&format!("Bearer {token}")), PEER, "/m").unwrap();
        assert_eq!(principal.name, "ops");
        assert!(auth.authenticate(Some(&format!("bearer  {token} ")), PEER, "/m").is_ok(), "the scheme in any case");
        assert_eq!(auth.authenticate(None, PEER, "/m").unwrap_err(), Rejection::Missing);
        assert_eq!(auth.authenticate(Some(&token), PEER, "/m").unwrap_err(), Rejection::Malformed, "no scheme");
        assert_eq!(auth.authenticate(Some(&format!("Basic {token}")), PEER, "/m").unwrap_err(), Rejection::Malformed);
        assert_eq!(auth.authenticate(Some("Bearer berth_short"), PEER, "/m").unwrap_err(), Rejection::Malformed);
        let other = token::generate().unwrap();
        assert_eq!(auth.authenticate(Some(&format!("Bearer {other}")), PEER, "/m").unwrap_err(), Rejection::Unknown);
        assert!(!Rejection::Unknown.message().contains(&other));
    }

    #[test]
    fn failures_from_one_peer_block_it_even_with_a_valid_token() {
        let (auth, token, _dir) = with_tokens(3);
        for _ in 0..3 {
            assert_eq!(auth.authenticate(None, PEER, "/m").unwrap_err(), Rejection::Missing);
        }
        let blocked = auth.authenticate(Some(&format!("Bearer {token}")), PEER, "/m").unwrap_err();
        assert!(matches!(blocked, Rejection::TooManyFailures { .. }), "{blocked:?}");
        let elsewhere = Some(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2)), 4000));
        assert!(auth.authenticate(Some(&format!("Bearer {token}")), elsewhere, "/m").is_ok());
    }

    #[test]
    fn a_reload_swaps_the_tokens_and_a_broken_file_keeps_them() {
        let (auth, token, dir) = with_tokens(0);
        let path = dir.path().join("tokens.toml");
        let bearer = format!("Bearer {token}");
        std::fs::write(&path, "[[token]\n").unwrap();
        let err = auth.reload().unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert!(auth.authenticate(Some(&bearer), PEER, "/m").is_ok(), "the old tokens stay");
        let new = token::generate().unwrap();
        std::fs::write(&path, entry_toml("new", TokenDigest::of(&new), &Scope::Admin)).unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert_eq!(auth.authenticate(Some(&bearer), PEER, "/m").unwrap_err(), Rejection::Unknown, "revoked");
        assert_eq!(auth.authenticate(Some(&format!("Bearer {new}")), PEER, "/m").unwrap().name, "new");
    }

    #[test]
    fn with_auth_off_every_call_is_admin() {
        let auth = Authenticator::off();
        assert!(!auth.is_on());
        assert_eq!(auth.authenticate(None, PEER, "/m").unwrap().scope, Scope::Admin);
        assert_eq!(auth.authenticate(Some("garbage"), PEER, "/m").unwrap().scope, Scope::Admin);
    }
}
