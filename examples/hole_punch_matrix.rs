//! Hole punching through real Linux NATs, every pair of the Rust transports (ours and
//! `libp2p-quic`, in both roles) and ours with go-libp2p v0.52 (`interop/go-peer`, in both
//! roles, and go with go as the baseline), through routers that drop what is sent to them and
//! through routers that do not: the matrix of `docs/hole-punching.md`. The harness is the NAT
//! test's (`tests/nat/`). Needs root, iproute2, iptables and Go (for the Go peer); takes a few
//! minutes.
//!
//! ```text
//! cargo run --example hole_punch_matrix [ATTEMPTS [rust|go|all]]     # as root
//! ```
//!
//! `rust` runs the pairs of Rust transports only, `go` the pairs with go-libp2p only; `all`
//! (the default) both.

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
    let rust = [
        (Quic::Ours, Quic::Ours),
        (Quic::Libp2pQuic, Quic::Libp2pQuic),
        (Quic::Ours, Quic::Libp2pQuic),
        (Quic::Libp2pQuic, Quic::Ours),
    ];
    let go = [
        (Quic::Go, Quic::Go),
        (Quic::Ours, Quic::Go),
        (Quic::Go, Quic::Ours),
    ];
    let pairs: Vec<(Quic, Quic)> = match std::env::args().nth(2).as_deref() {
        None | Some("all") => rust.into_iter().chain(go).collect(),
        Some("rust") => rust.into(),
        Some("go") => go.into(),
        Some(other) => return Err(format!("pairs: rust, go or all, not {other:?}").into()),
    };
    let inputs = match std::env::var("ROUTERS").as_deref() {
        Ok("drop") => vec![Input::Drop],
        Ok("accept") => vec![Input::Accept],
        _ => vec![Input::Drop, Input::Accept],
    };
    for input in inputs {
        let network = Network::build(input)?;
        let rows: Vec<String> = pairs
            .iter()
            .map(|&(a, b)| series(&network, Quic::Libp2pQuic, a, b, attempts).row())
            .collect();
        println!("routers: input {input:?}\n{HEADER}\n{}\n", rows.join("\n"));
    }
    Ok(())
}
