//! [`Stream`]: one bidirectional QUIC stream, and the guard that ends both of its halves.
//!
//! QUIC gives a peer its stream credit back only when *both* halves of a stream are done on the
//! other side (`docs/stream-lifecycle.md`). libp2p thinks of a stream as one thing that is
//! closed once. This module is where the two views meet: every way a `Stream` goes away ends
//! both halves explicitly, and every end is written into the connection's ledger.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Instant,
};

use futures::{AsyncRead, AsyncWrite, FutureExt};
use quinn::VarInt;

use crate::{
    connection::Shared,
    error::StreamError,
    ledger::{Activity, Direction, HalfState},
};

/// The error code of the RESET_STREAM and STOP_SENDING frames we send on our own initiative
/// (a dropped stream, [`Stream::close_both`]). go-libp2p uses the same code for its `Reset`.
pub(crate) const CLOSE_CODE: u32 = 0;

/// How our send half stands, as our layer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    Open,
    Finished,
    /// We reset it; after the peer's STOP_SENDING with that code, if it was one.
    Reset {
        stopped_by_peer: Option<u64>,
    },
    /// The peer sent STOP_SENDING with this code; we still owe it a RESET_STREAM.
    StoppedByPeer(u64),
}

/// How our receive half stands, as our layer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    Open,
    /// We read the peer's FIN.
    Finished,
    /// The peer reset it with this code.
    ResetByPeer(u64),
    /// We sent STOP_SENDING.
    Stopped,
}

/// The send half and its state: shared with the connection's watcher, which answers a peer's
/// STOP_SENDING with a reset while the application still holds the handle.
pub(crate) struct SendHalf {
    stream: quinn::SendStream,
    state: Send,
    /// The watcher, waiting for this half to be freed. quinn never reports that a reset was
    /// acknowledged, so a reset wakes the watcher itself, or it would wait for ever.
    watcher: Option<std::task::Waker>,
    /// Whether the watcher was given this half.
    watched: bool,
}

impl SendHalf {
    /// Finish (FIN) unless the half already ended. A half the peer stopped is reset instead,
    /// since a FIN could never be delivered. (A stop we have not heard of yet is answered by
    /// the watcher, or by quinn when the half is dropped.)
    fn finish(&mut self) -> Option<HalfState> {
        match self.state {
            Send::Open => {
                let _ = self.stream.finish();
                self.state = Send::Finished;
                Some(HalfState::Finished)
            }
            Send::StoppedByPeer(code) => self.reset(code),
            Send::Finished | Send::Reset { .. } => None,
        }
    }

    /// Reset unless the half was already reset.
    pub(crate) fn reset(&mut self, code: u64) -> Option<HalfState> {
        let stopped_by_peer = match self.state {
            Send::Reset { .. } => return None,
            Send::StoppedByPeer(code) => Some(code),
            Send::Open | Send::Finished => None,
        };
        let _ = self
            .stream
            .reset(VarInt::from_u64(code).unwrap_or(VarInt::from_u32(CLOSE_CODE)));
        self.state = Send::Reset { stopped_by_peer };
        if let Some(watcher) = self.watcher.take() {
            watcher.wake();
        }
        Some(HalfState::Reset)
    }

    /// Mark the half as given to the watcher; `false` if it already was, or needs no watching
    /// because we reset it.
    pub(crate) fn take_watch(&mut self) -> bool {
        let take = !self.watched && !matches!(self.state, Send::Reset { .. });
        self.watched = true;
        take
    }

    /// Whether the peer has already acknowledged everything or stopped the half: one look,
    /// without waiting. `None` when that is not known yet.
    pub(crate) fn stopped_now(&self) -> Option<Option<u64>> {
        match self.stream.stopped().now_or_never()? {
            Ok(code) => Some(code.map(VarInt::into_inner)),
            // The connection is gone: nothing to watch.
            Err(_) => Some(None),
        }
    }

    /// For the watcher: whether we reset this half, else remember whom to wake when we do.
    pub(crate) fn reset_or_register(&mut self, waker: &std::task::Waker) -> bool {
        if matches!(self.state, Send::Reset { .. }) {
            return true;
        }
        if !self.watcher.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.watcher = Some(waker.clone());
        }
        false
    }

    /// Resolves when the peer has acknowledged everything we sent (`Ok(None)`) or stopped the
    /// half (`Ok(Some(code))`); the watcher turns that into ledger entries.
    pub(crate) fn stopped_future(&self) -> crate::watcher::Stopped {
        Box::pin(self.stream.stopped())
    }

    /// Record the peer's STOP_SENDING; `true` if this is news.
    pub(crate) fn stopped_by_peer(&mut self, code: u64) -> bool {
        match self.state {
            Send::Open | Send::Finished => {
                self.state = Send::StoppedByPeer(code);
                true
            }
            _ => false,
        }
    }
}

/// What a stream shares with its connection's watcher: the send half, and whether the receive
/// half is done (together they say whether the stream is dead).
pub(crate) struct Cell {
    pub(crate) send: Mutex<SendHalf>,
    /// Set once our receive half is finished, reset or stopped.
    recv_done: std::sync::atomic::AtomicBool,
}

impl Cell {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SendHalf> {
        // A panic while the lock was held leaves the half in a state we can still end.
        self.send.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn recv_done(&self) -> bool {
        self.recv_done.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A bidirectional libp2p stream over one QUIC stream.
///
/// Reading and writing are independent halves. [`AsyncWrite::poll_close`] finishes only our
/// send half (FIN), and reading stays possible, as request/response protocols need.
///
/// # Drop
///
/// Dropping a `Stream` ends both halves, whatever path drops it (an error, a panic, a
/// cancelled future, an aborted task): a send half that is still open is finished — or reset
/// when the thread is panicking or [`Config::reset_on_drop`](crate::Config::reset_on_drop) is
/// set, so that the peer never takes a cut-short message for a complete one — and a receive
/// half not read to the end is stopped (STOP_SENDING). The peer thereby gets its stream credit
/// back as soon as QUIC allows.
pub struct Stream {
    cell: Arc<Cell>,
    recv: quinn::RecvStream,
    recv_state: Recv,
    id: u64,
    direction: Direction,
    shared: Arc<Shared>,
    activity: Option<Arc<Activity>>,
    span: tracing::Span,
}

/// How each half of a [`Stream`] stands after [`Stream::close_both`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// Our send half: `Finished` (FIN sent, or sent before) or `Reset` (the peer had stopped
    /// it, or we had reset it).
    pub send: HalfState,
    /// Our receive half: `Finished` (read to the end before), `Reset` (by the peer) or
    /// `Stopped` (we sent STOP_SENDING now).
    pub recv: HalfState,
}

impl Stream {
    pub(crate) fn new(
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        direction: Direction,
        shared: Arc<Shared>,
    ) -> Self {
        let id = VarInt::from(send.id()).into_inner();
        let span = tracing::debug_span!(parent: &shared.span, "stream", id, %direction);
        let cell = Arc::new(Cell {
            send: Mutex::new(SendHalf {
                stream: send,
                state: Send::Open,
                watcher: None,
                watched: false,
            }),
            recv_done: false.into(),
        });
        let activity = shared.stream_opened(id, direction);
        tracing::trace!(parent: &span, "opened");
        Self {
            cell,
            recv,
            recv_state: Recv::Open,
            id,
            direction,
            shared,
            activity,
            span,
        }
    }

    /// The QUIC stream id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who opened this stream.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The unified close: end both halves now and say how each ended. Our send half is
    /// finished (FIN) unless it already ended; our receive half is stopped (STOP_SENDING)
    /// unless it was read to the end. This is what dropping the stream does, made explicit;
    /// go-libp2p's `Close()` does the same.
    pub fn close_both(&mut self) -> Closed {
        let send = self.end_send(false);
        let recv = self.end_recv(CLOSE_CODE);
        Closed { send, recv }
    }

    /// Abandon both directions: reset our send half and stop our receive half, both with
    /// `code`. The peer's reads and writes fail with that code.
    pub fn reset(&mut self, code: u32) {
        let changed = self.cell.lock().reset(code.into());
        if let Some(state) = changed {
            self.shared.set_send(self.id, state);
        }
        self.end_recv(code);
    }

    /// End our send half if it is still open: finish it, or reset it when `reset` is set.
    fn end_send(&mut self, reset: bool) -> HalfState {
        let mut half = self.cell.lock();
        let changed = if reset && half.state == Send::Open {
            half.reset(CLOSE_CODE.into())
        } else {
            half.finish()
        };
        let state = match half.state {
            Send::Reset { .. } | Send::StoppedByPeer(_) => HalfState::Reset,
            Send::Open | Send::Finished => HalfState::Finished,
        };
        drop(half);
        if let Some(changed) = changed {
            self.shared.set_send(self.id, changed);
        }
        state
    }

    /// Stop our receive half if it was not read to the end.
    fn end_recv(&mut self, code: u32) -> HalfState {
        match self.recv_state {
            Recv::Open => {
                let _ = self.recv.stop(VarInt::from_u32(code));
                self.set_recv(Recv::Stopped);
                HalfState::Stopped
            }
            Recv::Finished => HalfState::Finished,
            Recv::ResetByPeer(_) => HalfState::Reset,
            Recv::Stopped => HalfState::Stopped,
        }
    }

    fn set_recv(&mut self, state: Recv) {
        self.recv_state = state;
        self.cell
            .recv_done
            .store(true, std::sync::atomic::Ordering::Release);
        let ledger_state = match state {
            Recv::Open => return,
            Recv::Finished => HalfState::Finished,
            Recv::ResetByPeer(_) => HalfState::Reset,
            Recv::Stopped => HalfState::Stopped,
        };
        self.shared.set_recv(self.id, ledger_state);
        // A stream the peer stopped and whose receive half is done carries nothing more either
        // way: reset our send half now, as RFC 9000 recommends, so the peer gets its credit
        // back even while our application keeps the handle; if the stop comes later, the
        // watcher answers it.
        if !self.release_if_dead() {
            self.shared.release_candidate(self.id, &self.cell);
        }
    }

    /// Reset our send half if the peer stopped it; `true` if the half has ended either way.
    fn release_if_dead(&self) -> bool {
        let mut half = self.cell.lock();
        if let Send::StoppedByPeer(code) = half.state {
            if let Some(state) = half.reset(code) {
                drop(half);
                tracing::debug!(parent: &self.span, code, "peer stopped a finished stream: reset");
                self.shared.set_send(self.id, state);
            }
            return true;
        }
        matches!(half.state, Send::Reset { .. })
    }

    fn write_failed(&self, half: &mut SendHalf, error: &quinn::WriteError) {
        if let quinn::WriteError::Stopped(code) = error {
            if half.stopped_by_peer(code.into_inner()) {
                self.shared.set_send(self.id, HalfState::Stopped);
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.recv_state {
            Recv::Open => {}
            Recv::Finished => return Poll::Ready(Ok(0)),
            Recv::ResetByPeer(code) => {
                return Poll::Ready(Err(StreamError::ResetByPeer(code).into()))
            }
            Recv::Stopped => return Poll::Ready(Err(StreamError::Closed.into())),
        }
        match futures::ready!(this.recv.poll_read(cx, buf)) {
            Ok(0) if !buf.is_empty() => {
                this.set_recv(Recv::Finished);
                Poll::Ready(Ok(0))
            }
            Ok(n) => {
                if let Some(activity) = &this.activity {
                    activity.received(n);
                }
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                let e = StreamError::from(e);
                if let StreamError::ResetByPeer(code) = e {
                    this.set_recv(Recv::ResetByPeer(code));
                }
                tracing::debug!(parent: &this.span, error = %e, "read failed");
                Poll::Ready(Err(e.into()))
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &*self;
        let mut half = this.cell.lock();
        match half.state {
            Send::Open => {}
            Send::StoppedByPeer(code)
            | Send::Reset {
                stopped_by_peer: Some(code),
            } => return Poll::Ready(Err(StreamError::StoppedByPeer(code).into())),
            Send::Finished | Send::Reset { .. } => {
                return Poll::Ready(Err(StreamError::Closed.into()))
            }
        }
        match futures::ready!(Pin::new(&mut half.stream).poll_write(cx, buf)) {
            Ok(n) => {
                if let Some(activity) = &this.activity {
                    activity.sent(n);
                }
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                this.write_failed(&mut half, &e);
                drop(half);
                if this.recv_state != Recv::Open {
                    this.release_if_dead();
                }
                let e = StreamError::from(e);
                tracing::debug!(parent: &this.span, error = %e, "write failed");
                Poll::Ready(Err(e.into()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // quinn sends written data on its own; there is nothing to flush.
        Poll::Ready(Ok(()))
    }

    /// Finishes our send half (FIN). Reading stays possible. Does not wait for the peer's
    /// acknowledgement.
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &*self;
        let mut half = this.cell.lock();
        let result = match half.state {
            Send::Open => {
                let changed = half.finish();
                let state = half.state;
                drop(half);
                if let Some(changed) = changed {
                    this.shared.set_send(this.id, changed);
                }
                match state {
                    Send::StoppedByPeer(code) => Err(StreamError::StoppedByPeer(code)),
                    _ => Ok(()),
                }
            }
            Send::Finished => Ok(()),
            Send::StoppedByPeer(code)
            | Send::Reset {
                stopped_by_peer: Some(code),
            } => Err(StreamError::StoppedByPeer(code)),
            Send::Reset { .. } => Err(StreamError::Closed),
        };
        Poll::Ready(result.map_err(Into::into))
    }
}

/// Whether the peer already acknowledged or stopped a dropped stream's send half: settle it in
/// the books at once. `false` if that is not known yet.
fn settle_now(shared: &Shared, id: u64, cell: &Cell) -> bool {
    let mut half = cell.lock();
    if matches!(half.state, Send::Reset { .. }) || half.watched {
        return true;
    }
    match half.stopped_now() {
        Some(None) => {
            half.watched = true;
            drop(half);
            shared.set_send(id, HalfState::Done);
            true
        }
        Some(Some(code)) => {
            drop(half);
            peer_stopped(shared, id, cell, code);
            true
        }
        None => false,
    }
}

/// The peer stopped our send half (STOP_SENDING with `code`): record it, and if our receive
/// half is done too (always so once the handle is gone), the stream carries nothing more
/// either way: answer with a reset now, as RFC 9000 recommends, so the peer's slot is freed.
pub(crate) fn peer_stopped(shared: &Shared, id: u64, cell: &Cell, code: u64) {
    let mut half = cell.lock();
    if half.stopped_by_peer(code) {
        shared.set_send(id, HalfState::Stopped);
    }
    if cell.recv_done() {
        if let Some(state) = half.reset(code) {
            drop(half);
            tracing::debug!(parent: &shared.span, id, code, "peer stopped a finished stream: reset");
            shared.set_send(id, state);
        }
    }
}

/// A stream's handle is gone: settle its send half now, or look again shortly.
fn settle_after_drop(shared: &Shared, id: u64, cell: &Arc<Cell>) {
    if !settle_now(shared, id, cell) {
        shared.settle_later(id, cell.clone());
    }
}

/// The watcher's second look at a dropped stream: settle it, or watch it to the end.
pub(crate) fn settle_or_watch(shared: &Shared, id: u64, cell: &Arc<Cell>) {
    if !settle_now(shared, id, cell) {
        shared.watch(id, cell);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A panicking writer may have left a message half-written: reset, so the peer sees an
        // error rather than a clean end of stream.
        let reset = std::thread::panicking() || self.shared.reset_on_drop;
        let send = self.end_send(reset);
        let recv = self.end_recv(CLOSE_CODE);
        tracing::trace!(parent: &self.span, %send, %recv, "dropped");
        if self.activity.is_some() {
            settle_after_drop(&self.shared, self.id, &self.cell);
        }
        self.shared
            .stream_dropped(self.id, self.direction, Instant::now());
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("direction", &self.direction)
            .field("recv", &self.recv_state)
            .finish_non_exhaustive()
    }
}
