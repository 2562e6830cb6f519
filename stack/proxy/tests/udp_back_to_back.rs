//! UDP listeners back to back: datagrams are written and read as frames by
//! this file (the client on 10.0.0.2, the origin on 10.0.0.3:5353); the
//! harness's peer smoltcp interface answers the edge's ARP for them and,
//! when the origin is "closed", answers a datagram with ICMP port
//! unreachable as a real host does.

mod common;

use std::net::SocketAddr;

use common::*;
use ferrogate_proxy::UdpListener;
use ferrogate_proxy::access::{AccessQueue, AccessSink};
use ferrogate_proxy::wire::{FrameClass, classify};
use smoltcp::wire::{IpProtocol, Ipv4Repr};

const DNS: u16 = 53;
const ORIGIN_PORT: u16 = 5353;

fn udp_table(tune: impl FnOnce(&mut UdpListener)) -> Arc<RouteTable> {
    let ep: SocketAddr = (ORIGIN, ORIGIN_PORT).into();
    let pool = Arc::new(Upstream::simple("dns", 0, &[ep]));
    let mut l = UdpListener {
        port: DNS,
        upstream: pool.clone(),
        idle_timeout: std::time::Duration::from_secs(30),
        max_sessions: 1_000,
    };
    tune(&mut l);
    Arc::new(RouteTable::new(1, vec![], vec![pool]).with_udp(vec![l]))
}

/// A datagram as seen on the wire.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    from: SocketAddr,
    to: SocketAddr,
    payload: Vec<u8>,
}

struct UdpLab {
    lab: Lab,
    /// The origin answers each datagram with "re:" + its payload.
    origin_echo: bool,
    /// The origin's host has nothing on its port: ICMP unreachable.
    origin_closed: bool,
    at_origin: Vec<Seen>,
    at_client: Vec<Seen>,
    /// ICMP destination unreachable messages the edge sent the client.
    icmp_to_client: usize,
}

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    (ip, port).into()
}

impl UdpLab {
    fn new(routes: Arc<RouteTable>) -> Self {
        UdpLab {
            lab: Lab::with_routes(Origin::Refusing, routes, |_| {}),
            origin_echo: true,
            origin_closed: false,
            at_origin: vec![],
            at_client: vec![],
            icmp_to_client: 0,
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        assert!(self.lab.edge.handle_frame(&udp_frame(from, to, payload)));
    }

    /// Runs the edge; delivers what it sent: UDP to the client or origin
    /// is taken here, everything else goes to the peer interface (ARP).
    fn step(&mut self, dt_ms: u64) {
        let lab = &mut self.lab;
        lab.now += Duration::from_millis(dt_ms);
        lab.edge.poll(lab.now);
        let mut out = vec![];
        lab.edge.drain_tx(|f| out.push(f.to_vec()));
        for f in out {
            if let FrameClass::Udp(m) = classify(&f) {
                // `local` is the frame's destination.
                let seen = Seen {
                    from: SocketAddr::new(m.key.remote.into(), m.key.remote_port),
                    to: SocketAddr::new(m.key.local.into(), m.key.local_port),
                    payload: m.payload(&f).to_vec(),
                };
                if seen.to.ip() == std::net::IpAddr::from(ORIGIN) && !self.origin_closed {
                    if self.origin_echo {
                        let mut re = b"re:".to_vec();
                        re.extend_from_slice(&seen.payload);
                        assert!(lab.edge.handle_frame(&udp_frame(seen.to, seen.from, &re)));
                    }
                    self.at_origin.push(seen);
                    continue;
                }
                if seen.to.ip() == std::net::IpAddr::from(CLIENT) {
                    self.at_client.push(seen);
                    continue;
                }
            }
            // IPv4 to the client, protocol ICMP, type 3 (unreachable).
            if f[12..14] == [8, 0] && f[30..34] == CLIENT && f[23] == 1 && f[34] == 3 {
                self.icmp_to_client += 1;
                continue;
            }
            lab.dev.rx.push_back(f);
        }
        lab.peer.poll(lab.now, &mut lab.dev, &mut lab.sockets);
        while let Some(f) = lab.dev.tx.pop_front() {
            assert!(lab.edge.handle_frame(&f));
        }
        lab.edge.poll(lab.now);
    }

    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.step(1);
        }
    }

    fn udp(&self) -> ferrogate_proxy::stats::UdpStats {
        self.lab.edge.stats().udp
    }
}

#[test]
fn a_client_datagram_reaches_the_endpoint_and_the_reply_comes_back_from_the_vip() {
    let mut u = UdpLab::new(udp_table(|_| {}));
    u.run(3); // the edge resolves the origin's address ahead of time
    u.send(addr(CLIENT, 4000), addr(VIP, DNS), b"query");
    u.run(3);
    assert_eq!(u.at_origin.len(), 1, "{:?}", u.at_origin);
    let up = u.at_origin[0].clone();
    assert_eq!(up.payload, b"query");
    assert_eq!(up.to, addr(ORIGIN, ORIGIN_PORT));
    assert_eq!(up.from.ip(), std::net::IpAddr::from(VIP));
    assert!((40_000..41_000).contains(&up.from.port()), "{up:?}");
    assert_eq!(
        u.at_client,
        vec![Seen {
            from: addr(VIP, DNS),
            to: addr(CLIENT, 4000),
            payload: b"re:query".to_vec()
        }]
    );
    let s = u.udp();
    assert_eq!(
        (s.sessions, s.active, s.datagrams_up, s.datagrams_down),
        (1, 1, 1, 1)
    );
    assert_eq!((s.bytes_up, s.bytes_down), (5, 8));
    // The same client again: the same session, the same port upstream.
    u.send(addr(CLIENT, 4000), addr(VIP, DNS), b"again");
    u.run(3);
    assert_eq!(u.at_origin[1].from, up.from);
    assert_eq!(u.udp().sessions, 1);
}

#[test]
fn each_client_port_is_its_own_session_and_replies_find_their_client() {
    let mut u = UdpLab::new(udp_table(|_| {}));
    u.run(3);
    u.origin_echo = false;
    for p in 0..5u16 {
        u.send(addr(CLIENT, 4000 + p), addr(VIP, DNS), &[p as u8]);
    }
    u.run(3);
    assert_eq!(u.at_origin.len(), 5);
    assert_eq!(u.udp().sessions, 5);
    // The origin answers in reverse order.
    for seen in u.at_origin.clone().iter().rev() {
        u.send(seen.to, seen.from, &[seen.payload[0] + 100]);
    }
    u.run(3);
    assert_eq!(u.at_client.len(), 5);
    for c in &u.at_client {
        assert_eq!(c.payload[0] as u16, 100 + (c.to.port() - 4000), "{c:?}");
        assert_eq!(c.from, addr(VIP, DNS));
    }
}

#[test]
fn an_idle_session_expires_and_frees_its_port() {
    let queue = Arc::new(AccessQueue::new(16));
    let mut u = UdpLab::new(udp_table(|l| {
        l.idle_timeout = std::time::Duration::from_secs(2)
    }));
    u.lab.edge.set_access_log(AccessSink::new(queue.clone()));
    u.run(3);
    u.send(addr(CLIENT, 4000), addr(VIP, DNS), b"q");
    u.run(3);
    let port = u.at_origin[0].from;
    assert_eq!(u.lab.edge.upstream_ports_in_use(), 1);
    u.step(1_000);
    assert_eq!(u.udp().active, 1, "not idle long enough yet");
    u.step(1_100);
    let s = u.udp();
    assert_eq!((s.active, s.idle_timeouts), (0, 1));
    assert_eq!(u.lab.edge.upstream_ports_in_use(), 0);
    let rec = queue.pop().expect("one record per session");
    assert_eq!(rec.protocol.as_str(), "UDP");
    assert_eq!(rec.error, "idle_timeout");
    assert_eq!((rec.bytes_up, rec.bytes_down), (1, 4));
    // A late reply to the freed port reaches no one.
    u.send(addr(ORIGIN, ORIGIN_PORT), port, b"late");
    u.run(3);
    assert_eq!(u.at_client.len(), 1, "{:?}", u.at_client);
    assert_eq!(u.udp().datagrams_down, 1);
}

#[test]
fn max_sessions_bounds_new_clients_and_counts_the_rest() {
    let mut u = UdpLab::new(udp_table(|l| l.max_sessions = 4));
    u.run(3);
    for p in 0..100u16 {
        u.send(addr(CLIENT, 10_000 + p), addr(VIP, DNS), b"x");
        if p % 32 == 31 {
            u.run(1);
        }
    }
    u.run(3);
    let s = u.udp();
    assert_eq!((s.sessions, s.active, s.drop_over_limit), (4, 4, 96));
    assert_eq!(u.at_origin.len(), 4);
    assert_eq!(u.lab.edge.upstream_ports_in_use(), 4);
    // The sessions that exist still work.
    u.send(addr(CLIENT, 10_000), addr(VIP, DNS), b"y");
    u.run(3);
    assert_eq!(u.at_origin.len(), 5);
}

#[test]
fn icmp_port_unreachable_from_the_endpoint_ends_the_session() {
    let mut u = UdpLab::new(udp_table(|_| {}));
    u.run(3);
    u.origin_closed = true;
    u.send(addr(CLIENT, 4000), addr(VIP, DNS), b"q");
    u.run(5);
    let s = u.udp();
    assert_eq!((s.sessions, s.unreachable, s.active), (1, 1, 0), "{s:?}");
    assert_eq!(u.lab.edge.upstream_ports_in_use(), 0);
    let pools = u.lab.edge.upstream_stats();
    assert_eq!(
        pools.pools[0].1.endpoints[0].failures, 1,
        "counted against the endpoint"
    );
}

#[test]
fn a_datagram_to_a_session_port_from_another_address_is_dropped() {
    let mut u = UdpLab::new(udp_table(|_| {}));
    u.run(3);
    u.origin_echo = false;
    u.send(addr(CLIENT, 4000), addr(VIP, DNS), b"q");
    u.run(3);
    let port = u.at_origin[0].from;
    u.send(addr([10, 0, 0, 99], ORIGIN_PORT), port, b"spoof");
    u.send(addr(ORIGIN, ORIGIN_PORT + 1), port, b"spoof");
    u.run(3);
    assert!(u.at_client.is_empty());
    assert_eq!(u.udp().drop_foreign_source, 2);
}

#[test]
fn a_reload_without_the_listener_ends_its_sessions() {
    let mut u = UdpLab::new(udp_table(|_| {}));
    u.run(3);
    u.send(addr(CLIENT, 4000), addr(VIP, DNS), b"q");
    u.run(3);
    assert_eq!(u.udp().active, 1);
    // The same listener and endpoint: the session stays.
    u.lab.edge.set_routes(udp_table(|_| {}));
    u.run(1);
    assert_eq!(u.udp().active, 1);
    u.lab
        .edge
        .set_routes(Arc::new(RouteTable::new(2, vec![], vec![])));
    u.run(1);
    assert_eq!(u.udp().active, 0);
    assert_eq!(u.lab.edge.upstream_ports_in_use(), 0);
}

#[test]
fn udp_to_a_port_without_a_listener_is_answered_port_unreachable() {
    let mut u = UdpLab::new(udp_table(|_| {}));
    u.run(3);
    // The first answer waits for the client's address (as after a real
    // client's ARP for the VIP, it is known from then on).
    u.send(addr(CLIENT, 4000), addr(VIP, 54), b"q");
    u.run(3);
    u.send(addr(CLIENT, 4000), addr(VIP, 54), b"q");
    u.run(3);
    assert!(u.icmp_to_client >= 1);
    assert_eq!(u.udp().sessions, 0);
}

/// ICMP port unreachable sent by `from`, quoting a datagram `sent_from` →
/// `sent_to` (what an origin's host answers to one of ours).
fn icmp_unreachable(from: [u8; 4], sent_from: SocketAddr, sent_to: SocketAddr) -> Vec<u8> {
    use smoltcp::wire::{Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr};
    let (SocketAddr::V4(sf), SocketAddr::V4(st)) = (sent_from, sent_to) else {
        panic!("v4 only")
    };
    let quoted_ip = Ipv4Repr {
        src_addr: *sf.ip(),
        dst_addr: *st.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8 + 1,
        hop_limit: 64,
    };
    let mut quoted_udp = [0u8; 8];
    quoted_udp[0..2].copy_from_slice(&sf.port().to_be_bytes());
    quoted_udp[2..4].copy_from_slice(&st.port().to_be_bytes());
    quoted_udp[4..6].copy_from_slice(&9u16.to_be_bytes());
    let icmp = Icmpv4Repr::DstUnreachable {
        reason: Icmpv4DstUnreachable::PortUnreachable,
        header: quoted_ip,
        data: &quoted_udp,
    };
    ipv4_frame(
        from.into(),
        *sf.ip(),
        IpProtocol::Icmp,
        icmp.buffer_len(),
        |l4, caps| icmp.emit(&mut Icmpv4Packet::new_unchecked(l4), caps),
    )
}

#[test]
fn an_icmp_error_not_from_the_endpoint_or_about_another_flow_ends_nothing() {
    let mut u = UdpLab::new(udp_table(|_| {}));
    u.run(3);
    u.origin_echo = false;
    u.send(addr(CLIENT, 4000), addr(VIP, DNS), b"q");
    u.run(3);
    let ours = u.at_origin[0].from;
    // Forged by a third host, quoting the session's real flow.
    let forged = icmp_unreachable([10, 0, 0, 99], ours, addr(ORIGIN, ORIGIN_PORT));
    assert!(u.lab.edge.handle_frame(&forged));
    // From the origin's host, about a port of it the session never used.
    let other = icmp_unreachable(ORIGIN, ours, addr(ORIGIN, ORIGIN_PORT + 1));
    assert!(u.lab.edge.handle_frame(&other));
    // Corrupted on the way (bad ICMP checksum).
    let mut corrupt = icmp_unreachable(ORIGIN, ours, addr(ORIGIN, ORIGIN_PORT));
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert!(u.lab.edge.handle_frame(&corrupt));
    u.run(2);
    let s = u.udp();
    assert_eq!(
        (s.active, s.unreachable, s.unreachable_ignored),
        (1, 0, 1),
        "{s:?}"
    );
    assert_eq!(u.lab.edge.stats().net.rx_drop_bad_datagram, 1);
    // The real thing ends it.
    let real = icmp_unreachable(ORIGIN, ours, addr(ORIGIN, ORIGIN_PORT));
    assert!(u.lab.edge.handle_frame(&real));
    u.run(2);
    assert_eq!((u.udp().active, u.udp().unreachable), (0, 1));
}

#[test]
fn a_datagram_with_a_bad_checksum_or_a_source_no_reply_may_go_to_is_dropped() {
    let mut u = UdpLab::new(udp_table(|_| {}));
    u.run(3);
    let mut corrupt = udp_frame(addr(CLIENT, 4000), addr(VIP, DNS), b"query");
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    assert!(u.lab.edge.handle_frame(&corrupt));
    for from in [
        addr(VIP, 4000),
        addr([255, 255, 255, 255], 4000),
        addr([0, 0, 0, 0], 4000),
        addr([224, 0, 0, 1], 4000),
        addr(CLIENT, 0),
    ] {
        assert!(
            u.lab
                .edge
                .handle_frame(&udp_frame(from, addr(VIP, DNS), b"q"))
        );
    }
    u.run(3);
    assert_eq!(u.lab.edge.stats().net.rx_drop_bad_datagram, 6);
    assert_eq!(u.udp().sessions, 0);
    assert!(u.at_origin.is_empty());
    // IPv4's "no checksum" (zero) is accepted.
    let mut none = udp_frame(addr(CLIENT, 4001), addr(VIP, DNS), b"q");
    none[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    assert!(u.lab.edge.handle_frame(&none));
    u.run(3);
    assert_eq!(u.udp().sessions, 1);
}

#[test]
fn an_unanswered_session_that_idles_out_is_not_charged_to_the_endpoint() {
    let mut u = UdpLab::new(udp_table(|l| {
        l.idle_timeout = std::time::Duration::from_secs(1)
    }));
    u.run(3);
    u.origin_echo = false;
    u.send(addr(CLIENT, 4000), addr(VIP, DNS), b"log line");
    u.run(3);
    u.step(1_100);
    assert_eq!(u.udp().idle_timeouts, 1);
    let pools = u.lab.edge.upstream_stats();
    assert_eq!(pools.pools[0].1.endpoints[0].failures, 0);
}

#[test]
fn a_reload_with_a_shorter_idle_timeout_applies_to_open_sessions() {
    let mut u = UdpLab::new(udp_table(|_| {}));
    u.run(3);
    for p in 0..3 {
        u.send(addr(CLIENT, 4000 + p), addr(VIP, DNS), b"q");
    }
    u.run(3);
    assert_eq!(u.udp().active, 3);
    u.lab.edge.set_routes(udp_table(|l| {
        l.idle_timeout = std::time::Duration::from_millis(500)
    }));
    u.step(600);
    assert_eq!((u.udp().active, u.udp().idle_timeouts), (0, 3));
}

#[test]
fn udp_sessions_take_at_most_half_the_upstream_ports() {
    // 1000 upstream ports in the harness: 500 sessions at most.
    let mut u = UdpLab::new(udp_table(|l| l.max_sessions = 10_000));
    u.run(3);
    u.origin_echo = false;
    for p in 0..600u16 {
        u.send(addr(CLIENT, 10_000 + p), addr(VIP, DNS), b"x");
        if p % 64 == 63 {
            u.run(1);
        }
    }
    u.run(2);
    let s = u.udp();
    assert_eq!((s.active, s.drop_no_port), (500, 100), "{s:?}");
    assert_eq!(u.lab.edge.upstream_ports_in_use(), 500);
}
