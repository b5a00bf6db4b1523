//! The libp2p [`Transport`]: listeners, dialing, and the address events in between.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr, UdpSocket},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use futures::{future::BoxFuture, stream::SelectAll, FutureExt, StreamExt};
use if_watch::{tokio::IfWatcher, IfEvent};
use libp2p_core::{
    multiaddr::Multiaddr,
    transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent},
    Endpoint,
};
use libp2p_identity::PeerId;

use crate::{
    address,
    connection::{Connecting, Ledgers},
    endpoint::{self, QuinnConfigs},
    hole_punch::Punches,
    session::Qlog,
    Config, Connection, Error,
};

/// QUIC v1 transport on the tokio runtime: listens on and dials
/// `/ip4|ip6/<addr>/udp/<port>/quic-v1[/p2p/<peer>]`.
///
/// A drop-in replacement for `libp2p_quic::tokio::Transport`: same `Output`, same defaults,
/// same wire protocol.
///
/// # Hole punching
///
/// A dial with `role: Endpoint::Listener` (DCUtR's, whatever its `port_use`) to an address
/// with `/p2p/<peer>` punches a hole: UDP packets go from the listening socket of the
/// address's family to it every 10–200 ms, until that peer connects to one of our listeners
/// (the dial then yields that connection) or `handshake_timeout` passes. Meanwhile the
/// transport finishes the handshakes of incoming connections itself, to see whose they are;
/// those of other peers are reported as usual, just after their handshake.
/// See `docs/hole-punching.md`.
///
/// # Drop
///
/// Dropping the transport stops its listeners from accepting; connections already handed out
/// live on until they are dropped or closed, and each socket is freed with its last connection.
pub struct Transport {
    config: Arc<Config>,
    quinn: QuinnConfigs,
    listeners: SelectAll<Listener>,
    /// Endpoints for dials that reuse no listener's port, one per address family.
    dialers: HashMap<bool, quinn::Endpoint>,
    punches: Punches,
    ledgers: Ledgers,
    waker: Option<Waker>,
}

impl Transport {
    /// A transport with this configuration.
    pub fn new(config: Config) -> Self {
        #[allow(deprecated)]
        if config.support_draft_29 {
            tracing::warn!(
                "Config::support_draft_29 is ignored: this transport speaks QUIC v1 only"
            );
        }
        Self {
            quinn: QuinnConfigs::new(&config),
            ledgers: Ledgers::new(&config),
            config: Arc::new(config),
            listeners: SelectAll::new(),
            dialers: HashMap::new(),
            punches: Punches::default(),
            waker: None,
        }
    }

    /// A handle to the stream ledgers of every connection this transport makes; keep it
    /// before handing the transport to a `Swarm`.
    pub fn ledgers(&self) -> Ledgers {
        self.ledgers.clone()
    }

    /// The client config for a dial; with qlog on, one of its own that writes the qlog file.
    fn client_config_for(&self, remote: SocketAddr) -> (quinn::ClientConfig, Option<Qlog>) {
        #[cfg(feature = "qlog")]
        if let Some((file, stream)) = crate::qlog::QlogFile::create("client", remote) {
            let mut transport = self.config.transport_config();
            transport.qlog_stream(Some(stream));
            return (self.config.client_config(Arc::new(transport)), Some(file));
        }
        let _ = remote;
        (self.quinn.client.clone(), None)
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The endpoint a dial to `remote` leaves from: a listener's (so that the peer sees our
    /// listening port, and NAT mappings line up) when `PortUse::Reuse` allows it, else a
    /// dialing endpoint of our own.
    fn dialing_endpoint(
        &mut self,
        remote: SocketAddr,
        port_use: PortUse,
    ) -> Result<quinn::Endpoint, Error> {
        if port_use == PortUse::Reuse {
            if let Some(listener) = self.listeners.iter().find(|l| l.can_dial(remote)) {
                return Ok(listener.endpoint.clone());
            }
            if let Some(endpoint) = self.dialers.get(&remote.is_ipv4()) {
                return Ok(endpoint.clone());
            }
        }
        let socket = endpoint::bind_for_dialing(remote)?;
        let endpoint = endpoint::endpoint(&self.quinn, socket, false)?;
        if port_use == PortUse::Reuse {
            self.dialers.insert(remote.is_ipv4(), endpoint.clone());
        }
        Ok(endpoint)
    }

    /// A dial as listener: punch a hole to `remote` for `peer` from the listening socket of
    /// its family.
    fn punch(
        &mut self,
        addr: Multiaddr,
        remote: SocketAddr,
        peer: Option<PeerId>,
    ) -> Result<<Self as libp2p_core::Transport>::Dial, TransportError<Error>> {
        // Only the peer id tells its connection from others.
        let Some(peer) = peer else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let listener = self.listeners.iter().find(|l| l.can_dial(remote));
        let socket = listener
            .ok_or(Error::NoActiveListenerForDialAsListener)?
            .socket
            .clone();
        let timeout = self.config.handshake_timeout;
        Ok(self.punches.start(socket, remote, peer, timeout)?)
    }
}

impl libp2p_core::Transport for Transport {
    type Output = (PeerId, Connection);
    type Error = Error;
    type ListenerUpgrade = Connecting;
    type Dial = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some((socket_addr, None)) = address::parse(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let socket = endpoint::bind(socket_addr).map_err(Error::from)?;
        let listener = Listener::new(
            id,
            socket,
            &self.quinn,
            self.config.clone(),
            self.ledgers.clone(),
        )?;
        tracing::debug!(address = %listener.local_addr, "listening");
        self.listeners.push(listener);
        // New dials of this family should leave from the listener's port from now on.
        self.dialers.remove(&socket_addr.is_ipv4());
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        match self.listeners.iter_mut().find(|l| l.id == id) {
            Some(listener) => {
                listener.close(Ok(()));
                true
            }
            None => false,
        }
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some((remote, expected_peer)) = address::parse(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        if opts.role == Endpoint::Listener {
            return self.punch(addr, remote, expected_peer);
        }
        let endpoint = self.dialing_endpoint(remote, opts.port_use)?;
        let (client, qlog) = self.client_config_for(remote);
        let config = self.config.clone();
        let ledgers = self.ledgers.clone();
        tracing::debug!(%addr, "dialing");
        Ok(async move {
            // rustls wants a server name; libp2p authenticates by peer id instead.
            let connecting = endpoint
                .connect_with(client, remote, "l")
                .map_err(|source| Error::Connect {
                    addr: remote,
                    source,
                })?;
            Connecting::new(connecting, expected_peer, config, ledgers, qlog).await
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = &mut *self;
        loop {
            if let Poll::Ready(event) = this.punches.poll_handed_on(cx) {
                return Poll::Ready(event);
            }
            match this.listeners.poll_next_unpin(cx) {
                Poll::Ready(Some(event)) => {
                    if let Some(event) = this.punches.divert(event) {
                        return Poll::Ready(event);
                    }
                }
                _ => {
                    this.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("config", &self.config)
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

type Event = TransportEvent<Connecting, Error>;

/// One listening socket and its endpoint, as a stream of transport events.
struct Listener {
    id: ListenerId,
    endpoint: quinn::Endpoint,
    /// The endpoint's socket, for hole punching.
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    config: Arc<Config>,
    ledgers: Ledgers,
    accept: BoxFuture<'static, Option<quinn::Incoming>>,
    /// Watches interfaces when bound to an unspecified address.
    if_watcher: Option<IfWatcher>,
    /// The interface addresses we report as listen addresses.
    addresses: Vec<IpAddr>,
    pending: VecDeque<Event>,
    closed: bool,
    waker: Option<Waker>,
}

impl Listener {
    fn new(
        id: ListenerId,
        socket: UdpSocket,
        quinn: &QuinnConfigs,
        config: Arc<Config>,
        ledgers: Ledgers,
    ) -> Result<Self, Error> {
        let local_addr = socket.local_addr()?;
        let punching = socket.try_clone()?;
        // Shared with quinn's handle, which needs it too: a punch never blocks the task.
        punching.set_nonblocking(true)?;
        let endpoint = endpoint::endpoint(quinn, socket, true)?;
        let mut pending = VecDeque::new();
        let mut addresses = Vec::new();
        let if_watcher = if local_addr.ip().is_unspecified() {
            Some(IfWatcher::new()?)
        } else {
            addresses.push(local_addr.ip());
            pending.push_back(TransportEvent::NewAddress {
                listener_id: id,
                listen_addr: address::to_multiaddr(local_addr),
            });
            None
        };
        Ok(Self {
            id,
            accept: accept(endpoint.clone()),
            endpoint,
            socket: Arc::new(punching),
            local_addr,
            config,
            ledgers,
            if_watcher,
            addresses,
            pending,
            closed: false,
            waker: None,
        })
    }

    /// Whether a dial to `remote` may leave from this listener's socket.
    fn can_dial(&self, remote: SocketAddr) -> bool {
        !self.closed
            && self.local_addr.is_ipv4() == remote.is_ipv4()
            && (!remote.ip().is_loopback() || self.addresses.iter().any(IpAddr::is_loopback))
    }

    /// Stop accepting and report the listener closed; the socket is freed once the
    /// connections accepted on it are gone too.
    fn close(&mut self, reason: Result<(), Error>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.endpoint.set_server_config(None);
        self.pending.push_back(TransportEvent::ListenerClosed {
            listener_id: self.id,
            reason,
        });
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Turn an interface change into a listen-address event.
    fn on_if_event(&mut self, event: std::io::Result<IfEvent>) -> Option<Event> {
        let listener_id = self.id;
        match event {
            Ok(IfEvent::Up(net)) => {
                let ip = net.addr();
                if ip.is_ipv4() != self.local_addr.is_ipv4() || self.addresses.contains(&ip) {
                    return None;
                }
                self.addresses.push(ip);
                let listen_addr =
                    address::to_multiaddr(SocketAddr::new(ip, self.local_addr.port()));
                Some(TransportEvent::NewAddress {
                    listener_id,
                    listen_addr,
                })
            }
            Ok(IfEvent::Down(net)) => {
                let ip = net.addr();
                let before = self.addresses.len();
                self.addresses.retain(|a| *a != ip);
                if self.addresses.len() == before {
                    return None;
                }
                let listen_addr =
                    address::to_multiaddr(SocketAddr::new(ip, self.local_addr.port()));
                Some(TransportEvent::AddressExpired {
                    listener_id,
                    listen_addr,
                })
            }
            Err(error) => Some(TransportEvent::ListenerError {
                listener_id,
                error: error.into(),
            }),
        }
    }
}

/// With qlog on, a server config of the connection's own that writes its qlog file.
fn server_config_for(
    config: &Config,
    remote: SocketAddr,
) -> (Option<quinn::ServerConfig>, Option<Qlog>) {
    #[cfg(feature = "qlog")]
    if let Some((file, stream)) = crate::qlog::QlogFile::create("server", remote) {
        let mut transport = config.transport_config();
        transport.qlog_stream(Some(stream));
        return (Some(config.server_config(Arc::new(transport))), Some(file));
    }
    let _ = (config, remote);
    (None, None)
}

fn accept(endpoint: quinn::Endpoint) -> BoxFuture<'static, Option<quinn::Incoming>> {
    async move { endpoint.accept().await }.boxed()
}

impl futures::Stream for Listener {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
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
                    if let Some(event) = self.on_if_event(event) {
                        return Poll::Ready(Some(event));
                    }
                    continue;
                }
            }
            match self.accept.poll_unpin(cx) {
                Poll::Ready(Some(incoming)) => {
                    self.accept = accept(self.endpoint.clone());
                    let send_back_addr = address::to_multiaddr(incoming.remote_address());
                    let (server, qlog) = server_config_for(&self.config, incoming.remote_address());
                    let accepted = match server {
                        Some(server) => incoming.accept_with(Arc::new(server)),
                        None => incoming.accept(),
                    };
                    let connecting = match accepted {
                        Ok(connecting) => connecting,
                        Err(error) => {
                            tracing::debug!(%error, "refused an incoming connection");
                            continue;
                        }
                    };
                    let upgrade = Connecting::new(
                        connecting,
                        None,
                        self.config.clone(),
                        self.ledgers.clone(),
                        qlog,
                    );
                    return Poll::Ready(Some(TransportEvent::Incoming {
                        listener_id: self.id,
                        upgrade,
                        local_addr: address::to_multiaddr(self.local_addr),
                        send_back_addr,
                    }));
                }
                Poll::Ready(None) => {
                    self.close(Ok(()));
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
