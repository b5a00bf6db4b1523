//! The bulk workload.

use std::{io, time::Instant};

use futures::AsyncWriteExt;

use super::{
    exchange::read_reply,
    process::{cpu_time, udp_receive_drops},
    step,
    transport::{connected, Keys},
    Kind, Metric,
};

/// One stream, `bytes` one way, timed from the open to the receiver's acknowledgement that it
/// read everything.
pub(super) async fn bulk(kind: Kind, keys: &Keys, bytes: u64) -> io::Result<Vec<(Metric, f64)>> {
    let (server, conn) = connected(kind, keys).await?;
    let chunk = vec![0u8; 64 * 1024];
    let drops = udp_receive_drops();
    let cpu = cpu_time();
    let started = Instant::now();
    let mut stream = conn.opener().open().await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    stream.close().await?;
    step("bulk reply", read_reply(&mut stream)).await?;
    let gbits = bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9;
    let cpu_per_gib = (cpu_time() - cpu).as_secs_f64() / (bytes as f64 / (1u64 << 30) as f64);
    let drops = udp_receive_drops() - drops;
    drop(stream);
    conn.close().await;
    server.shutdown().await;
    Ok(vec![
        (Metric::Bulk, gbits),
        (Metric::BulkCpu, cpu_per_gib),
        (Metric::BulkUdpDrops, drops),
    ])
}
