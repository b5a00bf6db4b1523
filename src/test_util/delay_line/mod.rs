//! A delay line: a UDP relay that makes loopback look like a wide-area path — a one-way delay
//! each way, a bottleneck with a drop-tail queue, seeded random loss, jitter — for the perf
//! benchmark, where this kernel has no `netem`.
//!
//! Each direction is a [`Link`] that decides every datagram's fate and departure time the
//! moment it arrives; one sender thread per direction sleeps until each is due. Plain threads
//! and blocking sockets, not tokio: its timer ticks in milliseconds, and a 200 Mbit/s
//! bottleneck sends a datagram every 60 µs. Each client address gets a session, with a socket
//! of its own towards the server; both directions' bottlenecks are shared by all sessions.
//!
//! ```text
//!  client ─► front socket ─► [link to server] ─► sender ─► session socket ─► server
//!  client ◄─ front socket ◄─ sender ◄─ [link to client] ◄─ session socket ◄─ server
//! ```

mod link;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

pub use link::Path;
use link::{Link, Verdict};

/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// Receive buffer of each socket of the line (the kernel caps it at `net.core.rmem_max`).
const RECEIVE_BUFFER: usize = 4 << 20;
/// Sessions one delay line serves: a benchmark makes one per run, sequentially.
const MAX_SESSIONS: usize = 4096;

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
}

/// How late a send may be before it counts in [`DelayLineStats::late`].
pub const LATE: Duration = Duration::from_millis(1);

/// A running delay line. Dropping it stops its threads and frees its sockets.
pub struct DelayLine {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    stats: Mutex<DelayLineStats>,
}

/// Where a datagram goes when it is due.
enum Dest {
    Server(Arc<UdpSocket>),
    Client(Arc<UdpSocket>, SocketAddr),
}

type Due = (Instant, Vec<u8>, Dest);

/// One direction: the link's decisions, and the queue to its sender thread.
struct Direction {
    index: usize,
    link: Mutex<Link>,
    due: Mutex<mpsc::Sender<Due>>,
    shared: Arc<Shared>,
}

impl Direction {
    fn offer(&self, datagram: Vec<u8>, dest: Dest) {
        let now = Instant::now();
        // Deciding and queueing under one lock keeps the sender's queue in departure order.
        let mut link = lock(&self.link);
        let verdict = link.offer(now, datagram.len());
        let mut stats = lock(&self.shared.stats);
        match verdict {
            Verdict::Deliver(at) => {
                let _ = lock(&self.due).send((at, datagram, dest));
            }
            Verdict::Lost => stats.lost[self.index] += 1,
            Verdict::QueueFull => stats.queue_full[self.index] += 1,
        }
    }
}

impl DelayLine {
    /// Starts a delay line on `127.0.0.1:0` (or `[::1]:0`) in front of `server`, with `path`
    /// both ways; `seed` decides every loss and jitter.
    pub fn start(server: SocketAddr, path: Path, seed: u64) -> io::Result<DelayLine> {
        let loopback: std::net::IpAddr = if server.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        let front = Arc::new(bind((loopback, 0).into())?);
        let local_addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            stats: Mutex::new(DelayLineStats::default()),
        });
        let mut threads = Vec::new();
        let mut directions = Vec::new();
        for index in 0..2 {
            let (tx, rx) = mpsc::channel();
            let seed = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            directions.push(Arc::new(Direction {
                index,
                link: Mutex::new(Link::new(path.clone(), seed)),
                due: Mutex::new(tx),
                shared: shared.clone(),
            }));
            let shared = shared.clone();
            threads.push(spawn("delay-line send", move || {
                send_due(rx, index, &shared)
            })?);
        }
        let [to_server, to_client] = [directions[0].clone(), directions[1].clone()];
        let front_shared = shared.clone();
        threads.push(spawn("delay-line front", move || {
            run_front(front, server, to_server, to_client, &front_shared)
        })?);
        Ok(DelayLine {
            local_addr,
            shared,
            threads,
        })
    }

    /// The address to dial instead of the server.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the line has done so far.
    pub fn stats(&self) -> DelayLineStats {
        *lock(&self.shared.stats)
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A socket of the line: a large receive buffer (as far as the kernel allows), so that a
/// burst that comes while its thread waits for the CPU is queued rather than dropped.
fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
    socket.bind(&addr.into())?;
    let socket = UdpSocket::from(socket);
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

/// A thread of the line. It asks for real-time scheduling (`SCHED_FIFO`, which needs root or
/// `CAP_SYS_NICE`; without them it runs as any thread): the threads sleep most of the time,
/// and when they wake the datagram is due now, not when the compiler next to us yields.
fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<thread::JoinHandle<T>> {
    thread::Builder::new().name(name.into()).spawn(move || {
        let param = libc::sched_param { sched_priority: 10 };
        // SAFETY: sets this thread's own policy; `param` is a valid sched_param.
        let _ =
            unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
        f()
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads what clients send; a new client address gets a session socket and a thread that
/// reads the server's answers to it. Session threads end with this one.
fn run_front(
    front: Arc<UdpSocket>,
    server: SocketAddr,
    to_server: Arc<Direction>,
    to_client: Arc<Direction>,
    shared: &Arc<Shared>,
) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut readers = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((len, client)) = front.recv_from(&mut buf) else {
            continue; // a timeout to look at the flag, or an ICMP error from a gone client
        };
        let session = match sessions.get(&client) {
            Some(session) => session.clone(),
            None if sessions.len() < MAX_SESSIONS => {
                let Some(session) = open_session(server, client, &front, &to_client, shared) else {
                    continue;
                };
                readers.push(session.1);
                sessions.insert(client, session.0.clone());
                session.0
            }
            None => continue,
        };
        to_server.offer(buf[..len].to_vec(), Dest::Server(session));
    }
    for reader in readers {
        let _ = reader.join();
    }
}

fn open_session(
    server: SocketAddr,
    client: SocketAddr,
    front: &Arc<UdpSocket>,
    to_client: &Arc<Direction>,
    shared: &Arc<Shared>,
) -> Option<(Arc<UdpSocket>, thread::JoinHandle<()>)> {
    let socket = bind((front.local_addr().ok()?.ip(), 0).into()).ok()?;
    socket.connect(server).ok()?;
    let socket = Arc::new(socket);
    let (reader_socket, front, to_client, shared) = (
        socket.clone(),
        front.clone(),
        to_client.clone(),
        shared.clone(),
    );
    let reader = spawn("delay-line session", move || {
        let mut buf = vec![0u8; 65_536];
        while !shared.stop.load(Ordering::Relaxed) {
            if let Ok(len) = reader_socket.recv(&mut buf) {
                to_client.offer(buf[..len].to_vec(), Dest::Client(front.clone(), client));
            }
        }
    })
    .ok()?;
    Some((socket, reader))
}

/// Sends each datagram of one direction when it is due.
fn send_due(due: mpsc::Receiver<Due>, index: usize, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((at, datagram, dest)) = due.recv_timeout(POLL) else {
            continue;
        };
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let late = Instant::now().saturating_duration_since(at) > LATE;
        let sent = match dest {
            Dest::Server(socket) => socket.send(&datagram),
            Dest::Client(socket, client) => socket.send_to(&datagram, client),
        };
        let mut stats = lock(&shared.stats);
        if sent.is_ok() {
            stats.delivered[index] += 1;
        }
        if late {
            stats.late[index] += 1;
        }
    }
}
