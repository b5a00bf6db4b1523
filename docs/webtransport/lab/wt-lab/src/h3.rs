//! The server side of a WebTransport-over-HTTP/3 session on a quinn connection, from
//! `web-transport-proto`'s codecs (SETTINGS, QPACK-static HEADERS for the extended CONNECT and its
//! response, varints, the error-code mapping). Its streams are raw quinn halves: the 0x41 header
//! is written (open) or read (accept) here and nothing wraps the halves afterwards.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;
use web_transport_proto::{
    http::StatusCode, ConnectRequest, ConnectResponse, Frame, Settings, StreamUni, VarInt,
};

/// HTTP/3 error codes (RFC 9114, 8.1) and WebTransport's (draft-ietf-webtrans-http3).
pub const H3_NO_ERROR: u32 = 0x100;
pub const H3_STREAM_CREATION_ERROR: u32 = 0x103;
pub const WEBTRANSPORT_BUFFERED_STREAM_REJECTED: u32 = 0x3994_bd84;

/// An extended CONNECT that has arrived, not yet answered.
pub struct Request {
    conn: quinn::Connection,
    pub request: ConnectRequest,
    connect_send: quinn::SendStream,
    connect_recv: quinn::RecvStream,
    control: quinn::SendStream,
}

/// An accepted WebTransport session.
pub struct Session {
    conn: quinn::Connection,
    pub id: u64,
    header: Vec<u8>,
    // Held: closing either ends the session (the CONNECT stream) or the connection (control).
    _connect: (quinn::SendStream, quinn::RecvStream),
    _control: quinn::SendStream,
}

fn varint(x: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    VarInt::from_u64(x).expect("varint").encode(&mut buf);
    buf
}

/// Serve HTTP/3 on `conn` until the first request (the extended CONNECT) is in.
pub async fn accept(conn: &quinn::Connection) -> anyhow::Result<Request> {
    // Our control stream and SETTINGS (extended CONNECT, H3 datagrams, WebTransport: the current
    // and the deprecated settings, which Chromium and webtransport-go still read).
    let mut control = conn.open_uni().await?;
    let mut settings = Settings::default();
    settings.enable_webtransport(1);
    settings.write(&mut control).await?;

    // The peer's unidirectional streams.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(uni_streams(conn.clone(), tx));

    // The CONNECT request: the client's first bidirectional stream.
    let (connect_send, mut connect_recv) = conn.accept_bi().await?;
    let request = ConnectRequest::read(&mut connect_recv)
        .await
        .context("CONNECT request")?;
    let peer = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .context("no SETTINGS in time")??;
    // A client need not announce WebTransport: webtransport-go v0.10 (go-libp2p v0.48) sends
    // only H3_DATAGRAM and MAX_FIELD_SECTION_SIZE. Require what go's server requires: datagrams.
    if !h3_datagrams(&peer) {
        bail!("client's SETTINGS lack H3_DATAGRAM: {peer:?}");
    }
    Ok(Request {
        conn: conn.clone(),
        request,
        connect_send,
        connect_recv,
        control,
    })
}

fn h3_datagrams(s: &Settings) -> bool {
    use web_transport_proto::Setting;
    [Setting::ENABLE_DATAGRAM, Setting::ENABLE_DATAGRAM_DEPRECATED]
        .iter()
        .any(|k| s.get(k).map(|v| v.into_inner()) == Some(1))
}

/// The peer's control stream yields its SETTINGS; its QPACK streams are held and drained; any
/// other unidirectional stream (WebTransport's own 0x54 included: libp2p uses none) is stopped.
async fn uni_streams(conn: quinn::Connection, settings: tokio::sync::oneshot::Sender<Settings>) {
    let mut settings = Some(settings);
    while let Ok(mut recv) = conn.accept_uni().await {
        let Ok(typ) = VarInt::read(&mut recv).await else {
            continue;
        };
        match StreamUni(typ) {
            StreamUni::CONTROL => {
                let prefix = varint(typ.into_inner());
                let mut prefixed = (&prefix[..]).chain(&mut recv);
                match Settings::read(&mut prefixed).await {
                    Ok(s) => {
                        eprintln!("  h3: peer SETTINGS {s:?}");
                        if let Some(tx) = settings.take() {
                            let _ = tx.send(s);
                        }
                    }
                    Err(e) => eprintln!("  h3: bad SETTINGS: {e}"),
                }
                tokio::spawn(drain(recv));
            }
            StreamUni::QPACK_ENCODER | StreamUni::QPACK_DECODER => {
                tokio::spawn(drain(recv));
            }
            other => {
                eprintln!("  h3: stopping uni stream of type {:#x}", other.0.into_inner());
                let _ = recv.stop(H3_STREAM_CREATION_ERROR.into());
            }
        }
    }
}

async fn drain(mut recv: quinn::RecvStream) {
    let mut buf = [0u8; 1024];
    while let Ok(Some(_)) = recv.read(&mut buf).await {}
}

impl Request {
    /// Answer the CONNECT; a session for 200.
    pub async fn respond(mut self, status: StatusCode) -> anyhow::Result<Option<Session>> {
        ConnectResponse::new(status)
            .write(&mut self.connect_send)
            .await?;
        if status != StatusCode::OK {
            let _ = self.connect_send.finish();
            return Ok(None);
        }
        let id = quinn::VarInt::from(self.connect_send.id()).into_inner();
        let mut header = varint(Frame::WEBTRANSPORT.0.into_inner());
        header.extend(varint(id));
        Ok(Some(Session {
            conn: self.conn,
            id,
            header,
            _connect: (self.connect_send, self.connect_recv),
            _control: self.control,
        }))
    }
}

/// The client side: SETTINGS both ways, then the extended CONNECT to `url`; a session on 200.
pub async fn connect(conn: &quinn::Connection, url: url::Url) -> anyhow::Result<Session> {
    let mut control = conn.open_uni().await?;
    let mut settings = Settings::default();
    settings.enable_webtransport(1);
    settings.write(&mut control).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(uni_streams(conn.clone(), tx));
    let peer = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .context("no SETTINGS in time")??;
    if peer.supports_webtransport() == 0 {
        bail!("server's SETTINGS do not enable WebTransport: {peer:?}");
    }
    let (mut send, mut recv) = conn.open_bi().await?;
    ConnectRequest::new(url).write(&mut send).await?;
    let response = ConnectResponse::read(&mut recv).await?;
    if response.status != StatusCode::OK {
        bail!("CONNECT answered {}", response.status);
    }
    let id = quinn::VarInt::from(send.id()).into_inner();
    let mut header = varint(Frame::WEBTRANSPORT.0.into_inner());
    header.extend(varint(id));
    Ok(Session {
        conn: conn.clone(),
        id,
        header,
        _connect: (send, recv),
        _control: control,
    })
}

impl Session {
    /// The next bidirectional stream of the session, its header read: raw quinn halves.
    /// (A real muxer reads headers concurrently, so that one silent stream blocks no other.)
    pub async fn accept_bi(&self) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        loop {
            let (mut send, mut recv) = self.conn.accept_bi().await?;
            let Ok(signal) = VarInt::read(&mut recv).await else {
                continue;
            };
            if signal.into_inner() != Frame::WEBTRANSPORT.0.into_inner() {
                // An HTTP/3 request stream: we serve none besides the CONNECT.
                let _ = send.reset(H3_STREAM_CREATION_ERROR.into());
                let _ = recv.stop(H3_STREAM_CREATION_ERROR.into());
                continue;
            }
            let Ok(id) = VarInt::read(&mut recv).await else {
                continue;
            };
            if id.into_inner() != self.id {
                let _ = send.reset(WEBTRANSPORT_BUFFERED_STREAM_REJECTED.into());
                let _ = recv.stop(WEBTRANSPORT_BUFFERED_STREAM_REJECTED.into());
                continue;
            }
            return Ok((send, recv));
        }
    }

    /// Open a bidirectional stream of the session: raw quinn halves, header written.
    pub async fn open_bi(&self) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self.conn.open_bi().await?;
        send.write_all(&self.header).await?;
        Ok((send, recv))
    }
}

/// WebTransport application error code → the HTTP/3 code on the wire
/// (`0x52e4a40fa8db + e + e / 0x1e`).
pub fn to_wire(code: u32) -> quinn::VarInt {
    quinn::VarInt::from_u64(web_transport_proto::error_to_http3(code)).expect("in range")
}

/// The wire code back to the application's, if it is in WebTransport's range.
pub fn from_wire(code: quinn::VarInt) -> Option<u32> {
    web_transport_proto::error_from_http3(code.into_inner())
}
