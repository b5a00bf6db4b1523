//! UDP sockets and the quinn endpoints on them.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::Arc,
};

use socket2::{Domain, Socket, Type};

use crate::Config;

/// quinn's configs, built once per transport from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct QuinnConfigs {
    pub(crate) endpoint: quinn::EndpointConfig,
    pub(crate) server: quinn::ServerConfig,
    pub(crate) client: quinn::ClientConfig,
}

impl QuinnConfigs {
    pub(crate) fn new(config: &Config) -> Self {
        let transport = Arc::new(config.transport_config());
        Self {
            endpoint: config.endpoint_config(),
            server: config.server_config(transport.clone()),
            client: config.client_config(transport),
        }
    }
}

/// The UDP buffer size we ask the kernel for, as quic-go does: Linux's default (~208 KiB) drops
/// datagrams under bursts of handshakes or streams. The kernel caps it at `net.core.rmem_max`.
const SOCKET_BUFFER: usize = 7 << 20;

/// Bind a UDP socket to `addr`; an IPv6 socket takes IPv6 only, so that `0.0.0.0` and `::`
/// listeners can coexist on one port.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: a smaller buffer only costs more retransmissions.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A socket for dialing out of the same family as `remote`, on an ephemeral port.
pub(crate) fn bind_for_dialing(remote: SocketAddr) -> io::Result<UdpSocket> {
    let any = if remote.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    bind(any)
}

/// A quinn endpoint on `socket`; it accepts connections when `server` is given.
pub(crate) fn endpoint(
    configs: &QuinnConfigs,
    socket: UdpSocket,
    accept: bool,
) -> io::Result<quinn::Endpoint> {
    let server = accept.then(|| configs.server.clone());
    quinn::Endpoint::new(
        configs.endpoint.clone(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}
