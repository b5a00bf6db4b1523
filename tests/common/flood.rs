//! A flood of QUIC Initials: valid client Initials, each with a fresh destination connection
//! id, so that every one is a new connection to the listener, sent from many source ports of
//! several source addresses; whatever the listener answers is never read.
//!
//! One ClientHello is made by rustls's QUIC client (our key-exchange provider, X25519 only so
//! that it fits one datagram, the ALPN of the route under attack, and transport parameters
//! that name the packets' source connection id, as the server checks). Each Initial seals it
//! anew: the Initial keys derive from the destination connection id (RFC 9001 §5.2), so a fresh
//! id costs an HKDF and one AES-GCM seal, not a TLS handshake. That is what an attacker pays,
//! and what lets one core send tens of thousands a second. A server that accepts such an
//! Initial has a complete ClientHello to answer and then waits for a client that never comes
//! back: a half-open connection for its handshake timeout.
//!
//! Bounded in count and time: [`Flood::run`] stops at `count` Initials or at twice the planned
//! duration, whichever comes first. Shared by `tests/admission.rs` and `examples/flood.rs`;
//! needs nothing of the rest of `tests/common`.
#![allow(dead_code)]

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    quic::{Keys, Version},
    Side,
};

/// Every Initial is padded to this, QUIC's minimum for a client's first datagram.
const DATAGRAM: usize = 1200;
/// The length of the connection ids we make.
const CID_LEN: usize = 8;

/// What to send, from where, to where.
#[derive(Debug, Clone)]
pub struct Flood {
    pub target: SocketAddr,
    /// Source addresses; sockets are bound to each.
    pub sources: Vec<IpAddr>,
    /// Sockets (source ports) per source address; the Initials go round them all.
    pub ports_per_source: usize,
    /// Initials in all.
    pub count: usize,
    /// Over how long, evenly paced.
    pub duration: Duration,
    /// Sending threads; each takes a share of the sockets and of the count.
    pub threads: usize,
    /// The ALPN the ClientHello offers: `b"libp2p"` for a QUIC route, `b"h3"` for WebTransport.
    pub alpn: Vec<u8>,
    /// Send only the first half of the ClientHello, as a client whose second datagram never
    /// comes: the server cannot even tell the ALPN.
    pub half_hello: bool,
}

/// What a flood did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    pub sent: usize,
    pub send_errors: usize,
    pub elapsed: Duration,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Flood {
    /// Bind the sockets and make the ClientHello; then [`Prepared::run`] sends.
    pub fn prepare(&self) -> io::Result<Prepared> {
        let mut sockets = Vec::with_capacity(self.sources.len() * self.ports_per_source);
        for _ in 0..self.ports_per_source {
            for ip in &self.sources {
                let socket = UdpSocket::bind(SocketAddr::new(*ip, 0))?;
                sockets.push(socket);
            }
        }
        let scid: [u8; CID_LEN] = rand::random();
        let mut hello = client_hello(&self.alpn, &scid)
            .map_err(|e| io::Error::other(format!("cannot make a ClientHello: {e}")))?;
        if self.half_hello {
            hello.truncate(hello.len() / 2);
        }
        Ok(Prepared {
            plan: self.clone(),
            sockets,
            sealer: Arc::new(Sealer::new(hello, scid)),
        })
    }

    /// Prepare and send, blocking this thread until done.
    pub fn run(&self) -> io::Result<Report> {
        self.prepare()?.run()
    }
}

/// A flood ready to go: its sockets bound, its ClientHello made.
pub struct Prepared {
    plan: Flood,
    sockets: Vec<UdpSocket>,
    sealer: Arc<Sealer>,
}

impl Prepared {
    /// Send, blocking until `count` Initials are out or twice the duration has passed.
    pub fn run(self) -> io::Result<Report> {
        let threads = self.plan.threads.clamp(1, self.sockets.len().max(1));
        let mut shares: Vec<Vec<UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, socket) in self.sockets.into_iter().enumerate() {
            shares[i % threads].push(socket);
        }
        let started = Instant::now();
        let handles: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(i, sockets)| {
                let count = self.plan.count / threads + usize::from(i < self.plan.count % threads);
                let (target, duration, sealer) =
                    (self.plan.target, self.plan.duration, self.sealer.clone());
                std::thread::Builder::new()
                    .name(format!("flood-{i}"))
                    .spawn(move || send(&sockets, target, count, duration, &sealer, started))
                    .expect("spawn a flood thread")
            })
            .collect();
        let mut report = Report::default();
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| io::Error::other("a flood thread panicked"))?;
            report.sent += part.sent;
            report.send_errors += part.send_errors;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// One thread's share: `count` Initials over `duration` from `sockets`, round-robin.
fn send(
    sockets: &[UdpSocket],
    target: SocketAddr,
    count: usize,
    duration: Duration,
    sealer: &Sealer,
    started: Instant,
) -> Report {
    let mut report = Report::default();
    if sockets.is_empty() || count == 0 {
        return report;
    }
    let interval = duration.as_secs_f64() / count as f64;
    let give_up = started + duration * 2 + Duration::from_secs(1);
    let mut datagram = Vec::with_capacity(DATAGRAM);
    for i in 0..count {
        // Paced: the i-th Initial leaves at its share of the duration, not before.
        let due = started + Duration::from_secs_f64(interval * i as f64);
        let now = Instant::now();
        if now >= give_up {
            break;
        }
        if due > now + Duration::from_millis(1) {
            std::thread::sleep(due - now);
        }
        let dcid: [u8; CID_LEN] = rand::random();
        sealer.seal(&dcid, &mut datagram);
        match sockets[i % sockets.len()].send_to(&datagram, target) {
            Ok(_) => report.sent += 1,
            Err(_) => report.send_errors += 1,
        }
    }
    report
}

/// Seals one ClientHello into Initial packets.
struct Sealer {
    /// The CRYPTO frame, PADDING after it left to the packet.
    crypto_frame: Vec<u8>,
    scid: [u8; CID_LEN],
    suite: &'static rustls::Tls13CipherSuite,
    quic: &'static dyn rustls::quic::Algorithm,
}

impl Sealer {
    fn new(hello: Vec<u8>, scid: [u8; CID_LEN]) -> Self {
        let mut crypto_frame = vec![0x06, 0x00];
        put_varint2(&mut crypto_frame, hello.len());
        crypto_frame.extend_from_slice(&hello);
        // Irrefutable while nothing in the build turns on rustls's TLS 1.2.
        #[allow(irrefutable_let_patterns)]
        let rustls::SupportedCipherSuite::Tls13(suite) =
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        else {
            unreachable!("a TLS 1.3 suite");
        };
        Self {
            crypto_frame,
            scid,
            suite,
            quic: suite.quic.expect("aws-lc-rs's suite has QUIC keys"),
        }
    }

    /// An Initial packet (number 0) to `dcid` carrying the ClientHello, in one datagram of
    /// [`DATAGRAM`] bytes: RFC 9000 §17.2.2, protected as RFC 9001 §5 says.
    fn seal(&self, dcid: &[u8], out: &mut Vec<u8>) {
        const PN_LEN: usize = 4;
        let keys = Keys::initial(Version::V1, self.suite, self.quic, dcid, Side::Client);
        let tag_len = keys.local.packet.tag_len();
        out.clear();
        // Long header, fixed bit, type Initial, a 4-byte packet number.
        out.push(0xc0 | (PN_LEN as u8 - 1));
        out.extend_from_slice(&1u32.to_be_bytes());
        out.push(dcid.len() as u8);
        out.extend_from_slice(dcid);
        out.push(self.scid.len() as u8);
        out.extend_from_slice(&self.scid);
        out.push(0); // no token
        let header_len = out.len() + 2;
        let payload_len = DATAGRAM - header_len - PN_LEN - tag_len;
        put_varint2(out, PN_LEN + payload_len + tag_len);
        let pn_offset = out.len();
        out.extend_from_slice(&[0; PN_LEN]);
        let payload_start = out.len();
        out.extend_from_slice(&self.crypto_frame);
        out.resize(payload_start + payload_len, 0); // PADDING
        let (header, payload) = out.split_at_mut(payload_start);
        let tag = keys
            .local
            .packet
            .encrypt_in_place(0, header, payload)
            .expect("an Initial's payload fits the AEAD");
        out.extend_from_slice(tag.as_ref());
        let mut sample = [0u8; 16];
        sample.copy_from_slice(&out[pn_offset + PN_LEN..pn_offset + PN_LEN + 16]);
        let (first, rest) = out.split_at_mut(1);
        keys.local
            .header
            .encrypt_in_place(
                &sample,
                &mut first[0],
                &mut rest[pn_offset - 1..pn_offset - 1 + PN_LEN],
            )
            .expect("a 16-byte sample and a 4-byte packet number");
        debug_assert_eq!(out.len(), DATAGRAM);
    }
}

/// `value` as a two-byte QUIC varint.
fn put_varint2(out: &mut Vec<u8>, value: usize) {
    assert!(value < 1 << 14);
    out.extend_from_slice(&(0x4000 | value as u16).to_be_bytes());
}

/// A ClientHello from rustls's QUIC client: TLS 1.3, X25519, `alpn`, and the one transport
/// parameter a server insists on, `initial_source_connection_id` = `scid`.
fn client_hello(alpn: &[u8], scid: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let mut params = vec![0x0f, scid.len() as u8];
    params.extend_from_slice(scid);
    let name = rustls::pki_types::ServerName::try_from("l").expect("a valid name");
    let mut client =
        rustls::quic::ClientConnection::new(Arc::new(config), Version::V1, name, params)?;
    let mut hello = Vec::new();
    client.write_hs(&mut hello);
    Ok(hello)
}
