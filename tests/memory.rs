//! A stream's memory is given back once it leaves the books, even when nothing opens after it.
//!
//! A stream that leaves is kept for the connection's next opener to free, on a thread whose
//! allocator reuses the memory at once; the watcher's leak scan frees those that no opener
//! took. Alone in its binary: the count of stream states is the process's.

#![cfg(feature = "test-util")]

mod common;

use std::time::Duration;

use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p_identity::Keypair;
use libp2p_quinn::test_util::stream_states;

const LIMIT: u32 = 64;
/// Streams held at once: half the limit, since quinn gives credit back in batches.
const BURST: u32 = LIMIT / 2;
/// Ten times the limit in all.
const ROUNDS: u32 = 20;

/// `BURST` request/response streams, held until all are done, then dropped together at both
/// ends; returns once both ledgers are back to zero.
async fn burst(dialer: &Peer, listener: &mut Peer) {
    let mut held = Vec::new();
    for _ in 0..BURST {
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
    drop(held);
    dialer.settled().await.unwrap();
    listener.settled().await.unwrap();
}

/// Bursts of streams, each held together and dropped together at both ends, the last with
/// nothing opened after it: the state of every stream is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_dropped_together_are_freed_though_nothing_opens_after() {
    let configure = || {
        let mut config = config(&Keypair::generate_ed25519(), LIMIT);
        // The leak scan, which frees what no opener took, runs every quarter of this.
        config.stream_leak_warning = Duration::from_millis(400);
        config
    };
    let Pair {
        dialer,
        mut listener,
        ..
    } = pair_with(configure(), configure()).await;
    for _ in 0..ROUNDS {
        burst(&dialer, &mut listener).await;
    }

    let deadline = tokio::time::Instant::now() + STEP;
    while stream_states() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} stream states still allocated after {STEP:?}",
            stream_states()
        );
        // Polling a counter that the watcher's scan changes: a bounded wait, not a sleep used
        // to order events.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    drop((dialer, listener));
}
