//! The transports under test, behind one interface: [`Dialer`], [`Conn`] (with its
//! [`Opener`]) and [`Server`], for libp2p transports (a task drives each muxer, see [`drive`])
//! and for raw quinn.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{
    channel::{mpsc, oneshot},
    future::{self, poll_fn, BoxFuture},
    AsyncRead, AsyncWrite, FutureExt, StreamExt,
};
use libp2p_core::{
    muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox},
    transport::{Boxed, DialOpts, ListenerId, PortUse, TransportEvent},
    upgrade::Version,
    Endpoint, Multiaddr, Transport as _,
};
use libp2p_identity::{Keypair, PeerId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::task::{JoinHandle, JoinSet};

use super::{exchange::serve, step, STEP};

/// The transports under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// This crate, with the stream ledger on (the default).
    Ours,
    /// This crate with `stream_ledger = false`: the ledger's cost is the difference.
    OursNoLedger,
    /// This crate over WebTransport (`/quic-v1/webtransport`): HTTP/3 and Noise at the start,
    /// then the same streams behind a two-byte header.
    OursWebTransport,
    /// rust-libp2p's QUIC transport.
    Libp2pQuic,
    /// quinn with libp2p's TLS configs and our transport parameters, no libp2p at all: the
    /// ceiling that a libp2p layer over quinn can reach.
    RawQuinn,
    /// TCP upgraded with noise and yamux: what libp2p users get without QUIC.
    TcpNoiseYamux,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Ours,
        Kind::OursNoLedger,
        Kind::OursWebTransport,
        Kind::Libp2pQuic,
        Kind::RawQuinn,
        Kind::TcpNoiseYamux,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::OursNoLedger => "ours-no-ledger",
            Kind::OursWebTransport => "ours-webtransport",
            Kind::Libp2pQuic => "libp2p-quic",
            Kind::RawQuinn => "raw-quinn",
            Kind::TcpNoiseYamux => "tcp-noise-yamux",
        }
    }

    fn listen_addr(self) -> Multiaddr {
        let addr = match self {
            Kind::TcpNoiseYamux => "/ip4/127.0.0.1/tcp/0",
            Kind::OursWebTransport => "/ip4/127.0.0.1/udp/0/quic-v1/webtransport",
            _ => "/ip4/127.0.0.1/udp/0/quic-v1",
        };
        addr.parse().expect("valid multiaddr")
    }
}

// ---------------------------------------------------------------------------------------------
// The abstraction over transports
// ---------------------------------------------------------------------------------------------

/// The identities of the two sides, made once: generating keys is no part of any workload.
#[derive(Clone)]
pub(super) struct Keys {
    pub(super) client: Keypair,
    pub(super) server: Keypair,
}

impl Keys {
    pub(super) fn new() -> Self {
        Self {
            client: Keypair::generate_ed25519(),
            server: Keypair::generate_ed25519(),
        }
    }
}

type Libp2pTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// A libp2p transport of `kind`, boxed as a Swarm boxes it.
fn libp2p_transport(kind: Kind, keypair: &Keypair) -> Libp2pTransport {
    match kind {
        Kind::Ours | Kind::OursNoLedger | Kind::OursWebTransport => {
            let mut config = libp2p_quinn::Config::new(keypair);
            config.stream_ledger = kind != Kind::OursNoLedger;
            libp2p_quinn::tokio::Transport::new(config)
                .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
                .boxed()
        }
        Kind::Libp2pQuic => libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(keypair))
            .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
            .boxed(),
        Kind::TcpNoiseYamux => libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default())
            .upgrade(Version::V1)
            .authenticate(libp2p::noise::Config::new(keypair).expect("noise config"))
            .multiplex(libp2p::yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        Kind::RawQuinn => unreachable!("raw quinn is no libp2p transport"),
    }
}

/// The quinn transport parameters of `libp2p_quinn::Config::transport_config`, with the
/// defaults of `Config::new`.
fn raw_transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(256u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.datagram_receive_buffer_size(None);
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()));
    transport.allow_spin(false);
    transport.stream_receive_window(10_000_000u32.into());
    transport.receive_window(15_000_000u32.into());
    Arc::new(transport)
}

fn raw_client_config(keypair: &Keypair) -> quinn::ClientConfig {
    let tls = libp2p_tls::make_client_config(keypair, None).expect("libp2p TLS client config");
    let tls = QuicClientConfig::try_from(tls).expect("TLS config fit for QUIC");
    let mut client = quinn::ClientConfig::new(Arc::new(tls));
    client.transport_config(raw_transport_config());
    client
}

fn raw_server_config(keypair: &Keypair) -> quinn::ServerConfig {
    let tls = libp2p_tls::make_server_config(keypair).expect("libp2p TLS server config");
    let tls = QuicServerConfig::try_from(tls).expect("TLS config fit for QUIC");
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls));
    server.transport_config(raw_transport_config());
    server.migration(false);
    server
}

fn raw_endpoint(
    server: Option<quinn::ServerConfig>,
    addr: SocketAddr,
) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A raw quinn stream as futures' `AsyncRead + AsyncWrite`, with the semantics of a libp2p
/// stream: `close` finishes the send half only, and dropping ends both halves (quinn's own drop
/// finishes an unfinished send half and stops an unread receive half).
struct QuinnStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl AsyncRead for QuinnStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().recv.poll_read(cx, buf).map_err(Into::into)
    }
}

impl AsyncWrite for QuinnStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().send)
            .poll_write(cx, buf)
            .map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // quinn sends what was written on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().send.finish().map_err(io::Error::other))
    }
}

impl QuinnStream {
    fn boxed((send, recv): (quinn::SendStream, quinn::RecvStream)) -> SubstreamBox {
        SubstreamBox::new(QuinnStream { send, recv })
    }
}

/// What the listener's connections have done.
#[derive(Default)]
pub(super) struct ServerStats {
    /// Established connections not yet closed.
    connections: AtomicUsize,
    /// Inbound streams whose first bytes arrived.
    pub(super) streams_seen: AtomicUsize,
}

/// Counts a connection as live while it exists, also when its task is aborted.
struct LiveConnection(Arc<ServerStats>);

impl LiveConnection {
    fn new(stats: &Arc<ServerStats>) -> Self {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener on 127.0.0.1 that answers every inbound stream with [`serve`].
pub(super) struct Server {
    addr: Multiaddr,
    stats: Arc<ServerStats>,
    /// Accepts connections; aborting it aborts every connection task it spawned.
    task: JoinHandle<()>,
}

impl Server {
    pub(super) async fn start(kind: Kind, keypair: &Keypair) -> io::Result<Self> {
        let stats = Arc::new(ServerStats::default());
        let (addr, task) = match kind {
            Kind::RawQuinn => {
                let endpoint = raw_endpoint(
                    Some(raw_server_config(keypair)),
                    (Ipv4Addr::LOCALHOST, 0).into(),
                )?;
                let addr = libp2p_quinn::to_multiaddr(endpoint.local_addr()?);
                (addr, tokio::spawn(accept_quinn(endpoint, stats.clone())))
            }
            _ => {
                let mut transport = libp2p_transport(kind, keypair);
                transport
                    .listen_on(ListenerId::next(), kind.listen_addr())
                    .map_err(io::Error::other)?;
                let addr = step("listen", async {
                    loop {
                        match poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await {
                            TransportEvent::NewAddress { listen_addr, .. } => {
                                break Ok(listen_addr)
                            }
                            TransportEvent::ListenerError { error, .. }
                            | TransportEvent::ListenerClosed {
                                reason: Err(error), ..
                            } => break Err(io::Error::other(error)),
                            _ => {}
                        }
                    }
                })
                .await?;
                (addr, tokio::spawn(accept_libp2p(transport, stats.clone())))
            }
        };
        Ok(Self { addr, stats, task })
    }

    pub(super) fn addr(&self) -> &Multiaddr {
        &self.addr
    }

    pub(super) async fn wait_for_connections(&self, count: usize) -> io::Result<()> {
        let stats = &self.stats;
        wait_until("connections to arrive", || {
            stats.connections.load(Ordering::Relaxed) >= count
        })
        .await
    }

    pub(super) async fn wait_for_streams(&self, count: usize) -> io::Result<()> {
        let stats = &self.stats;
        wait_until("streams to arrive", || {
            stats.streams_seen.load(Ordering::Relaxed) >= count
        })
        .await
    }

    /// Wait for the clients' closes to reach every connection, then stop: the next
    /// measurement should not share the machine with this one's teardown.
    pub(super) async fn shutdown(mut self) {
        let stats = &self.stats;
        let _ = wait_until("connections to close", || {
            stats.connections.load(Ordering::Relaxed) == 0
        })
        .await;
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    /// A workload that fails drops its server without [`Server::shutdown`]: its connections
    /// must go all the same, or they would linger into later measurements.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_libp2p(mut transport: Libp2pTransport, stats: Arc<ServerStats>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            event = poll_fn(|cx| Pin::new(&mut transport).poll(cx)) => {
                if let TransportEvent::Incoming { upgrade, .. } = event {
                    let stats = stats.clone();
                    connections.spawn(async move {
                        if let Ok((_, muxer)) = upgrade.await {
                            let _live = LiveConnection::new(&stats);
                            drive(muxer, Role::Server(stats.clone())).await;
                        }
                    });
                }
            }
            // Reap finished connection tasks.
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn accept_quinn(endpoint: quinn::Endpoint, stats: Arc<ServerStats>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { return };
                let stats = stats.clone();
                connections.spawn(async move {
                    let Ok(connection) = incoming.await else { return };
                    let _live = LiveConnection::new(&stats);
                    while let Ok(stream) = connection.accept_bi().await {
                        tokio::spawn(serve(QuinnStream::boxed(stream), stats.clone()));
                    }
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Dials connections of one transport.
pub(super) enum Dialer {
    Libp2p {
        transport: Libp2pTransport,
        port_use: PortUse,
    },
    Quinn {
        client: quinn::ClientConfig,
        /// The endpoint that `PortUse::Reuse` dials share, made on first use.
        shared: Option<quinn::Endpoint>,
        port_use: PortUse,
    },
}

impl Dialer {
    /// With `PortUse::New` every dial binds its own socket (and, for QUIC, endpoint), as the
    /// libp2p QUIC transports do for a dial that reuses no port; with `PortUse::Reuse` and no
    /// listener, all dials share one.
    pub(super) fn new(kind: Kind, keypair: &Keypair, port_use: PortUse) -> Self {
        match kind {
            Kind::RawQuinn => Dialer::Quinn {
                client: raw_client_config(keypair),
                shared: None,
                port_use,
            },
            _ => Dialer::Libp2p {
                transport: libp2p_transport(kind, keypair),
                port_use,
            },
        }
    }

    /// Start a dial; the returned future does not borrow the dialer, so that many can run at
    /// once.
    pub(super) fn dial(&mut self, addr: &Multiaddr) -> BoxFuture<'static, io::Result<Conn>> {
        match self {
            Dialer::Libp2p {
                transport,
                port_use,
            } => {
                let opts = DialOpts {
                    role: Endpoint::Dialer,
                    port_use: *port_use,
                };
                match transport.dial(addr.clone(), opts) {
                    Ok(dial) => async move {
                        let (_, muxer) = dial.await.map_err(io::Error::other)?;
                        Ok(Conn::libp2p(muxer))
                    }
                    .boxed(),
                    Err(e) => future::ready(Err(io::Error::other(e))).boxed(),
                }
            }
            Dialer::Quinn {
                client,
                shared,
                port_use,
            } => {
                let connecting = (|| {
                    let (remote, _) = libp2p_quinn::parse_multiaddr(addr)
                        .ok_or_else(|| io::Error::other("not a QUIC address"))?;
                    let any: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
                    let endpoint = match (port_use, shared.as_ref()) {
                        (PortUse::Reuse, Some(endpoint)) => endpoint.clone(),
                        (PortUse::Reuse, None) => shared.insert(raw_endpoint(None, any)?).clone(),
                        (PortUse::New, _) => raw_endpoint(None, any)?,
                    };
                    endpoint
                        .connect_with(client.clone(), remote, "l")
                        .map_err(io::Error::other)
                })();
                async move { Ok(Conn::quinn(connecting?.await?)) }.boxed()
            }
        }
    }
}

/// The dialer's side of a connection.
pub(super) struct Conn {
    opener: Opener,
    /// The task driving a libp2p muxer; aborted when the `Conn` is dropped unclosed.
    driver: Option<JoinHandle<()>>,
}

/// Opens streams on a connection; cheap to clone, so that many tasks can share a connection.
#[derive(Clone)]
pub(super) enum Opener {
    /// Asks the task that drives the muxer: a `StreamMuxer` is polled by one owner only.
    Muxer(mpsc::UnboundedSender<Command>),
    Quinn(quinn::Connection),
}

pub(super) enum Command {
    Open(oneshot::Sender<io::Result<SubstreamBox>>),
    Close(oneshot::Sender<()>),
}

impl Opener {
    pub(super) async fn open(&self) -> io::Result<SubstreamBox> {
        match self {
            Opener::Muxer(commands) => {
                let (tx, rx) = oneshot::channel();
                commands
                    .unbounded_send(Command::Open(tx))
                    .map_err(|_| io::Error::from(io::ErrorKind::NotConnected))?;
                rx.await
                    .map_err(|_| io::Error::from(io::ErrorKind::NotConnected))?
            }
            Opener::Quinn(connection) => Ok(QuinnStream::boxed(connection.open_bi().await?)),
        }
    }
}

impl Conn {
    fn libp2p(muxer: StreamMuxerBox) -> Self {
        let (commands, rx) = mpsc::unbounded();
        Self {
            opener: Opener::Muxer(commands),
            driver: Some(tokio::spawn(drive(muxer, Role::Client(rx)))),
        }
    }

    fn quinn(connection: quinn::Connection) -> Self {
        Self {
            opener: Opener::Quinn(connection),
            driver: None,
        }
    }

    pub(super) fn opener(&self) -> Opener {
        self.opener.clone()
    }

    /// Close the connection as its transport does, and wait until that is done locally.
    pub(super) async fn close(mut self) {
        match &self.opener {
            Opener::Muxer(commands) => {
                let (tx, rx) = oneshot::channel();
                if commands.unbounded_send(Command::Close(tx)).is_ok() {
                    let _ = tokio::time::timeout(STEP, rx).await;
                }
            }
            Opener::Quinn(connection) => connection.close(0u32.into(), b""),
        }
        if let Some(driver) = self.driver.take() {
            let _ = tokio::time::timeout(STEP, driver).await;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(driver) = &self.driver {
            driver.abort();
        }
    }
}

/// Which side a muxer-driving task serves.
enum Role {
    /// Opens streams on request.
    Client(mpsc::UnboundedReceiver<Command>),
    /// Serves inbound streams.
    Server(Arc<ServerStats>),
}

/// Own and poll a libp2p muxer, as a Swarm's connection task does: accept inbound streams,
/// open outbound ones on request (one at a time: `poll_outbound` has one pending open), and
/// poll the muxer itself (yamux does its I/O there). Returns when the connection fails or is
/// closed.
async fn drive(mut muxer: StreamMuxerBox, mut role: Role) {
    let mut pending_open: Option<oneshot::Sender<io::Result<SubstreamBox>>> = None;
    let close_requested = poll_fn(|cx| loop {
        let mut progress = false;
        match muxer.poll_inbound_unpin(cx) {
            Poll::Ready(Ok(stream)) => {
                if let Role::Server(stats) = &role {
                    tokio::spawn(serve(stream, stats.clone()));
                }
                progress = true;
            }
            Poll::Ready(Err(_)) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if let Role::Client(commands) = &mut role {
            if pending_open.is_none() {
                match commands.poll_next_unpin(cx) {
                    Poll::Ready(Some(Command::Open(reply))) => pending_open = Some(reply),
                    Poll::Ready(Some(Command::Close(done))) => return Poll::Ready(Some(done)),
                    // Every opener is gone: nobody can use the connection any more.
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => {}
                }
            }
        }
        if let Some(reply) = pending_open.take() {
            match muxer.poll_outbound_unpin(cx) {
                Poll::Ready(result) => {
                    let _ = reply.send(result);
                    progress = true;
                }
                Poll::Pending => pending_open = Some(reply),
            }
        }
        match muxer.poll_unpin(cx) {
            Poll::Ready(Ok(_)) => progress = true,
            Poll::Ready(Err(_)) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if !progress {
            return Poll::Pending;
        }
    })
    .await;
    let _ = tokio::time::timeout(STEP, poll_fn(|cx| muxer.poll_close_unpin(cx))).await;
    if let Some(done) = close_requested {
        let _ = done.send(());
    }
}

/// Connect a fresh dialer to a fresh listener of `kind`.
pub(super) async fn connected(kind: Kind, keys: &Keys) -> io::Result<(Server, Conn)> {
    let server = Server::start(kind, &keys.server).await?;
    let mut dialer = Dialer::new(kind, &keys.client, PortUse::New);
    let conn = step("dial", dialer.dial(server.addr())).await?;
    Ok((server, conn))
}

/// How many dials [`dial_many`] has in flight at once.
const DIAL_CONCURRENCY: usize = 32;

/// Dial `count` connections, [`DIAL_CONCURRENCY`] at a time. A node meets its peers over
/// time; hundreds of handshakes at the same instant overflow the UDP receive buffers (each
/// QUIC handshake is several full-size datagrams at once) and would measure the kernel's loss
/// and the handshake timeouts rather than what the workload is about.
pub(super) async fn dial_many(
    dialer: &mut Dialer,
    addr: &Multiaddr,
    count: usize,
) -> Vec<io::Result<Conn>> {
    let dials: Vec<_> = (0..count)
        .map(|_| step("dial", dialer.dial(addr)))
        .collect();
    futures::stream::iter(dials)
        .buffer_unordered(DIAL_CONCURRENCY)
        .collect()
        .await
}

/// Poll `done` until it holds, for at most [`STEP`]. It reads counters that other tasks
/// update; the sleep is the polling interval, not a guess at how long something takes.
async fn wait_until(what: &str, done: impl Fn() -> bool) -> io::Result<()> {
    let deadline = Instant::now() + STEP;
    while !done() {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("waiting for {what} timed out"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}
