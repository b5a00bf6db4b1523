use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::*;

use super::*;
use crate::webtransport::verifier;

const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const SHORT: Duration = Duration::from_secs(4);

fn keypair(seed: u8) -> libp2p_identity::Keypair {
    libp2p_identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

/// 2026-12-04 10:00:00 UTC and a few odd seconds, far from any epoch-aligned value.
fn some_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_796_378_400_123)
}

/// Dials `server` on loopback with `client`; the certificate the client was shown, as a
/// certhash, or why the handshake failed.
pub(crate) async fn dial(
    server: Arc<QuicServerConfig>,
    client: Arc<QuicClientConfig>,
) -> Result<Multihash<64>, quinn::ConnectionError> {
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(server),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let address = server.local_addr().unwrap();
    let accepting = server.clone();
    let accept = tokio::spawn(async move {
        let incoming = accepting.accept().await?;
        let connection = incoming.await.ok()?;
        connection.closed().await;
        Some(())
    });
    let client_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = client_endpoint
        .connect_with(quinn::ClientConfig::new(client), address, "localhost")
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("handshake ends within 10 s")
        .map(|connection| {
            let chain = connection
                .peer_identity()
                .unwrap()
                .downcast::<Vec<CertificateDer<'static>>>()
                .unwrap();
            connection.close(0u32.into(), b"");
            certhash(&chain[0])
        });
    server.close(0u32.into(), b"");
    accept.abort();
    outcome
}

fn parsed<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    let (rest, cert) = parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn current_not_before(certs: &Certs) -> SystemTime {
    certs.state().current.not_before
}

#[test]
fn same_identity_and_time_give_the_same_certificates() {
    let a = Certs::new(&keypair(1), DEFAULT_LIFETIME, some_time());
    let b = Certs::new(&keypair(1), DEFAULT_LIFETIME, some_time());
    assert_eq!(a.current_certificate(), b.current_certificate());
    assert_eq!(a.address_hashes(), b.address_hashes());
    assert_eq!(a.noise_hashes(), b.noise_hashes());
    let other = Certs::new(&keypair(2), DEFAULT_LIFETIME, some_time());
    assert_ne!(a.address_hashes()[0], other.address_hashes()[0]);
}

#[test]
fn a_restart_three_hours_later_serves_the_same_hashes() {
    let first = Certs::new(&keypair(1), DEFAULT_LIFETIME, some_time());
    // Far enough from a roll that three hours do not cross it.
    let start = first.next_roll() - 5 * HOUR;
    let before = Certs::new(&keypair(1), DEFAULT_LIFETIME, start);
    let after = Certs::new(&keypair(1), DEFAULT_LIFETIME, start + 3 * HOUR);
    assert_eq!(before.address_hashes(), after.address_hashes());
    assert_eq!(before.address_hashes(), first.address_hashes());
}

#[test]
fn default_lifetime_follows_gos_schedule_exactly() {
    // go-libp2p's cert_manager.go, in milliseconds as go computes it.
    const VALIDITY: i128 = 14 * 24 * 3_600_000;
    const SKEW: i128 = 3_600_000;
    const BUCKET: i128 = VALIDITY - 2 * SKEW;
    for seed in 0..8 {
        let keypair = keypair(seed);
        let raw = keypair.public().try_into_ed25519().unwrap().to_bytes();
        let offset = i128::from(u16::from_le_bytes([raw[0], raw[1]])) * 60_000 % VALIDITY;
        for days in [0, 3, 7, 11, 13, 100] {
            let now = some_time() + days * DAY + seed as u32 * 7 * HOUR;
            let now_ms = now.duration_since(UNIX_EPOCH).unwrap().as_millis() as i128;
            let go_start = offset + (now_ms - SKEW - offset) / BUCKET * BUCKET;
            let at = |ms: i128| UNIX_EPOCH + Duration::from_millis(ms as u64);

            let certs = Certs::new(&keypair, DEFAULT_LIFETIME, now);
            assert_eq!(certs.schedule.skew, HOUR);
            assert_eq!(certs.schedule.bucket(), 14 * DAY - 2 * HOUR);
            let state = certs.state();
            assert_eq!(
                state.current.not_before,
                at(go_start),
                "seed {seed}, day {days}"
            );
            assert_eq!(state.next.not_before, at(go_start + VALIDITY - 2 * SKEW));
            assert!(state.last.is_none());
            drop(state);
            assert_eq!(certs.next_roll(), at(go_start + VALIDITY - SKEW));
        }
    }
}

#[test]
fn certificates_are_valid_for_exactly_the_lifetime_from_before_now_minus_skew() {
    for lifetime in [DEFAULT_LIFETIME, DAY, SHORT] {
        let now = some_time();
        let certs = Certs::new(&keypair(3), lifetime, now);
        let der = certs.current_certificate();
        let cert = parsed(&der);
        let validity = cert.validity();
        let seconds = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert_eq!(seconds as u64, lifetime.as_secs(), "{lifetime:?}");
        let not_before = UNIX_EPOCH + Duration::from_secs(validity.not_before.timestamp() as u64);
        assert!(not_before <= now - certs.schedule.skew, "{lifetime:?}");
        assert!(now < certs.next_roll());
    }
}

#[test]
fn certificates_have_gos_template_and_a_p256_key() {
    let certs = Certs::new(&keypair(4), DEFAULT_LIFETIME, some_time());
    let der = certs.current_certificate();
    let cert = parsed(&der);
    assert!(cert.subject().iter().next().is_none(), "empty subject");
    assert!(cert.is_ca());
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && usage.key_cert_sign());
    let extended = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(extended.server_auth && extended.client_auth);
    assert!(cert.raw_serial()[0] & 0x80 == 0, "a positive serial");
    assert!(matches!(
        cert.public_key().parsed().unwrap(),
        x509_parser::public_key::PublicKey::EC(point) if point.key_size() == 256
    ));
}

#[test]
fn roll_is_not_due_before_next_roll() {
    let certs = Certs::new(&keypair(5), SHORT, some_time());
    let hashes = certs.address_hashes();
    assert!(!certs.roll_if_due(some_time()));
    assert!(!certs.roll_if_due(certs.next_roll() - Duration::from_millis(1)));
    assert_eq!(certs.address_hashes(), hashes);
    assert_eq!(
        certs.noise_hashes().len(),
        2,
        "no last before the first roll"
    );
}

#[test]
fn a_roll_makes_next_current_and_keeps_the_old_current_for_noise() {
    let certs = Certs::new(&keypair(6), SHORT, some_time());
    let [current, next] = certs.address_hashes();
    let due = certs.next_roll();
    assert!(certs.roll_if_due(due));
    let [new_current, new_next] = certs.address_hashes();
    assert_eq!(new_current, next);
    assert!(new_next != current && new_next != next);
    assert_eq!(
        certs.noise_hashes(),
        HashSet::from([current, next, new_next])
    );
    assert_eq!(certs.next_roll(), due + certs.schedule.bucket());
    assert!(!certs.roll_if_due(due), "one roll per due time");
}

#[test]
fn rolls_missed_while_asleep_land_where_single_rolls_would() {
    let stepwise = Certs::new(&keypair(7), SHORT, some_time());
    let asleep = Certs::new(&keypair(7), SHORT, some_time());
    for _ in 0..5 {
        assert!(stepwise.roll_if_due(stepwise.next_roll()));
    }
    let wake = stepwise.next_roll() - Duration::from_millis(1);
    assert!(asleep.roll_if_due(wake));
    assert_eq!(asleep.address_hashes(), stepwise.address_hashes());
    assert_eq!(asleep.noise_hashes(), stepwise.noise_hashes());
    // And where a node started at that moment would be.
    let fresh = Certs::new(&keypair(7), SHORT, wake);
    assert_eq!(fresh.address_hashes(), stepwise.address_hashes());
    assert_eq!(current_not_before(&fresh), current_not_before(&stepwise));
}

#[test]
fn offsets_stay_within_the_lifetime_and_differ_between_keys() {
    // go's whole minutes for long lifetimes...
    assert_eq!(
        Schedule::new(DEFAULT_LIFETIME, 0x1234).offset,
        Duration::from_secs(0x1234 * 60)
    );
    assert_eq!(
        Schedule::new(DEFAULT_LIFETIME, u16::MAX).offset,
        Duration::from_secs(u64::from(u16::MAX) * 60 % DEFAULT_LIFETIME.as_secs())
    );
    // ...and a fraction of short ones, where whole minutes would all be 0.
    let offsets: HashSet<Duration> = [0, 1 << 14, 1 << 15, u16::MAX]
        .into_iter()
        .map(|bits| Schedule::new(SHORT, bits).offset)
        .collect();
    assert_eq!(offsets.len(), 4);
    assert!(offsets.iter().all(|offset| *offset < SHORT));
}

#[tokio::test]
async fn a_roll_applies_to_the_next_handshake() {
    // A 4 s lifetime rolls on a clock of our own, so its certificates need not be valid on the
    // real one: this client takes any certificate; the verifier's checks have their own tests.
    let certs = Certs::new(&keypair(8), SHORT, some_time());
    let server = certs.server_config();
    let [current, next] = certs.address_hashes();
    assert_eq!(
        dial(server.clone(), any_certificate()).await.unwrap(),
        current
    );
    assert!(certs.roll_if_due(certs.next_roll()));
    assert_eq!(dial(server, any_certificate()).await.unwrap(), next);
}

#[tokio::test]
async fn the_webtransport_verifier_accepts_the_current_certificate() {
    let certs = Certs::new(&keypair(9), DEFAULT_LIFETIME, SystemTime::now());
    let [current, next] = certs.address_hashes();
    let client = verifier::client_config(vec![current, next]);
    assert_eq!(dial(certs.server_config(), client).await.unwrap(), current);
}

/// A client that takes whatever certificate the server shows (signature still checked).
fn any_certificate() -> Arc<QuicClientConfig> {
    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            unreachable!("TLS 1.3 only")
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = crate::webtransport::crypto_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h3".to_vec()];
    Arc::new(QuicClientConfig::try_from(config).unwrap())
}

/// The hashes a fixed identity serves at a fixed time, pinned: a change of crypto backend, of
/// rcgen or of the derivation that alters one byte of the certificates would change every
/// node's `/certhash/` addresses on upgrade, and fails here first.
#[test]
fn a_given_identity_at_a_given_time_serves_these_hashes() {
    let hex = |hash: Multihash<64>| -> String {
        hash.digest().iter().map(|b| format!("{b:02x}")).collect()
    };
    for (seed, lifetime, expected) in [
        (
            1,
            DEFAULT_LIFETIME,
            [
                "2744a34dc445c3ef1c5ae4a8abfe1b091a65510b41ca420be9b475a91c9bd6b9",
                "24d8b6dcbd1ec2a4dabb7cae45f13f6c0d7c7de007d73939117141e686e15e04",
            ],
        ),
        (
            2,
            DEFAULT_LIFETIME,
            [
                "939557d395bd8243a3fcf515ce517a3b73e2a452fedaabb972819b951e0c21fc",
                "fa462680a0f75e460008d388f2a62bbc2222f413c13a15b41a69a4d235e91298",
            ],
        ),
        (
            3,
            SHORT,
            [
                "d4e93663e0f9ad3cb65a639a9326273e69ce67ef218d2e7ac5a4f178bbad3c84",
                "6c218242b8dc5a50c153f0c2870d8cd6737fdd54e7546287bfb76b1241dccb67",
            ],
        ),
    ] {
        let certs = Certs::new(&keypair(seed), lifetime, some_time());
        let [current, next] = certs.address_hashes();
        assert_eq!([hex(current), hex(next)], expected, "seed {seed}");
    }
}
