//! [`AlpnSwitch`]: a quinn `crypto::ServerConfig` that reads the client's ClientHello before it
//! picks which rustls `ServerConfig` (certificate resolver, client-auth policy, ALPN list) runs
//! the handshake. This is Go's `tls.Config.GetConfigForClient`, for quinn.
//!
//! quinn fixes the `quinn::ServerConfig` (and so the crypto config) when the first Initial packet
//! arrives (`Incoming::accept_with`), before any TLS byte is parsed; rustls fixes the client
//! certificate verifier per `rustls::ServerConfig`. The session made here therefore starts
//! empty, buffers the CRYPTO bytes of the Initial space until one whole ClientHello is in, asks
//! rustls's own parser (`rustls::server::Acceptor`, fed the message wrapped in plaintext TLS
//! records) for the offered ALPN list, starts the chosen `QuicServerConfig`'s session with the
//! same version and transport parameters, and replays the bytes into it. From then on it only
//! delegates.

use std::{any::Any, sync::Arc};

use quinn::{
    crypto::{
        self, rustls::QuicServerConfig, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys,
        PacketKey, UnsupportedVersion,
    },
    ConnectionId, Side, TransportErrorCode,
};
use quinn::crypto::ServerConfig as _;
use quinn_proto::{transport_parameters::TransportParameters, TransportError};

/// A ClientHello larger than this is refused (QUIC puts no limit on it; 64 KiB is far above
/// anything a real client sends, post-quantum key shares included).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// TLS alerts, as QUIC CRYPTO_ERROR codes.
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_DECODE_ERROR: u8 = 50;

/// Routes a handshake to one of several rustls configs by the ALPN the client offers, in the
/// client's order of preference (as go-libp2p's `quicreuse` does). The first route is the
/// fallback: a client offering none of the protocols gets it, and its rustls config refuses the
/// handshake with `no_application_protocol`.
pub struct AlpnSwitch {
    routes: Vec<(Vec<u8>, Arc<QuicServerConfig>)>,
}

impl AlpnSwitch {
    pub fn new(routes: Vec<(Vec<u8>, Arc<QuicServerConfig>)>) -> Self {
        assert!(!routes.is_empty());
        Self { routes }
    }

    fn fallback(&self) -> &Arc<QuicServerConfig> {
        &self.routes[0].1
    }

    fn choose(&self, offered: &[Vec<u8>]) -> &Arc<QuicServerConfig> {
        offered
            .iter()
            .find_map(|p| self.routes.iter().find(|(alpn, _)| alpn == p))
            .map(|(_, config)| config)
            .unwrap_or(self.fallback())
    }
}

impl crypto::ServerConfig for AlpnSwitch {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        // Initial keys depend only on the version and the client's connection id.
        self.fallback().initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.fallback().retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        Box::new(SwitchSession {
            switch: self,
            version,
            params: *params,
            hello: Vec::new(),
            inner: None,
        })
    }
}

/// A server session that has not yet seen the whole ClientHello (`inner` is `None`), or the
/// chosen rustls session it delegates everything to.
struct SwitchSession {
    switch: Arc<AlpnSwitch>,
    version: u32,
    params: TransportParameters,
    hello: Vec<u8>,
    inner: Option<Box<dyn crypto::Session>>,
}

fn crypto_error(alert: u8, reason: impl Into<String>) -> TransportError {
    TransportError {
        code: TransportErrorCode::crypto(alert),
        frame: None,
        reason: reason.into(),
    }
}

/// The ALPN protocols offered in `hello` (one whole TLS handshake message: a ClientHello),
/// parsed by rustls itself.
pub fn offered_alpn(hello: &[u8]) -> Result<Vec<Vec<u8>>, TransportError> {
    let mut acceptor = rustls::server::Acceptor::default();
    for chunk in hello.chunks(16 * 1024) {
        // A plaintext TLS record of type handshake (22), legacy version 3.1.
        let mut record = Vec::with_capacity(5 + chunk.len());
        record.extend_from_slice(&[0x16, 0x03, 0x01]);
        record.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        record.extend_from_slice(chunk);
        let mut rd = &record[..];
        while !rd.is_empty() {
            acceptor
                .read_tls(&mut rd)
                .map_err(|e| crypto_error(ALERT_DECODE_ERROR, e.to_string()))?;
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(accepted
            .client_hello()
            .alpn()
            .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
            .unwrap_or_default()),
        Ok(None) => Err(crypto_error(ALERT_DECODE_ERROR, "incomplete ClientHello")),
        Err((e, _)) => Err(crypto_error(ALERT_DECODE_ERROR, format!("ClientHello: {e}"))),
    }
}

impl crypto::Session for SwitchSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        match &self.inner {
            Some(inner) => inner.initial_keys(dst_cid, side),
            None => {
                debug_assert!(side.is_server());
                self.switch
                    .fallback()
                    .initial_keys(self.version, dst_cid)
                    .expect("start_session is only called for a supported version")
            }
        }
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.inner.as_ref()?.handshake_data()
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.as_ref()?.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.as_ref()?.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.as_ref()?.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.as_ref().is_none_or(|inner| inner.is_handshaking())
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        if let Some(inner) = &mut self.inner {
            return inner.read_handshake(buf);
        }
        self.hello.extend_from_slice(buf);
        if self.hello.len() > MAX_CLIENT_HELLO {
            return Err(crypto_error(ALERT_DECODE_ERROR, "ClientHello too large"));
        }
        // A handshake message: type (1 = ClientHello), 24-bit length, body.
        let Some(header) = self.hello.get(..4) else {
            return Ok(false);
        };
        if header[0] != 1 {
            return Err(crypto_error(ALERT_UNEXPECTED_MESSAGE, "expected a ClientHello"));
        }
        let len = 4 + u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
        if self.hello.len() < len {
            return Ok(false);
        }
        let offered = offered_alpn(&self.hello[..len])?;
        let config = self.switch.choose(&offered).clone();
        let mut inner = crypto::ServerConfig::start_session(config, self.version, &self.params);
        let hello = std::mem::take(&mut self.hello);
        let result = inner.read_handshake(&hello);
        self.inner = Some(inner);
        result
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        match &self.inner {
            Some(inner) => inner.transport_parameters(),
            None => Ok(None),
        }
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.inner.as_mut()?.write_handshake(buf)
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.as_mut()?.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        // Only a client checks a Retry.
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.is_valid_retry(orig_dst_cid, header, payload))
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        match &self.inner {
            Some(inner) => inner.export_keying_material(output, label, context),
            None => Err(ExportKeyingMaterialError),
        }
    }
}
