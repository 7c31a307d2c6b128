//! When to stop reading a process's pipes after its main process exited. A backgrounded child
//! (`server &`) inherits the pipes and may hold them open forever, so waiting for end-of-file
//! alone would keep the command "running"; not waiting at all would lose output that is still
//! in flight (containerd reports the exit up to ~1 s before the last bytes on pipes). So after
//! the exit berth keeps reading while output keeps coming, until it has been idle for
//! [`IDLE_GRACE`], and never longer than [`GRACE_CAP`].

use std::time::Duration;

use tokio::time::Instant;

/// Quiet time after the exit that ends the reading.
pub const IDLE_GRACE: Duration = Duration::from_millis(200);
/// The longest berth reads after the exit while its clients keep up.
pub const GRACE_CAP: Duration = Duration::from_secs(3);
/// The longest berth reads after the exit at all: the grace restarts each time slow clients
/// catch up (what is still in the pipe then is theirs), but a backgrounded child that writes
/// forever must not keep the process "running" forever either.
pub const HARD_CAP: Duration = Duration::from_secs(30);

/// When the reading ends, given when the main process exited and when output last came.
pub fn drain_deadline(exited_at: Instant, last_output: Instant) -> Instant {
    (exited_at.max(last_output) + IDLE_GRACE).min(exited_at + GRACE_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_pipes_end_200_ms_after_the_exit() {
        let exit = Instant::now();
        assert_eq!(drain_deadline(exit, exit - Duration::from_secs(5)), exit + IDLE_GRACE);
    }

    #[test]
    fn each_chunk_after_the_exit_resets_the_grace() {
        let exit = Instant::now();
        let chunk = exit + Duration::from_millis(150);
        assert_eq!(drain_deadline(exit, chunk), chunk + IDLE_GRACE);
    }

    #[test]
    fn a_chatty_child_cannot_extend_the_grace_past_the_cap() {
        let exit = Instant::now();
        let chunk = exit + Duration::from_millis(2900);
        assert_eq!(drain_deadline(exit, chunk), exit + GRACE_CAP);
    }
}
