//! The memory workload.

use std::io;

use futures::{future, AsyncWriteExt};
use libp2p_core::transport::PortUse;

use super::{
    exchange::exchange,
    process::Memory,
    step,
    transport::{dial_many, Conn, Dialer, Keys, Server},
    Kind, Metric,
};

/// Memory per idle connection and per idle open stream, both ends of each counted (client and
/// server live in this process). A stream's figure includes the small task that serves it on
/// the listener, the same for every transport.
pub(super) async fn memory(
    kind: Kind,
    keys: &Keys,
    conns: usize,
    streams: usize,
) -> io::Result<Vec<(Metric, f64)>> {
    let server = Server::start(kind, &keys.server).await?;
    // One dialing endpoint (socket) for all connections, as a node dialing many peers has.
    let mut dialer = Dialer::new(kind, &keys.client, PortUse::Reuse);
    // A first connection pays for what every later one shares (the dialing endpoint, lazily
    // made tables): it belongs to the baseline.
    let first = step("dial", dialer.dial(server.addr())).await?;
    server.wait_for_connections(1).await?;

    // Idle connections.
    let before = Memory::settled().await;
    let idle = dial_many(&mut dialer, server.addr(), conns)
        .await
        .into_iter()
        .collect::<io::Result<Vec<Conn>>>()?;
    server.wait_for_connections(conns + 1).await?;
    let after = Memory::settled().await;
    let per_conn = after.growth_since(&before, conns);

    // Idle streams, all on the first connection. Its first stream pays for what every later
    // one shares (a watcher task, a lazily made channel): one exchange belongs to the baseline.
    step("exchange", exchange(&first.opener())).await?;
    let before = Memory::settled().await;
    let opener = first.opener();
    let mut held = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut stream = step("open", opener.open()).await?;
        // One byte, so that the stream exists on the listener's side too (a QUIC stream does
        // not until a frame of it arrives).
        stream.write_all(&[1]).await?;
        stream.flush().await?;
        held.push(stream);
    }
    server.wait_for_streams(streams + 1).await?;
    let after = Memory::settled().await;
    let per_stream = after.growth_since(&before, streams);

    drop(held);
    future::join_all(idle.into_iter().map(Conn::close)).await;
    first.close().await;
    server.shutdown().await;
    Ok(vec![
        (Metric::ConnRss, per_conn.rss),
        (Metric::ConnHeap, per_conn.heap),
        (Metric::StreamRss, per_stream.rss),
        (Metric::StreamHeap, per_stream.heap),
    ])
}
