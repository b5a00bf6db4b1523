//! An in-process UDP proxy that sits between two QUIC peers on loopback and
//! mistreats their datagrams: it drops, duplicates, reorders and delays them.
//!
//! Every random decision comes from an RNG derived from a caller-given seed, so
//! a test that sends the same datagrams in the same order sees the same
//! decisions on every run and failures can be replayed.
//!
//! Layout: the front socket (the address clients dial) receives from clients.
//! Each distinct client source address gets a *session*: its own upstream
//! socket connected to the server, and one *lane* task per direction. A lane
//! owns that direction's RNG, decides the fate of each datagram and sends it
//! when it is due, so delays need no task per datagram.
//!
//! ```text
//!  client ──► front socket ──► [ToServer lane] ──► upstream socket ──► server
//!  client ◄── front socket ◄── [ToClient lane] ◄── upstream socket ◄── server
//! ```

mod impairment;
mod lane;
mod session;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinSet;

pub use impairment::{Direction, Impairment, ProxyStats};
use session::run_front;
// The delay line seeds its directions the same way.
pub(in crate::test_util) use lane::splitmix64;

/// A UDP proxy that impairs traffic between clients and one server.
///
/// Dropping it stops all its tasks; their sockets close as soon as the runtime
/// has processed the cancellation. Use [`UdpProxy::shutdown`] to wait for that.
pub struct UdpProxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl UdpProxy {
    /// Binds `127.0.0.1:0` (or `[::1]:0` when `server` is IPv6) and forwards to `server`.
    ///
    /// `seed` determines every random decision: the same datagrams in the same
    /// order meet the same fate on every run. Must be called within a Tokio
    /// runtime, which runs the proxy's tasks.
    pub async fn start(
        server: SocketAddr,
        seed: u64,
        to_server: Impairment,
        to_client: Impairment,
    ) -> io::Result<Self> {
        let front = Arc::new(UdpSocket::bind((loopback_for(server), 0)).await?);
        let local_addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                impairments: [to_server, to_client],
                black_hole: [false; 2],
                stats: ProxyStats::default(),
            }),
            changed: Notify::new(),
            tasks: Mutex::new(Some(JoinSet::new())),
        });
        shared.spawn(run_front(front, server, seed, Arc::clone(&shared)));
        Ok(Self { local_addr, shared })
    }

    /// The address clients dial instead of the server.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Drop everything in `dir` (true) or resume forwarding (false).
    ///
    /// Datagrams already delayed inside the proxy are discarded too if they
    /// come due while the black hole is on: nothing leaves in `dir` meanwhile.
    pub fn set_black_hole(&self, dir: Direction, on: bool) {
        self.shared.control().black_hole[dir as usize] = on;
    }

    /// Swap the impairment of one direction at run time.
    ///
    /// Applies to datagrams received from now on; queued ones keep their fate.
    pub fn set_impairment(&self, dir: Direction, impairment: Impairment) {
        self.shared.control().impairments[dir as usize] = impairment;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.shared.control().stats
    }

    /// Waits until `done` holds for the counters and returns them.
    ///
    /// Lets tests synchronise on what the proxy did (e.g. "the datagram was
    /// dropped") instead of sleeping. Wrap it in a timeout: it waits forever
    /// if `done` never holds.
    pub async fn wait_for_stats(&self, mut done: impl FnMut(&ProxyStats) -> bool) -> ProxyStats {
        loop {
            // Register interest before reading, so an update between the read
            // and the await still wakes us.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let stats = self.stats();
            if done(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    /// Stops all tasks and waits until they are gone, so that every socket of
    /// the proxy is closed (and its port free) when this returns.
    pub async fn shutdown(self) {
        if let Some(mut tasks) = self.shared.take_tasks() {
            tasks.shutdown().await;
        }
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        // Dropping the `JoinSet` aborts every task; the tasks own all sockets.
        // Taking it out also breaks the cycle Shared → tasks → Arc<Shared>.
        drop(self.shared.take_tasks());
    }
}

/// State shared by the handle and all tasks.
struct Shared {
    control: Mutex<Control>,
    /// Woken whenever `Control::stats` changes, for `wait_for_stats`.
    changed: Notify,
    /// Every task of the proxy; `None` once the proxy is stopping, which tells
    /// the front task not to start new sessions.
    tasks: Mutex<Option<JoinSet<()>>>,
}

struct Control {
    impairments: [Impairment; 2],
    black_hole: [bool; 2],
    stats: ProxyStats,
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        // No code panics while holding the lock, and the data stays consistent
        // even if something did, so poisoning is safe to ignore.
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, update: impl FnOnce(&mut ProxyStats)) {
        update(&mut self.control().stats);
        self.changed.notify_waiters();
    }

    /// Spawns `task` as part of the proxy; returns false if the proxy is stopping.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        match tasks.as_mut() {
            Some(set) => {
                set.spawn(task);
                true
            }
            None => false,
        }
    }

    fn take_tasks(&self) -> Option<JoinSet<()>> {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

fn loopback_for(peer: SocketAddr) -> IpAddr {
    if peer.is_ipv6() {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    }
}
