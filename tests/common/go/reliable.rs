//! Resets with a reliable size (RESET_STREAM_AT): the Go peer's `reliable-reset` lines, and what
//! our handler of the protocol sees.
//!
//! The opener writes [`RELIABLE_RESET_SIZE`] bytes of [`echo_payload`], marks the first
//! [`RELIABLE_RESET_RELIABLE`] (and every protocol byte before them: WebTransport's stream
//! header, multistream-select's) reliable, and resets with [`RELIABLE_RESET_CODE`]. The reader
//! must get at least the reliable bytes, then the reset. It may get more: bytes above the
//! reliable size that arrived before the reset may be delivered (the draft allows it; quic-go
//! delivers whatever of them the application read before the reset came in), so exactly the
//! reliable bytes is only certain when the writer had sent none above them.

use std::{collections::BTreeMap, time::Duration};

use futures::AsyncReadExt;

use super::{echo_payload, Json};

/// The payload of a reliable-reset stream (the Go peer's default `--size`).
pub const RELIABLE_RESET_SIZE: usize = 100 * 1024;
/// The bytes of it below the reliable size (the Go peer's default `--reliable`).
pub const RELIABLE_RESET_RELIABLE: usize = 10 * 1024;
/// The reset's application error code (the Go peer's default `--reset-code`).
pub const RELIABLE_RESET_CODE: u32 = 42;

fn num(v: &Json, key: &str) -> Result<u64, String> {
    v.u64(key)
        .ok_or_else(|| format!("no number {key:?} in {v:?}"))
}

fn expect_event(v: &Json, event: &str) -> Result<(), String> {
    if v.event() == event {
        Ok(())
    } else {
        Err(format!("not a {event:?} line: {v:?}"))
    }
}

/// The Go opener's `reliable_reset` line (`--mode reliable-reset`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReliableResetReport {
    pub count: u64,
    /// Opened, written, reset, and the handler's half read to its end.
    pub ok: u64,
    pub failed: u64,
    pub size: u64,
    pub reliable: u64,
    pub code: u64,
    /// `write` or `queue` (the Go peer's `--rest`).
    pub rest: String,
    pub concurrency: u64,
    /// How the handler ended its half of each ok stream: `eof` or `reset`.
    pub peer_ends: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl ReliableResetReport {
    pub fn from_json(v: &Json) -> Result<Self, String> {
        expect_event(v, "reliable_reset")?;
        Ok(Self {
            count: num(v, "count")?,
            ok: num(v, "ok")?,
            failed: num(v, "failed")?,
            size: num(v, "size")?,
            reliable: num(v, "reliable")?,
            code: num(v, "code")?,
            rest: v.str("rest").unwrap_or_default().to_owned(),
            concurrency: num(v, "concurrency")?,
            peer_ends: v.counts("peer_ends"),
            elapsed: Duration::from_secs_f64(v.num("elapsed_ms") / 1e3),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "streams {} (ok {}, failed {}), {} bytes each, {} reliable, code {}, rest {}, \
             concurrency {}, peer ends {:?}, elapsed {:.0} ms",
            self.count,
            self.ok,
            self.failed,
            self.size,
            self.reliable,
            self.code,
            self.rest,
            self.concurrency,
            self.peer_ends,
            self.elapsed.as_secs_f64() * 1e3
        )
    }
}

/// The Go handler's `reliable_reset_served` line: running totals, printed after every stream
/// and once more at exit (`final`). Its expectations (`reliable`, `size`, `code`) are the Go
/// peer's own `--reliable`, `--size` and `--reset-code`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReliableResetServed {
    /// Streams handled.
    pub count: u64,
    /// Streams that got at least `reliable` and at most `size` bytes, all of the pattern, then
    /// a reset with `code`.
    pub ok: u64,
    /// `count - ok`.
    pub bad: u64,
    /// Those of `ok` that got exactly `reliable` bytes.
    pub exact: u64,
    /// Streams whose bytes differ from the pattern.
    pub pattern_bad: u64,
    pub min_bytes: u64,
    pub max_bytes: u64,
    pub reliable: u64,
    pub size: u64,
    pub code: u64,
    /// How the streams ended: `reset`, `eof`, `error`.
    pub ends: BTreeMap<String, u64>,
    /// The reset codes seen (decimal), and on how many streams.
    pub codes: BTreeMap<String, u64>,
    pub is_final: bool,
}

impl ReliableResetServed {
    pub fn from_json(v: &Json) -> Result<Self, String> {
        expect_event(v, "reliable_reset_served")?;
        Ok(Self {
            count: num(v, "count")?,
            ok: num(v, "ok")?,
            bad: num(v, "bad")?,
            exact: num(v, "exact")?,
            pattern_bad: num(v, "pattern_bad")?,
            min_bytes: num(v, "min_bytes")?,
            max_bytes: num(v, "max_bytes")?,
            reliable: num(v, "reliable")?,
            size: num(v, "size")?,
            code: num(v, "code")?,
            ends: v.counts("ends"),
            codes: v.counts("codes"),
            is_final: v.bool("final").unwrap_or(false),
        })
    }

    /// Streams that ended with a reset carrying `code`.
    pub fn with_code(&self, code: u32) -> u64 {
        self.codes.get(&code.to_string()).copied().unwrap_or(0)
    }

    pub fn line(&self) -> String {
        format!(
            "streams {} (ok {}, bad {}, exactly {} bytes {}), bytes {}..={}, pattern bad {}, \
             ends {:?}, codes {:?}",
            self.count,
            self.ok,
            self.bad,
            self.reliable,
            self.exact,
            self.min_bytes,
            self.max_bytes,
            self.pattern_bad,
            self.ends,
            self.codes
        )
    }
}

/// One of the Go handler's `reliable_reset_stream` lines (printed for its first 10 streams).
#[derive(Debug, Clone, PartialEq)]
pub struct ReliableResetStream {
    /// The order in which the handler finished the stream.
    pub index: u64,
    pub bytes: u64,
    pub pattern_ok: bool,
    /// `reset`, `eof` or `error`.
    pub end: String,
    pub code: Option<u64>,
    pub error: Option<String>,
}

impl ReliableResetStream {
    pub fn from_json(v: &Json) -> Result<Self, String> {
        expect_event(v, "reliable_reset_stream")?;
        Ok(Self {
            index: num(v, "index")?,
            bytes: num(v, "bytes")?,
            pattern_ok: v
                .bool("pattern_ok")
                .ok_or_else(|| format!("no pattern_ok in {v:?}"))?,
            end: v.str("end").unwrap_or_default().to_owned(),
            code: v.u64("code"),
            error: v.str("error").map(str::to_owned),
        })
    }
}

/// How a stream's receive half ended for our handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The peer's FIN.
    Eof,
    /// The peer's reset, with its application code (WebTransport's mapped back).
    Reset(u64),
    /// Any other error.
    Error(String),
}

/// What our handler of the reliable-reset protocol saw on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReliableSeen {
    pub bytes: usize,
    /// Every byte is the pattern's ([`echo_payload`]).
    pub pattern_ok: bool,
    pub end: StreamEnd,
}

impl ReliableSeen {
    /// At least `reliable` bytes (and at most `size`), all of the pattern, then a reset with
    /// `code`.
    pub fn is_ok(&self, reliable: usize, size: usize, code: u32) -> bool {
        self.pattern_ok
            && (reliable..=size).contains(&self.bytes)
            && self.end == StreamEnd::Reset(u64::from(code))
    }
}

/// Read `stream` to its end or first error, checking each byte against the pattern.
pub async fn read_reliable_reset(stream: &mut libp2p::Stream) -> ReliableSeen {
    let pattern = echo_payload(RELIABLE_RESET_SIZE);
    let mut buf = vec![0u8; 32 * 1024];
    let mut seen = ReliableSeen {
        bytes: 0,
        pattern_ok: true,
        end: StreamEnd::Eof,
    };
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return seen,
            Ok(n) => {
                let expected = pattern.get(seen.bytes..seen.bytes + n);
                if expected != Some(&buf[..n]) {
                    seen.pattern_ok = false;
                }
                seen.bytes += n;
            }
            Err(e) => {
                seen.end = match e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<libp2p_quinn::StreamError>())
                {
                    Some(libp2p_quinn::StreamError::ResetByPeer(code)) => StreamEnd::Reset(*code),
                    _ => StreamEnd::Error(e.to_string()),
                };
                return seen;
            }
        }
    }
}
