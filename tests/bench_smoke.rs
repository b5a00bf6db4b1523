//! Keeps the benchmark building and working: runs it once on tiny sizes and checks that every
//! transport produced a number for every workload. Not a measurement.

// The benchmark's `main` is unused here.
#[allow(dead_code)]
#[path = "../benches/bench/main.rs"]
mod bench;

use std::time::Duration;

// Each measurement brings its own runtime; this one only waits for them.
#[tokio::test]
async fn every_transport_measures_every_workload() {
    let options = bench::Options {
        rounds: 1,
        ..bench::Options::quick()
    };
    let report = tokio::time::timeout(Duration::from_secs(240), bench::run(&options))
        .await
        .expect("the quick benchmark finishes in time");
    println!("{}", bench::summary(&report, &options));
    assert!(report.errors.is_empty(), "errors: {:#?}", report.errors);
    for transport in bench::Kind::ALL {
        for workload in bench::Workload::ALL {
            for &metric in workload.metrics() {
                let values = report.values(transport, metric);
                assert_eq!(values.len(), 1, "{} {}", transport.name(), metric.name());
                if metric.is_failure() {
                    assert_eq!(values[0], 0.0, "{} {}", transport.name(), metric.name());
                } else if metric.is_count() {
                    assert!(values[0] >= 0.0, "{} {}", transport.name(), metric.name());
                } else if metric.is_rss() {
                    // Resident memory moves in pages, and a few dozen streams can fit into
                    // pages the process already has: only the heap figures must grow.
                    assert!(
                        values[0].is_finite(),
                        "{} {}",
                        transport.name(),
                        metric.name()
                    );
                } else {
                    assert!(
                        values[0] > 0.0,
                        "{} {}: {}",
                        transport.name(),
                        metric.name(),
                        values[0]
                    );
                }
            }
        }
    }
}
