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

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use futures::{
    channel::{mpsc, oneshot},
    future::poll_fn,
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use libp2p_core::{
    muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox},
    transport::{Boxed, DialOpts, ListenerId, PortUse, TransportEvent},
    Endpoint, Multiaddr, Transport as _,
};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::{
    test_util::{Impairment, UdpProxy},
    ConnectionSnapshot, Ledgers,
};
use tokio::{sync::watch, task::JoinSet};

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

/// Live streams at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the workload started.
    pub t: f64,
    /// Live streams summed over every end of every connection: our ledger's `tracked`
    /// (ours), or stream handles the application holds (libp2p-quic).
    pub sum: u64,
    /// The largest count on one end of one connection.
    pub max: u64,
    /// Stream handles the application holds, summed (the same as `sum` for libp2p-quic).
    pub handles: u64,
}

/// What a soak run measured.
#[derive(Debug, Clone)]
pub struct Summary {
    pub transport: Kind,
    /// How long the workload ran.
    pub elapsed: Duration,
    /// Exchanges completed (both directions).
    pub streams: u64,
    /// Exchanges that failed (open, write, read, wrong reply, timeout) and gossip failures.
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Ticks skipped because an opener already had too many exchanges in flight.
    pub skipped: u64,
    /// Replies the handler could not write because the opener had stopped reading (the
    /// fire-and-forget half: expected).
    pub refused_replies: u64,
    /// Peak of the live-stream sum over all connection ends.
    pub peak_live_sum: u64,
    /// Peak live streams on one end of one connection.
    pub peak_live_max: u64,
    /// The slowest open (including opens still waiting when sampled).
    pub slowest_open: Duration,
    /// Opens that waited longer than `--block-threshold`.
    pub blocked: u64,
    /// The longest pause between two gossip messages on a long-lived stream.
    pub gossip_max_gap: Duration,
    /// Gossip messages received.
    pub gossip_messages: u64,
    /// Resident memory of the process when the workload started and when it stopped, in MiB
    /// (Linux only): a leak that no count shows still shows here.
    pub rss_mib: Option<(f64, f64)>,
    /// Whether every count returned to zero after the workload.
    pub settled: bool,
    /// How long that took (or the bound, if it did not).
    pub settle_time: Duration,
    /// What was left, one line per connection end, if not settled.
    pub leftovers: Vec<String>,
    /// Live streams over time.
    pub samples: Vec<Sample>,
}

impl Summary {
    pub fn streams_per_sec(&self) -> f64 {
        self.streams as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        let live = match self.transport {
            Kind::Ours => "ledger-tracked",
            Kind::Libp2pQuic => "app-level handles",
        };
        format!(
            "{}: {} streams in {:.1} s ({:.0} streams/s), peak live streams ({live}) {} on one \
             connection end / {} in total, slowest open {:.1?}, blocked opens {}, errors {}, \
             gossip max gap {:.0?},{} {}",
            self.transport.name(),
            self.streams,
            self.elapsed.as_secs_f64(),
            self.streams_per_sec(),
            self.peak_live_max,
            self.peak_live_sum,
            self.slowest_open,
            self.blocked,
            self.errors,
            self.gossip_max_gap,
            self.rss_mib
                .map(|(start, end)| format!(" RSS {start:.0} -> {end:.0} MiB,"))
                .unwrap_or_default(),
            if self.settled {
                format!("all counts back to zero after {:.1?}", self.settle_time)
            } else {
                format!("counts NOT back to zero after {:.1?}", self.settle_time)
            },
        )
    }

    /// `Err` with the reasons if an open blocked, an exchange failed, or the counts did not
    /// return to zero.
    pub fn verdict(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.blocked > 0 {
            problems.push(format!("{} opens blocked", self.blocked));
        }
        if self.errors > 0 {
            problems.push(format!(
                "{} errors, e.g. {:?}",
                self.errors, self.error_samples
            ));
        }
        if !self.settled {
            problems.push(format!(
                "counts did not return to zero:\n  {}",
                self.leftovers.join("\n  ")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Counters shared by every task of a run.
#[derive(Default)]
struct Stats {
    completed: AtomicU64,
    errors: AtomicU64,
    error_samples: Mutex<Vec<String>>,
    blocked: AtomicU64,
    skipped: AtomicU64,
    refused_replies: AtomicU64,
    slowest_in_interval_us: AtomicU64,
    slowest_us: AtomicU64,
    gossip_messages: AtomicU64,
    gossip_max_gap_us: AtomicU64,
}

impl Stats {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.error_samples.lock().unwrap();
        if samples.len() < 5 {
            samples.push(what);
        }
    }

    fn open_took(&self, waited: Duration) {
        let us = waited.as_micros() as u64;
        self.slowest_in_interval_us.fetch_max(us, Ordering::Relaxed);
        self.slowest_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// A stream handle the application holds, counted while it lives.
struct Substream {
    inner: SubstreamBox,
    alive: Arc<AtomicU64>,
}

impl Substream {
    fn new(inner: SubstreamBox, alive: &Arc<AtomicU64>) -> Self {
        alive.fetch_add(1, Ordering::Relaxed);
        Self {
            inner,
            alive: alive.clone(),
        }
    }
}

impl Drop for Substream {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Substream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Substream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

type OpenReply = oneshot::Sender<io::Result<Substream>>;

/// Asks a connection's driver for outbound streams.
#[derive(Clone)]
struct Opener(mpsc::UnboundedSender<OpenReply>);

impl Opener {
    fn open(&self) -> oneshot::Receiver<io::Result<Substream>> {
        let (tx, rx) = oneshot::channel();
        // If the driver is gone, `rx` fails at once.
        let _ = self.0.unbounded_send(tx);
        rx
    }
}

/// One end of one connection.
struct End {
    /// `s1→c3`: server 1's end of its connection to client 3.
    label: String,
    /// Whether this is the server's end.
    server: bool,
    opener: Opener,
    inbound: Option<mpsc::UnboundedReceiver<Substream>>,
    /// Stream handles the application holds.
    handles: Arc<AtomicU64>,
    /// Since when the driver's oldest open has been waiting, if one is.
    waiting_since: Arc<Mutex<Option<Instant>>>,
}

/// Drive a muxer: hand inbound streams over, open streams on request (in order, one at a time
/// as `StreamMuxer` allows), and note since when the current open waits.
fn drive(muxer: StreamMuxerBox, label: String, server: bool, drivers: &mut JoinSet<()>) -> End {
    let (open_tx, mut open_rx) = mpsc::unbounded::<OpenReply>();
    let (inbound_tx, inbound_rx) = mpsc::unbounded();
    let handles = Arc::new(AtomicU64::new(0));
    let waiting_since = Arc::new(Mutex::new(None));
    let (alive, waiting) = (handles.clone(), waiting_since.clone());
    let mut muxer = muxer;
    drivers.spawn(async move {
        let mut queue: VecDeque<(Instant, OpenReply)> = VecDeque::new();
        let _ = poll_fn(|cx| -> Poll<io::Result<()>> {
            loop {
                let mut progress = false;
                match muxer.poll_inbound_unpin(cx) {
                    Poll::Ready(Ok(s)) => {
                        let _ = inbound_tx.unbounded_send(Substream::new(s, &alive));
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                while let Poll::Ready(Some(reply)) = open_rx.poll_next_unpin(cx) {
                    queue.push_back((Instant::now(), reply));
                }
                // An exchange that gave up needs no stream.
                while queue.front().is_some_and(|(_, reply)| reply.is_canceled()) {
                    queue.pop_front();
                }
                if !queue.is_empty() {
                    if let Poll::Ready(result) = muxer.poll_outbound_unpin(cx) {
                        let (_, reply) = queue.pop_front().expect("not empty");
                        let _ = reply.send(result.map(|s| Substream::new(s, &alive)));
                        progress = true;
                    }
                }
                *waiting.lock().unwrap() = queue.front().map(|(since, _)| *since);
                match muxer.poll_unpin(cx) {
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                if !progress {
                    return Poll::Pending;
                }
            }
        })
        .await;
        // The connection is gone: the openers waiting get an error as `queue` drops.
    });
    End {
        label,
        server,
        opener: Opener(open_tx),
        inbound: Some(inbound_rx),
        handles,
        waiting_since,
    }
}

type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// A transport of `kind` with a fresh identity, its muxers boxed so that the workload is written
/// once; with our transport, also its ledgers.
fn transport(kind: Kind, stream_limit: u32) -> (BoxedTransport, PeerId, Option<Ledgers>) {
    let keypair = Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    match kind {
        Kind::Ours => {
            let mut config = libp2p_quinn::Config::new(&keypair);
            config.max_concurrent_stream_limit = stream_limit;
            let transport = libp2p_quinn::tokio::Transport::new(config);
            let ledgers = transport.ledgers();
            let boxed = transport
                .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)))
                .boxed();
            (boxed, peer, Some(ledgers))
        }
        Kind::Libp2pQuic => {
            let mut config = libp2p::quic::Config::new(&keypair);
            config.max_concurrent_stream_limit = stream_limit;
            let boxed = libp2p::quic::tokio::Transport::new(config)
                .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)))
                .boxed();
            (boxed, peer, None)
        }
    }
}

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(SETUP_STEP, fut)
        .await
        .map_err(|_| format!("timed out after {SETUP_STEP:?}: {what}"))
}

async fn listen(transport: &mut BoxedTransport) -> Result<Multiaddr, String> {
    let addr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("valid");
    transport
        .listen_on(ListenerId::next(), addr)
        .map_err(|e| format!("listen: {e}"))?;
    loop {
        match bounded(
            "listen address",
            poll_fn(|cx| Pin::new(&mut *transport).poll(cx)),
        )
        .await?
        {
            TransportEvent::NewAddress { listen_addr, .. } => return Ok(listen_addr),
            TransportEvent::ListenerError { error, .. } => return Err(format!("listen: {error}")),
            _ => {}
        }
    }
}

/// The next incoming connection on `transport`, handshake done.
async fn accept(transport: &mut BoxedTransport) -> Result<(PeerId, StreamMuxerBox), String> {
    loop {
        let event = poll_fn(|cx| Pin::new(&mut *transport).poll(cx)).await;
        if let TransportEvent::Incoming { upgrade, .. } = event {
            return upgrade.await.map_err(|e| format!("inbound handshake: {e}"));
        }
    }
}

/// Dial `server` from `client` at `target`. Under heavy loss a handshake can run out of time:
/// up to three attempts.
async fn connect(
    client: &mut BoxedTransport,
    server: &mut BoxedTransport,
    target: &Multiaddr,
) -> Result<(StreamMuxerBox, StreamMuxerBox), String> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dial = client
            .dial(
                target.clone(),
                DialOpts {
                    role: Endpoint::Dialer,
                    port_use: PortUse::New,
                },
            )
            .map_err(|e| format!("dial: {e}"))?;
        let (dialed, accepted) =
            futures::join!(bounded("dial", dial), bounded("accept", accept(server)));
        match (dialed, accepted) {
            (Ok(Ok((_, client_muxer))), Ok(Ok((_, server_muxer)))) => {
                return Ok((client_muxer, server_muxer))
            }
            (dialed, accepted) if attempt == ATTEMPTS => {
                let dialed = dialed.and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
                let accepted = accepted.and_then(|r| r.map(|_| ()));
                return Err(format!(
                    "{ATTEMPTS} attempts; the last: dial {dialed:?}, accept {accepted:?}"
                ));
            }
            _ => {}
        }
    }
}

/// Keep polling a transport (its events are not needed once the connections are up).
fn keep_polling(mut transport: BoxedTransport, drivers: &mut JoinSet<()>) {
    drivers.spawn(async move {
        poll_fn(|cx| -> Poll<()> {
            while Pin::new(&mut transport).poll(cx).is_ready() {}
            Poll::Pending
        })
        .await;
    });
}

/// The answer to every accepted stream: read the request to the end, reply, close, drop.
async fn handle(mut stream: Substream, stats: Arc<Stats>) {
    let work = async {
        let mut request = Vec::new();
        (&mut stream).take(1024).read_to_end(&mut request).await?;
        if request != REQUEST {
            return Err(io::Error::other(format!("unexpected request {request:?}")));
        }
        if stream.write_all(REPLY).await.is_err() || stream.close().await.is_err() {
            // The fire-and-forget opener stopped reading (STOP_SENDING).
            stats.refused_replies.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => stats.error(format!("handler: {e}")),
        Err(_) => stats.error("handler timed out".into()),
    }
}

async fn accept_loop(mut inbound: mpsc::UnboundedReceiver<Substream>, stats: Arc<Stats>) {
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            stream = inbound.next() => match stream {
                Some(stream) => {
                    handlers.spawn(handle(stream, stats.clone()));
                }
                None => break,
            },
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
        }
    }
    while handlers.join_next().await.is_some() {}
}

/// Open a stream and use it: write 8 bytes and close; then either drop it at once
/// (`fire_and_forget`, the incident's server) or read the 8-byte reply to the end first.
async fn exchange(opener: Opener, fire_and_forget: bool, stats: Arc<Stats>, threshold: Duration) {
    let started = Instant::now();
    let mut reply = opener.open();
    let opened = match tokio::time::timeout(threshold, &mut reply).await {
        Ok(opened) => opened,
        Err(_) => {
            stats.blocked.fetch_add(1, Ordering::Relaxed);
            reply.await
        }
    };
    stats.open_took(started.elapsed());
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return stats.error(format!("open: {e}")),
        Err(_) => return stats.error("open: connection driver gone".into()),
    };
    let work = async {
        stream.write_all(REQUEST).await?;
        stream.close().await?;
        if !fire_and_forget {
            let mut answer = Vec::new();
            (&mut stream).take(1024).read_to_end(&mut answer).await?;
            if answer != REPLY {
                return Err(io::Error::other(format!("unexpected reply {answer:?}")));
            }
        }
        Ok::<_, io::Error>(())
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, work).await {
        Ok(Ok(())) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => stats.error(format!(
            "{} exchange: {e}",
            if fire_and_forget {
                "fire-and-forget"
            } else {
                "request/response"
            }
        )),
        Err(_) => stats.error("exchange timed out".into()),
    }
}

/// How an opener mixes its exchanges.
#[derive(Clone, Copy)]
enum Mix {
    /// The incident's server: every other stream is dropped without reading the answer.
    Incident,
    /// Request/response only.
    RequestResponse,
}

struct OpenerLoop {
    opener: Opener,
    mix: Mix,
    period: Duration,
    phase: Duration,
    /// Ticks are skipped while this many exchanges are in flight.
    cap: usize,
    threshold: Duration,
}

impl OpenerLoop {
    async fn run(self, mut stop: watch::Receiver<bool>, stats: Arc<Stats>) {
        let mut exchanges = JoinSet::new();
        let start = tokio::time::Instant::now() + self.phase;
        let mut tick = tokio::time::interval_at(start, self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    while exchanges.try_join_next().is_some() {}
                    if exchanges.len() >= self.cap {
                        stats.skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let fire_and_forget = matches!(self.mix, Mix::Incident) && n.is_multiple_of(2);
                    n += 1;
                    exchanges.spawn(exchange(
                        self.opener.clone(),
                        fire_and_forget,
                        stats.clone(),
                        self.threshold,
                    ));
                }
                _ = stopped(&mut stop) => break,
            }
        }
        // Let the exchanges in flight finish (the caller bounds this).
        while exchanges.join_next().await.is_some() {}
    }
}

/// Resolves once the workload is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The long-lived stream: send a message every 100 ms and read the peer's until the workload
/// stops; then close our half and read the peer's to its end.
async fn gossip(stream: Substream, stop: watch::Receiver<bool>, stats: Arc<Stats>) {
    let (mut reader, mut writer) = stream.split();
    let mut stop_writer = stop.clone();
    let write = async {
        let mut tick = tokio::time::interval(GOSSIP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = writer.write_all(GOSSIP).await {
                        stats.error(format!("gossip write: {e}"));
                        return;
                    }
                }
                _ = stopped(&mut stop_writer) => break,
            }
        }
        if let Err(e) = writer.close().await {
            stats.error(format!("gossip close: {e}"));
        }
    };
    let read = async {
        let mut message = [0u8; 8];
        let mut last: Option<Instant> = None;
        loop {
            match reader.read_exact(&mut message).await {
                Ok(()) => {
                    let now = Instant::now();
                    if let Some(last) = last.filter(|_| !*stop.borrow()) {
                        let gap = now.duration_since(last).as_micros() as u64;
                        stats.gossip_max_gap_us.fetch_max(gap, Ordering::Relaxed);
                    }
                    last = Some(now);
                    stats.gossip_messages.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    stats.error(format!("gossip read: {e}"));
                    break;
                }
            }
        }
    };
    futures::join!(write, read);
}

/// Everything set up: the connections' ends and what watches them.
struct Topology {
    ends: Vec<End>,
    /// Per connection: (server end, client end) indices into `ends`.
    connections: Vec<(usize, usize)>,
    /// Our ledgers, one per transport (empty for libp2p-quic).
    ledgers: Vec<Ledgers>,
    names: HashMap<PeerId, String>,
    /// The long-lived streams, (server's, client's) per connection, until their tasks take them.
    gossip: Vec<(Substream, Substream)>,
    _proxies: Vec<UdpProxy>,
}

async fn set_up(opts: &Opts, drivers: &mut JoinSet<()>) -> Result<Topology, String> {
    let mut names = HashMap::new();
    let mut ledgers = Vec::new();
    let mut servers = Vec::new();
    for i in 0..SERVERS {
        let (mut t, peer, l) = transport(opts.transport, opts.stream_limit);
        let addr = listen(&mut t).await?;
        names.insert(peer, format!("s{i}"));
        ledgers.extend(l);
        servers.push((t, addr));
    }
    let mut clients = Vec::new();
    for j in 0..CLIENTS {
        let (t, peer, l) = transport(opts.transport, opts.stream_limit);
        names.insert(peer, format!("c{j}"));
        ledgers.extend(l);
        clients.push(t);
    }
    let mut ends = Vec::new();
    let mut connections = Vec::new();
    let mut proxies = Vec::new();
    let mut gossip = Vec::new();
    for (i, (server, listen_addr)) in servers.iter_mut().enumerate() {
        let (socket, _) =
            libp2p_quinn::parse_multiaddr(listen_addr).ok_or("unparsable listen address")?;
        for (j, client) in clients.iter_mut().enumerate() {
            let k = connections.len();
            let target = if opts.loss > 0.0 {
                let impairment = Impairment::lossy(opts.loss);
                let seed = opts.seed.wrapping_add(k as u64);
                let proxy = UdpProxy::start(socket, seed, impairment.clone(), impairment)
                    .await
                    .map_err(|e| format!("proxy: {e}"))?;
                let target = libp2p_quinn::to_multiaddr(proxy.local_addr());
                proxies.push(proxy);
                target
            } else {
                listen_addr.clone()
            };
            let (client_muxer, server_muxer) = connect(client, server, &target)
                .await
                .map_err(|e| format!("connecting c{j} to s{i}: {e}"))?;
            let mut server_end = drive(server_muxer, format!("s{i}→c{j}"), true, drivers);
            let client_end = drive(client_muxer, format!("c{j}→s{i}"), false, drivers);
            // The long-lived stream is the first one: the client opens it and speaks first,
            // so that the server sees it before any other.
            let mut first = bounded("open the gossip stream", client_end.opener.open())
                .await?
                .map_err(|_| "driver gone")?
                .map_err(|e| format!("open the gossip stream: {e}"))?;
            bounded("first gossip message", first.write_all(GOSSIP))
                .await?
                .map_err(|e| format!("first gossip message: {e}"))?;
            let accepted = bounded(
                "accept the gossip stream",
                server_end.inbound.as_mut().expect("fresh").next(),
            )
            .await?
            .ok_or("connection gone")?;
            ends.push(server_end);
            ends.push(client_end);
            connections.push((ends.len() - 2, ends.len() - 1));
            gossip.push((accepted, first));
        }
    }
    for t in servers.into_iter().map(|(t, _)| t).chain(clients) {
        keep_polling(t, drivers);
    }
    Ok(Topology {
        ends,
        connections,
        ledgers,
        names,
        gossip,
        _proxies: proxies,
    })
}

/// Live streams now, and the oldest open still waiting.
fn sample(topology: &Topology, t: f64) -> (Sample, Option<Duration>) {
    let now = Instant::now();
    let mut s = Sample {
        t,
        ..Sample::default()
    };
    let mut oldest_wait = None;
    for end in &topology.ends {
        let handles = end.handles.load(Ordering::Relaxed);
        s.handles += handles;
        if topology.ledgers.is_empty() {
            s.sum += handles;
            s.max = s.max.max(handles);
        }
        if let Some(since) = *end.waiting_since.lock().unwrap() {
            let waited = now.saturating_duration_since(since);
            oldest_wait = oldest_wait.max(Some(waited));
        }
    }
    for ledgers in &topology.ledgers {
        for snapshot in ledgers.snapshot() {
            let tracked = snapshot.totals.tracked_total();
            s.sum += tracked;
            s.max = s.max.max(tracked);
        }
    }
    (s, oldest_wait)
}

/// Why nothing is left, or what is: one line per connection end that still holds something.
fn leftovers(topology: &Topology) -> Vec<String> {
    let mut lines = Vec::new();
    for end in &topology.ends {
        let handles = end.handles.load(Ordering::Relaxed);
        if handles > 0 {
            lines.push(format!("{}: {handles} stream handles alive", end.label));
        }
    }
    for (i, ledgers) in topology.ledgers.iter().enumerate() {
        let own = if i < SERVERS {
            format!("s{i}")
        } else {
            format!("c{}", i - SERVERS)
        };
        for snapshot in ledgers.snapshot() {
            if !snapshot.is_idle() {
                lines.push(describe(&own, &topology.names, &snapshot));
            }
        }
    }
    lines
}

fn describe(own: &str, names: &HashMap<PeerId, String>, s: &ConnectionSnapshot) -> String {
    let peer = names.get(&s.peer).map_or("?", String::as_str);
    let mut line = format!(
        "{own}→{peer} (ledger): handles alive in/out {:?}, tracked in/out {:?}, held after drop \
         {:?}",
        s.live_handles, s.totals.tracked, s.totals.held_after_drop
    );
    let mut states: HashMap<String, usize> = HashMap::new();
    for st in &s.streams {
        *states
            .entry(format!(
                "{} send={} recv={}{}",
                st.direction,
                st.send,
                st.recv,
                if st.handle_alive { "" } else { " dropped" }
            ))
            .or_default() += 1;
    }
    let mut states: Vec<_> = states.into_iter().collect();
    states.sort();
    for (state, count) in states {
        let _ = write!(line, "; {count}x {state}");
    }
    if let Some(oldest) = s.streams.first() {
        let _ = write!(line, "; oldest: id {} age {:.1?}", oldest.id, oldest.age);
    }
    if let Some(wait) = s.credit_wait {
        let _ = write!(line, "; an open waits for credit since {wait:.1?}");
    }
    line
}

/// The process's resident memory in MiB, where /proc tells it.
fn rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // 4 KiB pages: what Linux uses on the machines this runs on.
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        println!("{line}");
    } else {
        pb.println(line);
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

/// Whether every count is back to zero: no handle alive anywhere and, with our transport, every
/// ledger idle.
fn is_idle(topology: &Topology) -> bool {
    topology
        .ends
        .iter()
        .all(|end| end.handles.load(Ordering::Relaxed) == 0)
        && topology
            .ledgers
            .iter()
            .all(|l| l.snapshot().iter().all(ConnectionSnapshot::is_idle))
}

fn plot(path: &Path, opts: &Opts, summary: &Summary) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let samples = &summary.samples;
    let root = SVGBackend::new(path, (1000, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let x_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_top = samples
        .iter()
        .map(|s| s.sum.max(s.handles))
        .max()
        .unwrap_or(0)
        .max(u64::from(opts.stream_limit));
    let y_max = y_top + y_top / 10 + 1;
    let live = match opts.transport {
        Kind::Ours => "tracked by the ledger",
        Kind::Libp2pQuic => "application-level handles",
    };
    let caption = format!(
        "{}: live streams ({live}), rate {}/s, loss {}, stream limit {}",
        opts.transport.name(),
        opts.rate,
        opts.loss,
        opts.stream_limit
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0u64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("live streams")
        .draw()
        .map_err(|e| err(&e))?;
    type Series = (String, RGBColor, Vec<(f64, u64)>);
    let mut series: Vec<Series> = vec![
        (
            "sum over connection ends".into(),
            BLUE,
            samples.iter().map(|s| (s.t, s.sum)).collect(),
        ),
        (
            "max on one connection end".into(),
            RED,
            samples.iter().map(|s| (s.t, s.max)).collect(),
        ),
        (
            format!("stream limit ({})", opts.stream_limit),
            RGBColor(120, 120, 120),
            vec![
                (0.0, opts.stream_limit.into()),
                (x_max, opts.stream_limit.into()),
            ],
        ),
    ];
    if opts.transport == Kind::Ours {
        series.push((
            "application-level handles (sum)".into(),
            GREEN,
            samples.iter().map(|s| (s.t, s.handles)).collect(),
        ));
    }
    for (label, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
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
