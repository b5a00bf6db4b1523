//! The transport benchmark: this crate against `libp2p-quic`, raw quinn and TCP + noise + yamux.
//!
//! ```text
//! cargo bench --bench bench -- [--rounds N] [--quick] [--only WORKLOAD,...]
//!                              [--transports TRANSPORT,...] [--bulk-mib N] [--streams N]
//!                              [--scale CONNSxSTREAMS]
//! ```
//!
//! Everything runs in one process and round-robin: each round runs every workload on every
//! transport (in an order that rotates per round), so that the noise of a small, shared machine
//! falls on all transports alike and the ratios between them hold even where absolute numbers
//! drift. The short measurements go further: handshakes (a few milliseconds each) and stream
//! churn (under a second per transport) take turns within the round, dial by dial and a tenth
//! of the streams at a time, so that each round compares the transports over the same seconds.
//! Each measurement prints one machine-readable line,
//!
//! ```text
//! BENCH {"round":1,"transport":"ours","workload":"seq_churn","value":12345.6,"unit":"streams/s"}
//! ```
//!
//! and the run ends with a table of medians over the rounds, the ratios to raw quinn and to
//! `libp2p-quic`, and the cost of the stream ledger (ours against ours with `stream_ledger`
//! off). Ratios are taken within each round and then the median over rounds, because a busy
//! machine moves whole rounds at once.
//!
//! Each measurement runs on a tokio runtime of its own (two workers, as the machine has two
//! cores; the transports taking turns share one), dropped afterwards, so that the next one neither shares the CPU with its teardown
//! nor sees its memory freed. Beside wall-clock rates, the churn and bulk workloads report
//! the CPU time they cost (steadier than time on a shared machine), and bulk and scale the
//! datagrams the kernel dropped for full UDP receive buffers (why a QUIC run slows down).
//!
//! Every workload is written once, over [`Dialer`], [`Conn`] and [`Server`]: a connection that
//! opens streams boxed as libp2p's [`SubstreamBox`], and a listener that answers every inbound
//! stream the same way ([`serve`]). libp2p transports are boxed as a Swarm would box them
//! (`StreamMuxerBox`, one task driving the muxer); raw quinn is used directly.
//!
//! `tests/bench_smoke.rs` includes this file as a module and runs it on tiny sizes, so that the
//! benchmark keeps building and working.

use std::{
    fmt, io,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{
    channel::{mpsc, oneshot},
    future::{self, poll_fn, BoxFuture},
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, StreamExt,
};
use libp2p_core::{
    muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox},
    transport::{Boxed, DialOpts, ListenerId, PortUse, TransportEvent},
    upgrade::Version,
    Endpoint, Multiaddr, Transport as _,
};
use libp2p_identity::{Keypair, PeerId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::task::{JoinHandle, JoinSet};

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// The transports under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// This crate, with the stream ledger on (the default).
    Ours,
    /// This crate with `stream_ledger = false`: the ledger's cost is the difference.
    OursNoLedger,
    /// rust-libp2p's QUIC transport.
    Libp2pQuic,
    /// quinn with libp2p's TLS configs and our transport parameters, no libp2p at all: the
    /// ceiling that a libp2p layer over quinn can reach.
    RawQuinn,
    /// TCP upgraded with noise and yamux: what libp2p users get without QUIC.
    TcpNoiseYamux,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Ours,
        Kind::OursNoLedger,
        Kind::Libp2pQuic,
        Kind::RawQuinn,
        Kind::TcpNoiseYamux,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::OursNoLedger => "ours-no-ledger",
            Kind::Libp2pQuic => "libp2p-quic",
            Kind::RawQuinn => "raw-quinn",
            Kind::TcpNoiseYamux => "tcp-noise-yamux",
        }
    }

    fn listen_addr(self) -> Multiaddr {
        let addr = match self {
            Kind::TcpNoiseYamux => "/ip4/127.0.0.1/tcp/0",
            _ => "/ip4/127.0.0.1/udp/0/quic-v1",
        };
        addr.parse().expect("valid multiaddr")
    }
}

/// The workloads, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Handshake,
    Bulk,
    SeqChurn,
    ConcChurn,
    Memory,
    Scale,
}

impl Workload {
    /// Whether the transports take turns within a round, in one runtime, rather than each
    /// running the whole workload on a runtime of its own: for the short measurements, where
    /// this machine's drift over seconds would otherwise weigh more than the transports do.
    /// Memory (heap growth) and bulk (one stream, a second or more) stay isolated.
    pub fn side_by_side(self) -> bool {
        matches!(
            self,
            Workload::Handshake | Workload::SeqChurn | Workload::ConcChurn | Workload::Scale
        )
    }

    pub const ALL: [Workload; 6] = [
        Workload::Handshake,
        Workload::Bulk,
        Workload::SeqChurn,
        Workload::ConcChurn,
        Workload::Memory,
        Workload::Scale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Handshake => "handshake",
            Workload::Bulk => "bulk",
            Workload::SeqChurn => "seq_churn",
            Workload::ConcChurn => "conc_churn",
            Workload::Memory => "memory",
            Workload::Scale => "scale",
        }
    }

    /// The metrics this workload reports.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Workload::Handshake => &[Metric::HandshakeP50, Metric::HandshakeP99],
            Workload::Bulk => &[Metric::Bulk, Metric::BulkCpu, Metric::BulkUdpDrops],
            Workload::SeqChurn => &[Metric::SeqChurn, Metric::SeqChurnCpu],
            Workload::ConcChurn => &[Metric::ConcChurn, Metric::ConcChurnCpu],
            Workload::Memory => &[
                Metric::ConnRss,
                Metric::ConnHeap,
                Metric::StreamRss,
                Metric::StreamHeap,
            ],
            Workload::Scale => &[
                Metric::Scale,
                Metric::ScaleCpu,
                Metric::ScaleFailed,
                Metric::ScaleStuck,
                Metric::ScaleDialFailed,
                Metric::ScaleUdpDrops,
            ],
        }
    }
}

/// One reported number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    HandshakeP50,
    HandshakeP99,
    Bulk,
    /// CPU time of the process (both ends) per GiB of the bulk transfer. Time on a shared
    /// machine stretches with other load; the CPU a transfer costs stays put.
    BulkCpu,
    /// Datagrams the kernel dropped for a full socket receive buffer during the bulk transfer
    /// (`RcvbufErrors` of `/proc/net/snmp`, machine-wide): why a QUIC transfer slows down.
    BulkUdpDrops,
    SeqChurn,
    /// CPU time of the process (both ends) per stream of the sequential churn.
    SeqChurnCpu,
    ConcChurn,
    ConcChurnCpu,
    /// Resident memory per idle connection, both ends together.
    ConnRss,
    /// Heap bytes in use per idle connection, both ends together: the same as `ConnRss` without
    /// the page granularity and allocator slack, so steadier.
    ConnHeap,
    StreamRss,
    StreamHeap,
    Scale,
    /// CPU time of the process (both ends) per exchange of the scale workload.
    ScaleCpu,
    /// Opens or exchanges that failed on the established connections of the scale workload.
    ScaleFailed,
    /// Opens that waited longer than [`STUCK`] during the scale workload.
    ScaleStuck,
    /// Connections of the scale workload that could not be established.
    ScaleDialFailed,
    /// As [`Metric::BulkUdpDrops`], during the scale workload's exchanges.
    ScaleUdpDrops,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::HandshakeP50 => "handshake_p50",
            Metric::HandshakeP99 => "handshake_p99",
            Metric::Bulk => "bulk",
            Metric::BulkCpu => "bulk_cpu",
            Metric::BulkUdpDrops => "bulk_udp_drops",
            Metric::SeqChurn => "seq_churn",
            Metric::SeqChurnCpu => "seq_churn_cpu",
            Metric::ConcChurn => "conc_churn",
            Metric::ConcChurnCpu => "conc_churn_cpu",
            Metric::ConnRss => "idle_conn_rss",
            Metric::ConnHeap => "idle_conn_heap",
            Metric::StreamRss => "idle_stream_rss",
            Metric::StreamHeap => "idle_stream_heap",
            Metric::Scale => "scale",
            Metric::ScaleCpu => "scale_cpu",
            Metric::ScaleFailed => "scale_failed",
            Metric::ScaleStuck => "scale_stuck",
            Metric::ScaleDialFailed => "scale_dial_failed",
            Metric::ScaleUdpDrops => "scale_udp_drops",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::HandshakeP50 | Metric::HandshakeP99 => "ms",
            Metric::Bulk => "Gbit/s",
            Metric::BulkCpu => "cpu s/GiB",
            Metric::SeqChurnCpu | Metric::ConcChurnCpu | Metric::ScaleCpu => "cpu us/stream",
            Metric::SeqChurn | Metric::ConcChurn | Metric::Scale => "streams/s",
            Metric::ConnRss | Metric::ConnHeap => "bytes/conn",
            Metric::StreamRss | Metric::StreamHeap => "bytes/stream",
            Metric::ScaleFailed | Metric::ScaleStuck => "opens",
            Metric::ScaleDialFailed => "dials",
            Metric::BulkUdpDrops | Metric::ScaleUdpDrops => "datagrams",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::Bulk | Metric::SeqChurn | Metric::ConcChurn | Metric::Scale
        )
    }

    /// Resident-memory figures: page-granular, so they can read zero (or less) where the heap
    /// figures show the growth.
    pub fn is_rss(self) -> bool {
        matches!(self, Metric::ConnRss | Metric::StreamRss)
    }

    /// Counts: summed over rounds rather than taken as a median, and never a ratio.
    pub fn is_count(self) -> bool {
        self.is_failure() || matches!(self, Metric::BulkUdpDrops | Metric::ScaleUdpDrops)
    }

    /// Counts of things that should never happen.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Metric::ScaleFailed | Metric::ScaleStuck | Metric::ScaleDialFailed
        )
    }
}

/// How much each workload does.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Handshakes per transport per round (fresh transports each).
    pub handshakes: usize,
    pub bulk_bytes: u64,
    /// Streams per churn run, sequential and concurrent alike.
    pub churn_streams: usize,
    /// Tasks of the concurrent churn.
    pub concurrency: usize,
    pub idle_conns: usize,
    pub idle_streams: usize,
    pub scale_conns: usize,
    pub scale_streams_per_conn: usize,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: usize,
    pub workloads: Vec<Workload>,
    pub transports: Vec<Kind>,
    pub sizes: Sizes,
}

impl Options {
    /// The full benchmark.
    pub fn full() -> Self {
        Self {
            rounds: 5,
            workloads: Workload::ALL.to_vec(),
            transports: Kind::ALL.to_vec(),
            sizes: Sizes {
                handshakes: 200,
                bulk_bytes: 256 << 20,
                // Far past the stream limit of 256: stream credit must come back, or it stalls.
                churn_streams: 10_000,
                concurrency: 64,
                idle_conns: 200,
                // Under the stream limit of 256, so all of them can be open on one connection.
                idle_streams: 200,
                scale_conns: 500,
                scale_streams_per_conn: 100,
            },
        }
    }

    /// Tiny sizes: a check that everything works, not a measurement.
    pub fn quick() -> Self {
        Self {
            rounds: 2,
            sizes: Sizes {
                handshakes: 10,
                bulk_bytes: 1 << 20,
                churn_streams: 300,
                concurrency: 64,
                idle_conns: 20,
                idle_streams: 20,
                scale_conns: 10,
                scale_streams_per_conn: 30,
            },
            ..Self::full()
        }
    }

    const USAGE: &'static str = "usage: bench [--rounds N] [--quick] [--only WORKLOAD,...] \
        [--transports TRANSPORT,...] [--bulk-mib N] [--streams N] [--scale CONNSxSTREAMS]\n  \
        workloads: handshake, bulk, seq_churn, conc_churn, memory, scale\n  \
        transports: ours, ours-no-ledger, libp2p-quic, raw-quinn, tcp-noise-yamux";

    /// Parse the command line (without the program name). `--quick` sets the defaults that the
    /// other options then override, wherever it stands.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let args: Vec<String> = args.into_iter().collect();
        let mut options = if args.iter().any(|a| a == "--quick") {
            Self::quick()
        } else {
            Self::full()
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--quick" => {}
                // `cargo bench` passes `--bench` to every benchmark binary.
                "--bench" => {}
                "--rounds" => options.rounds = parse_number(&value()?)?,
                "--bulk-mib" => options.sizes.bulk_bytes = parse_number::<u64>(&value()?)? << 20,
                "--streams" => options.sizes.churn_streams = parse_number(&value()?)?,
                "--scale" => {
                    let value = value()?;
                    let (conns, streams) = value
                        .split_once('x')
                        .ok_or(format!("--scale wants CONNSxSTREAMS, not {value:?}"))?;
                    options.sizes.scale_conns = parse_number(conns)?;
                    options.sizes.scale_streams_per_conn = parse_number(streams)?;
                }
                "--only" => {
                    options.workloads = parse_list(&value()?, &Workload::ALL, |w| w.name())?
                }
                "--transports" => {
                    options.transports = parse_list(&value()?, &Kind::ALL, |k| k.name())?
                }
                "-h" | "--help" => return Err(Self::USAGE.into()),
                other => return Err(format!("unknown argument {other:?}\n{}", Self::USAGE)),
            }
        }
        if options.rounds == 0 {
            return Err("--rounds must be at least 1".into());
        }
        Ok(options)
    }
}

fn parse_number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn parse_list<T: Copy>(
    s: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|part| {
            all.iter()
                .copied()
                .find(|item| name(*item) == part.trim())
                .ok_or(format!("unknown name {part:?}\n{}", Options::USAGE))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// One measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round: usize,
    pub transport: Kind,
    pub metric: Metric,
    pub value: f64,
}

/// Everything a run measured, and what went wrong.
#[derive(Debug, Default)]
pub struct Report {
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn values(&self, transport: Kind, metric: Metric) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.transport == transport && s.metric == metric)
            .map(|s| s.value)
            .collect()
    }

    /// The median over rounds; for failure counts, the total.
    pub fn summary(&self, transport: Kind, metric: Metric) -> Option<f64> {
        let values = self.values(transport, metric);
        if values.is_empty() {
            None
        } else if metric.is_count() {
            Some(values.iter().sum())
        } else {
            Some(percentile(values, 0.5))
        }
    }

    /// `transport` against `reference`: the median over rounds of the ratio within each round.
    /// Pairing by round cancels what a round's machine state did to both, which on a shared
    /// machine moves whole rounds by tens of percent.
    pub fn ratio(&self, transport: Kind, reference: Kind, metric: Metric) -> Option<f64> {
        let ratios: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.transport == transport && s.metric == metric)
            .filter_map(|s| {
                let base = self.samples.iter().find(|b| {
                    b.transport == reference && b.metric == metric && b.round == s.round
                })?;
                let ratio = s.value / base.value;
                // A zero reference (RSS that grew less than a page) has no ratio.
                ratio.is_finite().then_some(ratio)
            })
            .collect();
        (!ratios.is_empty()).then(|| percentile(ratios, 0.5))
    }
}

fn json_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "null".into()
    }
}

/// The nearest-rank percentile `p` (0..=1) of `values`.
fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// No single workload run may take longer than this; a run that does is reported as an error.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(300);
/// Bound on any one step inside a workload (a dial, an open, an exchange, a wait).
const STEP: Duration = Duration::from_secs(30);
/// An open that waits longer than this counts as stuck in the scale workload.
const STUCK: Duration = Duration::from_secs(10);

/// Run the benchmark: print a `BENCH` line per measurement as it comes and return them all.
pub async fn run(options: &Options) -> Report {
    let mut report = Report::default();
    let keys = Keys::new();
    for round in 1..=options.rounds {
        for &workload in &options.workloads {
            // Rotate who goes first, so that no transport always runs on a machine still busy
            // with (or cooled down from) the one before it.
            let mut transports = options.transports.clone();
            let len = transports.len().max(1);
            transports.rotate_left((round - 1) % len);
            if workload.side_by_side() {
                let (kinds, keys, sizes) =
                    (transports.clone(), keys.clone(), options.sizes.clone());
                let results = on_own_runtime(move || async move {
                    let results = side_by_side(workload, &kinds, &keys, &sizes).await;
                    Ok(results
                        .into_iter()
                        .map(|r| r.map_err(|e| e.to_string()))
                        .collect())
                })
                .await;
                let results: Vec<_> = match results {
                    Ok(results) => results,
                    Err(e) => transports.iter().map(|_| Err(e.clone())).collect(),
                };
                for (kind, result) in transports.into_iter().zip(results) {
                    report.record(round, kind, workload, result);
                }
                continue;
            }
            for kind in transports {
                let result = isolated(workload, kind, &keys, &options.sizes).await;
                report.record(round, kind, workload, result);
            }
        }
    }
    report
}

impl Report {
    /// Print one measurement's `BENCH` lines (or its error) and keep them.
    fn record(
        &mut self,
        round: usize,
        kind: Kind,
        workload: Workload,
        result: Result<Vec<(Metric, f64)>, String>,
    ) {
        match result {
            Ok(values) => {
                for (metric, value) in values {
                    println!(
                        "BENCH {{\"round\":{round},\"transport\":\"{}\",\"workload\":\"{}\",\"value\":{},\"unit\":\"{}\"}}",
                        kind.name(),
                        metric.name(),
                        json_number(value),
                        metric.unit(),
                    );
                    self.samples.push(Sample {
                        round,
                        transport: kind,
                        metric,
                        value,
                    });
                }
            }
            Err(error) => {
                println!(
                    "BENCH {{\"round\":{round},\"transport\":\"{}\",\"workload\":\"{}\",\"error\":{:?}}}",
                    kind.name(),
                    workload.name(),
                    error,
                );
                self.errors.push(format!(
                    "round {round}, {}, {}: {error}",
                    kind.name(),
                    workload.name()
                ));
            }
        }
    }
}

/// Run one measurement of one transport on a runtime of its own (see [`on_own_runtime`]).
async fn isolated(
    workload: Workload,
    kind: Kind,
    keys: &Keys,
    sizes: &Sizes,
) -> Result<Vec<(Metric, f64)>, String> {
    let (keys, sizes) = (keys.clone(), sizes.clone());
    on_own_runtime(move || async move {
        measure(workload, kind, &keys, &sizes)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

/// Run what `make` returns on a runtime of its own, and drop that runtime afterwards. Dropping
/// it ends every task the measurement left behind (quinn's endpoint drivers with their receive
/// buffers, connections still draining), so that no measurement shares the machine with, or
/// has its memory figures moved by, the teardown of the one before it.
async fn on_own_runtime<T, F, Fut>(make: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let result = match runtime() {
            Ok(runtime) => {
                let result = runtime.block_on(async {
                    tokio::time::timeout(WORKLOAD_LIMIT, make())
                        .await
                        .unwrap_or_else(|_| Err(format!("did not finish in {WORKLOAD_LIMIT:?}")))
                });
                // Before answering: the next measurement starts once this one's tasks are gone.
                drop(runtime);
                result
            }
            Err(e) => Err(format!("no runtime: {e}")),
        };
        let _ = tx.send(result);
    });
    rx.await
        .unwrap_or_else(|_| Err("the measurement panicked".into()))
}

/// Two worker threads: the machine has two cores, and both ends of every connection run in
/// this process.
fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

async fn measure(
    workload: Workload,
    kind: Kind,
    keys: &Keys,
    sizes: &Sizes,
) -> io::Result<Vec<(Metric, f64)>> {
    match workload {
        Workload::Handshake | Workload::SeqChurn | Workload::ConcChurn | Workload::Scale => {
            side_by_side(workload, &[kind], keys, sizes).await.remove(0)
        }
        Workload::Bulk => bulk(kind, keys, sizes.bulk_bytes).await,
        Workload::Memory => memory(kind, keys, sizes.idle_conns, sizes.idle_streams).await,
    }
}

/// A [`Workload::side_by_side`] workload on `kinds` at once: one result per kind, in order.
async fn side_by_side(
    workload: Workload,
    kinds: &[Kind],
    keys: &Keys,
    sizes: &Sizes,
) -> Vec<io::Result<Vec<(Metric, f64)>>> {
    let churn_metrics = |tasks, metrics| churns(kinds, keys, sizes.churn_streams, tasks, metrics);
    match workload {
        Workload::SeqChurn => churn_metrics(1, [Metric::SeqChurn, Metric::SeqChurnCpu]).await,
        Workload::ConcChurn => {
            let metrics = [Metric::ConcChurn, Metric::ConcChurnCpu];
            churn_metrics(sizes.concurrency, metrics).await
        }
        Workload::Handshake => handshakes(kinds, keys, sizes.handshakes).await,
        Workload::Scale => {
            scales(kinds, keys, sizes.scale_conns, sizes.scale_streams_per_conn).await
        }
        Workload::Bulk | Workload::Memory => {
            unreachable!("{workload:?} runs on a runtime of its own per transport")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

/// Median and p99 of the time from dial to a connection the dialer can use, with fresh
/// transports (fresh sockets, fresh endpoints) for every handshake. Making the transports is
/// not timed; what the dial itself does (binding a socket, for all of them) is.
///
/// The transports take turns dial by dial, the first of each turn rotating, in one runtime:
/// a handshake takes a few milliseconds, and this machine's speed drifts over seconds, so
/// 200 dials of one transport after 200 of another measured the drift (per-round ratios of
/// two builds of the same code spread over 0.82–1.13). Every dial still starts from nothing
/// and is torn down before the next, so the transports do not share anything but the clock.
async fn handshakes(
    kinds: &[Kind],
    keys: &Keys,
    count: usize,
) -> Vec<io::Result<Vec<(Metric, f64)>>> {
    let mut times: Vec<io::Result<Vec<f64>>> = kinds
        .iter()
        .map(|_| Ok(Vec::with_capacity(count)))
        .collect();
    for turn in 0..count {
        for i in turn_order(turn, kinds.len()) {
            let Ok(kind_times) = &mut times[i] else {
                continue;
            };
            match handshake(kinds[i], keys).await {
                Ok(time) => kind_times.push(time),
                Err(e) => times[i] = Err(e),
            }
        }
    }
    times
        .into_iter()
        .map(|times| {
            let times = times?;
            Ok(vec![
                (Metric::HandshakeP50, percentile(times.clone(), 0.5)),
                (Metric::HandshakeP99, percentile(times, 0.99)),
            ])
        })
        .collect()
}

/// One handshake of `kind` between fresh transports, in milliseconds.
async fn handshake(kind: Kind, keys: &Keys) -> io::Result<f64> {
    let server = Server::start(kind, &keys.server).await?;
    let mut dialer = Dialer::new(kind, &keys.client, PortUse::New);
    let started = Instant::now();
    let conn = step("handshake", dialer.dial(server.addr())).await?;
    let time = started.elapsed().as_secs_f64() * 1e3;
    conn.close().await;
    server.shutdown().await;
    Ok(time)
}

/// One stream, `bytes` one way, timed from the open to the receiver's acknowledgement that it
/// read everything.
async fn bulk(kind: Kind, keys: &Keys, bytes: u64) -> io::Result<Vec<(Metric, f64)>> {
    let (server, conn) = connected(kind, keys).await?;
    let chunk = vec![0u8; 64 * 1024];
    let drops = udp_receive_drops();
    let cpu = cpu_time();
    let started = Instant::now();
    let mut stream = conn.opener().open().await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    stream.close().await?;
    step("bulk reply", read_reply(&mut stream)).await?;
    let gbits = bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9;
    let cpu_per_gib = (cpu_time() - cpu).as_secs_f64() / (bytes as f64 / (1u64 << 30) as f64);
    let drops = udp_receive_drops() - drops;
    drop(stream);
    conn.close().await;
    server.shutdown().await;
    Ok(vec![
        (Metric::Bulk, gbits),
        (Metric::BulkCpu, cpu_per_gib),
        (Metric::BulkUdpDrops, drops),
    ])
}

/// Stream churn: `streams` exchanges on one connection, `tasks` at a time, as streams/s and
/// CPU time per stream. The transports of `kinds` each have their connection and take turns
/// of a tenth of the streams (the first of each turn rotating), timed turn by turn: a
/// transport's 10,000 streams take a second or less, over which this machine's speed drifts
/// by more than the transports differ.
async fn churns(
    kinds: &[Kind],
    keys: &Keys,
    streams: usize,
    tasks: usize,
    [rate_metric, cpu_metric]: [Metric; 2],
) -> Vec<io::Result<Vec<(Metric, f64)>>> {
    let mut pairs = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        pairs.push(connected(kind, keys).await);
    }
    // Wall-clock and CPU time spent so far, per kind, or how it failed.
    let mut spent: Vec<io::Result<(Duration, Duration)>> =
        pairs.iter().map(|_| Ok(Default::default())).collect();
    for turn in 0..TURNS {
        let this_turn = share(streams, TURNS, turn);
        for i in turn_order(turn, kinds.len()) {
            let (Ok((_, conn)), Ok((wall, cpu))) = (&pairs[i], &mut spent[i]) else {
                continue;
            };
            let cpu_before = cpu_time();
            let started = Instant::now();
            match churn(conn, this_turn, tasks).await {
                Ok(()) => {
                    *wall += started.elapsed();
                    *cpu += cpu_time() - cpu_before;
                }
                Err(e) => spent[i] = Err(e),
            }
        }
    }
    let mut results = Vec::with_capacity(kinds.len());
    for (pair, spent) in pairs.into_iter().zip(spent) {
        let result = match pair {
            Ok((server, conn)) => {
                conn.close().await;
                server.shutdown().await;
                spent.map(|(wall, cpu)| {
                    let rate = streams as f64 / wall.as_secs_f64();
                    let cpu_us = cpu.as_secs_f64() * 1e6 / streams as f64;
                    vec![(rate_metric, rate), (cpu_metric, cpu_us)]
                })
            }
            Err(e) => Err(e),
        };
        results.push(result);
    }
    results
}

/// `streams` exchanges on `conn`, `tasks` at a time.
async fn churn(conn: &Conn, streams: usize, tasks: usize) -> io::Result<()> {
    let tasks = tasks.clamp(1, streams.max(1));
    let mut workers = JoinSet::new();
    for task in 0..tasks {
        let this_task = share(streams, tasks, task);
        let opener = conn.opener();
        workers.spawn(async move {
            for _ in 0..this_task {
                step("exchange", exchange(&opener)).await?;
            }
            io::Result::Ok(())
        });
    }
    while let Some(result) = workers.join_next().await {
        result.map_err(io::Error::other)??;
    }
    Ok(())
}

/// Memory per idle connection and per idle open stream, both ends of each counted (client and
/// server live in this process). A stream's figure includes the small task that serves it on
/// the listener, the same for every transport.
async fn memory(
    kind: Kind,
    keys: &Keys,
    conns: usize,
    streams: usize,
) -> io::Result<Vec<(Metric, f64)>> {
    let server = Server::start(kind, &keys.server).await?;
    // One dialing endpoint (socket) for all connections, as a node dialing many peers has.
    let mut dialer = Dialer::new(kind, &keys.client, PortUse::Reuse);
    // A first connection pays for what every later one shares (the dialing endpoint, lazily
    // made tables): it belongs to the baseline.
    let first = step("dial", dialer.dial(server.addr())).await?;
    server.wait_for_connections(1).await?;

    // Idle connections.
    let before = Memory::settled().await;
    let idle = dial_many(&mut dialer, server.addr(), conns)
        .await
        .into_iter()
        .collect::<io::Result<Vec<Conn>>>()?;
    server.wait_for_connections(conns + 1).await?;
    let after = Memory::settled().await;
    let per_conn = after.growth_since(&before, conns);

    // Idle streams, all on the first connection. Its first stream pays for what every later
    // one shares (a watcher task, a lazily made channel): one exchange belongs to the baseline.
    step("exchange", exchange(&first.opener())).await?;
    let before = Memory::settled().await;
    let opener = first.opener();
    let mut held = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut stream = step("open", opener.open()).await?;
        // One byte, so that the stream exists on the listener's side too (a QUIC stream does
        // not until a frame of it arrives).
        stream.write_all(&[1]).await?;
        stream.flush().await?;
        held.push(stream);
    }
    server.wait_for_streams(streams + 1).await?;
    let after = Memory::settled().await;
    let per_stream = after.growth_since(&before, streams);

    drop(held);
    future::join_all(idle.into_iter().map(Conn::close)).await;
    first.close().await;
    server.shutdown().await;
    Ok(vec![
        (Metric::ConnRss, per_conn.rss),
        (Metric::ConnHeap, per_conn.heap),
        (Metric::StreamRss, per_stream.rss),
        (Metric::StreamHeap, per_stream.heap),
    ])
}

/// `conns` connections to one listener, each doing `per_conn` sequential exchanges, all at
/// once; only the exchanges are timed. Counts the exchanges that failed and the opens that
/// waited past [`STUCK`]: the failure modes of a transport that leaks stream credit or stalls
/// under load. The
/// transports of `kinds` each dial their connections first, then take turns of a tenth of
/// the exchanges (every connection at once, the first transport of each turn rotating),
/// timed turn by turn, as [`churns`] does and for the same reason.
async fn scales(
    kinds: &[Kind],
    keys: &Keys,
    conns: usize,
    per_conn: usize,
) -> Vec<io::Result<Vec<(Metric, f64)>>> {
    let mut fleets = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        fleets.push(Fleet::dial(kind, keys, conns).await);
    }
    for turn in 0..TURNS {
        let this_turn = share(per_conn, TURNS, turn);
        for i in turn_order(turn, kinds.len()) {
            if let Ok(fleet) = &mut fleets[i] {
                fleet.run(this_turn).await;
            }
        }
    }
    let mut results = Vec::with_capacity(kinds.len());
    for fleet in fleets {
        results.push(match fleet {
            Ok(fleet) => fleet.finish().await,
            Err(e) => Err(e),
        });
    }
    results
}

/// One transport's side of [`scales`]: its listener, its connections, and what they did.
struct Fleet {
    server: Server,
    connected: Vec<Conn>,
    dial_failed: usize,
    completed: Arc<AtomicU64>,
    stuck: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    wall: Duration,
    cpu: Duration,
    drops: f64,
    failure: Option<io::Error>,
}

impl Fleet {
    async fn dial(kind: Kind, keys: &Keys, conns: usize) -> io::Result<Self> {
        let server = Server::start(kind, &keys.server).await?;
        let mut dialer = Dialer::new(kind, &keys.client, PortUse::Reuse);
        let (connected, dial_failed): (Vec<_>, Vec<_>) =
            dial_many(&mut dialer, server.addr(), conns)
                .await
                .into_iter()
                .partition(Result::is_ok);
        if let Some(Err(first)) = dial_failed.first() {
            // The count is a metric; the reason goes to stderr, where it does not mix with
            // the machine-readable lines.
            eprintln!(
                "{} scale: {} of {conns} dials failed, the first with: {first}",
                kind.name(),
                dial_failed.len()
            );
        }
        Ok(Self {
            server,
            connected: connected.into_iter().flatten().collect(),
            dial_failed: dial_failed.len(),
            completed: Arc::default(),
            stuck: Arc::default(),
            errors: Arc::default(),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            drops: 0.0,
            failure: None,
        })
    }

    /// `per_conn` exchanges on every connection at once, one after another on each.
    async fn run(&mut self, per_conn: usize) {
        if self.failure.is_some() {
            return;
        }
        let drops = udp_receive_drops();
        let cpu = cpu_time();
        let started = Instant::now();
        let mut workers = JoinSet::new();
        for conn in &self.connected {
            let opener = conn.opener();
            let (completed, stuck, errors) = (
                self.completed.clone(),
                self.stuck.clone(),
                self.errors.clone(),
            );
            workers.spawn(async move {
                for _ in 0..per_conn {
                    let open_started = Instant::now();
                    let opened = tokio::time::timeout(STEP, opener.open()).await;
                    if open_started.elapsed() > STUCK {
                        stuck.fetch_add(1, Ordering::Relaxed);
                    }
                    let outcome = match opened {
                        Ok(Ok(stream)) => step("exchange", exchange_on(stream)).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(io::ErrorKind::TimedOut.into()),
                    };
                    let counter = if outcome.is_ok() { &completed } else { &errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while let Some(result) = workers.join_next().await {
            if let Err(e) = result {
                self.failure = Some(io::Error::other(e));
            }
        }
        self.wall += started.elapsed();
        self.cpu += cpu_time() - cpu;
        self.drops += udp_receive_drops() - drops;
    }

    async fn finish(self) -> io::Result<Vec<(Metric, f64)>> {
        future::join_all(self.connected.into_iter().map(Conn::close)).await;
        self.server.shutdown().await;
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        let completed = self.completed.load(Ordering::Relaxed) as f64;
        Ok(vec![
            (Metric::Scale, completed / self.wall.as_secs_f64()),
            (
                Metric::ScaleCpu,
                self.cpu.as_secs_f64() * 1e6 / completed.max(1.0),
            ),
            (
                Metric::ScaleFailed,
                self.errors.load(Ordering::Relaxed) as f64,
            ),
            (
                Metric::ScaleStuck,
                self.stuck.load(Ordering::Relaxed) as f64,
            ),
            (Metric::ScaleDialFailed, self.dial_failed as f64),
            (Metric::ScaleUdpDrops, self.drops),
        ])
    }
}

// ---------------------------------------------------------------------------------------------
// The exchange: the client's side of the protocol that `serve` answers.
// ---------------------------------------------------------------------------------------------

const REQUEST: &[u8; 8] = b"request!";
const REPLY: &[u8; 8] = b"response";

/// Open a stream, send an 8-byte request and close our side (FIN), read the 8-byte reply to the
/// end, drop the stream.
async fn exchange(opener: &Opener) -> io::Result<()> {
    exchange_on(opener.open().await?).await
}

async fn exchange_on(mut stream: SubstreamBox) -> io::Result<()> {
    stream.write_all(REQUEST).await?;
    stream.close().await?;
    read_reply(&mut stream).await
}

/// Read to the end of the stream and check that it was exactly [`REPLY`].
async fn read_reply(stream: &mut SubstreamBox) -> io::Result<()> {
    let mut reply = [0u8; REPLY.len() + 1];
    let mut len = 0;
    loop {
        match stream.read(&mut reply[len..]).await? {
            0 => break,
            n => len += n,
        }
        if len == reply.len() {
            break;
        }
    }
    if &reply[..len] == REPLY {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, "wrong reply"))
    }
}

/// The listener's side of every workload: read the stream to its end, then reply [`REPLY`] and
/// close. Bulk is a long request; an idle stream is a request that never ends.
async fn serve(mut stream: SubstreamBox, stats: Arc<ServerStats>) {
    // Start with a small buffer, so that a held-open stream costs little beyond the transport's
    // own state (memory workload); switch to a large one once a read fills it (bulk).
    let mut small = [0u8; 64];
    let mut large = Vec::new();
    let mut seen = false;
    loop {
        let buf: &mut [u8] = if large.is_empty() {
            &mut small
        } else {
            &mut large
        };
        let n = match stream.read(buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return,
        };
        if !seen {
            seen = true;
            stats.streams_seen.fetch_add(1, Ordering::Relaxed);
        }
        if large.is_empty() && n == small.len() {
            large = vec![0u8; 64 * 1024];
        }
    }
    if stream.write_all(REPLY).await.is_ok() {
        let _ = stream.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The abstraction over transports
// ---------------------------------------------------------------------------------------------

/// The identities of the two sides, made once: generating keys is no part of any workload.
#[derive(Clone)]
struct Keys {
    client: Keypair,
    server: Keypair,
}

impl Keys {
    fn new() -> Self {
        Self {
            client: Keypair::generate_ed25519(),
            server: Keypair::generate_ed25519(),
        }
    }
}

type Libp2pTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// A libp2p transport of `kind`, boxed as a Swarm boxes it.
fn libp2p_transport(kind: Kind, keypair: &Keypair) -> Libp2pTransport {
    match kind {
        Kind::Ours | Kind::OursNoLedger => {
            let mut config = libp2p_quinn::Config::new(keypair);
            config.stream_ledger = kind == Kind::Ours;
            libp2p_quinn::tokio::Transport::new(config)
                .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
                .boxed()
        }
        Kind::Libp2pQuic => libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(keypair))
            .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
            .boxed(),
        Kind::TcpNoiseYamux => libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default())
            .upgrade(Version::V1)
            .authenticate(libp2p::noise::Config::new(keypair).expect("noise config"))
            .multiplex(libp2p::yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        Kind::RawQuinn => unreachable!("raw quinn is no libp2p transport"),
    }
}

/// The quinn transport parameters of `libp2p_quinn::Config::transport_config`, with the
/// defaults of `Config::new`.
fn raw_transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(256u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.datagram_receive_buffer_size(None);
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()));
    transport.allow_spin(false);
    transport.stream_receive_window(10_000_000u32.into());
    transport.receive_window(15_000_000u32.into());
    Arc::new(transport)
}

fn raw_client_config(keypair: &Keypair) -> quinn::ClientConfig {
    let tls = libp2p_tls::make_client_config(keypair, None).expect("libp2p TLS client config");
    let tls = QuicClientConfig::try_from(tls).expect("TLS config fit for QUIC");
    let mut client = quinn::ClientConfig::new(Arc::new(tls));
    client.transport_config(raw_transport_config());
    client
}

fn raw_server_config(keypair: &Keypair) -> quinn::ServerConfig {
    let tls = libp2p_tls::make_server_config(keypair).expect("libp2p TLS server config");
    let tls = QuicServerConfig::try_from(tls).expect("TLS config fit for QUIC");
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls));
    server.transport_config(raw_transport_config());
    server.migration(false);
    server
}

fn raw_endpoint(
    server: Option<quinn::ServerConfig>,
    addr: SocketAddr,
) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A raw quinn stream as futures' `AsyncRead + AsyncWrite`, with the semantics of a libp2p
/// stream: `close` finishes the send half only, and dropping ends both halves (quinn's own drop
/// finishes an unfinished send half and stops an unread receive half).
struct QuinnStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl AsyncRead for QuinnStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().recv.poll_read(cx, buf).map_err(Into::into)
    }
}

impl AsyncWrite for QuinnStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().send)
            .poll_write(cx, buf)
            .map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // quinn sends what was written on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().send.finish().map_err(io::Error::other))
    }
}

impl QuinnStream {
    fn boxed((send, recv): (quinn::SendStream, quinn::RecvStream)) -> SubstreamBox {
        SubstreamBox::new(QuinnStream { send, recv })
    }
}

/// What the listener's connections have done.
#[derive(Default)]
struct ServerStats {
    /// Established connections not yet closed.
    connections: AtomicUsize,
    /// Inbound streams whose first bytes arrived.
    streams_seen: AtomicUsize,
}

/// Counts a connection as live while it exists, also when its task is aborted.
struct LiveConnection(Arc<ServerStats>);

impl LiveConnection {
    fn new(stats: &Arc<ServerStats>) -> Self {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener on 127.0.0.1 that answers every inbound stream with [`serve`].
struct Server {
    addr: Multiaddr,
    stats: Arc<ServerStats>,
    /// Accepts connections; aborting it aborts every connection task it spawned.
    task: JoinHandle<()>,
}

impl Server {
    async fn start(kind: Kind, keypair: &Keypair) -> io::Result<Self> {
        let stats = Arc::new(ServerStats::default());
        let (addr, task) = match kind {
            Kind::RawQuinn => {
                let endpoint = raw_endpoint(
                    Some(raw_server_config(keypair)),
                    (Ipv4Addr::LOCALHOST, 0).into(),
                )?;
                let addr = libp2p_quinn::to_multiaddr(endpoint.local_addr()?);
                (addr, tokio::spawn(accept_quinn(endpoint, stats.clone())))
            }
            _ => {
                let mut transport = libp2p_transport(kind, keypair);
                transport
                    .listen_on(ListenerId::next(), kind.listen_addr())
                    .map_err(io::Error::other)?;
                let addr = step("listen", async {
                    loop {
                        match poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await {
                            TransportEvent::NewAddress { listen_addr, .. } => {
                                break Ok(listen_addr)
                            }
                            TransportEvent::ListenerError { error, .. }
                            | TransportEvent::ListenerClosed {
                                reason: Err(error), ..
                            } => break Err(io::Error::other(error)),
                            _ => {}
                        }
                    }
                })
                .await?;
                (addr, tokio::spawn(accept_libp2p(transport, stats.clone())))
            }
        };
        Ok(Self { addr, stats, task })
    }

    fn addr(&self) -> &Multiaddr {
        &self.addr
    }

    async fn wait_for_connections(&self, count: usize) -> io::Result<()> {
        let stats = &self.stats;
        wait_until("connections to arrive", || {
            stats.connections.load(Ordering::Relaxed) >= count
        })
        .await
    }

    async fn wait_for_streams(&self, count: usize) -> io::Result<()> {
        let stats = &self.stats;
        wait_until("streams to arrive", || {
            stats.streams_seen.load(Ordering::Relaxed) >= count
        })
        .await
    }

    /// Wait for the clients' closes to reach every connection, then stop: the next
    /// measurement should not share the machine with this one's teardown.
    async fn shutdown(mut self) {
        let stats = &self.stats;
        let _ = wait_until("connections to close", || {
            stats.connections.load(Ordering::Relaxed) == 0
        })
        .await;
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    /// A workload that fails drops its server without [`Server::shutdown`]: its connections
    /// must go all the same, or they would linger into later measurements.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_libp2p(mut transport: Libp2pTransport, stats: Arc<ServerStats>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            event = poll_fn(|cx| Pin::new(&mut transport).poll(cx)) => {
                if let TransportEvent::Incoming { upgrade, .. } = event {
                    let stats = stats.clone();
                    connections.spawn(async move {
                        if let Ok((_, muxer)) = upgrade.await {
                            let _live = LiveConnection::new(&stats);
                            drive(muxer, Role::Server(stats.clone())).await;
                        }
                    });
                }
            }
            // Reap finished connection tasks.
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn accept_quinn(endpoint: quinn::Endpoint, stats: Arc<ServerStats>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { return };
                let stats = stats.clone();
                connections.spawn(async move {
                    let Ok(connection) = incoming.await else { return };
                    let _live = LiveConnection::new(&stats);
                    while let Ok(stream) = connection.accept_bi().await {
                        tokio::spawn(serve(QuinnStream::boxed(stream), stats.clone()));
                    }
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Dials connections of one transport.
enum Dialer {
    Libp2p {
        transport: Libp2pTransport,
        port_use: PortUse,
    },
    Quinn {
        client: quinn::ClientConfig,
        /// The endpoint that `PortUse::Reuse` dials share, made on first use.
        shared: Option<quinn::Endpoint>,
        port_use: PortUse,
    },
}

impl Dialer {
    /// With `PortUse::New` every dial binds its own socket (and, for QUIC, endpoint), as the
    /// libp2p QUIC transports do for a dial that reuses no port; with `PortUse::Reuse` and no
    /// listener, all dials share one.
    fn new(kind: Kind, keypair: &Keypair, port_use: PortUse) -> Self {
        match kind {
            Kind::RawQuinn => Dialer::Quinn {
                client: raw_client_config(keypair),
                shared: None,
                port_use,
            },
            _ => Dialer::Libp2p {
                transport: libp2p_transport(kind, keypair),
                port_use,
            },
        }
    }

    /// Start a dial; the returned future does not borrow the dialer, so that many can run at
    /// once.
    fn dial(&mut self, addr: &Multiaddr) -> BoxFuture<'static, io::Result<Conn>> {
        match self {
            Dialer::Libp2p {
                transport,
                port_use,
            } => {
                let opts = DialOpts {
                    role: Endpoint::Dialer,
                    port_use: *port_use,
                };
                match transport.dial(addr.clone(), opts) {
                    Ok(dial) => async move {
                        let (_, muxer) = dial.await.map_err(io::Error::other)?;
                        Ok(Conn::libp2p(muxer))
                    }
                    .boxed(),
                    Err(e) => future::ready(Err(io::Error::other(e))).boxed(),
                }
            }
            Dialer::Quinn {
                client,
                shared,
                port_use,
            } => {
                let connecting = (|| {
                    let (remote, _) = libp2p_quinn::parse_multiaddr(addr)
                        .ok_or_else(|| io::Error::other("not a QUIC address"))?;
                    let any: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
                    let endpoint = match (port_use, shared.as_ref()) {
                        (PortUse::Reuse, Some(endpoint)) => endpoint.clone(),
                        (PortUse::Reuse, None) => shared.insert(raw_endpoint(None, any)?).clone(),
                        (PortUse::New, _) => raw_endpoint(None, any)?,
                    };
                    endpoint
                        .connect_with(client.clone(), remote, "l")
                        .map_err(io::Error::other)
                })();
                async move { Ok(Conn::quinn(connecting?.await?)) }.boxed()
            }
        }
    }
}

/// The dialer's side of a connection.
struct Conn {
    opener: Opener,
    /// The task driving a libp2p muxer; aborted when the `Conn` is dropped unclosed.
    driver: Option<JoinHandle<()>>,
}

/// Opens streams on a connection; cheap to clone, so that many tasks can share a connection.
#[derive(Clone)]
enum Opener {
    /// Asks the task that drives the muxer: a `StreamMuxer` is polled by one owner only.
    Muxer(mpsc::UnboundedSender<Command>),
    Quinn(quinn::Connection),
}

enum Command {
    Open(oneshot::Sender<io::Result<SubstreamBox>>),
    Close(oneshot::Sender<()>),
}

impl Opener {
    async fn open(&self) -> io::Result<SubstreamBox> {
        match self {
            Opener::Muxer(commands) => {
                let (tx, rx) = oneshot::channel();
                commands
                    .unbounded_send(Command::Open(tx))
                    .map_err(|_| io::Error::from(io::ErrorKind::NotConnected))?;
                rx.await
                    .map_err(|_| io::Error::from(io::ErrorKind::NotConnected))?
            }
            Opener::Quinn(connection) => Ok(QuinnStream::boxed(connection.open_bi().await?)),
        }
    }
}

impl Conn {
    fn libp2p(muxer: StreamMuxerBox) -> Self {
        let (commands, rx) = mpsc::unbounded();
        Self {
            opener: Opener::Muxer(commands),
            driver: Some(tokio::spawn(drive(muxer, Role::Client(rx)))),
        }
    }

    fn quinn(connection: quinn::Connection) -> Self {
        Self {
            opener: Opener::Quinn(connection),
            driver: None,
        }
    }

    fn opener(&self) -> Opener {
        self.opener.clone()
    }

    /// Close the connection as its transport does, and wait until that is done locally.
    async fn close(mut self) {
        match &self.opener {
            Opener::Muxer(commands) => {
                let (tx, rx) = oneshot::channel();
                if commands.unbounded_send(Command::Close(tx)).is_ok() {
                    let _ = tokio::time::timeout(STEP, rx).await;
                }
            }
            Opener::Quinn(connection) => connection.close(0u32.into(), b""),
        }
        if let Some(driver) = self.driver.take() {
            let _ = tokio::time::timeout(STEP, driver).await;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(driver) = &self.driver {
            driver.abort();
        }
    }
}

/// Which side a muxer-driving task serves.
enum Role {
    /// Opens streams on request.
    Client(mpsc::UnboundedReceiver<Command>),
    /// Serves inbound streams.
    Server(Arc<ServerStats>),
}

/// Own and poll a libp2p muxer, as a Swarm's connection task does: accept inbound streams,
/// open outbound ones on request (one at a time: `poll_outbound` has one pending open), and
/// poll the muxer itself (yamux does its I/O there). Returns when the connection fails or is
/// closed.
async fn drive(mut muxer: StreamMuxerBox, mut role: Role) {
    let mut pending_open: Option<oneshot::Sender<io::Result<SubstreamBox>>> = None;
    let close_requested = poll_fn(|cx| loop {
        let mut progress = false;
        match muxer.poll_inbound_unpin(cx) {
            Poll::Ready(Ok(stream)) => {
                if let Role::Server(stats) = &role {
                    tokio::spawn(serve(stream, stats.clone()));
                }
                progress = true;
            }
            Poll::Ready(Err(_)) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if let Role::Client(commands) = &mut role {
            if pending_open.is_none() {
                match commands.poll_next_unpin(cx) {
                    Poll::Ready(Some(Command::Open(reply))) => pending_open = Some(reply),
                    Poll::Ready(Some(Command::Close(done))) => return Poll::Ready(Some(done)),
                    // Every opener is gone: nobody can use the connection any more.
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => {}
                }
            }
        }
        if let Some(reply) = pending_open.take() {
            match muxer.poll_outbound_unpin(cx) {
                Poll::Ready(result) => {
                    let _ = reply.send(result);
                    progress = true;
                }
                Poll::Pending => pending_open = Some(reply),
            }
        }
        match muxer.poll_unpin(cx) {
            Poll::Ready(Ok(_)) => progress = true,
            Poll::Ready(Err(_)) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if !progress {
            return Poll::Pending;
        }
    })
    .await;
    let _ = tokio::time::timeout(STEP, poll_fn(|cx| muxer.poll_close_unpin(cx))).await;
    if let Some(done) = close_requested {
        let _ = done.send(());
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How many turns churn and scale cut their streams into: a tenth at a time.
const TURNS: usize = 10;

/// The order of `len` transports in turn `turn`: each turn starts one further on, so that
/// none always goes first.
fn turn_order(turn: usize, len: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |j| (turn + j) % len)
}

/// Part `index` of `total` cut into `parts` near-equal parts, the remainder spread over the
/// first ones.
fn share(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

/// Connect a fresh dialer to a fresh listener of `kind`.
async fn connected(kind: Kind, keys: &Keys) -> io::Result<(Server, Conn)> {
    let server = Server::start(kind, &keys.server).await?;
    let mut dialer = Dialer::new(kind, &keys.client, PortUse::New);
    let conn = step("dial", dialer.dial(server.addr())).await?;
    Ok((server, conn))
}

/// How many dials [`dial_many`] has in flight at once.
const DIAL_CONCURRENCY: usize = 32;

/// Dial `count` connections, [`DIAL_CONCURRENCY`] at a time. A node meets its peers over
/// time; hundreds of handshakes at the same instant overflow the UDP receive buffers (each
/// QUIC handshake is several full-size datagrams at once) and would measure the kernel's loss
/// and the handshake timeouts rather than what the workload is about.
async fn dial_many(dialer: &mut Dialer, addr: &Multiaddr, count: usize) -> Vec<io::Result<Conn>> {
    let dials: Vec<_> = (0..count)
        .map(|_| step("dial", dialer.dial(addr)))
        .collect();
    futures::stream::iter(dials)
        .buffer_unordered(DIAL_CONCURRENCY)
        .collect()
        .await
}

/// Await `fut`, or fail with a timeout naming `what` after [`STEP`].
async fn step<T>(
    what: &str,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(STEP, fut).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out"),
        ))
    })
}

/// Poll `done` until it holds, for at most [`STEP`]. It reads counters that other tasks
/// update; the sleep is the polling interval, not a guess at how long something takes.
async fn wait_until(what: &str, done: impl Fn() -> bool) -> io::Result<()> {
    let deadline = Instant::now() + STEP;
    while !done() {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("waiting for {what} timed out"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// The process's memory: resident set (`/proc/self/statm`) and heap in use (glibc's
/// `mallinfo2`).
struct Memory {
    rss: f64,
    heap: f64,
}

/// Memory growth per item.
struct PerItem {
    rss: f64,
    heap: f64,
}

impl Memory {
    /// How little the heap may move between two readings [`Self::INTERVAL`] apart for the
    /// process to count as still.
    const STILL: f64 = 16.0 * 1024.0;
    const INTERVAL: Duration = Duration::from_millis(100);
    /// How many still intervals in a row make the process settled.
    const SETTLED_AFTER: usize = 3;

    /// Measure once memory has stopped moving: a fresh connection frees its handshake state
    /// only once the handshake is confirmed, and acknowledgements and stream-credit updates
    /// trickle in after the last write. Bounded by [`STEP`].
    async fn settled() -> Self {
        let deadline = Instant::now() + STEP;
        let mut last = Self::now();
        let mut still = 0;
        while still < Self::SETTLED_AFTER && Instant::now() < deadline {
            tokio::time::sleep(Self::INTERVAL).await;
            let next = Self::now();
            still = if (next.heap - last.heap).abs() < Self::STILL {
                still + 1
            } else {
                0
            };
            last = next;
        }
        last
    }

    /// Hands free memory back to the kernel first: otherwise RSS would mostly tell how much
    /// freed memory earlier workloads left in the allocator for this one to reuse.
    fn now() -> Self {
        Self {
            heap: trimmed_heap_bytes(),
            rss: rss_bytes(),
        }
    }

    fn growth_since(&self, before: &Memory, items: usize) -> PerItem {
        let items = items.max(1) as f64;
        PerItem {
            rss: (self.rss - before.rss) / items,
            heap: (self.heap - before.heap) / items,
        }
    }
}

/// CPU time this process has used so far, user and system, all threads.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into the one it is
    // given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Datagrams the kernel dropped, machine-wide, because a UDP socket's receive buffer was full.
fn udp_receive_drops() -> f64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    // Two `Udp:` lines: the field names, then the values.
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return f64::NAN;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(f64::NAN)
}

fn rss_bytes() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(f64::NAN);
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    pages * page_size
}

/// Heap bytes in use, after trimming the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trimmed_heap_bytes() -> f64 {
    // SAFETY: glibc's malloc_trim and mallinfo2 take no pointers and may be called at any time
    // from any thread.
    let info = unsafe {
        libc::malloc_trim(0);
        libc::mallinfo2()
    };
    // Small chunks in the arenas plus large ones mapped on their own.
    (info.uordblks + info.hblkhd) as f64
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trimmed_heap_bytes() -> f64 {
    f64::NAN
}

// ---------------------------------------------------------------------------------------------
// The final tables
// ---------------------------------------------------------------------------------------------

struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.header.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| row[c].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, width))| {
                    // Names left, numbers right.
                    if i < 2 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            writeln!(f, "{}", cells.join("  ").trim_end())?;
        }
        Ok(())
    }
}

fn number(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// The tables that close a run: medians, ratios to raw quinn and to `libp2p-quic`, and the
/// ledger's cost.
pub fn summary(report: &Report, options: &Options) -> String {
    let metrics: Vec<Metric> = options
        .workloads
        .iter()
        .flat_map(|w| w.metrics().iter().copied())
        .collect();
    let transports = &options.transports;
    let mut out = String::new();

    let mut header = vec!["metric".to_string(), "unit".to_string()];
    header.extend(transports.iter().map(|k| k.name().to_string()));
    let medians = Table {
        header,
        rows: metrics
            .iter()
            .map(|&m| {
                let mut row = vec![m.name().to_string(), m.unit().to_string()];
                row.extend(transports.iter().map(|&k| number(report.summary(k, m))));
                row
            })
            .collect(),
    };
    out += &format!(
        "\nMedians over {} rounds (counts: totals over rounds)\n{medians}",
        options.rounds
    );

    for reference in [Kind::RawQuinn, Kind::Libp2pQuic] {
        if !transports.contains(&reference) {
            continue;
        }
        let mut header = vec!["metric".to_string(), "better".to_string()];
        header.extend(transports.iter().map(|k| k.name().to_string()));
        let ratios = Table {
            header,
            rows: metrics
                .iter()
                .filter(|m| !m.is_count())
                .map(|&m| {
                    let better = if m.higher_is_better() {
                        "higher"
                    } else {
                        "lower"
                    };
                    let mut row = vec![m.name().to_string(), better.to_string()];
                    row.extend(transports.iter().map(|&k| {
                        report
                            .ratio(k, reference, m)
                            .map_or("-".into(), |r| format!("{r:.3}x"))
                    }));
                    row
                })
                .collect(),
        };
        out += &format!(
            "\nRatio to {} (median over rounds of the ratio within a round)\n{ratios}",
            reference.name()
        );
    }

    if transports.contains(&Kind::Ours) && transports.contains(&Kind::OursNoLedger) {
        let ledger = Table {
            header: vec!["metric".into(), "unit".into(), "ledger cost".into()],
            rows: metrics
                .iter()
                .filter(|m| !m.is_count())
                .map(|&m| {
                    // Positive: the ledger makes it worse, in the metric's own direction.
                    let cost = report.ratio(Kind::Ours, Kind::OursNoLedger, m).map(|r| {
                        let worse = if m.higher_is_better() {
                            1.0 - r
                        } else {
                            r - 1.0
                        };
                        worse * 100.0
                    });
                    vec![
                        m.name().to_string(),
                        m.unit().to_string(),
                        cost.map_or("-".into(), |c| format!("{c:+.1}%")),
                    ]
                })
                .collect(),
        };
        out += &format!(
            "\nLedger cost (ours against ours-no-ledger; positive = slower/larger)\n{ledger}"
        );
    }

    if !report.errors.is_empty() {
        out += "\nErrors:\n";
        for error in &report.errors {
            out += &format!("  {error}\n");
        }
    }
    out
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let options = match Options::from_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    eprintln!("bench: {options:?}");
    // Each measurement brings its own runtime (see `isolated`); this thread only waits.
    let report = futures::executor::block_on(run(&options));
    print!("{}", summary(&report, &options));
    if !report.errors.is_empty() {
        std::process::exit(1);
    }
}
