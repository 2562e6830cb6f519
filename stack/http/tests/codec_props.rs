//! Properties of the sans-IO HTTP/1 codec: a valid head split at every byte
//! boundary parses the same once complete (and never early); a chunked body
//! fed in any pieces decodes the same; random bytes never panic.

use ferrogate_http::head::{parse_request, parse_response};
use ferrogate_http::{BodyFraming, ChunkedDecoder, HeaderSlots, RequestHead};
use proptest::prelude::*;

fn parse_req(buf: &[u8]) -> Result<Option<RequestHead>, String> {
    let mut headers = HeaderSlots::new();
    parse_request(buf, &mut headers, false)
        .map(|r| r.map(|(_, head)| head))
        .map_err(|e| e.to_string())
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,15}"
}

/// A valid request head, its body framing and the body bytes that follow.
fn request() -> impl Strategy<Value = (Vec<u8>, BodyFraming)> {
    let method = prop::sample::select(vec![
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
    ]);
    let path = "/[a-z0-9/._~-]{0,40}(\\?[a-z0-9=&]{0,20})?";
    let host = "[a-z]{1,12}(\\.[a-z]{2,6})?(:[1-9][0-9]{0,3})?";
    let extra = prop::collection::vec(
        (token(), "[ -~]{0,30}").prop_filter("not a framing or host field", |(n, _)| {
            !["host", "content-length", "transfer-encoding", "connection"]
                .contains(&n.to_ascii_lowercase().as_str())
        }),
        0..8,
    );
    let body = prop_oneof![
        Just(None),
        (0u64..100_000).prop_map(|n| Some(Some(n))),
        Just(Some(None)),
    ];
    (method, path, host, extra, body, any::<bool>()).prop_map(
        |(method, path, host, extra, body, close)| {
            let mut h = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
            for (n, v) in &extra {
                h.push_str(&format!("{n}: {}\r\n", v.trim()));
            }
            if close {
                h.push_str("Connection: close\r\n");
            }
            let framing = match body {
                None => BodyFraming::None,
                Some(Some(0)) => {
                    h.push_str("Content-Length: 0\r\n");
                    BodyFraming::None
                }
                Some(Some(n)) => {
                    h.push_str(&format!("Content-Length: {n}\r\n"));
                    BodyFraming::Length(n)
                }
                Some(None) => {
                    h.push_str("Transfer-Encoding: chunked\r\n");
                    BodyFraming::Chunked
                }
            };
            h.push_str("\r\n");
            (h.into_bytes(), framing)
        },
    )
}

/// A chunked body (sizes in hex, optional extensions) and its data length.
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, usize)> {
    prop::collection::vec((1usize..300, any::<bool>()), 0..8).prop_map(|chunks| {
        let mut b = Vec::new();
        let mut data = 0;
        for (i, (n, ext)) in chunks.iter().enumerate() {
            let ext = if *ext { ";name=value" } else { "" };
            b.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
            b.extend((0..*n).map(|j| b'a' + ((i + j) % 26) as u8));
            b.extend_from_slice(b"\r\n");
            data += n;
        }
        b.extend_from_slice(b"0\r\n\r\n");
        (b, data)
    })
}

proptest! {
    // A fixed seed: the suite gives the same answer on every machine and
    // run; change the seed (or the case count) to explore further.
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6665_7272_6f67_6174),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_valid_request_head_split_at_every_byte_parses_the_same_once_complete(
        (head, framing) in request(),
        trailing in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let whole = parse_req(&head).unwrap().expect("complete");
        prop_assert_eq!(whole.head_len, head.len());
        prop_assert_eq!(whole.framing, framing);
        for k in 0..head.len() {
            prop_assert_eq!(parse_req(&head[..k]), Ok(None), "early at byte {}", k);
        }
        // What follows the head (body, a pipelined request) changes nothing.
        let mut more = head.clone();
        more.extend_from_slice(&trailing);
        prop_assert_eq!(parse_req(&more), Ok(Some(whole)));
    }

    #[test]
    fn a_chunked_body_fed_in_any_pieces_decodes_the_same(
        (body, data) in chunked_body(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        trailing in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut input = body.clone();
        input.extend_from_slice(&trailing);
        let mut whole = ChunkedDecoder::new();
        prop_assert_eq!(whole.feed(&input), Ok(body.len()));
        prop_assert!(whole.is_done());
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = ChunkedDecoder::new();
        let (mut used, mut from) = (0, 0);
        for to in at.into_iter().chain([input.len()]) {
            if to < from || pieces.is_done() {
                continue;
            }
            used += pieces.feed(&input[from..to]).unwrap();
            from = to;
        }
        prop_assert!(pieces.is_done());
        prop_assert_eq!(used, body.len());
        prop_assert!(data <= body.len());
    }

    #[test]
    fn random_bytes_never_panic_the_codec(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_req(&bytes);
        let mut headers = HeaderSlots::new();
        let _ = parse_request(&bytes, &mut headers, true);
        let _ = parse_response(&bytes, false, false);
        let _ = parse_response(&bytes, true, true);
        let mut d = ChunkedDecoder::new();
        let _ = d.feed(&bytes);
    }

    #[test]
    fn random_bytes_after_a_request_line_never_panic(tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut b = b"POST /x HTTP/1.1\r\n".to_vec();
        b.extend_from_slice(&tail);
        let _ = parse_req(&b);
        let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
        r.extend_from_slice(&tail);
        let _ = parse_response(&r, false, false);
    }
}
