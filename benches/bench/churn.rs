//! The stream churn workloads, sequential and concurrent.

use std::{
    io,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use super::{
    exchange::exchange,
    process::cpu_time,
    share, step,
    transport::{connected, Conn, Keys},
    turn_order, Kind, Metric, TURNS,
};

/// Stream churn: `streams` exchanges on one connection, `tasks` at a time, as streams/s and
/// CPU time per stream. The transports of `kinds` each have their connection and take turns
/// of a tenth of the streams (the first of each turn rotating), timed turn by turn: a
/// transport's 10,000 streams take a second or less, over which this machine's speed drifts
/// by more than the transports differ.
pub(super) async fn churns(
    kinds: &[Kind],
    keys: &Keys,
    streams: usize,
    tasks: usize,
    [rate_metric, cpu_metric]: [Metric; 2],
) -> Vec<io::Result<Vec<(Metric, f64)>>> {
    let mut pairs = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        pairs.push(connected(kind, keys).await);
    }
    // Wall-clock and CPU time spent so far, per kind, or how it failed.
    let mut spent: Vec<io::Result<(Duration, Duration)>> =
        pairs.iter().map(|_| Ok(Default::default())).collect();
    for turn in 0..TURNS {
        let this_turn = share(streams, TURNS, turn);
        for i in turn_order(turn, kinds.len()) {
            let (Ok((_, conn)), Ok((wall, cpu))) = (&pairs[i], &mut spent[i]) else {
                continue;
            };
            let cpu_before = cpu_time();
            let started = Instant::now();
            match churn(conn, this_turn, tasks).await {
                Ok(()) => {
                    *wall += started.elapsed();
                    *cpu += cpu_time() - cpu_before;
                }
                Err(e) => spent[i] = Err(e),
            }
        }
    }
    let mut results = Vec::with_capacity(kinds.len());
    for (pair, spent) in pairs.into_iter().zip(spent) {
        let result = match pair {
            Ok((server, conn)) => {
                conn.close().await;
                server.shutdown().await;
                spent.map(|(wall, cpu)| {
                    let rate = streams as f64 / wall.as_secs_f64();
                    let cpu_us = cpu.as_secs_f64() * 1e6 / streams as f64;
                    vec![(rate_metric, rate), (cpu_metric, cpu_us)]
                })
            }
            Err(e) => Err(e),
        };
        results.push(result);
    }
    results
}

/// `streams` exchanges on `conn`, `tasks` at a time.
async fn churn(conn: &Conn, streams: usize, tasks: usize) -> io::Result<()> {
    let tasks = tasks.clamp(1, streams.max(1));
    let mut workers = JoinSet::new();
    for task in 0..tasks {
        let this_task = share(streams, tasks, task);
        let opener = conn.opener();
        workers.spawn(async move {
            for _ in 0..this_task {
                step("exchange", exchange(&opener)).await?;
            }
            io::Result::Ok(())
        });
    }
    while let Some(result) = workers.join_next().await {
        result.map_err(io::Error::other)??;
    }
    Ok(())
}
