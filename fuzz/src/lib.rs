//! What the fuzz targets share: an input cut into the pieces its bytes arrive in, a reader
//! that hands bytes out a few at a time, and a QUIC varint decoder of our own to check
//! the crate's reads against.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, ReadBuf};

/// At most this many cuts, so at most this many + 1 pieces.
const MAX_CUTS: usize = 7;

/// Reads an input laid out as `[n] [n cut positions, u16 LE] [data]` (n taken mod 8): the data,
/// and the data cut at those positions (sorted, clamped to its length) into the pieces quinn
/// would hand over one after another. Short inputs are all data, in one piece.
pub fn pieces(input: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let Some((&n, rest)) = input.split_first() else {
        return (input, vec![input]);
    };
    let n = usize::from(n) % (MAX_CUTS + 1);
    let Some((cuts, data)) = rest.split_at_checked(2 * n) else {
        return (rest, vec![rest]);
    };
    let mut cuts: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|cut| usize::from(u16::from_le_bytes([cut[0], cut[1]])).min(data.len()))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::with_capacity(n + 1);
    let mut start = 0;
    for cut in cuts.into_iter().chain([data.len()]) {
        pieces.push(&data[start..cut]);
        start = cut;
    }
    (data, pieces)
}

/// The inverse of [`pieces`], for writing seeds: `data` with these cuts in front.
pub fn with_cuts(cuts: &[u16], data: &[u8]) -> Vec<u8> {
    assert!(cuts.len() <= MAX_CUTS);
    let mut input = vec![cuts.len() as u8];
    for cut in cuts {
        input.extend_from_slice(&cut.to_le_bytes());
    }
    input.extend_from_slice(data);
    input
}

/// An `AsyncRead` over a byte string that hands out at most `step` bytes per read (0: all
/// that is left) and, if asked, is not ready once before each read, as a QUIC stream whose
/// data comes in packet by packet. Counts what was read, to check that a parser took no more
/// than its message.
pub struct Trickle<'a> {
    data: &'a [u8],
    position: usize,
    step: usize,
    stall: bool,
    stalled: bool,
}

impl<'a> Trickle<'a> {
    /// The reader of `data` with the pace `pace` says: its low 7 bits the step, its high bit
    /// whether each read stalls first.
    pub fn new(data: &'a [u8], pace: u8) -> Self {
        Self {
            data,
            position: 0,
            step: usize::from(pace & 0x7f),
            stall: pace & 0x80 != 0,
            stalled: false,
        }
    }

    /// How many bytes were read.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stall && !self.stalled {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.stalled = false;
        let left = &self.data[self.position..];
        let mut n = left.len().min(buf.remaining());
        if self.step > 0 {
            n = n.min(self.step);
        }
        buf.put_slice(&left[..n]);
        self.position += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future whose reads are all from a [`Trickle`] to its end.
pub fn run<F: Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}

/// A QUIC variable-length integer (RFC 9000, 16) off the front of `bytes`: its value and
/// length, or `None` if `bytes` ends first. Written apart from the crate's decoder on purpose.
pub fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let length = 1usize << (first >> 6);
    let encoded = bytes.get(..length)?;
    let value = encoded[1..]
        .iter()
        .fold(u64::from(first & 0x3f), |value, &byte| {
            (value << 8) | u64::from(byte)
        });
    Some((value, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_undo_with_cuts() {
        let data = b"0123456789";
        let input = with_cuts(&[7, 3, 200], data);
        let (whole, cut) = pieces(&input);
        assert_eq!(whole, data);
        assert_eq!(cut, [&b"012"[..], b"3456", b"789", b""]);
        assert_eq!(pieces(&with_cuts(&[], data)).1, [&data[..]]);
    }

    #[test]
    fn varints_as_rfc_9000_gives_them() {
        // RFC 9000, A.1.
        assert_eq!(
            varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(varint(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(varint(&[0x25]), Some((37, 1)));
        assert_eq!(varint(&[0x40, 0x25]), Some((37, 2)));
        assert_eq!(varint(&[0x40]), None);
    }
}
