//! The measurements of one line over one path: connection + 1-byte round trip, time to the
//! first MiB, goodput each way; and the path's own limit.

use std::{
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use libp2p::Multiaddr;

use super::node::BoxError;
use super::peers::{self, Impl, Tune};

/// What a single run may take before it counts as failed.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

const MIB: u64 = 1 << 20;

/// Connection + 1-byte round trip: dial, one perf stream asking 1 byte for 1 byte.
pub async fn round_trip(client: Impl, addr: &Multiaddr, tune: Tune) -> Result<Duration, BoxError> {
    let outcome = peers::run(client, addr, 1, 1, tune, RUN_LIMIT).await?;
    check(&outcome, 1, 1)?;
    Ok(outcome.total)
}

/// From the dial until the first MiB of a download has arrived.
pub async fn first_mib(client: Impl, addr: &Multiaddr, tune: Tune) -> Result<Duration, BoxError> {
    let outcome = peers::run(client, addr, 0, 2 * MIB, tune, RUN_LIMIT).await?;
    check(&outcome, 0, 2 * MIB)?;
    outcome.first_mib.ok_or_else(|| "no first-MiB time".into())
}

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Upload,
    Download,
}

/// Goodput of one transfer of `bytes`, in Mbit/s, over the transfer's own time (the
/// connection excluded; the request's round trip included, as in test-plans).
pub async fn goodput(
    client: Impl,
    addr: &Multiaddr,
    direction: Direction,
    bytes: u64,
    tune: Tune,
) -> Result<f64, BoxError> {
    let (up, down) = match direction {
        Direction::Upload => (bytes, 0),
        Direction::Download => (0, bytes),
    };
    let outcome = peers::run(client, addr, up, down, tune, RUN_LIMIT).await?;
    check(&outcome, up, down)?;
    let seconds = outcome.total.saturating_sub(outcome.connect).as_secs_f64();
    Ok(bytes as f64 * 8.0 / seconds / 1e6)
}

fn check(outcome: &peers::Outcome, up: u64, down: u64) -> Result<(), BoxError> {
    if (outcome.upload_bytes, outcome.download_bytes) != (up, down) {
        return Err(format!(
            "moved {}/{} bytes up/down, asked for {up}/{down}",
            outcome.upload_bytes, outcome.download_bytes
        )
        .into());
    }
    Ok(())
}

/// What a path lets through, in Mbit/s of UDP payload: `seconds` of 1,452-byte datagrams
/// sent through `front` (a delay line to `sink`'s address) at 1.5 times `rate`, counted at
/// the sink from the first arrival to the last.
pub fn link_limit(front: SocketAddr, sink: UdpSocket, rate_bps: u64, seconds: f64) -> f64 {
    const SIZE: usize = 1452;
    sink.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    let counter = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (mut bytes, mut first, mut last) = (0u64, None, Instant::now());
        while let Ok(n) = sink.recv(&mut buf) {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            bytes += n as u64;
        }
        let span = first.map_or(0.0, |first| (last - first).as_secs_f64());
        bytes as f64 * 8.0 / span.max(1e-9) / 1e6
    });
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let datagram = [0u8; SIZE];
    // Bursts of 16 datagrams, each burst on time for 1.5 x the rate.
    let burst = Duration::from_secs_f64(16.0 * SIZE as f64 * 8.0 / (1.5 * rate_bps as f64));
    let start = Instant::now();
    let mut next = start;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..16 {
            let _ = sender.send_to(&datagram, front);
        }
        next += burst;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    counter.join().unwrap_or(0.0)
}
