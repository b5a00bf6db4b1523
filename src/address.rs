//! Between multiaddrs and socket addresses: `/ip4|ip6/<addr>/udp/<port>/quic-v1[/p2p/<peer>]`
//! for QUIC, and `…/quic-v1/webtransport[/certhash/<hash>]*[/p2p/<peer>]` for WebTransport.

use std::net::{IpAddr, SocketAddr};

use libp2p_core::{
    multiaddr::{Multiaddr, Protocol},
    multihash::Multihash,
};
use libp2p_identity::PeerId;

/// The multihash code of SHA-256, the only certificate hash browsers and go-libp2p use.
const SHA2_256: u64 = 0x12;

/// What a multiaddr of ours names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) socket: SocketAddr,
    pub(crate) peer: Option<PeerId>,
    /// `Some` for WebTransport, with the address's certificate hashes (SHA-256 only).
    pub(crate) webtransport: Option<Vec<Multihash<64>>>,
}

/// The socket address and optional peer id of a QUIC v1 multiaddr; `None` for anything else.
pub fn parse(addr: &Multiaddr) -> Option<(SocketAddr, Option<PeerId>)> {
    let target = parse_target(addr)?;
    target
        .webtransport
        .is_none()
        .then_some((target.socket, target.peer))
}

/// A QUIC v1 or WebTransport multiaddr; `None` for anything else, and for certificate hashes
/// other than SHA-256 ones.
pub(crate) fn parse_target(addr: &Multiaddr) -> Option<Target> {
    let mut parts = addr.iter().peekable();
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
    let webtransport = match parts.peek() {
        Some(Protocol::WebTransport) => {
            parts.next();
            let mut hashes = Vec::new();
            while let Some(Protocol::Certhash(hash)) = parts.peek() {
                if hash.code() != SHA2_256 || hash.digest().len() != 32 {
                    return None;
                }
                hashes.push(*hash);
                parts.next();
            }
            Some(hashes)
        }
        _ => None,
    };
    let peer = match parts.next() {
        None => None,
        Some(Protocol::P2p(peer)) => Some(peer),
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Target {
        socket: SocketAddr::new(ip, port),
        peer,
        webtransport,
    })
}

/// The QUIC v1 multiaddr of a socket address.
pub fn to_multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

/// The WebTransport multiaddr of a socket address whose listener has these certificates.
pub(crate) fn to_webtransport_multiaddr(addr: SocketAddr, hashes: &[Multihash<64>]) -> Multiaddr {
    hashes.iter().fold(
        to_multiaddr(addr).with(Protocol::WebTransport),
        |addr, hash| addr.with(Protocol::Certhash(*hash)),
    )
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
            "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
            "/udp/4001/quic-v1",
            "",
        ] {
            let addr: Multiaddr = text.parse().unwrap();
            assert_eq!(parse(&addr), None, "{text}");
        }
    }

    fn hash(byte: u8) -> Multihash<64> {
        Multihash::wrap(SHA2_256, &[byte; 32]).unwrap()
    }

    #[test]
    fn webtransport_addresses_round_trip_with_their_hashes() {
        let socket: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let peer = PeerId::random();
        let addr = to_webtransport_multiaddr(socket, &[hash(1), hash(2)]);
        let target = parse_target(&addr.clone().with(Protocol::P2p(peer))).unwrap();
        assert_eq!(target.socket, socket);
        assert_eq!(target.peer, Some(peer));
        assert_eq!(target.webtransport, Some(vec![hash(1), hash(2)]));
        // Not a QUIC address for the public parser.
        assert_eq!(parse(&addr), None);
        let bare: Multiaddr = "/ip6/::1/udp/0/quic-v1/webtransport".parse().unwrap();
        assert_eq!(parse_target(&bare).unwrap().webtransport, Some(vec![]));
    }

    #[test]
    fn webtransport_addresses_with_other_hashes_or_extra_parts_are_refused() {
        let sha1 = Multihash::<64>::wrap(0x11, &[0; 20]).unwrap();
        let base = to_multiaddr("127.0.0.1:1".parse().unwrap()).with(Protocol::WebTransport);
        for addr in [
            base.clone().with(Protocol::Certhash(sha1)),
            base.clone().with(Protocol::Certhash(
                Multihash::wrap(SHA2_256, &[0; 16]).unwrap(),
            )),
            base.clone().with(Protocol::WebTransport),
            base.clone()
                .with(Protocol::Certhash(hash(1)))
                .with(Protocol::Udp(1)),
            to_multiaddr("127.0.0.1:1".parse().unwrap()).with(Protocol::Certhash(hash(1))),
        ] {
            assert_eq!(parse_target(&addr), None, "{addr}");
        }
    }
}
