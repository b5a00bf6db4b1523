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

mod bulk;
mod churn;
mod exchange;
mod handshake;
mod memory;
mod process;
mod report;
mod scale;
mod transport;

use std::{io, time::Duration};

use futures::channel::oneshot;

pub use report::{summary, Report, Sample};
pub use transport::Kind;

use bulk::bulk;
use churn::churns;
use handshake::handshakes;
use memory::memory;
use report::json_number;
use scale::scales;
use transport::Keys;

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

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
        transports: ours, ours-no-ledger, ours-webtransport, libp2p-quic, raw-quinn, tcp-noise-yamux";

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
