//! What one stream shares with the transport's watcher and its session's books: the send half,
//! its state and the stream's page of the ledger, under one lock; and the watcher's questions
//! about it (has QUIC freed it? did the peer stop it?).
//!
//! The watcher needs the send half while the application still holds the handle: to answer a
//! peer's STOP_SENDING with a reset once our receive half is done, and to ask, before a leak
//! report, whether the peer gave up on the stream. After the handle is gone it follows the
//! half until QUIC frees it.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::{future::BoxFuture, FutureExt};
use quinn::{StoppedError, VarInt};

use super::Session;
use crate::{
    error::StreamError,
    ledger::{Activity, Clock, Direction, Entry, HalfState, LeakKind, Stamp},
};

/// The error code of the RESET_STREAM and STOP_SENDING frames we send on our own initiative
/// (a dropped stream, [`Stream::close_both`](crate::Stream::close_both)). go-libp2p uses the
/// same code for its `Reset`.
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
    /// Bytes in front of the application's data that every reset still delivers (RESET_STREAM_AT,
    /// when the peer supports it): the WebTransport header of a stream we opened, else 0. A
    /// byte, to fit beside `watched` and keep [`Cell`] in its allocator block.
    #[cfg(feature = "reset-stream-at")]
    header_len: u8,
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

    /// Reset unless the half was already reset; what it moved to, if it moved.
    pub(crate) fn reset(&mut self, code: u64) -> Option<HalfState> {
        let stopped_by_peer = self.resettable()?;
        let code = VarInt::from_u64(code).unwrap_or(VarInt::from_u32(CLOSE_CODE));
        #[cfg(feature = "reset-stream-at")]
        let reset =
            self.header_len > 0 && self.stream.reset_at(code, self.header_len.into()).is_ok();
        #[cfg(not(feature = "reset-stream-at"))]
        let reset = false;
        if !reset {
            let _ = self.stream.reset(code);
        }
        self.was_reset(stopped_by_peer)
    }

    /// Reset, still delivering the first `reliable_size` bytes of the application's data (and
    /// any header before them) with RESET_STREAM_AT. What the half moved to, if it moved.
    #[cfg(feature = "reset-stream-at")]
    pub(crate) fn reset_at(
        &mut self,
        code: VarInt,
        reliable_size: u64,
    ) -> Result<Option<HalfState>, quinn::ResetAtError> {
        let stopped_by_peer = self.resettable().ok_or(quinn::ResetAtError::ClosedStream)?;
        self.stream.reset_at(
            code,
            u64::from(self.header_len).saturating_add(reliable_size),
        )?;
        Ok(self.was_reset(stopped_by_peer))
    }

    /// `None` if we already reset the half; else the code of the peer's STOP_SENDING, if one
    /// came, for the reset to remember.
    fn resettable(&self) -> Option<Option<u64>> {
        match self.state {
            Send::Reset { .. } => None,
            Send::StoppedByPeer(code) => Some(Some(code)),
            Send::Open | Send::Finished => Some(None),
        }
    }

    /// We just reset the half: its state, the watcher woken, the ledger's record.
    fn was_reset(&mut self, stopped_by_peer: Option<u64>) -> Option<HalfState> {
        self.state = Send::Reset { stopped_by_peer };
        if let Some(watcher) = self.watcher.take() {
            watcher.wake();
        }
        self.record(HalfState::Reset)
    }

    /// Whether we reset this half.
    pub(crate) fn is_reset(&self) -> bool {
        matches!(self.state, Send::Reset { .. })
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

    /// Write the end of the receive half into the ledger.
    pub(crate) fn record_recv(&mut self, state: HalfState) {
        if let Some(entry) = &mut self.entry {
            entry.set_recv(state);
        }
    }

    /// End the half if it is still open: finish it, or reset it with the code `reset` gives.
    pub(crate) fn end(&mut self, reset: Option<u64>) -> Option<HalfState> {
        if let (Some(code), Send::Open) = (reset, self.state) {
            self.reset(code)
        } else {
            self.finish()
        }
    }

    /// How the half ended, as [`Closed`](crate::Closed) reports it.
    pub(crate) fn ended_as(&self) -> HalfState {
        match self.state {
            Send::Reset { .. } | Send::StoppedByPeer(_) => HalfState::Reset,
            Send::Open | Send::Finished => HalfState::Finished,
        }
    }

    /// Whether the application may write: the error to give it if not.
    pub(crate) fn writable(&self) -> Result<(), StreamError> {
        match self.state {
            Send::Open => Ok(()),
            Send::StoppedByPeer(code)
            | Send::Reset {
                stopped_by_peer: Some(code),
            } => Err(StreamError::StoppedByPeer(code)),
            Send::Finished | Send::Reset { .. } => Err(StreamError::Closed),
        }
    }

    /// Write to quinn's half; the caller checked [`SendHalf::writable`].
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, quinn::WriteError>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    /// The application's close of the send half: finish it if it is open. What it moved to,
    /// and what the application is told.
    pub(crate) fn close(&mut self) -> (Option<HalfState>, Result<(), StreamError>) {
        let changed = match self.state {
            Send::Open => self.finish(),
            _ => None,
        };
        let result = match self.state {
            Send::Open | Send::Finished => Ok(()),
            _ => self.writable(),
        };
        (changed, result)
    }

    /// A watch of this half for the watcher: until the peer acknowledges everything or stops
    /// it. `None` if it is watched already, or needs no watching because we reset it.
    fn watch(&mut self, cell: &Arc<Cell>, session: &Session) -> Option<Watch> {
        if self.watched || self.is_reset() {
            return None;
        }
        self.watched = true;
        Some(Watch {
            stopped: self.stream.stopped().boxed(),
            cell: cell.clone(),
            session: session.weak(),
        })
    }

    /// For the watcher: whether we reset this half, else remember whom to wake when we do.
    fn reset_or_register(&mut self, waker: &Waker) -> bool {
        if self.is_reset() {
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
    pub(crate) fn freed_after_finish(&mut self) -> bool {
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
    pub(crate) fn record_drop(&mut self, clock: &Clock) -> Option<bool> {
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
    fn probe(&mut self, ask_stop: bool) -> Option<Result<Option<VarInt>, StoppedError>> {
        if self.freed_by_quinn() {
            return Some(Ok(None));
        }
        if !ask_stop {
            return None;
        }
        self.stream.stopped().now_or_never()
    }
}

/// What a stream shares with the transport's watcher and its session's ledger.
///
/// No stream id: quinn's halves have it (`SendHalf::id`, and the handle asks its receive half). That,
/// and the entry's 32-bit byte count, keep this in glibc's 128-byte block with the `Arc`'s
/// counts (104 bytes; a unit test holds it).
pub(crate) struct Cell {
    pub(crate) direction: Direction,
    /// The stream's key in the session's ledger (meaningless with the ledger off); read
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
    /// The shared state of a new stream, with its send half, its key in the books and its
    /// page of the ledger.
    pub(crate) fn new(
        direction: Direction,
        send: quinn::SendStream,
        header_len: u8,
        key: u32,
        entry: Option<Entry>,
    ) -> Arc<Self> {
        #[cfg(not(feature = "reset-stream-at"))]
        let _ = header_len;
        #[cfg(feature = "test-util")]
        STATES.fetch_add(1, Ordering::Relaxed);
        Arc::new(Cell {
            direction,
            key: AtomicU32::new(key),
            send: Mutex::new(SendHalf {
                stream: send,
                state: Send::Open,
                #[cfg(feature = "reset-stream-at")]
                header_len,
                watcher: None,
                watched: false,
                entry,
            }),
            activity: Activity::default(),
            recv_done: AtomicBool::new(false),
            queued: AtomicBool::new(false),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SendHalf> {
        // A panic while the lock was held leaves the half in a state we can still end.
        self.send.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Our receive half is finished, reset or stopped.
    pub(crate) fn recv_ended(&self) {
        self.recv_done.store(true, Ordering::Release);
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

/// A send half watched until QUIC frees it, the peer stops it, or we reset it.
pub(crate) struct Watch {
    /// quinn's `SendStream::stopped()`.
    stopped: BoxFuture<'static, Result<Option<VarInt>, StoppedError>>,
    cell: Arc<Cell>,
    session: Weak<Session>,
}

impl Future for Watch {
    /// The session, the stream, and how its send half's watch ended.
    type Output = (Weak<Session>, Arc<Cell>, WatchEnd);

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
        Poll::Ready((self.session.clone(), self.cell.clone(), ended))
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
pub(crate) fn look(session: &Session, cell: &Arc<Cell>, now: Stamp) -> Look {
    let mut half = cell.lock();
    let Some(entry) = &half.entry else {
        return Look::Wait;
    };
    if half.watched {
        // The watch settles it when it ends.
        return Look::Wait;
    }
    if !entry.settled() && !half.is_reset() {
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
                peer_stopped(session, cell, code.into_inner());
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
        half.watch(cell, session).map_or(Look::Wait, Look::Watch)
    }
}

/// A look at a queued stream on an opener's path (`settle_newest`): whether its handle is gone
/// and QUIC has freed the send half we finished (the question asked at a reply's FIN), so that
/// nothing is left of it. Only that question, one quinn lock; the watcher asks the rest.
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
pub(crate) fn watch_ended(session: &Session, cell: &Cell, ended: WatchEnd) -> bool {
    match ended {
        WatchEnd::Acknowledged => cell.lock().acknowledged(),
        WatchEnd::StoppedByPeer(code) => peer_stopped(session, cell, code),
        WatchEnd::ResetByUs | WatchEnd::ConnectionLost => {}
    }
    let mut half = cell.lock();
    half.watched = false;
    // With the connection gone QUIC holds nothing: as in `look`.
    half.settled() || (ended == WatchEnd::ConnectionLost && half.handle_dropped())
}

/// The peer stopped our send half (STOP_SENDING with `code`): record it, and if our receive
/// half is done too (always so once the handle is gone), answer with a reset now.
pub(crate) fn peer_stopped(session: &Session, cell: &Cell, code: u64) {
    let mut half = cell.lock();
    let stop = record_stop(cell, &mut half, code);
    let id = half.id();
    drop(half);
    report_stop(session, id, stop);
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
pub(crate) fn report_stop(session: &Session, id: u64, stop: Stop) {
    session.send_moved(id, stop.stopped);
    report_release(session, id, stop.released);
}

/// Our receive half is done: if the peer has stopped our send half, the stream carries nothing
/// more either way, so reset it now, as RFC 9000 recommends, and the peer's slot is freed.
/// What the half moved to, if it moved: for [`report_release`], once the lock is let go.
pub(crate) fn release_if_stopped(half: &mut SendHalf) -> Option<HalfState> {
    match half.state {
        Send::StoppedByPeer(code) => half.reset(code),
        _ => None,
    }
}

/// Say what [`release_if_stopped`] did, once the half's lock is let go.
pub(crate) fn report_release(session: &Session, id: u64, released: Option<HalfState>) {
    if released.is_some() {
        tracing::debug!(parent: &session.span, id, "peer stopped it, our reading is done: reset");
        session.send_moved(id, released);
    }
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

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// Every stream end pays for this: the guard's shared state with the `Arc`'s two counts
    /// fits glibc's 128-byte block (120 usable bytes).
    #[test]
    fn a_stream_s_shared_state_fits_its_allocator_block() {
        assert!(
            16 + std::mem::size_of::<Cell>() <= 120,
            "Cell is {} bytes",
            std::mem::size_of::<Cell>()
        );
    }
}
