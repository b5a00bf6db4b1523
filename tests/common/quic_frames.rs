//! QUIC frames as bytes (RFC 9000 §16 and §19), for tests that put frames of their own on the
//! wire ([`super::inject`]): encoders for the frames a test injects, and a walker that finds
//! where each frame of a 1-RTT packet's plaintext begins and ends.
//!
//! The walker knows every frame a quinn 0.11 client may put in a 1-RTT packet (the frame types
//! of quinn-proto 0.11.19's `frame.rs`, read for their layout, and RESET_STREAM_AT, which the
//! quinn in patches/ adds) and nothing more: a frame it does not know stops the walk with an
//! error, so that a packet is never rewritten on a guess.

use std::ops::Range;

/// Frame types by name, for the frames tests build.
pub const RESET_STREAM: u64 = 0x04;
/// draft-ietf-quic-reliable-stream-reset: RESET_STREAM with a reliable size.
pub const RESET_STREAM_AT: u64 = 0x24;

/// Appends `value` as a QUIC variable-length integer in its shortest form.
///
/// # Panics
///
/// If `value` is 2^62 or more: no varint holds it.
pub fn put_varint(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=0x3f => out.push(value as u8),
        0x40..=0x3fff => out.extend_from_slice(&(0x4000 | value as u16).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&(0x8000_0000 | value as u32).to_be_bytes()),
        0x4000_0000..=0x3fff_ffff_ffff_ffff => {
            out.extend_from_slice(&(0xc000_0000_0000_0000 | value).to_be_bytes())
        }
        _ => panic!("{value} does not fit a QUIC varint"),
    }
}

/// A frame of type `ty` whose fields are all varints, in order: RESET_STREAM (stream id, error
/// code, final size), RESET_STREAM_AT (the same and the reliable size), MAX_DATA, or a type
/// nobody knows.
pub fn frame(ty: u64, fields: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, ty);
    for &field in fields {
        put_varint(&mut out, field);
    }
    out
}

/// RESET_STREAM (0x04).
pub fn reset_stream(stream: u64, error_code: u64, final_size: u64) -> Vec<u8> {
    frame(RESET_STREAM, &[stream, error_code, final_size])
}

/// RESET_STREAM_AT (0x24): as RESET_STREAM, and the bytes below `reliable_size` are delivered
/// before the reset is.
pub fn reset_stream_at(
    stream: u64,
    error_code: u64,
    final_size: u64,
    reliable_size: u64,
) -> Vec<u8> {
    frame(
        RESET_STREAM_AT,
        &[stream, error_code, final_size, reliable_size],
    )
}

/// A STREAM frame carrying `data` at `offset` of `stream`, with its length, and with FIN when
/// `fin` (its final size is then `offset + data.len()`).
pub fn stream(stream: u64, offset: u64, data: &[u8], fin: bool) -> Vec<u8> {
    // Type bits: 0x04 an offset follows, 0x02 a length follows, 0x01 FIN.
    let mut out = Vec::new();
    put_varint(&mut out, 0x08 | 0x04 | 0x02 | u64::from(fin));
    put_varint(&mut out, stream);
    put_varint(&mut out, offset);
    put_varint(&mut out, data.len() as u64);
    out.extend_from_slice(data);
    out
}

/// One frame of a packet's plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub ty: u64,
    /// Where the whole frame lies, its type included.
    pub range: Range<usize>,
    /// What a STREAM frame says.
    pub stream: Option<StreamFrame>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFrame {
    pub id: u64,
    pub offset: u64,
    pub fin: bool,
    /// Where its data lies in the plaintext.
    pub data: Range<usize>,
}

/// Why a plaintext could not be walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkError {
    /// A frame type the walker does not know, at this offset.
    UnknownType { ty: u64, at: usize },
    /// The frame that starts at this offset runs past the end.
    Truncated { at: usize },
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownType { ty, at } => write!(f, "unknown frame type {ty:#x} at byte {at}"),
            Self::Truncated { at } => write!(f, "the frame at byte {at} is truncated"),
        }
    }
}

/// The frames of a 1-RTT packet's plaintext, in order. A run of PADDING is one frame.
pub fn walk(payload: &[u8]) -> Result<Vec<Frame>, WalkError> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let start = at;
        let mut cursor = Cursor {
            bytes: payload,
            at,
            start,
        };
        let ty = cursor.varint()?;
        let mut stream = None;
        match ty {
            // PADDING: quinn writes runs of it.
            0x00 => {
                while cursor.bytes.get(cursor.at) == Some(&0) {
                    cursor.at += 1;
                }
            }
            // PING, HANDSHAKE_DONE, IMMEDIATE_ACK: the type alone.
            0x01 | 0x1e | 0x1f => {}
            // ACK, ACK_ECN: largest, delay, count of further ranges, first range, then a gap
            // and a length per further range, then three ECN counts for ACK_ECN.
            0x02 | 0x03 => {
                cursor.varints(2)?;
                let ranges = cursor.varint()?;
                cursor.varint()?;
                for _ in 0..ranges {
                    cursor.varints(2)?;
                }
                if ty == 0x03 {
                    cursor.varints(3)?;
                }
            }
            // RESET_STREAM: id, code, final size.
            0x04 => cursor.varints(3)?,
            // STOP_SENDING: id, code. MAX_STREAM_DATA, STREAM_DATA_BLOCKED: id, offset.
            0x05 | 0x11 | 0x15 => cursor.varints(2)?,
            // CRYPTO: offset, then length-prefixed data.
            0x06 => {
                cursor.varint()?;
                cursor.prefixed()?;
            }
            // NEW_TOKEN: a length-prefixed token.
            0x07 => cursor.prefixed().map(drop)?,
            // STREAM: bit 0x04 an offset, 0x02 a length (else the data runs to the end), 0x01 FIN.
            0x08..=0x0f => {
                let id = cursor.varint()?;
                let offset = if ty & 0x04 != 0 { cursor.varint()? } else { 0 };
                let data = if ty & 0x02 != 0 {
                    cursor.prefixed()?
                } else {
                    cursor.at..payload.len()
                };
                cursor.at = data.end;
                stream = Some(StreamFrame {
                    id,
                    offset,
                    fin: ty & 0x01 != 0,
                    data,
                });
            }
            // MAX_DATA, MAX_STREAMS (bidi, uni), DATA_BLOCKED, STREAMS_BLOCKED (bidi, uni),
            // RETIRE_CONNECTION_ID: one varint.
            0x10 | 0x12 | 0x13 | 0x14 | 0x16 | 0x17 | 0x19 => cursor.varint().map(drop)?,
            // NEW_CONNECTION_ID: sequence, retire prior to, a one-byte length and the id, a
            // 16-byte reset token.
            0x18 => {
                cursor.varints(2)?;
                let len = cursor.bytes(1)?;
                let len = usize::from(payload[len.start]);
                cursor.bytes(len + 16)?;
            }
            // PATH_CHALLENGE, PATH_RESPONSE: 8 bytes.
            0x1a | 0x1b => cursor.bytes(8).map(drop)?,
            // CONNECTION_CLOSE: code, the offending frame's type, a reason.
            0x1c => {
                cursor.varints(2)?;
                cursor.prefixed()?;
            }
            // CONNECTION_CLOSE of the application: code, a reason.
            0x1d => {
                cursor.varint()?;
                cursor.prefixed()?;
            }
            // DATAGRAM without length runs to the end; with it, length-prefixed.
            0x30 => cursor.at = payload.len(),
            0x31 => cursor.prefixed().map(drop)?,
            // RESET_STREAM_AT (the quinn in third_party/ sends it): id, code, final size, reliable
            // size. ACK_FREQUENCY: sequence, threshold, max ack delay, reordering threshold.
            0x24 | 0xaf => cursor.varints(4)?,
            ty => return Err(WalkError::UnknownType { ty, at: start }),
        }
        at = cursor.at;
        frames.push(Frame {
            ty,
            range: start..at,
            stream,
        });
    }
    Ok(frames)
}

/// A read position in a plaintext, inside the frame that starts at `start` (for errors).
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    start: usize,
}

impl Cursor<'_> {
    fn truncated(&self) -> WalkError {
        WalkError::Truncated { at: self.start }
    }

    /// The next `len` bytes' place.
    fn bytes(&mut self, len: usize) -> Result<Range<usize>, WalkError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.truncated())?;
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }

    fn varint(&mut self) -> Result<u64, WalkError> {
        let first = *self.bytes.get(self.at).ok_or_else(|| self.truncated())?;
        // The top two bits give the length: 1, 2, 4 or 8 bytes.
        let len = 1 << (first >> 6);
        let range = self.bytes(len)?;
        Ok(self.bytes[range]
            .iter()
            .skip(1)
            .fold(u64::from(first & 0x3f), |value, &byte| {
                value << 8 | u64::from(byte)
            }))
    }

    fn varints(&mut self, n: usize) -> Result<(), WalkError> {
        for _ in 0..n {
            self.varint()?;
        }
        Ok(())
    }

    /// A varint length and that many bytes; their place.
    fn prefixed(&mut self) -> Result<Range<usize>, WalkError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.truncated())?;
        self.bytes(len)
    }
}
