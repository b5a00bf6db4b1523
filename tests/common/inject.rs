//! A hostile QUIC client for tests: it puts frames of the test's choosing on the wire, to see
//! how our listener answers a peer that breaks the rules (a RESET_STREAM for a stream that
//! does not exist, a final size that contradicts the data, a frame type it never agreed to).
//!
//! quinn sends only the frames it builds itself, and 1-RTT packets are encrypted, so neither
//! its API nor a UDP proxy can do this. Its crypto is pluggable, though: [`Injector`] wraps a
//! client's crypto config (quinn's rustls `QuicClientConfig`, say) and the key that seals the
//! client's 1-RTT packets, and rewrites a packet's plaintext just before it is sealed. The
//! test opens a *carrier* stream and writes marked bytes on it ([`Injector::inject`]); the
//! STREAM frame that carries them is replaced, header and all, by the test's frame followed by
//! PADDING to the same length. Everything else about the packet (its number, its length, the
//! other frames in it) is quinn's, so the peer sees a well-formed packet holding one frame
//! that quinn never wrote.
//!
//! What the client's quinn believes: that it sent the carrier's bytes. The peer never sees
//! them, and acknowledges the packet, so quinn counts them delivered. The peer counts fewer
//! bytes against the client's flow-control credit than quinn does, which only makes quinn stop
//! sooner than it must; it learns of the carrier stream from the RESET_STREAM sent when the
//! [`Injected`] is dropped (final size: the carrier's bytes, so the counts agree again), or
//! from a stream of a higher id (opening one opens the lower ones). If the packet is lost,
//! quinn retransmits the carrier's bytes, and the copy is rewritten the same way: the peer
//! gets the injected frame again, as it would from a real sender retransmitting it; the
//! carrier's bytes never reach it. Every copy is counted ([`Injected::copies`]). None of this
//! matters to a test whose frame ends the connection; a test that goes on should not count on
//! the carrier stream being absent or on the order of two injections that a loss separated.
//!
//! Only 1-RTT packets are rewritten: not Initial, Handshake or 0-RTT ones (0-RTT is off).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use libp2p::bytes::BytesMut;
use quinn::{
    crypto::{self, CryptoError, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey},
    ConnectionId, Side,
};
use quinn_proto::{transport_parameters::TransportParameters, TransportError};

use super::quic_frames;

/// The first bytes of a carrier stream: a STREAM frame of the carrier whose data starts
/// otherwise is not the test's, and is not rewritten.
const MARKER: &[u8] = b"<inject>";

/// Rewrites the 1-RTT packets of one client connection: create one per connection, make the
/// connection with [`Injector::client_config`], then [`Injector::inject`] frames on it.
#[derive(Clone, Default)]
pub struct Injector {
    shared: Arc<Mutex<Shared>>,
    /// Plans are keyed by stream id, which only names a stream within one connection.
    started: Arc<AtomicBool>,
}

#[derive(Default)]
struct Shared {
    plans: Vec<Plan>,
    /// What went wrong while rewriting: a packet the walker could not read, a carrier's first
    /// bytes split so that the frame did not fit. Said when a wait for a frame fails.
    problems: Vec<String>,
}

/// One frame to inject, and the carrier stream that takes it out.
struct Plan {
    carrier: u64,
    /// How many bytes the carrier's marked data is: its STREAM frames below this offset are
    /// the plan's.
    len: u64,
    frame: Vec<u8>,
    copies: tokio::sync::watch::Sender<usize>,
}

impl Injector {
    pub fn new() -> Self {
        Self::default()
    }

    /// A quinn client config whose crypto is `crypto` (e.g. `Arc::new(QuicClientConfig)`),
    /// with this injector's hand on its 1-RTT packets. Set its transport config as usual.
    ///
    /// # Panics
    ///
    /// quinn starting a second connection with it panics (in `Endpoint::connect`).
    pub fn client_config(&self, crypto: Arc<dyn crypto::ClientConfig>) -> quinn::ClientConfig {
        quinn::ClientConfig::new(Arc::new(Client {
            inner: crypto,
            injector: self.clone(),
        }))
    }

    /// Sends `frame` (any bytes: see [`quic_frames`] for encoders) in a 1-RTT packet of
    /// `connection`, which must have been made with [`Injector::client_config`]: opens a carrier
    /// stream (waiting for stream credit if need be) and writes `frame.len()` marked bytes on
    /// it; the packet that carries them carries `frame` instead, once that packet is built.
    /// Injections go out in the order they are made only if each waits for the previous one's
    /// [`Injected::sent`].
    pub async fn inject(&self, connection: &quinn::Connection, frame: Vec<u8>) -> Injected {
        let (mut send, recv) = connection.open_bi().await.expect("open a carrier stream");
        let carrier = send.id();
        // The carrier's data must be at least as long as the frame: then its STREAM frame is
        // too, whatever its header.
        let mut data = MARKER.to_vec();
        data.resize(frame.len().max(MARKER.len()), b'.');
        let (copies, watch) = tokio::sync::watch::channel(0);
        self.shared.lock().unwrap().plans.push(Plan {
            carrier: quinn::VarInt::from(carrier).into_inner(),
            len: data.len() as u64,
            frame,
            copies,
        });
        send.write_all(&data)
            .await
            .expect("write the carrier's bytes");
        Injected {
            copies: watch,
            carrier: send,
            _recv: recv,
            injector: self.clone(),
        }
    }

    /// What went wrong while rewriting packets, if anything.
    pub fn problems(&self) -> Vec<String> {
        self.shared.lock().unwrap().problems.clone()
    }
}

/// One injected frame. Dropping it resets its carrier stream (code 0): the peer, which never
/// saw the carrier's bytes, then knows their count without waiting for them.
pub struct Injected {
    copies: tokio::sync::watch::Receiver<usize>,
    carrier: quinn::SendStream,
    _recv: quinn::RecvStream,
    injector: Injector,
}

impl Injected {
    /// The carrier stream's id.
    pub fn carrier(&self) -> quinn::StreamId {
        self.carrier.id()
    }

    /// How many packets carried the frame so far: 1, or more if quinn retransmitted it.
    pub fn copies(&self) -> usize {
        *self.copies.borrow()
    }

    /// Waits until a packet carrying the frame has been sealed (it is on its way). Bounded by
    /// [`super::STEP`]; cancel-safe.
    ///
    /// # Panics
    ///
    /// If no packet carried it within the bound, with what went wrong.
    pub async fn sent(&mut self) {
        let wait = self.copies.wait_for(|&copies| copies > 0);
        if !matches!(tokio::time::timeout(super::STEP, wait).await, Ok(Ok(_))) {
            panic!(
                "no packet carried the injected frame (was the connection made with this \
                 injector's client_config?); problems: {:?}",
                self.injector.problems()
            );
        }
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        // Finishing it instead would leave the peer waiting for bytes it will never get.
        let _ = self.carrier.reset(quinn::VarInt::from_u32(0));
    }
}

impl Shared {
    /// Rewrites the plaintext `payload` of 1-RTT packet `packet` if it carries a plan's
    /// carrier: the frame at offset 0 becomes the plan's frame and PADDING; any other piece of
    /// the carrier's marked bytes (quinn split them) becomes PADDING.
    fn rewrite(&mut self, packet: u64, payload: &mut [u8]) {
        if self.plans.is_empty() {
            return;
        }
        let frames = match quic_frames::walk(payload) {
            Ok(frames) => frames,
            Err(error) => {
                self.problems
                    .push(format!("packet {packet} left as it was: {error}"));
                return;
            }
        };
        for frame in frames {
            let Some(stream) = frame.stream else {
                continue;
            };
            let Some(plan) = self.plans.iter().find(|plan| plan.carrier == stream.id) else {
                continue;
            };
            if stream.offset >= plan.len {
                continue;
            }
            let first = stream.offset == 0 && payload[stream.data].starts_with(MARKER);
            let fits = first && plan.frame.len() <= frame.range.len();
            let bytes = &mut payload[frame.range];
            bytes.fill(0);
            if fits {
                bytes[..plan.frame.len()].copy_from_slice(&plan.frame);
                plan.copies.send_modify(|copies| *copies += 1);
            } else if stream.offset == 0 {
                self.problems.push(format!(
                    "packet {packet}: stream {} starts with {} bytes, too few for the frame or \
                     not the marker; blanked",
                    stream.id,
                    bytes.len()
                ));
            }
        }
    }
}

/// The client crypto config: the inner one's, with sessions that hand out rewriting keys.
struct Client {
    inner: Arc<dyn crypto::ClientConfig>,
    injector: Injector,
}

impl crypto::ClientConfig for Client {
    fn start_session(
        self: Arc<Self>,
        version: u32,
        server_name: &str,
        params: &TransportParameters,
    ) -> Result<Box<dyn crypto::Session>, quinn::ConnectError> {
        assert!(
            !self.injector.started.swap(true, Ordering::SeqCst),
            "an Injector serves one connection"
        );
        let inner = self
            .inner
            .clone()
            .start_session(version, server_name, params)?;
        Ok(Box::new(Session {
            inner,
            key_sets: 0,
            shared: self.injector.shared.clone(),
        }))
    }
}

/// The inner session, everything delegated, but for the local 1-RTT packet keys.
struct Session {
    inner: Box<dyn crypto::Session>,
    /// How many key sets `write_handshake` has given.
    key_sets: u8,
    shared: Arc<Mutex<Shared>>,
}

impl Session {
    fn rewriting(&self, key: Box<dyn PacketKey>) -> Box<dyn PacketKey> {
        Box::new(RewritingKey {
            inner: key,
            shared: self.shared.clone(),
        })
    }
}

impl crypto::Session for Session {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn std::any::Any>> {
        self.inner.handshake_data()
    }

    fn peer_identity(&self) -> Option<Box<dyn std::any::Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        // 0-RTT packets are not rewritten: a test that wants them needs to wrap this key too.
        self.inner.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        self.inner.read_handshake(buf)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let mut keys = self.inner.write_handshake(buf)?;
        self.key_sets += 1;
        // A TLS 1.3 client's session gives the Handshake keys, then the 1-RTT keys (rustls's
        // `KeyChange::Handshake`, then `KeyChange::OneRtt`).
        if self.key_sets == 2 {
            keys.packet.local = self.rewriting(keys.packet.local);
        }
        Some(keys)
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        // A key update: the next 1-RTT keys are rewritten as the first were.
        let mut keys = self.inner.next_1rtt_keys()?;
        keys.local = self.rewriting(keys.local);
        Some(keys)
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

/// A 1-RTT packet key that rewrites the plaintext before sealing it.
struct RewritingKey {
    inner: Box<dyn PacketKey>,
    shared: Arc<Mutex<Shared>>,
}

impl PacketKey for RewritingKey {
    fn encrypt(&self, packet: u64, buf: &mut [u8], header_len: usize) {
        // `buf` is the header, the plaintext, and room for the tag.
        let end = buf.len() - self.inner.tag_len();
        self.shared
            .lock()
            .unwrap()
            .rewrite(packet, &mut buf[header_len..end]);
        self.inner.encrypt(packet, buf, header_len);
    }

    fn decrypt(
        &self,
        packet: u64,
        header: &[u8],
        payload: &mut BytesMut,
    ) -> Result<(), CryptoError> {
        self.inner.decrypt(packet, header, payload)
    }

    fn tag_len(&self) -> usize {
        self.inner.tag_len()
    }

    fn confidentiality_limit(&self) -> u64 {
        self.inner.confidentiality_limit()
    }

    fn integrity_limit(&self) -> u64 {
        self.inner.integrity_limit()
    }
}
