//! The WAN benchmark's samples, their `BENCH` lines and the table of medians.

use std::fmt::Write;

use super::node::BoxError;
use super::{Options, Profile};

/// What a number measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// UDP payload the path lets through (Mbit/s).
    LinkLimit,
    /// UDP payload the delay line relays with no bottleneck (Mbit/s): its own ceiling.
    LineCeiling,
    /// Datagrams the delay line sent more than 1 ms after they were due, over a profile.
    LateSends,
    /// Datagrams the delay line relayed over a profile.
    Relayed,
    /// Goodput of an upload (Mbit/s).
    Upload,
    /// Goodput of a download (Mbit/s).
    Download,
    /// From the dial until a 1-byte answer to a 1-byte request came back (ms).
    RoundTrip,
    /// From the dial until the first MiB of a download had arrived (ms).
    FirstMib,
}

impl Sample {
    pub fn name(self) -> &'static str {
        match self {
            Sample::LinkLimit => "link_limit",
            Sample::LineCeiling => "line_ceiling",
            Sample::LateSends => "late_sends",
            Sample::Relayed => "relayed",
            Sample::Upload => "upload",
            Sample::Download => "download",
            Sample::RoundTrip => "round_trip",
            Sample::FirstMib => "first_mib",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Sample::LinkLimit | Sample::LineCeiling | Sample::Upload | Sample::Download => "Mbit/s",
            Sample::LateSends | Sample::Relayed => "datagrams",
            Sample::RoundTrip | Sample::FirstMib => "ms",
        }
    }
}

/// Every number of a run, and what failed.
#[derive(Debug, Default)]
pub struct Report {
    samples: Vec<(&'static str, String, Sample, f64)>,
    pub errors: Vec<String>,
}

impl Report {
    /// Keeps a measurement (or its failure) and prints its `BENCH` line.
    pub fn record(
        &mut self,
        profile: &Profile,
        line: &str,
        sample: Sample,
        value: Result<f64, BoxError>,
    ) {
        match value {
            Ok(value) => self.add(profile, line, sample, value),
            Err(error) => {
                let error = format!("{} {line} {}: {error}", profile.name, sample.name());
                println!("BENCH-ERROR {error}");
                self.errors.push(error);
            }
        }
    }

    pub fn add(&mut self, profile: &Profile, line: &str, sample: Sample, value: f64) {
        println!(
            "BENCH {{\"profile\":\"{}\",\"line\":\"{line}\",\"sample\":\"{}\",\"value\":{value:.3},\"unit\":\"{}\"}}",
            profile.name,
            sample.name(),
            sample.unit()
        );
        self.samples
            .push((profile.name, line.to_owned(), sample, value));
    }

    pub fn values(&self, profile: &str, line: &str, sample: Sample) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(p, l, s, _)| *p == profile && l == line && *s == sample)
            .map(|(.., v)| *v)
            .collect()
    }
}

/// The `p`-th percentile (0–100) of `values`, nearest rank; `None` if empty.
pub fn percentile(mut values: Vec<f64>, p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// A table per profile: medians over rounds, goodput also as a share of the path's rate, round
/// trips also as multiples of the path's RTT.
pub fn summary(report: &Report, options: &Options) -> String {
    let mut out = String::new();
    for profile in &options.profiles {
        let rate = profile.rate_bps() as f64 / 1e6;
        let rtt = profile.rtt().as_secs_f64() * 1e3;
        let link = |s| percentile(report.values(profile.name, "link", s), 50.0);
        let shown = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0}"));
        let _ = writeln!(
            out,
            "\n### {} ({rtt:.0} ms RTT, {rate:.0} Mbit/s, queue {:.0} kB, {})\n\nThe path passes \
             {} Mbit/s of UDP; the delay line alone relays {} Mbit/s; {} of {} datagrams left \
             it over 1 ms late.\n",
            profile.name,
            profile.path.queue_limit() as f64 / 1e3,
            profile.path.describe_loss(),
            shown(link(Sample::LinkLimit)),
            shown(link(Sample::LineCeiling)),
            shown(link(Sample::LateSends)),
            shown(link(Sample::Relayed)),
        );
        let _ = writeln!(
            out,
            "| line | upload Mbit/s | download Mbit/s | connection + 1 B, median (p90) | first MiB, median |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        let names = options.lines.iter().map(|line| line.name());
        for name in names.chain(options.share_lines()) {
            let median = |s| percentile(report.values(profile.name, &name, s), 50.0);
            let rate_cell = |s| match median(s) {
                Some(v) => format!("{v:.1} ({:.2}×)", v / rate),
                None => "—".into(),
            };
            let trips = report.values(profile.name, &name, Sample::RoundTrip);
            let trip_cell = match (percentile(trips.clone(), 50.0), percentile(trips, 90.0)) {
                (Some(m), Some(p90)) => {
                    format!(
                        "{m:.0} ms = {:.2} RTT ({p90:.0} ms = {:.2} RTT)",
                        m / rtt,
                        p90 / rtt
                    )
                }
                _ => "—".into(),
            };
            let mib = median(Sample::FirstMib).map_or("—".into(), |v| format!("{v:.0} ms"));
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {trip_cell} | {mib} |",
                rate_cell(Sample::Upload),
                rate_cell(Sample::Download)
            );
        }
    }
    out
}
