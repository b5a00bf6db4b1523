//! The libp2p nodes of the NAT test: a relay server, and peers with a relay client, DCUtR,
//! identify and ping, over either QUIC transport.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::{
    core::{muxing::StreamMuxerBox, transport::Boxed, ConnectedPoint, Endpoint},
    dcutr, identify, noise, ping, relay,
    swarm::{NetworkBehaviour, Swarm},
    yamux, PeerId, SwarmBuilder, Transport as _,
};
use libp2p_core::transport::PortUse;
use libp2p_identity::Keypair;

/// The QUIC transport a node runs on.
// `Libp2pQuic` is the crate's name, not a repetition of the enum's.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quic {
    /// libp2p-quinn.
    Ours,
    /// rust-libp2p's libp2p-quic 0.14.
    Libp2pQuic,
    /// go-libp2p v0.52.0 with hole punching (`interop/go-peer`): a process of its own, run by
    /// the attempt; a peer, never the relay.
    Go,
}

/// Whether we were the QUIC server of each QUIC connection the transport made, by peer, in
/// the order the transport made them.
#[derive(Clone, Default)]
pub struct Sides(Arc<Mutex<Vec<(PeerId, bool)>>>);

impl Sides {
    fn note(&self, peer: PeerId, server: bool) {
        self.0.lock().unwrap().push((peer, server));
    }

    /// Whether we were the server of the first QUIC connection with `peer`.
    pub fn first_with(&self, peer: PeerId) -> Option<bool> {
        let sides = self.0.lock().unwrap();
        sides.iter().find(|(p, _)| *p == peer).map(|(_, s)| *s)
    }
}

/// The QUIC transport of `kind`, noting the QUIC role of each connection in `sides`.
fn quic(kind: Quic, keypair: &Keypair, sides: Sides) -> Boxed<(PeerId, StreamMuxerBox)> {
    match kind {
        Quic::Ours => libp2p_quinn::tokio::Transport::new(libp2p_quinn::Config::new(keypair))
            .map(move |(peer, connection), _| {
                let server = connection.quinn().side() == quinn::Side::Server;
                sides.note(peer, server);
                (peer, StreamMuxerBox::new(connection))
            })
            .boxed(),
        // libp2p-quic hides quinn's connection: its role follows from how it came, as only a
        // dial as listener with `PortUse::New` punches (and then accepts) in libp2p-quic 0.14.
        Quic::Libp2pQuic => libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(keypair))
            .map(move |(peer, connection), endpoint| {
                let server = match endpoint {
                    ConnectedPoint::Listener { .. } => true,
                    ConnectedPoint::Dialer {
                        role_override,
                        port_use,
                        ..
                    } => role_override == Endpoint::Listener && port_use == PortUse::New,
                };
                sides.note(peer, server);
                (peer, StreamMuxerBox::new(connection))
            })
            .boxed(),
        Quic::Go => panic!("the Go peer is a process of its own, not a Rust transport"),
    }
}

fn identify(keypair: &Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new(
        "/libp2p-quinn-nat-test/1".into(),
        keypair.public(),
    ))
}

/// A relay server.
#[derive(NetworkBehaviour)]
pub struct RelayNode {
    pub relay: relay::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
}

/// A peer behind a NAT.
#[derive(NetworkBehaviour)]
pub struct PeerNode {
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
}

/// Connections stay while the attempt looks at them.
const IDLE: Duration = Duration::from_secs(30);

/// All peers of the test come from two addresses, and peers of past attempts may hold
/// circuits until their connections time out: no limits but the defaults' sizes.
fn relay_config() -> relay::Config {
    relay::Config {
        max_reservations: 1024,
        max_circuits: 1024,
        max_circuits_per_peer: 16,
        reservation_rate_limiters: Vec::new(),
        circuit_src_rate_limiters: Vec::new(),
        ..Default::default()
    }
}

pub fn relay_node(kind: Quic, keypair: Keypair) -> Swarm<RelayNode> {
    SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| quic(kind, key, Sides::default()))
        .expect("transport")
        .with_behaviour(|key| RelayNode {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay_config()),
            identify: identify(key),
            ping: ping::Behaviour::default(),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
        .build()
}

pub fn peer_node(kind: Quic, keypair: Keypair, sides: Sides) -> Swarm<PeerNode> {
    SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| quic(kind, key, sides))
        .expect("transport")
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .expect("relay client")
        .with_behaviour(|key, relay_client| PeerNode {
            relay_client,
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            identify: identify(key),
            ping: ping::Behaviour::default(),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
        .build()
}
