//! [`Connection`]: a quinn connection as a libp2p [`StreamMuxer`], the handshake that yields it,
//! and [`Ledgers`], the transport's view of all its sessions.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    task::{Context, Poll},
};

use futures::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use libp2p_core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p_identity::PeerId;

use crate::{
    key_exchange,
    ledger::Direction,
    session::{ConnectionSnapshot, Qlog, Session},
    stream::Stream,
    watcher::Watcher,
    webtransport::{
        h3::Header,
        upgrade::{self, Role},
    },
    Config, Error, PeerIdMismatch,
};

/// The streams quinn opens (outbound) or accepts (inbound), one after another. One allocation
/// per direction for the connection's life, each open's future made in place inside it,
/// rather than a boxed future and a clone of the connection's handles for every stream.
type Opens = BoxStream<'static, Result<(quinn::SendStream, quinn::RecvStream), Error>>;

/// How many streams' WebTransport headers are read at once: one silent stream must not hold up
/// the others, nor may a peer make us wait on many.
const HEADER_READS: usize = 64;

/// An established QUIC or WebTransport connection to a peer, multiplexing [`Stream`]s.
///
/// # Drop
///
/// Dropping the `Connection` closes the QUIC connection (code 0; HTTP/3's no-error code 0x100
/// for WebTransport) at once; streams still held fail with a connection-lost error.
pub struct Connection {
    /// The session's state, which holds the quinn connection.
    session: Arc<Session>,
    /// What a WebTransport session's streams start with; `None` for QUIC.
    header: Option<Header>,
    /// The transport's watcher, told of the session with its first tracked stream.
    watcher: Watcher,
    /// Whether the watcher has been told.
    tracked: bool,
    inbound: Option<Opens>,
    outbound: Option<Opens>,
    closing: Option<BoxFuture<'static, quinn::ConnectionError>>,
}

/// A handle to the ledgers of every connection a transport made, for users who hand the
/// transport to a `Swarm` and still want to see its streams. Cheap to clone.
#[derive(Clone, Default)]
pub struct Ledgers {
    connections: Arc<Mutex<Vec<Weak<Session>>>>,
    /// The last connection's number: each gets the next, its short name in logs.
    numbered: Arc<AtomicU64>,
    /// The watcher of these connections' streams.
    watcher: Watcher,
}

impl Ledgers {
    /// The ledgers of a transport with this configuration.
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            connections: Arc::default(),
            numbered: Arc::default(),
            watcher: Watcher::new(config.stream_leak_warning),
        }
    }

    fn register(&self, session: &Arc<Session>) {
        let mut list = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(session));
    }

    /// Snapshots of every connection still alive.
    pub fn snapshot(&self) -> Vec<ConnectionSnapshot> {
        // Taken out of the list first: the last handle to a session may go here, and its drop
        // (its story, its streams' quinn halves) is no work to do under our lock.
        let sessions: Vec<Arc<Session>> = {
            let list = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            list.iter().filter_map(Weak::upgrade).collect()
        };
        sessions.iter().map(|s| s.snapshot()).collect()
    }

    /// Snapshots of the connections to `peer`.
    pub fn for_peer(&self, peer: &PeerId) -> Vec<ConnectionSnapshot> {
        self.snapshot()
            .into_iter()
            .filter(|s| &s.peer == peer)
            .collect()
    }
}

impl std::fmt::Debug for Ledgers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledgers").finish_non_exhaustive()
    }
}

impl Connection {
    fn new(
        connection: quinn::Connection,
        peer: PeerId,
        config: Arc<Config>,
        ledgers: &Ledgers,
        qlog: Option<Qlog>,
    ) -> Self {
        Self::with_header(connection, peer, None, config, ledgers, qlog)
    }

    /// A WebTransport session's connection, whose streams start with `header`.
    pub(crate) fn webtransport(
        connection: quinn::Connection,
        peer: PeerId,
        header: Header,
        config: Arc<Config>,
        ledgers: &Ledgers,
        qlog: Option<Qlog>,
    ) -> Self {
        Self::with_header(connection, peer, Some(header), config, ledgers, qlog)
    }

    fn with_header(
        connection: quinn::Connection,
        peer: PeerId,
        header: Option<Header>,
        config: Arc<Config>,
        ledgers: &Ledgers,
        qlog: Option<Qlog>,
    ) -> Self {
        let number = ledgers.numbered.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Session::new(
            number,
            connection,
            peer,
            header.map_or(0, |header| header.as_bytes().len() as u8),
            config,
            ledgers.watcher.inbox(),
            qlog,
        );
        ledgers.register(&session);
        tracing::debug!(
            parent: &session.span,
            key_exchange = key_exchange::negotiated(session.connection()).as_deref(),
            "connection established"
        );
        Self {
            session,
            header,
            watcher: ledgers.watcher.clone(),
            tracked: false,
            inbound: None,
            outbound: None,
            closing: None,
        }
    }

    /// A stream of this connection; the first one the ledger tracks has the watcher watch
    /// the session from now on.
    fn stream(
        &mut self,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        direction: Direction,
    ) -> Stream {
        let stream = Stream::new(send, recv, direction, self.session.clone());
        if !self.tracked && self.session.keeps_books() {
            self.tracked = true;
            self.watcher.track(&self.session);
        }
        stream
    }

    /// The remote peer.
    pub fn peer_id(&self) -> PeerId {
        self.session.peer
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.session.remote_address()
    }

    /// What this connection's streams look like now: counts by direction and state, and every
    /// stream our layer still tracks.
    pub fn snapshot(&self) -> ConnectionSnapshot {
        self.session.snapshot()
    }

    /// The underlying quinn connection, for statistics such as RTT.
    pub fn quinn(&self) -> &quinn::Connection {
        self.session.connection()
    }
}

impl StreamMuxer for Connection {
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let accepts = this
            .inbound
            .get_or_insert_with(|| accepts(this.session.clone(), this.header));
        let halves = futures::ready!(poll_next_open(accepts, cx))?;
        Poll::Ready(Ok(this.stream(halves, Direction::Inbound)))
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let opens = this
            .outbound
            .get_or_insert_with(|| opens(this.session.clone(), this.header));
        let halves = futures::ready!(poll_next_open(opens, cx))?;
        Poll::Ready(Ok(this.stream(halves, Direction::Outbound)))
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        // Connection migration is off, so the address never changes; the watcher task does the
        // background work.
        Poll::Pending
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let closing = this.closing.get_or_insert_with(|| {
            let connection = this.session.connection().clone();
            connection.close(this.session.close_code(), &[]);
            async move { connection.closed().await }.boxed()
        });
        match futures::ready!(closing.poll_unpin(cx)) {
            quinn::ConnectionError::LocallyClosed => Poll::Ready(Ok(())),
            error => Poll::Ready(Err(error.into())),
        }
    }
}

/// The streams the peer opens: QUIC's as they come; a WebTransport session's once their
/// header is read, up to [`HEADER_READS`] at once, refusing those of no session of ours.
fn accepts(session: Arc<Session>, header: Option<Header>) -> Opens {
    let accepted = futures::stream::unfold(session.clone(), |session| async move {
        let accepted = session.connection().accept_bi().await.map_err(Error::from);
        Some((accepted, session))
    });
    let Some(header) = header else {
        return accepted.boxed();
    };
    let timeout = session.config.handshake_timeout;
    accepted
        .map(move |accepted| async move {
            match accepted {
                Ok(halves) => header.accept(halves, timeout).await.map(Ok),
                Err(e) => Some(Err(e)),
            }
        })
        .buffer_unordered(HEADER_READS)
        .filter_map(futures::future::ready)
        .boxed()
}

/// The streams we open: QUIC's, or a WebTransport session's with the header written; each
/// waits for stream credit with a warning ([`Session::open_with_warning`]).
fn opens(session: Arc<Session>, header: Option<Header>) -> Opens {
    futures::stream::unfold(session, move |session| async move {
        let connection = session.connection();
        let opened = match header {
            None => session.open_with_warning(connection.open_bi()).await,
            Some(header) => session.open_with_warning(header.open(connection)).await,
        };
        Some((opened, session))
    })
    .boxed()
}

/// The next stream `opens` yields: one open or accept, or its error once the connection is
/// gone. Both unfolds' steps always yield, so neither ever ends.
fn poll_next_open(
    opens: &mut Opens,
    cx: &mut Context<'_>,
) -> Poll<Result<(quinn::SendStream, quinn::RecvStream), Error>> {
    opens
        .poll_next_unpin(cx)
        .map(|next| next.expect("an unfold whose every step yields never ends"))
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The watcher and stream futures hold quinn handles too: close explicitly rather than
        // wait for the last of them.
        self.session
            .connection()
            .close(self.session.close_code(), &[]);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("number", &self.session.number)
            .field("peer", &self.session.peer)
            .field("id", &self.session.connection().stable_id())
            .finish_non_exhaustive()
    }
}

/// A connection whose TLS handshake is under way. Resolves to the peer's id and the
/// [`Connection`], or fails with a typed [`Error`] (timeout, wrong peer, bad certificate).
///
/// # Drop
///
/// Dropping it abandons the handshake; quinn closes the half-made connection.
#[must_use = "futures do nothing unless polled"]
pub struct Connecting {
    inner: BoxFuture<'static, Result<(PeerId, Connection), Error>>,
}

impl Connecting {
    pub(crate) fn new(
        connecting: quinn::Connecting,
        expected_peer: Option<PeerId>,
        config: Arc<Config>,
        ledgers: Ledgers,
        qlog: Option<Qlog>,
    ) -> Self {
        let inner = async move {
            let addr = connecting.remote_address();
            let connection = tokio::time::timeout(config.handshake_timeout, connecting)
                .await
                .map_err(|_| Error::HandshakeTimedOut { addr })??;
            let peer = match peer_id_of(&connection) {
                Ok(peer) => peer,
                Err(e) => {
                    connection.close(0u32.into(), b"invalid certificate");
                    return Err(e);
                }
            };
            if let Some(expected) = expected_peer.filter(|expected| *expected != peer) {
                connection.close(0u32.into(), b"wrong peer id");
                return Err(Error::PeerIdMismatch(Box::new(PeerIdMismatch {
                    expected,
                    actual: peer,
                })));
            }
            Ok((
                peer,
                Connection::new(connection, peer, config, &ledgers, qlog),
            ))
        };
        Self {
            inner: inner.boxed(),
        }
    }

    /// A WebTransport connection's handshake: QUIC's, the HTTP/3 session, and Noise, all
    /// within `Config::handshake_timeout`.
    pub(crate) fn webtransport(
        connecting: quinn::Connecting,
        role: Role,
        expected_peer: Option<PeerId>,
        config: Arc<Config>,
        ledgers: Ledgers,
        qlog: Option<Qlog>,
    ) -> Self {
        let inner = async move {
            let (peer, connection, header) =
                upgrade::upgrade(connecting, role, expected_peer, &config).await?;
            let connection =
                Connection::webtransport(connection, peer, header, config, &ledgers, qlog);
            Ok((peer, connection))
        };
        Self {
            inner: inner.boxed(),
        }
    }

    /// The same handshake, holding `guard` until it is done (resolved, failed, timed out) or
    /// dropped: a listener's place for it among the handshakes in flight.
    pub(crate) fn holding<G: Send + 'static>(self, guard: G) -> Self {
        let inner = self.inner;
        Self {
            inner: async move {
                let result = inner.await;
                drop(guard);
                result
            }
            .boxed(),
        }
    }

    /// A handshake the transport finished itself, to learn the peer's id (hole punching).
    pub(crate) fn finished(result: Result<(PeerId, Connection), Error>) -> Self {
        Self {
            inner: futures::future::ready(result).boxed(),
        }
    }
}

impl Future for Connecting {
    type Output = Result<(PeerId, Connection), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll_unpin(cx)
    }
}

impl std::fmt::Debug for Connecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connecting").finish_non_exhaustive()
    }
}

/// The peer id in the certificate the peer presented (libp2p-tls has already verified it).
fn peer_id_of(connection: &quinn::Connection) -> Result<PeerId, Error> {
    let identity = connection
        .peer_identity()
        .ok_or_else(|| Error::InvalidCertificate("no certificate presented".into()))?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| Error::InvalidCertificate("unexpected identity type".into()))?;
    let end_entity = chain
        .first()
        .ok_or_else(|| Error::InvalidCertificate("empty certificate chain".into()))?;
    let certificate = libp2p_tls::certificate::parse(end_entity)
        .map_err(|e| Error::InvalidCertificate(e.to_string()))?;
    Ok(certificate.peer_id())
}
