//! What a path is: the profiles of the WAN benchmark, and their names on a command line.

use std::{fmt, str::FromStr, time::Duration};

/// One direction of a wide-area path: a one-way delay, a bottleneck with a drop-tail queue,
/// random loss, jitter. [`DelayLine::start`](super::DelayLine::start) uses the same path both
/// ways; [`DelayLine::start_each_way`](super::DelayLine::start_each_way) takes one per direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// Propagation delay of this direction: used both ways, the round trip is twice this.
    pub one_way_delay: Duration,
    /// The bottleneck's rate in bit/s; `None`: no bottleneck (the machine's own speed).
    pub rate_bps: Option<u64>,
    /// The bottleneck's queue in bytes, the datagram being serialized included; `None`: one
    /// bandwidth-delay product.
    pub queue_bytes: Option<usize>,
    /// Probability that a datagram is lost. Decided before the queue, as on a lossy wire in
    /// front of the bottleneck: a lost datagram takes no room in the queue.
    pub loss: f64,
    /// Extra delay drawn uniformly from `[0, jitter]` per datagram; datagrams keep their order
    /// (a datagram leaves no earlier than the one before it).
    pub jitter: Duration,
}

impl Path {
    /// The profile names [`Path::profile`] knows.
    pub const PROFILES: [&'static str; 3] = ["continental", "lossy", "long-thin"];

    /// 60 ms RTT, 200 Mbit/s, a queue of one BDP, no loss.
    pub fn continental() -> Self {
        Self::new(30, 200, 0.0)
    }

    /// 40 ms RTT, 100 Mbit/s, 1% random loss each way.
    pub fn lossy() -> Self {
        Self::new(20, 100, 0.01)
    }

    /// 150 ms RTT, 50 Mbit/s, 0.1% random loss each way.
    pub fn long_thin() -> Self {
        Self::new(75, 50, 0.001)
    }

    /// Only a one-way delay: no bottleneck, no loss, no jitter.
    pub fn delay_only(one_way_delay: Duration) -> Self {
        Self {
            one_way_delay,
            rate_bps: None,
            queue_bytes: None,
            loss: 0.0,
            jitter: Duration::ZERO,
        }
    }

    /// A profile by name: `continental`, `lossy` or `long-thin`.
    pub fn profile(name: &str) -> Option<Self> {
        match name {
            "continental" => Some(Self::continental()),
            "lossy" => Some(Self::lossy()),
            "long-thin" => Some(Self::long_thin()),
            _ => None,
        }
    }

    fn new(one_way_ms: u64, mbps: u64, loss: f64) -> Self {
        Self {
            rate_bps: Some(mbps * 1_000_000),
            loss,
            ..Self::delay_only(Duration::from_millis(one_way_ms))
        }
    }

    /// The round-trip time without queueing, if the path is used both ways.
    pub fn rtt(&self) -> Duration {
        2 * self.one_way_delay
    }

    /// One bandwidth-delay product over [`Path::rtt`], in bytes; zero without a bottleneck.
    pub fn bdp_bytes(&self) -> f64 {
        self.rate_bps.unwrap_or(0) as f64 / 8.0 * self.rtt().as_secs_f64()
    }

    /// The queue's size: as set, or one bandwidth-delay product (at least 64 KiB, so that a
    /// short path still takes a burst).
    pub fn queue_limit(&self) -> usize {
        self.queue_bytes
            .unwrap_or_else(|| (self.bdp_bytes() as usize).max(64 * 1024))
    }

    /// How long the bottleneck takes to send `len` bytes; zero without a bottleneck.
    pub fn serialization(&self, len: usize) -> Duration {
        self.rate_bps.map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(len as f64 * 8.0 / rate as f64)
        })
    }

    /// The loss, in words: "no loss" or "1% loss each way".
    pub fn describe_loss(&self) -> String {
        if self.loss > 0.0 {
            format!("{}% loss each way", self.loss * 100.0)
        } else {
            "no loss".into()
        }
    }
}

/// A profile name that [`Path::profile`] does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProfile(pub String);

impl fmt::Display for UnknownProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown path profile {:?}: one of {}",
            self.0,
            Path::PROFILES.join(", ")
        )
    }
}

impl std::error::Error for UnknownProfile {}

/// Parses a profile name, so that a command line can take `--profile continental`.
impl FromStr for Path {
    type Err = UnknownProfile;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Path::profile(name).ok_or_else(|| UnknownProfile(name.into()))
    }
}
