//! [`Listener`]: one listening UDP socket and its quinn endpoint, serving QUIC (`/quic-v1`),
//! WebTransport (`/quic-v1/webtransport`), or both on one port, as a stream of transport events.
//!
//! Each kind is a route with its own [`ListenerId`]. A port that serves WebTransport picks the
//! TLS config of each connection by the ALPN its ClientHello offers ([`AlpnSwitch`]), and the
//! connection is reported under the route of that ALPN once the ClientHello is in.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr, UdpSocket},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, SystemTime},
};

use futures::{future::BoxFuture, stream::FuturesUnordered, FutureExt, StreamExt};
use if_watch::{tokio::IfWatcher, IfEvent};
use libp2p_core::{
    multiaddr::Multiaddr,
    multihash::Multihash,
    transport::{ListenerId, TransportEvent},
};

use crate::{
    address,
    admission::{self, Admission, Ticket},
    connection::{Connecting, Ledgers},
    endpoint::{self, QuinnConfigs},
    key_exchange::{self, Reporting},
    session::Qlog,
    tls_switch::AlpnSwitch,
    webtransport::{certs::Certs, upgrade::Role},
    Config, Error,
};

pub(crate) type Event = TransportEvent<Connecting, Error>;

/// The ALPN of libp2p's QUIC connections, and of HTTP/3's.
const ALPN_LIBP2P: &[u8] = b"libp2p";
const ALPN_H3: &[u8] = b"h3";

/// How many connections may wait for their ClientHello at once on a WebTransport port.
const MAX_ROUTING: usize = 1024;

/// New connections decided on in one poll at most: a flood must not keep the task that polls
/// the listener (the `Swarm`'s) from everything else.
const INCOMING_PER_POLL: usize = 64;

/// The shortest wait for a certificate roll, so that a clock that jumps cannot spin us.
const MIN_ROLL_WAIT: Duration = Duration::from_millis(50);

/// The WebTransport route of a listener.
struct WebTransport {
    id: ListenerId,
    certs: Arc<Certs>,
    /// The hashes in the addresses we reported last.
    hashes: [Multihash<64>; 2],
    /// When to look at the certificates again.
    roll: Pin<Box<tokio::time::Sleep>>,
}

impl WebTransport {
    fn new(id: ListenerId, certs: Arc<Certs>) -> Self {
        // The certificates may have been made long ago, by an earlier listener.
        certs.roll_if_due(SystemTime::now());
        let hashes = certs.address_hashes();
        let roll = Box::pin(tokio::time::sleep(until(certs.next_roll())));
        Self {
            id,
            certs,
            hashes,
            roll,
        }
    }
}

fn until(when: SystemTime) -> Duration {
    when.duration_since(SystemTime::now())
        .unwrap_or_default()
        .max(MIN_ROLL_WAIT)
}

/// A connection whose ClientHello we wait for, to learn which route it is for; it holds its
/// place among the handshakes in flight.
type Routing = BoxFuture<'static, Option<(Vec<u8>, quinn::Connecting, Option<Qlog>, Ticket)>>;

/// One listening socket and its endpoint, as a stream of transport events.
pub(crate) struct Listener {
    /// The QUIC route's listener id, if it serves QUIC.
    quic: Option<ListenerId>,
    webtransport: Option<WebTransport>,
    pub(crate) endpoint: quinn::Endpoint,
    /// The endpoint's socket, for hole punching.
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) local_addr: SocketAddr,
    config: Arc<Config>,
    quinn: QuinnConfigs,
    ledgers: Ledgers,
    /// Which new connections get a handshake (`docs/admission.md`).
    pub(crate) admission: Admission,
    accept: BoxFuture<'static, Option<quinn::Incoming>>,
    routing: FuturesUnordered<Routing>,
    /// Watches interfaces when bound to an unspecified address.
    if_watcher: Option<IfWatcher>,
    /// The interface addresses we report as listen addresses.
    addresses: Vec<IpAddr>,
    pending: VecDeque<Event>,
    closed: bool,
    waker: Option<Waker>,
}

impl Listener {
    /// A listener on `socket` for QUIC, or for WebTransport with these certificates.
    pub(crate) fn new(
        id: ListenerId,
        webtransport: Option<Arc<Certs>>,
        socket: UdpSocket,
        quinn: &QuinnConfigs,
        config: Arc<Config>,
        ledgers: Ledgers,
    ) -> Result<Self, Error> {
        let local_addr = socket.local_addr()?;
        let punching = socket.try_clone()?;
        // Shared with quinn's handle, which needs it too: a punch never blocks the task.
        punching.set_nonblocking(true)?;
        let endpoint = endpoint::endpoint(quinn, socket, false)?;
        let if_watcher = if local_addr.ip().is_unspecified() {
            Some(IfWatcher::new()?)
        } else {
            None
        };
        let admission = Admission::new(&config, local_addr);
        let mut listener = Self {
            quic: None,
            webtransport: None,
            accept: accept(endpoint.clone()),
            endpoint,
            socket: Arc::new(punching),
            local_addr,
            config,
            quinn: quinn.clone(),
            admission,
            ledgers,
            routing: FuturesUnordered::new(),
            if_watcher,
            addresses: Vec::new(),
            pending: VecDeque::new(),
            closed: false,
            waker: None,
        };
        if !local_addr.ip().is_unspecified() {
            listener.addresses.push(local_addr.ip());
        }
        listener.add_route(id, webtransport);
        Ok(listener)
    }

    /// Whether this listener has a route with this id.
    pub(crate) fn has(&self, id: ListenerId) -> bool {
        self.quic == Some(id) || self.webtransport.as_ref().is_some_and(|w| w.id == id)
    }

    /// Whether a listen on `addr` for this kind can share this listener's socket: the same
    /// explicit port and address, and that kind not served yet.
    pub(crate) fn can_share(&self, addr: SocketAddr, webtransport: bool) -> bool {
        !self.closed
            && addr.port() != 0
            && addr == self.local_addr
            && if webtransport {
                self.webtransport.is_none()
            } else {
                self.quic.is_none()
            }
    }

    /// Serve QUIC, or WebTransport with these certificates, under `id` too; report its
    /// addresses.
    pub(crate) fn add_route(&mut self, id: ListenerId, webtransport: Option<Arc<Certs>>) {
        match webtransport {
            Some(certs) => self.webtransport = Some(WebTransport::new(id, certs)),
            None => self.quic = Some(id),
        }
        for ip in self.addresses.clone() {
            let addr = SocketAddr::new(ip, self.local_addr.port());
            if let Some(event) = self.address_event(id, addr, true) {
                self.pending.push_back(event);
            }
        }
        self.endpoint
            .set_server_config(Some(self.server_config(None)));
        self.wake();
    }

    /// The server config for our routes; with `transport`, one of a connection's own (qlog).
    fn server_config(&self, transport: Option<quinn::TransportConfig>) -> quinn::ServerConfig {
        let Some(webtransport) = &self.webtransport else {
            return match transport {
                Some(transport) => self.config.server_config(Arc::new(transport)),
                None => self.quinn.server.clone(),
            };
        };
        let h3 = webtransport.certs.server_config();
        let crypto: Arc<dyn quinn::crypto::ServerConfig> = match self.quic {
            Some(_) => Arc::new(AlpnSwitch::new(vec![
                (ALPN_H3.to_vec(), h3),
                (ALPN_LIBP2P.to_vec(), self.config.server_tls()),
            ])),
            None => h3,
        };
        let transport = transport.unwrap_or_else(|| self.config.webtransport_transport_config());
        let mut server = quinn::ServerConfig::with_crypto(Reporting::new(crypto));
        server.transport_config(Arc::new(transport));
        // A libp2p connection is bound to the addresses it was made on.
        server.migration(false);
        admission::bound_incoming(&mut server);
        server
    }

    /// Whether a dial to `remote` may leave from this listener's socket: a QUIC dial only from a
    /// socket that serves QUIC, for the peer sees (and may dial back) the port it came from.
    pub(crate) fn can_dial(&self, remote: SocketAddr, webtransport: bool) -> bool {
        let serves = if webtransport {
            self.webtransport.is_some()
        } else {
            self.quic.is_some()
        };
        serves
            && !self.closed
            && self.local_addr.is_ipv4() == remote.is_ipv4()
            && (!remote.ip().is_loopback() || self.addresses.iter().any(IpAddr::is_loopback))
    }

    /// Stop serving the route `id`; `true` if we had it. The last route's end closes the
    /// listener: it stops accepting, and the socket is freed once the connections accepted on
    /// it are gone too.
    pub(crate) fn remove_route(&mut self, id: ListenerId, reason: Result<(), Error>) -> bool {
        if self.quic == Some(id) {
            self.quic = None;
        } else if self.webtransport.as_ref().is_some_and(|w| w.id == id) {
            self.webtransport = None;
        } else {
            return false;
        }
        self.pending.push_back(TransportEvent::ListenerClosed {
            listener_id: id,
            reason,
        });
        if self.quic.is_none() && self.webtransport.is_none() {
            self.closed = true;
            self.endpoint.set_server_config(None);
        } else {
            self.endpoint
                .set_server_config(Some(self.server_config(None)));
        }
        self.wake();
        true
    }

    /// Close every route, reporting `reason` for each.
    fn close(&mut self, reason: impl Fn() -> Result<(), Error>) {
        for id in self.ids() {
            self.remove_route(id, reason());
        }
    }

    fn ids(&self) -> Vec<ListenerId> {
        self.quic
            .into_iter()
            .chain(self.webtransport.as_ref().map(|w| w.id))
            .collect()
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The address of route `id` at `addr`: QUIC's, or WebTransport's with its hashes.
    fn listen_addr(&self, id: ListenerId, addr: SocketAddr) -> Option<Multiaddr> {
        if self.quic == Some(id) {
            return Some(address::to_multiaddr(addr));
        }
        let webtransport = self.webtransport.as_ref().filter(|w| w.id == id)?;
        Some(address::to_webtransport_multiaddr(
            addr,
            &webtransport.hashes,
        ))
    }

    fn address_event(&self, id: ListenerId, addr: SocketAddr, up: bool) -> Option<Event> {
        let listen_addr = self.listen_addr(id, addr)?;
        Some(if up {
            TransportEvent::NewAddress {
                listener_id: id,
                listen_addr,
            }
        } else {
            TransportEvent::AddressExpired {
                listener_id: id,
                listen_addr,
            }
        })
    }

    /// Turn an interface change into listen-address events, one per route.
    fn on_if_event(&mut self, event: std::io::Result<IfEvent>) {
        let (ip, up) = match event {
            Ok(IfEvent::Up(net)) => (net.addr(), true),
            Ok(IfEvent::Down(net)) => (net.addr(), false),
            Err(error) => {
                // Each route hears of it (io::Error is not Clone).
                for listener_id in self.ids() {
                    let error = std::io::Error::new(error.kind(), error.to_string()).into();
                    self.pending
                        .push_back(TransportEvent::ListenerError { listener_id, error });
                }
                return;
            }
        };
        if ip.is_ipv4() != self.local_addr.is_ipv4() || self.addresses.contains(&ip) == up {
            return;
        }
        if up {
            self.addresses.push(ip);
        } else {
            self.addresses.retain(|a| *a != ip);
        }
        let addr = SocketAddr::new(ip, self.local_addr.port());
        for id in self.ids() {
            if let Some(event) = self.address_event(id, addr, up) {
                self.pending.push_back(event);
            }
        }
    }

    /// The certificates rolled: the WebTransport addresses change.
    fn poll_roll(&mut self, cx: &mut Context<'_>) {
        let Some(webtransport) = self.webtransport.as_mut() else {
            return;
        };
        if webtransport.roll.poll_unpin(cx).is_pending() {
            return;
        }
        webtransport.certs.roll_if_due(SystemTime::now());
        let next = until(webtransport.certs.next_roll());
        webtransport
            .roll
            .as_mut()
            .reset(tokio::time::Instant::now() + next);
        // A reset timer is not armed until polled: poll it, or no wake comes at its deadline.
        let _ = webtransport.roll.poll_unpin(cx);
        let hashes = webtransport.certs.address_hashes();
        if hashes == webtransport.hashes {
            return;
        }
        let id = webtransport.id;
        tracing::info!(listener = ?id, "WebTransport certificates rolled over: new listen addresses");
        let ports: Vec<SocketAddr> = self
            .addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.local_addr.port()))
            .collect();
        for addr in &ports {
            self.pending.extend(self.address_event(id, *addr, false));
        }
        if let Some(webtransport) = self.webtransport.as_mut() {
            webtransport.hashes = hashes;
        }
        for addr in &ports {
            self.pending.extend(self.address_event(id, *addr, true));
        }
    }

    /// A connection arrived: decide whether it gets a handshake (`admission`), then report it,
    /// or, on a port that serves WebTransport, wait for its ClientHello to know which route it
    /// is for. Its ticket goes with it until its handshake is done, however that ends. The
    /// ClientHello waits are bounded in number too: beyond [`MAX_ROUTING`] new connections are
    /// refused, whatever admission allows.
    fn on_incoming(&mut self, incoming: quinn::Incoming) -> Option<Event> {
        let (incoming, ticket) = self.admission.admit(incoming)?;
        let remote = incoming.remote_address();
        if self.webtransport.is_some() && self.routing.len() >= MAX_ROUTING {
            tracing::debug!(%remote, "refused a connection: too many ClientHellos under way");
            incoming.refuse();
            return None;
        }
        let (server, qlog) = self.server_config_for(remote);
        let accepted = match server {
            Some(server) => incoming.accept_with(Arc::new(server)),
            None => incoming.accept(),
        };
        let mut connecting = match accepted {
            Ok(connecting) => connecting,
            Err(error) => {
                tracing::debug!(%error, "refused an incoming connection");
                return None;
            }
        };
        if self.webtransport.is_none() {
            return self.routed(ALPN_LIBP2P, connecting, qlog, ticket);
        }
        let timeout = self.config.handshake_timeout;
        // Without the ALPN switch, a HelloRetryRequest's handshake data comes before rustls
        // has chosen the ALPN: with WebTransport alone, `h3` is the only one it can choose.
        let only = self.quic.is_none().then_some(ALPN_H3);
        self.routing.push(
            async move {
                let data = tokio::time::timeout(timeout, connecting.handshake_data()).await;
                let data = match data {
                    Ok(Ok(data)) => data,
                    Ok(Err(error)) => {
                        tracing::debug!(%remote, %error, "an incoming handshake failed");
                        return None;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "an incoming handshake timed out");
                        return None;
                    }
                };
                let alpn = data
                    .downcast::<key_exchange::HandshakeData>()
                    .ok()?
                    .protocol
                    .or_else(|| only.map(<[u8]>::to_vec))?;
                Some((alpn, connecting, qlog, ticket))
            }
            .boxed(),
        );
        None
    }

    /// The event of a connection whose ALPN, `alpn`, says which route it is for.
    fn routed(
        &self,
        alpn: &[u8],
        connecting: quinn::Connecting,
        qlog: Option<Qlog>,
        ticket: Ticket,
    ) -> Option<Event> {
        let remote = connecting.remote_address();
        let config = self.config.clone();
        let ledgers = self.ledgers.clone();
        let (listener_id, upgrade, local_addr, send_back_addr) = match alpn {
            ALPN_LIBP2P => (
                self.quic?,
                Connecting::new(connecting, None, config, ledgers, qlog),
                address::to_multiaddr(self.local_addr),
                address::to_multiaddr(remote),
            ),
            ALPN_H3 => {
                let webtransport = self.webtransport.as_ref()?;
                let role = Role::Listener(webtransport.certs.clone());
                (
                    webtransport.id,
                    Connecting::webtransport(connecting, role, None, config, ledgers, qlog),
                    address::to_webtransport_multiaddr(self.local_addr, &webtransport.hashes),
                    address::to_webtransport_multiaddr(remote, &[]),
                )
            }
            _ => return None,
        };
        Some(TransportEvent::Incoming {
            listener_id,
            upgrade: upgrade.holding(ticket),
            local_addr,
            send_back_addr,
        })
    }

    /// With qlog on, a server config of the connection's own that writes its qlog file.
    fn server_config_for(&self, remote: SocketAddr) -> (Option<quinn::ServerConfig>, Option<Qlog>) {
        #[cfg(feature = "qlog")]
        if let Some((file, stream)) = crate::qlog::QlogFile::create("server", remote) {
            let mut transport = match self.webtransport {
                Some(_) => self.config.webtransport_transport_config(),
                None => self.config.transport_config(),
            };
            transport.qlog_stream(Some(stream));
            return (Some(self.server_config(Some(transport))), Some(file));
        }
        let _ = remote;
        (None, None)
    }
}

fn accept(endpoint: quinn::Endpoint) -> BoxFuture<'static, Option<quinn::Incoming>> {
    async move { endpoint.accept().await }.boxed()
}

impl futures::Stream for Listener {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut incoming_budget = INCOMING_PER_POLL;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Poll::Ready(Some(event));
            }
            if self.closed {
                // Dropping the endpoint handle frees the socket once no connection uses it.
                return Poll::Ready(None);
            }
            if let Some(watcher) = self.if_watcher.as_mut() {
                if let Poll::Ready(Some(event)) = watcher.poll_next_unpin(cx) {
                    self.on_if_event(event);
                    continue;
                }
            }
            self.poll_roll(cx);
            if !self.pending.is_empty() {
                continue;
            }
            if let Poll::Ready(Some(routed)) = self.routing.poll_next_unpin(cx) {
                if let Some(event) = routed.and_then(|(alpn, connecting, qlog, ticket)| {
                    self.routed(&alpn, connecting, qlog, ticket)
                }) {
                    return Poll::Ready(Some(event));
                }
                continue;
            }
            if incoming_budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match self.accept.poll_unpin(cx) {
                Poll::Ready(Some(incoming)) => {
                    incoming_budget -= 1;
                    self.accept = accept(self.endpoint.clone());
                    if let Some(event) = self.on_incoming(incoming) {
                        return Poll::Ready(Some(event));
                    }
                    continue;
                }
                Poll::Ready(None) => {
                    self.close(|| Ok(()));
                    continue;
                }
                Poll::Pending => {}
            }
            self.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Refuse new connections at once; established ones live on until they close.
        self.endpoint.set_server_config(None);
    }
}
