//! The TLS key exchange of both kinds of connection, read on our side of the handshake
//! (`ConnectionSnapshot::key_exchange`): hybrid post-quantum X25519MLKEM768 between our own
//! peers over QUIC and WebTransport, alone or sharing a port; X25519 with a client that offers
//! nothing else, over either. Browsers and go-libp2p: `tests/browser.rs`, `tests/interop_go/`.

#![cfg(feature = "test-util")]

mod common;

use std::sync::Arc;

use common::*;
use libp2p_core::Transport as _;
use libp2p_identity::Keypair;
use libp2p_quinn::Config;
use rustls::crypto::aws_lc_rs::kx_group;

const HYBRID: Option<&str> = Some("X25519MLKEM768");
const CLASSICAL: Option<&str> = Some("X25519");

fn fresh() -> Config {
    Config::new(&Keypair::generate_ed25519())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_to_ours_negotiate_the_hybrid_group_over_quic_and_webtransport() {
    init_tracing();
    for listen in [QUIC, WEBTRANSPORT] {
        let pair = pair_over(listen, fresh(), fresh(), 0.0).await;
        for (side, peer) in [("dialer", &pair.dialer), ("listener", &pair.listener)] {
            let snapshot = peer.snapshot();
            assert_eq!(snapshot.webtransport, listen == WEBTRANSPORT);
            assert_eq!(
                snapshot.key_exchange.as_deref(),
                HYBRID,
                "{side} over {listen}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kinds_on_one_port_negotiate_the_hybrid_group() {
    // Here the listener's TLS goes through the ALPN switch.
    init_tracing();
    let mut server = transport();
    let quic = listen(&mut server, QUIC).await;
    let port = socket_of(&quic).port();
    let webtransport = listen(
        &mut server,
        &format!("/ip4/127.0.0.1/udp/{port}/quic-v1/webtransport"),
    )
    .await;
    for addr in [quic, webtransport] {
        let mut client = transport();
        let dial = client.dial(addr.clone(), dial_opts()).unwrap();
        let (dialed, (_, accepted)) =
            bounded("dial", async { futures::join!(dial, accept(&mut server)) }).await;
        let (_, dialed) = dialed.expect("dial");
        for (side, connection) in [("dialer", &dialed), ("listener", &accepted)] {
            assert_eq!(
                connection.snapshot().key_exchange.as_deref(),
                HYBRID,
                "{side} of {addr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_client_offering_only_x25519_connects_and_we_report_x25519() {
    init_tracing();
    let mut server = transport();
    let addr = listen(&mut server, WEBTRANSPORT).await;
    let key_exchange = webtransport_session(&mut server, &addr, &[kx_group::X25519]).await;
    assert_eq!(key_exchange.as_deref(), CLASSICAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_client_that_needs_a_hello_retry_request_connects() {
    // Found by fuzzing (fuzz/, client_hello): a key share for pure ML-KEM-768, which we do not
    // serve, gets a HelloRetryRequest for X25519; the listener used to drop the connection.
    init_tracing();
    for shared in [false, true] {
        let mut server = transport();
        let addr = if shared {
            let port = socket_of(&listen(&mut server, QUIC).await).port();
            let addr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1/webtransport");
            listen(&mut server, &addr).await
        } else {
            listen(&mut server, WEBTRANSPORT).await
        };
        let groups = [kx_group::MLKEM768, kx_group::X25519];
        let key_exchange = webtransport_session(&mut server, &addr, &groups).await;
        assert_eq!(key_exchange.as_deref(), CLASSICAL, "shared port: {shared}");
    }
}

/// A WebTransport session, Noise included, from a client offering only the key-exchange
/// `groups` to `server` listening at `addr`; the group our side reports.
async fn webtransport_session(
    server: &mut libp2p_quinn::tokio::Transport,
    addr: &libp2p_core::Multiaddr,
    groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
) -> Option<String> {
    let client = async {
        let (endpoint, connection) =
            h3_client::connect_offering(socket_of(addr), b"h3", groups).await;
        let connection = connection.expect("the TLS handshake succeeds");
        let request = format!("{}?type=noise", h3_client::PATH);
        let (status, connect, _recv, control) = h3_client::request(&connection, &request).await;
        assert_eq!(status, 200);
        let header = h3_client::header(&connect);
        let (send, recv) = h3_client::open(&connection, &header, b"").await;
        h3_client::noise(h3_client::Halves(send, recv))
            .await
            .expect("Noise");
        // Kept until our side has looked.
        (endpoint, connection, connect, control)
    };
    let (held, (_, ours)) =
        bounded("session", async { futures::join!(client, accept(server)) }).await;
    let snapshot = ours.snapshot();
    assert!(snapshot.webtransport);
    drop(held);
    snapshot.key_exchange
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libp2p_client_offering_only_x25519_connects_and_we_report_x25519() {
    init_tracing();
    let mut server = transport();
    let addr = listen(&mut server, QUIC).await;
    let keypair = Keypair::generate_ed25519();
    let client = async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = endpoint
            .connect_with(
                libp2p_client_offering_x25519(&keypair),
                socket_of(&addr),
                "l",
            )
            .unwrap();
        (
            endpoint,
            connecting.await.expect("the TLS handshake succeeds"),
        )
    };
    let (held, (peer, ours)) = bounded("handshake", async {
        futures::join!(client, accept(&mut server))
    })
    .await;
    assert_eq!(peer, keypair.public().to_peer_id());
    let snapshot = ours.snapshot();
    assert!(!snapshot.webtransport);
    assert_eq!(snapshot.key_exchange.as_deref(), CLASSICAL);
    drop(held);
}

/// libp2p's TLS client as libp2p-tls makes it (its certificate, ALPN `libp2p`), offering only
/// X25519. It trusts any server: what is tested is our listener's side.
fn libp2p_client_offering_x25519(keypair: &Keypair) -> quinn::ClientConfig {
    let libp2p = libp2p_tls::make_client_config(keypair, None).unwrap();
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(h3_client::AnyCertificate))
        .with_client_cert_resolver(libp2p.client_auth_cert_resolver.clone());
    tls.alpn_protocols = libp2p.alpn_protocols.clone();
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ))
}
