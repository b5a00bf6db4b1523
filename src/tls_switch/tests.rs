//! One endpoint behind the switch, routes `libp2p` (libp2p-tls, as `Config` builds it) and `h3`
//! (the WebTransport certificates), dialed on loopback by clients of each kind.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, SystemTime},
};

use libp2p_core::multihash::Multihash;
use libp2p_identity::{Keypair, PeerId};
use proptest::prelude::*;
use quinn::{
    crypto::rustls::{HandshakeData, QuicClientConfig},
    ConnectionError,
};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        ResolvesClientCert,
    },
    crypto::{aws_lc_rs::kx_group, CryptoProvider, SupportedKxGroup},
    pki_types::{CertificateDer, ServerName, UnixTime},
    sign::CertifiedKey,
    DigitallySignedStruct, SignatureScheme,
};
use tokio::{sync::mpsc, time::timeout};

use super::*;
use crate::webtransport::{
    certs::{certhash, Certs, DEFAULT_LIFETIME},
    crypto_provider,
};

const ALERT_CERTIFICATE_REQUIRED: u8 = 116;
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;
const QUIC_V1: u32 = 1;
const LIMIT: Duration = Duration::from_secs(10);

/// What the server saw of one connection.
#[derive(Debug)]
struct Accepted {
    /// The ALPN as `Connecting::handshake_data` gives it, before the handshake ends.
    early_alpn: Option<Vec<u8>>,
    /// The client's libp2p identity, if it showed a certificate; or why the handshake failed.
    outcome: Result<Option<PeerId>, ConnectionError>,
}

/// The switch under test: `libp2p` first (so the fallback), then `h3`.
fn switch(keypair: &Keypair, certs: &Arc<Certs>) -> AlpnSwitch {
    let libp2p = libp2p_tls::make_server_config(keypair)
        .ok()
        .and_then(|config| QuicServerConfig::try_from(config).ok())
        .unwrap();
    AlpnSwitch::new(vec![
        (b"libp2p".to_vec(), Arc::new(libp2p)),
        (b"h3".to_vec(), certs.server_config()),
    ])
}

struct Server {
    endpoint: quinn::Endpoint,
    peer_id: PeerId,
    certs: Arc<Certs>,
    accepted: mpsc::UnboundedReceiver<Accepted>,
}

impl Server {
    fn start() -> Self {
        let keypair = Keypair::generate_ed25519();
        let certs = Certs::new(&keypair, DEFAULT_LIFETIME, SystemTime::now());
        let switch = switch(&keypair, &certs);
        let endpoint = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(switch)),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let (sender, accepted) = mpsc::unbounded_channel();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    // quinn reads the first packet here: a whole ClientHello that is refused
                    // ends the connection before a `Connecting` exists.
                    let mut connecting = match incoming.accept() {
                        Ok(connecting) => connecting,
                        Err(error) => {
                            let outcome = Err(error);
                            let _ = sender.send(Accepted {
                                early_alpn: None,
                                outcome,
                            });
                            return;
                        }
                    };
                    let early_alpn = connecting
                        .handshake_data()
                        .await
                        .ok()
                        .and_then(|data| data.downcast::<HandshakeData>().ok()?.protocol);
                    let outcome = connecting.await.map(|connection| {
                        let peer = client_peer_id(&connection);
                        tokio::spawn(async move { connection.closed().await });
                        peer
                    });
                    let _ = sender.send(Accepted {
                        early_alpn,
                        outcome,
                    });
                });
            }
        });
        Self {
            peer_id: keypair.public().to_peer_id(),
            endpoint,
            certs,
            accepted,
        }
    }

    fn address(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    async fn next_accepted(&mut self) -> Accepted {
        timeout(LIMIT, self.accepted.recv()).await.unwrap().unwrap()
    }
}

fn client_peer_id(connection: &quinn::Connection) -> Option<PeerId> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    Some(
        libp2p_tls::certificate::parse(chain.first()?)
            .ok()?
            .peer_id(),
    )
}

/// A client with no certificate, as a browser: it records whether the server asked for one (a
/// client-certificate resolver is consulted exactly when a CertificateRequest arrives) and which
/// certificate the server showed. It trusts any server: it probes the switch, not the server.
#[derive(Debug, Default)]
struct Probe {
    asked_for_certificate: AtomicBool,
    shown: Mutex<Option<Multihash<64>>>,
}

impl Probe {
    fn config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<QuicClientConfig> {
        self.config_offering(alpn, &crypto_provider().kx_groups)
    }

    /// [`Probe::config`] offering only the key-exchange `groups`, in this order.
    fn config_offering(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        groups: &[&'static dyn SupportedKxGroup],
    ) -> Arc<QuicClientConfig> {
        let provider = CryptoProvider {
            kx_groups: groups.to_vec(),
            ..(*crypto_provider()).clone()
        };
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_client_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Arc::new(QuicClientConfig::try_from(config).unwrap())
    }

    fn asked_for_certificate(&self) -> bool {
        self.asked_for_certificate.load(Ordering::SeqCst)
    }

    fn shown(&self) -> Option<Multihash<64>> {
        *self.shown.lock().unwrap()
    }
}

impl ResolvesClientCert for Probe {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked_for_certificate.store(true, Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ServerCertVerifier for Probe {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.shown.lock().unwrap() = Some(certhash(end_entity));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        unreachable!("TLS 1.3 only")
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // webpki cannot read libp2p's certificate (its critical extension), and the probe
        // does not care who the server is.
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects to `server` with `config`; the client endpoint goes with the connection so that
/// it lives as long as the test looks at it.
async fn connect(
    server: SocketAddr,
    config: Arc<QuicClientConfig>,
) -> (quinn::Endpoint, Result<quinn::Connection, ConnectionError>) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(quinn::ClientConfig::new(config), server, "localhost")
        .unwrap();
    let result = timeout(LIMIT, connecting).await.unwrap();
    (endpoint, result)
}

fn negotiated_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

/// The TLS alert that ended a refused handshake, as the client sees it: the handshake fails,
/// or (a TLS 1.3 client finishes before the server has judged its certificate) the
/// connection closes right after.
async fn alert(result: Result<quinn::Connection, ConnectionError>) -> u8 {
    let error = match result {
        Err(error) => error,
        Ok(connection) => timeout(LIMIT, connection.closed()).await.unwrap(),
    };
    let code = match &error {
        ConnectionError::ConnectionClosed(close) => close.error_code,
        ConnectionError::TransportError(error) => error.code,
        other => panic!("not a TLS refusal: {other}"),
    };
    u8::try_from(u64::from(code) - 0x100).unwrap_or_else(|_| panic!("not a TLS alert: {error}"))
}

#[tokio::test]
async fn an_h3_client_gets_the_webtransport_certificate_and_no_certificate_request() {
    let mut server = Server::start();
    let probe = Arc::new(Probe::default());
    let (_endpoint, result) = connect(server.address(), probe.config(&[b"h3"])).await;
    let connection = result.unwrap();
    assert_eq!(negotiated_alpn(&connection).as_deref(), Some(&b"h3"[..]));
    assert!(!probe.asked_for_certificate());
    assert_eq!(probe.shown(), Some(server.certs.address_hashes()[0]));
    let accepted = server.next_accepted().await;
    assert_eq!(accepted.early_alpn.as_deref(), Some(&b"h3"[..]));
    assert_eq!(accepted.outcome.unwrap(), None);
}

#[tokio::test]
async fn a_libp2p_tls_client_gets_mutual_tls() {
    let mut server = Server::start();
    let client = Keypair::generate_ed25519();
    let config = libp2p_tls::make_client_config(&client, Some(server.peer_id))
        .ok()
        .and_then(|config| QuicClientConfig::try_from(config).ok())
        .unwrap();
    let (_endpoint, result) = connect(server.address(), Arc::new(config)).await;
    let connection = result.unwrap();
    assert_eq!(client_peer_id(&connection), Some(server.peer_id));
    let accepted = server.next_accepted().await;
    assert_eq!(accepted.early_alpn.as_deref(), Some(&b"libp2p"[..]));
    assert_eq!(
        accepted.outcome.unwrap(),
        Some(client.public().to_peer_id())
    );
}

#[tokio::test]
async fn a_libp2p_client_without_a_certificate_is_refused() {
    let mut server = Server::start();
    let probe = Arc::new(Probe::default());
    let (_endpoint, result) = connect(server.address(), probe.config(&[b"libp2p"])).await;
    assert_eq!(alert(result).await, ALERT_CERTIFICATE_REQUIRED);
    assert!(probe.asked_for_certificate());
    assert!(server.next_accepted().await.outcome.is_err());
}

#[tokio::test]
async fn the_clients_order_of_preference_decides() {
    let server = Server::start();
    let probe = Arc::new(Probe::default());
    let (_endpoint, result) = connect(server.address(), probe.config(&[b"h3", b"libp2p"])).await;
    assert_eq!(
        negotiated_alpn(&result.unwrap()).as_deref(),
        Some(&b"h3"[..])
    );
    assert!(!probe.asked_for_certificate());

    let probe = Arc::new(Probe::default());
    let (_endpoint, result) = connect(server.address(), probe.config(&[b"libp2p", b"h3"])).await;
    assert_eq!(alert(result).await, ALERT_CERTIFICATE_REQUIRED);
    assert!(
        probe.asked_for_certificate(),
        "the libp2p route asks for a certificate"
    );
}

#[tokio::test]
async fn a_client_hello_over_several_packets_is_routed_once_whole() {
    let server = Server::start();
    // 80 made-up protocols of 40 bytes: a 3.3 KB ALPN list, over three 1200-byte Initials.
    let filler: Vec<Vec<u8>> = (0..80).map(|i| format!("{i:0>40}").into_bytes()).collect();
    let mut offered: Vec<&[u8]> = filler.iter().map(Vec::as_slice).collect();
    offered.push(b"h3");
    let probe = Arc::new(Probe::default());
    let (_endpoint, result) = connect(server.address(), probe.config(&offered)).await;
    assert_eq!(
        negotiated_alpn(&result.unwrap()).as_deref(),
        Some(&b"h3"[..])
    );
    assert_eq!(probe.shown(), Some(server.certs.address_hashes()[0]));
}

#[tokio::test]
async fn an_unknown_alpn_is_refused_with_no_application_protocol() {
    let mut server = Server::start();
    let probe = Arc::new(Probe::default());
    let (_endpoint, result) = connect(server.address(), probe.config(&[b"foo"])).await;
    assert_eq!(alert(result).await, ALERT_NO_APPLICATION_PROTOCOL);
    let accepted = server.next_accepted().await;
    assert_eq!(accepted.early_alpn, None);
    assert!(accepted.outcome.is_err());
}

/// A session of the switch, as quinn starts one for a new connection.
fn session() -> Box<dyn crypto::Session> {
    let keypair = Keypair::generate_ed25519();
    let certs = Certs::new(&keypair, DEFAULT_LIFETIME, SystemTime::now());
    let params = TransportParameters::read(Side::Server, &mut &[][..]).unwrap();
    Arc::new(switch(&keypair, &certs)).start_session(QUIC_V1, &params)
}

/// The CRYPTO bytes of a rustls QUIC client's first flight: its ClientHello.
fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
    client_hello_offering(alpn, &crypto_provider().kx_groups)
}

/// [`client_hello`] offering only the key-exchange `groups`, in this order.
fn client_hello_offering(alpn: &[&[u8]], groups: &[&'static dyn SupportedKxGroup]) -> Vec<u8> {
    let probe = Arc::new(Probe::default());
    let provider = CryptoProvider {
        kx_groups: groups.to_vec(),
        ..(*crypto_provider()).clone()
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(probe)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let mut client = rustls::quic::ClientConnection::new(
        Arc::new(config),
        rustls::quic::Version::V1,
        ServerName::try_from("localhost").unwrap(),
        Vec::new(),
    )
    .unwrap();
    let mut hello = Vec::new();
    client.write_hs(&mut hello);
    hello
}

#[test]
fn a_client_hello_fed_byte_by_byte_is_held_until_whole() {
    let hello = client_hello(&[b"h3"]);
    let mut session = session();
    let (last, first) = hello.split_last().unwrap();
    for byte in first {
        assert!(!session.read_handshake(&[*byte]).unwrap());
        assert!(session.handshake_data().is_none());
        assert!(session.is_handshaking());
    }
    assert!(session.read_handshake(&[*last]).unwrap());
    let data = session
        .handshake_data()
        .unwrap()
        .downcast::<HandshakeData>()
        .unwrap();
    assert_eq!(data.protocol.as_deref(), Some(&b"h3"[..]));
}

/// The random of a ServerHello that is a HelloRetryRequest (RFC 8446, 4.1.3).
const HELLO_RETRY_REQUEST: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Found by fuzzing (fuzz/, client_hello): a client whose key share is for a group we do not
/// serve gets a HelloRetryRequest, and quinn reports the handshake data then, before rustls
/// has chosen the ALPN. A listener routes by that report, and dropped such a connection.
#[test]
fn a_client_hello_answered_with_a_hello_retry_request_reports_the_alpn_it_was_routed_by() {
    for alpn in [&b"h3"[..], b"libp2p"] {
        // Pure ML-KEM-768 first, which we do not serve; X25519, which we do, second.
        let hello = client_hello_offering(&[alpn], &[kx_group::MLKEM768, kx_group::X25519]);
        let mut session = session();
        assert!(session.read_handshake(&hello).unwrap());
        let mut answer = Vec::new();
        session.write_handshake(&mut answer);
        // A ServerHello: type, length, legacy_version, then the random.
        assert_eq!(answer[0], 2);
        assert_eq!(
            answer[6..38],
            HELLO_RETRY_REQUEST,
            "not a HelloRetryRequest"
        );
        let data = session
            .handshake_data()
            .unwrap()
            .downcast::<HandshakeData>()
            .unwrap();
        assert_eq!(data.protocol.as_deref(), Some(alpn));
    }
}

#[tokio::test]
async fn a_client_that_needs_a_hello_retry_request_is_routed_and_connects() {
    let mut server = Server::start();
    let probe = Arc::new(Probe::default());
    let config = probe.config_offering(&[b"h3"], &[kx_group::MLKEM768, kx_group::X25519]);
    let (_endpoint, result) = connect(server.address(), config).await;
    let connection = result.unwrap();
    assert_eq!(negotiated_alpn(&connection).as_deref(), Some(&b"h3"[..]));
    let accepted = server.next_accepted().await;
    // What the listener routes by.
    assert_eq!(accepted.early_alpn.as_deref(), Some(&b"h3"[..]));
    assert_eq!(accepted.outcome.unwrap(), None);
}

#[test]
fn garbage_crypto_bytes_are_an_error_not_a_panic() {
    let crypto_alert = |error: TransportError| u64::from(error.code) - 0x100;
    // Not a ClientHello.
    let error = session()
        .read_handshake(&[2, 0, 0, 4, 1, 2, 3, 4])
        .unwrap_err();
    assert_eq!(crypto_alert(error), u64::from(ALERT_UNEXPECTED_MESSAGE));
    // A ClientHello longer than anyone sends: refused before it is buffered.
    let error = session()
        .read_handshake(&[1, 0x01, 0x00, 0x01])
        .unwrap_err();
    assert_eq!(crypto_alert(error), u64::from(ALERT_DECODE_ERROR));
    // The right length, nonsense inside.
    let error = session()
        .read_handshake(&[1, 0, 0, 3, 0xff, 0xff, 0xff])
        .unwrap_err();
    assert_eq!(crypto_alert(error), u64::from(ALERT_DECODE_ERROR));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_bytes_in_any_pieces_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        client_hello_type: bool,
    ) {
        let mut bytes = bytes;
        if client_hello_type && !bytes.is_empty() {
            bytes[0] = CLIENT_HELLO; // get past the first check more often
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut session = session();
        let mut start = 0;
        for end in cuts {
            if session.read_handshake(&bytes[start..end]).is_err() {
                break;
            }
            start = end;
        }
    }

    #[test]
    fn a_real_client_hello_in_any_pieces_is_routed_by_its_alpn(
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        h3_first: bool,
    ) {
        let alpn: [&[u8]; 2] = if h3_first { [b"h3", b"libp2p"] } else { [b"libp2p", b"h3"] };
        let hello = client_hello(&alpn);
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(hello.len())).collect();
        cuts.push(hello.len());
        cuts.sort_unstable();
        let mut session = session();
        let mut start = 0;
        let mut ready = false;
        for end in cuts {
            ready |= session.read_handshake(&hello[start..end]).unwrap();
            start = end;
        }
        prop_assert!(ready);
        let data = session.handshake_data().unwrap().downcast::<HandshakeData>().unwrap();
        prop_assert_eq!(data.protocol.as_deref(), Some(alpn[0]));
    }
}
