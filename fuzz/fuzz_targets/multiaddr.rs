//! The dialer's and listener's reading of a multiaddr, certificate hashes included: any bytes
//! as a binary multiaddr, and as its text form.
//!
//! Asserts, besides never panicking, for every address the transport takes:
//! - it is exactly the address rebuilt from what was read (socket, hashes, peer): nothing in
//!   it was skipped or read loosely;
//! - every hash is a SHA-256 one of 32 bytes, and the public `parse_multiaddr` agrees;
//! - the dialer's CONNECT to it is a URL our own listener accepts;
//! - a text address reads back the same from its printed form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use libp2p_quinn::fuzzing::{self, web_transport_proto::ConnectRequest, Multiaddr, Protocol};
use libp2p_quinn_fuzz::{run, Trickle};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(addr) = Multiaddr::try_from(bytes.to_vec()) {
        check(&addr);
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(addr) = text.parse::<Multiaddr>() {
            let printed = addr.to_string();
            assert_eq!(
                printed.parse::<Multiaddr>().ok().as_ref(),
                Some(&addr),
                "{printed}"
            );
            check(&addr);
        }
    }
});

fn check(addr: &Multiaddr) {
    let public = libp2p_quinn::parse_multiaddr(addr);
    let Some(target) = fuzzing::parse_multiaddr(addr) else {
        assert_eq!(public, None);
        return;
    };
    let mut rebuilt = match &target.certhashes {
        Some(hashes) => fuzzing::webtransport_multiaddr(target.socket, hashes),
        None => libp2p_quinn::to_multiaddr(target.socket),
    };
    if let Some(peer) = target.peer {
        rebuilt.push(Protocol::P2p(peer));
    }
    assert_eq!(&rebuilt, addr, "read as {target:?}");
    assert_eq!(
        public,
        target
            .certhashes
            .is_none()
            .then_some((target.socket, target.peer))
    );
    let Some(hashes) = target.certhashes else {
        return;
    };
    for hash in &hashes {
        assert_eq!((hash.code(), hash.digest().len()), (0x12, 32));
    }
    let url = fuzzing::connect_url(target.socket);
    let mut request = Vec::new();
    ConnectRequest::new(url.clone())
        .encode(&mut request)
        .expect("a CONNECT to a socket address fits");
    let (read, refusal) = run(fuzzing::connect_request(&mut Trickle::new(&request, 0)))
        .expect("our CONNECT reads back");
    assert_eq!(read.url, url);
    assert_eq!(refusal, None, "our listener refuses our dialer's {url}");
    assert_eq!(url.port_or_known_default(), Some(target.socket.port()));
}
