//! The NAT test harness: a network of namespaces ([`netns`]), libp2p nodes on either QUIC
//! transport ([`node`]), one hole-punching attempt ([`attempt`]), and what 20 of them add up to.
//!
//! Shared by `tests/hole_punch_nat.rs` and `examples/hole_punch_matrix.rs`; each uses a part.
#![allow(dead_code)]

pub mod attempt;
/// The Go peer's harness (build, spawn, JSON lines), shared with the interop tests.
#[path = "../common/go/mod.rs"]
pub mod go;
/// Entering a namespace, running `ip`, removing stale namespaces: shared with the admission lab.
#[path = "../common/lab.rs"]
pub mod lab;
pub mod netns;
pub mod node;
/// Installs iproute2 and iptables when they are missing and we may.
#[path = "../common/prepare.rs"]
pub mod prepare;

use std::time::Duration;

use attempt::{Attempt, Relay, Role};
use netns::Network;
use node::Quic;

impl Attempt {
    /// Whether both peers saw a direct connection in time.
    pub fn direct(&self) -> bool {
        self.a.direct_at.is_some() && self.b.direct_at.is_some()
    }

    /// From B's relayed connection (when DCUtR starts) to its direct one.
    pub fn relayed_to_direct(&self) -> Option<Duration> {
        Some(
            self.b
                .direct_at?
                .saturating_duration_since(self.b.relayed_at?),
        )
    }

    /// The QUIC server of the direct connection, when both sides agree on one.
    pub fn server(&self) -> Option<Role> {
        match (self.a.server?, self.b.server?) {
            (false, true) => Some(Role::B),
            (true, false) => Some(Role::A),
            _ => None,
        }
    }

    fn line(&self) -> String {
        match (self.relayed_to_direct(), self.direct()) {
            (Some(t), true) => format!(
                "direct after {} ms, QUIC server {:?}",
                t.as_millis(),
                self.server()
            ),
            _ => format!(
                "no direct connection: A {:?}, B {:?}",
                self.a.log, self.b.log
            ),
        }
    }
}

/// What a series of attempts between two kinds of peer adds up to.
pub struct Summary {
    pub label: String,
    pub attempts: usize,
    pub direct: usize,
    /// Relayed to direct, sorted.
    pub times: Vec<Duration>,
    pub b_server: usize,
    pub a_server: usize,
}

pub const HEADER: &str = "| A ↔ B | direct | relayed → direct: median | worst | QUIC server |\n\
                          |---|---|---|---|---|";

impl Summary {
    fn of(label: String, attempts: &[Attempt]) -> Self {
        let direct: Vec<&Attempt> = attempts.iter().filter(|a| a.direct()).collect();
        let mut times: Vec<Duration> = direct
            .iter()
            .filter_map(|a| a.relayed_to_direct())
            .collect();
        times.sort();
        let count = |role| direct.iter().filter(|a| a.server() == Some(role)).count();
        Self {
            label,
            attempts: attempts.len(),
            direct: direct.len(),
            times,
            b_server: count(Role::B),
            a_server: count(Role::A),
        }
    }

    pub fn median(&self) -> Option<Duration> {
        self.times.get(self.times.len() / 2).copied()
    }

    pub fn worst(&self) -> Option<Duration> {
        self.times.last().copied()
    }

    pub fn row(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("–".into(), |d| format!("{} ms", d.as_millis()));
        let unknown = self.direct - self.a_server - self.b_server;
        format!(
            "| {} | {}/{} | {} | {} | B {}, A {}{} |",
            self.label,
            self.direct,
            self.attempts,
            ms(self.median()),
            ms(self.worst()),
            self.b_server,
            self.a_server,
            if unknown > 0 {
                format!(", unclear {unknown}")
            } else {
                String::new()
            },
        )
    }
}

/// `count` attempts between an A of kind `a` and a B of kind `b`, each with fresh peers, through
/// a relay of kind `relay` on `network`. Each attempt's line goes to stderr.
pub fn series(network: &Network, relay: Quic, a: Quic, b: Quic, count: usize) -> Summary {
    let relay = Relay::start(network, relay);
    let attempts: Vec<Attempt> = (1..=count)
        .map(|n| {
            let attempt = attempt::attempt(network, &relay.addr, a, b);
            eprintln!("{a:?} ↔ {b:?} #{n}: {}", attempt.line());
            attempt
        })
        .collect();
    Summary::of(format!("{a:?} ↔ {b:?}"), &attempts)
}
