//! libp2p over WebTransport, just far enough to authenticate: HTTP/3 session, then Noise XX on
//! the first bidirectional stream with the `webtransport_certhashes` extension (libp2p-noise
//! 0.47). For interop with go-libp2p v0.48 (both directions) and with itself.
//!
//! `wt-libp2p listen <seconds>` prints its address, serves `/quic-v1` (ALPN `libp2p`, mutual
//! TLS) and `/quic-v1/webtransport` (ALPN `h3`) on one UDP socket, logs what it sees.
//! `wt-libp2p dial <multiaddr>` dials a `/quic-v1/webtransport/certhash/…/p2p/…` address.

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::SystemTime};

use futures::AsyncWriteExt;
use libp2p_core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use multiaddr::{Multiaddr, Protocol};
use multihash::Multihash;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};
use web_transport_proto::http::StatusCode;
use wt_lab::{cert::CertSet, h3, switch::AlpnSwitch, Bi};

const PATH: &str = "/.well-known/libp2p-webtransport";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What both roles need of a connection that carries HTTP/3: uni streams for control and QPACK,
/// and QUIC datagrams (H3_DATAGRAM=1 in SETTINGS requires them).
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(5u32.into());
    t.datagram_receive_buffer_size(Some(16 * 1024));
    Arc::new(t)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("listen") => listen(args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(60)).await,
        Some("dial") => dial(args.get(1).expect("address").parse()?).await,
        _ => anyhow::bail!("usage: wt-libp2p listen <seconds> | dial <multiaddr>"),
    }
}

async fn listen(seconds: u64) -> anyhow::Result<()> {
    let keypair = libp2p_identity::Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    let certs = CertSet::new(&keypair, SystemTime::now())?;
    let cert = CertificateDer::from(certs.current.der.clone());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certs.current.key_pkcs8.clone()));
    let mut h3_tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    h3_tls.alpn_protocols = vec![b"h3".to_vec()];
    let switch = AlpnSwitch::new(vec![
        (
            b"libp2p".to_vec(),
            Arc::new(QuicServerConfig::try_from(libp2p_tls::make_server_config(&keypair)?)?),
        ),
        (b"h3".to_vec(), Arc::new(QuicServerConfig::try_from(h3_tls)?)),
    ]);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(switch));
    server.transport_config(transport());
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    let port = endpoint.local_addr()?.port();
    println!("/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{peer}");
    println!(
        "/ip4/127.0.0.1/udp/{port}/quic-v1/webtransport{}/p2p/{peer}",
        certs.addr_suffix()
    );
    let noise_hashes: HashSet<Multihash<64>> = certs.noise_hashes().into_iter().collect();

    let serve = async {
        while let Some(incoming) = endpoint.accept().await {
            let keypair = keypair.clone();
            let hashes = noise_hashes.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => return eprintln!("listener: handshake failed: {e}"),
                };
                let alpn = conn
                    .handshake_data()
                    .and_then(|d| d.downcast::<HandshakeData>().ok())
                    .and_then(|d| d.protocol)
                    .unwrap_or_default();
                if alpn == b"libp2p" {
                    let chain = conn
                        .peer_identity()
                        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok());
                    let peer = chain
                        .and_then(|c| libp2p_tls::certificate::parse(&c[0]).ok().map(|c| c.peer_id()));
                    eprintln!("listener: QUIC (ALPN libp2p) from {:?}", peer);
                    conn.closed().await;
                    return;
                }
                match serve_session(conn, keypair, hashes).await {
                    Ok(()) => {}
                    Err(e) => eprintln!("listener: session failed: {e:#}"),
                }
            });
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(seconds), serve).await;
    Ok(())
}

async fn serve_session(
    conn: quinn::Connection,
    keypair: libp2p_identity::Keypair,
    hashes: HashSet<Multihash<64>>,
) -> anyhow::Result<()> {
    let request = h3::accept(&conn).await?;
    let url = request.request.url.clone();
    let types: Vec<_> = url
        .query_pairs()
        .filter(|(k, _)| k == "type")
        .map(|(_, v)| v.into_owned())
        .collect();
    let status = if url.path() != PATH {
        StatusCode::NOT_FOUND
    } else if types != ["noise"] {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    eprintln!("listener: CONNECT {url} -> {}", status.as_u16());
    let Some(session) = request.respond(status).await? else {
        return Ok(());
    };
    // The client's first bidirectional stream carries Noise; we are the responder and send
    // last, current and next certhashes.
    let (send, recv) = session.accept_bi().await?;
    let config = libp2p_noise::Config::new(&keypair)?.with_webtransport_certhashes(hashes);
    let (peer, mut noise) = config.upgrade_inbound(Bi { send, recv }, "/noise").await?;
    noise.close().await?;
    eprintln!("listener: Noise OK over WebTransport session {}, remote peer {peer}", session.id);
    // Later streams: log them (a go-libp2p dialer opens identify etc. with multistream-select).
    loop {
        let (_send, mut recv) = session.accept_bi().await?;
        let mut buf = [0u8; 64];
        let n = recv.read(&mut buf).await?.unwrap_or(0);
        eprintln!(
            "listener: stream {} (raw quinn halves) starts {:?}",
            recv.id(),
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

/// The dialer's certificate check: the certificate's SHA-256 is one of the address's certhashes
/// (no CA, no name).
#[derive(Debug)]
struct CertHashes(Vec<[u8; 32]>);

impl ServerCertVerifier for CertHashes {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let hash: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, end_entity)
            .as_ref()
            .try_into()
            .unwrap();
        if self.0.contains(&hash) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

async fn dial(addr: Multiaddr) -> anyhow::Result<()> {
    let (mut ip, mut port, mut hashes, mut expected) = (None, None, Vec::new(), None);
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::from(a)),
            Protocol::Ip6(a) => ip = Some(a.into()),
            Protocol::Udp(p) => port = Some(p),
            Protocol::Certhash(h) if h.code() == 0x12 => hashes.push(h),
            Protocol::P2p(p) => expected = Some(p),
            _ => {}
        }
    }
    let remote = SocketAddr::new(ip.expect("ip"), port.expect("udp port"));
    let digests = hashes
        .iter()
        .map(|h| h.digest().try_into())
        .collect::<Result<Vec<[u8; 32]>, _>>()?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CertHashes(digests)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    client.transport_config(transport());
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let conn = endpoint.connect_with(client, remote, "localhost")?.await?;
    eprintln!("dialer: QUIC up (ALPN h3), certificate matched a certhash");
    let url = url::Url::parse(&format!("https://{remote}{PATH}?type=noise"))?;
    let session = h3::connect(&conn, url).await?;
    eprintln!("dialer: WebTransport session {} up", session.id);
    let (send, recv) = session.open_bi().await?;
    let config = libp2p_noise::Config::new(&libp2p_identity::Keypair::generate_ed25519())?
        .with_webtransport_certhashes(hashes.iter().copied().collect());
    let (peer, mut noise) = config.upgrade_outbound(Bi { send, recv }, "/noise").await?;
    noise.close().await?;
    if let Some(expected) = expected {
        anyhow::ensure!(peer == expected, "peer id {peer}, expected {expected}");
    }
    eprintln!("dialer: Noise OK, remote peer {peer}; the address's certhashes are in its list");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    conn.close(0x100u32.into(), b"");
    endpoint.wait_idle().await;
    Ok(())
}
