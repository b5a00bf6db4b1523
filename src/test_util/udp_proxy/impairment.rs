//! What the proxy does to datagrams, per direction, and what it counts.

use std::time::Duration;

/// How one direction of the proxy mistreats datagrams. All rates are probabilities in [0, 1].
///
/// Rates outside [0, 1] are clamped in effect: `<= 0` (or NaN) never happens,
/// `>= 1` always does. Dropping is decided first; a dropped datagram is neither
/// duplicated nor reordered.
#[derive(Clone, Debug, Default)]
pub struct Impairment {
    /// Probability that a datagram is discarded.
    pub drop_rate: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate_rate: f64,
    /// probability a datagram is held back and sent after the next one (reordering)
    pub reorder_rate: f64,
    /// fixed extra delay for every datagram
    pub delay: Duration,
    /// extra uniform random delay in [0, jitter] per datagram (also reorders)
    pub jitter: Duration,
}

impl Impairment {
    /// Forwards every datagram untouched.
    pub fn none() -> Self {
        Self::default()
    }

    /// Drops each datagram with probability `drop_rate` and does nothing else.
    pub fn lossy(drop_rate: f64) -> Self {
        Self::none().with_drop_rate(drop_rate)
    }

    /// Returns `self` with [`Impairment::drop_rate`] set.
    pub fn with_drop_rate(mut self, rate: f64) -> Self {
        self.drop_rate = rate;
        self
    }

    /// Returns `self` with [`Impairment::duplicate_rate`] set.
    pub fn with_duplicate_rate(mut self, rate: f64) -> Self {
        self.duplicate_rate = rate;
        self
    }

    /// Returns `self` with [`Impairment::reorder_rate`] set.
    pub fn with_reorder_rate(mut self, rate: f64) -> Self {
        self.reorder_rate = rate;
        self
    }

    /// Returns `self` with [`Impairment::delay`] set.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Returns `self` with [`Impairment::jitter`] set.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }
}

/// The direction a datagram travels through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// client → server
    ToServer = 0,
    /// server → client
    ToClient = 1,
}

/// Counters of what the proxy did, per direction: index = `Direction as usize`
/// (`ToServer` = 0, `ToClient` = 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams sent on, each duplicate copy included.
    pub forwarded: [u64; 2],
    /// Datagrams discarded by `drop_rate`, plus the rare ones the proxy could
    /// not queue (lane full) or send (socket error).
    pub dropped: [u64; 2],
    /// Extra copies made by `duplicate_rate`.
    pub duplicated: [u64; 2],
    /// Datagrams held back by `reorder_rate` (a held datagram whose successor
    /// does not come within a few milliseconds is sent anyway, still counted).
    pub reordered: [u64; 2],
    /// Datagrams (copies included) discarded because the direction was a black hole.
    pub black_holed: [u64; 2],
}
