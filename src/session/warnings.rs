//! What a session says, in words and numbers, when stream credit runs out, when streams look
//! leaked, and when it ends.
//!
//! Readable at scale: a leak scan says at most one line per session and kind of leak, the
//! streams one by one at `DEBUG`; a blocked open is told again, backing off, until it ends;
//! a session is named by its short number, its peer and its address.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use super::{books::Suspect, Session};
use crate::{
    ledger::{Direction, HalfState, LeakKind, StreamInfo},
    Error,
};

/// How many stream ids a leak report lists.
const IDS_LISTED: usize = 5;

/// When a blocked open is told again, in multiples of `credit_wait_warning` since it began: at
/// 1, 6 and 24 times it, then every 120 times (5 s, 30 s, 2 min, then every 10 min by default).
/// A hang stays visible in the logs until it ends, in a handful of lines an hour.
pub(crate) fn credit_warning_due(first: Duration, told: u32) -> Duration {
    match told {
        0 => first,
        1 => first * 6,
        2 => first * 24,
        n => first.saturating_mul(120u32.saturating_mul(n - 2).saturating_add(24)),
    }
}

/// The counts a session's story tells when it ends.
#[derive(Default)]
pub(crate) struct Story {
    /// The most stream handles alive at once.
    peak_open: AtomicU64,
    /// The longest wait for stream credit, in milliseconds.
    longest_credit_wait_ms: AtomicU64,
    credit_warnings: AtomicU64,
    leak_reports: AtomicU64,
    told: AtomicBool,
}

impl Story {
    /// An open waited `waited` for credit (and went ahead, failed, or was dropped).
    pub(crate) fn waited(&self, waited: Duration) {
        let millis = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        self.longest_credit_wait_ms
            .fetch_max(millis, Ordering::Relaxed);
    }

    /// `open` stream handles are alive now.
    pub(crate) fn open_now(&self, open: u64) {
        if open > self.peak_open.load(Ordering::Relaxed) {
            self.peak_open.fetch_max(open, Ordering::Relaxed);
        }
    }
}

impl Session {
    /// `conn #3 to <peer> at <address>`: how logs name the session.
    pub(crate) fn name(&self) -> String {
        format!(
            "{}conn #{} to {} at {}",
            if self.webtransport() {
                "WebTransport "
            } else {
                ""
            },
            self.number,
            self.peer,
            self.remote_address()
        )
    }

    /// Say why a new outbound stream does not open: once it has waited `credit_wait_warning`,
    /// then again, backing off, while it waits (`told` times before).
    pub(super) fn warn_credit_wait(&self, waited: Duration, told: u32) {
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
        let still = if told == 0 { "" } else { "still " };
        tracing::warn!(
            parent: &self.span,
            conn = self.number,
            peer = %self.peer,
            remote = %self.remote_address(),
            waited = ?waited,
            warning = told + 1,
            stream_limit = limit,
            outbound_open_here = open_here,
            outbound_closed_not_credited = closed_not_credited,
            "opening a stream on {} has {still}waited {:?} for stream credit; {} of our streams \
             are still open here and about {} we closed are not credited back: {}",
            self.name(),
            waited,
            open_here,
            closed_not_credited,
            verdict,
        );
        self.story.credit_warnings.fetch_add(1, Ordering::Relaxed);
        // The metric counts opens that waited past the threshold, not the lines said of them.
        #[cfg(feature = "metrics")]
        if let (Some(m), 0) = (&self.config.metrics, told) {
            m.credit_wait_warning();
        }
    }

    /// An open that waited `waited` for credit ended: it went ahead, or failed with `error`.
    /// If `told` warnings said it waited, say how it ended.
    pub(super) fn credit_wait_ended(&self, waited: Duration, told: u32, error: Option<&Error>) {
        if told == 0 {
            return;
        }
        match error {
            None => tracing::info!(
                parent: &self.span,
                conn = self.number,
                peer = %self.peer,
                waited = ?waited,
                warnings = told,
                "opening a stream on {} went ahead after waiting {:?} for stream credit: the \
                 peer gave credit back",
                self.name(),
                waited,
            ),
            Some(error) => tracing::info!(
                parent: &self.span,
                conn = self.number,
                peer = %self.peer,
                waited = ?waited,
                warnings = told,
                %error,
                "opening a stream on {} failed after waiting {:?} for stream credit: {}",
                self.name(),
                waited,
                error,
            ),
        }
    }

    /// The watcher's leak scan (number `scan`): one warning per kind of leak for the streams
    /// it finds newly reported, counting every stream reported as that kind; each new one
    /// alone at `DEBUG`.
    pub(crate) fn report_leaks(&self, scan: u64) {
        let suspects = self.suspects();
        for kind in [LeakKind::IdleHandle, LeakKind::HeldAfterDrop] {
            let new = suspects.iter().filter(|s| s.kind == kind && s.new).count();
            if new == 0 {
                continue;
            }
            let all: Vec<&StreamInfo> = suspects
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| &s.info)
                .collect();
            self.warn_leaks(scan, kind, &all, new);
            for s in suspects.iter().filter(|s| s.kind == kind && s.new) {
                self.report_leak(s);
            }
        }
    }

    fn warn_leaks(&self, scan: u64, kind: LeakKind, streams: &[&StreamInfo], new: usize) {
        let tally = Tally::of(streams);
        self.story
            .leak_reports
            .fetch_add(new as u64, Ordering::Relaxed);
        tracing::warn!(
            parent: &self.span,
            conn = self.number,
            peer = %self.peer,
            remote = %self.remote_address(),
            kind = kind.as_str(),
            scan,
            streams = streams.len(),
            new,
            inbound = tally.by_direction[Direction::Inbound.index()],
            outbound = tally.by_direction[Direction::Outbound.index()],
            oldest = ?tally.oldest,
            "possible stream leak on {}: {} streams {} ({} new; {} inbound, {} outbound), the \
             oldest {:?}; open: {}; peer stopped our send half: {}; ids {}",
            self.name(),
            streams.len(),
            describe(kind),
            new,
            tally.by_direction[Direction::Inbound.index()],
            tally.by_direction[Direction::Outbound.index()],
            tally.oldest,
            tally.open_halves(),
            tally.send_stopped,
            tally.ids,
        );
    }

    /// One stream of a leak report, at `DEBUG`.
    fn report_leak(&self, suspect: &Suspect) {
        let s = &suspect.info;
        tracing::debug!(
            parent: &self.span,
            conn = self.number,
            peer = %self.peer,
            stream = s.id,
            direction = %s.direction,
            age = ?s.age,
            send = %s.send,
            recv = %s.recv,
            kind = suspect.kind.as_str(),
            "possible stream leak: {} stream {} on {} is {} after {:?}; open: {}",
            s.direction,
            s.id,
            self.name(),
            describe(suspect.kind),
            s.age,
            open_halves(s),
        );
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.config.metrics {
            m.leak_warning(suspect.kind, self.transport_label());
        }
    }

    /// The session's story, told once when it ends (the watcher sees its connection close, or
    /// the last handle to it goes): at `INFO` if it ever leaked or waited for credit, else at
    /// `DEBUG`.
    pub(crate) fn tell_story(&self) {
        let story = &self.story;
        if story.told.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(waiting) = self.credit_waited() {
            story.waited(waiting);
        }
        let longest = Duration::from_millis(story.longest_credit_wait_ms.load(Ordering::Relaxed));
        let credit_warnings = story.credit_warnings.load(Ordering::Relaxed);
        let leak_reports = story.leak_reports.load(Ordering::Relaxed);
        let streams = match self.stream_counts() {
            Some((opened, tracked)) => format!(
                "{} inbound and {} outbound streams opened, {tracked} still in the books",
                opened[Direction::Inbound.index()],
                opened[Direction::Outbound.index()],
            ),
            None => "streams not counted (the ledger is off)".to_owned(),
        };
        let text = format!(
            "{} ended: {streams}; at most {} open at once; the longest wait for credit {:?} \
             (credit warnings: {}); leak reports: {}",
            self.name(),
            story.peak_open.load(Ordering::Relaxed),
            longest,
            credit_warnings,
            leak_reports,
        );
        if credit_warnings > 0 || leak_reports > 0 {
            tracing::info!(parent: &self.span, conn = self.number, "{text}");
        } else {
            tracing::debug!(parent: &self.span, conn = self.number, "{text}");
        }
    }
}

/// What a kind of leak means, in words.
fn describe(kind: LeakKind) -> &'static str {
    match kind {
        LeakKind::HeldAfterDrop => "dropped but still held by QUIC",
        LeakKind::IdleHandle => "held by the application and idle",
    }
}

/// Which halves of a stream may be open, as a leak report counts them.
const OPEN_HALVES: [&str; 4] = [
    "both halves",
    "the send half",
    "the receive half",
    "no half",
];

/// Which of [`OPEN_HALVES`] a stream's are.
fn open_index(s: &StreamInfo) -> usize {
    match (s.send, s.recv) {
        (HalfState::Open, HalfState::Open) => 0,
        (HalfState::Open, _) => 1,
        (_, HalfState::Open) => 2,
        _ => 3,
    }
}

/// Which halves of a stream are still open, in words; of a stream with none, why it is held.
fn open_halves(s: &StreamInfo) -> &'static str {
    match open_index(s) {
        3 if s.handle_alive => "no half, yet the handle is kept",
        3 => "no half (waiting for the peer's acknowledgement)",
        i => OPEN_HALVES[i],
    }
}

/// A leak report's counts over its streams.
struct Tally {
    by_direction: [u64; 2],
    /// Streams by which halves are open, indexed like [`OPEN_HALVES`].
    open: [u64; 4],
    send_stopped: u64,
    oldest: Duration,
    /// The oldest few stream ids, and how many more.
    ids: String,
}

impl Tally {
    fn of(streams: &[&StreamInfo]) -> Self {
        let mut tally = Tally {
            by_direction: [0; 2],
            open: [0; 4],
            send_stopped: 0,
            oldest: Duration::ZERO,
            ids: String::new(),
        };
        for s in streams {
            tally.by_direction[s.direction.index()] += 1;
            tally.open[open_index(s)] += 1;
            tally.send_stopped += u64::from(s.send == HalfState::Stopped);
            tally.oldest = tally.oldest.max(s.age);
        }
        let mut oldest: Vec<&StreamInfo> = streams.to_vec();
        oldest.sort_by_key(|s| (std::cmp::Reverse(s.age), s.id));
        for (i, s) in oldest.iter().take(IDS_LISTED).enumerate() {
            let _ = write!(tally.ids, "{}{}", if i == 0 { "" } else { ", " }, s.id);
        }
        if streams.len() > IDS_LISTED {
            let _ = write!(tally.ids, " and {} more", streams.len() - IDS_LISTED);
        }
        tally
    }

    /// Which halves are open, by how many streams: `both halves 3, the receive half 13`.
    fn open_halves(&self) -> String {
        let parts: Vec<String> = OPEN_HALVES
            .iter()
            .zip(self.open)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_open_is_told_at_5_s_30_s_2_min_then_every_10_min() {
        let at = |told| credit_warning_due(Duration::from_secs(5), told).as_secs();
        assert_eq!(
            (0..6).map(at).collect::<Vec<_>>(),
            [5, 30, 120, 720, 1320, 1920]
        );
        assert_eq!(at(u32::MAX), 5 * u64::from(u32::MAX));
    }
}
