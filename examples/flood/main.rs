//! A flood of QUIC Initials at a listener, at full size, side by side with `libp2p-quic`: how
//! far the listener's memory grows, whether a peer still connects and how fast, and whether
//! the memory comes back. `docs/admission.md` has the table and what bounds it.
//!
//! ```text
//! cargo run --release --features metrics --example flood -- \
//!     [--rate 20000] [--seconds 30] [--sources 64] [--threads 2] \
//!     [--kinds ours,ours-webtransport,libp2p-quic] [--rss-cap-mib 2048]
//! ```
//!
//! Needs root and iproute2: everything runs in a network namespace of its own whose loopback
//! device carries 198.18.0.1 (the listener), 198.18.1.x (the flood's sources) and 198.18.2.x
//! (the peers), so that no source is a loopback address and the listener meets the flood with
//! the defaults of an internet-facing node. The listener is a child process (this program
//! again, `listen`), so that its resident memory is its own; the flood and the peers are
//! threads and tasks of this process.
//!
//! For each kind: the listener's idle RSS; 20 peers, each from its own address, connect one
//! after another (unloaded connect times); the flood starts (`--rate` valid Initials a second
//! with fresh connection ids, from `--sources` addresses × 16 ports, `tests/common/flood.rs`);
//! from a quarter of the way in, the 20 peers connect again one after another, 100 ms apart;
//! the listener's RSS and heap are sampled every 100 ms; 10 s after the flood the RSS is read
//! again. Just before each flood and 10 s after it, the listener also hands its allocator's
//! free memory back (`malloc_trim`), and the heap it holds (counted by a wrapper around the
//! system allocator, `usage.rs`), glibc's count of the heap in use and its RSS are read: what
//! the flood left behind. A listener past `--rss-cap-mib` is stopped, the flood with it, and
//! reported as such.
//! `FLOOD_WRAP=<program>` starts the listener child under that program (a heap profiler such as
//! `heaptrack`); `FLOOD_TRACE=1` prints its reports, one a second.

#[path = "../../tests/common/flood.rs"]
mod flood;
#[path = "../../tests/common/lab.rs"]
mod lab;
#[path = "../../tests/common/resident.rs"]
mod resident;
mod usage;

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use clap::Parser;
use futures::{future::poll_fn, StreamExt};
use libp2p_core::{
    transport::{DialOpts, ListenerId, PortUse, TransportEvent},
    Endpoint, Multiaddr, Transport as _,
};
use libp2p_identity::Keypair;
use usage::{cpu_of, glibc_in_use, heap, rss_of};

const LISTENER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PORT: u16 = 4001;
const PEERS: u8 = 20;
/// Source ports per flood address.
const PORTS_PER_SOURCE: usize = 16;

#[derive(Parser, Debug)]
#[command(about = "A flood of QUIC Initials at a listener, side by side with libp2p-quic")]
struct Args {
    /// `run` (the default): the whole measurement; `listen`: the listener child.
    #[arg(default_value = "run")]
    mode: String,
    /// Initials a second.
    #[arg(long, default_value_t = 20_000)]
    rate: usize,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Source addresses of the flood.
    #[arg(long, default_value_t = 64)]
    sources: u8,
    /// Sending threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Which listeners, in order: ours (QUIC), ours-webtransport (QUIC and WebTransport on one
    /// port, the flood offering `h3`), libp2p-quic.
    #[arg(
        long,
        default_value = "ours,ours-webtransport,libp2p-quic",
        value_delimiter = ','
    )]
    kinds: Vec<String>,
    /// Floods one after another at the same listener (each followed by its 10 s), to tell
    /// memory kept from memory leaked.
    #[arg(long, default_value_t = 1)]
    floods: usize,
    /// Stop a listener whose RSS passes this (MiB), and its flood.
    #[arg(long, default_value_t = 2048)]
    rss_cap_mib: u64,
    /// The listener child's kind.
    #[arg(long, default_value = "ours")]
    kind: String,
}

fn main() {
    let args = Args::parse();
    match args.mode.as_str() {
        "listen" => listen(&args.kind),
        "run" => run(&args),
        other => panic!("unknown mode {other:?}: run or listen"),
    }
}

// ---------------------------------------------------------------------------------------------
// The listener child: listens, serves every handshake, and reports on stdout every 100 ms until
// its stdin closes.
// ---------------------------------------------------------------------------------------------

fn listen(kind: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let kind = kind.to_owned();
    runtime.block_on(async move {
        let keypair = Keypair::generate_ed25519();
        let quic: Multiaddr = format!("/ip4/{LISTENER}/udp/{PORT}/quic-v1")
            .parse()
            .unwrap();
        match kind.as_str() {
            "libp2p-quic" => {
                let mut transport =
                    libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(&keypair));
                transport
                    .listen_on(ListenerId::next(), quic.clone())
                    .unwrap();
                println!("ADDR {quic}");
                let serving = serve(transport);
                tokio::spawn(report(String::new));
                serving.await;
            }
            "ours" | "ours-webtransport" => {
                let mut registry = prometheus_client::registry::Registry::default();
                let metrics = libp2p_quinn::Metrics::new(&mut registry);
                let config = libp2p_quinn::Config::new(&keypair).with_metrics(metrics);
                let mut transport = libp2p_quinn::tokio::Transport::new(config);
                transport
                    .listen_on(ListenerId::next(), quic.clone())
                    .unwrap();
                if kind == "ours-webtransport" {
                    let wt: Multiaddr = format!("{quic}/webtransport").parse().unwrap();
                    transport.listen_on(ListenerId::next(), wt).unwrap();
                }
                println!("ADDR {quic}");
                let transport = Arc::new(Mutex::new(transport));
                let snapshot = {
                    let transport = transport.clone();
                    move || {
                        let s = transport.lock().unwrap().admission_snapshot();
                        let mut text = String::new();
                        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
                        let count = |outcome: &str| -> f64 {
                            text.lines()
                                .filter(|l| {
                                    l.starts_with("libp2p_quinn_incoming_total{")
                                        && l.contains(&format!("outcome=\"{outcome}\""))
                                })
                                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                                .fold(0.0, |a, b| a + b)
                        };
                        format!(
                            " in_flight={} conns={} accepted={} retried={} refused={} ignored={}",
                            s.handshakes_in_flight,
                            s.endpoint_connections,
                            count("accepted"),
                            count("retried"),
                            count("refused"),
                            count("ignored"),
                        )
                    }
                };
                tokio::spawn(report(snapshot));
                serve_shared(transport).await;
            }
            other => panic!("unknown kind {other:?}"),
        }
    });
}

/// Serve a transport we own: each incoming handshake on a task of its own; the connections are
/// kept until the transport ends (a peer's close ends them anyway).
async fn serve<T>(mut transport: T)
where
    T: libp2p_core::Transport + Unpin,
    T::ListenerUpgrade: Send + 'static,
    T::Output: Send + 'static,
{
    let (kept, mut sink) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move { while sink.next().await.is_some() {} });
    loop {
        let event = poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await;
        if let TransportEvent::Incoming { upgrade, .. } = event {
            let kept = kept.clone();
            tokio::spawn(async move {
                if let Ok(output) = upgrade.await {
                    let _ = kept.unbounded_send(output);
                }
            });
        }
    }
}

async fn serve_shared(transport: Arc<Mutex<libp2p_quinn::tokio::Transport>>) {
    loop {
        let event = poll_fn(|cx| Pin::new(&mut *transport.lock().unwrap()).poll(cx)).await;
        if let TransportEvent::Incoming { upgrade, .. } = event {
            tokio::spawn(async move {
                // The connection lives until the peer closes it.
                if let Ok((_, connection)) = upgrade.await {
                    let _ = connection.quinn().closed().await;
                }
            });
        }
    }
}

/// Every 100 ms a `STATS` line: heap and RSS, and `extra`; the process ends when stdin closes.
/// A `trim` line on stdin hands the allocator's free memory back to the kernel
/// (`malloc_trim`): a diagnostic that tells memory the allocator keeps from memory in use.
async fn report(extra: impl Fn() -> String + Send + 'static) {
    std::thread::spawn(|| {
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            if line.trim() == "trim" {
                // SAFETY: malloc_trim takes no pointers and may be called from any thread.
                unsafe { libc::malloc_trim(0) };
            }
            line.clear();
        }
        std::process::exit(0);
    });
    loop {
        let (heap, glibc) = (heap(), glibc_in_use());
        println!(
            "STATS heap={heap} glibc={glibc} rss={}{}",
            rss_of(std::process::id()),
            extra()
        );
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The measurement
// ---------------------------------------------------------------------------------------------

/// The last `STATS` line of the child, parsed.
#[derive(Debug, Default, Clone)]
struct Stats {
    heap: u64,
    glibc: u64,
    fields: Vec<(String, String)>,
}

impl Stats {
    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("STATS ")?;
        let mut stats = Stats::default();
        for part in rest.split_whitespace() {
            let (key, value) = part.split_once('=')?;
            if key == "heap" {
                stats.heap = value.parse().ok()?;
            } else if key == "glibc" {
                stats.glibc = value.parse().ok()?;
            } else if key != "rss" {
                stats.fields.push((key.to_owned(), value.to_owned()));
            }
        }
        Some(stats)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The listener child and what it reports.
struct ListenerChild {
    child: Child,
    addr: Multiaddr,
    last: Arc<Mutex<Stats>>,
    peak_heap: Arc<Mutex<u64>>,
}

impl ListenerChild {
    fn spawn(kind: &str) -> Self {
        let exe = std::env::current_exe().expect("our own path");
        let mut command = match std::env::var_os("FLOOD_WRAP") {
            Some(wrapper) => {
                let mut command = Command::new(wrapper);
                command.arg(&exe);
                command
            }
            None => Command::new(&exe),
        };
        let mut child = command
            .args(["listen", "--kind", kind])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the listener child");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the child says where it listens")
                .expect("a line");
            if let Some(addr) = line.strip_prefix("ADDR ") {
                break addr.parse().expect("a multiaddr");
            }
        };
        let last: Arc<Mutex<Stats>> = Arc::default();
        let peak_heap: Arc<Mutex<u64>> = Arc::default();
        {
            let (last, peak_heap) = (last.clone(), peak_heap.clone());
            let trace = std::env::var_os("FLOOD_TRACE").is_some();
            std::thread::spawn(move || {
                for (n, line) in lines.map_while(Result::ok).enumerate() {
                    if trace && n % 10 == 0 {
                        eprintln!("{line}");
                    }
                    if let Some(stats) = Stats::parse(&line) {
                        let mut peak = peak_heap.lock().unwrap();
                        *peak = (*peak).max(stats.heap);
                        *last.lock().unwrap() = stats;
                    }
                }
            });
        }
        Self {
            child,
            addr,
            last,
            peak_heap,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss(&self) -> u64 {
        rss_of(self.pid())
    }

    fn stats(&self) -> Stats {
        self.last.lock().unwrap().clone()
    }

    /// Has it hand its allocator's free memory back, and waits a moment for it.
    fn trim(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"trim\n");
            let _ = stdin.flush();
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Closes its stdin, and makes sure it is gone.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One kind's row.
#[derive(Debug, Default)]
struct Row {
    kind: String,
    sent: usize,
    rate: f64,
    stopped: Option<String>,
    idle_rss: u64,
    peak_rss: u64,
    after_rss: u64,
    idle_heap: u64,
    peak_heap: u64,
    after_heap: u64,
    /// RSS once the allocator handed its free memory back (`malloc_trim`), after `after_rss`.
    trimmed_rss: u64,
    /// Heap in use and trimmed RSS just before this flood: after the peers' unloaded
    /// connections, or 10 s after the previous flood.
    before_heap: u64,
    /// glibc's count of the heap in use, just before the flood and 10 s after.
    before_glibc: u64,
    after_glibc: u64,
    before_rss: u64,
    cpu: Duration,
    flood_time: Duration,
    unloaded: Vec<Duration>,
    loaded: Vec<Duration>,
    loaded_failed: Vec<String>,
    admission: String,
}

/// `before → after` in MiB with `decimals`, and the change in percent.
fn change(before: u64, after: u64, decimals: usize) -> String {
    format!(
        "{:.*} → {:.*} MiB ({:+.1}%)",
        decimals,
        mib(before),
        decimals,
        mib(after),
        percent(after, before)
    )
}

/// How much `after` is above `before`, in percent.
fn percent(after: u64, before: u64) -> f64 {
    (after as f64 / before.max(1) as f64 - 1.0) * 100.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn percentile(times: &[Duration], p: f64) -> Option<Duration> {
    let mut sorted = times.to_vec();
    sorted.sort();
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied()
}

/// `p50 / p90` of `times`.
fn p50_p90(times: &[Duration]) -> String {
    format!(
        "{} / {}",
        ms(percentile(times, 0.5)),
        ms(percentile(times, 0.9))
    )
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

fn run(args: &Args) {
    let flood_sources: Vec<IpAddr> = (1..=args.sources)
        .map(|d| IpAddr::V4(Ipv4Addr::new(198, 18, 1, d)))
        .collect();
    let peers: Vec<IpAddr> = lab::addresses(2, PEERS);
    let mut all = vec![IpAddr::V4(LISTENER)];
    all.extend(&flood_sources);
    all.extend(&peers);
    let lab = lab::Lab::new(&all).unwrap_or_else(|e| panic!("cannot build the namespace: {e}"));
    // This thread, the threads it starts and the child processes: all in the namespace.
    lab.enter().expect("enter the namespace");
    let mut rows = Vec::new();
    for kind in &args.kinds {
        eprintln!("== {kind}");
        rows.extend(measure(args, kind, &flood_sources, &peers));
    }
    drop(lab);
    print_table(args, &rows);
}

fn measure(args: &Args, kind: &str, flood_sources: &[IpAddr], peer_ips: &[IpAddr]) -> Vec<Row> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut listener = ListenerChild::spawn(kind);
    let mut peers: Vec<libp2p_quinn::tokio::Transport> = runtime.block_on(async {
        let mut peers = Vec::new();
        for ip in peer_ips {
            peers.push(peer_at(*ip).await);
        }
        peers
    });
    // Idle baseline, and the unloaded connections.
    std::thread::sleep(Duration::from_secs(2));
    let mut idle = Row {
        kind: kind.to_owned(),
        idle_rss: listener.rss(),
        idle_heap: listener.stats().heap,
        ..Row::default()
    };
    idle.unloaded = runtime.block_on(async {
        let mut times = Vec::new();
        for peer in &mut peers {
            if let Ok(took) = dial_from(peer, &listener.addr).await {
                times.push(took);
            }
        }
        times
    });
    std::thread::sleep(Duration::from_secs(1));
    idle.idle_rss = idle.idle_rss.max(listener.rss());
    let mut rows = Vec::new();
    for round in 1..=args.floods {
        let row = flood_round(
            args,
            &idle,
            round,
            &mut listener,
            &mut peers,
            &runtime,
            flood_sources,
        );
        let stopped = row.stopped.is_some();
        rows.push(row);
        if stopped {
            break;
        }
    }
    drop(peers);
    drop(runtime);
    listener.stop();
    rows
}

/// One flood at the listener, the peers dialing meanwhile; its row, against the idle
/// baseline of `idle`.
fn flood_round(
    args: &Args,
    idle: &Row,
    round: usize,
    listener: &mut ListenerChild,
    peers: &mut [libp2p_quinn::tokio::Transport],
    runtime: &tokio::runtime::Runtime,
    flood_sources: &[IpAddr],
) -> Row {
    let kind = idle.kind.as_str();
    let mut row = Row {
        kind: if args.floods > 1 {
            format!("{kind} (flood {round})")
        } else {
            kind.to_owned()
        },
        idle_rss: idle.idle_rss,
        idle_heap: idle.idle_heap,
        unloaded: idle.unloaded.clone(),
        ..Row::default()
    };
    // What the flood starts from, the allocator's free memory handed back as it is after.
    listener.trim();
    let before = listener.stats();
    row.before_heap = before.heap;
    row.before_glibc = before.glibc;
    row.before_rss = listener.rss();
    let target = SocketAddr::new(IpAddr::V4(LISTENER), PORT);
    let addr = listener.addr.clone();
    let flood = flood::Flood {
        target,
        sources: flood_sources.to_vec(),
        ports_per_source: PORTS_PER_SOURCE,
        count: args.rate * args.seconds as usize,
        duration: Duration::from_secs(args.seconds),
        threads: args.threads,
        alpn: if kind == "ours-webtransport" {
            b"h3".to_vec()
        } else {
            b"libp2p".to_vec()
        },
        half_hello: false,
    };
    let prepared = flood.prepare().expect("the flood's sockets");
    let cpu_before = cpu_of(listener.pid());
    *listener.peak_heap.lock().unwrap() = 0;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let pid = listener.pid();
        // The listener's CPU time is read the moment the flood ends.
        std::thread::spawn(move || (prepared.run(), cpu_of(pid)))
    };
    // Watch the RSS; past the cap, kill the listener (our own child; the flood runs on, into
    // nothing).
    let watcher = {
        let (pid, stop, cap) = (listener.pid(), stop.clone(), args.rss_cap_mib << 20);
        std::thread::spawn(move || {
            let mut peak = 0;
            let mut over = false;
            while !stop.load(Ordering::Relaxed) {
                let rss = rss_of(pid);
                peak = peak.max(rss);
                if rss > cap {
                    over = true;
                    // SAFETY: kill(2) on the pid of the child we spawned and have not reaped.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (peak, over)
        })
    };
    // The peers dial from a quarter of the way in, one after another, 100 ms apart.
    std::thread::sleep(Duration::from_secs(args.seconds) / 4);
    let loaded: Vec<Result<Duration, String>> = runtime.block_on(async {
        let mut results = Vec::new();
        for peer in peers.iter_mut() {
            results.push(dial_from(peer, &addr).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        results
    });
    for result in loaded {
        match result {
            Ok(took) => row.loaded.push(took),
            Err(e) => row.loaded_failed.push(e),
        }
    }
    let (report, cpu_after) = sender.join().expect("the flood thread");
    let report = report.expect("the flood");
    row.flood_time = report.elapsed;
    stop.store(true, Ordering::Relaxed);
    let (peak, over) = watcher.join().expect("the watcher");
    row.sent = report.sent;
    row.rate = report.rate();
    row.peak_rss = peak;
    row.peak_heap = *listener.peak_heap.lock().unwrap();
    row.cpu = cpu_after.saturating_sub(cpu_before);
    // This flood's own decisions: the listener's counts now, less those before it.
    let now = listener.stats();
    row.admission = now.get("retried").map_or(String::new(), |_| {
        let count = |outcome: &str| {
            let read = |s: &Stats| s.get(outcome).and_then(|v| v.parse::<f64>().ok());
            read(&now).unwrap_or(0.0) - read(&before).unwrap_or(0.0)
        };
        format!(
            "accepted {}, retried {}, refused {}, ignored {}",
            count("accepted"),
            count("retried"),
            count("refused"),
            count("ignored"),
        )
    });
    if over {
        row.stopped = Some(format!("RSS passed {} MiB", args.rss_cap_mib));
    } else {
        // 10 s after the flood's end.
        std::thread::sleep(Duration::from_secs(10));
        row.after_rss = listener.rss();
        let after = listener.stats();
        row.after_heap = after.heap;
        row.after_glibc = after.glibc;
        listener.trim();
        row.trimmed_rss = listener.rss();
    }
    eprintln!("{row:?}");
    row
}

/// A peer that listens on `ip`, so that its dials leave from there.
async fn peer_at(ip: IpAddr) -> libp2p_quinn::tokio::Transport {
    let mut transport = libp2p_quinn::tokio::Transport::new(libp2p_quinn::Config::new(
        &Keypair::generate_ed25519(),
    ));
    let addr: Multiaddr = format!("/ip4/{ip}/udp/0/quic-v1").parse().unwrap();
    transport.listen_on(ListenerId::next(), addr).unwrap();
    // Its address event, so that the listener is up before it dials.
    let _ = poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await;
    transport
}

/// How long a dial from `peer`'s socket took to a connection (which is then closed).
async fn dial_from(
    peer: &mut libp2p_quinn::tokio::Transport,
    addr: &Multiaddr,
) -> Result<Duration, String> {
    let opts = DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::Reuse,
    };
    let started = Instant::now();
    let dial = peer.dial(addr.clone(), opts).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(20), dial).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no connection within 20 s".into()),
    }
}

fn print_table(args: &Args, rows: &[Row]) {
    println!(
        "\nFlood: {} Initials/s planned for {} s from {} addresses × {PORTS_PER_SOURCE} ports, {} \
         sending threads; {PEERS} peers from their own addresses.\n",
        args.rate, args.seconds, args.sources, args.threads
    );
    println!(
        "| listener | Initials sent (rate) | listener CPU | RSS idle | RSS peak (Δ) | RSS 10 s after (Δ) | … after malloc_trim | heap peak Δ | heap 10 s after Δ | just before the flood → 10 s after: heap held; glibc's count; RSS, trimmed | peers | connect p50 / p90 unloaded | … under flood | admission |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let after = match &row.stopped {
            Some(why) => format!("stopped: {why}"),
            None => format!(
                "{:.0} MiB ({:+.1}%)",
                mib(row.after_rss),
                percent(row.after_rss, row.idle_rss)
            ),
        };
        // The cells read after the flood: none for a listener stopped during it.
        let later = |cell: String| match row.stopped {
            Some(_) => "–".to_owned(),
            None => cell,
        };
        let trimmed = later(format!(
            "{:.0} MiB ({:+.1}%)",
            mib(row.trimmed_rss),
            percent(row.trimmed_rss, row.idle_rss)
        ));
        let after_heap = later(format!(
            "{:+.1} MiB",
            mib(row.after_heap) - mib(row.idle_heap)
        ));
        let since_before = later(format!(
            "{}; {}; {}",
            change(row.before_heap, row.after_heap, 2),
            change(row.before_glibc, row.after_glibc, 2),
            change(row.before_rss, row.trimmed_rss, 1),
        ));
        println!(
            "| {} | {} ({:.0}/s) | {:.1} s of {:.1} s | {:.0} MiB | {:.0} MiB ({:+.0} MiB) | {} | {} | {:+.1} MiB | {} | {} | {}/{} | {} | {} | {} |",
            row.kind,
            row.sent,
            row.rate,
            row.cpu.as_secs_f64(),
            row.flood_time.as_secs_f64(),
            mib(row.idle_rss),
            mib(row.peak_rss),
            mib(row.peak_rss) - mib(row.idle_rss),
            after,
            trimmed,
            mib(row.peak_heap) - mib(row.idle_heap),
            after_heap,
            since_before,
            row.loaded.len(),
            row.loaded.len() + row.loaded_failed.len(),
            p50_p90(&row.unloaded),
            p50_p90(&row.loaded),
            if row.admission.is_empty() { "–" } else { &row.admission },
        );
        if !row.loaded_failed.is_empty() {
            eprintln!(
                "{}: peers that did not connect: {:?}",
                row.kind, row.loaded_failed
            );
        }
    }
}
