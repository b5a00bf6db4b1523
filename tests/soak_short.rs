#![cfg(feature = "test-util")]

//! A short soak for CI: the incident's topology (3 servers, 5 clients, 15 connections) through
//! seeded proxies losing 2% of the datagrams each way, 20 streams a second per connection and
//! direction, a stream limit of 32, for 45 s (about 46–60 s in all). No open may block and
//! every count must return to zero. `examples/soak/` has the workload; run it with
//! `--nocapture` to see its lines.

// The example's `main` is unused here.
#[path = "../examples/soak/main.rs"]
mod soak;

use std::{path::Path, time::Duration};

use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_connections_churn_streams_without_blocking_or_leaking() {
    let plot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak-short.svg");
    let opts = soak::Opts::parse_from([
        "soak",
        "--duration",
        "45",
        "--rate",
        "20",
        "--loss",
        "0.02",
        "--stream-limit",
        "32",
        "--seed",
        "1",
        "--interval",
        "10",
        "--plot",
        plot.to_str().expect("utf-8 path"),
    ]);
    // Setup, 45 s of workload and at most 10 s of settling: 120 s is a generous bound.
    let summary = tokio::time::timeout(Duration::from_secs(120), soak::soak(opts))
        .await
        .expect("the soak finishes in time")
        .expect("the soak runs");
    println!("{}", summary.line());
    assert_eq!(summary.blocked, 0, "opens blocked: {}", summary.line());
    assert!(
        summary.settled,
        "counts did not return to zero:\n{}",
        summary.leftovers.join("\n")
    );
    assert_eq!(
        summary.errors, 0,
        "exchanges failed: {:?}",
        summary.error_samples
    );
    // The workload did run: 15 connections x 2 directions x 20/s x 45 s = 27,000 exchanges
    // asked for; a loaded 2-core machine still does a good part of them.
    assert!(summary.streams > 5_000, "{}", summary.line());
    assert!(summary.gossip_messages > 0);
    assert!(plot.exists());
}
