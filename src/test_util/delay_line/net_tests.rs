//! The line on real sockets, on loopback: its timing against an exact model of the path (by
//! kernel receive timestamps), its drops, its sessions, its shutdown.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{mpsc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use super::link::{Link, Verdict};
use super::probe::{Load, Probe};
use super::{direction_seed, DelayLine, Path};

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One network test at a time: two lines at once, each with its real-time threads, would
/// measure each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `test` on a thread of its own, and fails if it takes longer than [`TEST_TIMEOUT`].
fn bounded<T: Send + 'static>(test: impl FnOnce() -> T + Send + 'static) -> T {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let (tx, rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let _ = tx.send(test());
    });
    match rx.recv_timeout(TEST_TIMEOUT) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the test sends its outcome before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the test took over {TEST_TIMEOUT:?}"),
    }
}

fn bottleneck(one_way_ms: u64, rate_bps: u64, queue_bytes: Option<usize>) -> Path {
    Path {
        rate_bps: Some(rate_bps),
        queue_bytes,
        ..Path::delay_only(Duration::from_millis(one_way_ms))
    }
}

/// 4,000 datagrams of 1,250 bytes paced at 100 Mbit/s into a 100 Mbit/s bottleneck with 20 ms
/// of delay: each arrives (by the sink's kernel timestamp) when the exact model says, none
/// early, the median within 0.25 ms in every run and the 99th percentile within 1 ms in one of
/// three. The median's bound is tighter than the 1 ms because a line that sends on a
/// millisecond timer (tokio's) is late by 0–1 ms, uniformly: its p99 would pass 1 ms, its
/// median of 0.5 ms does not pass this. Here the median is 0.02–0.05 ms.
///
/// Why one of three: on this 2-core machine with compilers and fuzzers beside it (load 6) and
/// a kernel that does not preempt in kernel code, about one run in ten has a stall of 3-9 ms
/// in which even a real-time thread does not run: the line really sends late then (its
/// `max_late` says so), and >1% of a 0.4 s run is behind. A line that is late by design (a
/// millisecond timer, a model error) fails all three runs; a stall in three runs in a row is
/// about one in a thousand.
#[test]
fn delay_is_within_a_millisecond_at_100_mbit_s() {
    let path = bottleneck(20, 100_000_000, None);
    let load = Load {
        rate_bps: 100_000_000,
        size: 1250,
        count: 4000,
    };
    let mut runs = Vec::new();
    for seed in 1..=3 {
        let path = path.clone();
        let probe = bounded(move || Probe::run(&path, load, seed).unwrap());
        let error = probe.delay_error().expect("datagrams arrived");
        println!("delay error ms: {error:?}; {:?}", probe.stats);
        assert_eq!(probe.loss(), 0.0, "{:?}", probe.stats);
        // Early would be a line that skips part of the delay; the model's own slack (the
        // source's stamp is taken just before its send) is microseconds, and late.
        assert!(error.min > -0.05, "{error:?}");
        assert!(error.median < 0.25, "{error:?}");
        runs.push(error);
        if error.p99 < 1.0 {
            return;
        }
    }
    panic!("the 99th percentile was over 1 ms in three runs: {runs:#?}");
}

/// A burst of 50 datagrams of 1,200 bytes, sent back to back, into a 2 Mbit/s bottleneck
/// with a queue of 12,000 bytes: ten fit (a few more if the burst outlasts a datagram's 4.8 ms
/// of serialization), the rest are counted as queue drops, and those delivered leave at the
/// bottleneck's rate.
#[test]
fn a_burst_beyond_the_queue_is_dropped_and_the_rest_leave_at_the_rate() {
    let path = bottleneck(10, 2_000_000, Some(12_000));
    let load = Load {
        rate_bps: 10_000_000_000,
        size: 1200,
        count: 50,
    };
    let probe = bounded(move || Probe::run(&path, load, 1).unwrap());
    let burst = *probe.sent.last().unwrap() - probe.sent[0];
    let drained = (burst.as_secs_f64() / 4.8e-3).ceil() as u64;
    let arrived = probe.arrived.iter().flatten().count() as u64;
    let stats = probe.stats;
    println!("burst {burst:?}, arrived {arrived}, {stats:?}");
    assert_eq!(stats.delivered[0], arrived, "the sink missed none");
    assert_eq!(stats.delivered[0] + stats.queue_full[0], 50, "{stats:?}");
    assert!((10..=10 + drained).contains(&arrived), "{stats:?}");
    // Each arrival against the model: 4.8 ms apart, after 10 ms of delay (the median, as a
    // stall of the machine can hold one of these ten back).
    let error = probe.delay_error().unwrap();
    println!("delay error ms: {error:?}");
    assert!(error.min > -0.05 && error.median < 1.0, "{error:?}");
    let waited = Duration::from_secs_f64(4.8e-3 * (arrived - 1) as f64);
    assert!(stats.max_queue_delay[0] + burst >= waited, "{stats:?}");
}

/// The line draws its losses in datagram order from the seed, so the datagrams it loses on
/// the wire are exactly those a [`Link`] with the same seed loses: replayable.
#[test]
fn the_datagrams_lost_are_those_the_seed_decides() {
    let path = Path {
        loss: 0.01,
        ..Path::delay_only(Duration::from_millis(5))
    };
    let load = Load {
        rate_bps: 50_000_000,
        size: 200,
        count: 20_000,
    };
    let probe = bounded({
        let path = path.clone();
        move || Probe::run(&path, load, 9).unwrap()
    });
    let missing: Vec<usize> = (probe.arrived.iter().enumerate())
        .filter_map(|(seq, at)| at.is_none().then_some(seq))
        .collect();
    let mut link = Link::new(path, direction_seed(9, 0));
    let now = Instant::now();
    let decided: Vec<usize> = (0..load.count)
        .filter(|_| link.offer(now, load.size) == Verdict::Lost)
        .collect();
    assert_eq!(missing, decided);
    assert_eq!(probe.stats.lost, [decided.len() as u64, 0]);
    assert!(
        (150..=250).contains(&decided.len()),
        "{} lost",
        decided.len()
    );
}

/// Answers each datagram with itself, until `count` datagrams have come or none for a second.
fn echo_server(count: usize) -> (SocketAddr, thread::JoinHandle<usize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut buf, mut echoed) = ([0u8; 2048], 0);
        while let (true, Ok((len, from))) = (echoed < count, socket.recv_from(&mut buf)) {
            socket.send_to(&buf[..len], from).unwrap();
            echoed += 1;
        }
        echoed
    });
    (addr, server)
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

/// Two clients at once, each with its own session: each gets back its own datagrams and no
/// other's. Once shut down, the line's port is free.
#[test]
fn concurrent_clients_get_their_own_answers_and_shutdown_frees_the_port() {
    bounded(|| {
        let (server, echoed) = echo_server(200);
        let line = DelayLine::start(server, Path::delay_only(Duration::from_millis(1)), 1);
        let line = line.unwrap();
        let clients = [client(), client()];
        for round in 0..100u8 {
            for (id, client) in clients.iter().enumerate() {
                client
                    .send_to(&[id as u8, round], line.local_addr())
                    .unwrap();
            }
        }
        for (id, client) in clients.iter().enumerate() {
            for round in 0..100u8 {
                let mut buf = [0u8; 16];
                let len = client.recv(&mut buf).expect("an echo");
                assert_eq!(&buf[..len], &[id as u8, round], "in order, and its own");
            }
        }
        assert_eq!(echoed.join().unwrap(), 200);
        let addr = line.local_addr();
        let stats = line.shutdown();
        assert_eq!(stats.delivered, [200, 200]);
        UdpSocket::bind(addr).expect("the port is free after shutdown");
    });
}

/// Each direction has its own path: a line that loses everything on the way back lets the
/// server hear every datagram and the client none.
#[test]
fn each_direction_has_its_own_path() {
    bounded(|| {
        let (server, echoed) = echo_server(10);
        let there = Path::delay_only(Duration::from_millis(2));
        let back = Path {
            loss: 1.0,
            ..there.clone()
        };
        let line = DelayLine::start_each_way(server, there, back, 1).unwrap();
        let client = client();
        for i in 0..10u8 {
            client.send_to(&[i], line.local_addr()).unwrap();
        }
        let stats = line.wait_for_stats(Duration::from_secs(5), |s| s.lost[1] == 10);
        let stats = stats.expect("ten answers lost on the way back");
        assert_eq!(stats.delivered, [10, 0]);
        assert_eq!(stats.lost, [0, 10]);
        assert_eq!(echoed.join().unwrap(), 10);
    });
}

/// From a tokio program: the line runs on threads of its own, so it needs no runtime, and a
/// round trip through it takes both one-way delays (and not much more).
#[test]
fn a_tokio_program_sees_both_delays() {
    bounded(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let (there, back) = (Duration::from_millis(10), Duration::from_millis(20));
            let addr = server.local_addr().unwrap();
            let line =
                DelayLine::start_each_way(addr, Path::delay_only(there), Path::delay_only(back), 1);
            let line = line.unwrap();
            let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let start = Instant::now();
            client.send_to(b"ping", line.local_addr()).await.unwrap();
            let mut buf = [0u8; 16];
            let (len, from) = server.recv_from(&mut buf).await.unwrap();
            let arrived = start.elapsed();
            server.send_to(&buf[..len], from).await.unwrap();
            client.recv(&mut buf).await.unwrap();
            let rtt = start.elapsed();
            assert!(arrived >= there, "{arrived:?}");
            assert!(rtt >= there + back, "{rtt:?}");
            // Generous: a stall of the machine, not the line, is what could use it.
            assert!(rtt < there + back + Duration::from_millis(50), "{rtt:?}");
        });
    });
}
