//! The books, tested as plain data.

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

/// A reported stream is not reported again while nothing changes; a move of a half, or its
/// handle's drop, makes it news again.
#[test]
fn a_reported_stream_is_reported_again_only_when_its_state_changes() {
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
    assert_eq!(entry.reported(), Some(LeakKind::IdleHandle));
    assert_eq!(entry.suspect(&activity, at(120), threshold), None);
    entry.set_send(HalfState::Stopped);
    assert_eq!(entry.reported(), None);
    assert_eq!(
        entry.suspect(&activity, at(121), threshold),
        Some(LeakKind::IdleHandle)
    );
    entry.handle_dropped(Some(at(122)));
    assert_eq!(entry.suspect(&activity, at(150), threshold), None);
    assert_eq!(
        entry.suspect(&activity, at(182), threshold),
        Some(LeakKind::HeldAfterDrop)
    );
    assert_eq!(entry.reported(), Some(LeakKind::HeldAfterDrop));
}
