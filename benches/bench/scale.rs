//! The scale workload.

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::future;
use libp2p_core::transport::PortUse;
use tokio::task::JoinSet;

use super::{
    exchange::exchange_on,
    process::{cpu_time, udp_receive_drops},
    share, step,
    transport::{dial_many, Conn, Dialer, Keys, Server},
    turn_order, Kind, Metric, STEP, STUCK, TURNS,
};

/// `conns` connections to one listener, each doing `per_conn` sequential exchanges, all at
/// once; only the exchanges are timed. Counts the exchanges that failed and the opens that
/// waited past [`STUCK`]: the failure modes of a transport that leaks stream credit or stalls
/// under load. The
/// transports of `kinds` each dial their connections first, then take turns of a tenth of
/// the exchanges (every connection at once, the first transport of each turn rotating),
/// timed turn by turn, as [`churns`] does and for the same reason.
pub(super) async fn scales(
    kinds: &[Kind],
    keys: &Keys,
    conns: usize,
    per_conn: usize,
) -> Vec<io::Result<Vec<(Metric, f64)>>> {
    let mut fleets = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        fleets.push(Fleet::dial(kind, keys, conns).await);
    }
    for turn in 0..TURNS {
        let this_turn = share(per_conn, TURNS, turn);
        for i in turn_order(turn, kinds.len()) {
            if let Ok(fleet) = &mut fleets[i] {
                fleet.run(this_turn).await;
            }
        }
    }
    let mut results = Vec::with_capacity(kinds.len());
    for fleet in fleets {
        results.push(match fleet {
            Ok(fleet) => fleet.finish().await,
            Err(e) => Err(e),
        });
    }
    results
}

/// One transport's side of [`scales`]: its listener, its connections, and what they did.
struct Fleet {
    server: Server,
    connected: Vec<Conn>,
    dial_failed: usize,
    completed: Arc<AtomicU64>,
    stuck: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    wall: Duration,
    cpu: Duration,
    drops: f64,
    failure: Option<io::Error>,
}

impl Fleet {
    async fn dial(kind: Kind, keys: &Keys, conns: usize) -> io::Result<Self> {
        let server = Server::start(kind, &keys.server).await?;
        let mut dialer = Dialer::new(kind, &keys.client, PortUse::Reuse);
        let (connected, dial_failed): (Vec<_>, Vec<_>) =
            dial_many(&mut dialer, server.addr(), conns)
                .await
                .into_iter()
                .partition(Result::is_ok);
        if let Some(Err(first)) = dial_failed.first() {
            // The count is a metric; the reason goes to stderr, where it does not mix with
            // the machine-readable lines.
            eprintln!(
                "{} scale: {} of {conns} dials failed, the first with: {first}",
                kind.name(),
                dial_failed.len()
            );
        }
        Ok(Self {
            server,
            connected: connected.into_iter().flatten().collect(),
            dial_failed: dial_failed.len(),
            completed: Arc::default(),
            stuck: Arc::default(),
            errors: Arc::default(),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            drops: 0.0,
            failure: None,
        })
    }

    /// `per_conn` exchanges on every connection at once, one after another on each.
    async fn run(&mut self, per_conn: usize) {
        if self.failure.is_some() {
            return;
        }
        let drops = udp_receive_drops();
        let cpu = cpu_time();
        let started = Instant::now();
        let mut workers = JoinSet::new();
        for conn in &self.connected {
            let opener = conn.opener();
            let (completed, stuck, errors) = (
                self.completed.clone(),
                self.stuck.clone(),
                self.errors.clone(),
            );
            workers.spawn(async move {
                for _ in 0..per_conn {
                    let open_started = Instant::now();
                    let opened = tokio::time::timeout(STEP, opener.open()).await;
                    if open_started.elapsed() > STUCK {
                        stuck.fetch_add(1, Ordering::Relaxed);
                    }
                    let outcome = match opened {
                        Ok(Ok(stream)) => step("exchange", exchange_on(stream)).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(io::ErrorKind::TimedOut.into()),
                    };
                    let counter = if outcome.is_ok() { &completed } else { &errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while let Some(result) = workers.join_next().await {
            if let Err(e) = result {
                self.failure = Some(io::Error::other(e));
            }
        }
        self.wall += started.elapsed();
        self.cpu += cpu_time() - cpu;
        self.drops += udp_receive_drops() - drops;
    }

    async fn finish(self) -> io::Result<Vec<(Metric, f64)>> {
        future::join_all(self.connected.into_iter().map(Conn::close)).await;
        self.server.shutdown().await;
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        let completed = self.completed.load(Ordering::Relaxed) as f64;
        Ok(vec![
            (Metric::Scale, completed / self.wall.as_secs_f64()),
            (
                Metric::ScaleCpu,
                self.cpu.as_secs_f64() * 1e6 / completed.max(1.0),
            ),
            (
                Metric::ScaleFailed,
                self.errors.load(Ordering::Relaxed) as f64,
            ),
            (
                Metric::ScaleStuck,
                self.stuck.load(Ordering::Relaxed) as f64,
            ),
            (Metric::ScaleDialFailed, self.dial_failed as f64),
            (Metric::ScaleUdpDrops, self.drops),
        ])
    }
}
