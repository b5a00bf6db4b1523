//! A hand-made WebTransport client for tests that misbehave on purpose: raw quinn, HTTP/3 by
//! hand with `web-transport-proto`, Noise with `libp2p-noise`. It trusts any certificate:
//! what it tests is the listener's side.

use std::{net::SocketAddr, sync::Arc};

use libp2p_core::upgrade::OutboundConnectionUpgrade;
use libp2p_identity::{Keypair, PeerId};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use web_transport_proto::{ConnectRequest, ConnectResponse, Settings, VarInt};

pub const PATH: &str = "/.well-known/libp2p-webtransport";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Trusts any server certificate: for clients whose test is about the server's side.
#[derive(Debug)]
pub struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client crypto config offering `alpn`, trusting any server, with no client certificate.
pub fn client_crypto(alpn: &[u8]) -> quinn::crypto::rustls::QuicClientConfig {
    client_crypto_with(alpn, provider())
}

/// [`client_crypto`] on `provider`'s algorithms.
fn client_crypto_with(
    alpn: &[u8],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> quinn::crypto::rustls::QuicClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()
}

/// A QUIC connection to `server` offering `alpn`, with no client certificate.
pub async fn connect(
    server: SocketAddr,
    alpn: &[u8],
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let client = quinn::ClientConfig::new(Arc::new(client_crypto(alpn)));
    connect_with(server, client).await
}

/// [`connect`], offering only the key-exchange `groups`, in this order.
pub async fn connect_offering(
    server: SocketAddr,
    alpn: &[u8],
    groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: groups.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let quic = client_crypto_with(alpn, Arc::new(provider));
    connect_with(server, quinn::ClientConfig::new(Arc::new(quic))).await
}

/// A QUIC connection to `server` with `client`'s config.
pub async fn connect_with(
    server: SocketAddr,
    client: quinn::ClientConfig,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint.connect_with(client, server, "localhost").unwrap();
    let connection = connecting.await;
    (endpoint, connection)
}

/// An HTTP/3 client's start: our SETTINGS (kept open: closing a control stream is an error),
/// then a CONNECT to `path_and_query`; the answer's status and the CONNECT stream.
pub async fn request(
    connection: &quinn::Connection,
    path_and_query: &str,
) -> (u16, quinn::SendStream, quinn::RecvStream, quinn::SendStream) {
    let mut control = connection.open_uni().await.unwrap();
    let mut settings = Settings::default();
    settings.enable_webtransport(1);
    settings.write(&mut control).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let url = format!("https://{}{path_and_query}", connection.remote_address());
    ConnectRequest::new(url::Url::parse(&url).unwrap())
        .write(&mut send)
        .await
        .unwrap();
    // The codec calls any status but 200 an error.
    let status = match ConnectResponse::read(&mut recv).await {
        Ok(response) => response.status,
        Err(web_transport_proto::ConnectError::WrongStatus(Some(status))) => status,
        Err(error) => panic!("bad CONNECT answer: {error}"),
    };
    (status.as_u16(), send, recv, control)
}

/// The header of a stream of the session whose CONNECT stream is `connect`.
pub fn header(connect: &quinn::SendStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    VarInt::from_u32(0x41).encode(&mut bytes);
    VarInt::from_u64(quinn::VarInt::from(connect.id()).into_inner())
        .unwrap()
        .encode(&mut bytes);
    bytes
}

/// Open a stream of the session and write its header and `data`.
pub async fn open(
    connection: &quinn::Connection,
    header: &[u8],
    data: &[u8],
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = connection.open_bi().await.unwrap();
    send.write_all(header).await.unwrap();
    send.write_all(data).await.unwrap();
    (send, recv)
}

/// Two quinn halves as one futures stream, for Noise.
pub struct Halves(pub quinn::SendStream, pub quinn::RecvStream);

impl futures::AsyncRead for Halves {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        futures::AsyncRead::poll_read(std::pin::Pin::new(&mut self.1), cx, buf)
    }
}

impl futures::AsyncWrite for Halves {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        futures::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.0), cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        futures::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.0), cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        futures::AsyncWrite::poll_close(std::pin::Pin::new(&mut self.0), cx)
    }
}

/// Noise as the initiator on `halves`, checking nothing of the certificate hashes.
pub async fn noise(halves: Halves) -> Result<PeerId, libp2p_noise::Error> {
    let config = libp2p_noise::Config::new(&Keypair::generate_ed25519())?;
    let (peer, mut output) = config.upgrade_outbound(halves, "/noise").await?;
    let _ = futures::AsyncWriteExt::close(&mut output).await;
    Ok(peer)
}

/// A WebTransport session, the client's side: a QUIC connection made with `client` (whose
/// crypto must offer ALPN `h3`: [`client_crypto`]), HTTP/3's SETTINGS and CONNECT, and Noise.
pub async fn session(server: SocketAddr, client: quinn::ClientConfig) -> Session {
    let (endpoint, connection) = connect_with(server, client).await;
    let connection = connection.expect("QUIC handshake");
    let (status, connect, recv, control) =
        request(&connection, &format!("{PATH}?type=noise")).await;
    assert_eq!(status, 200);
    let header = header(&connect);
    let (send, noise_recv) = open(&connection, &header, b"").await;
    noise(Halves(send, noise_recv)).await.expect("Noise");
    Session {
        header,
        connection,
        _kept: (endpoint, connect, recv, control),
    }
}

/// A WebTransport session up: its connection, the header of its streams, and what keeps it up
/// (the endpoint, the CONNECT stream, our control stream).
pub struct Session {
    pub header: Vec<u8>,
    pub connection: quinn::Connection,
    _kept: (
        quinn::Endpoint,
        quinn::SendStream,
        quinn::RecvStream,
        quinn::SendStream,
    ),
}
