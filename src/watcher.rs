//! The per-connection watcher task: it sees what QUIC frees after the application has let go,
//! answers a peer's STOP_SENDING on streams that are otherwise done, and raises leak warnings.
//!
//! It exists because the interesting moments of a stream's life happen when nobody polls it:
//! the peer acknowledges our FIN after the handle was dropped, or stops our send half while
//! our application holds a stream it has finished reading.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use futures::{channel::mpsc, stream::FuturesUnordered, StreamExt};
use quinn::{StoppedError, VarInt};

use crate::{
    connection::{Later, Shared},
    ledger::HalfState,
    stream::Cell,
};

/// quinn's `SendStream::stopped()` future.
pub(crate) type Stopped =
    Pin<Box<dyn Future<Output = Result<Option<VarInt>, StoppedError>> + Send + Sync>>;

/// What streams tell their connection's watcher.
pub(crate) enum Message {
    /// Watch this send half until QUIC frees it.
    Watch(Watch),
    /// There are release candidates (`Shared::release_candidate`) to look at shortly.
    Candidates,
}

/// How long a stream whose receive half is done may be held before the watcher takes an
/// interest in it: long enough that request/response streams are gone by then.
const CANDIDATE_DELAY: Duration = Duration::from_millis(20);

/// A stream to watch until QUIC frees its send half.
pub(crate) struct Watch {
    id: u64,
    stopped: Stopped,
    cell: Arc<Cell>,
}

impl Watch {
    pub(crate) fn new(id: u64, stopped: Stopped, cell: Arc<Cell>) -> Self {
        Self { id, stopped, cell }
    }
}

/// How a watched send half ended, as far as the watcher needs to know.
pub(crate) enum Outcome {
    /// quinn's `stopped()`: all acknowledged (`Ok(None)`), or stopped by the peer.
    Stopped(Result<Option<VarInt>, StoppedError>),
    /// We reset it; quinn will not report the acknowledgement, so stop watching.
    ResetByUs,
}

impl Future for Watch {
    type Output = (u64, Arc<Cell>, Outcome);

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // Checked first, so that a half reset before we ever looked never registers with quinn.
        if self.cell.lock().reset_or_register(cx.waker()) {
            return std::task::Poll::Ready((self.id, self.cell.clone(), Outcome::ResetByUs));
        }
        let result = futures::ready!(self.stopped.as_mut().poll(cx));
        std::task::Poll::Ready((self.id, self.cell.clone(), Outcome::Stopped(result)))
    }
}

/// Run until the connection closes.
pub(crate) async fn run(
    connection: quinn::Connection,
    shared: Weak<Shared>,
    mut messages: mpsc::UnboundedReceiver<Message>,
    leak_threshold: Duration,
) {
    let mut watched = FuturesUnordered::new();
    let scan_every = (leak_threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut scan = tokio::time::interval(scan_every);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let closed = connection.closed();
    tokio::pin!(closed);
    let candidates_due = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(candidates_due);
    let mut candidates_waiting = false;
    loop {
        tokio::select! {
            reason = &mut closed => {
                if let Some(shared) = shared.upgrade() {
                    tracing::debug!(parent: &shared.span, %reason, "connection closed");
                    if let Some(mut ledger) = shared.ledger() {
                        ledger.connection_closed();
                    }
                }
                return;
            }
            Some(message) = messages.next() => match message {
                Message::Watch(watch) => watched.push(watch),
                Message::Candidates if !candidates_waiting => {
                    candidates_waiting = true;
                    candidates_due.as_mut().reset(tokio::time::Instant::now() + CANDIDATE_DELAY);
                }
                Message::Candidates => {}
            },
            _ = &mut candidates_due, if candidates_waiting => {
                candidates_waiting = false;
                let Some(shared) = shared.upgrade() else { return };
                for (id, later) in shared.take_candidates() {
                    match later {
                        Later::Held(cell) => {
                            if let Some(cell) = cell.upgrade() {
                                shared.watch(id, &cell);
                            }
                        }
                        Later::Dropped(cell) => crate::stream::settle_or_watch(&shared, id, &cell),
                    }
                }
            }
            Some((id, cell, outcome)) = watched.next(), if !watched.is_empty() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.watched.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                settle(&shared, id, &cell, outcome);
            }
            _ = scan.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                report_leaks(&shared, leak_threshold);
            }
        }
    }
}

fn settle(shared: &Shared, id: u64, cell: &Cell, outcome: Outcome) {
    match outcome {
        // The reset is already in the books.
        Outcome::ResetByUs => {}
        Outcome::Stopped(Ok(None)) => shared.set_send(id, HalfState::Done),
        Outcome::Stopped(Ok(Some(code))) => {
            crate::stream::peer_stopped(shared, id, cell, code.into_inner())
        }
        // The connection is going away; the close branch empties the books.
        Outcome::Stopped(Err(_)) => {}
    }
}

fn report_leaks(shared: &Shared, threshold: Duration) {
    let suspects = match shared.ledger() {
        Some(mut ledger) => ledger.suspects(Instant::now(), threshold),
        None => return,
    };
    for suspect in suspects {
        let s = &suspect.info;
        let open_halves = match (s.send, s.recv) {
            (HalfState::Open, HalfState::Open) => "both halves",
            (HalfState::Open, _) => "the send half",
            (_, HalfState::Open) => "the receive half",
            _ if s.handle_alive => "no half, yet the handle is kept",
            _ => "no half (waiting for the peer's acknowledgement)",
        };
        let what = match suspect.kind {
            crate::ledger::LeakKind::HeldAfterDrop => "dropped but still held by QUIC",
            crate::ledger::LeakKind::IdleHandle => "held by the application and idle",
        };
        tracing::warn!(
            parent: &shared.span,
            peer = %shared.peer,
            stream = s.id,
            direction = %s.direction,
            age = ?s.age,
            send = %s.send,
            recv = %s.recv,
            kind = suspect.kind.as_str(),
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
            m.leak_warning(suspect.kind);
        }
    }
}
