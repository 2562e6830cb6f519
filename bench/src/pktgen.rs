//! The flood generator: AF_PACKET with `PACKET_QDISC_BYPASS`, frames built
//! in batches and sent with `sendmmsg`. Templates: UDP, TCP SYN and malformed
//! IPv4, each from random (spoofed) sources in a CIDR. Bounded by duration
//! and by count; optional rate limit (token bucket per batch).
//!
//! Why AF_PACKET and not AF_XDP TX: on veth both end in `veth_xmit` on the
//! sending CPU; AF_PACKET needs no UMEM or XSK setup and runs without an
//! XDP program on the client side. Measured rates are in `bench/README.md`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    Udp,
    Syn,
    Malformed,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// Interface to send on (inside the current network namespace).
    #[arg(long, default_value = "eth0")]
    pub iface: String,
    #[arg(long, value_enum, default_value = "syn")]
    pub template: Template,
    /// Destination MAC (the edge's eth0).
    #[arg(long)]
    pub dst_mac: String,
    /// Destination IPv4 address.
    #[arg(long, default_value = "10.77.0.10")]
    pub dst_ip: std::net::Ipv4Addr,
    #[arg(long, default_value_t = 80)]
    pub dst_port: u16,
    /// Spoofed sources are drawn uniformly from this CIDR.
    #[arg(long, default_value = "198.18.0.0/15")]
    pub src_cidr: String,
    /// Packets per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Stop after this many packets (0 = no count bound).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Frames per sendmmsg call (max 256).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct GenReport {
    pub sent: u64,
    pub send_errors: u64,
    pub elapsed_s: f64,
    pub pps: f64,
}

const FRAME: usize = 60;

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s:?}"))?;
    v.try_into().map_err(|_| anyhow::anyhow!("bad MAC {s:?}"))
}

pub fn parse_cidr(s: &str) -> Result<(u32, u32)> {
    let (a, l) = s.split_once('/').context("CIDR needs /len")?;
    let a: std::net::Ipv4Addr = a.parse()?;
    let l: u32 = l.parse()?;
    if l > 32 {
        bail!("bad prefix length in {s}");
    }
    let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    Ok((u32::from(a) & mask, mask))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn csum_fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn csum_add(s: &mut u32, b: &[u8]) {
    let mut i = 0;
    while i + 1 < b.len() {
        *s += u16::from_be_bytes([b[i], b[i + 1]]) as u32;
        i += 2;
    }
    if i < b.len() {
        *s += (b[i] as u32) << 8;
    }
}

struct Builder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    dst_ip: u32,
    dst_port: u16,
    net: u32,
    mask: u32,
    template: Template,
}

impl Builder {
    fn fill(&self, f: &mut [u8; FRAME], rng: &mut Rng, seq: u64) {
        f.fill(0);
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let r = rng.next();
        let src = self.net | (r as u32 & !self.mask);
        let (proto, l4len) = match self.template {
            Template::Udp => (17u8, 8 + 18),
            Template::Syn => (6u8, 20),
            Template::Malformed => (6u8, 20),
        };
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        let tot = (20 + l4len) as u16;
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src.to_be_bytes());
        ip[16..20].copy_from_slice(&self.dst_ip.to_be_bytes());
        if self.template == Template::Malformed {
            // Three kinds in turn: IHL below 5, total length beyond the
            // frame, a TCP header with data offset below 5.
            match seq % 3 {
                0 => ip[0] = 0x43,
                1 => ip[2..4].copy_from_slice(&1400u16.to_be_bytes()),
                _ => {}
            }
        }
        let mut s = 0;
        csum_add(&mut s, &f[14..34]);
        let c = csum_fold(s);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let sport = (r >> 32) as u16 | 1024;
        let l4 = &mut f[34..34 + l4len];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        match self.template {
            Template::Udp => {
                l4[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
                // UDP checksum 0 = none (IPv4).
            }
            Template::Syn | Template::Malformed => {
                l4[4..8].copy_from_slice(&((r >> 16) as u32).to_be_bytes());
                l4[12] = if self.template == Template::Malformed && seq % 3 == 2 {
                    0x20
                } else {
                    0x50
                };
                l4[13] = 0x02; // SYN
                l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
                let mut s = 0u32;
                csum_add(&mut s, &src.to_be_bytes());
                csum_add(&mut s, &self.dst_ip.to_be_bytes());
                s += 6 + l4len as u32;
                csum_add(&mut s, l4);
                let c = csum_fold(s);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
        }
    }
}

fn own_mac(iface: &str) -> Result<[u8; 6]> {
    let p = format!("/sys/class/net/{iface}/address");
    parse_mac(
        std::fs::read_to_string(&p)
            .with_context(|| p.clone())?
            .trim(),
    )
}

pub fn run(a: &GenArgs) -> Result<GenReport> {
    let (net, mask) = parse_cidr(&a.src_cidr)?;
    let b = Builder {
        src_mac: own_mac(&a.iface)?,
        dst_mac: parse_mac(&a.dst_mac)?,
        dst_ip: u32::from(a.dst_ip),
        dst_port: a.dst_port,
        net,
        mask,
        template: a.template,
    };
    let batch = a.batch.clamp(1, 256);
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    struct Fd(i32);
    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: closing the fd we own.
            unsafe { libc::close(self.0) };
        }
    }
    let _fd = Fd(fd);
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const _ as *const libc::c_void,
            4,
        );
        let sz: libc::c_int = 4 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &sz as *const _ as *const libc::c_void,
            4,
        );
    }
    let cname = std::ffi::CString::new(a.iface.clone())?;
    // SAFETY: valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {}", a.iface);
    }
    // SAFETY: zeroed sockaddr_ll is a valid value; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
    }

    let mut frames = vec![[0u8; FRAME]; batch];
    let mut iov: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr() as *mut libc::c_void,
            iov_len: FRAME,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed then pointed at our iovecs.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch)
        .map(|i| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov[i];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.seconds.max(0.0));
    let mut sent = 0u64;
    let mut errors = 0u64;
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline || (a.count > 0 && sent >= a.count) {
            break;
        }
        let mut n = batch;
        if a.count > 0 {
            n = n.min((a.count - sent) as usize);
        }
        if a.rate > 0 {
            // Send in chunks of ~0.5 ms worth of packets and sleep between
            // them, so a rate-limited generator does not spin its CPU (the
            // CPU it shares with the client and origin).
            let chunk = ((a.rate / 2000) as usize).clamp(1, batch) as u64;
            let allowed = ((now - start).as_secs_f64() * a.rate as f64) as u64;
            if allowed < sent + chunk {
                let due = start + Duration::from_secs_f64((sent + chunk) as f64 / a.rate as f64);
                std::thread::sleep(
                    due.saturating_duration_since(now)
                        .min(Duration::from_millis(10)),
                );
                continue;
            }
            n = n.min((allowed - sent) as usize);
        }
        for f in frames.iter_mut().take(n) {
            b.fill(f, &mut rng, seq);
            seq += 1;
        }
        // SAFETY: msgs[..n] point at live iovecs/frames.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    errors += 1;
                    continue;
                }
                _ => bail!("sendmmsg: {e}"),
            }
        }
        sent += r as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(GenReport {
        sent,
        send_errors: errors,
        elapsed_s: elapsed,
        pps: sent as f64 / elapsed.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify() {
        let (net, mask) = parse_cidr("198.18.0.0/15").unwrap();
        let b = Builder {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst_ip: u32::from(std::net::Ipv4Addr::new(10, 77, 0, 10)),
            dst_port: 80,
            net,
            mask,
            template: Template::Syn,
        };
        let mut f = [0u8; FRAME];
        let mut rng = Rng(7);
        for seq in 0..100 {
            b.fill(&mut f, &mut rng, seq);
            let src = u32::from_be_bytes(f[26..30].try_into().unwrap());
            assert_eq!(src & mask, net);
            let mut s = 0;
            csum_add(&mut s, &f[14..34]);
            assert_eq!(csum_fold(s), 0, "IP checksum");
            let mut s = 0;
            csum_add(&mut s, &f[26..34]);
            s += 6 + 20;
            csum_add(&mut s, &f[34..54]);
            assert_eq!(csum_fold(s), 0, "TCP checksum");
        }
    }
}
