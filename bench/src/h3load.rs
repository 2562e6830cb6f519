//! `h3-load`: a closed-loop HTTP/3 client over kernel UDP for the `h3`
//! scenario. One thread, C QUIC connections (ferrogate-quic's sans-IO
//! `H3Client`, one connected non-blocking UDP socket each), S GET requests
//! in flight per connection, poll(2) with short timeouts. Connections are
//! set up first; the measured window starts once all are up and lasts
//! `--seconds`. Prints one JSON line, with its own CPU time so a report can
//! tell when the client, not the proxy, was the limit.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrogate_h3::{Frame, frame, qpack};
use ferrogate_quic::client::{H3Client, client_config};
use hdrhistogram::Histogram;
use quinn_proto::{Dir, VarInt};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, clap::Args)]
pub struct H3LoadArgs {
    /// The server's UDP address.
    #[arg(long)]
    pub target: SocketAddr,
    /// SNI and certificate name (also `:authority`).
    #[arg(long)]
    pub sni: String,
    /// The CA (PEM) that signed the server's certificate.
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Seconds allowed for every handshake to complete.
    #[arg(long, default_value_t = 5.0)]
    pub connect_timeout: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct H3LoadReport {
    /// 2xx responses completed in the window.
    pub requests: u64,
    /// Reset streams, unparsable responses, requests lost with their connection.
    pub errors: u64,
    pub non2xx: u64,
    /// Response body octets of `requests`.
    pub bytes: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Connections that completed their handshake (of `--connections`).
    pub connected: u64,
    /// Connections lost during the window (each replaced).
    pub lost: u64,
    /// The client's own utime+stime over the window.
    pub client_cpu_s: f64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// Datagrams the socket refused (EAGAIN): QUIC recovers them as losses.
    pub send_drops: u64,
}

struct Conn {
    sock: UdpSocket,
    h3: H3Client,
    /// Request stream -> when it was sent.
    inflight: HashMap<u64, Instant>,
    /// Whether our control stream is open (after the handshake: before it
    /// there is no stream credit).
    control: bool,
}

fn cpu_now() -> f64 {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid start.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Larger socket buffers than the default ~200 KiB, so a burst of a
/// connection's window is not dropped by the kernel (best effort: FORCE
/// needs CAP_NET_ADMIN, the plain option is capped by rmem_max).
fn grow_buffers(sock: &UdpSocket) {
    let fd = sock.as_raw_fd();
    let sz: libc::c_int = 4 << 20;
    for opt in [
        libc::SO_RCVBUFFORCE,
        libc::SO_SNDBUFFORCE,
        libc::SO_RCVBUF,
        libc::SO_SNDBUF,
    ] {
        // SAFETY: setsockopt on a socket we own, with a c_int value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&sz as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn open_with(a: &H3LoadArgs, cfg: &quinn_proto::ClientConfig, now: Instant) -> Result<Conn> {
    let bind: SocketAddr = if a.target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("bind a UDP socket")?;
    sock.connect(a.target)
        .with_context(|| format!("connect {}", a.target))?;
    sock.set_nonblocking(true)?;
    grow_buffers(&sock);
    let mut h3 = H3Client::new(cfg.clone(), a.target);
    h3.connect(now, &a.sni)
        .map_err(|e| anyhow::anyhow!("QUIC connect: {e}"))?;
    Ok(Conn {
        sock,
        h3,
        inflight: HashMap::new(),
        control: false,
    })
}

/// Counters of the measured window.
struct Tally {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    non2xx: u64,
    bytes: u64,
    sent: u64,
    received: u64,
    send_drops: u64,
    counting: bool,
}

/// Sends everything the connection has to send.
fn flush(c: &mut Conn, now: Instant, buf: &mut Vec<u8>, t: &mut Tally) {
    while let Some(n) = c.h3.poll_transmit(now, buf) {
        match c.sock.send(&buf[..n]) {
            Ok(_) => t.sent += 1,
            // Dropped like a lost datagram; QUIC recovers it.
            Err(_) => t.send_drops += 1,
        }
    }
}

/// Reads every queued datagram, then settles finished requests.
fn receive(c: &mut Conn, now: Instant, buf: &mut [u8], t: &mut Tally) {
    let from = c.h3.server;
    // Until EAGAIN (or an ICMP error, which ends this pass the same way).
    while let Ok(n) = c.sock.recv(buf) {
        t.received += 1;
        c.h3.handle_datagram(now, from, &buf[..n]);
    }
    settle(c, now, t);
}

/// The final status and the body's length of a response stream, without
/// copying the body (H3Client::response would copy it twice); None when
/// it does not parse.
fn status_and_body(mut buf: &[u8]) -> Option<(u16, u64)> {
    let (mut status, mut body) = (None, 0u64);
    while !buf.is_empty() {
        let (f, n) = frame::parse(buf, u64::MAX).ok()??;
        match f {
            Frame::Headers(section) if status.is_none() => {
                let fields = qpack::decode_section(section, 1 << 20).ok()?;
                let v = &fields.iter().find(|f| f.name == b":status")?.value;
                let code: u16 = std::str::from_utf8(v).ok()?.parse().ok()?;
                // 1xx heads come before the final one.
                if code >= 200 {
                    status = Some(code);
                }
            }
            Frame::Data(d) => body += d.len() as u64,
            _ => {}
        }
        buf = &buf[n..];
    }
    Some((status?, body))
}

/// Completed (FIN or reset) requests out of `inflight` and the client's
/// stream map, so memory stays flat.
fn settle(c: &mut Conn, now: Instant, t: &mut Tally) {
    let h3 = &mut c.h3;
    c.inflight.retain(|id, sent| {
        let Some(s) = h3.streams.get(id) else {
            return true;
        };
        if s.reset.is_none() && !s.fin {
            return true;
        }
        let resp = if s.reset.is_some() {
            None
        } else {
            status_and_body(&s.data)
        };
        h3.streams.remove(id);
        if !t.counting {
            return false;
        }
        match resp {
            Some((status, body)) if (200..300).contains(&status) => {
                t.requests += 1;
                t.bytes += body;
                let us = now.duration_since(*sent).as_micros() as u64;
                let _ = t.hist.record(us.max(1));
            }
            Some(_) => t.non2xx += 1,
            None => t.errors += 1,
        }
        false
    });
}

/// A GET's request stream bytes: one HEADERS frame (QPACK, static table
/// and literals only), encoded once for the whole run.
fn encode_get(authority: &str, path: &str) -> Vec<u8> {
    let mut section = vec![0, 0];
    for (n, v) in [
        (&b":method"[..], &b"GET"[..]),
        (b":scheme", b"https"),
        (b":authority", authority.as_bytes()),
        (b":path", path.as_bytes()),
    ] {
        qpack::encoder::encode_field(n, v, &mut section);
    }
    let mut out = Vec::new();
    frame::emit_headers(&section, &mut out);
    out
}

/// Opens request streams up to `--streams` in flight; none when the
/// server's stream credit (MAX_STREAMS) is used up (H3Client::get would
/// panic there), so the next pass tries again.
fn top_up(c: &mut Conn, a: &H3LoadArgs, req: &[u8], now: Instant, t: &mut Tally) {
    if !c.h3.connected || c.h3.lost.is_some() {
        return;
    }
    if !c.control {
        c.h3.open_control();
        c.control = true;
    }
    while c.inflight.len() < a.streams {
        let q = c.h3.quic();
        let Some(id) = q.streams().open(Dir::Bi) else {
            return;
        };
        let mut s = q.send_stream(id);
        match s.write(req) {
            Ok(n) if n == req.len() => {
                let _ = s.finish();
                c.inflight.insert(u64::from(id), now);
            }
            // A request that does not fit the stream's first window.
            _ => {
                let _ = s.reset(VarInt::from_u32(0x10c));
                if t.counting {
                    t.errors += 1;
                }
                return;
            }
        }
    }
}

fn poll_all(conns: &[Conn], pfds: &mut Vec<libc::pollfd>, timeout: Duration) {
    pfds.clear();
    pfds.extend(conns.iter().map(|c| libc::pollfd {
        fd: c.sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }));
    let ms = timeout.as_millis().clamp(0, 5) as libc::c_int;
    // SAFETY: pfds is a valid array of pollfd of the given length.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
}

/// The earliest QUIC timer of all connections, from `now`.
fn next_timer(conns: &mut [Conn], now: Instant) -> Duration {
    conns
        .iter_mut()
        .filter_map(|c| c.h3.poll_timeout())
        .min()
        .map(|t| t.saturating_duration_since(now))
        .unwrap_or(Duration::from_millis(5))
}

/// One pass over every connection: receive (from the sockets poll found
/// readable, every socket when `ready` is empty), timers, new requests,
/// send.
fn step(
    conns: &mut [Conn],
    ready: &[libc::pollfd],
    a: &H3LoadArgs,
    req: &[u8],
    buf: &mut Vec<u8>,
    t: &mut Tally,
) {
    let now = Instant::now();
    for (i, c) in conns.iter_mut().enumerate() {
        if ready.get(i).is_none_or(|p| p.revents != 0) {
            buf.resize(65536, 0);
            receive(c, now, buf, t);
        }
        if c.h3.poll_timeout().is_some_and(|x| x <= now) {
            c.h3.handle_timeout(now);
            settle(c, now, t);
        }
        top_up(c, a, req, now, t);
        flush(c, now, buf, t);
    }
}

pub fn run(a: &H3LoadArgs) -> Result<H3LoadReport> {
    let pem = std::fs::read(&a.ca).with_context(|| format!("{}", a.ca.display()))?;
    let root = CertificateDer::from_pem_slice(&pem).context("CA certificate PEM")?;
    let cfg = client_config(&[root]);
    let req = encode_get(&a.sni, &a.path);
    let mut t = Tally {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        requests: 0,
        errors: 0,
        non2xx: 0,
        bytes: 0,
        sent: 0,
        received: 0,
        send_drops: 0,
        counting: false,
    };
    let mut buf = vec![0u8; 65536];
    let mut pfds = Vec::new();
    let now = Instant::now();
    let mut conns = (0..a.connections.max(1))
        .map(|_| open_with(a, &cfg, now))
        .collect::<Result<Vec<_>>>()?;
    // Handshakes (and the first requests) before the window.
    let deadline = now + Duration::from_secs_f64(a.connect_timeout);
    while conns.iter().any(|c| !c.h3.connected) {
        if Instant::now() > deadline {
            let up = conns.iter().filter(|c| c.h3.connected).count();
            let why = conns
                .iter()
                .find_map(|c| c.h3.lost.as_ref().map(|e| e.to_string()))
                .unwrap_or_else(|| "no answer".into());
            bail!(
                "{up} of {} QUIC connections to {} up after {} s ({why})",
                conns.len(),
                a.target,
                a.connect_timeout
            );
        }
        step(&mut conns, &pfds, a, &req, &mut buf, &mut t);
        let wait = next_timer(&mut conns, Instant::now());
        poll_all(&conns, &mut pfds, wait);
    }
    let connected = conns.len() as u64;
    let mut lost = 0;
    t.counting = true;
    let (sent0, recv0) = (t.sent, t.received);
    let cpu0 = cpu_now();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.seconds);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        step(&mut conns, &pfds, a, &req, &mut buf, &mut t);
        for c in conns.iter_mut() {
            if c.h3.lost.is_some() {
                // Its requests are failures; a new connection takes its place.
                t.errors += c.inflight.len() as u64;
                lost += 1;
                *c = open_with(a, &cfg, Instant::now())?;
            }
        }
        let wait = next_timer(&mut conns, Instant::now()).min(end - now.min(end));
        poll_all(&conns, &mut pfds, wait);
    }
    let seconds = start.elapsed().as_secs_f64();
    let client_cpu_s = cpu_now() - cpu0;
    let now = Instant::now();
    for c in conns.iter_mut() {
        c.h3.close(now);
        flush(c, now, &mut buf, &mut t);
    }
    let q = |p: f64| t.hist.value_at_quantile(p) as f64;
    Ok(H3LoadReport {
        requests: t.requests,
        errors: t.errors,
        non2xx: t.non2xx,
        bytes: t.bytes,
        seconds,
        rps: t.requests as f64 / seconds.max(1e-9),
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        connected,
        lost,
        client_cpu_s,
        datagrams_sent: t.sent - sent0,
        datagrams_received: t.received - recv0,
        send_drops: t.send_drops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: &str) -> Vec<u8> {
        let mut section = vec![0, 0];
        qpack::encoder::encode_field(b":status", status.as_bytes(), &mut section);
        let mut out = Vec::new();
        frame::emit_headers(&section, &mut out);
        out
    }

    fn data(n: usize, out: &mut Vec<u8>) {
        frame::emit_data_header(n, out);
        out.extend(std::iter::repeat_n(b'x', n));
    }

    #[test]
    fn final_status_and_body_length_of_a_response_stream() {
        let mut s = head("103");
        s.extend(head("200"));
        data(1000, &mut s);
        data(24, &mut s);
        assert_eq!(status_and_body(&s), Some((200, 1024)));
        let mut e = head("502");
        data(3, &mut e);
        assert_eq!(status_and_body(&e), Some((502, 3)));
    }

    #[test]
    fn a_stream_without_a_final_head_or_cut_in_a_frame_is_not_a_response() {
        assert_eq!(status_and_body(&head("100")), None);
        let mut s = head("200");
        data(10, &mut s);
        s.truncate(s.len() - 1);
        assert_eq!(status_and_body(&s), None);
    }

    #[test]
    fn the_get_is_one_headers_frame_with_the_four_pseudo_headers() {
        let req = encode_get("bench.ferrogate.test", "/files/1m");
        let (f, n) = frame::parse(&req, u64::MAX).unwrap().unwrap();
        assert_eq!(n, req.len());
        let Frame::Headers(section) = f else {
            panic!("not HEADERS")
        };
        let fields: Vec<(Vec<u8>, Vec<u8>)> = qpack::decode_section(section, 1 << 20)
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.value))
            .collect();
        assert_eq!(
            fields,
            [
                (b":method".to_vec(), b"GET".to_vec()),
                (b":scheme".to_vec(), b"https".to_vec()),
                (b":authority".to_vec(), b"bench.ferrogate.test".to_vec()),
                (b":path".to_vec(), b"/files/1m".to_vec()),
            ]
        );
    }
}
