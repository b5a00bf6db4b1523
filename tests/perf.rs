//! The perf protocol (`examples/perf`) on our transport: a client that misbehaves costs the
//! server one stream, which ends with an error while other streams go on, and leaves nothing
//! in the books.

#[path = "../examples/perf/node.rs"]
mod node;
#[path = "../examples/perf/protocol.rs"]
mod protocol;

use std::{io, time::Duration};

use futures::{channel::mpsc, AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{swarm::SwarmEvent, Multiaddr, PeerId};
use node::{Options, Stack};
use protocol::PROTOCOL;

/// How long the server waits for a stream that makes no progress, in these tests.
const STALL: Duration = Duration::from_secs(1);
const STEP: Duration = Duration::from_secs(20);

type Results = mpsc::UnboundedReceiver<io::Result<protocol::Served>>;

async fn server() -> (node::Server, Results) {
    let (tx, rx) = mpsc::unbounded();
    let options = Options {
        stall: STALL,
        ..Options::new(Stack::Ours)
    };
    let listen: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
    let server = node::serve(&options, &[listen], move |served| {
        let _ = tx.unbounded_send(served);
    })
    .await
    .expect("perf server");
    (server, rx)
}

/// A client node connected to `addr`, driven in the background until dropped.
struct Client {
    control: libp2p_stream::Control,
    peer: PeerId,
    driver: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(addr: &Multiaddr, peer: PeerId) -> Client {
        let mut swarm = node::node(&Options::new(Stack::Ours))
            .expect("client")
            .swarm;
        let control = swarm.behaviour().stream.new_control();
        swarm.dial(addr.clone()).expect("dial");
        let connected = async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => return,
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial: {error}"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(STEP, connected)
            .await
            .expect("connected");
        let driver = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Client {
            control,
            peer,
            driver,
        }
    }

    async fn open(&mut self) -> libp2p::Stream {
        let open = self.control.open_stream(self.peer, PROTOCOL);
        tokio::time::timeout(STEP, open)
            .await
            .expect("open in time")
            .expect("open")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn next(results: &mut Results) -> io::Result<protocol::Served> {
    tokio::time::timeout(STEP, results.next())
        .await
        .expect("the server finishes the stream in time")
        .expect("the server runs")
}

/// Polls until every connection of the server holds no stream (or is gone).
async fn books_empty(server: &node::Server) {
    let ledgers = server.ledgers.as_ref().expect("our transport");
    let deadline = tokio::time::Instant::now() + STEP;
    while !ledgers.snapshot().iter().all(|c| c.is_idle()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams left: {:#?}",
            ledgers.snapshot()
        );
        // A bounded poll of the books, which the connection's tasks update.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_before_the_length_is_an_error_and_nothing_else() {
    let (server, mut results) = server().await;
    let mut client = Client::connect(&server.addrs[0], server.peer_id).await;

    let mut short = client.open().await;
    short.write_all(&[0, 0, 0]).await.unwrap();
    short.close().await.unwrap();
    let error = next(&mut results)
        .await
        .expect_err("a 3-byte header is no header");
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");

    // The same connection still serves.
    let mut good = client.open().await;
    let run = protocol::run(&mut good, 1000, 2000, STEP, |_| {})
        .await
        .unwrap();
    assert_eq!((run.upload_bytes, run.download_bytes), (1000, 2000));
    assert_eq!(next(&mut results).await.unwrap().sent, 2000);
    drop((short, good));
    books_empty(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_for_everything_and_hangs_up_ends_its_stream() {
    let (server, mut results) = server().await;
    let mut client = Client::connect(&server.addrs[0], server.peer_id).await;
    let mut greedy = client.open().await;
    greedy.write_all(&u64::MAX.to_be_bytes()).await.unwrap();
    greedy.close().await.unwrap();
    // Hang up once the server is sending.
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(STEP, greedy.read_exact(&mut first)).await;
    read.expect("the server sends").unwrap();
    drop((greedy, client));
    let error = next(&mut results)
        .await
        .expect_err("2^64-1 bytes cannot be sent");
    assert_ne!(
        error.kind(),
        io::ErrorKind::TimedOut,
        "noticed the hang-up: {error}"
    );

    let mut other = Client::connect(&server.addrs[0], server.peer_id).await;
    let mut good = other.open().await;
    protocol::run(&mut good, 10, 10, STEP, |_| {})
        .await
        .unwrap();
    assert!(next(&mut results).await.is_ok());
    drop(good);
    books_empty(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_given_up_while_others_are_served() {
    let (server, mut results) = server().await;
    let mut client = Client::connect(&server.addrs[0], server.peer_id).await;
    let mut deaf = client.open().await;
    deaf.write_all(&(1u64 << 30).to_be_bytes()).await.unwrap();
    deaf.close().await.unwrap();

    // Beside it, on the same connection, a whole run goes through.
    let mut good = client.open().await;
    let run = protocol::run(&mut good, 1 << 20, 1 << 20, STEP, |_| {})
        .await
        .unwrap();
    assert_eq!(run.download_bytes, 1 << 20);
    assert!(next(&mut results).await.is_ok());

    // The deaf stream, once its windows are full, makes no progress and is given up.
    let error = next(&mut results).await.expect_err("nobody reads");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    drop((deaf, good));
    books_empty(&server).await;
}

#[test]
fn the_final_line_is_test_plans_json() {
    let measured = node::Measured {
        connect: Duration::from_millis(3),
        opened: Duration::from_millis(4),
        run: protocol::Run {
            upload_bytes: 1,
            download_bytes: 2 << 20,
            upload: Duration::from_millis(5),
            total: Duration::from_millis(96),
            first_mib: Some(Duration::from_millis(50)),
        },
    };
    let line: serde_json::Value = serde_json::from_str(&measured.final_line()).unwrap();
    assert_eq!(line["type"], "final");
    assert_eq!(line["uploadBytes"], 1);
    assert_eq!(line["downloadBytes"], 2 << 20);
    assert!((line["timeSeconds"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    assert!((line["connectSeconds"].as_f64().unwrap() - 0.003).abs() < 1e-9);
    assert!((line["firstMiBSeconds"].as_f64().unwrap() - 0.054).abs() < 1e-9);
}
