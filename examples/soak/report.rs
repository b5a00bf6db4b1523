//! What a run measured, and how it is said while it runs.

use std::time::Duration;

use indicatif::ProgressBar;

use super::Kind;

/// Live streams at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the workload started.
    pub t: f64,
    /// Live streams summed over every end of every connection: our ledger's `tracked`
    /// (ours), or stream handles the application holds (libp2p-quic).
    pub sum: u64,
    /// The largest count on one end of one connection.
    pub max: u64,
    /// Stream handles the application holds, summed (the same as `sum` for libp2p-quic).
    pub handles: u64,
}

/// What a soak run measured.
#[derive(Debug, Clone)]
pub struct Summary {
    pub transport: Kind,
    /// How long the workload ran.
    pub elapsed: Duration,
    /// Exchanges completed (both directions).
    pub streams: u64,
    /// Exchanges that failed (open, write, read, wrong reply, timeout) and gossip failures.
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Ticks skipped because an opener already had too many exchanges in flight.
    pub skipped: u64,
    /// Replies the handler could not write because the opener had stopped reading (the
    /// fire-and-forget half: expected).
    pub refused_replies: u64,
    /// Peak of the live-stream sum over all connection ends.
    pub peak_live_sum: u64,
    /// Peak live streams on one end of one connection.
    pub peak_live_max: u64,
    /// The slowest open (including opens still waiting when sampled).
    pub slowest_open: Duration,
    /// Opens that waited longer than `--block-threshold`.
    pub blocked: u64,
    /// The longest pause between two gossip messages on a long-lived stream.
    pub gossip_max_gap: Duration,
    /// Gossip messages received.
    pub gossip_messages: u64,
    /// Resident memory of the process when the workload started and when it stopped, in MiB
    /// (Linux only): a leak that no count shows still shows here.
    pub rss_mib: Option<(f64, f64)>,
    /// Whether every count returned to zero after the workload.
    pub settled: bool,
    /// How long that took (or the bound, if it did not).
    pub settle_time: Duration,
    /// What was left, one line per connection end, if not settled.
    pub leftovers: Vec<String>,
    /// Live streams over time.
    pub samples: Vec<Sample>,
}

impl Summary {
    pub fn streams_per_sec(&self) -> f64 {
        self.streams as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        let live = match self.transport {
            Kind::Ours => "ledger-tracked",
            Kind::Libp2pQuic => "app-level handles",
        };
        format!(
            "{}: {} streams in {:.1} s ({:.0} streams/s), peak live streams ({live}) {} on one \
             connection end / {} in total, slowest open {:.1?}, blocked opens {}, errors {}, \
             gossip max gap {:.0?},{} {}",
            self.transport.name(),
            self.streams,
            self.elapsed.as_secs_f64(),
            self.streams_per_sec(),
            self.peak_live_max,
            self.peak_live_sum,
            self.slowest_open,
            self.blocked,
            self.errors,
            self.gossip_max_gap,
            self.rss_mib
                .map(|(start, end)| format!(" RSS {start:.0} -> {end:.0} MiB,"))
                .unwrap_or_default(),
            if self.settled {
                format!("all counts back to zero after {:.1?}", self.settle_time)
            } else {
                format!("counts NOT back to zero after {:.1?}", self.settle_time)
            },
        )
    }

    /// `Err` with the reasons if an open blocked, an exchange failed, or the counts did not
    /// return to zero.
    pub fn verdict(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.blocked > 0 {
            problems.push(format!("{} opens blocked", self.blocked));
        }
        if self.errors > 0 {
            problems.push(format!(
                "{} errors, e.g. {:?}",
                self.errors, self.error_samples
            ));
        }
        if !self.settled {
            problems.push(format!(
                "counts did not return to zero:\n  {}",
                self.leftovers.join("\n  ")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The process's resident memory in MiB, where /proc tells it.
pub(super) fn rss_mib() -> Option<f64> {
    let bytes = super::resident::resident_bytes(std::process::id())?;
    Some(bytes as f64 / (1024.0 * 1024.0))
}

pub(super) fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        println!("{line}");
    } else {
        pb.println(line);
    }
}
