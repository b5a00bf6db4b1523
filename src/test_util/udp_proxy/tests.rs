use std::time::Duration;

use tokio::time::Instant;

use super::lane::splitmix64;
use super::session::MAX_DATAGRAM;
use super::*;

/// Upper bound for every test, so a bug fails instead of hanging CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

/// A plain UDP echo server; it stops with the test's runtime.
async fn echo_server() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0; MAX_DATAGRAM];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

async fn client_for(proxy: &UdpProxy) -> UdpSocket {
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(proxy.local_addr()).await.unwrap();
    client
}

async fn send_id(client: &UdpSocket, id: u32) {
    client.send(&id.to_be_bytes()).await.unwrap();
}

async fn recv_id(client: &UdpSocket) -> u32 {
    let mut buf = [0; 16];
    let len = client.recv(&mut buf).await.unwrap();
    u32::from_be_bytes(buf[..len].try_into().unwrap())
}

/// Sends `ids` in bursts of `window` and collects the echoes in arrival
/// order. Bursts are small enough that no socket buffer overflows, so any
/// loss would be the proxy's; only use it where nothing is dropped.
async fn echo_in_bursts(client: &UdpSocket, count: u32, window: u32) -> Vec<u32> {
    let mut arrived = Vec::new();
    for start in (0..count).step_by(window as usize) {
        let end = (start + window).min(count);
        for id in start..end {
            send_id(client, id).await;
        }
        for _ in start..end {
            arrived.push(recv_id(client).await);
        }
    }
    arrived
}

#[tokio::test]
async fn forwards_everything_in_order_without_impairment() {
    bounded(async {
        let server = echo_server().await;
        let proxy = UdpProxy::start(server, 1, Impairment::none(), Impairment::none())
            .await
            .unwrap();
        let client = client_for(&proxy).await;

        let arrived = echo_in_bursts(&client, 1000, 32).await;

        assert_eq!(arrived, (0..1000).collect::<Vec<_>>());
        let stats = proxy.stats();
        assert_eq!(stats.forwarded, [1000, 1000]);
        assert_eq!(stats.dropped, [0, 0]);
    })
    .await;
}

/// Sends 1000 datagrams one at a time through a proxy dropping half of
/// them towards the server, and returns which ids came back plus the stats.
/// Each send waits until the proxy has decided (forwarded or dropped), so
/// the traffic, and hence the RNG's decisions, are identical on every run.
async fn lossy_run(seed: u64) -> (Vec<u32>, ProxyStats) {
    let server = echo_server().await;
    let proxy = UdpProxy::start(server, seed, Impairment::lossy(0.5), Impairment::none())
        .await
        .unwrap();
    let client = client_for(&proxy).await;
    let mut arrived = Vec::new();
    for id in 0..1000u32 {
        send_id(&client, id).await;
        let decided = u64::from(id) + 1;
        let stats = proxy
            .wait_for_stats(|s| s.forwarded[0] + s.dropped[0] == decided)
            .await;
        if stats.forwarded[0] as usize > arrived.len() {
            arrived.push(recv_id(&client).await);
        }
    }
    (arrived, proxy.stats())
}

#[tokio::test]
async fn drops_are_seeded_and_replay() {
    bounded(async {
        let (first, first_stats) = lossy_run(7).await;
        let (second, second_stats) = lossy_run(7).await;
        let (other_seed, _) = lossy_run(8).await;

        assert!(
            (400..=600).contains(&first.len()),
            "{} arrived",
            first.len()
        );
        assert_eq!(first_stats.dropped[0] as usize, 1000 - first.len());
        assert_eq!(first, second, "same seed, same survivors");
        assert_eq!(first_stats, second_stats);
        assert_ne!(first, other_seed, "another seed, other survivors");
    })
    .await;
}

#[tokio::test]
async fn duplicate_rate_one_doubles_every_datagram() {
    bounded(async {
        let server = echo_server().await;
        let to_server = Impairment::none().with_duplicate_rate(1.0);
        let proxy = UdpProxy::start(server, 3, to_server, Impairment::none())
            .await
            .unwrap();
        let client = client_for(&proxy).await;

        for id in 0..200 {
            send_id(&client, id).await;
            // The server echoes both copies, so both come back.
            assert_eq!(recv_id(&client).await, id);
            assert_eq!(recv_id(&client).await, id);
        }

        let stats = proxy.stats();
        assert_eq!(stats.duplicated, [200, 0]);
        assert_eq!(stats.forwarded, [400, 400]);
    })
    .await;
}

#[tokio::test]
async fn reordering_loses_nothing() {
    bounded(async {
        let server = echo_server().await;
        let to_server = Impairment::none().with_reorder_rate(0.5);
        let proxy = UdpProxy::start(server, 11, to_server, Impairment::none())
            .await
            .unwrap();
        let client = client_for(&proxy).await;

        // A held datagram whose burst ends is released by the flush
        // timeout, so every burst completes.
        let arrived = echo_in_bursts(&client, 200, 16).await;

        let out_of_order = arrived.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(out_of_order > 0, "nothing was reordered: {arrived:?}");
        let mut sorted = arrived.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>(), "lost or duplicated");
        assert!(proxy.stats().reordered[0] > 0);
    })
    .await;
}

#[tokio::test]
async fn delay_and_jitter_hold_datagrams_back_but_deliver_them() {
    bounded(async {
        let server = echo_server().await;
        let delay = Duration::from_millis(20);
        let to_client = Impairment::none()
            .with_delay(delay)
            .with_jitter(Duration::from_millis(10));
        let proxy = UdpProxy::start(server, 5, Impairment::none(), to_client)
            .await
            .unwrap();
        let client = client_for(&proxy).await;

        let started = Instant::now();
        let mut arrived = echo_in_bursts(&client, 50, 50).await;

        // Only a lower bound: an upper one would be flaky on a busy machine.
        assert!(started.elapsed() >= delay);
        arrived.sort_unstable();
        assert_eq!(arrived, (0..50).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test]
async fn black_hole_blocks_then_resumes() {
    bounded(async {
        let server = echo_server().await;
        let proxy = UdpProxy::start(server, 2, Impairment::none(), Impairment::none())
            .await
            .unwrap();
        let client = client_for(&proxy).await;
        send_id(&client, 0).await;
        assert_eq!(recv_id(&client).await, 0);

        for (dir, id) in [(Direction::ToServer, 1), (Direction::ToClient, 3)] {
            proxy.set_black_hole(dir, true);
            send_id(&client, id).await;
            proxy
                .wait_for_stats(|s| s.black_holed[dir as usize] == 1)
                .await;
            proxy.set_black_hole(dir, false);

            // Had the black-holed datagram got through, it would arrive first.
            send_id(&client, id + 1).await;
            assert_eq!(recv_id(&client).await, id + 1, "{dir:?}");
        }
        assert_eq!(proxy.stats().black_holed, [1, 1]);
    })
    .await;
}

#[tokio::test]
async fn impairment_can_be_swapped_at_run_time() {
    bounded(async {
        let server = echo_server().await;
        let proxy = UdpProxy::start(server, 8, Impairment::none(), Impairment::none())
            .await
            .unwrap();
        let client = client_for(&proxy).await;

        proxy.set_impairment(Direction::ToClient, Impairment::lossy(1.0));
        send_id(&client, 1).await;
        proxy.wait_for_stats(|s| s.dropped[1] == 1).await;

        proxy.set_impairment(Direction::ToClient, Impairment::none());
        send_id(&client, 2).await;
        // Had the lossy impairment still applied, 2 would be dropped too.
        assert_eq!(recv_id(&client).await, 2);
        assert_eq!(proxy.stats().forwarded, [2, 1]);
    })
    .await;
}

#[tokio::test]
async fn session_survives_server_restart() {
    bounded(async {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let proxy = UdpProxy::start(server_addr, 10, Impairment::none(), Impairment::none())
            .await
            .unwrap();
        let client = client_for(&proxy).await;
        send_id(&client, 1).await;
        let mut buf = [0; 16];
        let (_, upstream) = server.recv_from(&mut buf).await.unwrap();

        // With the server gone the datagram bounces, and the upstream
        // socket reports "connection refused" to the proxy.
        drop(server);
        send_id(&client, 2).await;
        proxy.wait_for_stats(|s| s.forwarded[0] == 2).await;

        let server = UdpSocket::bind(server_addr).await.unwrap();
        send_id(&client, 3).await;
        let (len, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..len], from), (&3u32.to_be_bytes()[..], upstream));
        server.send_to(&4u32.to_be_bytes(), upstream).await.unwrap();
        assert_eq!(recv_id(&client).await, 4, "replies still relayed");
    })
    .await;
}

#[tokio::test]
async fn clients_get_separate_sessions() {
    bounded(async {
        let server = echo_server().await;
        let proxy = UdpProxy::start(server, 4, Impairment::none(), Impairment::none())
            .await
            .unwrap();
        let (a, b) = (client_for(&proxy).await, client_for(&proxy).await);

        send_id(&a, 1).await;
        send_id(&b, 2).await;

        assert_eq!(recv_id(&a).await, 1);
        assert_eq!(recv_id(&b).await, 2);
    })
    .await;
}

/// Starts a proxy and makes it open a session, so it owns all its sockets.
async fn busy_proxy() -> UdpProxy {
    let server = echo_server().await;
    let proxy = UdpProxy::start(server, 6, Impairment::none(), Impairment::none())
        .await
        .unwrap();
    let client = client_for(&proxy).await;
    send_id(&client, 0).await;
    assert_eq!(recv_id(&client).await, 0);
    proxy
}

#[tokio::test]
async fn dropping_the_proxy_frees_its_port() {
    bounded(async {
        let proxy = busy_proxy().await;
        let addr = proxy.local_addr();
        drop(proxy);

        // Aborted tasks release their sockets when the runtime next runs
        // them, so yield until it has (bounded by the test timeout).
        while UdpSocket::bind(addr).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn shutdown_frees_its_port_at_once() {
    bounded(async {
        let proxy = busy_proxy().await;
        let addr = proxy.local_addr();
        proxy.shutdown().await;

        UdpSocket::bind(addr).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn ipv6_server_gets_ipv6_proxy() {
    bounded(async {
        // Some CI sandboxes have no IPv6 loopback; nothing to test there.
        let Ok(server) = UdpSocket::bind("[::1]:0").await else {
            return;
        };
        let server_addr = server.local_addr().unwrap();
        let proxy = UdpProxy::start(server_addr, 9, Impairment::none(), Impairment::none())
            .await
            .unwrap();
        assert!(proxy.local_addr().is_ipv6());

        let client = UdpSocket::bind("[::1]:0").await.unwrap();
        client.send_to(b"hi", proxy.local_addr()).await.unwrap();
        let mut buf = [0; 8];
        let (len, _) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"hi");
    })
    .await;
}

#[test]
fn lanes_get_distinct_streams() {
    let ids = [(0, 0), (0, 1), (1, 0), (1, 1)];
    let seeds: Vec<u64> = ids
        .iter()
        .map(|&(seed, lane)| seed ^ splitmix64(lane))
        .collect();
    for (i, a) in seeds.iter().enumerate() {
        assert!(!seeds[i + 1..].contains(a), "collision for {:?}", ids[i]);
    }
}
