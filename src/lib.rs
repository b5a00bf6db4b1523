//! A libp2p QUIC transport on [quinn] whose streams never leak, and which says so, in words and
//! numbers, when a peer or an application does.
//!
//! A QUIC bidirectional stream is two independent halves, and a peer gets its stream credit
//! back only when both halves are done on the other side. libp2p thinks of a stream as one
//! thing. This crate closes the gap: a [`Stream`] is a guard that ends both halves on every
//! path, and a per-connection [`ledger`] knows what QUIC still holds, names leaks before
//! they become hangs, and feeds [metrics](crate::Metrics) (feature `metrics`).
//!
//! It swaps in for `libp2p-quic` in one line:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use libp2p_core::{transport::ListenerId, Transport as _};
//!
//! let keypair = libp2p_identity::Keypair::generate_ed25519();
//! let mut transport = libp2p_quinn::tokio::Transport::new(libp2p_quinn::Config::new(&keypair));
//! transport.listen_on(ListenerId::next(), "/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
//! # Ok(())
//! # }
//! ```
//!
//! QUIC brings its own encryption (libp2p TLS) and multiplexing, so the transport's output is
//! already a `(PeerId, Connection)`: do not upgrade it.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod address;
mod admission;
mod config;
mod congestion;
mod connection;
mod endpoint;
mod error;
// Internal: the fuzz targets' way in (fuzz/), not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hole_punch;
mod key_exchange;
pub mod ledger;
mod listener;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "qlog")]
mod qlog;
mod session;
mod stream;
#[cfg(feature = "test-util")]
pub mod test_util;
mod tls_switch;
mod transport;
mod watcher;
mod webtransport;

pub use address::{parse as parse_multiaddr, to_multiaddr};
pub use admission::{AdmissionConfig, AdmissionSnapshot, SubnetLimit};
pub use config::Config;
pub use congestion::CongestionControl;
pub use connection::{Connecting, Connection, Ledgers};
#[cfg(feature = "reset-stream-at")]
pub use error::ResetAtError;
pub use error::{Error, PeerIdMismatch, StreamError, WebTransportError};
#[cfg(feature = "metrics")]
pub use metrics::Metrics;
pub use session::ConnectionSnapshot;
pub use stream::{Closed, Stream};

/// The transport on the tokio runtime, named as in `libp2p-quic`.
pub mod tokio {
    pub use crate::transport::Transport;
}
