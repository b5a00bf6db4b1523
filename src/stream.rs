//! [`Stream`]: one bidirectional QUIC stream, and the guard that ends both of its halves.
//!
//! QUIC gives a peer its stream credit back only when *both* halves of a stream are done on the
//! other side (`docs/stream-lifecycle.md`). libp2p thinks of a stream as one thing that is
//! closed once. This module is where the two views meet: every way a `Stream` goes away ends
//! both halves explicitly, and every end is written into the stream's page of the ledger.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::{AsyncRead, AsyncWrite, FutureExt};
use quinn::VarInt;

use crate::{
    connection::{self, Shared},
    error::StreamError,
    ledger::{Activity, Clock, Direction, Entry, HalfState, LeakKind, Stamp},
    watcher::Watch,
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

impl Recv {
    fn as_half(self) -> HalfState {
        match self {
            Recv::Open => HalfState::Open,
            Recv::Finished => HalfState::Finished,
            Recv::ResetByPeer(_) => HalfState::Reset,
            Recv::Stopped => HalfState::Stopped,
        }
    }
}

/// The send half, its state, and the stream's page in the ledger, under one lock: shared with
/// the transport's watcher, which answers a peer's STOP_SENDING with a reset while the
/// application still holds the handle, and sees the peer acknowledge a dropped stream.
pub(crate) struct SendHalf {
    stream: quinn::SendStream,
    state: Send,
    /// The watcher, waiting for this half to be freed. quinn never reports that a reset was
    /// acknowledged, so a reset wakes the watcher itself, or it would wait for ever. Boxed:
    /// few halves are ever watched, and every stream would pay for a waker's 16 bytes.
    watcher: Option<Box<Waker>>,
    /// Whether the watcher waits on this half.
    watched: bool,
    /// The stream's page in the ledger; `None` with the ledger off. Kept under the same lock
    /// as the state, so that a change and its record are one step.
    pub(crate) entry: Option<Entry>,
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
                self.record(HalfState::Finished)
            }
            Send::StoppedByPeer(code) => self.reset(code),
            Send::Finished | Send::Reset { .. } => None,
        }
    }

    /// Reset unless the half was already reset.
    fn reset(&mut self, code: u64) -> Option<HalfState> {
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
        self.record(HalfState::Reset)
    }

    /// Record the peer's STOP_SENDING; `true` if this is news.
    fn stopped_by_peer(&mut self, code: u64) -> bool {
        match self.state {
            Send::Open | Send::Finished => {
                self.state = Send::StoppedByPeer(code);
                self.record(HalfState::Stopped);
                true
            }
            _ => false,
        }
    }

    /// The peer acknowledged everything we sent, FIN included: QUIC freed the half.
    fn acknowledged(&mut self) {
        self.record(HalfState::Done);
    }

    /// Write a move of the send half into the ledger; the state, for metrics and qlog.
    fn record(&mut self, state: HalfState) -> Option<HalfState> {
        if let Some(entry) = &mut self.entry {
            entry.set_send(state);
        }
        Some(state)
    }

    /// End the half if it is still open: finish it, or reset it when `reset` is set.
    fn end(&mut self, reset: bool) -> Option<HalfState> {
        if reset && self.state == Send::Open {
            self.reset(CLOSE_CODE.into())
        } else {
            self.finish()
        }
    }

    /// How the half ended, as [`Closed`] reports it.
    fn ended_as(&self) -> HalfState {
        match self.state {
            Send::Reset { .. } | Send::StoppedByPeer(_) => HalfState::Reset,
            Send::Open | Send::Finished => HalfState::Finished,
        }
    }

    /// A watch of this half for the watcher: until the peer acknowledges everything or stops
    /// it. `None` if it is watched already, or needs no watching because we reset it.
    fn watch(&mut self, cell: &Arc<Cell>, shared: &Shared) -> Option<Watch> {
        if self.watched || matches!(self.state, Send::Reset { .. }) {
            return None;
        }
        self.watched = true;
        Some(Watch::new(
            self.stream.stopped().boxed(),
            cell.clone(),
            shared.weak(),
        ))
    }

    /// For the watcher: whether we reset this half, else remember whom to wake when we do.
    pub(crate) fn reset_or_register(&mut self, waker: &Waker) -> bool {
        if matches!(self.state, Send::Reset { .. }) {
            return true;
        }
        match &mut self.watcher {
            Some(w) => (**w).clone_from(waker),
            None => self.watcher = Some(Box::new(waker.clone())),
        }
        false
    }

    /// Whether quinn has freed this half, which we finished: asked when the peer's FIN comes
    /// after ours, as the reply to a request does. That reply usually carries the
    /// acknowledgement of the request, so nothing is left to watch: one quinn lock now instead
    /// of a look by the watcher later, and the stream leaves the books as its handle drops.
    /// Asked too of a dropped stream that the next open finds queued ([`settled_already`]).
    fn freed_after_finish(&mut self) -> bool {
        let freed = self.state == Send::Finished && !self.watched && self.freed_by_quinn();
        if freed {
            self.acknowledged();
        }
        freed
    }

    /// Whether quinn has forgotten this half, which it does once it is freed: asked of a half
    /// we have not reset, that means the peer acknowledged everything. One lock of quinn's, no
    /// allocation (`priority()` fails for a stream quinn no longer knows).
    fn freed_by_quinn(&self) -> bool {
        self.stream.priority().is_err()
    }

    /// The QUIC stream id.
    pub(crate) fn id(&self) -> u64 {
        VarInt::from(self.stream.id()).into_inner()
    }

    fn settled(&self) -> bool {
        self.entry.as_ref().is_some_and(Entry::settled)
    }

    /// The application dropped the handle: `Some(true)` if the stream can leave the books now
    /// (QUIC holds nothing of it, and no watch waits on it), `Some(false)` if it stays, `None`
    /// with the ledger off. Only a stream that stays reads the clock: its time of drop is
    /// what its age and the watcher's patience count from.
    fn record_drop(&mut self, clock: &Clock) -> Option<bool> {
        let watched = self.watched;
        let entry = self.entry.as_mut()?;
        let leaves = !watched && !entry.held_by_quic();
        entry.handle_dropped((!leaves).then(|| clock.now()));
        Some(leaves)
    }

    /// Whether the application has dropped the stream's handle (as the ledger knows it).
    fn handle_dropped(&self) -> bool {
        self.entry.as_ref().is_some_and(|e| !e.handle_alive())
    }

    /// What quinn says of this half now: `Some(Ok(None))` freed (all acknowledged),
    /// `Some(Ok(Some(code)))` stopped by the peer, `Some(Err(_))` lost with the connection,
    /// `None` still held. Whether QUIC has freed it takes quinn's lock once; most halves are
    /// freed by the first look. Whether the peer stopped it costs quinn a notifier, kept until
    /// it reports the half acknowledged or stopped, so it is asked only with `ask_stop`, of
    /// halves that stayed held a while. (Even of a dropped half: if the peer's STOP_SENDING
    /// came before our FIN, quinn's `finish` quietly queued none, and only our reset frees the
    /// half.)
    fn probe(&mut self, ask_stop: bool) -> Option<Result<Option<VarInt>, quinn::StoppedError>> {
        if self.freed_by_quinn() {
            return Some(Ok(None));
        }
        if !ask_stop {
            return None;
        }
        self.stream.stopped().now_or_never()
    }
}

/// What a stream shares with the transport's watcher and its connection's ledger.
///
/// No stream id: quinn's send half has it (`SendHalf::id`), and the handle keeps a copy. That,
/// and the entry's 32-bit byte count, keep this in glibc's 128-byte block with the `Arc`'s
/// counts (104 bytes; a unit test holds it).
pub(crate) struct Cell {
    pub(crate) direction: Direction,
    /// The stream's key in the connection's ledger (meaningless with the ledger off); read
    /// and changed only under the ledger's lock, when a stream that leaves gives this one its
    /// place. 32 bits pack with the flags below.
    pub(crate) key: AtomicU32,
    send: Mutex<SendHalf>,
    pub(crate) activity: Activity,
    /// Set once our receive half is finished, reset or stopped.
    recv_done: AtomicBool,
    /// Whether the watcher is to look at this stream at its next batch.
    queued: AtomicBool,
}

/// Streams whose shared state is allocated, for tests: see [`crate::test_util::stream_states`].
#[cfg(feature = "test-util")]
pub(crate) static STATES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(feature = "test-util")]
impl Drop for Cell {
    fn drop(&mut self) {
        STATES.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cell {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SendHalf> {
        // A panic while the lock was held leaves the half in a state we can still end.
        self.send.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask for a look at the watcher's next batch; `true` if the stream was not queued yet.
    pub(crate) fn queue(&self) -> bool {
        !self.queued.swap(true, Ordering::SeqCst)
    }

    /// Whether the stream waits for the watcher's look.
    pub(crate) fn is_queued(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
    }

    /// For the watcher: whether the stream was queued, clearing the mark.
    pub(crate) fn take_queued(&self) -> bool {
        self.queued.load(Ordering::SeqCst) && self.queued.swap(false, Ordering::SeqCst)
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
    id: u64,
    cell: Arc<Cell>,
    recv: quinn::RecvStream,
    recv_state: Recv,
    shared: Arc<Shared>,
    /// The stream's span (`id`, `direction`, under the connection's), kept only while a
    /// subscriber wants it: most of the time nobody does, and a span is 40 bytes per stream.
    span: Option<Box<tracing::Span>>,
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
        // Asked first: making a span nobody wants still costs a few hundred instructions
        // (tracing's `log` fallback, which quinn's default features turn on), per stream.
        let span = tracing::span_enabled!(tracing::Level::DEBUG)
            .then(|| tracing::debug_span!(parent: &shared.span, "stream", id, %direction))
            .filter(|span| !span.is_disabled())
            .map(Box::new);
        let cell = |key, entry| {
            #[cfg(feature = "test-util")]
            STATES.fetch_add(1, Ordering::Relaxed);
            Arc::new(Cell {
                direction,
                key: AtomicU32::new(key),
                send: Mutex::new(SendHalf {
                    stream: send,
                    state: Send::Open,
                    watcher: None,
                    watched: false,
                    entry,
                }),
                activity: Activity::default(),
                recv_done: AtomicBool::new(false),
                queued: AtomicBool::new(false),
            })
        };
        let (mut departed, mut settled) = (None, None);
        let cell = match shared.ledger() {
            Some(mut ledger) => {
                departed = ledger.take_departed();
                settled = connection::settle_newest(&mut ledger);
                let entry = Entry::new(shared.clock.now());
                ledger.open(direction, |key| cell(key, Some(entry))).clone()
            }
            None => cell(u32::MAX, None),
        };
        // Streams that left the books are freed here, on an opener's thread, rather than in
        // a batch on the watcher's (see `Shared::release`); not under our lock, since freeing
        // their quinn halves takes quinn's.
        drop((departed, settled));
        shared.stream_opened(id, direction);
        tracing::trace!(parent: span.as_deref().unwrap_or(&shared.span), "opened");
        Self {
            id,
            cell,
            recv,
            recv_state: Recv::Open,
            shared,
            span,
        }
    }

    /// The stream's span, or the connection's when no subscriber wants the stream's.
    fn span(&self) -> &tracing::Span {
        self.span.as_deref().unwrap_or(&self.shared.span)
    }

    /// The QUIC stream id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who opened this stream.
    pub fn direction(&self) -> Direction {
        self.cell.direction
    }

    /// The unified close: end both halves now and say how each ended. Our send half is
    /// finished (FIN) unless it already ended; our receive half is stopped (STOP_SENDING)
    /// unless it was read to the end. This is what dropping the stream does, made explicit;
    /// go-libp2p's `Close()` does the same.
    pub fn close_both(&mut self) -> Closed {
        let send = self.end_send();
        let recv = self.end_recv(CLOSE_CODE, true);
        Closed { send, recv }
    }

    /// Abandon both directions: reset our send half and stop our receive half, both with
    /// `code`. The peer's reads and writes fail with that code.
    pub fn reset(&mut self, code: u32) {
        let changed = self.cell.lock().reset(code.into());
        self.shared.send_moved(self.id, changed);
        self.end_recv(code, true);
    }

    /// End our send half if it is still open: finish it (FIN).
    fn end_send(&mut self) -> HalfState {
        let mut half = self.cell.lock();
        let changed = half.end(false);
        let state = half.ended_as();
        drop(half);
        self.shared.send_moved(self.id, changed);
        state
    }

    /// Stop our receive half if it was not read to the end; `queue` as for
    /// [`Stream::recv_ended`].
    fn end_recv(&mut self, code: u32, queue: bool) -> HalfState {
        if self.recv_state == Recv::Open {
            let _ = self.recv.stop(VarInt::from_u32(code));
            self.recv_ended(Recv::Stopped, queue);
        }
        self.recv_state.as_half()
    }

    /// Our receive half ended. A stream the peer stopped and whose receive half is done
    /// carries nothing more either way: reset our send half now, as RFC 9000 recommends, so
    /// the peer gets its credit back even while our application keeps the handle. If the stop
    /// may still come, the watcher is asked to look out for it, unless `queue` is off: `Drop`
    /// decides for itself once the send half has ended too.
    fn recv_ended(&mut self, state: Recv, queue: bool) {
        self.recv_state = state;
        self.cell.recv_done.store(true, Ordering::Release);
        let recorded = state.as_half();
        self.shared.recv_moved(self.id, recorded);
        let mut half = self.cell.lock();
        if let Some(entry) = &mut half.entry {
            entry.set_recv(recorded);
        }
        let released = release_if_stopped(&mut half);
        let send_reset = matches!(half.state, Send::Reset { .. });
        let tracked = half.entry.is_some();
        let freed = state == Recv::Finished && tracked && half.freed_after_finish();
        drop(half);
        report_release(&self.shared, self.id, released);
        if queue && tracked && !send_reset && !freed {
            self.shared.queue(&self.cell);
        }
    }
}

/// Our receive half is done: if the peer has stopped our send half, the stream carries nothing
/// more either way, so reset it now, as RFC 9000 recommends, and the peer's slot is freed.
/// What the half moved to, if it moved: for [`report_release`], once the lock is let go.
fn release_if_stopped(half: &mut SendHalf) -> Option<HalfState> {
    match half.state {
        Send::StoppedByPeer(code) => half.reset(code),
        _ => None,
    }
}

fn report_release(shared: &Shared, id: u64, released: Option<HalfState>) {
    if released.is_some() {
        tracing::debug!(parent: &shared.span, id, "peer stopped it, our reading is done: reset");
        shared.send_moved(id, released);
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
                this.recv_ended(Recv::Finished, true);
                Poll::Ready(Ok(0))
            }
            Ok(n) => {
                this.cell.activity.received(n);
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                let e = StreamError::from(e);
                if let StreamError::ResetByPeer(code) = e {
                    this.recv_ended(Recv::ResetByPeer(code), true);
                }
                tracing::debug!(parent: this.span(), error = %e, "read failed");
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
                this.cell.activity.sent(n);
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                drop(half);
                if let quinn::WriteError::Stopped(code) = &e {
                    peer_stopped(&this.shared, &this.cell, code.into_inner());
                }
                let e = StreamError::from(e);
                tracing::debug!(parent: this.span(), error = %e, "write failed");
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
        let changed = match half.state {
            Send::Open => half.finish(),
            _ => None,
        };
        let result = match half.state {
            Send::Open | Send::Finished => Ok(()),
            Send::StoppedByPeer(code)
            | Send::Reset {
                stopped_by_peer: Some(code),
            } => Err(StreamError::StoppedByPeer(code)),
            Send::Reset { .. } => Err(StreamError::Closed),
        };
        drop(half);
        this.shared.send_moved(this.id, changed);
        Poll::Ready(result.map_err(Into::into))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A panicking writer may have left a message half-written: reset, so the peer sees an
        // error rather than a clean end of stream.
        let reset = std::thread::panicking() || self.shared.config.reset_on_drop;
        let recv = self.end_recv(CLOSE_CODE, false);
        let mut half = self.cell.lock();
        let changed = half.end(reset);
        let send = half.ended_as();
        let leaves = half.record_drop(&self.shared.clock);
        drop(half);
        tracing::trace!(parent: self.span(), %send, %recv, "dropped");
        self.shared.send_moved(self.id, changed);
        self.shared.stream_dropped(self.cell.direction);
        match leaves {
            // Nothing left for QUIC to free (the peer acknowledged everything, or we reset):
            // out of the books now, and freed on this thread.
            Some(true) => self.shared.leave(&self.cell),
            // The watcher sees whether QUIC has freed the stream, and lets it go from the books.
            Some(false) => self.shared.queue(&self.cell),
            None => {}
        }
    }
}

/// What the watcher's look at a queued stream found.
pub(crate) enum Look {
    /// Nothing is left of it: it can leave the books.
    Settled,
    /// Young still: look again at the next batch; most streams settle within a round trip.
    Again,
    /// Its send half is to be watched until QUIC frees it or the peer stops it.
    Watch(Watch),
    /// Nothing to do now; something else will queue it again or settle it.
    Wait,
}

/// How long a stream stays held before a look asks quinn whether the peer stopped it, not
/// only whether it is freed: most streams are freed before, by acknowledgements.
const ASK_STOP_AFTER: Duration = Duration::from_millis(50);

/// How long a stream is looked at again, batch after batch, before it is watched instead:
/// a look is one quick question to quinn, a watch a future, a registration and a wake-up.
const PATIENCE: Duration = Duration::from_millis(250);

/// The watcher's look at a queued stream: has the peer acknowledged everything we sent, or
/// stopped our send half (answered with a reset once our receive half is done)? A dropped
/// stream with nothing left is settled; one still held by QUIC, or a live stream whose receive
/// half is done, is looked at again while young and watched after that.
pub(crate) fn look(shared: &Shared, cell: &Arc<Cell>, now: Stamp) -> Look {
    let mut half = cell.lock();
    let Some(entry) = &half.entry else {
        return Look::Wait;
    };
    if half.watched {
        // The watch settles it when it ends.
        return Look::Wait;
    }
    if !entry.settled() && !matches!(half.state, Send::Reset { .. }) {
        let ask_stop = entry.quiet_for(now) >= ASK_STOP_AFTER;
        match half.probe(ask_stop) {
            Some(Ok(None)) if half.state == Send::Finished => half.acknowledged(),
            // Gone with the connection: QUIC holds nothing any more. The watcher empties the
            // books when it sees the connection close, but a stream opened as it closed may
            // come after that: a dropped one leaves now, a held one once it is dropped.
            Some(Err(_)) if half.handle_dropped() => return Look::Settled,
            Some(Err(_)) => return Look::Wait,
            Some(Ok(Some(code))) => {
                drop(half);
                peer_stopped(shared, cell, code.into_inner());
                half = cell.lock();
            }
            Some(Ok(None)) | None => {}
        }
    }
    let Some(entry) = &half.entry else {
        return Look::Wait;
    };
    if entry.settled() {
        Look::Settled
    } else if entry.quiet_for(now) < PATIENCE {
        Look::Again
    } else {
        half.watch(cell, shared).map_or(Look::Wait, Look::Watch)
    }
}

/// A look at a queued stream on an opener's path ([`connection::settle_newest`]): whether its
/// handle is gone and QUIC has freed the send half we finished (the question asked at a
/// reply's FIN), so that nothing is left of it. Only that question, one quinn lock; the
/// watcher asks the rest.
pub(crate) fn settled_already(cell: &Cell) -> bool {
    let mut half = cell.lock();
    half.handle_dropped() && half.freed_after_finish() && half.settled()
}

/// How the watch of a send half ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchEnd {
    /// The peer acknowledged everything we sent, FIN included.
    Acknowledged,
    /// The peer sent STOP_SENDING with this code.
    StoppedByPeer(u64),
    /// We reset the half (quinn would never report that reset's acknowledgement).
    ResetByUs,
    /// The connection is gone.
    ConnectionLost,
}

/// The watcher saw a watched send half end: records it and says whether the stream can leave
/// the books.
pub(crate) fn watch_ended(shared: &Shared, cell: &Cell, ended: WatchEnd) -> bool {
    match ended {
        WatchEnd::Acknowledged => cell.lock().acknowledged(),
        WatchEnd::StoppedByPeer(code) => peer_stopped(shared, cell, code),
        WatchEnd::ResetByUs | WatchEnd::ConnectionLost => {}
    }
    let mut half = cell.lock();
    half.watched = false;
    // With the connection gone QUIC holds nothing: as in `look`.
    half.settled() || (ended == WatchEnd::ConnectionLost && half.handle_dropped())
}

/// The peer stopped our send half (STOP_SENDING with `code`): record it, and if our receive
/// half is done too (always so once the handle is gone), answer with a reset now.
fn peer_stopped(shared: &Shared, cell: &Cell, code: u64) {
    let mut half = cell.lock();
    let stop = record_stop(cell, &mut half, code);
    let id = half.id();
    drop(half);
    report_stop(shared, id, stop);
}

/// What a peer's STOP_SENDING moved: the send half to `Stopped`, if that was news, and then
/// to `Reset`, if our receive half was done.
#[derive(Debug, Clone, Copy, Default)]
#[must_use = "report it with `report_stop` once the half's lock is let go"]
pub(crate) struct Stop {
    stopped: Option<HalfState>,
    released: Option<HalfState>,
}

fn record_stop(cell: &Cell, half: &mut SendHalf, code: u64) -> Stop {
    let stopped = half.stopped_by_peer(code).then_some(HalfState::Stopped);
    let released = if cell.recv_done.load(Ordering::Acquire) {
        release_if_stopped(half)
    } else {
        None
    };
    Stop { stopped, released }
}

/// Tell metrics, qlog and the log what a stop moved, once the half's lock is let go.
pub(crate) fn report_stop(shared: &Shared, id: u64, stop: Stop) {
    shared.send_moved(id, stop.stopped);
    report_release(shared, id, stop.released);
}

/// Before a stream is reported as a possible leak: has the peer stopped our send half, or
/// freed it? Asked only of a stream whose handle is alive and whose receive half is open: the
/// watcher never looks at such a stream, so perhaps nothing has asked since our last write,
/// and a report that says `send=stopped` tells its reader that the peer gave up on the stream.
/// (Other suspects are looked at or watched already.) Two of quinn's locks, for a rare stream.
pub(crate) fn stop_before_report(cell: &Cell, half: &mut SendHalf, kind: LeakKind) -> Stop {
    let asked = kind == LeakKind::IdleHandle
        && !cell.recv_done.load(Ordering::Acquire)
        && matches!(half.state, Send::Open | Send::Finished);
    if !asked {
        return Stop::default();
    }
    match half.probe(true) {
        Some(Ok(Some(code))) => record_stop(cell, half, code.into_inner()),
        Some(Ok(None)) if half.state == Send::Finished => {
            half.acknowledged();
            Stop::default()
        }
        _ => Stop::default(),
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("direction", &self.cell.direction)
            .field("recv", &self.recv_state)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// Every stream end pays for these: the guard's shared state with the `Arc`'s two counts
    /// fits glibc's 128-byte block (120 usable bytes), and the handle its 96-byte one.
    #[test]
    fn a_stream_s_state_fits_its_allocator_blocks() {
        assert!(
            16 + std::mem::size_of::<Cell>() <= 120,
            "Cell is {} bytes",
            std::mem::size_of::<Cell>()
        );
        assert!(
            std::mem::size_of::<Stream>() <= 88,
            "Stream is {} bytes",
            std::mem::size_of::<Stream>()
        );
    }
}
