//! Measures a delay line from outside: a paced source sends numbered datagrams through a line
//! to a sink that stamps each arrival with the kernel's receive time, and the arrivals are set
//! against an exact model of the path. The line's tests and its ceiling example use it.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use super::{
    os::{self, LINE_PRIORITY},
    DelayLine, DelayLineStats, Path,
};

/// The probe's threads run below the line's, so that the line wins the CPU from them.
const PROBE_PRIORITY: i32 = LINE_PRIORITY - 5;
/// How far ahead of its schedule the source sends rather than sleeps.
const SEND_AHEAD: Duration = Duration::from_micros(50);

/// What the source offers: `count` datagrams of `size` bytes (at least 4, for the sequence
/// number), spaced to make `rate_bps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// The offered rate in bit/s of UDP payload.
    pub rate_bps: u64,
    /// Bytes per datagram.
    pub size: usize,
    /// Datagrams to send.
    pub count: usize,
}

impl Load {
    /// About `duration` of datagrams of `size` bytes at `rate_bps`.
    pub fn for_duration(rate_bps: u64, size: usize, duration: Duration) -> Self {
        let count = rate_bps as f64 * duration.as_secs_f64() / (size as f64 * 8.0);
        Self {
            rate_bps,
            size,
            count: (count as usize).max(1),
        }
    }

    fn gap(&self) -> Duration {
        Duration::from_secs_f64(self.size as f64 * 8.0 / self.rate_bps as f64)
    }
}

/// One run of a [`Load`] through a delay line of a [`Path`].
#[derive(Debug, Clone)]
pub struct Probe {
    /// The line's path, both ways.
    pub path: Path,
    /// What was offered.
    pub load: Load,
    /// When each datagram was handed to the kernel (stamped just before its send).
    pub sent: Vec<Instant>,
    /// When each reached the sink, by the kernel's stamp; `None`: it never did.
    pub arrived: Vec<Option<Instant>>,
    /// The line's own counts.
    pub stats: DelayLineStats,
}

/// How far arrivals were from the model, in milliseconds (late positive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelayError {
    /// The earliest against the model.
    pub min: f64,
    /// The median.
    pub median: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The latest against the model.
    pub max: f64,
}

impl Probe {
    /// Starts a sink and a line in front of it with `path` and `seed`, sends `load` through
    /// it, and waits until every datagram has arrived or cannot arrive any more.
    pub fn run(path: &Path, load: Load, seed: u64) -> io::Result<Probe> {
        assert!(load.size >= 4, "datagrams carry a 4-byte sequence number");
        let sink = os::bind("127.0.0.1:0".parse().expect("an address"))?;
        let line = DelayLine::start(sink.local_addr()?, path.clone(), seed)?;
        let source_done = Arc::new(AtomicBool::new(false));
        // Datagrams leave the line at most this long after the source's last one.
        let drain = path.one_way_delay
            + path.jitter
            + path.serialization(path.queue_limit())
            + Duration::from_millis(200);
        let done = source_done.clone();
        let sink = os::spawn("probe sink", PROBE_PRIORITY, move || {
            receive(&sink, load.count, drain, &done)
        })?;
        let front = line.local_addr();
        let source = os::spawn("probe source", PROBE_PRIORITY, move || send(front, load));
        let sent = source.and_then(|source| source.join().map_err(|_| panicked()));
        source_done.store(true, Ordering::Relaxed);
        let arrived = sink.join().map_err(|_| panicked())?;
        Ok(Probe {
            path: path.clone(),
            load,
            sent: sent??,
            arrived,
            stats: line.shutdown(),
        })
    }

    /// The fraction of datagrams that never arrived.
    pub fn loss(&self) -> f64 {
        let arrived = self.arrived.iter().flatten().count();
        1.0 - arrived as f64 / self.load.count as f64
    }

    /// The rate the source managed, in Mbit/s: a source that cannot keep up offers less.
    pub fn offered_mbps(&self) -> f64 {
        mbps(self.sent.len(), self.load.size, self.sent.iter().copied())
    }

    /// The rate at the sink, in Mbit/s, from its first arrival to its last.
    pub fn received_mbps(&self) -> f64 {
        let arrived = self.arrived.iter().flatten().copied();
        mbps(
            self.arrived.iter().flatten().count(),
            self.load.size,
            arrived,
        )
    }

    /// Each arrival against the path's exact model: its sending time, then a wait for the
    /// bottleneck (free again when it has serialized every earlier arrival), its own
    /// serialization, and the one-way delay. Lost datagrams took no room in the bottleneck,
    /// so the model follows the arrivals only. Jitter counts as error.
    pub fn delay_errors_ms(&self) -> Vec<f64> {
        let serialization = self.path.serialization(self.load.size);
        let mut free: Option<Instant> = None;
        let mut errors: Vec<f64> = (self.sent.iter().zip(&self.arrived))
            .filter_map(|(sent, arrived)| Some((*sent, (*arrived)?)))
            .map(|(sent, arrived)| {
                let done = free.map_or(sent, |free| free.max(sent)) + serialization;
                free = Some(done);
                signed_ms(arrived, done + self.path.one_way_delay)
            })
            .collect();
        errors.sort_by(f64::total_cmp);
        errors
    }

    /// A summary of [`Probe::delay_errors_ms`]; `None` when nothing arrived.
    pub fn delay_error(&self) -> Option<DelayError> {
        let errors = self.delay_errors_ms();
        let at = |q: f64| errors[((errors.len() - 1) as f64 * q).round() as usize];
        (!errors.is_empty()).then(|| DelayError {
            min: at(0.0),
            median: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// Sends `load` to `front` on schedule, each datagram numbered; returns the send times.
fn send(front: SocketAddr, load: Load) -> io::Result<Vec<Instant>> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let mut datagram = vec![0u8; load.size];
    let mut sent = Vec::with_capacity(load.count);
    let start = Instant::now();
    for seq in 0..load.count {
        let due = start + load.gap() * seq as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now() + SEND_AHEAD) {
            thread::sleep(wait);
        }
        datagram[..4].copy_from_slice(&(seq as u32).to_be_bytes());
        sent.push(Instant::now());
        // A full socket buffer is the machine's limit, which the loss then shows.
        let _ = socket.send_to(&datagram, front);
    }
    Ok(sent)
}

/// Stamps each numbered datagram's arrival, until all `count` are in or the source is done
/// and `drain` has passed.
fn receive(
    sink: &UdpSocket,
    count: usize,
    drain: Duration,
    done: &AtomicBool,
) -> Vec<Option<Instant>> {
    let mut arrived = vec![None; count];
    let (mut received, mut buf) = (0, vec![0u8; 65_536]);
    let mut deadline = None;
    while received < count && deadline.is_none_or(|deadline| Instant::now() < deadline) {
        if deadline.is_none() && done.load(Ordering::Relaxed) {
            deadline = Some(Instant::now() + drain);
        }
        let Ok((len, _, at)) = os::recv_stamped(sink, &mut buf) else {
            continue;
        };
        let seq = (len >= 4).then(|| u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
        if let Some(slot) = seq.and_then(|seq| arrived.get_mut(seq as usize)) {
            received += usize::from(slot.is_none());
            *slot = Some(at);
        }
    }
    arrived
}

fn mbps(count: usize, size: usize, times: impl Iterator<Item = Instant> + Clone) -> f64 {
    let (Some(first), Some(last)) = (times.clone().min(), times.max()) else {
        return 0.0;
    };
    // Over the span of `count` datagrams there are `count - 1` gaps.
    let span = (last - first).as_secs_f64();
    (count.saturating_sub(1) * size) as f64 * 8.0 / span.max(1e-9) / 1e6
}

fn signed_ms(actual: Instant, expected: Instant) -> f64 {
    (actual.saturating_duration_since(expected).as_secs_f64()
        - expected.saturating_duration_since(actual).as_secs_f64())
        * 1e3
}

fn panicked() -> io::Error {
    io::Error::other("a probe thread panicked")
}
