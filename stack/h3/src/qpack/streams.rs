//! The peer's QPACK encoder and decoder streams (RFC 9204 §4.3-4.4), read
//! by an endpoint that advertised a dynamic table capacity of 0 and never
//! uses the peer's table. The only valid instructions are then a capacity
//! of 0 (encoder stream) and Stream Cancellation (decoder stream); every
//! other one is a connection error.

use super::prefix::{PrimitiveError, decode_int};
use crate::error::{ErrorCode, H3Error};

/// An instruction longer than this is refused rather than buffered: a
/// capacity or a stream id takes at most 10 octets; an insert is refused
/// once its first octet is read, before its strings.
pub const MAX_INSTRUCTION: usize = 16;

/// Consumes the complete encoder-stream instructions at the front of
/// `buf` and returns the octets used; an incomplete one is left.
pub fn read_encoder_stream(buf: &[u8]) -> Result<usize, H3Error> {
    let err = |reason| H3Error::connection(ErrorCode::QpackEncoderStreamError, reason);
    let mut used = 0;
    while let Some(&first) = buf.get(used) {
        if first & 0xe0 != 0x20 {
            // 1Txxxxxx insert with name reference, 01Hxxxxx insert with
            // literal name, 000xxxxx duplicate: all need table space.
            return Err(err(
                "insert or duplicate into a dynamic table of capacity 0",
            ));
        }
        // 001xxxxx: Set Dynamic Table Capacity.
        match decode_int(&buf[used..], 5) {
            Ok((0, n)) => used += n,
            Ok(_) => return Err(err("dynamic table capacity above the 0 we advertised")),
            Err(PrimitiveError::Truncated) => break,
            Err(PrimitiveError::Invalid(reason)) => return Err(err(reason)),
        }
    }
    Ok(used)
}

/// Consumes the complete decoder-stream instructions at the front of `buf`.
pub fn read_decoder_stream(buf: &[u8]) -> Result<usize, H3Error> {
    let err = |reason| H3Error::connection(ErrorCode::QpackDecoderStreamError, reason);
    let mut used = 0;
    while let Some(&first) = buf.get(used) {
        if first & 0xc0 != 0x40 {
            // 1xxxxxxx Section Acknowledgment, 00xxxxxx Insert Count
            // Increment: we never sent a section with a dynamic reference
            // nor an insert (§4.4.1, §4.4.3).
            return Err(err("acknowledgment of a dynamic table we never used"));
        }
        // 01xxxxxx: Stream Cancellation; nothing to release.
        match decode_int(&buf[used..], 6) {
            Ok((_, n)) => used += n,
            Err(PrimitiveError::Truncated) => break,
            Err(PrimitiveError::Invalid(reason)) => return Err(err(reason)),
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_stream_may_only_set_capacity_zero() {
        assert_eq!(read_encoder_stream(&[0x20, 0x20]), Ok(2));
        // An incomplete instruction waits for the rest.
        assert_eq!(read_encoder_stream(&[0x20, 0x3f]), Ok(1));
        let code = |b: &[u8]| read_encoder_stream(b).unwrap_err().code;
        assert_eq!(
            code(&[0x3f, 0xe1, 0x1f]),
            ErrorCode::QpackEncoderStreamError
        );
        // Insert with a static name reference, with a literal name, duplicate.
        for insert in [&[0xc0, 0x01, b'a'][..], &[0x41, b'a', 0x00], &[0x00]] {
            assert_eq!(code(insert), ErrorCode::QpackEncoderStreamError);
        }
    }

    #[test]
    fn decoder_stream_may_only_cancel_streams() {
        assert_eq!(read_decoder_stream(&[0x44, 0x7f]), Ok(1));
        assert_eq!(read_decoder_stream(&[0x44, 0x7f, 0x01]), Ok(3));
        let code = |b: &[u8]| read_decoder_stream(b).unwrap_err().code;
        // Section Acknowledgment of stream 4; Insert Count Increment of 1.
        assert_eq!(code(&[0x84]), ErrorCode::QpackDecoderStreamError);
        assert_eq!(code(&[0x01]), ErrorCode::QpackDecoderStreamError);
    }
}
