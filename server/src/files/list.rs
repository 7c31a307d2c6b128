//! ListDir: a depth-first walk below an in-root directory, siblings sorted by name, one page at a
//! time. A page token names the last entry returned (its components below the listed
//! directory); the next page walks again and skips everything up to it, so the server keeps no
//! state between pages and memory stays bounded by one page plus the names of the directories
//! on the current path.
//!
//! The walk descends with `openat(O_NOFOLLOW | O_DIRECTORY)` on one name at a time: a symlink
//! swapped in for a directory while the walk runs is never followed (the descent fails and that
//! subtree is left out), so no listing leaves the directory it started from.

use std::os::fd::{AsFd, BorrowedFd};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::entry::{Entry, EntryKind};
use super::fs_error;
use crate::data::InRoot;
use crate::data::in_root;
use crate::error::{Error, Reason, Result};

/// Depth, page size and their bounds, as the proto documents them.
pub const MAX_DEPTH: u32 = 32;
pub const DEFAULT_PAGE_SIZE: usize = 1000;
pub const MAX_PAGE_SIZE: usize = 10_000;

/// One page of a listing.
#[derive(Debug)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Empty when this page is the last.
    pub next_page_token: String,
}

#[derive(Serialize, Deserialize)]
struct Token {
    /// The listed directory and depth: a token is only valid for the same listing.
    path: String,
    depth: u32,
    /// Components of the last entry returned, below the listed directory.
    after: Vec<String>,
}

/// Lists `path` to `depth` levels (0 means 1), `page_size` entries (0 means 1000) after the
/// position `page_token` names.
pub fn list_dir(root: &InRoot, path: &str, depth: u32, page_size: i32, page_token: &str) -> Result<Page> {
    let depth = depth.clamp(1, MAX_DEPTH);
    let limit = usize::try_from(page_size)
        .ok()
        .filter(|size| *size > 0)
        .map_or(DEFAULT_PAGE_SIZE, |size| size.min(MAX_PAGE_SIZE));
    let after = decode_token(page_token, path, depth)?;
    let dir = root.open_dir(path).map_err(|err| fs_error(&err, "list", path))?;
    let mut walk = Listing { depth, limit, entries: Vec::new(), more: false };
    walk.visit(dir.as_fd(), path, 1, after.as_deref())?;
    let next_page_token = if walk.more {
        let last = walk.entries.last().expect("a full page has entries");
        let below = last.path.strip_prefix(path).unwrap_or(&last.path);
        encode_token(&Token {
            path: path.to_owned(),
            depth,
            after: below.split('/').filter(|name| !name.is_empty()).map(str::to_owned).collect(),
        })
    } else {
        String::new()
    };
    Ok(Page { entries: walk.entries, next_page_token })
}

struct Listing {
    depth: u32,
    limit: usize,
    entries: Vec<Entry>,
    /// Whether entries remain after the page.
    more: bool,
}

impl Listing {
    /// Lists `dir` (at `dir_path`, `level` levels below the listed directory); `after` skips
    /// what earlier pages returned. Returns early once the page is full and one more entry
    /// proved that more remain.
    fn visit(&mut self, dir: BorrowedFd<'_>, dir_path: &str, level: u32, after: Option<&[String]>) -> Result<()> {
        let names = match in_root::list_names(dir) {
            Ok(names) => names,
            // The directory vanished or was swapped while the walk went down: leave it out.
            Err(_) if level > 1 => return Ok(()),
            Err(err) => return Err(fs_error(&err, "list", dir_path)),
        };
        let mut after = after;
        for name in names {
            let name = name.to_string_lossy().into_owned();
            let path = if dir_path == "/" { format!("/{name}") } else { format!("{dir_path}/{name}") };
            let mut descend_after = None;
            let mut emit = true;
            if let Some(position) = after {
                match name.as_str().cmp(position[0].as_str()) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => {
                        emit = false;
                        descend_after = (position.len() > 1).then(|| &position[1..]);
                    }
                    std::cmp::Ordering::Greater => {}
                }
                after = None;
            }
            let Ok(stat) = in_root::lstat_at(dir, &name) else {
                continue; // removed meanwhile
            };
            if emit {
                if self.entries.len() == self.limit {
                    self.more = true;
                    return Ok(());
                }
                let target =
                    if EntryKind::of(&stat) == EntryKind::Symlink { read_link_at(dir, &name) } else { String::new() };
                self.entries.push(Entry::from_stat(&path, &stat, target));
            }
            if EntryKind::of(&stat) == EntryKind::Directory && level < self.depth {
                // O_NOFOLLOW: a symlink swapped in since the lstat is not followed.
                if let Ok(child) = in_root::open_subdir(dir, name.as_ref()) {
                    self.visit(child.as_fd(), &path, level + 1, descend_after)?;
                    if self.more {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

fn read_link_at(dir: BorrowedFd<'_>, name: &str) -> String {
    rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|target| target.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn encode_token(token: &Token) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(token).expect("a token serializes"))
}

fn decode_token(token: &str, path: &str, depth: u32) -> Result<Option<Vec<String>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Error::new(
            Reason::InvalidArgument,
            "page_token is not a token of this listing (same path and depth); start again without one",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if token.path != path || token.depth != depth || token.after.is_empty() {
        return Err(invalid());
    }
    Ok(Some(token.after))
}
