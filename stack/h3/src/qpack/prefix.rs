//! Prefixed integers and string literals (RFC 9204 §4.1, as RFC 7541
//! §5.1-5.2): the encoding every QPACK representation is built from.

use std::borrow::Cow;

/// Why a primitive did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimitiveError {
    /// The input ends inside it: on an instruction stream, wait for more.
    Truncated,
    /// An integer past 2^62 or a string whose Huffman coding is invalid.
    Invalid(&'static str),
}

/// Most continuation octets: 9 of 7 bits past the prefix pass 2^62.
const MAX_CONTINUATION: usize = 9;

/// Reads an integer with an `n`-bit prefix (1..=8) from the front of `buf`.
pub fn decode_int(buf: &[u8], n: u8) -> Result<(u64, usize), PrimitiveError> {
    debug_assert!((1..=8).contains(&n));
    let mask = (0xffu16 >> (8 - n)) as u8;
    let first = *buf.first().ok_or(PrimitiveError::Truncated)?;
    let mut value = u64::from(first & mask);
    if value < u64::from(mask) {
        return Ok((value, 1));
    }
    for (i, &b) in buf[1..].iter().enumerate() {
        if i == MAX_CONTINUATION {
            return Err(PrimitiveError::Invalid("prefixed integer too long"));
        }
        value = (u64::from(b & 0x7f) << (7 * i))
            .checked_add(value)
            .filter(|&v| v <= crate::varint::MAX)
            .ok_or(PrimitiveError::Invalid("prefixed integer past 2^62"))?;
        if b & 0x80 == 0 {
            return Ok((value, i + 2));
        }
    }
    Err(PrimitiveError::Truncated)
}

/// Appends `value` with an `n`-bit prefix; `flags` holds the bits above it.
pub fn encode_int(value: u64, n: u8, flags: u8, out: &mut Vec<u8>) {
    let mask = (0xffu16 >> (8 - n)) as u8;
    if value < u64::from(mask) {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask);
    let mut rest = value - u64::from(mask);
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Reads a string literal whose length has an `n`-bit prefix, with the
/// Huffman flag the bit just above it. Raw strings borrow `buf`.
pub fn decode_str(buf: &[u8], n: u8) -> Result<(Cow<'_, [u8]>, usize), PrimitiveError> {
    let huffman = buf.first().is_some_and(|b| b & (1 << n) != 0);
    let (len, used) = decode_int(buf, n)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| used.checked_add(len))
        .ok_or(PrimitiveError::Truncated)?;
    let raw = buf.get(used..end).ok_or(PrimitiveError::Truncated)?;
    if !huffman {
        return Ok((Cow::Borrowed(raw), end));
    }
    let decoded = loona_hpack::huffman::HuffmanDecoder::new()
        .decode(raw)
        .map_err(|_| PrimitiveError::Invalid("invalid Huffman coding"))?;
    Ok((Cow::Owned(decoded), end))
}

/// Appends `s` as a string literal with an `n`-bit length prefix and
/// `flags` above the Huffman bit; Huffman-coded when that is shorter.
pub fn encode_str(s: &[u8], n: u8, flags: u8, out: &mut Vec<u8>) {
    let coded = loona_hpack::huffman::encoded_len(s);
    if coded < s.len() {
        encode_int(coded as u64, n, flags | (1 << n), out);
        loona_hpack::huffman::encode_into(s, out);
    } else {
        encode_int(s.len() as u64, n, flags, out);
        out.extend_from_slice(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefixed_integers_decode_the_rfc_7541_examples() {
        assert_eq!(decode_int(&[0b0000_1010], 5), Ok((10, 1)));
        assert_eq!(
            decode_int(&[0b0001_1111, 0b1001_1010, 0b0000_1010], 5),
            Ok((1337, 3))
        );
        assert_eq!(decode_int(&[42], 8), Ok((42, 1)));
        // Bits above the prefix are not part of the value.
        assert_eq!(decode_int(&[0b1110_1010], 5), Ok((10, 1)));
    }

    #[test]
    fn truncated_and_overlong_integers_are_refused() {
        assert_eq!(decode_int(&[], 5), Err(PrimitiveError::Truncated));
        assert_eq!(decode_int(&[0x1f, 0x9a], 5), Err(PrimitiveError::Truncated));
        let mut overlong = vec![0x1f];
        overlong.extend([0xff; 10]);
        overlong.push(0x01);
        assert!(matches!(
            decode_int(&overlong, 5),
            Err(PrimitiveError::Invalid(_))
        ));
        // 2^62 itself does not fit.
        let mut out = Vec::new();
        encode_int(1 << 62, 5, 0, &mut out);
        assert!(matches!(
            decode_int(&out, 5),
            Err(PrimitiveError::Invalid(_))
        ));
    }

    #[test]
    fn huffman_round_trips_and_uses_the_rfc_7541_code() {
        // RFC 7541 C.4.1: "www.example.com" Huffman-coded.
        let mut out = Vec::new();
        encode_str(b"www.example.com", 7, 0, &mut out);
        assert_eq!(
            out,
            [
                0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff
            ]
        );
        let (s, used) = decode_str(&out, 7).unwrap();
        assert_eq!((&s[..], used), (&b"www.example.com"[..], out.len()));
        assert!(matches!(s, Cow::Owned(_)));
    }

    #[test]
    fn invalid_huffman_padding_is_refused() {
        // One octet "0": code 00000 then padding 000 (not EOS's ones).
        let buf = [0x81, 0x00];
        assert!(matches!(
            decode_str(&buf, 7),
            Err(PrimitiveError::Invalid(_))
        ));
        // A string claiming more octets than there are.
        assert_eq!(decode_str(&[0x05, b'a'], 7), Err(PrimitiveError::Truncated));
    }

    proptest! {
        #[test]
        fn integers_round_trip(value in 0..=crate::varint::MAX, n in 1u8..=8) {
            let mut out = Vec::new();
            encode_int(value, n, 0, &mut out);
            prop_assert_eq!(decode_int(&out, n), Ok((value, out.len())));
        }

        #[test]
        fn strings_round_trip_raw_or_huffman(s in proptest::collection::vec(any::<u8>(), 0..200), n in prop_oneof![Just(3u8), Just(7u8)]) {
            let mut out = Vec::new();
            encode_str(&s, n, 0, &mut out);
            let (back, used) = decode_str(&out, n).unwrap();
            prop_assert_eq!(&back[..], &s[..]);
            prop_assert_eq!(used, out.len());
        }
    }
}
