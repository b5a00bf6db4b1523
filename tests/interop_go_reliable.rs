//! Resets with a reliable size from our side to go-libp2p v0.52 (feature `reset-stream-at`),
//! over QUIC and WebTransport. `tests/interop_go/` has the other direction, Go resetting and
//! our Swarm reading; this one needs our own stream (`Stream::reset_at`), so it dials with the
//! bare transport, and a one-thread runtime (see [`reliable_reset_to_go`]).
//!
//! Needs Go >= 1.26 on PATH; without it the tests fail (they do not skip).

#![cfg(feature = "reset-stream-at")]

mod common;

use std::time::Duration;

use common::{bounded, dial_opts, go::*, Peer};
use futures::AsyncWriteExt;
use libp2p::Multiaddr;
use libp2p_core::Transport as _;
use libp2p_identity::Keypair;

/// The Go peer's identity (`--seed`), so that we know its peer id up front.
const GO_SEED: i64 = 4803;
const STEP: Duration = Duration::from_secs(30);
/// Streams we open and reset: ten times Go's stream limit.
const OUR_RELIABLE_STREAMS: u64 = 10 * 256;

/// multistream-select's two messages in front of a stream of `protocol`, as a lazy dialer sends
/// them (we never read the listener's answers: the stream is reset first).
fn multistream_header(protocol: &str) -> Vec<u8> {
    let mut header = Vec::new();
    for message in ["/multistream/1.0.0\n".to_owned(), format!("{protocol}\n")] {
        header.push(u8::try_from(message.len()).expect("a one-byte length"));
        header.extend_from_slice(message.as_bytes());
    }
    header
}

/// We dial the Go peer with our bare transport (no Swarm: `Stream::reset_at` is on our own
/// stream) and open 10 x 256 streams of `/libp2p-quinn/reliable-reset/1.0.0`, each with
/// multistream-select's header, 100 KiB of the payload, and a reset with code 42 that keeps the
/// header and the first 10 KiB. Go's handler must read at least those 10 KiB of the payload,
/// then the reset; and exactly them on nine streams in ten at least: on this one-thread runtime
/// quinn's connection task cannot send between the write and the reset unless the write had to
/// wait for Go's flow control credit. Stream credit comes back (ten times the limit), and our books
/// empty.
async fn reliable_reset_to_go(listen: &str, transport: &str) {
    let args: Vec<String> = ["--seed", &GO_SEED.to_string(), "--listen", listen]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut go = GoPeer::spawn(GoBuild::Current, "go", &args);
    let line = go.expect_listening(transport, STEP).await;
    let addr: Multiaddr = line.str("addr").expect("an address").parse().unwrap();
    let go_id = go_peer_id_for_seed(GO_SEED);

    let config = libp2p_quinn::Config::new(&Keypair::generate_ed25519());
    let our_id = config.local_peer_id();
    let mut ours = libp2p_quinn::tokio::Transport::new(config);
    let dial = ours.dial(addr, dial_opts()).expect("dial");
    let (remote, connection) = bounded("dial go", dial).await.expect("dial succeeds");
    assert_eq!(remote, go_id);
    let mut peer = Peer::new(our_id, go_id, connection, ours.ledgers());
    // go-libp2p opens its own streams to us (identify): we serve nothing, so each is dropped.
    let mut inbound = std::mem::replace(&mut peer.inbound, futures::channel::mpsc::unbounded().1);
    tokio::spawn(async move { while futures::StreamExt::next(&mut inbound).await.is_some() {} });

    let header = multistream_header("/libp2p-quinn/reliable-reset/1.0.0");
    let data = [header.as_slice(), &echo_payload(RELIABLE_RESET_SIZE)].concat();
    let reliable = (header.len() + RELIABLE_RESET_RELIABLE) as u64;
    for _ in 0..OUR_RELIABLE_STREAMS {
        let mut stream = peer.open().await;
        bounded("write", stream.write_all(&data)).await.unwrap();
        stream
            .reset_at(RELIABLE_RESET_CODE, reliable)
            .expect("go-libp2p v0.52 accepts RESET_STREAM_AT");
    }

    let served = go
        .expect_where("reliable_reset_served", Duration::from_secs(60), |v| {
            v.u64("count") == Some(OUR_RELIABLE_STREAMS)
        })
        .await;
    let served = ReliableResetServed::from_json(&served).unwrap();
    println!(
        "RELIABLE RESET ours -> go ({}): {}",
        transport,
        served.line()
    );
    assert_eq!(
        (served.ok, served.bad, served.pattern_bad),
        (OUR_RELIABLE_STREAMS, 0, 0),
        "every stream: at least the reliable bytes, of the payload, then the reset"
    );
    // Most streams get exactly the reliable bytes; a write that waits for Go's flow control
    // credit lets quinn send bytes above them before the reset, which Go may then read.
    assert!(served.exact * 10 >= served.ok * 9, "{}", served.line());
    assert_eq!(served.with_code(RELIABLE_RESET_CODE), OUR_RELIABLE_STREAMS);
    assert_eq!(
        peer.quinn.stats().frame_tx.reset_stream,
        0,
        "no plain resets"
    );
    let books = peer.settled().await.expect("connection alive");
    assert!(
        books.totals.opened.iter().sum::<u64>() >= OUR_RELIABLE_STREAMS,
        "{books:?}"
    );
    drop(peer);
    go.shutdown().await;
}

fn run(name: &str, listen: &'static str, transport: &'static str) {
    common::init_tracing();
    run_go_test(
        GoBuild::Current,
        Threads::One,
        name,
        Duration::from_secs(120),
        || reliable_reset_to_go(listen, transport),
    );
}

#[test]
fn reliable_reset_to_go_quic() {
    run(
        "reliable_reset_to_go_quic",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "quic-v1",
    );
}

#[test]
fn reliable_reset_to_go_webtransport() {
    run(
        "reliable_reset_to_go_webtransport",
        "/ip4/127.0.0.1/udp/0/quic-v1/webtransport",
        "webtransport",
    );
}
