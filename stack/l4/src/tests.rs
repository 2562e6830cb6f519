//! The splice over two simulated sockets: byte queues with capacities, a
//! FIN flag and a reset flag per side.

use std::collections::VecDeque;

use super::*;

/// One simulated stream as the proxy sees it.
#[derive(Default)]
struct Sock {
    /// Received from the peer, not read yet.
    rx: VecDeque<u8>,
    /// Queued to the peer.
    tx: VecDeque<u8>,
    tx_cap: usize,
    /// The peer sent its FIN.
    peer_fin: bool,
    /// We sent ours (`close`).
    fin: bool,
    /// Reset (received or sent).
    reset: bool,
    aborted_by_us: bool,
}

impl Sock {
    fn new(tx_cap: usize) -> Self {
        Self {
            tx_cap,
            ..Self::default()
        }
    }

    fn state(&self) -> StreamState {
        match (self.reset, self.peer_fin, self.fin) {
            (true, _, _) => StreamState::Closed,
            (false, false, false) => StreamState::Established,
            (false, true, false) => StreamState::CloseWait,
            (false, false, true) => StreamState::FinWait1,
            (false, true, true) => StreamState::LastAck,
        }
    }
}

struct Mock {
    c: Sock,
    u: Sock,
}

impl Mock {
    fn new(cap: usize) -> Self {
        Self {
            c: Sock::new(cap),
            u: Sock::new(cap),
        }
    }
    fn s(&mut self, e: End) -> &mut Sock {
        match e {
            End::Client => &mut self.c,
            End::Upstream => &mut self.u,
        }
    }
}

impl Ends for Mock {
    fn state(&mut self, e: End) -> StreamState {
        self.s(e).state()
    }
    fn recv_queue(&mut self, e: End) -> usize {
        self.s(e).rx.len()
    }
    fn recv(&mut self, e: End, buf: &mut [u8]) -> usize {
        let s = self.s(e);
        let n = buf.len().min(s.rx.len());
        for (b, v) in buf.iter_mut().zip(s.rx.drain(..n)) {
            *b = v;
        }
        n
    }
    fn send_space(&mut self, e: End) -> usize {
        let s = self.s(e);
        if s.fin || s.reset {
            0
        } else {
            s.tx_cap - s.tx.len()
        }
    }
    fn send(&mut self, e: End, data: &[u8]) -> usize {
        let room = self.send_space(e);
        let n = data.len().min(room);
        self.s(e).tx.extend(&data[..n]);
        n
    }
    fn close(&mut self, e: End) -> bool {
        self.s(e).fin = true;
        true
    }
    fn abort(&mut self, e: End) {
        let s = self.s(e);
        s.reset = true;
        s.aborted_by_us = true;
        s.tx.clear();
    }
}

fn drain(s: &mut Sock) -> Vec<u8> {
    s.tx.drain(..).collect()
}

#[test]
fn bytes_cross_both_ways_and_are_counted() {
    let mut m = Mock::new(1 << 16);
    let mut sp = Splice::new();
    let mut scratch = [0u8; 1024];
    m.c.rx.extend(b"hello upstream");
    m.u.rx.extend(b"hello client!");
    let r = sp.run(&mut m, &mut scratch);
    assert_eq!(r.status, Status::Open);
    assert_eq!(r.moved, 27);
    assert_eq!(drain(&mut m.u), b"hello upstream");
    assert_eq!(drain(&mut m.c), b"hello client!");
    assert_eq!((sp.bytes_up(), sp.bytes_down()), (14, 13));
}

#[test]
fn a_full_destination_stops_reading_the_source() {
    // The upstream's send buffer holds 100 bytes: of 1000 waiting from the
    // client, 100 are read; the rest stay in the client's receive buffer
    // (its window closes), and move as the upstream drains.
    let mut m = Mock::new(100);
    let mut sp = Splice::new();
    let mut scratch = [0u8; 64];
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    m.c.rx.extend(&data);
    let r = sp.run(&mut m, &mut scratch);
    assert_eq!(r.moved, 100);
    assert_eq!(m.c.rx.len(), 900);
    let mut got = drain(&mut m.u);
    while !m.c.rx.is_empty() {
        let r = sp.run(&mut m, &mut scratch);
        assert!(r.moved <= 100);
        assert!(m.u.tx.len() <= 100);
        got.extend(drain(&mut m.u));
    }
    assert_eq!(got, data);
    assert_eq!(sp.bytes_up(), 1000);
}

#[test]
fn a_run_yields_at_its_budget() {
    let mut m = Mock::new(usize::MAX / 2);
    let mut sp = Splice::new();
    let mut scratch = vec![0u8; 16 * 1024];
    m.c.rx.extend(std::iter::repeat_n(1u8, RUN_BUDGET * 2));
    let r = sp.run(&mut m, &mut scratch);
    assert!(r.more);
    assert_eq!(r.moved, RUN_BUDGET);
    let r = sp.run(&mut m, &mut scratch);
    assert_eq!(r.moved, RUN_BUDGET);
}

#[test]
fn half_close_goes_across_after_the_bytes_and_the_other_way_stays_open() {
    let mut m = Mock::new(8);
    let mut sp = Splice::new();
    let mut scratch = [0u8; 64];
    m.c.rx.extend(b"0123456789abcdef");
    m.c.peer_fin = true;
    // Only 8 bytes fit: no FIN yet.
    sp.run(&mut m, &mut scratch);
    assert!(!m.u.fin, "FIN must follow every byte");
    drain(&mut m.u);
    sp.run(&mut m, &mut scratch);
    assert!(m.u.fin, "client FIN forwarded after the buffered bytes");
    assert!(sp.fin_forwarded(End::Client));
    assert!(!m.c.fin, "the other direction stays open");
    // The upstream still answers, after the client's FIN.
    m.u.rx.extend(b"reply");
    let r = sp.run(&mut m, &mut scratch);
    assert_eq!(r.status, Status::Open);
    assert_eq!(drain(&mut m.c), b"reply");
    m.u.peer_fin = true;
    let r = sp.run(&mut m, &mut scratch);
    assert_eq!(r.status, Status::Done);
    assert!(m.c.fin);
    assert!(!m.c.aborted_by_us && !m.u.aborted_by_us);
}

#[test]
fn a_reset_on_one_side_resets_the_other() {
    for side in [End::Client, End::Upstream] {
        let mut m = Mock::new(64);
        let mut sp = Splice::new();
        let mut scratch = [0u8; 64];
        m.s(side.other()).rx.extend(b"in flight");
        m.s(side).reset = true;
        let r = sp.run(&mut m, &mut scratch);
        assert_eq!(r.status, Status::Reset(side));
        assert!(m.s(side.other()).aborted_by_us, "{side:?}");
        // It stays reset.
        assert_eq!(sp.run(&mut m, &mut scratch).status, Status::Reset(side));
    }
}

#[test]
fn a_reset_after_both_fins_is_an_orderly_end() {
    let mut m = Mock::new(64);
    let mut sp = Splice::new();
    let mut scratch = [0u8; 64];
    m.c.peer_fin = true;
    m.u.peer_fin = true;
    assert_eq!(sp.run(&mut m, &mut scratch).status, Status::Done);
    m.c.reset = true;
    assert_eq!(sp.run(&mut m, &mut scratch).status, Status::Done);
    assert!(!m.u.aborted_by_us);
}

#[test]
fn a_side_in_its_handshake_is_not_a_fin() {
    struct Handshaking(Mock);
    impl Ends for Handshaking {
        fn state(&mut self, e: End) -> StreamState {
            match e {
                End::Client => StreamState::SynReceived,
                End::Upstream => self.0.state(e),
            }
        }
        fn recv_queue(&mut self, e: End) -> usize {
            self.0.recv_queue(e)
        }
        fn recv(&mut self, e: End, buf: &mut [u8]) -> usize {
            self.0.recv(e, buf)
        }
        fn send_space(&mut self, e: End) -> usize {
            self.0.send_space(e)
        }
        fn send(&mut self, e: End, data: &[u8]) -> usize {
            self.0.send(e, data)
        }
        fn close(&mut self, e: End) -> bool {
            self.0.close(e)
        }
        fn abort(&mut self, e: End) {
            self.0.abort(e)
        }
    }
    let mut m = Handshaking(Mock::new(64));
    let mut sp = Splice::new();
    assert_eq!(sp.run(&mut m, &mut [0u8; 16]).status, Status::Open);
    assert!(!m.0.u.fin);
}

#[test]
fn a_close_that_cannot_be_queued_yet_is_asked_again_before_done() {
    // A TLS client end queues its FIN only once close_notify is all in
    // the socket: until then the direction has not ended.
    struct SlowClose(Mock, usize);
    impl Ends for SlowClose {
        fn state(&mut self, e: End) -> StreamState {
            self.0.state(e)
        }
        fn recv_queue(&mut self, e: End) -> usize {
            self.0.recv_queue(e)
        }
        fn recv(&mut self, e: End, buf: &mut [u8]) -> usize {
            self.0.recv(e, buf)
        }
        fn send_space(&mut self, e: End) -> usize {
            self.0.send_space(e)
        }
        fn send(&mut self, e: End, data: &[u8]) -> usize {
            self.0.send(e, data)
        }
        fn close(&mut self, e: End) -> bool {
            if e == End::Client && self.1 > 0 {
                self.1 -= 1;
                return false;
            }
            self.0.close(e)
        }
        fn abort(&mut self, e: End) {
            self.0.abort(e)
        }
    }
    let mut m = SlowClose(Mock::new(64), 2);
    let mut sp = Splice::new();
    let mut scratch = [0u8; 16];
    m.0.c.peer_fin = true;
    m.0.u.peer_fin = true;
    for _ in 0..2 {
        assert_eq!(sp.run(&mut m, &mut scratch).status, Status::Open);
        assert!(!sp.fin_forwarded(End::Upstream) && !m.0.c.fin);
    }
    assert_eq!(sp.run(&mut m, &mut scratch).status, Status::Done);
    assert!(m.0.c.fin && m.0.u.fin);
}
