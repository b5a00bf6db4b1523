//! The link's decisions, without sockets or clocks: exact and replayable.

use std::time::{Duration, Instant};

use super::link::{Link, Verdict};
use super::{direction_seed, Path, UnknownProfile};

fn quiet(path: Path) -> Path {
    Path {
        loss: 0.0,
        jitter: Duration::ZERO,
        ..path
    }
}

/// Who is lost among `n` datagrams offered far enough apart that the queue never fills.
fn losses(path: &Path, seed: u64, n: usize) -> Vec<usize> {
    let mut link = Link::new(path.clone(), seed);
    let start = Instant::now();
    (0..n)
        .filter(|i| {
            let now = start + Duration::from_millis(*i as u64);
            link.offer(now, 1200) == Verdict::Lost
        })
        .collect()
}

#[test]
fn the_loss_rate_holds_over_100k_datagrams_and_the_seed_replays_it() {
    let path = Path::lossy();
    let lost = losses(&path, 7, 100_000);
    let rate = lost.len() as f64 / 100_000.0;
    assert!((rate - 0.01).abs() <= 0.002, "loss rate {rate}");
    assert_eq!(lost, losses(&path, 7, 100_000), "same seed, same losses");
    assert_ne!(
        lost,
        losses(&path, 8, 100_000),
        "another seed, other losses"
    );
    let thin = losses(&Path::long_thin(), 7, 100_000).len() as f64 / 100_000.0;
    assert!((thin - 0.001).abs() <= 0.0003, "long-thin loss rate {thin}");
}

#[test]
fn a_full_queue_drops_and_the_rest_leave_at_the_bottleneck_rate() {
    let path = Path {
        one_way_delay: Duration::from_millis(10),
        rate_bps: Some(10_000_000),
        queue_bytes: Some(12_000),
        ..quiet(Path::lossy())
    };
    let mut link = Link::new(path, 1);
    let now = Instant::now();
    let verdicts: Vec<_> = (0..50).map(|_| link.offer(now, 1200)).collect();
    let delivered: Vec<Instant> = verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Deliver { at, .. } => Some(*at),
            _ => None,
        })
        .collect();
    // 12,000 bytes of queue take ten datagrams of 1,200; the other forty find it full.
    assert_eq!(delivered.len(), 10, "{verdicts:?}");
    assert!(verdicts[10..].iter().all(|v| *v == Verdict::QueueFull));
    // 1,200 bytes at 10 Mbit/s: one every 960 µs, the first after its own 960 µs + 10 ms.
    let serialization = Duration::from_micros(960);
    for (i, at) in delivered.iter().enumerate() {
        let expected = now + Duration::from_millis(10) + serialization * (i as u32 + 1);
        let error = at.max(&expected).duration_since(*at.min(&expected));
        assert!(
            error < Duration::from_micros(1),
            "datagram {i}: off by {error:?}"
        );
    }
    // Once the queue has drained, datagrams pass again.
    let later = now + Duration::from_millis(20);
    assert!(matches!(link.offer(later, 1200), Verdict::Deliver { .. }));
}

#[test]
fn the_default_queue_is_one_bandwidth_delay_product() {
    // 200 Mbit/s x 60 ms = 1.5 MB
    assert_eq!(Path::continental().queue_limit(), 1_500_000);
    assert_eq!(Path::profile("long-thin"), Some(Path::long_thin()));
    assert_eq!(Path::profile("lunar"), None);
}

#[test]
fn jitter_never_reorders() {
    let path = Path {
        jitter: Duration::from_millis(5),
        ..quiet(Path::continental())
    };
    let mut link = Link::new(path, 3);
    let start = Instant::now();
    let mut last = start;
    for i in 0..10_000u64 {
        let Verdict::Deliver { at, .. } = link.offer(start + Duration::from_micros(100 * i), 1200)
        else {
            panic!("dropped with no loss and a BDP of queue");
        };
        assert!(at >= last);
        last = at;
    }
}

#[test]
fn profiles_parse_from_their_names() {
    for name in Path::PROFILES {
        assert_eq!(name.parse::<Path>(), Ok(Path::profile(name).unwrap()));
    }
    assert_eq!(Path::lossy().rtt(), Duration::from_millis(40));
    assert_eq!(Path::long_thin().rate_bps, Some(50_000_000));
    let error = "lunar".parse::<Path>().unwrap_err();
    assert_eq!(error, UnknownProfile("lunar".into()));
    assert!(error.to_string().contains("continental, lossy, long-thin"));
}

#[test]
fn the_queue_delay_is_the_backlog_ahead_of_a_datagram() {
    let path = Path {
        rate_bps: Some(8_000_000), // a byte per µs
        ..quiet(Path::continental())
    };
    let mut link = Link::new(path, 1);
    let now = Instant::now();
    let queued = |verdict| match verdict {
        Verdict::Deliver { queued, .. } => queued,
        other => panic!("{other:?}"),
    };
    assert_eq!(queued(link.offer(now, 1000)), Duration::ZERO);
    assert_eq!(queued(link.offer(now, 1000)), Duration::from_micros(1000));
    let later = now + Duration::from_micros(1500);
    assert_eq!(queued(link.offer(later, 1000)), Duration::from_micros(500));
}

#[test]
fn each_direction_draws_its_own_losses() {
    let path = Path::lossy();
    let [a, b] = [0, 1].map(|i| losses(&path, direction_seed(7, i), 10_000));
    assert_ne!(a, b);
    assert_ne!(direction_seed(1, 0), direction_seed(2, 1));
}
