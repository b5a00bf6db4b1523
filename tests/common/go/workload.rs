//! Workloads run from the Rust side against the Go peer: echo and storm.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p_identity::PeerId;

use super::{ECHO, STORM};

// -------------------------------------------------------------------------------------------
// Workloads run from the Rust side

/// Open an echo stream to `peer`, send `payload`, close, read the reply to the end.
pub async fn echo_to(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let mut s = control
        .open_stream(peer, ECHO)
        .await
        .map_err(|e| format!("open: {e}"))?;
    // The Go handler reads to the end before it answers, so writing first cannot deadlock.
    s.write_all(payload)
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.close().await.map_err(|e| format!("close: {e}"))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(reply)
}

/// The outcome of a storm from the Rust side.
#[derive(Debug, Default, Clone)]
pub struct StormReport {
    pub count: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failures whose open hit the open timeout (part of `failed`).
    pub blocked: u64,
    /// `close()` errors (not failures: the peer may have stopped our send half first).
    pub close_errors: u64,
    pub slowest_open: Duration,
    pub slowest_close: Duration,
    pub elapsed: Duration,
    /// The first few errors.
    pub errors: Vec<String>,
}

impl StormReport {
    pub fn line(&self) -> String {
        format!(
            "streams {} (ok {}, failed {}, blocked {}), slowest open {:.1} ms, slowest close+reply \
             {:.1} ms, elapsed {:.0} ms, close errors {}",
            self.count,
            self.ok,
            self.failed,
            self.blocked,
            self.slowest_open.as_secs_f64() * 1e3,
            self.slowest_close.as_secs_f64() * 1e3,
            self.elapsed.as_secs_f64() * 1e3,
            self.close_errors
        )
    }
}

/// Open `count` storm streams to `peer` our way: open + write the 8-byte index (the *open*,
/// bounded by `open_timeout`), close, read the 8-byte reply, drop. `concurrency` workers run
/// at once.
pub async fn storm_to(
    control: &libp2p_stream::Control,
    peer: PeerId,
    count: u64,
    concurrency: usize,
    open_timeout: Duration,
) -> StormReport {
    let report = Mutex::new(StormReport {
        count,
        ..Default::default()
    });
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let workers = (0..concurrency.max(1)).map(|_| {
        let mut control = control.clone();
        let (report, next) = (&report, &next);
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let r = storm_one(&mut control, peer, i, open_timeout).await;
                let mut rep = report.lock().unwrap_or_else(|e| e.into_inner());
                rep.slowest_open = rep.slowest_open.max(r.open);
                rep.slowest_close = rep.slowest_close.max(r.end);
                match r.error {
                    None => rep.ok += 1,
                    Some(e) => {
                        rep.failed += 1;
                        if r.blocked {
                            rep.blocked += 1;
                        }
                        if rep.errors.len() < 10 {
                            rep.errors.push(format!("stream {i}: {e}"));
                        }
                    }
                }
                if r.close_error {
                    rep.close_errors += 1;
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
    report.elapsed = started.elapsed();
    report
}

struct One {
    open: Duration,
    end: Duration,
    blocked: bool,
    close_error: bool,
    error: Option<String>,
}

async fn storm_one(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    i: u64,
    open_timeout: Duration,
) -> One {
    let request = i.to_be_bytes();
    let started = Instant::now();
    let opened = tokio::time::timeout(open_timeout, async {
        let mut s = match control.open_stream(peer, STORM).await {
            Ok(s) => s,
            // The swarm's own substream timeout (10 s): a block as well.
            Err(libp2p_stream::OpenStreamError::Io(e))
                if e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err((
                    true,
                    format!("open: the swarm timed out the substream: {e}"),
                ))
            }
            Err(e) => return Err((false, format!("open: {e}"))),
        };
        s.write_all(&request)
            .await
            .map_err(|e| (false, format!("write: {e}")))?;
        Ok(s)
    })
    .await;
    let open = started.elapsed();
    let mut s = match opened {
        Err(_) => {
            return One {
                open,
                end: Duration::ZERO,
                blocked: true,
                close_error: false,
                error: Some(format!("open blocked for {open_timeout:?}")),
            }
        }
        Ok(Err((blocked, e))) => {
            return One {
                open,
                end: Duration::ZERO,
                blocked,
                close_error: false,
                error: Some(e),
            }
        }
        Ok(Ok(s)) => s,
    };
    let end_started = Instant::now();
    let ended = tokio::time::timeout(open_timeout, async {
        let close_error = s.close().await.is_err();
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply)
            .await
            .map_err(|e| format!("read reply: {e}"))?;
        if reply != request {
            return Err(format!("reply {reply:?} differs from request {request:?}"));
        }
        Ok(close_error)
    })
    .await;
    let end = end_started.elapsed();
    drop(s);
    match ended {
        Err(_) => One {
            open,
            end,
            blocked: false,
            close_error: false,
            error: Some(format!("no reply within {open_timeout:?}")),
        },
        Ok(Err(e)) => One {
            open,
            end,
            blocked: false,
            close_error: false,
            error: Some(e),
        },
        Ok(Ok(close_error)) => One {
            open,
            end,
            blocked: false,
            close_error,
            error: None,
        },
    }
}
