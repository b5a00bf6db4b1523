//! The WAN benchmark: libp2p's perf protocol over emulated wide-area paths, ours against
//! `libp2p-quic` and go-libp2p, side by side in one run.
//!
//! ```text
//! cargo bench --all-features --bench wan -- [--profiles continental,lossy,long-thin]
//!     [--lines ours,ours-webtransport,libp2p-quic,go-libp2p,go-libp2p-webtransport,ours>go-libp2p]
//!     [--rounds N] [--seconds S] [--round-trips N] [--quick]
//!     [--congestion cubic|new-reno|bbr|loss-tolerant-cubic] [--initial-rtt-ms MS]
//!                           (our transport's knobs)
//!     [--share bbr,cubic]   (also: two of our clients uploading at once, one per controller)
//!     [--queue-bdp F]       (each profile's queue: F bandwidth-delay products instead of 1)
//! ```
//!
//! Each server listens on loopback behind a delay line (`libp2p_quinn::test_util::DelayLine`:
//! one-way delays, a bottleneck with a drop-tail queue, seeded loss) that its clients dial
//! instead. Each run is a fresh client node: one connection, one perf stream. Per profile and
//! line, each round measures the connection + 1-byte round trip (a third of `--round-trips`
//! per round), the time from the dial to the first MiB of a download, and goodput up and
//! down over transfers sized to take about `--seconds` (sized once, by a probe in the first
//! round). Lines take turns in an order that rotates per round. Rust peers run in this
//! process, each on a one-worker runtime of its own; Go peers are processes (`interop/go-peer`,
//! go-libp2p v0.52). A `BENCH` line per measurement, then a table of medians.
//!
//! `tests/wan_smoke.rs` includes this file and runs each profile for a second.

// go/mod.rs allows its own dead code.
#[path = "../../tests/common/go/mod.rs"]
mod go;
mod measure;
// The perf node takes go's `accept.rs` by path too: two copies of a small module.
#[allow(clippy::duplicate_mod)]
#[path = "../../examples/perf/node.rs"]
mod node;
mod peers;
#[path = "../../examples/perf/protocol.rs"]
mod protocol;
pub mod report;

use std::{
    collections::{hash_map::Entry, HashMap},
    time::Duration,
};

use libp2p_quinn::{
    test_util::{DelayLine, Path},
    CongestionControl,
};

pub use measure::Direction;
pub use peers::{Impl, Line, Transport};
pub use report::{Report, Sample};

use measure::{first_mib, goodput, link_limit, round_trip};
use node::BoxError;
use peers::{socket_addr, through, Server, Tune};

/// An emulated path.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: &'static str,
    pub path: Path,
}

impl Profile {
    pub fn all() -> Vec<Profile> {
        ["continental", "lossy", "long-thin"]
            .into_iter()
            .map(|name| Profile::named(name).expect("a known profile"))
            .collect()
    }

    pub fn named(name: &str) -> Option<Profile> {
        let path = Path::profile(name)?;
        let name = ["continental", "lossy", "long-thin"]
            .into_iter()
            .find(|n| *n == name)?;
        Some(Profile { name, path })
    }

    pub fn rtt(&self) -> Duration {
        self.path.rtt()
    }

    pub fn rate_bps(&self) -> u64 {
        self.path.rate_bps.unwrap_or(1_000_000_000)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub profiles: Vec<Profile>,
    pub lines: Vec<Line>,
    pub rounds: usize,
    /// How long a goodput transfer should take.
    pub transfer: Duration,
    /// Connection + 1-byte round trips per line and profile, over all rounds.
    pub round_trips: usize,
    /// First-MiB runs per round.
    pub first_mib_runs: usize,
    /// Our transport's configuration beyond the defaults (the knob under test).
    pub tune: Tune,
    /// Bytes of each goodput transfer, instead of sizing them to `transfer` by a probe.
    pub transfer_bytes: Option<u64>,
    /// Two of our clients, one with each controller, uploading the same bytes at once over one
    /// path to our server: how they share its bottleneck ([`share`]).
    pub share: Option<[CongestionControl; 2]>,
}

impl Options {
    /// The lines of the issue: every stack against itself.
    pub fn lines() -> Vec<Line> {
        vec![
            Line::same(Impl::Ours, Transport::Quic),
            Line::same(Impl::Ours, Transport::WebTransport),
            Line::same(Impl::Libp2pQuic, Transport::Quic),
            Line::same(Impl::Go, Transport::Quic),
            Line::same(Impl::Go, Transport::WebTransport),
        ]
    }

    pub fn full() -> Self {
        Self {
            profiles: Profile::all(),
            lines: Self::lines(),
            rounds: 3,
            transfer: Duration::from_secs(10),
            round_trips: 30,
            first_mib_runs: 2,
            tune: Tune::default(),
            transfer_bytes: None,
            share: None,
        }
    }

    /// The names of the two lines of `--share`, in its order.
    pub fn share_lines(&self) -> Vec<String> {
        let Some([a, b]) = self.share else {
            return Vec::new();
        };
        let (a, b) = (controller_name(a), controller_name(b));
        vec![
            format!("ours {a} beside {b}, first"),
            format!("ours {b} beside {a}, second"),
        ]
    }

    pub fn quick() -> Self {
        Self {
            rounds: 1,
            transfer: Duration::from_secs(1),
            round_trips: 3,
            first_mib_runs: 1,
            ..Self::full()
        }
    }

    const USAGE: &'static str = "usage: wan [--profiles P,...] [--lines L,...] [--rounds N] \
        [--seconds S] [--round-trips N] [--congestion cubic|new-reno|bbr|loss-tolerant-cubic] \
        [--initial-rtt-ms MS] [--share CC,CC] [--queue-bdp F] [--quick]\n  profiles: continental, lossy, long-thin\n  \
        lines: ours, ours-webtransport, libp2p-quic, go-libp2p, go-libp2p-webtransport, none, \
        or client>server (ours>libp2p-quic)";

    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let args: Vec<String> = args.into_iter().collect();
        let mut options = if args.iter().any(|a| a == "--quick") {
            Self::quick()
        } else {
            Self::full()
        };
        let mut queue_bdp = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            let number = |s: String| s.parse::<f64>().map_err(|_| format!("not a number: {s}"));
            match arg.as_str() {
                "--quick" | "--bench" => {}
                "--rounds" => options.rounds = number(value()?)? as usize,
                "--seconds" => options.transfer = Duration::from_secs_f64(number(value()?)?),
                "--round-trips" => options.round_trips = number(value()?)? as usize,
                "--congestion" => options.tune.congestion = Some(controller(&value()?)?),
                "--share" => {
                    let pair = value()?
                        .split(',')
                        .map(controller)
                        .collect::<Result<Vec<_>, _>>()?;
                    let pair = pair
                        .try_into()
                        .map_err(|_| "--share takes two controllers")?;
                    options.share = Some(pair);
                }
                "--queue-bdp" => queue_bdp = Some(number(value()?)?),
                "--initial-rtt-ms" => {
                    options.tune.initial_rtt =
                        Some(Duration::from_secs_f64(number(value()?)? / 1e3))
                }
                "--profiles" => {
                    options.profiles = value()?
                        .split(',')
                        .map(|p| Profile::named(p.trim()).ok_or(format!("unknown profile {p}")))
                        .collect::<Result<_, _>>()?
                }
                "--lines" => {
                    let value = value()?;
                    if value == "none" {
                        options.lines.clear();
                        continue;
                    }
                    options.lines = value
                        .split(',')
                        .map(|l| line(l.trim()).ok_or(format!("unknown line {l}\n{}", Self::USAGE)))
                        .collect::<Result<_, _>>()?
                }
                other => return Err(format!("unknown argument {other:?}\n{}", Self::USAGE)),
            }
        }
        if let Some(share) = queue_bdp {
            for profile in &mut options.profiles {
                profile.path.queue_bytes = Some((profile.path.bdp_bytes() * share) as usize);
            }
        }
        if options.rounds == 0 {
            return Err("--rounds must be at least 1".into());
        }
        Ok(options)
    }
}

/// A line by its name (`ours`, `go-libp2p-webtransport`), or a client and a server of two
/// stacks (`ours>libp2p-quic`, `ours>go-libp2p-webtransport`).
fn line(name: &str) -> Option<Line> {
    let named = |name: &str| {
        let name = name.replace('-', " ").replace("libp2p quic", "libp2p-quic");
        Options::lines()
            .into_iter()
            .find(|line| line.name().replace("go-libp2p", "go libp2p") == name)
    };
    match name.split_once('>') {
        None => named(name),
        Some((client, server)) => {
            let server = named(server)?;
            Some(Line {
                client: named(client)?.client,
                ..server
            })
        }
    }
}

fn controller(name: &str) -> Result<CongestionControl, String> {
    match name.trim() {
        "cubic" => Ok(CongestionControl::Cubic),
        "new-reno" => Ok(CongestionControl::NewReno),
        "bbr" => Ok(CongestionControl::Bbr),
        "loss-tolerant-cubic" => Ok(CongestionControl::LossTolerantCubic),
        other => Err(format!("unknown congestion controller {other}")),
    }
}

fn controller_name(controller: CongestionControl) -> &'static str {
    match controller {
        CongestionControl::NewReno => "new-reno",
        CongestionControl::Bbr => "bbr",
        CongestionControl::LossTolerantCubic => "loss-tolerant-cubic",
        _ => "cubic",
    }
}

/// Runs the benchmark; prints a `BENCH` line per measurement as it goes.
pub async fn run(options: &Options) -> Result<Report, BoxError> {
    let mut servers = HashMap::new();
    let share = options.share.map(|_| Impl::Ours);
    for server in options.lines.iter().map(|l| l.server).chain(share) {
        if let Entry::Vacant(entry) = servers.entry(server) {
            entry.insert(Server::start(server, options.tune).await?);
        }
    }
    let mut report = Report::default();
    for profile in &options.profiles {
        let result = run_profile(options, profile, &servers, &mut report).await;
        if let Err(error) = result {
            report.errors.push(format!("{}: {error}", profile.name));
        }
    }
    for (_, server) in servers {
        server.stop().await;
    }
    Ok(report)
}

async fn run_profile(
    options: &Options,
    profile: &Profile,
    servers: &HashMap<Impl, Server>,
    report: &mut Report,
) -> Result<(), BoxError> {
    // The path's own limit, and the delay line's without a bottleneck (its own ceiling).
    let seconds = options.transfer.as_secs_f64().clamp(1.0, 3.0);
    let unlimited = Path {
        rate_bps: None,
        loss: 0.0,
        ..profile.path.clone()
    };
    for (path, rate, sample) in [
        (profile.path.clone(), profile.rate_bps(), Sample::LinkLimit),
        (unlimited, 2_000_000_000, Sample::LineCeiling),
    ] {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let line = DelayLine::start(sink.local_addr()?, path, 1)?;
        let front = line.local_addr();
        let limit =
            tokio::task::spawn_blocking(move || link_limit(front, sink, rate, seconds)).await?;
        report.add(profile, "link", sample, limit);
    }

    // A delay line in front of every server address, for the whole profile.
    let mut lines = Vec::new();
    let mut dial = HashMap::new();
    for (seed, line) in options.lines.iter().enumerate() {
        let server = &servers[&line.server];
        let addr = server.addr(line.transport).ok_or("no such transport")?;
        let relay = DelayLine::start(
            socket_addr(addr).ok_or("not a UDP address")?,
            profile.path.clone(),
            seed as u64 + 2,
        )?;
        dial.insert(*line, through(addr, relay.local_addr()));
        lines.push(relay);
    }

    let mut sizes: HashMap<(Line, Direction), u64> = HashMap::new();
    let per_round = options.round_trips.div_ceil(options.rounds);
    for round in 0..options.rounds {
        let mut order = options.lines.clone();
        let turn = round % order.len().max(1);
        order.rotate_left(turn);
        for line in order {
            let addr = &dial[&line];
            let name = line.name();
            for _ in 0..per_round {
                let t = round_trip(line.client, addr, options.tune).await;
                report.record(profile, &name, Sample::RoundTrip, t.map(ms));
            }
            for _ in 0..options.first_mib_runs {
                let t = first_mib(line.client, addr, options.tune).await;
                report.record(profile, &name, Sample::FirstMib, t.map(ms));
            }
            for direction in [Direction::Upload, Direction::Download] {
                let bytes = match sizes
                    .get(&(line, direction))
                    .or(options.transfer_bytes.as_ref())
                {
                    Some(bytes) => *bytes,
                    None => {
                        let bytes = size_transfer(options, profile, line, addr, direction).await?;
                        *sizes.entry((line, direction)).or_insert(bytes)
                    }
                };
                let rate = goodput(line.client, addr, direction, bytes, options.tune).await;
                let sample = match direction {
                    Direction::Upload => Sample::Upload,
                    Direction::Download => Sample::Download,
                };
                report.record(profile, &name, sample, rate);
            }
        }
    }
    let late: u64 = lines
        .iter()
        .map(|l| l.stats().late.iter().sum::<u64>())
        .sum();
    let sent: u64 = lines
        .iter()
        .map(|l| l.stats().delivered.iter().sum::<u64>())
        .sum();
    report.add(profile, "link", Sample::LateSends, late as f64);
    report.add(profile, "link", Sample::Relayed, sent as f64);
    if let Some(pair) = options.share {
        share(options, profile, &servers[&Impl::Ours], pair, report).await?;
    }
    Ok(())
}

/// Two of our clients, with the controllers of `pair`, upload the same bytes at once through
/// one delay line to our server, each round: each one's goodput. The bytes are half of what the
/// link carries in `options.transfer`, so two fair flows end together; a flow that takes more
/// than its half ends first, and the other has the link to itself for the rest.
async fn share(
    options: &Options,
    profile: &Profile,
    server: &Server,
    pair: [CongestionControl; 2],
    report: &mut Report,
) -> Result<(), BoxError> {
    let addr = server.addr(Transport::Quic).ok_or("no QUIC address")?;
    let relay = DelayLine::start(
        socket_addr(addr).ok_or("not a UDP address")?,
        profile.path.clone(),
        1,
    )?;
    let addr = through(addr, relay.local_addr());
    let half = profile.rate_bps() as f64 / 8.0 / 2.0 * options.transfer.as_secs_f64();
    let bytes = options.transfer_bytes.unwrap_or(half as u64);
    let tune = |congestion| Tune {
        congestion: Some(congestion),
        ..options.tune
    };
    let names = options.share_lines();
    for _ in 0..options.rounds {
        let (a, b) = tokio::join!(
            goodput(Impl::Ours, &addr, Direction::Upload, bytes, tune(pair[0])),
            goodput(Impl::Ours, &addr, Direction::Upload, bytes, tune(pair[1])),
        );
        report.record(profile, &names[0], Sample::Upload, a);
        report.record(profile, &names[1], Sample::Upload, b);
    }
    Ok(())
}

/// Bytes for a transfer of about `options.transfer`. A short transfer's rate is a low guess of
/// a long one's: slow start and its overshoot cost the same however much follows (sized from
/// one quarter-second probe, continental's 10 s transfers took 4.4 s). So a probe of a quarter
/// second at the link's rate and, unless it already took 2 s, a second one sized to take 2 s at
/// the first one's rate; the rate between the two has that fixed cost cancelled out.
async fn size_transfer(
    options: &Options,
    profile: &Profile,
    line: Line,
    addr: &libp2p::Multiaddr,
    direction: Direction,
) -> Result<u64, BoxError> {
    let link_bytes_per_s = profile.rate_bps() as f64 / 8.0;
    let longest = (link_bytes_per_s * options.transfer.as_secs_f64()) as u64;
    let probe = |bytes: u64| async move {
        let mbps = goodput(line.client, addr, direction, bytes, options.tune).await?;
        Ok::<_, BoxError>(bytes as f64 * 8.0 / (mbps * 1e6))
    };
    let first = (link_bytes_per_s / 4.0) as u64;
    let first_took = probe(first).await?;
    let mut rate = first as f64 / first_took;
    let second = ((rate * 2.0) as u64).min(longest);
    if second > first {
        let second_took = probe(second).await?;
        rate = if second_took > first_took {
            (second - first) as f64 / (second_took - first_took)
        } else {
            second as f64 / second_took
        };
    }
    Ok(((rate * options.transfer.as_secs_f64()) as u64).clamp(first, longest))
}

fn ms(t: Duration) -> f64 {
    t.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let options = match Options::from_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let report = match run(&options).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("the benchmark could not start: {error}");
            std::process::exit(1);
        }
    };
    println!("{}", report::summary(&report, &options));
    if !report.errors.is_empty() {
        eprintln!("errors:\n{}", report.errors.join("\n"));
        std::process::exit(1);
    }
}
