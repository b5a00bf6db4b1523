//! What a session says, in words and numbers, when stream credit runs out or a stream looks
//! leaked.

use std::time::Duration;

use super::Session;
use crate::ledger::{HalfState, LeakKind};

impl Session {
    /// Say, once per waiting open, why a new outbound stream does not open.
    pub(super) fn warn_credit_wait(&self, waited: Duration) {
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

    /// The watcher's leak scan: report each stream that has been quiet for
    /// `stream_leak_warning`, once.
    pub(crate) fn report_leaks(&self) {
        for (s, kind) in self.suspects() {
            let open_halves = match (s.send, s.recv) {
                (HalfState::Open, HalfState::Open) => "both halves",
                (HalfState::Open, _) => "the send half",
                (_, HalfState::Open) => "the receive half",
                _ if s.handle_alive => "no half, yet the handle is kept",
                _ => "no half (waiting for the peer's acknowledgement)",
            };
            let what = match kind {
                LeakKind::HeldAfterDrop => "dropped but still held by QUIC",
                LeakKind::IdleHandle => "held by the application and idle",
            };
            tracing::warn!(
                parent: &self.span,
                peer = %self.peer,
                stream = s.id,
                direction = %s.direction,
                age = ?s.age,
                send = %s.send,
                recv = %s.recv,
                kind = kind.as_str(),
                "possible stream leak: {} stream {} to {} is {} after {:?}; open: {}",
                s.direction,
                s.id,
                self.peer,
                what,
                s.age,
                open_halves,
            );
            #[cfg(feature = "metrics")]
            if let Some(m) = &self.config.metrics {
                m.leak_warning(kind);
            }
        }
    }
}
