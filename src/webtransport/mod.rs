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
//! - [`upgrade`]: the whole handshake, QUIC to Noise, into a [`Connection`](crate::Connection);
//! - [`codes`]: WebTransport's error codes inside HTTP/3's range.

pub(crate) mod certs;
pub(crate) mod codes;
pub(crate) mod h3;
pub(crate) mod upgrade;
pub(crate) mod verifier;

/// How a WebTransport session failed to start; inside [`Error::WebTransport`](crate::Error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebTransportError {
    /// The QUIC connection under the session failed.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer broke HTTP/3: bad or missing SETTINGS, a malformed CONNECT or answer.
    #[error("HTTP/3: {0}")]
    Http3(String),
    /// The server answered our CONNECT with this status.
    #[error("the server refused the WebTransport session: HTTP {status}")]
    Refused {
        /// The HTTP status.
        status: u16,
    },
    /// We refused a CONNECT for another path or session type, answering `status`.
    #[error("refused a CONNECT to {url}: answered HTTP {status}")]
    BadRequest {
        /// The requested URL.
        url: String,
        /// Our answer: 404 for another path, 400 for another type.
        status: u16,
    },
    /// The first stream of the session did not carry the session's header.
    #[error("the first stream of the session is not a WebTransport stream of it")]
    NoNoiseStream,
    /// The Noise handshake failed; with [`libp2p_noise::Error::UnknownWebTransportCerthashes`]
    /// when the listener does not know every certificate hash of the address we dialed.
    #[error("Noise handshake failed: {0}")]
    Noise(#[from] libp2p_noise::Error),
}
