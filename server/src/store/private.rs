//! Owner-only permissions for berth's state: the state directory holds every workspace's
//! environment (secrets) in the database and every preserved /data, so nobody but berth's user
//! may read it.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::{Error, Reason, Result};

/// Mode of the state directory and its subdirectories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the database and its `-wal` / `-shm` files.
pub const FILE_MODE: u32 = 0o600;
/// Subdirectories the Manager keeps under the state directory (preserved archives, mount
/// points of stopped workspaces, per-workspace files), made private up front.
const SUBDIRS: [&str; 3] = ["preserved", "mnt", "workspaces"];

/// Creates the state directory and its subdirectories as 0700, and tightens them when an older
/// berth (or an operator) made them readable by others. A shared directory such as /tmp (sticky
/// bit) is refused rather than locked down for everyone else.
pub fn prepare_state_dir(state_dir: &Path) -> Result<()> {
    private_dir(state_dir, true)?;
    for name in SUBDIRS {
        private_dir(&state_dir.join(name), false)?;
    }
    Ok(())
}

fn private_dir(path: &Path, recursive: bool) -> Result<()> {
    let failed = |what: &str, err: io::Error| {
        Error::new(
            Reason::InvalidArgument,
            format!("cannot {what} the state directory {}: {err}; pass a writable --state-dir", path.display()),
        )
    };
    match DirBuilder::new().recursive(recursive).mode(DIR_MODE).create(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(failed("create", err)),
    }
    let meta = std::fs::metadata(path).map_err(|err| failed("read", err))?;
    if !meta.is_dir() {
        return Err(Error::new(
            Reason::InvalidArgument,
            format!("{} is not a directory; pass a directory as --state-dir", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o1000 != 0 {
        return Err(Error::new(
            Reason::InvalidArgument,
            format!(
                "{} is a shared directory (sticky bit); pass a directory of berth's own as --state-dir",
                path.display()
            ),
        ));
    }
    if mode != DIR_MODE {
        std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE)).map_err(|err| failed("restrict", err))?;
    }
    Ok(())
}

/// Creates the SQLite file as 0600 if it is missing, so it is never readable by others, not
/// even between its creation and the first chmod. SQLite gives its `-wal` and `-shm` files the
/// database file's mode.
pub fn create_private_file(path: &Path) -> io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Sets the database and its `-wal` / `-shm` files (those that exist) to 0600.
pub fn restrict_database_files(path: &Path) -> io::Result<()> {
    for file in database_files(path) {
        match std::fs::set_permissions(&file, Permissions::from_mode(FILE_MODE)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn database_files(path: &Path) -> [PathBuf; 3] {
    let with_suffix = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_owned(), with_suffix("-wal"), with_suffix("-shm")]
}

/// Whether a sqlite URL names a file (not an in-memory database).
pub(super) fn is_file_url(url: &str) -> bool {
    !(url.contains(":memory:") || url.contains("mode=memory"))
}

/// Runs file work off the async runtime; a failure is a STORE_ERROR naming the database.
pub(super) async fn run_blocking(
    work: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    url: &str,
    what: &str,
) -> Result<()> {
    let failed = |err: String| {
        Error::new(
            Reason::StoreError,
            format!("cannot {what} the database file of {url} as owner-only: {err}; check --state-dir"),
        )
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| failed(err.to_string()))?
        .map_err(|err| failed(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_state_dir_and_its_subdirs_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("var/lib/berth");
        prepare_state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        for name in SUBDIRS {
            assert_eq!(mode(&state.join(name)), 0o700, "{name}");
        }
    }

    #[test]
    fn an_open_state_dir_is_tightened_and_a_shared_one_refused() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("berth");
        std::fs::create_dir_all(state.join("preserved")).unwrap();
        std::fs::set_permissions(&state, Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(state.join("preserved"), Permissions::from_mode(0o777)).unwrap();
        prepare_state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("preserved")), 0o700);

        let shared = root.path().join("tmp");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, Permissions::from_mode(0o1777)).unwrap();
        let err = prepare_state_dir(&shared).unwrap_err();
        assert!(err.message().contains("sticky"), "{}", err.message());
        assert_eq!(mode(&shared), 0o1777, "a shared directory is left as it is");

        let file = root.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(prepare_state_dir(&file).unwrap_err().message().contains("not a directory"));
    }

    #[test]
    fn database_files_are_created_and_restricted_to_the_owner() {
        let root = tempfile::tempdir().unwrap();
        let db = root.path().join("berth.db");
        create_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let wal = root.path().join("berth.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, Permissions::from_mode(0o644)).unwrap();
        restrict_database_files(&db).unwrap();
        assert_eq!(mode(&wal), 0o600);
        assert!(!root.path().join("berth.db-shm").exists(), "missing files are fine and not created");
    }
}
