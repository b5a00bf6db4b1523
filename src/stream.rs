//! [`Stream`]: one bidirectional stream of a session, and the guard that ends both of its
//! halves.
//!
//! QUIC gives a peer its stream credit back only when *both* halves of a stream are done on the
//! other side (`docs/stream-lifecycle.md`). libp2p thinks of a stream as one thing that is
//! closed once. This module is where the two views meet: every way a `Stream` goes away ends
//! both halves explicitly, and every end is written into the stream's page of the ledger.
//! A stream is a pair of quinn halves and its session's state: it does not ask how the pair
//! was opened.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::{AsyncRead, AsyncWrite};
use quinn::VarInt;

use crate::{
    error::StreamError,
    ledger::{Direction, HalfState},
    session::{
        cell::{self, Cell, CLOSE_CODE},
        Session,
    },
};

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
    session: Arc<Session>,
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
    /// A stream of `session`, from its two quinn halves (any header the session's protocol
    /// puts in front of a stream is already read or written).
    pub(crate) fn new(
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        direction: Direction,
        session: Arc<Session>,
    ) -> Self {
        let id = VarInt::from(send.id()).into_inner();
        // A WebTransport header is on the streams we open only
        let header_len = match direction {
            Direction::Outbound => session.header_len,
            Direction::Inbound => 0,
        };
        let cell = session.join(direction, |key, entry| {
            Cell::new(direction, send, header_len, key, entry)
        });
        session.stream_opened(id, direction);
        tracing::trace!(parent: &session.span, id, %direction, "stream opened");
        Self {
            cell,
            recv,
            recv_state: Recv::Open,
            session,
        }
    }

    /// The QUIC stream id.
    pub fn id(&self) -> u64 {
        VarInt::from(self.recv.id()).into_inner()
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
        let changed = self
            .cell
            .lock()
            .reset(self.session.wire_code(code).into_inner());
        self.session.send_moved(self.id(), changed);
        self.end_recv(code, true);
    }

    /// Abandon both directions as [`reset`](Self::reset) does, except that the peer still
    /// reads the first `reliable_size` bytes we wrote before it sees the reset: a
    /// RESET_STREAM_AT frame (draft-ietf-quic-reliable-stream-reset), which the peer must
    /// support (go-libp2p does since v0.47). On a WebTransport stream we opened, the bytes
    /// count after the stream's header, which is always delivered.
    #[cfg(feature = "reset-stream-at")]
    pub fn reset_at(&mut self, code: u32, reliable_size: u64) -> Result<(), crate::ResetAtError> {
        let changed = self
            .cell
            .lock()
            .reset_at(self.session.wire_code(code), reliable_size)?;
        self.session.send_moved(self.id(), changed);
        self.end_recv(code, true);
        Ok(())
    }

    /// End our send half if it is still open: finish it (FIN).
    fn end_send(&mut self) -> HalfState {
        let mut half = self.cell.lock();
        let changed = half.end(None);
        let state = half.ended_as();
        drop(half);
        self.session.send_moved(self.id(), changed);
        state
    }

    /// Stop our receive half if it was not read to the end; `queue` as for
    /// [`Stream::recv_ended`].
    fn end_recv(&mut self, code: u32, queue: bool) -> HalfState {
        if self.recv_state == Recv::Open {
            let _ = self.recv.stop(self.session.wire_code(code));
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
        self.cell.recv_ended();
        let recorded = state.as_half();
        self.session.recv_moved(self.id(), recorded);
        let mut half = self.cell.lock();
        half.record_recv(recorded);
        let released = cell::release_if_stopped(&mut half);
        let send_reset = half.is_reset();
        let tracked = half.entry.is_some();
        let freed = state == Recv::Finished && tracked && half.freed_after_finish();
        drop(half);
        cell::report_release(&self.session, self.id(), released);
        if queue && tracked && !send_reset && !freed {
            self.session.queue(&self.cell);
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
                this.recv_ended(Recv::Finished, true);
                Poll::Ready(Ok(0))
            }
            Ok(n) => {
                this.cell.activity.received(n);
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                let e = this.session.app_error(e.into());
                if let StreamError::ResetByPeer(code) = e {
                    this.recv_ended(Recv::ResetByPeer(code), true);
                }
                tracing::debug!(parent: &this.session.span, id = this.id(), error = %e, "read failed");
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
        if let Err(e) = half.writable() {
            return Poll::Ready(Err(this.session.app_error(e).into()));
        }
        match futures::ready!(half.poll_write(cx, buf)) {
            Ok(n) => {
                this.cell.activity.sent(n);
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                drop(half);
                if let quinn::WriteError::Stopped(code) = &e {
                    cell::peer_stopped(&this.session, &this.cell, code.into_inner());
                }
                let e = this.session.app_error(e.into());
                tracing::debug!(parent: &this.session.span, id = this.id(), error = %e, "write failed");
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
        let (changed, result) = this.cell.lock().close();
        this.session.send_moved(this.id(), changed);
        Poll::Ready(result.map_err(|e| this.session.app_error(e).into()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A panicking writer may have left a message half-written: reset, so the peer sees an
        // error rather than a clean end of stream.
        let reset = std::thread::panicking() || self.session.config.reset_on_drop;
        let recv = self.end_recv(CLOSE_CODE, false);
        let reset = reset.then(|| self.session.wire_code(CLOSE_CODE).into_inner());
        let mut half = self.cell.lock();
        let changed = half.end(reset);
        let send = half.ended_as();
        let leaves = half.record_drop(&self.session.clock);
        drop(half);
        tracing::trace!(parent: &self.session.span, id = self.id(), %send, %recv, "stream dropped");
        self.session.send_moved(self.id(), changed);
        self.session.stream_dropped(self.cell.direction);
        match leaves {
            // Nothing left for QUIC to free (the peer acknowledged everything, or we reset):
            // out of the books now, and freed on this thread.
            Some(true) => self.session.leave(&self.cell),
            // The watcher sees whether QUIC has freed the stream, and lets it go from the books.
            Some(false) => self.session.queue(&self.cell),
            None => {}
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id())
            .field("direction", &self.cell.direction)
            .field("recv", &self.recv_state)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// Every stream end pays for this: the handle (boxed by libp2p) fits glibc's 80-byte
    /// block, as `libp2p-quic`'s does.
    #[test]
    fn a_stream_handle_fits_its_allocator_block() {
        assert!(
            std::mem::size_of::<Stream>() <= 72,
            "Stream is {} bytes",
            std::mem::size_of::<Stream>()
        );
    }
}
