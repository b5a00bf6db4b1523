//! Stream error codes on a WebTransport session.
//!
//! A WebTransport stream carries the application's 32-bit code inside HTTP/3's error space
//! (draft-ietf-webtrans-http3, "Resetting Data Streams"): the codes start at
//! [`FIRST`] and skip every HTTP/3 GREASE value (`0x1f·N + 0x21`), one in each 0x1f.

/// HTTP/3's "no error" (RFC 9114, 8.1): the code that closes a WebTransport connection.
pub(crate) const H3_NO_ERROR: u32 = 0x100;

/// The wire code of application code 0.
const FIRST: u64 = 0x52e4_a40f_a8db;
/// The wire code of application code `u32::MAX`.
const LAST: u64 = 0x52e5_ac98_3162;

/// The HTTP/3 code that carries the application's `code` on the wire.
pub(crate) fn to_wire(code: u32) -> u64 {
    let code = u64::from(code);
    FIRST + code + code / 0x1e
}

/// The application's code carried by the wire `code`; `None` when the peer's code is not one of
/// WebTransport's (an HTTP/3 code, or a GREASE value inside the range).
pub(crate) fn from_wire(code: u64) -> Option<u32> {
    if !(FIRST..=LAST).contains(&code) || (code - 0x21).is_multiple_of(0x1f) {
        return None;
    }
    let shifted = code - FIRST;
    u32::try_from(shifted - shifted / 0x1f).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_browsers_sent_decode_to_their_application_codes() {
        // Chromium's abort(9) and cancel(5), as seen on the wire.
        assert_eq!(from_wire(0x52e4_a40f_a8e4), Some(9));
        assert_eq!(from_wire(0x52e4_a40f_a8e0), Some(5));
        assert_eq!(to_wire(9), 0x52e4_a40f_a8e4);
        assert_eq!(to_wire(5), 0x52e4_a40f_a8e0);
    }

    #[test]
    fn zero_and_max_are_the_ends_of_the_range() {
        assert_eq!(to_wire(0), FIRST);
        assert_eq!(from_wire(FIRST), Some(0));
        assert_eq!(to_wire(u32::MAX), LAST);
        assert_eq!(from_wire(LAST), Some(u32::MAX));
    }

    #[test]
    fn codes_outside_the_range_are_not_webtransport_codes() {
        for code in [0, 0x100, 0x10b, FIRST - 1, LAST + 1, u64::MAX] {
            assert_eq!(from_wire(code), None, "{code:#x}");
        }
    }

    #[test]
    fn grease_codes_inside_the_range_are_refused() {
        // The first GREASE value after FIRST, and one near the end.
        let first_grease = FIRST + (0x1f - (FIRST - 0x21) % 0x1f) % 0x1f;
        assert_eq!((first_grease - 0x21) % 0x1f, 0);
        assert_eq!(from_wire(first_grease), None);
        let late_grease = first_grease + 0x1f * 1_000_000;
        assert!(late_grease < LAST);
        assert_eq!(from_wire(late_grease), None);
    }

    proptest! {
        #[test]
        fn every_application_code_survives_the_wire(code: u32) {
            let wire = to_wire(code);
            prop_assert!((FIRST..=LAST).contains(&wire));
            prop_assert_ne!((wire - 0x21) % 0x1f, 0);
            prop_assert_eq!(from_wire(wire), Some(code));
        }

        #[test]
        fn every_decoded_code_encodes_back(wire in FIRST..=LAST) {
            match from_wire(wire) {
                Some(code) => prop_assert_eq!(to_wire(code), wire),
                None => prop_assert_eq!((wire - 0x21) % 0x1f, 0),
            }
        }
    }
}
