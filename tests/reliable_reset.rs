//! Resets with a reliable size (RESET_STREAM_AT), ours to ours: a writer sends 100 KiB and
//! resets the stream at 10 KiB; the reader gets exactly those 10 KiB, then the reset code. Ten
//! times the stream limit of such streams in each direction, over WebTransport (whose header
//! comes first on the wire and must survive the reset) and over QUIC, on a clean path and through
//! 5% seeded loss; afterwards new streams still open and both ledgers are empty.

#![cfg(all(feature = "reset-stream-at", feature = "test-util"))]

mod common;

use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p_identity::Keypair;
use libp2p_quinn::{ResetAtError, Stream, StreamError};

const LIMIT: u32 = 16;
const STREAMS: usize = 10 * LIMIT as usize;
const WRITTEN: usize = 100 * 1024;
const RELIABLE: u64 = 10 * 1024;
const CODE: u32 = 42;

/// Byte `i` of every stream's data.
fn pattern(i: usize) -> u8 {
    (i * 31 % 251) as u8
}

/// What the reader got: every byte, then the error that ended the stream.
async fn read_until_reset(stream: &mut Stream) -> (Vec<u8>, Option<StreamError>) {
    let mut data = Vec::new();
    let error = stream.read_to_end(&mut data).await.err();
    let error = error.map(|e| {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<StreamError>())
            .cloned()
            .unwrap_or_else(|| panic!("not a stream error: {e:?}"))
    });
    (data, error)
}

async fn run(listen: &str, writer_is_dialer: bool, loss: f64) {
    init_tracing();
    let pair = pair_over(
        listen,
        config(&Keypair::generate_ed25519(), LIMIT),
        config(&Keypair::generate_ed25519(), LIMIT),
        loss,
    )
    .await;
    let Pair {
        mut dialer,
        mut listener,
        proxy,
        ..
    } = pair;
    let (writer, reader) = match writer_is_dialer {
        true => (&mut dialer, &mut listener),
        false => (&mut listener, &mut dialer),
    };
    let data: Vec<u8> = (0..WRITTEN).map(pattern).collect();

    for i in 0..STREAMS {
        let mut out = bounded("open", writer.open()).await;
        // quinn buffers the whole write at once, and on this one-thread runtime its connection
        // task cannot send between the write and the reset: no byte past the reliable size
        // ever leaves, so the reader gets exactly the reliable bytes, whatever it reads when.
        bounded("write", out.write_all(&data)).await.unwrap();
        out.reset_at(CODE, RELIABLE)
            .expect("the peer accepts RESET_STREAM_AT");
        let mut incoming = reader.accept().await;
        let (got, error) = bounded("read to the reset", read_until_reset(&mut incoming)).await;
        assert_eq!(got.len() as u64, RELIABLE, "stream {i}");
        assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i)));
        assert_eq!(error, Some(StreamError::ResetByPeer(CODE.into())));
        drop((out, incoming));
    }

    // Every reset was a RESET_STREAM_AT, and stream credit came back: new streams open both ways.
    assert_eq!(writer.quinn.stats().frame_tx.reset_stream, 0);
    exchange(&dialer, &mut listener).await;
    exchange(&listener, &mut dialer).await;
    for peer in [&dialer, &listener] {
        let books = peer.settled().await.expect("connection alive");
        assert_eq!(books.totals.opened.iter().sum::<u64>(), STREAMS as u64 + 2);
    }
    if loss > 0.0 {
        let dropped: u64 = proxy.expect("a lossy path").stats().dropped.iter().sum();
        assert!(dropped > 0, "the lossy path dropped nothing");
    }
}

macro_rules! reliable_reset_tests {
    ($($name:ident: $listen:expr, $writer_is_dialer:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                run($listen, $writer_is_dialer, 0.0).await;
            }
        )*
        mod lossy {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    run($listen, $writer_is_dialer, 0.05).await;
                }
            )*
        }
    };
}

reliable_reset_tests! {
    webtransport_dialer_writes: WEBTRANSPORT, true;
    webtransport_listener_writes: WEBTRANSPORT, false;
    quic_dialer_writes: QUIC, true;
    quic_listener_writes: QUIC, false;
}

/// The reliable size counts the application's bytes: more than were written is refused, and
/// a stream already reset cannot be reset again with one.
#[tokio::test]
async fn a_reliable_size_beyond_the_data_or_after_a_reset_is_refused() {
    let Pair {
        dialer,
        mut listener,
        ..
    } = pair_over(
        WEBTRANSPORT,
        config(&Keypair::generate_ed25519(), LIMIT),
        config(&Keypair::generate_ed25519(), LIMIT),
        0.0,
    )
    .await;
    let mut out = dialer.open().await;
    out.write_all(b"0123456789").await.unwrap();
    assert_eq!(out.reset_at(CODE, 11), Err(ResetAtError::BeyondWritten));
    out.reset_at(CODE, 10).unwrap();
    assert_eq!(out.reset_at(CODE, 5), Err(ResetAtError::AlreadyReset));
    let mut incoming = listener.accept().await;
    let (got, error) = bounded("read to the reset", read_until_reset(&mut incoming)).await;
    assert_eq!(got, b"0123456789");
    assert_eq!(error, Some(StreamError::ResetByPeer(CODE.into())));
}
