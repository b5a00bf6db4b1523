//! libp2p's perf protocol, `/perf/1.0.0` (libp2p/specs `perf/perf.md`), over any stream.
//!
//! The client writes the number of bytes it wants back as a big-endian u64, uploads, and closes
//! its write side; the server reads the number, reads to the end, sends what was asked and
//! closes. Both sides give up on a stream that makes no progress for [`STALL`], so a peer
//! that stops reading or writing costs one stream for a bounded time.
//!
//! Shared by the `perf` example, the WAN benchmark (`benches/wan/`) and the tests.

// Shared with the WAN benchmark and the tests, each of which uses a part.
#![allow(dead_code)]

use std::{
    io,
    time::{Duration, Instant},
};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/perf/1.0.0");

/// How long a read or a write may make no progress before the stream is given up.
pub const STALL: Duration = Duration::from_secs(10);

/// The slowest upload that still counts as progress while the client waits for its answer:
/// 1 Mbit/s.
const SLOWEST_BYTES_PER_SECOND: f64 = 125_000.0;

/// Bytes per read and per write: big enough that a system call moves a useful amount.
const CHUNK: usize = 64 * 1024;

/// The download size after which [`Run::first_mib`] is taken.
const MIB: u64 = 1 << 20;

/// What the server did with one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub received: u64,
    pub sent: u64,
}

/// Answers one perf stream. An error means the stream was not served in full (the caller
/// should reset it rather than let a clean end pass a short answer off as complete).
pub async fn serve<S>(stream: &mut S, stall: Duration) -> io::Result<Served>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut header = [0u8; 8];
    within(stall, stream.read_exact(&mut header))
        .await
        .map_err(|e| context(e, "reading the 8-byte length"))?;
    let sent = u64::from_be_bytes(header);
    let received = drain(stream, stall, stall, |_| {}).await?;
    send(stream, sent, stall, |_| {}).await?;
    within(stall, stream.close()).await?;
    Ok(Served { received, sent })
}

/// What one client run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub upload_bytes: u64,
    pub download_bytes: u64,
    /// From the call to [`run`] until the upload was closed.
    pub upload: Duration,
    /// From the call to [`run`] until the download ended.
    pub total: Duration,
    /// From the call to [`run`] until the first MiB of the download had arrived, if the
    /// download is that long.
    pub first_mib: Option<Duration>,
}

/// Bytes moved since the last report: `progress` is called with them about once a second,
/// for test-plans' intermediate lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub upload_bytes: u64,
    pub download_bytes: u64,
}

/// Runs the client side on an open perf stream: uploads `upload` bytes, asks for `download`.
pub async fn run<S>(
    stream: &mut S,
    upload: u64,
    download: u64,
    stall: Duration,
    mut progress: impl FnMut(Progress),
) -> io::Result<Run>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    within(stall, stream.write_all(&download.to_be_bytes())).await?;
    let mut meter = Meter::new(|n| {
        progress(Progress {
            upload_bytes: n,
            download_bytes: 0,
        })
    });
    send(stream, upload, stall, |n| meter.add(n)).await?;
    meter.finish();
    within(stall, stream.close()).await?;
    let uploaded = start.elapsed();
    let mut first_mib = None;
    let mut meter = Meter::new(|n| {
        progress(Progress {
            upload_bytes: 0,
            download_bytes: n,
        })
    });
    // The upload's tail may still sit in the transport's send buffer: quinn takes up to the
    // peer's flow-control window at once (10 MB, 20 s at 4 Mbit/s) where quic-go's writes wait
    // for the wire. The answer cannot come before that tail is through, so its first byte may
    // take as long as the whole upload at the slowest rate we still call progress.
    let first = stall + Duration::from_secs_f64(upload as f64 / SLOWEST_BYTES_PER_SECOND);
    let received = drain(stream, first, stall, |n| {
        meter.add(n);
        if first_mib.is_none() && meter.total >= MIB {
            first_mib = Some(start.elapsed());
        }
    })
    .await?;
    meter.finish();
    if received != download {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("asked for {download} bytes, the server sent {received}"),
        ));
    }
    Ok(Run {
        upload_bytes: upload,
        download_bytes: received,
        upload: uploaded,
        total: start.elapsed(),
        first_mib,
    })
}

/// Reads to the end and returns how many bytes came; `on_read` hears of each read. The first
/// read may take up to `first`, each later one up to `stall`.
async fn drain<S>(
    stream: &mut S,
    first: Duration,
    stall: Duration,
    mut on_read: impl FnMut(u64),
) -> io::Result<u64>
where
    S: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    let mut wait = first;
    loop {
        let n = within(wait, stream.read(&mut buf)).await? as u64;
        wait = stall;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        on_read(n);
    }
}

/// Writes `len` bytes of zeros; `on_write` hears of each write.
async fn send<S>(
    stream: &mut S,
    len: u64,
    stall: Duration,
    mut on_write: impl FnMut(u64),
) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        within(stall, stream.write_all(&buf[..n])).await?;
        left -= n as u64;
        on_write(n as u64);
    }
    Ok(())
}

/// Counts bytes and reports them about once a second.
struct Meter<F> {
    report: F,
    total: u64,
    unreported: u64,
    last: Instant,
}

impl<F: FnMut(u64)> Meter<F> {
    fn new(report: F) -> Self {
        Self {
            report,
            total: 0,
            unreported: 0,
            last: Instant::now(),
        }
    }

    fn add(&mut self, n: u64) {
        self.total += n;
        self.unreported += n;
        if self.last.elapsed() >= Duration::from_secs(1) {
            (self.report)(std::mem::take(&mut self.unreported));
            self.last = Instant::now();
        }
    }

    /// Reports what is left.
    fn finish(&mut self) {
        if self.unreported > 0 {
            (self.report)(std::mem::take(&mut self.unreported));
        }
    }
}

/// `op`, or a `TimedOut` error if it makes no progress for `stall`.
async fn within<T>(
    stall: Duration,
    op: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(stall, op).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no progress for {stall:?}"),
        ))
    })
}

fn context(error: io::Error, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}
