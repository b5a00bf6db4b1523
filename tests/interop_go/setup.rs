//! Both sides started and connected as a test's topology says, and the Go peer's exit checked.

use std::net::SocketAddr;

use libp2p::Multiaddr;
use libp2p_identity::{Keypair, PeerId};

use crate::{
    common::{self, go::*},
    GO_SEED, STEP,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    GoDialsOurs,
    OursDialsGo,
    GoDialsOursWebTransport,
    OursDialsGoWebTransport,
}

impl Topology {
    pub fn label(self) -> &'static str {
        match self {
            Topology::GoDialsOurs => "go dials ours",
            Topology::OursDialsGo => "ours dials go",
            Topology::GoDialsOursWebTransport => "go dials ours, WebTransport",
            Topology::OursDialsGoWebTransport => "ours dials go, WebTransport",
        }
    }

    pub fn go_dials(self) -> bool {
        matches!(
            self,
            Topology::GoDialsOurs | Topology::GoDialsOursWebTransport
        )
    }

    /// What the listening side listens on, and the `transport` of the Go peer's line for it.
    pub fn listen(self) -> (&'static str, &'static str) {
        match self {
            Topology::GoDialsOurs | Topology::OursDialsGo => {
                ("/ip4/127.0.0.1/udp/0/quic-v1", "quic-v1")
            }
            _ => ("/ip4/127.0.0.1/udp/0/quic-v1/webtransport", "webtransport"),
        }
    }
}

/// `addr` (QUIC or WebTransport, with its certhashes) at `via`, naming `peer`.
fn dial_addr(addr: &Multiaddr, via: SocketAddr, peer: PeerId) -> Multiaddr {
    let without_peer: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    common::with_socket(&without_peer, via)
        .with_p2p(peer)
        .unwrap()
}

/// A Rust node and a Go peer, connected.
pub struct Setup {
    pub node: RustNode,
    pub go: GoPeer,
    pub go_id: PeerId,
    /// The Go peer's `connected` line.
    pub go_connected: Json,
    #[cfg(feature = "test-util")]
    pub proxy: Option<libp2p_quinn::test_util::UdpProxy>,
}

/// Put a lossy proxy in front of `server` if `lossy` has a seed; returns the address to dial.
#[allow(unused_variables)]
async fn route(
    server: SocketAddr,
    lossy: Option<u64>,
    #[cfg(feature = "test-util")] proxy: &mut Option<libp2p_quinn::test_util::UdpProxy>,
) -> SocketAddr {
    let Some(seed) = lossy else {
        return server;
    };
    #[cfg(feature = "test-util")]
    {
        use libp2p_quinn::test_util::{Impairment, UdpProxy};
        let p = UdpProxy::start(
            server,
            seed,
            Impairment::lossy(0.05),
            Impairment::lossy(0.05),
        )
        .await
        .expect("start the proxy");
        let addr = p.local_addr();
        println!("lossy proxy (seed {seed}, 5% loss each way): {addr} -> {server}");
        *proxy = Some(p);
        addr
    }
    #[cfg(not(feature = "test-util"))]
    panic!("the lossy proxy needs feature test-util")
}

/// Start both sides with the Go peer (of `build`) in `mode_args`, connect them as `topology`
/// says (through a lossy proxy if `lossy` has a seed), and check that each side sees the other's
/// peer id.
pub async fn connect(
    build: GoBuild,
    topology: Topology,
    mode_args: &[&str],
    options: NodeOptions,
    lossy: Option<u64>,
) -> Setup {
    let mut node = RustNode::start(Keypair::generate_ed25519(), options);
    let go_id = go_peer_id_for_seed(GO_SEED);
    #[cfg(feature = "test-util")]
    let mut proxy = None;
    let mut args: Vec<String> = vec!["--seed".into(), GO_SEED.to_string()];
    args.extend(mode_args.iter().map(|s| s.to_string()));
    let (listen, transport) = topology.listen();
    let mut go = if topology.go_dials() {
        let ours = node.listen_on(listen).await;
        let via = route(
            common::socket_of(&ours),
            lossy,
            #[cfg(feature = "test-util")]
            &mut proxy,
        )
        .await;
        let dial = dial_addr(&ours, via, node.peer_id);
        args.extend(["--dial".into(), dial.to_string()]);
        GoPeer::spawn(build, "go", &args)
    } else {
        args.extend(["--listen".into(), listen.into()]);
        let mut go = GoPeer::spawn(build, "go", &args);
        let listening = go.expect_listening(transport, STEP).await;
        assert_eq!(
            listening.str("peer_id"),
            Some(go_id.to_string().as_str()),
            "the Go peer's id is the one its seed gives"
        );
        let addr: Multiaddr = listening.str("addr").unwrap().parse().unwrap();
        let via = route(
            common::socket_of(&addr),
            lossy,
            #[cfg(feature = "test-util")]
            &mut proxy,
        )
        .await;
        node.dial(dial_addr(&addr, via, go_id));
        go
    };
    let connected = go.expect("connected", STEP).await;
    assert_eq!(
        connected.str("peer_id"),
        Some(node.peer_id.to_string().as_str()),
        "Go sees our peer id"
    );
    let (peer, remote) = node.connected(Some(go_id), STEP).await;
    assert_eq!(peer, go_id, "we see the Go peer's id");
    assert_eq!(
        node.key_exchange_with(go_id, STEP).await.as_deref(),
        Some("X25519MLKEM768"),
        "the key exchange with go, read on our side"
    );
    println!(
        "connected ({}, {}): ours {} <-> go {go_id} at {remote}",
        topology.label(),
        build.dir_name(),
        node.peer_id
    );
    Setup {
        node,
        go,
        go_id,
        go_connected: connected,
        #[cfg(feature = "test-util")]
        proxy,
    }
}

/// Stop the Go peer and check it exited cleanly and reported no error.
pub async fn finish(go: &mut GoPeer) {
    let status = go.shutdown().await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the Go peer did not exit cleanly: {status:?}"
    );
}

/// As `finish`, and the Go peer reported no error on the way.
pub async fn finish_clean(go: &mut GoPeer) {
    assert!(
        go.errors().is_empty(),
        "Go reported errors: {:?}",
        go.errors()
    );
    finish(go).await;
}
