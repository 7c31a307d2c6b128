//! The tokens file (`--tokens-file`): TOML with one `[[token]]` table per token, holding its
//! name, the SHA-256 of the token and its scope; never the token itself.
//!
//! ```toml
//! [[token]]
//! name = "ops"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! admin = true
//!
//! [[token]]
//! name = "red-team"
//! sha256 = "…"
//! access = "write"            # or "read"
//! workspaces = ["bot-1"]      # ids, and/or
//! labels = { team = "red" }   # every pair must match
//! ```
//!
//! Lookups hash the presented token, find the entries whose digest starts with the same 8
//! bytes in a hash map, and compare the full 32-byte digests in constant time (`subtle`): what
//! the timing of a lookup can reveal is at most how the SHA-256 of the caller's own guess
//! begins, which says nothing about any stored token.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use super::scope::{Access, Principal, Scope};
use super::token::TokenDigest;
use crate::model::WorkspaceId;

/// The tokens of one version of the file, ready for lookups.
#[derive(Debug, Default)]
pub struct TokenSet {
    by_prefix: HashMap<u64, Vec<(TokenDigest, Arc<Principal>)>>,
    count: usize,
}

impl TokenSet {
    /// The principal whose token this is, if any.
    pub fn find(&self, token: &str) -> Option<Arc<Principal>> {
        let digest = TokenDigest::of(token);
        let candidates = self.by_prefix.get(&prefix(digest))?;
        let mut found = None;
        // Every candidate is compared, so the time does not depend on which one matched.
        for (stored, principal) in candidates {
            if bool::from(stored.0.ct_eq(&digest.0)) {
                found = Some(principal.clone());
            }
        }
        found
    }

    /// How many tokens the file declares.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the file declares no token (every call is then refused).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

fn prefix(digest: TokenDigest) -> u64 {
    u64::from_be_bytes(digest.0[..8].try_into().expect("8 bytes"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    token: Vec<EntryShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryShape {
    name: String,
    sha256: String,
    #[serde(default)]
    admin: bool,
    access: Option<Access>,
    #[serde(default)]
    workspaces: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Reads and parses the tokens file; the error is one line naming the file and the cause.
pub fn load(path: &Path) -> Result<TokenSet, String> {
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read tokens file {}: {err}", path.display()))?;
    parse(&text).map_err(|err| format!("tokens file {}: {err}", path.display()))
}

/// Parses tokens file text; the error names the line (TOML errors) or the token.
pub fn parse(text: &str) -> Result<TokenSet, String> {
    let shape: FileShape = toml::from_str(text).map_err(|err| {
        let message = err.message().trim().replace('\n', "; ");
        match err.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {message}")
            }
            None => message,
        }
    })?;
    let mut set = TokenSet::default();
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    for (index, entry) in shape.token.into_iter().enumerate() {
        let which = format!("token {} ({:?})", index + 1, entry.name);
        if entry.name.trim().is_empty() {
            return Err(format!("token {} has an empty name; give every token a name for the logs", index + 1));
        }
        if !names.insert(entry.name.clone()) {
            return Err(format!("{which}: the name is used twice; names must be unique"));
        }
        let digest = TokenDigest::parse_hex(&entry.sha256).ok_or_else(|| {
            format!(
                "{which}: sha256 must be 64 hex digits (the SHA-256 of the token, as `berth token create` prints it)"
            )
        })?;
        if !digests.insert(digest) {
            return Err(format!("{which}: the same sha256 appears twice; each token has its own entry"));
        }
        let scope = scope_of(&which, entry.admin, entry.access, entry.workspaces, entry.labels)?;
        let principal = Arc::new(Principal { name: entry.name, scope });
        set.by_prefix.entry(prefix(digest)).or_default().push((digest, principal));
        set.count += 1;
    }
    Ok(set)
}

fn scope_of(
    which: &str,
    admin: bool,
    access: Option<Access>,
    workspaces: Vec<String>,
    labels: BTreeMap<String, String>,
) -> Result<Scope, String> {
    if admin {
        if access.is_some() || !workspaces.is_empty() || !labels.is_empty() {
            return Err(format!("{which}: an admin token may do everything; drop access, workspaces and labels"));
        }
        return Ok(Scope::Admin);
    }
    let Some(access) = access else {
        return Err(format!("{which}: set admin = true, or access = \"read\" or \"write\" with workspaces or labels"));
    };
    if workspaces.is_empty() && labels.is_empty() {
        return Err(format!(
            "{which}: a {access} token needs workspaces = [ids] or labels = {{ key = \"value\" }} naming what it may {access}"
        ));
    }
    let mut ids = BTreeSet::new();
    for id in workspaces {
        WorkspaceId::parse(&id).map_err(|err| format!("{which}: {}", err.message()))?;
        ids.insert(id);
    }
    if let Some(key) = labels.keys().find(|key| key.is_empty()) {
        return Err(format!("{which}: label key {key:?} is empty"));
    }
    Ok(Scope::Workspaces { access, ids, labels })
}

/// The `[[token]]` entry for a token with this digest and scope, as `berth token create`
/// prints it for appending to the tokens file.
pub fn entry_toml(name: &str, digest: TokenDigest, scope: &Scope) -> String {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let mut out = format!("[[token]]\nname = {}\nsha256 = {}\n", quote(name), quote(&digest.to_hex()));
    match scope {
        Scope::Admin => out.push_str("admin = true\n"),
        Scope::Workspaces { access, ids, labels } => {
            out.push_str(&format!("access = {}\n", quote(access.as_str())));
            if !ids.is_empty() {
                let ids: Vec<String> = ids.iter().map(|id| quote(id)).collect();
                out.push_str(&format!("workspaces = [{}]\n", ids.join(", ")));
            }
            if !labels.is_empty() {
                let pairs: Vec<String> =
                    labels.iter().map(|(key, value)| format!("{} = {}", quote(key), quote(value))).collect();
                out.push_str(&format!("labels = {{ {} }}\n", pairs.join(", ")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ_TOKEN: &str = "berth_readreadreadreadreadreadreadreadreadreadrea";

    fn file_with(entry: &str) -> String {
        format!("[[token]]\nname = \"t\"\nsha256 = \"{}\"\n{entry}", TokenDigest::of(READ_TOKEN).to_hex())
    }

    #[test]
    fn tokens_are_found_by_their_digest_only() {
        let set = parse(&file_with("access = \"read\"\nworkspaces = [\"bot-1\"]\n")).unwrap();
        assert_eq!(set.len(), 1);
        let principal = set.find(READ_TOKEN).expect("the token is known");
        assert_eq!(principal.name, "t");
        assert!(
            matches!(&principal.scope, Scope::Workspaces { access: Access::Read, ids, .. } if ids.contains("bot-1"))
        );
        assert!(set.find(&READ_TOKEN.replace('r', "x")).is_none());
        assert!(set.find(&TokenDigest::of(READ_TOKEN).to_hex()).is_none(), "the digest is not a token");
    }

    #[test]
    fn an_empty_file_declares_no_tokens() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# nothing yet\n").unwrap().is_empty());
    }

    #[test]
    fn the_entry_berth_token_create_prints_parses_back() {
        let token = super::super::token::generate().unwrap();
        let scope = Scope::Workspaces {
            access: Access::Write,
            ids: ["bot-1".to_owned(), "bot-2".to_owned()].into(),
            labels: [("team".to_owned(), "red \"quoted\"".to_owned())].into(),
        };
        let text = entry_toml("name with \"quotes\"", TokenDigest::of(&token), &scope);
        let set =
            parse(&format!("{text}\n{}", entry_toml("ops", TokenDigest::of("berth_other"), &Scope::Admin))).unwrap();
        let principal = set.find(&token).unwrap();
        assert_eq!(principal.name, "name with \"quotes\"");
        assert_eq!(principal.scope, scope);
        assert_eq!(set.find("berth_other").unwrap().scope, Scope::Admin);
    }

    #[test]
    fn malformed_entries_are_refused_with_the_reason() {
        let digest = TokenDigest::of(READ_TOKEN).to_hex();
        for (text, why) in [
            (file_with("admin = true\naccess = \"read\"\n"), "drop access"),
            (file_with(""), "set admin = true"),
            (file_with("access = \"read\"\n"), "needs workspaces"),
            (file_with("access = \"owner\"\nworkspaces = [\"a\"]\n"), "line 4"),
            (file_with("access = \"read\"\nworkspaces = [\"Not Valid\"]\n"), "workspace id"),
            (file_with("admin = true\nscope = \"x\"\n"), "unknown field"),
            ("[[token]]\nname = \"t\"\nsha256 = \"abc\"\nadmin = true\n".to_owned(), "64 hex digits"),
            ("[[token]]\nname = \"\"\nsha256 = \"x\"\nadmin = true\n".to_owned(), "empty name"),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\nadmin = true\n[[token]]\nname = \"a\"\nsha256 = \"{}\"\nadmin = true\n",
                    TokenDigest::of("x").to_hex()
                ),
                "used twice",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\nadmin = true\n[[token]]\nname = \"b\"\nsha256 = \"{digest}\"\nadmin = true\n"
                ),
                "same sha256",
            ),
            ("[[token]\n".to_owned(), "line 1"),
        ] {
            let err = parse(&text).err().unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(err.contains(why), "{why}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
