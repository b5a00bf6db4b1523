pub mod cert;
pub mod h3;
#[path = "../../alpn-tls/src/switch.rs"]
pub mod switch;

/// A quinn stream pair as one futures `AsyncRead + AsyncWrite` (what libp2p-noise takes; in
/// libp2p-quinn this is `Stream`, the guard over the same halves).
pub struct Bi {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl futures::AsyncRead for Bi {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        futures::AsyncRead::poll_read(std::pin::Pin::new(&mut self.recv), cx, buf)
    }
}

impl futures::AsyncWrite for Bi {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        futures::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.send), cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        futures::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.send), cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        futures::AsyncWrite::poll_close(std::pin::Pin::new(&mut self.send), cx)
    }
}
