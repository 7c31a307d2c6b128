//! Crash points for the end-to-end tests: `BERTH_FAILPOINT=<name>` makes berth SIGKILL itself
//! when it reaches the named point, so a test can check what the next boot cleans up after a
//! crash at exactly that moment (a container created but not started, /data half prepared).
//! Unset, a check costs one comparison of a cached value.

use std::sync::OnceLock;

/// Kills the process with SIGKILL when `BERTH_FAILPOINT` names `point`.
pub fn hit(point: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("BERTH_FAILPOINT").ok().filter(|name| !name.is_empty()));
    if armed.as_deref() == Some(point) {
        tracing::error!(point, "failpoint reached; killing berth with SIGKILL");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
}
