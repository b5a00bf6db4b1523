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
        Arc, OnceLock, Weak,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{future::BoxFuture, stream::FuturesUnordered, Future, FutureExt, StreamExt};
use quinn::{StoppedError, VarInt};
use tokio::{
    sync::mpsc::{UnboundedReceiver, UnboundedSender},
    time::Instant,
};

use crate::{
    connection::Shared,
    ledger::{HalfState, LeakKind},
    stream::{self, Cell, Look, WatchEnd},
};

/// How long after a connection asks for a look the watcher takes it: long enough that the
/// acknowledgements of a request/response stream have arrived by then.
const LOOK_DELAY: Duration = Duration::from_millis(20);

/// The shortest time between two batches: a connection that asks just after one waits for the
/// next rather than getting a batch of its own, so that batches gather many connections.
const BATCH_GAP: Duration = Duration::from_millis(10);

/// What connections tell the watcher.
pub(crate) enum Message {
    /// A connection's first tracked stream: watch the connection for its end, and scan it for
    /// leaks from now on.
    Track(Weak<Shared>, quinn::Connection),
    /// A connection has queued streams for a look.
    Look(Weak<Shared>),
}

/// A transport's handle to its watcher task, spawned on first use. Cheap to clone; the task
/// runs while any clone is alive (the transport, its `Ledgers` handles, every connection) or
/// anything is left to watch.
#[derive(Clone)]
pub(crate) struct Watcher {
    inner: Arc<Inner>,
}

struct Inner {
    mailbox: OnceLock<UnboundedSender<Message>>,
    /// The transport's `stream_leak_warning`: how often the task scans for leaks.
    leak_threshold: Duration,
    /// Whether we have said that the task is gone.
    gone: AtomicBool,
}

impl Watcher {
    pub(crate) fn new(leak_threshold: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                mailbox: OnceLock::new(),
                leak_threshold,
                gone: AtomicBool::new(false),
            }),
        }
    }

    /// Tell the watcher, spawning it if this is the first message.
    pub(crate) fn send(&self, message: Message) {
        let inner = &*self.inner;
        let mailbox = inner.mailbox.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(run(rx, inner.leak_threshold));
            tx
        });
        if mailbox.send(message).is_err() && !inner.gone.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the stream watcher task is gone (its runtime shut down, or it panicked): \
                 dropped streams no longer leave the ledger and leaks are no longer reported"
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
async fn run(mut mailbox: UnboundedReceiver<Message>, leak_threshold: Duration) {
    let scan_every = (leak_threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    // The connections with tracked streams, and their ends.
    let mut tracked: Vec<Weak<Shared>> = Vec::new();
    let mut closed: FuturesUnordered<Closed> = FuturesUnordered::new();
    let mut watched: FuturesUnordered<Watch> = FuturesUnordered::new();
    // The connections that asked for a look, oldest first, with when they asked.
    let mut asked: VecDeque<(Instant, Weak<Shared>)> = VecDeque::new();
    let mut scratch = Scratch::default();
    let mut open = true;
    // One timer serves both the next leak scan and the next batch of looks.
    let mut next_scan = Instant::now() + scan_every;
    let mut last_batch = Instant::now();
    let timer = tokio::time::sleep_until(next_scan);
    tokio::pin!(timer);
    while open || !closed.is_empty() || !watched.is_empty() {
        tokio::select! {
            message = mailbox.recv(), if open => match message {
                Some(Message::Track(shared, connection)) => {
                    tracked.push(shared.clone());
                    closed.push(async move { (shared, connection.closed().await) }.boxed());
                }
                Some(Message::Look(shared)) => asked.push_back((Instant::now(), shared)),
                None => open = false,
            },
            // Only while there is something to scan or to look at.
            () = &mut timer, if !tracked.is_empty() || !asked.is_empty() => {
                let now = Instant::now();
                // Requests are in the order they came, so the due ones are in front.
                let due = asked.partition_point(|(at, _)| *at + LOOK_DELAY <= now);
                if due > 0 {
                    last_batch = now;
                    // The ledger's clock is the system's, whatever tokio's timer says.
                    let stamp = std::time::Instant::now();
                    for (_, shared) in asked.drain(..due) {
                        if let Some(shared) = shared.upgrade() {
                            look(&shared, stamp, &mut watched, &mut scratch);
                        }
                    }
                }
                if next_scan <= now {
                    next_scan = now + scan_every;
                    tracked.retain(|s| match s.upgrade() {
                        Some(shared) => {
                            report_leaks(&shared);
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
                    shared.release([&cell]);
                }
            }
        }
        // The next batch: when the oldest request is due, but not sooner than the gap allows.
        let next_look = asked
            .front()
            .map(|(at, _)| (*at + LOOK_DELAY).max(last_batch + BATCH_GAP));
        let deadline = next_look.map_or(next_scan, |at| at.min(next_scan));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
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
        shared.release(&scratch.settled);
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
