//! The key-exchange group each TLS handshake negotiated, as our side of it saw it.
//!
//! rustls knows it (`negotiated_key_exchange_group`), but quinn keeps its rustls connection to
//! itself. The group is also on the wire, in the clear: the `key_share` extension of the
//! ServerHello, the server's first handshake message (a HelloRetryRequest has the ServerHello's
//! form, and names the group the ServerHello after it must use). [`Reporting`] wraps a quinn
//! crypto config, client or server, so that its sessions read that message as it goes by (the
//! server writes it, the client reads it) and give the group with the handshake data
//! ([`HandshakeData`]) once the handshake is complete, when Finished has vouched for it.

use std::{any::Any, sync::Arc};

use quinn::{
    crypto::{
        self, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey, UnsupportedVersion,
    },
    ConnectError, ConnectionId, Side,
};
use quinn_proto::{transport_parameters::TransportParameters, TransportError};
use rustls::NamedGroup;

/// A ServerHello longer than this is not read (the handshake goes on; the group is unknown).
/// With an ML-KEM-768 share one is about 1.2 KiB.
const MAX_SERVER_HELLO: usize = 16 * 1024;

/// The TLS handshake message type of a ServerHello (and of a HelloRetryRequest).
const SERVER_HELLO: u8 = 2;

/// The TLS extension type of `key_share`.
const KEY_SHARE: u16 = 51;

/// What the handshake data of a [`Reporting`] session holds.
pub(crate) struct HandshakeData {
    /// The negotiated ALPN protocol, from quinn's `HandshakeData`.
    pub(crate) protocol: Option<Vec<u8>>,
    /// The key-exchange group, once the handshake is complete.
    pub(crate) key_exchange: Option<NamedGroup>,
}

/// The name of the group `connection`'s handshake negotiated ("X25519MLKEM768"), if its
/// crypto config was a [`Reporting`] one and the handshake is complete.
pub(crate) fn negotiated(connection: &quinn::Connection) -> Option<String> {
    let data = connection
        .handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?;
    // rustls's names for the groups it knows, `NamedGroup(0x…)` for others.
    data.key_exchange.map(|group| format!("{group:?}"))
}

/// A crypto config, server or client, whose sessions report their key-exchange group.
pub(crate) struct Reporting<C: ?Sized>(Arc<C>);

impl<C: ?Sized> Reporting<C> {
    pub(crate) fn new(inner: Arc<C>) -> Arc<Self> {
        Arc::new(Self(inner))
    }
}

impl<C: crypto::ServerConfig + ?Sized> crypto::ServerConfig for Reporting<C> {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.0.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.0.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        Box::new(Session::new(
            Side::Server,
            self.0.clone().start_session(version, params),
        ))
    }
}

impl<C: crypto::ClientConfig + ?Sized> crypto::ClientConfig for Reporting<C> {
    fn start_session(
        self: Arc<Self>,
        version: u32,
        server_name: &str,
        params: &TransportParameters,
    ) -> Result<Box<dyn crypto::Session>, ConnectError> {
        let inner = self.0.clone().start_session(version, server_name, params)?;
        Ok(Box::new(Session::new(Side::Client, inner)))
    }
}

/// A crypto session that reads the server's first handshake message on its way and otherwise
/// leaves everything to `inner`.
struct Session {
    inner: Box<dyn crypto::Session>,
    side: Side,
    hello: ServerHello,
}

impl Session {
    fn new(side: Side, inner: Box<dyn crypto::Session>) -> Self {
        Self {
            inner,
            side,
            hello: ServerHello::Reading(Vec::new()),
        }
    }
}

impl crypto::Session for Session {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        let protocol = self
            .inner
            .handshake_data()?
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()
            .and_then(|data| data.protocol);
        let key_exchange = match self.hello {
            ServerHello::Read(group) if !self.inner.is_handshaking() => group,
            _ => None,
        };
        Some(Box::new(HandshakeData {
            protocol,
            key_exchange,
        }))
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        if self.side.is_client() {
            self.hello.read(buf);
        }
        self.inner.read_handshake(buf)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let start = buf.len();
        let keys = self.inner.write_handshake(buf);
        if self.side.is_server() {
            self.hello.read(&buf[start..]);
        }
        keys
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

/// The server's first handshake message, read from the start of the server's CRYPTO bytes.
pub(crate) enum ServerHello {
    /// Its bytes so far.
    Reading(Vec<u8>),
    /// The group of its key share; `None` if it had none or was not a ServerHello (then the
    /// handshake fails, or made no key exchange).
    Read(Option<NamedGroup>),
}

impl ServerHello {
    pub(crate) fn read(&mut self, bytes: &[u8]) {
        let Self::Reading(message) = self else {
            return;
        };
        message.extend_from_slice(bytes);
        if let Some(group) = key_share_group(message) {
            *self = Self::Read(group);
        }
    }
}

/// `None` while `message` is not whole; then the group of its key share, if it is a
/// ServerHello that has one.
fn key_share_group(message: &[u8]) -> Option<Option<NamedGroup>> {
    let mut message = Reader(message);
    let (kind, length) = (message.u8()?, message.u24()?);
    if kind != SERVER_HELLO || length > MAX_SERVER_HELLO {
        return Some(None);
    }
    let body = message.take(length)?;
    Some(server_hello_group(Reader(body)))
}

/// RFC 8446, 4.1.3: the key share's group (both forms of the extension start with it).
fn server_hello_group(mut hello: Reader<'_>) -> Option<NamedGroup> {
    // legacy_version, random
    hello.take(2 + 32)?;
    let session_id = hello.u8()?;
    hello.take(session_id.into())?;
    // cipher_suite, legacy_compression_method
    hello.take(2 + 1)?;
    let length = hello.u16()?;
    let mut extensions = Reader(hello.take(length.into())?);
    while let Some(kind) = extensions.u16() {
        let length = extensions.u16()?;
        let mut data = Reader(extensions.take(length.into())?);
        if kind == KEY_SHARE {
            return data.u16().map(NamedGroup::from);
        }
    }
    None
}

/// Big-endian integers and slices off the front of a byte string.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize)
    }
}

#[cfg(test)]
mod tests;
