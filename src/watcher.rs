//! The watcher: one task per transport that sees what QUIC frees after the application has let
//! go, answers a peer's STOP_SENDING on streams that are otherwise done, lets settled streams
//! leave the ledger, and raises leak warnings, for all of the transport's connections.
//!
//! It exists because the interesting moments of a stream's life happen when nobody polls it:
//! the peer acknowledges our FIN after the handle was dropped, or stops our send half while
//! our application holds a stream it has finished reading. Streams ask for a look
//! ([`Shared::queue`]); the watcher looks at them in batches, a little later, when most
//! request/response streams are long gone and acknowledged, so that the application's hot
//! path never waits on it. One task serves every connection, so that a batch gathers the
//! streams of all of them: with many connections each doing a little, a watcher per
//! connection would wake once per stream. It is spawned with the transport's first tracked
//! stream and ends when the transport and all its connections are gone.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, Weak,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{future::BoxFuture, stream::FuturesUnordered, Future, FutureExt, StreamExt};
use quinn::{StoppedError, VarInt};
use tokio::{
    sync::{
        mpsc::{UnboundedReceiver, UnboundedSender},
        Notify,
    },
    time::Instant,
};

use crate::{
    connection::Shared,
    ledger::{HalfState, LeakKind},
    stream::{self, Cell, Look, WatchEnd},
};

/// How often the watcher takes the connections that asked for a look, while any have.
const TICK: Duration = Duration::from_millis(10);

/// How many ticks a request waits before its look: 20–30 ms after it was made, long enough
/// that the acknowledgements of a request/response stream have arrived by then.
const AGE_TICKS: usize = 2;

/// What the mailbox carries: a connection with its first tracked stream, to wait for its end
/// and scan for leaks from now on.
type Track = (Weak<Shared>, quinn::Connection);

/// A transport's handle to its watcher task, spawned on first use. Cheap to clone; the task
/// runs while any clone is alive (the transport, its `Ledgers` handles, every connection) or
/// anything is left to watch.
#[derive(Clone)]
pub(crate) struct Watcher {
    inner: Arc<Inner>,
}

struct Inner {
    mailbox: OnceLock<UnboundedSender<Track>>,
    requests: Arc<Requests>,
    /// The transport's `stream_leak_warning`: the task scans for leaks every quarter of it
    /// (between 10 ms and 5 s).
    leak_threshold: Duration,
    /// Whether we have said that the task is gone.
    gone: AtomicBool,
}

/// The connections that asked for a look since the watcher's last tick. A plain list under a
/// lock rather than the mailbox: a busy transport asks thousands of times a second, and only
/// the first request after a tick needs to wake the task.
#[derive(Default)]
struct Requests {
    asked: Mutex<Vec<Weak<Shared>>>,
    wake: Notify,
    /// Set when the task ends, however it ends (its runtime shut down, or it panicked).
    ended: AtomicBool,
}

impl Requests {
    fn asked(&self) -> MutexGuard<'_, Vec<Weak<Shared>>> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Watcher {
    pub(crate) fn new(leak_threshold: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                mailbox: OnceLock::new(),
                requests: Arc::default(),
                leak_threshold,
                gone: AtomicBool::new(false),
            }),
        }
    }

    /// A connection's first tracked stream: watch the connection from now on, spawning the
    /// task if this is the transport's first.
    pub(crate) fn track(&self, shared: Weak<Shared>, connection: quinn::Connection) {
        let inner = &*self.inner;
        let mailbox = inner.mailbox.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(run(rx, inner.requests.clone(), inner.leak_threshold));
            tx
        });
        if mailbox.send((shared, connection)).is_err() {
            self.say_gone();
        }
    }

    /// A connection has queued streams for a look (its first tracked stream has been sent
    /// with [`Watcher::track`], which spawned the task).
    pub(crate) fn ask(&self, shared: Weak<Shared>) {
        let requests = &*self.inner.requests;
        if requests.ended.load(Ordering::Acquire) {
            return self.say_gone();
        }
        let first = {
            let mut asked = requests.asked();
            asked.push(shared);
            asked.len() == 1
        };
        if first {
            requests.wake.notify_one();
        }
    }

    fn say_gone(&self) {
        if !self.inner.gone.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the stream watcher task is gone (its runtime shut down, or it panicked): \
                 dropped streams that QUIC still held no longer leave the ledger, and leaks \
                 are no longer reported"
            );
        }
    }
}

impl Default for Watcher {
    fn default() -> Self {
        Self::new(crate::config::DEFAULT_STREAM_LEAK_WARNING)
    }
}

/// A send half watched until QUIC frees it, the peer stops it, or we reset it.
pub(crate) struct Watch {
    /// quinn's `SendStream::stopped()`.
    stopped: BoxFuture<'static, Result<Option<VarInt>, StoppedError>>,
    cell: Arc<Cell>,
    shared: Weak<Shared>,
}

impl Watch {
    pub(crate) fn new(
        stopped: BoxFuture<'static, Result<Option<VarInt>, StoppedError>>,
        cell: Arc<Cell>,
        shared: Weak<Shared>,
    ) -> Self {
        Self {
            stopped,
            cell,
            shared,
        }
    }
}

impl Future for Watch {
    /// The connection, the stream, and how its send half's watch ended.
    type Output = (Weak<Shared>, Arc<Cell>, WatchEnd);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Checked first, so that a half reset before we ever looked never registers with
        // quinn: quinn would not report the reset's acknowledgement.
        let ended = if self.cell.lock().reset_or_register(cx.waker()) {
            WatchEnd::ResetByUs
        } else {
            match futures::ready!(self.stopped.as_mut().poll(cx)) {
                Ok(None) => WatchEnd::Acknowledged,
                Ok(Some(code)) => WatchEnd::StoppedByPeer(code.into_inner()),
                Err(_) => WatchEnd::ConnectionLost,
            }
        };
        Poll::Ready((self.shared.clone(), self.cell.clone(), ended))
    }
}

/// A connection's end, as the watcher waits for it.
type Closed = BoxFuture<'static, (Weak<Shared>, quinn::ConnectionError)>;

/// Run until the mailbox closes (the transport and every connection are gone) and nothing is
/// left to watch.
async fn run(
    mut mailbox: UnboundedReceiver<Track>,
    requests: Arc<Requests>,
    leak_threshold: Duration,
) {
    // However the task ends, later requests are not left to pile up.
    let _ended = Ended(requests.clone());
    let scan_every = (leak_threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    // The connections with tracked streams, and their ends.
    let mut tracked: Vec<Weak<Shared>> = Vec::new();
    let mut closed: FuturesUnordered<Closed> = FuturesUnordered::new();
    let mut watched: FuturesUnordered<Watch> = FuturesUnordered::new();
    // The requests of the last ticks, oldest first, and emptied lists to reuse.
    let mut ticks: VecDeque<Vec<Weak<Shared>>> = VecDeque::new();
    let mut spare: Vec<Vec<Weak<Shared>>> = Vec::new();
    let mut scratch = Scratch::default();
    let mut open = true;
    // One timer serves both the next leak scan and, while requests wait, the next tick.
    let mut next_scan = Instant::now() + scan_every;
    let mut next_tick: Option<Instant> = None;
    let timer = tokio::time::sleep_until(next_scan);
    tokio::pin!(timer);
    while open || !closed.is_empty() || !watched.is_empty() {
        let deadline = next_tick.map_or(next_scan, |at| at.min(next_scan));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            message = mailbox.recv(), if open => match message {
                Some((shared, connection)) => {
                    tracked.push(shared.clone());
                    closed.push(async move { (shared, connection.closed().await) }.boxed());
                }
                None => open = false,
            },
            () = requests.wake.notified() => {
                next_tick.get_or_insert_with(|| Instant::now() + TICK);
            }
            // Only while there is something to scan or to look at.
            () = &mut timer, if !tracked.is_empty() || next_tick.is_some() => {
                let now = Instant::now();
                if next_tick.is_some_and(|at| at <= now) {
                    let mut fresh = spare.pop().unwrap_or_default();
                    std::mem::swap(&mut fresh, &mut *requests.asked());
                    ticks.push_back(fresh);
                    if ticks.len() > AGE_TICKS {
                        let mut due = ticks.pop_front().unwrap_or_default();
                        // The ledger's clock is the system's, whatever tokio's timer says.
                        let stamp = std::time::Instant::now();
                        for shared in due.drain(..).filter_map(|s| s.upgrade()) {
                            look(&shared, stamp, &mut watched, &mut scratch);
                        }
                        spare.push(due);
                    }
                    // Tick on while requests wait; a request after the last tick wakes us.
                    next_tick = ticks.iter().any(|t| !t.is_empty()).then(|| now + TICK);
                }
                if next_scan <= now {
                    next_scan = now + scan_every;
                    tracked.retain(|s| match s.upgrade() {
                        Some(shared) => {
                            report_leaks(&shared);
                            shared.free_departed();
                            true
                        }
                        None => false,
                    });
                }
            }
            Some((shared, reason)) = closed.next(), if !closed.is_empty() => {
                tracked.retain(|s| !s.ptr_eq(&shared));
                if let Some(shared) = shared.upgrade() {
                    tracing::debug!(parent: &shared.span, %reason, "connection closed");
                    shared.connection_closed();
                }
            }
            Some((shared, cell, ended)) = watched.next(), if !watched.is_empty() => {
                let Some(shared) = shared.upgrade() else { continue };
                shared.unwatched();
                if stream::watch_ended(&shared, &cell, ended) {
                    shared.release_one(cell);
                }
            }
        }
    }
}

/// Marks the requests as no longer served when the task ends.
struct Ended(Arc<Requests>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Release);
        self.0.asked().clear();
    }
}

/// The watcher's buffers for one connection's part of a batch, kept from batch to batch.
#[derive(Default)]
struct Scratch {
    queued: Vec<Arc<Cell>>,
    settled: Vec<Arc<Cell>>,
}

/// Look at every stream a connection queued: let the settled go, watch those QUIC still holds.
fn look(
    shared: &Shared,
    now: std::time::Instant,
    watched: &mut FuturesUnordered<Watch>,
    scratch: &mut Scratch,
) {
    let now = shared.clock.stamp(now);
    shared.take_queued(&mut scratch.queued);
    for cell in scratch.queued.drain(..) {
        match stream::look(shared, &cell, now) {
            Look::Settled => scratch.settled.push(cell),
            // Queued for the next batch: this one is taken already.
            Look::Again => shared.queue(&cell),
            Look::Watch(watch) => {
                // Counted before it is polled, so that its decrement can never come first.
                shared.watching();
                watched.push(watch);
            }
            Look::Wait => {}
        }
    }
    if !scratch.settled.is_empty() {
        shared.release(&mut scratch.settled);
        // Those no opener took since the last release.
        scratch.settled.clear();
    }
}

fn report_leaks(shared: &Shared) {
    for (s, kind) in shared.suspects() {
        let open_halves = match (s.send, s.recv) {
            (HalfState::Open, HalfState::Open) => "both halves",
            (HalfState::Open, _) => "the send half",
            (_, HalfState::Open) => "the receive half",
            _ if s.handle_alive => "no half, yet the handle is kept",
            _ => "no half (waiting for the peer's acknowledgement)",
        };
        let what = match kind {
            LeakKind::HeldAfterDrop => "dropped but still held by QUIC",
            LeakKind::IdleHandle => "held by the application and idle",
        };
        tracing::warn!(
            parent: &shared.span,
            peer = %shared.peer,
            stream = s.id,
            direction = %s.direction,
            age = ?s.age,
            send = %s.send,
            recv = %s.recv,
            kind = kind.as_str(),
            "possible stream leak: {} stream {} to {} is {} after {:?}; open: {}",
            s.direction,
            s.id,
            shared.peer,
            what,
            s.age,
            open_halves,
        );
        #[cfg(feature = "metrics")]
        if let Some(m) = &shared.config.metrics {
            m.leak_warning(kind);
        }
    }
}
