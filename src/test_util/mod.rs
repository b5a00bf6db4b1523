//! Test utilities (feature `test-util`): an in-process UDP proxy that drops, delays, reorders
//! and duplicates datagrams with a seeded RNG, so that lossy-network tests replay; and a delay
//! line that emulates a wide-area path (delay, bottleneck, loss) for the perf benchmark.

pub mod delay_line;
pub mod udp_proxy;

pub use delay_line::{DelayLine, DelayLineStats, Path, UnknownProfile};
pub use udp_proxy::{Direction, Impairment, ProxyStats, UdpProxy};

/// How many streams of this process still have their state in memory: a handle alive, a
/// ledger tracking them, or left the books and not yet freed. Counted only with this feature.
pub fn stream_states() -> usize {
    crate::session::cell::STATES.load(std::sync::atomic::Ordering::Relaxed)
}
