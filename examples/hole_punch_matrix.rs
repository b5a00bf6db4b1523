//! Hole punching through real Linux NATs, every pair of the Rust transports (ours and
//! `libp2p-quic`, in both roles), through routers that drop what is sent to them and through
//! routers that do not: the matrix of `docs/hole-punching.md`. The harness is the NAT test's
//! (`tests/nat/`). Needs root, iproute2 and iptables; takes a few minutes.
//!
//! ```text
//! cargo run --example hole_punch_matrix [ATTEMPTS]     # as root
//! ```

#[path = "../tests/nat/mod.rs"]
mod nat;

use nat::{
    netns::{Input, Network},
    node::Quic,
    series, HEADER,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let attempts = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 20,
    };
    let pairs = [
        (Quic::Ours, Quic::Ours),
        (Quic::Libp2pQuic, Quic::Libp2pQuic),
        (Quic::Ours, Quic::Libp2pQuic),
        (Quic::Libp2pQuic, Quic::Ours),
    ];
    for input in [Input::Drop, Input::Accept] {
        let network = Network::build(input)?;
        let rows: Vec<String> = pairs
            .iter()
            .map(|&(a, b)| series(&network, Quic::Libp2pQuic, a, b, attempts).row())
            .collect();
        println!("routers: input {input:?}\n{HEADER}\n{}\n", rows.join("\n"));
    }
    Ok(())
}
