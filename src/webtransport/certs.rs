//! The WebTransport server certificates, derived from the identity key and the time so that a
//! restarted node serves the same certificates and keeps its `/certhash/` addresses.
//!
//! The schedule is go-libp2p's (`p2p/transport/webtransport/cert_manager.go`) with the lifetime
//! as a parameter. Time is cut into buckets of `lifetime − 2·skew`, counted from the Unix epoch
//! plus a per-key offset, so that nodes do not all roll at the same moment. A certificate starts
//! at a bucket start and lives `lifetime`; the next one starts `2·skew` before the current one
//! ends; we roll `skew` before that end. So whatever we serve has been valid for at least `skew`
//! (a dialer's clock may be behind) and stays valid for at least `skew` more (or ahead).
//!
//! A certificate is a function of (identity, NotBefore) alone: HKDF gives its serial number and
//! P-256 key, and the ECDSA signature is deterministic (RFC 6979). The bytes are not go's (its key
//! derivation and DER encoder differ): each implementation is deterministic on its own.

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use libp2p_core::multihash::Multihash;
use p256::{
    ecdsa::{signature::Signer, Signature, SigningKey},
    pkcs8::EncodePrivateKey,
};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::{
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// What Chromium accepts at most for a certificate pinned by hash.
#[cfg(test)]
pub(crate) const DEFAULT_LIFETIME: Duration = crate::config::DEFAULT_CERTIFICATE_LIFETIME;

/// How far a dialer's clock may be off, for long lifetimes (go's `clockSkewAllowance`).
const MAX_SKEW: Duration = Duration::from_secs(60 * 60);

/// From this lifetime on, the per-key offset is go's whole minutes.
const MINUTE_OFFSETS_FROM: Duration = Duration::from_secs(60 * 60);

/// Domain separation for the secret the certificates derive from.
const SECRET_DOMAIN: &[u8] = b"libp2p-quinn webtransport certificate";

/// go's HKDF info, misspelt as go spells it.
const HKDF_INFO: &[u8] = b"determinisitic cert";

/// The multihash code of sha2-256.
pub(crate) const SHA2_256: u64 = 0x12;

/// The certificate hash as it appears in a `/certhash/` address and in Noise.
pub(crate) fn certhash(der: &[u8]) -> Multihash<64> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    Multihash::wrap(SHA2_256, digest.as_ref()).expect("a 32-byte digest fits in 64")
}

/// The last (after the first roll), current and next certificates of one identity.
pub(crate) struct Certs {
    secret: [u8; 32],
    schedule: Schedule,
    state: RwLock<State>,
}

struct State {
    last: Option<Cert>,
    current: Cert,
    next: Cert,
}

struct Cert {
    key: Arc<CertifiedKey>,
    hash: Multihash<64>,
    not_before: SystemTime,
}

impl Certs {
    /// The certificates of `keypair` at `now`. `lifetime` is the validity of each certificate
    /// (by default 14 days, what Chromium allows at most).
    ///
    /// # Panics
    ///
    /// If `lifetime` is shorter than a second, the resolution of a certificate's validity.
    pub(crate) fn new(
        keypair: &libp2p_identity::Keypair,
        lifetime: Duration,
        now: SystemTime,
    ) -> Arc<Self> {
        assert!(
            lifetime >= Duration::from_secs(1),
            "certificate lifetime under a second"
        );
        let secret = keypair.derive_secret(SECRET_DOMAIN).unwrap_or_else(|| {
            tracing::warn!(
                "this identity's key type cannot derive a secret (RSA): WebTransport \
                 certificates are random, and the /certhash/ addresses change on every restart"
            );
            let mut random = [0; 32];
            super::crypto_provider()
                .secure_random
                .fill(&mut random)
                .expect("the system's random source works");
            random
        });
        let schedule = Schedule::new(lifetime, offset_bits(&keypair.public()));
        let start = schedule.current_start(now);
        let state = State {
            last: None,
            current: derive(&secret, start, lifetime),
            next: derive(&secret, start + schedule.bucket(), lifetime),
        };
        Arc::new(Self {
            secret,
            schedule,
            state: RwLock::new(state),
        })
    }

    /// Current and next, for the listen address `/certhash/<current>/certhash/<next>`.
    pub(crate) fn address_hashes(&self) -> [Multihash<64>; 2] {
        let state = self.state();
        [state.current.hash, state.next.hash]
    }

    /// Last (if any), current and next: what the Noise responder sends, so that a dialer holding
    /// the address from before the last roll still finds its hashes.
    pub(crate) fn noise_hashes(&self) -> HashSet<Multihash<64>> {
        let state = self.state();
        state
            .last
            .iter()
            .chain([&state.current, &state.next])
            .map(|cert| cert.hash)
            .collect()
    }

    /// When the next roll is due: the current certificate's NotAfter minus the skew.
    pub(crate) fn next_roll(&self) -> SystemTime {
        self.state().current.not_before + self.schedule.lifetime - self.schedule.skew
    }

    /// Rolls as many times as are due at `now`; true when the address hashes changed.
    pub(crate) fn roll_if_due(&self, now: SystemTime) -> bool {
        let start = self.schedule.current_start(now);
        let lifetime = self.schedule.lifetime;
        // Deriving under the write lock holds up new handshakes for a derivation or three, once
        // per roll; in exchange two listeners rolling at once cannot both roll.
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if start <= state.current.not_before {
            return false;
        }
        let next = derive(&self.secret, start + self.schedule.bucket(), lifetime);
        if start == state.next.not_before {
            let current = std::mem::replace(&mut state.next, next);
            state.last = Some(std::mem::replace(&mut state.current, current));
        } else {
            // Asleep for more than one roll: land where rolling one at a time would have.
            *state = State {
                last: Some(derive(
                    &self.secret,
                    start - self.schedule.bucket(),
                    lifetime,
                )),
                current: derive(&self.secret, start, lifetime),
                next,
            };
        }
        true
    }

    /// The rustls config for ALPN `h3`: TLS 1.3, no client authentication, and the current
    /// certificate, looked up per handshake so that a roll applies to new connections at once.
    pub(crate) fn server_config(self: &Arc<Self>) -> Arc<QuicServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(super::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("aws-lc-rs supports TLS 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CurrentCert(self.clone())));
        config.alpn_protocols = vec![b"h3".to_vec()];
        Arc::new(
            QuicServerConfig::try_from(config)
                .expect("aws-lc-rs's TLS 1.3 suites include the one QUIC's Initial packets need"),
        )
    }

    /// The certificate served now.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn current_certificate(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.state().current.key.cert[0].clone()
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic cannot leave the state half-rolled: it is replaced only once all is derived.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs")
            .field("lifetime", &self.schedule.lifetime)
            .field("address_hashes", &self.address_hashes())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct CurrentCert(Arc<Certs>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.state().current.key.clone())
    }
}

/// go's rotation arithmetic, with the lifetime as a parameter.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    lifetime: Duration,
    /// min(1 h, lifetime / 16): an hour for go's 14 days, a sixteenth of a short test lifetime.
    skew: Duration,
    offset: Duration,
}

impl Schedule {
    fn new(lifetime: Duration, key_bits: u16) -> Self {
        let offset = if lifetime >= MINUTE_OFFSETS_FROM {
            // go: the 16 bits as minutes, modulo the lifetime.
            let minutes = Duration::from_secs(60 * u64::from(key_bits));
            nanos_to_duration(minutes.as_nanos() % lifetime.as_nanos())
        } else {
            // Whole minutes modulo a few seconds would put most keys on the same offset
            // (all of them when the lifetime divides a minute): take the 16 bits as a fraction
            // of the lifetime instead.
            nanos_to_duration((lifetime.as_nanos() * u128::from(key_bits)) >> 16)
        };
        Self {
            lifetime,
            skew: MAX_SKEW.min(lifetime / 16),
            offset,
        }
    }

    fn bucket(&self) -> Duration {
        self.lifetime - 2 * self.skew
    }

    /// The NotBefore of the certificate to serve at `now`: the bucket start at or before
    /// `now − skew` (go's `getCurrentBucketStartTime`, in milliseconds as go counts).
    fn current_start(&self, now: SystemTime) -> SystemTime {
        let offset = self.offset.as_millis() as i128;
        let bucket = self.bucket().as_millis() as i128;
        let since_offset = unix_millis(now - self.skew) - offset;
        from_unix_millis(offset + since_offset.div_euclid(bucket) * bucket)
    }
}

fn nanos_to_duration(nanos: u128) -> Duration {
    Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    )
}

fn unix_millis(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_millis() as i128,
        Err(before) => -(before.duration().as_millis() as i128),
    }
}

fn from_unix_millis(millis: i128) -> SystemTime {
    let magnitude = Duration::from_millis(millis.unsigned_abs() as u64);
    if millis >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// The 16 bits that place a key's buckets: go's first two bytes, little-endian, of the raw public
/// key for Ed25519. Other key types take them from a hash of the protobuf encoding, whose first
/// bytes only name the key type (go reads a per-type raw encoding we do not have for all types).
fn offset_bits(public: &libp2p_identity::PublicKey) -> u16 {
    let bytes = match public.clone().try_into_ed25519() {
        Ok(ed25519) => ed25519.to_bytes().to_vec(),
        Err(_) => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public.encode_protobuf())
            .as_ref()
            .to_vec(),
    };
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// The certificate valid over [`not_before`, `not_before` + `lifetime`].
fn derive(secret: &[u8; 32], not_before: SystemTime, lifetime: Duration) -> Cert {
    // go's salt: NotBefore in Unix nanoseconds, as a u64, little-endian.
    let nanos = match not_before.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as u64,
        Err(before) => (before.duration().as_nanos() as u64).wrapping_neg(),
    };
    // 8 bytes of serial number, then 32-byte candidates for the P-256 scalar: one fails (zero,
    // or not below the group order) with a chance of about 2^-32, all eight never.
    let mut okm = [0; 8 + 8 * 32];
    aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, &nanos.to_le_bytes())
        .extract(secret)
        .expand(&[HKDF_INFO], OkmLen(okm.len()))
        .and_then(|expanded| expanded.fill(&mut okm))
        .expect("HKDF-SHA256 can expand to 264 bytes");
    let mut serial = okm[..8].to_vec();
    serial[0] &= 0x7f; // a positive serial number, as go's
    let key = okm[8..]
        .chunks(32)
        .find_map(|candidate| SigningKey::from_slice(candidate).ok())
        .expect("one of eight HKDF outputs is a valid P-256 scalar");
    let pkcs8 = p256::SecretKey::from(key.as_nonzero_scalar())
        .to_pkcs8_der()
        .expect("a P-256 key encodes as PKCS#8");

    // go's template.
    let mut params = rcgen::CertificateParams::default();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_before + lifetime);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let signer = rcgen::KeyPair::from_remote(Box::new(DeterministicSigner::new(key)))
        .expect("rcgen takes a P-256 remote key");
    let der = params
        .self_signed(&signer)
        .expect("go's template is a valid self-signed certificate")
        .der()
        .clone();

    let signing_key = super::crypto_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            pkcs8.as_bytes().to_vec(),
        )))
        .expect("aws-lc-rs loads a P-256 PKCS#8 key");
    Cert {
        hash: certhash(&der),
        key: Arc::new(CertifiedKey::new(vec![der], signing_key)),
        not_before,
    }
}

struct OkmLen(usize);

impl aws_lc_rs::hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// rcgen's signer with p256's deterministic ECDSA: rcgen's own signers draw a random nonce,
/// which would change the certificate, and so its hash, on every derivation.
struct DeterministicSigner {
    key: SigningKey,
    public: Vec<u8>,
}

impl DeterministicSigner {
    fn new(key: SigningKey) -> Self {
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Self { key, public }
    }
}

impl rcgen::RemoteKeyPair for DeterministicSigner {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature: Signature = self.key.sign(message);
        Ok(signature.to_der().as_bytes().to_vec())
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

#[cfg(test)]
pub(super) mod tests;
