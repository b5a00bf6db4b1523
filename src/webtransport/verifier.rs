//! The dialer's TLS for a WebTransport address: no certificate authority, the server's
//! certificate is pinned by the address's `/certhash/`es, as a browser's
//! `serverCertificateHashes` and go-libp2p's `verifyRawCerts` do.

use std::{fmt, sync::Arc, time::Duration};

use libp2p_core::multihash::Multihash;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    CertificateError, DigitallySignedStruct, OtherError, SignatureScheme,
};
use x509_parser::oid_registry::{OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS};

use super::certs::certhash;

/// The longest validity a pinned certificate may have (the W3C WebTransport rule, which
/// Chromium enforces): a leaked key cannot be used for longer.
const MAX_VALIDITY: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// The TLS config to dial a WebTransport address whose certificate hashes are `hashes`:
/// TLS 1.3, ALPN `h3`, no client certificate (Noise authenticates us inside the session).
pub(crate) fn client_config(hashes: Vec<Multihash<64>>) -> Arc<QuicClientConfig> {
    let provider = super::crypto_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CerthashVerifier::new(hashes, provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h3".to_vec()];
    // A config serves one dial, so its session cache (~4.7 KB, kept as long as the connection)
    // would only ever hold tickets nobody presents.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(
        QuicClientConfig::try_from(config)
            .expect("aws-lc-rs's TLS 1.3 suites include the one QUIC's Initial packets need"),
    )
}

/// Accepts the server's certificate iff its hash is one of `hashes`, its key is not RSA, it is
/// valid for at most [`MAX_VALIDITY`], and now is within its validity.
#[derive(Debug)]
pub(crate) struct CerthashVerifier {
    hashes: Vec<Multihash<64>>,
    provider: Arc<CryptoProvider>,
}

impl CerthashVerifier {
    pub(crate) fn new(hashes: Vec<Multihash<64>>, provider: Arc<CryptoProvider>) -> Self {
        Self { hashes, provider }
    }
}

impl ServerCertVerifier for CerthashVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = certhash(end_entity);
        if !self.hashes.contains(&presented) {
            return Err(refuse(Refusal::UnlistedCerthash(presented)));
        }
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let key_algorithm = &cert.public_key().algorithm.algorithm;
        if *key_algorithm == OID_PKCS1_RSAENCRYPTION || *key_algorithm == OID_PKCS1_RSASSAPSS {
            return Err(refuse(Refusal::RsaKey));
        }
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let validity = not_after.saturating_sub(not_before);
        if validity > MAX_VALIDITY.as_secs() as i64 {
            return Err(refuse(Refusal::TooLong(validity)));
        }
        let now = now.as_secs() as i64;
        if now < not_before {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        if now > not_after {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The config offers TLS 1.3 only; say so should rustls ever ask.
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

/// Why a certificate that parses was refused, where rustls has no words for it.
pub(crate) enum Refusal {
    UnlistedCerthash(Multihash<64>),
    RsaKey,
    /// The validity in seconds.
    TooLong(i64),
}

fn refuse(refusal: Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnlistedCerthash(hash) => {
                let hex: String = hash.digest().iter().map(|b| format!("{b:02x}")).collect();
                write!(
                    f,
                    "certificate sha-256 {hex} is not one of the address's certhashes"
                )
            }
            Refusal::RsaKey => write!(f, "certificate has an RSA key, which WebTransport refuses"),
            Refusal::TooLong(seconds) => write!(
                f,
                "certificate is valid for {seconds} s, more than the 14 days WebTransport allows"
            ),
        }
    }
}

// rustls prints `CertificateError::Other` with `{:?}`: let that read as the sentence.
impl fmt::Debug for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests;
