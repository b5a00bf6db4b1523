//! Keeps the WAN benchmark working: every profile for about a second, ours with ours and with
//! go-libp2p both ways, over QUIC and WebTransport. Every run moves exactly the bytes it asked
//! for (the perf client checks), the Go client's result lines parse, every round trip takes at
//! least the path's RTT (the delay line is really in the path), and `--share`'s two uploads
//! at once arrive whole. Not a measurement.

#[allow(dead_code)]
#[path = "../benches/wan/main.rs"]
mod wan;

use std::time::Duration;

use libp2p_quinn::CongestionControl;
use wan::{Impl, Line, Options, Profile, Sample, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_carries_perf_between_ours_and_go() {
    let line = |client, server, transport| Line {
        client,
        server,
        transport,
    };
    let lines = vec![
        Line::same(Impl::Ours, Transport::Quic),
        Line::same(Impl::Ours, Transport::WebTransport),
        line(Impl::Ours, Impl::Go, Transport::Quic),
        line(Impl::Go, Impl::Ours, Transport::Quic),
        line(Impl::Ours, Impl::Go, Transport::WebTransport),
        line(Impl::Go, Impl::Ours, Transport::WebTransport),
    ];
    let options = Options {
        lines: lines.clone(),
        round_trips: 1,
        first_mib_runs: 1,
        transfer_bytes: Some(256 << 10),
        share: Some([CongestionControl::Bbr, CongestionControl::Cubic]),
        ..Options::quick()
    };
    let report = tokio::time::timeout(Duration::from_secs(300), wan::run(&options))
        .await
        .expect("the smoke run finishes in time")
        .expect("the servers start");
    println!("{}", wan::report::summary(&report, &options));
    assert!(report.errors.is_empty(), "errors: {:#?}", report.errors);
    for profile in Profile::all() {
        let rtt = profile.rtt().as_secs_f64() * 1e3;
        let link = report.values(profile.name, "link", Sample::LinkLimit);
        assert_eq!(link.len(), 1, "{}: the path's limit", profile.name);
        for line in &lines {
            let name = line.name();
            let of = |sample| report.values(profile.name, &name, sample);
            for sample in [Sample::Upload, Sample::Download, Sample::FirstMib] {
                assert_eq!(of(sample).len(), 1, "{} {name} {sample:?}", profile.name);
                assert!(of(sample)[0] > 0.0, "{} {name} {sample:?}", profile.name);
            }
            let trips = of(Sample::RoundTrip);
            assert_eq!(trips.len(), 1, "{} {name}", profile.name);
            assert!(
                trips[0] >= rtt,
                "{} {name}: {} ms < RTT",
                profile.name,
                trips[0]
            );
        }
        // `--share`: both clients' uploads arrive whole, side by side.
        for name in options.share_lines() {
            let uploads = report.values(profile.name, &name, Sample::Upload);
            assert_eq!(uploads.len(), 1, "{} {name}", profile.name);
            assert!(uploads[0] > 0.0, "{} {name}", profile.name);
        }
    }
}
