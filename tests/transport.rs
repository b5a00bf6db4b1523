//! The transport's contract: listen addresses, port reuse, closing listeners, and what stream
//! errors say.

#![cfg(feature = "test-util")]

mod common;

use std::{pin::Pin, time::Duration};

use common::*;
use futures::{future::poll_fn, AsyncReadExt, AsyncWriteExt};
use libp2p_core::{
    transport::{DialOpts, ListenerId, PortUse, TransportEvent},
    Endpoint, Transport as _,
};
use libp2p_identity::Keypair;
use libp2p_quinn::{Config, StreamError};

#[tokio::test]
async fn listening_on_port_zero_reports_the_real_port() {
    let mut t = transport();
    let addr = listen(&mut t, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let (socket, _) = libp2p_quinn::parse_multiaddr(&addr).unwrap();
    assert_ne!(socket.port(), 0);
    let mut t6 = transport();
    let addr6 = listen(&mut t6, "/ip6/::1/udp/0/quic-v1").await;
    let (socket6, _) = libp2p_quinn::parse_multiaddr(&addr6).unwrap();
    assert!(socket6.is_ipv6() && socket6.port() != 0);
}

#[tokio::test]
async fn listening_on_the_unspecified_address_reports_each_interface() {
    let mut t = transport();
    t.listen_on(
        ListenerId::next(),
        "/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap(),
    )
    .unwrap();
    // Loopback is always among the interfaces.
    let loopback = bounded("loopback listen address", async {
        loop {
            match poll_fn(|cx| Pin::new(&mut t).poll(cx)).await {
                TransportEvent::NewAddress { listen_addr, .. } => {
                    let (socket, _) = libp2p_quinn::parse_multiaddr(&listen_addr).unwrap();
                    assert!(!socket.ip().is_unspecified(), "{listen_addr}");
                    assert_ne!(socket.port(), 0);
                    if socket.ip().is_loopback() {
                        return listen_addr;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    // And it is reachable.
    let mut dialer = transport();
    let dial = dialer.dial(loopback, dial_opts()).unwrap();
    let (dialed, _) = futures::join!(bounded("dial", dial), accept(&mut t));
    dialed.expect("dial the interface address");
}

#[tokio::test]
async fn port_reuse_dials_from_the_listening_socket() {
    let mut a = transport();
    let a_addr = listen(&mut a, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let (a_socket, _) = libp2p_quinn::parse_multiaddr(&a_addr).unwrap();
    let mut b = transport();
    let b_addr = listen(&mut b, "/ip4/127.0.0.1/udp/0/quic-v1").await;

    for (port_use, same) in [(PortUse::Reuse, true), (PortUse::New, false)] {
        let dial = a
            .dial(
                b_addr.clone(),
                DialOpts {
                    role: Endpoint::Dialer,
                    port_use,
                },
            )
            .unwrap();
        let seen_from = async {
            loop {
                let event = bounded("incoming", poll_fn(|cx| Pin::new(&mut b).poll(cx))).await;
                if let TransportEvent::Incoming {
                    upgrade,
                    send_back_addr,
                    ..
                } = event
                {
                    let _ = bounded("handshake", upgrade).await.unwrap();
                    return send_back_addr;
                }
            }
        };
        let (dialed, send_back) = futures::join!(bounded("dial", dial), seen_from);
        dialed.unwrap();
        let (from, _) = libp2p_quinn::parse_multiaddr(&send_back).unwrap();
        assert_eq!(
            from.port() == a_socket.port(),
            same,
            "{port_use:?}: dialed from {from}"
        );
    }
}

#[tokio::test]
async fn closing_a_listener_frees_its_socket() {
    let mut t = transport();
    let id = ListenerId::next();
    t.listen_on(id, "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .unwrap();
    let addr = match bounded("address", poll_fn(|cx| Pin::new(&mut t).poll(cx))).await {
        TransportEvent::NewAddress { listen_addr, .. } => listen_addr,
        other => panic!("{other:?}"),
    };
    assert!(t.remove_listener(id));
    match bounded("closed", poll_fn(|cx| Pin::new(&mut t).poll(cx))).await {
        TransportEvent::ListenerClosed {
            listener_id,
            reason,
        } => {
            assert_eq!(listener_id, id);
            reason.unwrap();
        }
        other => panic!("{other:?}"),
    }
    // The transport drops the listener on its next poll (a Swarm polls continuously); quinn's
    // endpoint driver then lets go of the socket.
    let (socket, _) = libp2p_quinn::parse_multiaddr(&addr).unwrap();
    bounded("port free again", async {
        loop {
            let _ = futures::FutureExt::now_or_never(poll_fn(|cx| Pin::new(&mut t).poll(cx)));
            if std::net::UdpSocket::bind(socket).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_say_what_the_peer_did() {
    let Pair {
        dialer,
        mut listener,
        ..
    } = pair_with(
        Config::new(&Keypair::generate_ed25519()),
        Config::new(&Keypair::generate_ed25519()),
    )
    .await;

    // The peer resets with a code: our read says so.
    let mut out = dialer.open().await;
    out.write_all(b"hello").await.unwrap();
    let mut inbound = listener.accept().await;
    let mut buf = [0u8; 5];
    inbound.read_exact(&mut buf).await.unwrap();
    out.reset(42);
    let err = bounded("read after reset", inbound.read(&mut buf))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        err.get_ref().and_then(|e| e.downcast_ref::<StreamError>()),
        Some(&StreamError::ResetByPeer(42))
    );
    // ... and its stop reaches our writes with its code.
    let err = bounded("write after stop", async {
        loop {
            if let Err(e) = inbound.write_all(&[0u8; 1024]).await {
                return e;
            }
        }
    })
    .await;
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        err.get_ref().and_then(|e| e.downcast_ref::<StreamError>()),
        Some(&StreamError::StoppedByPeer(42))
    );
    drop((out, inbound));
    dialer.settled().await.unwrap();
    listener.settled().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_the_peer_never_acknowledges_is_reported() {
    use libp2p_quinn::test_util::Direction;
    let logs = captured_warnings();
    let mut cfg = Config::new(&Keypair::generate_ed25519());
    cfg.stream_leak_warning = Duration::from_millis(300);
    let pair = pair_lossy(cfg, Config::new(&Keypair::generate_ed25519()), 0.0, 3).await;
    let proxy = pair.proxy.as_ref().unwrap();
    let mut out = pair.dialer.open().await;
    // From now on nothing the listener sends arrives: our FIN is never acknowledged.
    proxy.set_black_hole(Direction::ToClient, true);
    out.write_all(b"request!").await.unwrap();
    out.close().await.unwrap();
    let mut listener = pair.listener;
    let mut inbound = listener.accept().await;
    let mut request = Vec::new();
    inbound.read_to_end(&mut request).await.unwrap();
    let id = out.id();
    drop(out);
    bounded("held-after-drop warning", async {
        while !logs
            .lock()
            .unwrap()
            .contains("dropped but still held by QUIC")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let snapshot = pair.dialer.snapshot();
    assert_eq!(snapshot.totals.held_after_drop, [0, 1]);
    assert_eq!(snapshot.streams[0].id, id);
    // The path heals: the acknowledgement arrives and the books empty.
    proxy.set_black_hole(Direction::ToClient, false);
    drop(inbound);
    pair.dialer.settled().await.unwrap();
}
