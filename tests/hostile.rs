//! Hostile networks and peers: loss with reordering and duplication, a flooding peer, churn of
//! connections, and handshakes that should never succeed. Nothing hangs, nothing is lost.

#![cfg(feature = "test-util")]

mod common;

use std::{
    hash::{Hash, Hasher},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use common::*;
use futures::{future::poll_fn, AsyncReadExt, AsyncWriteExt};
use libp2p_core::{transport::TransportEvent, Transport as _};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::{test_util::Impairment, tokio::Transport, Config, Error};

/// The connect/disconnect test measures the whole process (its descriptors and its memory), so
/// it runs alone; the other tests of this file share the process with each other.
static PROCESS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// 5% loss, 5% duplication, 5% reordering, each way.
fn hostile() -> Impairment {
    Impairment::lossy(0.05)
        .with_duplicate_rate(0.05)
        .with_reorder_rate(0.05)
}

/// Two peers through a proxy with `impairment` each way.
async fn pair_through(impairment: Impairment, seed: u64) -> Pair {
    let pair = pair_lossy(
        config(&Keypair::generate_ed25519(), 256),
        config(&Keypair::generate_ed25519(), 256),
        0.0,
        seed,
    )
    .await;
    let proxy = pair.proxy.as_ref().unwrap();
    proxy.set_impairment(
        libp2p_quinn::test_util::Direction::ToServer,
        impairment.clone(),
    );
    proxy.set_impairment(libp2p_quinn::test_util::Direction::ToClient, impairment);
    pair
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift: cheap bytes that are not all alike
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_arrive_intact_through_loss_reordering_and_duplication() {
    let _shared = PROCESS.read().await;
    init_tracing();
    // Bind the pair: its proxy must outlive the transfer.
    let pair = pair_through(hostile(), 64).await;
    let Pair {
        dialer,
        mut listener,
        ..
    } = pair;
    let data = pattern(64 << 20, 64);
    let sent = digest(&data);
    let mut out = dialer.open().await;
    let writer = async {
        out.write_all(&data).await.unwrap();
        out.close().await.unwrap();
    };
    let reader = async {
        let mut inbound = listener.accept().await;
        let mut received = Vec::with_capacity(64 << 20);
        inbound.read_to_end(&mut received).await.unwrap();
        received
    };
    let ((), received) = tokio::time::timeout(Duration::from_secs(120), async {
        futures::join!(writer, reader)
    })
    .await
    .expect("64 MiB within 120 s");
    assert_eq!(received.len(), data.len());
    assert_eq!(digest(&received), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_small_streams_arrive_intact_through_loss_reordering_and_duplication() {
    let _shared = PROCESS.read().await;
    init_tracing();
    let pair = pair_through(hostile(), 1000).await;
    let Pair {
        dialer,
        mut listener,
        ..
    } = pair;
    let opener = async {
        let mut tasks = Vec::new();
        for i in 0..1000u64 {
            let mut s = dialer.open().await;
            tasks.push(tokio::spawn(async move {
                let request = pattern(1 + (i as usize * 37) % 4096, i);
                s.write_all(&request).await.unwrap();
                s.close().await.unwrap();
                let mut reply = Vec::new();
                s.read_to_end(&mut reply).await.unwrap();
                assert_eq!(reply, digest(&request).to_be_bytes(), "stream {i}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    let acceptor = async {
        for _ in 0..1000 {
            let mut s = listener.accept().await;
            tokio::spawn(async move {
                let mut request = Vec::new();
                s.read_to_end(&mut request).await.unwrap();
                s.write_all(&digest(&request).to_be_bytes()).await.unwrap();
                s.close().await.unwrap();
            });
        }
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        futures::join!(opener, acceptor)
    })
    .await
    .expect("1000 streams within 120 s");
    dialer.settled().await.unwrap();
    listener.settled().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_unread_streams_is_bounded_by_our_windows() {
    let _shared = PROCESS.read().await;
    init_tracing();
    const WINDOW: u32 = 1 << 20;
    const STREAM_WINDOW: u32 = 64 << 10;
    let mut victim_config = config(&Keypair::generate_ed25519(), 32);
    victim_config.max_connection_data = WINDOW;
    victim_config.max_stream_data = STREAM_WINDOW;
    let pair = pair_with(config(&Keypair::generate_ed25519(), 32), victim_config).await;
    let Pair {
        dialer: flooder,
        listener: mut victim,
        mut _transports,
        listen_addr,
        ..
    } = pair;

    // The flooder opens streams and writes into them as fast as it can; the victim takes the
    // streams and never reads. Whatever the flooder writes beyond our windows must wait.
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..32 {
        let mut s = flooder.open().await;
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            let chunk = vec![0xAB; 16 << 10];
            while s.write_all(&chunk).await.is_ok() {
                written.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // The victim takes every stream that shows up and never reads any.
    let mut inbound = std::mem::replace(&mut victim.inbound, futures::channel::mpsc::unbounded().1);
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(s) = futures::StreamExt::next(&mut inbound).await {
            held.push(s);
        }
        held
    });
    // One more stream than the limit cannot open.
    let blocked = flooder.open_later();
    // Wait until the flooder is stuck (its count stops moving), bounded.
    let mut last = u64::MAX;
    bounded("flooder stalls", async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = written.load(std::sync::atomic::Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
    })
    .await;
    let written_total = written.load(std::sync::atomic::Ordering::Relaxed);
    println!("flooder got {written_total} bytes in before stalling (window {WINDOW})");
    // quinn buffers a little beyond the flow-control window on the sending side only; what the
    // victim holds is bounded by its connection window. The writer may have up to one chunk per
    // stream accepted into its own send buffer beyond that.
    assert!(
        written_total <= u64::from(WINDOW) + 32 * (16 << 10) + (1 << 20),
        "{written_total}"
    );
    let snapshot = victim.snapshot();
    assert!(
        snapshot.live_handles[0] <= 32,
        "{:?}",
        snapshot.live_handles
    );
    assert_eq!(
        snapshot
            .streams
            .iter()
            .map(|s| s.bytes_received)
            .sum::<u64>(),
        0
    );
    assert!(
        futures::FutureExt::now_or_never(blocked).is_none(),
        "the stream limit held"
    );

    // Another peer's connection to the victim keeps working meanwhile.
    let mut other = Transport::new(Config::new(&Keypair::generate_ed25519()));
    let dial = other.dial(listen_addr, dial_opts()).unwrap();
    let (dialed, (other_id, accepted)) =
        futures::join!(bounded("dial", dial), accept(&mut _transports.1));
    let (victim_id, other_conn) = dialed.expect("dial the victim");
    let other_peer = Peer::new(other_id, victim_id, other_conn, other.ledgers());
    let mut victim_side = Peer::new(victim_id, other_id, accepted, _transports.1.ledgers());
    exchange(&other_peer, &mut victim_side).await;
    exchange(&victim_side, &mut { other_peer }).await;
    drop(flooder);
    for w in writers {
        w.abort();
    }
    held.abort();
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    common::resident::resident_bytes(std::process::id()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    let _alone = PROCESS.write().await;
    init_tracing();
    let mut listener = Transport::new(Config::new(&Keypair::generate_ed25519()));
    let addr = listen(&mut listener, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let mut dialer = Transport::new(Config::new(&Keypair::generate_ed25519()));
    let handle = tokio::runtime::Handle::current();

    async fn cycle(
        dialer: &mut Transport,
        listener: &mut Transport,
        addr: &libp2p_core::Multiaddr,
    ) {
        let dial = dialer.dial(addr.clone(), reuse_opts()).unwrap();
        let (dialed, accepted) = futures::join!(bounded("dial", dial), accept(listener));
        let (_, a) = dialed.expect("dial");
        let (_, b) = accepted;
        drop((a, b));
    }
    // Warm up: the first connections allocate long-lived buffers and the dialing endpoint.
    for _ in 0..50 {
        cycle(&mut dialer, &mut listener, &addr).await;
    }
    let settle = || async {
        // Closed connections drain for 3 PTOs; let the endpoint drivers finish them.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    settle().await;
    let (fds, tasks, rss) = (fd_count(), handle.metrics().num_alive_tasks(), rss_bytes());
    for _ in 0..1000 {
        cycle(&mut dialer, &mut listener, &addr).await;
    }
    // Bounded wait for quinn's connection tasks of the last connections to end.
    bounded("tasks settle", async {
        while handle.metrics().num_alive_tasks() > tasks + 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (fds2, tasks2, rss2) = (fd_count(), handle.metrics().num_alive_tasks(), rss_bytes());
    println!(
        "after 1000 cycles: fds {fds} -> {fds2}, tasks {tasks} -> {tasks2}, rss {rss} -> {rss2}"
    );
    assert!(fds2 <= fds + 2, "file descriptors grew: {fds} -> {fds2}");
    assert!(tasks2 <= tasks + 4, "tasks grew: {tasks} -> {tasks2}");
    assert!(rss2 <= rss + (32 << 20), "memory grew: {rss} -> {rss2}");
    // The listener still accepts.
    cycle(&mut dialer, &mut listener, &addr).await;
}

/// One watcher task serves all of a transport's connections (a task per connection would wake
/// once per stream when each connection does little), and it ends with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_watcher_task_serves_every_connection_and_ends_with_them() {
    let _shared = PROCESS.read().await;
    const CONNECTIONS: usize = 20;
    let handle = tokio::runtime::Handle::current();
    let tasks_at_start = handle.metrics().num_alive_tasks();
    let listener_config = Config::new(&Keypair::generate_ed25519());
    let dialer_config = Config::new(&Keypair::generate_ed25519());
    let (listener_id, dialer_id) = (
        listener_config.local_peer_id(),
        dialer_config.local_peer_id(),
    );
    let mut listener = Transport::new(listener_config);
    let addr = listen(&mut listener, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let mut dialer = Transport::new(dialer_config);
    let mut pairs = Vec::new();
    for _ in 0..CONNECTIONS {
        let dial = dialer.dial(addr.clone(), reuse_opts()).unwrap();
        let (dialed, (_, accepted)) = futures::join!(bounded("dial", dial), accept(&mut listener));
        let (_, dialed) = dialed.expect("dial");
        pairs.push((
            Peer::new(dialer_id, listener_id, dialed, dialer.ledgers()),
            Peer::new(listener_id, dialer_id, accepted, listener.ledgers()),
        ));
    }
    let tasks_before_streams = handle.metrics().num_alive_tasks();
    for (opener, acceptor) in &mut pairs {
        exchange(opener, acceptor).await;
    }
    let tasks_with_streams = handle.metrics().num_alive_tasks();
    // Both transports' watchers, and no more.
    assert!(
        tasks_with_streams <= tasks_before_streams + 2,
        "tasks grew with streams on {CONNECTIONS} connections: \
         {tasks_before_streams} -> {tasks_with_streams}"
    );
    for (opener, acceptor) in &pairs {
        assert!(opener
            .settled()
            .await
            .is_some_and(|s| s.totals.opened == [0, 1]));
        assert!(acceptor
            .settled()
            .await
            .is_some_and(|s| s.totals.opened == [1, 0]));
    }

    drop(pairs);
    drop((dialer, listener));
    // The endpoints drain their closed connections, then every task of ours is gone.
    bounded("every task ends", async {
        while handle.metrics().num_alive_tasks() > tasks_at_start {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn reuse_opts() -> libp2p_core::transport::DialOpts {
    libp2p_core::transport::DialOpts {
        role: libp2p_core::Endpoint::Dialer,
        port_use: libp2p_core::transport::PortUse::Reuse,
    }
}

/// Capture the first datagram (a QUIC Initial) a real dial sends.
async fn captured_initial() -> Vec<u8> {
    let catcher = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = libp2p_quinn::to_multiaddr(catcher.local_addr().unwrap());
    let mut config = Config::new(&Keypair::generate_ed25519());
    config.handshake_timeout = Duration::from_millis(300);
    let mut t = Transport::new(config);
    let dial = t.dial(addr, dial_opts()).unwrap();
    let mut buf = vec![0u8; 2048];
    let (received, _) = futures::join!(bounded("initial", catcher.recv_from(&mut buf)), dial);
    let (n, _) = received.unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_replayed_handshakes_leave_the_listener_working() {
    let _shared = PROCESS.read().await;
    init_tracing();
    let initial = captured_initial().await;
    let mut config = Config::new(&Keypair::generate_ed25519());
    config.handshake_timeout = Duration::from_millis(500);
    let mut listener = Transport::new(config);
    let addr = listen(&mut listener, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let (target, _) = libp2p_quinn::parse_multiaddr(&addr).unwrap();
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for cut in [1, 20, initial.len() / 2, initial.len() - 1] {
        attacker.send_to(&initial[..cut], target).await.unwrap();
    }
    for _ in 0..20 {
        attacker.send_to(&initial, target).await.unwrap();
    }
    // Replays start at most one handshake, which fails or times out with a typed error; then a
    // real dial gets in.
    let mut dialer = Transport::new(Config::new(&Keypair::generate_ed25519()));
    let dial = dialer.dial(addr, dial_opts()).unwrap();
    let real = async {
        loop {
            let event = bounded("incoming", poll_fn(|cx| Pin::new(&mut listener).poll(cx))).await;
            if let TransportEvent::Incoming { upgrade, .. } = event {
                match bounded("handshake", upgrade).await {
                    Ok(done) => return done,
                    Err(e) => {
                        assert!(
                            matches!(e, Error::HandshakeTimedOut { .. } | Error::Connection(_)),
                            "{e:?}"
                        );
                    }
                }
            }
        }
    };
    let (dialed, (dialer_id, _)) = futures::join!(bounded("real dial", dial), real);
    dialed.expect("a real peer still gets in");
    assert_ne!(dialer_id, PeerId::random());
}

/// Presents a certificate without checking it: rustls would refuse to load a broken one.
#[derive(Debug)]
struct Present(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Present {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn certified(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Arc<rustls::sign::CertifiedKey> {
    let key = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)
        .unwrap();
    Arc::new(rustls::sign::CertifiedKey::new(vec![cert], key))
}

/// A rustls client that presents `cert` and accepts any server, speaking ALPN `libp2p`.
fn rogue_client(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> quinn::ClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(common::h3_client::AnyCertificate))
    .with_client_cert_resolver(Arc::new(Present(certified(cert, key))));
    tls.alpn_protocols = vec![b"libp2p".to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ))
}

async fn refused_by_listener(client: quinn::ClientConfig) {
    let mut listener = Transport::new(Config::new(&Keypair::generate_ed25519()));
    let addr = listen(&mut listener, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let (target, _) = libp2p_quinn::parse_multiaddr(&addr).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let connecting = endpoint.connect(target, "l").unwrap();
    let event = bounded("incoming", poll_fn(|cx| Pin::new(&mut listener).poll(cx))).await;
    let TransportEvent::Incoming { upgrade, .. } = event else {
        panic!("expected an incoming connection");
    };
    let (ours, theirs) =
        futures::join!(bounded("handshake", upgrade), bounded("rogue", connecting));
    match ours {
        Err(Error::Connection(_)) | Err(Error::InvalidCertificate(_)) => {}
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("a rogue certificate was accepted"),
    }
    // TLS 1.3 completes the client's side of the handshake before the server checks its
    // certificate: the rogue may see a connection, which we then close at once.
    if let Ok(connection) = theirs {
        bounded("rogue connection closed", connection.closed()).await;
    }
    // The listener is unaffected.
    let mut dialer = Transport::new(Config::new(&Keypair::generate_ed25519()));
    let dial = dialer.dial(addr, dial_opts()).unwrap();
    let (dialed, _) = futures::join!(bounded("dial", dial), accept(&mut listener));
    dialed.expect("listener still accepts");
}

#[tokio::test]
async fn a_certificate_without_the_libp2p_extension_is_refused() {
    let _shared = PROCESS.read().await;
    init_tracing();
    let plain = rcgen::generate_simple_self_signed(vec!["l".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(plain.key_pair.serialize_der().into());
    refused_by_listener(rogue_client(plain.cert.der().clone(), key)).await;
}

#[tokio::test]
async fn a_libp2p_certificate_with_a_wrong_signature_is_refused() {
    let _shared = PROCESS.read().await;
    init_tracing();
    let (cert, key) = libp2p_tls::certificate::generate(&Keypair::generate_ed25519()).unwrap();
    let mut der = cert.to_vec();
    // The last byte belongs to the certificate's signature.
    let last = der.len() - 1;
    der[last] ^= 0xff;
    refused_by_listener(rogue_client(der.into(), key)).await;
}
