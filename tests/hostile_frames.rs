//! Clients that put forbidden frames on the wire (`common::inject`): our listener fails the
//! connection with the QUIC error code RFC 9000 names, its muxer says so with a typed error,
//! the connection leaves the books, and the next client is served. Over QUIC and WebTransport:
//! the answer is quinn's, below either.

mod common;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use common::{
    h3_client,
    inject::{Injected, Injector},
    quic_frames, *,
};
use futures::{future::poll_fn, AsyncReadExt};
use libp2p_core::{muxing::StreamMuxer, Multiaddr, Transport as _};
use libp2p_identity::Keypair;
use libp2p_quinn::{tokio::Transport, Connection, Error};
use quinn::{ConnectionError, TransportErrorCode};

/// Our first bidirectional stream (server-initiated: 1, 5, 9, …), which we never open here, and
/// our first unidirectional one (3, 7, …), which is send-only for us (over WebTransport, our
/// HTTP/3 control stream; over QUIC, never opened: the peer gives us no credit for it).
const OUR_FIRST_BIDI: u64 = 1;
const OUR_FIRST_UNI: u64 = 3;

/// Bounds a whole test, each step of which `bounded` bounds too.
async fn whole<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s")
}

async fn listener(on: &str) -> (Transport, Multiaddr) {
    init_tracing();
    let mut transport = transport();
    let addr = listen(&mut transport, on).await;
    (transport, addr)
}

/// A connection up between a hostile client and our listener.
struct Hostile {
    injector: Injector,
    client: quinn::Connection,
    /// What a stream of the client starts with: WebTransport's stream header, or nothing.
    header: Vec<u8>,
    ours: Connection,
    _kept: Box<dyn std::any::Any>,
}

/// A hostile client connected to `listener` over QUIC (`libp2p` TLS with a client certificate)
/// or WebTransport (HTTP/3 and Noise), once our side holds the connection: injecting before
/// would race our handshake.
async fn hostile(listener: &mut Transport, addr: &Multiaddr, on: &str) -> Hostile {
    let injector = Injector::new();
    let server = socket_of(addr);
    if on == QUIC {
        let tls = libp2p_tls::make_client_config(&Keypair::generate_ed25519(), None).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let client = h3_client::connect_with(server, injector.client_config(Arc::new(crypto)));
        let ((endpoint, client), (_, ours)) = bounded("QUIC up", async {
            futures::join!(client, accept(listener))
        })
        .await;
        Hostile {
            injector,
            client: client.expect("QUIC handshake"),
            header: Vec::new(),
            ours,
            _kept: Box::new(endpoint),
        }
    } else {
        let crypto = Arc::new(h3_client::client_crypto(b"h3"));
        let client = h3_client::session(server, injector.client_config(crypto));
        let (session, (_, ours)) = bounded("session up", async {
            futures::join!(client, accept(listener))
        })
        .await;
        Hostile {
            injector,
            client: session.connection.clone(),
            header: session.header.clone(),
            ours,
            _kept: Box::new(session),
        }
    }
}

impl Hostile {
    /// Injects `frame` and waits until a packet carrying it is on its way.
    async fn inject(&self, frame: Vec<u8>) -> Injected {
        let mut injected = self.injector.inject(&self.client, frame).await;
        injected.sent().await;
        injected
    }

    /// Our muxer's next inbound stream, or its error once the connection is gone.
    async fn our_next(&mut self) -> Result<libp2p_quinn::Stream, Error> {
        bounded(
            "our side's next stream or error",
            poll_fn(|cx| Pin::new(&mut self.ours).poll_inbound(cx)),
        )
        .await
    }

    /// Both sides' view of the end: the client is told `code` and one of `reasons` (quinn's
    /// words for the rule the frame broke) in the listener's CONNECTION_CLOSE, and our muxer
    /// fails with the same code as a transport error.
    async fn fails_with(mut self, code: TransportErrorCode, reasons: &[&str]) {
        let closed = bounded("the listener closes", self.client.closed()).await;
        match &closed {
            ConnectionError::ConnectionClosed(close) => {
                assert_eq!(close.error_code, code, "{close:?}");
                assert!(
                    reasons.iter().any(|r| close.reason == r.as_bytes()),
                    "{close:?}"
                );
            }
            other => panic!("expected the listener's CONNECTION_CLOSE, got {other:?}"),
        }
        let ours = loop {
            // A stream the client opened before may still come out first.
            if let Err(error) = self.our_next().await {
                break error;
            }
        };
        match &ours {
            Error::Connection(error) => match &**error {
                ConnectionError::TransportError(error) => {
                    assert_eq!(error.code, code, "{error:?}")
                }
                other => panic!("expected a transport error on our side, got {other:?}"),
            },
            other => panic!("expected a connection error on our side, got {other:?}"),
        }
        assert!(
            self.injector.problems().is_empty(),
            "{:?}",
            self.injector.problems()
        );
    }
}

/// After the hostile connections are gone, a good client dials, and a request and its reply
/// cross on a stream; the books hold only it.
async fn still_serves(listener: &mut Transport, addr: &Multiaddr) {
    let ledgers = listener.ledgers();
    eventually("the hostile connections leave the books", || {
        ledgers.snapshot().is_empty()
    })
    .await;
    let mut client = transport();
    let dial = client.dial(addr.clone(), dial_opts()).unwrap();
    let (dialed, (client_id, accepted)) = futures::join!(bounded("dial", dial), accept(listener));
    let (listener_id, dialed) = dialed.expect("a good client still gets in");
    let dialer = Peer::new(client_id, listener_id, dialed, client.ledgers());
    let mut acceptor = Peer::new(listener_id, client_id, accepted, listener.ledgers());
    exchange(&dialer, &mut acceptor).await;
    assert_eq!(ledgers.snapshot().len(), 1, "only the good client");
}

/// RESET_STREAM for our first bidirectional stream, which we never opened, and for our first
/// unidirectional stream, on which we only send: STREAM_STATE_ERROR (RFC 9000 §19.4).
async fn reset_of_a_stream_we_cannot_receive_on(on: &str) {
    let (mut listener, addr) = listener(on).await;
    for (stream, reason) in [
        (OUR_FIRST_BIDI, "operation on unopened stream"),
        (OUR_FIRST_UNI, "illegal operation on send-only stream"),
    ] {
        let hostile = hostile(&mut listener, &addr, on).await;
        let _injected = hostile
            .inject(quic_frames::reset_stream(stream, 0, 0))
            .await;
        hostile
            .fails_with(TransportErrorCode::STREAM_STATE_ERROR, &[reason])
            .await;
    }
    still_serves(&mut listener, &addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_a_stream_we_never_opened_or_only_send_on_is_a_stream_state_error_over_quic() {
    whole(reset_of_a_stream_we_cannot_receive_on(QUIC)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_a_stream_we_never_opened_or_only_send_on_is_a_stream_state_error_over_webtransport(
) {
    whole(reset_of_a_stream_we_cannot_receive_on(WEBTRANSPORT)).await;
}

const SENT: usize = 100;

/// The client sends `SENT` bytes on a stream (after the header, for WebTransport), and our side
/// reads them: they have arrived. Then RESET_STREAM says the stream ended at 10 bytes:
/// FINAL_SIZE_ERROR (RFC 9000 §4.5).
async fn reset_below_the_data_received(on: &str) {
    let (mut listener, addr) = listener(on).await;
    let mut hostile = hostile(&mut listener, &addr, on).await;
    let (send, _recv) = h3_client::open(&hostile.client, &hostile.header, &[7; SENT]).await;
    let mut ours = hostile.our_next().await.expect("our side takes the stream");
    let mut received = [0; SENT];
    bounded("our side reads the data", ours.read_exact(&mut received))
        .await
        .unwrap();
    let id = quinn::VarInt::from(send.id()).into_inner();
    let header = hostile.header.len() as u64;
    let frame = quic_frames::reset_stream(id, 0, header + 10);
    let _injected = hostile.inject(frame).await;
    hostile
        .fails_with(
            TransportErrorCode::FINAL_SIZE_ERROR,
            &["lower than high water mark"],
        )
        .await;
    drop((ours, send));
    still_serves(&mut listener, &addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_whose_final_size_is_below_the_data_received_is_a_final_size_error_over_quic() {
    whole(reset_below_the_data_received(QUIC)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_whose_final_size_is_below_the_data_received_is_a_final_size_error_over_webtransport(
) {
    whole(reset_below_the_data_received(WEBTRANSPORT)).await;
}

/// The client sends `SENT` bytes and FIN, and waits until our side acknowledged them all: the
/// final size is known. Then a STREAM frame with FIN at 10 bytes: FINAL_SIZE_ERROR (RFC 9000
/// §4.5). Our side holds the stream unread meanwhile (reading it to the end would free it, and
/// a frame for a freed stream is ignored).
async fn fin_that_moves_the_final_size(on: &str) {
    let (mut listener, addr) = listener(on).await;
    let mut hostile = hostile(&mut listener, &addr, on).await;
    let (mut send, _recv) = h3_client::open(&hostile.client, &hostile.header, &[7; SENT]).await;
    send.finish().unwrap();
    let (ours, stopped) = futures::join!(hostile.our_next(), async {
        bounded("our side's quinn acknowledges every byte", send.stopped()).await
    });
    let ours = ours.expect("our side takes the stream");
    assert_eq!(stopped.unwrap(), None, "all acknowledged, not stopped");
    let id = quinn::VarInt::from(send.id()).into_inner();
    let header = hostile.header.clone();
    let frame = quic_frames::stream(id, 0, &[header.as_slice(), &[7; 10]].concat(), true);
    let _injected = hostile.inject(frame).await;
    hostile
        .fails_with(TransportErrorCode::FINAL_SIZE_ERROR, &[""])
        .await;
    drop(ours);
    still_serves(&mut listener, &addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fin_that_moves_a_known_final_size_is_a_final_size_error_over_quic() {
    whole(fin_that_moves_the_final_size(QUIC)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fin_that_moves_a_known_final_size_is_a_final_size_error_over_webtransport() {
    whole(fin_that_moves_the_final_size(WEBTRANSPORT)).await;
}

/// A frame type nobody has assigned: the receiver cannot even tell its length.
/// FRAME_ENCODING_ERROR (RFC 9000 §12.4).
const UNASSIGNED: u64 = 0x21;

async fn unknown_frame_type(on: &str) {
    let (mut listener, addr) = listener(on).await;
    let hostile = hostile(&mut listener, &addr, on).await;
    let _injected = hostile
        .inject(quic_frames::frame(UNASSIGNED, &[1, 2, 3]))
        .await;
    hostile
        .fails_with(
            TransportErrorCode::FRAME_ENCODING_ERROR,
            &["invalid frame ID"],
        )
        .await;
    still_serves(&mut listener, &addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_frame_type_is_a_frame_encoding_error_over_quic() {
    whole(unknown_frame_type(QUIC)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_frame_type_is_a_frame_encoding_error_over_webtransport() {
    whole(unknown_frame_type(WEBTRANSPORT)).await;
}

/// RESET_STREAM_AT (0x24), well formed, for a stream the client has sent on, to our `/quic-v1`
/// listener, which does not offer the `reset_stream_at` transport parameter: to it the frame
/// type is unknown, FRAME_ENCODING_ERROR (RFC 9000 §12.4; the draft's negotiation). Stock quinn
/// does not know the type at all; the quinn in third_party/ knows it and refuses it.
#[cfg(not(feature = "reset-stream-at"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_stream_at_to_a_quic_listener_that_did_not_offer_it_is_a_frame_encoding_error() {
    whole(async {
        let (mut listener, addr) = listener(QUIC).await;
        let mut hostile = hostile(&mut listener, &addr, QUIC).await;
        let (send, _recv) = h3_client::open(&hostile.client, &[], &[7; SENT]).await;
        let ours = hostile.our_next().await.expect("our side takes the stream");
        let id = quinn::VarInt::from(send.id()).into_inner();
        let frame = quic_frames::reset_stream_at(id, 0, SENT as u64, 10);
        let _injected = hostile.inject(frame).await;
        hostile
            .fails_with(
                TransportErrorCode::FRAME_ENCODING_ERROR,
                &[
                    "invalid frame ID",
                    "RESET_STREAM_AT without the reset_stream_at transport parameter",
                ],
            )
            .await;
        drop((ours, send));
        still_serves(&mut listener, &addr).await;
    })
    .await;
}

/// RESET_STREAM_AT (draft-ietf-quic-reliable-stream-reset) that breaks the draft's rules, to a
/// listener that offers the frame (feature `reset-stream-at`): each is refused with the draft's
/// error, and what the draft says to ignore is ignored.
#[cfg(feature = "reset-stream-at")]
mod reset_stream_at {
    use super::*;
    use libp2p_quinn::StreamError;

    /// The client's stream with `SENT` bytes (after the header), taken by our side.
    async fn a_stream(
        hostile: &mut Hostile,
    ) -> (
        quinn::SendStream,
        quinn::RecvStream,
        libp2p_quinn::Stream,
        u64,
    ) {
        let (send, recv) = h3_client::open(&hostile.client, &hostile.header, &[7; SENT]).await;
        let ours = hostile.our_next().await.expect("our side takes the stream");
        let id = quinn::VarInt::from(send.id()).into_inner();
        (send, recv, ours, id)
    }

    /// On our never-opened bidirectional stream and our send-only unidirectional one.
    async fn on_a_stream_we_cannot_receive_on(on: &str) {
        let (mut listener, addr) = listener(on).await;
        for (stream, reason) in [
            (OUR_FIRST_BIDI, "operation on unopened stream"),
            (OUR_FIRST_UNI, "illegal operation on send-only stream"),
        ] {
            let hostile = hostile(&mut listener, &addr, on).await;
            let frame = quic_frames::reset_stream_at(stream, 0, 10, 5);
            let _injected = hostile.inject(frame).await;
            hostile
                .fails_with(TransportErrorCode::STREAM_STATE_ERROR, &[reason])
                .await;
        }
        still_serves(&mut listener, &addr).await;
    }

    /// One rule broken on a stream the client sent `SENT` bytes on: the frames `frames` makes
    /// of the stream's id and header length, and the error the listener answers with.
    async fn broken(
        on: &str,
        frames: impl Fn(u64, u64) -> Vec<Vec<u8>>,
        code: TransportErrorCode,
        reason: &str,
    ) {
        let (mut listener, addr) = listener(on).await;
        let mut hostile = hostile(&mut listener, &addr, on).await;
        let (send, _recv, ours, id) = a_stream(&mut hostile).await;
        let header = hostile.header.len() as u64;
        let mut injected = Vec::new();
        for frame in frames(id, header) {
            injected.push(hostile.inject(frame).await);
        }
        hostile.fails_with(code, &[reason]).await;
        drop((ours, send, injected));
        still_serves(&mut listener, &addr).await;
    }

    async fn reliable_size_above_final_size(on: &str) {
        let frames = |id, header| {
            let end = header + SENT as u64;
            vec![quic_frames::reset_stream_at(id, 0, end, end + 1)]
        };
        broken(
            on,
            frames,
            TransportErrorCode::FRAME_ENCODING_ERROR,
            "malformed",
        )
        .await;
    }

    async fn final_size_below_the_data_received(on: &str) {
        let frames = |id, header| vec![quic_frames::reset_stream_at(id, 0, header + 10, 5)];
        let reason = "lower than high water mark";
        broken(on, frames, TransportErrorCode::FINAL_SIZE_ERROR, reason).await;
    }

    async fn a_second_frame_with_another_error_code(on: &str) {
        let frames = |id, header| {
            let end = header + SENT as u64;
            vec![
                quic_frames::reset_stream_at(id, 1, end, header + 50),
                quic_frames::reset_stream_at(id, 2, end, header + 40),
            ]
        };
        let reason = "reset with a different error code";
        broken(on, frames, TransportErrorCode::STREAM_STATE_ERROR, reason).await;
    }

    /// A client that did not offer the parameter itself may still send the frame (the parameter
    /// says what its sender accepts), and a later frame that raises the reliable size is
    /// ignored (the draft: it was reordered). Our side reads the smaller reliable size, then
    /// the reset; the connection lives on.
    async fn a_raised_reliable_size_is_ignored(on: &str) {
        let (mut listener, addr) = listener(on).await;
        let mut hostile = hostile(&mut listener, &addr, on).await;
        let (send, _recv, mut ours, id) = a_stream(&mut hostile).await;
        let header = hostile.header.len() as u64;
        let end = header + SENT as u64;
        let first = hostile
            .inject(quic_frames::reset_stream_at(id, 0, end, header + 40))
            .await;
        let second = hostile
            .inject(quic_frames::reset_stream_at(id, 0, end, header + 80))
            .await;
        let quinn = hostile.ours.quinn().clone();
        eventually("both frames arrive", || {
            quinn.stats().frame_rx.reset_stream_at >= 2
        })
        .await;
        let mut data = Vec::new();
        let error = bounded("our side reads to the reset", ours.read_to_end(&mut data))
            .await
            .unwrap_err();
        assert_eq!(data, [7; 40]);
        let error = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<StreamError>());
        assert_eq!(error, Some(&StreamError::ResetByPeer(0)));
        assert_eq!(
            hostile.client.close_reason(),
            None,
            "the connection lives on"
        );
        drop((ours, send, first, second, hostile));
        still_serves(&mut listener, &addr).await;
    }

    macro_rules! both {
        ($($name:ident: $case:ident;)*) => {
            mod quic {
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        whole($case(QUIC)).await;
                    }
                )*
            }
            mod webtransport {
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        whole($case(WEBTRANSPORT)).await;
                    }
                )*
            }
        };
    }

    both! {
        on_a_stream_never_opened_or_send_only_is_a_stream_state_error: on_a_stream_we_cannot_receive_on;
        a_reliable_size_above_the_final_size_is_a_frame_encoding_error: reliable_size_above_final_size;
        a_final_size_below_the_data_received_is_a_final_size_error: final_size_below_the_data_received;
        another_error_code_is_a_stream_state_error: a_second_frame_with_another_error_code;
        a_raised_reliable_size_is_ignored_and_the_frame_needs_only_our_parameter: a_raised_reliable_size_is_ignored;
    }
}

/// The walker reads every frame a quinn client puts in a 1-RTT packet, where quinn puts it.
#[test]
fn the_frame_walker_finds_each_frame_a_quinn_client_sends() {
    use quic_frames::{frame, put_varint};
    let mut payload = Vec::new();
    let mut expected = Vec::new();
    let mut push = |ty: u64, bytes: Vec<u8>| {
        let start = payload.len();
        payload.extend_from_slice(&bytes);
        expected.push((ty, start..payload.len()));
    };
    // ACK with one more range and ECN counts; a 2-byte varint among them.
    push(0x03, frame(0x03, &[1000, 25, 1, 3, 2, 5, 1, 2, 300]));
    push(0x01, frame(0x01, &[]));
    push(0x04, quic_frames::reset_stream(4, 1, 77));
    push(0x05, frame(0x05, &[8, 2]));
    let mut crypto = frame(0x06, &[0, 3]);
    crypto.extend_from_slice(b"abc");
    push(0x06, crypto);
    push(0x10, frame(0x10, &[1 << 20]));
    push(0x11, frame(0x11, &[0, 1 << 40]));
    push(0x12, frame(0x12, &[256]));
    push(0x14, frame(0x14, &[9]));
    push(0x15, frame(0x15, &[0, 9]));
    push(0x16, frame(0x16, &[256]));
    let mut new_cid = frame(0x18, &[2, 1]);
    new_cid.push(8);
    new_cid.extend_from_slice(&[0xaa; 8 + 16]);
    push(0x18, new_cid);
    push(0x19, frame(0x19, &[1]));
    let mut challenge = frame(0x1a, &[]);
    challenge.extend_from_slice(&[1; 8]);
    push(0x1a, challenge);
    push(0x1f, frame(0x1f, &[]));
    push(0xaf, frame(0xaf, &[1, 2, 25_000, 3]));
    push(0x24, quic_frames::reset_stream_at(4, 1, 1 << 16, 3));
    let mut datagram = frame(0x31, &[2]);
    datagram.extend_from_slice(b"hi");
    push(0x31, datagram);
    let mut close = frame(0x1d, &[0x100, 2]);
    close.extend_from_slice(b"no");
    push(0x1d, close);
    push(0x0f, quic_frames::stream(8, 5, b"data", true));
    // A STREAM frame without offset or length runs to the end of the packet.
    let mut last = Vec::new();
    put_varint(&mut last, 0x08);
    put_varint(&mut last, 12);
    last.extend_from_slice(b"the rest");
    push(0x08, last);
    let frames = quic_frames::walk(&payload).unwrap();
    let found: Vec<_> = frames.iter().map(|f| (f.ty, f.range.clone())).collect();
    assert_eq!(found, expected);
    let with_offset = frames[frames.len() - 2].stream.clone().unwrap();
    assert_eq!(
        (with_offset.id, with_offset.offset, with_offset.fin),
        (8, 5, true)
    );
    assert_eq!(&payload[with_offset.data], b"data");
    let to_the_end = frames[frames.len() - 1].stream.clone().unwrap();
    assert_eq!(
        (to_the_end.id, to_the_end.offset, to_the_end.fin),
        (12, 0, false)
    );
    assert_eq!(&payload[to_the_end.data], b"the rest");

    // A run of PADDING is one frame; a truncated or unknown frame stops the walk.
    let padded = [&[0u8; 5][..], &frame(0x01, &[])].concat();
    assert_eq!(quic_frames::walk(&padded).unwrap().len(), 2);
    assert!(matches!(
        quic_frames::walk(&frame(0x04, &[1, 2])),
        Err(quic_frames::WalkError::Truncated { at: 0 })
    ));
    assert!(matches!(
        quic_frames::walk(&[&padded[..], &frame(UNASSIGNED, &[1])].concat()),
        Err(quic_frames::WalkError::UnknownType {
            ty: UNASSIGNED,
            at: 6
        })
    ));
}
