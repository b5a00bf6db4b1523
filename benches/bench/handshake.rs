//! The handshake workload.

use std::{io, time::Instant};

use libp2p_core::transport::PortUse;

use super::{
    report::percentile,
    step,
    transport::{Dialer, Keys, Server},
    turn_order, Kind, Metric,
};

/// Median and p99 of the time from dial to a connection the dialer can use, with fresh
/// transports (fresh sockets, fresh endpoints) for every handshake. Making the transports is
/// not timed; what the dial itself does (binding a socket, for all of them) is.
///
/// The transports take turns dial by dial, the first of each turn rotating, in one runtime:
/// a handshake takes a few milliseconds, and this machine's speed drifts over seconds, so
/// 200 dials of one transport after 200 of another measured the drift (per-round ratios of
/// two builds of the same code spread over 0.82–1.13). Every dial still starts from nothing
/// and is torn down before the next, so the transports do not share anything but the clock.
pub(super) async fn handshakes(
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
