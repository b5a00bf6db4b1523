//! A lane: one direction of one session, which decides each datagram's fate and sends it when
//! due.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::session::is_bounce;
use super::{Direction, Shared};

/// How long a datagram held back for reordering waits for a successor before
/// it is sent anyway, so that holding the last datagram of a burst cannot lose it.
const REORDER_FLUSH: Duration = Duration::from_millis(5);

/// Upper bound on delay + jitter, which keeps `Instant` arithmetic from
/// overflowing whatever `Duration` a test passes.
const MAX_EXTRA_DELAY: Duration = Duration::from_secs(3_600);

/// Where a lane sends its datagrams.
pub(super) enum Output {
    /// The session's upstream socket, connected to the server.
    Upstream(Arc<UdpSocket>),
    /// The front socket, towards this client.
    Client(Arc<UdpSocket>, SocketAddr),
}

impl Output {
    async fn send(&self, datagram: &[u8]) -> io::Result<usize> {
        match self.send_once(datagram).await {
            // A connected socket may report an earlier bounce on this send
            // instead of on a receive; this datagram was then not sent, so the
            // stale error must not cost it (e.g. right after a server restart).
            Err(error) if is_bounce(&error) => self.send_once(datagram).await,
            result => result,
        }
    }

    async fn send_once(&self, datagram: &[u8]) -> io::Result<usize> {
        match self {
            Output::Upstream(socket) => socket.send(datagram).await,
            Output::Client(socket, client) => socket.send_to(datagram, *client).await,
        }
    }
}

/// A datagram whose fate is decided, waiting for its time.
struct Scheduled {
    at: Instant,
    /// Breaks ties in `at` by arrival, so equal deadlines keep their order.
    seq: u64,
    copies: u64,
    datagram: Vec<u8>,
}

// Ordered by (deadline, arrival) only; the payload plays no part.
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

/// A datagram held back until the next one has been scheduled.
struct Held {
    /// When to give up waiting for a successor and send it anyway.
    flush_at: Instant,
    at: Instant,
    copies: u64,
    datagram: Vec<u8>,
}

/// One direction of one session: decides each datagram's fate and sends it
/// when due.
pub(super) struct Lane {
    dir: Direction,
    rng: StdRng,
    out: Output,
    shared: Arc<Shared>,
    /// Min-heap of datagrams by deadline.
    queue: BinaryHeap<Reverse<Scheduled>>,
    held: Option<Held>,
    next_seq: u64,
}

impl Lane {
    pub(super) fn new(
        dir: Direction,
        seed: u64,
        session: u64,
        out: Output,
        shared: &Arc<Shared>,
    ) -> Self {
        // Mix direction and session through splitmix64 before combining with
        // the seed, so neighbouring seeds don't give lanes identical streams
        // (plain `seed ^ dir` would make seed 6/ToClient equal seed 7/ToServer).
        let lane_id = (session << 1) | dir as u64;
        Self {
            dir,
            rng: StdRng::seed_from_u64(seed ^ splitmix64(lane_id)),
            out,
            shared: Arc::clone(shared),
            queue: BinaryHeap::new(),
            held: None,
            next_seq: 0,
        }
    }

    pub(super) async fn run(mut self, mut incoming: mpsc::Receiver<Vec<u8>>) {
        loop {
            let now = Instant::now();
            if self.held.as_ref().is_some_and(|held| held.flush_at <= now) {
                self.release_held(now);
            }
            self.send_due(now).await;

            // Sleep until the next datagram arrives or something comes due.
            let next_send = self.queue.peek().map(|Reverse(next)| next.at);
            let next_flush = self.held.as_ref().map(|held| held.flush_at);
            tokio::select! {
                datagram = incoming.recv() => match datagram {
                    Some(datagram) => self.ingest(datagram),
                    None => return, // session torn down
                },
                () = sleep_until_some(next_send) => {}
                () = sleep_until_some(next_flush) => {}
            }
        }
    }

    /// Decides the fate of a datagram that just arrived.
    fn ingest(&mut self, datagram: Vec<u8>) {
        let now = Instant::now();
        let d = self.dir as usize;
        let (impairment, black_hole) = {
            let control = self.shared.control();
            (control.impairments[d].clone(), control.black_hole[d])
        };
        if black_hole {
            // Checked before drawing from the RNG, so black-holed traffic does
            // not shift the decisions for what comes after.
            self.shared.count(|s| s.black_holed[d] += 1);
            return;
        }

        // Always draw the same numbers in the same order, whatever the rates,
        // so changing one knob does not reshuffle the others' decisions.
        let drop = self.rng.gen::<f64>() < impairment.drop_rate;
        let duplicate = self.rng.gen::<f64>() < impairment.duplicate_rate;
        let hold = self.rng.gen::<f64>() < impairment.reorder_rate;
        let jitter_nanos = u64::try_from(impairment.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(self.rng.gen_range(0..=jitter_nanos));

        if drop {
            self.shared.count(|s| s.dropped[d] += 1);
            return;
        }
        let at = now + impairment.delay.saturating_add(jitter).min(MAX_EXTRA_DELAY);
        let copies = if duplicate { 2 } else { 1 };
        if duplicate {
            self.shared.count(|s| s.duplicated[d] += 1);
        }

        match self.held.take() {
            // This is the successor a held datagram was waiting for: it goes
            // first, the held one right behind it. It is never held itself, so
            // reorder_rate 1.0 swaps pairs rather than holding forever.
            Some(held) => {
                self.schedule(at, copies, datagram);
                self.schedule(held.at.max(at), held.copies, held.datagram);
            }
            None if hold => {
                self.shared.count(|s| s.reordered[d] += 1);
                self.held = Some(Held {
                    flush_at: now + REORDER_FLUSH,
                    at,
                    copies,
                    datagram,
                });
            }
            None => self.schedule(at, copies, datagram),
        }
    }

    /// Sends a held datagram whose successor did not come in time.
    fn release_held(&mut self, now: Instant) {
        if let Some(held) = self.held.take() {
            self.schedule(held.at.max(now), held.copies, held.datagram);
        }
    }

    fn schedule(&mut self, at: Instant, copies: u64, datagram: Vec<u8>) {
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.next_seq,
            copies,
            datagram,
        }));
    }

    /// Sends every datagram due by `now`.
    async fn send_due(&mut self, now: Instant) {
        let d = self.dir as usize;
        while self
            .queue
            .peek()
            .is_some_and(|Reverse(next)| next.at <= now)
        {
            let Some(Reverse(next)) = self.queue.pop() else {
                break;
            };
            // Checked again on the way out so that datagrams in flight when the
            // black hole opened are lost too, like on a cut link.
            if self.shared.control().black_hole[d] {
                self.shared.count(|s| s.black_holed[d] += next.copies);
                continue;
            }
            for _ in 0..next.copies {
                match self.out.send(&next.datagram).await {
                    Ok(_) => self.shared.count(|s| s.forwarded[d] += 1),
                    Err(error) => {
                        tracing::debug!(dir = ?self.dir, %error, "udp proxy: send failed");
                        self.shared.count(|s| s.dropped[d] += 1);
                    }
                }
            }
        }
    }
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The splitmix64 finaliser: a cheap bijection that scatters nearby inputs.
pub(in crate::test_util) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
