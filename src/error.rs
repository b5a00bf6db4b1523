//! [`Error`], one variant per way the transport or a connection fails, and the mapping of
//! stream errors onto [`std::io::Error`] at the `AsyncRead`/`AsyncWrite` boundary.

use std::{io, net::SocketAddr};

use libp2p_identity::PeerId;

/// Errors of the [`Transport`](crate::tokio::Transport) and of a [`Connection`](crate::Connection).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket could not be bound or used.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// quinn refused to start a connection to this address.
    #[error("cannot dial {addr}: {source}")]
    Connect {
        /// The address dialed.
        addr: SocketAddr,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectError,
    },
    /// The connection failed or was closed.
    #[error("connection failed: {0}")]
    Connection(Box<quinn::ConnectionError>),
    /// The TLS handshake did not complete within [`Config::handshake_timeout`](crate::Config),
    /// or a hole punch to `addr` saw no connection from its peer in that time.
    #[error("handshake with {addr} timed out")]
    HandshakeTimedOut {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// The dial address named one peer (`/p2p/…`) and another answered.
    #[error("{0}")]
    PeerIdMismatch(Box<PeerIdMismatch>),
    /// The peer's certificate is not a valid libp2p certificate.
    #[error("invalid peer certificate: {0}")]
    InvalidCertificate(String),
    /// A dial as listener (hole punching) needs a listener of the same address family.
    #[error("no active listener to dial from")]
    NoActiveListenerForDialAsListener,
    /// A dial as listener to this address is under way already.
    #[error("already punching a hole to {0}")]
    HolePunchInProgress(SocketAddr),
    /// A WebTransport session did not start: HTTP/3, the CONNECT, or Noise failed.
    #[error("WebTransport: {0}")]
    WebTransport(Box<WebTransportError>),
}

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

/// The peers of an [`Error::PeerIdMismatch`]. Boxed: two peer ids are 160 bytes, and every
/// `Result` of the transport and the muxer (a stream opened, say) would be that big too.
#[derive(Debug, thiserror::Error)]
#[error("dialed peer {expected} but {actual} answered")]
pub struct PeerIdMismatch {
    /// The peer named in the dial address.
    pub expected: PeerId,
    /// The peer whose certificate was presented.
    pub actual: PeerId,
}

impl From<quinn::ConnectionError> for Error {
    fn from(e: quinn::ConnectionError) -> Self {
        Error::Connection(Box::new(e))
    }
}

/// What ended a stream operation; carried inside the `io::Error` that `AsyncRead` and
/// `AsyncWrite` return (`io::Error::get_ref` and downcast to see it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer abandoned its send half with RESET_STREAM.
    #[error("stream reset by peer (code {0})")]
    ResetByPeer(u64),
    /// The peer no longer reads our send half (STOP_SENDING).
    #[error("stream stopped by peer (code {0})")]
    StoppedByPeer(u64),
    /// The connection is gone.
    #[error("connection lost: {0}")]
    ConnectionLost(quinn::ConnectionError),
    /// This half was already finished, reset or stopped by us.
    #[error("stream half already closed")]
    Closed,
}

/// Why [`Stream::reset_at`](crate::Stream::reset_at) did not reset the stream.
#[cfg(feature = "reset-stream-at")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResetAtError {
    /// The peer did not advertise RESET_STREAM_AT (draft-ietf-quic-reliable-stream-reset).
    #[error("the peer does not accept RESET_STREAM_AT")]
    Unsupported,
    /// The reliable size is more than the data written.
    #[error("reliable size beyond the data written")]
    BeyondWritten,
    /// Our send half was already reset.
    #[error("stream already reset")]
    AlreadyReset,
}

#[cfg(feature = "reset-stream-at")]
impl From<quinn::ResetAtError> for ResetAtError {
    fn from(e: quinn::ResetAtError) -> Self {
        match e {
            quinn::ResetAtError::Unsupported => ResetAtError::Unsupported,
            quinn::ResetAtError::BeyondWritten => ResetAtError::BeyondWritten,
            quinn::ResetAtError::RaisesReliableSize | quinn::ResetAtError::ClosedStream => {
                ResetAtError::AlreadyReset
            }
        }
    }
}

impl StreamError {
    /// The `io::ErrorKind` that rust-libp2p code matches on for this failure (the same kinds
    /// quinn and `libp2p-quic` use).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            StreamError::ResetByPeer(_) | StreamError::StoppedByPeer(_) => {
                io::ErrorKind::ConnectionReset
            }
            StreamError::ConnectionLost(_) | StreamError::Closed => io::ErrorKind::NotConnected,
        }
    }
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        io::Error::new(e.kind(), e)
    }
}

impl From<quinn::ReadError> for StreamError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => StreamError::ResetByPeer(code.into_inner()),
            quinn::ReadError::ConnectionLost(e) => StreamError::ConnectionLost(e),
            quinn::ReadError::ClosedStream
            | quinn::ReadError::IllegalOrderedRead
            | quinn::ReadError::ZeroRttRejected => StreamError::Closed,
        }
    }
}

impl From<quinn::WriteError> for StreamError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => StreamError::StoppedByPeer(code.into_inner()),
            quinn::WriteError::ConnectionLost(e) => StreamError::ConnectionLost(e),
            quinn::WriteError::ClosedStream | quinn::WriteError::ZeroRttRejected => {
                StreamError::Closed
            }
        }
    }
}

impl From<Error> for libp2p_core::transport::TransportError<Error> {
    fn from(e: Error) -> Self {
        libp2p_core::transport::TransportError::Other(e)
    }
}
