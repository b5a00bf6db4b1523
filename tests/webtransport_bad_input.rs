//! Hostile and mistaken WebTransport clients: each gets a typed error, the listener keeps
//! serving, and nothing is left behind in the books.

#![cfg(feature = "test-util")]

mod common;

use std::{pin::Pin, time::Duration};

use common::{h3_client, *};
use futures::{future::poll_fn, AsyncReadExt};
use libp2p_core::{
    multiaddr::Protocol,
    multihash::Multihash,
    transport::{ListenerId, TransportEvent},
    Multiaddr, Transport as _,
};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::{tokio::Transport, Connection, Error, WebTransportError};

/// A WebTransport listener with a short handshake timeout; its address.
async fn listener() -> (Transport, Multiaddr) {
    listener_limited(256).await
}

/// [`listener`] with this stream limit.
async fn listener_limited(limit: u32) -> (Transport, Multiaddr) {
    let mut config = common::config(&Keypair::generate_ed25519(), limit);
    config.handshake_timeout = Duration::from_secs(1);
    let mut transport = Transport::new(config);
    let addr = listen(&mut transport, WEBTRANSPORT).await;
    (transport, addr)
}

/// The result of the next incoming connection's handshake on `transport`.
async fn next_handshake(transport: &mut Transport) -> Result<PeerId, Error> {
    next_connection(transport).await.map(|(peer, _)| peer)
}

/// The next incoming connection on `transport`, or its handshake's error.
async fn next_connection(transport: &mut Transport) -> Result<(PeerId, Connection), Error> {
    loop {
        let event = bounded(
            "incoming connection",
            poll_fn(|cx| Pin::new(&mut *transport).poll(cx)),
        )
        .await;
        if let TransportEvent::Incoming { upgrade, .. } = event {
            return bounded("handshake", upgrade).await;
        }
    }
}

/// A well-behaved dial of ours still succeeds, and the listener's books hold nothing but it.
async fn still_serves(listener: &mut Transport, addr: &Multiaddr) {
    let mut client = transport();
    let dial = client.dial(addr.clone(), dial_opts()).unwrap();
    let (dialed, accepted) = futures::join!(bounded("dial", dial), next_connection(listener));
    dialed.expect("a good dial still succeeds");
    let _accepted = accepted.expect("and is accepted");
    assert_eq!(listener.ledgers().snapshot().len(), 1, "only the good one");
}

fn webtransport_error(result: Result<PeerId, Error>) -> WebTransportError {
    match result {
        Err(Error::WebTransport(error)) => *error,
        other => panic!("expected a WebTransport error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_another_path_or_type_is_refused_with_404_or_400() {
    init_tracing();
    let (mut server, addr) = listener().await;
    let path = h3_client::PATH;
    for (request, status) in [
        ("/index.html?type=noise".to_owned(), 404),
        (format!("{path}?type=yamux"), 400),
        (path.to_owned(), 400),
        (format!("{path}?type=noise&type=noise"), 400),
    ] {
        let client = async {
            let (_endpoint, connection) = h3_client::connect(socket_of(&addr), b"h3").await;
            let connection = connection.expect("QUIC handshake");
            h3_client::request(&connection, &request).await.0
        };
        let (answered, accepted) = futures::join!(client, next_handshake(&mut server));
        assert_eq!(answered, status, "{request}");
        match webtransport_error(accepted) {
            WebTransportError::BadRequest { status: ours, url } => {
                assert_eq!(ours, status);
                assert!(url.ends_with(&request), "{url}");
            }
            other => panic!("{other:?}"),
        }
    }
    still_serves(&mut server, &addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_opens_the_noise_stream_times_out_and_leaves_nothing() {
    init_tracing();
    let (mut server, addr) = listener().await;
    let request = format!("{}?type=noise", h3_client::PATH);
    let client = async {
        let (endpoint, connection) = h3_client::connect(socket_of(&addr), b"h3").await;
        let connection = connection.expect("QUIC handshake");
        let (status, connect, recv, control) = h3_client::request(&connection, &request).await;
        (status, connection, (endpoint, connect, recv, control))
    };
    let (accepted, (status, connection, _kept)) =
        futures::join!(next_handshake(&mut server), client);
    assert_eq!(status, 200);
    assert!(
        matches!(accepted, Err(Error::HandshakeTimedOut { .. })),
        "{accepted:?}"
    );
    // The listener closed the connection, and keeps no books of it.
    let closed = bounded("the listener closes the connection", connection.closed()).await;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == quinn::VarInt::from_u32(0x100)),
        "{closed:?}"
    );
    assert!(server.ledgers().snapshot().is_empty());
    still_serves(&mut server, &addr).await;
}

fn sha256_hash(byte: u8) -> Multihash<64> {
    Multihash::wrap(0x12, &[byte; 32]).unwrap()
}

fn with_hashes(addr: &Multiaddr, hashes: &[Multihash<64>]) -> Multiaddr {
    let without = addr.iter().filter(|p| !matches!(p, Protocol::Certhash(_)));
    without
        .chain(hashes.iter().map(|h| Protocol::Certhash(*h)))
        .collect()
}

fn hashes_of(addr: &Multiaddr) -> Vec<Multihash<64>> {
    addr.iter()
        .filter_map(|p| match p {
            Protocol::Certhash(h) => Some(h),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certhashes_that_do_not_match_fail_the_dial() {
    init_tracing();
    let (mut server, addr) = listener().await;
    let mut client = transport();

    // No hash of the address is the listener's certificate's: TLS refuses it.
    let unknown = with_hashes(&addr, &[sha256_hash(1)]);
    let dial = client.dial(unknown, dial_opts()).unwrap();
    let (dialed, _) = futures::join!(bounded("dial", dial), async {
        // The listener sees the handshake fail, or nothing at all.
        let _ = tokio::time::timeout(Duration::from_secs(2), next_handshake(&mut server)).await;
    });
    assert!(
        matches!(dialed, Err(Error::Connection(_))),
        "{:?}",
        dialed.map(|_| ())
    );

    // The certificate matches, but the listener does not know one of the address's hashes:
    // Noise's extension says so.
    let mut hashes = hashes_of(&addr);
    hashes.push(sha256_hash(2));
    let extra = with_hashes(&addr, &hashes);
    let dial = client.dial(extra, dial_opts()).unwrap();
    let (dialed, accepted) = futures::join!(bounded("dial", dial), next_handshake(&mut server));
    match dialed.map(|_| ()) {
        Err(Error::WebTransport(error)) => assert!(
            matches!(
                *error,
                WebTransportError::Noise(libp2p_noise::Error::UnknownWebTransportCerthashes(..))
            ),
            "{error:?}"
        ),
        other => panic!("{other:?}"),
    }
    // The listener may finish its side of Noise before the dialer checks the hashes and hangs
    // up; either way it is left with nothing.
    drop(accepted);
    still_serves(&mut server, &addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_another_peer_fails_with_peer_id_mismatch() {
    init_tracing();
    let (mut server, addr) = listener().await;
    let mut client = transport();
    let other = PeerId::random();
    let dial = client
        .dial(addr.clone().with(Protocol::P2p(other)), dial_opts())
        .unwrap();
    let (dialed, _) = futures::join!(bounded("dial", dial), next_handshake(&mut server));
    match dialed.map(|_| ()) {
        Err(Error::PeerIdMismatch(m)) => assert_eq!(m.expected, other),
        other => panic!("{other:?}"),
    }
    assert!(client.ledgers().snapshot().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_first_stream_fails_the_handshake() {
    init_tracing();
    let (mut server, addr) = listener().await;
    // Garbage where the header should be, then a Noise frame of garbage where Noise's first
    // message should be (a frame's first two bytes are its length: garbage text would ask for
    // kilobytes more, and the handshake would merely time out).
    for with_header in [false, true] {
        let client = async {
            let (_endpoint, connection) = h3_client::connect(socket_of(&addr), b"h3").await;
            let connection = connection.expect("QUIC handshake");
            let (status, connect, _recv, _control) =
                h3_client::request(&connection, &format!("{}?type=noise", h3_client::PATH)).await;
            assert_eq!(status, 200);
            let header = if with_header {
                h3_client::header(&connect)
            } else {
                Vec::new()
            };
            let garbage: &[u8] = if with_header {
                &[0, 5, 0xde, 0xad, 0xbe, 0xef, 0]
            } else {
                b"GET / HTTP/1.1\r\n\r\n"
            };
            let (mut send, _recv) = h3_client::open(&connection, &header, garbage).await;
            let _ = send.finish();
            connection.closed().await
        };
        let (closed, accepted) = futures::join!(
            bounded("the listener closes", client),
            next_handshake(&mut server)
        );
        let error = webtransport_error(accepted);
        if with_header {
            assert!(matches!(error, WebTransportError::Noise(_)), "{error:?}");
        } else {
            assert!(
                matches!(error, WebTransportError::NoNoiseStream),
                "{error:?}"
            );
        }
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
            "{closed:?}"
        );
    }
    assert!(server.ledgers().snapshot().is_empty());
    still_serves(&mut server, &addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_before_noise_completes_are_served_after_it() {
    init_tracing();
    let (mut server, addr) = listener().await;
    const EARLY: usize = 3;
    let client = async {
        let (endpoint, connection) = h3_client::connect(socket_of(&addr), b"h3").await;
        let connection = connection.expect("QUIC handshake");
        let (status, connect, recv, control) =
            h3_client::request(&connection, &format!("{}?type=noise", h3_client::PATH)).await;
        assert_eq!(status, 200);
        let header = h3_client::header(&connect);
        let (noise_send, noise_recv) = h3_client::open(&connection, &header, b"").await;
        let mut early = Vec::new();
        for _ in 0..EARLY {
            let (mut send, recv) = h3_client::open(&connection, &header, b"early").await;
            send.finish().unwrap();
            early.push((send, recv));
        }
        let peer = h3_client::noise(h3_client::Halves(noise_send, noise_recv))
            .await
            .expect("Noise");
        (peer, (endpoint, connection, connect, recv, control, early))
    };
    let (accepted, (peer, _kept)) = bounded("handshake", async {
        futures::join!(
            async {
                loop {
                    let event = poll_fn(|cx| Pin::new(&mut server).poll(cx)).await;
                    if let TransportEvent::Incoming { upgrade, .. } = event {
                        break upgrade.await;
                    }
                }
            },
            client
        )
    })
    .await;
    let (client_peer, connection) = accepted.expect("the handshake succeeds");
    let mut served = Peer::new(peer, client_peer, connection, server.ledgers());
    for _ in 0..EARLY {
        let mut stream = served.accept().await;
        let mut data = Vec::new();
        stream.read_to_end(&mut data).await.unwrap();
        assert_eq!(data, b"early");
    }
    eventually("the early streams leave the books", || {
        served.snapshot().totals.opened.iter().sum::<u64>() == EARLY as u64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_libp2p_without_a_client_certificate_is_refused() {
    init_tracing();
    let mut server = transport();
    let quic_addr = listen(&mut server, QUIC).await;
    let port = socket_of(&quic_addr).port();
    let webtransport: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1/webtransport")
        .parse()
        .unwrap();
    server.listen_on(ListenerId::next(), webtransport).unwrap();
    let webtransport_addr = loop {
        if let TransportEvent::NewAddress { listen_addr, .. } = bounded(
            "listen address",
            poll_fn(|cx| Pin::new(&mut server).poll(cx)),
        )
        .await
        {
            break listen_addr;
        }
    };
    // TLS 1.3 lets the client finish first: the listener's refusal may come just after, and
    // the listener hands out the connection, whose handshake then fails, before or after it.
    let client = bounded("the client's attempt", async {
        let (_endpoint, connection) = h3_client::connect(socket_of(&quic_addr), b"libp2p").await;
        match connection {
            Ok(connection) => connection.closed().await,
            Err(error) => error,
        }
    });
    let (refused, accepted) = futures::join!(client, next_handshake(&mut server));
    // TLS alert 116, certificate_required, as a QUIC CRYPTO_ERROR (0x100 + alert), both sides.
    let certificate_required = quinn_proto::TransportErrorCode::crypto(116);
    assert!(
        matches!(accepted, Err(Error::Connection(ref e))
            if matches!(**e, quinn::ConnectionError::TransportError(ref e)
                if e.code == certificate_required)),
        "{accepted:?}"
    );
    match refused {
        quinn::ConnectionError::ConnectionClosed(close) => {
            assert_eq!(close.error_code, certificate_required)
        }
        other => panic!("a libp2p connection without a client certificate: {other:?}"),
    }
    still_serves(&mut server, &webtransport_addr).await;
    let mut client = transport();
    let dial = client.dial(quic_addr, dial_opts()).unwrap();
    let (dialed, accepted) = futures::join!(bounded("dial", dial), next_handshake(&mut server));
    dialed.expect("QUIC dial");
    accepted.expect("QUIC accept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_request_inside_the_session_is_refused() {
    init_tracing();
    let (mut server, addr) = listener().await;
    // The muxer reads the headers of inbound streams: it is driven.
    let (_served, session) = raw_session(&mut server, &addr).await;
    let connection = &session.connection;
    // A HEADERS frame (type 0x01) where a session stream's header should be.
    let (_send, mut recv) = h3_client::open(connection, &[0x01, 0x00], b"").await;
    let mut buf = [0; 16];
    let read = bounded("the stream is refused", recv.read(&mut buf)).await;
    assert!(
        matches!(read, Err(quinn::ReadError::Reset(code)) if code == quinn::VarInt::from_u32(0x10b)),
        "{read:?}"
    );
}

/// A session up between the hand-made client and `server`: the server's muxer (driven) and
/// the client's session.
async fn raw_session(server: &mut Transport, addr: &Multiaddr) -> (Peer, h3_client::Session) {
    let client = h3_client::session(
        socket_of(addr),
        quinn::ClientConfig::new(std::sync::Arc::new(h3_client::client_crypto(b"h3"))),
    );
    let (accepted, session) = bounded("handshake", async {
        futures::join!(next_connection(server), client)
    })
    .await;
    let (peer, muxer) = accepted.expect("session up");
    (
        Peer::new(PeerId::random(), peer, muxer, server.ledgers()),
        session,
    )
}

/// Streams reset before their header arrives, ten times past the stream limit: whose they
/// were cannot be told, so the application never sees them, and their credit comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_before_their_header_are_dropped_and_their_credit_returns() {
    init_tracing();
    const LIMIT: u32 = 16;
    let (mut server, addr) = listener_limited(LIMIT).await;
    let (mut served, session) = raw_session(&mut server, &addr).await;
    bounded("10x the limit of reset streams", async {
        for _ in 0..10 * LIMIT {
            let (mut send, _recv) = session.connection.open_bi().await.unwrap();
            send.reset(quinn::VarInt::from_u32(0)).unwrap();
        }
    })
    .await;
    // A stream with its header still reaches the application, and nothing else did.
    let (mut send, _recv) = h3_client::open(&session.connection, &session.header, b"hello").await;
    send.finish().unwrap();
    let mut stream = served.accept().await;
    let mut data = Vec::new();
    stream.read_to_end(&mut data).await.unwrap();
    assert_eq!(data, b"hello");
    drop(stream);
    assert_eq!(served.snapshot().totals.opened.iter().sum::<u64>(), 1);
    served.settled().await.expect("connection alive");
}
