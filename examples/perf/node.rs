//! A perf node: a libp2p `Swarm` with `libp2p-stream`, on our transport or on `libp2p-quic`.
//!
//! The server answers every `/perf/1.0.0` stream; the client makes a fresh node per run, as
//! libp2p's test-plans do, so that each run pays for its connection.

// Shared with the WAN benchmark and the tests, each of which uses a part.
#![allow(dead_code)]

use std::{
    error::Error,
    time::{Duration, Instant},
};

use futures::{
    channel::{mpsc, oneshot},
    StreamExt,
};
use libp2p::{
    core::upgrade::Version,
    multiaddr::Protocol,
    swarm::{NetworkBehaviour, Swarm, SwarmEvent},
    Multiaddr, PeerId, SwarmBuilder,
};

use super::protocol::{self, Progress, Run, PROTOCOL};

/// Inbound streams on an unbounded channel: `libp2p-stream`'s `accept` drops a stream that
/// arrives while its one-slot channel is full, which two streams opened at once can hit.
#[path = "../../tests/common/go/accept.rs"]
mod accept;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Outbound streams (`Control::open_stream`).
    pub stream: libp2p_stream::Behaviour,
    /// Inbound perf streams.
    accept: accept::Behaviour,
}

/// A node's swarm, and what comes with it.
pub struct Node {
    pub swarm: Swarm<Behaviour>,
    /// Inbound perf streams.
    pub incoming: mpsc::UnboundedReceiver<accept::Inbound>,
    /// The books of our transport's connections, when the node runs on ours.
    pub ledgers: Option<libp2p_quinn::Ledgers>,
}

pub type BoxError = Box<dyn Error + Send + Sync>;

/// Which QUIC stack a node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// This crate (`/quic-v1` and `/quic-v1/webtransport`).
    Ours,
    /// rust-libp2p's `libp2p-quic` (`/quic-v1` only).
    Libp2pQuic,
}

impl std::str::FromStr for Stack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ours" => Ok(Stack::Ours),
            "libp2p-quic" => Ok(Stack::Libp2pQuic),
            other => Err(format!("unknown stack {other:?}: ours or libp2p-quic")),
        }
    }
}

/// How a node is set up beyond its stack.
#[derive(Clone)]
pub struct Options {
    pub stack: Stack,
    /// Our transport's config is made from this (the keypair is filled in).
    pub tune: std::sync::Arc<dyn Fn(&mut libp2p_quinn::Config) + Send + Sync>,
    /// Negotiate each stream's protocol lazily (multistream-select V1Lazy): the dialer sends
    /// its first bytes with the protocol name instead of waiting a round trip for the answer.
    pub lazy: bool,
    /// How long a perf stream may make no progress before it is given up.
    pub stall: Duration,
}

impl Options {
    pub fn new(stack: Stack) -> Self {
        Self {
            stack,
            tune: std::sync::Arc::new(|_| {}),
            lazy: true,
            stall: protocol::STALL,
        }
    }
}

/// A fresh node (a new identity) set up as `options` say.
pub fn node(options: &Options) -> Result<Node, BoxError> {
    let builder = SwarmBuilder::with_new_identity().with_tokio();
    let version = if options.lazy {
        Version::V1Lazy
    } else {
        Version::V1
    };
    let swarm_config = |c: libp2p::swarm::Config| {
        c.with_idle_connection_timeout(Duration::from_secs(60))
            .with_substream_upgrade_protocol_override(version)
    };
    let (accept, incoming) = accept::Behaviour::new(vec![PROTOCOL]);
    let behaviour = |_: &libp2p::identity::Keypair| Behaviour {
        stream: libp2p_stream::Behaviour::new(),
        accept,
    };
    let (swarm, ledgers) = match options.stack {
        Stack::Ours => {
            let tune = options.tune.clone();
            let mut ledgers = None;
            let swarm = builder
                .with_other_transport(|keypair| {
                    let mut config = libp2p_quinn::Config::new(keypair);
                    // A stream given up on is reset, so a short answer never looks complete.
                    config.reset_on_drop = true;
                    tune(&mut config);
                    let transport = libp2p_quinn::tokio::Transport::new(config);
                    ledgers = Some(transport.ledgers());
                    transport
                })?
                .with_behaviour(behaviour)?
                .with_swarm_config(swarm_config)
                .build();
            (swarm, ledgers)
        }
        Stack::Libp2pQuic => {
            let swarm = builder
                .with_quic()
                .with_behaviour(behaviour)?
                .with_swarm_config(swarm_config)
                .build();
            (swarm, None)
        }
    };
    Ok(Node {
        swarm,
        incoming,
        ledgers,
    })
}

/// A perf server running on the current tokio runtime until dropped.
pub struct Server {
    pub peer_id: PeerId,
    /// Listen addresses, each with `/p2p/<peer id>`.
    pub addrs: Vec<Multiaddr>,
    /// The books of its connections, on our transport.
    pub ledgers: Option<libp2p_quinn::Ledgers>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a perf server listening on `listen`; returns once every address is bound.
/// `on_stream` hears of each stream served (or not).
pub async fn serve(
    options: &Options,
    listen: &[Multiaddr],
    on_stream: impl Fn(std::io::Result<protocol::Served>) + Send + 'static,
) -> Result<Server, BoxError> {
    let Node {
        mut swarm,
        mut incoming,
        ledgers,
    } = node(options)?;
    let peer_id = *swarm.local_peer_id();
    for addr in listen {
        swarm.listen_on(addr.clone())?;
    }
    let mut addrs = Vec::new();
    while addrs.len() < listen.len() {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                addrs.push(address.with(Protocol::P2p(peer_id)))
            }
            SwarmEvent::ListenerError { error, .. } => return Err(error.into()),
            SwarmEvent::ListenerClosed { reason, .. } => {
                return Err(format!("listener closed: {reason:?}").into())
            }
            _ => {}
        }
    }
    let stall = options.stall;
    let task = tokio::spawn(async move {
        let mut streams = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = swarm.select_next_some() => {}
                Some((_, _, mut stream)) = incoming.next() => {
                    streams.spawn(async move {
                        protocol::serve(&mut stream, stall).await
                    });
                }
                Some(done) = streams.join_next() => {
                    on_stream(done.unwrap_or_else(|e| Err(std::io::Error::other(e))));
                }
            }
        }
    });
    Ok(Server {
        peer_id,
        addrs,
        ledgers,
        task,
    })
}

/// One client run on a fresh node: connect, then one perf stream. Times count from the dial.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Until the connection was established.
    pub connect: Duration,
    /// Until the perf stream was open (its protocol agreed, or sent lazily).
    pub opened: Duration,
    pub run: Run,
}

impl Measured {
    /// Until the download ended: test-plans' `timeSeconds`.
    pub fn total(&self) -> Duration {
        self.opened + self.run.total
    }

    /// Until the first MiB of the download had arrived.
    pub fn first_mib(&self) -> Option<Duration> {
        self.run.first_mib.map(|t| self.opened + t)
    }

    /// test-plans' final result line, with the connection and first-MiB times beside.
    pub fn final_line(&self) -> String {
        let first_mib = self
            .first_mib()
            .map_or("null".to_string(), |t| format!("{:.6}", t.as_secs_f64()));
        format!(
            "{{\"type\":\"final\",\"timeSeconds\":{:.6},\"uploadBytes\":{},\"downloadBytes\":{},\"connectSeconds\":{:.6},\"firstMiBSeconds\":{first_mib}}}",
            self.total().as_secs_f64(),
            self.run.upload_bytes,
            self.run.download_bytes,
            self.connect.as_secs_f64(),
        )
    }
}

/// Dials `addr` (with `/p2p/`) from a fresh node and runs one perf stream over the new
/// connection.
pub async fn run(
    options: &Options,
    addr: &Multiaddr,
    upload: u64,
    download: u64,
    progress: impl FnMut(Progress),
) -> Result<Measured, BoxError> {
    let Some(Protocol::P2p(peer)) = addr.iter().last() else {
        return Err(format!("{addr} does not end in /p2p/<peer id>").into());
    };
    let mut swarm = node(options)?.swarm;
    let mut control = swarm.behaviour().stream.new_control();
    let start = Instant::now();
    swarm.dial(addr.clone())?;
    let (connected, mut established) = oneshot::channel();
    let driver = tokio::spawn(drive(swarm, connected));
    let result = async {
        let connect = (&mut established)
            .await
            .map_err(|_| "the swarm stopped")??;
        let connect = connect.duration_since(start);
        let mut stream = control.open_stream(peer, PROTOCOL).await?;
        let opened = start.elapsed();
        let run = protocol::run(&mut stream, upload, download, options.stall, progress).await?;
        Ok(Measured {
            connect,
            opened,
            run,
        })
    }
    .await;
    driver.abort();
    result
}

/// Drives a client swarm; says when the connection is established (or why not).
async fn drive(mut swarm: Swarm<Behaviour>, connected: oneshot::Sender<Result<Instant, BoxError>>) {
    let mut connected = Some(connected);
    loop {
        let outcome = match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { .. } => Ok(Instant::now()),
            SwarmEvent::OutgoingConnectionError { error, .. } => Err(error.into()),
            _ => continue,
        };
        if let Some(connected) = connected.take() {
            let _ = connected.send(outcome);
        }
    }
}
