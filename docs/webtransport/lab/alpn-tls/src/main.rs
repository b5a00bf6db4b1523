//! One quinn endpoint, two TLS personalities chosen by ALPN.
//!
//! Server modes:
//! - `single`: one rustls `ServerConfig` for both ALPNs: the certificate picked by ALPN
//!   (`ResolvesServerCert` sees `ClientHello::alpn()`), the client-certificate verifier
//!   optional (it cannot see the ALPN, so it offers client auth to everyone).
//! - `switch`: [`switch::AlpnSwitch`]: a quinn crypto config that reads the ClientHello and then
//!   runs libp2p-tls's own server config (mandatory client auth) for `libp2p`, or a WebTransport
//!   config (`with_no_client_auth`) for `h3`.
//!
//! Clients: rustls with a client-certificate resolver that records whether it was asked, which
//! it is exactly when the server sent a CertificateRequest.

mod switch;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ClientHello, ResolvesServerCert,
    },
    sign::CertifiedKey,
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn sha256(der: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .try_into()
        .unwrap()
}

fn short(hash: &[u8]) -> String {
    hash[..4].iter().map(|b| format!("{b:02x}")).collect()
}

// ---------- server side ----------

struct Identity {
    keypair: libp2p_identity::Keypair,
    /// The WebTransport certificate (ECDSA P-256, self-signed) and its key.
    wt_cert: CertificateDer<'static>,
    wt_key: PrivateKeyDer<'static>,
}

impl Identity {
    fn new() -> anyhow::Result<Self> {
        let wt = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        Ok(Self {
            keypair: libp2p_identity::Keypair::generate_ed25519(),
            wt_cert: CertificateDer::from(wt.cert.der().to_vec()),
            wt_key: PrivateKeyDer::Pkcs8(wt.key_pair.serialize_der().into()),
        })
    }
}

/// The `h3` rustls config: the WebTransport certificate, no client authentication.
fn h3_server_config(id: &Identity) -> anyhow::Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![id.wt_cert.clone()], id.wt_key.clone_key())?;
    config.alpn_protocols = vec![b"h3".to_vec()];
    Ok(config)
}

/// Mode `switch`: libp2p-tls's server config and the h3 config behind one ALPN switch.
fn switch_server(id: &Identity) -> anyhow::Result<quinn::ServerConfig> {
    let libp2p = QuicServerConfig::try_from(libp2p_tls::make_server_config(&id.keypair)?)?;
    let h3 = QuicServerConfig::try_from(h3_server_config(id)?)?;
    let switch = switch::AlpnSwitch::new(vec![
        (b"libp2p".to_vec(), Arc::new(libp2p)),
        (b"h3".to_vec(), Arc::new(h3)),
    ]);
    Ok(quinn::ServerConfig::with_crypto(Arc::new(switch)))
}

/// Certificate by ALPN: the one thing `ResolvesServerCert` can do with the ALPN.
#[derive(Debug)]
struct ByAlpn {
    libp2p: Arc<CertifiedKey>,
    h3: Arc<CertifiedKey>,
}

impl ResolvesServerCert for ByAlpn {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello.alpn()?.find_map(|p| match p {
            b"libp2p" => Some(self.libp2p.clone()),
            b"h3" => Some(self.h3.clone()),
            _ => None,
        })
    }
}

/// The best a single config can do: offer client auth, not require it (the verifier has no
/// access to the ALPN), and check libp2p's certificate when one comes.
#[derive(Debug)]
struct OptionalLibp2pClientAuth(Arc<CryptoProvider>);

impl ClientCertVerifier for OptionalLibp2pClientAuth {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        libp2p_tls::certificate::parse(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        libp2p_tls::certificate::parse(cert)
            .ok()
            .and_then(|c| c.verify_signature(dss.scheme, message, dss.signature()).ok())
            .map(|_| HandshakeSignatureValid::assertion())
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature,
            ))
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
}

/// Mode `single`.
fn single_server(id: &Identity) -> anyhow::Result<quinn::ServerConfig> {
    let provider = provider();
    let (cert, key) = libp2p_tls::certificate::generate(&id.keypair)?;
    // (`CertifiedKey::from_der` would check the pair with webpki, which refuses libp2p's
    // critical extension.)
    let libp2p = CertifiedKey::new(vec![cert], provider.key_provider.load_private_key(key)?);
    let h3 = CertifiedKey::new(
        vec![id.wt_cert.clone()],
        provider.key_provider.load_private_key(id.wt_key.clone_key())?,
    );
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(OptionalLibp2pClientAuth(provider)))
        .with_cert_resolver(Arc::new(ByAlpn {
            libp2p: Arc::new(libp2p),
            h3: Arc::new(h3),
        }));
    config.alpn_protocols = vec![b"libp2p".to_vec(), b"h3".to_vec()];
    Ok(quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(config)?,
    )))
}

/// What the server saw of one connection.
fn server_view(conn: &quinn::Connection) -> String {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .unwrap_or_else(|| "-".into());
    let client_cert = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned());
    let peer = match client_cert {
        Some(cert) => match libp2p_tls::certificate::parse(&cert) {
            Ok(c) => format!("client cert, peer {}", c.peer_id()),
            Err(_) => "client cert (not libp2p)".into(),
        },
        None => "NO client cert".into(),
    };
    format!("alpn={alpn}, {peer}")
}

// ---------- client side ----------

/// A client-certificate resolver that only records whether the server asked for a certificate.
#[derive(Debug, Default)]
struct Asked(AtomicBool);

impl rustls::client::ResolvesClientCert for Asked {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::SeqCst);
        None
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The dialer's check of a WebTransport server: the certificate's SHA-256 must be one of the
/// address's certhashes (no CA). Records the hash it saw.
#[derive(Debug)]
struct CertHashes {
    allowed: Vec<[u8; 32]>,
    seen: Mutex<Option<[u8; 32]>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CertHashes {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let hash = sha256(end_entity);
        *self.seen.lock().unwrap() = Some(hash);
        if self.allowed.is_empty() || self.allowed.contains(&hash) {
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
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.allowed.is_empty() {
            // A probe that does not care who the server is (it dials ALPN `libp2p`, whose
            // certificate webpki cannot parse).
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

enum Client {
    /// A browser-like client: these ALPNs, no client certificate, certhash check.
    NoCert {
        alpn: Vec<Vec<u8>>,
        hashes: Vec<[u8; 32]>,
    },
    /// libp2p-tls's client config (ALPN `libp2p`, client certificate).
    Libp2p,
}

async fn run_client(
    name: &str,
    server: SocketAddr,
    client: Client,
    accepted: &mut tokio::sync::mpsc::Receiver<String>,
) -> anyhow::Result<()> {
    let asked = Arc::new(Asked::default());
    let mut verifier = None;
    let libp2p_client = matches!(client, Client::Libp2p);
    let config = match client {
        Client::NoCert { alpn, hashes } => {
            let v = Arc::new(CertHashes {
                allowed: hashes,
                seen: Mutex::new(None),
                provider: provider(),
            });
            verifier = Some(v.clone());
            let mut c = rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(v)
                .with_client_cert_resolver(asked.clone());
            c.alpn_protocols = alpn;
            c
        }
        Client::Libp2p => libp2p_tls::make_client_config(
            &libp2p_identity::Keypair::generate_ed25519(),
            None,
        )?,
    };
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(config)?));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let result = endpoint.connect(server, "localhost")?.await;
    let cert = verifier
        .and_then(|v| *v.seen.lock().unwrap())
        .map(|h| format!(", server cert sha256 {}…", short(&h)))
        .unwrap_or_default();
    let asked = if libp2p_client {
        "(libp2p-tls's own cert resolver)"
    } else if asked.0.load(Ordering::SeqCst) {
        "CertificateRequest RECEIVED"
    } else {
        "no CertificateRequest"
    };
    let view = tokio::time::timeout(std::time::Duration::from_secs(2), accepted.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "?".into());
    match result {
        Ok(conn) => {
            // Let the server finish its side (it may close a connection it refuses).
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let closed = conn
                .close_reason()
                .map(|r| format!(", then closed: {r}"))
                .unwrap_or_default();
            println!("  {name:<34} client: connected, {asked}{cert}{closed}\n  {:<34} server: {view}", "");
            conn.close(0u32.into(), b"");
        }
        Err(e) => println!(
            "  {name:<34} client: FAILED ({e}), {asked}{cert}\n  {:<34} server: {view}",
            ""
        ),
    }
    endpoint.wait_idle().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let id = Identity::new()?;
    let wt_hash = sha256(&id.wt_cert);
    println!("WebTransport certificate sha256 {}…", short(&wt_hash));
    for mode in ["single", "switch"] {
        let server = match mode {
            "single" => single_server(&id)?,
            _ => switch_server(&id)?,
        };
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
        let addr = endpoint.local_addr()?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    // Route by ALPN before the handshake completes, as a shared listener must
                    // (to name the right libp2p listener in `TransportEvent::Incoming`).
                    let mut connecting = match incoming.accept() {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(format!("accept failed: {e}")).await;
                            return;
                        }
                    };
                    let early = match connecting.handshake_data().await {
                        Ok(d) => d
                            .downcast::<HandshakeData>()
                            .ok()
                            .and_then(|d| d.protocol)
                            .map(|p| String::from_utf8_lossy(&p).into_owned())
                            .unwrap_or_else(|| "-".into()),
                        Err(_) => "(none)".into(),
                    };
                    match connecting.await {
                        Ok(conn) => {
                            let view = format!("ALPN before handshake end: {early}; {}", server_view(&conn));
                            let _ = tx.send(view).await;
                            conn.closed().await;
                        }
                        Err(e) => {
                            let _ = tx.send(format!("handshake failed: {e}")).await;
                        }
                    }
                });
            }
        });
        println!("\nmode {mode}:");
        let h3 = |alpn: &[&[u8]]| Client::NoCert {
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
            hashes: vec![wt_hash],
        };
        run_client("h3, no client cert", addr, h3(&[b"h3"]), &mut rx).await?;
        run_client("libp2p-tls client", addr, Client::Libp2p, &mut rx).await?;
        run_client(
            "libp2p ALPN, no client cert",
            addr,
            Client::NoCert {
                alpn: vec![b"libp2p".to_vec()],
                hashes: vec![],
            },
            &mut rx,
        )
        .await?;
        run_client("offers [h3, libp2p]", addr, h3(&[b"h3", b"libp2p"]), &mut rx).await?;
        // A ClientHello over several Initial packets (as Chromium's with a post-quantum key
        // share): 80 extra ALPN entries of 40 bytes.
        let filler: Vec<Vec<u8>> = (0..80).map(|i| format!("{i:0>40}").into_bytes()).collect();
        let mut big: Vec<&[u8]> = filler.iter().map(|v| v.as_slice()).collect();
        big.push(b"h3");
        run_client("h3, 3.4 KB ClientHello", addr, h3(&big), &mut rx).await?;
        run_client("unknown ALPN only", addr, h3(&[b"foo"]), &mut rx).await?;
        endpoint.close(0u32.into(), b"");
    }
    Ok(())
}
