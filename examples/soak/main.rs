//! A soak run of the incident's topology in one process: 3 servers and 5 clients, every client
//! connected to every server (15 connections), all on loopback, each connection through its own
//! seeded lossy UDP proxy when `--loss` is above zero.
//!
//! On every connection, for `--duration` seconds:
//!
//! - the server opens `--rate` streams a second to the client the incident's way: half of them
//!   write 8 bytes, close (FIN) and drop without reading the answer; the other half are
//!   request/response (write, close, read the 8-byte reply to the end, drop);
//! - the client opens `--rate` request/response streams a second to the server;
//! - one long-lived stream carries an 8-byte message each way every 100 ms (like gossipsub);
//! - both sides answer every stream they accept: read the request to the end, write an 8-byte
//!   reply, close, drop.
//!
//! Every `--interval` seconds a line says how many streams completed, how many are live (for
//! our transport: what its ledger tracks on each end of each connection, i.e. what QUIC still
//! holds; for `libp2p-quic`: stream handles the application holds), the slowest open and how
//! many opens waited longer than `--block-threshold`. At the end: a summary, a plot of the live
//! streams over time (`--plot`, SVG), and a non-zero exit if any open blocked or if, once the
//! workload stopped, the counts did not return to zero within `--settle` seconds.
//!
//! ```text
//! cargo run --release --example soak --features test-util -- --duration 30 --loss 0.05
//! cargo run --release --example soak --features test-util -- --transport libp2p-quic
//! RUST_LOG=libp2p_quinn=debug cargo run --release --example soak --features test-util
//! ```
//!
//! `tests/soak_short.rs` runs [`soak`] for CI.

mod connection;
mod plot;
mod report;
#[path = "../../tests/common/resident.rs"]
mod resident;
mod topology;
mod workload;

use std::{
    io,
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{sync::watch, task::JoinSet};

use plot::plot;
use report::{rss_mib, say, Summary};
use topology::{is_idle, leftovers, sample, set_up};
use workload::{accept_loop, gossip, Mix, OpenerLoop, Stats};

const SERVERS: usize = 3;
const CLIENTS: usize = 5;
const REQUEST: &[u8; 8] = b"request!";
const REPLY: &[u8; 8] = b"reply!!!";
const GOSSIP: &[u8; 8] = b"gossip!!";
const GOSSIP_EVERY: Duration = Duration::from_millis(100);
/// How often live streams are sampled (for the peaks and the plot).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Bound of each setup step (listen, dial, handshake, the first gossip message).
const SETUP_STEP: Duration = Duration::from_secs(20);
/// Bound of an exchange once its stream is open, and of a handler.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which transport carries the connections.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// libp2p-quinn, with its stream ledger.
    Ours,
    /// rust-libp2p's `libp2p-quic`.
    #[value(name = "libp2p-quic")]
    Libp2pQuic,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Libp2pQuic => "libp2p-quic",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Soak the incident's topology (3 servers, 5 clients) with stream churn")]
pub struct Opts {
    /// How long the workload runs, in seconds.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    pub duration: Duration,
    /// Streams opened per second, per connection and direction.
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Datagram drop rate of each connection's proxy, each way (0 = no proxy).
    #[arg(long, default_value_t = 0.0, value_parser = parse_loss)]
    pub loss: f64,
    /// `max_concurrent_stream_limit` of every peer.
    #[arg(long, default_value_t = 256)]
    pub stream_limit: u32,
    /// Seed of the proxies (connection k's proxy uses seed + k).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The transport under test.
    #[arg(long, value_enum, default_value_t = Kind::Ours)]
    pub transport: Kind,
    /// An open that waits longer than this (seconds) counts as blocked.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub block_threshold: Duration,
    /// Where to write the plot of live streams (SVG); default soak-<transport>.svg.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Seconds between progress lines.
    #[arg(long, default_value = "5", value_parser = parse_secs)]
    pub interval: Duration,
    /// After the workload, how long (seconds) streams may take to finish and every count to
    /// return to zero.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub settle: Duration,
}

impl Opts {
    /// The plot's path: `--plot`, or `soak-<transport>.svg`.
    pub fn plot_path(&self) -> PathBuf {
        self.plot
            .clone()
            .unwrap_or_else(|| format!("soak-{}.svg", self.transport.name()).into())
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        Ok(_) => Err("must be above 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_loss(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(l) if (0.0..1.0).contains(&l) => Ok(l),
        Ok(_) => Err("must be in [0, 1)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Run the soak: set up, drive the workload for `opts.duration` with a line every
/// `opts.interval`, stop, wait for every count to return to zero, plot. `Err` only if the
/// topology could not be set up or the plot not written; whether the run passed is
/// [`Summary::verdict`].
pub async fn soak(opts: Opts) -> Result<Summary, String> {
    run(&opts, &ProgressBar::hidden()).await
}

/// [`soak`], with progress on `pb` (lines go to standard output while it is hidden).
async fn run(opts: &Opts, pb: &ProgressBar) -> Result<Summary, String> {
    let mut drivers = JoinSet::new();
    let mut topology = set_up(opts, &mut drivers).await?;
    let ours = opts.transport == Kind::Ours;
    say(
        pb,
        format!(
            "{}: {} connections ({SERVERS} servers x {CLIENTS} clients){}, {}/s streams per \
             connection and direction, stream limit {}, blocked = open waits > {:?}; live \
             streams = {}",
            opts.transport.name(),
            topology.connections.len(),
            if opts.loss > 0.0 {
                format!(", each through a proxy losing {} each way", opts.loss)
            } else {
                String::new()
            },
            opts.rate,
            opts.stream_limit,
            opts.block_threshold,
            if ours {
                "streams our ledger tracks on each end of each connection (what QUIC holds)"
            } else {
                "stream handles the application holds on each end of each connection"
            },
        ),
    );
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut service = JoinSet::new();
    for end in &mut topology.ends {
        let inbound = end.inbound.take().expect("taken once");
        service.spawn(accept_loop(inbound, stats.clone()));
    }
    let mut workload = JoinSet::new();
    for (server, client) in topology.gossip.drain(..) {
        workload.spawn(gossip(server, stop_rx.clone(), stats.clone()));
        workload.spawn(gossip(client, stop_rx.clone(), stats.clone()));
    }
    let period = Duration::from_secs_f64(1.0 / opts.rate);
    let openers = topology.ends.len();
    for (n, end) in topology.ends.iter().enumerate() {
        let opener = OpenerLoop {
            opener: end.opener.clone(),
            mix: if end.server {
                Mix::Incident
            } else {
                Mix::RequestResponse
            },
            period,
            // Spread the openers' ticks over the period.
            phase: period.mul_f64(n as f64 / openers as f64),
            cap: (opts.stream_limit as usize * 2).max(16),
            threshold: opts.block_threshold,
        };
        workload.spawn(opener.run(stop_rx.clone(), stats.clone()));
    }

    let rss_start = rss_mib();
    let started = Instant::now();
    let end_at = started + opts.duration;
    let interval = opts.interval.max(SAMPLE_EVERY);
    let mut samples = Vec::new();
    let (mut peak_sum, mut peak_max) = (0, 0);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut next_line = started + interval;
    let mut last_line = (started, 0u64);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let t = now.duration_since(started);
        let (s, waiting) = sample(&topology, t.as_secs_f64());
        if let Some(waited) = waiting {
            stats.open_took(waited);
        }
        peak_sum = peak_sum.max(s.sum);
        peak_max = peak_max.max(s.max);
        samples.push(s);
        let completed = stats.completed.load(Ordering::Relaxed);
        let blocked = stats.blocked.load(Ordering::Relaxed);
        pb.set_position((t.as_millis() as u64).min(opts.duration.as_millis() as u64));
        pb.set_message(format!("{completed} streams, {blocked} blocked"));
        let done = now >= end_at;
        if now >= next_line || done {
            let rate = (completed - last_line.1) as f64
                / now.duration_since(last_line.0).as_secs_f64().max(1e-9);
            let slowest =
                Duration::from_micros(stats.slowest_in_interval_us.swap(0, Ordering::Relaxed));
            let handles = if ours {
                format!(" (handles {})", s.handles)
            } else {
                String::new()
            };
            let rss = rss_mib()
                .map(|mib| format!(" | RSS {mib:.0} MiB"))
                .unwrap_or_default();
            say(
                pb,
                format!(
                    "[{:>6.1}s] {rate:>6.0} streams/s | live streams per connection end: max \
                     {:>4}, sum {:>5}{handles} | slowest open {slowest:>9.1?} | blocked so far \
                     {blocked}{rss}",
                    t.as_secs_f64(),
                    s.max,
                    s.sum,
                ),
            );
            last_line = (now, completed);
            while next_line <= now {
                next_line += interval;
            }
        }
        if done {
            break;
        }
    }
    let elapsed = started.elapsed();
    let rss = rss_start.zip(rss_mib());

    // Stop opening; let the exchanges in flight finish and the gossip streams close; then every
    // count must return to zero.
    stop_tx.send_replace(true);
    let stopped = Instant::now();
    let deadline = tokio::time::Instant::from_std(stopped + opts.settle);
    let drained = tokio::time::timeout_at(deadline, async {
        while workload.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    let mut settled = false;
    if drained {
        loop {
            if is_idle(&topology) {
                settled = true;
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            // Polling counters that the transport updates: a bounded wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let settle_time = stopped.elapsed();
    let mut leftover = Vec::new();
    if !settled {
        if !drained {
            leftover.push(format!(
                "{} workload tasks (exchanges in flight, gossip streams) still running",
                workload.len()
            ));
        }
        leftover.extend(leftovers(&topology));
    }
    // The pending-open ages seen while settling count too.
    let (_, waiting) = sample(&topology, 0.0);
    if let Some(waited) = waiting {
        stats.open_took(waited);
    }

    // Tear down: the workload, the handlers, then the connections (dropping a muxer closes
    // its connection), the transports and the proxies.
    workload.shutdown().await;
    service.shutdown().await;
    drivers.shutdown().await;
    drop(topology);

    let summary = Summary {
        transport: opts.transport,
        elapsed,
        streams: stats.completed.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        error_samples: stats.error_samples.lock().unwrap().clone(),
        skipped: stats.skipped.load(Ordering::Relaxed),
        refused_replies: stats.refused_replies.load(Ordering::Relaxed),
        peak_live_sum: peak_sum,
        peak_live_max: peak_max,
        slowest_open: Duration::from_micros(stats.slowest_us.load(Ordering::Relaxed)),
        blocked: stats.blocked.load(Ordering::Relaxed),
        gossip_max_gap: Duration::from_micros(stats.gossip_max_gap_us.load(Ordering::Relaxed)),
        gossip_messages: stats.gossip_messages.load(Ordering::Relaxed),
        rss_mib: rss,
        settled,
        settle_time,
        leftovers: leftover,
        samples,
    };
    plot(&opts.plot_path(), opts, &summary)?;
    Ok(summary)
}

/// Tracing output that does not tear the progress bar.
#[derive(Clone)]
struct BarWriter(ProgressBar);

impl io::Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.suspend(|| io::stderr().write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[allow(dead_code)] // unused where tests/soak_short.rs includes this file
fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    let pb = ProgressBar::with_draw_target(
        Some(opts.duration.as_millis() as u64),
        ProgressDrawTarget::stderr(),
    );
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {percent:>3}% {msg}",
        )
        .expect("valid template"),
    );
    let writer = pb.clone();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(move || BarWriter(writer.clone()))
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(run(&opts, &pb));
    pb.finish_and_clear();
    match result {
        Ok(summary) => {
            println!("{}", summary.line());
            println!(
                "skipped ticks {}, replies refused by fire-and-forget openers {}, gossip \
                 messages {}",
                summary.skipped, summary.refused_replies, summary.gossip_messages
            );
            println!("plot: {}", opts.plot_path().display());
            match summary.verdict() {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(problems) => {
                    eprintln!("FAILED: {problems}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("soak could not run: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
