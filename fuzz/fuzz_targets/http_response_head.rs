//! Any bytes as an origin's response head.
#![no_main]

use ferrogate_http::head::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    if let Ok(Some(head)) = parse_response(buf, flags & 1 == 1, flags & 2 == 2) {
        assert!(head.head_len <= buf.len());
    }
});
