//! The per-session state: what one session's streams, the transport's watcher task and
//! snapshots share.
//!
//! A session is a peer's set of streams whose halves are quinn's `SendStream` and
//! `RecvStream`: today a QUIC connection; a WebTransport session (HTTP/3 over a quinn
//! connection, streams with a short header in front) fits the same mould. Nothing here asks
//! how a stream was opened, so the guard ([`Stream`](crate::Stream)), the ledger, the watcher,
//! the warnings and the metrics serve any such session.
//!
//! - [`cell`]: what one stream shares with the watcher and the books (its send half, its
//!   page of the ledger), and the watcher's questions about it;
//! - [`books`]: the connection's ledger: streams joining and leaving, snapshots;
//! - [`open`]: opening a stream, and the wait for stream credit;
//! - [`warnings`]: what the session says when credit runs out or a stream looks leaked;
//! - [`inbox`]: how streams ask the watcher task for a look;
//! - [`codes`]: a WebTransport session's error codes inside HTTP/3's range.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    time::Instant,
};

use libp2p_identity::PeerId;

use quinn::VarInt;

use crate::{
    error::StreamError,
    ledger::{ByDirection, Clock, Direction, HalfState, Ledger},
    Config,
};

mod books;
pub(crate) mod cell;
pub(crate) mod codes;
mod inbox;
mod open;
mod warnings;

pub use books::ConnectionSnapshot;
pub(crate) use cell::Cell;
pub(crate) use inbox::Inbox;

#[cfg(feature = "qlog")]
pub(crate) type Qlog = crate::qlog::QlogFile;
/// Without the `qlog` feature there is never a qlog file.
#[cfg(not(feature = "qlog"))]
pub(crate) type Qlog = std::convert::Infallible;

/// One session's shared state. Held by the session's muxer, by each of its streams, and,
/// weakly, by the watcher and the transport's [`Ledgers`](crate::Ledgers).
pub(crate) struct Session {
    /// The session's number in its transport (1, 2, …): its short name in logs (`#3`), unique
    /// per transport, where quinn's id is a pointer-sized number that means nothing to a reader.
    pub(crate) number: u64,
    pub(crate) peer: PeerId,
    pub(crate) span: tracing::Span,
    /// The transport's configuration.
    pub(crate) config: Arc<Config>,
    /// Times the ledger's entries.
    pub(crate) clock: Clock,
    /// Ourselves, for the watcher, which must not keep the session's state alive.
    me: Weak<Session>,
    /// The QUIC connection the session runs on: its streams are opened and accepted here, the
    /// watcher waits for its end, snapshots show its address and id.
    connection: quinn::Connection,
    /// The length of the header in front of every stream we open: WebTransport's (two varints,
    /// 2 to 16 bytes), 0 for QUIC; see [`Session::webtransport`].
    pub(crate) header_len: u8,
    #[cfg(feature = "qlog")]
    we_are_server: bool,
    live: [AtomicU64; 2],
    /// Send halves the watcher still waits on.
    watched: AtomicU64,
    /// Whether the watcher has been told of the queued streams; see [`Session::queue`].
    look_asked: AtomicBool,
    /// Whether the watcher saw the connection close.
    closed: AtomicBool,
    /// Since when an outbound open has been waiting for stream credit, if one is.
    credit_wait_since: Mutex<Option<Instant>>,
    ledger: Option<Mutex<Ledger<Arc<Cell>>>>,
    /// Where streams ask the transport's watcher for a look.
    inbox: Arc<Inbox>,
    /// What the session's story tells when it ends ([`Session::tell_story`]).
    story: warnings::Story,
    #[cfg(feature = "qlog")]
    qlog: Option<Qlog>,
}

impl Session {
    /// The state of a session on `connection` with `peer`, whose streams ask for the watcher
    /// at `inbox`; `header_len` is that of a WebTransport session's stream header, 0 for QUIC.
    pub(crate) fn new(
        number: u64,
        connection: quinn::Connection,
        peer: PeerId,
        header_len: u8,
        config: Arc<Config>,
        inbox: Arc<Inbox>,
        qlog: Option<Qlog>,
    ) -> Arc<Self> {
        #[cfg(not(feature = "qlog"))]
        let _ = qlog;
        let span = tracing::debug_span!(
            "connection",
            conn = number,
            %peer,
            remote = %connection.remote_address(),
        );
        Arc::new_cyclic(|me| Session {
            number,
            peer,
            span,
            clock: Clock::new(Instant::now()),
            me: me.clone(),
            #[cfg(feature = "qlog")]
            we_are_server: connection.side().is_server(),
            connection,
            header_len,
            live: Default::default(),
            watched: AtomicU64::new(0),
            look_asked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            credit_wait_since: Mutex::new(None),
            ledger: config.stream_ledger.then(Mutex::default),
            inbox,
            story: warnings::Story::default(),
            #[cfg(feature = "qlog")]
            qlog,
            config,
        })
    }

    /// A WebTransport session (its streams start with a header): its error codes travel
    /// inside HTTP/3's range.
    pub(crate) fn webtransport(&self) -> bool {
        self.header_len > 0
    }

    /// The QUIC connection under the session.
    pub(crate) fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// The code on the wire for an application's stream error code: the same for QUIC,
    /// WebTransport's mapping into HTTP/3's range for a WebTransport session.
    pub(crate) fn wire_code(&self, code: u32) -> VarInt {
        if self.webtransport() {
            VarInt::from_u64(codes::to_wire(code)).expect("WebTransport codes fit a varint")
        } else {
            VarInt::from_u32(code)
        }
    }

    /// A stream error as the application sees it: a WebTransport peer's codes mapped back.
    pub(crate) fn app_error(&self, error: StreamError) -> StreamError {
        if !self.webtransport() {
            return error;
        }
        let app = |code: u64| codes::from_wire(code).map_or(code, u64::from);
        match error {
            StreamError::ResetByPeer(code) => StreamError::ResetByPeer(app(code)),
            StreamError::StoppedByPeer(code) => StreamError::StoppedByPeer(app(code)),
            other => other,
        }
    }

    /// The session's kind, as metrics label it.
    #[cfg(feature = "metrics")]
    pub(crate) fn transport_label(&self) -> &'static str {
        if self.webtransport() {
            "webtransport"
        } else {
            "quic"
        }
    }

    /// The code that closes the connection: 0 for QUIC, as `libp2p-quic`; HTTP/3's
    /// no-error for WebTransport.
    pub(crate) fn close_code(&self) -> VarInt {
        if self.webtransport() {
            VarInt::from_u32(codes::H3_NO_ERROR)
        } else {
            VarInt::from_u32(0)
        }
    }

    /// The peer's address.
    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// A handle to ourselves that does not keep us alive.
    pub(crate) fn weak(&self) -> Weak<Session> {
        self.me.clone()
    }

    /// Whether the session keeps the books (`Config::stream_ledger`).
    pub(crate) fn keeps_books(&self) -> bool {
        self.ledger.is_some()
    }

    /// The books, when the ledger is on.
    pub(crate) fn ledger(&self) -> Option<MutexGuard<'_, Ledger<Arc<Cell>>>> {
        self.ledger
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A stream handle was made.
    pub(crate) fn stream_opened(&self, id: u64, direction: Direction) {
        self.live[direction.index()].fetch_add(1, Ordering::Relaxed);
        self.story.open_now(self.live_handles().iter().sum());
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.config.metrics {
            m.stream_opened(direction, self.transport_label());
        }
        #[cfg(feature = "qlog")]
        if let Some(q) = &self.qlog {
            q.stream_event(id, direction, "both", HalfState::Open);
        }
        let _ = id;
    }

    /// A stream handle was dropped.
    pub(crate) fn stream_dropped(&self, direction: Direction) {
        self.live[direction.index()].fetch_sub(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.config.metrics {
            m.stream_dropped(direction, self.transport_label());
        }
    }

    /// Stream handles alive, by direction.
    pub(crate) fn live_handles(&self) -> ByDirection {
        [
            self.live[0].load(Ordering::Relaxed),
            self.live[1].load(Ordering::Relaxed),
        ]
    }

    /// The send half moved to `state`, if it moved: for metrics and qlog (the ledger entry
    /// was updated under the stream's lock).
    pub(crate) fn send_moved(&self, id: u64, state: Option<HalfState>) {
        let Some(state) = state else { return };
        #[cfg(feature = "metrics")]
        if let (Some(m), HalfState::Finished | HalfState::Reset) = (&self.config.metrics, state) {
            m.half_ended("send", state, self.transport_label());
        }
        #[cfg(feature = "qlog")]
        self.qlog_half(id, "sending", state);
        let _ = (id, state);
    }

    /// The receive half ended as `state`: for metrics and qlog.
    pub(crate) fn recv_moved(&self, id: u64, state: HalfState) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.config.metrics {
            m.half_ended("recv", state, self.transport_label());
        }
        #[cfg(feature = "qlog")]
        self.qlog_half(id, "receiving", state);
        let _ = (id, state);
    }

    #[cfg(feature = "qlog")]
    fn qlog_half(&self, id: u64, side: &str, state: HalfState) {
        if let Some(q) = &self.qlog {
            // Bit 0 of a stream id says who opened it (RFC 9000, 2.1); bit 1 is clear for bidi.
            let ours = (id & 1) == u64::from(self.we_are_server);
            let direction = if ours {
                Direction::Outbound
            } else {
                Direction::Inbound
            };
            q.stream_event(id, direction, side, state);
        }
    }

    /// The watcher watches one more send half.
    pub(crate) fn watching(&self) {
        self.watched.fetch_add(1, Ordering::Relaxed);
    }

    /// The watcher watches one send half less.
    pub(crate) fn unwatched(&self) {
        self.watched.fetch_sub(1, Ordering::Relaxed);
    }

    fn watched_send_halves(&self) -> u64 {
        self.watched.load(Ordering::Relaxed)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Unless the watcher told it as it saw the connection close: the last handle to the
        // session is gone.
        self.tell_story();
    }
}
