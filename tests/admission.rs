//! Admission before the handshake, on real sockets (`docs/admission.md`).
//!
//! The floods come from addresses of 198.18.0.0/15 on the loopback device of a network
//! namespace of the test's own (`common/lab.rs`: root and iproute2 needed; the test fails
//! saying why without them), so that the listener meets them with the defaults an
//! internet-facing node runs with: loopback *addresses* are exempt by default, these are not.
//! One test at a time (`SERIAL`): they measure the process's heap and count the listener's
//! handshakes.
#![cfg(feature = "metrics")]

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{bounded, dial_opts, flood::Flood, h3_client, lab, lab::Lab, metric, socket_of, STEP};
use futures::{future::poll_fn, stream::FuturesUnordered, StreamExt};
use libp2p_core::{
    transport::{DialOpts, PortUse, TransportEvent},
    Endpoint, Multiaddr, Transport as _,
};
use libp2p_identity::Keypair;
use libp2p_quinn::{tokio::Transport, AdmissionSnapshot, Config, Connection, Metrics};
use prometheus_client::{encoding::text::encode, registry::Registry};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The listener's address in the namespace.
const LISTENER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A listening transport with default settings, reporting into `registry`, whose incoming
/// connections are all driven to the end of their handshakes (as a `Swarm` does) by a task.
struct Listener {
    transport: Arc<Mutex<Transport>>,
    addresses: Vec<Multiaddr>,
    established: Arc<Mutex<Vec<Connection>>>,
    registry: Arc<Registry>,
    driver: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Listen on each of `addrs` (sharing one port when they name the same one) and serve.
    async fn start(addrs: &[&str]) -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let config = Config::new(&Keypair::generate_ed25519()).with_metrics(metrics);
        let mut transport = Transport::new(config);
        let mut addresses = Vec::new();
        for addr in addrs {
            addresses.push(common::listen(&mut transport, addr).await);
        }
        let transport = Arc::new(Mutex::new(transport));
        let established = Arc::new(Mutex::new(Vec::new()));
        let driver = tokio::spawn(serve(transport.clone(), established.clone()));
        Self {
            transport,
            addresses,
            established,
            registry: Arc::new(registry),
            driver,
        }
    }

    fn snapshot(&self) -> AdmissionSnapshot {
        self.transport.lock().unwrap().admission_snapshot()
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).unwrap();
        text
    }

    /// `libp2p_quinn_incoming_total` for this outcome and reason.
    fn incoming(&self, outcome: &str, reason: &str) -> f64 {
        let text = self.metrics();
        let prefix =
            format!("libp2p_quinn_incoming_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}");
        metric(&text, &prefix)
    }

    fn incoming_outcome(&self, outcome: &str) -> f64 {
        let needle = format!("outcome=\"{outcome}\"");
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("libp2p_quinn_incoming_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |sum, n| sum + n)
    }

    /// Wait (bounded) until no handshake is in flight and the endpoint holds `connections`.
    async fn settled(&self, connections: usize) -> AdmissionSnapshot {
        let deadline = Instant::now() + STEP;
        loop {
            let snapshot = self.snapshot();
            if snapshot.handshakes_in_flight == 0 && snapshot.endpoint_connections == connections {
                return snapshot;
            }
            assert!(
                Instant::now() < deadline,
                "not settled after {STEP:?}: {snapshot:?}, {connections} connections expected"
            );
            // Polling counters that other tasks change: a bounded wait, not a sleep used to
            // order events.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Poll the transport; drive each incoming handshake on a task of its own, keeping the
/// connections that are established.
async fn serve(transport: Arc<Mutex<Transport>>, established: Arc<Mutex<Vec<Connection>>>) {
    loop {
        let event = poll_fn(|cx| Pin::new(&mut *transport.lock().unwrap()).poll(cx)).await;
        if let TransportEvent::Incoming { upgrade, .. } = event {
            let established = established.clone();
            tokio::spawn(async move {
                if let Ok((_, connection)) = upgrade.await {
                    established.lock().unwrap().push(connection);
                }
            });
        }
    }
}

/// Heap bytes in use (glibc).
fn heap() -> usize {
    // SAFETY: mallinfo2 takes no pointers and may be called at any time from any thread.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

/// A peer with its own address: it listens there, so that its dials leave from it
/// (`PortUse::Reuse`), as a peer on its own host would.
async fn peer_at(ip: IpAddr, webtransport: bool) -> Transport {
    let mut transport = Transport::new(Config::new(&Keypair::generate_ed25519()));
    let kind = if webtransport {
        "quic-v1/webtransport"
    } else {
        "quic-v1"
    };
    common::listen(&mut transport, &format!("/ip4/{ip}/udp/0/{kind}")).await;
    transport
}

/// Dial `addr` from `peer`'s listening socket; how long the connection took, or the error.
async fn dial_from(
    peer: &mut Transport,
    addr: &Multiaddr,
) -> Result<(Duration, Connection), String> {
    let opts = DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::Reuse,
    };
    let started = Instant::now();
    let dial = peer.dial(addr.clone(), opts).map_err(|e| e.to_string())?;
    // The peer's own listener must be polled too (it reports nothing we wait for).
    let dialed = tokio::time::timeout(STEP, dial)
        .await
        .map_err(|_| format!("no connection within {STEP:?}"))?
        .map_err(|e| e.to_string())?;
    Ok((started.elapsed(), dialed.1))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// 5,000 Initials over 2 s, with fresh connection ids, from 64 addresses × 8 ports, at a
/// QUIC + WebTransport port with default settings; 20 peers, each from its own address, dial
/// meanwhile. The listener keeps at most `retry_above` of the flood's half-open connections
/// (asking the rest for a Retry they never answer), its heap stays within 48 MiB of where it
/// was, every peer connects, and afterwards nothing is left: no handshake in flight, no
/// connection.
///
/// Measured: the heap in use (glibc's `mallinfo2`, the whole process: the flood's sender keeps
/// nothing per Initial) every 20 ms, and the listener's own counts (handshakes in flight, its
/// quinn endpoint's connections). Without admission (`AdmissionConfig::unlimited()`) every
/// Initial becomes a half-open connection of ~70 KB for 5 s: 5,000 of them, ~350 MB.
#[test]
fn a_flood_of_initials_stays_bounded_and_peers_still_connect() {
    let _serial = serial();
    // One subscriber for the whole binary: the one that keeps warnings for the stall test.
    common::captured_warnings();
    let flood_sources = lab::addresses(1, 64);
    let peers = lab::addresses(2, 21);
    let mut all = vec![IpAddr::V4(LISTENER)];
    all.extend(&flood_sources);
    all.extend(&peers);
    let lab = Lab::new(&all).unwrap_or_else(|e| panic!("cannot build the test namespace: {e}"));
    lab.run(move || runtime().block_on(flood_test(flood_sources, peers)));
}

async fn flood_test(flood_sources: Vec<IpAddr>, peer_ips: Vec<IpAddr>) {
    let listener = Listener::start(&[
        &format!("/ip4/{LISTENER}/udp/4001/quic-v1"),
        &format!("/ip4/{LISTENER}/udp/4001/quic-v1/webtransport"),
    ])
    .await;
    let quic_addr = listener.addresses[0].clone();
    let mut peers = Vec::new();
    for ip in &peer_ips {
        peers.push(peer_at(*ip, false).await);
    }
    // One peer measures an unloaded connection first.
    let mut first = peers.pop().expect("21 peers");
    let (unloaded, connection) = dial_from(&mut first, &quic_addr)
        .await
        .expect("unloaded dial");
    drop(connection);
    listener.settled(0).await;

    let flood = Flood {
        target: socket_of(&quic_addr),
        sources: flood_sources,
        ports_per_source: 8,
        count: 5_000,
        duration: Duration::from_secs(2),
        threads: 1,
        alpn: b"h3".to_vec(),
        half_hello: false,
    }
    .prepare()
    .expect("the flood's sockets");
    let baseline = heap();
    let sender = std::thread::spawn(move || flood.run());

    // Sample while the flood runs and the peers dial.
    let samples: Arc<Mutex<Vec<(usize, AdmissionSnapshot)>>> = Arc::default();
    let sampling = {
        let (samples, transport) = (samples.clone(), listener.transport.clone());
        tokio::spawn(async move {
            loop {
                let snapshot = transport.lock().unwrap().admission_snapshot();
                samples.lock().unwrap().push((heap(), snapshot));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The peers dial half a second into the flood, all at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dials: FuturesUnordered<_> = peers
        .iter_mut()
        .map(|peer| dial_from(peer, &quic_addr))
        .collect();
    let results: Vec<_> = dials.collect().await;
    let report = tokio::task::spawn_blocking(move || sender.join())
        .await
        .unwrap()
        .expect("the flood thread")
        .expect("the flood");
    // The flood's half-open connections time out (5 s) and leave.
    listener
        .settled(results.iter().filter(|r| r.is_ok()).count())
        .await;
    sampling.abort();

    let mut times: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.0)
        .collect();
    times.sort();
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect();
    let dialed = results.len();
    // The dialers' ends of the connections, closed at the end.
    let dialers_ends: Vec<Connection> = results
        .into_iter()
        .filter_map(Result::ok)
        .map(|r| r.1)
        .collect();
    let samples = samples.lock().unwrap().clone();
    let peak_heap = samples.iter().map(|s| s.0).max().unwrap_or(baseline);
    let peak_in_flight = samples
        .iter()
        .map(|s| s.1.handshakes_in_flight)
        .max()
        .unwrap_or(0);
    let peak_connections = samples
        .iter()
        .map(|s| s.1.endpoint_connections)
        .max()
        .unwrap_or(0);
    let retried = listener.incoming_outcome("retried");
    let accepted = listener.incoming_outcome("accepted");
    eprintln!(
        "flood: {} Initials in {:?} ({:.0}/s); listener: accepted {accepted}, retried {retried} \
         ({} for load), refused {}, ignored {}; peak handshakes in flight {peak_in_flight}, \
         peak endpoint connections {peak_connections}; heap {:.1} MiB at the start, peak +{:.1} \
         MiB; peers {}/{} connected, p50 {:?} p90 {:?} max {:?} (unloaded {unloaded:?})",
        report.sent,
        report.elapsed,
        report.rate(),
        listener.incoming("retried", "load"),
        listener.incoming_outcome("refused"),
        listener.incoming_outcome("ignored"),
        baseline as f64 / (1 << 20) as f64,
        peak_heap.saturating_sub(baseline) as f64 / (1 << 20) as f64,
        times.len(),
        dialed,
        times.first().map(|_| percentile(&times, 0.5)),
        times.first().map(|_| percentile(&times, 0.9)),
        times.last(),
    );

    assert_eq!(report.sent, 5_000, "the flood went out: {report:?}");
    assert!(errors.is_empty(), "peers that did not connect: {errors:?}");
    assert_eq!(times.len(), 20);
    assert!(
        listener.incoming("retried", "load") > 0.0,
        "the flood pushed the listener past its Retry threshold"
    );
    // 64 of the flood's own, and the peers'.
    assert!(
        peak_in_flight <= 64 + 20,
        "peak handshakes in flight {peak_in_flight}"
    );
    assert!(
        peak_heap.saturating_sub(baseline) < 48 << 20,
        "the heap grew by {} MiB",
        peak_heap.saturating_sub(baseline) >> 20
    );
    assert!(accepted < 400.0, "{accepted} of 5,000 Initials accepted");

    // Afterwards: the peers' connections close, and nothing is left.
    let established: Vec<Connection> = std::mem::take(&mut *listener.established.lock().unwrap());
    drop(established);
    drop(dialers_ends);
    drop(peers);
    drop(first);
    let snapshot = listener.settled(0).await;
    assert_eq!(snapshot.handshakes_in_flight, 0);
    assert_eq!(snapshot.endpoint_connections, 0);
    // The subnets still tracked only remember their rates (they refill within ~80 s), bounded
    // by the sources seen.
    assert!(snapshot.sources <= 64 + 21, "{snapshot:?}");
    let ledgers = listener.transport.lock().unwrap().ledgers();
    assert!(
        ledgers.snapshot().is_empty(),
        "connections left in the books"
    );
}

/// 30 connections from one source that finish QUIC's handshake on a WebTransport port and
/// then send nothing, neither their CONNECT nor a Noise message: the source's 8 places are
/// taken, the rest are refused (or, once refused 16 times in a row, ignored), a peer from
/// another address connects meanwhile, and the listener closes the 8 when its handshake
/// timeout passes; one warning line names the source.
#[test]
fn connections_that_never_finish_webtransport_are_capped_per_source() {
    let _serial = serial();
    let stalling = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    let other = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1));
    let lab = Lab::new(&[IpAddr::V4(LISTENER), stalling, other])
        .unwrap_or_else(|e| panic!("cannot build the test namespace: {e}"));
    let warnings = common::captured_warnings();
    lab.run(move || runtime().block_on(stall_test(stalling, other)));
    let lines: Vec<String> = warnings
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains("refusing new connections from 198.18.1.1/32"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "one warning line: {lines:#?}");
    assert!(lines[0].contains("source_cap"), "{}", lines[0]);
}

async fn stall_test(stalling: IpAddr, other: IpAddr) {
    let listener = Listener::start(&[&format!("/ip4/{LISTENER}/udp/0/quic-v1/webtransport")]).await;
    let wt_addr = listener.addresses[0].clone();
    let server = socket_of(&wt_addr);

    // The other source's peer is ready before the stall starts.
    let mut peer = peer_at(other, true).await;
    // One client endpoint at the stalling address; 30 connections offering `h3`, each given
    // 2 s (a connection the listener ignores gets no answer at all).
    let endpoint = quinn::Endpoint::client(SocketAddr::new(stalling, 0)).unwrap();
    let client = quinn::ClientConfig::new(Arc::new(h3_client::client_crypto(b"h3")));
    let started = Instant::now();
    let attempts: FuturesUnordered<_> = (0..30)
        .map(|_| {
            let connecting = endpoint.connect_with(client.clone(), server, "l").unwrap();
            tokio::time::timeout(Duration::from_secs(2), connecting)
        })
        .collect();
    let mut sampled_peak = 0;
    let mut attempts = attempts;
    let mut results = Vec::new();
    while let Some(result) = bounded("the stalling connections", attempts.next()).await {
        sampled_peak = sampled_peak.max(listener.snapshot().handshakes_in_flight);
        results.push(result);
    }
    let open: Vec<quinn::Connection> = results
        .iter()
        .filter_map(|r| r.as_ref().ok()?.as_ref().ok().cloned())
        .collect();
    let refused = results
        .iter()
        .filter(|r| {
            matches!(r, Ok(Err(quinn::ConnectionError::ConnectionClosed(close)))
                if close.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED)
        })
        .count();
    let unanswered = results.iter().filter(|r| r.is_err()).count();
    eprintln!(
        "stalling source: {} finished QUIC, {refused} refused, {unanswered} unanswered in 2 s, \
         in {:?}; peak handshakes in flight {sampled_peak}",
        open.len(),
        started.elapsed()
    );
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Ok(Err(e)) => Some(e.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(open.len(), 8, "the source's cap; the others: {errors:?}");
    assert_eq!(open.len() + refused + unanswered, 30, "{errors:?}");
    assert!(refused >= 1);
    assert_eq!(listener.snapshot().handshakes_in_flight, 8);

    // Another source is not affected: a WebTransport peer connects while the 8 wait.
    let (took, connection) = dial_from(&mut peer, &wt_addr)
        .await
        .expect("the other source connects");
    eprintln!("the other source connected in {took:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the 8 were still waiting when the peer connected"
    );

    // The listener gives up on the 8 at its handshake timeout (5 s) and closes them.
    for connection in &open {
        let error = bounded(
            "the listener closes a stalled connection",
            connection.closed(),
        )
        .await;
        assert!(
            !matches!(error, quinn::ConnectionError::LocallyClosed),
            "{error}"
        );
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_secs(4),
        "closed after {closed_after:?}, before the handshake timeout"
    );
    drop(connection);
    drop(peer);
    let snapshot = listener.settled(0).await;
    assert_eq!(snapshot.handshakes_in_flight, 0);
    assert!(listener.incoming("refused", "source_cap") >= 1.0);
    assert_eq!(listener.incoming("accepted", "within_limits"), 9.0);
}

/// The benchmark's shape: many connections at once from one host, on loopback, all admitted
/// with the defaults (loopback is exempt, as in go-libp2p); the handshakes' places come back.
#[test]
fn many_connections_from_loopback_are_all_admitted() {
    let _serial = serial();
    common::captured_warnings();
    runtime().block_on(async {
        let listener = Listener::start(&[common::QUIC]).await;
        let addr = listener.addresses[0].clone();
        let mut dialer = common::transport();
        let dials: FuturesUnordered<_> = (0..60)
            .map(|_| dialer.dial(addr.clone(), dial_opts()).unwrap())
            .collect();
        let results: Vec<_> = bounded("60 dials", dials.collect::<Vec<_>>()).await;
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.is_empty(), "{failed:?}");
        listener.settled(60).await;
        assert_eq!(listener.incoming("accepted", "exempt"), 60.0);
        assert_eq!(listener.snapshot().sources, 0);
    });
}

/// A handshake that fails (a client with no certificate on libp2p's QUIC route) gives its
/// place back, as one that completes does.
#[test]
fn a_failed_handshake_gives_its_place_back() {
    let _serial = serial();
    common::captured_warnings();
    runtime().block_on(async {
        let listener = Listener::start(&[common::QUIC]).await;
        let server = socket_of(&listener.addresses[0]);
        let (_endpoint, result) = h3_client::connect(server, b"libp2p").await;
        // The client may see its handshake done before the server rejects it.
        if let Ok(connection) = result {
            let _ = bounded("the server closes it", connection.closed()).await;
        }
        let snapshot = listener.settled(0).await;
        assert_eq!(snapshot.handshakes_in_flight, 0);
        assert_eq!(listener.incoming("accepted", "exempt"), 1.0);
        assert!(listener.established.lock().unwrap().is_empty());
    });
}

/// Connections whose ClientHello never completes, on a WebTransport port (where the listener
/// waits for it to learn the route): their places come back at the handshake timeout. On
/// loopback, exempt from per-source limits but counted all the same.
#[test]
fn a_clienthello_that_never_completes_gives_its_place_back_at_the_timeout() {
    let _serial = serial();
    common::captured_warnings();
    runtime().block_on(async {
        let listener = Listener::start(&[common::WEBTRANSPORT]).await;
        let target = socket_of(&listener.addresses[0]);
        let flood = Flood {
            target,
            sources: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ports_per_source: 4,
            count: 4,
            duration: Duration::from_millis(10),
            threads: 1,
            alpn: b"h3".to_vec(),
            half_hello: true,
        };
        let started = Instant::now();
        let report = tokio::task::spawn_blocking(move || flood.run())
            .await
            .unwrap()
            .expect("the Initials");
        assert_eq!(report.sent, 4);
        common::eventually("four handshakes in flight", || {
            listener.snapshot().handshakes_in_flight == 4
        })
        .await;
        listener.settled(0).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(4_500),
            "released after {took:?}, before the handshake timeout"
        );
        assert_eq!(listener.incoming("accepted", "exempt"), 4.0);
        assert!(listener.established.lock().unwrap().is_empty());
    });
}
