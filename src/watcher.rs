//! The watcher: one task per transport that sees what QUIC frees after the application has let
//! go, answers a peer's STOP_SENDING on streams that are otherwise done, lets settled streams
//! leave the ledger, and raises leak warnings, for all of the transport's sessions.
//!
//! It exists because the interesting moments of a stream's life happen when nobody polls it:
//! the peer acknowledges our FIN after the handle was dropped, or stops our send half while
//! our application holds a stream it has finished reading. Streams ask for a look (their
//! session's [`Inbox`]); the watcher looks at them in batches, a little later, when most
//! request/response streams are long gone and acknowledged, so that the application's hot
//! path never waits on it. One task serves every session, so that a batch gathers the
//! streams of all of them: with many connections each doing a little, a watcher per
//! connection would wake once per stream. It is spawned with the transport's first tracked
//! stream and ends when the transport and all its sessions are gone.
//!
//! It knows sessions ([`Session`]) and their streams' shared state, never a muxer.

use std::{
    collections::VecDeque,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use futures::{future::BoxFuture, stream::FuturesUnordered, FutureExt, StreamExt};
use tokio::{
    sync::mpsc::{UnboundedReceiver, UnboundedSender},
    time::Instant,
};

use crate::session::{
    cell::{self, Cell, Look, Watch},
    Inbox, Session,
};

/// How often the watcher takes the sessions that asked for a look, while any have.
const TICK: Duration = Duration::from_millis(10);

/// How many ticks a request waits before its look: 20–30 ms after it was made, long enough
/// that the acknowledgements of a request/response stream have arrived by then.
const AGE_TICKS: usize = 2;

/// What the mailbox carries: a session with its first tracked stream, to wait for its end
/// and scan for leaks from now on.
type Track = (Weak<Session>, quinn::Connection);

/// A transport's handle to its watcher task, spawned on first use. Cheap to clone; the task
/// runs while any clone is alive (the transport, its `Ledgers` handles, its `Connection`s) or
/// anything is left to watch.
#[derive(Clone)]
pub(crate) struct Watcher {
    inner: Arc<Inner>,
}

struct Inner {
    mailbox: OnceLock<UnboundedSender<Track>>,
    inbox: Arc<Inbox>,
    /// The transport's `stream_leak_warning`: the task scans for leaks every quarter of it
    /// (between 10 ms and 5 s).
    leak_threshold: Duration,
}

impl Watcher {
    pub(crate) fn new(leak_threshold: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                mailbox: OnceLock::new(),
                inbox: Arc::default(),
                leak_threshold,
            }),
        }
    }

    /// Where the transport's sessions ask for looks.
    pub(crate) fn inbox(&self) -> Arc<Inbox> {
        self.inner.inbox.clone()
    }

    /// A session's first tracked stream: watch the session from now on, spawning the task if
    /// this is the transport's first.
    pub(crate) fn track(&self, session: &Session) {
        let inner = &*self.inner;
        let mailbox = inner.mailbox.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(run(rx, inner.inbox.clone(), inner.leak_threshold));
            tx
        });
        if mailbox
            .send((session.weak(), session.connection().clone()))
            .is_err()
        {
            inner.inbox.say_gone();
        }
    }
}

impl Default for Watcher {
    fn default() -> Self {
        Self::new(crate::config::DEFAULT_STREAM_LEAK_WARNING)
    }
}

/// A session's end, as the watcher waits for it.
type Closed = BoxFuture<'static, (Weak<Session>, quinn::ConnectionError)>;

/// What the task keeps between its wake-ups.
struct State {
    inbox: Arc<Inbox>,
    /// The sessions with tracked streams, and their ends.
    tracked: Vec<Weak<Session>>,
    closed: FuturesUnordered<Closed>,
    watched: FuturesUnordered<Watch>,
    /// The requests of the last ticks, oldest first, and emptied lists to reuse.
    ticks: VecDeque<Vec<Weak<Session>>>,
    spare: Vec<Vec<Weak<Session>>>,
    scratch: Scratch,
    scan_every: Duration,
    /// Leak scans so far: a scan's number ties its reports together.
    scans: u64,
    /// One timer serves both the next leak scan and, while requests wait, the next tick.
    next_scan: Instant,
    next_tick: Option<Instant>,
}

/// Run until the mailbox closes (the transport and every session are gone) and nothing is
/// left to watch.
async fn run(mut mailbox: UnboundedReceiver<Track>, inbox: Arc<Inbox>, leak_threshold: Duration) {
    // However the task ends, later requests are not left to pile up.
    let mut task_end = Ended {
        inbox: inbox.clone(),
        finished: false,
    };
    let scan_every = (leak_threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut state = State {
        inbox: inbox.clone(),
        tracked: Vec::new(),
        closed: FuturesUnordered::new(),
        watched: FuturesUnordered::new(),
        ticks: VecDeque::new(),
        spare: Vec::new(),
        scratch: Scratch::default(),
        scan_every,
        scans: 0,
        next_scan: Instant::now() + scan_every,
        next_tick: None,
    };
    let mut open = true;
    let timer = tokio::time::sleep_until(state.next_scan);
    tokio::pin!(timer);
    while open || !state.closed.is_empty() || !state.watched.is_empty() {
        let deadline = state
            .next_tick
            .map_or(state.next_scan, |at| at.min(state.next_scan));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        let something_to_do = !state.tracked.is_empty() || state.next_tick.is_some();
        tokio::select! {
            message = mailbox.recv(), if open => match message {
                Some((session, connection)) => state.track(session, connection),
                None => open = false,
            },
            () = inbox.requested() => {
                state.next_tick.get_or_insert_with(|| Instant::now() + TICK);
            }
            // Only while there is something to scan or to look at.
            () = &mut timer, if something_to_do => state.on_timer(),
            Some((session, reason)) = state.closed.next(), if !state.closed.is_empty() => {
                state.tracked.retain(|s| !s.ptr_eq(&session));
                if let Some(session) = session.upgrade() {
                    tracing::debug!(parent: &session.span, %reason, "connection closed");
                    session.tell_story();
                    session.connection_closed();
                }
            }
            Some((session, cell, ended)) = state.watched.next(), if !state.watched.is_empty() => {
                let Some(session) = session.upgrade() else { continue };
                session.unwatched();
                if cell::watch_ended(&session, &cell, ended) {
                    session.release_one(cell);
                }
            }
        }
    }
    task_end.finished = true;
}

impl State {
    fn track(&mut self, session: Weak<Session>, connection: quinn::Connection) {
        self.tracked.push(session.clone());
        self.closed
            .push(async move { (session, connection.closed().await) }.boxed());
    }

    /// A tick (look at the requests made two ticks ago), a leak scan, or both.
    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.next_tick.is_some_and(|at| at <= now) {
            self.tick(now);
        }
        if self.next_scan <= now {
            self.next_scan = now + self.scan_every;
            self.scans += 1;
            let scan = self.scans;
            self.tracked.retain(|s| match s.upgrade() {
                Some(session) => {
                    session.report_leaks(scan);
                    session.free_departed();
                    true
                }
                None => false,
            });
        }
    }

    fn tick(&mut self, now: Instant) {
        let mut fresh = self.spare.pop().unwrap_or_default();
        self.inbox.take(&mut fresh);
        self.ticks.push_back(fresh);
        if self.ticks.len() > AGE_TICKS {
            let mut due = self.ticks.pop_front().unwrap_or_default();
            // The ledger's clock is the system's, whatever tokio's timer says.
            let stamp = std::time::Instant::now();
            for session in due.drain(..).filter_map(|s| s.upgrade()) {
                look(&session, stamp, &mut self.watched, &mut self.scratch);
            }
            self.spare.push(due);
        }
        // Tick on while requests wait; a request after the last tick wakes us.
        self.next_tick = self.ticks.iter().any(|t| !t.is_empty()).then(|| now + TICK);
    }
}

/// Marks the inbox as no longer served when the task ends, and whether it ended because
/// nothing was left to watch.
struct Ended {
    inbox: Arc<Inbox>,
    finished: bool,
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.inbox.close(self.finished);
    }
}

/// The watcher's buffers for one session's part of a batch, kept from batch to batch.
#[derive(Default)]
struct Scratch {
    queued: Vec<Arc<Cell>>,
    settled: Vec<Arc<Cell>>,
}

/// Look at every stream a session queued: let the settled go, watch those QUIC still holds.
fn look(
    session: &Session,
    now: std::time::Instant,
    watched: &mut FuturesUnordered<Watch>,
    scratch: &mut Scratch,
) {
    let now = session.clock.stamp(now);
    session.take_queued(&mut scratch.queued);
    for cell in scratch.queued.drain(..) {
        match cell::look(session, &cell, now) {
            Look::Settled => scratch.settled.push(cell),
            // Queued for the next batch: this one is taken already.
            Look::Again => session.queue(&cell),
            Look::Watch(watch) => {
                // Counted before it is polled, so that its decrement can never come first.
                session.watching();
                watched.push(watch);
            }
            Look::Wait => {}
        }
    }
    if !scratch.settled.is_empty() {
        session.release(&mut scratch.settled);
        // Those no opener took since the last release.
        scratch.settled.clear();
    }
}
