//! How fast the WAN delay line relays before it becomes the bottleneck itself, and how far
//! from its model it delivers at the benchmark's rates. `docs/wan-emulation.md` has the
//! numbers of this machine.
//!
//! ```text
//! cargo run --release --features test-util --example delay_line_ceiling
//! cargo run --release --features test-util --example delay_line_ceiling -- --seconds 2 --sizes 1452
//! ```
//!
//! The ceiling: datagrams with no rate limit (only the continental profile's 30 ms of delay,
//! so that every datagram waits in the line), offered at rising rates, one line per rate; the
//! ceiling is the highest rate received with under 1% loss. The delay error: each profile's
//! path at its own rate, each arrival (by kernel timestamp) against the exact model.

use std::time::Duration;

use clap::Parser;
use libp2p_quinn::test_util::{
    delay_line::probe::{Load, Probe},
    Path,
};

#[derive(Parser)]
struct Args {
    /// Seconds of traffic per step.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Datagram sizes to try, in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [1200, 1452])]
    sizes: Vec<usize>,
    /// Offered rates of the ceiling search, in Mbit/s.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 200, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000])]
    rates: Vec<u64>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs_f64(args.seconds);
    for &size in &args.sizes {
        ceiling(size, &args.rates, duration)?;
    }
    println!("\ndelay error at each profile's rate (1452-byte datagrams, ms against the model)");
    for name in Path::PROFILES {
        let path = Path::profile(name).expect("a known profile");
        let rate = path.rate_bps.expect("profiles have a bottleneck");
        let probe = Probe::run(&path, Load::for_duration(rate, 1452, duration), 1)?;
        let error = probe.delay_error().expect("datagrams arrived");
        println!(
            "{name:>12} {:>5} Mbit/s: min {:.3} median {:.3} p99 {:.3} max {:.3}; loss {:.2}% ({} lost at random), line late > 1 ms: {}, max {:?}",
            rate / 1_000_000,
            error.min,
            error.median,
            error.p99,
            error.max,
            probe.loss() * 100.0,
            probe.stats.lost[0],
            probe.stats.late[0],
            probe.stats.max_late[0],
        );
    }
    Ok(())
}

/// Offers rising rates until two in a row lose 1% or more; prints each, and the most received
/// with under 1% lost.
fn ceiling(size: usize, rates: &[u64], duration: Duration) -> std::io::Result<()> {
    println!("\n{size}-byte datagrams, no rate limit, 30 ms one way");
    println!("offered Mbit/s  sent Mbit/s  received Mbit/s  packets/s  loss %  missed by line/sink  line max late");
    let path = Path::delay_only(Duration::from_millis(30));
    let (mut best, mut failures) = (None, 0);
    for &mbps in rates {
        let load = Load::for_duration(mbps * 1_000_000, size, duration);
        let probe = Probe::run(&path, load, 1)?;
        let received = probe.received_mbps();
        let pps = received * 1e6 / (size as f64 * 8.0);
        // Where the losses were: never read by the line (its socket overflowed), or sent on
        // by the line and never read by the sink.
        let stats = probe.stats;
        let seen = stats.delivered[0] + stats.lost[0] + stats.queue_full[0];
        let arrived = probe.arrived.iter().flatten().count() as u64;
        println!(
            "{mbps:>14} {:>12.0} {received:>16.0} {pps:>10.0} {:>7.2} {:>10}/{:<9} {:?}",
            probe.offered_mbps(),
            probe.loss() * 100.0,
            load.count as u64 - seen,
            stats.delivered[0].saturating_sub(arrived),
            stats.max_late[0],
        );
        if probe.loss() < 0.01 {
            // The most received, not the last: a source that cannot keep up offers less.
            if best.is_none_or(|(most, _)| received > most) {
                best = Some((received, pps));
            }
            failures = 0;
        } else {
            failures += 1;
            if failures == 2 {
                break;
            }
        }
    }
    if let Some((mbps, pps)) = best {
        println!(
            "ceiling: {mbps:.0} Mbit/s, {pps:.0} packets/s of {size}-byte datagrams with < 1% loss"
        );
    }
    Ok(())
}
