//! The line's threads: the front reads clients, a session per client reads the server's
//! answers, and a sender per direction sends each datagram when it is due.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::{atomic::Ordering, mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use super::{
    link::{Link, Verdict},
    lock,
    os::{self, LINE_PRIORITY, POLL},
    Shared, LATE,
};

/// Sessions one delay line serves: a benchmark makes one per run, sequentially.
const MAX_SESSIONS: usize = 4096;

/// Where a datagram goes when it is due.
pub(super) enum Dest {
    Server(Arc<UdpSocket>),
    Client(Arc<UdpSocket>, SocketAddr),
}

type Due = (Instant, Vec<u8>, Dest);

/// One direction: the link's decisions and the queue to its sender thread, under one lock so
/// that the sender's queue is in departure order whichever thread offers.
pub(super) struct Direction {
    index: usize,
    state: Mutex<(Link, mpsc::Sender<Due>)>,
    shared: Arc<Shared>,
}

impl Direction {
    /// A direction and the thread that sends its datagrams.
    pub(super) fn start(
        index: usize,
        link: Link,
        shared: &Arc<Shared>,
    ) -> std::io::Result<(Arc<Direction>, thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel();
        let sender_shared = shared.clone();
        let sender = os::spawn("delay-line send", LINE_PRIORITY, move || {
            send_due(rx, index, &sender_shared)
        })?;
        let direction = Direction {
            index,
            state: Mutex::new((link, tx)),
            shared: shared.clone(),
        };
        Ok((Arc::new(direction), sender))
    }

    /// A datagram that reached the line at `arrived`.
    fn offer(&self, arrived: Instant, datagram: Vec<u8>, dest: Dest) {
        let mut state = lock(&self.state);
        let verdict = state.0.offer(arrived, datagram.len());
        if let Verdict::Deliver { at, .. } = verdict {
            let _ = state.1.send((at, datagram, dest));
        }
        drop(state);
        let i = self.index;
        self.shared.count(|stats| match verdict {
            Verdict::Deliver { queued, .. } => {
                stats.max_queue_delay[i] = stats.max_queue_delay[i].max(queued)
            }
            Verdict::Lost => stats.lost[i] += 1,
            Verdict::QueueFull => stats.queue_full[i] += 1,
        });
    }
}

/// Reads what clients send; a new client address gets a session socket and a thread that
/// reads the server's answers to it. Session threads end with this one.
pub(super) fn run_front(
    front: Arc<UdpSocket>,
    server: SocketAddr,
    [to_server, to_client]: [Arc<Direction>; 2],
    shared: Arc<Shared>,
) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut readers = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((len, client, arrived)) = os::recv_stamped(&front, &mut buf) else {
            continue; // a timeout to look at the flag, or an ICMP error from a gone client
        };
        let session = match sessions.get(&client) {
            Some(session) => session.clone(),
            None if sessions.len() < MAX_SESSIONS => {
                let Some((socket, reader)) = open_session(server, client, &front, &to_client)
                else {
                    continue;
                };
                readers.push(reader);
                sessions.insert(client, socket.clone());
                socket
            }
            None => continue,
        };
        to_server.offer(arrived, buf[..len].to_vec(), Dest::Server(session));
    }
    for reader in readers {
        let _ = reader.join();
    }
}

/// A socket of its own towards the server for `client`, and the thread that reads it.
fn open_session(
    server: SocketAddr,
    client: SocketAddr,
    front: &Arc<UdpSocket>,
    to_client: &Arc<Direction>,
) -> Option<(Arc<UdpSocket>, thread::JoinHandle<()>)> {
    let socket = os::bind((front.local_addr().ok()?.ip(), 0).into()).ok()?;
    socket.connect(server).ok()?;
    let socket = Arc::new(socket);
    let (reader, front, to_client) = (socket.clone(), front.clone(), to_client.clone());
    let thread = os::spawn("delay-line session", LINE_PRIORITY, move || {
        let mut buf = vec![0u8; 65_536];
        while !to_client.shared.stop.load(Ordering::Relaxed) {
            if let Ok((len, _, arrived)) = os::recv_stamped(&reader, &mut buf) {
                let dest = Dest::Client(front.clone(), client);
                to_client.offer(arrived, buf[..len].to_vec(), dest);
            }
        }
    })
    .ok()?;
    Some((socket, thread))
}

/// Sends each datagram of one direction when it is due.
fn send_due(due: mpsc::Receiver<Due>, index: usize, shared: &Shared) {
    let stopped = || shared.stop.load(Ordering::Relaxed);
    while !stopped() {
        let Ok((at, datagram, dest)) = due.recv_timeout(POLL) else {
            continue;
        };
        if !os::sleep_until(at, stopped) {
            return;
        }
        let late = Instant::now().saturating_duration_since(at);
        let sent = match dest {
            Dest::Server(socket) => socket.send(&datagram),
            Dest::Client(socket, client) => socket.send_to(&datagram, client),
        };
        count_send(shared, index, sent.is_ok(), late);
    }
}

fn count_send(shared: &Shared, index: usize, sent: bool, late: Duration) {
    shared.count(|stats| {
        stats.delivered[index] += u64::from(sent);
        stats.late[index] += u64::from(late > LATE);
        stats.max_late[index] = stats.max_late[index].max(late);
    });
}
