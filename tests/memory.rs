//! A stream's memory is given back once it leaves the books, even when nothing opens after it.
//!
//! A stream that leaves is kept for the connection's next opener to free, on a thread whose
//! allocator reuses the memory at once; the watcher's leak scan frees those that no opener
//! took. Alone in its binary, one test at a time: the count of stream states is the process's.

mod common;

use std::time::Duration;

use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p_identity::Keypair;
use libp2p_quinn::{test_util::stream_states, Stream};

/// The tests count the process's stream states: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LIMIT: u32 = 64;
/// Streams held at once: half the limit, since quinn gives credit back in batches.
const BURST: u32 = LIMIT / 2;
/// Ten times the limit in all.
const ROUNDS: u32 = 20;

/// `BURST` request/response streams, held until all are done, then dropped together at both
/// ends; returns once both ledgers are back to zero.
async fn burst(dialer: &Peer, listener: &mut Peer) {
    let held = exchanges_held(dialer, listener, BURST).await;
    drop(held);
    dialer.settled().await.unwrap();
    listener.settled().await.unwrap();
}

/// `n` request/response streams, each kept open at both ends once done.
async fn exchanges_held(dialer: &Peer, listener: &mut Peer, n: u32) -> Vec<(Stream, Stream)> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut out = dialer.open().await;
        out.write_all(b"ping1234").await.unwrap();
        out.close().await.unwrap();
        let mut inbound = listener.accept().await;
        let mut request = [0; 8];
        bounded("request", inbound.read_exact(&mut request))
            .await
            .unwrap();
        inbound.write_all(b"pong5678").await.unwrap();
        inbound.close().await.unwrap();
        let mut reply = Vec::new();
        bounded("reply", out.read_to_end(&mut reply)).await.unwrap();
        held.push((out, inbound));
    }
    held
}

/// Wait (bounded) until `n` stream states are allocated in this process.
async fn states_fall_to(n: usize) {
    let deadline = tokio::time::Instant::now() + STEP;
    while stream_states() > n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} stream states still allocated after {STEP:?}, {n} expected",
            stream_states()
        );
        // Polling a counter that the watcher changes: a bounded wait, not a sleep used to
        // order events.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stream_states(), n);
}

fn configure() -> libp2p_quinn::Config {
    let mut config = config(&Keypair::generate_ed25519(), LIMIT);
    // The leak scan, which frees what no opener took, runs every quarter of this.
    config.stream_leak_warning = Duration::from_millis(400);
    config
}

/// Bursts of streams, each held together and dropped together at both ends, the last with
/// nothing opened after it: the state of every stream is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_dropped_together_are_freed_though_nothing_opens_after() {
    let _serial = SERIAL.lock().await;
    let Pair {
        dialer,
        mut listener,
        ..
    } = pair_with(configure(), configure()).await;
    for _ in 0..ROUNDS {
        burst(&dialer, &mut listener).await;
    }
    states_fall_to(0).await;
    drop((dialer, listener));
}

/// Streams held at both ends while their connection closes, dropped after the watcher saw it
/// close: each one's state is freed, though one stream kept alive keeps the connection's books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_dropped_after_their_connection_closed_are_freed() {
    let _serial = SERIAL.lock().await;
    let Pair {
        dialer,
        mut listener,
        _transports: transports,
        ..
    } = pair_with(configure(), configure()).await;
    let mut held = exchanges_held(&dialer, &mut listener, BURST).await;
    let (keeper_out, keeper) = held.pop().unwrap();
    let dialer_ledgers = transports.0.ledgers();

    // Dropping the dialer's muxer closes the connection at once.
    drop(dialer);
    let closed_everywhere = || {
        let all = dialer_ledgers
            .snapshot()
            .into_iter()
            .chain([listener.snapshot()]);
        all.map(|s| s.totals.tracked_total()).sum::<u64>() == 0
    };
    eventually("the watcher to see the close", closed_everywhere).await;

    drop((held, keeper_out));
    states_fall_to(1).await;
    drop(keeper);
    states_fall_to(0).await;
    drop((listener, transports));
}
