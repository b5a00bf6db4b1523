//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, internal): thin
//! wrappers around the crate's parsers of bytes a peer sends, so that the targets drive the
//! very code a connection runs. Not part of the API: no stability promise, no use elsewhere.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use quinn::crypto::{self, ServerConfig as _};
use quinn_proto::transport_parameters::TransportParameters;
use rustls::{
    client::danger::ServerCertVerifier,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::io::AsyncRead;
use web_transport_proto::{ConnectError, ConnectRequest, Settings, SettingsError, VarInt};

pub use libp2p_core::{multiaddr::Protocol, multihash::Multihash, Multiaddr};
pub use libp2p_identity::PeerId;
/// The HTTP/3 codecs the crate reads with, for the targets' own checks.
pub use web_transport_proto;

use crate::{
    address, key_exchange,
    tls_switch::AlpnSwitch,
    webtransport::{certs::Certs, h3, upgrade, verifier},
};

const QUIC_V1: u32 = 1;
const ALPN_LIBP2P: &[u8] = b"libp2p";
const ALPN_H3: &[u8] = b"h3";

/// The identity of the fuzzed listener and of the seeds' certificates: fixed, so that runs
/// are repeatable.
fn keypair() -> libp2p_identity::Keypair {
    libp2p_identity::Keypair::ed25519_from_bytes([7; 32]).expect("32 bytes make an ed25519 key")
}

fn transport_parameters() -> TransportParameters {
    TransportParameters::read(quinn::Side::Server, &mut &[][..])
        .expect("no parameters are valid parameters")
}

/// The server side of a port shared by QUIC and WebTransport: the `AlpnSwitch` with the
/// routes a listener gives it, `h3` then `libp2p`.
pub struct ClientHelloRouter {
    switch: Arc<AlpnSwitch>,
}

/// What the router did with one connection's first CRYPTO bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The error code that refused the bytes, if any (feeding stops there, as quinn does).
    pub error: Option<u64>,
    /// Whether a chosen route's TLS session took the ClientHello and reported on it.
    pub handed_over: bool,
    /// The ALPN protocol that session negotiated.
    pub alpn: Option<Vec<u8>>,
}

impl ClientHelloRouter {
    /// The router of a listener of the fixed identity; building it takes milliseconds.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let keypair = keypair();
        let libp2p = crate::Config::new(&keypair).server_tls();
        let certs = Certs::new(
            &keypair,
            crate::config::DEFAULT_CERTIFICATE_LIFETIME,
            SystemTime::now(),
        );
        let switch = AlpnSwitch::new(vec![
            (ALPN_H3.to_vec(), certs.server_config()),
            (ALPN_LIBP2P.to_vec(), libp2p),
        ]);
        Self {
            switch: Arc::new(switch),
        }
    }

    /// Feeds `chunks`, in order, as the Initial CRYPTO data of one new connection.
    pub fn route(&self, chunks: &[&[u8]]) -> Routed {
        let mut session = self
            .switch
            .clone()
            .start_session(QUIC_V1, &transport_parameters());
        let mut error = None;
        for chunk in chunks {
            if let Err(refused) = session.read_handshake(chunk) {
                error = Some(u64::from(refused.code));
                break;
            }
        }
        let data = session
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok());
        Routed {
            error,
            handed_over: data.is_some(),
            alpn: data.and_then(|data| data.protocol),
        }
    }
}

/// The ServerHello a listener of ours answers `client_hello` with, for seeds.
pub fn server_hello(client_hello: &[u8]) -> Vec<u8> {
    let router = ClientHelloRouter::new();
    let mut session = router
        .switch
        .clone()
        .start_session(QUIC_V1, &transport_parameters());
    session
        .read_handshake(client_hello)
        .expect("the listener takes our dialer's ClientHello");
    // The Initial space's bytes: the ServerHello alone.
    let mut hello = Vec::new();
    session.write_handshake(&mut hello);
    hello
}

/// The first CRYPTO bytes a dialer of ours sends: its ClientHello, quinn's transport
/// parameters inside, for a WebTransport address (`webtransport`) or a QUIC one.
pub fn client_hello(webtransport: bool) -> Vec<u8> {
    let config: Arc<dyn crypto::ClientConfig> = if webtransport {
        verifier::client_config(Vec::new())
    } else {
        // As `Config::new` makes it.
        let tls = libp2p_tls::make_client_config(&keypair(), None)
            .expect("libp2p-tls makes a client config for an ed25519 identity");
        Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .expect("libp2p-tls's client config is valid for QUIC"),
        )
    };
    let mut session = config
        .start_session(QUIC_V1, "l", &transport_parameters())
        .expect("\"l\" is a valid server name");
    let mut hello = Vec::new();
    session.write_handshake(&mut hello);
    hello
}

/// The group of the key share in a ServerHello fed to a dialer's session in `chunks`, as the
/// dialer reads it: `None` while the message is not whole, `Some(None)` when it names none.
pub fn server_hello_group(chunks: &[&[u8]]) -> Option<Option<u16>> {
    let mut hello = key_exchange::ServerHello::Reading(Vec::new());
    for chunk in chunks {
        hello.read(chunk);
    }
    match hello {
        key_exchange::ServerHello::Reading(_) => None,
        key_exchange::ServerHello::Read(group) => Some(group.map(u16::from)),
    }
}

/// How a peer's unidirectional stream begins, as the WebTransport session reads it: its type
/// and, on a control stream, its SETTINGS; `None` when the type never comes.
pub async fn uni_stream<R: AsyncRead + Unpin>(
    recv: &mut R,
) -> Option<(VarInt, Option<Result<Settings, SettingsError>>)> {
    let kind = VarInt::read(recv).await.ok()?;
    if web_transport_proto::StreamUni(kind) != web_transport_proto::StreamUni::CONTROL {
        return Some((kind, None));
    }
    Some((kind, Some(h3::control_settings(kind, recv).await)))
}

/// Whether a client's SETTINGS pass the listener's check (HTTP/3 datagrams).
pub fn client_settings_accepted(settings: &Settings) -> bool {
    h3::h3_datagrams(settings)
}

/// A CONNECT request as the listener reads it from the session's request stream, and the
/// status it is refused with (`None`: accepted).
pub async fn connect_request<R: AsyncRead + Unpin>(
    recv: &mut R,
) -> Result<(ConnectRequest, Option<u16>), ConnectError> {
    let request = ConnectRequest::read(recv).await?;
    let refusal = upgrade::refusal(&request.url).map(|status| status.as_u16());
    Ok((request, refusal))
}

/// The path libp2p's WebTransport sessions are requested at.
pub const CONNECT_PATH: &str = h3::PATH;

/// The header that starts each stream of the session whose id is `session` (below 2^62).
pub fn stream_header(session: u64) -> Vec<u8> {
    h3::Header::new(session).as_bytes().to_vec()
}

/// Reads the header of a stream the peer opened on the session `session`, as the session
/// does: `Err(Some(code))` refuses the stream with `code`, `Err(None)` means it ended first.
pub async fn read_stream_header<R: AsyncRead + Unpin>(
    session: u64,
    recv: &mut R,
) -> Result<(), Option<u32>> {
    h3::Header::new(session).read(recv).await
}

/// What a dialer reads from a multiaddr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTarget {
    pub socket: SocketAddr,
    pub peer: Option<PeerId>,
    /// `Some` for WebTransport, with the address's certificate hashes.
    pub certhashes: Option<Vec<Multihash<64>>>,
}

/// The multiaddr as the transport's `dial` and `listen_on` parse it.
pub fn parse_multiaddr(addr: &Multiaddr) -> Option<DialTarget> {
    let target = address::parse_target(addr)?;
    Some(DialTarget {
        socket: target.socket,
        peer: target.peer,
        certhashes: target.webtransport,
    })
}

/// The WebTransport multiaddr a listener at `socket` announces with these hashes.
pub fn webtransport_multiaddr(socket: SocketAddr, hashes: &[Multihash<64>]) -> Multiaddr {
    address::to_webtransport_multiaddr(socket, hashes)
}

/// The URL of the CONNECT a dialer sends to `remote`.
pub fn connect_url(remote: SocketAddr) -> url::Url {
    upgrade::connect_url(remote)
}

/// A WebTransport certificate of ours: the current one, at `now`, of the fixed identity,
/// with the given lifetime.
pub fn webtransport_certificate(now: SystemTime, lifetime: Duration) -> Vec<u8> {
    Certs::new(&keypair(), lifetime, now)
        .current_certificate()
        .to_vec()
}

/// What the dialer's certificate verifier said of a certificate.
#[derive(Debug)]
pub enum Verdict {
    Accepted,
    /// Its hash is not one of the address's.
    Unlisted,
    /// Refused for another reason, in rustls's words.
    Refused(String),
}

/// The dialer's check of the server's certificate `der` against an address's `hashes`, at
/// `now` (seconds since the Unix epoch).
pub fn verify_certificate(der: &[u8], hashes: &[Multihash<64>], now: u64) -> Verdict {
    let verifier =
        verifier::CerthashVerifier::new(hashes.to_vec(), crate::webtransport::crypto_provider());
    let now = UnixTime::since_unix_epoch(Duration::from_secs(now));
    let name = ServerName::try_from("l").expect("\"l\" is a valid server name");
    match verifier.verify_server_cert(&CertificateDer::from(der), &[], &name, &[], now) {
        Ok(_) => Verdict::Accepted,
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)))
            if matches!(
                other.0.downcast_ref::<verifier::Refusal>(),
                Some(verifier::Refusal::UnlistedCerthash(_))
            ) =>
        {
            Verdict::Unlisted
        }
        Err(error) => Verdict::Refused(error.to_string()),
    }
}
