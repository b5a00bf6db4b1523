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

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

/// Large enough for any UDP payload, so nothing is ever truncated.
const MAX_DATAGRAM: usize = 65_535;

/// How long a datagram held back for reordering waits for a successor before
/// it is sent anyway, so that holding the last datagram of a burst cannot lose it.
const REORDER_FLUSH: Duration = Duration::from_millis(5);

/// Datagrams waiting for a lane. When it is full the datagram is dropped (and
/// counted), like a router queue overflowing, instead of stalling the receiver.
const LANE_CAPACITY: usize = 4_096;

/// Upper bound on delay + jitter, which keeps `Instant` arithmetic from
/// overflowing whatever `Duration` a test passes.
const MAX_EXTRA_DELAY: Duration = Duration::from_secs(3_600);

/// A receive loop gives up after this many unexplained errors in a row: a
/// healthy socket does not fail like that, and retrying would only spin a core.
/// Bounces (see [`is_bounce`]) don't count.
const MAX_CONSECUTIVE_RECV_ERRORS: u32 = 1_024;

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

/// Receives client datagrams on the front socket and hands each to its session.
async fn run_front(front: Arc<UdpSocket>, server: SocketAddr, seed: u64, shared: Arc<Shared>) {
    let mut sessions: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0; MAX_DATAGRAM];
    let mut errors = 0;
    while let Some((len, client)) = recv_datagram(&front, &mut buf, &mut errors).await {
        let lane = match sessions.get(&client) {
            Some(lane) => lane,
            None => {
                // Sessions are numbered in order of appearance rather than keyed
                // by address: client ports are random, the order is not.
                let ordinal = sessions.len() as u64;
                match open_session(&front, server, client, seed, ordinal, &shared).await {
                    Ok(Some(lane)) => sessions.entry(client).or_insert(lane),
                    Ok(None) => return, // the proxy is stopping
                    Err(error) => {
                        tracing::warn!(%client, %error, "udp proxy: cannot open upstream socket");
                        continue;
                    }
                }
            }
        };
        enqueue(&shared, Direction::ToServer, lane, buf[..len].to_vec());
    }
}

/// Creates the upstream socket and tasks for a new client; returns the sender
/// feeding its `ToServer` lane, or `None` if the proxy is stopping.
async fn open_session(
    front: &Arc<UdpSocket>,
    server: SocketAddr,
    client: SocketAddr,
    seed: u64,
    ordinal: u64,
    shared: &Arc<Shared>,
) -> io::Result<Option<mpsc::Sender<Vec<u8>>>> {
    // A fresh socket per client so the server sees distinct peers, as it would
    // without the proxy, and replies can be routed back by socket alone.
    let upstream = Arc::new(UdpSocket::bind((loopback_for(server), 0)).await?);
    upstream.connect(server).await?;
    tracing::debug!(%client, upstream = ?upstream.local_addr(), "udp proxy: new session");

    let (to_server, to_server_rx) = mpsc::channel(LANE_CAPACITY);
    let (to_client, to_client_rx) = mpsc::channel(LANE_CAPACITY);
    let server_lane = Lane::new(
        Direction::ToServer,
        seed,
        ordinal,
        Output::Upstream(Arc::clone(&upstream)),
        shared,
    );
    let client_lane = Lane::new(
        Direction::ToClient,
        seed,
        ordinal,
        Output::Client(Arc::clone(front), client),
        shared,
    );
    let started = shared.spawn(server_lane.run(to_server_rx))
        && shared.spawn(client_lane.run(to_client_rx))
        && shared.spawn(relay_replies(upstream, to_client, Arc::clone(shared)));
    Ok(started.then_some(to_server))
}

/// Receives the server's replies for one client and feeds its `ToClient` lane.
async fn relay_replies(upstream: Arc<UdpSocket>, lane: mpsc::Sender<Vec<u8>>, shared: Arc<Shared>) {
    let mut buf = vec![0; MAX_DATAGRAM];
    let mut errors = 0;
    while let Some((len, _)) = recv_datagram(&upstream, &mut buf, &mut errors).await {
        enqueue(&shared, Direction::ToClient, &lane, buf[..len].to_vec());
    }
}

/// Receives one datagram, skipping the errors UDP reports for bounced
/// datagrams. `None` once the socket looks broken.
async fn recv_datagram(
    socket: &UdpSocket,
    buf: &mut [u8],
    errors: &mut u32,
) -> Option<(usize, SocketAddr)> {
    loop {
        match socket.recv_from(buf).await {
            Ok(received) => {
                *errors = 0;
                return Some(received);
            }
            // Not counted: a server that is down (or restarting) bounces every
            // datagram, and the session must survive until it is back.
            Err(error) if is_bounce(&error) => {
                tracing::trace!(%error, "udp proxy: datagram bounced");
            }
            Err(error) if *errors < MAX_CONSECUTIVE_RECV_ERRORS => {
                *errors += 1;
                tracing::debug!(%error, "udp proxy: receive error, continuing");
            }
            Err(error) => {
                tracing::warn!(%error, "udp proxy: socket keeps failing, stopping");
                return None;
            }
        }
    }
}

/// Whether `error` is an ICMP report about an earlier datagram rather than a
/// problem with the socket. Each report needs a datagram we sent, so skipping
/// them cannot spin.
fn is_bounce(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Hands a datagram to a lane without waiting: like a full router queue, a full
/// lane drops rather than slowing the receiver down.
fn enqueue(shared: &Shared, dir: Direction, lane: &mpsc::Sender<Vec<u8>>, datagram: Vec<u8>) {
    match lane.try_send(datagram) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::debug!(?dir, "udp proxy: lane full, dropping datagram");
            shared.count(|s| s.dropped[dir as usize] += 1);
        }
        // The lane is gone only while the proxy is stopping.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// Where a lane sends its datagrams.
enum Output {
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
struct Lane {
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
    fn new(dir: Direction, seed: u64, session: u64, out: Output, shared: &Arc<Shared>) -> Self {
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

    async fn run(mut self, mut incoming: mpsc::Receiver<Vec<u8>>) {
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
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upper bound for every test, so a bug fails instead of hanging CI.
    const TEST_TIMEOUT: Duration = Duration::from_secs(30);

    async fn bounded<F: Future>(test: F) -> F::Output {
        tokio::time::timeout(TEST_TIMEOUT, test)
            .await
            .expect("test timed out")
    }

    /// A plain UDP echo server; it stops with the test's runtime.
    async fn echo_server() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0; MAX_DATAGRAM];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        addr
    }

    async fn client_for(proxy: &UdpProxy) -> UdpSocket {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(proxy.local_addr()).await.unwrap();
        client
    }

    async fn send_id(client: &UdpSocket, id: u32) {
        client.send(&id.to_be_bytes()).await.unwrap();
    }

    async fn recv_id(client: &UdpSocket) -> u32 {
        let mut buf = [0; 16];
        let len = client.recv(&mut buf).await.unwrap();
        u32::from_be_bytes(buf[..len].try_into().unwrap())
    }

    /// Sends `ids` in bursts of `window` and collects the echoes in arrival
    /// order. Bursts are small enough that no socket buffer overflows, so any
    /// loss would be the proxy's; only use it where nothing is dropped.
    async fn echo_in_bursts(client: &UdpSocket, count: u32, window: u32) -> Vec<u32> {
        let mut arrived = Vec::new();
        for start in (0..count).step_by(window as usize) {
            let end = (start + window).min(count);
            for id in start..end {
                send_id(client, id).await;
            }
            for _ in start..end {
                arrived.push(recv_id(client).await);
            }
        }
        arrived
    }

    #[tokio::test]
    async fn forwards_everything_in_order_without_impairment() {
        bounded(async {
            let server = echo_server().await;
            let proxy = UdpProxy::start(server, 1, Impairment::none(), Impairment::none())
                .await
                .unwrap();
            let client = client_for(&proxy).await;

            let arrived = echo_in_bursts(&client, 1000, 32).await;

            assert_eq!(arrived, (0..1000).collect::<Vec<_>>());
            let stats = proxy.stats();
            assert_eq!(stats.forwarded, [1000, 1000]);
            assert_eq!(stats.dropped, [0, 0]);
        })
        .await;
    }

    /// Sends 1000 datagrams one at a time through a proxy dropping half of
    /// them towards the server, and returns which ids came back plus the stats.
    /// Each send waits until the proxy has decided (forwarded or dropped), so
    /// the traffic, and hence the RNG's decisions, are identical on every run.
    async fn lossy_run(seed: u64) -> (Vec<u32>, ProxyStats) {
        let server = echo_server().await;
        let proxy = UdpProxy::start(server, seed, Impairment::lossy(0.5), Impairment::none())
            .await
            .unwrap();
        let client = client_for(&proxy).await;
        let mut arrived = Vec::new();
        for id in 0..1000u32 {
            send_id(&client, id).await;
            let decided = u64::from(id) + 1;
            let stats = proxy
                .wait_for_stats(|s| s.forwarded[0] + s.dropped[0] == decided)
                .await;
            if stats.forwarded[0] as usize > arrived.len() {
                arrived.push(recv_id(&client).await);
            }
        }
        (arrived, proxy.stats())
    }

    #[tokio::test]
    async fn drops_are_seeded_and_replay() {
        bounded(async {
            let (first, first_stats) = lossy_run(7).await;
            let (second, second_stats) = lossy_run(7).await;
            let (other_seed, _) = lossy_run(8).await;

            assert!(
                (400..=600).contains(&first.len()),
                "{} arrived",
                first.len()
            );
            assert_eq!(first_stats.dropped[0] as usize, 1000 - first.len());
            assert_eq!(first, second, "same seed, same survivors");
            assert_eq!(first_stats, second_stats);
            assert_ne!(first, other_seed, "another seed, other survivors");
        })
        .await;
    }

    #[tokio::test]
    async fn duplicate_rate_one_doubles_every_datagram() {
        bounded(async {
            let server = echo_server().await;
            let to_server = Impairment::none().with_duplicate_rate(1.0);
            let proxy = UdpProxy::start(server, 3, to_server, Impairment::none())
                .await
                .unwrap();
            let client = client_for(&proxy).await;

            for id in 0..200 {
                send_id(&client, id).await;
                // The server echoes both copies, so both come back.
                assert_eq!(recv_id(&client).await, id);
                assert_eq!(recv_id(&client).await, id);
            }

            let stats = proxy.stats();
            assert_eq!(stats.duplicated, [200, 0]);
            assert_eq!(stats.forwarded, [400, 400]);
        })
        .await;
    }

    #[tokio::test]
    async fn reordering_loses_nothing() {
        bounded(async {
            let server = echo_server().await;
            let to_server = Impairment::none().with_reorder_rate(0.5);
            let proxy = UdpProxy::start(server, 11, to_server, Impairment::none())
                .await
                .unwrap();
            let client = client_for(&proxy).await;

            // A held datagram whose burst ends is released by the flush
            // timeout, so every burst completes.
            let arrived = echo_in_bursts(&client, 200, 16).await;

            let out_of_order = arrived.windows(2).filter(|w| w[0] > w[1]).count();
            assert!(out_of_order > 0, "nothing was reordered: {arrived:?}");
            let mut sorted = arrived.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..200).collect::<Vec<_>>(), "lost or duplicated");
            assert!(proxy.stats().reordered[0] > 0);
        })
        .await;
    }

    #[tokio::test]
    async fn delay_and_jitter_hold_datagrams_back_but_deliver_them() {
        bounded(async {
            let server = echo_server().await;
            let delay = Duration::from_millis(20);
            let to_client = Impairment::none()
                .with_delay(delay)
                .with_jitter(Duration::from_millis(10));
            let proxy = UdpProxy::start(server, 5, Impairment::none(), to_client)
                .await
                .unwrap();
            let client = client_for(&proxy).await;

            let started = Instant::now();
            let mut arrived = echo_in_bursts(&client, 50, 50).await;

            // Only a lower bound: an upper one would be flaky on a busy machine.
            assert!(started.elapsed() >= delay);
            arrived.sort_unstable();
            assert_eq!(arrived, (0..50).collect::<Vec<_>>());
        })
        .await;
    }

    #[tokio::test]
    async fn black_hole_blocks_then_resumes() {
        bounded(async {
            let server = echo_server().await;
            let proxy = UdpProxy::start(server, 2, Impairment::none(), Impairment::none())
                .await
                .unwrap();
            let client = client_for(&proxy).await;
            send_id(&client, 0).await;
            assert_eq!(recv_id(&client).await, 0);

            for (dir, id) in [(Direction::ToServer, 1), (Direction::ToClient, 3)] {
                proxy.set_black_hole(dir, true);
                send_id(&client, id).await;
                proxy
                    .wait_for_stats(|s| s.black_holed[dir as usize] == 1)
                    .await;
                proxy.set_black_hole(dir, false);

                // Had the black-holed datagram got through, it would arrive first.
                send_id(&client, id + 1).await;
                assert_eq!(recv_id(&client).await, id + 1, "{dir:?}");
            }
            assert_eq!(proxy.stats().black_holed, [1, 1]);
        })
        .await;
    }

    #[tokio::test]
    async fn impairment_can_be_swapped_at_run_time() {
        bounded(async {
            let server = echo_server().await;
            let proxy = UdpProxy::start(server, 8, Impairment::none(), Impairment::none())
                .await
                .unwrap();
            let client = client_for(&proxy).await;

            proxy.set_impairment(Direction::ToClient, Impairment::lossy(1.0));
            send_id(&client, 1).await;
            proxy.wait_for_stats(|s| s.dropped[1] == 1).await;

            proxy.set_impairment(Direction::ToClient, Impairment::none());
            send_id(&client, 2).await;
            // Had the lossy impairment still applied, 2 would be dropped too.
            assert_eq!(recv_id(&client).await, 2);
            assert_eq!(proxy.stats().forwarded, [2, 1]);
        })
        .await;
    }

    #[tokio::test]
    async fn session_survives_server_restart() {
        bounded(async {
            let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let server_addr = server.local_addr().unwrap();
            let proxy = UdpProxy::start(server_addr, 10, Impairment::none(), Impairment::none())
                .await
                .unwrap();
            let client = client_for(&proxy).await;
            send_id(&client, 1).await;
            let mut buf = [0; 16];
            let (_, upstream) = server.recv_from(&mut buf).await.unwrap();

            // With the server gone the datagram bounces, and the upstream
            // socket reports "connection refused" to the proxy.
            drop(server);
            send_id(&client, 2).await;
            proxy.wait_for_stats(|s| s.forwarded[0] == 2).await;

            let server = UdpSocket::bind(server_addr).await.unwrap();
            send_id(&client, 3).await;
            let (len, from) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..len], from), (&3u32.to_be_bytes()[..], upstream));
            server.send_to(&4u32.to_be_bytes(), upstream).await.unwrap();
            assert_eq!(recv_id(&client).await, 4, "replies still relayed");
        })
        .await;
    }

    #[tokio::test]
    async fn clients_get_separate_sessions() {
        bounded(async {
            let server = echo_server().await;
            let proxy = UdpProxy::start(server, 4, Impairment::none(), Impairment::none())
                .await
                .unwrap();
            let (a, b) = (client_for(&proxy).await, client_for(&proxy).await);

            send_id(&a, 1).await;
            send_id(&b, 2).await;

            assert_eq!(recv_id(&a).await, 1);
            assert_eq!(recv_id(&b).await, 2);
        })
        .await;
    }

    /// Starts a proxy and makes it open a session, so it owns all its sockets.
    async fn busy_proxy() -> UdpProxy {
        let server = echo_server().await;
        let proxy = UdpProxy::start(server, 6, Impairment::none(), Impairment::none())
            .await
            .unwrap();
        let client = client_for(&proxy).await;
        send_id(&client, 0).await;
        assert_eq!(recv_id(&client).await, 0);
        proxy
    }

    #[tokio::test]
    async fn dropping_the_proxy_frees_its_port() {
        bounded(async {
            let proxy = busy_proxy().await;
            let addr = proxy.local_addr();
            drop(proxy);

            // Aborted tasks release their sockets when the runtime next runs
            // them, so yield until it has (bounded by the test timeout).
            while UdpSocket::bind(addr).await.is_err() {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_frees_its_port_at_once() {
        bounded(async {
            let proxy = busy_proxy().await;
            let addr = proxy.local_addr();
            proxy.shutdown().await;

            UdpSocket::bind(addr).await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn ipv6_server_gets_ipv6_proxy() {
        bounded(async {
            // Some CI sandboxes have no IPv6 loopback; nothing to test there.
            let Ok(server) = UdpSocket::bind("[::1]:0").await else {
                return;
            };
            let server_addr = server.local_addr().unwrap();
            let proxy = UdpProxy::start(server_addr, 9, Impairment::none(), Impairment::none())
                .await
                .unwrap();
            assert!(proxy.local_addr().is_ipv6());

            let client = UdpSocket::bind("[::1]:0").await.unwrap();
            client.send_to(b"hi", proxy.local_addr()).await.unwrap();
            let mut buf = [0; 8];
            let (len, _) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..len], b"hi");
        })
        .await;
    }

    #[test]
    fn lanes_get_distinct_streams() {
        let ids = [(0, 0), (0, 1), (1, 0), (1, 1)];
        let seeds: Vec<u64> = ids
            .iter()
            .map(|&(seed, lane)| seed ^ splitmix64(lane))
            .collect();
        for (i, a) in seeds.iter().enumerate() {
            assert!(!seeds[i + 1..].contains(a), "collision for {:?}", ids[i]);
        }
    }
}
