//! Stateful: the proxy stack back to back with clients and an HTTP origin
//! (the in-memory harness of `stack/proxy/tests/common`), driven by the
//! input as a program: open a client, send it bytes (HTTP-ish or raw),
//! close or reset it, jump the clock, make the origin close or forget its
//! connections. Afterwards every client goes away and time runs past every
//! timeout: nothing panics, and nothing leaks — no connection, socket,
//! pooled upstream or local port is left. A client that sent only whole
//! HTTP/1 requests (and was not closed by the input) gets exactly one
//! final response per request, in order — or fewer and a close, never more.
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

/// What the oracle knows of one client.
#[derive(Default)]
struct Seen {
    /// Whole requests sent.
    requests: usize,
    /// Sent only whole HTTP/1 requests and was never closed by the input:
    /// the one-response-per-request rule applies.
    clean: bool,
    received: Vec<u8>,
}

/// Final (non-1xx) responses in `raw`, and whether the stream ends in the
/// middle of one. A response without a length runs to the close.
fn count_responses(raw: &[u8]) -> (usize, bool) {
    let mut rest = raw;
    let mut n = 0;
    while !rest.is_empty() {
        let Some(end) = find(rest, b"\r\n\r\n") else {
            return (n, true);
        };
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let status: u16 = match head.split(' ').nth(1).and_then(|s| s.parse().ok()) {
            Some(s) => s,
            None => panic!(
                "not a response head: {:?}",
                head.chars().take(200).collect::<String>()
            ),
        };
        rest = &rest[end + 4..];
        if (100..200).contains(&status) {
            continue;
        }
        n += 1;
        if status == 204 || status == 304 {
            continue;
        }
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            if rest.len() < len {
                return (n, true);
            }
            rest = &rest[len..];
        } else if head.contains("transfer-encoding: chunked") {
            let mut dec = ferrogate_proxy::http::ChunkedDecoder::new();
            match dec.feed_with(rest, |_| {}) {
                Ok(used) if dec.is_done() => rest = &rest[used..],
                _ => return (n, true),
            }
        } else {
            // Delimited by the close.
            return (n, false);
        }
    }
    (n, false)
}

fn read_all(lab: &mut Lab, clients: &[SocketHandle], seen: &mut [Seen]) {
    for (&h, seen) in clients.iter().zip(seen.iter_mut()) {
        let s = lab.sockets.get_mut::<tcp::Socket>(h);
        while s.can_recv() {
            let _ = s.recv(|b| {
                seen.received.extend_from_slice(b);
                (b.len(), ())
            });
        }
    }
}

/// The client saw the proxy close (FIN or RST).
fn closed_by_proxy(lab: &Lab, h: SocketHandle) -> bool {
    !lab.sockets.get::<tcp::Socket>(h).may_recv()
}

fuzz_target!(|data: &[u8]| {
    // Idle clients are closed only after 10 min, so a request left without
    // an answer cannot hide behind an idle close in the oracle's 150 s.
    let mut lab = Lab::with_config(Origin::Serving, |c| {
        c.timeouts.client_idle = std::time::Duration::from_secs(600);
        // The wire is in memory: checksums (a fifth of the run time) find
        // nothing here; the wire targets cover them.
        c.net.verify_rx_checksums = false;
        c.net.tx_checksum_offload = true;
        // Small buffers, and a `/big` body still beyond them: the same
        // back-pressure paths with a fifth of the bytes to move.
        c.net.tcp_rx_buffer = 8 * 1024;
        c.net.tcp_tx_buffer = 8 * 1024;
    });
    lab.big_body = 40_000;
    let mut clients: Vec<SocketHandle> = Vec::new();
    let mut seen: Vec<Seen> = Vec::new();
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
            0 if clients.len() < MAX_CLIENTS => {
                clients.push(lab.connect());
                seen.push(Seen {
                    clean: true,
                    ..Seen::default()
                });
            }
            1 | 2 => {
                if let Some(h) = pick(&clients) {
                    let i = a as usize % clients.len();
                    let s = lab.sockets.get_mut::<tcp::Socket>(h);
                    if s.may_send() {
                        let snippet = (kind % 8 == 1).then(|| b as usize % SNIPPETS.len());
                        let bytes: &[u8] = match snippet {
                            Some(k) => SNIPPETS[k],
                            None => {
                                // Raw: the next `b % 32` input bytes.
                                let n = (b as usize % 32).min(data.len() - at);
                                at += n;
                                &data[at - n..at]
                            }
                        };
                        let sent = s.send_slice(bytes).unwrap_or(0);
                        let whole_http1 = snippet.is_some_and(|k| !SNIPPETS[k].starts_with(b"PRI"));
                        if whole_http1 && sent == bytes.len() {
                            seen[i].requests += 1;
                        } else if !bytes.is_empty() {
                            seen[i].clean = false;
                        }
                    }
                }
            }
            3 => {
                if let Some(h) = pick(&clients) {
                    seen[a as usize % clients.len()].clean = false;
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
                read_all(&mut lab, &clients, &mut seen);
            }
        }
    }
    // Every request of a clean client is answered once, or the proxy
    // closes: run until that holds for all (bounded), then judge.
    let settled = |lab: &Lab, seen: &[Seen]| {
        clients.iter().zip(seen).all(|(&h, c)| {
            !c.clean || {
                let (n, partial) = count_responses(&c.received);
                (n == c.requests && !partial) || closed_by_proxy(lab, h)
            }
        })
    };
    // Run while bytes flow (small steps), else in big ones past every
    // timeout (a retried request to an origin that went silent: 2 x 30 s;
    // client idle 60 s): judge once settled, or after 150 s without a byte.
    let received = |seen: &[Seen]| seen.iter().map(|c| c.received.len()).sum::<usize>();
    let mut quiet_ms = 0;
    let mut flowing = true;
    'settle: for _ in 0..2_000 {
        let before = received(&seen);
        let (steps, ms) = if flowing { (20, 5) } else { (10, 1_000) };
        for _ in 0..steps {
            if settled(&lab, &seen) {
                break 'settle;
            }
            lab.step(ms);
            read_all(&mut lab, &clients, &mut seen);
        }
        flowing = received(&seen) > before;
        quiet_ms = if flowing { 0 } else { quiet_ms + steps * ms };
        if quiet_ms > 150_000 {
            break;
        }
    }
    let show = |raw: &[u8]| {
        format!(
            "{} bytes, starting {:?}",
            raw.len(),
            String::from_utf8_lossy(&raw[..raw.len().min(300)])
        )
    };
    for (&h, c) in clients.iter().zip(&seen) {
        if !c.clean {
            continue;
        }
        let (n, partial) = count_responses(&c.received);
        assert!(
            n <= c.requests,
            "{n} responses to {} requests: {}",
            c.requests,
            show(&c.received)
        );
        assert!(
            (n == c.requests && !partial) || closed_by_proxy(&lab, h) || quiet_ms <= 150_000,
            "{n} responses to {} requests and the connection is open, silent for 150 s: {}",
            c.requests,
            show(&c.received)
        );
    }
    // Every client leaves; time runs past every timeout (idle, linger,
    // pool idle), in jumps.
    for &h in &clients {
        lab.sockets.get_mut::<tcp::Socket>(h).abort();
    }
    let clean = |lab: &Lab| {
        let edge = &lab.edge;
        edge.active_connections() == 0
            && edge.upstream_ports_in_use() == 0
            && edge.closing_sockets() == 0
            && edge.stats().upstream_idle == 0
    };
    for _ in 0..800 {
        lab.step(1_000);
        read_all(&mut lab, &clients, &mut seen);
        if clean(&lab) {
            break;
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
