//! One direction of an emulated path: what happens to a datagram offered to it, decided at
//! once from its arrival time and a seeded RNG, so that it can be tested without sockets.

use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::Path;

/// What becomes of an offered datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It leaves the far end at `at`, after waiting `queued` for the bottleneck.
    Deliver { at: Instant, queued: Duration },
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
    /// The latest departure given out, which jitter may not undercut (no reordering).
    last_departure: Option<Instant>,
}

impl Link {
    pub(super) fn new(path: Path, seed: u64) -> Self {
        Self {
            queue_limit: path.queue_limit() as f64,
            path,
            rng: StdRng::seed_from_u64(seed),
            free_at: None,
            last_departure: None,
        }
    }

    /// Decides the fate of a datagram of `len` bytes arriving at `now`.
    pub(super) fn offer(&mut self, now: Instant, len: usize) -> Verdict {
        // Always the same draws in the same order, so that the fates depend only on the seed
        // and the datagrams' order, not on their timing.
        let lost = self.rng.gen::<f64>() < self.path.loss;
        let jitter_ns = self.path.jitter.as_nanos() as u64;
        let jitter = Duration::from_nanos(self.rng.gen_range(0..=jitter_ns));
        if lost {
            return Verdict::Lost;
        }
        let (start, sent) = match self.path.rate_bps {
            Some(rate) => {
                let start = self.free_at.map_or(now, |free| free.max(now));
                // Bytes still waiting for the bottleneck when this one arrives.
                let backlog = (start - now).as_secs_f64() * rate as f64 / 8.0;
                if backlog + len as f64 > self.queue_limit {
                    return Verdict::QueueFull;
                }
                let done = start + self.path.serialization(len);
                self.free_at = Some(done);
                (start, done)
            }
            None => (now, now),
        };
        let mut at = sent + self.path.one_way_delay + jitter;
        if let Some(last) = self.last_departure {
            at = at.max(last);
        }
        self.last_departure = Some(at);
        Verdict::Deliver {
            at,
            queued: start - now,
        }
    }
}
