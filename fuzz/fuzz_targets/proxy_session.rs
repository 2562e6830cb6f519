//! Stateful: the proxy stack back to back with clients and an HTTP origin
//! (the in-memory harness of `stack/proxy/tests/common`), driven by the
//! input as a program: open a client, send it bytes (HTTP-ish or raw),
//! close or reset it, jump the clock, make the origin close or forget its
//! connections. Afterwards every client goes away and time runs past every
//! timeout: nothing panics, and nothing leaks — no connection, socket,
//! pooled upstream or local port is left.
#![no_main]

#[path = "../../stack/proxy/tests/common/mod.rs"]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;

const MAX_CLIENTS: usize = 6;

/// Bytes a client may send, to reach deep states quickly (the rest of the
/// input is raw bytes).
const SNIPPETS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /hints HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
];

fuzz_target!(|data: &[u8]| {
    let mut lab = Lab::new(Origin::Serving);
    let mut clients: Vec<SocketHandle> = Vec::new();
    let mut at = 0;
    for _ in 0..64 {
        let Some(op) = data.get(at..at + 3) else {
            break;
        };
        at += 3;
        let (kind, a, b) = (op[0], op[1], op[2]);
        let pick =
            |clients: &Vec<SocketHandle>| clients.get(a as usize % clients.len().max(1)).copied();
        match kind % 8 {
            0 if clients.len() < MAX_CLIENTS => clients.push(lab.connect()),
            1 | 2 => {
                if let Some(h) = pick(&clients) {
                    let s = lab.sockets.get_mut::<tcp::Socket>(h);
                    if s.may_send() {
                        let bytes: &[u8] = if kind % 8 == 1 {
                            SNIPPETS[b as usize % SNIPPETS.len()]
                        } else {
                            // Raw: the next `b % 32` input bytes.
                            let n = (b as usize % 32).min(data.len() - at);
                            at += n;
                            &data[at - n..at]
                        };
                        let _ = s.send_slice(bytes);
                    }
                }
            }
            3 => {
                if let Some(h) = pick(&clients) {
                    let s = lab.sockets.get_mut::<tcp::Socket>(h);
                    if b & 1 == 0 { s.close() } else { s.abort() }
                }
            }
            4 => lab.step(1 + b as u64 * 40),
            5 => lab.origin_closes_all(),
            6 => lab.origin_forgets_all(),
            _ => {
                for _ in 0..(1 + b % 8) {
                    lab.step(1);
                }
                // Clients read what came (a full socket would stall the proxy).
                for &h in &clients {
                    let s = lab.sockets.get_mut::<tcp::Socket>(h);
                    while s.can_recv() {
                        let _ = s.recv(|b| (b.len(), ()));
                    }
                }
            }
        }
    }
    // Every client leaves; time runs past every timeout (idle, linger,
    // pool idle), in jumps.
    for &h in &clients {
        lab.sockets.get_mut::<tcp::Socket>(h).abort();
    }
    for _ in 0..400 {
        lab.step(1_000);
        for &h in &clients {
            let s = lab.sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() {
                let _ = s.recv(|b| (b.len(), ()));
            }
        }
    }
    let edge = &lab.edge;
    assert_eq!(edge.active_connections(), 0, "a connection leaked");
    assert_eq!(edge.upstream_ports_in_use(), 0, "an upstream port leaked");
    assert_eq!(edge.closing_sockets(), 0, "a socket never finished closing");
    assert_eq!(
        edge.stats().upstream_idle,
        0,
        "a pooled upstream outlived its idle timeout"
    );
});
