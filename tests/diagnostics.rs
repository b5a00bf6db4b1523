//! Diagnostics that stay readable at scale: one leak line per connection and scan, the streams
//! one by one at DEBUG; a blocked open told again, backing off, until it ends; connections
//! named by short numbers.

#![cfg(feature = "metrics")]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use libp2p_identity::Keypair;
use libp2p_quinn::{tokio::Transport, Config, Metrics};
use prometheus_client::{encoding::text::encode, registry::Registry};

/// Every `libp2p_quinn` line at DEBUG and above, kept for the test binary's life (not echoed:
/// the ten connections' test says thousands).
fn logs() -> Arc<Mutex<String>> {
    captured_logs("libp2p_quinn=debug", false)
}

/// The captured lines of `level` (`"WARN"`, `"INFO"`, `"DEBUG"`) that contain `needle`.
fn lines(level: &str, needle: &str) -> Vec<String> {
    let level = format!(" {level} ");
    let logs = logs();
    let text = logs.lock().unwrap();
    text.lines()
        .filter(|l| l.contains(&level) && l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// The value of `field=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len();
    line[start..].split(' ').next().unwrap()
}

const PEERS: usize = 10;
const LIMIT: usize = 256;

/// Ten connections whose peer's application holds every one of 256 streams: each leak scan
/// says at most one line per connection, the last line of each counts all of its streams,
/// and the streams are listed one by one at DEBUG and counted one by one in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_leaking_connections_say_one_line_each_per_scan() {
    let _ = logs();
    let mut registry = Registry::default();
    let mut holder_config =
        Config::new(&Keypair::generate_ed25519()).with_metrics(Metrics::new(&mut registry));
    holder_config.stream_leak_warning = Duration::from_millis(500);
    let mut holder_t = Transport::new(holder_config);
    let holder_ledgers = holder_t.ledgers();
    let addr = listen(&mut holder_t, "/ip4/127.0.0.1/udp/0/quic-v1").await;

    // Ten peers, each with a transport of its own, dial the holder.
    let mut peers = Vec::new();
    let mut holders = Vec::new();
    let mut transports = Vec::new();
    for _ in 0..PEERS {
        let config = Config::new(&Keypair::generate_ed25519());
        let id = config.local_peer_id();
        let mut t = Transport::new(config);
        let dial = libp2p_core::Transport::dial(&mut t, addr.clone(), dial_opts()).unwrap();
        let (dialed, (remote, accepted)) =
            futures::join!(bounded("dial", dial), accept(&mut holder_t));
        let (holder_id, conn) = dialed.expect("dial succeeds");
        assert_eq!(remote, id);
        peers.push(Peer::new(id, holder_id, conn, t.ledgers()));
        holders.push(Peer::new(holder_id, id, accepted, holder_ledgers.clone()));
        transports.push(t);
    }

    // Each peer sends a request on every stream of its limit and closes it; the holder's
    // application keeps every stream and reads none.
    let held: Vec<_> = futures::future::join_all(
        peers
            .iter()
            .zip(holders.iter_mut())
            .map(|(peer, holder)| held_by_acceptor(peer, holder, LIMIT)),
    )
    .await;
    let total = PEERS * LIMIT;
    assert_eq!(held.iter().map(Vec::len).sum::<usize>(), total);

    // Every held stream is counted in the metrics and listed at DEBUG.
    eventually("every held stream reported", || {
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        metric(
            &text,
            "libp2p_quinn_stream_leak_warnings_total{kind=\"idle_handle\",transport=\"quic\"}",
        ) == total as f64
    })
    .await;
    let per_stream = lines("DEBUG", "possible stream leak: inbound stream");
    assert_eq!(per_stream.len(), total);

    // At most one WARN line per connection in each scan.
    let warnings = lines("WARN", "held by the application and idle");
    let mut per_scan: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for w in &warnings {
        per_scan
            .entry(field(w, "scan"))
            .or_default()
            .push(field(w, "conn"));
    }
    for (scan, conns) in &per_scan {
        let distinct: BTreeSet<_> = conns.iter().collect();
        assert_eq!(distinct.len(), conns.len(), "scan {scan}: {conns:?}");
        assert!(conns.len() <= PEERS, "scan {scan}: {conns:?}");
    }

    // Each connection's last line counts all its streams; together they are what the ledger
    // holds. The names are the short numbers, unique on the holder's transport, with the peer.
    let mut last: BTreeMap<&str, &String> = BTreeMap::new();
    for w in &warnings {
        last.insert(field(w, "conn"), w);
    }
    assert_eq!(last.len(), PEERS, "{warnings:#?}");
    let snapshots = holder_ledgers.snapshot();
    let tracked: u64 = snapshots.iter().map(|s| s.totals.tracked_total()).sum();
    let reported: u64 = last
        .values()
        .map(|w| field(w, "streams").parse::<u64>().unwrap())
        .sum();
    assert_eq!(reported, tracked);
    assert_eq!(reported, total as u64);
    let numbers: BTreeSet<u64> = snapshots.iter().map(|s| s.number).collect();
    assert_eq!(numbers, (1..=PEERS as u64).collect());
    for s in &snapshots {
        let line = last[s.number.to_string().as_str()];
        assert!(
            line.contains(&format!("on conn #{} to {} at", s.number, s.peer)),
            "{line}"
        );
    }
    drop(held);
    for holder in &holders {
        holder.settled().await.expect("connection alive");
    }
}

/// A pair at stream limit `limit` whose listener's application holds every stream, and one
/// more open of the dialer's, waiting for credit; the dialer warns after `warning`.
struct Blocked {
    dialer: Peer,
    listener: Peer,
    held: Vec<libp2p_quinn::Stream>,
    open: futures::channel::oneshot::Receiver<Result<libp2p_quinn::Stream, libp2p_quinn::Error>>,
    /// How the dialer's logs name its connection.
    name: String,
}

async fn blocked_open(limit: u32, warning: Duration) -> Blocked {
    let mut dialer_config = config(&Keypair::generate_ed25519(), limit);
    dialer_config.credit_wait_warning = warning;
    let Pair {
        dialer,
        mut listener,
        ..
    } = pair_with(dialer_config, config(&Keypair::generate_ed25519(), limit)).await;
    let name = format!("conn #1 to {} at", dialer.remote);
    let held = held_by_acceptor(&dialer, &mut listener, limit as usize).await;
    let open = dialer.open_later();
    Blocked {
        dialer,
        listener,
        held,
        open,
        name,
    }
}

/// The dialer's credit warnings so far.
fn credit_warnings(name: &str) -> Vec<String> {
    lines("WARN", name)
        .into_iter()
        .filter(|l| l.contains("stream credit"))
        .collect()
}

/// A blocked open warns again, backing off, while it waits; when the peer gives credit back,
/// one INFO line says how long it waited. When the connection ends, its story says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_open_is_told_again_until_it_goes_ahead() {
    let _ = logs();
    let Blocked {
        dialer,
        listener,
        held,
        open: blocked,
        name,
    } = blocked_open(16, Duration::from_millis(100)).await;
    // Told at 100 ms and again at 600 ms (then at 2.4 s, 12 s, …).
    eventually("the second credit warning", || {
        credit_warnings(&name).len() >= 2
    })
    .await;
    drop(held);
    let s = bounded("the blocked open goes ahead", blocked)
        .await
        .unwrap()
        .unwrap();
    eventually("the INFO line", || {
        !lines("INFO", &format!("opening a stream on {name}")).is_empty()
    })
    .await;

    let told: Vec<String> = logs()
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains(&name) && l.contains("stream credit"))
        .map(str::to_owned)
        .collect();
    let (went_ahead, warnings) = told.split_last().unwrap();
    assert!(went_ahead.contains(" INFO ") && went_ahead.contains("went ahead after waiting"));
    assert!(warnings.len() >= 2, "{told:#?}");
    for (i, w) in warnings.iter().enumerate() {
        assert!(w.contains(" WARN "), "{w}");
        assert_eq!(field(w, "warning"), (i + 1).to_string(), "{told:#?}");
    }
    assert!(warnings[1].contains("has still waited"), "{}", warnings[1]);
    assert_eq!(field(went_ahead, "warnings"), warnings.len().to_string());

    // The connection's story, at INFO since it waited for credit.
    drop(s);
    drop(listener);
    drop(dialer);
    eventually("the dialer's story", || {
        lines("INFO", &name)
            .iter()
            .any(|l| l.contains("ended: 0 inbound and 17 outbound streams opened"))
    })
    .await;
    let stories: Vec<String> = lines("INFO", &name)
        .into_iter()
        .filter(|l| l.contains(" ended: "))
        .collect();
    assert_eq!(stories.len(), 1, "told once: {stories:#?}");
    let told = format!("(credit warnings: {})", warnings.len());
    assert!(stories[0].contains(&told), "{}", stories[0]);
}

/// With a threshold of zero a blocked open warns at once and then backs off like any other;
/// with `Duration::MAX` it never warns. Neither floods the log nor panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_wait_threshold_of_zero_or_max_neither_floods_nor_panics() {
    let _ = logs();
    for threshold in [Duration::ZERO, Duration::MAX] {
        let Blocked {
            dialer,
            listener: _listener,
            held,
            open: blocked,
            name,
        } = blocked_open(4, threshold).await;
        let credit_lines = || credit_warnings(&name).len();
        if threshold.is_zero() {
            // At 1, 6, 24, 144, 264, 384 ms…: the third comes long before a sixth could.
            eventually("the third warning", || credit_lines() >= 3).await;
            assert!(credit_lines() <= 5, "{:#?}", lines("WARN", &name));
        } else {
            eventually("the open waits for credit", || {
                dialer.snapshot().credit_wait.is_some()
            })
            .await;
            assert_eq!(credit_lines(), 0);
        }
        drop(held);
        bounded("the blocked open goes ahead", blocked)
            .await
            .unwrap()
            .unwrap();
    }
}

/// An open that waited for credit and then failed (the connection went) says so, not that it
/// went ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_open_that_fails_says_it_failed() {
    let _ = logs();
    let Blocked {
        dialer: _dialer,
        listener,
        held,
        open: blocked,
        name,
    } = blocked_open(4, Duration::from_millis(50)).await;
    eventually("the credit warning", || !credit_warnings(&name).is_empty()).await;
    // The listener's connection goes: the waiting open fails.
    drop(listener);
    let result = bounded("the blocked open ends", blocked).await;
    assert!(matches!(result, Ok(Err(_))), "{result:?}");
    eventually("the INFO line", || {
        lines("INFO", &name)
            .iter()
            .any(|l| l.contains("failed after waiting"))
    })
    .await;
    assert!(lines("INFO", &name)
        .iter()
        .all(|l| !l.contains("went ahead")));
    drop(held);
}

/// When everything of a transport is gone and its watcher task has ended for want of work, a
/// stream the application dropped only then asks for no look, and no warning says the task
/// died. (One thread: once the connections' stories are told, the task has ended.)
#[tokio::test(flavor = "current_thread")]
async fn a_stream_dropped_after_its_transport_says_no_false_alarm() {
    let _ = logs();
    let Pair {
        dialer,
        mut listener,
        ..
    } = pair_limited(16).await;
    let names = [
        format!("conn #1 to {} at", dialer.remote),
        format!("conn #1 to {} at", listener.remote),
    ];
    let mut kept = dialer.open().await;
    futures::AsyncWriteExt::write_all(&mut kept, b"request!")
        .await
        .unwrap();
    let _inbound = listener.accept().await;
    // The transports went with the pair; now the connections go, the stream stays.
    drop(dialer);
    drop(listener);
    eventually("both connections' stories", || {
        names
            .iter()
            .all(|name| lines("DEBUG", name).iter().any(|l| l.contains(" ended: ")))
    })
    .await;
    drop(kept);
    assert!(
        lines("WARN", "watcher task is gone").is_empty(),
        "{:#?}",
        lines("WARN", "watcher task is gone")
    );
}

/// A WebTransport session's streams are counted and told of like QUIC's: its credit warning
/// names it `WebTransport conn #1 to <peer>`, and its metrics say `transport="webtransport"`.
#[cfg(feature = "test-util")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_session_is_named_and_counted_as_such() {
    let _ = logs();
    const LIMIT: u32 = 16;
    let mut registry = Registry::default();
    let mut dialer_config =
        config(&Keypair::generate_ed25519(), LIMIT).with_metrics(Metrics::new(&mut registry));
    dialer_config.credit_wait_warning = Duration::from_millis(100);
    let listener_config = config(&Keypair::generate_ed25519(), LIMIT);
    let Pair {
        dialer,
        mut listener,
        ..
    } = pair_over(WEBTRANSPORT, dialer_config, listener_config, 0.0).await;
    let name = format!("WebTransport conn #1 to {} at", dialer.remote);
    // The session's CONNECT stream holds one of the listener's slots for the session's life,
    // and the Noise stream's slot comes back only with quinn's next batch of credit (it
    // announces credit once an eighth of the limit is free).
    let held = held_by_acceptor(&dialer, &mut listener, LIMIT as usize - 2).await;
    let blocked = dialer.open_later();
    eventually("the credit warning", || !credit_warnings(&name).is_empty()).await;
    drop(held);
    let _s = bounded("the blocked open goes ahead", blocked)
        .await
        .unwrap()
        .unwrap();
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    let opened = metric(
        &text,
        "libp2p_quinn_streams_opened_total{direction=\"outbound\",transport=\"webtransport\"}",
    );
    assert_eq!(opened, f64::from(LIMIT - 1), "{text}");
    assert_eq!(
        metric(
            &text,
            "libp2p_quinn_streams_opened_total{direction=\"outbound\",transport=\"quic\"}"
        ),
        0.0
    );
}
