//! Bearer tokens: `berth_` followed by 43 base64url characters (32 random bytes), and the
//! SHA-256 digest under which a tokens file records each one.
//!
//! SHA-256 rather than a password hash (argon2): a token holds 256 random bits, so no guessing
//! or precomputation can find one from its digest, and a fast hash keeps the check to
//! microseconds on every call instead of the milliseconds argon2 would spend.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// The prefix of every berth token (it makes leaked tokens easy to find, e.g. by secret
/// scanners).
pub const TOKEN_PREFIX: &str = "berth_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// base64url characters of those bytes, without padding.
const ENCODED_LEN: usize = 43;

/// The SHA-256 of a token, as stored in the tokens file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    /// Digest of a token's full text (prefix included).
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 lowercase or uppercase hex digits.
    pub fn parse_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Lowercase hex, as `berth token create` writes it.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits: enough to tell tokens apart in logs, useless for finding one.
    pub fn fingerprint(self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenDigest({}…)", self.fingerprint())
    }
}

/// A new token from the operating system's random source.
pub fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|err| std::io::Error::other(format!("no random bytes from the system: {err}")))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Whether `text` has the shape of a berth token; a malformed one is refused without a lookup.
pub fn is_well_formed(text: &str) -> bool {
    let Some(encoded) = text.strip_prefix(TOKEN_PREFIX) else {
        return false;
    };
    encoded.len() == ENCODED_LEN
        && encoded.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let first = generate().unwrap();
        let second = generate().unwrap();
        assert_ne!(first, second);
        assert!(is_well_formed(&first), "{first}");
        assert_eq!(first.len(), TOKEN_PREFIX.len() + ENCODED_LEN);
        assert_eq!(URL_SAFE_NO_PAD.decode(&first[TOKEN_PREFIX.len()..]).unwrap().len(), TOKEN_BYTES);
    }

    #[test]
    fn malformed_tokens_are_recognized() {
        let good = generate().unwrap();
        for bad in [
            "",
            "berth_",
            &good[..good.len() - 1],
            &format!("{good}A"),
            &good.replace("berth_", "berth-"),
            &format!("berth_{}", "+".repeat(ENCODED_LEN)),
            "Bearer berth_",
        ] {
            assert!(!is_well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let digest = TokenDigest::of("berth_example");
        assert_eq!(TokenDigest::parse_hex(&digest.to_hex()), Some(digest));
        assert_eq!(TokenDigest::parse_hex(&digest.to_hex().to_uppercase()), Some(digest));
        assert_eq!(TokenDigest::parse_hex("abc"), None);
        assert_eq!(digest.fingerprint().len(), 8);
        // The digest of the text "abc", from FIPS 180-2.
        assert_eq!(TokenDigest::of("abc").to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
