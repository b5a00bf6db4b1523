//! Any multiaddr either parses into a socket address or is refused with an error: never a
//! panic, whether it is parsed, listened on or dialed.

use std::net::{Ipv4Addr, Ipv6Addr};

use libp2p_core::{multiaddr::Protocol, transport::ListenerId, Multiaddr, Transport as _};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::{tokio::Transport, Config};
use proptest::prelude::*;

fn protocol() -> impl Strategy<Value = Protocol<'static>> {
    prop_oneof![
        any::<u32>().prop_map(|ip| Protocol::Ip4(Ipv4Addr::from(ip))),
        any::<u128>().prop_map(|ip| Protocol::Ip6(Ipv6Addr::from(ip))),
        any::<u16>().prop_map(Protocol::Udp),
        any::<u16>().prop_map(Protocol::Tcp),
        Just(Protocol::QuicV1),
        Just(Protocol::Quic),
        Just(Protocol::WebTransport),
        Just(Protocol::P2pCircuit),
        any::<[u8; 32]>().prop_map(|_| Protocol::P2p(PeerId::random())),
        "[a-z]{1,10}".prop_map(|name| Protocol::Dns4(name.into())),
        any::<u64>().prop_map(Protocol::Memory),
    ]
}

/// Mostly well-formed QUIC addresses with a twist, plus arbitrary sequences.
fn multiaddr() -> impl Strategy<Value = Multiaddr> {
    let quic_like = (
        prop_oneof![
            Just(Protocol::Ip4(Ipv4Addr::LOCALHOST)),
            Just(Protocol::Ip6(Ipv6Addr::LOCALHOST)),
            Just(Protocol::Ip4(Ipv4Addr::UNSPECIFIED)),
        ],
        any::<u16>(),
        prop::collection::vec(protocol(), 0..3),
    )
        .prop_map(|(ip, port, tail)| {
            let mut addr = Multiaddr::empty()
                .with(ip)
                .with(Protocol::Udp(port))
                .with(Protocol::QuicV1);
            for p in tail {
                addr.push(p);
            }
            addr
        });
    let anything = prop::collection::vec(protocol(), 0..6).prop_map(|ps| ps.into_iter().collect());
    prop_oneof![quic_like, anything]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsing_never_panics_and_round_trips(addr in multiaddr()) {
        if let Some((socket, peer)) = libp2p_quinn::parse_multiaddr(&addr) {
            let mut expected = libp2p_quinn::to_multiaddr(socket);
            if let Some(peer) = peer {
                expected.push(Protocol::P2p(peer));
            }
            prop_assert_eq!(expected, addr);
        }
    }

    #[test]
    fn raw_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(addr) = Multiaddr::try_from(bytes) {
            let _ = libp2p_quinn::parse_multiaddr(&addr);
        }
    }
}

#[test]
fn listening_and_dialing_never_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let transport =
            std::cell::RefCell::new(Transport::new(Config::new(&Keypair::generate_ed25519())));
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
        runner
            .run(&multiaddr(), |addr| {
                let mut transport = transport.borrow_mut();
                // Port 0 on loopback only: never bind or dial anything else.
                let (socket, _) = match libp2p_quinn::parse_multiaddr(&addr) {
                    Some(parsed) => parsed,
                    // A WebTransport listen address: listened on like QUIC's; no dial without
                    // a certificate hash.
                    None if webtransport_socket(&addr).is_some() => {
                        prop_assert!(transport.dial(addr.clone(), common_dial_opts()).is_err());
                        webtransport_socket(&addr).unwrap()
                    }
                    None => {
                        prop_assert!(transport
                            .listen_on(ListenerId::next(), addr.clone())
                            .is_err());
                        prop_assert!(transport.dial(addr, common_dial_opts()).is_err());
                        return Ok(());
                    }
                };
                if socket.ip().is_loopback() && socket.port() == 0 {
                    let id = ListenerId::next();
                    let listened = transport.listen_on(id, addr.clone());
                    if listened.is_ok() {
                        transport.remove_listener(id);
                    }
                }
                Ok(())
            })
            .unwrap();
    });
}

/// The socket of `/ip…/udp/…/quic-v1/webtransport[/p2p/…]` (no certhash), if `addr` is one.
fn webtransport_socket(addr: &Multiaddr) -> Option<(std::net::SocketAddr, Option<PeerId>)> {
    let mut parts: Vec<Protocol> = addr.iter().collect();
    let peer = match parts.last() {
        Some(Protocol::P2p(peer)) => {
            let peer = *peer;
            parts.pop();
            Some(peer)
        }
        _ => None,
    };
    if parts.pop() != Some(Protocol::WebTransport) {
        return None;
    }
    let quic: Multiaddr = parts.into_iter().collect();
    libp2p_quinn::parse_multiaddr(&quic).map(|(socket, _)| (socket, peer))
}

fn common_dial_opts() -> libp2p_core::transport::DialOpts {
    libp2p_core::transport::DialOpts {
        role: libp2p_core::Endpoint::Dialer,
        port_use: libp2p_core::transport::PortUse::New,
    }
}
