//! Stream-lifecycle tests: every way a stream can end, ten times past the stream limit, in both
//! directions. A leak shows as an open that never completes (the bounded wait fails the test)
//! or as a ledger that does not return to zero.

#![cfg(feature = "test-util")]

mod common;

use std::{sync::Arc, time::Instant};

use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p_identity::Keypair;
use libp2p_quinn::{Stream, StreamError};

pub const LIMIT: u32 = 16;
pub const STREAMS: usize = 10 * LIMIT as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Write, close, read the reply, drop.
    RequestResponse,
    /// Write, close, drop without reading the answer.
    FireAndForget,
    /// The acceptor drops the stream without reading it.
    AcceptorDropsUnread,
    /// The opener drops the stream without writing.
    OpenerDropsUnwritten,
    /// The writing task is aborted mid-write.
    AbortedWriter,
    /// The writing handler panics mid-write.
    PanickingWriter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    Dialer,
    Listener,
}

/// What the acceptor saw at the end of one stream's data.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    CleanEnd,
    Error,
    NotRead,
}

/// Over WebTransport with plain RESET_STREAM, a stream reset before its header arrives never
/// reaches the acceptor: its data is gone with the reset, and with it the header that says
/// whose stream it is (other WebTransport stacks drop it too). So there, without the
/// `reset-stream-at` feature, the aborting and panicking writers wait until the acceptor holds
/// their stream. With it, every reset is a RESET_STREAM_AT that still delivers the header, and
/// nobody waits: each reset stream must reach the acceptor by itself.
/// (`tests/webtransport_bad_input.rs` resets streams before their header on purpose.)
#[derive(Default)]
struct Arrivals {
    ids: std::sync::Mutex<std::collections::HashSet<u64>>,
    notify: tokio::sync::Notify,
}

impl Arrivals {
    async fn wait(&self, id: u64) {
        loop {
            let notified = self.notify.notified();
            if self.ids.lock().unwrap().contains(&id) {
                return;
            }
            notified.await;
        }
    }

    fn arrived(&self, id: u64) {
        self.ids.lock().unwrap().insert(id);
        self.notify.notify_waiters();
    }
}

async fn opener_side(case: Case, mut s: Stream, arrivals: Option<Arc<Arrivals>>) {
    match case {
        Case::RequestResponse => {
            s.write_all(b"request!").await.unwrap();
            s.close().await.unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"response");
        }
        Case::FireAndForget => {
            s.write_all(b"request!").await.unwrap();
            s.close().await.unwrap();
        }
        Case::AcceptorDropsUnread => {
            s.write_all(b"request!").await.unwrap();
            s.close().await.unwrap();
            let mut reply = Vec::new();
            // The acceptor finished its half on drop: a clean, empty end.
            s.read_to_end(&mut reply).await.unwrap();
            assert!(reply.is_empty());
        }
        Case::OpenerDropsUnwritten => drop(s),
        Case::AbortedWriter | Case::PanickingWriter => {
            let (wrote, wrote_rx) = futures::channel::oneshot::channel();
            let task = tokio::spawn(async move {
                s.write_all(&[7u8; 1024]).await.unwrap();
                if let Some(arrivals) = arrivals {
                    arrivals.wait(s.id()).await;
                }
                let _ = wrote.send(());
                if case == Case::PanickingWriter {
                    panic!("deliberate panic mid-write");
                }
                // Mid-message: wait for the rest of it, which never comes before the abort.
                std::future::pending::<()>().await;
                drop(s);
            });
            let _ = wrote_rx.await;
            if case == Case::AbortedWriter {
                task.abort();
            }
            let _ = task.await;
        }
    }
}

async fn acceptor_side(case: Case, mut s: Stream, arrivals: Option<Arc<Arrivals>>) -> Seen {
    match case {
        Case::RequestResponse | Case::FireAndForget => {
            let mut request = Vec::new();
            s.read_to_end(&mut request).await.unwrap();
            assert_eq!(request, b"request!");
            // The fire-and-forget opener may have stopped reading already.
            let _ = s.write_all(b"response").await;
            let _ = s.close().await;
            Seen::CleanEnd
        }
        Case::AcceptorDropsUnread => Seen::NotRead,
        Case::OpenerDropsUnwritten | Case::AbortedWriter | Case::PanickingWriter => {
            if let Some(arrivals) = arrivals {
                arrivals.arrived(s.id());
            }
            let mut data = Vec::new();
            match s.read_to_end(&mut data).await {
                Ok(_) => Seen::CleanEnd,
                Err(e) => {
                    let inner = e.get_ref().and_then(|e| e.downcast_ref::<StreamError>());
                    assert!(
                        matches!(inner, Some(StreamError::ResetByPeer(_))),
                        "expected a reset, got {e:?}"
                    );
                    Seen::Error
                }
            }
        }
    }
}

/// Silence the deliberate panics of the panicking-writer case, and only those.
fn quiet_deliberate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let deliberate = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| m.contains("deliberate panic"));
            if !deliberate {
                default(info);
            }
        }));
    });
}

async fn run(case: Case, opener: Opener, reset_on_drop: bool, loss: f64) {
    run_over(QUIC, case, opener, reset_on_drop, loss).await;
}

async fn run_over(listen: &str, case: Case, opener: Opener, reset_on_drop: bool, loss: f64) {
    init_tracing();
    quiet_deliberate_panics();
    let started = Instant::now();
    let mut dialer_config = config(&Keypair::generate_ed25519(), LIMIT);
    let mut listener_config = config(&Keypair::generate_ed25519(), LIMIT);
    dialer_config.reset_on_drop = reset_on_drop;
    listener_config.reset_on_drop = reset_on_drop;
    let pair = pair_over(listen, dialer_config, listener_config, loss).await;
    let arrivals = (listen == WEBTRANSPORT && !cfg!(feature = "reset-stream-at"))
        .then(Arc::<Arrivals>::default);
    let Pair {
        mut dialer,
        mut listener,
        ..
    } = pair;
    let (opening, accepting) = match opener {
        Opener::Dialer => (&mut dialer, &mut listener),
        Opener::Listener => (&mut listener, &mut dialer),
    };

    let open_all = async {
        let mut tasks = Vec::new();
        for i in 0..STREAMS {
            let s = tokio::time::timeout(STEP, opening.open())
                .await
                .unwrap_or_else(|_| panic!("open {i} of {STREAMS} blocked: stream credit leaked"));
            tasks.push(tokio::spawn(opener_side(case, s, arrivals.clone())));
        }
        for t in tasks {
            let _ = bounded("opener task", t).await;
        }
    };
    let accept_all = async {
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let s = accepting.accept().await;
            tasks.push(tokio::spawn(acceptor_side(case, s, arrivals.clone())));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(bounded("acceptor task", t).await.expect("acceptor task"));
        }
        seen
    };
    let ((), seen) = bounded("all streams", async {
        futures::join!(open_all, accept_all)
    })
    .await;

    // A panicking writer's peer never takes the cut-short message for a complete one; nor does
    // an aborted writer's peer under reset-on-drop.
    if case == Case::PanickingWriter || (case == Case::AbortedWriter && reset_on_drop) {
        assert!(seen.iter().all(|s| *s == Seen::Error), "{seen:?}");
    }

    // Over WebTransport, the writers' resets kept their streams' headers: RESET_STREAM_AT.
    #[cfg(feature = "reset-stream-at")]
    if listen == WEBTRANSPORT && matches!(case, Case::AbortedWriter | Case::PanickingWriter) {
        let stats = opening.quinn.stats().frame_tx;
        let resets_expected = case == Case::PanickingWriter || reset_on_drop;
        assert_eq!(stats.reset_stream_at > 0, resets_expected, "{stats:?}");
        assert_eq!(stats.reset_stream, 0, "{stats:?}");
    }

    // New streams still open and are accepted, in both directions.
    exchange(&dialer, &mut listener).await;
    exchange(&listener, &mut dialer).await;

    let dialer_books = dialer.settled().await.expect("connection alive");
    let listener_books = listener.settled().await.expect("connection alive");
    for books in [&dialer_books, &listener_books] {
        assert_eq!(
            books.totals.opened.iter().sum::<u64>(),
            STREAMS as u64 + 2,
            "every stream went through the ledger"
        );
    }
    let dropped = pair
        .proxy
        .as_ref()
        .map_or(0, |p| p.stats().dropped.iter().sum::<u64>());
    if loss > 0.0 {
        assert!(dropped > 0, "the lossy path dropped nothing");
    }
    println!(
        "{case:?} over {listen}, opened by {opener:?}{}{}: {STREAMS} streams (limit {LIMIT}) in {:?}, {dropped} datagrams dropped",
        if reset_on_drop {
            " (reset on drop)"
        } else {
            ""
        },
        if loss > 0.0 {
            format!(" through {:.0}% loss", loss * 100.0)
        } else {
            String::new()
        },
        started.elapsed()
    );
}

/// Each case twice: on a clean path, and through 5% loss each way (the incident needed a lost
/// RESET_STREAM to show); and both again over WebTransport, whose streams are the same QUIC
/// streams behind a header (the incident hit go-libp2p's WebTransport too).
macro_rules! leak_tests {
    ($($name:ident: $case:expr, $opener:expr, $reset:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run($case, $opener, $reset, 0.0).await;
            }
        )*
        mod lossy {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    run($case, $opener, $reset, 0.05).await;
                }
            )*
        }
        mod webtransport {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    run_over(WEBTRANSPORT, $case, $opener, $reset, 0.0).await;
                }
            )*
            mod lossy {
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        run_over(WEBTRANSPORT, $case, $opener, $reset, 0.05).await;
                    }
                )*
            }
        }
    };
}

leak_tests! {
    request_response_dialer_opens: Case::RequestResponse, Opener::Dialer, false;
    request_response_listener_opens: Case::RequestResponse, Opener::Listener, false;
    fire_and_forget_dialer_opens: Case::FireAndForget, Opener::Dialer, false;
    fire_and_forget_listener_opens: Case::FireAndForget, Opener::Listener, false;
    acceptor_drops_unread_dialer_opens: Case::AcceptorDropsUnread, Opener::Dialer, false;
    acceptor_drops_unread_listener_opens: Case::AcceptorDropsUnread, Opener::Listener, false;
    opener_drops_unwritten_dialer_opens: Case::OpenerDropsUnwritten, Opener::Dialer, false;
    opener_drops_unwritten_listener_opens: Case::OpenerDropsUnwritten, Opener::Listener, false;
    aborted_writer_dialer_opens: Case::AbortedWriter, Opener::Dialer, false;
    aborted_writer_listener_opens: Case::AbortedWriter, Opener::Listener, false;
    aborted_writer_resets_under_reset_on_drop_dialer_opens: Case::AbortedWriter, Opener::Dialer, true;
    aborted_writer_resets_under_reset_on_drop_listener_opens: Case::AbortedWriter, Opener::Listener, true;
    panicking_writer_dialer_opens: Case::PanickingWriter, Opener::Dialer, false;
    panicking_writer_listener_opens: Case::PanickingWriter, Opener::Listener, false;
}

/// The guard adds nothing to the wire when a stream ends cleanly: request/response exchanges,
/// ten times past the limit, send no STOP_SENDING and no RESET_STREAM either way (both halves
/// were read to the end and finished before the drop). The same count sees the STOP_SENDING
/// of an acceptor that drops its streams unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_exchanges_put_no_stop_or_reset_on_the_wire() {
    let mut pair = pair_limited(LIMIT).await;
    let stops_and_resets = |peer: &Peer| {
        let frames = peer.quinn.stats().frame_tx;
        (frames.stop_sending, frames.reset_stream)
    };
    for _ in 0..STREAMS {
        exchange(&pair.dialer, &mut pair.listener).await;
    }
    assert_eq!(stops_and_resets(&pair.dialer), (0, 0), "dialer");
    assert_eq!(stops_and_resets(&pair.listener), (0, 0), "listener");

    // Now the acceptor drops each stream before the opener's FIN: a STOP_SENDING each, which
    // the opener sees before it lets go (a FIN first could make the stop unnecessary).
    for _ in 0..LIMIT {
        let mut out = pair.dialer.open().await;
        out.write_all(b"request!").await.unwrap();
        let mut inbound = pair.listener.accept().await;
        let mut request = [0; 8];
        inbound.read_exact(&mut request).await.unwrap();
        drop(inbound);
        let stopped = bounded("the opener sees the stop", async {
            loop {
                if let Err(e) = out.write_all(b"more").await {
                    break e;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        let stopped = stopped
            .get_ref()
            .and_then(|e| e.downcast_ref::<StreamError>());
        assert_eq!(stopped, Some(&StreamError::StoppedByPeer(0)));
    }
    // At least: a lost or late-acknowledged frame is sent again.
    let (stops, _) = stops_and_resets(&pair.listener);
    assert!(stops >= u64::from(LIMIT), "{stops} STOP_SENDING frames");
    pair.dialer.settled().await.expect("connection alive");
    pair.listener.settled().await.expect("connection alive");
}
