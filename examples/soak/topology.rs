//! The topology: setting it up, and what its ends and ledgers hold.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use futures::{AsyncWriteExt, StreamExt};
use libp2p_identity::PeerId;
use libp2p_quinn::{
    test_util::{Impairment, UdpProxy},
    ConnectionSnapshot, Ledgers,
};
use tokio::task::JoinSet;

use super::{
    connection::{bounded, connect, drive, keep_polling, listen, transport, End, Substream},
    report::Sample,
    Opts, CLIENTS, GOSSIP, SERVERS,
};

/// Everything set up: the connections' ends and what watches them.
pub(super) struct Topology {
    pub(super) ends: Vec<End>,
    /// Per connection: (server end, client end) indices into `ends`.
    pub(super) connections: Vec<(usize, usize)>,
    /// Our ledgers, one per transport (empty for libp2p-quic).
    ledgers: Vec<Ledgers>,
    names: HashMap<PeerId, String>,
    /// The long-lived streams, (server's, client's) per connection, until their tasks take them.
    pub(super) gossip: Vec<(Substream, Substream)>,
    _proxies: Vec<UdpProxy>,
}

pub(super) async fn set_up(opts: &Opts, drivers: &mut JoinSet<()>) -> Result<Topology, String> {
    let mut names = HashMap::new();
    let mut ledgers = Vec::new();
    let mut servers = Vec::new();
    for i in 0..SERVERS {
        let (mut t, peer, l) = transport(opts.transport, opts.stream_limit);
        let addr = listen(&mut t).await?;
        names.insert(peer, format!("s{i}"));
        ledgers.extend(l);
        servers.push((t, addr));
    }
    let mut clients = Vec::new();
    for j in 0..CLIENTS {
        let (t, peer, l) = transport(opts.transport, opts.stream_limit);
        names.insert(peer, format!("c{j}"));
        ledgers.extend(l);
        clients.push(t);
    }
    let mut ends = Vec::new();
    let mut connections = Vec::new();
    let mut proxies = Vec::new();
    let mut gossip = Vec::new();
    for (i, (server, listen_addr)) in servers.iter_mut().enumerate() {
        let (socket, _) =
            libp2p_quinn::parse_multiaddr(listen_addr).ok_or("unparsable listen address")?;
        for (j, client) in clients.iter_mut().enumerate() {
            let k = connections.len();
            let target = if opts.loss > 0.0 {
                let impairment = Impairment::lossy(opts.loss);
                let seed = opts.seed.wrapping_add(k as u64);
                let proxy = UdpProxy::start(socket, seed, impairment.clone(), impairment)
                    .await
                    .map_err(|e| format!("proxy: {e}"))?;
                let target = libp2p_quinn::to_multiaddr(proxy.local_addr());
                proxies.push(proxy);
                target
            } else {
                listen_addr.clone()
            };
            let (client_muxer, server_muxer) = connect(client, server, &target)
                .await
                .map_err(|e| format!("connecting c{j} to s{i}: {e}"))?;
            let mut server_end = drive(server_muxer, format!("s{i}→c{j}"), true, drivers);
            let client_end = drive(client_muxer, format!("c{j}→s{i}"), false, drivers);
            // The long-lived stream is the first one: the client opens it and speaks first,
            // so that the server sees it before any other.
            let mut first = bounded("open the gossip stream", client_end.opener.open())
                .await?
                .map_err(|_| "driver gone")?
                .map_err(|e| format!("open the gossip stream: {e}"))?;
            bounded("first gossip message", first.write_all(GOSSIP))
                .await?
                .map_err(|e| format!("first gossip message: {e}"))?;
            let accepted = bounded(
                "accept the gossip stream",
                server_end.inbound.as_mut().expect("fresh").next(),
            )
            .await?
            .ok_or("connection gone")?;
            ends.push(server_end);
            ends.push(client_end);
            connections.push((ends.len() - 2, ends.len() - 1));
            gossip.push((accepted, first));
        }
    }
    for t in servers.into_iter().map(|(t, _)| t).chain(clients) {
        keep_polling(t, drivers);
    }
    Ok(Topology {
        ends,
        connections,
        ledgers,
        names,
        gossip,
        _proxies: proxies,
    })
}

/// Live streams now, and the oldest open still waiting.
pub(super) fn sample(topology: &Topology, t: f64) -> (Sample, Option<Duration>) {
    let now = Instant::now();
    let mut s = Sample {
        t,
        ..Sample::default()
    };
    let mut oldest_wait = None;
    for end in &topology.ends {
        let handles = end.handles.load(Ordering::Relaxed);
        s.handles += handles;
        if topology.ledgers.is_empty() {
            s.sum += handles;
            s.max = s.max.max(handles);
        }
        if let Some(since) = *end.waiting_since.lock().unwrap() {
            let waited = now.saturating_duration_since(since);
            oldest_wait = oldest_wait.max(Some(waited));
        }
    }
    for ledgers in &topology.ledgers {
        for snapshot in ledgers.snapshot() {
            let tracked = snapshot.totals.tracked_total();
            s.sum += tracked;
            s.max = s.max.max(tracked);
        }
    }
    (s, oldest_wait)
}

/// Why nothing is left, or what is: one line per connection end that still holds something.
pub(super) fn leftovers(topology: &Topology) -> Vec<String> {
    let mut lines = Vec::new();
    for end in &topology.ends {
        let handles = end.handles.load(Ordering::Relaxed);
        if handles > 0 {
            lines.push(format!("{}: {handles} stream handles alive", end.label));
        }
    }
    for (i, ledgers) in topology.ledgers.iter().enumerate() {
        let own = if i < SERVERS {
            format!("s{i}")
        } else {
            format!("c{}", i - SERVERS)
        };
        for snapshot in ledgers.snapshot() {
            if !snapshot.is_idle() {
                lines.push(describe(&own, &topology.names, &snapshot));
            }
        }
    }
    lines
}

fn describe(own: &str, names: &HashMap<PeerId, String>, s: &ConnectionSnapshot) -> String {
    let peer = names.get(&s.peer).map_or("?", String::as_str);
    let mut line = format!(
        "{own}→{peer} (ledger): handles alive in/out {:?}, tracked in/out {:?}, held after drop \
         {:?}",
        s.live_handles, s.totals.tracked, s.totals.held_after_drop
    );
    let mut states: HashMap<String, usize> = HashMap::new();
    for st in &s.streams {
        *states
            .entry(format!(
                "{} send={} recv={}{}",
                st.direction,
                st.send,
                st.recv,
                if st.handle_alive { "" } else { " dropped" }
            ))
            .or_default() += 1;
    }
    let mut states: Vec<_> = states.into_iter().collect();
    states.sort();
    for (state, count) in states {
        let _ = write!(line, "; {count}x {state}");
    }
    if let Some(oldest) = s.streams.first() {
        let _ = write!(line, "; oldest: id {} age {:.1?}", oldest.id, oldest.age);
    }
    if let Some(wait) = s.credit_wait {
        let _ = write!(line, "; an open waits for credit since {wait:.1?}");
    }
    line
}

/// Whether every count is back to zero: no handle alive anywhere and, with our transport, every
/// ledger idle.
pub(super) fn is_idle(topology: &Topology) -> bool {
    topology
        .ends
        .iter()
        .all(|end| end.handles.load(Ordering::Relaxed) == 0)
        && topology
            .ledgers
            .iter()
            .all(|l| l.snapshot().iter().all(ConnectionSnapshot::is_idle))
}
