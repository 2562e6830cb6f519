//! A chunked body fed whole and in arbitrary pieces: both agree on where
//! the body ends (or that it is malformed) and on the payload, and never
//! consume more than they were given. A split must not change a verdict
//! (request smuggling lives in such differences).
#![no_main]

use ferrogate_http::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

fn decode(body: &[u8], step: usize) -> (Result<usize, ()>, bool, Vec<u8>) {
    let mut d = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut used = 0;
    for piece in body.chunks(step) {
        match d.feed_with(piece, |p| payload.extend_from_slice(p)) {
            Ok(n) => {
                assert!(n <= piece.len());
                used += n;
                if d.is_done() {
                    break;
                }
            }
            Err(_) => return (Err(()), false, payload),
        }
    }
    assert!(d.bytes_seen() as usize <= body.len());
    (Ok(used), d.is_done(), payload)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = decode(body, body.len().max(1));
    let pieces = decode(body, step as usize % 17 + 1);
    assert_eq!(whole.0, pieces.0, "consumed / verdict");
    assert_eq!(whole.1, pieces.1, "done");
    if whole.0.is_ok() {
        assert_eq!(whole.2, pieces.2, "payload");
    }
});
