//! Field-section encoding (RFC 9204 §4.5) of responses, static table only:
//! the section prefix is always 0, 0 (no dynamic reference), so the peer's
//! decoder never blocks and never needs a decoder-stream acknowledgment.

use ferrogate_h2::fields::{check_name, is_connection_specific};

use super::prefix::{encode_int, encode_str};
use super::static_table::{Match, find};

/// Appends one field line: indexed when the static table holds the field,
/// a literal with a static name reference when it holds the name, else a
/// literal with a literal name. Huffman coding is used where shorter.
pub fn encode_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    match find(name, value) {
        // 11xxxxxx: indexed, static.
        Match::Full(i) => encode_int(i as u64, 6, 0xc0, out),
        // 0101xxxx: literal, name reference, not never-indexed, static.
        Match::Name(i) => {
            encode_int(i as u64, 4, 0x50, out);
            encode_str(value, 7, 0, out);
        }
        // 0010Hxxx: literal name, not never-indexed.
        Match::None => {
            encode_str(name, 3, 0x20, out);
            encode_str(value, 7, 0, out);
        }
    }
}

/// Appends a response's field section: `:status`, then `headers` with
/// names lowercased and what HTTP/3 forbids dropped (RFC 9114 §4.2:
/// connection-specific fields, the fields a `Connection` header names, TE,
/// and pseudo-header look-alikes), so an HTTP/1 origin's hop headers
/// cannot make the response malformed.
pub fn encode_response(status: u16, headers: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    debug_assert!((100..=999).contains(&status));
    out.extend_from_slice(&[0, 0]);
    let mut digits = [0u8; 3];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = b'0' + (status / 10u16.pow(2 - i as u32) % 10) as u8;
    }
    encode_field(b":status", &digits, out);
    encode_regular(headers, out);
}

/// Appends a trailer section: no pseudo-header fields (RFC 9114 §4.1).
pub fn encode_trailers(headers: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0]);
    encode_regular(headers, out);
}

fn encode_regular(headers: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    let nominated = |name: &[u8]| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
    };
    let mut lower = Vec::new();
    for &(name, value) in headers {
        if name.first() == Some(&b':')
            || is_connection_specific(name)
            || name.eq_ignore_ascii_case(b"te")
            || nominated(name)
        {
            continue;
        }
        lower.clear();
        lower.extend(name.iter().map(u8::to_ascii_lowercase));
        debug_assert!(check_name(&lower).is_ok());
        encode_field(&lower, value, out);
    }
}
