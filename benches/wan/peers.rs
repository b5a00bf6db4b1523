//! The peers of the WAN benchmark: perf servers of every implementation, and client runs
//! against them. Rust peers run in this process, each on a tokio runtime of its own (one
//! worker, as a process of its own would have); Go peers are processes (`interop/go-peer`).

use std::{net::SocketAddr, time::Duration};

use libp2p::{multiaddr::Protocol, Multiaddr};

use super::go::{GoBuild, GoPeer, Json};
use super::node::{self, BoxError, Options, Stack};

/// An implementation of libp2p's QUIC transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Impl {
    Ours,
    Libp2pQuic,
    Go,
}

/// The transport a line runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Quic,
    WebTransport,
}

/// One line of the table: who dials whom, over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Line {
    pub client: Impl,
    pub server: Impl,
    pub transport: Transport,
}

impl Line {
    /// A stack measured against itself.
    pub const fn same(implementation: Impl, transport: Transport) -> Self {
        Self {
            client: implementation,
            server: implementation,
            transport,
        }
    }

    pub fn name(&self) -> String {
        let name = |i| match i {
            Impl::Ours => "ours",
            Impl::Libp2pQuic => "libp2p-quic",
            Impl::Go => "go-libp2p",
        };
        let mut line = name(self.client).to_owned();
        if self.server != self.client {
            line = format!("{line}→{}", name(self.server));
        }
        if self.transport == Transport::WebTransport {
            line.push_str(" webtransport");
        }
        line
    }
}

/// What one client run measured (times from the dial).
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub connect: Duration,
    pub total: Duration,
    pub first_mib: Option<Duration>,
    pub upload_bytes: u64,
    pub download_bytes: u64,
}

/// A running perf server of one implementation, with its addresses.
pub enum Server {
    Rust {
        _server: node::Server,
        runtime: tokio::runtime::Runtime,
        addrs: Vec<Multiaddr>,
    },
    Go(GoPeer, Vec<Multiaddr>),
}

/// Our transport's knobs under test; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tune {
    pub congestion: Option<libp2p_quinn::CongestionControl>,
    pub initial_rtt: Option<Duration>,
}

impl Tune {
    fn apply(self, config: &mut libp2p_quinn::Config) {
        if let Some(congestion) = self.congestion {
            config.congestion_control = congestion;
        }
        if let Some(rtt) = self.initial_rtt {
            config.initial_rtt = rtt;
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

fn options(implementation: Impl, tune: Tune) -> Options {
    let stack = match implementation {
        Impl::Libp2pQuic => Stack::Libp2pQuic,
        _ => Stack::Ours,
    };
    Options {
        tune: std::sync::Arc::new(move |config| tune.apply(config)),
        ..Options::new(stack)
    }
}

impl Server {
    /// Starts a server of `implementation` on loopback, over QUIC and (if it has it)
    /// WebTransport.
    pub async fn start(implementation: Impl, tune: Tune) -> Result<Server, BoxError> {
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse()?;
        let webtransport: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1/webtransport".parse()?;
        match implementation {
            Impl::Go => {
                let args = ["--mode", "perf-server", "--listen", &quic.to_string()];
                let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
                args.extend(["--listen".into(), webtransport.to_string()]);
                let mut peer = GoPeer::spawn_quiet(GoBuild::Current, "go perf server", &args);
                let mut addrs = Vec::new();
                for transport in ["quic-v1", "webtransport"] {
                    let line = peer
                        .expect_listening(transport, Duration::from_secs(60))
                        .await;
                    addrs.push(line.str("addr").ok_or("no addr")?.parse()?);
                }
                Ok(Server::Go(peer, addrs))
            }
            Impl::Ours | Impl::Libp2pQuic => {
                let mut listen = vec![quic];
                if implementation == Impl::Ours {
                    listen.push(webtransport);
                }
                let options = options(implementation, tune);
                let runtime = runtime()?;
                let server = runtime
                    .spawn(async move {
                        node::serve(&options, &listen, |served| {
                            if let Err(error) = served {
                                eprintln!("perf server: a stream failed: {error}");
                            }
                        })
                        .await
                    })
                    .await??;
                let addrs = server.addrs.clone();
                Ok(Server::Rust {
                    _server: server,
                    runtime,
                    addrs,
                })
            }
        }
    }

    /// The server's address for `transport`, if it serves it.
    pub fn addr(&self, transport: Transport) -> Option<&Multiaddr> {
        let addrs = match self {
            Server::Rust { addrs, .. } | Server::Go(_, addrs) => addrs,
        };
        addrs
            .iter()
            .find(|a| is_webtransport(a) == (transport == Transport::WebTransport))
    }

    pub async fn stop(self) {
        match self {
            Server::Rust {
                _server, runtime, ..
            } => {
                drop(_server);
                runtime.shutdown_background();
            }
            Server::Go(mut peer, _) => {
                peer.shutdown().await;
            }
        }
    }
}

fn is_webtransport(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::WebTransport))
}

/// The UDP socket address of a multiaddr (`/ip4|ip6/…/udp/…/…`).
pub fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => std::net::IpAddr::from(ip),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Udp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// `addr` with its UDP port (and IP) replaced by `via`'s: the same server, through a relay.
pub fn through(addr: &Multiaddr, via: SocketAddr) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            Protocol::Ip4(_) | Protocol::Ip6(_) => Protocol::from(via.ip()),
            Protocol::Udp(_) => Protocol::Udp(via.port()),
            other => other,
        })
        .collect()
}

/// One client run of `client` against `addr`: a fresh node, one connection, one perf stream.
pub async fn run(
    client: Impl,
    addr: &Multiaddr,
    upload: u64,
    download: u64,
    tune: Tune,
    limit: Duration,
) -> Result<Outcome, BoxError> {
    match client {
        Impl::Go => go_run(addr, upload, download, limit).await,
        Impl::Ours | Impl::Libp2pQuic => {
            let options = options(client, tune);
            let addr = addr.clone();
            let runtime = runtime()?;
            let measured = runtime.spawn(async move {
                tokio::time::timeout(limit, node::run(&options, &addr, upload, download, |_| {}))
                    .await
            });
            let measured = measured.await;
            runtime.shutdown_background();
            let m = measured?.map_err(|_| format!("no result within {limit:?}"))??;
            Ok(Outcome {
                connect: m.connect,
                total: m.total(),
                first_mib: m.first_mib(),
                upload_bytes: m.run.upload_bytes,
                download_bytes: m.run.download_bytes,
            })
        }
    }
}

async fn go_run(
    addr: &Multiaddr,
    upload: u64,
    download: u64,
    limit: Duration,
) -> Result<Outcome, BoxError> {
    let args: Vec<String> = [
        "--mode",
        "perf-client",
        "--dial",
        &addr.to_string(),
        "--upload-bytes",
        &upload.to_string(),
        "--download-bytes",
        &download.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut peer = GoPeer::spawn_quiet(GoBuild::Current, "go perf client", &args);
    let deadline = tokio::time::Instant::now() + limit;
    let result = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match peer.next_line(left).await {
            Some(line) if line.str("type") == Some("final") => break go_outcome(&line),
            Some(line) if line.event() == "error" => {
                break Err(format!("go perf client: {line:?}").into())
            }
            Some(_) => continue,
            None => break Err(format!("go perf client: no final line within {limit:?}").into()),
        }
    };
    peer.shutdown().await;
    result
}

fn go_outcome(line: &Json) -> Result<Outcome, BoxError> {
    let seconds = |key: &str| line.f64(key).map(Duration::from_secs_f64);
    let bytes = |key: &str| line.u64(key).ok_or(format!("no {key}"));
    let connect = seconds("connectSeconds").ok_or("no connectSeconds")?;
    Ok(Outcome {
        connect,
        total: seconds("timeSeconds").ok_or("no timeSeconds")?,
        // Go counts it from the stream's opening, which follows the connection.
        first_mib: seconds("firstMiBSeconds").map(|t| connect + t),
        upload_bytes: bytes("uploadBytes")?,
        download_bytes: bytes("downloadBytes")?,
    })
}
