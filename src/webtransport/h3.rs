//! HTTP/3 as far as one WebTransport session needs it, on `web-transport-proto`'s codecs:
//! SETTINGS both ways, the extended CONNECT and its answer, and the header in front of each
//! session stream. Nothing wraps the streams: after the header they are plain quinn halves,
//! for the guard to own.
//!
//! Two small tasks live as long as the connection: one reads the peer's unidirectional streams
//! (its SETTINGS; its QPACK streams, which must stay open; anything else is stopped), the other
//! keeps our control stream open and ends the connection when the peer ends the session.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::oneshot,
};
use web_transport_proto::{
    http::StatusCode, ConnectError, ConnectRequest, ConnectResponse, Frame, Setting, Settings,
    SettingsError, StreamUni, VarInt,
};

pub(crate) use crate::session::codes::H3_NO_ERROR;
use crate::WebTransportError;

/// Where libp2p's WebTransport sessions are requested, with `?type=noise`.
pub(crate) const PATH: &str = "/.well-known/libp2p-webtransport";
/// A unidirectional stream of a type we do not serve.
const H3_STREAM_CREATION_ERROR: u32 = 0x103;
/// A request stream besides the CONNECT: we serve no other HTTP/3 request.
const H3_REQUEST_REJECTED: u32 = 0x10b;
/// A stream that ended before its header was complete.
const H3_REQUEST_INCOMPLETE: u32 = 0x10d;
/// A stream that names another session than the connection's one.
const WEBTRANSPORT_BUFFERED_STREAM_REJECTED: u32 = 0x3994_bd84;

/// What every stream of a session starts with: the WEBTRANSPORT_STREAM signal (0x41) and the
/// session's id (the CONNECT stream's id), each a QUIC varint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    bytes: [u8; 16],
    len: u8,
    session: u64,
}

impl Header {
    pub(crate) fn new(session: u64) -> Self {
        let mut encoded = Vec::with_capacity(16);
        varint(Frame::WEBTRANSPORT.0.into_inner()).encode(&mut encoded);
        varint(session).encode(&mut encoded);
        let mut bytes = [0; 16];
        bytes[..encoded.len()].copy_from_slice(&encoded);
        Self {
            bytes,
            len: encoded.len() as u8,
            session,
        }
    }

    /// The bytes an outbound stream starts with.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Open a stream of the session: its halves, the header written.
    pub(crate) async fn open(
        self,
        connection: &quinn::Connection,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
        let (mut send, recv) = connection.open_bi().await?;
        // A stream the peer stopped at once fails its first write; its reads tell the rest.
        let _ = send.write_all(self.as_bytes()).await;
        Ok((send, recv))
    }

    /// Read the header of a stream the peer opened: its halves when it belongs to the session,
    /// `None` (the stream refused) when it is an HTTP/3 request, another session's, ends or is
    /// reset before its header is in (its data is gone with the reset: whose it was cannot be
    /// told, so it never reaches the application, as in other WebTransport stacks), or its
    /// header does not come within `timeout`.
    pub(crate) async fn accept(
        self,
        (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
        timeout: Duration,
    ) -> Option<(quinn::SendStream, quinn::RecvStream)> {
        let read = self.read(&mut recv);
        // The header almost always came with the stream's first bytes: read it without a
        // timer then (arming one per stream costs churn a few percent).
        let read = {
            let mut read = std::pin::pin!(read);
            match (&mut read).now_or_never() {
                Some(done) => Ok(done),
                None => tokio::time::timeout(timeout, read).await,
            }
        };
        let refusal = match read {
            Ok(Ok(())) => return Some((send, recv)),
            Ok(Err(Some(code))) => code,
            Ok(Err(None)) => H3_REQUEST_INCOMPLETE,
            Err(_) => H3_REQUEST_REJECTED,
        };
        tracing::debug!(stream = %send.id(), code = refusal, "refused a stream outside the session");
        let _ = send.reset(refusal.into());
        let _ = recv.stop(refusal.into());
        None
    }

    /// Read the header from the front of `recv` and nothing past it: `Err(Some(code))` when
    /// it is not this session's (refused with `code`), `Err(None)` when the stream ends first.
    pub(crate) async fn read<R: AsyncRead + Unpin>(&self, recv: &mut R) -> Result<(), Option<u32>> {
        let signal = VarInt::read(recv).await.map_err(|_| None)?;
        if signal.into_inner() != Frame::WEBTRANSPORT.0.into_inner() {
            return Err(Some(H3_REQUEST_REJECTED));
        }
        let session = VarInt::read(recv).await.map_err(|_| None)?;
        if session.into_inner() != self.session {
            return Err(Some(WEBTRANSPORT_BUFFERED_STREAM_REJECTED));
        }
        Ok(())
    }
}

fn varint(value: u64) -> VarInt {
    VarInt::from_u64(value).expect("a QUIC stream id or frame type fits a varint")
}

/// SETTINGS_WT_ENABLED, draft-ietf-webtrans-http3-15's way to say a server serves WebTransport.
const SETTINGS_WT_ENABLED: u32 = 0x2c7c_f000;

/// Our SETTINGS: extended CONNECT, HTTP/3 datagrams and WebTransport, in the current and the
/// deprecated spellings (Chromium and webtransport-go each read one of them).
async fn send_settings(
    connection: &quinn::Connection,
) -> Result<quinn::SendStream, WebTransportError> {
    let mut control = connection.open_uni().await?;
    let mut settings = Settings::default();
    settings.enable_webtransport(1);
    // SETTINGS_WT_ENABLED (draft-ietf-webtrans-http3-15), which web-transport-proto 0.6 does not
    // send and webtransport-go v0.13's dialer requires
    settings.insert(
        Setting(VarInt::from_u32(SETTINGS_WT_ENABLED)),
        VarInt::from_u32(1),
    );
    settings
        .write(&mut control)
        .await
        .map_err(|e| WebTransportError::Http3(format!("cannot send SETTINGS: {e}")))?;
    Ok(control)
}

/// The peer's SETTINGS, once its control stream brings them.
async fn peer_settings(
    receiver: oneshot::Receiver<Settings>,
) -> Result<Settings, WebTransportError> {
    receiver
        .await
        .map_err(|_| WebTransportError::Http3("the peer sent no valid SETTINGS".into()))
}

/// A CONNECT request that has arrived, not yet answered.
pub(crate) struct Request {
    connection: quinn::Connection,
    pub(crate) url: url::Url,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    control: quinn::SendStream,
}

/// Serve HTTP/3 on a new connection until its CONNECT request is in.
pub(crate) async fn accept(connection: &quinn::Connection) -> Result<Request, WebTransportError> {
    let control = send_settings(connection).await?;
    let settings = read_peer_uni_streams(connection);
    let (send, mut recv) = connection.accept_bi().await?;
    let request = ConnectRequest::read(&mut recv)
        .await
        .map_err(|e| WebTransportError::Http3(format!("bad CONNECT request: {e}")))?;
    let settings = peer_settings(settings).await?;
    // webtransport-go's dialer (go-libp2p v0.48) announces only H3 datagrams, not WebTransport:
    // require what go's own server requires.
    if !h3_datagrams(&settings) {
        return Err(WebTransportError::Http3(
            "the client's SETTINGS lack H3_DATAGRAM".into(),
        ));
    }
    Ok(Request {
        connection: connection.clone(),
        url: request.url,
        send,
        recv,
        control,
    })
}

/// Whether `settings` enable HTTP/3 datagrams, in either spelling.
pub(crate) fn h3_datagrams(settings: &Settings) -> bool {
    [
        Setting::ENABLE_DATAGRAM,
        Setting::ENABLE_DATAGRAM_DEPRECATED,
    ]
    .iter()
    .any(|key| settings.get(key).map(|value| value.into_inner()) == Some(1))
}

impl Request {
    /// Answer the CONNECT with 200: the session's header.
    pub(crate) async fn accept(mut self) -> Result<Header, WebTransportError> {
        ConnectResponse::new(StatusCode::OK)
            .write(&mut self.send)
            .await
            .map_err(|e| WebTransportError::Http3(format!("cannot answer CONNECT: {e}")))?;
        let header = Header::new(quinn::VarInt::from(self.send.id()).into_inner());
        keep_session(self.connection, self.control, self.send, self.recv);
        Ok(header)
    }

    /// Answer the CONNECT with an error `status` and wait (within `timeout`) until the peer
    /// has it: closing the connection at once would discard the answer.
    pub(crate) async fn refuse(mut self, status: StatusCode, timeout: Duration) {
        if ConnectResponse::new(status)
            .write(&mut self.send)
            .await
            .is_ok()
        {
            let _ = self.send.finish();
            let _ = tokio::time::timeout(timeout, self.send.stopped()).await;
        }
        self.connection
            .close(H3_NO_ERROR.into(), b"WebTransport session refused");
    }
}

/// The client's side: SETTINGS both ways, then the extended CONNECT to `url`; the session's
/// header when the server answers 200.
pub(crate) async fn connect(
    connection: &quinn::Connection,
    url: url::Url,
) -> Result<(Header, Answer), WebTransportError> {
    let control = send_settings(connection).await?;
    let settings = peer_settings(read_peer_uni_streams(connection)).await?;
    if settings.supports_webtransport() == 0 {
        return Err(WebTransportError::Http3(
            "the server's SETTINGS do not enable WebTransport".into(),
        ));
    }
    let (mut send, recv) = connection.open_bi().await?;
    ConnectRequest::new(url)
        .write(&mut send)
        .await
        .map_err(|e| WebTransportError::Http3(e.to_string()))?;
    let header = Header::new(quinn::VarInt::from(send.id()).into_inner());
    let answer = Answer {
        connection: connection.clone(),
        control,
        send,
        recv,
    };
    Ok((header, answer))
}

/// A CONNECT on its way: the session's streams may be opened before the answer is in
/// (draft-ietf-webtrans-http3: the server buffers them), which saves the dialer a round trip.
pub(crate) struct Answer {
    connection: quinn::Connection,
    control: quinn::SendStream,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Answer {
    /// Waits for the answer; a 200 starts the session.
    pub(crate) async fn accepted(mut self) -> Result<(), WebTransportError> {
        match ConnectResponse::read(&mut self.recv).await {
            Ok(response) if response.status == StatusCode::OK => {}
            Ok(ConnectResponse { status, .. }) | Err(ConnectError::WrongStatus(Some(status))) => {
                return Err(WebTransportError::Refused {
                    status: status.as_u16(),
                })
            }
            Err(error) => return Err(WebTransportError::Http3(error.to_string())),
        }
        keep_session(self.connection, self.control, self.send, self.recv);
        Ok(())
    }
}

/// Read the peer's unidirectional streams for the connection's life; its SETTINGS arrive on
/// the receiver.
fn read_peer_uni_streams(connection: &quinn::Connection) -> oneshot::Receiver<Settings> {
    let (sender, receiver) = oneshot::channel();
    tokio::spawn(peer_uni_streams(connection.clone(), sender));
    receiver
}

async fn peer_uni_streams(connection: quinn::Connection, settings: oneshot::Sender<Settings>) {
    // Each stream on its own: one that never says its type must hold up no other. The peer
    // has five unidirectional streams of credit, so at most five wait.
    let settings = Arc::new(Mutex::new(Some(settings)));
    while let Ok(recv) = connection.accept_uni().await {
        tokio::spawn(peer_uni_stream(recv, settings.clone()));
    }
}

type SettingsSender = Arc<Mutex<Option<oneshot::Sender<Settings>>>>;

async fn peer_uni_stream(mut recv: quinn::RecvStream, settings: SettingsSender) {
    let Ok(kind) = VarInt::read(&mut recv).await else {
        return;
    };
    match StreamUni(kind) {
        StreamUni::CONTROL => {
            let sender = settings.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(sender) = sender {
                match control_settings(kind, &mut recv).await {
                    Ok(received) => {
                        let _ = sender.send(received);
                    }
                    Err(error) => tracing::debug!(%error, "bad HTTP/3 SETTINGS"),
                }
            }
            drain(recv).await;
        }
        // Closing either would be an error for the peer; we announce no dynamic table, so
        // little ever comes on them.
        StreamUni::QPACK_ENCODER | StreamUni::QPACK_DECODER => drain(recv).await,
        // WebTransport's own unidirectional streams included: libp2p uses none.
        _ => {
            let _ = recv.stop(H3_STREAM_CREATION_ERROR.into());
        }
    }
}

/// The SETTINGS that open a control stream whose type, `kind`, has been read from `recv`.
pub(crate) async fn control_settings<R: AsyncRead + Unpin>(
    kind: VarInt,
    recv: &mut R,
) -> Result<Settings, SettingsError> {
    // Settings::read wants the stream type, which we have read already.
    let mut typed = Vec::new();
    kind.encode(&mut typed);
    Settings::read(&mut (&typed[..]).chain(recv)).await
}

async fn drain(mut recv: quinn::RecvStream) {
    let mut buf = [0; 256];
    while let Ok(Some(_)) = recv.read(&mut buf).await {}
}

/// Keep our control stream and the CONNECT stream open while the session lasts; when the peer
/// ends the CONNECT stream (a FIN, a reset, or a CLOSE_WEBTRANSPORT_SESSION capsule followed
/// by its FIN), the session is over and so is the connection.
fn keep_session(
    connection: quinn::Connection,
    control: quinn::SendStream,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    tokio::spawn(async move {
        let _held = (control, send);
        // Capsules carry nothing libp2p needs; read past them to the end.
        let mut buf = [0; 256];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(_)) => continue,
                // Closing a lost connection would replace why it was lost with `LocallyClosed`
                Err(quinn::ReadError::ConnectionLost(_)) => return,
                Ok(None) | Err(_) => break,
            }
        }
        connection.close(H3_NO_ERROR.into(), b"WebTransport session ended");
    });
}
