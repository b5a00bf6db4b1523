//! The front socket and the sessions: receiving datagrams and handing them to lanes.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::lane::{Lane, Output};
use super::{loopback_for, Direction, Shared};

/// Large enough for any UDP payload, so nothing is ever truncated.
pub(super) const MAX_DATAGRAM: usize = 65_535;

/// Datagrams waiting for a lane. When it is full the datagram is dropped (and
/// counted), like a router queue overflowing, instead of stalling the receiver.
const LANE_CAPACITY: usize = 4_096;

/// A receive loop gives up after this many unexplained errors in a row: a
/// healthy socket does not fail like that, and retrying would only spin a core.
/// Bounces (see [`is_bounce`]) don't count.
const MAX_CONSECUTIVE_RECV_ERRORS: u32 = 1_024;

/// Receives client datagrams on the front socket and hands each to its session.
pub(super) async fn run_front(
    front: Arc<UdpSocket>,
    server: SocketAddr,
    seed: u64,
    shared: Arc<Shared>,
) {
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
pub(super) fn is_bounce(error: &io::Error) -> bool {
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
