//! Failed authentications counted per peer address: after `limit` failures within a minute,
//! every further call from that address (valid token or not) is refused at once until the
//! minute that began with its first failure is over. Guessing a 256-bit token is hopeless
//! anyway; the limit keeps a misbehaving client from filling the log and burning CPU, and makes
//! a stolen-token scan across many names slow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window failures are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failures per window and peer by default.
pub const DEFAULT_FAILURE_LIMIT: u32 = 20;
/// Peers tracked at most; beyond that, windows that ended are dropped, and if none has, all are
/// (a flood from more addresses than this resets the counts rather than growing memory).
const MAX_PEERS: usize = 10_000;

/// The per-peer failure counts.
#[derive(Debug)]
pub struct FailureLimiter {
    /// 0: no limit.
    limit: u32,
    peers: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

/// What recording a failure found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Still under the limit.
    Counted,
    /// This failure reached the limit: the peer is refused from now on (log it once).
    LimitReached,
    /// The peer was over the limit already.
    AlreadyBlocked,
}

impl FailureLimiter {
    /// Allows `limit` failures per peer and minute; 0 for no limit.
    pub fn new(limit: u32) -> Self {
        Self { limit, peers: Mutex::new(HashMap::new()) }
    }

    /// How long `peer` stays refused, when it is over the limit.
    pub fn blocked_for(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let peers = self.peers.lock().expect("failure counts");
        let window = peers.get(&peer)?;
        let ends = window.started + FAILURE_WINDOW;
        (window.failures >= self.limit && now < ends).then(|| ends - now)
    }

    /// Counts one failed authentication of `peer`.
    pub fn record(&self, peer: IpAddr, now: Instant) -> Recorded {
        if self.limit == 0 {
            return Recorded::Counted;
        }
        let mut peers = self.peers.lock().expect("failure counts");
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, window| now < window.started + FAILURE_WINDOW);
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
        }
        let window = peers.entry(peer).or_insert(Window { started: now, failures: 0 });
        if now >= window.started + FAILURE_WINDOW {
            *window = Window { started: now, failures: 0 };
        }
        if window.failures >= self.limit {
            return Recorded::AlreadyBlocked;
        }
        window.failures += 1;
        if window.failures == self.limit { Recorded::LimitReached } else { Recorded::Counted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_refused_after_the_limit_until_its_window_ends() {
        let limiter = FailureLimiter::new(3);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let start = Instant::now();
        assert_eq!(limiter.record(peer, start), Recorded::Counted);
        assert_eq!(limiter.record(peer, start), Recorded::Counted);
        assert_eq!(limiter.blocked_for(peer, start), None);
        assert_eq!(limiter.record(peer, start + Duration::from_secs(10)), Recorded::LimitReached);
        assert_eq!(limiter.blocked_for(peer, start + Duration::from_secs(10)), Some(Duration::from_secs(50)));
        assert_eq!(limiter.record(peer, start + Duration::from_secs(11)), Recorded::AlreadyBlocked);
        assert_eq!(limiter.blocked_for(other, start), None, "other peers are not affected");
        let later = start + FAILURE_WINDOW;
        assert_eq!(limiter.blocked_for(peer, later), None, "the window ended");
        assert_eq!(limiter.record(peer, later), Recorded::Counted, "a new window starts");
    }

    #[test]
    fn zero_means_no_limit() {
        let limiter = FailureLimiter::new(0);
        let peer: IpAddr = "::1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(limiter.record(peer, now), Recorded::Counted);
        }
        assert_eq!(limiter.blocked_for(peer, now), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = FailureLimiter::new(5);
        let now = Instant::now();
        for index in 0..(MAX_PEERS as u32 + 10) {
            limiter.record(IpAddr::from(index.to_be_bytes()), now);
        }
        assert!(limiter.peers.lock().unwrap().len() <= MAX_PEERS);
    }
}
