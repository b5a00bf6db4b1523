//! Hole punching through real Linux NATs, as libp2p/test-plans' hole-punch tests do with
//! Docker: network namespaces for a relay on a simulated internet and two peers, each behind a
//! router doing SNAT (see `nat/netns.rs`). A `Swarm` on each peer (relay client, DCUtR,
//! identify, ping) meets the other through a libp2p relay server; DCUtR then upgrades the
//! relayed connection to a direct one.
//!
//! Needs root, iproute2 and iptables (`.ci/run` installs them); fails saying why when it
//! cannot build its namespaces, and removes them on every way out. `docs/hole-punching.md`
//! has the results and how to run it by hand.

mod nat;

use std::time::Duration;

use nat::{
    netns::{Input, Network},
    node::Quic,
    series, HEADER,
};

const ATTEMPTS: usize = 20;

fn network(input: Input) -> Network {
    // `RUST_LOG` shows what the nodes do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    Network::build(input).unwrap_or_else(|e| panic!("cannot build the NAT test network: {e}"))
}

/// Ours on both sides: B punches, A's Initial gets through, B is the QUIC server.
#[test]
fn ours_punch_a_hole_through_two_nats() {
    let network = network(Input::Drop);
    let summary = series(&network, Quic::Libp2pQuic, Quic::Ours, Quic::Ours, ATTEMPTS);
    println!("{HEADER}\n{}", summary.row());
    assert!(
        summary.direct >= 19,
        "direct in {}/{ATTEMPTS}",
        summary.direct
    );
    assert_eq!(
        summary.b_server, summary.direct,
        "B is the QUIC server in all"
    );
    let median = summary.median().expect("a direct connection");
    assert!(median <= Duration::from_millis(300), "median {median:?}");
}

/// By hand (`--ignored --nocapture`): every pair of the Rust transports, through routers that
/// drop what is sent to them and through routers that do not.
#[test]
#[ignore = "takes minutes; run by hand, see docs/hole-punching.md"]
fn matrix() {
    let pairs = [
        (Quic::Ours, Quic::Ours),
        (Quic::Libp2pQuic, Quic::Libp2pQuic),
        (Quic::Ours, Quic::Libp2pQuic),
        (Quic::Libp2pQuic, Quic::Ours),
    ];
    for input in [Input::Drop, Input::Accept] {
        let network = network(input);
        let rows: Vec<String> = pairs
            .iter()
            .map(|&(a, b)| series(&network, Quic::Libp2pQuic, a, b, ATTEMPTS).row())
            .collect();
        println!("routers: input {input:?}\n{HEADER}\n{}\n", rows.join("\n"));
    }
}
