//! The stream ledger: per connection, every stream our layer knows of and what QUIC still holds
//! of it.
//!
//! Plain data and no I/O (after quinn-proto's example): the [`Stream`](crate::Stream) guard and
//! the transport's watcher task report what they observe, the ledger keeps the books. A stream
//! stays in the ledger after its handle is dropped until QUIC has freed it on our side, so that
//! "libp2p counts 15 streams, QUIC holds 256" cannot happen silently.
//!
//! The books are kept where the stream is: each stream's entry lives in the state it
//! shares with the watcher, and the per-connection ledger only holds the streams still
//! tracked and counts those gone. A stream touches the connection's books twice, when it is
//! opened and when it leaves (as its handle drops, if QUIC holds nothing by then; else when the
//! next stream joins the books and finds it freed, or when the watcher sees it freed); totals
//! are added up when somebody looks.
//!
//! What quinn 0.11 lets us observe, and so what the states mean:
//!
//! | half | state | meaning |
//! |---|---|---|
//! | send | `Open` | we may still write |
//! | send | `Finished` | we sent FIN; the peer has not yet acknowledged all data |
//! | send | `Stopped` | the peer sent STOP_SENDING; we still owe it a RESET_STREAM |
//! | send | `Reset` | we sent RESET_STREAM (quinn does not report its acknowledgement) |
//! | send | `Done` | FIN and all data acknowledged: QUIC freed the half |
//! | recv | `Open` | the peer may still send |
//! | recv | `Finished` | we read to the end: QUIC freed the half |
//! | recv | `Reset` | the peer reset it and we saw it: QUIC freed the half |
//! | recv | `Stopped` | we sent STOP_SENDING; freed once the peer's final size arrives |
//! | recv | `Done` | not used for the receive half |

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Which side opened a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The peer opened it.
    Inbound,
    /// We opened it.
    Outbound,
}

impl Direction {
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, as used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one half of a stream, as seen from our side. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HalfState {
    /// Still usable.
    Open,
    /// Ended cleanly: FIN sent (send half) or read (receive half).
    Finished,
    /// Abandoned with RESET_STREAM: sent by us (send half) or by the peer (receive half).
    Reset,
    /// STOP_SENDING: received from the peer (send half) or sent by us (receive half).
    Stopped,
    /// Freed by QUIC after the peer acknowledged everything (send half only).
    Done,
}

impl HalfState {
    const ALL: [HalfState; 5] = [
        HalfState::Open,
        HalfState::Finished,
        HalfState::Reset,
        HalfState::Stopped,
        HalfState::Done,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, as used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            HalfState::Open => "open",
            HalfState::Finished => "finished",
            HalfState::Reset => "reset",
            HalfState::Stopped => "stopped",
            HalfState::Done => "done",
        }
    }

    /// Whether QUIC may still hold this half on our side, as far as quinn lets us see.
    fn held_as_send(self) -> bool {
        matches!(
            self,
            HalfState::Open | HalfState::Finished | HalfState::Stopped
        )
    }

    fn held_as_recv(self) -> bool {
        self == HalfState::Open
    }
}

impl fmt::Display for HalfState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes each way of one stream, counted lock-free by the stream as it reads and writes. No
/// clock is read on that path: the ledger notices movement when it looks ([`Entry::suspect`]).
#[derive(Debug, Default)]
pub(crate) struct Activity {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Activity {
    pub(crate) fn sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.sent.load(Ordering::Relaxed) + self.received.load(Ordering::Relaxed)
    }
}

/// A moment in a connection's life: milliseconds since its [`Clock`] started. A quarter of
/// an `Instant`, and precise enough for ages and leak thresholds; it stops at about 49 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u32);

impl Stamp {
    /// Time from `self` to `later` (zero if `later` is earlier).
    fn until(self, later: Stamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0).into())
    }
}

/// The clock of one connection's ledger.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn new(start: Instant) -> Self {
        Self { start }
    }

    pub(crate) fn stamp(&self, at: Instant) -> Stamp {
        let millis = at.saturating_duration_since(self.start).as_millis();
        Stamp(u32::try_from(millis).unwrap_or(u32::MAX))
    }

    pub(crate) fn now(&self) -> Stamp {
        self.stamp(Instant::now())
    }
}

/// One stream's page in the books: how each half stands as our layer last saw it, and when
/// the stream was opened, dropped and last moved.
#[derive(Debug)]
pub(crate) struct Entry {
    send: HalfState,
    recv: HalfState,
    /// Whether the stream is reported as a possible leak in its present state.
    warned: bool,
    /// Whether the `Stream` handle is alive.
    alive: bool,
    opened_at: Stamp,
    /// When the `Stream` handle was dropped; meaningless while it is alive. (Not an `Option`:
    /// a flag beside the others keeps the entry at 20 bytes.)
    dropped_at: Stamp,
    /// When the count of bytes moved last changed, and that count as of the last look.
    last_change: Stamp,
    seen_bytes: u32,
}

impl Entry {
    /// A new stream, with both halves open and its handle alive.
    pub(crate) fn new(now: Stamp) -> Self {
        Self {
            send: HalfState::Open,
            recv: HalfState::Open,
            alive: true,
            opened_at: now,
            dropped_at: now,
            seen_bytes: 0,
            last_change: now,
            warned: false,
        }
    }

    /// Our send half moved to `state`; only forward moves are taken. `true` if it moved.
    pub(crate) fn set_send(&mut self, state: HalfState) -> bool {
        let moved = send_may_move(self.send, state);
        if moved {
            self.send = state;
            self.warned = false;
        }
        moved
    }

    /// Our receive half moved to `state`; only moves out of `Open` are taken.
    pub(crate) fn set_recv(&mut self, state: HalfState) -> bool {
        let moved =
            self.recv == HalfState::Open && !matches!(state, HalfState::Open | HalfState::Done);
        if moved {
            self.recv = state;
            self.warned = false;
        }
        moved
    }

    /// The application dropped the `Stream` handle, at `at`; `None` for a stream that leaves
    /// the books at once, whose time of drop nobody will ask (and the clock is not read).
    pub(crate) fn handle_dropped(&mut self, at: Option<Stamp>) {
        if self.alive {
            self.alive = false;
            self.warned = false;
            if let Some(at) = at {
                self.dropped_at = at;
            }
        }
    }

    /// When the handle was dropped, if it was.
    fn dropped(&self) -> Option<Stamp> {
        (!self.alive).then_some(self.dropped_at)
    }

    /// How long since the handle was dropped, or, while it is alive, since the stream opened.
    pub(crate) fn quiet_for(&self, now: Stamp) -> Duration {
        self.dropped().unwrap_or(self.opened_at).until(now)
    }

    pub(crate) fn handle_alive(&self) -> bool {
        self.alive
    }

    /// Whether QUIC may still hold this stream on our side, as far as quinn lets us see.
    pub(crate) fn held_by_quic(&self) -> bool {
        self.send.held_as_send() || self.recv.held_as_recv()
    }

    /// Whether the stream can leave the books: its handle is gone and QUIC holds nothing.
    pub(crate) fn settled(&self) -> bool {
        !self.handle_alive() && !self.held_by_quic()
    }

    /// Whether to report this stream as a possible leak now: once, and again only after its
    /// state changed (a half moved, the handle was dropped, or it carried data and went quiet
    /// again).
    pub(crate) fn suspect(
        &mut self,
        activity: &Activity,
        now: Stamp,
        threshold: Duration,
    ) -> Option<LeakKind> {
        // A settled stream holds nothing: it is leaving the books, and its time of drop may
        // not have been read (`handle_dropped(None)`).
        if self.settled() {
            return None;
        }
        // The low 32 bits are enough to see movement: only exactly a multiple of 4 GiB moved
        // between two scans would read as none, for one scan. Seen even of a stream reported
        // already, so that its `idle` in snapshots keeps following its traffic.
        let moved = activity.total() as u32;
        if moved != self.seen_bytes {
            self.seen_bytes = moved;
            self.last_change = now;
            self.warned = false;
        }
        if self.warned {
            return None;
        }
        let kind = match self.dropped() {
            Some(at) if at.until(now) >= threshold => LeakKind::HeldAfterDrop,
            None if self.last_change.until(now) >= threshold => LeakKind::IdleHandle,
            _ => return None,
        };
        self.warned = true;
        Some(kind)
    }

    /// Mark the stream reported in its present state (after a report found news of it).
    pub(crate) fn mark_reported(&mut self) {
        self.warned = true;
    }

    /// How the stream stands reported, if it is: reported and unchanged since.
    pub(crate) fn reported(&self) -> Option<LeakKind> {
        self.warned.then_some(if self.alive {
            LeakKind::IdleHandle
        } else {
            LeakKind::HeldAfterDrop
        })
    }

    /// The stream as a snapshot shows it.
    pub(crate) fn info(
        &self,
        id: u64,
        direction: Direction,
        activity: &Activity,
        now: Stamp,
    ) -> StreamInfo {
        StreamInfo {
            id,
            direction,
            send: self.send,
            recv: self.recv,
            age: self.opened_at.until(now),
            idle: self.last_change.until(now),
            handle_alive: self.handle_alive(),
            bytes_sent: activity.sent.load(Ordering::Relaxed),
            bytes_received: activity.received.load(Ordering::Relaxed),
        }
    }
}

/// Counts by direction; index with [`Direction`].
pub type ByDirection = [u64; 2];

/// Totals over a connection's ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Streams in the ledger (handle alive, or still held by QUIC on our side).
    pub tracked: ByDirection,
    /// Of those, streams whose `Stream` handle is alive.
    pub live_handles: ByDirection,
    /// Of those, streams whose handle is gone but which QUIC may still hold on our side (or
    /// whose release the watcher has yet to see).
    pub held_after_drop: ByDirection,
    /// Tracked streams per send-half state, indexed like [`HalfState`].
    pub send_states: [u64; 5],
    /// Tracked streams per receive-half state, indexed like [`HalfState`].
    pub recv_states: [u64; 5],
    /// Streams ever opened.
    pub opened: ByDirection,
    /// Streams that left the ledger, with how their send half ended: finished, reset.
    pub ended_send: [ByDirection; 2],
    /// Streams that left the ledger, with how their receive half ended: finished, reset by the
    /// peer, stopped by us.
    pub ended_recv: [ByDirection; 3],
}

impl Totals {
    /// Tracked streams in both directions.
    pub fn tracked_total(&self) -> u64 {
        self.tracked.iter().sum()
    }

    /// Tracked streams whose send half is in `state`.
    pub fn send_in(&self, state: HalfState) -> u64 {
        self.send_states[state.index()]
    }

    /// Tracked streams whose receive half is in `state`.
    pub fn recv_in(&self, state: HalfState) -> u64 {
        self.recv_states[state.index()]
    }

    /// Count one tracked stream.
    pub(crate) fn add(&mut self, direction: Direction, entry: &Entry) {
        let d = direction.index();
        self.tracked[d] += 1;
        if entry.handle_alive() {
            self.live_handles[d] += 1;
        } else {
            self.held_after_drop[d] += 1;
        }
        self.send_states[entry.send.index()] += 1;
        self.recv_states[entry.recv.index()] += 1;
    }
}

/// One stream, as a snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The QUIC stream id.
    pub id: u64,
    /// Who opened it.
    pub direction: Direction,
    /// Our send half.
    pub send: HalfState,
    /// Our receive half.
    pub recv: HalfState,
    /// Time since it was opened.
    pub age: Duration,
    /// Time since it last carried data (or since it was opened), as of the last leak scan: the
    /// hot path reads no clock, so this is precise to the scan's period, a quarter of
    /// `stream_leak_warning` and at most 5 s.
    pub idle: Duration,
    /// Whether the application still holds the `Stream` handle.
    pub handle_alive: bool,
    /// Bytes we wrote.
    pub bytes_sent: u64,
    /// Bytes we read.
    pub bytes_received: u64,
}

/// Why a stream is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakKind {
    /// The handle was dropped, yet QUIC still holds the stream on our side.
    HeldAfterDrop,
    /// The handle is alive and nothing moved for `stream_leak_warning`, whether or not a half
    /// is still open.
    IdleHandle,
}

impl LeakKind {
    /// Lower-case name, as used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            LeakKind::HeldAfterDrop => "held_after_drop",
            LeakKind::IdleHandle => "idle_handle",
        }
    }
}

/// The books of one connection: the streams still tracked (`S` is what the connection keeps
/// of each, holding its [`Entry`]), and counts of all that were opened and have left.
///
/// The tracked streams lie packed in a `Vec`, each at its key: a stream that leaves takes the
/// last one's place, which is told its new key. A slot is a pointer, half a slab's.
#[derive(Debug)]
pub(crate) struct Ledger<S> {
    streams: Vec<S>,
    /// Streams that left the books and wait to be dropped ([`Ledger::take_departed`]).
    departed: Vec<S>,
    opened: ByDirection,
    ended_send: [ByDirection; 2],
    ended_recv: [ByDirection; 3],
}

impl<S> Default for Ledger<S> {
    fn default() -> Self {
        Self {
            streams: Vec::new(),
            departed: Vec::new(),
            opened: [0; 2],
            ended_send: [[0; 2]; 2],
            ended_recv: [[0; 2]; 3],
        }
    }
}

impl<S> Ledger<S> {
    /// A new stream: `make` is given its key, which [`Ledger::close`] takes (and which may
    /// change when another stream leaves).
    pub(crate) fn open(&mut self, direction: Direction, make: impl FnOnce(u32) -> S) -> &S {
        self.opened[direction.index()] += 1;
        // Each tracked stream holds well over a hundred bytes: 2^32 of them cannot exist.
        let key = u32::try_from(self.streams.len()).expect("fewer than 2^32 streams tracked");
        self.streams.push(make(key));
        &self.streams[self.streams.len() - 1]
    }

    /// A stream leaves the books, ending as `entry` says; `is_it` checks that `key` still
    /// names it. The stream that takes its place is given its new key with `rekey`.
    pub(crate) fn close(
        &mut self,
        key: u32,
        direction: Direction,
        entry: &Entry,
        is_it: impl FnOnce(&S) -> bool,
        rekey: impl FnOnce(&S, u32),
    ) -> Option<S> {
        let index = key as usize;
        if !self.streams.get(index).is_some_and(is_it) {
            return None;
        }
        let stream = self.streams.swap_remove(index);
        if let Some(moved) = self.streams.get(index) {
            rekey(moved, key);
        }
        let d = direction.index();
        let send_end = usize::from(matches!(entry.send, HalfState::Reset | HalfState::Stopped));
        self.ended_send[send_end][d] += 1;
        let recv_end = match entry.recv {
            HalfState::Reset => 1,
            HalfState::Stopped | HalfState::Open => 2,
            _ => 0,
        };
        self.ended_recv[recv_end][d] += 1;
        Some(stream)
    }

    /// Streams that left the books, to be dropped by the next caller of
    /// [`Ledger::take_departed`]; `departed` gets those that waited since the last swap.
    pub(crate) fn swap_departed(&mut self, departed: &mut Vec<S>) {
        std::mem::swap(&mut self.departed, departed);
    }

    /// One stream that left the books, to drop.
    pub(crate) fn take_departed(&mut self) -> Option<S> {
        self.departed.pop()
    }

    /// The stream at the end of the books: usually the one that joined last (a stream that
    /// leaves gives its slot to the last one, so after that it may be an older one).
    pub(crate) fn newest(&self) -> Option<&S> {
        self.streams.last()
    }

    /// Keep a stream that left the books for [`Ledger::take_departed`].
    pub(crate) fn depart(&mut self, stream: S) {
        self.departed.push(stream);
    }

    /// Move every stream that left the books into `into`, to drop.
    pub(crate) fn take_all_departed(&mut self, into: &mut Vec<S>) {
        into.append(&mut self.departed);
    }

    /// The streams still tracked.
    pub(crate) fn streams(&self) -> impl Iterator<Item = &S> {
        self.streams.iter()
    }

    /// Totals with nothing tracked yet: add each tracked stream with [`Totals::add`].
    pub(crate) fn counts(&self) -> Totals {
        Totals {
            opened: self.opened,
            ended_send: self.ended_send,
            ended_recv: self.ended_recv,
            ..Totals::default()
        }
    }

    /// Give memory back once a burst of streams has left.
    pub(crate) fn shrink(&mut self) {
        if self.streams.is_empty() && self.streams.capacity() > 64 {
            self.streams = Vec::new();
        }
    }
}

/// Send-half transitions: forward only, and `Stopped` only from a half that could still send.
fn send_may_move(from: HalfState, to: HalfState) -> bool {
    use HalfState::*;
    matches!(
        (from, to),
        (Open, Finished | Reset | Stopped | Done)
            | (Finished, Reset | Stopped | Done)
            | (Stopped, Reset | Done)
            | (Reset, Done)
    )
}

impl HalfState {
    /// Every state, in index order.
    pub fn all() -> [HalfState; 5] {
        Self::ALL
    }
}

#[cfg(test)]
mod tests;
