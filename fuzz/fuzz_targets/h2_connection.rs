//! A client's bytes (after the preface) in arbitrary pieces, with time
//! jumps, into the server side of an HTTP/2 connection: no panic, output
//! and buffered bodies stay bounded, events drain.
#![no_main]

use std::time::Duration;

use ferrogate_h2::{Connection, Event, ServerConfig};
use libfuzzer_sys::fuzz_target;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = step as usize % 64 + 1;
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(rest);
    let mut now = Duration::ZERO;
    let mut conn = Connection::new(ServerConfig::default(), now);
    let mut pending: Vec<u8> = Vec::new();
    for piece in input.chunks(step) {
        pending.extend_from_slice(piece);
        now += Duration::from_millis(piece[0] as u64);
        conn.handle_timeout(now);
        loop {
            let used = conn.recv(&pending, now);
            pending.drain(..used);
            let mut events = 0;
            while let Some(e) = conn.poll_event() {
                events += 1;
                if let Event::Data { stream, .. } = e {
                    let n = conn.request_body(stream).len();
                    conn.consume_body(stream, n);
                }
            }
            if used == 0 || events == 0 {
                break;
            }
        }
        assert!(conn.pending_output().len() <= 4 << 20, "unread output");
        let n = conn.pending_output().len();
        conn.consume_output(n);
        if conn.is_done() {
            break;
        }
    }
});
