//! Test utilities (feature `test-util`): an in-process UDP proxy that drops, delays, reorders
//! and duplicates datagrams with a seeded RNG, so that lossy-network tests replay.

pub mod udp_proxy;

pub use udp_proxy::{Direction, Impairment, ProxyStats, UdpProxy};
