//! Replays the incident's workload (a peer opening and closing streams fast, over a lossy
//! network) between go-libp2p peers and libp2p-quinn, and says who blocks.
//!
//! The old Go peer (`interop/go-peer-old`: go-libp2p v0.38.2, quic-go v0.48.2) still has quic-go
//! issue 4803: a RESET_STREAM that it sends and that gets lost is never accounted, so the stream
//! never completes on its side and it never gives the opener its stream credit back. Built with
//! Go >= 1.26 it cannot listen (quic-go panics in the handshake), so it always dials here.
//!
//! Scenarios, each through a seeded proxy that loses `--loss` of the datagrams each way:
//!
//! 1. Go to Go. (a) The current Go peer listens and storms into the old one, which dialed
//!    (the old peer is the acceptor, the side with the bug). (b) The old peer dials and storms
//!    into the current one.
//! 2. Ours to the old Go peer: it dials us, we storm into it. Should it withhold credit, our
//!    `credit_wait_warning` (2 s here) names it.
//! 3. Ours to the current Go peer: it dials us, we storm into it. No open should block.
//!
//! ```text
//! cargo run --example incident_replay --features test-util
//! cargo run --example incident_replay --features test-util -- --count 5120 --scenario 2
//! RUST_LOG=libp2p_quinn=debug cargo run --example incident_replay --features test-util
//! ```
//!
//! Needs Go >= 1.25.7 on PATH; the Go peers are built into the system temp dir.

#[cfg(feature = "test-util")]
#[path = "../tests/common/go.rs"]
mod go;

#[cfg(not(feature = "test-util"))]
fn main() {
    eprintln!(
        "incident_replay needs the lossy proxy: \
         cargo run --example incident_replay --features test-util"
    );
    std::process::exit(2);
}

#[cfg(feature = "test-util")]
fn main() {
    replay::main();
}

#[cfg(feature = "test-util")]
mod replay {
    use std::time::Duration;

    use clap::Parser;
    use libp2p::Multiaddr;
    use libp2p_identity::Keypair;
    use libp2p_quinn::test_util::{Impairment, UdpProxy};
    use tracing_subscriber::EnvFilter;

    use crate::go::*;

    #[derive(Parser, Debug)]
    #[command(about = "Replay the incident's stream storm between go-libp2p and libp2p-quinn")]
    struct Args {
        /// Streams per storm.
        #[arg(long, default_value_t = 2560)]
        count: u64,
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
        /// How the Go storms end each stream: close (CancelRead + FIN, as in the incident),
        /// closewrite or reset (which makes the accepting side send a RESET_STREAM every time).
        #[arg(long, default_value = "close")]
        go_close: String,
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

    pub fn main() {
        let args = Args::parse();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
            )
            .try_init();
        // Build before the clock starts.
        go_peer_binary(GoBuild::Current);
        go_peer_binary(GoBuild::Old);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut summary = Vec::new();
        runtime.block_on(async {
            let run = |n: u8| args.scenario.is_none_or(|s| s == n);
            if run(1) {
                summary.push(go_to_go(&args, true).await);
                summary.push(go_to_go(&args, false).await);
            }
            if run(2) {
                summary.push(ours_to_go(&args, GoBuild::Old).await);
            }
            if run(3) {
                summary.push(ours_to_go(&args, GoBuild::Current).await);
            }
        });
        println!(
            "\n== summary ({} streams per storm, {}% loss each way, proxy seed {}, go close {}, \
             ours {})",
            args.count,
            args.loss * 100.0,
            args.seed,
            args.go_close,
            args.ours_way
        );
        for line in summary {
            println!("{line}");
        }
    }

    fn args_of(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn storm_args(args: &Args) -> Vec<String> {
        args_of(&[
            "--mode",
            "storm",
            "--count",
            &args.count.to_string(),
            "--close",
            &args.go_close,
            "--open-timeout",
            &format!("{}ms", args.open_timeout.as_millis()),
        ])
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

    /// Follow a Go peer's storm: until its `storm` line, or, once an open has blocked, a little
    /// longer (a permanent block would take `count` x the open timeout to finish).
    async fn follow_go_storm(label: &str, go: &mut GoPeer, args: &Args) -> String {
        let mut done = 0.0;
        let mut blocked_seen = 0;
        let mut first_block: Option<std::time::Instant> = None;
        let grace = args.open_timeout * 3;
        loop {
            if first_block.is_some_and(|t| t.elapsed() > grace) {
                return format!(
                    "{label}: BLOCKED: {blocked_seen} open(s) hit the {:?} open timeout; {done} of \
                     {} streams done when we stopped watching",
                    args.open_timeout, args.count
                );
            }
            let Some(line) = go.next_line(Duration::from_secs(120)).await else {
                return format!("{label}: no output for 2 min ({done} streams done)");
            };
            match line.event() {
                "storm" => {
                    return format!(
                        "{label}: streams {} ok {} failed {} blocked {}, slowest open {:.1} ms, \
                         elapsed {:.0} ms",
                        line.num("count"),
                        line.num("ok"),
                        line.num("failed"),
                        line.num("blocked"),
                        line.num("slowest_open_ms"),
                        line.num("elapsed_ms")
                    )
                }
                "storm_progress" => {
                    done = line.num("done");
                    println!("   [{}] {done} streams done", go.label);
                }
                "error" if line.str("what").is_some_and(|w| w.contains("blocked=true")) => {
                    blocked_seen += 1;
                    first_block.get_or_insert_with(std::time::Instant::now);
                }
                _ => {}
            }
        }
    }

    /// Our storm, in rounds of 16 streams, stopping after the first round with a blocked open
    /// (a permanent block would take `count` x the open timeout to finish).
    async fn our_storm(node: &RustNode, peer: libp2p_identity::PeerId, args: &Args) -> StormReport {
        let mut total = StormReport::default();
        while total.count < args.count {
            let n = (args.count - total.count).min(16);
            let r = if args.ours_way == "reset" {
                reset_storm(node, peer, n, args.open_timeout).await
            } else {
                storm_to(&node.control, peer, n, 1, args.open_timeout).await
            };
            total.count += r.count;
            total.ok += r.ok;
            total.failed += r.failed;
            total.blocked += r.blocked;
            total.close_errors += r.close_errors;
            total.slowest_open = total.slowest_open.max(r.slowest_open);
            total.slowest_close = total.slowest_close.max(r.slowest_close);
            total.elapsed += r.elapsed;
            total
                .errors
                .extend(r.errors.into_iter().take(10 - total.errors.len().min(10)));
            if total.count % 256 == 0 || r.blocked > 0 {
                println!(
                    "   [ours] {} streams done, {} blocked",
                    total.count, total.blocked
                );
            }
            if r.blocked > 0 {
                println!("   [ours] stopping: opens block");
                break;
            }
        }
        total
    }

    /// `count` streams: open, write 8 bytes, drop (with `reset_on_drop`: RESET_STREAM +
    /// STOP_SENDING).
    async fn reset_storm(
        node: &RustNode,
        peer: libp2p_identity::PeerId,
        count: u64,
        open_timeout: Duration,
    ) -> StormReport {
        use futures::AsyncWriteExt;
        let mut control = node.control.clone();
        let mut r = StormReport {
            count,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        for i in 0..count {
            let t = std::time::Instant::now();
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

    /// Scenario 1: the current Go peer listens behind the proxy; the old one dials. With
    /// `old_accepts`, the current peer storms into the old one, else the other way round.
    async fn go_to_go(args: &Args, old_accepts: bool) -> String {
        let label = if old_accepts {
            "1a go-current -> go-old (old accepts)"
        } else {
            "1b go-old -> go-current (current accepts)"
        };
        println!("\n== {label}");
        let mut listener_args = args_of(&[
            "--seed",
            &CURRENT_SEED.to_string(),
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ]);
        let mut dialer_args = args_of(&["--seed", &OLD_SEED.to_string()]);
        if old_accepts {
            listener_args.extend(storm_args(args));
        } else {
            dialer_args.extend(storm_args(args));
        }
        let mut current = GoPeer::spawn(GoBuild::Current, "go-current", &listener_args);
        let listening = current.expect("listening", Duration::from_secs(30)).await;
        let addr: Multiaddr = listening.str("addr").unwrap().parse().unwrap();
        let proxy = proxy(args, socket_of(&addr)).await;
        let via = libp2p_quinn::to_multiaddr(proxy.local_addr())
            .with_p2p(go_peer_id_for_seed(CURRENT_SEED))
            .unwrap();
        dialer_args.extend(["--dial".to_string(), via.to_string()]);
        let mut old = GoPeer::spawn(GoBuild::Old, "go-old", &dialer_args);
        let storming = if old_accepts { &mut current } else { &mut old };
        let line = follow_go_storm(label, storming, args).await;
        println!("{line}");
        println!("   proxy: {:?}", proxy.stats());
        current.shutdown().await;
        old.shutdown().await;
        line
    }

    /// Scenarios 2 and 3: the Go peer dials us through the proxy; we storm into it.
    async fn ours_to_go(args: &Args, which: GoBuild) -> String {
        let label = match which {
            GoBuild::Old => "2  ours -> go-old",
            GoBuild::Current => "3  ours -> go-current",
        };
        println!("\n== {label}");
        let seed = match which {
            GoBuild::Old => OLD_SEED,
            GoBuild::Current => CURRENT_SEED,
        };
        let go_id = go_peer_id_for_seed(seed);
        let mut node = RustNode::start(
            Keypair::generate_ed25519(),
            NodeOptions {
                credit_wait_warning: Some(Duration::from_secs(2)),
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
            which.dir_name(),
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
        let report = our_storm(&node, go_id, args).await;
        let line = format!("{label}: {}", report.line());
        println!("{line}");
        for e in &report.errors {
            println!("   error: {e}");
        }
        for snap in node.snapshots(&go_id) {
            println!(
                "   our ledger: outbound streams still open here {}, tracked {:?}, opened {:?}",
                snap.totals.tracked[1], snap.totals.tracked, snap.totals.opened
            );
        }
        println!("   proxy: {:?}", proxy.stats());
        go.shutdown().await;
        line
    }
}
