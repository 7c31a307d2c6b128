//! Finding a process's executable the way `execvp` would, but inside the workspace: every PATH
//! entry is resolved with `RESOLVE_IN_ROOT` against the workspace's root, so a symlinked
//! directory in a hostile image never leads to the host's files.

use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{Error, Reason, Result};

/// The in-workspace path of `cmd`: itself when it contains a `/` (relative to `cwd`), otherwise
/// the first executable regular file named `cmd` in a directory of `path` (a `:` list).
pub fn find_executable(rootfs: &Path, cmd: &str, path: &str, cwd: &str) -> Result<String> {
    let root =
        rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(|err| {
            Error::new(Reason::RuntimeError, format!("cannot open the workspace's root file system: {err}"))
        })?;
    let candidates: Vec<String> = if cmd.contains('/') {
        if cmd.starts_with('/') { vec![cmd.to_owned()] } else { vec![format!("{}/{cmd}", cwd.trim_end_matches('/'))] }
    } else {
        path.split(':')
            .map(|dir| if dir.is_empty() { "." } else { dir })
            .map(|dir| format!("{}/{cmd}", dir.trim_end_matches('/')))
            .collect()
    };
    for candidate in candidates {
        let Ok(fd) = rustix::fs::openat2(
            root.as_fd(),
            candidate.as_str(),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) else {
            continue;
        };
        let Ok(stat) = rustix::fs::fstat(&fd) else { continue };
        let regular = rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
        if regular && stat.st_mode & 0o111 != 0 {
            return Ok(candidate);
        }
    }
    Err(Error::new(
        Reason::ExecutableNotFound,
        if cmd.contains('/') {
            format!("executable {cmd:?} does not exist in the workspace or is not executable; check the path")
        } else {
            format!(
                "executable {cmd:?} was not found in the workspace's PATH {path:?}; install it or pass an absolute path"
            )
        },
    ))
}

/// Checks that `dir` is a directory inside the workspace (a process's working directory).
pub fn check_directory(rootfs: &Path, dir: &str) -> Result<()> {
    let root =
        rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(|err| {
            Error::new(Reason::RuntimeError, format!("cannot open the workspace's root file system: {err}"))
        })?;
    rustix::fs::openat2(
        root.as_fd(),
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map(drop)
    .map_err(|err| {
        Error::new(
            Reason::PathNotFound,
            format!(
                "working directory {dir:?} is not a directory in the workspace ({err}); create it or pass another cwd"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn finds_executables_in_path_inside_the_root_only() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::create_dir_all(root.path().join("opt")).unwrap();
        std::fs::write(root.path().join("bin/tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(root.path().join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.path().join("opt/data"), "x").unwrap();
        // A PATH entry pointing at the host's /usr/bin through an absolute symlink stays inside.
        std::os::unix::fs::symlink("/usr/bin", root.path().join("hostbin")).unwrap();

        assert_eq!(find_executable(root.path(), "tool", "/nope:/bin", "/").unwrap(), "/bin/tool");
        assert_eq!(find_executable(root.path(), "/bin/tool", "", "/").unwrap(), "/bin/tool");
        assert_eq!(find_executable(root.path(), "bin/tool", "", "/").unwrap(), "/bin/tool");
        let not_executable = find_executable(root.path(), "data", "/opt", "/").unwrap_err();
        assert_eq!(not_executable.reason(), Reason::ExecutableNotFound);
        let host = find_executable(root.path(), "env", "/hostbin", "/").unwrap_err();
        assert_eq!(host.reason(), Reason::ExecutableNotFound);
        assert!(host.message().contains("\"env\"") && host.message().contains("/hostbin"), "{}", host.message());
        assert!(check_directory(root.path(), "/bin").is_ok());
        assert_eq!(check_directory(root.path(), "/nope").unwrap_err().reason(), Reason::PathNotFound);
        assert_eq!(check_directory(root.path(), "/bin/tool").unwrap_err().reason(), Reason::PathNotFound);
    }
}
