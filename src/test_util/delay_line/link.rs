//! One direction of an emulated path: what happens to a datagram offered to it, decided at
//! once from the clock and a seeded RNG, so that it can be tested without sockets.

use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

/// A wide-area path, the same both ways: a one-way delay, a bottleneck with a drop-tail queue,
/// random loss, jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// Propagation delay of each direction: the round trip is twice this.
    pub one_way_delay: Duration,
    /// The bottleneck's rate in bit/s; `None`: no bottleneck (the machine's own speed).
    pub rate_bps: Option<u64>,
    /// The bottleneck's queue in bytes; `None`: one bandwidth-delay product.
    pub queue_bytes: Option<usize>,
    /// Probability that a datagram is lost, each way, decided before the queue.
    pub loss: f64,
    /// Extra delay drawn uniformly from `[0, jitter]` per datagram; datagrams keep their order.
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
            one_way_delay: Duration::from_millis(one_way_ms),
            rate_bps: Some(mbps * 1_000_000),
            queue_bytes: None,
            loss,
            jitter: Duration::ZERO,
        }
    }

    /// The round-trip time without queueing.
    pub fn rtt(&self) -> Duration {
        2 * self.one_way_delay
    }

    /// The queue's size: as set, or one bandwidth-delay product (at least 64 KiB, so that a
    /// short path still takes a burst).
    pub fn queue_limit(&self) -> usize {
        self.queue_bytes.unwrap_or_else(|| {
            let bdp = self.rate_bps.unwrap_or(0) as f64 / 8.0 * self.rtt().as_secs_f64();
            (bdp as usize).max(64 * 1024)
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

/// What becomes of an offered datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It leaves the far end at this time.
    Deliver(Instant),
    /// Lost at random.
    Lost,
    /// The bottleneck's queue was full.
    QueueFull,
}

/// One direction's state: when the bottleneck is free again, and the RNG.
pub(super) struct Link {
    path: Path,
    queue_limit: f64,
    rng: StdRng,
    /// When the bottleneck has sent everything accepted so far.
    free_at: Option<Instant>,
    /// The latest delivery time given out, which jitter may not undercut (no reordering).
    last_delivery: Option<Instant>,
}

impl Link {
    pub(super) fn new(path: Path, seed: u64) -> Self {
        Self {
            queue_limit: path.queue_limit() as f64,
            path,
            rng: StdRng::seed_from_u64(seed),
            free_at: None,
            last_delivery: None,
        }
    }

    /// Decides the fate of a datagram of `len` bytes arriving at `now`.
    pub(super) fn offer(&mut self, now: Instant, len: usize) -> Verdict {
        // Always the same draws in the same order, so that the loss pattern depends only on
        // the seed and the count of datagrams.
        let lost = self.rng.gen::<f64>() < self.path.loss;
        let jitter_ns = self.path.jitter.as_nanos() as u64;
        let jitter = Duration::from_nanos(self.rng.gen_range(0..=jitter_ns));
        if lost {
            return Verdict::Lost;
        }
        let sent = match self.path.rate_bps {
            Some(rate) => {
                let start = self.free_at.map_or(now, |free| free.max(now));
                // Bytes still waiting for the bottleneck when this one arrives.
                let backlog = (start - now).as_secs_f64() * rate as f64 / 8.0;
                if backlog + len as f64 > self.queue_limit {
                    return Verdict::QueueFull;
                }
                let done = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
                self.free_at = Some(done);
                done
            }
            None => now,
        };
        let mut at = sent + self.path.one_way_delay + jitter;
        if let Some(last) = self.last_delivery {
            at = at.max(last);
        }
        self.last_delivery = Some(at);
        Verdict::Deliver(at)
    }
}
