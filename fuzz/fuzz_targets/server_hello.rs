//! The dialer's reading of the server's first handshake message, for the key-exchange group
//! it reports (src/key_exchange.rs): any bytes as the server's CRYPTO data, whole and cut into
//! pieces (input: `[n] [n cuts] [data]`).
//!
//! Asserts, besides never panicking:
//! - how the bytes are cut does not change the outcome;
//! - the outcome is what our own reading of RFC 8446 4.1.3 finds: still waiting exactly while
//!   a ServerHello of at most 16 KiB is incomplete, then the group of its first key_share
//!   extension, if any.

#![no_main]

use libfuzzer_sys::fuzz_target;
use libp2p_quinn::fuzzing::server_hello_group;
use libp2p_quinn_fuzz::pieces;

/// The reader gives up on longer ServerHellos (one with an ML-KEM-768 share is ~1.2 KiB).
const MAX_SERVER_HELLO: usize = 16 * 1024;

fuzz_target!(|input: &[u8]| {
    let (data, cut) = pieces(input);
    let whole = server_hello_group(&[data]);
    assert_eq!(whole, server_hello_group(&cut), "depends on the cuts");
    assert_eq!(whole, expected(data));
});

fn expected(data: &[u8]) -> Option<Option<u16>> {
    let header = data.get(..4)?;
    let length =
        usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if header[0] != 2 || length > MAX_SERVER_HELLO {
        return Some(None);
    }
    let body = data.get(4..4 + length)?;
    Some(key_share(body))
}

/// The group of the first key_share extension (51) of a ServerHello body.
fn key_share(body: &[u8]) -> Option<u16> {
    let u16_at = |at: usize| Some(u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?));
    // legacy_version (2), random (32), then the session id with its length byte
    let mut at = 2 + 32;
    at += 1 + usize::from(*body.get(at)?);
    // cipher_suite (2), legacy_compression_method (1)
    at += 3;
    let end = at + 2 + usize::from(u16_at(at)?);
    body.get(..end)?;
    at += 2;
    while at + 4 <= end {
        let (kind, length) = (u16_at(at)?, usize::from(u16_at(at + 2)?));
        at += 4;
        if at + length > end {
            return None;
        }
        if kind == 51 {
            return if length >= 2 { u16_at(at) } else { None };
        }
        at += length;
    }
    None
}
