//! The old Go peer, `interop/go-peer-old` (go-libp2p v0.38.2, quic-go v0.48.2: before the fix
//! of quic-go issue 4803), with which `examples/incident_replay.rs` replays the incident. The
//! replay takes minutes and runs by hand (`docs/incident-replay.md`); this test builds the peer
//! as the replay does (with Go 1.25.5, which the go command fetches once from the module proxy)
//! and has it listen and ping us while we ping it, so that a change that breaks it (its
//! `main.go` is `go-peer`'s) shows in CI.
//!
//! Needs Go >= 1.25.7 on PATH and, once, the module proxy; without them it fails saying why.

mod common;

use std::time::Duration;

use common::go::*;
use libp2p::Multiaddr;
use libp2p_identity::{Keypair, PeerId};

const GO_SEED: i64 = 4803;
const STEP: Duration = Duration::from_secs(30);

#[test]
fn ours_and_go_libp2p_v0_38_ping_each_other() {
    common::init_tracing();
    // The build is outside the time limit: the first one fetches a toolchain and modules.
    run_go_test(
        GoBuild::Old,
        Threads::Many,
        "ours_and_go_libp2p_v0_38_ping_each_other",
        Duration::from_secs(90),
        ping,
    );
}

async fn ping() {
    let go_id: PeerId = go_peer_id_for_seed(GO_SEED);
    let args: Vec<String> = [
        "--seed",
        &GO_SEED.to_string(),
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--mode",
        "ping",
        "--count",
        "3",
    ]
    .map(String::from)
    .into();
    let mut go = GoPeer::spawn(GoBuild::Old, "go-old", &args);
    // Built with Go >= 1.26 it could not accept a handshake: listening is what 1.25.5 buys.
    let listening = go.expect_listening("quic-v1", STEP).await;
    let addr: Multiaddr = listening.str("addr").unwrap().parse().unwrap();
    let mut node = RustNode::start(
        Keypair::generate_ed25519(),
        NodeOptions {
            ping: true,
            ..NodeOptions::default()
        },
    );
    node.dial(addr.with_p2p(go_id).expect("the Go peer's own id"));
    let (peer, _) = node.connected(Some(go_id), STEP).await;
    assert_eq!(peer, go_id);
    let connected = go.expect("connected", STEP).await;
    assert_eq!(
        connected.str("peer_id"),
        Some(node.peer_id.to_string().as_str()),
        "the Go peer sees our peer id"
    );

    let done = go.expect("ping_done", STEP).await;
    assert_eq!((done.num("ok"), done.num("failed")), (3.0, 0.0), "{done:?}");
    let rtts = node.pings(go_id, 3, STEP).await;
    println!("PING ours -> go-libp2p v0.38.2: RTTs {rtts:?}");

    assert!(
        go.errors().is_empty(),
        "Go reported errors: {:?}",
        go.errors()
    );
    let status = go.shutdown().await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the Go peer did not exit cleanly: {status:?}"
    );
}
