//! The workload: exchanges, their handlers, the openers' loops and the long-lived streams.

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::{channel::mpsc, AsyncReadExt, AsyncWriteExt, StreamExt};
use tokio::{sync::watch, task::JoinSet};

use super::{
    connection::{Opener, Substream},
    EXCHANGE_TIMEOUT, GOSSIP, GOSSIP_EVERY, REPLY, REQUEST,
};

/// Counters shared by every task of a run.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) completed: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) error_samples: Mutex<Vec<String>>,
    pub(super) blocked: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) refused_replies: AtomicU64,
    pub(super) slowest_in_interval_us: AtomicU64,
    pub(super) slowest_us: AtomicU64,
    pub(super) gossip_messages: AtomicU64,
    pub(super) gossip_max_gap_us: AtomicU64,
}

impl Stats {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.error_samples.lock().unwrap();
        if samples.len() < 5 {
            samples.push(what);
        }
    }

    pub(super) fn open_took(&self, waited: Duration) {
        let us = waited.as_micros() as u64;
        self.slowest_in_interval_us.fetch_max(us, Ordering::Relaxed);
        self.slowest_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// The answer to every accepted stream: read the request to the end, reply, close, drop.
async fn handle(mut stream: Substream, stats: Arc<Stats>) {
    let work = async {
        let mut request = Vec::new();
        (&mut stream).take(1024).read_to_end(&mut request).await?;
        if request != REQUEST {
            return Err(io::Error::other(format!("unexpected request {request:?}")));
        }
        if stream.write_all(REPLY).await.is_err() || stream.close().await.is_err() {
            // The fire-and-forget opener stopped reading (STOP_SENDING).
            stats.refused_replies.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => stats.error(format!("handler: {e}")),
        Err(_) => stats.error("handler timed out".into()),
    }
}

pub(super) async fn accept_loop(
    mut inbound: mpsc::UnboundedReceiver<Substream>,
    stats: Arc<Stats>,
) {
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            stream = inbound.next() => match stream {
                Some(stream) => {
                    handlers.spawn(handle(stream, stats.clone()));
                }
                None => break,
            },
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
        }
    }
    while handlers.join_next().await.is_some() {}
}

/// Open a stream and use it: write 8 bytes and close; then either drop it at once
/// (`fire_and_forget`, the incident's server) or read the 8-byte reply to the end first.
async fn exchange(opener: Opener, fire_and_forget: bool, stats: Arc<Stats>, threshold: Duration) {
    let started = Instant::now();
    let mut reply = opener.open();
    let opened = match tokio::time::timeout(threshold, &mut reply).await {
        Ok(opened) => opened,
        Err(_) => {
            stats.blocked.fetch_add(1, Ordering::Relaxed);
            reply.await
        }
    };
    stats.open_took(started.elapsed());
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return stats.error(format!("open: {e}")),
        Err(_) => return stats.error("open: connection driver gone".into()),
    };
    let work = async {
        stream.write_all(REQUEST).await?;
        stream.close().await?;
        if !fire_and_forget {
            let mut answer = Vec::new();
            (&mut stream).take(1024).read_to_end(&mut answer).await?;
            if answer != REPLY {
                return Err(io::Error::other(format!("unexpected reply {answer:?}")));
            }
        }
        Ok::<_, io::Error>(())
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, work).await {
        Ok(Ok(())) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => stats.error(format!(
            "{} exchange: {e}",
            if fire_and_forget {
                "fire-and-forget"
            } else {
                "request/response"
            }
        )),
        Err(_) => stats.error("exchange timed out".into()),
    }
}

/// How an opener mixes its exchanges.
#[derive(Clone, Copy)]
pub(super) enum Mix {
    /// The incident's server: every other stream is dropped without reading the answer.
    Incident,
    /// Request/response only.
    RequestResponse,
}

pub(super) struct OpenerLoop {
    pub(super) opener: Opener,
    pub(super) mix: Mix,
    pub(super) period: Duration,
    pub(super) phase: Duration,
    /// Ticks are skipped while this many exchanges are in flight.
    pub(super) cap: usize,
    pub(super) threshold: Duration,
}

impl OpenerLoop {
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>, stats: Arc<Stats>) {
        let mut exchanges = JoinSet::new();
        let start = tokio::time::Instant::now() + self.phase;
        let mut tick = tokio::time::interval_at(start, self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    while exchanges.try_join_next().is_some() {}
                    if exchanges.len() >= self.cap {
                        stats.skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let fire_and_forget = matches!(self.mix, Mix::Incident) && n.is_multiple_of(2);
                    n += 1;
                    exchanges.spawn(exchange(
                        self.opener.clone(),
                        fire_and_forget,
                        stats.clone(),
                        self.threshold,
                    ));
                }
                _ = stopped(&mut stop) => break,
            }
        }
        // Let the exchanges in flight finish (the caller bounds this).
        while exchanges.join_next().await.is_some() {}
    }
}

/// Resolves once the workload is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The long-lived stream: send a message every 100 ms and read the peer's until the workload
/// stops; then close our half and read the peer's to its end.
pub(super) async fn gossip(stream: Substream, stop: watch::Receiver<bool>, stats: Arc<Stats>) {
    let (mut reader, mut writer) = stream.split();
    let mut stop_writer = stop.clone();
    let write = async {
        let mut tick = tokio::time::interval(GOSSIP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = writer.write_all(GOSSIP).await {
                        stats.error(format!("gossip write: {e}"));
                        return;
                    }
                }
                _ = stopped(&mut stop_writer) => break,
            }
        }
        if let Err(e) = writer.close().await {
            stats.error(format!("gossip close: {e}"));
        }
    };
    let read = async {
        let mut message = [0u8; 8];
        let mut last: Option<Instant> = None;
        loop {
            match reader.read_exact(&mut message).await {
                Ok(()) => {
                    let now = Instant::now();
                    if let Some(last) = last.filter(|_| !*stop.borrow()) {
                        let gap = now.duration_since(last).as_micros() as u64;
                        stats.gossip_max_gap_us.fetch_max(gap, Ordering::Relaxed);
                    }
                    last = Some(now);
                    stats.gossip_messages.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    stats.error(format!("gossip read: {e}"));
                    break;
                }
            }
        }
    };
    futures::join!(write, read);
}
