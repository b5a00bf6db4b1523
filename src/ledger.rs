//! The stream ledger: per connection, every stream our layer knows of and what QUIC still holds
//! of it.
//!
//! Plain data and no I/O (after quinn-proto's example): the [`Stream`](crate::Stream) guard and
//! the connection's watcher task report what they observe, the ledger keeps the books. A stream
//! stays in the ledger after its handle is dropped until QUIC has freed it on our side, so that
//! "libp2p counts 15 streams, QUIC holds 256" cannot happen silently.
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
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
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
/// clock is read on that path: the ledger notices movement when it looks (`suspects`).
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

/// One stream in the ledger.
#[derive(Debug)]
struct Entry {
    direction: Direction,
    send: HalfState,
    recv: HalfState,
    opened_at: Instant,
    /// When the `Stream` handle was dropped; `None` while it is alive.
    dropped_at: Option<Instant>,
    activity: Arc<Activity>,
    /// Bytes moved as of the last look, and when that count last changed.
    seen_bytes: u64,
    last_change: Instant,
    warned: bool,
}

impl Entry {
    fn held_by_quic(&self) -> bool {
        self.send.held_as_send() || self.recv.held_as_recv()
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
    /// Of those, streams whose handle is gone but which QUIC still holds on our side.
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
    /// hot path reads no clock, so this is precise to a quarter of `stream_leak_warning`.
    pub idle: Duration,
    /// Whether the application still holds the `Stream` handle.
    pub handle_alive: bool,
    /// Bytes we wrote.
    pub bytes_sent: u64,
    /// Bytes we read.
    pub bytes_received: u64,
}

/// A stream the ledger reports as a possible leak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suspect {
    pub(crate) info: StreamInfo,
    pub(crate) kind: LeakKind,
}

/// Why a stream is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakKind {
    /// The handle was dropped, yet QUIC still holds the stream on our side.
    HeldAfterDrop,
    /// The handle is alive, the stream has a half open, and nothing moved for a long time.
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

/// The books of one connection.
#[derive(Debug)]
pub struct Ledger {
    streams: HashMap<u64, Entry>,
    totals: Totals,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self {
            streams: HashMap::new(),
            totals: Totals::default(),
        }
    }

    /// Totals, kept up to date on every transition.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Every tracked stream, oldest first.
    pub fn streams(&self, now: Instant) -> Vec<StreamInfo> {
        let mut list: Vec<_> = self
            .streams
            .iter()
            .map(|(&id, entry)| info(id, entry, now))
            .collect();
        list.sort_by_key(|s| std::cmp::Reverse(s.age));
        list
    }

    /// A new stream, with both halves open and its handle alive.
    pub(crate) fn open(&mut self, id: u64, direction: Direction, now: Instant) -> Arc<Activity> {
        let activity = Arc::new(Activity::default());
        let entry = Entry {
            direction,
            send: HalfState::Open,
            recv: HalfState::Open,
            opened_at: now,
            dropped_at: None,
            activity: activity.clone(),
            seen_bytes: 0,
            last_change: now,
            warned: false,
        };
        let d = direction.index();
        self.totals.opened[d] += 1;
        self.totals.tracked[d] += 1;
        self.totals.live_handles[d] += 1;
        self.totals.send_states[HalfState::Open.index()] += 1;
        self.totals.recv_states[HalfState::Open.index()] += 1;
        if let Some(old) = self.streams.insert(id, entry) {
            // A QUIC stream id is never reused on a connection; keep the books straight anyway.
            self.forget(&old);
        }
        activity
    }

    /// Our send half moved to `state` (only forward moves are taken).
    pub(crate) fn set_send(&mut self, id: u64, state: HalfState) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        if !send_may_move(entry.send, state) {
            return;
        }
        self.totals.send_states[entry.send.index()] -= 1;
        self.totals.send_states[state.index()] += 1;
        entry.send = state;
        self.settle(id);
    }

    /// Our receive half moved to `state` (only moves out of `Open` are taken).
    pub(crate) fn set_recv(&mut self, id: u64, state: HalfState) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        if entry.recv != HalfState::Open || state == HalfState::Open || state == HalfState::Done {
            return;
        }
        self.totals.recv_states[HalfState::Open.index()] -= 1;
        self.totals.recv_states[state.index()] += 1;
        entry.recv = state;
        self.settle(id);
    }

    /// The application dropped the `Stream` handle.
    pub(crate) fn handle_dropped(&mut self, id: u64, now: Instant) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        if entry.dropped_at.is_some() {
            return;
        }
        entry.dropped_at = Some(now);
        let d = entry.direction.index();
        self.totals.live_handles[d] -= 1;
        self.totals.held_after_drop[d] += 1;
        self.settle(id);
    }

    /// The connection is gone: QUIC holds nothing any more.
    pub(crate) fn connection_closed(&mut self) {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            if let Some(entry) = self.streams.remove(&id) {
                self.forget(&entry);
            }
        }
    }

    /// Outbound streams still open here (a handle alive, or a half QUIC holds on our side):
    /// those of the peer's stream limit that our own application uses.
    pub fn outbound_open_here(&self) -> u64 {
        self.totals.tracked[Direction::Outbound.index()]
    }

    /// Streams to report as possible leaks: each at most once.
    pub(crate) fn suspects(&mut self, now: Instant, threshold: Duration) -> Vec<Suspect> {
        let mut found = Vec::new();
        for (&id, entry) in self.streams.iter_mut() {
            if entry.warned {
                continue;
            }
            let moved = entry.activity.total();
            if moved != entry.seen_bytes {
                entry.seen_bytes = moved;
                entry.last_change = now;
            }
            let kind = match entry.dropped_at {
                Some(at) if now.saturating_duration_since(at) >= threshold => {
                    LeakKind::HeldAfterDrop
                }
                None if now.saturating_duration_since(entry.last_change) >= threshold => {
                    LeakKind::IdleHandle
                }
                _ => continue,
            };
            entry.warned = true;
            found.push(Suspect {
                info: info(id, entry, now),
                kind,
            });
        }
        found
    }

    /// Drop a stream from the books once its handle is gone and QUIC holds nothing of it here.
    fn settle(&mut self, id: u64) {
        let finished = self
            .streams
            .get(&id)
            .is_some_and(|e| e.dropped_at.is_some() && !e.held_by_quic());
        if finished {
            if let Some(entry) = self.streams.remove(&id) {
                self.forget(&entry);
            }
        }
    }

    /// Take a departing entry out of the totals and record how it ended.
    fn forget(&mut self, entry: &Entry) {
        let d = entry.direction.index();
        self.totals.tracked[d] -= 1;
        if entry.dropped_at.is_some() {
            self.totals.held_after_drop[d] -= 1;
        } else {
            self.totals.live_handles[d] -= 1;
        }
        self.totals.send_states[entry.send.index()] -= 1;
        self.totals.recv_states[entry.recv.index()] -= 1;
        let send_end = usize::from(matches!(entry.send, HalfState::Reset | HalfState::Stopped));
        self.totals.ended_send[send_end][d] += 1;
        let recv_end = match entry.recv {
            HalfState::Reset => 1,
            HalfState::Stopped | HalfState::Open => 2,
            _ => 0,
        };
        self.totals.ended_recv[recv_end][d] += 1;
    }

    /// Recompute the totals from the entries; for tests of the books' consistency.
    #[cfg(test)]
    fn recount(&self) -> Recount {
        let mut out = ([0; 2], [0; 2], [0; 2], [0; 5], [0; 5]);
        for e in self.streams.values() {
            let d = e.direction.index();
            out.0[d] += 1;
            if e.dropped_at.is_some() {
                out.2[d] += 1;
            } else {
                out.1[d] += 1;
            }
            out.3[e.send.index()] += 1;
            out.4[e.recv.index()] += 1;
        }
        out
    }
}

/// Tracked, live, held-after-drop, send states, receive states.
#[cfg(test)]
type Recount = ([u64; 2], [u64; 2], [u64; 2], [u64; 5], [u64; 5]);

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

fn info(id: u64, entry: &Entry, now: Instant) -> StreamInfo {
    StreamInfo {
        id,
        direction: entry.direction,
        send: entry.send,
        recv: entry.recv,
        age: now.saturating_duration_since(entry.opened_at),
        idle: now.saturating_duration_since(entry.last_change),
        handle_alive: entry.dropped_at.is_none(),
        bytes_sent: entry.activity.sent.load(Ordering::Relaxed),
        bytes_received: entry.activity.received.load(Ordering::Relaxed),
    }
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

    fn consistent(ledger: &Ledger) {
        let (tracked, live, held, send, recv) = ledger.recount();
        let t = ledger.totals();
        assert_eq!(t.tracked, tracked);
        assert_eq!(t.live_handles, live);
        assert_eq!(t.held_after_drop, held);
        assert_eq!(t.send_states, send);
        assert_eq!(t.recv_states, recv);
    }

    #[test]
    fn request_response_leaves_no_trace() {
        let mut l = Ledger::new();
        let now = Instant::now();
        l.open(0, Direction::Outbound, now);
        l.set_send(0, Finished);
        l.set_recv(0, Finished);
        consistent(&l);
        l.handle_dropped(0, now);
        // FIN not yet acknowledged: QUIC still holds the send half.
        assert_eq!(l.totals().held_after_drop, [0, 1]);
        consistent(&l);
        l.set_send(0, Done);
        assert_eq!(l.totals().tracked_total(), 0);
        assert_eq!(l.totals().ended_send[0], [0, 1]);
        assert_eq!(l.totals().ended_recv[0], [0, 1]);
        consistent(&l);
    }

    #[test]
    fn every_send_transition_keeps_totals_consistent() {
        let states = HalfState::all();
        for from in states {
            for to in states {
                let mut l = Ledger::new();
                l.open(4, Direction::Inbound, Instant::now());
                // Walk to `from` along a legal path.
                match from {
                    Open => {}
                    Stopped => l.set_send(4, Stopped),
                    other => l.set_send(4, other),
                }
                l.set_send(4, to);
                consistent(&l);
                let now_state = l.streams(Instant::now())[0].send;
                if send_may_move(from, to) {
                    assert_eq!(now_state, to, "{from} -> {to}");
                } else {
                    assert_eq!(now_state, from, "{from} -> {to} must be refused");
                }
            }
        }
    }

    #[test]
    fn every_recv_transition_keeps_totals_consistent() {
        for to in HalfState::all() {
            let mut l = Ledger::new();
            l.open(1, Direction::Inbound, Instant::now());
            l.set_recv(1, to);
            consistent(&l);
            let expected = if to == Done { Open } else { to };
            assert_eq!(l.streams(Instant::now())[0].recv, expected);
            // Once out of `Open`, the receive half does not move again.
            l.set_recv(1, Reset);
            consistent(&l);
            if expected != Open {
                assert_eq!(l.streams(Instant::now())[0].recv, expected);
            }
        }
    }

    #[test]
    fn dropped_stream_stays_until_quic_frees_it() {
        let mut l = Ledger::new();
        let now = Instant::now();
        l.open(8, Direction::Inbound, now);
        l.handle_dropped(8, now);
        assert_eq!(l.totals().held_after_drop, [1, 0]);
        l.set_recv(8, Stopped);
        assert_eq!(l.totals().tracked_total(), 1, "send half still open");
        l.set_send(8, Finished);
        assert_eq!(l.totals().tracked_total(), 1, "FIN not acknowledged");
        l.set_send(8, Done);
        assert_eq!(l.totals().tracked_total(), 0);
        assert_eq!(l.totals().ended_recv[2], [1, 0]);
        consistent(&l);
    }

    #[test]
    fn reset_frees_without_acknowledgement() {
        let mut l = Ledger::new();
        let now = Instant::now();
        l.open(8, Direction::Inbound, now);
        l.set_send(8, Stopped);
        l.set_recv(8, Finished);
        l.handle_dropped(8, now);
        assert_eq!(
            l.totals().tracked_total(),
            1,
            "STOP_SENDING still owes a reset"
        );
        l.set_send(8, Reset);
        assert_eq!(l.totals().tracked_total(), 0);
        assert_eq!(l.totals().ended_send[1], [1, 0]);
    }

    #[test]
    fn closed_connection_empties_the_books() {
        let mut l = Ledger::new();
        let now = Instant::now();
        for id in 0..10 {
            l.open(id, Direction::Outbound, now);
        }
        l.handle_dropped(3, now);
        l.connection_closed();
        assert_eq!(l.totals().tracked_total(), 0);
        assert_eq!(l.totals().live_handles, [0, 0]);
        assert_eq!(l.totals().opened, [0, 10]);
        consistent(&l);
    }

    #[test]
    fn suspects_are_reported_once() {
        let mut l = Ledger::new();
        let t0 = Instant::now();
        l.open(0, Direction::Inbound, t0);
        l.open(4, Direction::Inbound, t0);
        l.handle_dropped(4, t0);
        let later = t0 + Duration::from_secs(120);
        let mut found = l.suspects(later, Duration::from_secs(60));
        found.sort_by_key(|s| s.info.id);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].kind, LeakKind::IdleHandle);
        assert_eq!(found[1].kind, LeakKind::HeldAfterDrop);
        assert!(found[1].info.age >= Duration::from_secs(120));
        assert!(l.suspects(later, Duration::from_secs(60)).is_empty());
    }
}
