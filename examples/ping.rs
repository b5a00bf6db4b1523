//! libp2p ping over libp2p-quinn.
//!
//! With no arguments, two peers run in this process on loopback and ping each other a few
//! times. With `--listen <multiaddr>` (more than once to listen on several) or
//! `--dial <multiaddr>`, one peer runs, so that two terminals (or a peer of another
//! implementation, or a browser) can ping each other.
//!
//! ```text
//! cargo run --release --example ping
//! cargo run --release --example ping -- --listen /ip4/127.0.0.1/udp/4001/quic-v1
//! cargo run --release --example ping -- --dial /ip4/127.0.0.1/udp/4001/quic-v1
//! cargo run --release --example ping -- --listen /ip4/127.0.0.1/udp/4001/quic-v1 \
//!     --listen /ip4/127.0.0.1/udp/4001/quic-v1/webtransport
//! ```
//!
//! A WebTransport listener prints its address with the certificate hashes a browser needs
//! (`…/webtransport/certhash/…/certhash/…/p2p/…`); `docs/webtransport.md` dials it from
//! js-libp2p.

use std::{error::Error, time::Duration};

use clap::Parser;
use futures::StreamExt;
use libp2p::{
    ping,
    swarm::{Swarm, SwarmEvent},
    Multiaddr, SwarmBuilder,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(about = "libp2p ping over libp2p-quinn")]
struct Args {
    /// Listen on this address (repeat to listen on several) and answer pings until stopped.
    #[arg(long, conflicts_with = "dial")]
    listen: Vec<Multiaddr>,
    /// Dial this address and ping it.
    #[arg(long)]
    dial: Option<Multiaddr>,
    /// How many pings to wait for before exiting (per peer).
    #[arg(long, default_value_t = 5)]
    count: usize,
}

fn swarm() -> Result<Swarm<ping::Behaviour>, Box<dyn Error>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        // The one line that differs from a libp2p-quic setup (`.with_quic()`).
        .with_other_transport(|keypair| {
            libp2p_quinn::tokio::Transport::new(libp2p_quinn::Config::new(keypair))
        })?
        .with_behaviour(|_| {
            ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(500)))
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// Drive `swarm` and print pings until `count` have succeeded (or for ever if `count` is None).
async fn run(
    swarm: &mut Swarm<ping::Behaviour>,
    count: Option<usize>,
) -> Result<(), Box<dyn Error>> {
    let name = swarm.local_peer_id().to_string();
    let mut pings = 0;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                println!("{name} listening on {address}/p2p/{name}");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                println!(
                    "{name} connected to {peer_id} at {}",
                    endpoint.get_remote_address()
                );
            }
            SwarmEvent::Behaviour(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                println!("{name} ping {peer}: {rtt:?}");
                pings += 1;
                if count.is_some_and(|c| pings >= c) {
                    return Ok(());
                }
            }
            SwarmEvent::Behaviour(ping::Event {
                peer,
                result: Err(e),
                ..
            }) => {
                return Err(format!("ping to {peer} failed: {e}").into());
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(format!("dial failed: {error}").into());
            }
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .try_init();
    let args = Args::parse();

    if !args.listen.is_empty() {
        let mut listener = swarm()?;
        for addr in args.listen {
            listener.listen_on(addr)?;
        }
        return run(&mut listener, None).await;
    }
    if let Some(addr) = args.dial {
        let mut dialer = swarm()?;
        dialer.dial(addr)?;
        return run(&mut dialer, Some(args.count)).await;
    }

    // Two peers in one process.
    let mut listener = swarm()?;
    let mut dialer = swarm()?;
    listener.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await {
            break address;
        }
    };
    dialer.dial(
        addr.with_p2p(*listener.local_peer_id())
            .map_err(|_| "bad address")?,
    )?;
    let both = async {
        tokio::try_join!(
            run(&mut dialer, Some(args.count)),
            run(&mut listener, Some(args.count))
        )
    };
    tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .map_err(|_| "no pings within 30 s")??;
    println!("done: {} pings each way", args.count);
    Ok(())
}
