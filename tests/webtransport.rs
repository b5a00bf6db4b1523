//! WebTransport between two of our transports: libp2p Swarms ping, a mebibyte echoes each way,
//! QUIC and WebTransport share one port, certificates roll over. The leak cases run over
//! WebTransport in `tests/leaks.rs`, hostile clients in `tests/webtransport_bad_input.rs`.

#![cfg(feature = "test-util")]

mod common;

use std::time::Duration;

use common::*;
use futures::{future::poll_fn, AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    ping,
    swarm::{Swarm, SwarmEvent},
    SwarmBuilder,
};
use libp2p_core::{
    multiaddr::Protocol,
    transport::{ListenerId, TransportEvent},
    Multiaddr, Transport as _,
};
use libp2p_identity::Keypair;
use libp2p_quinn::{tokio::Transport, Config};

const MIB: usize = 1 << 20;

fn ping_swarm() -> Swarm<ping::Behaviour> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|keypair| Transport::new(Config::new(keypair)))
        .unwrap()
        .with_behaviour(|_| {
            ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(100)))
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(10)))
        .build()
}

fn certhashes(addr: &Multiaddr) -> Vec<Protocol<'static>> {
    addr.iter()
        .filter(|p| matches!(p, Protocol::Certhash(_)))
        .map(|p| p.acquire())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarms_ping_each_other_over_webtransport() {
    init_tracing();
    let mut listener = ping_swarm();
    let mut dialer = ping_swarm();
    listener
        .listen_on(WEBTRANSPORT.parse().unwrap())
        .expect("listen");
    let addr = bounded("listen address", async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await {
                break address;
            }
        }
    })
    .await;
    assert_eq!(certhashes(&addr).len(), 2, "current and next: {addr}");
    let listener_id = *listener.local_peer_id();
    dialer.dial(addr.with_p2p(listener_id).unwrap()).unwrap();

    // Both sides see a ping succeed, over a connection whose address says WebTransport.
    let mut pinged = [false; 2];
    bounded("pings both ways", async {
        while pinged != [true, true] {
            let (event, side) = tokio::select! {
                e = dialer.select_next_some() => (e, 0),
                e = listener.select_next_some() => (e, 1),
            };
            match event {
                SwarmEvent::ConnectionEstablished { endpoint, .. } => {
                    let remote = endpoint.get_remote_address();
                    assert!(
                        remote.iter().any(|p| p == Protocol::WebTransport),
                        "{remote}"
                    );
                }
                SwarmEvent::Behaviour(ping::Event { result, .. }) => {
                    result.expect("ping");
                    pinged[side] = true;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial: {error}"),
                SwarmEvent::IncomingConnectionError { error, .. } => panic!("accept: {error}"),
                _ => {}
            }
        }
    })
    .await;
}

/// Two peers with fresh identities and default settings, over WebTransport.
async fn webtransport_pair() -> Pair {
    let config = || Config::new(&Keypair::generate_ed25519());
    pair_over(WEBTRANSPORT, config(), config(), 0.0).await
}

/// `opener` sends `data` on a new stream and closes it; `acceptor` echoes it back.
async fn echo(opener: &Peer, acceptor: &mut Peer, data: &[u8]) {
    let mut out = opener.open().await;
    let mut inbound = None;
    let send = async {
        out.write_all(data).await.unwrap();
        out.close().await.unwrap();
        let mut back = Vec::new();
        out.read_to_end(&mut back).await.unwrap();
        back
    };
    let serve = async {
        let mut s = acceptor.accept().await;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(&got).await.unwrap();
        s.close().await.unwrap();
        inbound = Some(s);
    };
    let (back, ()) = bounded("echo", async { futures::join!(send, serve) }).await;
    assert!(back == data, "the echo differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mebibyte_echoes_each_way() {
    init_tracing();
    let mut pair = webtransport_pair().await;
    let data: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    echo(&pair.dialer, &mut pair.listener, &data).await;
    echo(&pair.listener, &mut pair.dialer, &data).await;
    for peer in [&pair.dialer, &pair.listener] {
        let books = peer.settled().await.expect("connection alive");
        assert_eq!(books.totals.opened.iter().sum::<u64>(), 2);
    }
}

/// The next event of `transport`, bounded.
async fn next_event(
    transport: &mut Transport,
) -> TransportEvent<libp2p_quinn::Connecting, libp2p_quinn::Error> {
    bounded(
        "transport event",
        poll_fn(|cx| std::pin::Pin::new(&mut *transport).poll(cx)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_and_webtransport_share_one_port() {
    init_tracing();
    let mut server = transport();
    let quic_id = ListenerId::next();
    let webtransport_id = ListenerId::next();
    server.listen_on(quic_id, QUIC.parse().unwrap()).unwrap();
    let quic_addr = match next_event(&mut server).await {
        TransportEvent::NewAddress { listen_addr, .. } => listen_addr,
        other => panic!("{other:?}"),
    };
    let port = socket_of(&quic_addr).port();
    let webtransport_addr: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1/webtransport")
        .parse()
        .unwrap();
    server
        .listen_on(webtransport_id, webtransport_addr)
        .unwrap();
    let webtransport_addr = match next_event(&mut server).await {
        TransportEvent::NewAddress {
            listener_id,
            listen_addr,
        } => {
            assert_eq!(listener_id, webtransport_id);
            listen_addr
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(socket_of(&webtransport_addr).port(), port);

    // One client of each kind at once; each is reported under its own listener.
    let mut quic_client = transport();
    let mut webtransport_client = transport();
    let quic_dial = quic_client.dial(quic_addr, dial_opts()).unwrap();
    let webtransport_dial = webtransport_client
        .dial(webtransport_addr, dial_opts())
        .unwrap();
    let accept_both = async {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            if let TransportEvent::Incoming {
                listener_id,
                upgrade,
                send_back_addr,
                ..
            } = next_event(&mut server).await
            {
                let webtransport = send_back_addr.iter().any(|p| p == Protocol::WebTransport);
                let expected = if webtransport {
                    webtransport_id
                } else {
                    quic_id
                };
                assert_eq!(listener_id, expected, "{send_back_addr}");
                seen.push(upgrade.await.expect("handshake"));
            }
        }
        seen
    };
    let (quic, webtransport, accepted) = bounded("both clients", async {
        futures::join!(quic_dial, webtransport_dial, accept_both)
    })
    .await;
    quic.expect("QUIC dial");
    webtransport.expect("WebTransport dial");
    assert_eq!(accepted.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_roll_over_and_an_address_from_before_still_connects() {
    init_tracing();
    const LIFETIME: Duration = Duration::from_secs(4);
    let mut config = Config::new(&Keypair::generate_ed25519());
    config.webtransport_certificate_lifetime = LIFETIME;
    let mut server = Transport::new(config);
    let id = ListenerId::next();
    server.listen_on(id, WEBTRANSPORT.parse().unwrap()).unwrap();
    let before = match next_event(&mut server).await {
        TransportEvent::NewAddress { listen_addr, .. } => listen_addr,
        other => panic!("{other:?}"),
    };
    // Within one lifetime the next certificate takes over: the old address expires and the
    // new one names the old "next" first.
    let expired = match next_event(&mut server).await {
        TransportEvent::AddressExpired {
            listener_id,
            listen_addr,
        } => {
            assert_eq!(listener_id, id);
            listen_addr
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(expired, before);
    let after = match next_event(&mut server).await {
        TransportEvent::NewAddress { listen_addr, .. } => listen_addr,
        other => panic!("{other:?}"),
    };
    let (old, new) = (certhashes(&before), certhashes(&after));
    assert_ne!(old, new);
    assert_eq!(
        new[0], old[1],
        "the next certificate became the current one"
    );

    // A client holding the address from before the roll still connects.
    let mut client = transport();
    let dial = client.dial(before, dial_opts()).unwrap();
    let accept = async {
        loop {
            if let TransportEvent::Incoming { upgrade, .. } = next_event(&mut server).await {
                break upgrade.await;
            }
        }
    };
    let (dialed, accepted) = bounded("dial with the old address", async {
        futures::join!(dial, accept)
    })
    .await;
    dialed.expect("dial");
    accepted.expect("accept");
}

/// Stream error codes cross a WebTransport session mapped into HTTP/3's range and back: the
/// application on each side sees the other's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_error_codes_cross_the_session_as_sent() {
    init_tracing();
    let mut pair = webtransport_pair().await;
    let mut out = pair.dialer.open().await;
    out.write_all(&[7; 1024]).await.unwrap();
    let mut inbound = pair.listener.accept().await;
    let mut first = [0; 1024];
    inbound.read_exact(&mut first).await.unwrap();
    out.reset(42);
    let mut rest = Vec::new();
    let read = bounded("the reset arrives", inbound.read_to_end(&mut rest)).await;
    let error = read.expect_err("a reset, not a clean end");
    let code = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<libp2p_quinn::StreamError>());
    assert_eq!(code, Some(&libp2p_quinn::StreamError::ResetByPeer(42)));

    // The other way: the acceptor stops our writing with 7; every write after says 7, the
    // first (quinn's error) and the later ones (our own record of the stop).
    let mut out = pair.dialer.open().await;
    out.write_all(b"hello").await.unwrap();
    let mut inbound = pair.listener.accept().await;
    inbound.reset(7);
    let stopped = bounded("the stop arrives", async {
        loop {
            if let Err(e) = out.write_all(&[0; 1024]).await {
                break e;
            }
        }
    })
    .await;
    for error in [stopped, out.write_all(b"again").await.unwrap_err()] {
        let code = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<libp2p_quinn::StreamError>());
        assert_eq!(code, Some(&libp2p_quinn::StreamError::StoppedByPeer(7)));
    }
}

/// The next incoming connection's address as its listener saw it.
async fn next_send_back_addr(transport: &mut Transport) -> Multiaddr {
    loop {
        if let TransportEvent::Incoming {
            upgrade,
            send_back_addr,
            ..
        } = next_event(transport).await
        {
            bounded("handshake", upgrade).await.expect("handshake");
            return send_back_addr;
        }
    }
}

/// A dial that reuses a listening port leaves from a listener of its own kind: a peer that sees
/// a QUIC connection come from a port takes that port for our QUIC address (and DCUtR punches
/// from it), so it must not be a port that refuses QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_reusing_a_port_leaves_from_a_listener_of_its_kind() {
    init_tracing();
    let mut client = transport();
    let client_quic = listen(&mut client, QUIC).await;
    let client_webtransport = listen(&mut client, WEBTRANSPORT).await;
    let reuse = libp2p_core::transport::DialOpts {
        role: libp2p_core::Endpoint::Dialer,
        port_use: libp2p_core::transport::PortUse::Reuse,
    };
    for (listen_on, from) in [(QUIC, &client_quic), (WEBTRANSPORT, &client_webtransport)] {
        let mut server = transport();
        let server_addr = listen(&mut server, listen_on).await;
        let dial = client.dial(server_addr, reuse).unwrap();
        let (dialed, seen) = bounded("dial", async {
            futures::join!(dial, next_send_back_addr(&mut server))
        })
        .await;
        dialed.expect("dial");
        assert_eq!(
            socket_of(&seen).port(),
            socket_of(from).port(),
            "a {listen_on} dial left from {seen}"
        );
    }
}

/// On `0.0.0.0` a WebTransport listener reports an address per interface, each with its
/// certificate hashes, as a QUIC listener does without them; the loopback one serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_listener_on_every_interface_reports_each_with_its_hashes() {
    init_tracing();
    let mut server = transport();
    let all: Multiaddr = "/ip4/0.0.0.0/udp/0/quic-v1/webtransport".parse().unwrap();
    server.listen_on(ListenerId::next(), all).unwrap();
    let loopback = loop {
        match next_event(&mut server).await {
            TransportEvent::NewAddress { listen_addr, .. } => {
                assert_eq!(certhashes(&listen_addr).len(), 2, "{listen_addr}");
                assert!(listen_addr.iter().any(|p| p == Protocol::WebTransport));
                if socket_of(&listen_addr).ip().is_loopback() {
                    break listen_addr;
                }
            }
            other => panic!("{other:?}"),
        }
    };
    let mut client = transport();
    let dial = client.dial(loopback, dial_opts()).unwrap();
    let accept = async {
        loop {
            if let TransportEvent::Incoming { upgrade, .. } = next_event(&mut server).await {
                break upgrade.await;
            }
        }
    };
    let (dialed, accepted) = bounded("dial", async { futures::join!(dial, accept) }).await;
    dialed.expect("dial");
    accepted.expect("accept");
}
