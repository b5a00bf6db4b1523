use std::time::{SystemTime, UNIX_EPOCH};

use super::*;
use crate::webtransport::certs::{tests::dial, Certs, DEFAULT_LIFETIME};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn keypair() -> libp2p_identity::Keypair {
    libp2p_identity::Keypair::ed25519_from_bytes([7; 32]).unwrap()
}

fn verifier(hashes: Vec<Multihash<64>>) -> CerthashVerifier {
    CerthashVerifier {
        hashes,
        provider: crate::webtransport::crypto_provider(),
    }
}

fn verify(
    verifier: &CerthashVerifier,
    cert: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from("localhost").unwrap();
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap());
    verifier
        .verify_server_cert(cert, &[], &name, &[], now)
        .map(|_| ())
}

#[test]
fn accepts_a_listed_certificate_during_its_validity() {
    let now = SystemTime::now();
    let certs = Certs::new(&keypair(), DEFAULT_LIFETIME, now);
    let cert = certs.current_certificate();
    verify(&verifier(certs.address_hashes().to_vec()), &cert, now).unwrap();
    verify(&verifier(vec![certhash(&cert)]), &cert, now).unwrap();
}

#[test]
fn refuses_an_unlisted_certificate_naming_certhashes() {
    let now = SystemTime::now();
    let certs = Certs::new(&keypair(), DEFAULT_LIFETIME, now);
    let [_, next] = certs.address_hashes();
    let error = verify(&verifier(vec![next]), &certs.current_certificate(), now).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("not one of the address's certhashes"),
        "{text}"
    );
}

#[test]
fn the_hash_must_be_sha2_256() {
    let now = SystemTime::now();
    let certs = Certs::new(&keypair(), DEFAULT_LIFETIME, now);
    let cert = certs.current_certificate();
    let digest = certhash(&cert).digest().to_vec();
    // The same digest under the sha2-512 code is not a match.
    let other_code = Multihash::wrap(0x13, &digest).unwrap();
    verify(&verifier(vec![other_code]), &cert, now).unwrap_err();
}

#[test]
fn refuses_a_certificate_outside_its_validity() {
    let made = SystemTime::now();
    let certs = Certs::new(&keypair(), DEFAULT_LIFETIME, made);
    let cert = certs.current_certificate();
    let verifier = verifier(certs.address_hashes().to_vec());
    assert_eq!(
        verify(&verifier, &cert, made + 15 * DAY),
        Err(rustls::Error::InvalidCertificate(CertificateError::Expired))
    );
    assert_eq!(
        verify(&verifier, &cert, made - 15 * DAY),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet
        ))
    );
}

#[test]
fn refuses_a_certificate_valid_for_more_than_fourteen_days() {
    let now = SystemTime::now();
    let certs = Certs::new(&keypair(), 15 * DAY, now);
    let error = verify(
        &verifier(certs.address_hashes().to_vec()),
        &certs.current_certificate(),
        now,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("more than the 14 days"),
        "{error}"
    );
    // Exactly 14 days is allowed (that is the default).
    let certs = Certs::new(&keypair(), 14 * DAY, now);
    let cert = certs.current_certificate();
    verify(&verifier(vec![certhash(&cert)]), &cert, now).unwrap();
}

#[test]
fn refuses_a_certificate_with_an_rsa_key() {
    // The refusal reads only the key's algorithm, so a certificate naming an RSA key, signed
    // with made-up bytes, is enough (and quicker than making an RSA key).
    struct FakeRsa;
    impl rcgen::RemoteKeyPair for FakeRsa {
        fn public_key(&self) -> &[u8] {
            // RSAPublicKey { n: 0xc00102, e: 65537 } (PKCS#1).
            &[
                0x30, 0x0b, 0x02, 0x04, 0x00, 0xc0, 0x01, 0x02, 0x02, 0x03, 0x01, 0x00, 0x01,
            ]
        }
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
            Ok(vec![0; 16])
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_RSA_SHA256
        }
    }
    let now = SystemTime::now();
    let mut params = rcgen::CertificateParams::default();
    params.not_before = (now - DAY).into();
    params.not_after = (now + DAY).into();
    let key = rcgen::KeyPair::from_remote(Box::new(FakeRsa)).unwrap();
    let cert = params.self_signed(&key).unwrap().der().clone();
    let error = verify(&verifier(vec![certhash(&cert)]), &cert, now).unwrap_err();
    assert!(error.to_string().contains("RSA"), "{error}");
}

#[tokio::test]
async fn a_handshake_with_an_unlisted_hash_fails_with_the_reason() {
    let certs = Certs::new(&keypair(), DEFAULT_LIFETIME, SystemTime::now());
    let [_, next] = certs.address_hashes();
    let error = dial(certs.server_config(), client_config(vec![next]))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("certhashes"), "{text}");
}

#[tokio::test]
async fn a_handshake_with_a_listed_hash_succeeds() {
    let certs = Certs::new(&keypair(), DEFAULT_LIFETIME, SystemTime::now());
    let [current, _] = certs.address_hashes();
    assert_eq!(
        dial(certs.server_config(), client_config(vec![current]))
            .await
            .unwrap(),
        current
    );
}
