//! Label selectors (`k=v,k2=v2`) and opaque page tokens of ListWorkspaces.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Reason, Result};

/// Parses `k=v,k2=v2` (whitespace around items ignored) into required label pairs.
pub fn parse_label_selector(selector: &str) -> Result<BTreeMap<String, String>> {
    let mut pairs = BTreeMap::new();
    for item in selector.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(invalid_selector(selector, item));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid_selector(selector, item));
        }
        pairs.insert(key.to_owned(), value.trim().to_owned());
    }
    Ok(pairs)
}

fn invalid_selector(selector: &str, item: &str) -> Error {
    Error::new(
        Reason::InvalidArgument,
        format!("label selector {selector:?} has an invalid item {item:?}; write it as key=value[,key2=value2]"),
    )
}

const TOKEN_PREFIX: &str = "after:";

/// Encodes the position after `workspace_id` as an opaque page token.
pub fn encode_page_token(workspace_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{workspace_id}"))
}

/// Decodes a page token produced by [`encode_page_token`]; an empty token is the first page.
pub fn decode_page_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(TOKEN_PREFIX).map(str::to_owned))
        .map(Some)
        .ok_or_else(|| {
            Error::new(
                Reason::InvalidArgument,
                "page_token is not one this server issued; pass the next_page_token of the previous response or leave it empty",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_pairs_and_reject_items_without_equals() {
        let pairs = parse_label_selector(" team=red , tier=gold,").unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs["team"], "red");
        assert_eq!(pairs["tier"], "gold");
        assert!(parse_label_selector("").unwrap().is_empty());
        assert_eq!(parse_label_selector("team").unwrap_err().reason(), Reason::InvalidArgument);
        assert_eq!(parse_label_selector("=red").unwrap_err().reason(), Reason::InvalidArgument);
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let token = encode_page_token("bot-7");
        assert_eq!(decode_page_token(&token).unwrap().as_deref(), Some("bot-7"));
        assert_eq!(decode_page_token("").unwrap(), None);
        assert_eq!(decode_page_token("!!").unwrap_err().reason(), Reason::InvalidArgument);
        assert_eq!(decode_page_token(&URL_SAFE_NO_PAD.encode("x")).unwrap_err().reason(), Reason::InvalidArgument);
    }
}
