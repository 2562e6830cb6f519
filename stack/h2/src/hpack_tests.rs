//! HPACK wrapper tests, named by the rule they check.

use proptest::prelude::*;

use crate::error::{ErrorCode, Scope};
use crate::fields::Field;
use crate::hpack::{HeaderDecoder, HeaderError, ResponseEncoder};
use crate::request::validate_request;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn pairs(fields: &[Field]) -> Vec<(&str, &str)> {
    fields
        .iter()
        .map(|f| {
            (
                std::str::from_utf8(&f.name).unwrap(),
                std::str::from_utf8(&f.value).unwrap(),
            )
        })
        .collect()
}

/// RFC 7541 C.3 and C.4 carry the same three requests, plain and Huffman.
fn expected() -> [Vec<(&'static str, &'static str)>; 3] {
    let base = |scheme, path| {
        vec![
            (":method", "GET"),
            (":scheme", scheme),
            (":path", path),
            (":authority", "www.example.com"),
        ]
    };
    let mut second = base("http", "/");
    second.push(("cache-control", "no-cache"));
    let mut third = base("https", "/index.html");
    third.push(("custom-key", "custom-value"));
    [base("http", "/"), second, third]
}

fn check_appendix(blocks: [&str; 3]) {
    let mut dec = HeaderDecoder::default();
    for (block, want) in blocks.iter().zip(expected()) {
        let fields = dec.decode(1, &hex(block)).unwrap();
        assert_eq!(pairs(&fields), want);
        // Each is also a well-formed HTTP/2 request.
        validate_request(1, fields).unwrap();
    }
}

#[test]
fn rfc7541_c3_requests_without_huffman_decode_with_the_dynamic_table() {
    check_appendix([
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ]);
}

#[test]
fn rfc7541_c4_requests_with_huffman_decode_with_the_dynamic_table() {
    check_appendix([
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ]);
}

#[test]
fn hpack_error_is_a_connection_compression_error() {
    // Index 70 with an empty dynamic table does not exist.
    let err = HeaderDecoder::default()
        .decode(1, &[0x80 | 70])
        .unwrap_err();
    let HeaderError::Frame(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (e.code, e.scope),
        (ErrorCode::CompressionError, Scope::Connection)
    );
}

#[test]
fn truncated_block_is_a_compression_error() {
    // A literal announcing a 15-octet value with none following.
    let err = HeaderDecoder::default()
        .decode(1, &hex("4188"))
        .unwrap_err();
    assert!(matches!(err, HeaderError::Frame(e) if e.code == ErrorCode::CompressionError));
}

#[test]
fn table_size_update_above_our_setting_is_a_compression_error() {
    let mut dec = HeaderDecoder::new(256, 16 * 1024);
    // 001 11111 + continuation: size 4096, then an indexed :method GET.
    let mut block = vec![0x3f, 0xe1, 0x1f];
    block.push(0x82);
    assert!(
        matches!(dec.decode(1, &block), Err(HeaderError::Frame(e)) if e.code == ErrorCode::CompressionError)
    );
    // Within the setting it is accepted.
    let mut dec = HeaderDecoder::new(256, 16 * 1024);
    assert_eq!(dec.decode(1, &[0x3f, 0xe1, 0x01, 0x82]).unwrap().len(), 1);
}

#[test]
fn table_size_update_at_end_of_block_is_a_compression_error() {
    let err = HeaderDecoder::default()
        .decode(1, &[0x82, 0x20])
        .unwrap_err();
    assert!(matches!(err, HeaderError::Frame(e) if e.code == ErrorCode::CompressionError));
}

#[test]
fn header_list_over_the_cap_is_refused_and_the_table_stays_in_step() {
    let mut enc = loona_hpack::Encoder::new();
    let big = [b'a'; 200];
    let block = enc.encode([(&b"x-big"[..], &big[..]), (b"x-next", b"1")]);
    let mut dec = HeaderDecoder::new(4096, 200);
    let err = dec.decode(3, &block).unwrap_err();
    assert_eq!(
        err,
        HeaderError::ListTooLarge {
            stream: 3,
            size: 5 + 200 + 32 + 6 + 1 + 32,
            limit: 200
        }
    );
    // The refused block still fed the table: the next block's index into it
    // decodes to the same field.
    let next = enc.encode([(&b"x-next"[..], &b"1"[..])]);
    let fields = dec.decode(5, &next).unwrap();
    assert_eq!(pairs(&fields), [("x-next", "1")]);
}

#[test]
fn header_list_exactly_at_the_cap_is_accepted() {
    let block = loona_hpack::Encoder::new().encode([(&b"a"[..], &b"b"[..])]);
    let fields = HeaderDecoder::new(4096, 34).decode(1, &block).unwrap();
    assert_eq!(fields.len(), 1);
}

#[test]
fn response_round_trips_with_lowercase_names_and_no_hop_headers() {
    let mut enc = ResponseEncoder::new();
    let mut dec = HeaderDecoder::default();
    let headers: [(&[u8], &[u8]); 7] = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Keep-Alive", b"timeout=5"),
        (b":path", b"/injected"),
        (b"content-length", b"5"),
    ];
    for _ in 0..2 {
        // Twice: the second block refers to the dynamic table.
        let mut block = Vec::new();
        enc.encode(200, &headers, &mut block);
        let fields = dec.decode(1, &block).unwrap();
        assert_eq!(
            pairs(&fields),
            [
                (":status", "200"),
                ("content-type", "text/plain"),
                ("content-length", "5")
            ]
        );
    }
}

#[test]
fn response_block_splits_into_headers_and_continuation() {
    let mut block = Vec::new();
    let long = vec![b'v'; 100];
    ResponseEncoder::new().encode(404, &[(b"x-long", &long)], &mut block);
    let mut out = Vec::new();
    crate::emit::headers(&mut out, 1, &block, true, 32);
    let mut joined = Vec::new();
    let mut rest = &out[..];
    while let Some((frame, n)) = crate::parse(rest, 16_384).unwrap() {
        match frame {
            crate::Frame::Headers { fragment, .. }
            | crate::Frame::Continuation { fragment, .. } => joined.extend_from_slice(fragment),
            other => panic!("{other:?}"),
        }
        rest = &rest[n..];
    }
    let fields = HeaderDecoder::default().decode(1, &joined).unwrap();
    assert_eq!(fields[0], Field::new(":status", "404"));
    assert_eq!(fields[1].value, long);
}

#[test]
fn lowered_peer_table_size_is_announced_at_the_start_of_the_next_block() {
    let mut enc = ResponseEncoder::new();
    enc.set_peer_table_size(0);
    let mut block = Vec::new();
    enc.encode(200, &[(b"x-a", b"1")], &mut block);
    assert_eq!(block[0], 0x20, "size update to 0 first");
    let mut dec = HeaderDecoder::default();
    assert_eq!(dec.decode(1, &block).unwrap().len(), 2);
    // Nothing is indexed any more, so a repeat still decodes from literals.
    let mut again = Vec::new();
    enc.encode(200, &[(b"x-a", b"1")], &mut again);
    assert_eq!(dec.decode(1, &again).unwrap().len(), 2);
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_decoder(blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 1..4)) {
        let mut dec = HeaderDecoder::new(4096, 1024);
        for block in blocks {
            if let Ok(fields) = dec.decode(1, &block) {
                let _ = validate_request(1, fields);
            }
        }
    }
}
