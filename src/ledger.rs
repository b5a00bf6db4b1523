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
        }
        moved
    }

    /// Our receive half moved to `state`; only moves out of `Open` are taken.
    pub(crate) fn set_recv(&mut self, state: HalfState) -> bool {
        let moved =
            self.recv == HalfState::Open && !matches!(state, HalfState::Open | HalfState::Done);
        if moved {
            self.recv = state;
        }
        moved
    }

    /// The application dropped the `Stream` handle, at `at`; `None` for a stream that leaves
    /// the books at once, whose time of drop nobody will ask (and the clock is not read).
    pub(crate) fn handle_dropped(&mut self, at: Option<Stamp>) {
        if self.alive {
            self.alive = false;
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

    /// Whether to report this stream as a possible leak now; each stream at most once.
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
mod tests {
    use super::*;
    use HalfState::*;

    /// A stream as the books keep it: its id (the test's name for it), its key, which moves.
    struct Tracked {
        id: u32,
        key: std::cell::Cell<u32>,
        direction: Direction,
    }

    /// A connection's books with streams kept as plain entries, as the connection keeps them
    /// inside each stream's shared state.
    struct Books {
        ledger: Ledger<std::rc::Rc<Tracked>>,
        entries: std::collections::HashMap<u32, Entry>,
        next_id: u32,
    }

    impl Books {
        fn new() -> Self {
            Self {
                ledger: Ledger::default(),
                entries: Default::default(),
                next_id: 0,
            }
        }

        /// Open a stream; its id.
        fn open(&mut self, direction: Direction) -> u32 {
            let id = self.next_id;
            self.next_id += 1;
            self.ledger.open(direction, |key| {
                std::rc::Rc::new(Tracked {
                    id,
                    key: key.into(),
                    direction,
                })
            });
            self.entries.insert(id, Entry::new(Stamp(0)));
            id
        }

        fn entry(&mut self, id: u32) -> &mut Entry {
            self.entries.get_mut(&id).expect("tracked")
        }

        fn key_of(&self, id: u32) -> u32 {
            let tracked = self.ledger.streams().find(|t| t.id == id);
            tracked.expect("tracked").key.get()
        }

        /// What the watcher does: let settled streams go.
        fn settle(&mut self) {
            let settled: Vec<std::rc::Rc<Tracked>> = self
                .ledger
                .streams()
                .filter(|t| self.entries[&t.id].settled())
                .cloned()
                .collect();
            for t in settled {
                let entry = self.entries.remove(&t.id).expect("tracked");
                let is_it = |s: &std::rc::Rc<Tracked>| std::rc::Rc::ptr_eq(s, &t);
                let rekey = |moved: &std::rc::Rc<Tracked>, key| moved.key.set(key);
                let left = self
                    .ledger
                    .close(t.key.get(), t.direction, &entry, is_it, rekey);
                assert!(left.is_some());
            }
        }

        fn totals(&self) -> Totals {
            let mut totals = self.ledger.counts();
            for t in self.ledger.streams() {
                totals.add(t.direction, &self.entries[&t.id]);
            }
            totals
        }
    }

    /// The totals agree with themselves: every tracked stream is counted once per column.
    fn consistent(totals: &Totals) {
        for d in 0..2 {
            assert_eq!(
                totals.tracked[d],
                totals.live_handles[d] + totals.held_after_drop[d]
            );
        }
        assert_eq!(
            totals.send_states.iter().sum::<u64>(),
            totals.tracked_total()
        );
        assert_eq!(
            totals.recv_states.iter().sum::<u64>(),
            totals.tracked_total()
        );
        let ended: u64 = totals.ended_send.iter().flatten().sum();
        assert_eq!(ended, totals.ended_recv.iter().flatten().sum::<u64>());
        assert_eq!(
            totals.opened.iter().sum::<u64>(),
            totals.tracked_total() + ended
        );
    }

    #[test]
    fn request_response_leaves_no_trace() {
        let mut b = Books::new();
        let s = b.open(Direction::Outbound);
        b.entry(s).set_send(Finished);
        b.entry(s).set_recv(Finished);
        b.entry(s).handle_dropped(Some(Stamp(0)));
        b.settle();
        // FIN not yet acknowledged: QUIC still holds the send half.
        assert_eq!(b.totals().held_after_drop, [0, 1]);
        consistent(&b.totals());
        b.entry(s).set_send(Done);
        b.settle();
        let t = b.totals();
        assert_eq!(t.tracked_total(), 0);
        assert_eq!(t.ended_send[0], [0, 1]);
        assert_eq!(t.ended_recv[0], [0, 1]);
        consistent(&t);
    }

    #[test]
    fn every_send_transition_is_forward_only() {
        for from in HalfState::all() {
            for to in HalfState::all() {
                let mut e = Entry::new(Stamp(0));
                if from != Open {
                    assert!(e.set_send(from));
                }
                let moved = e.set_send(to);
                assert_eq!(moved, send_may_move(from, to), "{from} -> {to}");
                assert_eq!(e.send, if moved { to } else { from }, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn every_recv_transition_leaves_open_once() {
        for to in HalfState::all() {
            let mut e = Entry::new(Stamp(0));
            e.set_recv(to);
            let expected = if to == Done { Open } else { to };
            assert_eq!(e.recv, expected);
            // Once out of `Open`, the receive half does not move again.
            assert_eq!(e.set_recv(Reset), expected == Open);
            if expected != Open {
                assert_eq!(e.recv, expected);
            }
        }
    }

    #[test]
    fn totals_equal_the_sum_of_the_streams_through_every_state() {
        let mut b = Books::new();
        let mut keys = Vec::new();
        for send in HalfState::all() {
            for recv in HalfState::all() {
                for dropped in [false, true] {
                    let direction = if dropped {
                        Direction::Inbound
                    } else {
                        Direction::Outbound
                    };
                    let k = b.open(direction);
                    b.entry(k).set_send(send);
                    b.entry(k).set_recv(recv);
                    if dropped {
                        b.entry(k).handle_dropped(Some(Stamp(0)));
                    }
                    keys.push(k);
                    consistent(&b.totals());
                }
            }
        }
        b.settle();
        let t = b.totals();
        consistent(&t);
        // Dropped streams whose send half is reset or done and whose receive half is not open
        // have left; every other stream is still tracked.
        let left = t.ended_send.iter().flatten().sum::<u64>();
        assert_eq!(
            left,
            2 * 3,
            "send Reset or Done x recv Finished, Reset or Stopped"
        );
        assert_eq!(t.opened, [25, 25]);
    }

    #[test]
    fn dropped_stream_stays_until_quic_frees_it() {
        let mut b = Books::new();
        let s = b.open(Direction::Inbound);
        b.entry(s).handle_dropped(Some(Stamp(0)));
        b.entry(s).set_recv(Stopped);
        b.settle();
        assert_eq!(b.totals().held_after_drop, [1, 0], "send half still open");
        b.entry(s).set_send(Finished);
        b.settle();
        assert_eq!(b.totals().tracked_total(), 1, "FIN not acknowledged");
        b.entry(s).set_send(Done);
        b.settle();
        assert_eq!(b.totals().tracked_total(), 0);
        assert_eq!(b.totals().ended_recv[2], [1, 0]);
        consistent(&b.totals());
    }

    #[test]
    fn reset_frees_without_acknowledgement() {
        let mut b = Books::new();
        let s = b.open(Direction::Inbound);
        b.entry(s).set_send(Stopped);
        b.entry(s).set_recv(Finished);
        b.entry(s).handle_dropped(Some(Stamp(0)));
        b.settle();
        assert_eq!(
            b.totals().tracked_total(),
            1,
            "STOP_SENDING still owes a reset"
        );
        b.entry(s).set_send(Reset);
        b.settle();
        assert_eq!(b.totals().tracked_total(), 0);
        assert_eq!(b.totals().ended_send[1], [1, 0]);
    }

    #[test]
    fn stamps_measure_milliseconds_and_stop_at_the_end_of_their_range() {
        let start = Instant::now();
        let clock = Clock::new(start);
        let a = clock.stamp(start + Duration::from_millis(1500));
        let b = clock.stamp(start + Duration::from_millis(4000));
        assert_eq!(a.until(b), Duration::from_millis(2500));
        assert_eq!(b.until(a), Duration::ZERO);
        if let Some(before) = start.checked_sub(Duration::from_millis(1)) {
            assert_eq!(clock.stamp(before), Stamp(0));
        }
        let far = clock.stamp(start + Duration::from_secs(60 * 86_400));
        assert_eq!(far, Stamp(u32::MAX));
    }

    #[test]
    fn keys_are_reused_and_memory_given_back() {
        let mut b = Books::new();
        let ids: Vec<u32> = (0..100).map(|_| b.open(Direction::Outbound)).collect();
        for &id in &ids {
            b.entry(id).set_send(Reset);
            b.entry(id).set_recv(Stopped);
            b.entry(id).handle_dropped(Some(Stamp(0)));
        }
        b.settle();
        assert_eq!(b.totals().tracked_total(), 0);
        b.ledger.shrink();
        assert_eq!(b.ledger.streams.capacity(), 0);
        let next = b.open(Direction::Inbound);
        assert_eq!(b.key_of(next), 0);
        assert_eq!(b.totals().opened, [1, 100]);
    }

    #[test]
    fn a_stale_key_closes_nothing() {
        use std::rc::Rc;
        let mut ledger: Ledger<Rc<u32>> = Ledger::default();
        let first = ledger.open(Direction::Inbound, |_| Rc::new(1)).clone();
        ledger.open(Direction::Inbound, |_| Rc::new(2));
        let entry = Entry::new(Stamp(0));
        let is_first = |s: &Rc<u32>| Rc::ptr_eq(s, &first);
        let moved_to = std::cell::Cell::new(None);
        let rekey = |_: &Rc<u32>, key| moved_to.set(Some(key));
        let left = ledger.close(0, Direction::Inbound, &entry, is_first, rekey);
        assert!(left.is_some());
        assert_eq!(moved_to.get(), Some(0));
        // Key 0 names the second stream now: the first's stale key finds nothing.
        let again = ledger.close(0, Direction::Inbound, &entry, is_first, |_, _| {});
        assert!(again.is_none());
        assert_eq!(ledger.streams().map(|s| **s).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn departed_streams_wait_for_whoever_drops_them() {
        let mut ledger: Ledger<u32> = Ledger::default();
        ledger.depart(1);
        ledger.depart(2);
        let mut handed_back = vec![3];
        ledger.swap_departed(&mut handed_back);
        assert_eq!(handed_back, [1, 2]);
        assert_eq!(ledger.take_departed(), Some(3));
        assert_eq!(ledger.take_departed(), None);
        ledger.depart(4);
        let mut all = Vec::new();
        ledger.take_all_departed(&mut all);
        assert_eq!((all, ledger.take_departed()), (vec![4], None));
    }

    #[test]
    fn a_stream_that_leaves_gives_its_key_to_the_last() {
        let mut b = Books::new();
        let [first, second, last] = [(); 3].map(|()| b.open(Direction::Inbound));
        b.entry(first).set_send(Reset);
        b.entry(first).set_recv(Finished);
        b.entry(first).handle_dropped(Some(Stamp(0)));
        b.settle();
        assert_eq!((b.key_of(last), b.key_of(second)), (0, 1));
        // The moved stream leaves by its new key, and a stale key finds nothing.
        b.entry(last).set_send(Reset);
        b.entry(last).set_recv(Finished);
        b.entry(last).handle_dropped(Some(Stamp(0)));
        b.settle();
        assert_eq!(b.key_of(second), 0);
        let gone = Entry::new(Stamp(0));
        assert!(b
            .ledger
            .close(1, Direction::Inbound, &gone, |_| true, |_, _| {})
            .is_none());
        let totals = b.totals();
        consistent(&totals);
        assert_eq!(totals.tracked, [1, 0]);
    }

    #[test]
    fn suspects_are_reported_once() {
        let start = Instant::now();
        let clock = Clock::new(start);
        let at = |secs| clock.stamp(start + Duration::from_secs(secs));
        let t0 = at(0);
        let activity = Activity::default();
        let mut idle = Entry::new(t0);
        let mut held = Entry::new(t0);
        held.handle_dropped(Some(t0));
        let (soon, later) = (at(30), at(120));
        let threshold = Duration::from_secs(60);
        assert_eq!(idle.suspect(&activity, soon, threshold), None);
        // Data moved: the idle clock starts again at the look that saw it.
        activity.sent(5);
        assert_eq!(idle.suspect(&activity, soon, threshold), None);
        assert_eq!(
            idle.suspect(&activity, at(90), threshold),
            Some(LeakKind::IdleHandle)
        );
        assert_eq!(
            held.suspect(&activity, later, threshold),
            Some(LeakKind::HeldAfterDrop)
        );
        assert_eq!(
            held.info(4, Direction::Inbound, &activity, later).age,
            Duration::from_secs(120)
        );
        assert_eq!(idle.suspect(&activity, later, threshold), None);
        assert_eq!(held.suspect(&activity, later, threshold), None);
    }

    /// A stream settled as its handle drops reads no clock for the drop and leaves the books
    /// at once; a leak scan between the two must not take its open for its drop.
    #[test]
    fn a_settled_stream_is_never_a_suspect() {
        let start = Instant::now();
        let clock = Clock::new(start);
        let mut entry = Entry::new(clock.stamp(start));
        entry.set_send(HalfState::Reset);
        entry.set_recv(HalfState::Stopped);
        entry.handle_dropped(None);
        let later = clock.stamp(start + Duration::from_secs(120));
        let threshold = Duration::from_secs(60);
        assert_eq!(entry.suspect(&Activity::default(), later, threshold), None);
    }

    /// A stream is reported once; afterwards the scans still see its traffic, so that a
    /// snapshot's `idle` says when it last moved, not when it was reported.
    #[test]
    fn a_reported_stream_s_idle_time_follows_its_traffic() {
        let start = Instant::now();
        let clock = Clock::new(start);
        let at = |secs| clock.stamp(start + Duration::from_secs(secs));
        let threshold = Duration::from_secs(60);
        let activity = Activity::default();
        let mut entry = Entry::new(at(0));
        assert_eq!(
            entry.suspect(&activity, at(60), threshold),
            Some(LeakKind::IdleHandle)
        );
        activity.sent(8);
        assert_eq!(entry.suspect(&activity, at(90), threshold), None);
        let info = entry.info(0, Direction::Outbound, &activity, at(100));
        assert_eq!(info.idle, Duration::from_secs(10));
    }
}
