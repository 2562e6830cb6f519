//! Any bytes as a client's request head: a request, incomplete, or an
//! error; never a panic, and a head never longer than the input.
#![no_main]

use ferrogate_http::HeaderSlots;
use ferrogate_http::head::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, buf)) = data.split_first() else {
        return;
    };
    let mut slots = HeaderSlots::new();
    if let Ok(Some((req, head))) = parse_request(buf, &mut slots, flag & 1 == 1) {
        assert!(head.head_len <= buf.len());
        let _ = req.method;
    }
});
