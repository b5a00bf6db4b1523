//! Hole punching for DCUtR: a dial as listener sends UDP packets from a listening socket to the
//! peer, so that our NAT lets the peer's QUIC Initial in, and completes with the connection
//! that peer makes to us.
//!
//! DCUtR's B (the side that accepted the relayed connection) dials with
//! `role: Endpoint::Listener` at the moment the peer, A, dials it as a QUIC client. A NAT that
//! has seen nothing from us to A drops A's Initial, and quinn sends it again only a second
//! later; our packets open the mapping first, and B ends up the QUIC server, as the spec says.
//! See `docs/hole-punching.md`.

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{
    channel::oneshot, future::BoxFuture, stream::FuturesUnordered, FutureExt, StreamExt,
};
use libp2p_core::{
    multiaddr::Multiaddr,
    transport::{ListenerId, TransportEvent},
};
use libp2p_identity::PeerId;

use crate::{Connecting, Connection, Error};

type Output = (PeerId, Connection);
type Event = TransportEvent<Connecting, Error>;

/// How long a punch's packets are, as go-libp2p's and `libp2p-quic`'s.
pub(crate) const PACKET_LEN: usize = 64;

/// The hole punches under way, and the incoming connections the transport shakes hands with
/// meanwhile to see whose they are.
#[derive(Default)]
pub(crate) struct Punches {
    /// Punches by the address they send to; an entry whose dial was dropped is stale.
    waiting: HashMap<SocketAddr, Waiting>,
    /// Incoming connections accepted while a punch waits, their handshakes under way.
    arrivals: FuturesUnordered<BoxFuture<'static, Arrival>>,
}

struct Waiting {
    peer: PeerId,
    found: oneshot::Sender<Output>,
}

/// An incoming connection as its listener reported it, with its handshake done.
struct Arrival {
    listener_id: ListenerId,
    local_addr: Multiaddr,
    send_back_addr: Multiaddr,
    result: Result<Output, Error>,
}

impl Punches {
    /// Start punching from `socket` to `remote` for `peer`: the first packet leaves now (DCUtR
    /// timed this moment), the next ones from the returned future, until `peer` connects to
    /// one of our listeners or `timeout` passes.
    pub(crate) fn start(
        &mut self,
        socket: Arc<UdpSocket>,
        remote: SocketAddr,
        peer: PeerId,
        timeout: Duration,
    ) -> Result<BoxFuture<'static, Result<Output, Error>>, Error> {
        self.forget_ended();
        if self.waiting.contains_key(&remote) {
            return Err(Error::HolePunchInProgress(remote));
        }
        send(&socket, remote)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let (found, arrived) = oneshot::channel();
        self.waiting.insert(remote, Waiting { peer, found });
        tracing::debug!(%peer, %remote, "hole punch started");
        Ok(async move {
            let outcome = tokio::select! {
                // A connection handed over just as the time runs out is still taken.
                biased;
                arrived = arrived => arrived.map_err(|_| transport_dropped()),
                error = keep_sending(&socket, remote) => Err(error),
                () = tokio::time::sleep_until(deadline) => {
                    Err(Error::HandshakeTimedOut { addr: remote })
                }
            };
            match &outcome {
                Ok((_, connection)) => tracing::debug!(
                    %peer, %remote, from = %connection.remote_address(),
                    "hole punch done: the peer connected"
                ),
                Err(error) => tracing::debug!(%peer, %remote, %error, "hole punch failed"),
            }
            outcome
        }
        .boxed())
    }

    /// Take over `event` if it is an incoming connection and a punch waits: its handshake
    /// tells whose it is. Anything else is given back.
    pub(crate) fn divert(&mut self, event: Event) -> Option<Event> {
        self.forget_ended();
        match event {
            TransportEvent::Incoming {
                listener_id,
                upgrade,
                local_addr,
                send_back_addr,
            } if !self.waiting.is_empty() => {
                self.arrivals.push(
                    async move {
                        let result = upgrade.await;
                        Arrival {
                            listener_id,
                            local_addr,
                            send_back_addr,
                            result,
                        }
                    }
                    .boxed(),
                );
                None
            }
            event => Some(event),
        }
    }

    /// Drive the diverted handshakes: a connection from a peer we punch for completes that
    /// punch; any other outcome is handed on as an ordinary incoming connection.
    pub(crate) fn poll_handed_on(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        while let Poll::Ready(Some(arrival)) = self.arrivals.poll_next_unpin(cx) {
            let result = match arrival.result {
                Ok(output) => match self.claim(output) {
                    None => continue,
                    Some(output) => Ok(output),
                },
                Err(error) => Err(error),
            };
            return Poll::Ready(TransportEvent::Incoming {
                listener_id: arrival.listener_id,
                upgrade: Connecting::finished(result),
                local_addr: arrival.local_addr,
                send_back_addr: arrival.send_back_addr,
            });
        }
        Poll::Pending
    }

    /// Give `output` to a punch waiting for its peer, whichever address it punched (a NAT may
    /// have changed the peer's port); give it back if none takes it.
    fn claim(&mut self, mut output: Output) -> Option<Output> {
        let punched: Vec<SocketAddr> = self
            .waiting
            .iter()
            .filter(|(_, waiting)| waiting.peer == output.0)
            .map(|(remote, _)| *remote)
            .collect();
        for remote in punched {
            let Some(waiting) = self.waiting.remove(&remote) else {
                continue;
            };
            match waiting.found.send(output) {
                Ok(()) => return None,
                // That dial ended a moment ago.
                Err(back) => output = back,
            }
        }
        Some(output)
    }

    /// Drop the entries of punches whose dial ended (done, timed out or dropped).
    fn forget_ended(&mut self) {
        self.waiting
            .retain(|_, waiting| !waiting.found.is_canceled());
    }
}

/// Send a packet every [`pause`] until sending fails.
async fn keep_sending(socket: &UdpSocket, remote: SocketAddr) -> Error {
    let mut round = 0u32;
    loop {
        tokio::time::sleep(pause(round, random_u32())).await;
        if let Err(error) = send(socket, remote) {
            return error.into();
        }
        round = round.saturating_add(1);
    }
}

/// One punch packet. The socket is quinn's, non-blocking: a full send buffer loses this packet
/// of many rather than holding up the task.
fn send(socket: &UdpSocket, remote: SocketAddr) -> io::Result<()> {
    let mut random = [0; PACKET_LEN];
    fill_random(&mut random);
    tracing::trace!(%remote, "hole punch packet");
    match socket.send_to(&packet(random), remote) {
        Err(error) if error.kind() != io::ErrorKind::WouldBlock => Err(error),
        _ => Ok(()),
    }
}

/// The pause after the packet of `round` (from 0): 10 ms and a random part whose ceiling grows
/// as 10·(round+1)² ms up to 190 ms. The first packets follow closely (10–20 ms, then 10–50,
/// 10–100, 10–170), later ones come every 10–200 ms: go-libp2p's rhythm, kept within 200 ms.
pub(crate) fn pause(round: u32, random: u32) -> Duration {
    let ceiling = (10 * (round.min(4) + 1).pow(2)).min(190);
    Duration::from_millis(10 + u64::from(random % (ceiling + 1)))
}

/// A punch packet: random bytes in the shape of a QUIC long header of a version reserved to
/// be unknown (0x?a?a?a?a, RFC 9000 §15). Every QUIC stack must drop a packet of an unknown
/// version this short unanswered (RFC 9000 §5.2.2; quinn and quic-go do), so the packet can
/// neither touch a connection nor draw a stateless reset; fully random bytes, as go-libp2p
/// and `libp2p-quic` send, are a short header half of the time, which quic-go answers with a
/// stateless reset.
pub(crate) fn packet(mut bytes: [u8; PACKET_LEN]) -> [u8; PACKET_LEN] {
    // Long header form and the fixed bit.
    bytes[0] |= 0xc0;
    for byte in &mut bytes[1..5] {
        *byte = (*byte & 0xf0) | 0x0a;
    }
    bytes
}

fn random_u32() -> u32 {
    let mut bytes = [0; 4];
    fill_random(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// The system's randomness; it fails only on a broken OS, where a punch of zeros would do
/// as well (nothing depends on the bytes being secret).
fn fill_random(bytes: &mut [u8]) {
    let _ = aws_lc_rs::rand::fill(bytes);
}

fn transport_dropped() -> Error {
    Error::Io(io::Error::other(
        "the transport was dropped during the hole punch",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_start_quick_and_stay_within_10_to_200_ms() {
        let range = |round| {
            let all: Vec<u128> = (0..=1000)
                .chain([u32::MAX])
                .map(|random| pause(round, random).as_millis())
                .collect();
            (*all.iter().min().unwrap(), *all.iter().max().unwrap())
        };
        let ranges: Vec<_> = (0..6).map(range).collect();
        let expected = [
            (10, 20),
            (10, 50),
            (10, 100),
            (10, 170),
            (10, 200),
            (10, 200),
        ];
        assert_eq!(ranges, expected);
        assert_eq!(range(u32::MAX), (10, 200));
    }

    #[test]
    fn packets_are_long_headers_of_a_reserved_version() {
        for seed in [[0u8; PACKET_LEN], [0xff; PACKET_LEN], [0x5a; PACKET_LEN]] {
            let p = packet(seed);
            assert_eq!(p[0] & 0xc0, 0xc0, "long header, fixed bit");
            let version = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
            assert_eq!(version & 0x0f0f_0f0f, 0x0a0a_0a0a, "{version:#x}");
            assert_ne!(version, 1);
            assert_eq!(p[5..], seed[5..], "the rest stays random");
        }
    }
}
