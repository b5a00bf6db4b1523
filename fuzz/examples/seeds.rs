//! Writes the seed corpus, fuzz/corpus/<target>/, from the crate's own code: the ClientHellos
//! our dialers send, the ServerHello our listener answers with, the SETTINGS and CONNECT we
//! send, our addresses and certificates, and Chromium's SETTINGS and CONNECT as its notes
//! describe them. (fuzz/corpus/h3/*-go-* are go-libp2p's, captured from the wire:
//! docs/fuzzing.md.)
//!
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    time::{Duration, UNIX_EPOCH},
};

use libp2p_quinn::fuzzing::{
    self,
    web_transport_proto::{
        http::StatusCode, Capsule, ConnectRequest, ConnectResponse, Setting, Settings, VarInt,
    },
    Multiaddr, PeerId, Protocol,
};
use libp2p_quinn_fuzz::with_cuts;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    };

    // ClientHellos, whole and in the pieces of a packet-sized first Initial.
    for (name, webtransport) in [("webtransport", true), ("libp2p", false)] {
        let hello = fuzzing::client_hello(webtransport);
        write("client_hello", name, &with_cuts(&[], &hello));
        write(
            "client_hello",
            &format!("{name}-pieces"),
            &with_cuts(&[1, 4, 1100], &hello),
        );
        let server = fuzzing::server_hello(&hello);
        write(
            "server_hello",
            &format!("{name}-answer"),
            &with_cuts(&[], &server),
        );
        write(
            "server_hello",
            &format!("{name}-answer-pieces"),
            &with_cuts(&[2, 60], &server),
        );
    }

    // Our SETTINGS as h3.rs sends them (what, pace, bytes): whole, then trickled.
    let mut settings = Settings::default();
    settings.enable_webtransport(1);
    settings.insert(Setting(VarInt::from_u32(0x2c7c_f000)), VarInt::from_u32(1));
    let mut bytes = Vec::new();
    settings.encode(&mut bytes);
    write("h3", "settings-ours", &[&[0, 0][..], &bytes].concat());
    write(
        "h3",
        "settings-ours-trickled",
        &[&[0, 0x83][..], &bytes].concat(),
    );

    // Chromium 114's, as web-transport-proto's notes list them, a grease setting included.
    let chromium = [
        (0x01, 65536),
        (0x06, 16384),
        (0x07, 100),
        (0x33, 1),
        (0xffd277, 1),
        (0x2b60_3742, 1),
        (4_445_614_305, 454_654_587),
    ];
    let body: Vec<u8> = chromium
        .iter()
        .flat_map(|&(id, value)| [varint(id), varint(value)].concat())
        .collect();
    let bytes = [&[0x00, 0x04][..], &varint(body.len() as u64), &body].concat();
    write("h3", "settings-chromium", &[&[0, 0][..], &bytes].concat());

    // A CONNECT in Chromium's header order with the headers it adds, in plain literals (its own
    // are Huffman-coded, as go's captured ones are); QPACK static-table references where the
    // table has them.
    let authority = "192.0.2.7:4001";
    let path = "/.well-known/libp2p-webtransport?type=noise";
    let mut chromium = vec![0x00, 0x00];
    chromium.push(0xc0 | 15); // :method CONNECT
    literal(&mut chromium, ":protocol", "webtransport");
    chromium.push(0xc0 | 23); // :scheme https
    name_ref(&mut chromium, 0, authority); // :authority
    name_ref(&mut chromium, 1, path); // :path
    literal(&mut chromium, "sec-webtransport-http3-draft02", "1");
    name_ref(&mut chromium, 90, "https://example.com"); // origin
    write(
        "h3",
        "connect-chromium",
        &[&[1, 0x84][..], &headers_frame(&chromium)].concat(),
    );

    // Our dialer's CONNECT.
    let remote: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    let mut bytes = Vec::new();
    ConnectRequest::new(fuzzing::connect_url(remote))
        .encode(&mut bytes)
        .unwrap();
    write("h3", "connect-ours", &[&[1, 0][..], &bytes].concat());
    write(
        "h3",
        "connect-ours-trickled",
        &[&[1, 0x85][..], &bytes].concat(),
    );

    // Our listener's answers to a CONNECT: 200, and the 404 of another path.
    for (name, status) in [("response-200", 200), ("response-404", 404)] {
        let mut bytes = Vec::new();
        ConnectResponse::new(StatusCode::from_u16(status).unwrap())
            .encode(&mut bytes)
            .unwrap();
        write("h3", name, &[&[4, 0][..], &bytes].concat());
    }

    // Capsules: the session's close, and a grease one.
    let mut bytes = Vec::new();
    Capsule::CloseWebTransportSession {
        code: 0,
        reason: "bye".into(),
    }
    .encode(&mut bytes);
    write("h3", "capsule-close", &[&[2, 0][..], &bytes].concat());
    let mut bytes = Vec::new();
    Capsule::Grease { num: 3 }.encode(&mut bytes);
    write("h3", "capsule-grease", &[&[2, 1][..], &bytes].concat());

    // Session stream headers of sessions 0 and 1024 (a two-byte varint): the id as the target
    // reads it (LE, shifted right by 2), then the header and the stream's first data.
    for (name, session) in [("header-0", 0u64), ("header-1024", 1024)] {
        let mut bytes = vec![3, 0];
        bytes.extend_from_slice(&(session << 2).to_le_bytes());
        bytes.extend_from_slice(&fuzzing::stream_header(session));
        bytes.extend_from_slice(b"/noise");
        write("h3", name, &bytes);
    }

    // Addresses as our listener announces them, and as dialers write them.
    let made = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let current = fuzzing::webtransport_certificate(made, 14 * DAY);
    let next = fuzzing::webtransport_certificate(made + 13 * DAY, 14 * DAY);
    let hashes: Vec<_> = [&current, &next]
        .iter()
        .map(|der| {
            use sha2::Digest as _;
            fuzzing::Multihash::wrap(0x12, &sha2::Sha256::digest(der)).unwrap()
        })
        .collect();
    let peer: PeerId = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
        .parse()
        .unwrap();
    let addresses: [(&str, Multiaddr); 4] = [
        (
            "webtransport",
            fuzzing::webtransport_multiaddr("192.0.2.7:4001".parse().unwrap(), &hashes)
                .with(Protocol::P2p(peer)),
        ),
        (
            "webtransport-ip6-one-hash",
            fuzzing::webtransport_multiaddr("[2001:db8::1]:443".parse().unwrap(), &hashes[..1]),
        ),
        (
            "quic",
            libp2p_quinn::to_multiaddr("192.0.2.7:4001".parse().unwrap()).with(Protocol::P2p(peer)),
        ),
        (
            "circuit",
            "/ip4/192.0.2.7/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
                .parse()
                .unwrap(),
        ),
    ];
    for (name, addr) in addresses {
        write("multiaddr", &format!("{name}.bin"), &addr.to_vec());
        write(
            "multiaddr",
            &format!("{name}.txt"),
            addr.to_string().as_bytes(),
        );
    }

    // Our certificates, checked an hour into their validity and with their hash listed (flags
    // 1 + 32), unlisted, and among decoys (1 + 2·3 + 8 + 16 + 32).
    let hour = 3600i64.to_le_bytes();
    let input = |flags: u8, decoys: usize, der: &[u8]| {
        let mut input = vec![flags];
        input.extend_from_slice(&hour);
        for decoy in 0..decoys {
            input.extend_from_slice(&[decoy as u8; 32]);
        }
        input.extend_from_slice(der);
        input
    };
    write("certhash", "ours", &input(1 | 32, 0, &current));
    write("certhash", "ours-unlisted", &input(32, 0, &current));
    write(
        "certhash",
        "ours-decoys",
        &input(1 | 6 | 8 | 16 | 32, 3, &next),
    );
    let day = fuzzing::webtransport_certificate(made, DAY);
    write("certhash", "ours-one-day", &input(1 | 32, 0, &day));
    let long = fuzzing::webtransport_certificate(made, 15 * DAY);
    write("certhash", "ours-too-long", &input(1 | 32, 0, &long));
}

/// A QUIC varint in its shortest form.
fn varint(value: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    VarInt::try_from(value).unwrap().encode(&mut bytes);
    bytes
}

/// A QPACK prefixed integer (RFC 7541, 5.1) of `bits` bits after the `flags` in the first byte.
fn prefixed(out: &mut Vec<u8>, bits: u8, flags: u8, value: usize) {
    let max = (1usize << bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push(0x80 | (rest % 128) as u8);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A field line with a static-table name and a literal value (RFC 9204, 4.5.4).
fn name_ref(out: &mut Vec<u8>, index: usize, value: &str) {
    prefixed(out, 4, 0x50, index);
    prefixed(out, 7, 0x00, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// A field line with a literal name and value (RFC 9204, 4.5.6).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    prefixed(out, 3, 0x20, name.len());
    out.extend_from_slice(name.as_bytes());
    prefixed(out, 7, 0x00, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// A HEADERS frame around a field section.
fn headers_frame(section: &[u8]) -> Vec<u8> {
    [&[0x01][..], &varint(section.len() as u64), section].concat()
}
