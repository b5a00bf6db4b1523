//! Interop with the Go test peer (`interop/go-peer`, go-libp2p): build it, spawn it and read its
//! JSON lines; and a Rust node, a libp2p `Swarm` on our transport, that speaks the same
//! protocols (ping, identify, and `/libp2p-quinn/echo|storm|reliable-reset/1.0.0` through
//! `libp2p-stream`).
//!
//! go-libp2p runs multistream-select on every stream, so the Rust side needs a `Swarm`; the
//! transport's [`Ledgers`] handle is kept before the transport goes into the builder, so that a
//! test can still look at what QUIC holds.
//!
//! Used by `tests/interop_go/` and, through `#[path]`, by `examples/incident_replay.rs`.
#![allow(dead_code)]

mod build;
mod json;
mod node;
mod peer;
mod reliable;
mod run;
mod workload;

/// Inbound streams of a fixed set of protocols, handed over on an unbounded channel.
///
/// `libp2p-stream`'s `Control::accept` drops an inbound stream when its one-slot channel is
/// still full, which a storm of 2560 streams on a small machine does hit (a few percent of
/// them): the test would count streams our transport delivered as lost.
mod accept;

use libp2p::StreamProtocol;

// Everything a user needs, at `go::*`. Not every user takes all of it (as with `dead_code`
// above).
#[allow(unused_imports)]
pub use self::{
    build::{go_peer_binary, go_peer_id_for_seed, GoBuild, OLD_TOOLCHAIN},
    json::Json,
    node::{NodeEvent, NodeOptions, RustNode, Served},
    peer::GoPeer,
    reliable::{
        read_reliable_reset, ReliableResetReport, ReliableResetServed, ReliableResetStream,
        ReliableSeen, StreamEnd, RELIABLE_RESET_CODE, RELIABLE_RESET_RELIABLE, RELIABLE_RESET_SIZE,
    },
    run::{run_go_test, Threads},
    workload::{echo_to, storm_to, StormReport},
};

pub const ECHO: StreamProtocol = StreamProtocol::new("/libp2p-quinn/echo/1.0.0");
pub const STORM: StreamProtocol = StreamProtocol::new("/libp2p-quinn/storm/1.0.0");
/// Streams reset with a reliable size (see `reliable.rs`).
pub const RELIABLE_RESET: StreamProtocol =
    StreamProtocol::new("/libp2p-quinn/reliable-reset/1.0.0");

/// The echo payload both sides use: byte i = i*31 % 251 (as the Go peer's `--size`).
pub fn echo_payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31) % 251) as u8).collect()
}
