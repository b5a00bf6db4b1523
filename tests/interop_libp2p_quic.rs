//! Wire interop with rust-libp2p's own QUIC transport (`libp2p-quic`): a `Swarm` on each side,
//! each dialing the other; ping, and a 1 MiB request/response with the bytes checked.

mod common;

use std::{io, time::Duration};

use common::bounded;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    ping,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
    Multiaddr, StreamProtocol, Swarm, SwarmBuilder,
};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/libp2p-quinn/bytes/1.0.0");
const MIB: usize = 1 << 20;

/// Requests and responses are raw bytes up to the end of the stream's half.
#[derive(Clone, Default)]
struct Bytes;

impl request_response::Codec for Bytes {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_all(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_all(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&request).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&response).await?;
        io.close().await
    }
}

async fn read_all<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    io.take(2 * MIB as u64).read_to_end(&mut data).await?;
    Ok(data)
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: ping::Behaviour,
    bytes: request_response::Behaviour<Bytes>,
}

fn behaviour() -> Behaviour {
    Behaviour {
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(100))),
        bytes: request_response::Behaviour::new(
            [(PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default(),
        ),
    }
}

fn ours() -> Swarm<Behaviour> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|kp| {
            libp2p_quinn::tokio::Transport::new(libp2p_quinn::Config::new(kp))
        })
        .unwrap()
        .with_behaviour(|_| behaviour())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

fn theirs() -> Swarm<Behaviour> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| behaviour())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

async fn listen(swarm: &mut Swarm<Behaviour>) -> Multiaddr {
    swarm
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}

fn payload() -> Vec<u8> {
    (0..MIB).map(|i| (i * 31 % 251) as u8).collect()
}

/// `dialer` dials `listener`; both must see a ping from the right peer, and a 1 MiB request
/// from the dialer must come back reversed.
async fn ping_and_exchange(mut dialer: Swarm<Behaviour>, mut listener: Swarm<Behaviour>) {
    common::init_tracing();
    let addr = bounded("listen", listen(&mut listener)).await;
    let listener_id = *listener.local_peer_id();
    let dialer_id = *dialer.local_peer_id();
    dialer.dial(addr.with_p2p(listener_id).unwrap()).unwrap();

    let mut pinged = (false, false);
    let mut request_sent = false;
    let mut response_ok = false;
    bounded("ping and 1 MiB exchange", async {
        while !(pinged.0 && pinged.1 && response_ok) {
            tokio::select! {
                event = dialer.select_next_some() => match event {
                    SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                        assert_eq!(peer, listener_id);
                        println!("dialer pinged {peer}: {rtt:?}");
                        pinged.0 = true;
                        if !request_sent {
                            dialer.behaviour_mut().bytes.send_request(&listener_id, payload());
                            request_sent = true;
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Bytes(request_response::Event::Message {
                        peer, message: request_response::Message::Response { response, .. }, ..
                    })) => {
                        assert_eq!(peer, listener_id);
                        let mut expected = payload();
                        expected.reverse();
                        assert!(response == expected, "1 MiB response corrupted");
                        response_ok = true;
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Bytes(request_response::Event::OutboundFailure { error, .. })) => {
                        panic!("request failed: {error}");
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                    _ => {}
                },
                event = listener.select_next_some() => match event {
                    SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                        assert_eq!(peer, dialer_id);
                        println!("listener pinged {peer}: {rtt:?}");
                        pinged.1 = true;
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Bytes(request_response::Event::Message {
                        peer, message: request_response::Message::Request { request, channel, .. }, ..
                    })) => {
                        assert_eq!(peer, dialer_id);
                        assert!(request == payload(), "1 MiB request corrupted");
                        let mut response = request;
                        response.reverse();
                        listener.behaviour_mut().bytes.send_response(channel, response).unwrap();
                    }
                    _ => {}
                },
            }
        }
    })
    .await;
}

#[tokio::test]
async fn ours_dials_libp2p_quic() {
    ping_and_exchange(ours(), theirs()).await;
}

#[tokio::test]
async fn libp2p_quic_dials_ours() {
    ping_and_exchange(theirs(), ours()).await;
}

#[tokio::test]
async fn ours_dials_ours_in_a_swarm() {
    ping_and_exchange(ours(), ours()).await;
}
