//! Header blocks into one HPACK decoder (its dynamic table carried from
//! block to block, as on a connection): no panic; a block's field list
//! never exceeds the list-size limit it was given.
#![no_main]

use ferrogate_h2::HeaderDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = HeaderDecoder::new(4096, 16 * 1024);
    for (i, block) in data.split(|&b| b == 0xfe).enumerate() {
        if let Ok(fields) = d.decode(2 * i as u32 + 1, block) {
            let size: usize = fields
                .iter()
                .map(|f| f.name.len() + f.value.len() + 32)
                .sum();
            assert!(size <= 16 * 1024 + 32, "{size}");
        } else {
            // A decoding error is a connection error: nothing after it.
            break;
        }
    }
});
