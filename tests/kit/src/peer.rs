//! A userspace HTTP peer on its own smoltcp stack: keep-alive HTTP/1.1
//! clients (one address) and an origin (another address) behind one MAC,
//! talking to an edge over any frame link. It plays both ends of the
//! proxied path so the engine can be driven without a kernel (the L7
//! ceiling bench, engine tests on in-memory ports).

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

/// Where the peer's frames go and come from.
pub trait Link {
    /// Sends one frame to the edge; false when the link is full.
    fn send(&mut self, frame: &[u8]) -> bool;
    /// Hands up to `max` frames from the edge to `f`; returns how many.
    fn recv(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize;
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub mac: [u8; 6],
    /// The clients' address and the origin's, in the edge's subnet.
    pub client_ip: Ipv4Addr,
    pub origin_ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The edge's listener.
    pub vip: Ipv4Addr,
    pub vip_port: u16,
    pub origin_port: u16,
    /// Keep-alive client connections, each with one request in flight.
    pub clients: usize,
    /// Bytes of each response body the origin sends.
    pub body_len: usize,
    /// Path of every request.
    pub path: String,
    /// Frames carry no IPv4/TCP/UDP checksums (the edge's port offloads
    /// them): neither computed nor verified.
    pub checksum_offload: bool,
    /// One request per connection (`Connection: close`): each client closes
    /// after its response and a new connection takes its place.
    pub close_each: bool,
}

impl PeerConfig {
    /// The addresses the in-memory port setups use: edge VIP 10.99.0.10:80,
    /// clients 10.99.0.2, origin 10.99.0.3:8080, one /24; keep-alive, path
    /// `/`, checksums on the wire.
    pub fn memory_lab(clients: usize, body_len: usize) -> Self {
        PeerConfig {
            mac: [0x02, 0, 0, 0, 0, 0x02],
            client_ip: Ipv4Addr::new(10, 99, 0, 2),
            origin_ip: Ipv4Addr::new(10, 99, 0, 3),
            prefix_len: 24,
            vip: Ipv4Addr::new(10, 99, 0, 10),
            vip_port: 80,
            origin_port: 8080,
            clients,
            body_len,
            path: "/".into(),
            checksum_offload: false,
            close_each: false,
        }
    }

    /// The edge's service address with its prefix length.
    pub fn vip_cidr(&self) -> (std::net::IpAddr, u8) {
        (self.vip.into(), self.prefix_len)
    }

    /// Where the edge must send upstream requests.
    pub fn origin(&self) -> std::net::SocketAddr {
        (self.origin_ip, self.origin_port).into()
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PeerStats {
    /// Responses with status 200 and the whole body.
    pub ok: u64,
    /// Responses with another status or a malformed head.
    pub bad: u64,
    /// Requests the origin answered.
    pub origin_requests: u64,
    /// Client connections that ended without the client closing them
    /// (reset, or closed by the edge before the response).
    pub client_drops: u64,
    /// Client connections closed after their response (`close_each`).
    pub client_closes: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Frames the link refused (the edge was behind).
    pub link_full: u64,
}

struct Client {
    h: SocketHandle,
    /// Bytes of the response read so far.
    got: Vec<u8>,
    waiting: bool,
    /// Closed by us after its response (`close_each`).
    closing: bool,
}

struct OriginConn {
    h: SocketHandle,
    buf: Vec<u8>,
    /// Response bytes still to send.
    left: usize,
    head_sent: usize,
}

struct Device<L> {
    link: L,
    rx: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    stats: PeerStats,
    checksum_offload: bool,
}

pub struct HttpPeer<L: Link> {
    cfg: PeerConfig,
    dev: Device<L>,
    iface: Interface,
    sockets: SocketSet<'static>,
    clients: Vec<Client>,
    listeners: Vec<SocketHandle>,
    origin: Vec<OriginConn>,
    request: Vec<u8>,
    response_head: Vec<u8>,
    next_port: u16,
}

fn socket(buf: usize) -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buf]),
        tcp::SocketBuffer::new(vec![0; buf]),
    )
}

impl<L: Link> HttpPeer<L> {
    pub fn new(link: L, cfg: PeerConfig, now: Instant) -> Self {
        let mut dev = Device {
            link,
            rx: VecDeque::new(),
            spare: Vec::new(),
            stats: PeerStats::default(),
            checksum_offload: cfg.checksum_offload,
        };
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac))),
            &mut dev,
            now,
        );
        iface.update_ip_addrs(|a| {
            for ip in [cfg.client_ip, cfg.origin_ip] {
                a.push(IpCidr::new(IpAddress::Ipv4(ip), cfg.prefix_len))
                    .expect("two addresses");
            }
        });
        let close = if cfg.close_each {
            "Connection: close\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: peer.test\r\nUser-Agent: ferrogate-peer\r\n{close}\r\n",
            cfg.path
        )
        .into_bytes();
        let response_head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
            cfg.body_len
        )
        .into_bytes();
        let mut peer = HttpPeer {
            dev,
            iface,
            sockets: SocketSet::new(vec![]),
            clients: Vec::new(),
            listeners: Vec::new(),
            origin: Vec::new(),
            request,
            response_head,
            next_port: 20_000,
            cfg,
        };
        // The edge pools upstream connections: one per client at most,
        // plus room for replacements.
        for _ in 0..peer.cfg.clients + 8 {
            peer.listen();
        }
        for _ in 0..peer.cfg.clients {
            peer.connect();
        }
        peer
    }

    fn listen(&mut self) {
        let mut s = socket(64 * 1024);
        s.listen(IpEndpoint::new(
            IpAddress::Ipv4(self.cfg.origin_ip),
            self.cfg.origin_port,
        ))
        .expect("listen");
        self.listeners.push(self.sockets.add(s));
    }

    fn connect(&mut self) {
        let mut s = socket(64 * 1024);
        self.next_port = self.next_port.checked_add(1).unwrap_or(20_000);
        s.connect(
            self.iface.context(),
            IpEndpoint::new(IpAddress::Ipv4(self.cfg.vip), self.cfg.vip_port),
            IpEndpoint::new(IpAddress::Ipv4(self.cfg.client_ip), self.next_port),
        )
        .expect("connect");
        let h = self.sockets.add(s);
        self.clients.push(Client {
            h,
            got: Vec::new(),
            waiting: false,
            closing: false,
        });
    }

    pub fn stats(&self) -> PeerStats {
        self.dev.stats
    }

    /// Moves frames both ways and runs every client and origin connection
    /// once.
    pub fn poll(&mut self, now: Instant) {
        let dev = &mut self.dev;
        let spare = &mut dev.spare;
        let rx = &mut dev.rx;
        dev.stats.frames_in += dev.link.recv(256, &mut |f| {
            let mut b = spare.pop().unwrap_or_default();
            b.clear();
            b.extend_from_slice(f);
            rx.push_back(b);
        }) as u64;
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.run_origin();
        self.run_clients();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
    }

    fn run_clients(&mut self) {
        let (mut dropped, mut closed) = (0, 0);
        for c in &mut self.clients {
            let s = self.sockets.get_mut::<tcp::Socket>(c.h);
            if !s.is_active() {
                if c.closing {
                    closed += 1;
                } else {
                    dropped += 1;
                }
                continue;
            }
            if c.closing {
                // Drain the edge's FIN; the socket ends on its own.
                while s.can_recv() {
                    let _ = s.recv(|b| (b.len(), ()));
                }
                continue;
            }
            if s.state() != tcp::State::Established && s.state() != tcp::State::CloseWait {
                continue;
            }
            while s.can_recv() {
                let _ = s.recv(|b| {
                    c.got.extend_from_slice(b);
                    (b.len(), ())
                });
            }
            if c.waiting {
                match response_done(&c.got, self.cfg.body_len) {
                    None => continue,
                    Some(ok) => {
                        if ok {
                            self.dev.stats.ok += 1;
                        } else {
                            self.dev.stats.bad += 1;
                        }
                        c.got.clear();
                        c.waiting = false;
                        if self.cfg.close_each {
                            s.close();
                            c.closing = true;
                            continue;
                        }
                    }
                }
            }
            if !s.may_send() || s.state() == tcp::State::CloseWait {
                // The edge closed before our next request: a drop, counted
                // when the aborted socket is gone.
                s.abort();
                continue;
            }
            if s.send_capacity() - s.send_queue() >= self.request.len() {
                let _ = s.send_slice(&self.request);
                c.waiting = true;
            }
        }
        if dropped + closed > 0 {
            // Replace connections that ended, so the load stays.
            let sockets = &mut self.sockets;
            self.clients.retain(|c| {
                let active = sockets.get::<tcp::Socket>(c.h).is_active();
                if !active {
                    sockets.remove(c.h);
                }
                active
            });
            self.dev.stats.client_drops += dropped;
            self.dev.stats.client_closes += closed;
            for _ in 0..dropped + closed {
                self.connect();
            }
        }
    }

    fn run_origin(&mut self) {
        let mut accepted = 0;
        for i in 0..self.listeners.len() {
            let h = self.listeners[i];
            if self.sockets.get::<tcp::Socket>(h).state() != tcp::State::Listen {
                self.origin.push(OriginConn {
                    h,
                    buf: Vec::new(),
                    left: 0,
                    head_sent: usize::MAX,
                });
                self.listeners[i] = SocketHandle::default();
                accepted += 1;
            }
        }
        if accepted > 0 {
            self.listeners.retain(|h| *h != SocketHandle::default());
            for _ in 0..accepted {
                self.listen();
            }
        }
        let head = &self.response_head;
        let body_len = self.cfg.body_len;
        let stats = &mut self.dev.stats;
        let sockets = &mut self.sockets;
        self.origin.retain(|c| {
            let active = sockets.get::<tcp::Socket>(c.h).is_active();
            if !active {
                sockets.remove(c.h);
            }
            active
        });
        for c in &mut self.origin {
            let s = sockets.get_mut::<tcp::Socket>(c.h);
            while s.can_recv() {
                let _ = s.recv(|b| {
                    c.buf.extend_from_slice(b);
                    (b.len(), ())
                });
            }
            if c.head_sent == usize::MAX
                && let Some(end) = c.buf.windows(4).position(|w| w == b"\r\n\r\n")
            {
                c.buf.drain(..end + 4);
                c.head_sent = 0;
                c.left = body_len;
                stats.origin_requests += 1;
            }
            if c.head_sent < head.len() {
                c.head_sent += s.send_slice(&head[c.head_sent..]).unwrap_or(0);
            }
            while c.head_sent >= head.len() && c.head_sent != usize::MAX && c.left > 0 {
                let n = s
                    .send(|buf| {
                        let n = buf.len().min(c.left);
                        buf[..n].fill(b'x');
                        (n, n)
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                c.left -= n;
            }
            if c.head_sent >= head.len() && c.head_sent != usize::MAX && c.left == 0 {
                c.head_sent = usize::MAX;
            }
        }
    }
}

/// Whether `got` holds a whole response: Some(true) for a 200 with
/// `body_len` bytes of body, Some(false) for anything else complete.
fn response_done(got: &[u8], body_len: usize) -> Option<bool> {
    let end = got.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&got[..end]).ok()?;
    let ok = head.starts_with("HTTP/1.1 200 ");
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    if got.len() < end + 4 + len {
        return None;
    }
    Some(ok && len == body_len)
}

struct Rx(Vec<u8>);
struct Tx<'a, L: Link> {
    link: &'a mut L,
    stats: &'a mut PeerStats,
}

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl<L: Link> phy::TxToken for Tx<'_, L> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = [0u8; 1514];
        let r = f(&mut buf[..len]);
        if self.link.send(&buf[..len]) {
            self.stats.frames_out += 1;
        } else {
            self.stats.link_full += 1;
        }
        r
    }
}

impl<L: Link> phy::Device for Device<L> {
    type RxToken<'a>
        = Rx
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a, L>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_, L>)> {
        let f = self.rx.pop_front()?;
        Some((
            Rx(f),
            Tx {
                link: &mut self.link,
                stats: &mut self.stats,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_, L>> {
        Some(Tx {
            link: &mut self.link,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        if self.checksum_offload {
            let c = &mut caps.checksum;
            (c.ipv4, c.tcp, c.udp) = (Checksum::None, Checksum::None, Checksum::None);
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_done_when_its_body_is_whole() {
        assert_eq!(
            response_done(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no", 2),
            None
        );
        assert_eq!(
            response_done(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 2),
            Some(true)
        );
        assert_eq!(
            response_done(b"HTTP/1.1 502 Bad\r\nContent-Length: 0\r\n\r\n", 2),
            Some(false)
        );
    }
}
