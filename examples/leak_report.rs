//! What a user sees when an application leaks streams: the warnings, the ledger snapshot as a
//! table, and the metrics; then the streams are released and the counts return to zero.
//!
//! ```text
//! cargo run --example leak_report --features metrics
//! ```
//!
//! Two peers run on loopback with a stream limit of 16. The listener's application takes every
//! inbound stream and keeps it without reading it: a leak on its side. The dialer closes every
//! stream properly, so its 17th open waits for credit.

use std::{pin::Pin, task::Poll, time::Duration};

use futures::{channel::mpsc, future::poll_fn, AsyncWriteExt, StreamExt};
use libp2p_core::{
    muxing::StreamMuxer,
    transport::{DialOpts, ListenerId, PortUse, TransportEvent},
    Endpoint, Transport as _,
};
use libp2p_identity::Keypair;
use libp2p_quinn::{tokio::Transport, Config, Connection, ConnectionSnapshot, Metrics, Stream};
use prometheus_client::{encoding::text::encode, registry::Registry};

const LIMIT: u32 = 16;

/// Drive a connection's muxer: open streams on request, hand inbound streams over.
fn drive(
    mut connection: Connection,
) -> (
    mpsc::UnboundedSender<()>,
    mpsc::UnboundedReceiver<Stream>,
    mpsc::UnboundedReceiver<Stream>,
) {
    let (open_tx, mut open_rx) = mpsc::unbounded::<()>();
    let (opened_tx, opened_rx) = mpsc::unbounded();
    let (inbound_tx, inbound_rx) = mpsc::unbounded();
    tokio::spawn(async move {
        let mut wanted = 0usize;
        poll_fn(|cx| loop {
            let mut progress = false;
            if let Poll::Ready(Ok(s)) = Pin::new(&mut connection).poll_inbound(cx) {
                let _ = inbound_tx.unbounded_send(s);
                progress = true;
            }
            while let Poll::Ready(Some(())) = open_rx.poll_next_unpin(cx) {
                wanted += 1;
            }
            if wanted > 0 {
                if let Poll::Ready(Ok(s)) = Pin::new(&mut connection).poll_outbound(cx) {
                    wanted -= 1;
                    let _ = opened_tx.unbounded_send(s);
                    progress = true;
                }
            }
            if !progress {
                return Poll::<()>::Pending;
            }
        })
        .await;
    });
    (open_tx, opened_rx, inbound_rx)
}

fn print_table(side: &str, s: &ConnectionSnapshot) {
    println!(
        "\n{side}: conn #{} to {} at {} — handles alive: {} inbound, {} outbound; tracked: {}",
        s.number,
        s.peer,
        s.remote_address,
        s.live_handles[0],
        s.live_handles[1],
        s.totals.tracked_total()
    );
    if let (Some(wait), Some(held)) = (s.credit_wait, s.held_by_peer_closed_here) {
        println!(
            "  an open has waited {wait:?} for credit; the peer holds ~{held} streams we closed"
        );
    }
    println!(
        "  {:>6}  {:<9} {:<9} {:<9} {:>9} {:>9} {:>6} {:>6}",
        "id", "direction", "send", "recv", "age", "idle", "sent", "recvd"
    );
    for st in &s.streams {
        println!(
            "  {:>6}  {:<9} {:<9} {:<9} {:>9.1?} {:>9.1?} {:>6} {:>6}{}",
            st.id,
            st.direction.as_str(),
            st.send.as_str(),
            st.recv.as_str(),
            st.age,
            st.idle,
            st.bytes_sent,
            st.bytes_received,
            if st.handle_alive {
                ""
            } else {
                "  (handle dropped)"
            }
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "libp2p_quinn=info".into()),
        )
        .with_target(false)
        .init();

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let make = |limit_warning: Duration| {
        let mut config = Config::new(&Keypair::generate_ed25519()).with_metrics(metrics.clone());
        config.max_concurrent_stream_limit = LIMIT;
        config.credit_wait_warning = limit_warning;
        config.stream_leak_warning = limit_warning;
        config
    };
    let mut listener = Transport::new(make(Duration::from_secs(1)));
    let mut dialer = Transport::new(make(Duration::from_secs(1)));
    let (dialer_ledgers, listener_ledgers) = (dialer.ledgers(), listener.ledgers());

    listener.listen_on(ListenerId::next(), "/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
    let addr = loop {
        if let TransportEvent::NewAddress { listen_addr, .. } =
            poll_fn(|cx| Pin::new(&mut listener).poll(cx)).await
        {
            break listen_addr;
        }
    };
    let dial = dialer.dial(
        addr,
        DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::New,
        },
    )?;
    let incoming = async {
        loop {
            if let TransportEvent::Incoming { upgrade, .. } =
                poll_fn(|cx| Pin::new(&mut listener).poll(cx)).await
            {
                return upgrade.await;
            }
        }
    };
    let (dialed, accepted) = futures::join!(dial, incoming);
    let (listener_id, dialer_conn) = dialed?;
    let (dialer_id, listener_conn) = accepted?;
    println!("dialer {dialer_id} connected to listener {listener_id} (stream limit {LIMIT})");
    let (open, mut opened, _) = drive(dialer_conn);
    let (_, _, mut inbound) = drive(listener_conn);

    println!("\n== the listener's application takes {LIMIT} streams and never lets go");
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        open.unbounded_send(())?;
        let mut s = opened.next().await.ok_or("connection gone")?;
        s.write_all(b"request!").await?;
        s.close().await?;
        drop(s); // the dialer closes properly
        held.push(inbound.next().await.ok_or("connection gone")?);
    }
    println!("== the dialer opens one more: it has to wait for credit");
    open.unbounded_send(())?;
    // Let the warnings fire (thresholds are 1 s in this example).
    tokio::time::sleep(Duration::from_millis(1600)).await;

    print_table("dialer", &dialer_ledgers.snapshot()[0]);
    print_table("listener", &listener_ledgers.snapshot()[0]);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    println!("\n== metrics (both peers share one registry here)\n{text}");

    println!("== the listener's application drops its streams");
    drop(held);
    let extra = tokio::time::timeout(Duration::from_secs(10), opened.next())
        .await?
        .ok_or("connection gone")?;
    println!("the waiting open proceeded: stream {}", extra.id());
    drop(extra);
    drop(inbound.next().await);
    for _ in 0..500 {
        let both: Vec<_> = dialer_ledgers
            .snapshot()
            .into_iter()
            .chain(listener_ledgers.snapshot())
            .collect();
        if both.iter().all(ConnectionSnapshot::is_idle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    print_table("dialer", &dialer_ledgers.snapshot()[0]);
    print_table("listener", &listener_ledgers.snapshot()[0]);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    let live: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("libp2p_quinn_streams_live"))
        .collect();
    println!("\n{}", live.join("\n"));
    Ok(())
}
