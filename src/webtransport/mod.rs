//! WebTransport: libp2p over HTTP/3 sessions, for browsers (`/quic-v1/webtransport`).
//!
//! A WebTransport connection is a QUIC connection with ALPN `h3` that carries one HTTP/3
//! session. Its streams are QUIC streams with a short header in front; once the header is read
//! or written they are plain quinn halves, so the same [`Stream`](crate::Stream) guard, ledger,
//! watcher and warnings serve them as serve QUIC's.
//!
//! - [`certs`]: the self-signed certificates browsers check by hash, and their rotation;
//! - [`verifier`]: the dialer's check of a listener's certificate against the address's hashes;
//! - [`h3`]: SETTINGS, the extended CONNECT, stream headers;
//! - [`upgrade`]: the whole handshake, QUIC to Noise, whose result becomes a
//!   [`Connection`](crate::Connection).

pub(crate) mod certs;
pub(crate) mod h3;
pub(crate) mod upgrade;
pub(crate) mod verifier;

use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};

/// The crypto provider of WebTransport's TLS, listener and dialer: aws-lc-rs, as libp2p-tls
/// uses for `/quic-v1`, so that both kinds of connection on a port negotiate the same key
/// exchange. The hybrid post-quantum X25519MLKEM768 first (Chromium and go offer it), then
/// X25519 for clients without it, then the NIST curves (ring's provider took them too, so a
/// client that offers only those still connects).
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    use aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
    Arc::new(CryptoProvider {
        kx_groups: vec![X25519MLKEM768, X25519, SECP256R1, SECP384R1],
        ..aws_lc_rs::default_provider()
    })
}
