//! Any text as a configuration file (`ferrogate check`'s path): compiled or
//! refused with errors that each name a line and column inside the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = ferrogate_control::config::compile(Path::new("fuzz.toml"), text) {
        let lines = text.lines().count().max(1) + 1;
        for e in &errors.0 {
            assert!(e.line >= 1 && e.line <= lines, "{e:?} of {lines} lines");
            assert!(e.col >= 1, "{e:?}");
        }
    }
});
