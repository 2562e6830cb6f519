//! The admin protocol the control daemon and `ferrogate ctl` speak to the
//! engine (`control/src/admin.rs`): any bytes as one connection's request,
//! with and without a bearer token, through the engine's dispatcher (the
//! engine's owner answers every forwarded op at once). Whatever comes in,
//! the answer is one well-formed response whose Content-Length is its body,
//! and a request without the right token never reaches the handler.
#![no_main]

use std::io::{Cursor, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use ferrogate_control::admin::{self, Handler, Reply, Request, Timeouts};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "0123456789abcdef-token";

/// One connection: reads the input, collects the answer.
struct Conn {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Write for &mut Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for &mut Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Timeouts for &mut Conn {
    fn timeouts(&self, _: Duration) -> std::io::Result<()> {
        Ok(())
    }
}

/// The engine's owner: answers every op it is sent.
fn engine_owner() -> mpsc::Sender<Request> {
    static OWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    OWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::spawn(move || {
                for req in rx {
                    let _ = req.reply.send(Reply::ok(format!("{:?}\n", req.op)));
                }
            });
            tx
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, request)) = data.split_first() else {
        return;
    };
    let token = (mode & 1 == 1).then_some(TOKEN);
    let reached = Arc::new(AtomicBool::new(false));
    let engine = admin::engine_handler(engine_owner());
    let handler: Handler = {
        let reached = reached.clone();
        Arc::new(move |req| {
            reached.store(true, Ordering::Relaxed);
            engine(req)
        })
    };
    let mut conn = Conn {
        input: Cursor::new(request.to_vec()),
        output: Vec::new(),
    };
    admin::serve_stream(&mut conn, token, &handler).expect("writes to memory cannot fail");

    let out = &conn.output;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = std::str::from_utf8(&out[..end]).expect("an ASCII head");
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length: {head:?}"));
    assert_eq!(out.len() - end - 4, length, "body length vs Content-Length");
    assert!((200..600).contains(&status), "{head}");
    if token.is_some() {
        if reached.load(Ordering::Relaxed) {
            let seen = request.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes());
            assert!(seen, "the handler ran without the token");
        }
        if status == 401 {
            assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        }
    }
});
