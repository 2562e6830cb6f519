//! A blocking h2c (prior knowledge) server over `Connection`, one thread per
//! connection: a smoke test against real clients (`nghttp`, `h2load`,
//! `curl --http2-prior-knowledge`) and a small picture of the driving loop.
//!
//! `cargo run -p ferrogate-h2 --example h2c_server -- 127.0.0.1:8080`
//! - `GET /` answers "hello\n"; `GET /big` answers 1 MiB (flow control);
//! - any request with a body answers the body's length once it ended.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use ferrogate_h2::{Connection, Event, ServerConfig};

/// A response being sent: the body left.
struct Out {
    body: Vec<u8>,
    sent: usize,
}

fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    let start = Instant::now();
    let mut conn = Connection::new(ServerConfig::default(), start.elapsed());
    let mut inbuf = Vec::new();
    let mut tmp = vec![0; 64 * 1024];
    let mut bodies: HashMap<u32, usize> = HashMap::new();
    let mut outs: HashMap<u32, Out> = HashMap::new();
    loop {
        // Frames in, events out, until nothing moves.
        loop {
            let used = conn.recv(&inbuf, start.elapsed());
            inbuf.drain(..used);
            let mut any = false;
            while let Some(ev) = conn.poll_event() {
                any = true;
                match ev {
                    Event::Request {
                        stream,
                        request,
                        end_stream,
                    } => {
                        if end_stream {
                            let body = if request.path.as_deref() == Some(b"/big") {
                                vec![b'x'; 1 << 20]
                            } else {
                                b"hello\n".to_vec()
                            };
                            respond(&mut conn, &mut outs, stream, body);
                        } else {
                            bodies.insert(stream, 0);
                        }
                    }
                    Event::Data { stream, end_stream } => {
                        let n = conn.request_body(stream).len();
                        conn.consume_body(stream, n);
                        let total = bodies.entry(stream).or_default();
                        *total += n;
                        if end_stream {
                            let body = format!("{total}\n").into_bytes();
                            bodies.remove(&stream);
                            respond(&mut conn, &mut outs, stream, body);
                        }
                    }
                    Event::Trailers { stream, .. } => {
                        let total = bodies.remove(&stream).unwrap_or(0);
                        respond(
                            &mut conn,
                            &mut outs,
                            stream,
                            format!("{total}\n").into_bytes(),
                        );
                    }
                    Event::Reset { stream, .. } => {
                        bodies.remove(&stream);
                        outs.remove(&stream);
                    }
                }
            }
            pump(&mut conn, &mut outs);
            if used == 0 && !any {
                break;
            }
        }
        // Bytes out.
        let pending = conn.pending_output();
        if !pending.is_empty() {
            sock.write_all(pending)?;
            let n = pending.len();
            conn.consume_output(n);
            pump(&mut conn, &mut outs);
            if !conn.pending_output().is_empty() {
                continue;
            }
        }
        if conn.is_done() {
            if let Some(e) = conn.error() {
                eprintln!("connection error: {e}");
            }
            return Ok(());
        }
        let n = sock.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
        }
        inbuf.extend_from_slice(&tmp[..n]);
    }
}

fn respond(conn: &mut Connection, outs: &mut HashMap<u32, Out>, stream: u32, body: Vec<u8>) {
    let len = body.len().to_string();
    let headers: [(&[u8], &[u8]); 2] = [
        (b"content-type", b"text/plain"),
        (b"content-length", len.as_bytes()),
    ];
    if conn.send_headers(stream, 200, &headers, false).is_ok() {
        outs.insert(stream, Out { body, sent: 0 });
    }
}

/// Sends what the windows allow of every response.
fn pump(conn: &mut Connection, outs: &mut HashMap<u32, Out>) {
    outs.retain(|&stream, out| {
        let cap = conn.send_capacity(stream);
        let left = out.body.len() - out.sent;
        let n = cap.min(left);
        if n == 0 && left > 0 {
            return true;
        }
        let end = n == left;
        if conn
            .send_data(stream, &out.body[out.sent..out.sent + n], end)
            .is_err()
        {
            return false;
        }
        out.sent += n;
        !end
    });
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("h2c on {addr}");
    for sock in listener.incoming() {
        let sock = sock?;
        std::thread::spawn(move || {
            if let Err(e) = serve(sock) {
                eprintln!("io: {e}");
            }
        });
    }
    Ok(())
}
