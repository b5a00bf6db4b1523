//! Replays the incident's workload (a "server" opening and closing streams fast to a "client",
//! over a lossy network) between go-libp2p peers and libp2p-quinn, and says who blocks.
//!
//! The old Go peer (`interop/go-peer-old`: go-libp2p v0.38.2, quic-go v0.48.2) still has quic-go
//! issue 4803: a RESET_STREAM that it sends and that gets lost (or goes out again in a PTO probe)
//! is never accounted, so the stream never completes on its side and it never gives the opener
//! its stream credit back. The harness builds it with Go 1.25.5 (`GOTOOLCHAIN=go1.25.5`), so
//! that it can listen: built with Go >= 1.26, that quic-go panics in every inbound handshake.
//!
//! In every scenario the storming side (the incident's server) listens behind a seeded proxy
//! that loses `--loss` of the datagrams each way, and a Go peer (the client) dials it:
//!
//! 1. Go to Go, the incident itself: an old Go server storms into an old Go client the Go way,
//!    once per `--go-close` variant: `close` (CancelRead + FIN, as in the incident) and `reset`
//!    (CancelRead + CancelWrite). The server's STOP_SENDING makes the client answer with a
//!    RESET_STREAM (always after `reset`, sometimes after `close`); each one lost or sent again
//!    by a PTO probe leaks a stream in the client's quic-go, and after 256 leaks the server's
//!    opens block for good. `--go-peers current` runs the same between current Go peers.
//! 2. Ours to the old Go client: we storm into it. When it withholds credit, our
//!    `credit_wait_warning` (2 s here) names it and says it holds streams we closed.
//! 3. Ours to the current Go client (go-libp2p v0.48.0, `interop/go-peer-v048`: the build
//!    `docs/incident-replay.md` measured; v0.52.0 has the same quic-go fix): no open should
//!    block.
//!
//! ```text
//! cargo run --release --example incident_replay --features test-util
//! cargo run --release --example incident_replay --features test-util -- --scenario 1 --go-close reset
//! cargo run --release --example incident_replay --features test-util -- --count 5120 --scenario 2
//! RUST_LOG=libp2p_quinn=debug cargo run --release --example incident_replay --features test-util
//! ```
//!
//! Needs Go >= 1.26 on PATH (and Go 1.25.5, which the go command fetches from the module proxy
//! once); the Go peers are built into the system temp dir. See `docs/incident-replay.md`.

#[cfg(feature = "test-util")]
#[path = "../tests/common/go/mod.rs"]
mod go;

#[cfg(not(feature = "test-util"))]
fn main() {
    eprintln!(
        "incident_replay needs the lossy proxy: \
         cargo run --release --example incident_replay --features test-util"
    );
    std::process::exit(2);
}

#[cfg(feature = "test-util")]
fn main() {
    replay::main();
}

#[cfg(feature = "test-util")]
mod replay {
    use std::{
        sync::Mutex,
        time::{Duration, Instant},
    };

    use clap::Parser;
    use libp2p::Multiaddr;
    use libp2p_identity::{Keypair, PeerId};
    use libp2p_quinn::test_util::{Impairment, UdpProxy};
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

    use crate::go::*;

    #[derive(Parser, Debug)]
    #[command(about = "Replay the incident's stream storm between go-libp2p and libp2p-quinn")]
    struct Args {
        /// Streams per storm of ours (scenarios 2 and 3); a storm stops early once an open blocks.
        #[arg(long, default_value_t = 10240)]
        count: u64,
        /// Streams per storm of the Go server (scenario 1); it stops early once opens block for
        /// good. With `close`, the old peers block after some 70 000 (about 4 min).
        #[arg(long, default_value_t = 200_000)]
        go_count: u64,
        /// Datagram loss rate of the proxy, each way.
        #[arg(long, default_value_t = 0.05)]
        loss: f64,
        /// Seed of the proxy.
        #[arg(long, default_value_t = 4803)]
        seed: u64,
        /// Bound of each open (and of each close/reply step).
        #[arg(long, default_value = "10", value_parser = parse_secs)]
        open_timeout: Duration,
        /// Run only this scenario (1, 2 or 3).
        #[arg(long)]
        scenario: Option<u8>,
        /// How the Go server ends each stream in scenario 1, a comma-separated list run in turn:
        /// close (CancelRead + FIN, as in the incident), closewrite (FIN, read the reply, then
        /// Close) or reset (CancelRead + CancelWrite).
        #[arg(long, default_value = "close,reset")]
        go_close: String,
        /// Streams the Go server opens in parallel in scenario 1.
        #[arg(long, default_value_t = 1)]
        go_concurrency: usize,
        /// Which Go build plays both sides of scenario 1: old (the incident) or current (the
        /// control: quic-go with the fix; go-libp2p v0.48.0).
        #[arg(long, default_value = "old")]
        go_peers: String,
        /// How our storms end each stream: `request` (8 bytes, close, read the reply, drop) or
        /// `reset` (8 bytes, drop with `reset_on_drop`: the accepting side answers with a
        /// RESET_STREAM every time).
        #[arg(long, default_value = "request")]
        ours_way: String,
    }

    fn parse_secs(s: &str) -> Result<Duration, String> {
        s.parse::<f64>()
            .map(Duration::from_secs_f64)
            .map_err(|e| e.to_string())
    }

    /// Seeds of the Go peers' identities.
    const CURRENT_SEED: i64 = 1;
    const OLD_SEED: i64 = 2;
    const OLD_SERVER_SEED: i64 = 3;

    /// Our `credit_wait_warning` in scenarios 2 and 3.
    const CREDIT_WAIT_WARNING: Duration = Duration::from_secs(2);

    pub fn main() {
        let args = Args::parse();
        let fmt_filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_filter(fmt_filter))
            .with(WarningLog)
            .try_init();
        for how in go_closes(&args) {
            if !matches!(how.as_str(), "close" | "closewrite" | "reset") {
                eprintln!("--go-close: unknown variant {how:?} (close, closewrite or reset)");
                std::process::exit(2);
            }
        }
        if !matches!(args.ours_way.as_str(), "request" | "reset") {
            eprintln!("--ours-way: request or reset");
            std::process::exit(2);
        }
        let go_peers = match args.go_peers.as_str() {
            "old" => GoBuild::Old,
            "current" => GoBuild::V048,
            _ => {
                eprintln!("--go-peers: old or current");
                std::process::exit(2);
            }
        };
        // Build before the clock starts.
        go_peer_binary(GoBuild::V048);
        go_peer_binary(GoBuild::Old);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut summary = Vec::new();
        runtime.block_on(async {
            let run = |n: u8| args.scenario.is_none_or(|s| s == n);
            if run(1) {
                for (i, how) in go_closes(&args).into_iter().enumerate() {
                    let letter = (b'a' + i as u8) as char;
                    summary.push(go_to_go(&args, go_peers, letter, &how).await);
                }
            }
            if run(2) {
                summary.push(ours_to_go(&args, GoBuild::Old).await);
            }
            if run(3) {
                summary.push(ours_to_go(&args, GoBuild::V048).await);
            }
        });
        println!(
            "\n== summary ({}% loss each way, proxy seed {}, open timeout {:?}; scenario 1: {} Go \
             peers, at most {} streams, close {}; ours: at most {} streams, way {})",
            args.loss * 100.0,
            args.seed,
            args.open_timeout,
            args.go_peers,
            args.go_count,
            args.go_close,
            args.count,
            args.ours_way
        );
        for line in summary {
            println!("{line}");
        }
    }

    fn go_closes(args: &Args) -> Vec<String> {
        args.go_close
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    fn args_of(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    async fn proxy(args: &Args, server: std::net::SocketAddr) -> UdpProxy {
        UdpProxy::start(
            server,
            args.seed,
            Impairment::lossy(args.loss),
            Impairment::lossy(args.loss),
        )
        .await
        .expect("start the proxy")
    }

    fn socket_of(addr: &Multiaddr) -> std::net::SocketAddr {
        libp2p_quinn::parse_multiaddr(addr)
            .expect("a QUIC address")
            .0
    }

    fn proxy_line(proxy: &UdpProxy) -> String {
        let s = proxy.stats();
        format!(
            "proxy: to server {} forwarded / {} dropped, to client {} forwarded / {} dropped",
            s.forwarded[0], s.dropped[0], s.forwarded[1], s.dropped[1]
        )
    }

    // -----------------------------------------------------------------------------------------
    // Scenario 1: old Go server storms into old Go client

    /// Scenario 1: a Go peer of `build` listens behind the proxy and storms (ending each stream
    /// as `how` says) into the first peer that connects: another Go peer of the same build,
    /// which dials it.
    async fn go_to_go(args: &Args, build: GoBuild, letter: char, how: &str) -> String {
        let side = match build {
            GoBuild::Old => "go-old",
            GoBuild::V048 | GoBuild::Current => "go-current",
        };
        let label = format!("1{letter} {side} server -> {side} client, close {how}");
        println!("\n== {label}");
        let server_args = args_of(&[
            "--seed",
            &OLD_SERVER_SEED.to_string(),
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--mode",
            "storm",
            "--count",
            &args.go_count.to_string(),
            "--close",
            how,
            "--concurrency",
            &args.go_concurrency.to_string(),
            "--open-timeout",
            &format!("{}ms", args.open_timeout.as_millis()),
        ]);
        let mut server = GoPeer::spawn(build, &format!("{side} server"), &server_args);
        let listening = server.expect("listening", Duration::from_secs(30)).await;
        let go_version = server
            .last("version")
            .and_then(|v| v.str("go"))
            .unwrap_or("?")
            .to_string();
        // Built with Go >= 1.26, the old peer warns here and panics at the first handshake.
        if let Some(w) = server.last("warning") {
            println!("   the server cannot listen: {:?}", w.str("what"));
        }
        let addr: Multiaddr = listening.str("addr").unwrap().parse().unwrap();
        let proxy = proxy(args, socket_of(&addr)).await;
        let via = libp2p_quinn::to_multiaddr(proxy.local_addr())
            .with_p2p(go_peer_id_for_seed(OLD_SERVER_SEED))
            .unwrap();
        let mut client = GoPeer::spawn(
            build,
            &format!("{side} client"),
            &args_of(&[
                "--seed",
                &OLD_SEED.to_string(),
                "--mode",
                "serve",
                "--dial",
                &via.to_string(),
            ]),
        );
        let outcome = follow_go_storm(&mut server, args).await;
        let line = format!("{label} (built with {go_version}): {outcome}");
        println!("{line}");
        println!("   {}", proxy_line(&proxy));
        server.shutdown().await;
        client.shutdown().await;
        line
    }

    /// How long we follow a Go storm that neither ends nor blocks.
    const GO_STORM_WATCH: Duration = Duration::from_secs(20 * 60);

    /// Follow a Go peer's storm: until its `storm` line, or until no open has succeeded for
    /// three open timeouts after one blocked (a permanent block would take `count` x the open
    /// timeout to finish).
    async fn follow_go_storm(go: &mut GoPeer, args: &Args) -> String {
        let started = Instant::now();
        let mut last_print = started;
        let mut done = 0u64;
        let mut blocked_seen = 0u64;
        // (stream index, when its open began, streams done then) of the first blocked open.
        let mut first_block: Option<(String, Duration, u64)> = None;
        // When the latest block was reported with no progress since.
        let mut stalled_since: Option<Instant> = None;
        let grace = args.open_timeout * 3;
        let first_block_text = |first: &Option<(String, Duration, u64)>| match first {
            Some((index, at, done_then)) => format!(
                "the first open to block was stream {index} (0-based), begun {:.1} s in, when \
                 {done_then} streams were done",
                at.as_secs_f64()
            ),
            None => String::new(),
        };
        loop {
            if stalled_since.is_some_and(|t| t.elapsed() > grace) {
                return format!(
                    "BLOCKED for good: {}; no open succeeded in the {:?} that followed \
                     ({blocked_seen} opens hit the {:?} open timeout); {done} of {} streams done \
                     when we stopped watching",
                    first_block_text(&first_block),
                    grace,
                    args.open_timeout,
                    args.go_count
                );
            }
            if started.elapsed() > GO_STORM_WATCH {
                return format!(
                    "no result within {GO_STORM_WATCH:?}: {done} of {} streams done, no open \
                     blocked for good",
                    args.go_count
                );
            }
            let Some(line) = go.next_line(Duration::from_secs(5)).await else {
                continue;
            };
            match line.event() {
                "storm" => {
                    let first = match &first_block {
                        Some(_) => format!(
                            "; it recovered from a block: {}",
                            first_block_text(&first_block)
                        ),
                        None => String::new(),
                    };
                    return format!(
                        "no block: streams {} ok {} failed {} blocked {}, slowest open {:.1} ms, \
                         elapsed {:.0} ms{first}",
                        line.num("count"),
                        line.num("ok"),
                        line.num("failed"),
                        line.num("blocked"),
                        line.num("slowest_open_ms"),
                        line.num("elapsed_ms")
                    );
                }
                "storm_progress" => {
                    done = line.u64("done").unwrap_or(done);
                    stalled_since = None;
                    if last_print.elapsed() >= Duration::from_secs(15) {
                        last_print = Instant::now();
                        println!(
                            "   [{}] {done} streams done ({:.0} s)",
                            go.label,
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
                "error" => {
                    let what = line.str("what").unwrap_or_default();
                    if what.contains("blocked=true") {
                        blocked_seen += 1;
                        stalled_since.get_or_insert_with(Instant::now);
                        if first_block.is_none() {
                            let index = what
                                .strip_prefix("storm stream ")
                                .and_then(|r| r.split(' ').next())
                                .unwrap_or("?")
                                .to_string();
                            let began = started.elapsed().saturating_sub(args.open_timeout);
                            first_block = Some((index, began, done));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Scenarios 2 and 3: ours storms into a Go client

    /// Our storm, one stream after the other, stopping at the first blocked open (a permanent
    /// block would take `count` x the open timeout to finish). Error messages carry the
    /// stream's index in the whole storm (0-based).
    async fn our_storm(node: &RustNode, peer: PeerId, args: &Args) -> StormReport {
        let mut total = StormReport::default();
        let mut last_print = Instant::now();
        while total.count < args.count {
            let offset = total.count;
            // `reset_storm` stops at a blocked open by itself; `storm_to` goes through its
            // count, so it gets one stream at a time.
            let r = if args.ours_way == "reset" {
                let n = (args.count - total.count).min(16);
                reset_storm(node, peer, n, args.open_timeout).await
            } else {
                storm_to(&node.control, peer, 1, 1, args.open_timeout).await
            };
            total.count += r.count;
            total.ok += r.ok;
            total.failed += r.failed;
            total.blocked += r.blocked;
            total.close_errors += r.close_errors;
            total.slowest_open = total.slowest_open.max(r.slowest_open);
            total.slowest_close = total.slowest_close.max(r.slowest_close);
            total.elapsed += r.elapsed;
            let room = 10 - total.errors.len().min(10);
            total
                .errors
                .extend(r.errors.iter().take(room).map(|e| renumber(e, offset)));
            if last_print.elapsed() >= Duration::from_secs(15) || r.blocked > 0 {
                last_print = Instant::now();
                println!(
                    "   [ours] {} streams done, {} blocked ({:.0} s)",
                    total.count,
                    total.blocked,
                    total.elapsed.as_secs_f64()
                );
            }
            if r.blocked > 0 {
                println!("   [ours] stopping: opens block");
                break;
            }
        }
        total
    }

    /// "stream 3: ..." of a round that began at stream `offset` -> "stream {offset + 3}: ...".
    fn renumber(error: &str, offset: u64) -> String {
        let renumbered = error.strip_prefix("stream ").and_then(|rest| {
            let (n, tail) = rest.split_once(':')?;
            Some(format!("stream {}:{tail}", n.parse::<u64>().ok()? + offset))
        });
        renumbered.unwrap_or_else(|| error.to_string())
    }

    /// The index of the first stream whose open blocked, from our storm's errors.
    fn first_blocked(report: &StormReport) -> Option<u64> {
        report
            .errors
            .iter()
            .filter(|e| e.contains("blocked for") || e.contains("timed out"))
            .filter_map(|e| e.strip_prefix("stream ")?.split(':').next()?.parse().ok())
            .min()
    }

    /// `count` streams: open, write 8 bytes, drop (with `reset_on_drop`: RESET_STREAM +
    /// STOP_SENDING).
    async fn reset_storm(
        node: &RustNode,
        peer: PeerId,
        count: u64,
        open_timeout: Duration,
    ) -> StormReport {
        use futures::AsyncWriteExt;
        let mut control = node.control.clone();
        let mut r = StormReport {
            count,
            ..Default::default()
        };
        let started = Instant::now();
        for i in 0..count {
            let t = Instant::now();
            let opened = tokio::time::timeout(open_timeout, async {
                let mut s = control
                    .open_stream(peer, STORM)
                    .await
                    .map_err(|e| e.to_string())?;
                s.write_all(&i.to_be_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(s)
            })
            .await;
            r.slowest_open = r.slowest_open.max(t.elapsed());
            match opened {
                Ok(Ok(s)) => {
                    drop(s);
                    r.ok += 1;
                }
                Ok(Err(e)) => {
                    r.failed += 1;
                    if e.contains("timed out") {
                        r.blocked += 1;
                    }
                    if r.errors.len() < 10 {
                        r.errors.push(format!("stream {i}: {e}"));
                    }
                }
                Err(_) => {
                    r.failed += 1;
                    r.blocked += 1;
                    if r.errors.len() < 10 {
                        r.errors
                            .push(format!("stream {i}: open blocked for {open_timeout:?}"));
                    }
                }
            }
            if r.blocked > 0 {
                r.count = i + 1;
                break;
            }
        }
        r.elapsed = started.elapsed();
        r
    }

    /// Scenarios 2 and 3: the Go peer dials us through the proxy; we storm into it.
    async fn ours_to_go(args: &Args, which: GoBuild) -> String {
        let label = match which {
            GoBuild::Old => "2  ours server -> go-old client",
            GoBuild::V048 | GoBuild::Current => "3  ours server -> go-current client",
        };
        let go_label = match which {
            GoBuild::Old => "go-old client",
            GoBuild::V048 | GoBuild::Current => "go-current client",
        };
        println!("\n== {label}");
        let seed = match which {
            GoBuild::Old => OLD_SEED,
            GoBuild::V048 | GoBuild::Current => CURRENT_SEED,
        };
        let go_id = go_peer_id_for_seed(seed);
        let mut node = RustNode::start(
            Keypair::generate_ed25519(),
            NodeOptions {
                credit_wait_warning: Some(CREDIT_WAIT_WARNING),
                reset_on_drop: args.ours_way == "reset",
                ..Default::default()
            },
        );
        let ours = node.listen().await;
        let proxy = proxy(args, socket_of(&ours)).await;
        let via = libp2p_quinn::to_multiaddr(proxy.local_addr())
            .with_p2p(node.peer_id)
            .unwrap();
        let mut go = GoPeer::spawn(
            which,
            go_label,
            &args_of(&[
                "--seed",
                &seed.to_string(),
                "--mode",
                "serve",
                "--dial",
                &via.to_string(),
            ]),
        );
        node.connected(Some(go_id), Duration::from_secs(30)).await;
        println!(
            "   connected: ours {} <- {} {go_id}",
            node.peer_id,
            which.dir_name()
        );
        let warnings_before = warnings().len();
        let storm_started = Instant::now();
        let report = our_storm(&node, go_id, args).await;
        let verdict = if report.blocked > 0 {
            match first_blocked(&report) {
                Some(i) => format!("BLOCKED: the first open to block was stream {i} (0-based)"),
                None => "BLOCKED".to_string(),
            }
        } else {
            "no block".to_string()
        };
        let mut line = format!("{label}: {verdict}; {}", report.line());
        for e in &report.errors {
            println!("   error: {e}");
        }
        for snap in node.snapshots(&go_id) {
            println!(
                "   our ledger: outbound streams still open here {}, tracked {:?}, opened {:?}",
                snap.totals.tracked[1], snap.totals.tracked, snap.totals.opened
            );
        }
        let credit_warnings: Vec<(Instant, String)> = warnings()[warnings_before..]
            .iter()
            .filter(|(_, w)| w.contains("stream credit"))
            .cloned()
            .collect();
        match credit_warnings.first() {
            Some((at, w)) => {
                let names_peer = w.contains(&go_id.to_string());
                let blames_peer = w.contains("the peer holds streams we have closed");
                // The warning comes CREDIT_WAIT_WARNING after the open began to wait.
                let began = at
                    .saturating_duration_since(storm_started)
                    .saturating_sub(CREDIT_WAIT_WARNING);
                line.push_str(&format!(
                    "; first wait for credit began {:.1} s in; our credit warning ({} of them) \
                     names the Go peer: {}, says it holds streams we closed: {}",
                    began.as_secs_f64(),
                    credit_warnings.len(),
                    yes_no(names_peer),
                    yes_no(blames_peer)
                ));
                println!("   first credit warning: {w}");
            }
            None => line.push_str("; no credit warning"),
        }
        println!("{line}");
        println!("   {}", proxy_line(&proxy));
        go.shutdown().await;
        line
    }

    fn yes_no(b: bool) -> &'static str {
        if b {
            "yes"
        } else {
            "NO"
        }
    }

    // -----------------------------------------------------------------------------------------
    // Our warnings, kept for the summary

    /// When each warning came, and its message.
    static WARNINGS: Mutex<Vec<(Instant, String)>> = Mutex::new(Vec::new());

    fn warnings() -> Vec<(Instant, String)> {
        WARNINGS.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps the message of every warning libp2p-quinn logs, whatever `RUST_LOG` says.
    struct WarningLog;

    impl<S: tracing::Subscriber> Layer<S> for WarningLog {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let meta = event.metadata();
            if *meta.level() != tracing::Level::WARN || !meta.target().starts_with("libp2p_quinn") {
                return;
            }
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            WARNINGS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((Instant::now(), message.0));
        }
    }
}
