//! The dialer's check of a WebTransport server's certificate against the address's
//! `/certhash/`es: any bytes as the certificate's DER. Input:
//! `[flags] [time, 8 bytes LE] [decoy digests, 32 bytes each] [DER]`, where the flags say
//!
//! - bit 0: the hashes include the certificate's own SHA-256;
//! - bits 1-2: how many decoy SHA-256 digests follow (0-3);
//! - bit 3: they include the certificate's own digest under SHA-512's code;
//! - bit 4: they include its own digest with one bit flipped;
//! - bit 5: the time is an offset (i64) from the certificate's notBefore, not a Unix time.
//!
//! Asserts, besides never panicking:
//! - a certificate whose SHA-256 (computed here with another implementation) is not one of
//!   the hashes is refused as unlisted, before anything else of it is read;
//! - an accepted certificate parses, has no RSA key, is valid for at most 14 days, and the
//!   time is within its validity.

#![no_main]

use libfuzzer_sys::fuzz_target;
use libp2p_quinn::fuzzing::{verify_certificate, Multihash, Verdict};
use sha2::{Digest, Sha256};

const SHA2_256: u64 = 0x12;
const SHA2_512: u64 = 0x13;
const FOURTEEN_DAYS: i64 = 14 * 24 * 60 * 60;
const RSA_KEYS: [&str; 2] = ["1.2.840.113549.1.1.1", "1.2.840.113549.1.1.10"];

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let Some((time, mut rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let mut hashes = Vec::new();
    for _ in 0..(flags >> 1) & 3 {
        let Some((decoy, after)) = rest.split_first_chunk::<32>() else {
            return;
        };
        hashes.push(Multihash::<64>::wrap(SHA2_256, decoy).unwrap());
        rest = after;
    }
    let der = rest;
    let own: [u8; 32] = Sha256::digest(der).into();
    if flags & 1 != 0 {
        hashes.push(Multihash::wrap(SHA2_256, &own).unwrap());
    }
    if flags & 8 != 0 {
        hashes.push(Multihash::wrap(SHA2_512, &own).unwrap());
    }
    if flags & 16 != 0 {
        let mut flipped = own;
        flipped[usize::from(time[0]) % 32] ^= 1 << (time[1] % 8);
        hashes.push(Multihash::wrap(SHA2_256, &flipped).unwrap());
    }
    let parsed = x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, cert)| cert);
    let now = match (&parsed, flags & 32 != 0) {
        (Some(cert), true) => {
            let not_before = cert.validity().not_before.timestamp();
            let now = i128::from(not_before) + i128::from(i64::from_le_bytes(*time));
            u64::try_from(now).unwrap_or(0)
        }
        _ => u64::from_le_bytes(*time),
    };

    let verdict = verify_certificate(der, &hashes, now);
    let listed = hashes.contains(&Multihash::wrap(SHA2_256, &own).unwrap());
    match verdict {
        Verdict::Unlisted => assert!(!listed, "refused a listed certificate as unlisted"),
        _ => assert!(listed, "an unlisted certificate got this far: {verdict:?}"),
    }
    if !matches!(verdict, Verdict::Accepted) {
        return;
    }
    let cert = parsed.expect("accepted a certificate that does not parse");
    let key = cert.public_key().algorithm.algorithm.to_id_string();
    assert!(!RSA_KEYS.contains(&key.as_str()), "accepted an RSA key");
    let not_before = i128::from(cert.validity().not_before.timestamp());
    let not_after = i128::from(cert.validity().not_after.timestamp());
    assert!(
        not_after - not_before <= i128::from(FOURTEEN_DAYS),
        "accepted a long validity"
    );
    assert!(
        (not_before..=not_after).contains(&i128::from(now)),
        "accepted at {now}, outside [{not_before}, {not_after}]"
    );
});
