//! The first bytes of a connection from a trusted load balancer: a PROXY
//! v1/v2 header (its length inside the input and the cap), incomplete, or
//! invalid; never a panic. A header's bytes parse the same once more input
//! follows (what the proxy strips does not depend on the read size).
#![no_main]

use ferrogate_proxy::proxy_header::{PROXY_HEADER_MAX, Received, parse_proxy_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferrogate_proxy::proxy_header::starts_with_proxy_signature(data);
    if let Received::Header { len, client } = parse_proxy_header(data) {
        assert!(len <= data.len() && len <= PROXY_HEADER_MAX, "{len}");
        let mut more = data.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        match parse_proxy_header(&more) {
            Received::Header {
                len: l2,
                client: c2,
            } => {
                assert_eq!((l2, c2), (len, client), "more input changed the header");
            }
            other => panic!(
                "more input made a header {}",
                matches!(other, Received::Invalid)
            ),
        }
    }
});
