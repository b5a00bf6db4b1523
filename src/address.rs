//! Between multiaddrs (`/ip4|ip6/<addr>/udp/<port>/quic-v1[/p2p/<peer>]`) and socket addresses.

use std::net::{IpAddr, SocketAddr};

use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_identity::PeerId;

/// The socket address and optional peer id of a QUIC v1 multiaddr; `None` for anything else.
pub fn parse(addr: &Multiaddr) -> Option<(SocketAddr, Option<PeerId>)> {
    let mut parts = addr.iter();
    let ip: IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let port = match parts.next()? {
        Protocol::Udp(port) => port,
        _ => return None,
    };
    if parts.next()? != Protocol::QuicV1 {
        return None;
    }
    let peer = match parts.next() {
        None => None,
        Some(Protocol::P2p(peer)) => Some(peer),
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((SocketAddr::new(ip, port), peer))
}

/// The QUIC v1 multiaddr of a socket address.
pub fn to_multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_v1_addresses_round_trip() {
        for text in ["/ip4/127.0.0.1/udp/4001/quic-v1", "/ip6/::1/udp/0/quic-v1"] {
            let addr: Multiaddr = text.parse().unwrap();
            let (socket, peer) = parse(&addr).unwrap();
            assert_eq!(peer, None);
            assert_eq!(to_multiaddr(socket), addr);
        }
    }

    #[test]
    fn peer_id_is_taken() {
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/10.0.0.1/udp/1/quic-v1/p2p/{peer}")
            .parse()
            .unwrap();
        assert_eq!(parse(&addr).unwrap().1, Some(peer));
    }

    #[test]
    fn everything_else_is_refused() {
        for text in [
            "/ip4/127.0.0.1/udp/4001",
            "/ip4/127.0.0.1/udp/4001/quic",
            "/ip4/127.0.0.1/tcp/4001/quic-v1",
            "/dns4/example.com/udp/4001/quic-v1",
            "/ip4/127.0.0.1/udp/4001/quic-v1/webtransport",
            "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
            "/udp/4001/quic-v1",
            "",
        ] {
            let addr: Multiaddr = text.parse().unwrap();
            assert_eq!(parse(&addr), None, "{text}");
        }
    }
}
