//! What a run measured, and the tables that close it.

use std::fmt;

use super::{Kind, Metric, Options};

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// One measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round: usize,
    pub transport: Kind,
    pub metric: Metric,
    pub value: f64,
}

/// Everything a run measured, and what went wrong.
#[derive(Debug, Default)]
pub struct Report {
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn values(&self, transport: Kind, metric: Metric) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.transport == transport && s.metric == metric)
            .map(|s| s.value)
            .collect()
    }

    /// The median over rounds; for failure counts, the total.
    pub fn summary(&self, transport: Kind, metric: Metric) -> Option<f64> {
        let values = self.values(transport, metric);
        if values.is_empty() {
            None
        } else if metric.is_count() {
            Some(values.iter().sum())
        } else {
            Some(percentile(values, 0.5))
        }
    }

    /// `transport` against `reference`: the median over rounds of the ratio within each round.
    /// Pairing by round cancels what a round's machine state did to both, which on a shared
    /// machine moves whole rounds by tens of percent.
    pub fn ratio(&self, transport: Kind, reference: Kind, metric: Metric) -> Option<f64> {
        let ratios: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.transport == transport && s.metric == metric)
            .filter_map(|s| {
                let base = self.samples.iter().find(|b| {
                    b.transport == reference && b.metric == metric && b.round == s.round
                })?;
                let ratio = s.value / base.value;
                // A zero reference (RSS that grew less than a page) has no ratio.
                ratio.is_finite().then_some(ratio)
            })
            .collect();
        (!ratios.is_empty()).then(|| percentile(ratios, 0.5))
    }
}

pub(super) fn json_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "null".into()
    }
}

/// The nearest-rank percentile `p` (0..=1) of `values`.
pub(super) fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// The final tables
// ---------------------------------------------------------------------------------------------

struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.header.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| row[c].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, width))| {
                    // Names left, numbers right.
                    if i < 2 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            writeln!(f, "{}", cells.join("  ").trim_end())?;
        }
        Ok(())
    }
}

fn number(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// The tables that close a run: medians, ratios to raw quinn and to `libp2p-quic`, and the
/// ledger's cost.
pub fn summary(report: &Report, options: &Options) -> String {
    let metrics: Vec<Metric> = options
        .workloads
        .iter()
        .flat_map(|w| w.metrics().iter().copied())
        .collect();
    let transports = &options.transports;
    let mut out = String::new();

    let mut header = vec!["metric".to_string(), "unit".to_string()];
    header.extend(transports.iter().map(|k| k.name().to_string()));
    let medians = Table {
        header,
        rows: metrics
            .iter()
            .map(|&m| {
                let mut row = vec![m.name().to_string(), m.unit().to_string()];
                row.extend(transports.iter().map(|&k| number(report.summary(k, m))));
                row
            })
            .collect(),
    };
    out += &format!(
        "\nMedians over {} rounds (counts: totals over rounds)\n{medians}",
        options.rounds
    );

    // Ours is the reference of WebTransport: the same streams, another handshake.
    for reference in [Kind::RawQuinn, Kind::Libp2pQuic, Kind::Ours] {
        let wanted = reference != Kind::Ours || transports.contains(&Kind::OursWebTransport);
        if !wanted || !transports.contains(&reference) {
            continue;
        }
        let mut header = vec!["metric".to_string(), "better".to_string()];
        header.extend(transports.iter().map(|k| k.name().to_string()));
        let ratios = Table {
            header,
            rows: metrics
                .iter()
                .filter(|m| !m.is_count())
                .map(|&m| {
                    let better = if m.higher_is_better() {
                        "higher"
                    } else {
                        "lower"
                    };
                    let mut row = vec![m.name().to_string(), better.to_string()];
                    row.extend(transports.iter().map(|&k| {
                        report
                            .ratio(k, reference, m)
                            .map_or("-".into(), |r| format!("{r:.3}x"))
                    }));
                    row
                })
                .collect(),
        };
        out += &format!(
            "\nRatio to {} (median over rounds of the ratio within a round)\n{ratios}",
            reference.name()
        );
    }

    if transports.contains(&Kind::Ours) && transports.contains(&Kind::OursNoLedger) {
        let ledger = Table {
            header: vec!["metric".into(), "unit".into(), "ledger cost".into()],
            rows: metrics
                .iter()
                .filter(|m| !m.is_count())
                .map(|&m| {
                    // Positive: the ledger makes it worse, in the metric's own direction.
                    let cost = report.ratio(Kind::Ours, Kind::OursNoLedger, m).map(|r| {
                        let worse = if m.higher_is_better() {
                            1.0 - r
                        } else {
                            r - 1.0
                        };
                        worse * 100.0
                    });
                    vec![
                        m.name().to_string(),
                        m.unit().to_string(),
                        cost.map_or("-".into(), |c| format!("{c:+.1}%")),
                    ]
                })
                .collect(),
        };
        out += &format!(
            "\nLedger cost (ours against ours-no-ledger; positive = slower/larger)\n{ledger}"
        );
    }

    if !report.errors.is_empty() {
        out += "\nErrors:\n";
        for error in &report.errors {
            out += &format!("  {error}\n");
        }
    }
    out
}
