//! An open-loop HTTP/1.1 client for fixed-rate latency: requests are
//! scheduled at `start + i / rate` whatever the server does, and latency is
//! measured from the *scheduled* time (coordinated-omission correction), so
//! a stalled server shows up as queueing delay instead of fewer samples.
//! One thread, N keep-alive connections, one request in flight per
//! connection, nonblocking sockets multiplexed with ppoll(2).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Requests per second (scheduled, open loop).
    #[arg(long)]
    pub rate: u64,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 50)]
    pub conns: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub scheduled: u64,
    pub completed: u64,
    pub errors: u64,
    pub non2xx: u64,
    pub unfinished: u64,
    pub achieved_rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// p99 measured from the actual send instead of the schedule (what a
    /// closed-loop tool would report).
    pub uncorrected_p99_us: f64,
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    inflight: Option<(Instant, Instant)>,
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Some(status) once `b` holds one whole response.
pub(crate) fn complete(b: &[u8]) -> Option<(u16, usize)> {
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&b[..end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let mut len = 0usize;
    let mut chunked = false;
    for l in head.lines().skip(1) {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse().ok()?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        let rest = &b[end..];
        let pos = rest.windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some((status, end + pos + 5));
    }
    (b.len() >= end + len).then_some((status, end + len))
}

pub fn run(a: &LoadArgs) -> Result<LoadReport> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferrogate-bench\r\n\r\n",
        a.path,
        a.addr.ip()
    );
    let mut conns = Vec::with_capacity(a.conns);
    for _ in 0..a.conns.max(1) {
        conns.push(Conn {
            s: connect(a.addr)?,
            buf: Vec::with_capacity(32 * 1024),
            inflight: None,
        });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut raw = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.seconds);
    let drain_until = end + Duration::from_secs(2);
    let mut next = start;
    let mut queue: VecDeque<Instant> = VecDeque::new();
    let mut r = LoadReport::default();
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let mut idx: Vec<usize> = Vec::new();
    loop {
        let now = Instant::now();
        while next <= now && next < end {
            queue.push_back(next);
            r.scheduled += 1;
            next += interval;
        }
        let inflight = conns.iter().filter(|c| c.inflight.is_some()).count();
        if now >= end && queue.is_empty() && inflight == 0 {
            break;
        }
        if now >= drain_until {
            r.unfinished = queue.len() as u64 + inflight as u64;
            break;
        }
        for c in conns.iter_mut() {
            if queue.is_empty() {
                break;
            }
            if c.inflight.is_some() {
                continue;
            }
            let t = queue.pop_front().unwrap();
            match c.s.write(req.as_bytes()) {
                Ok(n) if n == req.len() => c.inflight = Some((t, Instant::now())),
                _ => {
                    r.errors += 1;
                    c.s = connect(a.addr)?;
                    c.buf.clear();
                }
            }
        }
        pfds.clear();
        idx.clear();
        for (i, c) in conns.iter().enumerate() {
            if c.inflight.is_some() {
                pfds.push(libc::pollfd {
                    fd: c.s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                idx.push(i);
            }
        }
        let wait = if next < end {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(5)
        }
        .min(Duration::from_millis(5));
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as i64,
        };
        // SAFETY: pfds is a valid array of pollfd for the call's duration.
        let n = unsafe {
            libc::ppoll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if n <= 0 {
            continue;
        }
        for (p, &i) in pfds.iter().zip(idx.iter()) {
            if p.revents == 0 {
                continue;
            }
            let c = &mut conns[i];
            let mut closed = false;
            loop {
                match c.s.read(&mut rbuf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(k) => c.buf.extend_from_slice(&rbuf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if let Some((status, used)) = complete(&c.buf) {
                let done = Instant::now();
                let (sched, sent) = c.inflight.take().unwrap();
                let _ = hist.record(((done - sched).as_micros() as u64).max(1));
                let _ = raw.record(((done - sent).as_micros() as u64).max(1));
                r.completed += 1;
                if !(200..300).contains(&status) {
                    r.non2xx += 1;
                }
                c.buf.drain(..used);
            } else if closed {
                r.errors += 1;
                c.inflight = None;
                c.buf.clear();
                c.s = connect(a.addr)?;
            }
        }
    }
    let el = (Instant::now().min(end) - start).as_secs_f64().max(1e-9);
    r.achieved_rps = r.completed as f64 / el;
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64;
    r.p50_us = q(&hist, 0.50);
    r.p90_us = q(&hist, 0.90);
    r.p99_us = q(&hist, 0.99);
    r.p999_us = q(&hist, 0.999);
    r.max_us = hist.max() as f64;
    r.uncorrected_p99_us = q(&raw, 0.99);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn parses_responses() {
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab"),
            None
        );
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP"),
            Some((200, 41))
        );
        assert_eq!(
            complete(b"HTTP/1.1 404 X\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"),
            Some((404, 57))
        );
    }
}
