//! The WebTransport handshake after QUIC's: the HTTP/3 session, then Noise XX on the session's
//! first stream, which proves the peer's identity and binds it to the listener's certificate
//! hashes (the `webtransport_certhashes` extension). Yields the same [`Connection`] as QUIC.

use std::{
    collections::HashSet,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::AsyncWriteExt;
use libp2p_core::{
    multihash::Multihash,
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade},
};
use libp2p_identity::PeerId;
use web_transport_proto::http::StatusCode;

use super::{
    certs::Certs,
    h3::{self, Header},
};
use crate::session::codes;
use crate::{Config, Error, PeerIdMismatch, WebTransportError};

/// Which end of the session we are.
pub(crate) enum Role {
    /// We answer the CONNECT, and send our certificates' hashes in Noise.
    Listener(Arc<Certs>),
    /// We send the CONNECT to `remote`, and check that the listener knows every hash of the
    /// address we dialed.
    Dialer {
        remote: SocketAddr,
        certhashes: Vec<Multihash<64>>,
    },
}

/// The whole handshake of a WebTransport connection (ALPN `h3`), within
/// `Config::handshake_timeout`: QUIC's, the HTTP/3 session, Noise. Yields the peer, the
/// connection and the header of the session's streams. However it fails, or if the future is
/// dropped half-way, the connection is closed.
pub(crate) async fn upgrade(
    connecting: quinn::Connecting,
    role: Role,
    expected_peer: Option<PeerId>,
    config: &Config,
) -> Result<(PeerId, quinn::Connection, Header), Error> {
    let addr = connecting.remote_address();
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let timed_out = || Error::HandshakeTimedOut { addr };
    let connection = match role {
        // The listener speaks first: its SETTINGS go out as 0.5-RTT data, beside its TLS
        // flight, so that the dialer can send its CONNECT as soon as its handshake is done
        // instead of a round trip later. Nothing the client sends is read before its TLS
        // handshake is complete (1-RTT packets wait for it), so this trusts it with nothing.
        Role::Listener(_) => match connecting.into_0rtt() {
            Ok((connection, _)) => connection,
            Err(connecting) => tokio::time::timeout_at(deadline, connecting)
                .await
                .map_err(|_| timed_out())??,
        },
        Role::Dialer { .. } => tokio::time::timeout_at(deadline, connecting)
            .await
            .map_err(|_| timed_out())??,
    };
    // The HTTP/3 tasks hold the connection too: close it ourselves unless the session starts.
    let mut unfinished = CloseOnDrop(Some(connection.clone()));
    let session = async {
        match role {
            Role::Listener(certs) => listen(&connection, &certs, config).await,
            Role::Dialer { remote, certhashes } => {
                dial(&connection, remote, certhashes, config).await
            }
        }
    };
    let (peer, header) = match tokio::time::timeout_at(deadline, session).await {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => return Err(Error::WebTransport(Box::new(error))),
        Err(_) => return Err(timed_out()),
    };
    if let Some(expected) = expected_peer.filter(|expected| *expected != peer) {
        return Err(Error::PeerIdMismatch(Box::new(PeerIdMismatch {
            expected,
            actual: peer,
        })));
    }
    unfinished.0 = None;
    Ok((peer, connection, header))
}

/// Closes a connection whose handshake did not finish.
struct CloseOnDrop(Option<quinn::Connection>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            connection.close(h3::H3_NO_ERROR.into(), b"WebTransport handshake failed");
        }
    }
}

/// The listener's side: answer the CONNECT, then Noise as the responder.
async fn listen(
    connection: &quinn::Connection,
    certs: &Certs,
    config: &Config,
) -> Result<(PeerId, Header), WebTransportError> {
    let request = h3::accept(connection).await?;
    if let Some(status) = refusal(&request.url) {
        let url = request.url.to_string();
        request.refuse(status, config.handshake_timeout).await;
        return Err(WebTransportError::BadRequest {
            url,
            status: status.as_u16(),
        });
    }
    let header = request.accept().await?;
    let first = connection.accept_bi().await?;
    let halves = header
        .accept(first, config.handshake_timeout)
        .await
        .ok_or(WebTransportError::NoNoiseStream)?;
    let noise = libp2p_noise::Config::new(&config.keypair)?
        .with_webtransport_certhashes(certs.noise_hashes());
    let (peer, mut output) = noise
        .upgrade_inbound(NoiseStream::new(halves, config), "/noise")
        .await?;
    let _ = output.close().await;
    Ok((peer, header))
}

/// Why a CONNECT is refused, if it is: libp2p serves one path, with `?type=noise`.
pub(crate) fn refusal(url: &url::Url) -> Option<StatusCode> {
    if url.path() != h3::PATH {
        return Some(StatusCode::NOT_FOUND);
    }
    let mut types = url.query_pairs().filter(|(key, _)| key == "type");
    match (types.next(), types.next()) {
        (Some((_, kind)), None) if kind == "noise" => None,
        _ => Some(StatusCode::BAD_REQUEST),
    }
}

/// The dialer's side: send the CONNECT, then Noise as the initiator.
async fn dial(
    connection: &quinn::Connection,
    remote: SocketAddr,
    certhashes: Vec<Multihash<64>>,
    config: &Config,
) -> Result<(PeerId, Header), WebTransportError> {
    let (header, answer) = h3::connect(connection, connect_url(remote)).await?;
    // Noise's first message goes out right behind the CONNECT, not after its answer.
    let certhashes: HashSet<_> = certhashes.into_iter().collect();
    let noise = async {
        let halves = header.open(connection).await?;
        let noise =
            libp2p_noise::Config::new(&config.keypair)?.with_webtransport_certhashes(certhashes);
        let (peer, mut output) = noise
            .upgrade_outbound(NoiseStream::new(halves, config), "/noise")
            .await?;
        let _ = output.close().await;
        Ok::<_, WebTransportError>(peer)
    };
    let ((), peer) = futures::try_join!(answer.accepted(), noise)?;
    Ok((peer, header))
}

/// The URL of the dialer's CONNECT to `remote`.
pub(crate) fn connect_url(remote: SocketAddr) -> url::Url {
    let url = format!("https://{remote}{}?type=noise", h3::PATH);
    url::Url::parse(&url).expect("a socket address makes a valid URL")
}

/// The Noise stream: it lives only through the handshake, before the session's books exist, so
/// it is two bare quinn halves. Its send half finishes itself when dropped; its receive half is
/// read to the peer's FIN in the background rather than stopped: a STOP_SENDING that reaches a
/// browser still closing its side of the Noise stream fails its dial ("Received
/// STOP_SENDING").
struct NoiseStream {
    send: quinn::SendStream,
    recv: Option<quinn::RecvStream>,
    /// How long the peer may take to finish its side.
    linger: std::time::Duration,
}

impl NoiseStream {
    fn new((send, recv): (quinn::SendStream, quinn::RecvStream), config: &Config) -> Self {
        Self {
            send,
            recv: Some(recv),
            linger: config.handshake_timeout,
        }
    }
}

impl futures::AsyncRead for NoiseStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.recv.as_mut() {
            Some(recv) => futures::AsyncRead::poll_read(Pin::new(recv), cx, buf),
            None => Poll::Ready(Ok(0)),
        }
    }
}

impl futures::AsyncWrite for NoiseStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::AsyncWrite::poll_close(Pin::new(&mut self.send), cx)
    }
}

impl Drop for NoiseStream {
    fn drop(&mut self) {
        let (Some(mut recv), Ok(runtime)) =
            (self.recv.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let linger = self.linger;
        runtime.spawn(async move {
            let drained = tokio::time::timeout(linger, async {
                let mut buf = [0; 64];
                while let Ok(Some(_)) = recv.read(&mut buf).await {}
            });
            if drained.await.is_err() {
                let _ = recv.stop(codes::to_wire(0).try_into().unwrap_or_default());
            }
        });
    }
}
