//! Interop with go-libp2p v0.52.0 (quic-go v0.64.1, webtransport-go v0.13.0): the Go test peer
//! of `interop/go-peer`, built by the test run itself, against a libp2p `Swarm` on our
//! transport. Loopback only; each test has a time limit, and each runs with either side
//! dialing, over QUIC and over WebTransport (`*_webtransport`: go-libp2p's WebTransport
//! transport).
//!
//! go-libp2p v0.52's WebTransport dialer refuses a listener that does not advertise
//! RESET_STREAM_AT ("server didn't enable QUIC stream reset partial delivery"), so the
//! `*_go_dials_ours_webtransport` tests need our listener to advertise it.
//!
//! - ping: Go pings us and we ping Go; both sides name the right peer.
//! - echo: 1 MiB through one stream, each way, bytes checked.
//! - storm: the incident's workload. Go opens and closes 10 x 256 streams to us the Go way
//!   (8 bytes, `Close()` = CancelRead + FIN), then we open and close 10 x 256 streams to Go our
//!   way (8 bytes, close, read the 8-byte reply, drop). No open may block for 10 s, and our
//!   ledger must empty afterwards. Then the same through a seeded proxy losing 5% of the
//!   datagrams each way (feature `test-util`).
//! - reliable reset: Go opens streams of `/libp2p-quinn/reliable-reset/1.0.0` to us, writes
//!   100 KiB on each, marks the first 10 KiB reliable and resets with code 42; our handler must
//!   see a prefix of the payload, then the reset with code 42, and, when the connection
//!   negotiated RESET_STREAM_AT, every stream with at least the 10 KiB.
//! - `*_go_v048_*`: ping then echo against go-libp2p v0.48.0 (`interop/go-peer-v048`,
//!   webtransport-go v0.10.0) over WebTransport, each way: the older half of the network, whose
//!   WebTransport dialer does not require RESET_STREAM_AT (and whose quic-go advertises it only
//!   under draft-07's transport parameter id).
//!
//! The tests run one at a time (a process-wide lock): the storms' timings are the numbers this
//! file exists for, and two storms sharing a small machine would blur them. Run with
//! `--nocapture` to see them.
//!
//! Needs Go >= 1.26 on PATH; without it the tests fail (they do not skip).

#[path = "../common/mod.rs"]
mod common;
mod setup;

use std::{future::Future, time::Duration};

use common::go::*;
use setup::{connect, finish, finish_clean, Setup, Topology};

/// The Go peer's identity: `--seed` makes it deterministic, so we know its peer id up front.
const GO_SEED: i64 = 4803;
/// Ten times QUIC's default limit of 256 concurrent incoming streams.
const STORM_STREAMS: u64 = 10 * 256;
/// No open may take this long (the Go peer's `--open-timeout` too).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long our ledger may take to empty once the workload is done.
const SETTLE: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

/// Build the Go peer (outside the time limit), then run `test` on a fresh runtime within
/// `limit`, one test at a time.
fn run<F: Future<Output = ()>>(name: &str, limit: Duration, test: impl FnOnce() -> F) {
    run_with(GoBuild::Current, name, limit, test)
}

/// As `run`, with the Go peer of `build`.
fn run_with<F: Future<Output = ()>>(
    build: GoBuild,
    name: &str,
    limit: Duration,
    test: impl FnOnce() -> F,
) {
    common::init_tracing();
    run_go_test(build, Threads::Many, name, limit, test);
}

// ---------------------------------------------------------------------------------------------
// ping

async fn ping(build: GoBuild, topology: Topology) {
    let options = NodeOptions {
        ping: true,
        ..Default::default()
    };
    let Setup {
        mut node,
        mut go,
        go_id,
        ..
    } = connect(
        build,
        topology,
        &["--mode", "ping", "--count", "5"],
        options,
        None,
    )
    .await;

    // Go pings us. One of Go's RTTs is often about our own ping interval (500 ms): after
    // answering a ping, libp2p-ping 0.48's handler arms the next read without polling it, so the
    // next ping waits until something else wakes the connection task. libp2p-quic shows the
    // same; it is not the transport. Hence no bound on the RTTs here.
    let mut go_rtts = Vec::new();
    for _ in 0..5 {
        let p = go.expect("ping", STEP).await;
        assert_eq!(
            p.str("peer_id"),
            Some(node.peer_id.to_string().as_str()),
            "Go pinged the wrong peer"
        );
        go_rtts.push(p.num("rtt_us"));
    }
    let done = go.expect("ping_done", STEP).await;
    assert_eq!((done.num("ok"), done.num("failed")), (5.0, 0.0), "{done:?}");
    println!(
        "PING go -> ours ({}): RTTs {:?} us",
        topology.label(),
        go_rtts
    );

    // We ping Go.
    let rtts = node.pings(go_id, 3, STEP).await;
    println!(
        "PING ours -> go ({}): RTTs {:?} us",
        topology.label(),
        rtts.iter().map(|r| r.as_micros()).collect::<Vec<_>>()
    );

    // Identify ran too, and named the Go peer.
    let identified = node
        .seen_or_wait(STEP, |e| matches!(e, NodeEvent::Identified { .. }))
        .await;
    match identified {
        Some(NodeEvent::Identified { peer, agent, .. }) => {
            assert_eq!(peer, go_id);
            println!("identify: the Go peer says it is {agent:?}");
        }
        other => panic!("no identify from the Go peer: {other:?}"),
    }
    finish_clean(&mut go).await;
}

#[test]
fn ping_go_dials_ours() {
    run("ping_go_dials_ours", Duration::from_secs(90), || {
        ping(GoBuild::Current, Topology::GoDialsOurs)
    });
}

#[test]
fn ping_ours_dials_go() {
    run("ping_ours_dials_go", Duration::from_secs(90), || {
        ping(GoBuild::Current, Topology::OursDialsGo)
    });
}

// ---------------------------------------------------------------------------------------------
// echo

async fn echo(build: GoBuild, topology: Topology) {
    let Setup {
        mut node,
        mut go,
        go_id,
        ..
    } = connect(
        build,
        topology,
        &["--mode", "echo", "--size", &MIB.to_string()],
        NodeOptions::default(),
        None,
    )
    .await;

    // Go's echo against our handler.
    let e = go.expect("echo", Duration::from_secs(60)).await;
    assert_eq!(e.bool("ok"), Some(true), "Go's echo failed: {e:?}");
    assert_eq!(e.num("bytes") as usize, MIB);
    let served = &node.served;
    let deadline = tokio::time::Instant::now() + STEP;
    while served
        .echo_streams
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "our echo handler never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        served.echo_bytes.load(std::sync::atomic::Ordering::Relaxed),
        MIB as u64
    );
    assert_eq!(
        served
            .echo_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    println!(
        "ECHO go -> ours ({}): {} bytes back intact in {:.1} ms",
        topology.label(),
        MIB,
        e.num("elapsed_ms")
    );

    // Ours against Go's handler.
    let payload = echo_payload(MIB);
    let started = std::time::Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        echo_to(&mut node.control, go_id, &payload),
    )
    .await
    .expect("our echo timed out")
    .expect("our echo failed");
    assert_eq!(reply.len(), payload.len());
    assert!(reply == payload, "the echo came back altered");
    println!(
        "ECHO ours -> go ({}): {} bytes back intact in {:.1} ms",
        topology.label(),
        MIB,
        started.elapsed().as_secs_f64() * 1e3
    );

    let (snap, took) = node.settled(&go_id, SETTLE).await;
    println!(
        "ledger empty {:.0} ms after the echo; streams opened in/out {:?}",
        took.as_secs_f64() * 1e3,
        snap.totals.opened
    );
    finish_clean(&mut go).await;
}

#[test]
fn echo_go_dials_ours() {
    run("echo_go_dials_ours", Duration::from_secs(120), || {
        echo(GoBuild::Current, Topology::GoDialsOurs)
    });
}

#[test]
fn echo_ours_dials_go() {
    run("echo_ours_dials_go", Duration::from_secs(120), || {
        echo(GoBuild::Current, Topology::OursDialsGo)
    });
}

// ---------------------------------------------------------------------------------------------
// storm: the incident's workload

async fn storm(topology: Topology, lossy: Option<u64>) {
    let net = if lossy.is_some() { "lossy 5%" } else { "clean" };
    let count = STORM_STREAMS.to_string();
    let open_timeout = format!("{}s", OPEN_TIMEOUT.as_secs());
    let Setup {
        node,
        mut go,
        go_id,
        #[cfg(feature = "test-util")]
        proxy,
        ..
    } = connect(
        GoBuild::Current,
        topology,
        &[
            "--mode",
            "storm",
            "--count",
            &count,
            "--close",
            "close",
            "--open-timeout",
            &open_timeout,
        ],
        NodeOptions::default(),
        lossy,
    )
    .await;

    // Go storms us, the Go way.
    let s = go.expect("storm", Duration::from_secs(600)).await;
    println!(
        "STORM go -> ours ({net}, {}): streams {} (ok {}, failed {}, blocked {}), slowest open \
         {:.1} ms, elapsed {:.0} ms, slowest close {:.1} ms, close errors {}",
        topology.label(),
        s.num("count"),
        s.num("ok"),
        s.num("failed"),
        s.num("blocked"),
        s.num("slowest_open_ms"),
        s.num("elapsed_ms"),
        s.num("slowest_close_ms"),
        s.num("close_errors"),
    );
    assert_eq!(s.u64("count"), Some(STORM_STREAMS));
    assert_eq!(s.u64("blocked"), Some(0), "an open blocked: {s:?}");
    assert_eq!(
        s.u64("failed"),
        Some(0),
        "Go's storm failed: {:?}",
        go.errors()
    );
    assert!(s.num("slowest_open_ms") < OPEN_TIMEOUT.as_secs_f64() * 1e3);
    // Our handler saw every stream (it may fail to write its answer: Go's Close() stops the
    // stream's reading side as soon as the request is out).
    let served = &node.served;
    let handled = || {
        served.storm_ok.load(std::sync::atomic::Ordering::Relaxed)
            + served
                .storm_failed
                .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = tokio::time::Instant::now() + STEP;
    while handled() < STORM_STREAMS && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "  our storm handler: {} answered, {} could not answer (stopped by Go)",
        served.storm_ok.load(std::sync::atomic::Ordering::Relaxed),
        served
            .storm_failed
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(
        handled(),
        STORM_STREAMS,
        "our handler did not see every stream"
    );

    // We storm Go, our way.
    let r = storm_to(&node.control, go_id, STORM_STREAMS, 1, OPEN_TIMEOUT).await;
    println!(
        "STORM ours -> go ({net}, {}): {}",
        topology.label(),
        r.line()
    );
    assert_eq!(r.blocked, 0, "an open blocked: {:?}", r.errors);
    assert_eq!(r.failed, 0, "our storm failed: {:?}", r.errors);
    assert!(r.slowest_open < OPEN_TIMEOUT);

    // Nothing is left on our side.
    let (snap, took) = node.settled(&go_id, SETTLE).await;
    println!(
        "  ledger empty {:.0} ms after the storms; streams opened in/out {:?}, ended send \
         (finished, reset) {:?}, ended recv (finished, reset, stopped) {:?}",
        took.as_secs_f64() * 1e3,
        snap.totals.opened,
        snap.totals.ended_send,
        snap.totals.ended_recv
    );
    assert!(snap.totals.opened[1] >= STORM_STREAMS);
    assert!(snap.totals.opened[0] >= STORM_STREAMS);
    #[cfg(feature = "test-util")]
    if let Some(proxy) = proxy {
        let stats = proxy.stats();
        println!(
            "  proxy [to the listener, to the dialer]: forwarded {:?}, dropped {:?}",
            stats.forwarded, stats.dropped
        );
        assert!(
            stats.dropped.iter().all(|&d| d > 0),
            "the proxy lost nothing"
        );
    }

    finish(&mut go).await;
    // The Go side answered every one of our streams.
    let served_by_go = go
        .last("storm_served")
        .unwrap_or_else(|| panic!("Go reported no storm_served line"));
    assert_eq!(
        served_by_go.u64("count"),
        Some(STORM_STREAMS),
        "{served_by_go:?}"
    );
    assert_eq!(served_by_go.u64("failed"), Some(0), "{served_by_go:?}");
}

#[test]
fn storm_go_dials_ours() {
    run("storm_go_dials_ours", Duration::from_secs(240), || {
        storm(Topology::GoDialsOurs, None)
    });
}

#[test]
fn storm_ours_dials_go() {
    run("storm_ours_dials_go", Duration::from_secs(240), || {
        storm(Topology::OursDialsGo, None)
    });
}

#[cfg(feature = "test-util")]
#[test]
fn storm_lossy_go_dials_ours() {
    run(
        "storm_lossy_go_dials_ours",
        Duration::from_secs(600),
        || storm(Topology::GoDialsOurs, Some(5)),
    );
}

#[cfg(feature = "test-util")]
#[test]
fn storm_lossy_ours_dials_go() {
    run(
        "storm_lossy_ours_dials_go",
        Duration::from_secs(600),
        || storm(Topology::OursDialsGo, Some(6)),
    );
}

// ---------------------------------------------------------------------------------------------
// The same over WebTransport

#[test]
fn ping_go_dials_ours_webtransport() {
    run(
        "ping_go_dials_ours_webtransport",
        Duration::from_secs(90),
        || ping(GoBuild::Current, Topology::GoDialsOursWebTransport),
    );
}

#[test]
fn ping_ours_dials_go_webtransport() {
    run(
        "ping_ours_dials_go_webtransport",
        Duration::from_secs(90),
        || ping(GoBuild::Current, Topology::OursDialsGoWebTransport),
    );
}

#[test]
fn echo_go_dials_ours_webtransport() {
    run(
        "echo_go_dials_ours_webtransport",
        Duration::from_secs(120),
        || echo(GoBuild::Current, Topology::GoDialsOursWebTransport),
    );
}

#[test]
fn echo_ours_dials_go_webtransport() {
    run(
        "echo_ours_dials_go_webtransport",
        Duration::from_secs(120),
        || echo(GoBuild::Current, Topology::OursDialsGoWebTransport),
    );
}

#[test]
fn storm_go_dials_ours_webtransport() {
    run(
        "storm_go_dials_ours_webtransport",
        Duration::from_secs(240),
        || storm(Topology::GoDialsOursWebTransport, None),
    );
}

#[test]
fn storm_ours_dials_go_webtransport() {
    run(
        "storm_ours_dials_go_webtransport",
        Duration::from_secs(240),
        || storm(Topology::OursDialsGoWebTransport, None),
    );
}

// ---------------------------------------------------------------------------------------------
// go-libp2p v0.48.0 over WebTransport: the older half of the network

#[test]
fn ping_echo_go_v048_dials_ours_webtransport() {
    run_with(
        GoBuild::V048,
        "ping_echo_go_v048_dials_ours_webtransport",
        Duration::from_secs(180),
        || async {
            ping(GoBuild::V048, Topology::GoDialsOursWebTransport).await;
            echo(GoBuild::V048, Topology::GoDialsOursWebTransport).await;
        },
    );
}

#[test]
fn ping_echo_ours_dials_go_v048_webtransport() {
    run_with(
        GoBuild::V048,
        "ping_echo_ours_dials_go_v048_webtransport",
        Duration::from_secs(180),
        || async {
            ping(GoBuild::V048, Topology::OursDialsGoWebTransport).await;
            echo(GoBuild::V048, Topology::OursDialsGoWebTransport).await;
        },
    );
}

// ---------------------------------------------------------------------------------------------
// reliable reset: Go resets with a reliable size, we read

/// Streams Go opens and resets.
const RELIABLE_STREAMS: u64 = 100;

async fn reliable_reset_from_go(topology: Topology) {
    let count = RELIABLE_STREAMS.to_string();
    let Setup {
        node,
        mut go,
        go_id,
        go_connected,
        ..
    } = connect(
        GoBuild::Current,
        topology,
        &["--mode", "reliable-reset", "--count", &count],
        NodeOptions::default(),
        None,
    )
    .await;
    let negotiated = go_connected.bool("reset_stream_at") == Some(true);
    assert_eq!(
        negotiated,
        cfg!(feature = "reset-stream-at"),
        "we advertise RESET_STREAM_AT exactly when built with reset-stream-at"
    );

    let line = go.expect("reliable_reset", Duration::from_secs(60)).await;
    let report = ReliableResetReport::from_json(&line).unwrap();
    println!(
        "RELIABLE RESET go -> ours ({}, RESET_STREAM_AT negotiated: {negotiated}): {}",
        topology.label(),
        report.line()
    );
    assert_eq!(
        (report.count, report.ok, report.failed),
        (RELIABLE_STREAMS, RELIABLE_STREAMS, 0),
        "Go's opener failed: {:?}",
        go.errors()
    );
    assert_eq!(
        (report.size, report.reliable, report.code),
        (
            RELIABLE_RESET_SIZE as u64,
            RELIABLE_RESET_RELIABLE as u64,
            u64::from(RELIABLE_RESET_CODE)
        )
    );

    // Go read each stream's end after our handler had dropped it, and the handler records a
    // stream before dropping it: every stream that reached the handler is in `seen`.
    let seen = node.served.reliable_seen();
    let exact = seen
        .iter()
        .filter(|s| s.bytes == RELIABLE_RESET_RELIABLE)
        .count();
    let at_least = seen
        .iter()
        .filter(|s| s.bytes >= RELIABLE_RESET_RELIABLE)
        .count();
    println!(
        "  our handler: {} of {RELIABLE_STREAMS} streams, {at_least} with at least {} bytes \
         ({exact} exactly), bytes {:?}..={:?}",
        seen.len(),
        RELIABLE_RESET_RELIABLE,
        seen.iter().map(|s| s.bytes).min(),
        seen.iter().map(|s| s.bytes).max(),
    );
    // Without RESET_STREAM_AT the resets are plain RESET_STREAMs: a stream may be reset before
    // its multistream-select header arrives (it then never reaches the handler), or with any
    // prefix of its payload delivered. Either way, what arrives is the payload's, then code 42.
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.pattern_ok && s.bytes <= RELIABLE_RESET_SIZE,
            "stream {i}: bytes not the payload's: {s:?}"
        );
        assert_eq!(
            s.end,
            StreamEnd::Reset(u64::from(RELIABLE_RESET_CODE)),
            "stream {i}: {s:?}"
        );
    }
    if negotiated {
        assert_eq!(
            seen.len() as u64,
            RELIABLE_STREAMS,
            "with RESET_STREAM_AT, every stream reaches the handler"
        );
        assert_eq!(
            at_least,
            seen.len(),
            "with RESET_STREAM_AT, every stream delivers its reliable bytes: {seen:?}"
        );
    }

    let (snap, took) = node.settled(&go_id, SETTLE).await;
    println!(
        "  ledger empty {:.0} ms after; streams opened in/out {:?}, ended recv (finished, reset, \
         stopped) {:?}",
        took.as_secs_f64() * 1e3,
        snap.totals.opened,
        snap.totals.ended_recv
    );
    finish_clean(&mut go).await;
}

#[test]
fn reliable_reset_go_dials_ours() {
    run(
        "reliable_reset_go_dials_ours",
        Duration::from_secs(120),
        || reliable_reset_from_go(Topology::GoDialsOurs),
    );
}

#[test]
fn reliable_reset_ours_dials_go() {
    run(
        "reliable_reset_ours_dials_go",
        Duration::from_secs(120),
        || reliable_reset_from_go(Topology::OursDialsGo),
    );
}

#[test]
fn reliable_reset_go_dials_ours_webtransport() {
    run(
        "reliable_reset_go_dials_ours_webtransport",
        Duration::from_secs(120),
        || reliable_reset_from_go(Topology::GoDialsOursWebTransport),
    );
}

#[test]
fn reliable_reset_ours_dials_go_webtransport() {
    run(
        "reliable_reset_ours_dials_go_webtransport",
        Duration::from_secs(120),
        || reliable_reset_from_go(Topology::OursDialsGoWebTransport),
    );
}
