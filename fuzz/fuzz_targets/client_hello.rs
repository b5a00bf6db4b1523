//! The ClientHello router of a port shared by QUIC and WebTransport: any bytes as a new
//! connection's first CRYPTO data, whole and cut into pieces (input: `[n] [n cuts] [data]`).
//!
//! Asserts, besides never panicking:
//! - how the bytes are cut does not change the outcome: the same refusal, or the same route;
//! - a refusal is a TLS alert (CRYPTO_ERROR) or quinn's PROTOCOL_VIOLATION, nothing else;
//! - a ClientHello that gets through is routed by the first protocol of the client's ALPN list
//!   that the port serves, as our own reading of the message finds it.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use libp2p_quinn::fuzzing::ClientHelloRouter;
use libp2p_quinn_fuzz::pieces;

static ROUTER: LazyLock<ClientHelloRouter> = LazyLock::new(ClientHelloRouter::new);

const PROTOCOL_VIOLATION: u64 = 0x0a;
const SERVED: [&[u8]; 2] = [b"h3", b"libp2p"];

fuzz_target!(|input: &[u8]| {
    let (data, cut) = pieces(input);
    let whole = ROUTER.route(&[data]);
    let pieces = ROUTER.route(&cut);

    match (whole.error, pieces.error) {
        // Only the codes: a piece that ends with the ClientHello has quinn report it before a
        // later piece is refused, which the whole never does; refused is refused.
        (Some(a), Some(b)) => assert_eq!(a, b, "the refusal depends on the cuts"),
        (None, None) => assert_eq!(whole, pieces, "the route depends on the cuts"),
        (a, b) => panic!("refused whole: {a:?}, refused in pieces: {b:?}"),
    }
    if let Some(code) = whole.error {
        assert!(
            (0x100..=0x1ff).contains(&code) || code == PROTOCOL_VIOLATION,
            "refused with code {code:#x}"
        );
        return;
    }
    if !whole.handed_over {
        return;
    }
    let offered =
        offered_alpn(data).expect("a ClientHello that TLS took is one our reading takes too");
    let expected = offered
        .iter()
        .find(|protocol| SERVED.contains(&protocol.as_slice()));
    assert_eq!(
        whole.alpn.as_ref(),
        expected,
        "routed to the wrong side (offered {offered:?})"
    );
});

/// The ALPN protocols a ClientHello offers (RFC 8446 4.1.2, RFC 7301 3.1), from its first
/// handshake message; `None` if that is not a whole, well-formed ClientHello.
fn offered_alpn(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut message = Reader(data);
    if message.u8()? != 1 {
        return None;
    }
    let length = message.u24()?;
    let mut hello = Reader(message.take(length)?);
    hello.take(2 + 32)?; // legacy_version, random
    let session = hello.u8()?;
    hello.take(session.into())?;
    let suites = hello.u16()?;
    hello.take(suites.into())?;
    let compression = hello.u8()?;
    hello.take(compression.into())?;
    if hello.0.is_empty() {
        return Some(Vec::new());
    }
    let extensions = hello.u16()?;
    let mut extensions = Reader(hello.take(extensions.into())?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = extensions.u16()?;
        let mut body = Reader(extensions.take(length.into())?);
        if kind != 16 {
            continue;
        }
        let list = body.u16()?;
        let mut list = Reader(body.take(list.into())?);
        let mut protocols = Vec::new();
        while !list.0.is_empty() {
            let length = list.u8()?;
            protocols.push(list.take(length.into())?.to_vec());
        }
        return Some(protocols);
    }
    Some(Vec::new())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}
