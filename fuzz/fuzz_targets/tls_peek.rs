//! The bytes a passthrough listener reads first: a ClientHello's server
//! name, "need more", or an error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(info)) = ferrogate_tls::peek_client_hello(data)
        && let Some(name) = info.server_name
    {
        assert!(name.len() <= 255);
    }
});
