//! The Rust node: a libp2p `Swarm` on our transport that speaks the Go peer's protocols.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::{channel::mpsc, AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    identify, ping,
    swarm::{behaviour::toggle::Toggle, NetworkBehaviour, SwarmEvent},
    Multiaddr,
};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::{ConnectionSnapshot, Ledgers};

use super::{accept, read_reliable_reset, ReliableSeen, ECHO, RELIABLE_RESET, STORM};

// -------------------------------------------------------------------------------------------
// The Rust node

/// What the Rust node's swarm reports.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Listening(Multiaddr),
    Connected {
        peer: PeerId,
        remote: Multiaddr,
        dialer: bool,
        /// The TLS key-exchange group, read on our side when the connection was established.
        key_exchange: Option<String>,
    },
    Closed {
        peer: PeerId,
        cause: Option<String>,
    },
    Ping {
        peer: PeerId,
        rtt: Result<Duration, String>,
    },
    Identified {
        peer: PeerId,
        agent: String,
        protocols: Vec<String>,
    },
    ConnectionError {
        peer: Option<PeerId>,
        error: String,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: Toggle<ping::Behaviour>,
    identify: identify::Behaviour,
    /// Outbound streams (`Control::open_stream`).
    stream: libp2p_stream::Behaviour,
    /// Inbound echo and storm streams.
    accept: accept::Behaviour,
}

enum Command {
    Listen(Multiaddr),
    Dial(Multiaddr),
}

/// What the Rust node's echo, storm and reliable-reset handlers did.
#[derive(Debug, Default)]
pub struct Served {
    pub echo_streams: AtomicU64,
    pub echo_bytes: AtomicU64,
    pub echo_failed: AtomicU64,
    pub storm_ok: AtomicU64,
    pub storm_failed: AtomicU64,
    /// Every reliable-reset stream, in the order the handler finished them.
    pub reliable: std::sync::Mutex<Vec<ReliableSeen>>,
}

impl Served {
    /// What the reliable-reset handler saw so far.
    pub fn reliable_seen(&self) -> Vec<ReliableSeen> {
        self.reliable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Options of a [`RustNode`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Run `libp2p::ping` (which keeps a ping stream open, so the ledger is never idle).
    pub ping: bool,
    pub ping_interval: Duration,
    /// Overrides [`libp2p_quinn::Config::credit_wait_warning`].
    pub credit_wait_warning: Option<Duration>,
    /// Sets [`libp2p_quinn::Config::reset_on_drop`].
    pub reset_on_drop: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            ping: false,
            ping_interval: Duration::from_millis(500),
            credit_wait_warning: None,
            reset_on_drop: false,
        }
    }
}

/// A libp2p `Swarm` on our transport, driven by a task, serving echo and storm.
pub struct RustNode {
    pub peer_id: PeerId,
    pub ledgers: Ledgers,
    pub control: libp2p_stream::Control,
    pub served: Arc<Served>,
    /// Every event so far.
    pub seen: Vec<NodeEvent>,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<NodeEvent>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RustNode {
    pub fn start(keypair: Keypair, options: NodeOptions) -> RustNode {
        let peer_id = keypair.public().to_peer_id();
        let mut config = libp2p_quinn::Config::new(&keypair);
        if let Some(d) = options.credit_wait_warning {
            config.credit_wait_warning = d;
        }
        config.reset_on_drop = options.reset_on_drop;
        let transport = libp2p_quinn::tokio::Transport::new(config);
        let ledgers = transport.ledgers();
        let ping_config = ping::Config::new().with_interval(options.ping_interval);
        let ping_on = options.ping;
        let (accept, mut inbound) = accept::Behaviour::new(vec![ECHO, STORM, RELIABLE_RESET]);
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(move |_| transport)
            .expect("infallible")
            .with_behaviour(|key| Behaviour {
                ping: Toggle::from(ping_on.then(|| ping::Behaviour::new(ping_config))),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/ipfs/0.1.0".into(),
                    key.public(),
                )),
                stream: libp2p_stream::Behaviour::new(),
                accept,
            })
            .expect("infallible")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        let control = swarm.behaviour().stream.new_control();
        let served = Arc::new(Served::default());
        let mut tasks = Vec::new();

        let s = served.clone();
        tasks.push(tokio::spawn(async move {
            while let Some((_, protocol, stream)) = inbound.next().await {
                let s = s.clone();
                if protocol == ECHO {
                    tokio::spawn(async move {
                        match serve_echo(stream).await {
                            Ok(n) => {
                                s.echo_streams.fetch_add(1, Ordering::Relaxed);
                                s.echo_bytes.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                println!("[rust] echo handler failed: {e}");
                                s.echo_failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                } else if protocol == RELIABLE_RESET {
                    let mut stream = stream;
                    tokio::spawn(async move {
                        let seen = read_reliable_reset(&mut stream).await;
                        s.reliable
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(seen);
                        // Then our half: the drop finishes it, and the opener reads it to its
                        // end, so it knows the stream was recorded.
                        drop(stream);
                    });
                } else {
                    tokio::spawn(async move {
                        match serve_storm(stream).await {
                            Ok(()) => s.storm_ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => s.storm_failed.fetch_add(1, Ordering::Relaxed),
                        };
                    });
                }
            }
        }));

        let (commands, mut command_rx) = mpsc::unbounded();
        let (event_tx, events) = mpsc::unbounded();
        let events_ledgers = ledgers.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    command = command_rx.next() => match command {
                        Some(Command::Listen(addr)) => {
                            swarm.listen_on(addr).expect("listen");
                        }
                        Some(Command::Dial(addr)) => {
                            if let Err(e) = swarm.dial(addr) {
                                let _ = event_tx.unbounded_send(NodeEvent::ConnectionError {
                                    peer: None,
                                    error: e.to_string(),
                                });
                            }
                        }
                        None => return,
                    },
                    event = swarm.select_next_some() => {
                        if let Some(event) = node_event(event, &events_ledgers) {
                            let _ = event_tx.unbounded_send(event);
                        }
                    }
                }
            }
        }));
        RustNode {
            peer_id,
            ledgers,
            control,
            served,
            seen: Vec::new(),
            commands,
            events,
            tasks,
        }
    }

    /// Listen on loopback and return the address (with `/p2p/<our id>`).
    pub async fn listen(&mut self) -> Multiaddr {
        self.listen_on("/ip4/127.0.0.1/udp/0/quic-v1").await
    }

    /// Listen on `addr` and return the address reported for it (with `/p2p/<our id>`): the
    /// next one that is WebTransport if `addr` is, else the next QUIC one.
    pub async fn listen_on(&mut self, addr: &str) -> Multiaddr {
        let addr: Multiaddr = addr.parse().unwrap();
        let webtransport = |a: &Multiaddr| {
            a.iter()
                .any(|p| p == libp2p::multiaddr::Protocol::WebTransport)
        };
        let wanted = webtransport(&addr);
        self.commands
            .unbounded_send(Command::Listen(addr))
            .expect("driver alive");
        match self
            .wait_for(
                Duration::from_secs(10),
                |e| matches!(e, NodeEvent::Listening(a) if webtransport(a) == wanted),
            )
            .await
        {
            Some(NodeEvent::Listening(addr)) => addr.with_p2p(self.peer_id).unwrap(),
            _ => panic!("no listen address within 10 s"),
        }
    }

    pub fn dial(&self, addr: Multiaddr) {
        self.commands
            .unbounded_send(Command::Dial(addr))
            .expect("driver alive");
    }

    /// Wait for the next event `pick` accepts (all events are kept in `seen`).
    pub async fn wait_for(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&NodeEvent) -> bool,
    ) -> Option<NodeEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(e)) => {
                    self.seen.push(e.clone());
                    if pick(&e) {
                        return Some(e);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The first event `pick` accepts, among those seen already or, failing that, the next.
    pub async fn seen_or_wait(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&NodeEvent) -> bool,
    ) -> Option<NodeEvent> {
        if let Some(e) = self.seen.iter().find(|e| pick(e)) {
            return Some(e.clone());
        }
        self.wait_for(within, pick).await
    }

    /// Wait until connected to `peer` (any peer if `None`); returns the peer and its address.
    pub async fn connected(
        &mut self,
        peer: Option<PeerId>,
        within: Duration,
    ) -> (PeerId, Multiaddr) {
        if let Some(NodeEvent::Connected { peer: p, remote, .. }) = self
            .seen
            .iter()
            .find(|e| matches!(e, NodeEvent::Connected { peer: p, .. } if peer.is_none_or(|want| want == *p)))
        {
            return (*p, remote.clone());
        }
        match self
            .wait_for(within, |e| {
                matches!(e, NodeEvent::Connected { peer: p, .. } if peer.is_none_or(|want| want == *p))
                    || matches!(e, NodeEvent::ConnectionError { .. })
            })
            .await
        {
            Some(NodeEvent::Connected { peer, remote, .. }) => (peer, remote),
            other => panic!("not connected within {within:?}: {other:?}; events: {:?}", self.seen),
        }
    }

    /// The TLS key-exchange group of our first connection to `peer` (waiting for it as
    /// [`RustNode::connected`] does), read on our side when it was established.
    pub async fn key_exchange_with(&mut self, peer: PeerId, within: Duration) -> Option<String> {
        self.connected(Some(peer), within).await;
        self.seen.iter().find_map(|e| match e {
            NodeEvent::Connected {
                peer: p,
                key_exchange,
                ..
            } if *p == peer => Some(key_exchange.clone()),
            _ => None,
        })?
    }

    /// Wait for `n` successful pings from `peer`; returns the RTTs.
    pub async fn pings(&mut self, peer: PeerId, n: usize, within: Duration) -> Vec<Duration> {
        let deadline = tokio::time::Instant::now() + within;
        let mut rtts = Vec::new();
        while rtts.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .wait_for(left, |e| matches!(e, NodeEvent::Ping { .. }))
                .await
            {
                Some(NodeEvent::Ping { peer: p, rtt }) => {
                    assert_eq!(p, peer, "ping event names the wrong peer");
                    match rtt {
                        Ok(rtt) => rtts.push(rtt),
                        Err(e) => panic!("our ping to {peer} failed: {e}"),
                    }
                }
                _ => panic!("only {} of {n} pings within {within:?}", rtts.len()),
            }
        }
        rtts
    }

    /// The snapshots of our connections to `peer`.
    pub fn snapshots(&self, peer: &PeerId) -> Vec<ConnectionSnapshot> {
        self.ledgers.for_peer(peer)
    }

    /// Wait until our one connection to `peer` is idle: no stream handle alive and nothing held
    /// by QUIC on our side. Panics with the snapshot after `within`.
    pub async fn settled(&self, peer: &PeerId, within: Duration) -> (ConnectionSnapshot, Duration) {
        let started = Instant::now();
        loop {
            let mut snaps = self.snapshots(peer);
            assert_eq!(snaps.len(), 1, "expected one connection to {peer}");
            let snap = snaps.remove(0);
            if snap.is_idle() {
                return (snap, started.elapsed());
            }
            if started.elapsed() > within {
                panic!(
                    "our ledger for {peer} did not empty within {within:?}: totals {:?}, \
                     first streams {:#?}",
                    snap.totals,
                    &snap.streams[..snap.streams.len().min(10)]
                );
            }
            // A bounded poll of counters the transport's watcher updates.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RustNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn node_event(event: SwarmEvent<BehaviourEvent>, ledgers: &Ledgers) -> Option<NodeEvent> {
    Some(match event {
        SwarmEvent::NewListenAddr { address, .. } => NodeEvent::Listening(address),
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } => NodeEvent::Connected {
            peer: peer_id,
            dialer: endpoint.is_dialer(),
            remote: endpoint.get_remote_address().clone(),
            // The connection just established is our newest to the peer.
            key_exchange: ledgers
                .for_peer(&peer_id)
                .into_iter()
                .max_by_key(|snapshot| snapshot.number)
                .and_then(|snapshot| snapshot.key_exchange),
        },
        SwarmEvent::ConnectionClosed { peer_id, cause, .. } => NodeEvent::Closed {
            peer: peer_id,
            cause: cause.map(|c| c.to_string()),
        },
        SwarmEvent::IncomingConnectionError { error, .. } => NodeEvent::ConnectionError {
            peer: None,
            error: error.to_string(),
        },
        SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => NodeEvent::ConnectionError {
            peer: peer_id,
            error: error.to_string(),
        },
        SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => NodeEvent::Ping {
            peer: e.peer,
            rtt: e.result.map_err(|f| f.to_string()),
        },
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => NodeEvent::Identified {
            peer: peer_id,
            agent: info.agent_version,
            protocols: info.protocols.iter().map(|p| p.to_string()).collect(),
        },
        _ => return None,
    })
}

/// Echo handler: read to the end, write it all back, close; the drop ends both halves.
async fn serve_echo(mut stream: libp2p::Stream) -> std::io::Result<u64> {
    let mut data = Vec::new();
    stream.read_to_end(&mut data).await?;
    stream.write_all(&data).await?;
    stream.close().await?;
    Ok(data.len() as u64)
}

/// Storm handler, as the Go peer's: read 8 bytes, write them back, close; the drop stops our
/// receive half if the opener's FIN was not read.
async fn serve_storm(mut stream: libp2p::Stream) -> std::io::Result<()> {
    let mut buf = [0u8; 8];
    stream.read_exact(&mut buf).await?;
    stream.write_all(&buf).await?;
    stream.close().await?;
    Ok(())
}
