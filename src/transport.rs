//! The libp2p [`Transport`]: listeners, dialing, and the address events in between.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::SystemTime,
};

use futures::{future::BoxFuture, stream::SelectAll, FutureExt, StreamExt};
use libp2p_core::{
    multiaddr::Multiaddr,
    multihash::Multihash,
    transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent},
    Endpoint,
};
use libp2p_identity::PeerId;

use crate::{
    address::{self, Target},
    connection::{Connecting, Ledgers},
    endpoint::{self, QuinnConfigs},
    hole_punch::Punches,
    key_exchange::Reporting,
    listener::Listener,
    session::Qlog,
    webtransport::{certs::Certs, upgrade::Role, verifier},
    AdmissionSnapshot, Config, Connection, Error,
};

/// The shortest certificate lifetime we take (tests roll in seconds; nothing rolls faster).
const MIN_CERTIFICATE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);

/// QUIC v1 and WebTransport transport on the tokio runtime: listens on and dials
/// `/ip4|ip6/<addr>/udp/<port>/quic-v1[/p2p/<peer>]` and
/// `/ip4|ip6/<addr>/udp/<port>/quic-v1/webtransport[/certhash/<hash>…][/p2p/<peer>]`.
///
/// A drop-in replacement for `libp2p_quic::tokio::Transport`: same `Output`, same defaults,
/// same wire protocol.
///
/// # WebTransport
///
/// Listening on `…/quic-v1/webtransport` serves browsers (and go-libp2p) over HTTP/3 with
/// self-signed certificates checked by hash: the listener reports
/// `…/quic-v1/webtransport/certhash/<current>/certhash/<next>`, and reports new addresses when
/// the certificates roll over ([`Config::webtransport_certificate_lifetime`]). Listening on
/// `/quic-v1` and `/quic-v1/webtransport` at the same address and explicit port shares one
/// socket, as go-libp2p does. Dialing a WebTransport address needs at least one certhash.
/// The connection and its streams are the same as QUIC's. See `docs/webtransport.md`.
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
    /// The WebTransport certificates, made at the first WebTransport listen.
    certs: Option<Arc<Certs>>,
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
            certs: None,
            waker: None,
        }
    }

    /// A handle to the stream ledgers of every connection this transport makes; keep it
    /// before handing the transport to a `Swarm`.
    pub fn ledgers(&self) -> Ledgers {
        self.ledgers.clone()
    }

    /// What the admission of this transport's listeners holds now: handshakes in flight,
    /// source subnets tracked, and the connections their endpoints hold
    /// (`docs/admission.md`).
    pub fn admission_snapshot(&self) -> AdmissionSnapshot {
        let mut snapshot = AdmissionSnapshot::default();
        for listener in self.listeners.iter() {
            let (in_flight, sources) = listener.admission.snapshot();
            snapshot.handshakes_in_flight += in_flight;
            snapshot.sources += sources;
            snapshot.endpoint_connections += listener.endpoint.open_connections();
        }
        snapshot
    }

    /// The client config for a dial (a WebTransport one checks the certificate against
    /// `certhashes`); with qlog on, one of its own that writes the qlog file.
    fn client_config_for(
        &self,
        remote: SocketAddr,
        certhashes: Option<&[Multihash<64>]>,
    ) -> (quinn::ClientConfig, Option<Qlog>) {
        let (transport, qlog) = self.dial_transport_config(remote, certhashes.is_some());
        let Some(certhashes) = certhashes else {
            return match transport {
                Some(transport) => (self.config.client_config(Arc::new(transport)), qlog),
                None => (self.quinn.client.clone(), qlog),
            };
        };
        let tls = Reporting::new(verifier::client_config(certhashes.to_vec()));
        let mut client = quinn::ClientConfig::new(tls);
        let transport = transport.unwrap_or_else(|| self.config.webtransport_transport_config());
        client.transport_config(Arc::new(transport));
        (client, qlog)
    }

    /// With qlog on, the transport config of one dial, writing its qlog file.
    fn dial_transport_config(
        &self,
        remote: SocketAddr,
        webtransport: bool,
    ) -> (Option<quinn::TransportConfig>, Option<Qlog>) {
        #[cfg(feature = "qlog")]
        if let Some((file, stream)) = crate::qlog::QlogFile::create("client", remote) {
            let mut transport = if webtransport {
                self.config.webtransport_transport_config()
            } else {
                self.config.transport_config()
            };
            transport.qlog_stream(Some(stream));
            return (Some(transport), Some(file));
        }
        let _ = (remote, webtransport);
        (None, None)
    }

    /// The WebTransport certificates, made at the first need.
    fn certs(&mut self) -> Arc<Certs> {
        let config = &self.config;
        self.certs
            .get_or_insert_with(|| {
                // Shorter would roll faster than a handshake completes.
                let lifetime = config.webtransport_certificate_lifetime;
                Certs::new(
                    &config.keypair,
                    lifetime.max(MIN_CERTIFICATE_LIFETIME),
                    SystemTime::now(),
                )
            })
            .clone()
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
        webtransport: bool,
    ) -> Result<quinn::Endpoint, Error> {
        if port_use == PortUse::Reuse {
            let listener = self
                .listeners
                .iter()
                .find(|l| l.can_dial(remote, webtransport));
            if let Some(listener) = listener {
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
        let listener = self.listeners.iter().find(|l| l.can_dial(remote, false));
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
        // A listen address names no peer and, for WebTransport, no certificate: we make ours.
        let Some(Target {
            socket: socket_addr,
            peer: None,
            webtransport,
        }) = address::parse_target(&addr)
        else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if webtransport
            .as_ref()
            .is_some_and(|hashes| !hashes.is_empty())
        {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        let certs = webtransport.map(|_| self.certs());
        let kind = if certs.is_some() {
            "WebTransport"
        } else {
            "QUIC"
        };
        // The other kind on this address and port already: serve both on its socket.
        if let Some(listener) = self
            .listeners
            .iter_mut()
            .find(|l| l.can_share(socket_addr, certs.is_some()))
        {
            listener.add_route(id, certs);
            tracing::debug!(address = %socket_addr, kind, "listening on a shared socket");
            self.wake();
            return Ok(());
        }
        let socket = endpoint::bind(socket_addr).map_err(Error::from)?;
        let listener = Listener::new(
            id,
            certs,
            socket,
            &self.quinn,
            self.config.clone(),
            self.ledgers.clone(),
        )?;
        tracing::debug!(address = %listener.local_addr, kind, "listening");
        self.listeners.push(listener);
        // New dials of this family should leave from the listener's port from now on.
        self.dialers.remove(&socket_addr.is_ipv4());
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        match self.listeners.iter_mut().find(|l| l.has(id)) {
            Some(listener) => listener.remove_route(id, Ok(())),
            None => false,
        }
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(Target {
            socket: remote,
            peer: expected_peer,
            webtransport,
        }) = address::parse_target(&addr)
        else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        // Without a certhash, a WebTransport listener's certificate cannot be checked.
        let no_certhash = webtransport.as_ref().is_some_and(Vec::is_empty);
        if remote.port() == 0 || remote.ip().is_unspecified() || no_certhash {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        if opts.role == Endpoint::Listener {
            if webtransport.is_some() {
                return Err(TransportError::MultiaddrNotSupported(addr));
            }
            return self.punch(addr, remote, expected_peer);
        }
        let endpoint = self.dialing_endpoint(remote, opts.port_use, webtransport.is_some())?;
        let (client, qlog) = self.client_config_for(remote, webtransport.as_deref());
        let config = self.config.clone();
        let ledgers = self.ledgers.clone();
        tracing::debug!(%addr, "dialing");
        // rustls wants a server name; libp2p authenticates by peer id instead (and a
        // WebTransport listener by its certificate's hash).
        Ok(async move {
            let connecting = endpoint
                .connect_with(client, remote, "l")
                .map_err(|source| Error::Connect {
                    addr: remote,
                    source,
                })?;
            let upgrade = match webtransport {
                None => Connecting::new(connecting, expected_peer, config, ledgers, qlog),
                Some(certhashes) => {
                    let role = Role::Dialer { remote, certhashes };
                    Connecting::webtransport(connecting, role, expected_peer, config, ledgers, qlog)
                }
            };
            upgrade.await
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
