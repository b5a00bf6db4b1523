//! [`Config`]: the knobs of the transport, and their translation into quinn's configs.

use std::{sync::Arc, time::Duration};

use quinn::{
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
    MtuDiscoveryConfig, VarInt,
};

use crate::{admission::AdmissionConfig, congestion::CongestionControl, key_exchange::Reporting};

/// The longest validity browsers accept of a certificate they check by hash.
pub(crate) const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// Unidirectional streams a WebTransport peer may open: HTTP/3's control and two QPACK streams,
/// and room for two more, as go-libp2p allows.
const WEBTRANSPORT_UNI_STREAMS: u32 = 5;
/// QUIC datagrams we buffer on a WebTransport connection; libp2p sends none, so this only
/// bounds what a peer can make us hold (quinn drops the oldest beyond it).
const WEBTRANSPORT_DATAGRAM_BUFFER: usize = 16 * 1024;

/// How long a stream may sit unchanged before the ledger warns of a leak, by default.
pub(crate) const DEFAULT_STREAM_LEAK_WARNING: Duration = Duration::from_secs(60);

/// Configuration of the transport.
///
/// The defaults equal those of rust-libp2p's `libp2p-quic`, so that swapping one for the other
/// changes no transport parameter, except where quic-go's choices measured better: a 100 ms
/// initial RTT, a congestion window that starts at 32 packets, and no TLS session resumption
/// (as go-libp2p).
///
/// ```
/// let keypair = libp2p_identity::Keypair::generate_ed25519();
/// let mut config = libp2p_quinn::Config::new(&keypair);
/// config.max_concurrent_stream_limit = 64;
/// config.reset_on_drop = true;
/// ```
#[derive(Clone)]
pub struct Config {
    /// How long the TLS handshake of a new connection may take, dialing or accepting.
    /// The effective limit is the smaller of this and [`Config::max_idle_timeout`].
    /// Default: 5 s.
    pub handshake_timeout: Duration,
    /// A connection that has heard nothing from its peer for this long, in milliseconds, is
    /// closed. Default: 10 000 ms.
    pub max_idle_timeout: u32,
    /// When nothing was sent for this long, send a keep-alive packet. Must be below both peers'
    /// idle timeouts to be of use. Default: 5 s.
    pub keep_alive_interval: Duration,
    /// How many bidirectional streams the peer may have open to us at once: QUIC's
    /// `initial_max_streams_bidi`. A slot is given back only when both halves of a stream are
    /// done on our side (see `docs/stream-lifecycle.md`). Default: 256.
    pub max_concurrent_stream_limit: u32,
    /// Receive window of one stream, in bytes: how much the peer may send on a stream before we
    /// read it. Default: 10 000 000.
    pub max_stream_data: u32,
    /// Receive window of the whole connection, in bytes. Default: 15 000 000.
    pub max_connection_data: u32,
    /// The round-trip time assumed before the first sample: it sets how soon a lost first
    /// packet is sent again (about three times this). Default: 100 ms, as quic-go (quinn and
    /// RFC 9002 say 333 ms, which made a lost Initial cost a hole punch a second; see
    /// `docs/performance.md`).
    pub initial_rtt: Duration,
    /// The congestion controller of every connection. Default:
    /// [`CongestionControl::LossTolerantCubic`], CUBIC that does not back off for a loss the
    /// path shows no congestion for: on a path with 1 % random loss it moves over 20 times
    /// the bytes of [`CongestionControl::Cubic`] (`libp2p-quic`'s and quic-go's controller),
    /// and beside a CUBIC flow on a bottleneck whose queue overflows it takes half
    /// (`docs/performance.md`).
    pub congestion_control: CongestionControl,
    /// Whether to discover the path MTU above QUIC's 1200-byte minimum. Default: on.
    /// [`Config::disable_path_mtu_discovery`] clears it and [`Config::mtu_upper_bound`] sets
    /// it, as in `libp2p-quic`.
    pub mtu_discovery: bool,
    /// What dropping a [`Stream`](crate::Stream) whose send half was not closed does.
    ///
    /// `false` (default, as quinn, yamux and `libp2p-quic`): the send half is finished, so the
    /// peer reads a clean end of stream — unless the drop happens while the thread is
    /// panicking, which always resets. `true`: the send half is always reset, so a peer never
    /// takes a message cut short by a dropped writer for a complete one.
    pub reset_on_drop: bool,
    /// Keep the per-stream [ledger](crate::ledger) (states, ages, bytes, leak warnings).
    /// Switching it off leaves only the live-stream counters. Default: on.
    pub stream_ledger: bool,
    /// When opening an outbound stream has waited this long for stream credit from the peer,
    /// log a warning that names the peer and says who holds the streams. The open keeps
    /// waiting and is told again, backing off (at 1, 6 and 24 times this, then every 120 times:
    /// 5 s, 30 s, 2 min, then every 10 min by default); when it goes ahead, an `INFO` line says
    /// how long it waited. Default: 5 s.
    pub credit_wait_warning: Duration,
    /// A stream whose handle was dropped yet which QUIC still holds on our side after this
    /// long, or a live stream that carried nothing either way for this long, is reported as a
    /// possible leak: one warning per connection and kind in each leak scan (every quarter of
    /// this, and at least every 5 s), each stream at `DEBUG`; again only when its state changes.
    /// Default: 60 s.
    pub stream_leak_warning: Duration,
    /// Accepted and ignored: this transport speaks QUIC v1 only, as `libp2p-quic` now does by
    /// default. Kept so that code written for `libp2p-quic` compiles unchanged.
    #[deprecated(note = "QUIC draft versions are no longer supported")]
    pub support_draft_29: bool,
    /// How long each of the WebTransport listener's self-signed certificates is valid.
    /// Browsers accept at most 14 days, the default. A listener advertises the current and
    /// the next certificate's hash; the next takes over shortly before the current expires,
    /// and the listen addresses change with it (`AddressExpired`, then `NewAddress`). The
    /// certificates derive from the identity key and the time, so a restarted node keeps its
    /// addresses. Short lifetimes are for tests (at least 1 s is used).
    pub webtransport_certificate_lifetime: Duration,
    /// Which new connections a listener admits to a handshake, asks for a Retry, refuses or
    /// ignores, before it holds state for them: caps on handshakes in flight, per listener and
    /// per source subnet, and rates per subnet. Default: go-libp2p's limits, loopback exempt
    /// (see [`AdmissionConfig`] and `docs/admission.md`).
    pub admission: AdmissionConfig,

    /// The largest UDP payload MTU discovery may try; `None`: quinn's default (1452 bytes).
    mtu_upper_bound: Option<u16>,
    pub(crate) keypair: libp2p_identity::Keypair,
    client_tls: Arc<QuicClientConfig>,
    server_tls: Arc<QuicServerConfig>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

// The deprecated field is still set in `new` and shown by `Debug`.
#[allow(deprecated)]
impl Config {
    /// The default configuration for the node with this identity.
    pub fn new(keypair: &libp2p_identity::Keypair) -> Self {
        // Both only fail for an identity whose certificate cannot be made or a TLS provider
        // without the libp2p cipher suites; neither can happen with libp2p-tls's aws-lc-rs.
        let client_tls = libp2p_tls::make_client_config(keypair, None)
            .ok()
            .map(without_resumption_client)
            .and_then(|c| QuicClientConfig::try_from(c).ok())
            .expect("libp2p TLS client config is valid for QUIC");
        let server_tls = libp2p_tls::make_server_config(keypair)
            .ok()
            .map(without_resumption_server)
            .and_then(|c| QuicServerConfig::try_from(c).ok())
            .expect("libp2p TLS server config is valid for QUIC");
        Self {
            handshake_timeout: Duration::from_secs(5),
            max_idle_timeout: 10_000,
            keep_alive_interval: Duration::from_secs(5),
            max_concurrent_stream_limit: 256,
            max_stream_data: 10_000_000,
            max_connection_data: 15_000_000,
            initial_rtt: Duration::from_millis(100),
            congestion_control: CongestionControl::LossTolerantCubic,
            mtu_discovery: true,
            reset_on_drop: false,
            stream_ledger: true,
            credit_wait_warning: Duration::from_secs(5),
            stream_leak_warning: DEFAULT_STREAM_LEAK_WARNING,
            support_draft_29: false,
            webtransport_certificate_lifetime: DEFAULT_CERTIFICATE_LIFETIME,
            admission: AdmissionConfig::default(),
            mtu_upper_bound: None,
            keypair: keypair.clone(),
            client_tls: Arc::new(client_tls),
            server_tls: Arc::new(server_tls),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Bound the UDP payload size MTU discovery searches up to (quinn's default: 1452 bytes),
    /// for paths whose MTU is known to be smaller, such as 1420-byte tunnels (rust-libp2p
    /// #4647). Turns MTU discovery on, as `libp2p-quic`'s method of the same name does.
    pub fn mtu_upper_bound(mut self, value: u16) -> Self {
        self.mtu_discovery = true;
        self.mtu_upper_bound = Some(value);
        self
    }

    /// Send no MTU probes: packets stay within QUIC's 1200-byte minimum. The same as
    /// `mtu_discovery = false`, named as in `libp2p-quic`.
    pub fn disable_path_mtu_discovery(mut self) -> Self {
        self.mtu_discovery = false;
        self
    }

    /// Report stream counts, credit waits and leak warnings into these metrics.
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The peer id of the identity this config presents.
    pub fn local_peer_id(&self) -> libp2p_identity::PeerId {
        self.keypair.public().to_peer_id()
    }

    /// quinn's transport parameters: the same for both roles.
    pub(crate) fn transport_config(&self) -> quinn::TransportConfig {
        let mut transport = quinn::TransportConfig::default();
        // libp2p has no use for unidirectional streams or datagrams; offering none means a
        // peer cannot make us hold any.
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        transport.max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_stream_limit));
        transport.datagram_receive_buffer_size(None);
        transport.keep_alive_interval(Some(self.keep_alive_interval));
        transport.max_idle_timeout(Some(VarInt::from_u32(self.max_idle_timeout).into()));
        transport.allow_spin(false);
        transport.stream_receive_window(VarInt::from_u32(self.max_stream_data));
        transport.receive_window(VarInt::from_u32(self.max_connection_data));
        transport.mtu_discovery_config(self.mtu_discovery.then(|| self.mtu_discovery_config()));
        transport.initial_rtt(self.initial_rtt);
        transport.congestion_controller_factory(self.congestion_control.factory());
        // WebTransport wants its stream resets to keep the header (draft-ietf-webtrans-http3);
        // a QUIC connection on the same port gets the same parameters, and go-libp2p offers
        // it on both too.
        #[cfg(feature = "reset-stream-at")]
        transport.reset_stream_at(true);
        transport
    }

    /// The transport parameters of a connection that may speak HTTP/3: the peer's control and
    /// QPACK streams need unidirectional stream credit, and HTTP/3 datagrams (which browsers
    /// require for WebTransport) need QUIC datagrams. On a port that serves WebTransport,
    /// QUIC's connections get the same (ALPN comes after the parameters are fixed), as in
    /// go-libp2p.
    pub(crate) fn webtransport_transport_config(&self) -> quinn::TransportConfig {
        let mut transport = self.transport_config();
        transport.max_concurrent_uni_streams(VarInt::from_u32(WEBTRANSPORT_UNI_STREAMS));
        transport.datagram_receive_buffer_size(Some(WEBTRANSPORT_DATAGRAM_BUFFER));
        transport
    }

    /// The libp2p TLS server config (ALPN `libp2p`, mutual TLS).
    pub(crate) fn server_tls(&self) -> Arc<QuicServerConfig> {
        self.server_tls.clone()
    }

    fn mtu_discovery_config(&self) -> MtuDiscoveryConfig {
        let mut mtu = MtuDiscoveryConfig::default();
        if let Some(bound) = self.mtu_upper_bound {
            mtu.upper_bound(bound);
        }
        mtu
    }

    pub(crate) fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> quinn::ClientConfig {
        let mut client = quinn::ClientConfig::new(Reporting::new(self.client_tls.clone()));
        client.transport_config(transport);
        client
    }

    pub(crate) fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> quinn::ServerConfig {
        let mut server = quinn::ServerConfig::with_crypto(Reporting::new(self.server_tls.clone()));
        server.transport = transport;
        // A libp2p connection is bound to the addresses it was made on.
        server.migration(false);
        crate::admission::bound_incoming(&mut server);
        server
    }

    /// Endpoint settings: QUIC v1 only, and a stateless-reset key derived from our identity so
    /// that a restarted node can still reset its old connections (as `libp2p-quic` does).
    pub(crate) fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut endpoint = self
            .keypair
            .derive_secret(b"libp2p quic stateless reset key")
            .map(|secret| quinn::EndpointConfig::new(Arc::new(ResetKey::new(&secret))))
            .unwrap_or_default();
        endpoint.supported_versions(vec![1]);
        endpoint
    }
}

// libp2p's TLS without session resumption, as go-libp2p has it (`SessionTicketsDisabled`).
// libp2p-tls leaves rustls's defaults: a listener sends two tickets after every handshake and
// keeps up to 256 sessions (about a KiB each, with the client's certificate) that only a
// redial of the same peer could redeem, and a dialer keeps tickets under the one server name
// all libp2p peers share, offering one peer's ticket to the next. Each connection proves its
// peer id by a full handshake anyway.
fn without_resumption_server(mut config: rustls::ServerConfig) -> rustls::ServerConfig {
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config
}

fn without_resumption_client(mut config: rustls::ClientConfig) -> rustls::ClientConfig {
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// The stateless-reset key: HMAC-SHA256 of aws-lc-rs. Ours rather than quinn-proto's
/// implementation for aws-lc-rs's key, which it drops for ring's when anything in the build turns
/// on its `ring` feature.
struct ResetKey(aws_lc_rs::hmac::Key);

impl ResetKey {
    fn new(secret: &[u8]) -> Self {
        Self(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            secret,
        ))
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        signature_out.copy_from_slice(aws_lc_rs::hmac::sign(&self.0, data).as_ref());
    }

    fn signature_len(&self) -> usize {
        aws_lc_rs::hmac::HMAC_SHA256.digest_algorithm().output_len()
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        aws_lc_rs::hmac::verify(&self.0, data, signature).map_err(|_| quinn::crypto::CryptoError)
    }
}

#[allow(deprecated)]
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("local_peer_id", &self.keypair.public().to_peer_id())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_idle_timeout", &self.max_idle_timeout)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field(
                "max_concurrent_stream_limit",
                &self.max_concurrent_stream_limit,
            )
            .field("max_stream_data", &self.max_stream_data)
            .field("max_connection_data", &self.max_connection_data)
            .field("initial_rtt", &self.initial_rtt)
            .field("congestion_control", &self.congestion_control)
            .field("mtu_discovery", &self.mtu_discovery)
            .field("mtu_upper_bound", &self.mtu_upper_bound)
            .field("reset_on_drop", &self.reset_on_drop)
            .field("stream_ledger", &self.stream_ledger)
            .field("credit_wait_warning", &self.credit_wait_warning)
            .field("stream_leak_warning", &self.stream_leak_warning)
            .field("support_draft_29", &self.support_draft_29)
            .field(
                "webtransport_certificate_lifetime",
                &self.webtransport_certificate_lifetime,
            )
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// quinn's transport config says what it will do only through `Debug`.
    fn mtu_of(config: &Config) -> String {
        let text = format!("{:?}", config.transport_config());
        let start = text.find("mtu_discovery_config").unwrap();
        let end = text[start..]
            .find('}')
            .map_or(text.len(), |end| start + end + 1);
        text[start..end].to_owned()
    }

    #[test]
    fn the_stateless_reset_key_is_hmac_sha256() {
        // RFC 4231, test case 2: the tokens of a node are what they were with ring's HMAC, so
        // an upgraded node still resets the connections it had before its restart.
        let key = ResetKey::new(b"Jefe");
        let mut tag = [0; 32];
        assert_eq!(quinn::crypto::HmacKey::signature_len(&key), 32);
        quinn::crypto::HmacKey::sign(&key, b"what do ya want for nothing?", &mut tag);
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let verify = |tag: &[u8]| {
            quinn::crypto::HmacKey::verify(&key, b"what do ya want for nothing?", tag).is_ok()
        };
        assert!(verify(&tag));
        tag[0] ^= 1;
        assert!(!verify(&tag));
    }

    #[test]
    fn initial_rtt_and_congestion_control_reach_quinn() {
        let mut config = Config::new(&libp2p_identity::Keypair::generate_ed25519());
        config.initial_rtt = Duration::from_millis(77);
        let text = format!("{:?}", config.transport_config());
        assert!(text.contains("initial_rtt: 77ms"), "{text}");
        assert_eq!(
            Config::new(&libp2p_identity::Keypair::generate_ed25519()).congestion_control,
            CongestionControl::default()
        );
    }

    #[test]
    fn mtu_settings_reach_quinn_as_in_libp2p_quic() {
        let config = Config::new(&libp2p_identity::Keypair::generate_ed25519());
        assert!(
            mtu_of(&config).contains("upper_bound: 1452"),
            "{}",
            mtu_of(&config)
        );
        let bounded = config.clone().mtu_upper_bound(1420);
        assert!(
            mtu_of(&bounded).contains("upper_bound: 1420"),
            "{}",
            mtu_of(&bounded)
        );
        let off = bounded.clone().disable_path_mtu_discovery();
        assert!(mtu_of(&off).starts_with("mtu_discovery_config: None"));
        // Bounding turns discovery back on, keeping the bound.
        let on_again = off.mtu_upper_bound(1300);
        assert!(mtu_of(&on_again).contains("upper_bound: 1300"));
    }
}

#[cfg(test)]
mod resumption_tests {
    use std::sync::Arc;

    use rustls::{pki_types::ServerName, ClientConnection, HandshakeKind, ServerConnection};

    use super::{without_resumption_client, without_resumption_server};

    /// A TLS handshake in memory between these configs: how the server saw it.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
    ) -> HandshakeKind {
        // libp2p's TLS names no server: every peer is "l".
        let name = ServerName::try_from("l").unwrap();
        let mut client = ClientConnection::new(client.clone(), name).unwrap();
        let mut server = ServerConnection::new(server.clone()).unwrap();
        // Until both are done and nothing is left to send (tickets come after the handshake).
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
                break;
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        server.handshake_kind().unwrap()
    }

    /// libp2p-tls's configs for two identities, with ours where `ours_dial` / `ours_listen`.
    fn configs(
        ours_dial: bool,
        ours_listen: bool,
    ) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let (a, b) = (
            libp2p_identity::Keypair::generate_ed25519(),
            libp2p_identity::Keypair::generate_ed25519(),
        );
        let mut client = libp2p_tls::make_client_config(&a, None).unwrap();
        let mut server = libp2p_tls::make_server_config(&b).unwrap();
        if ours_dial {
            client = without_resumption_client(client);
        }
        if ours_listen {
            server = without_resumption_server(server);
        }
        (Arc::new(client), Arc::new(server))
    }

    #[test]
    fn libp2p_tls_alone_resumes_a_redial() {
        // The reason for the helpers: without them the second handshake is resumed.
        let (client, server) = configs(false, false);
        assert_eq!(handshake(&client, &server), HandshakeKind::Full);
        assert_eq!(handshake(&client, &server), HandshakeKind::Resumed);
    }

    #[test]
    fn our_redials_are_full_handshakes_whichever_side_is_ours() {
        for (ours_dials, ours_listens) in [(true, true), (true, false), (false, true)] {
            let (client, server) = configs(ours_dials, ours_listens);
            for _ in 0..3 {
                assert_eq!(handshake(&client, &server), HandshakeKind::Full);
            }
        }
    }
}
