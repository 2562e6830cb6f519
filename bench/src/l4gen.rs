//! The `l4` scenario's own tools, each usable alone inside a namespace:
//! `ferrogate-bench l4-origin` (a TCP line echo that closes after the
//! answer, and a UDP echo), `ferrogate-bench tcp-conn-client` (N loops of
//! connect, one line, read the echo to EOF, close) and `ferrogate-bench
//! udp-client` (N sockets with a window of numbered datagrams each,
//! counting the echoed ones). The clients print one JSON line.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug, Clone)]
pub struct OriginArgs {
    /// Address both echoes bind to.
    #[arg(long)]
    pub bind: std::net::IpAddr,
    #[arg(long, default_value_t = 7100)]
    pub tcp_port: u16,
    #[arg(long, default_value_t = 7200)]
    pub udp_port: u16,
    /// Exit after this many seconds (a bound in case the bench dies
    /// without stopping it).
    #[arg(long, default_value_t = 3600)]
    pub max_seconds: u64,
}

/// Per-connection state of the TCP echo: bytes read but not yet written
/// back, and whether the line's newline was seen.
struct EchoConn {
    fd: RawFd,
    pending: Vec<u8>,
    done: bool,
}

fn cvt(r: libc::c_int, what: &str) -> Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error()).with_context(|| what.to_string())
    } else {
        Ok(r)
    }
}

/// The origin: runs until killed or `max_seconds`. TCP: each connection
/// gets back what it sends until a newline, then the origin closes it
/// first (like an HTTP/1.0 server), so TIME_WAIT stays on the origin and
/// the proxy's upstream port is free at once. One epoll thread: the
/// origin shares CPU0 with the client and must not be the cost.
/// UDP: every datagram goes back to its sender unchanged.
pub fn run_origin(a: &OriginArgs) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let udp = UdpSocket::bind((a.bind, a.udp_port))
        .with_context(|| format!("bind udp {}:{}", a.bind, a.udp_port))?;
    udp.set_read_timeout(Some(Duration::from_millis(200)))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            match udp.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = udp.send_to(&buf[..n], from);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    let l = std::net::TcpListener::bind((a.bind, a.tcp_port))
        .with_context(|| format!("bind tcp {}:{}", a.bind, a.tcp_port))?;
    l.set_nonblocking(true)?;
    // SAFETY: plain epoll syscalls on descriptors this function owns.
    let ep = cvt(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    )?;
    let add = |fd: RawFd| -> Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: ev lives for the call; fd is open.
        cvt(
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
            "epoll_ctl",
        )?;
        Ok(())
    };
    let lfd = l.as_raw_fd();
    add(lfd)?;
    let mut conns: std::collections::HashMap<RawFd, EchoConn> = Default::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 16384];
    let close = |c: &EchoConn| {
        // SAFETY: the connection's own descriptor, closed once (removed
        // from the map by the caller); close removes it from epoll.
        unsafe { libc::close(c.fd) };
    };
    while Instant::now() < deadline {
        // SAFETY: events has room for its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 200) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            bail!("epoll_wait: {}", std::io::Error::last_os_error());
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                // Bounded: at most 256 accepts per wake-up.
                for _ in 0..256 {
                    // SAFETY: accept4 on our listener; null address is allowed.
                    let c = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if c < 0 {
                        break;
                    }
                    if add(c).is_err() {
                        // SAFETY: c was just accepted and is ours.
                        unsafe { libc::close(c) };
                        continue;
                    }
                    conns.insert(
                        c,
                        EchoConn {
                            fd: c,
                            pending: Vec::new(),
                            done: false,
                        },
                    );
                }
                continue;
            }
            let Some(c) = conns.get_mut(&fd) else {
                continue;
            };
            let mut finished = false;
            // Bounded: the line is short; 64 reads of 16 KiB per wake-up.
            for _ in 0..64 {
                // SAFETY: buf is ours and as long as passed.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    finished = e.kind() != ErrorKind::WouldBlock;
                    break;
                }
                if r == 0 {
                    finished = true;
                    break;
                }
                let got = &buf[..r as usize];
                c.done |= got.contains(&b'\n');
                c.pending.extend_from_slice(got);
                // SAFETY: pending is ours and as long as passed.
                let w = unsafe { libc::write(fd, c.pending.as_ptr().cast(), c.pending.len()) };
                if w > 0 {
                    c.pending.drain(..w as usize);
                }
                if c.done {
                    break;
                }
            }
            // A short line is written in one go; if the socket buffer was
            // full the rest is dropped with the connection (the client
            // then sees a short echo and counts an error).
            if finished || c.done {
                close(c);
                conns.remove(&fd);
            }
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct TcpConnArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    /// Concurrent loops (one thread each).
    #[arg(long, default_value_t = 50)]
    pub conns: usize,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Total connection bound (0 = duration only).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Bytes of the line sent on each connection (newline included).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TcpConnReport {
    /// Connections that got their line back whole, then EOF.
    pub completed: u64,
    pub errors: u64,
    pub connect_errors: u64,
    pub short_echoes: u64,
    pub duration_s: f64,
    pub conn_rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// One connection: connect, send the line, read to EOF, compare, close.
/// The origin closes first, so this socket ends in CLOSED, not TIME_WAIT,
/// and the client's ports are not the limit.
fn one_conn(addr: SocketAddr, line: &[u8], buf: &mut Vec<u8>) -> Result<(), &'static str> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|_| "connect")?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(line).map_err(|_| "write")?;
    buf.clear();
    s.read_to_end(buf).map_err(|_| "read")?;
    if buf.as_slice() != line {
        return Err("short");
    }
    Ok(())
}

pub fn run_tcp_conn(a: &TcpConnArgs) -> Result<TcpConnReport> {
    if a.size < 2 {
        bail!("--size must be at least 2 (a byte and the newline)");
    }
    let mut line = vec![b'x'; a.size];
    line[a.size - 1] = b'\n';
    let line = Arc::new(line);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.seconds);
    let budget = Arc::new(AtomicU64::new(if a.count == 0 {
        u64::MAX
    } else {
        a.count
    }));
    let handles: Vec<_> = (0..a.conns.max(1))
        .map(|_| {
            let line = line.clone();
            let budget = budget.clone();
            let addr = a.addr;
            std::thread::spawn(move || {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut r = TcpConnReport::default();
                let mut buf = Vec::with_capacity(line.len());
                while Instant::now() < end
                    && budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_ok()
                {
                    let t = Instant::now();
                    match one_conn(addr, &line, &mut buf) {
                        Ok(()) => {
                            r.completed += 1;
                            let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                        }
                        Err(what) => {
                            r.errors += 1;
                            match what {
                                "connect" => r.connect_errors += 1,
                                "short" => r.short_echoes += 1,
                                _ => {}
                            }
                            // A refused or reset connection returns at once:
                            // do not spin on it.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                (r, h)
            })
        })
        .collect();
    let mut total = TcpConnReport::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for j in handles {
        let (r, h) = j.join().map_err(|_| anyhow::anyhow!("a loop panicked"))?;
        total.completed += r.completed;
        total.errors += r.errors;
        total.connect_errors += r.connect_errors;
        total.short_echoes += r.short_echoes;
        hist.add(h)?;
    }
    total.duration_s = start.elapsed().as_secs_f64();
    total.conn_rate = total.completed as f64 / total.duration_s.max(1e-9);
    if total.completed > 0 {
        total.p50_us = hist.value_at_quantile(0.50) as f64;
        total.p99_us = hist.value_at_quantile(0.99) as f64;
        total.p999_us = hist.value_at_quantile(0.999) as f64;
    }
    Ok(total)
}

#[derive(clap::Args, Debug, Clone)]
pub struct UdpArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    /// Client sockets (one source port each: one proxy session each).
    #[arg(long, default_value_t = 50)]
    pub sockets: usize,
    /// Datagrams in flight per socket (closed loop: a reply lets the next go).
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Total datagram bound (0 = duration only).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Datagram payload bytes (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// A socket with datagrams in flight and no reply for this long counts
    /// them as lost and sends a new window.
    #[arg(long, default_value_t = 200)]
    pub loss_timeout_ms: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct UdpReport {
    pub sent: u64,
    pub received: u64,
    /// Replies that match no datagram this socket sent (should be 0).
    pub foreign: u64,
    pub lost: u64,
    pub loss_frac: f64,
    pub send_errors: u64,
    pub duration_s: f64,
    /// Echoed datagrams per second (each is one request and one reply
    /// through the proxy).
    pub dgram_rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

struct UdpSock {
    s: UdpSocket,
    id: u64,
    next_seq: u64,
    in_flight: usize,
    last_progress: Instant,
}

/// One thread, all sockets non-blocking under poll(2): cheaper on the
/// shared CPU0 than a thread per socket. Each datagram carries (socket id
/// << 40 | seq) and its send time in ns since `start`; the reply's RTT is
/// taken from that.
pub fn run_udp(a: &UdpArgs) -> Result<UdpReport> {
    if a.size < 16 {
        bail!("--size must be at least 16");
    }
    let bind: SocketAddr = if a.addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let mut socks = Vec::with_capacity(a.sockets.max(1));
    for i in 0..a.sockets.max(1) {
        let s = UdpSocket::bind(bind).context("bind a client socket")?;
        s.connect(a.addr).context("connect")?;
        s.set_nonblocking(true)?;
        socks.push(UdpSock {
            s,
            id: i as u64,
            next_seq: 0,
            in_flight: 0,
            last_progress: Instant::now(),
        });
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.seconds);
    let loss_to = Duration::from_millis(a.loss_timeout_ms.max(1));
    let mut budget = if a.count == 0 { u64::MAX } else { a.count };
    let mut r = UdpReport::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut out = vec![0u8; a.size];
    let mut inb = vec![0u8; 65536];
    let mut send = |u: &mut UdpSock, budget: &mut u64, r: &mut UdpReport| {
        if *budget == 0 || Instant::now() >= end {
            return;
        }
        let tag = (u.id << 40) | (u.next_seq & ((1 << 40) - 1));
        out[..8].copy_from_slice(&tag.to_le_bytes());
        out[8..16].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_le_bytes());
        match u.s.send(&out) {
            Ok(_) => {
                u.next_seq += 1;
                u.in_flight += 1;
                r.sent += 1;
                *budget -= 1;
            }
            Err(_) => r.send_errors += 1,
        }
    };
    for u in &mut socks {
        for _ in 0..a.window.max(1) {
            send(u, &mut budget, &mut r);
        }
    }
    let mut pfds: Vec<libc::pollfd> = socks
        .iter()
        .map(|u| libc::pollfd {
            fd: u.s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // The drain after the end: replies still in flight are not lost.
    let drain_until = end + loss_to;
    let mut last_reply = start;
    loop {
        let now = Instant::now();
        let idle = socks.iter().all(|u| u.in_flight == 0);
        // Done: past the drain, or nothing in flight once no more may be sent.
        if now >= drain_until || (idle && (now >= end || budget == 0)) {
            break;
        }
        // SAFETY: pfds is a valid array of its length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 10) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            bail!("poll: {}", std::io::Error::last_os_error());
        }
        let now = Instant::now();
        for (i, p) in pfds.iter_mut().enumerate() {
            let u = &mut socks[i];
            if p.revents != 0 {
                p.revents = 0;
                // Bounded: at most a window's worth plus slack per wake-up.
                for _ in 0..(a.window.max(1) * 4) {
                    let Ok(len) = u.s.recv(&mut inb) else { break };
                    if len < 16 {
                        r.foreign += 1;
                        continue;
                    }
                    let tag = u64::from_le_bytes(inb[..8].try_into().unwrap());
                    if tag >> 40 != u.id || (tag & ((1 << 40) - 1)) >= u.next_seq {
                        r.foreign += 1;
                        continue;
                    }
                    let sent_ns = u64::from_le_bytes(inb[8..16].try_into().unwrap());
                    let rtt_us = (start.elapsed().as_nanos() as u64).saturating_sub(sent_ns) / 1000;
                    let _ = hist.record(rtt_us.max(1));
                    r.received += 1;
                    last_reply = now;
                    u.in_flight = u.in_flight.saturating_sub(1);
                    u.last_progress = now;
                    send(u, &mut budget, &mut r);
                }
            }
            if u.in_flight > 0 && now.duration_since(u.last_progress) > loss_to {
                // The window is presumed lost: start a new one (late
                // replies still count as received; loss = sent − received).
                u.in_flight = 0;
                u.last_progress = now;
                for _ in 0..a.window.max(1) {
                    send(u, &mut budget, &mut r);
                }
            }
        }
        if now >= end {
            budget = 0;
        }
    }
    // Up to the last reply: neither the drain nor an early count bound
    // dilutes the rate.
    r.duration_s = last_reply.duration_since(start).as_secs_f64();
    r.lost = r.sent.saturating_sub(r.received);
    r.loss_frac = r.lost as f64 / (r.sent.max(1)) as f64;
    r.dgram_rate = r.received as f64 / r.duration_s.max(1e-9);
    if r.received > 0 {
        r.p50_us = hist.value_at_quantile(0.50) as f64;
        r.p99_us = hist.value_at_quantile(0.99) as f64;
        r.p999_us = hist.value_at_quantile(0.999) as f64;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both clients against the origin on loopback (no root, no lab): every
    /// line and datagram comes back, and the count bounds hold.
    #[test]
    fn clients_against_the_origin_on_loopback() {
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        // Free ports: bind, read, release (a race with other tests is
        // harmless: a failure would show as a bind error here).
        let tcp_port = std::net::TcpListener::bind((lo, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let udp_port = UdpSocket::bind((lo, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = OriginArgs {
            bind: lo,
            tcp_port,
            udp_port,
            max_seconds: 5,
        };
        std::thread::spawn(move || run_origin(&a).unwrap());
        let tcp = SocketAddr::new(lo, tcp_port);
        let deadline = Instant::now() + Duration::from_secs(3);
        while TcpStream::connect(tcp).is_err() {
            assert!(Instant::now() < deadline, "the origin did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = run_tcp_conn(&TcpConnArgs {
            addr: tcp,
            conns: 4,
            seconds: 3.0,
            count: 200,
            size: 64,
        })
        .unwrap();
        assert_eq!((r.completed, r.errors), (200, 0), "{r:?}");
        let u = run_udp(&UdpArgs {
            addr: SocketAddr::new(lo, udp_port),
            sockets: 3,
            window: 4,
            seconds: 3.0,
            count: 300,
            size: 64,
            loss_timeout_ms: 200,
        })
        .unwrap();
        assert_eq!((u.sent, u.received, u.foreign), (300, 300, 0), "{u:?}");
        assert!(u.dgram_rate > 0.0 && u.p99_us >= u.p50_us, "{u:?}");
    }
}
