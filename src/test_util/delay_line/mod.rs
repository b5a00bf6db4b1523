//! A delay line: a UDP relay that makes loopback look like a wide-area path — a one-way delay
//! each way, a bottleneck with a drop-tail queue, seeded random loss, jitter — for the perf
//! benchmark, where this kernel has no `netem`. `docs/wan-emulation.md` has what it models,
//! its measured ceiling and delay error, and its limits.
//!
//! Each direction is a link that decides every datagram's fate and departure time the moment
//! it arrives (by the kernel's receive timestamp); one sender thread per direction sleeps until
//! each is due. Plain threads and blocking sockets, not tokio: its timer ticks in milliseconds,
//! and a 200 Mbit/s bottleneck sends a datagram every 60 µs. Each client address gets a
//! session, with a socket of its own towards the server; each direction's bottleneck is shared
//! by all sessions.
//!
//! ```text
//!  client ─► front socket ─► [link to server] ─► sender ─► session socket ─► server
//!  client ◄─ front socket ◄─ sender ◄─ [link to client] ◄─ session socket ◄─ server
//! ```

mod link;
#[cfg(test)]
mod net_tests;
mod os;
mod path;
pub mod probe;
mod relay;
#[cfg(test)]
mod tests;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

pub use path::{Path, UnknownProfile};

use link::Link;
use relay::Direction;

/// Counters per direction: index 0 towards the server, 1 towards the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayLineStats {
    /// Datagrams sent on.
    pub delivered: [u64; 2],
    /// Datagrams lost at random.
    pub lost: [u64; 2],
    /// Datagrams dropped because the bottleneck's queue was full.
    pub queue_full: [u64; 2],
    /// Datagrams sent more than [`LATE`] after they were due: the line's own delay error
    /// (a busy machine that ran its thread late), which a benchmark should report beside its
    /// results.
    pub late: [u64; 2],
    /// The latest any datagram was sent after it was due.
    pub max_late: [Duration; 2],
    /// The longest any delivered datagram waited in the bottleneck's queue.
    pub max_queue_delay: [Duration; 2],
}

/// How late a send may be before it counts in [`DelayLineStats::late`].
pub const LATE: Duration = Duration::from_millis(1);

/// A running delay line. It runs on threads of its own, so it needs no runtime and works
/// beside tokio. Dropping it stops its threads and frees its sockets; [`DelayLine::shutdown`]
/// does the same and returns the final counts.
pub struct DelayLine {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    stats: Mutex<DelayLineStats>,
    /// Wakes [`DelayLine::wait_for_stats`]; notified only while someone waits, since a wake-up
    /// is a system call and the line counts every datagram.
    changed: Condvar,
    waiters: AtomicUsize,
}

impl Shared {
    fn count(&self, update: impl FnOnce(&mut DelayLineStats)) {
        update(&mut lock(&self.stats));
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.changed.notify_all();
        }
    }
}

impl DelayLine {
    /// Starts a delay line on `127.0.0.1:0` (or `[::1]:0`) in front of `server`, with `path`
    /// both ways; `seed` decides every loss and jitter.
    pub fn start(server: SocketAddr, path: Path, seed: u64) -> io::Result<DelayLine> {
        Self::start_each_way(server, path.clone(), path, seed)
    }

    /// Like [`DelayLine::start`], with a path of its own each way.
    pub fn start_each_way(
        server: SocketAddr,
        to_server: Path,
        to_client: Path,
        seed: u64,
    ) -> io::Result<DelayLine> {
        let loopback: IpAddr = match server {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        let front = Arc::new(os::bind((loopback, 0).into())?);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            stats: Mutex::new(DelayLineStats::default()),
            changed: Condvar::new(),
            waiters: AtomicUsize::new(0),
        });
        let mut line = DelayLine {
            local_addr: front.local_addr()?,
            shared: shared.clone(),
            threads: Vec::new(),
        };
        // On an error, dropping `line` stops the threads already started.
        let mut directions = Vec::new();
        for (index, path) in [to_server, to_client].into_iter().enumerate() {
            let link = Link::new(path, direction_seed(seed, index));
            let (direction, sender) = Direction::start(index, link, &shared)?;
            line.threads.push(sender);
            directions.push(direction);
        }
        let directions = [directions[0].clone(), directions[1].clone()];
        line.threads
            .push(os::spawn("delay-line front", os::LINE_PRIORITY, {
                move || relay::run_front(front, server, directions, shared)
            })?);
        Ok(line)
    }

    /// The address to dial instead of the server.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the line has done so far.
    pub fn stats(&self) -> DelayLineStats {
        *lock(&self.shared.stats)
    }

    /// Waits until `done` holds for the counts, at most `timeout`; returns them, or `None` if
    /// the time ran out. Lets a test wait for what the line did ("ten datagrams lost")
    /// instead of sleeping. It blocks: from async code, call it in `spawn_blocking`.
    pub fn wait_for_stats(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&DelayLineStats) -> bool,
    ) -> Option<DelayLineStats> {
        let deadline = Instant::now() + timeout;
        let shared = &self.shared;
        // Registered before the first look, so that no count between look and wait is missed.
        shared.waiters.fetch_add(1, Ordering::SeqCst);
        let mut stats = lock(&shared.stats);
        let outcome = loop {
            if done(&stats) {
                break Some(*stats);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break None;
            };
            stats = (shared.changed.wait_timeout(stats, left))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(stats);
        shared.waiters.fetch_sub(1, Ordering::SeqCst);
        outcome
    }

    /// Stops every thread, waits for them (so the ports are free when it returns), and
    /// returns the final counts. Datagrams still in the line are discarded.
    pub fn shutdown(mut self) -> DelayLineStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Each direction's RNG: the seed mixed with the direction through splitmix64, as the UDP
/// proxy's lanes do, so that seeds 1 and 2 do not share a direction's draws.
fn direction_seed(seed: u64, index: usize) -> u64 {
    seed ^ super::udp_proxy::splitmix64(index as u64)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
