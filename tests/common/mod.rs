//! Shared test harness: two transports on loopback, a task per connection that drives the
//! muxer, and bounded waits.
#![allow(dead_code)]

pub mod browser;
pub mod flood;
pub mod go;
pub mod h3_client;
pub mod inject;
pub mod lab;
pub mod prepare;
pub mod quic_frames;
pub mod resident;

use std::{future::Future, pin::Pin, time::Duration};

use futures::{
    channel::mpsc, channel::oneshot, future::poll_fn, AsyncReadExt, AsyncWriteExt, StreamExt,
};
use libp2p_core::{
    muxing::StreamMuxer,
    transport::{DialOpts, ListenerId, PortUse, TransportEvent},
    Endpoint, Multiaddr, Transport as _,
};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::{tokio::Transport, Config, Connection, ConnectionSnapshot, Ledgers, Stream};

/// Every network step of a test is bounded by this.
pub const STEP: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Install (once per test binary) a subscriber that keeps every `libp2p_quinn` warning, for
/// tests that check what a user would read; the lines also go to stderr.
pub fn captured_warnings() -> std::sync::Arc<std::sync::Mutex<String>> {
    captured_logs("libp2p_quinn=warn", true)
}

/// Install (once per test binary; the first call's `filter` holds) a subscriber that keeps
/// the lines `filter` lets through, with their level; `echo` sends them to stderr too.
pub fn captured_logs(filter: &'static str, echo: bool) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(filter)
            .with_writer(move || Capture {
                logs: sink.clone(),
                echo,
            })
            .init();
        logs
    })
    .clone()
}

/// The captured warning lines that contain `needle`.
pub fn warnings_containing(needle: &str) -> Vec<String> {
    let logs = captured_warnings();
    let text = logs.lock().unwrap();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

struct Capture {
    logs: std::sync::Arc<std::sync::Mutex<String>>,
    echo: bool,
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.logs
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        if self.echo {
            std::io::stderr().write(buf)
        } else {
            Ok(buf.len())
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The value of the first series in prometheus text `text` whose line starts with `prefix`
/// (0 when there is none).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A transport with a fresh identity and default settings.
pub fn transport() -> Transport {
    Transport::new(Config::new(&Keypair::generate_ed25519()))
}

/// A config with a low stream limit, as the leak tests want.
pub fn config(keypair: &Keypair, limit: u32) -> Config {
    let mut config = Config::new(keypair);
    config.max_concurrent_stream_limit = limit;
    config
}

/// Await `fut` or fail the test with `what`.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// Poll `check` until it holds, bounded. For counters that a background task (the watcher)
/// changes: a bounded wait, not a sleep used to order events.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    bounded(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// One side of a connection, with its muxer driven by a task.
pub struct Peer {
    pub peer_id: PeerId,
    pub remote: PeerId,
    open: mpsc::UnboundedSender<oneshot::Sender<Result<Stream, libp2p_quinn::Error>>>,
    pub inbound: mpsc::UnboundedReceiver<Stream>,
    /// The quinn connection underneath, for its statistics.
    pub quinn: quinn::Connection,
    ledgers: Ledgers,
    driver: tokio::task::JoinHandle<()>,
}

impl Peer {
    pub fn new(peer_id: PeerId, remote: PeerId, connection: Connection, ledgers: Ledgers) -> Self {
        let (open, open_rx) = mpsc::unbounded();
        let (inbound_tx, inbound) = mpsc::unbounded();
        let quinn = connection.quinn().clone();
        let driver = tokio::spawn(drive(connection, open_rx, inbound_tx));
        Self {
            peer_id,
            remote,
            open,
            inbound,
            quinn,
            ledgers,
            driver,
        }
    }

    /// Open an outbound stream (bounded).
    pub async fn open(&self) -> Stream {
        let (tx, rx) = oneshot::channel();
        self.open.unbounded_send(tx).expect("driver alive");
        bounded("open a stream", rx)
            .await
            .expect("driver alive")
            .expect("open succeeds")
    }

    /// Ask for a stream without waiting for it.
    pub fn open_later(&self) -> oneshot::Receiver<Result<Stream, libp2p_quinn::Error>> {
        let (tx, rx) = oneshot::channel();
        self.open.unbounded_send(tx).expect("driver alive");
        rx
    }

    /// Accept the next inbound stream (bounded).
    pub async fn accept(&mut self) -> Stream {
        bounded("accept a stream", self.inbound.next())
            .await
            .expect("connection alive")
    }

    pub fn snapshot(&self) -> ConnectionSnapshot {
        let mut all = self.ledgers.for_peer(&self.remote);
        assert_eq!(all.len(), 1, "one connection to the peer");
        all.remove(0)
    }

    /// Wait until no stream handle is alive and QUIC holds nothing on our side (or the
    /// connection is gone altogether).
    pub async fn settled(&self) -> Option<ConnectionSnapshot> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let mut all = self.ledgers.for_peer(&self.remote);
            let snapshot = all.pop()?;
            if snapshot.is_idle() {
                return Some(snapshot);
            }
            if tokio::time::Instant::now() > deadline {
                panic!("ledger did not return to zero: {snapshot:#?}");
            }
            // Polling a counter that the watcher task updates: a bounded wait, not a sleep used
            // to order events.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn drive(
    mut connection: Connection,
    mut open_rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<Stream, libp2p_quinn::Error>>>,
    inbound: mpsc::UnboundedSender<Stream>,
) {
    let mut pending_open: Option<oneshot::Sender<_>> = None;
    poll_fn(|cx| loop {
        let mut progress = false;
        if let std::task::Poll::Ready(result) = Pin::new(&mut connection).poll_inbound(cx) {
            match result {
                Ok(stream) => {
                    let _ = inbound.unbounded_send(stream);
                    progress = true;
                }
                Err(_) => {
                    // The connection is gone: a waiting open learns it too, with its error.
                    if let Some(tx) = pending_open.take() {
                        if let std::task::Poll::Ready(result) =
                            Pin::new(&mut connection).poll_outbound(cx)
                        {
                            let _ = tx.send(result);
                        }
                    }
                    return std::task::Poll::Ready(());
                }
            }
        }
        if pending_open.is_none() {
            if let std::task::Poll::Ready(Some(tx)) = open_rx.poll_next_unpin(cx) {
                pending_open = Some(tx);
            }
        }
        if pending_open.is_some() {
            if let std::task::Poll::Ready(result) = Pin::new(&mut connection).poll_outbound(cx) {
                let _ = pending_open.take().unwrap().send(result);
                progress = true;
            }
        }
        let _ = Pin::new(&mut connection).poll(cx);
        if !progress {
            return std::task::Poll::Pending;
        }
    })
    .await;
}

/// Two connected peers: `dialer` dialed `listener`.
pub struct Pair {
    pub dialer: Peer,
    pub listener: Peer,
    pub listen_addr: Multiaddr,
    // Kept so that the endpoints live as long as the pair.
    pub _transports: (Transport, Transport),
    /// The lossy path between the two, if any.
    #[cfg(feature = "test-util")]
    pub proxy: Option<libp2p_quinn::test_util::UdpProxy>,
}

pub async fn listen(transport: &mut Transport, addr: &str) -> Multiaddr {
    transport
        .listen_on(ListenerId::next(), addr.parse().unwrap())
        .expect("listen");
    match bounded(
        "listen address",
        poll_fn(|cx| Pin::new(&mut *transport).poll(cx)),
    )
    .await
    {
        TransportEvent::NewAddress { listen_addr, .. } => listen_addr,
        other => panic!("unexpected event {other:?}"),
    }
}

pub fn dial_opts() -> DialOpts {
    DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::New,
    }
}

/// Accept one incoming connection on `transport`.
pub async fn accept(transport: &mut Transport) -> (PeerId, Connection) {
    loop {
        match bounded(
            "incoming connection",
            poll_fn(|cx| Pin::new(&mut *transport).poll(cx)),
        )
        .await
        {
            TransportEvent::Incoming { upgrade, .. } => {
                return bounded("handshake", upgrade).await.expect("handshake");
            }
            TransportEvent::NewAddress { .. } => continue,
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// Two peers with fresh identities and the stream limit `limit` on both sides.
pub async fn pair_limited(limit: u32) -> Pair {
    pair_with(
        config(&Keypair::generate_ed25519(), limit),
        config(&Keypair::generate_ed25519(), limit),
    )
    .await
}

pub async fn pair_with(dialer_config: Config, listener_config: Config) -> Pair {
    pair_via(QUIC, dialer_config, listener_config, None).await
}

/// Where a pair's listener listens: QUIC, or WebTransport on the same kind of socket.
pub const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
pub const WEBTRANSPORT: &str = "/ip4/127.0.0.1/udp/0/quic-v1/webtransport";

/// Two peers connected over `listen` ([`QUIC`] or [`WEBTRANSPORT`]), through a seeded path
/// that drops `loss` of the datagrams each way if `loss` is above zero.
#[cfg(feature = "test-util")]
pub async fn pair_over(
    listen: &str,
    dialer_config: Config,
    listener_config: Config,
    loss: f64,
) -> Pair {
    use libp2p_quinn::test_util::Impairment;
    let lossy = (loss > 0.0).then(|| (Impairment::lossy(loss), 0x5eed));
    pair_via(listen, dialer_config, listener_config, lossy).await
}

/// The UDP socket address of a QUIC or WebTransport multiaddr.
pub fn socket_of(addr: &Multiaddr) -> std::net::SocketAddr {
    use libp2p_core::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for part in addr.iter() {
        match part {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::from(a)),
            Protocol::Ip6(a) => ip = Some(a.into()),
            Protocol::Udp(p) => port = Some(p),
            _ => {}
        }
    }
    std::net::SocketAddr::new(ip.expect("an IP address"), port.expect("a UDP port"))
}

/// `addr` with its IP address and UDP port replaced by `socket`'s, the rest kept (a
/// WebTransport address's certificate hashes).
pub fn with_socket(addr: &Multiaddr, socket: std::net::SocketAddr) -> Multiaddr {
    use libp2p_core::multiaddr::Protocol;
    addr.iter()
        .map(|part| match part {
            Protocol::Ip4(_) | Protocol::Ip6(_) => Protocol::from(socket.ip()),
            Protocol::Udp(_) => Protocol::Udp(socket.port()),
            other => other,
        })
        .collect()
}

/// Connect two peers through a seeded UDP proxy that drops `loss` of the datagrams each way.
#[cfg(feature = "test-util")]
pub async fn pair_lossy(
    dialer_config: Config,
    listener_config: Config,
    loss: f64,
    seed: u64,
) -> Pair {
    use libp2p_quinn::test_util::Impairment;
    pair_via(
        QUIC,
        dialer_config,
        listener_config,
        Some((Impairment::lossy(loss), seed)),
    )
    .await
}

#[cfg(not(feature = "test-util"))]
type Lossy = ();
#[cfg(feature = "test-util")]
type Lossy = (libp2p_quinn::test_util::Impairment, u64);

/// Connect two peers over `listen`, directly or through a lossy proxy.
async fn pair_via(
    listen_on: &str,
    dialer_config: Config,
    listener_config: Config,
    lossy: Option<Lossy>,
) -> Pair {
    let dialer_id = dialer_config.local_peer_id();
    let listener_id = listener_config.local_peer_id();
    let mut dialer_t = Transport::new(dialer_config);
    let mut listener_t = Transport::new(listener_config);
    let listen_addr = listen(&mut listener_t, listen_on).await;
    #[cfg(feature = "test-util")]
    let socket = socket_of(&listen_addr);
    #[cfg(feature = "test-util")]
    let proxy = match lossy {
        Some((impairment, seed)) => Some(
            libp2p_quinn::test_util::UdpProxy::start(socket, seed, impairment.clone(), impairment)
                .await
                .expect("proxy"),
        ),
        None => None,
    };
    #[cfg(feature = "test-util")]
    let target = with_socket(
        &listen_addr,
        proxy.as_ref().map_or(socket, |p| p.local_addr()),
    );
    #[cfg(not(feature = "test-util"))]
    let target = {
        let _ = lossy;
        listen_addr.clone()
    };
    let dial = dialer_t.dial(target, dial_opts()).expect("dial");
    let (dialed, accepted) = futures::join!(bounded("dial", dial), accept(&mut listener_t));
    let (remote_of_dialer, dialer_conn) = dialed.expect("dial succeeds");
    let (remote_of_listener, listener_conn) = accepted;
    assert_eq!(remote_of_dialer, listener_id);
    assert_eq!(remote_of_listener, dialer_id);
    Pair {
        dialer: Peer::new(dialer_id, listener_id, dialer_conn, dialer_t.ledgers()),
        listener: Peer::new(listener_id, dialer_id, listener_conn, listener_t.ledgers()),
        listen_addr,
        _transports: (dialer_t, listener_t),
        #[cfg(feature = "test-util")]
        proxy,
    }
}

/// `opener` sends a request on `n` streams and closes each properly; `acceptor`'s application
/// takes each and holds on to it without reading it: a leak on the acceptor's side.
pub async fn held_by_acceptor(opener: &Peer, acceptor: &mut Peer, n: usize) -> Vec<Stream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = opener.open().await;
        s.write_all(b"request!").await.unwrap();
        s.close().await.unwrap();
        drop(s);
        held.push(acceptor.accept().await);
    }
    held
}

/// A request/response exchange on a fresh stream from `opener` to `acceptor` (bounded).
pub async fn exchange(opener: &Peer, acceptor: &mut Peer) {
    exchange_observed(opener, acceptor, |_| ()).await;
}

/// [`exchange`], calling `accepted` with the acceptor as soon as it holds the new stream.
pub async fn exchange_observed(opener: &Peer, acceptor: &mut Peer, accepted: impl FnOnce(&Peer)) {
    bounded("request/response exchange", async {
        let mut out = opener.open().await;
        out.write_all(b"ping1234").await.unwrap();
        out.close().await.unwrap();
        let mut inbound = acceptor.accept().await;
        accepted(acceptor);
        let mut request = Vec::new();
        inbound.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"ping1234");
        inbound.write_all(b"pong5678").await.unwrap();
        inbound.close().await.unwrap();
        let mut reply = Vec::new();
        out.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"pong5678");
    })
    .await
}
