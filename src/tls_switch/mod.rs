//! One QUIC port, two TLS setups chosen by the client's ALPN: `libp2p` (mutual TLS with the
//! libp2p certificate) and `h3` (WebTransport: a pinned certificate, no client certificate).
//!
//! quinn fixes the crypto config when a connection's first packet arrives, before any TLS byte
//! is read, and rustls fixes the client-certificate policy per config: neither lets the ALPN
//! choose. [`AlpnSwitch`] does: its session holds the Initial CRYPTO bytes until the whole
//! ClientHello is in, reads the offered ALPN with rustls's own parser, then starts the chosen
//! config's session and replays the bytes into it. This is go's `GetConfigForClient`.

use std::{any::Any, sync::Arc};

use quinn::{
    crypto::{
        self,
        rustls::{HandshakeData, QuicServerConfig},
        ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey, ServerConfig as _,
        UnsupportedVersion,
    },
    ConnectionId, Side, TransportErrorCode,
};
use quinn_proto::{transport_parameters::TransportParameters, TransportError};

/// A ClientHello longer than this is refused before it is buffered. QUIC sets no limit; real
/// ones, post-quantum key shares included, stay under 4 KiB.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// TLS alerts, sent as QUIC CRYPTO_ERROR codes.
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_DECODE_ERROR: u8 = 50;

/// The TLS handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;

/// Routes each handshake to the rustls config of the first ALPN, in the client's order of
/// preference, that has a route (go-libp2p's quicreuse prefers the client's order too). A client
/// offering none of them gets the first route, whose config refuses it with
/// `no_application_protocol`.
pub(crate) struct AlpnSwitch {
    routes: Vec<(Vec<u8>, Arc<QuicServerConfig>)>,
}

impl AlpnSwitch {
    /// # Panics
    ///
    /// If `routes` is empty.
    pub(crate) fn new(routes: Vec<(Vec<u8>, Arc<QuicServerConfig>)>) -> Self {
        assert!(!routes.is_empty(), "an ALPN switch needs a route");
        Self { routes }
    }

    fn fallback(&self) -> &Arc<QuicServerConfig> {
        &self.routes[0].1
    }

    /// The route for a client offering `offered`: its ALPN (`None` for the fallback) and config.
    fn route(&self, offered: &[Vec<u8>]) -> (Option<&[u8]>, &Arc<QuicServerConfig>) {
        offered
            .iter()
            .find_map(|protocol| self.routes.iter().find(|(alpn, _)| alpn == protocol))
            .map_or((None, self.fallback()), |(alpn, config)| {
                (Some(alpn.as_slice()), config)
            })
    }
}

impl crypto::ServerConfig for AlpnSwitch {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        // Initial keys depend only on the version and the client's connection id, not on the
        // config: any route gives the same.
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
            routed_by: None,
        })
    }
}

/// Before the whole ClientHello is in, a buffer (`inner` is `None`); after, the chosen route's
/// session, to which everything is delegated.
struct SwitchSession {
    switch: Arc<AlpnSwitch>,
    version: u32,
    params: TransportParameters,
    hello: Vec<u8>,
    inner: Option<Box<dyn crypto::Session>>,
    /// The ALPN of the chosen route, if the client offered it.
    routed_by: Option<Vec<u8>>,
}

impl SwitchSession {
    /// Buffers `buf`; the length of the ClientHello once it is whole.
    fn buffer(&mut self, buf: &[u8]) -> Result<Option<usize>, TransportError> {
        self.hello.extend_from_slice(buf);
        // A handshake message: type, 24-bit length, body.
        match self.hello.first() {
            None => return Ok(None),
            Some(&CLIENT_HELLO) => {}
            Some(_) => {
                return Err(crypto_error(
                    ALERT_UNEXPECTED_MESSAGE,
                    "expected a ClientHello",
                ))
            }
        }
        let Some(length) = self.hello.get(1..4) else {
            return Ok(None);
        };
        let length = 4 + u32::from_be_bytes([0, length[0], length[1], length[2]]) as usize;
        if length > MAX_CLIENT_HELLO {
            return Err(crypto_error(ALERT_DECODE_ERROR, "ClientHello too long"));
        }
        Ok((self.hello.len() >= length).then_some(length))
    }
}

impl crypto::Session for SwitchSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        match &self.inner {
            Some(inner) => inner.initial_keys(dst_cid, side),
            None => self
                .switch
                .fallback()
                .initial_keys(self.version, dst_cid)
                .expect("quinn starts a session only for a version the config supports"),
        }
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        let data = self.inner.as_ref()?.handshake_data()?;
        // quinn reports a ClientHello answered with a HelloRetryRequest before rustls chooses
        // the ALPN, which it does from the second ClientHello: report the one we routed by.
        // The route's config serves that protocol alone, so it negotiates it or nothing.
        match data.downcast::<HandshakeData>() {
            Ok(mut data) => {
                if data.protocol.is_none() {
                    data.protocol.clone_from(&self.routed_by);
                }
                Some(data)
            }
            Err(data) => Some(data),
        }
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
        self.inner
            .as_ref()
            .is_none_or(|inner| inner.is_handshaking())
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        if let Some(inner) = &mut self.inner {
            return inner.read_handshake(buf);
        }
        let Some(length) = self.buffer(buf)? else {
            return Ok(false);
        };
        let offered = offered_alpn(&self.hello[..length])?;
        let (alpn, config) = self.switch.route(&offered);
        self.routed_by = alpn.map(<[u8]>::to_vec);
        let config = config.clone();
        let inner = self
            .inner
            .insert(config.start_session(self.version, &self.params));
        inner.read_handshake(&std::mem::take(&mut self.hello))
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        // quinn asks only once Handshake keys exist, so only of the inner session.
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
        // Only a client checks a Retry; a server's session never gets one.
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

/// The ALPN protocols offered by `hello`, one whole ClientHello message, as rustls parses them:
/// rustls reads TLS records, so the message goes in as plaintext handshake records.
fn offered_alpn(hello: &[u8]) -> Result<Vec<Vec<u8>>, TransportError> {
    let mut acceptor = rustls::server::Acceptor::default();
    // A record holds at most 2^14 bytes.
    for fragment in hello.chunks(1 << 14) {
        let mut record = Vec::with_capacity(5 + fragment.len());
        // Content type handshake, legacy version TLS 1.0 (what a first record carries).
        record.extend_from_slice(&[22, 3, 1]);
        record.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        record.extend_from_slice(fragment);
        let mut unread = &record[..];
        while !unread.is_empty() {
            acceptor
                .read_tls(&mut unread)
                .map_err(|e| crypto_error(ALERT_DECODE_ERROR, format!("ClientHello: {e}")))?;
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(accepted
            .client_hello()
            .alpn()
            .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
            .unwrap_or_default()),
        Ok(None) => Err(crypto_error(ALERT_DECODE_ERROR, "ClientHello incomplete")),
        Err((e, _)) => Err(crypto_error(
            ALERT_DECODE_ERROR,
            format!("ClientHello: {e}"),
        )),
    }
}

fn crypto_error(alert: u8, reason: impl Into<String>) -> TransportError {
    TransportError {
        code: TransportErrorCode::crypto(alert),
        frame: None,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;
