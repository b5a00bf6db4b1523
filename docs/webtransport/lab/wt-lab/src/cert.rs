//! WebTransport certificates derived from the identity key and the time, as go-libp2p's
//! `p2p/transport/webtransport/cert_manager.go` and `crypto.go` (v0.48) do, so that a node that
//! restarts serves the same certificates and keeps its `/certhash/` addresses.
//!
//! - Time buckets: `certValidity` = 14 days; a bucket is 14 days − 2 h long, counted from the Unix
//!   epoch plus a per-key offset (`u16` little-endian of the first two public-key bytes, in
//!   minutes, mod 14 days) so that nodes do not all rotate at once.
//! - At start: `start = now − 1 h`; `current` = [bucket(start), +14 d]; `next` starts 2 h before
//!   `current` ends. Rotate at `current.end − 1 h`: last ← current, current ← next, new next.
//! - Each certificate: HKDF-SHA256(secret, salt = NotBefore in Unix nanoseconds as u64
//!   little-endian, info = "determinisitic cert" [sic, go's spelling]) yields the serial number
//!   and the P-256 key; the template is go's (empty subject, IsCA, DigitalSignature|CertSign,
//!   server+client auth); the signature is deterministic ECDSA (RFC 6979, `p256`), so the DER,
//!   and so its hash, is a function of (identity, NotBefore) alone.
//!
//! The bytes differ from go's (go uses filippo.io/keygen and its own DER encoder); what matters is
//! that *this* implementation is deterministic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use multiaddr::{Multiaddr, Protocol};
use multihash::Multihash;
use p256::{
    ecdsa::{signature::Signer, Signature, SigningKey},
    pkcs8::EncodePrivateKey,
};

pub const CERT_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);
pub const CLOCK_SKEW: Duration = Duration::from_secs(3600);
const BUCKET: Duration = Duration::from_secs(14 * 24 * 3600 - 2 * 3600);
const INFO: &[u8] = b"determinisitic cert";
/// multihash code of sha2-256.
const SHA2_256: u64 = 0x12;

#[derive(Clone)]
pub struct Cert {
    pub der: Vec<u8>,
    pub key_pkcs8: Vec<u8>,
    pub sha256: [u8; 32],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Cert {
    pub fn multihash(&self) -> Multihash<64> {
        Multihash::wrap(SHA2_256, &self.sha256).expect("32 bytes fit")
    }
}

/// The per-key rotation offset: go's `binary.LittleEndian.Uint16(pubkeyBytes)` minutes.
pub fn offset(keypair: &libp2p_identity::Keypair) -> Duration {
    let raw = match keypair.public().try_into_ed25519() {
        Ok(ed) => ed.to_bytes().to_vec(),
        Err(_) => keypair.public().encode_protobuf(),
    };
    let minutes = u16::from_le_bytes([raw[0], raw[1]]) as u64;
    Duration::from_secs(minutes * 60 % CERT_VALIDITY.as_secs())
}

fn millis(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i128
}

/// go's `getCurrentBucketStartTime`.
pub fn bucket_start(now: SystemTime, offset: Duration) -> SystemTime {
    let off = offset.as_millis() as i128;
    let bucket = BUCKET.as_millis() as i128;
    let n = (millis(now) - off).div_euclid(bucket);
    UNIX_EPOCH + Duration::from_millis((off + n * bucket) as u64)
}

/// rcgen's key, signing with `p256`'s deterministic ECDSA.
struct DeterministicKey {
    key: SigningKey,
    public: Vec<u8>,
}

impl rcgen::RemoteKeyPair for DeterministicKey {
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig: Signature = self.key.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// The certificate valid over [`start`, `start` + 14 d] for the identity whose secret is `secret`.
pub fn derive(secret: &[u8; 32], start: SystemTime) -> anyhow::Result<Cert> {
    let nanos = start.duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &nanos.to_le_bytes());
    // 8 bytes of serial, then 32-byte candidates for the P-256 scalar.
    let mut okm = [0u8; 8 + 32 * 8];
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    salt.extract(secret)
        .expand(&[INFO], Len(okm.len()))
        .map_err(|_| anyhow::anyhow!("hkdf"))?
        .fill(&mut okm)
        .map_err(|_| anyhow::anyhow!("hkdf"))?;
    let mut serial = okm[..8].to_vec();
    serial[0] &= 0x7f; // positive
    let key = okm[8..]
        .chunks(32)
        .find_map(|c| SigningKey::from_slice(c).ok())
        .ok_or_else(|| anyhow::anyhow!("no valid scalar"))?;
    let public = key.verifying_key().to_encoded_point(false).as_bytes().to_vec();
    let key_pkcs8 = p256::SecretKey::from(key.as_nonzero_scalar())
        .to_pkcs8_der()?
        .as_bytes()
        .to_vec();

    let not_after = start + CERT_VALIDITY;
    let mut params = rcgen::CertificateParams::default();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.not_before = time::OffsetDateTime::from(start);
    params.not_after = time::OffsetDateTime::from(not_after);
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
    let signer = rcgen::KeyPair::from_remote(Box::new(DeterministicKey { key, public }))?;
    let cert = params.self_signed(&signer)?;
    let der = cert.der().to_vec();
    let sha256 = ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .try_into()?;
    Ok(Cert {
        der,
        key_pkcs8,
        sha256,
        not_before: start,
        not_after,
    })
}

/// The last (after the first rotation), current and next certificates, as go keeps them.
pub struct CertSet {
    pub last: Option<Cert>,
    pub current: Cert,
    pub next: Cert,
}

impl CertSet {
    /// go's `certManager.init` at time `now`.
    pub fn new(keypair: &libp2p_identity::Keypair, now: SystemTime) -> anyhow::Result<Self> {
        let secret = secret(keypair)?;
        let start = bucket_start(now - CLOCK_SKEW, offset(keypair));
        let first = derive(&secret, start)?;
        let next_start = first.not_after - 2 * CLOCK_SKEW;
        let second = derive(&secret, next_start)?;
        Ok(Self {
            last: None,
            current: first,
            next: second,
        })
    }

    /// go's `rollConfig`.
    pub fn roll(&mut self, keypair: &libp2p_identity::Keypair) -> anyhow::Result<()> {
        let next_start = self.next.not_after - 2 * CLOCK_SKEW;
        let new = derive(&secret(keypair)?, next_start)?;
        let current = std::mem::replace(&mut self.current, std::mem::replace(&mut self.next, new));
        self.last = Some(current);
        Ok(())
    }

    /// When to roll: one hour before the current certificate expires.
    pub fn roll_at(&self) -> SystemTime {
        self.current.not_after - CLOCK_SKEW
    }

    /// `/certhash/<current>/certhash/<next>`, the listen-address suffix.
    pub fn addr_suffix(&self) -> Multiaddr {
        Multiaddr::empty()
            .with(Protocol::Certhash(self.current.multihash()))
            .with(Protocol::Certhash(self.next.multihash()))
    }

    /// What the Noise responder sends: last (if any), current, next.
    pub fn noise_hashes(&self) -> Vec<Multihash<64>> {
        self.last
            .iter()
            .chain([&self.current, &self.next])
            .map(Cert::multihash)
            .collect()
    }
}

/// The secret the certificates are derived from: 32 bytes from the identity, domain-separated
/// (libp2p-identity's HKDF over the private key; `None` for RSA keys).
pub fn secret(keypair: &libp2p_identity::Keypair) -> anyhow::Result<[u8; 32]> {
    keypair
        .derive_secret(b"libp2p-quinn webtransport certificate")
        .ok_or_else(|| anyhow::anyhow!("this key type cannot derive a secret (RSA)"))
}
