#![cfg(feature = "test-util")]

//! Bad input gets a clear, typed error and nothing is lost: malformed addresses, the wrong
//! peer, a silent port, garbage datagrams, a peer that vanishes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p_core::{
    transport::{ListenerId, TransportError},
    Multiaddr, Transport as _,
};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::{tokio::Transport, Config, Error, StreamError};

#[tokio::test]
async fn unsupported_addresses_are_refused_not_panicked_on() {
    let mut t = transport();
    for text in [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip4/127.0.0.1/udp/4001/quic",
        "/ip4/127.0.0.1/udp/4001",
        "/dns4/localhost/udp/4001/quic-v1",
        "/ip4/127.0.0.1/udp/4001/quic-v1/webtransport/webtransport",
        "/ip4/127.0.0.1/udp/4001/webtransport",
        "/memory/1",
    ] {
        let addr: Multiaddr = text.parse().unwrap();
        assert!(
            matches!(t.listen_on(ListenerId::next(), addr.clone()), Err(TransportError::MultiaddrNotSupported(a)) if a == addr),
            "listen {text}"
        );
        assert!(
            matches!(t.dial(addr.clone(), dial_opts()), Err(TransportError::MultiaddrNotSupported(a)) if a == addr),
            "dial {text}"
        );
    }
    // A WebTransport listener makes its own certificates; a dial needs their hashes, SHA-256
    // ones, to check the listener's.
    let certhash = "uEiDOCHuRe1JXJ9ptk5gPWR8Qtabd_1a5BzF9knD3h7_hFw";
    let sha1 = "uERQAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (text, listen, dial) in [
        (
            format!("/ip4/127.0.0.1/udp/4001/quic-v1/webtransport/certhash/{certhash}"),
            false,
            true,
        ),
        (
            "/ip4/127.0.0.1/udp/4001/quic-v1/webtransport".to_owned(),
            true,
            false,
        ),
        (
            format!("/ip4/127.0.0.1/udp/4001/quic-v1/webtransport/certhash/{sha1}"),
            false,
            false,
        ),
    ] {
        let addr: Multiaddr = text.parse().unwrap();
        let refused = |r: &Result<(), TransportError<Error>>| matches!(r, Err(TransportError::MultiaddrNotSupported(a)) if *a == addr);
        if !listen {
            assert!(
                refused(&t.listen_on(ListenerId::next(), addr.clone())),
                "listen {text}"
            );
        }
        if !dial {
            let dialed = t.dial(addr.clone(), dial_opts()).map(|_| ());
            assert!(refused(&dialed), "dial {text}");
        }
    }
    // Nowhere to dial to.
    for text in [
        "/ip4/0.0.0.0/udp/4001/quic-v1",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ] {
        assert!(
            t.dial(text.parse().unwrap(), dial_opts()).is_err(),
            "{text}"
        );
    }
}

#[tokio::test]
async fn dialing_the_wrong_peer_fails_with_both_ids() {
    init_tracing();
    let mut listener = transport();
    let addr = listen(&mut listener, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let impostor = PeerId::random();
    let mut dialer = transport();
    let dial = dialer
        .dial(addr.clone().with_p2p(impostor).unwrap(), dial_opts())
        .unwrap();
    let (dialed, _) = futures::join!(bounded("dial", dial), accept(&mut listener));
    match dialed {
        Err(Error::PeerIdMismatch(mismatch)) => assert_eq!(mismatch.expected, impostor),
        Err(other) => panic!("expected PeerIdMismatch, got {other:?}"),
        Ok(_) => panic!("a connection to the wrong peer was handed out"),
    }
    // The listener still takes a dial to the right peer.
    let dial = dialer.dial(addr, dial_opts()).unwrap();
    let (dialed, _) = futures::join!(bounded("second dial", dial), accept(&mut listener));
    dialed.expect("right peer");
}

#[tokio::test]
async fn handshake_with_a_silent_port_times_out() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = libp2p_quinn::to_multiaddr(silent.local_addr().unwrap());
    let mut config = Config::new(&Keypair::generate_ed25519());
    config.handshake_timeout = Duration::from_millis(500);
    let mut t = Transport::new(config);
    let started = Instant::now();
    let result = bounded("dial", t.dial(addr, dial_opts()).unwrap()).await;
    assert!(
        matches!(result, Err(Error::HandshakeTimedOut { .. })),
        "{:?}",
        result.err()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn garbage_datagrams_do_not_disturb_the_listener() {
    use rand::{Rng, SeedableRng};
    init_tracing();
    let mut listener = transport();
    let addr = listen(&mut listener, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let (target, _) = libp2p_quinn::parse_multiaddr(&addr).unwrap();
    let sender = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for i in 0..2000 {
        let len = rng.gen_range(1..1500);
        let mut datagram: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if i % 4 == 0 {
            // Looks like a QUIC long-header Initial, version 1.
            datagram[0] = 0xc0;
            if datagram.len() > 5 {
                datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        sender.send_to(&datagram, target).await.unwrap();
    }
    // A real peer still gets in, and streams work.
    let dialer_config = Config::new(&Keypair::generate_ed25519());
    let mut dialer = Transport::new(dialer_config);
    let dial = dialer.dial(addr, dial_opts()).unwrap();
    let (dialed, (_, accepted)) = futures::join!(
        bounded("dial", dial),
        accept_skipping_garbage(&mut listener)
    );
    let (listener_id, dialer_conn) = dialed.expect("dial after garbage");
    let dialer_peer = Peer::new(PeerId::random(), listener_id, dialer_conn, dialer.ledgers());
    let mut listener_peer = Peer::new(listener_id, PeerId::random(), accepted, listener.ledgers());
    exchange(&dialer_peer, &mut listener_peer).await;
}

/// Accept the next connection whose handshake succeeds: garbage that passes as an Initial
/// may start handshakes that fail.
async fn accept_skipping_garbage(transport: &mut Transport) -> (PeerId, libp2p_quinn::Connection) {
    use libp2p_core::transport::TransportEvent;
    use std::pin::Pin;
    loop {
        let event = bounded(
            "incoming",
            futures::future::poll_fn(|cx| Pin::new(&mut *transport).poll(cx)),
        )
        .await;
        if let TransportEvent::Incoming { upgrade, .. } = event {
            if let Ok(Ok(done)) = tokio::time::timeout(STEP, upgrade).await {
                return done;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peer_fails_reads_and_writes_within_the_idle_timeout() {
    use libp2p_quinn::test_util::Direction;
    init_tracing();
    let idle = Duration::from_millis(1500);
    let short = |kp: &Keypair| {
        let mut c = Config::new(kp);
        c.max_idle_timeout = idle.as_millis() as u32;
        c.keep_alive_interval = Duration::from_millis(300);
        c
    };
    let pair = pair_lossy(
        short(&Keypair::generate_ed25519()),
        short(&Keypair::generate_ed25519()),
        0.0,
        7,
    )
    .await;
    let Pair {
        dialer,
        mut listener,
        proxy,
        ..
    } = pair;
    let mut out = dialer.open().await;
    out.write_all(b"hello").await.unwrap();
    let mut inbound = listener.accept().await;
    let mut buf = [0u8; 5];
    inbound.read_exact(&mut buf).await.unwrap();

    let proxy = proxy.unwrap();
    proxy.set_black_hole(Direction::ToServer, true);
    proxy.set_black_hole(Direction::ToClient, true);
    let started = Instant::now();

    // The dialer reads, the listener writes until its windows fill: both must fail.
    let read = async {
        let mut buf = [0u8; 16];
        out.read(&mut buf).await
    };
    let write = async {
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = inbound.write_all(&chunk).await {
                return e;
            }
        }
    };
    let (read, write_err) = bounded("vanished peer", async { futures::join!(read, write) }).await;
    let read_err = read.expect_err("read must fail");
    for e in [&read_err, &write_err] {
        assert_eq!(e.kind(), std::io::ErrorKind::NotConnected, "{e:?}");
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<StreamError>());
        assert!(
            matches!(inner, Some(StreamError::ConnectionLost(_))),
            "{e:?}"
        );
    }
    assert!(started.elapsed() < idle * 3, "{:?}", started.elapsed());
    // The watcher emptied the books of the dead connection.
    drop((out, inbound));
    dialer.settled().await;
    listener.settled().await;
}
