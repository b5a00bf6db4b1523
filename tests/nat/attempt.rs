//! One attempt: B reserves a slot on the relay, A connects to B through it, and DCUtR upgrades
//! the relayed connection to a direct one. And the relay they meet at.

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use futures::{channel::oneshot, future::Fuse, FutureExt, StreamExt};
use libp2p::{
    multiaddr::Protocol,
    swarm::{Swarm, SwarmEvent},
    Multiaddr, PeerId,
};
use libp2p_identity::Keypair;

use super::{
    go::{go_peer_id_for_seed, GoBuild, GoPeer, Json},
    netns::{Host, Network, A_IP, B_IP, INTERNET, RELAY_IP},
    node::{peer_node, relay_node, PeerNodeEvent, Quic, RelayNode, Sides},
};

/// How long B's reservation and A's relayed connection may take.
const SETUP_WITHIN: Duration = Duration::from_secs(10);
/// How long after the relayed connection a direct one counts.
pub const DIRECT_WITHIN: Duration = Duration::from_secs(4);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn quic_on(ip: &str) -> Multiaddr {
    format!("/ip4/{ip}/udp/0/quic-v1").parse().unwrap()
}

/// A relay server on the simulated internet, until dropped.
pub struct Relay {
    pub addr: Multiaddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(network: &Network, kind: Quic) -> Self {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = network.spawn_in(Host::Inet, move || {
            runtime().block_on(async move {
                let mut swarm = relay_node(kind, Keypair::generate_ed25519());
                swarm.listen_on(quic_on(RELAY_IP)).expect("relay listens");
                let mut stopped = stopped.fuse();
                loop {
                    futures::select! {
                        event = swarm.select_next_some() => on_relay_event(&mut swarm, event, &addr_tx),
                        _ = stopped => return,
                    }
                }
            })
        });
        let addr = addr_rx
            .recv_timeout(SETUP_WITHIN)
            .expect("the relay listens");
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

fn on_relay_event(
    swarm: &mut Swarm<RelayNode>,
    event: SwarmEvent<super::node::RelayNodeEvent>,
    addr_tx: &mpsc::Sender<Multiaddr>,
) {
    if let SwarmEvent::NewListenAddr { address, .. } = event {
        // A relay serves only once it has an external address, which it gives out in
        // reservations.
        swarm.add_external_address(address.clone());
        let _ = addr_tx.send(address.with(Protocol::P2p(*swarm.local_peer_id())));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    A,
    B,
}

/// What a peer tells the attempt as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Note {
    /// B's reservation on the relay is accepted.
    Reserved,
    Relayed,
    Direct,
}

/// What one peer saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub relayed_at: Option<Instant>,
    pub direct_at: Option<Instant>,
    /// Whether this peer was the QUIC server of its first direct connection.
    pub server: Option<bool>,
    /// DCUtR's results and connection errors, for the report of a failure.
    pub log: Vec<String>,
}

/// One attempt as both peers saw it.
#[derive(Debug)]
pub struct Attempt {
    pub a: Outcome,
    pub b: Outcome,
}

/// A peer's identity: a key for a Rust peer, the `--seed` of a Go peer.
enum Identity {
    Key(Box<Keypair>),
    Seed(i64),
}

impl Identity {
    /// A fresh identity for a peer of `kind`: every attempt has new peers.
    fn new(kind: Quic) -> Self {
        static NEXT_SEED: AtomicI64 = AtomicI64::new(0);
        match kind {
            Quic::Go => Identity::Seed(
                (i64::from(std::process::id()) << 24) + NEXT_SEED.fetch_add(1, Ordering::Relaxed),
            ),
            _ => Identity::Key(Box::new(Keypair::generate_ed25519())),
        }
    }

    fn peer_id(&self) -> PeerId {
        match self {
            Identity::Key(keypair) => peer_id(keypair),
            Identity::Seed(seed) => go_peer_id_for_seed(*seed),
        }
    }
}

/// What a peer is to do.
struct Plan {
    role: Role,
    kind: Quic,
    identity: Identity,
    other: PeerId,
    relay: Multiaddr,
}

/// Run one attempt between a fresh A and B.
pub fn attempt(network: &Network, relay: &Multiaddr, a: Quic, b: Quic) -> Attempt {
    let (a_key, b_key) = (Identity::new(a), Identity::new(b));
    let (a_id, b_id) = (a_key.peer_id(), b_key.peer_id());
    let (notes_tx, notes) = mpsc::channel();
    let (go, go_rx) = oneshot::channel();
    let plan = |role, kind, identity, other| Plan {
        role,
        kind,
        identity,
        other,
        relay: relay.clone(),
    };
    let (b_peer, stop_b) = spawn_peer(network, plan(Role::B, b, b_key, a_id), &notes_tx, None);
    let (a_peer, stop_a) = spawn_peer(
        network,
        plan(Role::A, a, a_key, b_id),
        &notes_tx,
        Some(go_rx),
    );
    let mut go = Some(go);
    let mut deadline = Instant::now() + SETUP_WITHIN;
    let mut direct = Vec::new();
    while direct.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match notes.recv_timeout(left) {
            Ok((Role::B, Note::Reserved)) => drop(go.take().map(|go| go.send(()))),
            Ok((_, Note::Relayed)) => deadline = deadline.min(Instant::now() + DIRECT_WITHIN),
            Ok((role, Note::Direct)) => direct.push(role),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop((stop_a, stop_b));
    Attempt {
        a: a_peer.join().expect("peer A"),
        b: b_peer.join().expect("peer B"),
    }
}

fn peer_id(keypair: &Keypair) -> PeerId {
    keypair.public().to_peer_id()
}

type Notes = mpsc::Sender<(Role, Note)>;

fn spawn_peer(
    network: &Network,
    plan: Plan,
    notes: &Notes,
    go: Option<oneshot::Receiver<()>>,
) -> (JoinHandle<Outcome>, oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel();
    let notes = notes.clone();
    let host = match plan.role {
        Role::A => Host::A,
        Role::B => Host::B,
    };
    let thread = network.spawn_in(host, move || {
        if plan.kind == Quic::Go {
            // The process starts from this thread, in its namespace.
            runtime().block_on(run_go_peer(plan, notes, go, stopped))
        } else {
            runtime().block_on(run_peer(plan, notes, go, stopped))
        }
    });
    (thread, stop)
}

/// A peer's life: listen, meet the relay, and (A) dial B through it once B is reserved and we
/// know our own address; until told to stop.
async fn run_peer(
    plan: Plan,
    notes: Notes,
    go: Option<oneshot::Receiver<()>>,
    stopped: oneshot::Receiver<()>,
) -> Outcome {
    let sides = Sides::default();
    let Identity::Key(keypair) = &plan.identity else {
        panic!("a Rust peer has a key")
    };
    let mut swarm = peer_node(plan.kind, (**keypair).clone(), sides.clone());
    let ip = if plan.role == Role::A { A_IP } else { B_IP };
    swarm.listen_on(quic_on(ip)).expect("listen");
    swarm.dial(plan.relay.clone()).expect("dial the relay");
    let mut peer = Peer {
        plan,
        notes,
        sides,
        outcome: Outcome::default(),
        know_our_address: false,
        // B waits for nobody.
        may_dial: go.is_none(),
    };
    let mut go: Fuse<_> = go.map_or_else(Fuse::terminated, FutureExt::fuse);
    let mut stopped = stopped.fuse();
    loop {
        futures::select! {
            event = swarm.select_next_some() => peer.on_event(&mut swarm, event),
            _ = go => {
                peer.may_dial = true;
                peer.dial_b(&mut swarm);
            }
            _ = stopped => return peer.outcome,
        }
    }
}

struct Peer {
    plan: Plan,
    notes: Notes,
    sides: Sides,
    outcome: Outcome,
    know_our_address: bool,
    may_dial: bool,
}

impl Peer {
    fn note(&self, note: Note) {
        let _ = self.notes.send((self.plan.role, note));
    }

    fn circuit(&self) -> Multiaddr {
        self.plan.relay.clone().with(Protocol::P2pCircuit)
    }

    /// A dials B through the relay once both know their own address (identify's candidate,
    /// which DCUtR offers the other side) and B is reserved.
    fn dial_b(&mut self, swarm: &mut Swarm<super::node::PeerNode>) {
        if self.plan.role == Role::A && self.know_our_address && self.may_dial {
            let b = self.circuit().with(Protocol::P2p(self.plan.other));
            swarm.dial(b).expect("dial B through the relay");
        }
    }

    fn on_event(
        &mut self,
        swarm: &mut Swarm<super::node::PeerNode>,
        event: SwarmEvent<PeerNodeEvent>,
    ) {
        match event {
            SwarmEvent::NewExternalAddrCandidate { .. } if !self.know_our_address => {
                self.know_our_address = true;
                match self.plan.role {
                    Role::B => drop(swarm.listen_on(self.circuit()).expect("reserve")),
                    Role::A => self.dial_b(swarm),
                }
            }
            SwarmEvent::Behaviour(PeerNodeEvent::RelayClient(
                libp2p::relay::client::Event::ReservationReqAccepted { renewal: false, .. },
            )) => self.note(Note::Reserved),
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if peer_id == self.plan.other => self.on_connected(endpoint.is_relayed()),
            SwarmEvent::Behaviour(PeerNodeEvent::Dcutr(event)) => {
                self.outcome.log.push(format!("dcutr: {:?}", event.result))
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                self.outcome.log.push(format!("dial error: {error}"))
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                self.outcome.log.push(format!("incoming error: {error}"))
            }
            _ => {}
        }
    }

    fn on_connected(&mut self, relayed: bool) {
        let now = Some(Instant::now());
        if relayed {
            self.outcome.relayed_at = self.outcome.relayed_at.or(now);
            self.note(Note::Relayed);
        } else if self.outcome.direct_at.is_none() {
            self.outcome.direct_at = now;
            self.outcome.server = self.sides.first_with(self.plan.other);
            self.note(Note::Direct);
        }
    }
}

/// A Go peer's life (`interop/go-peer`, go-libp2p v0.52.0 with hole punching): it takes the
/// simulated internet as public (go-libp2p offers and accepts only public addresses for hole
/// punching, and go-multiaddr calls all of 198.18.0.0/15 unroutable), meets the relay and waits
/// until go-libp2p's hole punching has our address from the relay's identify. B then reserves a
/// slot; A, once B is reserved, dials B through the relay. Until told to stop.
async fn run_go_peer(
    plan: Plan,
    notes: Notes,
    go: Option<oneshot::Receiver<()>>,
    stopped: oneshot::Receiver<()>,
) -> Outcome {
    let Identity::Seed(seed) = plan.identity else {
        panic!("a Go peer has a seed")
    };
    let ip = if plan.role == Role::A { A_IP } else { B_IP };
    let mut args: Vec<String> = [
        "--holepunch",
        "--public-net",
        INTERNET,
        "--seed",
        &seed.to_string(),
        "--listen",
        &quic_on(ip).to_string(),
        "--relay",
        &plan.relay.to_string(),
    ]
    .map(String::from)
    .into();
    let mut outcome = Outcome::default();
    let mut stopped = stopped.fuse();
    match go {
        // B waits for nobody.
        None => args.push("--reserve".into()),
        // A starts once B is reserved; it dials once its hole punching is ready.
        Some(go) => {
            futures::select! {
                _ = go.fuse() => {}
                _ = stopped => return outcome,
            }
            let b = plan
                .relay
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(plan.other));
            args.extend(["--dial".into(), b.to_string()]);
        }
    }
    let note = |note| {
        let _ = notes.send((plan.role, note));
    };
    let mut peer = GoPeer::spawn_quiet(GoBuild::Current, &format!("go {:?}", plan.role), &args);
    let other = plan.other.to_string();
    loop {
        tokio::select! {
            line = peer.next_line(Duration::MAX) => match line {
                Some(line) => on_go_line(&line, &other, &mut outcome, note),
                None => {
                    outcome.log.push(format!("the Go peer ended: {:?}", peer.errors()));
                    let _ = stopped.await;
                    break;
                }
            },
            _ = &mut stopped => break,
        }
    }
    peer.shutdown().await;
    if outcome.direct_at.is_none() {
        // What the Go peer got to, for the report of the failure.
        let events: Vec<&str> = peer.seen.iter().map(Json::event).collect();
        outcome
            .log
            .push(format!("go events: {}", events.join(", ")));
    }
    outcome
}

/// What a line of the Go peer tells the attempt.
fn on_go_line(line: &Json, other: &str, outcome: &mut Outcome, note: impl Fn(Note)) {
    match line.event() {
        "reserved" => note(Note::Reserved),
        "connected" if line.str("peer_id") == Some(other) => {
            let now = Some(Instant::now());
            if line.get("relayed") == Some(&Json::Bool(true)) {
                outcome.relayed_at = outcome.relayed_at.or(now);
                note(Note::Relayed);
            } else if outcome.direct_at.is_none() {
                outcome.direct_at = now;
                outcome.server = match line.get("quic_server") {
                    Some(Json::Bool(server)) => Some(*server),
                    _ => None,
                };
                note(Note::Direct);
            }
        }
        "error" => outcome
            .log
            .push(format!("go: {}", line.str("what").unwrap_or(""))),
        "holepunch" => {
            let evt = line.get("evt");
            let error = evt.and_then(|e| e.str("Error")).unwrap_or("");
            outcome.log.push(format!(
                "go holepunch: {} {error}",
                line.str("type").unwrap_or("")
            ));
        }
        _ => {}
    }
}
