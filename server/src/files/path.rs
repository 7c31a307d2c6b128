//! Paths as callers give them: absolute container paths, validated before anything is opened.

use crate::data::in_root::normalize_path;
use crate::error::{Error, Reason, Result};

/// Linux's PATH_MAX and NAME_MAX: longer paths or names could not be opened inside the
/// workspace either.
const MAX_PATH_BYTES: usize = 4096;
const MAX_NAME_BYTES: usize = 255;

/// Checks `path` and returns it normalized (no repeated slashes, `.` or `..`; see
/// [`normalize_path`]). `..` is applied lexically here and resolved in-root again by the kernel,
/// so it can never climb above the workspace's root.
pub fn parse(path: &str, what: &str) -> Result<String> {
    let invalid = |why: String| Error::new(Reason::InvalidPath, format!("{what} {path:?} is invalid: {why}"));
    if path.is_empty() {
        return Err(Error::new(
            Reason::InvalidPath,
            format!("{what} is empty; pass an absolute path such as /data/notes.txt"),
        ));
    }
    if path.contains('\0') {
        return Err(Error::new(Reason::InvalidPath, format!("{what} contains a NUL byte; remove it")));
    }
    if !path.starts_with('/') {
        return Err(invalid(
            "it is relative; pass an absolute path inside the workspace such as /data/notes.txt".to_owned(),
        ));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::new(
            Reason::InvalidPath,
            format!("{what} is {} bytes long; paths are at most {MAX_PATH_BYTES} bytes", path.len()),
        ));
    }
    if let Some(name) = path.split('/').find(|name| name.len() > MAX_NAME_BYTES) {
        return Err(Error::new(
            Reason::InvalidPath,
            format!(
                "{what} has a component of {} bytes ({}...); names are at most {MAX_NAME_BYTES} bytes",
                name.len(),
                name.chars().take(32).collect::<String>()
            ),
        ));
    }
    Ok(normalize_path(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(path: &str) -> Reason {
        parse(path, "path").unwrap_err().reason()
    }

    #[test]
    fn absolute_paths_are_normalized() {
        assert_eq!(parse("/data//a/./b/../c", "path").unwrap(), "/data/a/c");
        assert_eq!(parse("/../../etc/passwd", "path").unwrap(), "/etc/passwd");
        assert_eq!(parse("/", "path").unwrap(), "/");
    }

    #[test]
    fn bad_paths_are_invalid_path() {
        for path in ["", "data/a", "./a", "/data/a\0b"] {
            assert_eq!(reason(path), Reason::InvalidPath, "{path:?}");
        }
        assert_eq!(reason(&format!("/{}", "a".repeat(256))), Reason::InvalidPath);
        assert_eq!(reason(&"/a".repeat(2049)), Reason::InvalidPath);
        assert!(parse(&format!("/{}", "a".repeat(255)), "path").is_ok());
    }
}
