//! The gate without sockets: time is stepped by hand.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::{
    gate::{Address, Gate, Outcome, Reason, IGNORE_AFTER_REFUSALS, WARN_EVERY},
    AdmissionConfig, SubnetLimit,
};

const TIMEOUT: Duration = Duration::from_secs(5);

fn gate(config: &AdmissionConfig, now: Instant) -> Gate {
    Gate::new(config, TIMEOUT, now)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(segments: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(segments))
}

/// `(outcome, reason)` of a decision.
fn decide(gate: &mut Gate, now: Instant, ip: IpAddr, address: Address) -> (Outcome, Reason) {
    let d = gate.decide(now, ip, address);
    (d.outcome, d.reason)
}

/// A client that follows a Retry: decide again with its address proven.
fn connect(gate: &mut Gate, now: Instant, ip: IpAddr) -> (Outcome, Reason) {
    match decide(gate, now, ip, Address::UNPROVEN) {
        (Outcome::Retried, _) => decide(gate, now, ip, Address::PROVEN),
        other => other,
    }
}

#[test]
fn a_fresh_source_gets_half_its_cap_without_a_retry_then_proves_its_address() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), now);
    let ip = v4(198, 18, 1, 1);
    for _ in 0..4 {
        assert_eq!(
            decide(&mut gate, now, ip, Address::UNPROVEN),
            (Outcome::Accepted, Reason::Within)
        );
    }
    assert_eq!(
        decide(&mut gate, now, ip, Address::UNPROVEN),
        (Outcome::Retried, Reason::Unverified)
    );
    for _ in 4..8 {
        assert_eq!(
            decide(&mut gate, now, ip, Address::PROVEN),
            (Outcome::Accepted, Reason::Within)
        );
    }
    assert_eq!(gate.in_flight(), 8);
}

#[test]
fn a_source_at_its_cap_is_retried_then_refused_and_admitted_again_after_a_release() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), now);
    let ip = v4(198, 18, 1, 1);
    for _ in 0..8 {
        assert_eq!(connect(&mut gate, now, ip).0, Outcome::Accepted);
    }
    // Unproven: a Retry, whatever the reason; proven: a refusal.
    assert_eq!(
        decide(&mut gate, now, ip, Address::UNPROVEN),
        (Outcome::Retried, Reason::SourceCap)
    );
    assert_eq!(
        decide(&mut gate, now, ip, Address::PROVEN),
        (Outcome::Refused, Reason::SourceCap)
    );
    // Another source is not affected.
    assert_eq!(
        connect(&mut gate, now, v4(198, 18, 1, 2)),
        (Outcome::Accepted, Reason::Within)
    );
    gate.release(now, ip);
    assert_eq!(
        decide(&mut gate, now, ip, Address::PROVEN),
        (Outcome::Accepted, Reason::Within)
    );
}

#[test]
fn a_source_has_a_burst_of_sixteen_then_one_every_five_seconds() {
    let start = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), start);
    let ip = v4(203, 0, 113, 7);
    for _ in 0..16 {
        assert_eq!(connect(&mut gate, start, ip).0, Outcome::Accepted);
        gate.release(start, ip);
    }
    assert_eq!(
        connect(&mut gate, start, ip),
        (Outcome::Refused, Reason::SourceRate)
    );
    let later = start + Duration::from_millis(4_900);
    assert_eq!(connect(&mut gate, later, ip).0, Outcome::Refused);
    let later = start + Duration::from_secs(5);
    assert_eq!(connect(&mut gate, later, ip).0, Outcome::Accepted);
    gate.release(later, ip);
    assert_eq!(connect(&mut gate, later, ip).0, Outcome::Refused);
}

#[test]
fn loopback_is_exempt_from_source_limits_but_not_from_the_listener_cap() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), now);
    let loopback = v4(127, 0, 0, 1);
    for _ in 0..256 {
        assert_eq!(
            decide(&mut gate, now, loopback, Address::UNPROVEN),
            (Outcome::Accepted, Reason::Exempt)
        );
    }
    assert_eq!(gate.sources(), 0, "exempt sources leave no entry");
    assert_eq!(
        decide(&mut gate, now, loopback, Address::PROVEN),
        (Outcome::Refused, Reason::ListenerCap)
    );
    for _ in 0..256 {
        gate.release(now, loopback);
    }
    assert_eq!(gate.in_flight(), 0);
    let v6_loopback = IpAddr::V6(Ipv6Addr::LOCALHOST);
    for _ in 0..100 {
        assert_eq!(
            decide(&mut gate, now, v6_loopback, Address::UNPROVEN).0,
            Outcome::Accepted
        );
        gate.release(now, v6_loopback);
    }
}

#[test]
fn without_the_exemption_loopback_is_one_source_like_any_other() {
    let now = Instant::now();
    let config = AdmissionConfig {
        exempt: Vec::new(),
        ..AdmissionConfig::default()
    };
    let mut gate = gate(&config, now);
    let loopback = v4(127, 0, 0, 1);
    let admitted = (0..40)
        .filter(|_| connect(&mut gate, now, loopback).0 == Outcome::Accepted)
        .count();
    assert_eq!(admitted, 8);
}

#[test]
fn above_the_retry_threshold_unproven_clients_are_retried_and_proven_ones_admitted() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), now);
    // 64 sources with one handshake each.
    for i in 0..64 {
        assert_eq!(
            decide(&mut gate, now, v4(198, 18, 2, i), Address::UNPROVEN).0,
            Outcome::Accepted
        );
    }
    let newcomer = v4(198, 18, 3, 1);
    assert_eq!(
        decide(&mut gate, now, newcomer, Address::UNPROVEN),
        (Outcome::Retried, Reason::Load)
    );
    assert_eq!(gate.sources(), 64, "a Retry leaves no state");
    assert_eq!(
        decide(&mut gate, now, newcomer, Address::PROVEN),
        (Outcome::Accepted, Reason::Within)
    );
    for i in 0..64 {
        gate.release(now, v4(198, 18, 2, i));
    }
    assert_eq!(
        decide(&mut gate, now, v4(198, 18, 3, 2), Address::UNPROVEN),
        (Outcome::Accepted, Reason::Within)
    );
}

#[test]
fn the_listener_cap_refuses_proven_clients_and_retries_unproven_ones() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), now);
    for i in 0..256u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i));
        assert_eq!(connect(&mut gate, now, ip).0, Outcome::Accepted, "{ip}");
    }
    assert_eq!(gate.in_flight(), 256);
    let late = v4(198, 19, 0, 1);
    assert_eq!(
        decide(&mut gate, now, late, Address::UNPROVEN),
        (Outcome::Retried, Reason::ListenerCap)
    );
    assert_eq!(
        decide(&mut gate, now, late, Address::PROVEN),
        (Outcome::Refused, Reason::ListenerCap)
    );
}

#[test]
fn ipv6_sources_are_limited_per_56_and_per_48() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), now);
    // Two addresses of one /56 share its cap of 8.
    let a = v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 1]);
    let b = v6([0x2001, 0xdb8, 1, 0x00ff, 0xffff, 0, 0, 2]);
    for i in 0..8 {
        let ip = if i % 2 == 0 { a } else { b };
        assert_eq!(connect(&mut gate, now, ip).0, Outcome::Accepted);
    }
    assert_eq!(
        connect(&mut gate, now, a),
        (Outcome::Refused, Reason::SourceCap)
    );
    // Eight /56s of one /48 fill its cap of 64; a ninth /56 is refused by the /48's.
    for sub in 1..8u16 {
        for n in 0..8 {
            let ip = v6([0x2001, 0xdb8, 1, sub << 8, 0, 0, 0, n + 1]);
            assert_eq!(connect(&mut gate, now, ip).0, Outcome::Accepted, "{ip}");
        }
    }
    let ninth = v6([0x2001, 0xdb8, 1, 0x0800, 0, 0, 0, 1]);
    assert_eq!(
        connect(&mut gate, now, ninth),
        (Outcome::Refused, Reason::SourceCap)
    );
    // Another /48 is not affected.
    let other = v6([0x2001, 0xdb8, 2, 0, 0, 0, 0, 1]);
    assert_eq!(connect(&mut gate, now, other).0, Outcome::Accepted);
}

#[test]
fn ipv4_mapped_ipv6_addresses_count_as_ipv4() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), now);
    let mapped = IpAddr::V6(Ipv4Addr::new(198, 18, 1, 1).to_ipv6_mapped());
    for _ in 0..8 {
        assert_eq!(connect(&mut gate, now, mapped).0, Outcome::Accepted);
    }
    assert_eq!(
        connect(&mut gate, now, v4(198, 18, 1, 1)),
        (Outcome::Refused, Reason::SourceCap)
    );
    let mapped_loopback = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
    assert_eq!(
        decide(&mut gate, now, mapped_loopback, Address::UNPROVEN).1,
        Reason::Exempt
    );
}

#[test]
fn a_source_is_forgotten_once_its_rates_have_refilled_and_not_before() {
    let start = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), start);
    let ip = v4(198, 18, 1, 1);
    for _ in 0..3 {
        assert_eq!(
            decide(&mut gate, start, ip, Address::UNPROVEN).0,
            Outcome::Accepted
        );
    }
    for _ in 0..3 {
        gate.release(start, ip);
    }
    assert_eq!(gate.in_flight(), 0);
    assert_eq!(gate.sources(), 1, "its rates still remember");
    // Three connection tokens refill in 15 s; three unverified tokens in 30 s (one per 10 s).
    gate.sweep(start + Duration::from_secs(29));
    assert_eq!(gate.sources(), 1);
    gate.sweep(start + Duration::from_secs(30));
    assert_eq!(gate.sources(), 0);
    // Sweeps also happen on their own as decisions come.
    assert_eq!(
        decide(
            &mut gate,
            start + Duration::from_secs(31),
            ip,
            Address::PROVEN
        )
        .0,
        Outcome::Accepted
    );
    gate.release(start + Duration::from_secs(31), ip);
    let other = v4(198, 18, 1, 2);
    assert_eq!(
        decide(
            &mut gate,
            start + Duration::from_secs(40),
            other,
            Address::PROVEN
        )
        .0,
        Outcome::Accepted
    );
    assert_eq!(gate.sources(), 1, "the first source was swept");
}

#[test]
fn the_table_of_sources_shrinks_once_a_flood_is_forgotten() {
    let start = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), start);
    for i in 0..2_000u16 {
        let [c, d] = i.to_be_bytes();
        let ip = v4(10, 0, c, d);
        assert_eq!(connect(&mut gate, start, ip).0, Outcome::Accepted);
        // Done with its handshake; its rate still remembers it.
        gate.release(start, ip);
    }
    assert_eq!(gate.sources(), 2_000);
    assert!(gate.sources_capacity() >= 2_000);
    gate.sweep(start + Duration::from_secs(3600));
    assert_eq!(gate.sources(), 0);
    assert!(
        gate.sources_capacity() <= 64,
        "capacity {}",
        gate.sources_capacity()
    );
}

#[test]
fn a_full_table_refuses_new_sources_but_not_known_ones() {
    let now = Instant::now();
    let config = AdmissionConfig {
        max_sources: 4,
        ..AdmissionConfig::default()
    };
    let mut gate = gate(&config, now);
    for d in 1..=4 {
        assert_eq!(
            connect(&mut gate, now, v4(10, 0, 0, d)).0,
            Outcome::Accepted
        );
    }
    assert_eq!(
        decide(&mut gate, now, v4(10, 0, 0, 5), Address::UNPROVEN),
        (Outcome::Retried, Reason::Sources)
    );
    assert_eq!(
        decide(&mut gate, now, v4(10, 0, 0, 5), Address::PROVEN),
        (Outcome::Refused, Reason::Sources)
    );
    assert_eq!(
        connect(&mut gate, now, v4(10, 0, 0, 1)).0,
        Outcome::Accepted
    );
    // Once a known source carries no state, it makes room.
    gate.release(now, v4(10, 0, 0, 2));
    let later = now + Duration::from_secs(60);
    assert_eq!(
        decide(&mut gate, later, v4(10, 0, 0, 5), Address::PROVEN).0,
        Outcome::Accepted
    );
}

#[test]
fn a_refused_source_that_keeps_coming_is_ignored_until_it_is_admitted_again() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), now);
    let ip = v4(198, 18, 1, 1);
    for _ in 0..8 {
        assert_eq!(connect(&mut gate, now, ip).0, Outcome::Accepted);
    }
    for _ in 0..IGNORE_AFTER_REFUSALS {
        assert_eq!(
            decide(&mut gate, now, ip, Address::PROVEN).0,
            Outcome::Refused
        );
    }
    assert_eq!(
        decide(&mut gate, now, ip, Address::PROVEN),
        (Outcome::Ignored, Reason::SourceCap)
    );
    gate.release(now, ip);
    assert_eq!(
        decide(&mut gate, now, ip, Address::PROVEN).0,
        Outcome::Accepted
    );
    assert_eq!(
        decide(&mut gate, now, ip, Address::PROVEN).0,
        Outcome::Refused
    );
}

#[test]
fn an_unproven_client_that_cannot_be_retried_is_ignored_not_refused() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), now);
    let ip = v4(198, 18, 1, 1);
    for _ in 0..8 {
        assert_eq!(connect(&mut gate, now, ip).0, Outcome::Accepted);
    }
    let unprovable = Address {
        validated: false,
        may_retry: false,
    };
    assert_eq!(
        decide(&mut gate, now, ip, unprovable),
        (Outcome::Ignored, Reason::SourceCap)
    );
}

#[test]
fn one_warning_names_the_refused_source_then_none_for_ten_seconds() {
    let start = Instant::now();
    let mut gate = gate(&AdmissionConfig::default(), start);
    let ip = v4(198, 18, 1, 1);
    for _ in 0..8 {
        assert_eq!(connect(&mut gate, start, ip).0, Outcome::Accepted);
    }
    // Retries and admissions never warn.
    let retried = gate.decide(start, ip, Address::UNPROVEN);
    assert_eq!(retried.outcome, Outcome::Retried);
    assert!(retried.warning.is_none());
    let first = gate.decide(start, ip, Address::PROVEN);
    let warning = first.warning.expect("the first refusal warns");
    assert_eq!(warning.source.to_string(), "198.18.1.1/32");
    assert_eq!(warning.reason, Reason::SourceCap);
    assert_eq!((warning.from_source, warning.total), (1, 1));
    assert_eq!(warning.retried, 5, "four on the way to the cap, one at it");
    assert_eq!(warning.in_flight, 8);
    let mut quiet = 0;
    let mut t = start;
    while t < start + WARN_EVERY - Duration::from_millis(100) {
        t += Duration::from_millis(100);
        assert!(gate.decide(t, ip, Address::PROVEN).warning.is_none());
        quiet += 1;
    }
    let next = gate
        .decide(start + WARN_EVERY, ip, Address::PROVEN)
        .warning
        .expect("a warning again after the interval");
    assert_eq!(next.total, quiet + 1);
    assert_eq!(next.from_source, quiet + 1);
}

#[test]
fn unlimited_admits_everything() {
    let now = Instant::now();
    let mut gate = gate(&AdmissionConfig::unlimited(), now);
    let ip = v4(198, 18, 1, 1);
    for _ in 0..10_000 {
        assert_eq!(
            decide(&mut gate, now, ip, Address::UNPROVEN),
            (Outcome::Accepted, Reason::Within)
        );
    }
    assert_eq!(gate.sources(), 0);
    assert_eq!(gate.in_flight(), 10_000);
}

#[test]
fn a_level_of_zero_refuses_everyone_it_covers() {
    let now = Instant::now();
    let config = AdmissionConfig {
        ipv4_subnets: vec![SubnetLimit::new(24, 0, 1.0, 1)],
        ..AdmissionConfig::default()
    };
    let mut gate = gate(&config, now);
    assert_eq!(
        connect(&mut gate, now, v4(198, 18, 1, 1)),
        (Outcome::Refused, Reason::SourceCap)
    );
    assert_eq!(gate.sources(), 0);
}

/// One step of a random schedule of sources coming and handshakes ending.
#[derive(Debug, Clone)]
enum Step {
    /// A client from `source` (of 12, the first 2 on loopback, some sharing a /24), proven or
    /// not, following a Retry or not.
    Arrive {
        source: u8,
        proven: bool,
        follows_retry: bool,
    },
    /// The `n`-th oldest admitted handshake ends.
    End(usize),
    /// Time passes.
    Wait(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..12, any::<bool>(), any::<bool>()).prop_map(|(source, proven, follows_retry)| {
            Step::Arrive { source, proven, follows_retry }
        }),
        3 => (0usize..64).prop_map(Step::End),
        1 => (0u16..3000).prop_map(Step::Wait),
    ]
}

fn source_ip(source: u8) -> IpAddr {
    match source {
        0 | 1 => v4(127, 0, 0, source + 1),
        n => v4(198, 18, n / 4, n),
    }
}

proptest! {
    /// Whatever comes: nothing is over its cap, a release gives back exactly what an admission
    /// took, and once everything ended and time passed the gate holds nothing.
    #[test]
    fn caps_hold_and_everything_is_given_back(steps in proptest::collection::vec(step(), 1..400)) {
        let config = AdmissionConfig {
            max_handshakes: 24,
            retry_above: 12,
            ipv4_subnets: vec![
                SubnetLimit::new(32, 3, 2.0, 5),
                SubnetLimit::new(24, 6, 4.0, 9),
            ],
            ..AdmissionConfig::default()
        };
        let mut now = Instant::now();
        let mut gate = gate(&config, now);
        let mut admitted: Vec<IpAddr> = Vec::new();
        for step in steps {
            match step {
                Step::Arrive { source, proven, follows_retry } => {
                    let ip = source_ip(source);
                    let address = if proven { Address::PROVEN } else { Address::UNPROVEN };
                    let mut decision = gate.decide(now, ip, address);
                    if decision.outcome == Outcome::Retried && follows_retry {
                        decision = gate.decide(now, ip, Address::PROVEN);
                    }
                    if !proven && !follows_retry {
                        prop_assert_ne!(decision.outcome, Outcome::Refused, "unproven: never refused");
                    }
                    if decision.outcome == Outcome::Accepted {
                        admitted.push(ip);
                    }
                }
                Step::End(n) => {
                    if !admitted.is_empty() {
                        let ip = admitted.remove(n % admitted.len());
                        gate.release(now, ip);
                    }
                }
                Step::Wait(ms) => now += Duration::from_millis(u64::from(ms)),
            }
            prop_assert_eq!(gate.in_flight(), admitted.len());
            prop_assert!(admitted.len() <= 24);
            for source in 2..12 {
                let ip = source_ip(source);
                prop_assert!(admitted.iter().filter(|a| **a == ip).count() <= 3);
                let subnet = |a: &IpAddr| match a { IpAddr::V4(a) => a.octets()[2], _ => 255 };
                let peers = admitted
                    .iter()
                    .filter(|a| !a.is_loopback() && subnet(a) == subnet(&ip))
                    .count();
                prop_assert!(peers <= 6);
            }
        }
        for ip in admitted.drain(..) {
            gate.release(now, ip);
        }
        prop_assert_eq!(gate.in_flight(), 0);
        gate.sweep(now + Duration::from_secs(3600));
        prop_assert_eq!(gate.sources(), 0);
    }
}
