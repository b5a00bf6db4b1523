//! Reporting sessions of real rustls configs, their handshake carried by hand between them (no
//! sockets): what each side reports, for each kind of key exchange.

use proptest::prelude::*;
use quinn::crypto::{
    rustls::{QuicClientConfig, QuicServerConfig},
    ClientConfig as _, ServerConfig as _,
};
use rustls::{
    crypto::{aws_lc_rs::kx_group, CryptoProvider, SupportedKxGroup},
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
};

use super::*;

const QUIC_V1: u32 = 1;

/// TLS handshake message types.
const CLIENT_HELLO: u8 = 1;
const FINISHED: u8 = 20;

/// aws-lc-rs's provider with only `groups`, in this order.
fn provider(groups: &[&'static dyn SupportedKxGroup]) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: groups.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// As both of our TLS configs prefer: the hybrid group, then X25519.
fn ours() -> Arc<CryptoProvider> {
    provider(&[kx_group::X25519MLKEM768, kx_group::X25519])
}

fn params(side: Side) -> TransportParameters {
    TransportParameters::read(side, &mut &[][..]).unwrap()
}

/// A server for `localhost` with a self-signed certificate, and a client that trusts it.
fn configs(
    server: Arc<CryptoProvider>,
    client: Arc<CryptoProvider>,
) -> (
    Arc<Reporting<QuicServerConfig>>,
    Arc<Reporting<QuicClientConfig>>,
) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(server)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    server.alpn_protocols = vec![b"h3".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(client)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h3".to_vec()];
    (
        Reporting::new(Arc::new(QuicServerConfig::try_from(server).unwrap())),
        Reporting::new(Arc::new(QuicClientConfig::try_from(client).unwrap())),
    )
}

/// A handshake, its bytes carried `piece` at a time.
struct Handshake {
    client: Box<dyn crypto::Session>,
    server: Box<dyn crypto::Session>,
    /// The first byte of each of the client's flights: the type of its first message.
    client_flights: Vec<u8>,
    /// What the server reported before the client's second flight reached it.
    server_before_the_end: Option<NamedGroup>,
}

impl Handshake {
    fn run(
        server: Arc<Reporting<QuicServerConfig>>,
        client: Arc<Reporting<QuicClientConfig>>,
        piece: usize,
    ) -> Self {
        let mut handshake = Self {
            client: client
                .start_session(QUIC_V1, "localhost", &params(Side::Client))
                .unwrap(),
            server: server.start_session(QUIC_V1, &params(Side::Server)),
            client_flights: Vec::new(),
            server_before_the_end: None,
        };
        // A handshake of TLS 1.3 takes at most three flights each way (with a retry).
        for _ in 0..4 {
            let sent = flight(&mut *handshake.client);
            if let Some(&first) = sent.first().and_then(|epoch| epoch.first()) {
                handshake.client_flights.push(first);
            }
            if handshake.client_flights.len() == 2 {
                handshake.server_before_the_end = reported(&*handshake.server).key_exchange;
            }
            carry(sent, &mut *handshake.server, piece);
            let answer = flight(&mut *handshake.server);
            carry(answer, &mut *handshake.client, piece);
            if !handshake.client.is_handshaking() && !handshake.server.is_handshaking() {
                return handshake;
            }
        }
        panic!("the handshake did not end");
    }

    /// The group each side reports, client and server.
    fn groups(&self) -> [Option<NamedGroup>; 2] {
        [&self.client, &self.server].map(|session| {
            let data = reported(&**session);
            assert_eq!(data.protocol.as_deref(), Some(&b"h3"[..]));
            data.key_exchange
        })
    }
}

/// Everything `session` has to send now, one piece per key epoch (a TLS message must not
/// straddle a key change).
fn flight(session: &mut dyn crypto::Session) -> Vec<Vec<u8>> {
    let mut epochs = Vec::new();
    loop {
        let mut bytes = Vec::new();
        let next = session.write_handshake(&mut bytes).is_some();
        if !bytes.is_empty() {
            epochs.push(bytes);
        }
        if !next {
            return epochs;
        }
    }
}

/// `epochs` into `session`, `piece` bytes at a time.
fn carry(epochs: Vec<Vec<u8>>, session: &mut dyn crypto::Session, piece: usize) {
    for bytes in epochs.iter().flat_map(|epoch| epoch.chunks(piece)) {
        session.read_handshake(bytes).unwrap();
    }
}

fn reported(session: &dyn crypto::Session) -> HandshakeData {
    match session.handshake_data() {
        Some(data) => *data.downcast::<HandshakeData>().unwrap(),
        None => HandshakeData {
            protocol: None,
            key_exchange: None,
        },
    }
}

#[test]
fn ours_to_ours_report_the_hybrid_post_quantum_group_on_both_sides() {
    let (server, client) = configs(ours(), ours());
    let handshake = Handshake::run(server, client, usize::MAX);
    assert_eq!(handshake.groups(), [Some(NamedGroup::X25519MLKEM768); 2]);
    assert_eq!(handshake.client_flights, [CLIENT_HELLO, FINISHED]);
}

#[test]
fn a_client_offering_only_x25519_gets_x25519() {
    let (server, client) = configs(ours(), provider(&[kx_group::X25519]));
    let handshake = Handshake::run(server, client, usize::MAX);
    assert_eq!(handshake.groups(), [Some(NamedGroup::X25519); 2]);
}

#[test]
fn a_server_without_the_hybrid_group_gets_x25519_from_our_client() {
    // Our client sends X25519's share beside the hybrid one: no retry needed.
    let (server, client) = configs(provider(&[kx_group::X25519]), ours());
    let handshake = Handshake::run(server, client, usize::MAX);
    assert_eq!(handshake.groups(), [Some(NamedGroup::X25519); 2]);
    assert_eq!(handshake.client_flights, [CLIENT_HELLO, FINISHED]);
}

#[test]
fn after_a_hello_retry_both_sides_report_the_group_retried_with() {
    // The client's share is for P-256 only, which our server does not prefer... nor has: it
    // asks for X25519 (a HelloRetryRequest) and the client's second ClientHello brings it.
    let (server, client) = configs(
        provider(&[kx_group::X25519MLKEM768, kx_group::X25519]),
        provider(&[kx_group::SECP256R1, kx_group::X25519]),
    );
    let handshake = Handshake::run(server, client, usize::MAX);
    assert_eq!(
        handshake.client_flights,
        [CLIENT_HELLO, CLIENT_HELLO, FINISHED]
    );
    assert_eq!(handshake.groups(), [Some(NamedGroup::X25519); 2]);
}

#[test]
fn handshake_bytes_in_one_byte_pieces_give_the_same_groups() {
    let (server, client) = configs(ours(), ours());
    let handshake = Handshake::run(server, client, 1);
    assert_eq!(handshake.groups(), [Some(NamedGroup::X25519MLKEM768); 2]);
}

#[test]
fn nothing_is_reported_before_the_handshake_is_complete() {
    let (server, client) = configs(ours(), ours());
    let handshake = Handshake::run(server, client, usize::MAX);
    // The server had written its ServerHello, but not yet read the client's Finished.
    assert_eq!(handshake.server_before_the_end, None);
}

#[test]
fn a_server_hello_is_read_only_once_whole() {
    let (server, client) = configs(ours(), ours());
    let mut client = client
        .start_session(QUIC_V1, "localhost", &params(Side::Client))
        .unwrap();
    let mut server = server.start_session(QUIC_V1, &params(Side::Server));
    carry(flight(&mut *client), &mut *server, usize::MAX);
    let mut first = Vec::new();
    server.write_handshake(&mut first);
    let length = 4 + u32::from_be_bytes([0, first[1], first[2], first[3]]) as usize;
    assert_eq!(first[0], SERVER_HELLO);
    assert!(length > 1088, "an ML-KEM-768 ciphertext is in it");
    for end in 0..length {
        assert_eq!(key_share_group(&first[..end]), None, "{end} bytes");
    }
    assert_eq!(
        key_share_group(&first[..length]),
        Some(Some(NamedGroup::X25519MLKEM768))
    );
}

#[test]
fn other_messages_and_overlong_lengths_give_no_group() {
    assert_eq!(key_share_group(&[CLIENT_HELLO, 0, 0, 1]), Some(None));
    assert_eq!(key_share_group(&[SERVER_HELLO, 0x01, 0, 0]), Some(None));
    // A whole ServerHello with no extensions.
    let mut hello = vec![SERVER_HELLO, 0, 0, 38 + 2];
    hello.extend_from_slice(&[3, 3]);
    hello.extend_from_slice(&[0; 32]);
    hello.extend_from_slice(&[0, 0x13, 0x01, 0, 0, 0]);
    assert_eq!(key_share_group(&hello), Some(None));
}

proptest! {
    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut hello = ServerHello::Reading(Vec::new());
        for piece in bytes.chunks(7) {
            hello.read(piece);
        }
        let _ = key_share_group(&bytes);
    }
}
