//! A WebTransport echo server on one quinn endpoint that also speaks libp2p's TLS, for a real
//! Chromium. Usage: `wt-server <switch|single> <seconds>`; prints one JSON line (port, hashes),
//! then logs what it sees on stderr.
//!
//! - `switch`: ALPN switch: `h3` gets the derived WebTransport certificate and no
//!   CertificateRequest; `libp2p` gets libp2p-tls's mutual TLS.
//! - `single`: one rustls config for both ALPNs, client auth offered to everyone (optional):
//!   the browser receives a CertificateRequest.
//!
//! Per session: a stream the server opens ("from-server"); every stream the page opens is echoed,
//! except one whose content is "reset-me": its send half is reset with WebTransport code 42 and
//! its receive half stopped with code 7. Resets and stops from the page are logged decoded.

use std::{sync::Arc, time::SystemTime};

use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use web_transport_proto::http::StatusCode;
use wt_lab::{
    cert::CertSet,
    h3::{self, from_wire, to_wire},
    switch::AlpnSwitch,
};

const PATH: &str = "/.well-known/libp2p-webtransport";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn h3_rustls(cert: &CertificateDer<'static>, key: &PrivateKeyDer<'static>) -> anyhow::Result<rustls::ServerConfig> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.clone_key())?;
    c.alpn_protocols = vec![b"h3".to_vec()];
    Ok(c)
}

/// Offers client auth to every client, requires it of none (mode `single`).
#[derive(Debug)]
struct Optional(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for Optional {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls12".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // HTTP/3 needs the peer's control and two QPACK streams; go-libp2p allows 5.
    t.max_concurrent_uni_streams(5u32.into());
    // H3 datagrams (which Chromium and webtransport-go require in SETTINGS) need QUIC's
    // DATAGRAM transport parameter; a small buffer bounds what a peer can park in it.
    t.datagram_receive_buffer_size(Some(16 * 1024));
    Arc::new(t)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "switch".into());
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60);

    let keypair = libp2p_identity::Keypair::ed25519_from_bytes([7u8; 32])?;
    let certs = CertSet::new(&keypair, SystemTime::now())?;
    let cert = CertificateDer::from(certs.current.der.clone());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certs.current.key_pkcs8.clone()));

    let crypto: Arc<dyn quinn::crypto::ServerConfig> = match mode.as_str() {
        "switch" => Arc::new(AlpnSwitch::new(vec![
            (
                b"libp2p".to_vec(),
                Arc::new(QuicServerConfig::try_from(libp2p_tls::make_server_config(&keypair)?)?),
            ),
            (b"h3".to_vec(), Arc::new(QuicServerConfig::try_from(h3_rustls(&cert, &key)?)?)),
        ])),
        "single" => {
            let mut c = rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_client_cert_verifier(Arc::new(Optional(provider())))
                .with_single_cert(vec![cert.clone()], key.clone_key())?;
            c.alpn_protocols = vec![b"h3".to_vec(), b"libp2p".to_vec()];
            Arc::new(QuicServerConfig::try_from(c)?)
        }
        other => anyhow::bail!("mode {other}?"),
    };
    let mut server = quinn::ServerConfig::with_crypto(crypto);
    server.transport_config(transport());
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    let port = endpoint.local_addr()?.port();
    println!(
        "{{\"port\":{port},\"peer\":\"{}\",\"hashes\":[\"{}\",\"{}\"],\"addr\":\"/ip4/127.0.0.1/udp/{port}/quic-v1/webtransport{}/p2p/{}\"}}",
        keypair.public().to_peer_id(),
        hex(&certs.current.sha256),
        hex(&certs.next.sha256),
        certs.addr_suffix(),
        keypair.public().to_peer_id(),
    );

    let serve = async {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        let alpn = conn
                            .handshake_data()
                            .and_then(|d| d.downcast::<HandshakeData>().ok())
                            .and_then(|d| d.protocol)
                            .unwrap_or_default();
                        eprintln!("conn from {}: ALPN {:?}", conn.remote_address(), String::from_utf8_lossy(&alpn));
                        if alpn == b"h3" {
                            if let Err(e) = serve_h3(conn).await {
                                eprintln!("  session ended: {e:#}");
                            }
                        }
                    }
                    Err(e) => eprintln!("handshake failed: {e}"),
                }
            });
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(seconds), serve).await;
    Ok(())
}

async fn serve_h3(conn: quinn::Connection) -> anyhow::Result<()> {
    let request = h3::accept(&conn).await?;
    let url = request.request.url.clone();
    let status = if url.path() != PATH {
        StatusCode::NOT_FOUND
    } else if url.query_pairs().filter(|(k, _)| k == "type").map(|(_, v)| v.into_owned()).collect::<Vec<_>>() != ["noise"] {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    eprintln!("  CONNECT {} -> {}", url, status.as_u16());
    let Some(session) = request.respond(status).await? else {
        // Let the browser read the response before the connection goes.
        conn.closed().await;
        return Ok(());
    };
    eprintln!("  session {} established", session.id);
    let session = Arc::new(session);

    // A stream we open: raw quinn halves after the header.
    let (mut send, _recv) = session.open_bi().await?;
    eprintln!("  opened stream {} (raw quinn halves)", send.id());
    send.write_all(b"from-server").await?;
    send.finish()?;

    loop {
        let (mut send, mut recv) = match session.accept_bi().await {
            Ok(s) => s,
            Err(e) => return Err(e),
        };
        tokio::spawn(async move {
            let id = recv.id();
            match recv.read_to_end(1 << 16).await {
                Ok(data) if data == b"reset-me" => {
                    let _ = send.reset(to_wire(42));
                    eprintln!("  stream {id}: got {:?}; reset with WT code 42 (wire {:#x})", String::from_utf8_lossy(&data), to_wire(42).into_inner());
                }
                Ok(data) => {
                    eprintln!("  stream {id}: echo {:?}", String::from_utf8_lossy(&data));
                    let _ = send.write_all(&data).await;
                    let _ = send.finish();
                    match send.stopped().await {
                        Ok(Some(code)) => eprintln!("  stream {id}: peer STOP_SENDING wire {:#x} -> WT code {:?}", code.into_inner(), from_wire(code)),
                        _ => {}
                    }
                }
                Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
                    eprintln!("  stream {id}: peer RESET_STREAM wire {:#x} -> WT code {:?}", code.into_inner(), from_wire(code));
                    let stopped = tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await;
                    if let Ok(Ok(Some(code))) = stopped {
                        eprintln!("  stream {id}: peer STOP_SENDING wire {:#x} -> WT code {:?}", code.into_inner(), from_wire(code));
                    }
                }
                Err(e) => eprintln!("  stream {id}: {e}"),
            }
        });
    }
}
