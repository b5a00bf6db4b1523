//! The HTTP/3 a WebTransport session reads from its peer. Input: `[what] [pace] [bytes]`, the
//! bytes read through a reader that hands them out as `pace` says (a few at a time, stalling
//! or not), as a QUIC stream does; `what` % 5 picks the stream:
//!
//! 0. a unidirectional stream: its type, then on a control stream the SETTINGS, and what the
//!    listener and the dialer make of them;
//! 1. the CONNECT request stream (HEADERS, QPACK), and the listener's check of the request;
//! 2. a capsule on the CONNECT stream (we read past capsules; this is the codec's own reader);
//! 3. a session stream's header, for the session whose id the next 8 bytes give;
//! 4. the answer to the dialer's CONNECT (HEADERS, QPACK).
//!
//! One target for all five: they share the varint and frame code, a corpus entry of one often
//! makes a good start for another, and the small three are covered within seconds, leaving
//! the time to QPACK. Each asserts, besides never panicking, that what the async reader the
//! crate uses makes of the bytes is what the codec's own synchronous decoder makes of them
//! (and takes no byte past the message), that what it accepts survives being written out and
//! read again, and the checks named below.

#![no_main]

use libfuzzer_sys::fuzz_target;
use libp2p_quinn::fuzzing::{
    self,
    web_transport_proto::{Capsule, ConnectRequest, ConnectResponse, Setting, Settings, StreamUni},
};
use libp2p_quinn_fuzz::{run, varint, Trickle};

fuzz_target!(|input: &[u8]| {
    let [what, pace, bytes @ ..] = input else {
        return;
    };
    match what % 5 {
        0 => uni_stream(bytes, *pace),
        1 => connect(bytes, *pace),
        2 => capsule(bytes, *pace),
        3 => stream_header(bytes, *pace),
        _ => connect_response(bytes, *pace),
    }
});

fn uni_stream(bytes: &[u8], pace: u8) {
    let mut stream = Trickle::new(bytes, pace);
    let Some((kind, settings)) = run(fuzzing::uni_stream(&mut stream)) else {
        assert_eq!(varint(bytes), None, "a type was there");
        return;
    };
    assert_eq!(varint(bytes).map(|(kind, _)| kind), Some(kind.into_inner()));
    let Some(settings) = settings else {
        assert_ne!(StreamUni(kind), StreamUni::CONTROL);
        return;
    };
    let mut unread = bytes;
    let decoded = Settings::decode(&mut unread);
    let settings = match (settings, decoded) {
        (Ok(read), Ok(decoded)) => {
            assert_eq!(*read, *decoded, "read and decode disagree");
            assert_eq!(
                stream.position(),
                bytes.len() - unread.len(),
                "read too far"
            );
            read
        }
        (Err(_), Err(_)) => return,
        (read, decoded) => panic!("read: {read:?}, decode: {decoded:?}"),
    };
    // The listener's check: HTTP/3 datagrams, in either spelling.
    let datagrams = [
        Setting::ENABLE_DATAGRAM,
        Setting::ENABLE_DATAGRAM_DEPRECATED,
    ]
    .iter()
    .any(|key| settings.get(key).map(|value| value.into_inner()) == Some(1));
    assert_eq!(fuzzing::client_settings_accepted(&settings), datagrams);
    // The dialer's check: WebTransport needs datagrams too.
    if settings.supports_webtransport() != 0 {
        assert!(datagrams, "WebTransport without datagrams");
    }
    let mut written = Vec::new();
    settings.encode(&mut written);
    let again = Settings::decode(&mut written.as_slice()).expect("our SETTINGS read back");
    assert_eq!(
        *again, *settings,
        "SETTINGS change when written and read again"
    );
}

fn connect(bytes: &[u8], pace: u8) {
    let mut stream = Trickle::new(bytes, pace);
    let read = run(fuzzing::connect_request(&mut stream));
    let mut unread = bytes;
    let decoded = ConnectRequest::decode(&mut unread);
    let (request, refusal) = match (read, decoded) {
        (Ok(read), Ok(decoded)) => {
            assert_eq!(read.0.url, decoded.url, "read and decode disagree");
            assert_eq!(read.0.protocols, decoded.protocols);
            assert_eq!(read.0.headers, decoded.headers);
            assert_eq!(
                stream.position(),
                bytes.len() - unread.len(),
                "read too far"
            );
            read
        }
        (Err(_), Err(_)) => return,
        (read, decoded) => panic!("read: {read:?}, decode: {decoded:?}"),
    };
    let url = &request.url;
    assert_eq!(url.scheme(), "https");
    if refusal.is_none() {
        assert_eq!(url.path(), fuzzing::CONNECT_PATH, "accepted another path");
        let types: Vec<_> = url.query_pairs().filter(|(key, _)| key == "type").collect();
        assert!(
            matches!(&types[..], [(_, kind)] if kind == "noise"),
            "accepted {url}"
        );
    } else {
        assert!(
            matches!(refusal, Some(400 | 404)),
            "refused with {refusal:?}"
        );
    }
    // What we accepted or refused stays so when its request is written out and read again.
    let mut written = Vec::new();
    let Ok(()) = ConnectRequest::new(url.clone()).encode(&mut written) else {
        // A URL too long to write within the field section limit.
        return;
    };
    let (again, again_refusal) = run(fuzzing::connect_request(&mut Trickle::new(&written, 0)))
        .expect("our CONNECT reads back");
    // The request line carries no fragment: that much may go.
    let mut expected = url.clone();
    expected.set_fragment(None);
    assert_eq!(
        again.url, expected,
        "the URL changes when written and read again"
    );
    assert_eq!(again_refusal, refusal);
}

fn connect_response(bytes: &[u8], pace: u8) {
    // The dialer reads the answer to its CONNECT with exactly this call (h3.rs, `connect`).
    let mut stream = Trickle::new(bytes, pace);
    let read = run(ConnectResponse::read(&mut stream));
    let mut unread = bytes;
    let decoded = ConnectResponse::decode(&mut unread);
    let response = match (read, decoded) {
        (Ok(read), Ok(decoded)) => {
            assert_eq!(read.status, decoded.status, "read and decode disagree");
            assert_eq!(read.protocol, decoded.protocol);
            assert_eq!(
                stream.position(),
                bytes.len() - unread.len(),
                "read too far"
            );
            read
        }
        (Err(_), Err(_)) => return,
        (read, decoded) => panic!("read: {read:?}, decode: {decoded:?}"),
    };
    // Only a success reads as a response; the dialer goes on only with 200.
    assert!(response.status.is_success(), "{:?}", response.status);
    let mut answer = ConnectResponse::new(response.status);
    if let Some(protocol) = &response.protocol {
        answer = answer.with_protocol(protocol.clone());
    }
    let mut written = Vec::new();
    if answer.encode(&mut written).is_ok() {
        let again = ConnectResponse::decode(&mut written.as_slice()).expect("ours reads back");
        assert_eq!(again.status, response.status);
        assert_eq!(again.protocol, response.protocol);
    }
}

fn capsule(bytes: &[u8], pace: u8) {
    let mut stream = Trickle::new(bytes, pace);
    let read = run(Capsule::read(&mut stream));
    let mut unread = bytes;
    let decoded = Capsule::decode(&mut unread);
    let capsule = match (read, decoded) {
        (Ok(Some(read)), Ok(decoded)) => {
            assert_eq!(read, decoded, "read and decode disagree");
            assert_eq!(
                stream.position(),
                bytes.len() - unread.len(),
                "read too far"
            );
            read
        }
        (Ok(None), Err(_)) => {
            assert!(bytes.is_empty(), "a capsule read as the stream's end");
            return;
        }
        (Err(_), Err(_)) => return,
        (read, decoded) => panic!("read: {read:?}, decode: {decoded:?}"),
    };
    let mut written = Vec::new();
    capsule.encode(&mut written);
    let again = Capsule::decode(&mut written.as_slice()).expect("our capsule reads back");
    assert_eq!(
        again, capsule,
        "a capsule changes when written and read again"
    );
}

/// WEBTRANSPORT_STREAM, the signal a session stream starts with.
const SIGNAL: u64 = 0x41;
/// H3_REQUEST_REJECTED, for a stream that is not WebTransport's.
const REJECTED: u32 = 0x10b;
/// WEBTRANSPORT_BUFFERED_STREAM_REJECTED, for another session's stream.
const OTHER_SESSION: u32 = 0x3994_bd84;

fn stream_header(bytes: &[u8], pace: u8) {
    let Some((session, bytes)) = bytes.split_first_chunk::<8>() else {
        return;
    };
    // A session id is a stream id: below 2^62.
    let session = u64::from_le_bytes(*session) >> 2;

    // Ours: the two varints, each in its shortest form, and nothing else.
    let header = fuzzing::stream_header(session);
    let (signal, length) = varint(&header).expect("a signal");
    assert_eq!((signal, length), (SIGNAL, shortest(SIGNAL)));
    assert_eq!(
        varint(&header[length..]),
        Some((session, header.len() - length))
    );
    assert_eq!(header.len() - length, shortest(session));
    let mut ours = Trickle::new(&header, pace);
    assert_eq!(run(fuzzing::read_stream_header(session, &mut ours)), Ok(()));

    let mut stream = Trickle::new(bytes, pace);
    let read = run(fuzzing::read_stream_header(session, &mut stream));
    let expected = match varint(bytes) {
        None => Err(None),
        Some((signal, _)) if signal != SIGNAL => Err(Some(REJECTED)),
        Some((_, length)) => match varint(&bytes[length..]) {
            None => Err(None),
            Some((id, _)) if id != session => Err(Some(OTHER_SESSION)),
            Some((_, rest)) => {
                // The stream's data starts right after: none of it may be taken.
                assert_eq!(read, Ok(()));
                assert_eq!(stream.position(), length + rest, "read into the data");
                Ok(())
            }
        },
    };
    assert_eq!(read, expected);
}

/// The length of the shortest encoding of a varint (RFC 9000, 16).
fn shortest(value: u64) -> usize {
    match value {
        0..0x40 => 1,
        0x40..0x4000 => 2,
        0x4000..0x4000_0000 => 4,
        _ => 8,
    }
}
