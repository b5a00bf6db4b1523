//! The session's books: streams join the ledger as they open, leave once QUIC holds nothing of
//! them, and snapshots add up what is there.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use libp2p_identity::PeerId;

use super::{
    cell::{self, Cell},
    Session,
};
use crate::ledger::{ByDirection, Direction, Entry, LeakKind, Ledger, Stamp, StreamInfo, Totals};

impl Session {
    /// A new stream joins the books: `make` builds its shared state from its key and its page
    /// of the ledger (`None`, and a meaningless key, with the ledger off).
    ///
    /// On the way, the opener frees one stream that left the books before (see
    /// [`Session::release`]), and the newest stream there leaves if QUIC has freed it
    /// ([`settle_newest`]); both after our lock is let go, since freeing quinn's halves takes
    /// quinn's lock.
    pub(crate) fn join(
        &self,
        direction: Direction,
        make: impl FnOnce(u32, Option<Entry>) -> Arc<Cell>,
    ) -> Arc<Cell> {
        let (mut departed, mut settled) = (None, None);
        let cell = match self.ledger() {
            Some(mut ledger) => {
                departed = ledger.take_departed();
                settled = settle_newest(&mut ledger);
                let entry = Entry::new(self.clock.now());
                ledger.open(direction, |key| make(key, Some(entry))).clone()
            }
            None => make(u32::MAX, None),
        };
        drop((departed, settled));
        cell
    }

    /// Ask the watcher to look at this stream at its next batch. The first stream queued
    /// after a batch sends the only request for the next one.
    pub(crate) fn queue(&self, cell: &Cell) {
        // SeqCst pairs with `take_queued`: either the watcher sees this stream queued, or we
        // see that it has taken the batch and ask for the next one.
        if cell.queue()
            && !self.look_asked.load(Ordering::SeqCst)
            && !self.look_asked.swap(true, Ordering::SeqCst)
        {
            self.inbox.ask(self.weak());
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
    /// The streams that leave are kept for the session's next openers to free
    /// ([`Session::join`] takes one each time): memory freed on the thread that allocates is
    /// reused at once, while a batch freed on the watcher's thread overflows the allocator's
    /// per-thread cache and contends for its arena (with glibc, most of what the ledger cost
    /// in the `scale` benchmark). Those no opener took since the last release go back to the
    /// caller, and the watcher's leak scan frees what is left ([`Session::free_departed`]), so
    /// a session gone quiet keeps none for longer than a scan period. Once the connection
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

    /// One stream, settled when its watch ended, leaves the books: as [`Session::release`],
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

    /// Outbound streams open here: tracked by the ledger, or live handles without it.
    pub(crate) fn outbound_open_here(&self) -> u64 {
        match self.ledger() {
            Some(ledger) => ledger
                .streams()
                .filter(|c| c.direction == Direction::Outbound)
                .count() as u64,
            None => self.live_handles()[Direction::Outbound.index()],
        }
    }

    /// Streams opened, by direction, and streams still tracked; `None` with the ledger off. A
    /// look at the books' counts, without a snapshot's visit to every stream.
    pub(crate) fn stream_counts(&self) -> Option<(ByDirection, usize)> {
        let ledger = self.ledger()?;
        Some((ledger.counts().opened, ledger.streams().count()))
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

    /// The leak scan's findings: every stream reported as a possible leak, and which of them
    /// are news (quiet for the configured `stream_leak_warning`, and not reported in their
    /// present state before). Each new one is first asked whether the peer stopped it
    /// ([`cell::stop_before_report`]), so that the report says so.
    pub(crate) fn suspects(&self) -> Vec<Suspect> {
        let threshold = self.config.stream_leak_warning;
        let mut found = Vec::new();
        let mut stops = Vec::new();
        if let Some(ledger) = self.ledger() {
            let now = self.clock.now();
            for cell in ledger.streams() {
                let mut half = cell.lock();
                let id = half.id();
                let new = half
                    .entry
                    .as_mut()
                    .and_then(|entry| entry.suspect(&cell.activity, now, threshold));
                if let Some(kind) = new {
                    stops.push((id, cell::stop_before_report(cell, &mut half, kind)));
                }
                let Some(entry) = half.entry.as_mut() else {
                    continue;
                };
                if new.is_some() {
                    // What the question to quinn found is part of this report, not news.
                    entry.mark_reported();
                }
                if let Some(kind) = entry.reported() {
                    let info = entry.info(id, cell.direction, &cell.activity, now);
                    let new = new.is_some();
                    found.push(Suspect { info, kind, new });
                }
            }
        }
        for (id, stop) in stops {
            cell::report_stop(self, id, stop);
        }
        found
    }

    /// A point-in-time view of the session's streams.
    pub(crate) fn snapshot(&self) -> ConnectionSnapshot {
        let now = self.clock.now();
        let (totals, streams) = self.books(now);
        let credit_wait = self.credit_waited();
        let stream_limit = self.config.max_concurrent_stream_limit;
        // While an open waits, the peer holds all the credit it granted us: those of our
        // streams not open here are closed on our side but not yet credited back.
        let held_by_peer_closed_here =
            credit_wait.map(|_| u64::from(stream_limit).saturating_sub(self.outbound_open_here()));
        ConnectionSnapshot {
            number: self.number,
            peer: self.peer,
            connection_id: self.connection.stable_id(),
            webtransport: self.webtransport(),
            key_exchange: crate::key_exchange::negotiated(&self.connection),
            remote_address: self.remote_address(),
            stream_limit,
            live_handles: self.live_handles(),
            watched_send_halves: self.watched_send_halves(),
            totals,
            streams,
            credit_wait,
            held_by_peer_closed_here,
        }
    }
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
fn settle_newest(ledger: &mut Ledger<Arc<Cell>>) -> Option<Arc<Cell>> {
    let newest = ledger.newest()?;
    if !newest.is_queued() || !cell::settled_already(newest) {
        return None;
    }
    let newest = newest.clone();
    close(ledger, &newest)
}

/// A stream reported as a possible leak, as it stands.
pub(crate) struct Suspect {
    pub(crate) info: StreamInfo,
    pub(crate) kind: LeakKind,
    /// Whether this scan reported it first (in its present state).
    pub(crate) new: bool,
}

/// A point-in-time view of one connection's streams.
#[derive(Debug, Clone)]
pub struct ConnectionSnapshot {
    /// The connection's number in its transport (1, 2, …), unique per transport: its short
    /// name in logs (`conn #3`).
    pub number: u64,
    /// The remote peer.
    pub peer: PeerId,
    /// quinn's stable id of the connection, unique in this process.
    pub connection_id: usize,
    /// Whether the connection carries a WebTransport session (else libp2p's QUIC).
    pub webtransport: bool,
    /// The TLS key-exchange group the handshake negotiated, as our side of it saw it:
    /// `"X25519MLKEM768"` (hybrid post-quantum) with today's peers, `"X25519"` with peers
    /// without it.
    pub key_exchange: Option<String>,
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
