//! Transports, connections and their streams: the muxer drivers, listening and dialing.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Instant,
};

use futures::{
    channel::{mpsc, oneshot},
    future::poll_fn,
    AsyncRead, AsyncWrite, StreamExt,
};
use libp2p_core::{
    muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox},
    transport::{Boxed, DialOpts, ListenerId, PortUse, TransportEvent},
    Endpoint, Multiaddr, Transport as _,
};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::Ledgers;
use tokio::task::JoinSet;

use super::{Kind, SETUP_STEP};

/// A stream handle the application holds, counted while it lives.
pub(super) struct Substream {
    inner: SubstreamBox,
    alive: Arc<AtomicU64>,
}

impl Substream {
    fn new(inner: SubstreamBox, alive: &Arc<AtomicU64>) -> Self {
        alive.fetch_add(1, Ordering::Relaxed);
        Self {
            inner,
            alive: alive.clone(),
        }
    }
}

impl Drop for Substream {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Substream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Substream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

type OpenReply = oneshot::Sender<io::Result<Substream>>;

/// Asks a connection's driver for outbound streams.
#[derive(Clone)]
pub(super) struct Opener(mpsc::UnboundedSender<OpenReply>);

impl Opener {
    pub(super) fn open(&self) -> oneshot::Receiver<io::Result<Substream>> {
        let (tx, rx) = oneshot::channel();
        // If the driver is gone, `rx` fails at once.
        let _ = self.0.unbounded_send(tx);
        rx
    }
}

/// One end of one connection.
pub(super) struct End {
    /// `s1→c3`: server 1's end of its connection to client 3.
    pub(super) label: String,
    /// Whether this is the server's end.
    pub(super) server: bool,
    pub(super) opener: Opener,
    pub(super) inbound: Option<mpsc::UnboundedReceiver<Substream>>,
    /// Stream handles the application holds.
    pub(super) handles: Arc<AtomicU64>,
    /// Since when the driver's oldest open has been waiting, if one is.
    pub(super) waiting_since: Arc<Mutex<Option<Instant>>>,
}

/// Drive a muxer: hand inbound streams over, open streams on request (in order, one at a time
/// as `StreamMuxer` allows), and note since when the current open waits.
pub(super) fn drive(
    muxer: StreamMuxerBox,
    label: String,
    server: bool,
    drivers: &mut JoinSet<()>,
) -> End {
    let (open_tx, mut open_rx) = mpsc::unbounded::<OpenReply>();
    let (inbound_tx, inbound_rx) = mpsc::unbounded();
    let handles = Arc::new(AtomicU64::new(0));
    let waiting_since = Arc::new(Mutex::new(None));
    let (alive, waiting) = (handles.clone(), waiting_since.clone());
    let mut muxer = muxer;
    drivers.spawn(async move {
        let mut queue: VecDeque<(Instant, OpenReply)> = VecDeque::new();
        let _ = poll_fn(|cx| -> Poll<io::Result<()>> {
            loop {
                let mut progress = false;
                match muxer.poll_inbound_unpin(cx) {
                    Poll::Ready(Ok(s)) => {
                        let _ = inbound_tx.unbounded_send(Substream::new(s, &alive));
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                while let Poll::Ready(Some(reply)) = open_rx.poll_next_unpin(cx) {
                    queue.push_back((Instant::now(), reply));
                }
                // An exchange that gave up needs no stream.
                while queue.front().is_some_and(|(_, reply)| reply.is_canceled()) {
                    queue.pop_front();
                }
                if !queue.is_empty() {
                    if let Poll::Ready(result) = muxer.poll_outbound_unpin(cx) {
                        let (_, reply) = queue.pop_front().expect("not empty");
                        let _ = reply.send(result.map(|s| Substream::new(s, &alive)));
                        progress = true;
                    }
                }
                *waiting.lock().unwrap() = queue.front().map(|(since, _)| *since);
                match muxer.poll_unpin(cx) {
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                if !progress {
                    return Poll::Pending;
                }
            }
        })
        .await;
        // The connection is gone: the openers waiting get an error as `queue` drops.
    });
    End {
        label,
        server,
        opener: Opener(open_tx),
        inbound: Some(inbound_rx),
        handles,
        waiting_since,
    }
}

type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// A transport of `kind` with a fresh identity, its muxers boxed so that the workload is written
/// once; with our transport, also its ledgers.
pub(super) fn transport(
    kind: Kind,
    stream_limit: u32,
) -> (BoxedTransport, PeerId, Option<Ledgers>) {
    let keypair = Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    match kind {
        Kind::Ours => {
            let mut config = libp2p_quinn::Config::new(&keypair);
            config.max_concurrent_stream_limit = stream_limit;
            let transport = libp2p_quinn::tokio::Transport::new(config);
            let ledgers = transport.ledgers();
            let boxed = transport
                .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)))
                .boxed();
            (boxed, peer, Some(ledgers))
        }
        Kind::Libp2pQuic => {
            let mut config = libp2p::quic::Config::new(&keypair);
            config.max_concurrent_stream_limit = stream_limit;
            let boxed = libp2p::quic::tokio::Transport::new(config)
                .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)))
                .boxed();
            (boxed, peer, None)
        }
    }
}

pub(super) async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(SETUP_STEP, fut)
        .await
        .map_err(|_| format!("timed out after {SETUP_STEP:?}: {what}"))
}

pub(super) async fn listen(transport: &mut BoxedTransport) -> Result<Multiaddr, String> {
    let addr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("valid");
    transport
        .listen_on(ListenerId::next(), addr)
        .map_err(|e| format!("listen: {e}"))?;
    loop {
        match bounded(
            "listen address",
            poll_fn(|cx| Pin::new(&mut *transport).poll(cx)),
        )
        .await?
        {
            TransportEvent::NewAddress { listen_addr, .. } => return Ok(listen_addr),
            TransportEvent::ListenerError { error, .. } => return Err(format!("listen: {error}")),
            _ => {}
        }
    }
}

/// The next incoming connection on `transport`, handshake done.
async fn accept(transport: &mut BoxedTransport) -> Result<(PeerId, StreamMuxerBox), String> {
    loop {
        let event = poll_fn(|cx| Pin::new(&mut *transport).poll(cx)).await;
        if let TransportEvent::Incoming { upgrade, .. } = event {
            return upgrade.await.map_err(|e| format!("inbound handshake: {e}"));
        }
    }
}

/// Dial `server` from `client` at `target`. Under heavy loss a handshake can run out of time:
/// up to three attempts.
pub(super) async fn connect(
    client: &mut BoxedTransport,
    server: &mut BoxedTransport,
    target: &Multiaddr,
) -> Result<(StreamMuxerBox, StreamMuxerBox), String> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dial = client
            .dial(
                target.clone(),
                DialOpts {
                    role: Endpoint::Dialer,
                    port_use: PortUse::New,
                },
            )
            .map_err(|e| format!("dial: {e}"))?;
        let (dialed, accepted) =
            futures::join!(bounded("dial", dial), bounded("accept", accept(server)));
        match (dialed, accepted) {
            (Ok(Ok((_, client_muxer))), Ok(Ok((_, server_muxer)))) => {
                return Ok((client_muxer, server_muxer))
            }
            (dialed, accepted) if attempt == ATTEMPTS => {
                let dialed = dialed.and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
                let accepted = accepted.and_then(|r| r.map(|_| ()));
                return Err(format!(
                    "{ATTEMPTS} attempts; the last: dial {dialed:?}, accept {accepted:?}"
                ));
            }
            _ => {}
        }
    }
}

/// Keep polling a transport (its events are not needed once the connections are up).
pub(super) fn keep_polling(mut transport: BoxedTransport, drivers: &mut JoinSet<()>) {
    drivers.spawn(async move {
        poll_fn(|cx| -> Poll<()> {
            while Pin::new(&mut transport).poll(cx).is_ready() {}
            Poll::Pending
        })
        .await;
    });
}
