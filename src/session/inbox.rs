//! Where streams ask the transport's watcher task for a look at them.
//!
//! A plain list under a lock rather than a channel: a busy transport asks thousands of times a
//! second, and only the first request after the watcher's tick needs to wake it. The task
//! itself lives in [`watcher`](crate::watcher); a session only ever posts here.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex, MutexGuard, Weak,
};

use tokio::sync::Notify;

use super::Session;

/// The sessions that asked for a look since the watcher's last tick.
#[derive(Default)]
pub(crate) struct Inbox {
    asked: Mutex<Vec<Weak<Session>>>,
    wake: Notify,
    /// Set when the task ends, however it ends.
    ended: AtomicBool,
    /// Set when it ended because nothing was left to watch: every connection it knew closed,
    /// and the transport, its `Ledgers` and its `Connection`s are gone. A stream dropped
    /// after that holds nothing in QUIC, and its request needs no answer.
    finished: AtomicBool,
    /// Whether we have said that the task is gone.
    said_gone: AtomicBool,
}

impl Inbox {
    fn asked(&self) -> MutexGuard<'_, Vec<Weak<Session>>> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session has queued streams for a look.
    pub(crate) fn ask(&self, session: Weak<Session>) {
        if self.ended.load(Ordering::Acquire) {
            if !self.finished.load(Ordering::Acquire) {
                self.say_gone();
            }
            return;
        }
        let first = {
            let mut asked = self.asked();
            asked.push(session);
            asked.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// For the watcher: wait until a first request comes after the last [`Inbox::take`].
    pub(crate) async fn requested(&self) {
        self.wake.notified().await;
    }

    /// For the watcher: the requests since the last take, swapped with `into` (emptied).
    pub(crate) fn take(&self, into: &mut Vec<Weak<Session>>) {
        std::mem::swap(into, &mut *self.asked());
    }

    /// For the watcher: the task ends, `finished` if nothing was left to watch (else its
    /// runtime shut down, or it panicked); later requests are not left to pile up.
    pub(crate) fn close(&self, finished: bool) {
        self.finished.store(finished, Ordering::Release);
        self.ended.store(true, Ordering::Release);
        self.asked().clear();
    }

    /// Say once that the watcher is gone, and what that costs.
    pub(crate) fn say_gone(&self) {
        if !self.said_gone.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the stream watcher task is gone (its runtime shut down, or it panicked): \
                 dropped streams that QUIC still held no longer leave the ledger, and leaks \
                 are no longer reported"
            );
        }
    }
}
