//! Hole punching in process: a dial as listener sends its packets from the listening socket at
//! the promised rhythm, stops when the peer connects or the time is up, takes one punch per
//! address, hands other peers' connections on, and needs a listener of the address's family.
//! A UDP socket stands in for the peer being punched to.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::{bounded, listen};
use futures::{channel::mpsc, future::poll_fn, StreamExt};
use libp2p_core::{
    transport::{DialOpts, PortUse, TransportError, TransportEvent},
    Endpoint, Multiaddr, Transport as _,
};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::{tokio::Transport, Config, Connecting, Error};

/// Upper bounds on timing allow this much for a loaded machine's scheduling.
const SLACK: Duration = Duration::from_millis(30);
/// Watching this long after a punch ended would see at least two more packets if it went on.
const AFTERWARDS: Duration = Duration::from_millis(450);

fn transport_with_timeout(keypair: &Keypair, timeout: Duration) -> Transport {
    let mut config = Config::new(keypair);
    config.handshake_timeout = timeout;
    Transport::new(config)
}

fn punch_opts(port_use: PortUse) -> DialOpts {
    DialOpts {
        role: Endpoint::Listener,
        port_use,
    }
}

fn quic_addr(socket: SocketAddr, peer: PeerId) -> Multiaddr {
    libp2p_quinn::to_multiaddr(socket).with_p2p(peer).unwrap()
}

fn socket_of(addr: &Multiaddr) -> SocketAddr {
    libp2p_quinn::parse_multiaddr(addr).unwrap().0
}

fn some_peer() -> PeerId {
    PeerId::random()
}

/// One datagram as the stand-in peer received it.
struct Packet {
    at: Instant,
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// A UDP socket on loopback whose thread notes every datagram and when it came.
struct Capture {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Packet>>,
}

impl Capture {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut packets = Vec::new();
            let mut buf = [0u8; 2048];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    let at = Instant::now();
                    packets.push(Packet {
                        at,
                        from,
                        bytes: buf[..len].to_vec(),
                    });
                }
            }
            packets
        });
        Self { addr, stop, thread }
    }

    /// The packets, once nothing has come for [`AFTERWARDS`] past `ended` would have.
    async fn finish_after(self, ended: Instant) -> Vec<Packet> {
        tokio::time::sleep_until((ended + AFTERWARDS).into()).await;
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

type Event = TransportEvent<Connecting, Error>;

/// Poll `transport` on a task of its own and pass its events on, as a `Swarm` would.
fn drive(
    mut transport: Transport,
) -> (mpsc::UnboundedReceiver<Event>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded();
    let task = tokio::spawn(async move {
        loop {
            let event = poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await;
            if tx.unbounded_send(event).is_err() {
                return;
            }
        }
    });
    (rx, task)
}

/// The next incoming connection among `events`, its handshake done.
async fn next_incoming(events: &mut mpsc::UnboundedReceiver<Event>) -> (PeerId, SocketAddr) {
    loop {
        match bounded("incoming", events.next())
            .await
            .expect("driver alive")
        {
            TransportEvent::Incoming {
                upgrade,
                send_back_addr,
                ..
            } => {
                let (peer, _) = bounded("handshake", upgrade).await.expect("handshake");
                return (peer, socket_of(&send_back_addr));
            }
            TransportEvent::NewAddress { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A long header of a version of the reserved form 0x?a?a?a?a.
fn is_reserved_version_long_header(bytes: &[u8]) -> bool {
    let version = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    bytes[0] & 0xc0 == 0xc0 && version & 0x0f0f_0f0f == 0x0a0a_0a0a
}

#[tokio::test]
async fn punch_packets_leave_the_listening_socket_quickly_at_first_until_the_timeout() {
    let timeout = Duration::from_millis(1500);
    let mut b = transport_with_timeout(&Keypair::generate_ed25519(), timeout);
    let b_socket = socket_of(&listen(&mut b, "/ip4/127.0.0.1/udp/0/quic-v1").await);
    let peer = Capture::start();

    let started = Instant::now();
    let punch = b
        .dial(
            quic_addr(peer.addr, some_peer()),
            punch_opts(PortUse::Reuse),
        )
        .expect("punch starts");
    let result = bounded("punch", punch).await;
    let ended = Instant::now();
    assert!(
        matches!(result, Err(Error::HandshakeTimedOut { addr }) if addr == peer.addr),
        "{:?}",
        result.map(|(p, _)| p)
    );
    let took = ended - started;
    assert!(took >= timeout && took <= timeout + SLACK * 3, "{took:?}");

    let packets = peer.finish_after(ended).await;
    assert!(
        packets.len() >= 8,
        "{} packets in {timeout:?}",
        packets.len()
    );
    for packet in &packets {
        assert_eq!(packet.from, b_socket, "sent from the listening socket");
        assert_eq!(packet.bytes.len(), 64);
        assert!(is_reserved_version_long_header(&packet.bytes));
    }
    assert!(
        packets[0].at - started <= SLACK,
        "the first packet leaves at once"
    );
    let gaps: Vec<Duration> = packets.windows(2).map(|w| w[1].at - w[0].at).collect();
    for gap in &gaps {
        // The receiving thread may note a packet a little late, the next one on time.
        assert!(*gap >= Duration::from_millis(7), "{gaps:?}");
        assert!(*gap <= Duration::from_millis(200) + SLACK, "{gaps:?}");
    }
    // Quick at first: the first three pauses are at most 20, 50 and 100 ms.
    let first_three: Duration = gaps[..3].iter().sum();
    assert!(
        first_three <= Duration::from_millis(170) + SLACK * 3,
        "{gaps:?}"
    );
    let last = packets.last().unwrap().at;
    assert!(
        last <= ended + SLACK,
        "a packet {:?} after the end",
        last - ended
    );
}

#[tokio::test]
async fn a_punch_ends_with_the_peers_connection_from_any_port_and_stops_sending() {
    let a_key = Keypair::generate_ed25519();
    let a_id = a_key.public().to_peer_id();
    let mut b = transport_with_timeout(&Keypair::generate_ed25519(), Duration::from_secs(10));
    let b_addr = listen(&mut b, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let peer = Capture::start();
    // The punch goes to one address; A connects from another, as behind a NAT that changed
    // its port.
    let punch = b
        .dial(quic_addr(peer.addr, a_id), punch_opts(PortUse::Reuse))
        .expect("punch starts");
    let (mut events, driver) = drive(b);
    let mut a = Transport::new(Config::new(&a_key));
    let a_dial = a.dial(b_addr, common::dial_opts()).unwrap();
    let (punched, dialed) = futures::join!(bounded("punch", punch), bounded("dial", a_dial));
    let ended = Instant::now();
    let (peer_id, connection) = punched.expect("the punch yields A's connection");
    dialed.expect("A's dial succeeds");
    assert_eq!(peer_id, a_id);
    assert_ne!(connection.remote_address(), peer.addr);
    assert_eq!(
        connection.quinn().side(),
        quinn::Side::Server,
        "B is the QUIC server"
    );

    let packets = peer.finish_after(ended).await;
    assert!(!packets.is_empty());
    let last = packets.last().unwrap().at;
    assert!(
        last <= ended + SLACK,
        "a packet {:?} after success",
        last - ended
    );
    // The connection went to the punch, not to the listener's events.
    while let Ok(event) = events.try_recv() {
        assert!(
            matches!(event, TransportEvent::NewAddress { .. }),
            "{event:?}"
        );
    }
    driver.abort();
}

#[tokio::test]
async fn a_second_punch_to_an_address_fails_until_the_first_ends() {
    let mut b = transport_with_timeout(&Keypair::generate_ed25519(), Duration::from_millis(300));
    listen(&mut b, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let (peer, other) = (Capture::start(), Capture::start());
    let first = b
        .dial(
            quic_addr(peer.addr, some_peer()),
            punch_opts(PortUse::Reuse),
        )
        .expect("first punch");
    // Whatever the peer and the port use: the address is taken.
    for port_use in [PortUse::Reuse, PortUse::New] {
        match b.dial(quic_addr(peer.addr, some_peer()), punch_opts(port_use)) {
            Err(TransportError::Other(Error::HolePunchInProgress(addr))) => {
                assert_eq!(addr, peer.addr)
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a second punch to {} started", peer.addr),
        }
    }
    // Another address is free.
    let second = b
        .dial(quic_addr(other.addr, some_peer()), punch_opts(PortUse::New))
        .expect("a punch to another address");
    // Once the first has timed out, the address is free again; so it is once a punch is dropped.
    let result = bounded("first punch", first).await;
    assert!(matches!(result, Err(Error::HandshakeTimedOut { .. })));
    drop(second);
    for addr in [peer.addr, other.addr] {
        let again = b.dial(quic_addr(addr, some_peer()), punch_opts(PortUse::Reuse));
        assert!(again.is_ok(), "punch to {addr} after the first ended");
    }
}

#[tokio::test]
async fn another_peers_connection_during_a_punch_is_handed_on_as_incoming() {
    let mut b = transport_with_timeout(&Keypair::generate_ed25519(), Duration::from_secs(10));
    let b_addr = listen(&mut b, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let peer = Capture::start();
    let punch = b
        .dial(quic_addr(peer.addr, some_peer()), punch_opts(PortUse::New))
        .expect("punch starts");
    let punch = tokio::spawn(punch);
    let (mut events, driver) = drive(b);

    let c_key = Keypair::generate_ed25519();
    let mut c = Transport::new(Config::new(&c_key));
    let c_dial = c.dial(b_addr, common::dial_opts()).unwrap();
    let (dialed, (incoming_peer, from)) =
        futures::join!(bounded("dial", c_dial), next_incoming(&mut events));
    dialed.expect("C's dial succeeds");
    assert_eq!(incoming_peer, c_key.public().to_peer_id());
    assert_ne!(from, peer.addr);
    assert!(!punch.is_finished(), "the punch goes on");
    punch.abort();
    driver.abort();
    let _ = peer.finish_after(Instant::now()).await;
}

#[tokio::test]
async fn a_punch_without_a_listener_of_the_family_fails_at_once() {
    let mut b = transport_with_timeout(&Keypair::generate_ed25519(), Duration::from_secs(10));
    let v4: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    let v6: SocketAddr = "[::1]:4001".parse().unwrap();
    let fails_without_listener = |b: &mut Transport, addr| {
        matches!(
            b.dial(quic_addr(addr, some_peer()), punch_opts(PortUse::Reuse)),
            Err(TransportError::Other(
                Error::NoActiveListenerForDialAsListener
            ))
        )
    };
    assert!(fails_without_listener(&mut b, v4));
    listen(&mut b, "/ip6/::1/udp/0/quic-v1").await;
    assert!(
        fails_without_listener(&mut b, v4),
        "an IPv6 listener does not do"
    );
    // Without a peer id there is no telling the peer's connection from others.
    let no_peer = libp2p_quinn::to_multiaddr(v6);
    assert!(matches!(
        b.dial(no_peer, punch_opts(PortUse::Reuse)),
        Err(TransportError::MultiaddrNotSupported(_))
    ));
}

#[tokio::test]
async fn quinn_drops_punch_packets_unanswered() {
    // Punch packets as the transport sends them.
    let mut b = transport_with_timeout(&Keypair::generate_ed25519(), Duration::from_millis(300));
    listen(&mut b, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let capture = Capture::start();
    let punch = b
        .dial(
            quic_addr(capture.addr, some_peer()),
            punch_opts(PortUse::Reuse),
        )
        .unwrap();
    let _ = bounded("punch", punch).await;
    let packets = capture.finish_after(Instant::now()).await;
    assert!(packets.len() >= 3);

    // Sent to a listener, they draw nothing: the first answer is to the probe after them, a
    // datagram of an unknown version big enough to deserve a Version Negotiation packet.
    let mut l = common::transport();
    let l_socket = socket_of(&listen(&mut l, "/ip4/127.0.0.1/udp/0/quic-v1").await);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for packet in &packets {
        socket.send_to(&packet.bytes, l_socket).await.unwrap();
    }
    let mut probe = vec![0u8; 1200];
    probe[0] = 0xc0;
    probe[1..5].copy_from_slice(&0x1a2a_3a4a_u32.to_be_bytes());
    probe[5] = 8; // destination connection id length, then 8 bytes
    probe[14] = 8; // source connection id length, then 8 bytes
    socket.send_to(&probe, l_socket).await.unwrap();
    let mut buf = [0u8; 1500];
    let (len, _) = bounded("an answer", socket.recv_from(&mut buf))
        .await
        .unwrap();
    let version = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    assert!(
        len > 5 && buf[0] & 0x80 != 0 && version == 0,
        "not a version negotiation"
    );
}
