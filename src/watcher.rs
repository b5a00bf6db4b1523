//! The per-connection watcher task: it sees what QUIC frees after the application has let go,
//! answers a peer's STOP_SENDING on streams that are otherwise done, lets settled streams leave
//! the ledger, and raises leak warnings.
//!
//! It exists because the interesting moments of a stream's life happen when nobody polls it:
//! the peer acknowledges our FIN after the handle was dropped, or stops our send half while
//! our application holds a stream it has finished reading. Streams ask for a look
//! ([`Shared::queue`]); the watcher looks at them in batches, a little later, when most
//! request/response streams are long gone and acknowledged, so that the application's hot
//! path never waits on it. It is spawned with the connection's first tracked stream.

use std::{
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use futures::{channel::mpsc, future::BoxFuture, stream::FuturesUnordered, Future, StreamExt};
use quinn::{StoppedError, VarInt};

use crate::{
    connection::Shared,
    ledger::{HalfState, LeakKind},
    stream::{self, Cell, Look},
};

/// How long after a stream asks for a look the watcher takes it: long enough that the
/// acknowledgements of a request/response stream have arrived by then.
const LOOK_DELAY: Duration = Duration::from_millis(20);

/// A send half watched until QUIC frees it, the peer stops it, or we reset it.
pub(crate) struct Watch {
    /// quinn's `SendStream::stopped()`.
    stopped: BoxFuture<'static, Result<Option<VarInt>, StoppedError>>,
    cell: Arc<Cell>,
}

impl Watch {
    pub(crate) fn new(
        stopped: BoxFuture<'static, Result<Option<VarInt>, StoppedError>>,
        cell: Arc<Cell>,
    ) -> Self {
        Self { stopped, cell }
    }
}

impl Future for Watch {
    /// The cell, and how its half ended: acknowledged (`Ok(None)`), stopped by the peer with a
    /// code, or reset by us or lost with the connection (`Err(())`).
    type Output = (Arc<Cell>, Result<Option<u64>, ()>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Checked first, so that a half reset before we ever looked never registers with
        // quinn: quinn would not report the reset's acknowledgement.
        if self.cell.lock().reset_or_register(cx.waker()) {
            return Poll::Ready((self.cell.clone(), Err(())));
        }
        let result = futures::ready!(self.stopped.as_mut().poll(cx));
        let ended = result
            .map(|code| code.map(VarInt::into_inner))
            .map_err(|_| ());
        Poll::Ready((self.cell.clone(), ended))
    }
}

/// Run until the connection closes. `looks` carries one message per batch of queued streams.
pub(crate) async fn run(
    connection: quinn::Connection,
    shared: Weak<Shared>,
    mut looks: mpsc::UnboundedReceiver<()>,
    leak_threshold: Duration,
) {
    let mut watched = FuturesUnordered::new();
    let scan_every = (leak_threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let closed = connection.closed();
    tokio::pin!(closed);
    // One timer serves both the next leak scan and, when streams are queued, the next look.
    let mut next_scan = Instant::now() + scan_every;
    let mut next_look: Option<Instant> = None;
    let timer = tokio::time::sleep_until(next_scan);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            reason = &mut closed => {
                if let Some(shared) = shared.upgrade() {
                    tracing::debug!(parent: &shared.span, %reason, "connection closed");
                    shared.connection_closed();
                }
                return;
            }
            Some(()) = looks.next(), if next_look.is_none() => {
                let at = Instant::now() + LOOK_DELAY;
                next_look = Some(at);
                timer.as_mut().reset(at.min(next_scan));
            }
            () = &mut timer => {
                let Some(shared) = shared.upgrade() else { return };
                let now = Instant::now();
                if next_look.is_some_and(|at| at <= now) {
                    next_look = None;
                    look(&shared, &mut watched);
                }
                if next_scan <= now {
                    next_scan = now + scan_every;
                    report_leaks(&shared, leak_threshold);
                }
                timer.as_mut().reset(next_look.map_or(next_scan, |at| at.min(next_scan)));
            }
            Some((cell, ended)) = watched.next(), if !watched.is_empty() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.watched.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                if stream::watch_ended(&shared, &cell, ended) {
                    shared.release([cell]);
                }
            }
        }
    }
}

/// Look at every queued stream: let the settled go, watch those QUIC still holds.
fn look(shared: &Shared, watched: &mut FuturesUnordered<Watch>) {
    let now = shared.clock.now();
    let mut settled = Vec::new();
    let mut again = Vec::new();
    for cell in shared.take_queued() {
        match stream::look(shared, &cell, now) {
            Look::Settled => settled.push(cell),
            Look::Again => again.push(cell),
            Look::Watch(watch) => {
                // Counted before it is polled, so that its decrement can never come first.
                shared
                    .watched
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                watched.push(watch);
            }
            Look::Wait => {}
        }
    }
    for cell in &again {
        shared.queue(cell);
    }
    shared.release(settled);
}

fn report_leaks(shared: &Shared, threshold: Duration) {
    for (s, kind) in shared.suspects(threshold) {
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
        if let Some(m) = &shared.metrics {
            m.leak_warning(kind);
        }
    }
}
