//! [`Connection`]: a quinn connection as a libp2p [`StreamMuxer`], the handshake that yields it,
//! and the per-connection state its streams share.

use std::{
    future::Future,
    net::SocketAddr,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use libp2p_core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p_identity::PeerId;

use crate::{
    ledger::{
        ByDirection, Clock, Direction, HalfState, LeakKind, Ledger, Stamp, StreamInfo, Totals,
    },
    stream::{self, Cell, Stream},
    watcher::Watcher,
    Config, Error, PeerIdMismatch,
};

#[cfg(feature = "qlog")]
pub(crate) type Qlog = crate::qlog::QlogFile;
/// Without the `qlog` feature there is never a qlog file.
#[cfg(not(feature = "qlog"))]
pub(crate) type Qlog = std::convert::Infallible;

/// The streams quinn opens (outbound) or accepts (inbound), one after another. One allocation
/// per direction for the connection's life, each open's future made in place inside it,
/// rather than a boxed future and a clone of the connection's handles for every stream.
type Opens = BoxStream<'static, Result<(quinn::SendStream, quinn::RecvStream), Error>>;

/// An established QUIC connection to a peer, multiplexing [`Stream`]s.
///
/// # Drop
///
/// Dropping the `Connection` closes the QUIC connection (code 0) at once; streams still held
/// fail with a connection-lost error.
pub struct Connection {
    connection: quinn::Connection,
    shared: Arc<Shared>,
    inbound: Option<Opens>,
    outbound: Option<Opens>,
    closing: Option<BoxFuture<'static, quinn::ConnectionError>>,
}

/// What a connection's streams, the transport's watcher task and snapshots share.
pub(crate) struct Shared {
    pub(crate) peer: PeerId,
    pub(crate) span: tracing::Span,
    /// The transport's configuration.
    pub(crate) config: Arc<Config>,
    /// Times the ledger's entries.
    pub(crate) clock: Clock,
    /// Ourselves, for the watcher, which must not keep the connection's state alive.
    me: Weak<Shared>,
    /// For the watcher, which waits for its end once the first stream is tracked, and for
    /// snapshots (the address, the id).
    connection: quinn::Connection,
    #[cfg(feature = "qlog")]
    we_are_server: bool,
    live: [AtomicU64; 2],
    /// Send halves the watcher still waits on.
    watched: AtomicU64,
    /// Whether the watcher has been told of the queued streams; see [`Shared::queue`].
    look_asked: AtomicBool,
    /// Whether the watcher knows this connection: told with its first tracked stream.
    tracked: AtomicBool,
    /// Whether the watcher saw the connection close.
    closed: AtomicBool,
    /// Since when an outbound open has been waiting for stream credit, if one is.
    credit_wait_since: Mutex<Option<Instant>>,
    ledger: Option<Mutex<Ledger<Arc<Cell>>>>,
    /// The transport's watcher.
    watcher: Watcher,
    #[cfg(feature = "qlog")]
    qlog: Option<crate::qlog::QlogFile>,
}

impl Shared {
    /// The books, when the ledger is on.
    pub(crate) fn ledger(&self) -> Option<MutexGuard<'_, Ledger<Arc<Cell>>>> {
        self.ledger
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn stream_opened(&self, id: u64, direction: Direction) {
        self.live[direction.index()].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.config.metrics {
            m.stream_opened(direction);
        }
        #[cfg(feature = "qlog")]
        if let Some(q) = &self.qlog {
            q.stream_event(id, direction, "both", HalfState::Open);
        }
        #[cfg(not(feature = "qlog"))]
        let _ = id;
        if self.ledger.is_some()
            && !self.tracked.load(Ordering::Relaxed)
            && !self.tracked.swap(true, Ordering::Relaxed)
        {
            self.watcher.track(self.weak(), self.connection.clone());
        }
    }

    /// A handle to ourselves that does not keep us alive.
    pub(crate) fn weak(&self) -> Weak<Shared> {
        self.me.clone()
    }

    /// Ask the watcher to look at this stream at its next batch. The first stream queued
    /// after a batch sends the only message for the next one.
    pub(crate) fn queue(&self, cell: &Cell) {
        // SeqCst pairs with `take_queued`: either the watcher sees this stream queued, or we
        // see that it has taken the batch and ask for the next one.
        if cell.queue()
            && !self.look_asked.load(Ordering::SeqCst)
            && !self.look_asked.swap(true, Ordering::SeqCst)
        {
            self.watcher.ask(self.weak());
        }
    }

    /// For the watcher: add the streams queued since the last batch to `into`.
    pub(crate) fn take_queued(&self, into: &mut Vec<Arc<Cell>>) {
        self.look_asked.store(false, Ordering::SeqCst);
        if let Some(ledger) = self.ledger() {
            into.extend(ledger.streams().filter(|c| c.take_queued()).cloned());
        }
    }

    /// Let settled streams leave the books. `settled` holds the caller's reference to each,
    /// and afterwards the streams the caller is to drop, outside our lock (the last reference
    /// to a stream frees its quinn halves, which takes quinn's lock).
    ///
    /// The streams that leave are kept for the connection's next openers to free
    /// ([`Stream::new`] takes one each time): memory freed on the thread that allocates is
    /// reused at once, while a batch freed on the watcher's thread overflows the allocator's
    /// per-thread cache and contends for its arena (with glibc, most of what the ledger cost
    /// in the `scale` benchmark). Those no opener took since the last release go back to the
    /// caller, and the watcher's leak scan frees what is left ([`Shared::free_departed`]), so
    /// a connection gone quiet keeps none for longer than a scan period. Once the connection
    /// is closed no opener will come: everything goes back to the caller.
    pub(crate) fn release(&self, settled: &mut Vec<Arc<Cell>>) {
        let Some(mut ledger) = self.ledger() else {
            return;
        };
        for cell in settled.iter() {
            // Never the last reference: the caller's is.
            drop(close(&mut ledger, cell));
        }
        if self.closed.load(Ordering::Acquire) {
            ledger.take_all_departed(settled);
        } else {
            ledger.swap_departed(settled);
        }
        ledger.shrink();
    }

    /// One stream, settled when its watch ended, leaves the books: as [`Shared::release`],
    /// but the others that wait for an opener stay.
    pub(crate) fn release_one(&self, cell: Arc<Cell>) {
        let Some(mut ledger) = self.ledger() else {
            return;
        };
        drop(close(&mut ledger, &cell));
        if self.closed.load(Ordering::Acquire) {
            // No opener will come: freed here, once our lock is let go.
            drop(ledger);
            drop(cell);
        } else {
            ledger.depart(cell);
        }
    }

    /// A stream settled as its handle was dropped leaves the books at once, without the
    /// watcher.
    pub(crate) fn leave(&self, cell: &Arc<Cell>) {
        let Some(mut ledger) = self.ledger() else {
            return;
        };
        let books = close(&mut ledger, cell);
        ledger.shrink();
        drop(ledger);
        // Never the last reference: the dropped handle's is.
        drop(books);
    }

    /// Free the streams that left the books and that no opener took.
    pub(crate) fn free_departed(&self) {
        let mut departed = Vec::new();
        if let Some(mut ledger) = self.ledger() {
            ledger.take_all_departed(&mut departed);
        }
        drop(departed);
    }

    /// The connection is gone: QUIC holds nothing any more, and no opener will come to free
    /// what leaves.
    pub(crate) fn connection_closed(&self) {
        self.closed.store(true, Ordering::Release);
        let mut tracked: Vec<Arc<Cell>> = match self.ledger() {
            Some(ledger) => ledger.streams().cloned().collect(),
            None => return,
        };
        self.release(&mut tracked);
    }

    /// The send half moved to `state`, if it moved: for metrics and qlog (the ledger entry
    /// was updated under the stream's lock).
    pub(crate) fn send_moved(&self, id: u64, state: Option<HalfState>) {
        let Some(state) = state else { return };
        #[cfg(feature = "metrics")]
        if let (Some(m), HalfState::Finished | HalfState::Reset) = (&self.config.metrics, state) {
            m.half_ended("send", state);
        }
        #[cfg(feature = "qlog")]
        self.qlog_half(id, "sending", state);
        let _ = (id, state);
    }

    /// The receive half ended as `state`: for metrics and qlog.
    pub(crate) fn recv_moved(&self, id: u64, state: HalfState) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.config.metrics {
            m.half_ended("recv", state);
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

    pub(crate) fn stream_dropped(&self, direction: Direction) {
        self.live[direction.index()].fetch_sub(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.config.metrics {
            m.stream_dropped(direction);
        }
    }

    fn live_handles(&self) -> ByDirection {
        [
            self.live[0].load(Ordering::Relaxed),
            self.live[1].load(Ordering::Relaxed),
        ]
    }

    fn set_credit_wait(&self, since: Option<Instant>) {
        *self
            .credit_wait_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = since;
    }

    /// Outbound streams open here: tracked by the ledger, or live handles without it.
    fn outbound_open_here(&self) -> u64 {
        match self.ledger() {
            Some(ledger) => ledger
                .streams()
                .filter(|c| c.direction == Direction::Outbound)
                .count() as u64,
            None => self.live_handles()[Direction::Outbound.index()],
        }
    }

    /// The totals and every tracked stream, oldest first.
    fn books(&self, now: Stamp) -> (Totals, Vec<StreamInfo>) {
        let Some(ledger) = self.ledger() else {
            return (Totals::default(), Vec::new());
        };
        let mut totals = ledger.counts();
        let mut streams = Vec::new();
        for cell in ledger.streams() {
            let half = cell.lock();
            if let Some(entry) = &half.entry {
                totals.add(cell.direction, entry);
                streams.push(entry.info(half.id(), cell.direction, &cell.activity, now));
            }
        }
        streams.sort_by_key(|s| std::cmp::Reverse(s.age));
        (totals, streams)
    }

    /// The watcher watches one more send half.
    pub(crate) fn watching(&self) {
        self.watched.fetch_add(1, Ordering::Relaxed);
    }

    /// The watcher watches one send half less.
    pub(crate) fn unwatched(&self) {
        self.watched.fetch_sub(1, Ordering::Relaxed);
    }

    /// Streams to report as possible leaks (quiet for the configured `stream_leak_warning`),
    /// each at most once. Each is first asked whether the peer stopped it
    /// ([`stream::stop_before_report`]), so that the report says so.
    pub(crate) fn suspects(&self) -> Vec<(StreamInfo, LeakKind)> {
        let threshold = self.config.stream_leak_warning;
        let mut found = Vec::new();
        let mut stops = Vec::new();
        if let Some(ledger) = self.ledger() {
            let now = self.clock.now();
            for cell in ledger.streams() {
                let mut half = cell.lock();
                let id = half.id();
                let Some(kind) = half
                    .entry
                    .as_mut()
                    .and_then(|entry| entry.suspect(&cell.activity, now, threshold))
                else {
                    continue;
                };
                stops.push((id, stream::stop_before_report(cell, &mut half, kind)));
                if let Some(entry) = &half.entry {
                    found.push((entry.info(id, cell.direction, &cell.activity, now), kind));
                }
            }
        }
        for (id, stop) in stops {
            stream::report_stop(self, id, stop);
        }
        found
    }

    pub(crate) fn snapshot(&self) -> ConnectionSnapshot {
        let now = Instant::now();
        let (totals, streams) = self.books(self.clock.stamp(now));
        let credit_wait = self
            .credit_wait_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|since| now.saturating_duration_since(since));
        // While an open waits, the peer holds all the credit it granted us: those of our
        // streams not open here are closed on our side but not yet credited back.
        let held_by_peer_closed_here = credit_wait.map(|_| {
            u64::from(self.config.max_concurrent_stream_limit)
                .saturating_sub(self.outbound_open_here())
        });
        ConnectionSnapshot {
            credit_wait,
            held_by_peer_closed_here,
            peer: self.peer,
            connection_id: self.connection.stable_id(),
            remote_address: self.connection.remote_address(),
            stream_limit: self.config.max_concurrent_stream_limit,
            live_handles: self.live_handles(),
            watched_send_halves: self.watched.load(Ordering::Relaxed),
            totals,
            streams,
        }
    }

    /// Say, once per waiting open, why a new outbound stream does not open.
    fn warn_credit_wait(&self, waited: Duration) {
        let open_here = self.outbound_open_here();
        // The peer's limit is not visible through quinn; libp2p peers share the default, so we
        // take our own as the estimate.
        let limit = u64::from(self.config.max_concurrent_stream_limit);
        let closed_not_credited = limit.saturating_sub(open_here);
        let verdict = if closed_not_credited > open_here {
            "the peer holds streams we have closed: a leak on the peer's side"
        } else {
            "our application holds its outbound streams open: a leak on our side"
        };
        tracing::warn!(
            parent: &self.span,
            peer = %self.peer,
            waited = ?waited,
            stream_limit = limit,
            outbound_open_here = open_here,
            outbound_closed_not_credited = closed_not_credited,
            "opening a stream to {} has waited {:?} for stream credit; {} of our streams are \
             still open here and about {} we closed are not credited back: {}",
            self.peer,
            waited,
            open_here,
            closed_not_credited,
            verdict,
        );
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.config.metrics {
            m.credit_wait_warning();
        }
    }
}

/// A point-in-time view of one connection's streams.
#[derive(Debug, Clone)]
pub struct ConnectionSnapshot {
    /// The remote peer.
    pub peer: PeerId,
    /// quinn's stable id of the connection, unique in this process.
    pub connection_id: usize,
    /// The peer's address.
    pub remote_address: SocketAddr,
    /// Our `max_concurrent_stream_limit` (also our estimate of the peer's).
    pub stream_limit: u32,
    /// `Stream` handles alive, by direction; counted even with the ledger off.
    pub live_handles: ByDirection,
    /// Send halves whose end the watcher task still waits to see (the peer's acknowledgement
    /// or STOP_SENDING).
    pub watched_send_halves: u64,
    /// The ledger's totals (all zero when the ledger is off).
    pub totals: Totals,
    /// Every tracked stream, oldest first (empty when the ledger is off).
    pub streams: Vec<StreamInfo>,
    /// How long the current outbound open has waited for stream credit, if one is waiting.
    pub credit_wait: Option<Duration>,
    /// While an open waits for credit: how many of our streams the peer still holds although
    /// they are closed on our side (estimated with our own stream limit as the peer's).
    /// A number near the limit means the leak is on the peer's side.
    pub held_by_peer_closed_here: Option<u64>,
}

impl ConnectionSnapshot {
    /// Whether nothing is left: no handle alive and nothing held by QUIC on our side.
    pub fn is_idle(&self) -> bool {
        self.live_handles == [0, 0]
            && self.totals.tracked_total() == 0
            && self.watched_send_halves == 0
    }
}

/// A handle to the ledgers of every connection a transport made, for users who hand the
/// transport to a `Swarm` and still want to see its streams. Cheap to clone.
#[derive(Clone, Default)]
pub struct Ledgers {
    connections: Arc<Mutex<Vec<Weak<Shared>>>>,
    /// The watcher of these connections' streams.
    watcher: Watcher,
}

impl Ledgers {
    /// The ledgers of a transport with this configuration.
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            connections: Arc::default(),
            watcher: Watcher::new(config.stream_leak_warning),
        }
    }

    fn register(&self, shared: &Arc<Shared>) {
        let mut list = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(shared));
    }

    /// Snapshots of every connection still alive.
    pub fn snapshot(&self) -> Vec<ConnectionSnapshot> {
        let list = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.snapshot())
            .collect()
    }

    /// Snapshots of the connections to `peer`.
    pub fn for_peer(&self, peer: &PeerId) -> Vec<ConnectionSnapshot> {
        self.snapshot()
            .into_iter()
            .filter(|s| &s.peer == peer)
            .collect()
    }
}

impl std::fmt::Debug for Ledgers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledgers").finish_non_exhaustive()
    }
}

impl Connection {
    fn new(
        connection: quinn::Connection,
        peer: PeerId,
        config: Arc<Config>,
        ledgers: &Ledgers,
        qlog: Option<Qlog>,
    ) -> Self {
        #[cfg(not(feature = "qlog"))]
        let _ = qlog;
        let span = tracing::debug_span!(
            "connection",
            %peer,
            id = connection.stable_id(),
            remote = %connection.remote_address(),
        );
        let shared = Arc::new_cyclic(|me| Shared {
            peer,
            span,
            clock: Clock::new(Instant::now()),
            me: me.clone(),
            connection: connection.clone(),
            #[cfg(feature = "qlog")]
            we_are_server: connection.side().is_server(),
            live: Default::default(),
            watched: AtomicU64::new(0),
            look_asked: AtomicBool::new(false),
            tracked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            credit_wait_since: Mutex::new(None),
            ledger: config.stream_ledger.then(Mutex::default),
            watcher: ledgers.watcher.clone(),
            #[cfg(feature = "qlog")]
            qlog,
            config,
        });
        ledgers.register(&shared);
        tracing::debug!(parent: &shared.span, "connection established");
        Self {
            connection,
            shared,
            inbound: None,
            outbound: None,
            closing: None,
        }
    }

    /// The remote peer.
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// What this connection's streams look like now: counts by direction and state, and every
    /// stream our layer still tracks.
    pub fn snapshot(&self) -> ConnectionSnapshot {
        self.shared.snapshot()
    }

    /// The underlying quinn connection, for statistics such as RTT.
    pub fn quinn(&self) -> &quinn::Connection {
        &self.connection
    }
}

impl StreamMuxer for Connection {
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let accepts = this.inbound.get_or_insert_with(|| {
            futures::stream::unfold(this.shared.clone(), |shared| async move {
                let accepted = shared.connection.accept_bi().await.map_err(Error::from);
                Some((accepted, shared))
            })
            .boxed()
        });
        let (send, recv) = futures::ready!(poll_next_open(accepts, cx))?;
        Poll::Ready(Ok(Stream::new(
            send,
            recv,
            Direction::Inbound,
            this.shared.clone(),
        )))
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let opens = this.outbound.get_or_insert_with(|| {
            futures::stream::unfold(this.shared.clone(), |shared| async move {
                let opened = open_with_warning(&shared).await;
                Some((opened, shared))
            })
            .boxed()
        });
        let (send, recv) = futures::ready!(poll_next_open(opens, cx))?;
        Poll::Ready(Ok(Stream::new(
            send,
            recv,
            Direction::Outbound,
            this.shared.clone(),
        )))
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        // Connection migration is off, so the address never changes; the watcher task does the
        // background work.
        Poll::Pending
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let closing = this.closing.get_or_insert_with(|| {
            this.connection.close(0u32.into(), &[]);
            let connection = this.connection.clone();
            async move { connection.closed().await }.boxed()
        });
        match futures::ready!(closing.poll_unpin(cx)) {
            quinn::ConnectionError::LocallyClosed => Poll::Ready(Ok(())),
            error => Poll::Ready(Err(error.into())),
        }
    }
}

/// The next stream `opens` yields: one open or accept, or its error once the connection is
/// gone. Both unfolds' steps always yield, so neither ever ends.
fn poll_next_open(
    opens: &mut Opens,
    cx: &mut Context<'_>,
) -> Poll<Result<(quinn::SendStream, quinn::RecvStream), Error>> {
    opens
        .poll_next_unpin(cx)
        .map(|next| next.expect("an unfold whose every step yields never ends"))
}

/// Open a stream; if credit does not come within the configured time, say why and keep
/// waiting (a muxer error would tear down the whole libp2p connection).
async fn open_with_warning(
    shared: &Shared,
) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
    let mut open = pin!(shared.connection.open_bi());
    if let Some(result) = (&mut open).now_or_never() {
        return Ok(result?);
    }
    let started = Instant::now();
    shared.set_credit_wait(Some(started));
    // Cleared however this future ends, including when the caller drops it.
    let _clear = scopeguard(|| shared.set_credit_wait(None));
    let result = match tokio::time::timeout(shared.config.credit_wait_warning, &mut open).await {
        Ok(result) => result,
        Err(_) => {
            shared.warn_credit_wait(started.elapsed());
            open.await
        }
    };
    #[cfg(feature = "metrics")]
    if let Some(m) = &shared.config.metrics {
        m.credit_waited(started.elapsed());
    }
    Ok(result?)
}

/// Take `cell` out of the books if it is there (its key may be stale); the books' reference.
fn close(ledger: &mut Ledger<Arc<Cell>>, cell: &Arc<Cell>) -> Option<Arc<Cell>> {
    let half = cell.lock();
    let entry = half.entry.as_ref()?;
    let this = |tracked: &Arc<Cell>| Arc::ptr_eq(tracked, cell);
    let rekey = |moved: &Arc<Cell>, key| moved.key.store(key, Ordering::Relaxed);
    let key = cell.key.load(Ordering::Relaxed);
    ledger.close(key, cell.direction, entry, this, rekey)
}

/// Before a stream joins the books: if the newest one there waits for the watcher and QUIC
/// has freed it already, it leaves now (returned, to be dropped once the ledger's lock is let
/// go). In request/response traffic that is the stream before, whose reply the packet opening
/// this one acknowledges: one look here instead of the watcher's later. What is not settled
/// stays queued for the watcher.
pub(crate) fn settle_newest(ledger: &mut Ledger<Arc<Cell>>) -> Option<Arc<Cell>> {
    let newest = ledger.newest()?;
    if !newest.is_queued() || !stream::settled_already(newest) {
        return None;
    }
    let newest = newest.clone();
    close(ledger, &newest)
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The watcher and stream futures hold quinn handles too: close explicitly rather than
        // wait for the last of them.
        self.connection.close(0u32.into(), &[]);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.shared.peer)
            .field("id", &self.connection.stable_id())
            .finish_non_exhaustive()
    }
}

/// A connection whose TLS handshake is under way. Resolves to the peer's id and the
/// [`Connection`], or fails with a typed [`Error`] (timeout, wrong peer, bad certificate).
///
/// # Drop
///
/// Dropping it abandons the handshake; quinn closes the half-made connection.
#[must_use = "futures do nothing unless polled"]
pub struct Connecting {
    inner: BoxFuture<'static, Result<(PeerId, Connection), Error>>,
}

impl Connecting {
    pub(crate) fn new(
        connecting: quinn::Connecting,
        expected_peer: Option<PeerId>,
        config: Arc<Config>,
        ledgers: Ledgers,
        qlog: Option<Qlog>,
    ) -> Self {
        let inner = async move {
            let addr = connecting.remote_address();
            let connection = tokio::time::timeout(config.handshake_timeout, connecting)
                .await
                .map_err(|_| Error::HandshakeTimedOut { addr })??;
            let peer = match peer_id_of(&connection) {
                Ok(peer) => peer,
                Err(e) => {
                    connection.close(0u32.into(), b"invalid certificate");
                    return Err(e);
                }
            };
            if let Some(expected) = expected_peer.filter(|expected| *expected != peer) {
                connection.close(0u32.into(), b"wrong peer id");
                return Err(Error::PeerIdMismatch(Box::new(PeerIdMismatch {
                    expected,
                    actual: peer,
                })));
            }
            Ok((
                peer,
                Connection::new(connection, peer, config, &ledgers, qlog),
            ))
        };
        Self {
            inner: inner.boxed(),
        }
    }
}

impl Future for Connecting {
    type Output = Result<(PeerId, Connection), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll_unpin(cx)
    }
}

impl std::fmt::Debug for Connecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connecting").finish_non_exhaustive()
    }
}

/// The peer id in the certificate the peer presented (libp2p-tls has already verified it).
fn peer_id_of(connection: &quinn::Connection) -> Result<PeerId, Error> {
    let identity = connection
        .peer_identity()
        .ok_or_else(|| Error::InvalidCertificate("no certificate presented".into()))?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| Error::InvalidCertificate("unexpected identity type".into()))?;
    let end_entity = chain
        .first()
        .ok_or_else(|| Error::InvalidCertificate("empty certificate chain".into()))?;
    let certificate = libp2p_tls::certificate::parse(end_entity)
        .map_err(|e| Error::InvalidCertificate(e.to_string()))?;
    Ok(certificate.peer_id())
}
