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
