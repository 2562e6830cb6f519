//! QUIC variable-length integers (RFC 9000 §16): two high bits give the
//! length (1, 2, 4 or 8 octets), the rest the value, up to 2^62 - 1.

/// The largest value a varint carries.
pub const MAX: u64 = (1 << 62) - 1;
/// The longest encoding.
pub const MAX_LEN: usize = 8;

/// Reads a varint from the front of `buf`: the value and the octets it took,
/// or `None` while it is truncated (the only way one can be malformed: every
/// bit pattern is a value, and non-minimal encodings are allowed).
pub fn decode(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let mut value = u64::from(first & 0x3f);
    for &b in &bytes[1..] {
        value = (value << 8) | u64::from(b);
    }
    Some((value, len))
}

/// The octets the minimal encoding of `value` takes.
pub fn len(value: u64) -> usize {
    match value {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        _ => 8,
    }
}

/// Appends the minimal encoding of `value` (which must be at most [`MAX`]).
pub fn encode(value: u64, out: &mut Vec<u8>) {
    assert!(value <= MAX, "varint over 2^62-1");
    match len(value) {
        1 => out.push(value as u8),
        2 => out.extend_from_slice(&(value as u16 | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&(value as u32 | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(value | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_decodes_the_rfc_9000_examples() {
        let cases: [(&[u8], u64); 4] = [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
        ];
        for (bytes, value) in cases {
            assert_eq!(decode(bytes), Some((value, bytes.len())));
        }
        // Non-minimal is allowed: 37 in two octets (RFC 9000 §A.1).
        assert_eq!(decode(&[0x40, 0x25]), Some((37, 2)));
    }

    #[test]
    fn truncated_varint_is_not_a_value() {
        let bytes = [0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c];
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n]), None, "{n} octets");
        }
        assert_eq!(decode(&[0x40]), None);
        assert_eq!(decode(&[0x80, 0, 0]), None);
    }

    #[test]
    #[should_panic(expected = "varint over 2^62-1")]
    fn encoding_past_2_62_panics() {
        encode(MAX + 1, &mut Vec::new());
    }

    proptest! {
        #[test]
        fn varint_round_trips_minimally(value in 0..=MAX, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut out = Vec::new();
            encode(value, &mut out);
            prop_assert_eq!(out.len(), len(value));
            out.extend_from_slice(&tail);
            prop_assert_eq!(decode(&out), Some((value, len(value))));
        }
    }
}
