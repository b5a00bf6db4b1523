//! The exchange every workload is made of, both sides of it.

use std::{
    io,
    sync::{atomic::Ordering, Arc},
};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p_core::muxing::SubstreamBox;

use super::transport::{Opener, ServerStats};

// ---------------------------------------------------------------------------------------------
// The exchange: the client's side of the protocol that `serve` answers.
// ---------------------------------------------------------------------------------------------

const REQUEST: &[u8; 8] = b"request!";
const REPLY: &[u8; 8] = b"response";

/// Open a stream, send an 8-byte request and close our side (FIN), read the 8-byte reply to the
/// end, drop the stream.
pub(super) async fn exchange(opener: &Opener) -> io::Result<()> {
    exchange_on(opener.open().await?).await
}

pub(super) async fn exchange_on(mut stream: SubstreamBox) -> io::Result<()> {
    stream.write_all(REQUEST).await?;
    stream.close().await?;
    read_reply(&mut stream).await
}

/// Read to the end of the stream and check that it was exactly [`REPLY`].
pub(super) async fn read_reply(stream: &mut SubstreamBox) -> io::Result<()> {
    let mut reply = [0u8; REPLY.len() + 1];
    let mut len = 0;
    loop {
        match stream.read(&mut reply[len..]).await? {
            0 => break,
            n => len += n,
        }
        if len == reply.len() {
            break;
        }
    }
    if &reply[..len] == REPLY {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, "wrong reply"))
    }
}

/// The listener's side of every workload: read the stream to its end, then reply [`REPLY`] and
/// close. Bulk is a long request; an idle stream is a request that never ends.
pub(super) async fn serve(mut stream: SubstreamBox, stats: Arc<ServerStats>) {
    // Start with a small buffer, so that a held-open stream costs little beyond the transport's
    // own state (memory workload); switch to a large one once a read fills it (bulk).
    let mut small = [0u8; 64];
    let mut large = Vec::new();
    let mut seen = false;
    loop {
        let buf: &mut [u8] = if large.is_empty() {
            &mut small
        } else {
            &mut large
        };
        let n = match stream.read(buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return,
        };
        if !seen {
            seen = true;
            stats.streams_seen.fetch_add(1, Ordering::Relaxed);
        }
        if large.is_empty() && n == small.len() {
            large = vec![0u8; 64 * 1024];
        }
    }
    if stream.write_all(REPLY).await.is_ok() {
        let _ = stream.close().await;
    }
}
